//! WebSocket (HTTP/1.1 `Upgrade`) through the real binary, with a real
//! WebSocket client and server (tungstenite): the 101 turns both
//! connections into a tunnel that the server counts in flight, that never
//! returns to the pool, that closes when idle; h2c upgrades are declined
//! and an h2 origin cannot take one.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// A WebSocket echo server on `ip` (text and binary messages come back).
async fn websocket_echo(ip: &str) -> SocketAddr {
    let port = free_port(&[ip]);
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(_) | Message::Binary(_) => {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_tunnel_through_and_the_server_counts_them_in_flight() {
    let echo = websocket_echo("127.0.0.2").await;
    let origin = format!("ws.test:{}", echo.port());
    let rest = format!(
        "[limits]\ntunnel_idle_timeout = \"1s\"\n\n[access_log]\npath = \"access.log\"\nflush_interval = \"100ms\"\n\n{}",
        remap("chat.app.test", &origin, &format!("[\"{echo}\"]"), "")
    );
    let v = Vigil::start("websocket", "", &rest, "").await;

    let stream = TcpStream::connect(v.listen).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://chat.app.test/chat", stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"].to_str().unwrap().to_ascii_lowercase(), "websocket");
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));

    // While it lives: one request in flight to the server, its connection
    // in use and not idle in the pool, one tunnel open.
    let server = v.server(echo).await;
    assert_eq!(server["pool"], serde_json::json!({"idle": 0, "in_use": 1}), "{server}");
    let in_flight = format!("vigil_server_in_flight{{origin=\"{origin}\",server=\"{echo}\"}}");
    assert_eq!(v.metric(&in_flight).await, 1.0);
    assert_eq!(v.metric("vigil_tunnels_open").await, 1.0);

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let released = wait_until(Duration::from_secs(5), || async {
        v.metric("vigil_tunnels_open").await == 0.0 && v.metric(&in_flight).await == 0.0
    })
    .await;
    assert!(released, "the tunnel's end releases the server: {}", v.log());
    let server = v.server(echo).await;
    assert_eq!(server["pool"], serde_json::json!({"idle": 0, "in_use": 0}), "never back in the pool: {server}");
    assert_eq!(v.metric("vigil_tunnels_total").await, 1.0);

    // A quiet tunnel is closed after tunnel_idle_timeout.
    let stream = TcpStream::connect(v.listen).await.unwrap();
    let (mut quiet, _) = tokio_tungstenite::client_async("ws://chat.app.test/quiet", stream).await.unwrap();
    let started = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), quiet.next()).await;
    assert!(matches!(end, Ok(None) | Ok(Some(Err(_)))), "closed, not held: {end:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed only after the idle timeout: {took:?}");

    // The access log has the 101 with the bytes the client got.
    let log = v.dir.join("access.log");
    let logged = wait_until(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).unwrap_or_default().lines().count() >= 2
    })
    .await;
    assert!(logged);
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["status"], 101);
    assert_eq!(first["path"], "/chat");
    assert!(first["bytes"].as_u64().unwrap() > 20, "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrades_are_declined_and_h2_origins_take_none() {
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let h2 = format!("h2.test:{}", o[0].addr.port());
    let rest = format!(
        "{}\n{}",
        remap("www.app.test", &origin, &server_list(&o), ""),
        remap("h2.app.test", &h2, &server_list(&o), "protocol = \"h2c\"")
    );
    let v = Vigil::start("upgrades", "", &rest, "").await;
    // An h2c upgrade is served as plain HTTP/1.1, the upgrade not passed on.
    let out = raw(
        v.listen,
        b"GET /headers HTTP/1.1\r\nHost: www.app.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(!out.to_ascii_lowercase().contains("upgrade"), "nothing of the upgrade reached the origin: {out}");
    // A WebSocket to an h2 origin: 501, said plainly.
    let out = raw(
        v.listen,
        b"GET /chat HTTP/1.1\r\nHost: h2.app.test\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 501 "), "{out}");
    assert!(out.contains("needs HTTP/1.1"), "{out}");
}
