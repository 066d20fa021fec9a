//! Two requests through the pool to a tiny origin on loopback: the second
//! rides the keep-alive session the first opened. Then a check-style
//! `fetch` (a whole small exchange within one timeout) reuses it too.
//!
//! ```sh
//! cargo run -p vigil-session --example reuse
//! ```

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, RetryPolicy, Target, empty_body};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), vigil_session::BoxError> {
    // An origin that answers every request on a connection with "hello",
    // and counts the connections it accepted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
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

    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let target = Target::http1(addr);
    for i in 1..=2 {
        let req = http::Request::get("/").header("host", "origin.example").body(empty_body())?;
        let session = pool.checkout(target, Freshness::IdlePreferred).await?;
        let reused = session.is_reused();
        let resp = session.send(req).await?;
        let status = resp.status();
        // Read to the end: that is what gives the session back to the pool.
        let body = resp.into_body().collect().await?.to_bytes();
        println!("request {i}: {status} {body:?}, reused session: {reused}");
    }
    let check = http::Request::get("/healthz").header("host", "origin.example").body(bytes::Bytes::new())?;
    let fetched = pool
        .fetch(target, Freshness::IdlePreferred, check, Duration::from_secs(1), 64 * 1024, RetryPolicy::CHECK)
        .await?;
    println!("a check: {} {:?}", fetched.head.status, fetched.body);
    println!(
        "connections the origin accepted: {}; pool: {:?}",
        connections.load(Ordering::SeqCst),
        pool.counts(addr)
    );
    Ok(())
}
