//! Traffic policy: weights, slow start, panic, outlier detection and
//! server-signalled health, on paused time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use vigil_hostdb::policy::{OriginPolicy, OutlierPolicy, slow_start_factor};
use vigil_hostdb::{
    Attempt, CheckResult, Event, HostDb, HostDbConfig, L4Policy, L7State, LbPolicy, Pick, SelectError,
};

use crate::{Recorder, addrs, k, now, spec};

fn db(servers: &[SocketAddr], lb: LbPolicy, policy: OriginPolicy) -> HostDb {
    let db = HostDb::new();
    let mut s = spec("app:80", servers.to_vec(), lb);
    s.policy = policy;
    db.apply(&HostDbConfig { l4: L4Policy::default(), origins: vec![s] }).unwrap();
    db
}

fn weighted(servers: &[SocketAddr], weights: &[u32]) -> OriginPolicy {
    OriginPolicy {
        weights: servers.iter().copied().zip(weights.iter().copied()).collect(),
        ..Default::default()
    }
}

fn pick(db: &HostDb) -> Result<Pick, SelectError> {
    db.select(&k("app:80"), &mut Attempt::new(), now())
}

/// Picks `n` times, dropping each pick; the count per server.
fn split(db: &HostDb, n: usize) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(pick(db).unwrap().addr()).or_default() += 1;
    }
    counts
}

fn fail_checks(db: &HostDb, server: SocketAddr) {
    let origin = db.origin("app:80").unwrap();
    let s = origin.server(server).unwrap();
    for _ in 0..3 {
        origin.record_check(&s, &CheckResult::fail("503", Duration::ZERO), now());
    }
    assert_eq!(s.l7_state(), L7State::Unhealthy);
}

fn pass_checks(db: &HostDb, server: SocketAddr) {
    let origin = db.origin("app:80").unwrap();
    let s = origin.server(server).unwrap();
    for _ in 0..2 {
        origin.record_check(&s, &CheckResult::pass("200", Duration::ZERO), now());
    }
}

proptest! {
    /// Weighted round robin gives each server exactly its weight's share of
    /// every whole cycle, and no burst: in any window, a server's count is
    /// within 2 of its share.
    #[test]
    fn weighted_round_robin_shares_are_the_weights_without_bursts(weights in prop::collection::vec(1u32..=12, 1..7)) {
        let servers = addrs(weights.len() as u8, 80);
        let db = db(&servers, LbPolicy::RoundRobin, weighted(&servers, &weights));
        let total: u32 = weights.iter().sum();
        let cycles = 4;
        let picks: Vec<SocketAddr> = (0..total * cycles).map(|_| pick(&db).unwrap().addr()).collect();
        for (s, w) in servers.iter().zip(&weights) {
            let n = picks.iter().filter(|p| *p == s).count() as u32;
            prop_assert_eq!(n, w * cycles, "{} of weight {} in {:?}", s, w, weights);
        }
        // Smooth: in every window, of every length up to a cycle, across
        // the cycles' boundaries too, each server is within 2 of its share.
        let cycle = total as usize;
        for window in 1..=cycle {
            for start in 0..cycle {
                for (s, w) in servers.iter().zip(&weights) {
                    let n = picks[start..start + window].iter().filter(|p| *p == s).count() as f64;
                    let share = window as f64 * f64::from(*w) / f64::from(total);
                    prop_assert!((n - share).abs() <= 2.0, "{} burst: {} in {} picks, share {} ({:?})", s, n, window, share, weights);
                }
            }
        }
    }

    /// The slow-start share rises with time, never falls, starts at the
    /// floor and is whole at the window's end.
    #[test]
    fn slow_start_ramps_monotonically_to_full(window_ms in 1u64..600_000, a in 0u64..700_000, b in 0u64..700_000) {
        let window = Duration::from_millis(window_ms);
        let (lo, hi) = (a.min(b), a.max(b));
        let f = |ms| slow_start_factor(Duration::from_millis(ms), window);
        prop_assert!(f(lo) <= f(hi));
        prop_assert!((0.1..=1.0).contains(&f(lo)));
        prop_assert_eq!(f(0), if window_ms == 0 { 1.0 } else { 0.1 });
        prop_assert_eq!(f(window_ms), 1.0);
    }

    /// Panic engages exactly below the threshold and never counts servers
    /// in maintenance.
    #[test]
    fn panic_engages_below_the_threshold(n in 2u8..10, down in 0u8..10, threshold in 1u8..=100) {
        let down = down.min(n);
        let servers = addrs(n, 80);
        let policy = OriginPolicy { panic_threshold: Some(threshold), ..Default::default() };
        let db = db(&servers, LbPolicy::RoundRobin, policy);
        for s in &servers[..usize::from(down)] {
            fail_checks(&db, *s);
        }
        let result = pick(&db);
        let routable = usize::from(n - down);
        let expect = routable * 100 < usize::from(n) * usize::from(threshold);
        prop_assert_eq!(db.origin("app:80").unwrap().panicking(), expect);
        prop_assert!(result.is_ok(), "in panic or not, a server is found: {:?}", result);
    }

    /// However many servers fail, outlier detection never ejects more than
    /// its cap (one at least, when none is out).
    #[test]
    fn ejections_never_pass_the_cap(n in 2u8..12, failing in 1u8..12, max_percent in 1u8..=100) {
        let failing = failing.min(n);
        let servers = addrs(n, 80);
        let outlier = OutlierPolicy { consecutive: 2, max_percent, ..Default::default() };
        let db = db(&servers, LbPolicy::RoundRobin, OriginPolicy { outlier: Some(outlier), ..Default::default() });
        let origin = db.origin("app:80").unwrap();
        for s in &servers[..usize::from(failing)] {
            let server = origin.server(*s).unwrap();
            for _ in 0..3 {
                origin.report_response(&server, 503, now());
            }
        }
        let ejected = servers.iter().filter(|s| origin.server(**s).unwrap().is_ejected(now())).count();
        let cap = (usize::from(n) * usize::from(max_percent) / 100).max(1);
        prop_assert!(ejected <= cap, "{} ejected, cap {}", ejected, cap);
        // Never the last server that could take requests.
        prop_assert_eq!(ejected, usize::from(failing).min(cap).min(usize::from(n) - 1));
    }
}

