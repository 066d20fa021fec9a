//! The session pool: idle checkout+checkin, GET over a reused session
//! against a fresh connection per request, and the reuse ratio under steady
//! keep-alive load.
//!
//! Run: `cargo xtask bench` (or `cargo bench -p vigil-benches --bench session`).
//!
//! - `session/checkout_checkin_idle` (criterion): take an idle HTTP/1.1
//!   session and put it back. The idle path never waits, so the future is
//!   polled once with a no-op waker: no runtime overhead is measured.
//! - Printed before criterion runs, with bounded request counts (fresh
//!   connections leave TIME_WAIT sockets; criterion would pick the count):
//!   GET over a reused session vs. a fresh connection per request against a
//!   real loopback origin, their ratio, and the new connections per request
//!   of 8 workers x 2 500 keep-alive requests.

#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::Criterion;
use vigil_benches::origin::{get, start_h1_origin};
use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, Target};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn checkout_checkin(c: &mut Criterion) {
    let rt = runtime();
    let (addr, _) = rt.block_on(start_h1_origin());
    let target = Target::http1(addr);
    let pool = rt.block_on(async { Pool::new(PoolConfig::default(), Arc::new(NoopObserver)) });
    rt.block_on(get(&pool, target, Freshness::IdlePreferred)); // one idle session
    let _enter = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function("session/checkout_checkin_idle", |b| {
        b.iter(|| {
            let mut fut = pin!(pool.checkout(target, Freshness::IdlePreferred));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(session)) => drop(black_box(session)), // checkin
                _ => panic!("the idle session was not handed out at once"),
            }
        })
    });
}

/// Mean time per GET over `n` sequential requests.
fn per_request(
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    target: Target,
    freshness: Freshness,
    n: u32,
) -> Duration {
    rt.block_on(async {
        for _ in 0..50 {
            get(pool, target, freshness).await; // warm
        }
        let start = Instant::now();
        for _ in 0..n {
            get(pool, target, freshness).await;
        }
        start.elapsed() / n
    })
}

fn http_figures() {
    let rt = runtime();
    let (addr, conns) = rt.block_on(start_h1_origin());
    let target = Target::http1(addr);
    let pool = rt.block_on(async { Pool::new(PoolConfig::default(), Arc::new(NoopObserver)) });

    let reused = per_request(&rt, &pool, target, Freshness::IdlePreferred, 5_000);
    let fresh = per_request(&rt, &pool, target, Freshness::Fresh, 1_000);
    println!("session/get_reused        {:>8.1} us per request", reused.as_secs_f64() * 1e6);
    println!("session/get_fresh         {:>8.1} us per request", fresh.as_secs_f64() * 1e6);
    println!("session/fresh_over_reused {:>8.2}x", fresh.as_secs_f64() / reused.as_secs_f64());

    // Steady keep-alive load: 8 workers, 2 500 requests each.
    let pool = rt.block_on(async { Pool::new(PoolConfig::default(), Arc::new(NoopObserver)) });
    let before = conns.load(Ordering::Relaxed);
    rt.block_on(async {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for _ in 0..2_500 {
                        get(&pool, target, Freshness::IdlePreferred).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.expect("worker");
        }
    });
    let opened = conns.load(Ordering::Relaxed) - before;
    println!(
        "session/reuse_ratio       {opened} connections for 20000 requests = {:.3}% new per request (reused {})",
        opened as f64 / 20_000.0 * 100.0,
        pool.metrics().reused()
    );
}

fn main() {
    http_figures();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    checkout_checkin(&mut c);
    c.final_summary();
}
