//! HostDB on the request path: lookup + select.
//!
//! Run: `cargo xtask bench` (or `cargo bench -p vigil-benches --bench hostdb`).
//!
//! - `lookup_select/{hot,spread}/N`: one lookup + round-robin pick + release
//!   with N origins of 3 servers; `hot` repeats one key, `spread` walks 4 096
//!   keys spread over all N origins. `weighted_spread/100000`: the same walk
//!   with weights 1, 2 and 3 on each origin's servers (smooth weighted round
//!   robin), to hold against `spread/100000`.
//! - `storm/{hostdb,rwlock_baseline}`: the same at 100 000 origins while
//!   another thread storms status updates (L4, L7, maintenance) without
//!   pause; the baseline is a `parking_lot::RwLock<HashMap>` whose updates
//!   take the write lock. Throughput is 1 / time per lookup.
//!
//! Last measured (2-core VM, `cargo xtask bench`, 2026-11-23):
//! see the closing note of the change that last touched this header; the
//! instruction counts CI holds the code to are in `benches/perf-baseline.json`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vigil_benches::{
    Baseline, all_keys, hostdb, lookup_select, spawn_storm, spread_keys, storm_update, weighted_hostdb,
};
use vigil_hostdb::LbPolicy;

fn now() -> std::time::Instant {
    tokio_free_now()
}

/// Benches run no tokio runtime; tokio's `Instant::now` would fall back to
/// this anyway. Read once per iteration batch, as a proxy reads it once per request.
#[allow(clippy::disallowed_methods)]
fn tokio_free_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn lookup_select_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup_select");
    g.throughput(Throughput::Elements(1));
    for n in [10usize, 1_000, 100_000] {
        let db = hostdb(n, LbPolicy::RoundRobin);
        let hot = vigil_benches::key(&db, n / 2);
        let keys = spread_keys(&db, 4096);
        let t = now();
        g.bench_with_input(BenchmarkId::new("hot", n), &n, |b, _| {
            b.iter(|| black_box(lookup_select(&db, black_box(&hot), t)))
        });
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("spread", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(lookup_select(&db, black_box(&keys[i]), t))
            })
        });
        if n == 100_000 {
            // Its own keys: a key from another HostDB misses the lookup's
            // pointer-equality fast path and would measure a string compare.
            let weighted = weighted_hostdb(n);
            let weighted_keys = spread_keys(&weighted, 4096);
            g.bench_with_input(BenchmarkId::new("weighted_spread", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) & 4095;
                    black_box(lookup_select(&weighted, black_box(&weighted_keys[i]), t))
                })
            });
        }
        // The same walk over the RwLock<HashMap> baseline, with no writer:
        // what the lock-free design costs when nothing contends.
        let base = Baseline::new(n);
        g.bench_with_input(BenchmarkId::new("rwlock_baseline_spread", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(base.lookup_select(black_box(&keys[i]), t))
            })
        });
    }
    g.finish();
}

fn lb_policies(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    for lb in [LbPolicy::LeastRequests, LbPolicy::ConsistentHash] {
        let db = hostdb(1_000, lb);
        let keys = spread_keys(&db, 4096);
        let t = now();
        let mut i = 0usize;
        g.bench_function(format!("{lb:?}"), |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                let mut attempt = vigil_hostdb::Attempt::new().with_hash_key(keys[i].as_str().as_bytes());
                black_box(db.select(&keys[i], &mut attempt, t).map(|p| p.addr()).ok())
            })
        });
    }
    g.finish();
}

fn storm(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut g = c.benchmark_group("storm");
    g.throughput(Throughput::Elements(1));
    let db = hostdb(N, LbPolicy::RoundRobin);
    let keys = spread_keys(&db, 4096);
    let all = std::sync::Arc::new(all_keys(&db));
    let t = now();

    {
        let (db2, all2) = (db.clone(), std::sync::Arc::clone(&all));
        let _storm = spawn_storm(move |i| storm_update(&db2, &all2, i, t));
        let mut i = 0usize;
        g.bench_function("hostdb", |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(lookup_select(&db, black_box(&keys[i]), t))
            })
        });
    }
    drop(db);

    let base = std::sync::Arc::new(Baseline::new(N));
    {
        let (base2, all2) = (std::sync::Arc::clone(&base), std::sync::Arc::clone(&all));
        let _storm = spawn_storm(move |i| base2.storm_update(&all2, i, t));
        let mut i = 0usize;
        g.bench_function("rwlock_baseline", |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(base.lookup_select(black_box(&keys[i]), t))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = lookup_select_bench, lb_policies, storm
}
criterion_main!(benches);