#[test]
fn weight_zero_drains_and_all_zero_is_none_routable() {
    let s = addrs(3, 80);
    let db = db(&s, LbPolicy::RoundRobin, weighted(&s, &[1, 0, 2]));
    let counts = split(&db, 300);
    assert_eq!((counts.get(&s[0]), counts.get(&s[1]), counts.get(&s[2])), (Some(&100), None, Some(&200)));
    let all_zero = db_all_zero(&s);
    assert!(matches!(pick(&all_zero), Err(SelectError::NoneRoutable { .. })));
}

fn db_all_zero(s: &[SocketAddr]) -> HostDb {
    db(s, LbPolicy::RoundRobin, weighted(s, &[0, 0, 0]))
}

#[test]
fn a_run_time_weight_holds_until_the_next_apply() {
    let s = addrs(2, 80);
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy::default());
    let origin = db.origin("app:80").unwrap();
    assert_eq!(origin.set_weight(s[1], 3), Ok(1));
    let counts = split(&db, 400);
    assert_eq!((counts[&s[0]], counts[&s[1]]), (100, 300));
    assert!(origin.set_weight(s[1], 257).is_err());
    assert!(origin.set_weight("127.9.9.9:80".parse().unwrap(), 1).is_err());
    assert_eq!(origin.weights(), vec![(s[0], 1), (s[1], 3)]);

    // A reload sets the configured weights again.
    db.apply(&HostDbConfig {
        l4: L4Policy::default(),
        origins: vec![spec("app:80", s.clone(), LbPolicy::RoundRobin)],
    })
    .unwrap();
    let counts = split(&db, 400);
    assert_eq!((counts[&s[0]], counts[&s[1]]), (200, 200));
}

#[test]
fn least_requests_divides_in_flight_by_weight() {
    let s = addrs(2, 80);
    let db = db(&s, LbPolicy::LeastRequests, weighted(&s, &[1, 3]));
    // Held picks stay in flight: the heavier server holds three times as many.
    let held: Vec<Pick> = (0..400).map(|_| pick(&db).unwrap()).collect();
    let on = |a| held.iter().filter(|p| p.addr() == a).count() as i64;
    assert!((on(s[0]) - 100).abs() <= 2 && (on(s[1]) - 300).abs() <= 2, "{} / {}", on(s[0]), on(s[1]));
}

