use std::collections::HashMap;
use std::time::Duration;

use vigil_hostdb::{Attempt, CheckResult, Event, L4Policy, L4State, LbPolicy, SelectError};

use crate::{Recorder, addrs, db_with, now};

fn split(db: &vigil_hostdb::HostDb, n: usize) -> HashMap<std::net::SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let pick = db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap();
        *counts.entry(pick.addr()).or_default() += 1;
    }
    counts
}

#[test]
fn round_robin_splits_evenly_and_skips_unroutable() {
    let s = addrs(3, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy::default());
    let counts = split(&db, 300);
    assert!(s.iter().all(|a| counts[a] == 100), "{counts:?}");

    let origin = db.origin("app:80").unwrap();
    origin.server(s[1]).unwrap().set_maintenance(true);
    let counts = split(&db, 300);
    assert_eq!(counts.get(&s[1]), None, "maintenance server picked");
    assert_eq!(counts[&s[0]] + counts[&s[2]], 300);
}

#[test]
fn l7_unhealthy_is_not_routable_and_recovers() {
    let s = addrs(2, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy::default());
    let origin = db.origin("app:80").unwrap();
    let server = origin.server(s[0]).unwrap();
    let t = now();
    let fail = CheckResult::fail("503", Duration::from_millis(2));
    for _ in 0..3 {
        origin.record_check(&server, &fail, t);
    }
    assert!(!server.is_routable(t));
    assert!(!split(&db, 50).contains_key(&s[0]));
    let pass = CheckResult::pass("200", Duration::from_millis(1));
    origin.record_check(&server, &pass, t);
    assert!(!server.is_routable(t), "one pass is below healthy_threshold");
    origin.record_check(&server, &pass, t);
    assert!(server.is_routable(t));
    assert_eq!(split(&db, 50)[&s[0]], 25);
}

#[tokio::test(start_paused = true)]
async fn l4_down_then_one_retry_probe_then_up() {
    let s = addrs(2, 80);
    let policy = L4Policy { fail_threshold: 2, down_time: Duration::from_secs(10) };
    let db = db_with(s.clone(), LbPolicy::RoundRobin, policy);
    let events = Recorder::attach(&db);
    let server = db.origin("app:80").unwrap().server(s[0]).unwrap();

    assert_eq!(server.report_l4_failure(now()), L4State::Up);
    assert_eq!(server.report_l4_failure(now()), L4State::Down);
    assert!(matches!(
        events.take()[..],
        [Event::L4 { from: L4State::Up, to: L4State::Down, consecutive_failures: 2, .. }]
    ));
    assert!(!split(&db, 20).contains_key(&s[0]));

    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(server.l4_state(now()), L4State::Down);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(server.l4_state(now()), L4State::Retry);

    // Exactly one request probes it; the others go elsewhere meanwhile.
    let picks: Vec<_> =
        (0..10).map(|_| db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap()).collect();
    let probes: Vec<_> = picks.iter().filter(|p| p.addr() == s[0]).collect();
    assert_eq!(probes.len(), 1);
    assert!(probes[0].is_probe());

    // The probe fails: down again for a full down time.
    assert_eq!(probes[0].server().report_l4_failure(now()), L4State::Down);
    assert_eq!(server.l4_down_for(now()), Some(Duration::from_secs(10)));
    drop(picks);

    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = loop {
        let p = db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap();
        if p.is_probe() {
            break p;
        }
    };
    probe.server().report_l4_success(now());
    assert_eq!(server.l4_state(now()), L4State::Up);
    let ev = events.take();
    assert!(matches!(ev.last(), Some(Event::L4 { from: L4State::Retry, to: L4State::Up, .. })), "{ev:?}");
    assert_eq!(split(&db, 20)[&s[0]], 10);
}

#[tokio::test(start_paused = true)]
async fn a_lost_probe_lapses_after_down_time() {
    let s = addrs(1, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy::default());
    let server = db.origin("app:80").unwrap().server(s[0]).unwrap();
    server.report_l4_failure(now());
    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap();
    assert!(probe.is_probe());
    drop(probe); // cancelled: never reports
    assert!(matches!(
        db.select(&crate::k("app:80"), &mut Attempt::new(), now()),
        Err(SelectError::NoneRoutable { .. })
    ));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap().is_probe());
}

