//! The proxy end to end: the real binary, real origins on 127.0.0.2-.4.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_split_and_forwarding_headers() {
    let o = origins(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    let port = o[0].addr.port();
    let rest = format!(
        "{}\n[[remap]]\nfrom = \"*.keep.test\"\nto = \"http://app.test:{port}\"\npreserve_host = true\n",
        remap("www.app.test", &format!("app.test:{port}"), &server_list(&o), "")
    );
    let v = Vigil::start("rr", "", &rest, "").await;
    for _ in 0..30 {
        let (s, h, _) = v.get("www.app.test", "/").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h["via"], "1.1 vigil");
    }
    let split: Vec<u64> = o.iter().map(Origin::requests).collect();
    assert_eq!(split, [10, 10, 10], "round robin over three servers");

    // Headers as the origin sees them.
    let req = Request::get("/headers")
        .header("host", "WWW.App.Test:8080")
        .header("connection", "keep-alive, x-secret, x-request-id")
        .header("x-secret", "hop")
        .header("x_forwarded_for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-kept", "end-to-end")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (s, _, seen) = send(v.listen, req).await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(seen.contains(&format!("host: app.test:{port}\n")), "{seen}");
    assert!(seen.contains("via: 1.1 vigil\n"), "{seen}");
    // The client's X-Forwarded-For is replaced, not trusted (trust_forwarded
    // is off by default); the scheme and the host it asked for are added.
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("x-forwarded-host: WWW.App.Test:8080\n"), "{seen}");
    let id = seen.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap_or_default();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a generated id: {seen}");
    // Neither the lookalike a CGI backend reads as X-Forwarded-For, nor
    // RFC 7239's Forwarded, is the client's to set; nor can its
    // `Connection` take the request id away.
    assert!(!seen.contains("6.6.6.6"), "{seen}");
    assert!(seen.contains("x-kept: end-to-end\n"), "{seen}");
    assert!(!seen.contains("x-secret") && !seen.contains("keep-alive: timeout"), "{seen}");

    let (_, _, seen) = v.get("img.keep.test:8443", "/headers").await;
    assert!(seen.contains("host: img.keep.test:8443\n"), "preserve_host keeps the client's Host: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_start_with_traffic_and_stop_when_idle() {
    let o = origins(&["127.0.0.2", "127.0.0.3"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let hc = FAST_CHECKS.replace("[defaults]", "[defaults]\nidle_after = \"700ms\"");
    let v = Vigil::start("lazy", "", &remap("www.app.test", &origin, &server_list(&o), ""), &hc).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(o[0].checks() + o[1].checks(), 0, "no check before the first request");
    assert_eq!(v.hosts().await["origins"][0]["checking"], false);

    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    assert!(wait_until(Duration::from_secs(3), || async { o[0].checks() >= 2 && o[1].checks() >= 2 }).await);
    assert_eq!(v.server(o[0].addr).await["l7"]["state"], "healthy");

    // No more requests: checks stop after idle_after and stay stopped.
    assert!(
        wait_until(Duration::from_secs(5), || async { v.hosts().await["origins"][0]["checking"] == false })
            .await,
        "checks did not stop when idle"
    );
    let after = o[0].checks();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(o[0].checks() <= after + 1, "checks went on while idle: {after} -> {}", o[0].checks());

    // The next request starts them again.
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    assert!(wait_until(Duration::from_secs(3), || async { o[0].checks() >= after + 2 }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_by_check_endpoint_and_by_admin() {
    let o = origins(&["127.0.0.2", "127.0.0.3"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start(
        "maint",
        "admin_token = \"s3cret\"",
        &remap("www.app.test", &origin, &server_list(&o), ""),
        FAST_CHECKS,
    )
    .await;
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);

    // The origin's own check endpoint says "maintenance".
    o[1].state.health.store(503, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(3), || async {
            v.server(o[1].addr).await["l7"]["state"] == "unhealthy"
        })
        .await
    );
    let before = o[1].requests();
    for _ in 0..10 {
        let (s, _, body) = v.get("www.app.test", "/").await;
        assert_eq!((s, body), (StatusCode::OK, o[0].addr.to_string()));
    }
    assert_eq!(o[1].requests(), before, "an unhealthy server got requests");
    o[1].state.health.store(200, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(3), || async { v.server(o[1].addr).await["routable"] == true }).await
    );

    // The admin API: the token is required, a bad body changes nothing.
    let body = format!("{{\"origin\": \"{origin}\", \"server\": \"{}\", \"on\": true}}", o[0].addr);
    assert_eq!(v.post("/maintenance", None, &body).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(v.post("/maintenance", Some("wrong"), &body).await.0, StatusCode::UNAUTHORIZED);
    let (s, err) = v.post("/maintenance", Some("s3cret"), "{\"origin\": 1}").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let (s, err) = v.post("/maintenance", Some("s3cret"), &body.replace("true", "\"yes\"")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let unknown = format!("{{\"origin\": \"{origin}\", \"server\": \"127.0.0.9:1\", \"on\": true}}");
    assert_eq!(v.post("/maintenance", Some("s3cret"), &unknown).await.0, StatusCode::NOT_FOUND);
    assert_eq!(v.server(o[0].addr).await["maintenance"], false);

    let (s, reply) = v.post("/maintenance", Some("s3cret"), &body).await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    assert_eq!(v.server(o[0].addr).await["maintenance"], true);
    let before = o[0].requests();
    for _ in 0..10 {
        assert_eq!(v.get("www.app.test", "/").await.2, o[1].addr.to_string());
    }
    assert_eq!(o[0].requests(), before);

    // Both out: 503 with Retry-After.
    let both = body.replace(&o[0].addr.to_string(), &o[1].addr.to_string());
    assert_eq!(v.post("/maintenance", Some("s3cret"), &both).await.0, StatusCode::OK);
    let (s, h, _) = v.get("www.app.test", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(h.get("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_killed_origin_costs_no_client_errors() {
    let o = origins(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start("kill", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    let listen = v.listen;
    // Clients keep going until told; the kill falls in the middle of their
    // traffic however fast the build (a fixed sleep once let every request
    // finish before it).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        clients.spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match get_raw(listen, "www.app.test", "/").await {
                    Some((StatusCode::OK, _, _)) => {}
                    other => errors.push(format!("{other:?}")),
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            errors
        });
    }
    let reached = |n: u64| {
        let done = Arc::clone(&done);
        async move { wait_until(Duration::from_secs(20), || async { done.load(Ordering::SeqCst) >= n }).await }
    };
    assert!(reached(100).await, "traffic did not start");
    assert!(o[2].requests() > 0, "the server to kill had traffic");
    o[2].kill();
    let after = done.load(Ordering::SeqCst);
    assert!(reached(after + 300).await, "traffic stalled after the kill");
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    while let Some(r) = clients.join_next().await {
        errors.extend(r.unwrap());
    }
    assert!(errors.is_empty(), "client errors after a kill: {errors:?}");
    let killed = v.server(o[2].addr).await;
    assert_eq!(killed["l4"]["state"], "down", "{killed}");
    assert_eq!(killed["routable"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status() {
    let o = origins(&["127.0.0.2"]).await;
    let live = format!("app.test:{}", o[0].addr.port());
    // Nothing listens on these.
    let dead_port = free_port(&["127.0.0.5", "127.0.0.6"]);
    let dead = format!("[\"127.0.0.5:{dead_port}\", \"127.0.0.6:{dead_port}\"]");
    let garbage = origins(&["127.0.0.7"]).await;
    garbage[0].state.garbage.store(true, std::sync::atomic::Ordering::SeqCst);
    let rest = format!(
        "{}{}{}",
        remap("www.app.test", &live, &server_list(&o), ""),
        remap("dead.test", &format!("dead.test:{dead_port}"), &dead, ""),
        remap(
            "garbage.test",
            &format!("garbage.test:{}", garbage[0].addr.port()),
            &server_list(&garbage),
            ""
        )
    );
    let v = Vigil::start("errors", "origin_timeout = \"300ms\"", &rest, "").await;

    assert_eq!(v.get("unknown.test", "/").await.0, StatusCode::NOT_FOUND);
    let (s, _, body) = v.get("dead.test", "/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{body}");
    let (s, h, _) = v.get("dead.test", "/").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "both servers are L4-down now");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);

    let started = tokio::time::Instant::now();
    let (s, _, _) = v.get("www.app.test", "/slow?ms=3000").await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2), "504 took {:?}", started.elapsed());
    assert_eq!(v.server(o[0].addr).await["l4"]["state"], "up", "a slow answer is not an L4 failure");

    let (s, _, _) = v.get("garbage.test", "/").await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(v.server(garbage[0].addr).await["l4"]["state"], "down", "garbage is an L4 failure");

    // HTTP/1.1 without Host.
    let mut c = tokio::net::TcpStream::connect(v.listen).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_closes_the_connection() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start("framing", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    let h = "Host: www.app.test\r\n";
    for (what, req) in [
        (
            "CL and TE",
            format!(
                "POST /echo HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE and CL",
            format!(
                "POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "duplicate CL",
            format!("POST /echo HTTP/1.1\r\n{h}Content-Length: 1\r\nContent-Length: 1\r\n\r\nz"),
        ),
        ("empty CL", format!("POST /echo HTTP/1.1\r\n{h}Content-Length:\r\n\r\n")),
        (
            "bad chunk size",
            format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ),
        // A clean request first, then a bad one on the same connection.
        (
            "pipelined",
            format!(
                "GET / HTTP/1.1\r\n{h}\r\nPOST /echo HTTP/1.1\r\n{h}Content-Length: 2\r\nContent-Length: 2\r\n\r\nzz"
            ),
        ),
    ] {
        let out = raw(v.listen, req.as_bytes()).await;
        let last = out.rfind("HTTP/1.1 ").unwrap_or_else(|| panic!("{what}: no response: {out}"));
        assert!(out[last..].starts_with("HTTP/1.1 400"), "{what}: {out}");
    }
    assert_eq!(o[0].requests(), 1, "only the clean pipelined GET reached the origin");
    let metrics = get_raw(v.admin, "a", "/metrics").await.unwrap().2;
    assert!(metrics.contains("vigil_requests_refused_framing_total 4"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_pipelining_continue_head_chunked_and_oversized_heads() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start("h1server", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    let h = "Host: www.app.test\r\n";

    // HTTP/1.0 without keep-alive: answered in 1.0 and closed.
    let out = raw(v.listen, format!("GET / HTTP/1.0\r\n{h}\r\n").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n") && out.contains("connection: close\r\n"), "{out}");

    // Three pipelined requests in one write, answered in order; HEAD has no body.
    let reqs = format!(
        "GET / HTTP/1.1\r\n{h}\r\nHEAD / HTTP/1.1\r\n{h}\r\nGET /headers HTTP/1.1\r\n{h}Connection: close\r\n\r\n"
    );
    let out = raw(v.listen, reqs.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
    assert!(out.contains("via: 1.1 vigil"), "{out}");
    let served_by = o[0].addr.to_string();
    assert_eq!(out.matches(&served_by).count(), 3 + 1, "x-served-by thrice, one GET / body: {out}");

    // Expect: 100-continue gets its interim answer, then the real one.
    let req = format!(
        "POST /echo HTTP/1.1\r\n{h}Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello"
    );
    let out = raw(v.listen, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with(&format!("len=5 sum={}", checksum(b"hello"))), "{out}");
    // The interim answer comes before the body is sent, once the request
    // path reads it.
    let mut s = tokio::net::TcpStream::connect(v.listen).await.unwrap();
    let head = format!("POST /echo HTTP/1.1\r\n{h}Content-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let interim =
        tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, &mut got, "\r\n\r\n")).await;
    assert!(interim.is_ok(), "no 100 Continue: {}", String::from_utf8_lossy(&got));
    assert_eq!(String::from_utf8_lossy(&got), "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, &mut got, "sum=")).await;
    assert!(done.is_ok() && String::from_utf8_lossy(&got).contains("HTTP/1.1 200 OK"));
    // A request answered without its body gets no interim answer: the
    // client need not send the body at all.
    let out = raw(
        v.listen,
        b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(!out.contains("100 Continue"), "{out}");

    // A body of unknown length: chunked to an HTTP/1.1 client, close-delimited to 1.0.
    let out = raw(v.listen, format!("GET /stream HTTP/1.1\r\n{h}Connection: close\r\n\r\n").as_bytes()).await;
    assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    assert!(out.ends_with("6\r\npiece1\r\n6\r\npiece2\r\n6\r\npiece3\r\n0\r\n\r\n"), "{out}");
    let out = raw(v.listen, format!("GET /stream HTTP/1.0\r\n{h}\r\n").as_bytes()).await;
    assert!(!out.contains("transfer-encoding") && out.ends_with("\r\n\r\npiece1piece2piece3"), "{out}");

    // A head past 64 KiB: 431, closed.
    let big = format!("GET / HTTP/1.1\r\n{h}X-Big: {}\r\n\r\n", "a".repeat(70_000));
    let out = raw(v.listen, big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Not HTTP at all: 400, closed.
    let out = raw(v.listen, b"\x16\x03\x01 hello\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1mb_post_streams_through_both_ways() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start("post", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let want = format!("len=1048576 sum={}", checksum(&body));
    let req = Request::post("/echo")
        .header("host", "www.app.test")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let (s, _, got) = send(v.listen, req).await.unwrap();
    assert_eq!((s, got), (StatusCode::OK, want.clone()));

    // Chunked upload, in pieces.
    let mut c = tokio::net::TcpStream::connect(v.listen).await.unwrap();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: www.app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for piece in body.chunks(100_000) {
        c.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
        c.write_all(piece).await.unwrap();
        c.write_all(b"\r\n").await.unwrap();
    }
    c.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with(&want), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_and_h2c_origins() {
    let o = origins(&["127.0.0.2"]).await;
    let h2 = origins(&["127.0.0.3"]).await;
    let rest = format!(
        "{}{}",
        remap("www.app.test", &format!("app.test:{}", o[0].addr.port()), &server_list(&o), ""),
        remap("h2.test", &format!("h2.test:{}", h2[0].addr.port()), &server_list(&h2), "protocol = \"h2c\"")
    );
    let v = Vigil::start("h2c", "", &rest, "").await;
    let stream = tokio::net::TcpStream::connect(v.listen).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (host, server) in [("www.app.test", o[0].addr), ("h2.test", h2[0].addr)] {
        let req = Request::get(format!("http://{host}/")).body(Full::new(Bytes::new())).unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert_eq!(body, server.to_string());
    }
    assert_eq!(h2[0].requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_bad_keeps_serving_good_applies() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let rest = remap("www.app.test", &origin, &server_list(&o), "");
    let v = Vigil::start("reload", "", &rest, "").await;
    let path = v.dir.join("vigil.toml");
    let good = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, good.replace("[[remap]]", "[[remap]]\nfrm = \"typo\"")).unwrap();
    let (s, reply) = v.post("/reload", None, "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{reply}");
    assert!(reply.contains("vigil.toml:") && reply.contains("frm"), "the error names the line: {reply}");
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK, "still serving the old config");

    // A valid change, by SIGHUP: a second host for the same origin.
    std::fs::write(&path, format!("{good}\n[[remap]]\nfrom = \"new.test\"\nto = \"http://{origin}\"\n"))
        .unwrap();
    assert_eq!(v.get("new.test", "/").await.0, StatusCode::NOT_FOUND);
    assert!(v.server(o[0].addr).await["pool"]["idle"].as_u64().unwrap() >= 1, "a pooled session to keep");
    v.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || async { v.get("new.test", "/").await.0 == StatusCode::OK })
            .await
    );
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    let metrics = get_raw(v.admin, "a", "/metrics").await.unwrap().2;
    assert!(metrics.contains("vigil_reloads_total{result=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("vigil_reloads_total{result=\"error\"} 1"), "{metrics}");
    // The server stayed, so did its pooled session: still one connect in all.
    let connects: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("vigil_upstream_connects_total")).collect();
    assert_eq!(connects.len(), 1, "{connects:?}");
    assert!(connects[0].ends_with(" 1"), "the reload reconnected: {connects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits_0() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let mut v = Vigil::start("term", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    let listen = v.listen;
    let slow = tokio::spawn(async move { get_raw(listen, "www.app.test", "/slow?ms=800").await });
    assert!(wait_until(Duration::from_secs(3), || async { o[0].requests() == 1 }).await);
    v.signal("TERM");
    let (s, _, body) = slow.await.unwrap().expect("the request in flight was cut");
    assert_eq!((s, body), (StatusCode::OK, format!("slow {}", o[0].addr)));
    assert_eq!(v.exit_code(Duration::from_secs(10)).await, Some(0));
    assert!(tokio::net::TcpStream::connect(listen).await.is_err(), "still accepting after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_a_bad_config() {
    let o = origins(&["127.0.0.2", "127.0.0.3"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v =
        Vigil::start("metrics", "", &remap("www.app.test", &origin, &server_list(&o), ""), FAST_CHECKS).await;
    for _ in 0..4 {
        assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    }
    assert!(wait_until(Duration::from_secs(3), || async { o[0].checks() >= 2 }).await);
    let (s, h, m) = get_raw(v.admin, "a", "/metrics").await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert!(h["content-type"].to_str().unwrap().contains("openmetrics-text"));
    for want in [
        format!("vigil_requests_total{{origin=\"{origin}\",code=\"200\"}} 4"),
        format!(
            "vigil_upstream_connects_total{{origin=\"{origin}\",server=\"{}\",result=\"ok\"}}",
            o[0].addr
        ),
        "vigil_pool_reused_total".to_owned(),
        format!("vigil_health_checks_total{{origin=\"{origin}\",server=\"{}\",result=\"pass\"}}", o[0].addr),
        format!(
            "vigil_health_transitions_total{{origin=\"{origin}\",server=\"{}\",to=\"healthy\"}} 1",
            o[0].addr
        ),
        format!("vigil_server_routable{{origin=\"{origin}\",server=\"{}\"}} 1", o[1].addr),
    ] {
        assert!(m.contains(&want), "missing {want} in\n{m}");
    }
    let hosts = v.hosts().await;
    assert_eq!(hosts["node"], "vigil");
    let s0 = &hosts["origins"][0]["servers"][0];
    for field in ["addr", "routable", "maintenance", "l4", "l7", "pool"] {
        assert!(!s0[field].is_null(), "/hosts server lacks {field}: {s0}");
    }
    assert!(s0["pool"]["idle"].as_u64().unwrap() >= 1, "sessions are pooled: {s0}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["status", "--admin", &v.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.contains(&origin) && table.contains(&o[1].addr.to_string()) && table.contains("healthy"),
        "{table}"
    );

    // `run` with a bad file: exit 1, the error at file:line:column.
    let d = test_dir("badrun");
    std::fs::write(d.join("vigil.toml"), "[proxy]\nlisten = \"127.0.0.1:1\"\nthreads = \"two\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("--config")
        .arg(d.join("vigil.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vigil.toml:3:"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sending_only_safe_requests_without_a_body_are_retried() {
    // One server answers garbage after reading the request (a failure after
    // sending), the other is sound; round robin alternates between them.
    let good = origins(&["127.0.0.2"]).await;
    let bad = origins(&["127.0.0.3"]).await;
    bad[0].state.garbage.store(true, std::sync::atomic::Ordering::SeqCst);
    let servers = format!("[\"{}\", \"{}\"]", good[0].addr, bad[0].addr);
    // A long fail threshold keeps the bad server in rotation for the test.
    let rest =
        format!("[l4]\nfail_threshold = 1000\n\n{}", remap("www.app.test", "app.test:80", &servers, ""));
    let v = Vigil::start("retry", "", &rest, "").await;

    for _ in 0..10 {
        let (s, _, body) = v.get("www.app.test", "/").await;
        assert_eq!(
            (s, body),
            (StatusCode::OK, good[0].addr.to_string()),
            "a GET is retried on the sound server"
        );
    }
    let mut codes = Vec::new();
    for _ in 0..10 {
        let req = Request::post("/echo")
            .header("host", "www.app.test")
            .body(Full::new(Bytes::from("x=1")))
            .unwrap();
        codes.push(send(v.listen, req).await.unwrap().0);
    }
    assert!(codes.contains(&StatusCode::OK), "{codes:?}");
    assert!(codes.contains(&StatusCode::BAD_GATEWAY), "a POST with a body is never sent twice: {codes:?}");
    assert_eq!(good[0].requests() as usize, 10 + codes.iter().filter(|c| **c == StatusCode::OK).count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_and_its_first_piece_go_out_before_the_rest_arrives() {
    // vigil writes a small first body piece together with the head; one
    // that is not ready yet must not hold the head back.
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start("late", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    let mut s = tokio::net::TcpStream::connect(v.listen).await.unwrap();
    s.write_all(b"GET /late HTTP/1.1\r\nHost: www.app.test\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, &mut got, "first")).await;
    assert!(first.is_ok(), "the head and first piece waited for the rest: {}", String::from_utf8_lossy(&got));
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200") && text.contains("content-length: 11"), "{text}");
    assert!(!text.contains("second"));
    o[0].state.release.notify_one();
    let rest =
        tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, &mut got, "firstsecond")).await;
    assert!(rest.is_ok(), "{}", String::from_utf8_lossy(&got));
}

/// Reads from `s` into `got` until it holds `want`.
async fn read_until(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>, want: &str) {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(got).contains(want) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// Without a token, a page on another site still cannot make a browser
/// change anything through the admin API; the admin's own page can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_from_another_sites_page_are_refused() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v =
        Vigil::start("csrf", "", &remap("www.app.test", &origin, &server_list(&o), ""), FAST_CHECKS).await;
    let body = format!("{{\"origin\": \"{origin}\", \"server\": \"{}\", \"on\": true}}", o[0].addr);
    for headers in [
        &[("origin", "http://evil.example")][..],
        &[("origin", "null")][..],
        &[("sec-fetch-site", "cross-site")][..],
    ] {
        let (status, text) = v.post_with("/maintenance", headers, &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {text}");
        assert_eq!(v.post_with("/reload", headers, "").await.0, StatusCode::FORBIDDEN);
    }
    assert_eq!(v.server(o[0].addr).await["maintenance"], false, "nothing changed");
    let (status, text) = v.post_with("/maintenance", &[("origin", "http://admin")], &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(v.server(o[0].addr).await["maintenance"], true);
}
