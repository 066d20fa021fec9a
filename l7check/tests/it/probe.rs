//! The HTTP probe against real loopback origins (real time: a check is real I/O).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_hostdb::OriginKey;
use vigil_l7check::{HealthChecks, OriginUpstream, PoolProbe, Probe, ProbeOutcome, ProbeRequest};
use vigil_session::{NoopObserver, Pool, PoolConfig};

/// A real origin: `/healthz` answers `status` with body "OK <host>"; `/hang`
/// never answers. Counts connections and requests.
pub(crate) struct Origin {
    pub(crate) addr: SocketAddr,
    pub(crate) status: Arc<AtomicU16>,
    pub(crate) conns: Arc<AtomicUsize>,
    pub(crate) requests: Arc<AtomicUsize>,
}

pub(crate) async fn origin() -> Origin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let (conns, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, c, r) = (status.clone(), conns.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (s, r) = (s.clone(), r.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (s, r) = (s.clone(), r.clone());
                    async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path() == "/hang" {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let host =
                            req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("OK {host}"))));
                        *resp.status_mut() = hyper::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Origin { addr, status, conns, requests }
}

/// Reads up to the end of a request head; `false` if the client went first.
async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A raw origin answering each request once with `reply` and then closing.
async fn raw_origin(reply: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

fn check(extra: &str) -> HealthChecks {
    let text = format!(
        "[defaults]\ntimeout = \"300ms\"\n[[check]]\norigin = \"app\"\npath = \"/healthz\"\n{extra}\n"
    );
    HealthChecks::parse(&text, "hc.toml").unwrap()
}

async fn run(pool: &Pool, hc: &HealthChecks, server: SocketAddr, fresh: bool) -> ProbeOutcome {
    let key: OriginKey = "app:8080".parse().unwrap();
    let c = hc.matching(&key).unwrap();
    let probe = PoolProbe::new(pool.clone());
    probe
        .probe(ProbeRequest { origin: &key, server, upstream: OriginUpstream::default(), check: c, fresh })
        .await
}

fn pool() -> Pool {
    Pool::new(PoolConfig::default(), Arc::new(NoopObserver))
}

#[tokio::test]
async fn status_and_body_decide_and_host_defaults_to_the_origin() {
    let o = origin().await;
    let pool = pool();
    let hc = check("expect_body = \"OK app:8080\"");
    let out = run(&pool, &hc, o.addr, false).await;
    assert!(out.result.passed, "{out:?}");
    assert_eq!(&*out.result.detail, "200");

    o.status.store(503, Ordering::SeqCst);
    let out = run(&pool, &hc, o.addr, false).await;
    assert!(!out.result.passed && !out.l4_failure);
    assert_eq!(&*out.result.detail, "503");

    o.status.store(302, Ordering::SeqCst); // in the default 200-399, never followed
    let hc_default = check("");
    assert!(run(&pool, &hc_default, o.addr, false).await.result.passed);

    o.status.store(200, Ordering::SeqCst);
    let wrong_body = check("expect_body = \"READY\"");
    let out = run(&pool, &wrong_body, o.addr, false).await;
    assert!(!out.result.passed);
    assert!(out.result.detail.contains("body"), "{out:?}");

    let head = check("method = \"HEAD\"\nhost = \"health.internal\"");
    assert!(run(&pool, &head, o.addr, false).await.result.passed);
}

#[tokio::test]
async fn in_steady_state_checks_open_no_new_connections_and_fresh_ones_do() {
    let o = origin().await;
    let pool = pool();
    let hc = check("");
    for _ in 0..20 {
        assert!(run(&pool, &hc, o.addr, false).await.result.passed);
    }
    assert_eq!((o.conns.load(Ordering::SeqCst), o.requests.load(Ordering::SeqCst)), (1, 20));
    for _ in 0..3 {
        assert!(run(&pool, &hc, o.addr, true).await.result.passed);
    }
    assert_eq!(o.conns.load(Ordering::SeqCst), 4, "each fresh check: one new connection");
}

#[tokio::test]
async fn a_hanging_endpoint_fails_by_timeout() {
    let o = origin().await;
    let hc = HealthChecks::parse(
        "[defaults]\ntimeout = \"200ms\"\n[[check]]\norigin = \"app\"\npath = \"/hang\"\n",
        "hc.toml",
    )
    .unwrap();
    let start = tokio::time::Instant::now();
    let out = run(&pool(), &hc, o.addr, false).await;
    assert_eq!((&*out.result.detail, out.result.passed, out.l4_failure), ("timeout", false, false));
    assert!(start.elapsed() < Duration::from_secs(2), "one timeout bounds the check: {:?}", start.elapsed());
}

#[tokio::test]
async fn garbage_fails_and_refused_connections_fail_as_l4() {
    let garbage = raw_origin(b"this is not http\r\n\r\n").await;
    let out = run(&pool(), &check(""), garbage, false).await;
    assert!(!out.result.passed);
    assert_eq!(&*out.result.detail, "protocol error");
    assert!(out.l4_failure, "SPEC: a garbage answer is an L4 failure, for a check as for a request");
    let smuggler =
        raw_origin(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
            .await;
    let out = run(&pool(), &check(""), smuggler, false).await;
    assert_eq!((&*out.result.detail, out.result.passed, out.l4_failure), ("protocol error", false, true));
    let bad_chunk =
        raw_origin(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nOK\r\n0\r\n\r\n").await;
    let out = run(&pool(), &check(""), bad_chunk, false).await;
    assert_eq!((&*out.result.detail, out.l4_failure), ("protocol error", true), "a malformed body too");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = run(&pool(), &check(""), closed, false).await;
    assert_eq!((&*out.result.detail, out.l4_failure), ("connect refused", true));
}

#[tokio::test]
async fn a_reused_session_that_died_is_retried_on_a_fresh_one_before_it_counts() {
    // Keep-alive answer, then the server closes: every pooled session dies idle.
    let addr = raw_origin(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK").await;
    let pool = pool();
    for _ in 0..20 {
        let out = run(&pool, &check(""), addr, false).await;
        assert!(out.result.passed, "{out:?}");
    }
}

/// Polls `cond` every 10 ms for up to 5 s (real I/O under way: no paused time).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn end_to_end_an_origin_answering_503_turns_unhealthy_and_recovers() {
    use vigil_hostdb::{HostDb, HostDbConfig, L4State, L7State, OriginSpec, ServerSource};
    use vigil_l7check::{Checker, CheckerOptions};

    let o = origin().await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let hc = HealthChecks::parse(
        "[defaults]\ninterval = \"200ms\"\nunhealthy_interval = \"160ms\"\ntimeout = \"150ms\"\njitter = \"0%\"\nidle_after = \"1h\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n[[check]]\norigin = \"app\"\npath = \"/healthz\"\n",
        "hc.toml",
    )
    .unwrap();
    let key: OriginKey = "app:8080".parse().unwrap();
    let db = HostDb::new();
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec {
            key: key.clone(),
            servers: ServerSource::Static(vec![o.addr, refused]),
            lb: Default::default(),
            check: hc.matching(&key).map(|c| c.settings.policy),
            policy: Default::default(),
        }],
        ..Default::default()
    })
    .unwrap();
    let checker = Checker::new(db.clone(), Arc::new(PoolProbe::new(pool())), hc, CheckerOptions::default());
    let origin = db.origin("app:8080").unwrap();
    let (good, bad) = (origin.server(o.addr).unwrap(), origin.server(refused).unwrap());

    checker.touch(&origin, tokio::time::Instant::now().into_std());
    eventually("healthy", || good.l7_state() == L7State::Healthy).await;
    eventually("refused server L4-down and unhealthy", || {
        bad.l4_state(tokio::time::Instant::now().into_std()) != L4State::Up
            && bad.l7_state() == L7State::Unhealthy
    })
    .await;

    o.status.store(503, Ordering::SeqCst);
    eventually("unhealthy on 503", || good.l7_state() == L7State::Unhealthy).await;
    assert!(!good.is_routable(tokio::time::Instant::now().into_std()));
    assert_eq!(&*good.l7().last_result.as_ref().unwrap().detail, "503");

    o.status.store(200, Ordering::SeqCst);
    eventually("recovered", || good.l7_state() == L7State::Healthy).await;
    let checks = o.requests.load(Ordering::SeqCst);
    assert!(checks >= 6, "{checks}");
    assert_eq!(o.conns.load(Ordering::SeqCst), 1, "{checks} checks over one pooled session");
    assert!(checker.metrics().failed() >= 2 && checker.metrics().passed() >= 4);
}