#[test]
fn consistent_hash_shares_follow_weights_and_equal_weights_keep_the_ring() {
    let s = addrs(2, 80);
    let plain = db(&s, LbPolicy::ConsistentHash, OriginPolicy::default());
    let equal = db(&s, LbPolicy::ConsistentHash, weighted(&s, &[2, 2]));
    let heavy = db(&s, LbPolicy::ConsistentHash, weighted(&s, &[1, 3]));
    let mut on_heavy = 0;
    for i in 0..10_000 {
        let key = format!("/item/{i}");
        let at = |db: &HostDb| {
            db.select(&k("app:80"), &mut Attempt::new().with_hash_key(key.as_bytes()), now()).unwrap().addr()
        };
        assert_eq!(at(&plain), at(&equal), "equal weights: the same ring");
        if at(&heavy) == s[1] {
            on_heavy += 1;
        }
    }
    assert!((7_000..8_000).contains(&on_heavy), "weight 3 of 4: {on_heavy} of 10 000 keys");
}

#[tokio::test(start_paused = true)]
async fn a_recovered_server_ramps_up_over_its_slow_start_and_a_first_start_does_not() {
    let s = addrs(2, 80);
    let window = Duration::from_secs(10);
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy { slow_start: Some(window), ..Default::default() });
    let share = |db: &HostDb| split(db, 2000).get(&s[1]).copied().unwrap_or(0) as f64 / 2000.0;
    assert!((share(&db) - 0.5).abs() < 0.01, "the first start: no ramp");

    fail_checks(&db, s[1]);
    assert_eq!(share(&db), 0.0);
    pass_checks(&db, s[1]);
    let mut last = 0.0;
    for step in 0..=4 {
        let now_share = share(&db);
        assert!(now_share + 0.03 >= last, "monotone: {now_share} after {last} at step {step}");
        if step == 0 {
            assert!((0.02..0.12).contains(&now_share), "starts near the floor: {now_share}");
        }
        last = now_share;
        tokio::time::advance(window / 4).await;
    }
    assert!((share(&db) - 0.5).abs() < 0.03, "full share at the window's end");
    let origin = db.origin("app:80").unwrap();
    assert_eq!(origin.server(s[1]).unwrap().ramp(now(), window), None);

    // A server joining a running origin ramps too.
    let three = addrs(3, 80);
    let mut spec3 = spec("app:80", three.clone(), LbPolicy::RoundRobin);
    spec3.policy = OriginPolicy { slow_start: Some(window), ..Default::default() };
    db.apply(&HostDbConfig { l4: L4Policy::default(), origins: vec![spec3] }).unwrap();
    let counts = split(&db, 3000);
    assert!(counts.get(&three[2]).copied().unwrap_or(0) < 300, "a new server starts low: {counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_ramping_sole_server_still_takes_every_request() {
    let s = addrs(2, 80);
    let db = db(
        &s,
        LbPolicy::RoundRobin,
        OriginPolicy { slow_start: Some(Duration::from_secs(60)), ..Default::default() },
    );
    fail_checks(&db, s[1]);
    fail_checks(&db, s[0]);
    pass_checks(&db, s[0]);
    for _ in 0..100 {
        assert_eq!(pick(&db).unwrap().addr(), s[0], "slow start never turns a request away");
    }
}

#[tokio::test(start_paused = true)]
async fn panic_routes_to_every_server_not_in_maintenance_and_says_so_once() {
    let s = addrs(4, 80);
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy { panic_threshold: Some(50), ..Default::default() });
    let events = Recorder::attach(&db);
    let origin = db.origin("app:80").unwrap();
    origin.server(s[3]).unwrap().set_maintenance(true);
    fail_checks(&db, s[0]);
    assert!(!origin.panicking() && split(&db, 30).len() == 2, "2 of 3 routable: no panic");
    fail_checks(&db, s[1]);
    let counts = split(&db, 300);
    assert!(origin.panicking());
    assert_eq!(counts.len(), 3, "every server but the one in maintenance: {counts:?}");
    assert!(counts.values().all(|&n| n >= 50), "{counts:?}");
    pass_checks(&db, s[0]);
    let _ = split(&db, 10);
    assert!(!origin.panicking());
    let panics: Vec<bool> = events
        .take()
        .into_iter()
        .filter_map(|e| if let Event::Panic { on, .. } = e { Some(on) } else { None })
        .collect();
    assert_eq!(panics, [true, false], "one event in, one out");
}

