//! Traffic policy through the real binary: weights and `POST /weight`,
//! panic, outlier ejection, a server's own `vigil-health` signal, slow start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;

use crate::harness::*;

/// Sends `n` requests; how many each server answered (`x-served-by`).
async fn split(v: &Vigil, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, headers, _) = v.get("app.test", "/").await;
        let by = headers.get("x-served-by").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
        *counts
            .entry(if status == StatusCode::OK { by } else { status.as_u16().to_string() })
            .or_default() += 1;
    }
    counts
}

fn weighted_list(o: &[Origin], weights: &[u32]) -> String {
    let list: Vec<String> =
        o.iter().zip(weights).map(|(o, w)| format!("{{ addr = \"{}\", weight = {w} }}", o.addr)).collect();
    format!("[{}]", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_and_post_weight_drains_until_a_reload() {
    let o = origins(&["127.0.0.11", "127.0.0.12"]).await;
    let port = o[0].addr.port();
    let rest = remap("app.test", &format!("app.test:{port}"), &weighted_list(&o, &[1, 3]), "");
    let v = Vigil::start("weights", "", &rest, "").await;
    let (a, b) = (o[0].addr.to_string(), o[1].addr.to_string());
    let counts = split(&v, 40).await;
    assert_eq!((counts.get(&a), counts.get(&b)), (Some(&10), Some(&30)), "{counts:?}");
    assert_eq!(v.server(o[1].addr).await["weight"], 3);

    let body = format!("{{\"origin\": \"app.test:{port}\", \"server\": \"{b}\", \"weight\": 0}}");
    let (status, answer) = v.post("/weight", None, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.contains("\"was\":3"), "{answer}");
    let counts = split(&v, 20).await;
    assert_eq!(counts.get(&a), Some(&20), "weight 0 drains: {counts:?}");
    assert_eq!(v.server(o[1].addr).await["weight"], 0);
    let series = format!("vigil_server_weight{{origin=\"app.test:{port}\",server=\"{b}\"}}");
    assert_eq!(v.metric(&series).await, 0.0);

    for bad in [
        format!("{{\"origin\": \"app.test:{port}\", \"server\": \"{b}\", \"weight\": 300}}"),
        format!("{{\"origin\": \"app.test:{port}\", \"server\": \"{b}\", \"weight\": -1}}"),
        "{\"origin\": \"app.test:1\"}".to_owned(),
    ] {
        let (status, answer) = v.post("/weight", None, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
    }
    let (status, _) = v
        .post(
            "/weight",
            None,
            &format!("{{\"origin\": \"app.test:{port}\", \"server\": \"127.9.9.9:1\", \"weight\": 1}}"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v.server(o[1].addr).await["weight"], 0, "bad input changed nothing");

    let (status, answer) = v.post("/reload", None, "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(v.server(o[1].addr).await["weight"], 3, "a reload sets the configured weights again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_its_panic_threshold_an_origin_routes_to_every_server() {
    let o = origins(&["127.0.0.13", "127.0.0.14", "127.0.0.15"]).await;
    let port = o[0].addr.port();
    let rest = remap("app.test", &format!("app.test:{port}"), &server_list(&o), "panic_threshold = \"50%\"");
    let v = Vigil::start("panic", "", &rest, FAST_CHECKS).await;
    assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    for bad in &o[..2] {
        bad.state.health.store(503, Ordering::SeqCst);
    }
    let out = wait_until(Duration::from_secs(5), || async {
        let (a, b) = (v.server(o[0].addr).await, v.server(o[1].addr).await);
        a["l7"]["state"] == "unhealthy" && b["l7"]["state"] == "unhealthy"
    })
    .await;
    assert!(out, "{}", v.hosts().await);
    // One of three routable, under 50 %: all three get requests.
    let counts = split(&v, 30).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    let hosts = v.hosts().await;
    assert_eq!(hosts["origins"][0]["panic"], true, "{hosts}");
    assert_eq!(v.metric(&format!("vigil_origin_panic{{origin=\"app.test:{port}\"}}")).await, 1.0);
    assert_eq!(v.metric(&format!("vigil_origin_panics_total{{origin=\"app.test:{port}\"}}")).await, 1.0);
    assert_eq!(v.log().matches("panic: too few routable servers").count(), 1, "logged once");

    o[0].state.health.store(0, Ordering::SeqCst);
    let over = wait_until(Duration::from_secs(5), || async {
        let _ = v.get("app.test", "/").await;
        v.hosts().await["origins"][0]["panic"] == false
    })
    .await;
    assert!(over, "{}", v.hosts().await);
    let counts = split(&v, 20).await;
    assert!(
        !counts.contains_key(&o[1].addr.to_string()),
        "out of panic, the unhealthy server is skipped: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_user_requests_is_ejected_and_comes_back() {
    let o = origins(&["127.0.0.16", "127.0.0.17"]).await;
    let port = o[0].addr.port();
    let extra =
        "outlier = { consecutive = 3, errors = \"gateway\", base_ejection = \"1s\", max_ejected = \"50%\" }";
    let rest = remap("app.test", &format!("app.test:{port}"), &server_list(&o), extra);
    let v = Vigil::start("outlier", "", &rest, "").await;
    o[0].state.fail_status.store(502, Ordering::SeqCst);
    let counts = split(&v, 12).await;
    assert_eq!(counts.get("502"), Some(&3), "three failures, then ejected: {counts:?}");
    let a = v.server(o[0].addr).await;
    assert_eq!(a["outlier"]["ejected"], true, "{a}");
    assert_eq!(a["outlier"]["ejections"], 1, "{a}");
    assert_eq!(a["routable"], false, "{a}");
    let series =
        format!("vigil_outlier_ejections_total{{origin=\"app.test:{port}\",server=\"{}\"}}", o[0].addr);
    assert_eq!(v.metric(&series).await, 1.0);

    o[0].state.fail_status.store(0, Ordering::SeqCst);
    let back = wait_until(Duration::from_secs(5), || async {
        split(&v, 4).await.contains_key(&o[0].addr.to_string())
    })
    .await;
    assert!(back, "{}", v.server(o[0].addr).await);
    assert_eq!(v.server(o[0].addr).await["outlier"]["ejected"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_saying_vigil_health_drain_leaves_at_once_and_checks_bring_it_back() {
    let o = origins(&["127.0.0.18", "127.0.0.19"]).await;
    let port = o[0].addr.port();
    let rest = remap("app.test", &format!("app.test:{port}"), &server_list(&o), "slow_start = \"1m\"");
    let checks = FAST_CHECKS.replace("healthy_threshold = 1", "healthy_threshold = 2");
    let v = Vigil::start("signal", "", &rest, &checks).await;
    assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    let healthy = |addr: SocketAddr| {
        let v = &v;
        async move { v.server(addr).await["l7"]["state"] == "healthy" }
    };
    assert!(wait_until(Duration::from_secs(5), || healthy(o[0].addr)).await);

    o[0].state.signal_drain.store(true, Ordering::SeqCst);
    let mut seen_header = false;
    for _ in 0..4 {
        let (_, headers, _) = v.get("app.test", "/").await;
        seen_header |= headers.contains_key("vigil-health");
    }
    assert!(!seen_header, "the signal is stripped before the client sees it");
    let a = v.server(o[0].addr).await;
    assert_eq!(a["l7"]["state"], "unhealthy", "out at once: {a}");
    assert_eq!(a["l7"]["last_detail"], "vigil-health: drain", "{a}");
    let before = o[0].requests();
    let _ = split(&v, 10).await;
    assert_eq!(o[0].requests(), before, "no more requests to it");

    // It stops saying so: its checks (which say nothing) bring it back, and
    // it ramps up from there.
    o[0].state.signal_drain.store(false, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(5), || healthy(o[0].addr)).await, "{}", v.server(o[0].addr).await);
    let ramp = v.server(o[0].addr).await["slow_start"]["progress"].as_f64();
    assert!(ramp.is_some_and(|p| p < 0.5), "recovered: in slow start ({ramp:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_state_file_keeps_maintenance_weights_and_health() {
    let o = origins(&["127.0.0.20", "127.0.0.21", "127.0.0.22"]).await;
    let port = o[0].addr.port();
    let origin = format!("app.test:{port}");
    let rest = remap("app.test", &origin, &server_list(&o), "");
    // The second process checks only once a minute: what it shows at first
    // is what it loaded.
    let slow_checks = FAST_CHECKS
        .replace("interval = \"150ms\"", "interval = \"1m\"")
        .replace("unhealthy_interval = \"150ms\"", "unhealthy_interval = \"1m\"");
    let proxy = "state_file = \"vigil.state\"\nstate_save_interval = \"1h\"";
    let mut v = Vigil::start("state1", proxy, &rest, FAST_CHECKS).await;
    assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    // An operator's maintenance and weight; a server its checks found down.
    let (status, _) = v
        .post(
            "/maintenance",
            None,
            &format!("{{\"origin\": \"{origin}\", \"server\": \"{}\", \"on\": true}}", o[0].addr),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = v
        .post(
            "/weight",
            None,
            &format!("{{\"origin\": \"{origin}\", \"server\": \"{}\", \"weight\": 5}}", o[1].addr),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    o[2].state.health.store(503, Ordering::SeqCst);
    let down = wait_until(Duration::from_secs(5), || async {
        v.server(o[2].addr).await["l7"]["state"] == "unhealthy"
    })
    .await;
    assert!(down, "{}", v.server(o[2].addr).await);
    v.signal("TERM");
    assert_eq!(v.exit_code(Duration::from_secs(10)).await, Some(0));
    let saved = std::fs::read_to_string(v.dir.join("vigil.state")).unwrap();
    assert!(saved.contains("\"format\": \"vigil-state/1\""), "{saved}");

    // A new process on the same files: the same picture before any check
    // (checks run every minute here) and before any request.
    let dir = v.dir.clone();
    let files: Vec<(String, Vec<u8>)> =
        ["vigil.state"].iter().map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap())).collect();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let v2 = Vigil::start_with("state2", &files, proxy, &rest, &slow_checks).await;
    assert_eq!(v2.server(o[0].addr).await["maintenance"], true);
    assert_eq!(v2.server(o[1].addr).await["weight"], 5);
    let c = v2.server(o[2].addr).await;
    assert_eq!(c["l7"]["state"], "unhealthy", "{c}");
    assert_eq!(c["l7"]["last_detail"], "503", "{c}");
    assert!(v2.log().contains("server state loaded from the state file"), "{}", v2.log());
    let counts = split(&v2, 12).await;
    assert_eq!(counts.get(&o[1].addr.to_string()), Some(&12), "only the weighted, healthy one: {counts:?}");

    // A file that is not ours: logged, ignored, the proxy starts.
    let garbage: &[(&str, &[u8])] = &[("vigil.state", b"{\"format\": \"someone-else\"}")];
    let v3 = Vigil::start_with("state3", garbage, proxy, &rest, &slow_checks).await;
    assert_eq!(v3.server(o[0].addr).await["maintenance"], false);
    assert!(v3.log().contains("not a Vigil state file") || v3.log().contains("format"), "{}", v3.log());
}