/// Runs the check for `app:8080` from a whole health-check file `text`.
async fn run_file(text: &str, server: SocketAddr) -> ProbeOutcome {
    let hc = HealthChecks::parse(&format!("[defaults]\ntimeout = \"300ms\"\n{text}"), "hc.toml").unwrap();
    run(&pool(), &hc, server, false).await
}

#[tokio::test]
async fn expect_header_needs_the_field_and_value_it_names() {
    let reply = b"HTTP/1.1 200 OK\r\nx-db: degraded\r\ncontent-length: 2\r\n\r\nOK";
    let server = raw_origin(reply).await;
    let file = |h: &str| format!("[[check]]\norigin = \"app\"\nexpect_header = {h}\n");
    let out = run_file(&file("{ name = \"x-db\", regex = \"^(ok|degraded)$\" }"), server).await;
    assert_eq!((out.result.passed, &*out.result.detail), (true, "200"), "{out:?}");
    let out = run_file(&file("{ name = \"x-db\", value = \"ok\" }"), server).await;
    assert_eq!((out.result.passed, out.l4_failure), (false, false));
    assert_eq!(&*out.result.detail, "200, x-db: \"degraded\" not as expected");
    let out = run_file(&file("{ name = \"x-ready\" }"), server).await;
    assert_eq!(&*out.result.detail, "200, no x-ready header");
}

