//! The dashboard's parts through the real binary: `GET /` (the page),
//! `GET /events` (server-sent events: transitions with the server's state,
//! stats, check results; bounded per client; ending when the client goes
//! and at shutdown) and `GET /checks` (recent check results per server).

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

const FAST_CHECKS: &str = "[defaults]\ninterval = \"100ms\"\nunhealthy_interval = \"100ms\"\ntimeout = \"50ms\"\n\
    healthy_threshold = 1\nunhealthy_threshold = 1\n\n[[check]]\norigin = \"*.test\"\npath = \"/healthz\"\n";

/// An open `GET /events` stream and everything read from it so far.
struct Stream {
    conn: TcpStream,
    seen: String,
}

impl Stream {
    async fn open(admin: SocketAddr, query: &str) -> Stream {
        let mut conn = TcpStream::connect(admin).await.unwrap();
        let req = format!("GET /events{query} HTTP/1.1\r\nhost: admin\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        Stream { conn, seen: String::new() }
    }

    /// Reads until `cond` holds of what was read (up to `within`).
    async fn until(&mut self, within: Duration, cond: impl Fn(&str) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 16 * 1024];
        while !cond(&self.seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return false,
            }
        }
        true
    }

    /// Reads until the server closes (up to `within`); `true` if it did.
    async fn closed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.conn.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(n)) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => return false,
            }
        }
    }

    /// Every `data:` document read so far, of frames without an `event:`
    /// line (the transitions).
    fn transitions(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for frame in self.seen.split("\n\n") {
            if frame.lines().any(|l| l.starts_with("event:")) {
                continue;
            }
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                out.push(serde_json::from_str(data).unwrap());
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_transitions_with_the_servers_state_after_them() {
    let o = origins(&["127.0.0.40", "127.0.0.41"]).await;
    let port = o[0].addr.port();
    let origin = format!("app.test:{port}");
    let rest = remap("app.test", &origin, &server_list(&o), "");
    let v = Vigil::start("events", "admin_token = \"sesame\"", &rest, FAST_CHECKS).await;

    // Reads need no token, as /hosts does not.
    let mut s = Stream::open(v.admin, "?since=0").await;
    assert!(s.until(Duration::from_secs(5), |t| t.contains("event: hello")).await, "{}", s.seen);
    assert!(s.seen.starts_with("HTTP/1.1 200"), "{}", s.seen);
    assert!(s.seen.to_ascii_lowercase().contains("content-type: text/event-stream"), "{}", s.seen);
    // Stats once a second, per origin.
    assert!(s.until(Duration::from_secs(3), |t| t.contains("event: stats")).await, "{}", s.seen);
    assert!(s.seen.contains(&format!("\"origin\":\"{origin}\"")), "{}", s.seen);

    let body = format!("{{\"origin\": \"{origin}\", \"server\": \"{}\", \"on\": true}}", o[0].addr);
    assert_eq!(v.post("/maintenance", Some("sesame"), &body).await.0, StatusCode::OK);
    let got = s.until(Duration::from_secs(2), |t| t.contains("\"type\":\"maintenance\"")).await;
    assert!(got, "{}", s.seen);
    let t = s.transitions();
    let m = t.iter().find(|e| e["type"] == "maintenance").unwrap();
    assert_eq!(m["server"], o[0].addr.to_string());
    assert_eq!(m["on"], true);
    assert_eq!(m["state"]["routable"], false, "the server's state after the change: {m}");
    assert_eq!(m["state"]["maintenance"], true);
    assert!(m["id"].as_u64().unwrap() > 0);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let ts = u128::from(m["ts_ms"].as_u64().unwrap());
    assert!(now_ms.abs_diff(ts) < 10_000, "a wall-clock timestamp: {ts} vs {now_ms}");

    // Traffic starts the checks; a killed server goes down, and says so.
    let _ = v.get("app.test", "/").await;
    o[1].kill();
    let down = s
        .until(Duration::from_secs(5), |t| {
            t.contains("\"to\":\"unhealthy\"") || t.contains("\"type\":\"l4\",\"origin\"")
        })
        .await;
    assert!(down, "{}", s.seen);

    // A client that comes later replays what it missed after its id.
    let first = m["id"].as_u64().unwrap();
    let mut late = Stream::open(v.admin, &format!("?since={}", first - 1)).await;
    assert!(late.until(Duration::from_secs(3), |t| t.contains("\"type\":\"maintenance\"")).await);
    let mut none = Stream::open(v.admin, "").await;
    none.until(Duration::from_millis(1500), |t| t.contains("event: stats")).await;
    assert!(none.transitions().iter().all(|e| e["type"] != "maintenance"), "no replay without since");

    // Check results, for a client that asks.
    let mut checks = Stream::open(v.admin, "?checks=1").await;
    assert!(checks.until(Duration::from_secs(3), |t| t.contains("event: check")).await, "{}", checks.seen);
    assert!(!s.seen.contains("event: check"), "only when asked");

    // The recent results per server.
    let (status, _, body) = get_raw(v.admin, "admin", "/checks").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = doc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["server"] == o[0].addr.to_string())
        .unwrap_or_else(|| panic!("{doc}"))
        .clone();
    let results = entry["results"].as_array().unwrap();
    assert!(!results.is_empty() && results.len() <= doc["keep"].as_u64().unwrap() as usize, "{entry}");
    assert_eq!(results[0].as_array().unwrap().len(), 3, "[unix_ms, pass, latency_ms]: {entry}");
    assert!(v.metric("vigil_events_clients ").await >= 3.0);
}

/// `app.test` routed to the origins `o`.
fn app_remap(o: &[Origin]) -> String {
    remap("app.test", &format!("app.test:{}", o[0].addr.port()), &server_list(o), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refuse_bad_input_and_end_when_the_client_goes() {
    let o = origins(&["127.0.0.42"]).await;
    let rest = app_remap(&o);
    let v = Vigil::start("events-bad", "", &rest, "").await;
    for query in ["?since=x", "?checks=maybe", "?token=abc"] {
        let (status, _, body) = get_raw(v.admin, "admin", &format!("/events{query}")).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    let (status, _) = v.post("/events", None, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let s = Stream::open(v.admin, "").await;
    assert!(
        wait_until(Duration::from_secs(3), || async { v.metric("vigil_events_clients ").await == 1.0 }).await
    );
    drop(s);
    // Found gone at the next frame it would get (stats, every second).
    let gone =
        wait_until(Duration::from_secs(4), || async { v.metric("vigil_events_clients ").await == 0.0 }).await;
    assert!(gone, "the stream's task ended when its client went");
    assert_eq!(
        v.metric("vigil_events_clients_dropped_total").await,
        0.0,
        "a client that left is not dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_event_client_is_dropped_and_counted() {
    let o = origins(&["127.0.0.43", "127.0.0.44", "127.0.0.45", "127.0.0.48", "127.0.0.49"]).await;
    let rest = app_remap(&o);
    let hc = FAST_CHECKS.replace("\"100ms\"", "\"10ms\"").replace("\"50ms\"", "\"8ms\"");
    let v = Vigil::start("events-slow", "", &rest, &hc).await;
    let _ = v.get("app.test", "/").await;
    // A client with a small window that never reads: its socket fills,
    // then its queue does.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(v.admin).await.unwrap();
    conn.write_all(b"GET /events?checks=1 HTTP/1.1\r\nhost: admin\r\n\r\n").await.unwrap();
    let dropped = wait_until(Duration::from_secs(20), || async {
        v.metric("vigil_events_clients_dropped_total").await >= 1.0
    })
    .await;
    assert!(dropped, "checks sent: {}", o.iter().map(Origin::checks).sum::<u64>());
    assert_eq!(v.metric("vigil_events_clients ").await, 0.0);
    // The proxy is fine, and a reader that keeps up is served.
    let mut s = Stream::open(v.admin, "?checks=1").await;
    assert!(s.until(Duration::from_secs(3), |t| t.matches("event: check").count() > 50).await);
    assert_eq!(v.metric("vigil_events_clients_dropped_total").await, 1.0);
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_event_stream_ends_at_shutdown() {
    let o = origins(&["127.0.0.46"]).await;
    let rest = app_remap(&o);
    let mut v = Vigil::start("events-stop", "", &rest, "").await;
    let mut s = Stream::open(v.admin, "").await;
    assert!(s.until(Duration::from_secs(3), |t| t.contains("event: hello")).await);
    let start = tokio::time::Instant::now();
    v.signal("TERM");
    assert!(s.closed(Duration::from_secs(5)).await, "the stream ended at shutdown");
    assert_eq!(v.exit_code(Duration::from_secs(5)).await, Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the stream did not hold the drain: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_one_self_contained_document() {
    let o = origins(&["127.0.0.47"]).await;
    let rest = app_remap(&o);
    let v = Vigil::start("page", "", &rest, "").await;
    let (status, headers, body) = get_raw(v.admin, "admin", "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(body.len() < 64 * 1024, "small: {} bytes", body.len());
    for outside in ["https://", "@import", "url(", "<link", "src=", "<iframe"] {
        assert!(!body.contains(outside), "the page loads nothing from elsewhere: {outside}");
    }
    let svg_ns = "http://www.w3.org/2000/svg";
    assert_eq!(body.matches("http://").count(), body.matches(svg_ns).count(), "no URL but SVG's namespace");
    assert!(body.contains("/events") && body.contains("/hosts"), "it reads the API");
    let (status, headers, _) = get_raw(v.admin, "admin", "/nope").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{headers:?}");
}
