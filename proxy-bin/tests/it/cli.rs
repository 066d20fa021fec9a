//! The command line of the real binary: help, version, completions, usage
//! errors, and `status --watch` riding out an admin API that comes and goes.

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness::{free_port, wait_until};

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let out = vigil(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("vigil {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_every_subcommand_and_each_has_its_own() {
    let out = vigil(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for sub in ["run", "check-config", "status", "demo", "completions"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(sub)), "{sub} missing from:\n{help}");
    }
    assert!(help.contains("--config <FILE>"), "{help}");
    for (sub, says) in [
        ("run", "SIGHUP"),
        ("check-config", "file:line:column"),
        ("status", "--watch"),
        ("demo", "--seconds"),
        ("completions", "bash"),
    ] {
        let out = vigil(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
        let help = text(&out.stdout);
        assert!(help.contains(&format!("Usage: vigil {sub}")) && help.contains(says), "{sub}:\n{help}");
    }
}

#[test]
fn completions_print_a_script() {
    let out = vigil(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.contains("complete") && script.contains("vigil"), "{script}");
    assert!(script.contains("check-config") && script.contains("--admin"), "{script}");
    for shell in ["zsh", "fish"] {
        let out = vigil(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("vigil"), "{shell}");
    }
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let out = vigil(&["--confg", "v.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("unexpected argument '--confg'") && err.contains("'--config'"), "{err}");

    let out = vigil(&["status", "--admin", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("'nope'") && err.contains("--admin"), "{err}");

    let out = vigil(&["demo", "--seconds", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("4..=3600"), "{}", text(&out.stderr));

    let out = vigil(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--config <FILE>"), "{}", text(&out.stderr));

    // Bare `vigil`: the help, and still a usage error.
    let out = vigil(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage:"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}

/// `vigil status --watch` with its stdout collected as it comes.
struct Watch {
    child: Child,
    out: Arc<parking_lot::Mutex<String>>,
}

impl Watch {
    fn start(admin: SocketAddr) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["status", "--watch", "--interval", "1", "--admin", &admin.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(parking_lot::Mutex::new(String::new()));
        let sink = Arc::clone(&out);
        // A thread, not a task: the pipe read blocks.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                sink.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Watch { child, out }
    }

    fn output(&self) -> String {
        self.out.lock().clone()
    }

    /// Waits (up to 10 s) until the output holds `needle` `times` times.
    async fn until(&self, needle: &str, times: usize) {
        let seen =
            wait_until(Duration::from_secs(10), || async { self.output().matches(needle).count() >= times })
                .await;
        assert!(seen, "{needle:?} not seen {times} times in:\n{}", self.output());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in admin API on `addr`: `/hosts` answers one empty node.
async fn fake_admin(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let svc = service_fn(|_req| async {
                let body = r#"{"node": "stand-in", "origins": []}"#;
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                    body.as_bytes(),
                ))))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_rides_out_an_unreachable_admin_api_and_stops_on_ctrl_c() {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
    let w = Watch::start(admin);
    // Nothing listens yet: an error line per refresh, and it keeps going.
    w.until("cannot reach the admin API", 2).await;
    assert!(w.output().contains(&format!("{admin} every 1 s")), "{}", w.output());
    let server = fake_admin(admin).await;
    w.until("node stand-in · 0 origin(s)", 2).await;
    let out = w.output();
    // Not a terminal: no escape codes, one frame after another a blank line apart.
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(out.matches(&format!("\n\n{admin} every 1 s")).count() >= 3, "{out}");
    server.abort();

    // Ctrl-C is SIGINT: a clean stop.
    let pid = w.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let mut w = w;
    let exited = wait_until(Duration::from_secs(5), || {
        let done = w.child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "status --watch did not stop on SIGINT");
    assert_eq!(w.child.wait().unwrap().code(), Some(0));
}
