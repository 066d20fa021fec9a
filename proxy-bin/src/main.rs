//! `vigil`: the reverse proxy binary. The only crate that reads files, the
//! environment and the command line; it wires `vigil-hostdb`,
//! `vigil-session`, `vigil-l7check` and `vigil-cluster` together.
//!
//! - `vigil [run] --config vigil.toml`: the proxy and its admin API.
//! - `vigil run --upgrade --config vigil.toml`: takes over from the running
//!   one (binary upgrade, `upgrade.rs`).
//! - `vigil check-config --config vigil.toml`: validates both files.
//! - `vigil status [--admin 127.0.0.1:9090] [--watch [--interval 2]]`: a
//!   table of origins and servers.
//! - `vigil demo [--seconds 12]`: a self-contained show on loopback.
//! - `vigil completions <shell>`: a shell completion script.
//!
//! The command line is defined in `cli.rs`; systemd notifications in
//! `notify.rs`.

#![allow(clippy::print_stderr, clippy::print_stdout)]

mod accesslog;
mod admin;
mod app;
mod cli;
mod client;
mod config;
mod demo;
mod events;
mod forward;
mod h1;
mod limits;
mod listener;
mod metrics;
mod notify;
mod routes;
mod server;
mod state;
mod status;
mod tunnel;
mod upgrade;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cli::{Command, ConfigArg, DemoArgs, RunArgs};

/// How long SIGTERM waits for requests in flight (SPEC: up to 30 s).
const DRAIN: Duration = Duration::from_secs(30);

