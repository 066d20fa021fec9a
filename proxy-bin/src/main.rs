//! `vigil`: the reverse proxy binary. The only crate that reads files, the
//! environment and the command line; it wires `vigil-hostdb`,
//! `vigil-session`, `vigil-l7check` and `vigil-cluster` together.
//!
//! - `vigil [run] --config vigil.toml`: the proxy and its admin API.
//! - `vigil check-config --config vigil.toml`: validates both files.
//! - `vigil status [--admin 127.0.0.1:9090]`: a table of origins and servers.
//! - `vigil demo`: a self-contained show on loopback.

#![allow(clippy::print_stderr, clippy::print_stdout)]

mod accesslog;
mod admin;
mod app;
mod client;
mod config;
mod demo;
mod forward;
mod h1;
mod limits;
mod listener;
mod metrics;
mod routes;
mod server;
mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "usage: vigil [run] --config vigil.toml | vigil check-config --config vigil.toml | vigil status [--admin 127.0.0.1:9090] | vigil demo [--seconds 12]";

/// How long SIGTERM waits for requests in flight (SPEC: up to 30 s).
const DRAIN: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq)]
enum Cmd {
    Run(PathBuf),
    CheckConfig(PathBuf),
    Status(SocketAddr),
    Demo(u64),
}

fn parse_cli(args: &[String]) -> Result<Cmd, String> {
    let (cmd, rest) = match args.first().map(String::as_str) {
        Some("run") => ("run", &args[1..]),
        Some("check-config") => ("check-config", &args[1..]),
        Some("status") => {
            return match &args[1..] {
                [] => Ok(Cmd::Status(SocketAddr::from(([127, 0, 0, 1], 9090)))),
                [flag, addr] if flag == "--admin" => addr
                    .parse()
                    .map(Cmd::Status)
                    .map_err(|_| format!("vigil status: --admin {addr:?} is not an ip:port address")),
                _ => Err(format!("vigil status: expected [--admin ip:port]\n{USAGE}")),
            };
        }
        Some("demo") => {
            return match &args[1..] {
                [] => Ok(Cmd::Demo(12)),
                [flag, n] if flag == "--seconds" => match n.parse::<u64>() {
                    Ok(n) if (4..=3600).contains(&n) => Ok(Cmd::Demo(n)),
                    _ => Err(format!("vigil demo: --seconds takes 4 to 3600, not {n:?}")),
                },
                _ => Err(format!("vigil demo: expected [--seconds N]\n{USAGE}")),
            };
        }
        Some("-h" | "--help") | None => return Err(USAGE.to_owned()),
        Some(_) => ("run", args),
    };
    let config = match rest {
        [flag, path] if flag == "--config" || flag == "-c" => PathBuf::from(path),
        _ => return Err(format!("vigil {cmd}: expected --config FILE\n{USAGE}")),
    };
    Ok(if cmd == "run" { Cmd::Run(config) } else { Cmd::CheckConfig(config) })
}

/// mimalloc: a request makes a handful of short-lived allocations (header
/// maps, heads, buffers); malloc and free take about 600 instructions a
/// request with it against about 1 000 with glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_cli(&args) {
        Ok(Cmd::CheckConfig(path)) => match check_config(&path) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Ok(Cmd::Run(path)) => run(&path),
        Ok(Cmd::Status(admin)) => status::main(admin),
        Ok(Cmd::Demo(seconds)) => demo::main(seconds),
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
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
        let server = match server::start(Arc::clone(&shared), listen, admin).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        };
        let tls = server.tls.map_or_else(|| "-".to_owned(), |a| a.to_string());
        tracing::info!(proxy = %server.proxy, tls = %tls, admin = %server.admin, version = env!("CARGO_PKG_VERSION"), "vigil is serving");
        if let Err(e) = wait_for_signals(&shared).await {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight (up to 30 s)");
        // Leaving the cluster hands this node's checks over at once, while
        // requests in flight finish.
        let leave = async {
            if let Some(c) = &shared.cluster {
                c.leave().await;
            }
        };
        tokio::join!(server.shutdown(DRAIN), leave);
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
async fn wait_for_signals(shared: &Arc<app::Shared>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            _ = usr1.recv() => shared.reopen_logs(),
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                let s = Arc::clone(shared);
                // Errors are logged by reload itself.
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_line_forms() {
        assert_eq!(parse_cli(&args("--config v.toml")), Ok(Cmd::Run("v.toml".into())));
        assert_eq!(parse_cli(&args("run --config v.toml")), Ok(Cmd::Run("v.toml".into())));
        assert_eq!(parse_cli(&args("check-config --config v.toml")), Ok(Cmd::CheckConfig("v.toml".into())));
        assert_eq!(
            parse_cli(&args("status --admin 127.0.0.1:9191")),
            Ok(Cmd::Status("127.0.0.1:9191".parse().unwrap()))
        );
        assert_eq!(parse_cli(&args("status")), Ok(Cmd::Status("127.0.0.1:9090".parse().unwrap())));
        assert!(parse_cli(&args("status --admin nope")).is_err());
        assert_eq!(parse_cli(&args("demo")), Ok(Cmd::Demo(12)));
        assert_eq!(parse_cli(&args("demo --seconds 5")), Ok(Cmd::Demo(5)));
        assert!(parse_cli(&args("demo --seconds 1")).is_err());
        assert!(parse_cli(&args("check-config")).unwrap_err().contains("--config FILE"));
        assert!(parse_cli(&args("")).unwrap_err().starts_with("usage:"));
    }
}
