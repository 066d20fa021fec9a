//! Concurrent writers against lock-free readers, on real threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use vigil_hostdb::{Attempt, CheckResult, L4Policy, L7Policy, LbPolicy, SelectError};

use crate::{addrs, db_with, now};

#[test]
fn readers_never_see_a_server_that_is_out_while_writers_storm() {
    let s = addrs(8, 80);
    for lb in [LbPolicy::RoundRobin, LbPolicy::LeastRequests, LbPolicy::ConsistentHash] {
        let db = db_with(s.clone(), lb, L4Policy { fail_threshold: 2, down_time: Duration::from_secs(3600) });
        let origin = db.origin("app:80").unwrap();
        // Servers 0..4 are out for the whole test, each in a different way.
        origin.server(s[0]).unwrap().set_maintenance(true);
        origin.server(s[1]).unwrap().report_l4_failure(now());
        origin.server(s[1]).unwrap().report_l4_failure(now());
        let bad = CheckResult::fail("503", Duration::ZERO);
        for _ in 0..3 {
            origin.record_check(&origin.server(s[2]).unwrap(), &bad, now());
        }
        origin.server(s[3]).unwrap().set_maintenance(true);
        let out = [s[0], s[1], s[2], s[3]];

        let stop = Arc::new(AtomicBool::new(false));
        let picks = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            // Writers storm the other four: L4 failures below threshold and
            // successes, L7 passes and failures that never reach a threshold
            // from healthy, maintenance never touched.
            for w in 0..2 {
                let (origin, stop) = (Arc::clone(&origin), Arc::clone(&stop));
                let s = s.clone();
                scope.spawn(move || {
                    let policy = L7Policy { healthy_threshold: 1, unhealthy_threshold: 1000 };
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let server = origin.server(s[4 + i % 4]).unwrap();
                        match i % 3 {
                            0 => {
                                server.report_l4_failure(now());
                            }
                            1 => server.report_l4_success(now()),
                            _ => {
                                server.record_check(
                                    &CheckResult {
                                        passed: i % 2 == 0,
                                        detail: "x".into(),
                                        latency: Duration::ZERO,
                                    },
                                    &policy,
                                    now(),
                                );
                            }
                        }
                        server.report_l4_success(now());
                        i += 1;
                    }
                });
            }
            for r in 0..2u64 {
                let (db, stop, picks) = (db.clone(), Arc::clone(&stop), Arc::clone(&picks));
                scope.spawn(move || {
                    for i in 0..50_000u64 {
                        let key = (i ^ r).to_le_bytes();
                        let mut attempt = Attempt::new().with_hash_key(&key);
                        match db.select(&crate::k("app:80"), &mut attempt, now()) {
                            Ok(p) => {
                                assert!(!out.contains(&p.addr()), "{lb:?} picked {} which is out", p.addr());
                                picks.fetch_add(1, Ordering::Relaxed);
                            }
                            // A writer may hold a server at one failure below
                            // threshold, never down: so one is always routable.
                            Err(e) => panic!("{lb:?}: {e}"),
                        }
                    }
                    stop.store(true, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(picks.load(Ordering::Relaxed), 100_000);
        assert!(origin.servers().iter().all(|s| s.in_flight() == 0), "every pick released");
    }
}

#[tokio::test(start_paused = true)]
async fn exactly_one_of_many_racing_requests_gets_the_retry_probe() {
    let s = addrs(1, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy::default());
    db.origin("app:80").unwrap().server(s[0]).unwrap().report_l4_failure(now());
    tokio::time::advance(Duration::from_secs(10)).await;
    for _round in 0..20 {
        let t = now();
        let barrier = Arc::new(Barrier::new(8));
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (db, barrier) = (db.clone(), Arc::clone(&barrier));
                    scope.spawn(move || {
                        barrier.wait();
                        db.select(&crate::k("app:80"), &mut Attempt::new(), t).map(|p| p.is_probe())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| matches!(r, Ok(true))).count(), 1, "{results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(true) | Err(SelectError::NoneRoutable { .. }))));
        // The probe failed: down again, and due for the next round.
        db.origin("app:80").unwrap().server(s[0]).unwrap().report_l4_failure(t);
        tokio::time::advance(Duration::from_secs(10)).await;
    }
}
