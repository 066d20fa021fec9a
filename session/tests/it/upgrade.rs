//! HTTP/1.1 upgrades: the 101 hands the connection over, with a real
//! WebSocket peer on each end.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::header;
use http_body::Body as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_tungstenite::tungstenite::protocol::Role;
use vigil_session::{
    ErrorKind, Freshness, NoopObserver, Pool, PoolConfig, PoolCounts, RequestBody, Target, empty_body,
};

use crate::{Recorder, get, h1_origin, h2_origin, listen, raw_origin, read_all};

/// A WebSocket handshake request for `/chat`, and the key it carries.
fn websocket_request() -> (http::Request<RequestBody>, String) {
    let key = generate_key();
    let req = http::Request::get("/chat")
        .header(header::HOST, "origin.test")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(empty_body())
        .unwrap();
    (req, key)
}

fn pool() -> Pool {
    Pool::new(PoolConfig::default(), Arc::new(NoopObserver))
}

/// A tungstenite server on loopback that echoes every text and binary
/// message of each connection until the client closes; each connection's
/// task ends with the messages it echoed.
async fn websocket_echo() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    let (listener, addr) = listen().await;
    let (done, finished) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
                let mut echoed = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            ws.send(msg).await.unwrap();
                            echoed += 1;
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                let _ = done.send(echoed);
            });
        }
    });
    (addr, finished)
}

#[tokio::test]
async fn a_websocket_runs_over_an_upgraded_session_that_holds_its_slot_until_dropped() {
    let (addr, mut finished) = websocket_echo().await;
    let pool = pool();
    let (req, key) = websocket_request();
    let resp = pool.request(Target::http1(addr), Freshness::IdlePreferred, req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[header::SEC_WEBSOCKET_ACCEPT], derive_accept_key(key.as_bytes()).as_str());
    assert!(resp.body().is_end_stream(), "a 101 has no body");
    assert_eq!(pool.counts(addr), PoolCounts { idle: 0, in_use: 1 });

    let upgraded = resp.into_body().into_upgraded().unwrap();
    assert_eq!(upgraded.target(), Target::http1(addr));
    let mut ws = WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await;
    ws.send(Message::text("hello over the pool")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello over the pool"));
    let binary = Message::binary(vec![0u8, 1, 2, 0xfe, 0xff]);
    ws.send(binary.clone()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), binary);
    let big = Message::binary(vec![7u8; 256 * 1024]);
    ws.send(big.clone()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), big);
    assert_eq!(pool.counts(addr), PoolCounts { idle: 0, in_use: 1 }, "in use while the tunnel lives");

    ws.close(None).await.unwrap();
    assert_eq!(finished.recv().await, Some(3), "the server echoed each message and saw the close");
    drop(ws);
    assert_eq!(pool.counts(addr), PoolCounts::default(), "closed, never checked in");
    assert_eq!(pool.targets(), 0);
}

#[tokio::test]
async fn a_plain_answer_to_an_upgrade_is_a_response_whose_session_is_not_kept() {
    // hyper ignores the upgrade it does not serve and answers 200 on a
    // connection it would keep open.
    let origin = h1_origin().await;
    let pool = pool();
    let t = Target::http1(origin.addr);
    let (req, _) = websocket_request();
    let resp = pool.request(t, Freshness::IdlePreferred, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().into_upgraded().unwrap_err();
    assert_eq!(read_all(http::Response::new(body)).await, "ok");
    assert_eq!(pool.counts(origin.addr), PoolCounts::default(), "read to the end, yet closed");
    assert_eq!(read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await, "ok");
    assert_eq!(origin.conns(), 2, "the plain request needed a connection of its own");
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 1, in_use: 0 }, "a plain request's is kept");

    const REFUSED: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 4\r\n\r\nnope";
    let origin = raw_origin(REFUSED, false).await;
    let (req, _) = websocket_request();
    let resp = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, req).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(read_all(resp).await, "nope");
    assert_eq!(pool.counts(origin.addr), PoolCounts::default());
}

