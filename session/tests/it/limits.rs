use std::sync::Arc;
use std::time::Duration;

use vigil_session::{Freshness, IdleLimit, NoopObserver, Pool, PoolConfig, PoolCounts, Target};

use crate::{concurrent, get, h1_origin, read_all};

#[tokio::test]
async fn parallel_requests_stay_within_the_idle_limit() {
    let origin = h1_origin().await;
    let config = PoolConfig { max_idle_per_server: IdleLimit::Fixed(4), ..Default::default() };
    let pool = Pool::new(config, Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    concurrent(&pool, t, 16, "/slow").await;
    assert_eq!(origin.conns(), 16, "h1 sessions are unique: one per concurrent request");
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 4, in_use: 0 });
    assert_eq!(pool.metrics().evicted(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_idle_limit_keeps_what_the_load_uses_and_no_more() {
    let origin = h1_origin().await;
    let config = PoolConfig {
        max_idle_per_server: IdleLimit::Adaptive { min: 2, max: 8 },
        idle_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let pool = Pool::new(config, Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    // Waves of six at once: six sessions, reused wave after wave (a fixed
    // limit of 2 closes four after each wave and opens them again).
    for _ in 0..3 {
        concurrent(&pool, t, 6, "/slow").await;
    }
    assert_eq!(origin.conns(), 6);
    assert_eq!(pool.metrics().evicted(), 0);
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 6, in_use: 0 });

    // Twelve at once: never more than 8 kept.
    concurrent(&pool, t, 12, "/slow").await;
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 8, in_use: 0 });

    // The load gone, two sweeps (every 500 ms here) give back all but 2,
    // before the idle timeout closes the rest.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_800);
    while pool.counts(origin.addr).idle > 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.counts(origin.addr).idle, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_idle_limit_below_the_load_churns() {
    let origin = h1_origin().await;
    let config = PoolConfig { max_idle_per_server: IdleLimit::Fixed(2), ..Default::default() };
    let pool = Pool::new(config, Arc::new(NoopObserver));
    for _ in 0..3 {
        concurrent(&pool, Target::http1(origin.addr), 6, "/slow").await;
    }
    // What the adaptive limit is for: the same waves open 6 + 4 + 4.
    assert_eq!(origin.conns(), 14);
    assert_eq!(pool.metrics().evicted(), 12);
}

#[tokio::test]
async fn idle_sessions_expire_and_leave_no_empty_entry() {
    let origin = h1_origin().await;
    let config = PoolConfig { idle_timeout: Duration::from_millis(300), ..Default::default() };
    let pool = Pool::new(config, Arc::new(NoopObserver));
    read_all(pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap())
        .await;
    assert_eq!(pool.targets(), 1);
    // Real sockets: the sweep runs on the real clock (every 100 ms here).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.targets() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.targets(), 0, "the swept target's entry is gone too");
    assert_eq!(pool.metrics().evicted(), 1);
}

/// This process's descriptors that are TCP sockets with `port` at either
/// end: this test's own, whatever other tests of the binary open meanwhile.
fn fds_on_port(port: u16) -> usize {
    let port = format!(":{port:04X}");
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && (cols[1].ends_with(&port) || cols[2].ends_with(&port)) {
                inodes.insert(format!("socket:[{}]", cols[9]));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| inodes.contains(target.to_string_lossy().as_ref()))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_checkouts_hold_no_more_descriptors_than_the_limits_allow() {
    let origin = h1_origin().await;
    let config = PoolConfig { max_idle_per_server: IdleLimit::Fixed(4), ..Default::default() };
    let pool = Pool::new(config, Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let before = fds_on_port(origin.addr.port());
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..2_500 {
                    let resp = pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap();
                    read_all(resp).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let grown = fds_on_port(origin.addr.port()).saturating_sub(before);
    // At most 4 pooled client sockets, and the in-process origin's 4 ends.
    assert!(grown <= 8, "{grown} descriptors more after 10 000 checkouts");
    assert!(origin.conns() <= 8, "{} connections for 4 workers", origin.conns());
    assert_eq!(origin.requests(), 10_000);
    assert!(pool.metrics().reused() >= 9_990);
}

#[tokio::test]
async fn clear_idle_closes_every_idle_session_and_keeps_those_in_use() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    concurrent(&pool, t, 3, "/").await;
    let held = pool.request(t, Freshness::IdlePreferred, get("/big")).await.unwrap();
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 2, in_use: 1 });
    pool.clear_idle();
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 0, in_use: 1 });
    read_all(held).await; // finished after the clear: it still comes back
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 1, in_use: 0 });
}

#[tokio::test]
async fn an_idle_session_gives_its_buffers_back_at_the_sweep_and_takes_them_again() {
    let origin = h1_origin().await;
    let config = PoolConfig { idle_timeout: Duration::from_secs(2), ..Default::default() };
    let pool = Pool::new(config, Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let first = read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await;
    assert!(pool.idle_buffered(origin.addr) > 0, "just back: it keeps its buffers for the next request");
    // Real sockets: the sweep runs on the real clock (every 500 ms here);
    // a session idle since before one sweep sheds at the next.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.idle_buffered(origin.addr) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.idle_buffered(origin.addr), 0);
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 1, in_use: 0 }, "shed, not closed");
    // The same session carries the next request whole.
    let second = read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await;
    assert_eq!(second, first);
    assert_eq!(origin.conns(), 1);
}