/// A line-protocol server (Redis-like): `PING` gets `reply`, `QUIT` closes;
/// `SLOW` never answers. Counts connections.
async fn line_server(reply: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut line = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    line.extend_from_slice(&buf[..n]);
                    while let Some(end) = line.windows(2).position(|w| w == b"\r\n") {
                        let cmd: Vec<u8> = line.drain(..end + 2).collect();
                        match &cmd[..end] {
                            b"PING" => {
                                let _ = s.write_all(reply.as_bytes()).await;
                            }
                            b"QUIT" => return,
                            b"SLOW" => tokio::time::sleep(Duration::from_secs(3600)).await,
                            _ => {
                                let _ = s.write_all(b"-ERR unknown command\r\n").await;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn tcp_checks_connect_send_and_expect_on_connections_of_their_own() {
    let tcp = |steps: &str| format!("[[check]]\norigin = \"app\"\nkind = \"tcp\"\n{steps}\n");
    let (good, conns) = line_server("+PONG\r\n").await;
    let ping = tcp("steps = [{ send = \"PING\\r\\n\" }, { expect = \"+PONG\" }, { send = \"QUIT\\r\\n\" }]");
    for _ in 0..3 {
        let out = run_file(&ping, good).await;
        assert_eq!((out.result.passed, &*out.result.detail), (true, "tcp: ok"), "{out:?}");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "a connection of its own, every time");

    let out = run_file(&tcp(""), good).await;
    assert_eq!((out.result.passed, &*out.result.detail), (true, "tcp: connected"));

    let regex = tcp("steps = [{ send = \"PING\\r\\n\" }, { expect_regex = \"^\\\\+(PONG|OK)\\r\\n$\" }]");
    assert!(run_file(&regex, good).await.result.passed);

    let (bad, _) = line_server("-ERR loading\r\n").await;
    let out = run_file(&ping, bad).await;
    assert_eq!((out.result.passed, out.l4_failure), (false, false));
    assert_eq!(&*out.result.detail, r#"tcp: expected "+PONG", got "-ERR loading\r\n" (timeout)"#);
    let quit = tcp("steps = [{ send = \"QUIT\\r\\n\" }, { expect = \"+OK\" }]");
    let out = run_file(&quit, good).await;
    assert_eq!(&*out.result.detail, r#"tcp: expected "+OK", got "" (closed)"#);

    let slow = tcp("steps = [{ send = \"SLOW\\r\\n\" }, { expect = \"+OK\" }]");
    let out = run_file(&slow, good).await;
    assert_eq!(&*out.result.detail, r#"tcp: expected "+OK", got "" (timeout)"#);
    assert!(!out.l4_failure, "an answer that does not come is the check's failure");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = run_file(&ping, closed).await;
    assert_eq!((&*out.result.detail, out.l4_failure), ("tcp: connect refused", true));
}

/// A server that reads the first line, writes `first` (possibly nothing),
/// then resets the connection (zero linger).
async fn resetting_server(first: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(first).await;
            s.set_zero_linger().unwrap();
            drop(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_reset_counts_at_l4_only_before_the_server_said_anything() {
    let file = "[[check]]\norigin = \"app\"\nkind = \"tcp\"\n\
                steps = [{ send = \"PING\\r\\n\" }, { expect = \"+PONG\" }, { expect = \"+OK\" }]\n";
    let silent = resetting_server(b"").await;
    let out = run_file(file, silent).await;
    assert!(!out.result.passed, "{out:?}");
    assert!(out.l4_failure, "reset before a byte came back is the server's L4 failure: {out:?}");
    assert!(out.result.detail.contains("reset"), "{out:?}");

    let talked = resetting_server(b"+PONG\r\n").await;
    let out = run_file(file, talked).await;
    assert!(!out.result.passed, "{out:?}");
    assert!(!out.l4_failure, "a server that answered and then reset failed the check only: {out:?}");
    assert_eq!(&*out.result.detail, r#"tcp: expected "+OK", got "\r\n" (reset)"#);
}

#[tokio::test]
async fn a_check_on_another_port_never_counts_at_l4_and_names_its_port() {
    let admin = origin().await;
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let port = admin.addr.port();
    // The service port refuses; the admin port on the same address answers.
    let out = run_file(&format!("[[check]]\norigin = \"app\"\nport = {port}\n"), service).await;
    assert!(out.result.passed, "{out:?}");
    assert_eq!(admin.requests.load(Ordering::SeqCst), 1);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for kind in ["http", "tcp"] {
        let file = format!("[[check]]\norigin = \"app\"\nkind = \"{kind}\"\nport = {closed}\n");
        let out = run_file(&file, admin.addr).await;
        assert!(!out.result.passed && !out.l4_failure, "{kind}: {out:?}");
        assert!(out.result.detail.starts_with(&format!("port {closed}: ")), "{kind}: {out:?}");
        assert!(out.result.detail.contains("refused"), "{kind}: {out:?}");
    }
}

/// An origin that answers the first request on each connection and leaves
/// the next hanging: a reused session "behind a dead path".
async fn answers_once_per_connection() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK").await;
                // Keep the connection open and never answer again.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_reused_session_that_hangs_is_retried_on_a_fresh_one_before_it_counts() {
    let addr = answers_once_per_connection().await;
    let pool = pool();
    for i in 0..3 {
        let out = run(&pool, &check(""), addr, false).await;
        assert!(out.result.passed, "check {i}: {out:?}");
    }
}

/// An h2c gRPC health origin answering the first stream of each connection
/// (SERVING for the service `vigil.Test`, NOT_FOUND for any other, so a
/// request that lost its body fails) and leaving later streams hanging.
async fn grpc_once_per_connection() -> (SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let streams = Arc::new(AtomicUsize::new(0));
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let first = streams.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        if !first {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // 5-byte frame header, then field 1 (the service name).
                        let named = body.len() == 5 + 2 + 10 && &body[7..] == b"vigil.Test";
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", if named { "0" } else { "5" }.parse().unwrap());
                        let body = Frames(vec![
                            hyper::body::Frame::trailers(trailers),
                            hyper::body::Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1])),
                        ]);
                        let mut resp = hyper::Response::new(body);
                        resp.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

/// A body of frames given up front (popped from the end).
struct Frames(Vec<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop().map(Ok))
    }
}

#[tokio::test]
async fn a_grpc_check_on_a_reused_h2_session_that_hangs_is_retried_whole_on_a_fresh_one() {
    use vigil_session::{Protocol, Upstream};
    let (addr, conns) = grpc_once_per_connection().await;
    let hc = HealthChecks::parse(
        "[defaults]\ntimeout = \"300ms\"\n[[check]]\norigin = \"app\"\nkind = \"grpc\"\nservice = \"vigil.Test\"\n",
        "hc.toml",
    )
    .unwrap();
    let key: OriginKey = "app:8080".parse().unwrap();
    let check = hc.matching(&key).unwrap();
    let pool = pool();
    let probe = PoolProbe::new(pool.clone());
    let upstream = OriginUpstream { upstream: Upstream::plain(Protocol::H2), https: false };
    for i in 0..3 {
        let out =
            probe.probe(ProbeRequest { origin: &key, server: addr, upstream, check, fresh: false }).await;
        assert_eq!((out.result.passed, &*out.result.detail), (true, "grpc: SERVING"), "check {i}: {out:?}");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3, "each retry on a fresh connection, its body whole");
}

#[tokio::test]
async fn a_check_answer_saying_vigil_health_drain_is_a_signal_not_a_pass() {
    let reply = b"HTTP/1.1 200 OK\r\nvigil-health: Drain\r\ncontent-length: 2\r\n\r\nOK";
    let server = raw_origin(reply).await;
    let out = run_file("[[check]]\norigin = \"app\"\n", server).await;
    assert_eq!(
        (out.result.passed, out.signalled, &*out.result.detail),
        (false, true, "200, vigil-health: drain")
    );
    let other = raw_origin(b"HTTP/1.1 200 OK\r\nvigil-health: fine\r\ncontent-length: 2\r\n\r\nOK").await;
    let out = run_file("[[check]]\norigin = \"app\"\n", other).await;
    assert_eq!((out.result.passed, out.signalled), (true, false), "only down and drain mean anything");
}
