//! The soak's fault cases that no other test covers, each on its own and
//! decided by counts, not by timing (`cargo xtask soak` runs them all at
//! once, for minutes): an origin that cuts a response off mid-body, an
//! origin that accepts and never answers while hundreds of requests wait
//! on it, and a killed server that starts again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// What the cutting origin saw.
#[derive(Debug, Default)]
struct Cutter {
    /// POST requests received (each carries a distinct path).
    posts: parking_lot::Mutex<Vec<String>>,
    /// Notified by the test: cut the response waiting for it now.
    cut: tokio::sync::Notify,
}

/// An origin that answers `GET /ok` in full and cuts everything else off
/// after the head and 10 of its 100 body bytes, with a reset: at once
/// (`/now/...`), or when the test says so (`/late-length`, `/late-chunked`).
async fn cutting_origin(ip: &str) -> (SocketAddr, Arc<Cutter>) {
    let port = free_port(&[ip]);
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let state = Arc::new(Cutter::default());
    let seen = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while got.len() < end + 4 + length {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.drain(..end + 4 + length);
                    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                    if head.starts_with("POST ") {
                        seen.posts.lock().push(target.clone());
                    }
                    if target == "/ok" {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                        continue;
                    }
                    let head: &[u8] = if target == "/late-chunked" {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
                    };
                    let _ = s.write_all(head).await;
                    if target.starts_with("/late") {
                        seen.cut.notified().await;
                    }
                    // A reset, not an orderly close.
                    let _ = s.set_zero_linger();
                    return;
                }
            });
        }
    });
    (SocketAddr::new(ip.parse().unwrap(), port), state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_off_after_its_head_reached_the_client_is_cut_off_for_the_client_too() {
    let (addr, cutter) = cutting_origin("127.0.0.50").await;
    let origin = format!("cut.test:{}", addr.port());
    let v = Vigil::start("cutlate", "", &remap("cut.test", &origin, &format!("[\"{addr}\"]"), ""), "").await;
    for (path, length) in [("/late-length", true), ("/late-chunked", false)] {
        let mut c = TcpStream::connect(v.listen).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: cut.test\r\n\r\n").as_bytes()).await.unwrap();
        // The head and the first ten bytes reach the client; then the origin resets.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("0123456789") {
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
                .await
                .expect("the head and first bytes were held back")
                .unwrap();
            assert!(n > 0, "{path}: closed before the first bytes: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        cutter.cut.notify_one();
        // The client's connection ends (closed or reset) without the rest:
        // a short body must never look whole.
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(end.is_ok(), "{path}: the client's connection stayed open after the cut: {text}");
        assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        if length {
            assert!(text.to_ascii_lowercase().contains("content-length: 100"), "{text}");
            assert!(body.len() < 100, "{path}: a body of {} bytes for 100 declared", body.len());
        } else {
            assert!(
                !body.contains("\r\n0\r\n\r\n") && !body.starts_with("0\r\n"),
                "{path}: a last chunk: {body:?}"
            );
        }
    }
    // The proxy serves on, over a new session.
    assert_eq!(v.get("cut.test", "/ok").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_off_at_once_is_retried_for_a_get_or_seen_cut_and_a_post_is_never_sent_twice() {
    let (cut_addr, cutter) = cutting_origin("127.0.0.51").await;
    let good = Origin::start("127.0.0.52", cut_addr.port()).await;
    let origin = format!("cut.test:{}", cut_addr.port());
    let servers = format!("[\"{cut_addr}\", \"{}\"]", good.addr);
    // A long fail threshold keeps the cutting server in the rotation.
    let rest = format!("[l4]\nfail_threshold = 1000\n\n{}", remap("cut.test", &origin, &servers, ""));
    let v = Vigil::start("cutnow", "", &rest, "").await;
    let (mut whole, mut cut) = (0, 0);
    for i in 0..10 {
        // Whether the proxy saw the reset before it sent the head decides
        // which, and either is right; a short body passed off as whole is not
        // (the client would take it: `send` checks the length).
        match get_raw(v.listen, "cut.test", &format!("/now/{i}")).await {
            Some((StatusCode::OK, _, body)) => {
                assert_eq!(body, good.addr.to_string(), "a whole answer is the sound server's");
                whole += 1;
            }
            None => cut += 1,
            Some(other) => panic!("GET /now/{i}: {other:?}"),
        }
    }
    assert_eq!(whole + cut, 10);
    for i in 0..10 {
        let req = Request::post(format!("/now/post-{i}"))
            .header("host", "cut.test")
            .body(Full::new(Bytes::from("x=1")))
            .unwrap();
        let _ = send(v.listen, req).await;
    }
    // Every POST reached one server once: none was sent again after a cut.
    let at_cutter = cutter.posts.lock().clone();
    let unique: std::collections::HashSet<&String> = at_cutter.iter().collect();
    assert_eq!(unique.len(), at_cutter.len(), "a POST reached the cutting server twice: {at_cutter:?}");
    assert_eq!(at_cutter.len() as u64 + good.requests() - whole, 10, "{at_cutter:?}");
}

/// An origin that accepts, reads and never answers; it counts the
/// connections open (until their EOF) and the most at once.
#[derive(Debug, Default)]
struct Hole {
    open: AtomicU64,
    most: AtomicU64,
    accepted: AtomicU64,
}

async fn hole(ip: &str) -> (SocketAddr, Arc<Hole>) {
    let port = free_port(&[ip]);
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let state = Arc::new(Hole::default());
    let h = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.accepted.fetch_add(1, Ordering::SeqCst);
            let now = h.open.fetch_add(1, Ordering::SeqCst) + 1;
            h.most.fetch_max(now, Ordering::SeqCst);
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                h.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (SocketAddr::new(ip.parse().unwrap(), port), state)
}

fn rss_and_fds(v: &Vigil) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{}/status", v.child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", v.child.id())).map_or(0, Iterator::count);
    (rss, fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_answers_holds_no_more_than_its_limits_and_is_let_go() {
    // 400 requests over two h2c connections to an origin that never
    // answers, which may have 20 at once: 20 go to it and wait (its
    // origin_timeout is far away), 380 wait in the queue and get 503 after
    // queue_timeout. Then the clients leave: the proxy lets go of everything.
    const CONNS: usize = 2;
    const STREAMS: usize = 200;
    const MAX: u64 = 20;
    let (addr, h) = hole("127.0.0.53").await;
    let origin = format!("hole.test:{}", addr.port());
    let extra = format!("max_connections = {MAX}\nqueue_timeout = \"1s\"");
    let v = Vigil::start(
        "hole",
        "origin_timeout = \"120s\"",
        &remap("hole.test", &origin, &format!("[\"{addr}\"]"), &extra),
        "",
    )
    .await;
    let (rss_before, fds_before) = rss_and_fds(&v);
    let answers = Arc::new(parking_lot::Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let mut streams = tokio::task::JoinSet::new();
    let mut conns = tokio::task::JoinSet::new();
    for _ in 0..CONNS {
        let io = TokioIo::new(TcpStream::connect(v.listen).await.unwrap());
        let (tx, conn) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(io).await.unwrap();
        conns.spawn(async move {
            let _ = conn.await;
        });
        for i in 0..STREAMS {
            let (mut tx, answers) = (tx.clone(), Arc::clone(&answers));
            streams.spawn(async move {
                tx.ready().await.unwrap();
                let req = Request::get(format!("http://hole.test/{i}")).body(Empty::<Bytes>::new()).unwrap();
                let resp = tx.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                *answers.lock().entry(status).or_default() += 1;
            });
        }
    }
    let queued_out = (CONNS * STREAMS) as u64 - MAX;
    let all_queued_answered =
        wait_until(Duration::from_secs(60), || async { answers.lock().values().sum::<u64>() >= queued_out })
            .await;
    let answered = answers.lock().clone();
    assert!(all_queued_answered, "answers so far: {answered:?}");
    assert_eq!(answered.get(&503).copied(), Some(queued_out), "{answered:?}");
    assert_eq!(answered.len(), 1, "only 503s while the origin holds the rest: {answered:?}");
    assert_eq!(h.accepted.load(Ordering::SeqCst), MAX, "one connection per request let through");
    assert_eq!(h.most.load(Ordering::SeqCst), MAX);
    let (rss_peak, fds_peak) = rss_and_fds(&v);
    assert!(fds_peak >= fds_before + MAX as usize, "{fds_before} -> {fds_peak}");
    // What the proxy holds for 400 requests (20 of them upstream): far
    // below 64 KiB each.
    assert!(
        rss_peak < rss_before + (CONNS * STREAMS) as u64 * 64,
        "RSS {rss_before} KiB -> {rss_peak} KiB for {} requests",
        CONNS * STREAMS
    );

    // The clients leave with 20 requests still waiting on the origin.
    streams.abort_all();
    conns.abort_all();
    while streams.join_next().await.is_some() {}
    while conns.join_next().await.is_some() {}
    let let_go = wait_until(Duration::from_secs(20), || async {
        h.open.load(Ordering::SeqCst) == 0 && rss_and_fds(&v).1 <= fds_before
    })
    .await;
    assert!(
        let_go,
        "origin connections still open: {}; proxy descriptors {} (before: {fds_before})",
        h.open.load(Ordering::SeqCst),
        rss_and_fds(&v).1
    );
    let timeouts = v.metric(&format!("vigil_origin_queue_timeouts_total{{origin=\"{origin}\"}}")).await;
    assert_eq!(timeouts, queued_out as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_that_starts_again_is_retried_and_gets_traffic() {
    let o = origins(&["127.0.0.54", "127.0.0.55"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let rest = format!("[l4]\ndown_time = \"300ms\"\n\n{}", remap("app.test", &origin, &server_list(&o), ""));
    let v = Vigil::start("restart", "", &rest, "").await;
    for _ in 0..4 {
        assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    }
    let killed = o[1].addr;
    o[1].kill();
    // Every GET is answered while it is dead; one of them finds it down.
    let down = wait_until(Duration::from_secs(20), || async {
        assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
        v.server(killed).await["l4"]["state"] == "down"
    })
    .await;
    assert!(down, "{}", v.server(killed).await);
    // It starts again on the same address (the old listener may take a
    // moment to be dropped).
    let mut again = None;
    for _ in 0..500 {
        if TcpListener::bind(killed).await.is_ok() {
            again = Some(Origin::start(&killed.ip().to_string(), killed.port()).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = again.expect("the address is free again");
    let back = wait_until(Duration::from_secs(20), || async {
        assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
        again.requests() > 0
    })
    .await;
    assert!(back, "the server that started again got no request: {}", v.server(killed).await);
    assert_eq!(v.server(killed).await["l4"]["state"], "up");
}
