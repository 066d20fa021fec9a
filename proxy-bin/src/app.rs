//! The running proxy's shared state: HostDB, the session pool, the checker,
//! the routing table and the metrics, built from the config files and
//! rebuilt on reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use vigil_cluster::{Cluster, ClusterConfig, ClusterKey};
use vigil_hostdb::conf::FileError;
use vigil_hostdb::{HickoryResolver, HostDb, HostDbConfig, OriginKey};
use vigil_l7check::{CheckKind, Checker, CheckerOptions, HealthChecks, OriginUpstream, PoolProbe};
use vigil_session::tls::{Alpn, ClientAuth, Roots, TlsConnect, TlsSettings};
use vigil_session::{Pool, PoolConfig, Protocol, Upstream};

use crate::accesslog::AccessLog;
use crate::config::{Config, Located, OriginProtocol};
use crate::events::Events;
use crate::listener::{Certificates, TlsListener};
use crate::metrics::{ConnectObserver, Metrics};
use crate::routes::{Routes, hostdb_config};

/// Both files, parsed and validated, and the HostDB input built from them.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) config: Config,
    pub(crate) checks: HealthChecks,
    pub(crate) hostdb: HostDbConfig,
    /// The `[cluster]` keys, read and checked once.
    pub(crate) cluster_keys: Option<ClusterKeys>,
    /// How each origin's servers are reached (TLS profiles made in the
    /// connector given to [`load`]).
    pub(crate) upstreams: HashMap<OriginKey, OriginUpstream>,
    /// How an upgrade (WebSocket) reaches each origin that can take one.
    pub(crate) upgrades: HashMap<OriginKey, Upstream>,
    /// The TLS listener's certificates, read and checked (`[[tls]]`).
    pub(crate) certificates: Option<Certificates>,
}

/// Reads and validates `vigil.toml` and the health-check file it names,
/// and every file they name (certificates, keys, the cluster key); TLS
/// profiles for the https origins are made in `tls`. Errors name
/// `file:line:column` (or the file that cannot be read).
pub(crate) fn load(path: &Path, tls: &TlsConnect) -> Result<Loaded, String> {
    let config = Config::parse(&read(path)?, path).map_err(|e| e.to_string())?;
    let checks =
        HealthChecks::parse(&read(&config.health_checks)?, &config.health_checks.display().to_string())
            .map_err(|e| e.to_string())?;
    let cluster_keys =
        config.cluster.as_ref().map(read_cluster_keys).transpose().map_err(|e| e.to_string())?;
    // Built here, once: it is also what HostDB would refuse (a DNS origin
    // without a resolver is checked at apply).
    let hostdb = hostdb_config(&config, &checks)?;
    let (upstreams, upgrades) = upstreams(&config, &hostdb, tls).map_err(|e| e.to_string())?;
    let mut config = config;
    config.warnings.extend(check_kinds_fit(&checks, &upstreams).map_err(|e| e.to_string())?);
    // A ramp that ends before a check has looked again is no ramp.
    for (key, settings) in &config.origins {
        let (Some(window), Ok(origin)) = (settings.policy.slow_start, key.parse::<OriginKey>()) else {
            continue;
        };
        if let Some(check) = checks.matching(&origin)
            && window < check.settings.interval
        {
            config.warnings.push(format!(
                "{}: origin {key}: slow_start ({window:?}) is shorter than its check interval ({:?}): a server would be at full weight before a check sees it again",
                path.display(),
                check.settings.interval
            ));
        }
    }
    let certificates = if config.certificates.is_empty() {
        None
    } else {
        Some(Certificates::load(&config.certificates).map_err(|e| e.to_string())?)
    };
    Ok(Loaded { config, checks, hostdb, cluster_keys, upstreams, upgrades, certificates })
}

/// The `[cluster]` keys: the one this node seals with and the previous ones
/// it still opens.
#[derive(Debug)]
pub(crate) struct ClusterKeys {
    pub(crate) key: ClusterKey,
    pub(crate) previous: Vec<ClusterKey>,
}