#[tokio::test(start_paused = true)]
async fn failing_user_responses_eject_a_server_for_a_doubling_time_and_checks_bring_it_back() {
    let s = addrs(3, 80);
    let outlier = OutlierPolicy {
        consecutive: 3,
        gateway_only: true,
        base: Duration::from_secs(10),
        max: Duration::from_secs(15),
        max_percent: 50,
    };
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy { outlier: Some(outlier), ..Default::default() });
    let origin = db.origin("app:80").unwrap();
    let a = origin.server(s[0]).unwrap();
    let respond = |status, n| {
        for _ in 0..n {
            origin.report_response(&a, status, now());
        }
    };
    respond(500, 5);
    assert!(!a.is_ejected(now()), "500 is not a gateway error here");
    respond(503, 2);
    respond(200, 1);
    respond(503, 2);
    assert!(!a.is_ejected(now()), "a good answer ends the run");
    respond(502, 1);
    assert!(a.is_ejected(now()));
    assert!(!split(&db, 100).contains_key(&s[0]), "ejected: no requests");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(split(&db, 30).contains_key(&s[0]), "back after its time");
    respond(504, 3);
    assert_eq!(a.outlier(now()).2, Some(Duration::from_secs(15)), "doubled, to the cap");
    pass_checks(&db, s[0]);
    assert!(!a.is_ejected(now()), "a passing check ends it");
    assert_eq!(a.outlier(now()).1, 2, "two ejections so far");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_signals_it_is_going_takes_itself_out_at_once() {
    let s = addrs(2, 80);
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy::default());
    let origin = db.origin("app:80").unwrap();
    let a = origin.server(s[0]).unwrap();
    pass_checks(&db, s[0]);
    assert_eq!(a.l7_state(), L7State::Healthy);
    assert!(origin.signal_unhealthy(&a, "vigil-health: drain", now()).is_some());
    assert_eq!(a.l7_state(), L7State::Unhealthy, "no threshold to wait for");
    assert_eq!(&*a.l7().last_result.as_ref().unwrap().detail, "vigil-health: drain");
    pass_checks(&db, s[0]);
    assert_eq!(a.l7_state(), L7State::Healthy, "checks bring it back");

    // An origin without checks: nothing would bring it back, so nothing happens.
    let unchecked = HostDb::new();
    let mut sp = spec("app:80", s.clone(), LbPolicy::RoundRobin);
    sp.check = None;
    unchecked.apply(&HostDbConfig { l4: L4Policy::default(), origins: vec![sp] }).unwrap();
    let o = unchecked.origin("app:80").unwrap();
    assert!(o.signal_unhealthy(&o.server(s[0]).unwrap(), "vigil-health: down", now()).is_none());
    assert_eq!(o.server(s[0]).unwrap().l7_state(), L7State::Unchecked);
}

#[tokio::test(start_paused = true)]
async fn a_ramping_servers_declined_share_is_spread_and_least_requests_ramps_it_too() {
    let window = Duration::from_secs(10);
    let s = addrs(4, 80);
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy { slow_start: Some(window), ..Default::default() });
    fail_checks(&db, s[1]);
    pass_checks(&db, s[1]);
    let counts = split(&db, 8000);
    let others: Vec<usize> = [0, 2, 3].iter().map(|&i| counts[&s[i]]).collect();
    let (lo, hi) = (*others.iter().min().unwrap(), *others.iter().max().unwrap());
    assert!(
        hi - lo < 400,
        "what the ramping server declines is spread, not handed to its neighbour: {counts:?}"
    );
    assert!(counts[&s[1]] < 500, "{counts:?}");

    let two = addrs(2, 80);
    let lr = db_lr(&two, window);
    fail_checks(&lr, two[1]);
    pass_checks(&lr, two[1]);
    let share = |db: &HostDb| split(db, 2000).get(&two[1]).copied().unwrap_or(0) as f64 / 2000.0;
    let early = share(&lr);
    tokio::time::advance(window / 2).await;
    let middle = share(&lr);
    tokio::time::advance(window).await;
    let late = share(&lr);
    assert!(early < 0.15 && middle > early + 0.1 && (late - 0.5).abs() < 0.05, "{early} {middle} {late}");
}

