//! The instruction-count harness behind `cargo xtask perf` (and the
//! performance step of `cargo xtask ci`).
//!
//! `vigil-perf <scenario>` builds its fixture, then runs the scenario's
//! operation `ITERS` times inside [`perf_measured_region`]. The xtask runs it
//! under `valgrind --tool=callgrind --toggle-collect=*perf_measured_region*`,
//! so only the measured loop is counted, and divides by `ITERS`.
//! Instruction counts do not move with machine load, which is why CI gates on
//! them rather than on time. `vigil-perf list` prints the scenarios.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use vigil_benches::{all_keys, hostdb, key, lookup_select, spread_keys, storm_update, weighted_hostdb};
use vigil_hostdb::{Attempt, CheckResult, HostDb, LbPolicy};

/// Iterations of the measured operation per scenario.
const ITERS: usize = 20_000;

/// Everything counted runs inside this function (callgrind toggles on it).
#[inline(never)]
fn perf_measured_region(f: &mut dyn FnMut(usize)) {
    for i in 0..ITERS {
        f(i);
    }
}

type Scenario = (&'static str, &'static str, fn());

const SCENARIOS: &[Scenario] = &[
    ("select_hot_10", "lookup + round-robin select, one key, 10 origins", || hot(10)),
    ("select_hot_100k", "lookup + round-robin select, one key, 100 000 origins", || hot(100_000)),
    ("select_spread_100k", "lookup + round-robin select over 4 096 keys, 100 000 origins", spread_100k),
    (
        "select_weighted_spread_100k",
        "lookup + smooth weighted round-robin select over 4 096 keys, 100 000 origins",
        weighted_spread_100k,
    ),
    ("select_least_requests", "lookup + P2C select over 4 096 keys, 1 000 origins", || {
        policy(LbPolicy::LeastRequests)
    }),
    ("select_consistent_hash", "lookup + ring select over 4 096 keys, 1 000 origins", || {
        policy(LbPolicy::ConsistentHash)
    }),
    ("report_l4_success_clean", "L4 success on a server with no failures (every response)", l4_success),
    ("storm_update", "one status update of the storm mix (L4, L7, maintenance)", storm),
    ("session_checkout_checkin", "take an idle HTTP/1.1 session from the pool and put it back", session),
];

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_default();
    if arg == "list" {
        for (name, what, _) in SCENARIOS {
            println!("{name}\t{ITERS}\t{what}");
        }
        return;
    }
    match SCENARIOS.iter().find(|(name, ..)| *name == arg) {
        Some((_, _, run)) => {
            fastrand::seed(0x5eed);
            run();
        }
        None => {
            eprintln!("usage: vigil-perf list | <scenario>");
            std::process::exit(2);
        }
    }
}

fn now() -> Instant {
    Instant::now()
}

fn hot(n: usize) {
    let db = hostdb(n, LbPolicy::RoundRobin);
    let k = key(&db, n / 2);
    let t = now();
    perf_measured_region(&mut |_| {
        black_box(lookup_select(&db, black_box(&k), t));
    });
}

fn spread_100k() {
    let db = hostdb(100_000, LbPolicy::RoundRobin);
    let keys = spread_keys(&db, 4096);
    let t = now();
    perf_measured_region(&mut |i| {
        black_box(lookup_select(&db, black_box(&keys[i & 4095]), t));
    });
}

fn weighted_spread_100k() {
    let db = weighted_hostdb(100_000);
    let keys = spread_keys(&db, 4096);
    let t = now();
    perf_measured_region(&mut |i| {
        black_box(lookup_select(&db, black_box(&keys[i & 4095]), t));
    });
}

fn policy(lb: LbPolicy) {
    let db = hostdb(1_000, lb);
    let keys = spread_keys(&db, 4096);
    let t = now();
    perf_measured_region(&mut |i| {
        let k = &keys[i & 4095];
        let mut attempt = Attempt::new().with_hash_key(k.as_str().as_bytes());
        black_box(db.select(k, &mut attempt, t).map(|p| p.addr()).ok());
    });
}

fn l4_success() {
    let db: HostDb = hostdb(10, LbPolicy::RoundRobin);
    let server = db.origin_by_key(&key(&db, 0)).and_then(|o| o.servers().first().cloned()).expect("fixture");
    let t = now();
    perf_measured_region(&mut |_| black_box(&server).report_l4_success(t));
}

fn storm() {
    let db = hostdb(1_000, LbPolicy::RoundRobin);
    let keys = all_keys(&db);
    let t = now();
    // Warm every record once so the measured loop sees steady state.
    for i in 0..4_000 {
        storm_update(&db, &keys, i, t);
    }
    let _ = CheckResult::pass("", Duration::ZERO);
    perf_measured_region(&mut |i| storm_update(&db, &keys, i, t));
}

fn session() {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, Target};

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (addr, _) = rt.block_on(vigil_benches::origin::start_h1_origin());
    let target = Target::http1(addr);
    let pool = rt.block_on(async { Pool::new(PoolConfig::default(), Arc::new(NoopObserver)) });
    rt.block_on(vigil_benches::origin::get(&pool, target, Freshness::IdlePreferred));
    let _enter = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    perf_measured_region(&mut |_| {
        let mut fut = std::pin::pin!(pool.checkout(target, Freshness::IdlePreferred));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(session)) => drop(black_box(session)),
            _ => panic!("the idle session was not handed out at once"),
        }
    });
}