/// Reads `key_file` and `previous_key_files`: each must be 32 bytes, and no
/// two may hold the same key (two names for one key would leave out the
/// key they were meant to keep, likely the old one mid-rotation).
pub(crate) fn read_cluster_keys(c: &crate::config::Cluster) -> Result<ClusterKeys, FileError> {
    let read = |file: &Located<PathBuf>, what: &str| {
        let bytes = std::fs::read(&file.value).map_err(|e| {
            file.error(format!("{what} {}: cannot read the cluster key: {e}", file.value.display()))
        })?;
        ClusterKey::from_bytes(&bytes)
            .map(|key| (key, bytes))
            .map_err(|e| file.error(format!("{what} {}: the cluster key must be {e}", file.value.display())))
    };
    let (key, key_bytes) = read(&c.key_file, "key_file")?;
    let mut seen = vec![key_bytes];
    let mut previous = Vec::with_capacity(c.previous_key_files.len());
    for file in &c.previous_key_files {
        let (k, bytes) = read(file, "previous_key_files")?;
        if let Some(i) = seen.iter().position(|b| *b == bytes) {
            let other = if i == 0 { &c.key_file } else { &c.previous_key_files[i - 1] };
            return Err(file.error(format!(
                "previous_key_files {}: holds the same key as {}",
                file.value.display(),
                other.value.display()
            )));
        }
        seen.push(bytes);
        previous.push(k);
    }
    Ok(ClusterKeys { key, previous })
}

