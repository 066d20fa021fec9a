//! The lazy checker against two servers on loopback: one answers its health
//! endpoint, the other refuses connections. Nothing is checked before the
//! first "user request" (`touch`); then the good server turns healthy and
//! the other unhealthy and L4-down, all over one pooled session per server.
//!
//! ```sh
//! cargo run -p vigil-l7check --example check
//! ```

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_hostdb::{HostDb, HostDbConfig, L7State, OriginKey, OriginSpec, ServerSource};
use vigil_l7check::{Checker, CheckerOptions, HealthChecks, PoolProbe};
use vigil_session::{NoopObserver, Pool, PoolConfig};

const CHECKS: &str = r#"
[defaults]
interval = "100ms"
unhealthy_interval = "100ms"
timeout = "80ms"
healthy_threshold = 2
unhealthy_threshold = 2

[[check]]
origin = "app.internal"
path = "/healthz"
expect_body = "OK"
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A health endpoint that says OK on keep-alive connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let good = listener.local_addr()?;
    let (checks, conns) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, n) = (Arc::clone(&checks), Arc::clone(&conns));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            let c = Arc::clone(&c);
            tokio::spawn(async move {
                let (mut buf, mut seen) = (vec![0u8; 4096], Vec::new());
                loop {
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        c.fetch_add(1, Ordering::SeqCst);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nOK").await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => seen.extend_from_slice(&buf[..k]),
                    }
                }
            });
        }
    });
    // A server nothing listens on.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;

    let checks_file = HealthChecks::parse(CHECKS, "healthchecks.toml")?;
    let key: OriginKey = "app.internal:8080".parse()?;
    let db = HostDb::new();
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec {
            key: key.clone(),
            servers: ServerSource::Static(vec![good, refused]),
            lb: Default::default(),
            check: checks_file.matching(&key).map(|c| c.settings.policy),
            policy: Default::default(),
        }],
        ..Default::default()
    })?;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let checker =
        Checker::new(db.clone(), Arc::new(PoolProbe::new(pool)), checks_file, CheckerOptions::default());
    let origin = db.origin_by_key(&key).ok_or("no origin")?;

    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "before any request: {} checks sent (lazy: no traffic, no checks)",
        checks.load(Ordering::SeqCst)
    );

    let touched = tokio::time::Instant::now();
    checker.touch(&origin, touched.into_std()); // what the request path does
    // Two results decide (the thresholds above): a few intervals.
    while origin.servers().iter().any(|s| s.l7().state == L7State::Unknown) {
        if touched.elapsed() > Duration::from_secs(5) {
            return Err("no verdict in 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("verdicts after {:?}:", touched.elapsed());
    let now = tokio::time::Instant::now().into_std();
    for server in origin.servers().iter() {
        let l7 = server.l7();
        let detail = l7.last_result.as_ref().map_or("-".into(), |r| r.detail.to_string());
        println!(
            "{}: L7 {:?} (last: {detail}), L4 {:?}, routable: {}",
            server.addr(),
            l7.state,
            server.l4_state(now),
            server.is_routable(now)
        );
    }
    println!(
        "the good server answered {} checks over {} connection(s)",
        checks.load(Ordering::SeqCst),
        conns.load(Ordering::SeqCst)
    );
    Ok(())
}
