//! The running proxy's shared state: HostDB, the session pool, the checker,
//! the routing table and the metrics, built from the config files and
//! rebuilt on reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use vigil_cluster::{Cluster, ClusterConfig, ClusterKey};
use vigil_hostdb::{HickoryResolver, HostDb, HostDbConfig};
use vigil_l7check::{Checker, CheckerOptions, HealthChecks, HttpProbe};
use vigil_session::{Pool, PoolConfig};

use crate::config::Config;
use crate::metrics::{ConnectObserver, Metrics};
use crate::routes::{Routes, hostdb_config, protocols};

/// Both files, parsed and validated, and the HostDB input built from them.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) checks: HealthChecks,
    pub(crate) hostdb: HostDbConfig,
    /// The `[cluster]` key, read and checked once.
    pub(crate) cluster_key: Option<ClusterKey>,
}

/// Reads and validates `vigil.toml` and the health-check file it names.
/// Errors name `file:line:column` (or the file that cannot be read).
pub(crate) fn load(path: &Path) -> Result<Loaded, String> {
    let config = Config::parse(&read(path)?, path).map_err(|e| e.to_string())?;
    let checks =
        HealthChecks::parse(&read(&config.health_checks)?, &config.health_checks.display().to_string())
            .map_err(|e| e.to_string())?;
    let cluster_key = match &config.cluster {
        None => None,
        Some(cluster) => {
            let key = std::fs::read(&cluster.key_file)
                .map_err(|e| format!("{}: cannot read the cluster key: {e}", cluster.key_file.display()))?;
            Some(
                ClusterKey::from_bytes(&key)
                    .map_err(|e| format!("{}: the cluster key must be {e}", cluster.key_file.display()))?,
            )
        }
    };
    // Built here, once: it is also what HostDB would refuse (a DNS origin
    // without a resolver is checked at apply).
    let hostdb = hostdb_config(&config, &checks)?;
    Ok(Loaded { config, checks, hostdb, cluster_key })
}

/// Joins the cluster and makes the checker leave the servers another node
/// checks.
async fn join_cluster(
    c: &crate::config::Cluster,
    key: ClusterKey,
    db: &HostDb,
    checker: &Checker,
) -> Result<Cluster, String> {
    let config = ClusterConfig {
        node_id: c.node_id.clone(),
        listen: c.listen,
        seeds: c.seeds.clone(),
        cluster_id: c.cluster_id.clone(),
        gossip_interval: c.gossip_interval,
        key,
    };
    let cluster = Cluster::start(config, db.clone()).await.map_err(|e| e.to_string())?;
    let member = cluster.clone();
    checker.set_filter(Some(Arc::new(move |origin, server| member.checks_here(origin, server))));
    Ok(cluster)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// What every request, admin call and reload shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) db: HostDb,
    pub(crate) pool: Pool,
    pub(crate) checker: Checker,
    /// This node's cluster membership (`[cluster]`).
    pub(crate) cluster: Option<Cluster>,
    pub(crate) routes: ArcSwap<Routes>,
    pub(crate) metrics: Arc<Metrics>,
    /// The running config (for the admin token and reload comparisons).
    pub(crate) config: ArcSwap<Config>,
    pub(crate) node: String,
    config_path: PathBuf,
    reload_lock: Mutex<()>,
}

impl Shared {
    /// Builds everything from `loaded`. Must run inside the runtime.
    pub(crate) async fn start(loaded: Loaded, config_path: PathBuf) -> Result<Arc<Self>, String> {
        let Loaded { config, checks, hostdb, cluster_key } = loaded;
        let mut builder = HostDb::builder();
        let needs_dns = hostdb.origins.iter().any(|o| matches!(o.servers, vigil_hostdb::ServerSource::Dns));
        if needs_dns {
            let resolver = HickoryResolver::from_system_conf().map_err(|e| {
                format!("origins without `servers` need DNS, and the system resolver failed: {e}")
            })?;
            builder = builder.resolver(Arc::new(resolver));
        }
        let db = builder.build().map_err(|e| e.to_string())?;
        db.apply(&hostdb).map_err(|e| e.to_string())?;

        let metrics = Arc::new(Metrics::default());
        let observer = Arc::new(ConnectObserver { metrics: Arc::clone(&metrics), db: db.clone() });
        let pool = Pool::new(
            PoolConfig {
                max_idle_per_server: config.max_idle_per_server,
                idle_timeout: config.idle_timeout,
                connect_timeout: config.connect_timeout,
                ..PoolConfig::default()
            },
            observer,
        );
        let checker = Checker::new(
            db.clone(),
            Arc::new(HttpProbe::new(pool.clone())),
            checks,
            CheckerOptions::default(),
        );
        checker.set_protocols(protocols(&config, &hostdb));
        let m = Arc::clone(&metrics);
        checker.on_result(Arc::new(move |origin, server, result| m.check(origin, server, result.passed)));
        let m = Arc::clone(&metrics);
        db.subscribe(Arc::new(move |e: &vigil_hostdb::Event| m.on_event(e)));
        let cluster = match (&config.cluster, cluster_key) {
            (Some(c), Some(key)) => Some(join_cluster(c, key, &db, &checker).await?),
            _ => None,
        };
        metrics.register(db.clone(), pool.clone(), cluster.clone());

        let node = config.cluster.as_ref().map_or_else(|| "vigil".to_owned(), |c| c.node_id.clone());
        Ok(Arc::new(Self {
            routes: ArcSwap::from_pointee(Routes::new(&config)),
            config: ArcSwap::from_pointee(config),
            db,
            pool,
            checker,
            cluster,
            metrics,
            node,
            config_path,
            reload_lock: Mutex::new(()),
        }))
    }

    /// Re-reads both files. Valid: HostDB, the checker and the routes take
    /// the new config (servers that remain keep status and sessions).
    /// Invalid: nothing changes and the error is returned.
    pub(crate) fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock();
        let result = self.reload_locked();
        self.metrics.reload(result.is_ok());
        match &result {
            Ok(summary) => tracing::info!("reload: {summary}"),
            Err(e) => tracing::error!("reload refused, the running config stays: {e}"),
        }
        result
    }

    fn reload_locked(&self) -> Result<String, String> {
        let Loaded { config, checks, hostdb, .. } = load(&self.config_path)?;
        let report = self.db.apply(&hostdb).map_err(|e| e.to_string())?;
        self.checker.set_protocols(protocols(&config, &hostdb));
        self.checker.set_config(checks);
        self.routes.store(Arc::new(Routes::new(&config)));
        self.metrics.forget_owners();
        let old = self.config.load();
        let mut restart = Vec::new();
        for (changed, what) in [
            (old.listen != config.listen, "proxy.listen"),
            (old.admin != config.admin, "proxy.admin"),
            (old.threads != config.threads, "proxy.threads"),
            (old.connect_timeout != config.connect_timeout, "l4.connect_timeout"),
            (old.max_idle_per_server != config.max_idle_per_server, "pool.max_idle_per_server"),
            (old.idle_timeout != config.idle_timeout, "pool.idle_timeout"),
            (old.cluster != config.cluster, "cluster"),
        ] {
            if changed {
                restart.push(what);
            }
        }
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        self.config.store(Arc::new(config));
        let mut summary = format!(
            "ok: {} origins added, {} removed, {} kept",
            report.added.len(),
            report.removed.len(),
            report.kept
        );
        if !restart.is_empty() {
            summary.push_str(&format!("; takes effect only after a restart: {}", restart.join(", ")));
        }
        Ok(summary)
    }
}
