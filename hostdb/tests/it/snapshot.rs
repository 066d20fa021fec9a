use std::time::Duration;

use serde_json::Value;
use vigil_hostdb::{Attempt, CheckResult, L4Policy, LbPolicy, PoolView};

use crate::{addrs, now};

#[tokio::test(start_paused = true)]
async fn hosts_json_carries_every_spec_field() {
    let s = addrs(2, 8080);
    let db = vigil_hostdb::HostDb::new();
    let config = vigil_hostdb::HostDbConfig {
        origins: vec![crate::spec("app:8080", s.clone(), LbPolicy::RoundRobin)],
        l4: L4Policy::default(),
    };
    db.apply(&config).unwrap();
    let origin = db.origin("app:8080").unwrap();
    let server = origin.server(s[0]).unwrap();
    origin.touch(now());
    origin.set_checking(true);
    origin.record_check(&server, &CheckResult::pass("200", Duration::from_micros(1200)), now());
    let _held = db.select(&crate::k("app:8080"), &mut Attempt::new(), now()).unwrap();
    origin.server(s[1]).unwrap().report_l4_failure(now());
    tokio::time::advance(Duration::from_millis(800)).await;

    let mut view = db.snapshot(now());
    view.node = "edge-1".into();
    view.fill_pool(
        |_, addr| {
            if addr == s[0] { PoolView { idle: 3, in_use: 1 } } else { PoolView::default() }
        },
    );
    let json: Value = serde_json::to_value(&view).unwrap();

    assert_eq!(json["node"], "edge-1");
    let o = &json["origins"][0];
    assert_eq!(o["origin"], "app:8080");
    assert_eq!(o["checking"], true);
    assert_eq!(o["last_request_ms_ago"], 800);
    let a = &o["servers"][0];
    assert_eq!(a["addr"], "127.0.0.2:8080");
    assert_eq!(a["routable"], true);
    assert_eq!(a["maintenance"], false);
    assert_eq!(a["l4"], serde_json::json!({"state": "up", "consecutive_failures": 0, "down_for_ms": 0}));
    let l7 = &a["l7"];
    assert_eq!(l7["state"], "unknown");
    assert_eq!(l7["consecutive_passes"], 1);
    assert_eq!(l7["consecutive_failures"], 0);
    assert_eq!(l7["last_check_ms_ago"], 800);
    assert_eq!(l7["last_result"], "pass");
    assert_eq!(l7["last_detail"], "200");
    assert_eq!(l7["last_latency_ms"], 1.2);
    assert_eq!(l7["source"], "local");
    assert_eq!(a["pool"], serde_json::json!({"idle": 3, "in_use": 1}));
    assert_eq!(a["in_flight"], 1);

    let b = &o["servers"][1];
    assert_eq!(b["routable"], false);
    assert_eq!(b["l4"], serde_json::json!({"state": "down", "consecutive_failures": 1, "down_for_ms": 9200}));
    assert_eq!(b["l7"]["state"], "unknown");
    assert_eq!(b["l7"]["last_result"], Value::Null);
}

#[tokio::test(start_paused = true)]
async fn the_reason_of_the_last_l4_failure_shows_until_a_success() {
    let s = addrs(1, 8080);
    let db = vigil_hostdb::HostDb::new();
    db.apply(&vigil_hostdb::HostDbConfig {
        origins: vec![crate::spec("app:8080", s.clone(), LbPolicy::RoundRobin)],
        l4: L4Policy::default(),
    })
    .unwrap();
    let server = db.origin("app:8080").unwrap().server(s[0]).unwrap();
    let l4 = |db: &vigil_hostdb::HostDb| {
        serde_json::to_value(db.snapshot(now())).unwrap()["origins"][0]["servers"][0]["l4"].clone()
    };
    server.report_l4_failure_because(now(), "tls: certificate expired");
    assert_eq!(l4(&db)["last_error"], "tls: certificate expired");
    assert_eq!(server.l4_error().as_deref().map(String::as_str), Some("tls: certificate expired"));
    server.report_l4_failure_because(now(), "connect refused");
    assert_eq!(l4(&db)["last_error"], "connect refused", "the last one shows");
    server.report_l4_success(now());
    assert_eq!(l4(&db).get("last_error"), None, "a success clears it");
    // A failure without a reason leaves none behind.
    server.report_l4_failure(now());
    assert_eq!(l4(&db).get("last_error"), None);
}
