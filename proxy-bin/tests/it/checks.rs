//! Check kinds through the real binary: a TCP check against a real Redis
//! beside each server, and an HTTP check on an admin port. (gRPC checks
//! are in `grpc.rs`, beside the gRPC origin they use.)

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

const DEFAULTS: &str = "[defaults]\ninterval = \"150ms\"\nunhealthy_interval = \"150ms\"\ntimeout = \"120ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 2\n";

/// A Redis beside a server: the real `redis-server` when installed, else a
/// stand-in speaking the same lines (`PING`, `AUTH`, `CONFIG SET
/// requirepass`), so the test asserts the same things either way.
enum Redis {
    Real(Child),
    StandIn,
}

impl Redis {
    #[allow(clippy::print_stderr, reason = "the visible reason the stand-in ran")]
    async fn start(addr: SocketAddr) -> Redis {
        // VIGIL_TEST_NO_REDIS=1 runs the stand-in even where Redis is installed.
        let program =
            if std::env::var_os("VIGIL_TEST_NO_REDIS").is_some() { "no-such-redis" } else { "redis-server" };
        let real = Command::new(program)
            .args(["--bind", &addr.ip().to_string(), "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match real {
            Ok(child) => {
                let up = wait_until(Duration::from_secs(10), || async {
                    redis_call(addr, b"PING\r\n").await.starts_with("+PONG")
                })
                .await;
                assert!(up, "redis-server on {addr} did not answer PING");
                Redis::Real(child)
            }
            Err(e) => {
                // CI installs Redis (.ci/run): there the real peer is the test.
                assert!(std::env::var_os("CI").is_none(), "redis-server not runnable in CI: {e}");
                eprintln!("redis-server not runnable ({e}): using the test's stand-in");
                stand_in(addr).await;
                Redis::StandIn
            }
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Redis::Real(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends one command on a connection of its own; returns the first reply.
async fn redis_call(addr: SocketAddr, command: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(addr).await else { return String::new() };
    if s.write_all(command).await.is_err() {
        return String::new();
    }
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

/// Redis's answers to what the test sends, for a machine without Redis.
async fn stand_in(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let locked = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let locked = Arc::clone(&locked);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut pending = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // One command per line, however the writes were cut.
                    while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                        let line: Vec<u8> = pending.drain(..end + 2).collect();
                        let line = String::from_utf8_lossy(&line[..end]).into_owned();
                        let reply: &[u8] = if line == "CONFIG SET requirepass \"\"" {
                            locked.store(false, Ordering::SeqCst);
                            b"+OK\r\n"
                        } else if line.starts_with("CONFIG SET requirepass") {
                            locked.store(true, Ordering::SeqCst);
                            b"+OK\r\n"
                        } else if locked.load(Ordering::SeqCst) && !line.starts_with("AUTH") {
                            b"-NOAUTH Authentication required.\r\n"
                        } else if line == "PING" {
                            b"+PONG\r\n"
                        } else {
                            b"+OK\r\n"
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// The one server `addr` of `origin` in `/hosts`.
async fn server_of(v: &Vigil, origin: &str, addr: SocketAddr) -> serde_json::Value {
    let hosts = v.hosts().await;
    let o = hosts["origins"].as_array().unwrap().iter().find(|o| o["origin"] == origin).cloned();
    let servers = o.map(|o| o["servers"].clone()).unwrap_or_default();
    servers
        .as_array()
        .and_then(|s| s.iter().find(|s| s["addr"] == addr.to_string()).cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_of_each_servers_redis_takes_out_the_server_whose_redis_refuses() {
    let ips = ["127.0.0.6", "127.0.0.7"];
    let web = origins(&ips).await;
    let redis_port = free_port(&ips);
    let redis_a = SocketAddr::new(ips[0].parse().unwrap(), redis_port);
    let _redis = [
        Redis::start(redis_a).await,
        Redis::start(SocketAddr::new(ips[1].parse().unwrap(), redis_port)).await,
    ];
    let port = web[0].addr.port();
    let rest = remap("app.test", &format!("app.test:{port}"), &server_list(&web), "");
    let hc = format!(
        "{DEFAULTS}[[check]]\norigin = \"app.test\"\nkind = \"tcp\"\nport = {redis_port}\nsteps = [{{ send = \"PING\\r\\n\" }}, {{ expect = \"+PONG\" }}]\n"
    );
    let v = Vigil::start("tcpredis", "", &rest, &hc).await;
    let origin = format!("app.test:{port}");
    let ran = |addr: SocketAddr| {
        let (v, origin) = (&v, &origin);
        async move {
            let mut n = 0.0;
            for result in ["pass", "fail"] {
                let series = format!(
                    "vigil_health_checks_total{{origin=\"{origin}\",server=\"{addr}\",result=\"{result}\"}}"
                );
                n += v.metric(&series).await;
            }
            n
        }
    };
    // Lazy, as HTTP checks are: three intervals without traffic, no check.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(ran(web[0].addr).await + ran(web[1].addr).await, 0.0, "a check ran before any request");
    assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    let healthy = |addr| {
        let (v, origin) = (&v, &origin);
        async move {
            let s = server_of(v, origin, addr).await;
            s["l7"]["state"] == "healthy" && s["l7"]["last_detail"] == "tcp: ok"
        }
    };
    for w in &web {
        assert!(
            wait_until(Duration::from_secs(5), || healthy(w.addr)).await,
            "{}",
            server_of(&v, &origin, w.addr).await
        );
    }
    let hosts = v.hosts().await;
    let o = hosts["origins"].as_array().unwrap().iter().find(|o| o["origin"] == origin).cloned().unwrap();
    assert_eq!(o["check"], serde_json::json!({"kind": "tcp", "port": redis_port}), "{o}");
    assert!(ran(web[0].addr).await >= 1.0);
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["status", "--admin", &v.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("tcp checks on port {redis_port} running")), "{table}");

    // Server A's Redis now wants a password: PING gets -NOAUTH.
    assert!(redis_call(redis_a, b"CONFIG SET requirepass s3cret\r\n").await.starts_with("+OK"));
    let out = wait_until(Duration::from_secs(5), || async {
        server_of(&v, &origin, web[0].addr).await["l7"]["state"] == "unhealthy"
    })
    .await;
    let a = server_of(&v, &origin, web[0].addr).await;
    assert!(out, "{a}");
    let detail = a["l7"]["last_detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("port {redis_port}: tcp: expected \"+PONG\", got \"-NOAUTH")),
        "{detail}"
    );
    assert_eq!(a["l4"]["state"], "up", "the web port is fine: {a}");
    let before = web[0].requests();
    for _ in 0..10 {
        assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    }
    assert_eq!(web[0].requests(), before, "no request to the server whose Redis refuses");

    // Its Redis takes commands again: the server comes back.
    let back = b"AUTH s3cret\r\nCONFIG SET requirepass \"\"\r\n";
    let _ = redis_call(redis_a, back).await;
    assert!(
        wait_until(Duration::from_secs(5), || healthy(web[0].addr)).await,
        "{}",
        server_of(&v, &origin, web[0].addr).await
    );
    let series = format!(
        "vigil_health_checks_total{{origin=\"{origin}\",server=\"{}\",result=\"fail\"}}",
        web[0].addr
    );
    assert!(v.metric(&series).await >= 2.0, "{series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_on_an_admin_port_judges_the_server_and_leaves_the_service_ports_l4_alone() {
    let ip = "127.0.0.8";
    let service = Origin::start(ip, free_port(&[ip])).await;
    let admin = Origin::start(ip, free_port(&[ip])).await;
    let (port, admin_port) = (service.addr.port(), admin.addr.port());
    let rest = remap("app.test", &format!("app.test:{port}"), &format!("[\"{}\"]", service.addr), "");
    let hc =
        format!("{DEFAULTS}[[check]]\norigin = \"app.test\"\npath = \"/healthz\"\nport = {admin_port}\n");
    let v = Vigil::start("adminport", "", &rest, &hc).await;
    let origin = format!("app.test:{port}");
    assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    let state = || server_of(&v, &origin, service.addr);
    assert!(wait_until(Duration::from_secs(5), || async { state().await["l7"]["state"] == "healthy" }).await);
    assert!(admin.checks() >= 1);
    assert_eq!(service.checks(), 0, "checks go to the admin port only");

    admin.state.health.store(503, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || async { state().await["l7"]["state"] == "unhealthy" }).await
    );
    assert_eq!(state().await["l7"]["last_detail"], format!("port {admin_port}: 503"));
    assert_eq!(v.get("app.test", "/").await.0, StatusCode::SERVICE_UNAVAILABLE, "its only server is out");

    // The admin port goes away: failed checks, not an L4-down service port.
    admin.state.health.store(0, std::sync::atomic::Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(5), || async { state().await["l7"]["state"] == "healthy" }).await);
    admin.kill();
    let refused = wait_until(Duration::from_secs(5), || async {
        state().await["l7"]["last_detail"] == format!("port {admin_port}: connect refused")
    })
    .await;
    let s = state().await;
    assert!(refused, "{s}");
    assert_eq!((&s["l4"]["state"], &s["l4"]["consecutive_failures"]), (&"up".into(), &0.into()), "{s}");
}