#[tokio::test]
async fn a_101_to_a_request_that_did_not_ask_is_a_protocol_error() {
    const SWITCH: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
    let origin = raw_origin(SWITCH, false).await;
    let rec = Arc::new(Recorder::default());
    let pool = Pool::new(PoolConfig::default(), rec.clone());
    let t = Target::http1(origin.addr);
    let err = pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.is_l4_failure());

    // `Upgrade` without the `upgrade` connection option asks for nothing.
    let req = http::Request::get("/")
        .header(header::HOST, "origin.test")
        .header(header::CONNECTION, "keep-alive")
        .header(header::UPGRADE, "websocket")
        .body(empty_body())
        .unwrap();
    let err = pool.request(t, Freshness::IdlePreferred, req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert_eq!(rec.io_errors.lock().len(), 2);
    assert_eq!(pool.counts(origin.addr), PoolCounts::default());
}

/// An origin that answers any request head with `reply` in one write, then
/// echoes what it reads.
async fn switching_echo(reply: &'static [u8]) -> std::net::SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                s.write_all(reply).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn bytes_sent_with_the_101_come_first_out_of_the_upgraded_connection() {
    const SWITCH: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\n\r\nhello";
    let addr = switching_echo(SWITCH).await;
    let pool = pool();
    let req = http::Request::get("/")
        .header(header::HOST, "origin.test")
        .header(header::CONNECTION, "keep-alive, upgrade")
        .header(header::UPGRADE, "x-echo")
        .body(empty_body())
        .unwrap();
    let resp = pool.request(Target::http1(addr), Freshness::IdlePreferred, req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()[header::UPGRADE], "x-echo");
    let mut up = resp.into_body().into_upgraded().unwrap();
    // In pieces smaller than what was read ahead, then the stream itself;
    // the origin sends "hello" only once.
    let read = async {
        let mut two = [0u8; 2];
        up.read_exact(&mut two).await.unwrap();
        let mut three = [0u8; 3];
        up.read_exact(&mut three).await.unwrap();
        assert_eq!([&two[..], &three[..]].concat(), b"hello");
        up.write_all(b"and back").await.unwrap();
        let mut back = [0u8; 8];
        up.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"and back");
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("nothing read ahead was lost");
    drop(up);
    assert_eq!(pool.counts(addr), PoolCounts::default());

    // A 101's body dropped without taking the connection closes it too.
    let req = http::Request::get("/")
        .header(header::HOST, "origin.test")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "x-echo")
        .body(empty_body())
        .unwrap();
    let resp = pool.request(Target::http1(addr), Freshness::IdlePreferred, req).await.unwrap();
    assert_eq!(pool.counts(addr), PoolCounts { idle: 0, in_use: 1 });
    drop(resp);
    assert_eq!(pool.counts(addr), PoolCounts::default());
}

#[tokio::test]
async fn an_upgrade_over_h2_fails_before_sending_and_is_not_retried() {
    let origin = h2_origin(100).await;
    let rec = Arc::new(Recorder::default());
    let pool = Pool::new(PoolConfig::default(), rec.clone());
    let t = Target::h2c(origin.addr);
    // A first request, so that the upgrade goes out on a reused session
    // (one a retry on a fresh one would otherwise follow).
    assert_eq!(read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await, "ok");
    let (req, _) = websocket_request();
    let (err, back) = pool.try_request(t, Freshness::IdlePreferred, req, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpgradeOverH2);
    assert!(err.is_reused() && !err.is_sent() && !err.is_l4_failure());
    assert!(err.to_string().contains("HTTP/2"), "{err}");
    let back = back.expect("the request comes back whole");
    assert_eq!(back.headers()[header::UPGRADE], "websocket");
    assert_eq!((origin.conns(), origin.requests()), (1, 1), "not sent, not retried");
    assert!(rec.io_errors.lock().is_empty(), "not the server's fault");
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 1, in_use: 0 }, "its stream slot was freed");
}
