//! The proxy tried as a hostile client and a broken origin would: every bad
//! head is answered with its status and the connection closed, nothing of
//! it reaches an origin, and no connection is held past the head timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_heads_get_their_status_and_reach_no_origin() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start("hostile", "", &remap("www.app.test", &origin, &server_list(&o), ""), "").await;
    let h = "Host: www.app.test\r\n";
    for (what, req, status) in [
        (
            "a coding other than one final chunked",
            format!(
                "POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            "501",
        ),
        (
            "a coding we cannot decode",
            format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\n"),
            "501",
        ),
        (
            "chunked twice",
            format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "chunked in two fields",
            format!(
                "POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            "400",
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!("POST /echo HTTP/1.0\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        ("two Host fields", format!("GET / HTTP/1.1\r\n{h}Host: evil.test\r\n\r\n"), "400"),
        (
            "Host against the target",
            "GET http://www.app.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n".into(),
            "400",
        ),
        ("authority form on GET", format!("GET www.app.test:80 HTTP/1.1\r\n{h}\r\n"), "400"),
        (
            "a bare LF after a chunk size",
            format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "a malformed chunk extension",
            format!("POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5;=x\r\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "a chunk extension with an open quote",
            format!(
                "POST /echo HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n"
            ),
            "400",
        ),
    ] {
        let out = raw(v.listen, req.as_bytes()).await;
        assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {out}");
        assert!(out.contains("connection: close\r\n"), "{what}: {out}");
    }
    assert_eq!(o[0].requests(), 0, "nothing of a refused request reached the origin");
    // The proxy still serves after all that.
    assert_eq!(v.get("www.app.test", "/").await.0, 200);
}

/// Waits for the server to close `c`; returns what it sent, or `None` if it
/// was still open after `within`.
async fn closed_within(c: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(within, c.read_to_end(&mut out)).await.ok()?.ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_connections_are_closed_after_the_head_timeout() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let v = Vigil::start(
        "headtimeout",
        "client_header_timeout = \"400ms\"",
        &format!(
            "[limits]\nkeepalive_timeout = \"400ms\"\n{}",
            remap("www.app.test", &origin, &server_list(&o), "")
        ),
        "",
    )
    .await;
    let h2_half = &b"PRI * HTTP/2.0\r\n\r\nSM"[..];
    for (what, sent) in [
        ("nothing", &b""[..]),
        ("half the h2 preface", h2_half),
        ("half a request head", b"GET / HTTP/1.1\r\nHost: www.app"),
    ] {
        let start = tokio::time::Instant::now();
        let mut c = tokio::net::TcpStream::connect(v.listen).await.unwrap();
        c.write_all(sent).await.unwrap();
        let out = closed_within(&mut c, Duration::from_secs(5)).await;
        assert!(out.is_some(), "{what}: still open after 5 s");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(350), "{what}: closed after only {took:?}");
    }
    // A keep-alive connection idle after its answer is closed after
    // keepalive_timeout.
    let mut c = tokio::net::TcpStream::connect(v.listen).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: www.app.test\r\n\r\n").await.unwrap();
    let out = closed_within(&mut c, Duration::from_secs(5)).await.unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// An origin that answers every request with `reply` on a keep-alive
/// connection, and counts the connections it accepted.
async fn canned_origin(reply: &'static [u8]) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let port = free_port(&["127.0.0.3"]);
    let listener = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (SocketAddr::from(([127, 0, 0, 3], port)), conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_204_or_304_reaches_the_client_without_a_length_or_a_body() {
    for (status, reply) in [
        ("204", &b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-Kept: 1\r\n\r\nstray"[..]),
        ("304", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\nstray"),
    ] {
        let (addr, conns) = canned_origin(reply).await;
        let origin = format!("canned.test:{}", addr.port());
        let servers = format!("[\"{addr}\"]");
        let v =
            Vigil::start(&format!("nobody{status}"), "", &remap("canned.test", &origin, &servers, ""), "")
                .await;
        let out = raw(
            v.listen,
            b"GET / HTTP/1.1\r\nHost: canned.test\r\n\r\nGET / HTTP/1.1\r\nHost: canned.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let lower = out.to_ascii_lowercase();
        assert_eq!(out.matches(&format!("HTTP/1.1 {status} ")).count(), 2, "{out}");
        assert!(!lower.contains("content-length"), "{out}");
        assert!(!lower.contains("transfer-encoding"), "{out}");
        assert!(!out.contains("stray"), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "no body after the last head: {out}");
        // The stray bytes make the session unfit for reuse: each request had its own.
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2, "{out}");
    }
}