/// mimalloc: a request makes a handful of short-lived allocations (header
/// maps, heads, buffers); malloc and free take about 600 instructions a
/// request with it against about 1 000 with glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A usage error prints clap's message and exits 2; --help and
    // --version print to stdout and exit 0.
    let command = cli::parse(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match command {
        Command::CheckConfig(ConfigArg { config }) => match check_config(&config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run(args) => run(&args),
        Command::Status(args) => status::main(&args),
        Command::Demo(DemoArgs { seconds }) => demo::main(seconds),
        Command::Completions { shell } => match cli::completions(shell) {
            // A reader that stopped early (`| head`) is not an error.
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vigil completions: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// Logs go to stderr; `VIGIL_LOG` (tracing's filter syntax) sets the level.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let threads =
        if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let mut builder = if threads == 1 {
        // One thread: no cross-thread wake-ups at all.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().thread_name("vigil").build()
}

/// `vigil run`: serve until SIGTERM or SIGINT; SIGHUP reloads; SIGUSR2
/// starts a binary upgrade. With `--upgrade`, take over from the running one.
fn run(args: &RunArgs) -> ExitCode {
    let path = args.config.as_path();
    // The binary SIGUSR2 starts, by its path read now: a package manager
    // that replaces the file leaves the new binary at that path (later,
    // /proc/self/exe would name the deleted old one).
    let exe = std::env::current_exe();
    let tls = Arc::new(vigil_session::TlsConnect::new());
    let loaded = match app::load(path, &tls) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let upgrade = match (&loaded.config.upgrade_socket, args.upgrade) {
        (Some(socket), true) => Some(socket.clone()),
        (None, true) => {
            eprintln!(
                "{}: --upgrade needs proxy.upgrade_socket, the socket of the running vigil to take over from",
                path.display()
            );
            return ExitCode::from(1);
        }
        (_, false) => None,
    };
    init_logging("info");
    for w in &loaded.config.warnings {
        tracing::warn!("{w}");
    }
    let rt = match runtime(loaded.config.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let exe = exe.map_err(|e| e.to_string());
    let code = rt.block_on(serve(loaded, path, tls, upgrade, exe));
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// How the serving ended.
enum Exit {
    /// SIGTERM or SIGINT.
    Signal,
    /// A new process serves now (binary upgrade).
    Upgraded(upgrade::TakenOver),
}

/// A new process that failed before it served: says why on stderr, tells
/// the old process (which serves on), exits 1.
async fn failed(takeover: Option<upgrade::Takeover>, error: String) -> ExitCode {
    eprintln!("{error}");
    if let Some(t) = takeover {
        t.fail(&error).await;
        eprintln!("vigil run --upgrade: not serving; the running vigil serves on, untouched");
    }
    ExitCode::from(1)
}

async fn serve(
    loaded: app::Loaded,
    path: &Path,
    tls: Arc<vigil_session::TlsConnect>,
    upgrade: Option<std::path::PathBuf>,
    exe: Result<std::path::PathBuf, String>,
) -> ExitCode {
    let mut loaded = loaded;
    let (listen, admin) = (loaded.config.listen, loaded.config.admin);
    let upgrade_socket = loaded.config.upgrade_socket.clone();
    // --upgrade: the running process's sockets and state, before anything
    // else starts.
    let mut takeover = match &upgrade {
        None => None,
        Some(socket) => match upgrade::take_over(socket).await {
            Ok(t) => {
                tracing::info!(socket = %socket.display(), from_version = %t.version, sockets = t.listeners.len(),
                    "binary upgrade: took the listening sockets and the server state");
                Some(t)
            }
            Err(e) => return failed(None, format!("vigil run --upgrade: {e}")).await,
        },
    };
    // The old process still holds the gossip port: this one joins the
    // cluster once it has left.
    let join_later = takeover.is_some() && loaded.cluster_keys.take().is_some();
    let shared = match app::Shared::start(loaded, path.to_owned(), tls).await {
        Ok(s) => s,
        Err(e) => return failed(takeover, format!("{}: {e}", path.display())).await,
    };
    // The state the old process hands over, or a previous process left in
    // the state file, before the first request.
    let state = shared.config.load().state.clone();
    if let Some(t) = &takeover {
        match state::apply_bytes(&shared.db, &t.state) {
            Ok(l) => tracing::info!(
                servers = l.servers,
                skipped = l.skipped,
                "server state taken from the old process"
            ),
            Err(e) => return failed(takeover, format!("cannot apply {e}")).await,
        }
    } else if let Some(st) = &state {
        let (db, path, max_age) = (shared.db.clone(), st.path.clone(), st.max_age);
        match tokio::task::spawn_blocking(move || state::load(&db, &path, max_age)).await {
            Ok(Ok(Some(l))) => tracing::info!(
                file = %st.path.display(), servers = l.servers, skipped = l.skipped,
                "server state loaded from the state file"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("state file loader failed: {e}"),
        }
    }
    let inherited = takeover.as_mut().map(|t| std::mem::take(&mut t.listeners)).unwrap_or_default();
    let server = match server::start(Arc::clone(&shared), listen, admin, inherited).await {
        Ok(s) => s,
        Err(e) => return failed(takeover, e.to_string()).await,
    };
    // Serving: the old process stops accepting and drains.
    let handed = match takeover {
        Some(t) => Some(t.serving().await),
        None => None,
    };
    if let Some(st) = &state {
        state::spawn_saver(shared.db.clone(), st.path.clone(), st.save_interval);
    }
    // This process's own upgrade socket (after a hand-over: the old process
    // had the path until then).
    let (taken_tx, mut taken) = tokio::sync::mpsc::channel(1);
    let upgrades = match &upgrade_socket {
        None => None,
        Some(socket) => match upgrade::listen(socket, shared.db.clone(), server.sockets(), taken_tx) {
            Ok(u) => Some(u),
            // Serving already, in place of the old process: on without upgrades.
            Err(e) if handed.is_some() => {
                tracing::error!("{e}; the next binary upgrade needs a restart");
                None
            }
            Err(e) => {
                eprintln!("{e}");
                server.shutdown(Duration::ZERO).await;
                return ExitCode::from(1);
            }
        },
    };
    if let Some(handed) = handed
        && join_later
    {
        tokio::spawn(join_cluster_later(Arc::clone(&shared), handed));
    }
    let tls = server.tls.map_or_else(|| "-".to_owned(), |a| a.to_string());
    tracing::info!(proxy = %server.proxy, tls = %tls, admin = %server.admin, version = env!("CARGO_PKG_VERSION"), "vigil is serving");
    // What `systemctl status` shows: the bound addresses.
    let mut serving = format!("serving: proxy {}", server.proxy);
    if let Some(addr) = server.tls {
        serving.push_str(&format!(", tls {addr}"));
    }
    serving.push_str(&format!(", admin {}", server.admin));
    let respawn = upgrade_socket.as_ref().map(|_| (exe, path));
    let exit = match wait_for_signals(&shared, &serving, &mut taken, respawn).await {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    // Event streams end now, or they would hold the drain for 30 s.
    shared.events.close();
    match exit {
        Exit::Signal => {
            notify::stopping();
            tracing::info!("shutting down: no new connections; finishing requests in flight (up to 30 s)");
            if let Some(u) = upgrades {
                u.close();
            }
            // Leaving the cluster hands this node's checks over at once,
            // while requests in flight finish.
            let leave = async {
                if let Some(c) = shared.cluster.get() {
                    c.leave().await;
                }
            };
            tokio::join!(server.shutdown(DRAIN), leave);
            if let Some(st) = state {
                let db = shared.db.clone();
                match tokio::task::spawn_blocking(move || state::save(&db, &st.path)).await {
                    Ok(Ok(())) => tracing::info!("server state written to the state file"),
                    Ok(Err(e)) => tracing::warn!("{e}"),
                    Err(e) => tracing::warn!("state file writer failed: {e}"),
                }
            }
        }
        Exit::Upgraded(taken) => {
            // No STOPPING=1: the service goes on, in the new process.
            tracing::info!(
                pid = taken.pid,
                "handed over to the new process: no new connections here; finishing requests in flight (up to 30 s)"
            );
            if let Some(u) = upgrades {
                u.close();
            }
            // The new process joins the cluster with this node's id once
            // this one has left (and says so). The state file is the new
            // process's to write now.
            let leave = async {
                if let Some(c) = shared.cluster.get() {
                    c.leave().await;
                }
                taken.released().await;
            };
            tokio::join!(server.shutdown(DRAIN), leave);
        }
    }
    let s = Arc::clone(&shared);
    let _ = tokio::task::spawn_blocking(move || s.close_logs()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// After a binary upgrade: joins the cluster once the old process has left
/// it (its gossip port is this node's), retrying the bind for a while.
async fn join_cluster_later(shared: Arc<app::Shared>, handed: upgrade::Handed) {
    handed.released().await;
    let Some(c) = shared.config.load().cluster.clone() else { return };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let joined = match app::read_cluster_keys(&c) {
            Ok(keys) => app::join_cluster(&c, keys, &shared.db, &shared.checker).await,
            Err(e) => Err(e.to_string()),
        };
        match joined {
            Ok(cluster) => {
                let _ = shared.cluster.set(cluster);
                tracing::info!(node = %c.node_id, "cluster: joined in place of the old process");
                return;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("cluster: not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::error!("{e}: this node stays out of the cluster until it restarts");
                return;
            }
        }
    }
}

/// Returns on SIGTERM or SIGINT, or when a new process took over; reloads
/// on SIGHUP; reopens the access log on SIGUSR1; SIGUSR2 starts `vigil run
/// --upgrade` (`respawn`: the binary and the config, when
/// `upgrade_socket` is set).
///
/// Tells systemd READY=1 (with `serving`, which names the listeners) once
/// the handlers are in: a SIGHUP or SIGTERM sent as soon as it hears that
/// must not meet the default action, which is to die. Around each reload:
/// RELOADING=1 before, READY=1 after, a refused reload too (the running
/// config keeps serving).
async fn wait_for_signals(
    shared: &Arc<app::Shared>,
    serving: &str,
    taken: &mut tokio::sync::mpsc::Receiver<upgrade::TakenOver>,
    respawn: Option<(Result<std::path::PathBuf, String>, &Path)>,
) -> std::io::Result<Exit> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    notify::ready(serving);
    loop {
        tokio::select! {
            _ = usr1.recv() => shared.reopen_logs(),
            _ = term.recv() => return Ok(Exit::Signal),
            _ = int.recv() => return Ok(Exit::Signal),
            Some(t) = taken.recv() => return Ok(Exit::Upgraded(t)),
            _ = usr2.recv() => match &respawn {
                Some((Ok(exe), config)) => upgrade::spawn(exe, config),
                Some((Err(e), _)) => tracing::error!("SIGUSR2: cannot tell where this binary is: {e}"),
                None => tracing::warn!("SIGUSR2: a binary upgrade needs proxy.upgrade_socket; ignored"),
            },
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                notify::reloading();
                let s = Arc::clone(shared);
                // Errors are logged by reload itself; systemd gets them as STATUS.
                let outcome = match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(Ok(summary)) => format!("reloaded, {summary}"),
                    Ok(Err(e)) => format!("reload refused, the running config stays: {e}"),
                    Err(e) => format!("reload failed, the running config stays: {e}"),
                };
                notify::ready(&format!("{serving}; {outcome}"));
            }
        }
    }
}

/// Validates `vigil.toml` and the health-check file it names; warnings go
/// to stderr, the summary is returned.
fn check_config(path: &Path) -> Result<String, String> {
    // Profiles made here are thrown away: the point is that they can be made.
    let app::Loaded { config, checks, .. } = app::load(path, &vigil_session::TlsConnect::new())?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(format!(
        "{}: ok ({} remaps, {} origins with settings, {} health checks in {})",
        path.display(),
        config.remaps.len(),
        config.origins.len(),
        checks.checks.len(),
        config.health_checks.display()
    ))
}