/// Weights with slow start and a panic threshold: the usual pick (the
/// cycle's server at full weight) is taken at once, yet a ramping server in
/// the cycle still ramps, and a panic still routes to servers that fail.
#[tokio::test(start_paused = true)]
async fn weighted_round_robin_keeps_slow_start_and_panic() {
    let window = Duration::from_secs(10);
    let s = addrs(2, 80);
    let mut policy = weighted(&s, &[1, 3]);
    policy.slow_start = Some(window);
    policy.panic_threshold = Some(50);
    let db = db(&s, LbPolicy::RoundRobin, policy);
    let heavy = |db: &HostDb| split(db, 4000).get(&s[1]).copied().unwrap_or(0) as f64 / 4000.0;
    assert!((heavy(&db) - 0.75).abs() < 0.01, "weight 3 of 4 from the first start");

    fail_checks(&db, s[1]);
    assert_eq!(heavy(&db), 0.0);
    pass_checks(&db, s[1]);
    let early = heavy(&db);
    assert!(early < 0.3, "the recovered heavy server starts low: {early}");
    tokio::time::advance(window / 2).await;
    let middle = heavy(&db);
    tokio::time::advance(window).await;
    let late = heavy(&db);
    assert!(middle > early + 0.1 && (late - 0.75).abs() < 0.02, "{early} {middle} {late}");

    // Both fail their checks: fewer than half are routable, so the panic
    // routes to both by their weights.
    fail_checks(&db, s[0]);
    fail_checks(&db, s[1]);
    assert!((heavy(&db) - 0.75).abs() < 0.02, "in panic, weights still hold");
    assert!(db.origin("app:80").unwrap().panicking());
}

fn db_lr(s: &[SocketAddr], window: Duration) -> HostDb {
    db(s, LbPolicy::LeastRequests, OriginPolicy { slow_start: Some(window), ..Default::default() })
}

#[test]
fn outlier_detection_never_ejects_the_last_server_that_could_take_requests() {
    let s = addrs(2, 80);
    let outlier = OutlierPolicy { consecutive: 1, max_percent: 100, ..Default::default() };
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy { outlier: Some(outlier), ..Default::default() });
    let origin = db.origin("app:80").unwrap();
    fail_checks(&db, s[1]);
    let a = origin.server(s[0]).unwrap();
    origin.report_response(&a, 503, now());
    assert!(!a.is_ejected(now()), "its only peer is unhealthy");
    assert!(pick(&db).is_ok());
}

#[test]
fn a_reload_that_turns_outlier_detection_off_ends_ejections() {
    let s = addrs(2, 80);
    let outlier = OutlierPolicy { consecutive: 1, ..Default::default() };
    let db = db(&s, LbPolicy::RoundRobin, OriginPolicy { outlier: Some(outlier), ..Default::default() });
    let origin = db.origin("app:80").unwrap();
    let a = origin.server(s[0]).unwrap();
    origin.report_response(&a, 503, now());
    assert!(a.is_ejected(now()));
    db.apply(&HostDbConfig {
        l4: L4Policy::default(),
        origins: vec![spec("app:80", s.clone(), LbPolicy::RoundRobin)],
    })
    .unwrap();
    assert!(!a.is_ejected(now()));
    assert!(split(&db, 10).contains_key(&s[0]));
}

#[test]
fn panic_leaves_drained_servers_out_and_follows_a_reloaded_threshold() {
    let s = addrs(4, 80);
    let mut policy = weighted(&s, &[1, 1, 0, 0]);
    policy.panic_threshold = Some(50);
    let db = db(&s, LbPolicy::RoundRobin, policy.clone());
    fail_checks(&db, s[0]);
    fail_checks(&db, s[1]);
    let counts = split(&db, 20);
    assert!(db.origin("app:80").unwrap().panicking(), "0 of the 2 weighted servers routable");
    assert!(!counts.contains_key(&s[2]) && !counts.contains_key(&s[3]), "drained stays drained: {counts:?}");
    policy.panic_threshold = None;
    let mut sp = spec("app:80", s.clone(), LbPolicy::RoundRobin);
    sp.policy = policy;
    db.apply(&HostDbConfig { l4: L4Policy::default(), origins: vec![sp] }).unwrap();
    assert!(matches!(pick(&db), Err(SelectError::NoneRoutable { .. })), "no threshold: no panic");
    assert!(!db.origin("app:80").unwrap().panicking());
}
