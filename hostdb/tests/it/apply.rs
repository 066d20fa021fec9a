use std::time::Duration;

use vigil_hostdb::{
    Attempt, CheckResult, ConfigError, Event, HostDb, HostDbConfig, L4Policy, L4State, L7Policy, L7State,
    LbPolicy,
};

use crate::{Recorder, addrs, now, spec};

#[test]
fn reload_keeps_status_of_servers_that_remain() {
    let s = addrs(3, 8080);
    let db = HostDb::new();
    let events = Recorder::attach(&db);
    db.apply(&HostDbConfig {
        origins: vec![spec("app:8080", s[..2].to_vec(), LbPolicy::RoundRobin)],
        ..Default::default()
    })
    .unwrap();
    let origin = db.origin("app:8080").unwrap();
    let kept = origin.server(s[1]).unwrap();
    kept.set_maintenance(true);
    kept.report_l4_failure(now());
    let pass = CheckResult::pass("200", Duration::from_millis(1));
    origin.record_check(&kept, &pass, now());
    origin.record_check(&kept, &pass, now());
    events.take();

    // s[0] leaves, s[2] joins, and the origin moves to least_requests.
    let report = db
        .apply(&HostDbConfig {
            l4: L4Policy { fail_threshold: 5, down_time: Duration::from_secs(1) },
            origins: vec![spec("app:8080", s[1..].to_vec(), LbPolicy::LeastRequests)],
        })
        .unwrap();
    assert_eq!((report.kept, report.added.len(), report.removed.len()), (1, 0, 0));
    let origin2 = db.origin("app:8080").unwrap();
    assert!(std::sync::Arc::ptr_eq(&origin, &origin2), "origin object kept");
    assert_eq!(origin2.lb(), LbPolicy::LeastRequests);
    let same = origin2.server(s[1]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&kept, &same), "server record kept");
    assert!(same.maintenance());
    assert_eq!(same.l7_state(), L7State::Healthy);
    assert!(origin2.server(s[0]).is_none());
    assert_eq!(origin2.server(s[2]).unwrap().l7_state(), L7State::Unknown);
    assert_eq!(db.l4_policy().fail_threshold, 5);
    let ev = events.take();
    assert!(
        matches!(&ev[..], [Event::Servers { added, removed, .. }] if added == &[s[2]] && removed == &[s[0]]),
        "{ev:?}"
    );
}

#[test]
fn adding_or_removing_a_check_resets_l7() {
    let s = addrs(1, 80);
    let db = HostDb::new();
    let mut sp = spec("app:80", s.clone(), LbPolicy::RoundRobin);
    db.apply(&HostDbConfig { origins: vec![sp.clone()], ..Default::default() }).unwrap();
    let origin = db.origin("app:80").unwrap();
    let server = origin.server(s[0]).unwrap();
    for _ in 0..3 {
        origin.record_check(&server, &CheckResult::fail("503", Duration::ZERO), now());
    }
    assert_eq!(server.l7_state(), L7State::Unhealthy);

    sp.check = None;
    db.apply(&HostDbConfig { origins: vec![sp.clone()], ..Default::default() }).unwrap();
    assert_eq!(server.l7_state(), L7State::Unchecked);
    assert!(server.is_routable(now()), "an unchecked server is routable");
    assert_eq!(origin.record_check(&server, &CheckResult::fail("x", Duration::ZERO), now()), None);

    sp.check = Some(L7Policy { healthy_threshold: 1, unhealthy_threshold: 1 });
    db.apply(&HostDbConfig { origins: vec![sp], ..Default::default() }).unwrap();
    assert_eq!(server.l7_state(), L7State::Unknown);
    origin.record_check(&server, &CheckResult::fail("x", Duration::ZERO), now());
    assert_eq!(server.l7_state(), L7State::Unhealthy, "new thresholds apply");
}

#[test]
fn a_bad_config_changes_nothing() {
    let s = addrs(2, 80);
    let db = HostDb::new();
    let good =
        HostDbConfig { origins: vec![spec("app:80", s.clone(), LbPolicy::RoundRobin)], ..Default::default() };
    db.apply(&good).unwrap();

    let dup = HostDbConfig {
        origins: vec![
            spec("other:80", s.clone(), LbPolicy::RoundRobin),
            spec("other:80", s.clone(), LbPolicy::RoundRobin),
        ],
        ..Default::default()
    };
    assert_eq!(db.apply(&dup).unwrap_err(), ConfigError::DuplicateOrigin("other:80".into()));
    let zero = HostDbConfig { l4: L4Policy { fail_threshold: 0, ..Default::default() }, ..good.clone() };
    assert!(matches!(db.apply(&zero).unwrap_err(), ConfigError::Invalid { field: "l4.fail_threshold", .. }));
    let mut bad_check = good.clone();
    bad_check.origins[0].check = Some(L7Policy { healthy_threshold: 0, unhealthy_threshold: 1 });
    assert!(matches!(db.apply(&bad_check).unwrap_err(), ConfigError::Invalid { .. }));
    let dns = HostDbConfig {
        origins: vec![vigil_hostdb::OriginSpec::with_dns("svc:80".parse().unwrap())],
        ..good.clone()
    };
    assert_eq!(db.apply(&dns).unwrap_err(), ConfigError::NoResolver("svc:80".into()));

    assert_eq!(db.len(), 1);
    assert!(db.origin("other:80").is_none());
    assert_eq!(db.l4_policy(), L4Policy::default());
    assert!(db.select(&crate::k("app:80"), &mut Attempt::new(), now()).is_ok());
}

#[test]
fn removed_origins_disappear_and_events_fire_once_per_change() {
    let s = addrs(1, 80);
    let db = HostDb::new();
    db.apply(&HostDbConfig {
        origins: vec![
            spec("a:80", s.clone(), LbPolicy::RoundRobin),
            spec("b:80", s.clone(), LbPolicy::RoundRobin),
        ],
        ..Default::default()
    })
    .unwrap();
    let events = Recorder::attach(&db);
    let report = db
        .apply(&HostDbConfig {
            origins: vec![spec("b:80", s.clone(), LbPolicy::RoundRobin)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.removed.iter().map(|k| k.as_str()).collect::<Vec<_>>(), ["a:80"]);
    assert!(db.origin("a:80").is_none());

    let server = db.origin("b:80").unwrap().server(s[0]).unwrap();
    assert!(std::sync::Arc::ptr_eq(&server, &db.server("b:80", s[0]).unwrap()));
    assert!(db.server("a:80", s[0]).is_none(), "removed origin");
    assert!(db.server("b:80", "127.0.0.9:80".parse().unwrap()).is_none(), "not a server of b");
    assert!(server.set_maintenance(true));
    assert!(!server.set_maintenance(true), "no change, no event");
    server.report_l4_failure(now());
    server.report_l4_failure(now()); // still down: no second event
    server.report_l4_success(now());
    server.report_l4_success(now());
    let kinds: Vec<String> = events
        .take()
        .iter()
        .map(|e| match e {
            Event::Maintenance { on, .. } => format!("maint {on}"),
            Event::L4 { from, to, .. } => format!("l4 {}->{}", from.as_str(), to.as_str()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["maint true", "l4 up->down", "l4 down->up"]);
    assert_eq!(server.l4_state(now()), L4State::Up);

    // An unsubscribed subscriber hears nothing more.
    let id = db.subscribe(std::sync::Arc::new(|_: &Event| panic!("unsubscribed subscriber called")));
    assert!(db.unsubscribe(id));
    assert!(!db.unsubscribe(id));
    server.set_maintenance(false);
}