/// What only both files together show: a gRPC check needs an origin that
/// speaks h2 (`h2c`, or `h2` or `auto` over TLS: `auto` is judged by what
/// ALPN settles), and a TCP check's `send`/`expect` steps are plain TCP, so
/// on the service port of a TLS origin they would talk to a TLS server.
/// The error is at the check's `kind`. A gRPC check on an `auto` origin is
/// a warning: it fails on every server that picks http/1.1 in ALPN.
fn check_kinds_fit(
    checks: &HealthChecks,
    upstreams: &HashMap<OriginKey, OriginUpstream>,
) -> Result<Vec<String>, FileError> {
    let mut origins: Vec<_> = upstreams.iter().collect();
    origins.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut warnings = Vec::new();
    for (key, upstream) in origins {
        let Some(check) = checks.matching(key) else { continue };
        match &check.kind {
            // `tls = false` on another port: h2c there, whatever the origin speaks.
            CheckKind::Grpc(_) if check.plain => {}
            CheckKind::Grpc(_) if upstream.upstream.protocol == Protocol::Auto => {
                let at = checks.error_at(check.at, "");
                warnings.push(format!(
                    "{}:{}:{}: the grpc check of {key} fails on every server that picks http/1.1 in ALPN; \
                     protocol = \"h2\" makes h2 certain",
                    at.file, at.line, at.column
                ));
            }
            CheckKind::Grpc(_) if upstream.upstream.protocol == Protocol::Http1 => {
                return Err(checks.error_at(
                    check.at,
                    format!(
                        "a grpc check needs an origin that speaks h2, and {key} is reached over HTTP/1.1 \
                         (set its protocol to \"h2c\", or \"h2\" or \"auto\" over TLS, or give it a check of its own)"
                    ),
                ));
            }
            CheckKind::Tcp(tcp) if upstream.https && check.port.is_none() && !tcp.steps.is_empty() => {
                return Err(checks.error_at(
                    check.at,
                    format!(
                        "a tcp check's steps are plain TCP, and {key} is reached over TLS \
                         (check connect-only, or give the check the `port` of a plain-TCP service)"
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(warnings)
}

/// How every origin is reached: plain ones by their protocol, https ones
/// by a TLS profile of `tls`, made from their settings and the files they
/// name. Second, how an upgrade reaches each origin that can take one: an
/// HTTP/1.1 connection (an h2 origin cannot; an https `auto` one gets a
/// profile of its own whose ALPN offers only http/1.1).
#[allow(clippy::type_complexity, reason = "two maps by origin, named in the doc")]
fn upstreams(
    config: &Config,
    hostdb: &HostDbConfig,
    tls: &TlsConnect,
) -> Result<(HashMap<OriginKey, OriginUpstream>, HashMap<OriginKey, Upstream>), FileError> {
    let mut out = HashMap::new();
    let mut upgrades = HashMap::new();
    for origin in &hostdb.origins {
        let key = &origin.key;
        let settings = config.origins.get(key.as_str());
        let protocol = settings.map(|s| s.protocol);
        let https = config.remaps.iter().any(|r| &r.to == key && r.https);
        let upstream = if !https {
            let protocol = if protocol == Some(OriginProtocol::H2) { Protocol::H2 } else { Protocol::Http1 };
            OriginUpstream { upstream: Upstream::plain(protocol), https: false }
        } else {
            let t = settings.map(|s| s.tls.clone()).unwrap_or_default();
            let alpn = match protocol.unwrap_or(OriginProtocol::Auto) {
                OriginProtocol::Auto => Alpn::Auto,
                OriginProtocol::H2 => Alpn::H2,
                OriginProtocol::Http1 => Alpn::Http1,
            };
            let roots = match &t.ca_file {
                None => Roots::System,
                Some(f) => Roots::Certificates(read_certs(f, "ca_file")?),
            };
            let client_auth = match (&t.client_cert, &t.client_key) {
                (Some(c), Some(k)) => {
                    Some(ClientAuth { chain: read_certs(c, "client_cert")?, key: read_key(k)? })
                }
                _ => None,
            };
            let tls_settings = TlsSettings {
                server_name: t.sni.as_ref().map_or_else(|| key.host().to_owned(), |s| s.value.clone()),
                roots,
                client_auth,
                insecure_skip_verify: t.insecure_skip_verify,
                alpn,
            };
            let profile = tls.profile(tls_settings).map_err(|e| {
                let message = format!("origin {key}: {e}");
                match (&t.client_key, &t.sni, &t.ca_file) {
                    (Some(at), _, _) => at.error(message),
                    (_, Some(at), _) => at.error(message),
                    (_, _, Some(at)) => at.error(message),
                    _ => FileError { file: String::new(), line: 0, column: 0, message },
                }
            })?;
            if alpn == Alpn::Auto {
                // Its HTTP/1.1-only twin, for upgrades; made from the same
                // settings, which just made a profile, so it cannot fail.
                if let Ok(twin) = tls.with_alpn(profile, Alpn::Http1) {
                    upgrades.insert(key.clone(), Upstream { protocol: Protocol::Http1, profile: twin });
                }
            }
            OriginUpstream { upstream: Upstream { protocol: alpn.protocol(), profile }, https: true }
        };
        if upstream.upstream.protocol == Protocol::Http1 {
            upgrades.insert(key.clone(), upstream.upstream);
        }
        out.insert(key.clone(), upstream);
    }
    Ok((out, upgrades))
}

/// The PEM certificates of `file` (`what` names the key for errors).
pub(crate) fn read_certs(
    file: &Located<PathBuf>,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = std::fs::read(&file.value)
        .map_err(|e| file.error(format!("{what} {}: cannot read: {e}", file.value.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file.error(format!("{what} {}: not PEM certificates: {e}", file.value.display())))?;
    if certs.is_empty() {
        return Err(file.error(format!("{what} {}: holds no certificate", file.value.display())));
    }
    Ok(certs)
}

/// The PEM private key of `file`.
pub(crate) fn read_key(file: &Located<PathBuf>) -> Result<PrivateKeyDer<'static>, FileError> {
    let pem = std::fs::read(&file.value)
        .map_err(|e| file.error(format!("key {}: cannot read: {e}", file.value.display())))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file.error(format!("key {}: no PEM private key: {e}", file.value.display())))
}

/// Joins the cluster and makes the checker leave the servers another node
/// checks.
pub(crate) async fn join_cluster(
    c: &crate::config::Cluster,
    keys: ClusterKeys,
    db: &HostDb,
    checker: &Checker,
) -> Result<Cluster, String> {
    let config = ClusterConfig {
        node_id: c.node_id.clone(),
        listen: c.listen,
        seeds: c.seeds.clone(),
        cluster_id: c.cluster_id.clone(),
        gossip_interval: c.gossip_interval,
        key: keys.key,
        previous_keys: keys.previous,
    };
    let cluster = Cluster::start(config, db.clone()).await.map_err(|e| e.to_string())?;
    let member = cluster.clone();
    checker.set_filter(Some(Arc::new(move |origin, server| member.checks_here(origin, server))));
    Ok(cluster)
}

/// The access log `config` asks for: `current` when its settings did not
/// change, else a new one (the old one flushes and ends when the last
/// request holding it is done).
fn open_access_log(
    config: &Config,
    metrics: &Metrics,
    current: Option<&Arc<AccessLog>>,
) -> Result<Option<Arc<AccessLog>>, String> {
    let Some(wanted) = &config.access_log else { return Ok(None) };
    if let Some(log) = current.filter(|l| &l.config == wanted) {
        return Ok(Some(Arc::clone(log)));
    }
    AccessLog::start(wanted.clone(), Arc::clone(&metrics.access_log))
        .map(|l| Some(Arc::new(l)))
        .map_err(|e| e.to_string())
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
    /// This node's cluster membership (`[cluster]`): set at start, or a
    /// moment after a binary upgrade (once the old process left).
    pub(crate) cluster: Arc<OnceLock<Cluster>>,
    pub(crate) routes: ArcSwap<Routes>,
    pub(crate) metrics: Arc<Metrics>,
    /// HostDB's changes and check results for `GET /events` and `/checks`.
    pub(crate) events: Events,
    /// The running config (for the admin token and reload comparisons).
    pub(crate) config: ArcSwap<Config>,
    pub(crate) node: String,
    /// TCP and TLS to origins; its profiles outlive reloads.
    pub(crate) tls: Arc<TlsConnect>,
    /// The TLS listener (`listen_tls`), whose certificates reload swaps.
    pub(crate) listener: Option<Arc<TlsListener>>,
    config_path: PathBuf,
    reload_lock: Mutex<()>,
}

impl Shared {
    /// Builds everything from `loaded` (made with `tls`). Must run inside
    /// the runtime.
    pub(crate) async fn start(
        loaded: Loaded,
        config_path: PathBuf,
        tls: Arc<TlsConnect>,
    ) -> Result<Arc<Self>, String> {
        let Loaded { config, checks, hostdb, cluster_keys, upstreams, upgrades, certificates } = loaded;
        let listener = match (config.listen_tls, certificates) {
            (Some(_), Some(certs)) => Some(Arc::new(TlsListener::new(certs)?)),
            _ => None,
        };
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
        let pool = Pool::with_connector(
            PoolConfig {
                max_idle_per_server: config.max_idle_per_server,
                idle_timeout: config.idle_timeout,
                connect_timeout: config.connect_timeout,
                ..PoolConfig::default()
            },
            observer,
            Arc::clone(&tls) as _,
        );
        let checker = Checker::new(
            db.clone(),
            Arc::new(PoolProbe::new(pool.clone())),
            checks,
            CheckerOptions::default(),
        );
        checker.set_upstreams(upstreams.clone());
        let events = Events::start(db.clone(), Arc::clone(&metrics.events));
        let (m, ev) = (Arc::clone(&metrics), events.clone());
        checker.on_result(Arc::new(move |origin, server, _, result| {
            m.check(origin, server, result.passed);
            ev.on_check(origin, server, result);
        }));
        let (m, ev) = (Arc::clone(&metrics), events.clone());
        db.subscribe(Arc::new(move |e: &vigil_hostdb::Event| {
            m.on_event(e);
            ev.on_event(e);
        }));
        let cluster = Arc::new(OnceLock::new());
        if let (Some(c), Some(keys)) = (&config.cluster, cluster_keys) {
            let _ = cluster.set(join_cluster(c, keys, &db, &checker).await?);
        }
        metrics.register(
            db.clone(),
            pool.clone(),
            cluster.clone(),
            Arc::clone(&tls),
            listener.clone(),
            checker.clone(),
        );

        let access_log = open_access_log(&config, &metrics, None)?;
        let node = config.cluster.as_ref().map_or_else(|| "vigil".to_owned(), |c| c.node_id.clone());
        Ok(Arc::new(Self {
            routes: ArcSwap::from_pointee(Routes::new(&config, &upstreams, &upgrades, access_log, None)),
            config: ArcSwap::from_pointee(config),
            tls,
            listener,
            db,
            pool,
            checker,
            cluster,
            metrics,
            events,
            node,
            config_path,
            reload_lock: Mutex::new(()),
        }))
    }

    /// Reopens the access log's file (`SIGUSR1`, after logrotate moved it).
    pub(crate) fn reopen_logs(&self) {
        if let Some(log) = &self.routes.load().access_log {
            log.reopen();
        }
    }

    /// Writes out what the access log holds and stops it (at shutdown).
    pub(crate) fn close_logs(&self) {
        if let Some(log) = &self.routes.load().access_log {
            log.close();
        }
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
        // Everything is read and checked here, cluster keys included: a key
        // file that cannot be read refuses the reload before anything changed.
        let Loaded { config, checks, hostdb, cluster_keys, upstreams, upgrades, certificates } =
            load(&self.config_path, &self.tls)?;
        let old_routes = self.routes.load_full();
        // Opened first: a log that cannot be opened refuses the reload whole.
        let access_log = open_access_log(&config, &self.metrics, old_routes.access_log.as_ref())?;
        let report = self.db.apply(&hostdb).map_err(|e| e.to_string())?;
        self.checker.set_upstreams(upstreams.clone());
        self.checker.set_config(checks);
        self.routes.store(Arc::new(Routes::new(
            &config,
            &upstreams,
            &upgrades,
            access_log,
            Some(&old_routes),
        )));
        if let (Some(listener), Some(certs)) = (&self.listener, certificates) {
            listener.set_certificates(certs);
        }
        // A key rotation step: the keys apply live, gossip and every peer's
        // replay window carry on.
        let keys_changed = match (self.cluster.get(), cluster_keys, &config.cluster) {
            (Some(cluster), Some(keys), Some(c)) => {
                let previous = keys.previous.len();
                cluster.set_keys(keys.key, keys.previous).then(|| {
                    format!(
                        "; cluster keys changed (seals with {}; previous keys: {previous})",
                        c.key_file.value.display()
                    )
                })
            }
            _ => None,
        };
        self.metrics.forget_owners();
        let old = self.config.load();
        let mut restart = Vec::new();
        for (changed, what) in [
            (old.listen != config.listen, "proxy.listen"),
            (old.listen_tls != config.listen_tls, "proxy.listen_tls"),
            (old.admin != config.admin, "proxy.admin"),
            (old.threads != config.threads, "proxy.threads"),
            (old.connect_timeout != config.connect_timeout, "l4.connect_timeout"),
            (old.max_idle_per_server != config.max_idle_per_server, "pool.max_idle_per_server"),
            (old.idle_timeout != config.idle_timeout, "pool.idle_timeout"),
            (
                match (&old.cluster, &config.cluster) {
                    (Some(old), Some(new)) => old.needs_restart(new),
                    (old, new) => old.is_some() != new.is_some(),
                },
                "cluster",
            ),
            (old.state != config.state, "proxy.state_file, state_save_interval, state_max_age"),
            (old.upgrade_socket != config.upgrade_socket, "proxy.upgrade_socket"),
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
        summary.push_str(keys_changed.as_deref().unwrap_or_default());
        if !restart.is_empty() {
            summary.push_str(&format!("; takes effect only after a restart: {}", restart.join(", ")));
        }
        Ok(summary)
    }
}
