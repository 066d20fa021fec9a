use std::sync::Arc;

use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, Target};

use crate::{concurrent, get, h2_origin, read_all};

#[tokio::test]
async fn h2_multiplexes_concurrent_requests_on_one_connection() {
    let origin = h2_origin(100).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::h2c(origin.addr);
    let bodies = concurrent(&pool, t, 20, "/slow").await;
    assert!(bodies.iter().all(|b| b == "slow"));
    assert_eq!((origin.conns(), origin.requests()), (1, 20), "one connect, never a burst");
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts { idle: 1, in_use: 0 });
}

#[tokio::test]
async fn a_second_h2_connection_opens_only_when_the_first_is_full() {
    let origin = h2_origin(4).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::h2c(origin.addr);
    // Learn the server's limit (it arrives in SETTINGS after the handshake).
    read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await;
    let bodies = concurrent(&pool, t, 12, "/slow").await;
    assert!(bodies.iter().all(|b| b == "slow"));
    // 12 concurrent streams at 4 per connection: exactly 3 connections.
    assert_eq!(origin.conns(), 3);
    assert_eq!(origin.requests(), 13);
}