#[tokio::test(start_paused = true)]
async fn passing_l7_check_clears_l4_down() {
    let s = addrs(1, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy::default());
    let origin = db.origin("app:80").unwrap();
    let server = origin.server(s[0]).unwrap();
    server.report_l4_failure(now());
    assert_eq!(server.l4_state(now()), L4State::Down);
    origin.record_check(&server, &CheckResult::pass("200", Duration::ZERO), now());
    assert_eq!(server.l4_state(now()), L4State::Up);
}

#[tokio::test(start_paused = true)]
async fn a_pass_on_another_port_says_nothing_of_the_service_ports_l4() {
    let s = addrs(1, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy::default());
    let origin = db.origin("app:80").unwrap();
    let server = origin.server(s[0]).unwrap();
    server.report_l4_failure(now());
    for _ in 0..3 {
        origin.record_check_on_other_port(&server, &CheckResult::pass("200", Duration::ZERO), now());
    }
    assert_eq!(server.l4_state(now()), L4State::Down, "the admin port answering does not reopen the service");
    assert_eq!(server.l7_state(), vigil_hostdb::L7State::Healthy, "but it is the L7 verdict");
}

#[tokio::test(start_paused = true)]
async fn errors_say_what_the_client_gets() {
    let s = addrs(2, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy::default());
    assert_eq!(
        db.select(&crate::k("nope:80"), &mut Attempt::new(), now()).unwrap_err(),
        SelectError::UnknownOrigin
    );

    let origin = db.origin("app:80").unwrap();
    origin.server(s[0]).unwrap().set_maintenance(true);
    origin.server(s[1]).unwrap().report_l4_failure(now());
    tokio::time::advance(Duration::from_secs(3)).await;
    // 503 with Retry-After: when the L4-down server comes up for retry.
    assert_eq!(
        db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap_err(),
        SelectError::NoneRoutable { retry_after: Some(Duration::from_secs(7)) }
    );
    origin.server(s[1]).unwrap().set_maintenance(true);
    assert_eq!(
        db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap_err(),
        SelectError::NoneRoutable { retry_after: None }
    );
}

#[test]
fn retries_never_repeat_a_server() {
    for lb in [LbPolicy::RoundRobin, LbPolicy::LeastRequests, LbPolicy::ConsistentHash] {
        let s = addrs(4, 80);
        let db = db_with(s.clone(), lb, L4Policy::default());
        for _ in 0..50 {
            let mut attempt = Attempt::new().with_hash_key(b"/x");
            let mut seen = Vec::new();
            for _ in 0..4 {
                seen.push(db.select(&crate::k("app:80"), &mut attempt, now()).unwrap().addr());
            }
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 4, "{lb:?}");
            assert_eq!(
                db.select(&crate::k("app:80"), &mut attempt, now()).unwrap_err(),
                SelectError::Exhausted
            );
        }
    }
}

#[test]
fn least_requests_prefers_fewer_in_flight() {
    let s = addrs(2, 80);
    let db = db_with(s.clone(), LbPolicy::LeastRequests, L4Policy::default());
    // Hold 5 requests on s[0]: with two servers both are always the two
    // choices, so every new pick must go to s[1] while it has fewer.
    let origin = db.origin("app:80").unwrap();
    origin.server(s[1]).unwrap().set_maintenance(true);
    let held: Vec<_> =
        (0..5).map(|_| db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap()).collect();
    origin.server(s[1]).unwrap().set_maintenance(false);
    let mut more = Vec::new();
    for _ in 0..5 {
        let p = db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap();
        assert_eq!(p.addr(), s[1]);
        more.push(p);
    }
    assert_eq!(origin.server(s[0]).unwrap().in_flight(), 5);
    drop(held);
    assert_eq!(origin.server(s[0]).unwrap().in_flight(), 0, "picks release in-flight on drop");
}

