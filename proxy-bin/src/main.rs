//! `vigil`: the reverse proxy binary. The only crate that reads files, the
//! environment and the command line; it wires `vigil-hostdb`,
//! `vigil-session`, `vigil-l7check` and `vigil-cluster` together.
//!
//! - `vigil [run] --config vigil.toml`: the proxy and its admin API.
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

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cli::{Command, ConfigArg, DemoArgs};

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
        Command::Run(ConfigArg { config }) => run(&config),
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

/// `vigil run`: serve until SIGTERM or SIGINT; SIGHUP reloads.
fn run(path: &Path) -> ExitCode {
    let tls = Arc::new(vigil_session::TlsConnect::new());
    let loaded = match app::load(path, &tls) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
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
    let code = rt.block_on(async {
        let (listen, admin) = (loaded.config.listen, loaded.config.admin);
        let shared = match app::Shared::start(loaded, path.to_owned(), tls).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(1);
            }
        };
        // The state a previous process left, before the first request.
        let state = shared.config.load().state.clone();
        if let Some(st) = &state {
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
            state::spawn_saver(shared.db.clone(), st.path.clone(), st.save_interval);
        }
        let server = match server::start(Arc::clone(&shared), listen, admin).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        let tls = server.tls.map_or_else(|| "-".to_owned(), |a| a.to_string());
        tracing::info!(proxy = %server.proxy, tls = %tls, admin = %server.admin, version = env!("CARGO_PKG_VERSION"), "vigil is serving");
        // What `systemctl status` shows: the bound addresses.
        let mut serving = format!("serving: proxy {}", server.proxy);
        if let Some(addr) = server.tls {
            serving.push_str(&format!(", tls {addr}"));
        }
        serving.push_str(&format!(", admin {}", server.admin));
        if let Err(e) = wait_for_signals(&shared, &serving).await {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
        notify::stopping();
        tracing::info!("shutting down: no new connections; finishing requests in flight (up to 30 s)");
        // Leaving the cluster hands this node's checks over at once, while
        // requests in flight finish.
        // Event streams end now, or they would hold the drain for 30 s.
        shared.events.close();
        let leave = async {
            if let Some(c) = &shared.cluster {
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
        let s = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || s.close_logs()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Returns on SIGTERM or SIGINT; reloads on SIGHUP; reopens the access log
/// on SIGUSR1.
///
/// Tells systemd READY=1 (with `serving`, which names the listeners) once
/// the handlers are in: a SIGHUP or SIGTERM sent as soon as it hears that
/// must not meet the default action, which is to die. Around each reload:
/// RELOADING=1 before, READY=1 after, a refused reload too (the running
/// config keeps serving).
async fn wait_for_signals(shared: &Arc<app::Shared>, serving: &str) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    notify::ready(serving);
    loop {
        tokio::select! {
            _ = usr1.recv() => shared.reopen_logs(),
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
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
