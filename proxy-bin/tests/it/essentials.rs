//! What operators expect of any reverse proxy, through the real binary:
//! limits with their status codes (and nothing leaked after), an origin's
//! connection limit with its queue, request identity and the forwarded
//! fields, and the access log (buffered, reopened on SIGUSR1).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// The process's resident memory, in KiB.
fn rss_kib(v: &Vigil) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", v.child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Descriptors the process has open.
fn fds(v: &Vigil) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", v.child.id())).map_or(0, Iterator::count)
}

/// Writes `bytes` (as much as the proxy takes before closing), then reads
/// the answer until the proxy closes; `None` if it is still open after 5 s.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<String> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before taking all of a huge head.
    let _ = c.write_all(bytes).await;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// Reads one answer with a `Content-Length` body off `c`; returns its status line.
async fn read_answer(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(c.read(&mut byte).await.unwrap(), 1, "the proxy closed mid-head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    c.read_exact(&mut body).await.unwrap();
    head.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_buffers() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start("idle", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    let before = rss_kib(&v);
    assert!(before > 0, "the proxy's memory can be read");
    // Each connection carries a request (its buffers and the request path's
    // state were taken), then waits for its next one. The test's own
    // descriptors stay under the usual soft limit of 1 024.
    const IDLE: u64 = 800;
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let mut c = TcpStream::connect(v.listen).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: www.app.test\r\n\r\n").await.unwrap();
        assert!(read_answer(&mut c).await.starts_with("HTTP/1.1 200 "));
        idle.push(c);
    }
    let per_connection = (rss_kib(&v).saturating_sub(before)) * 1024 / IDLE;
    // A connection that kept its 8 KiB read buffer, its write queue and the
    // request path's state in its task cost 14.8 KB (release build); one
    // that gives them back between requests about 1.8 KB (2.7 KB in this
    // debug build).
    assert!(
        per_connection < 6 * 1024,
        "an idle keep-alive connection costs {per_connection} bytes of the proxy's memory"
    );
    // They still work: the next request on each is answered.
    for c in idle.iter_mut().step_by(100) {
        c.write_all(b"GET / HTTP/1.1\r\nHost: www.app.test\r\n\r\n").await.unwrap();
        assert!(read_answer(c).await.starts_with("HTTP/1.1 200 "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_their_status_close_and_leak_nothing() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let limits = "[limits]\nmax_uri = \"1KiB\"\nmax_headers = 50\nmax_request_body = \"1KiB\"\nbody_timeout = \"300ms\"\n";
    let v = Vigil::start(
        "limits",
        "",
        &format!("{limits}\n{}", remap("www.app.test", &origin, &server_list(&o), "")),
        "",
    )
    .await;
    // Warm up (the pool's connection, the runtime's threads), then count.
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    let baseline = fds(&v);
    assert!(baseline > 0, "the proxy's descriptors can be counted");
    let h = "Host: www.app.test\r\n";
    let mut rss_after_first = 0;

    let long_uri = format!("GET /{} HTTP/1.1\r\n{h}\r\n", "a".repeat(2000));
    let huge_header = format!("GET / HTTP/1.1\r\n{h}x-big: {}\r\n\r\n", "b".repeat(1 << 20));
    let many_headers = format!(
        "GET / HTTP/1.1\r\n{h}{}\r\n",
        (0..10_000).map(|i| format!("x-{i}: 1\r\n")).collect::<String>()
    );
    let big_body = format!("POST /echo HTTP/1.1\r\n{h}Content-Length: 2000\r\n\r\n{}", "c".repeat(2000));
    let big_chunked = format!(
        "POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
        "d".repeat(1024),
        "d".repeat(1024)
    );
    // Nine rounds: what one round's buffers cost may stay with the
    // allocator (which may also take a fresh 4 MiB region once for the
    // largest buffers), but it must not grow round after round: a round
    // that kept its 1 MiB head would add 8 MiB.
    for round in 0..9 {
        for (what, req, status) in [
            ("a 2 000-byte target", long_uri.as_str(), "414"),
            ("a 1 MiB header", huge_header.as_str(), "431"),
            ("10 000 header fields", many_headers.as_str(), "431"),
            ("a declared body over max_request_body", big_body.as_str(), "413"),
            ("a chunked body over max_request_body", big_chunked.as_str(), "413"),
        ] {
            let out = exchange(v.listen, req.as_bytes()).await.unwrap_or_else(|| panic!("{what}: left open"));
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {out}");
        }
        if round == 0 {
            rss_after_first = rss_kib(&v);
            assert!(rss_after_first > 0, "the proxy's memory can be read");
        }
    }
    let rss = rss_kib(&v);
    assert!(
        rss <= rss_after_first + 6 * 1024,
        "memory grew from {rss_after_first} KiB to {rss} KiB over eight more rounds"
    );

    // A body slower than body_timeout: 408, and closed.
    let started = tokio::time::Instant::now();
    let out =
        exchange(v.listen, format!("POST /echo HTTP/1.1\r\n{h}Content-Length: 10\r\n\r\nab").as_bytes())
            .await
            .expect("a stalled body is cut off");
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(started.elapsed() >= Duration::from_millis(250), "cut off only after the timeout");

    for (limit, at_least) in
        [("uri", 1.0), ("headers", 1.0), ("head", 1.0), ("body", 2.0), ("body_timeout", 1.0)]
    {
        let n = v.metric(&format!("vigil_limit_refusals_total{{limit=\"{limit}\"}}")).await;
        assert!(n >= at_least, "{limit}: counted {n}");
    }
    // Every refused connection is closed; what the proxy holds is back to
    // where it was (the pool may have kept or dropped its idle session).
    let settled = wait_until(Duration::from_secs(5), || async { fds(&v) <= baseline }).await;
    assert!(settled, "descriptors: {} after, {baseline} before", fds(&v));
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_once_and_counted() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start(
        "maxconn",
        "",
        &format!("[limits]\nmax_connections = 3\n{}", remap("www.app.test", &origin, &server_list(&o), "")),
        "",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(v.listen).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: www.app.test\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    // The fourth is accepted and closed at once: EOF without an answer.
    let mut fourth = TcpStream::connect(v.listen).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read_to_end(&mut out)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed at once, not held: {read:?} {out:?}");
    assert_eq!(v.metric("vigil_limit_refusals_total{limit=\"connections\"}").await, 1.0);
    assert_eq!(v.metric("vigil_client_connections").await, 3.0);
    // A slot frees when a connection closes.
    drop(held.pop());
    let ok = wait_until(Duration::from_secs(5), || async {
        get_raw(v.listen, "www.app.test", "/").await.is_some_and(|r| r.0 == StatusCode::OK)
    })
    .await;
    assert!(ok, "a freed slot is taken again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_at_max_connections_queues_then_answers_503() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start(
        "queue",
        "",
        &remap("www.app.test", &origin, &server_list(&o), "max_connections = 1\nqueue_timeout = \"300ms\""),
        "",
    )
    .await;
    // `/late` holds its connection until the test releases it.
    let mut held = TcpStream::connect(v.listen).await.unwrap();
    held.write_all(b"GET /late HTTP/1.1\r\nHost: www.app.test\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    held.read_exact(&mut head).await.unwrap();
    let hosts = v.hosts().await;
    assert_eq!(hosts["origins"][0]["queue"], serde_json::json!({"max_connections": 1, "in_flight": 1}));

    let started = tokio::time::Instant::now();
    let (status, headers, _) = v.get("www.app.test", "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited in the queue first");
    let series = format!("vigil_origin_queue_timeouts_total{{origin=\"{origin}\"}}");
    assert_eq!(v.metric(&series).await, 1.0);

    // A request waiting when room frees gets it.
    let waiting = tokio::spawn({
        let listen = v.listen;
        async move { get_raw(listen, "www.app.test", "/").await.map(|r| r.0) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    o[0].state.release.notify_waiters();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), held.read_buf(&mut rest)).await;
    assert_eq!(waiting.await.unwrap(), Some(StatusCode::OK));
    assert!(v.metric(&format!("vigil_origin_queued_total{{origin=\"{origin}\"}}")).await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_forwarded_fields() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let rest = remap("www.app.test", &origin, &server_list(&o), "");
    let v = Vigil::start("identity", "trust_forwarded = true", &rest, "").await;
    let send_with = |headers: &'static [(&'static str, &'static str)]| {
        let mut req = Request::get("/headers").header("host", "www.app.test");
        for (k, val) in headers {
            req = req.header(*k, *val);
        }
        send(v.listen, req.body(Full::new(Bytes::new())).unwrap())
    };
    // Trusted: the client's forwarded fields are kept, its address appended.
    let (_, _, seen) = send_with(&[
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "edge-42.a:b"),
    ])
    .await
    .unwrap();
    assert!(seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
    assert!(seen.contains("x-request-id: edge-42.a:b\n"), "a well-formed id is kept: {seen}");
    // A malformed id is replaced by a fresh one.
    let (_, _, seen) = send_with(&[("x-request-id", "has spaces in it")]).await.unwrap();
    let id = seen.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap_or_default();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{seen}");
    assert!(!seen.contains("has spaces"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_writes_json_lines_and_reopens_on_sigusr1() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let rest = format!(
        "[access_log]\npath = \"access.log\"\nformat = \"json\"\nflush_interval = \"100ms\"\n{}",
        remap("www.app.test", &origin, &server_list(&o), "")
    );
    let v = Vigil::start("accesslog", "", &rest, "").await;
    let log = v.dir.join("access.log");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    };
    let req = Request::get("/stream?x=1")
        .header("host", "www.app.test")
        .header("x-request-id", "req-1")
        .header("user-agent", "vigil-test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(v.listen, req).await.unwrap().0, StatusCode::OK);
    assert_eq!(v.get("nowhere.test", "/").await.0, StatusCode::NOT_FOUND);
    assert!(wait_until(Duration::from_secs(5), || async { lines().len() == 2 }).await, "{:?}", lines());
    let l = lines();
    let ok = &l[0];
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "www.app.test");
    assert_eq!(ok["path"], "/stream?x=1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes"], 18, "three six-byte pieces");
    assert_eq!(ok["upstream"], o[0].addr.to_string());
    assert_eq!(ok["request_id"], "req-1");
    assert_eq!(ok["user_agent"], "vigil-test");
    assert_eq!(ok["retries"], 0);
    assert_eq!(ok["client"], "127.0.0.1");
    assert!(ok["duration_ms"].as_f64().is_some() && ok["upstream_duration_ms"].as_f64().is_some());
    assert_eq!(l[1]["status"], 404);
    assert!(l[1]["upstream"].is_null());

    // logrotate: move the file away, SIGUSR1, and the next line starts a new one.
    let rotated = v.dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    v.signal("USR1");
    let reopened = wait_until(Duration::from_secs(5), || async {
        let _ = v.get("www.app.test", "/").await;
        !lines().is_empty()
    })
    .await;
    assert!(reopened, "no new file after SIGUSR1: {}", v.log());
    // Lines logged before the writer reopened went to the old file, after it.
    assert!(std::fs::read_to_string(&rotated).unwrap().lines().count() >= 2, "the old file keeps its lines");
    assert!(v.metric("vigil_access_log_lines_total").await >= 3.0);
    assert_eq!(v.metric("vigil_access_log_dropped_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_drops_log_lines_and_never_a_request() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    // /dev/full: every write fails with ENOSPC, as a full disk's would.
    let rest = format!(
        "[access_log]\npath = \"/dev/full\"\nflush_interval = \"50ms\"\n{}",
        remap("www.app.test", &origin, &server_list(&o), "")
    );
    let v = Vigil::start("fulldisk", "", &rest, "").await;
    for _ in 0..20 {
        assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    }
    let dropped = wait_until(Duration::from_secs(5), || async {
        v.metric("vigil_access_log_dropped_total").await >= 20.0
    })
    .await;
    assert!(dropped, "lines that could not be written are counted: {}", v.log());
    assert_eq!(v.metric("vigil_access_log_lines_total").await, 0.0);
    assert!(v.log().contains("access log write failed"), "said once: {}", v.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_closes_after_keepalive_timeout_not_the_header_timeout() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start(
        "keepalive",
        "client_header_timeout = \"10s\"",
        &format!(
            "[limits]\nkeepalive_timeout = \"300ms\"\n{}",
            remap("www.app.test", &origin, &server_list(&o), "")
        ),
        "",
    )
    .await;
    let mut c = TcpStream::connect(v.listen).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: www.app.test\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let answered = tokio::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after 5 s");
    let took = answered.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}: keepalive_timeout is 300 ms, the header timeout 10 s"
    );
}