#[test]
fn consistent_hash_is_sticky_and_a_leaving_server_remaps_only_its_share() {
    let s = addrs(5, 80);
    let db = db_with(s.clone(), LbPolicy::ConsistentHash, L4Policy::default());
    let keys: Vec<String> = (0..2000).map(|i| format!("/item/{i}")).collect();
    let place = |db: &vigil_hostdb::HostDb| -> Vec<std::net::SocketAddr> {
        keys.iter()
            .map(|k| {
                db.select(&crate::k("app:80"), &mut Attempt::new().with_hash_key(k.as_bytes()), now())
                    .unwrap()
                    .addr()
            })
            .collect()
    };
    let before = place(&db);
    assert_eq!(before, place(&db), "same key, same server");
    let mut share: HashMap<_, usize> = HashMap::new();
    for a in &before {
        *share.entry(*a).or_default() += 1;
    }
    assert!(share.values().all(|&n| (250..=550).contains(&n)), "uneven ring: {share:?}");

    // s[2] taken out of service: only its keys move.
    db.origin("app:80").unwrap().server(s[2]).unwrap().set_maintenance(true);
    let during = place(&db);
    for (b, d) in before.iter().zip(&during) {
        if *b != s[2] {
            assert_eq!(b, d, "a key moved although its server stayed");
        } else {
            assert_ne!(*d, s[2]);
        }
    }
    // Removed from the config: the same, since the ring depends only on addresses.
    let mut rest = s.clone();
    rest.remove(2);
    db.apply(&vigil_hostdb::HostDbConfig {
        origins: vec![crate::spec("app:80", rest, LbPolicy::ConsistentHash)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(place(&db), during);
}

#[test]
fn consistent_hash_with_most_servers_out_finds_the_one_left_deterministically() {
    let s: Vec<std::net::SocketAddr> =
        (0..200u16).map(|p| std::net::SocketAddr::from(([127, 0, 0, 2], 8000 + p))).collect();
    let db = db_with(s.clone(), LbPolicy::ConsistentHash, L4Policy::default());
    let origin = db.origin("app:80").unwrap();
    for a in &s[..199] {
        origin.server(*a).unwrap().set_maintenance(true);
    }
    for key in 0..200u32 {
        let mut attempt = Attempt::new().with_hash_key(&key.to_le_bytes());
        assert_eq!(db.select(&crate::k("app:80"), &mut attempt, now()).unwrap().addr(), s[199]);
        assert_eq!(db.select(&crate::k("app:80"), &mut attempt, now()).unwrap_err(), SelectError::Exhausted);
    }
    origin.server(s[199]).unwrap().set_maintenance(true);
    let mut attempt = Attempt::new().with_hash_key(b"/x");
    assert_eq!(
        db.select(&crate::k("app:80"), &mut attempt, now()).unwrap_err(),
        SelectError::NoneRoutable { retry_after: None }
    );
    // One server back: found through the ring or the fallback, stably.
    origin.server(s[10]).unwrap().set_maintenance(false);
    let pick = |k: &[u8]| {
        db.select(&crate::k("app:80"), &mut Attempt::new().with_hash_key(k), now()).unwrap().addr()
    };
    for key in 0..100u32 {
        assert_eq!(pick(&key.to_le_bytes()), pick(&key.to_le_bytes()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_remote_l4_down_mark_is_taken_only_by_a_clean_server_then_probed() {
    let s = addrs(2, 80);
    let db = db_with(s.clone(), LbPolicy::RoundRobin, L4Policy { fail_threshold: 2, ..L4Policy::default() });
    let origin = db.origin("app:80").unwrap();
    let (a, b) = (origin.server(s[0]).unwrap(), origin.server(s[1]).unwrap());
    // A mark already past, or on a server with local L4 history, is refused.
    assert!(!a.adopt_l4_down(now(), now()));
    b.report_l4_failure(now());
    assert!(!b.adopt_l4_down(now() + Duration::from_secs(5), now()));
    assert_eq!(b.l4_failures(), 1, "local history kept");

    assert!(a.adopt_l4_down(now() + Duration::from_secs(3), now()));
    assert_eq!(a.l4_state(now()), L4State::Down);
    assert!(!a.is_routable(now()));
    assert_eq!(split(&db, 10).get(&s[0]), None);
    // After the mark, the next request tries it once; success brings it up.
    tokio::time::advance(Duration::from_secs(3)).await;
    let probe = db.select(&crate::k("app:80"), &mut Attempt::new(), now()).unwrap();
    assert!(probe.is_probe() && probe.addr() == s[0]);
    probe.server().report_l4_success(now());
    assert_eq!(a.l4_state(now()), L4State::Up);
}
