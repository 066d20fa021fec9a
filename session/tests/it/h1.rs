use std::sync::Arc;

use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, Target};

use crate::{get, h1_origin, raw_origin, read_all};

#[tokio::test]
async fn sequential_requests_reuse_one_session() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let mut ids = Vec::new();
    for i in 0..20 {
        let s = pool.checkout(t, Freshness::IdlePreferred).await.unwrap();
        assert_eq!(s.is_reused(), i > 0);
        ids.push(s.connection_id());
        assert_eq!(read_all(s.send(get("/")).await.unwrap()).await, "ok");
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!((origin.conns(), origin.requests()), (1, 20));
    assert_eq!((pool.metrics().connects_ok(), pool.metrics().reused()), (1, 19));
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts { idle: 1, in_use: 0 });
}

#[tokio::test]
async fn a_session_returns_only_when_its_body_was_read_to_the_end() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let resp = pool.request(t, Freshness::IdlePreferred, get("/big")).await.unwrap();
    assert_eq!(pool.counts(origin.addr).in_use, 1, "in use while the body is unread");
    drop(resp); // abandoned half-way: the session must not be reused
    assert_eq!(pool.counts(origin.addr).idle, 0);
    let resp = pool.request(t, Freshness::IdlePreferred, get("/big")).await.unwrap();
    assert_eq!(read_all(resp).await.len(), 256 * 1024);
    assert_eq!(pool.counts(origin.addr).idle, 1);
    assert_eq!(origin.conns(), 2, "the abandoned session was closed, not reused");
}

#[tokio::test]
async fn fresh_checkouts_open_new_connections_that_then_serve_requests() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    for _ in 0..3 {
        let resp = pool.request(t, Freshness::Fresh, get("/")).await.unwrap();
        read_all(resp).await;
    }
    assert_eq!(origin.conns(), 3);
    assert_eq!(pool.counts(origin.addr).idle, 3, "fresh sessions join the pool");
    let s = pool.checkout(t, Freshness::IdlePreferred).await.unwrap();
    assert!(s.is_reused());
    drop(s); // unused: goes straight back
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts { idle: 3, in_use: 0 });
}

#[tokio::test]
async fn the_server_closing_idle_sessions_never_fails_a_request() {
    // Answers keep-alive, then closes right after: every pooled session dies idle.
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let origin = raw_origin(REPLY, true).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    for _ in 0..50 {
        let resp = pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap();
        assert_eq!(read_all(resp).await, "ok");
    }
    assert_eq!(origin.requests(), 50);
}

#[tokio::test]
async fn stray_bytes_on_an_idle_session_close_it() {
    // A response, then junk while idle.
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK";
    let origin = raw_origin(REPLY, false).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await;
    // Whether the junk is seen on check-in, while idle or on the next send,
    // the session is never used for a second request.
    let second = pool.request(t, Freshness::IdlePreferred, get("/")).await;
    if let Ok(resp) = second {
        read_all(resp).await;
    }
    assert_eq!(origin.conns(), 2);
}
