//! `deploy/grafana/vigil.json` and `deploy/prometheus/alerts.yml` read only
//! metrics a running `vigil` exports (one with a TLS listener and a
//! cluster, so the metrics those add are there), and the rules pass
//! `promtool check rules` when promtool is installed.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;

use crate::harness::*;

/// Every `vigil_*` name in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("vigil_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// Every series name `/metrics` can show: the samples, and each family
/// declared (a counter's samples end in `_total`), even with no sample yet.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut parts = decl.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.insert(name.to_owned());
                if kind == "counter" {
                    out.insert(format!("{name}_total"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_and_the_alert_rules_read_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/vigil.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(!doc["panels"].as_array().unwrap().is_empty());
    for p in doc["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            assert!(t["expr"].as_str().is_some_and(|e| e.contains("vigil_")), "{p}");
        }
    }
    let rules_path = root.join("deploy/prometheus/alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).unwrap();

    // A vigil with every optional part that adds metrics: a TLS listener
    // (certificate expiry) and a cluster (live nodes).
    let pki = crate::tls::Pki::new();
    let leaf = pki.leaf(&["a.test"], false);
    let key: Vec<u8> = (0..32u8).collect();
    let files: &[(&str, &[u8])] =
        &[("a.pem", leaf.cert_pem.as_bytes()), ("a.key", leaf.key_pem.as_bytes()), ("cluster.key", &key)];
    let o = origins(&["127.0.0.53", "127.0.0.54"]).await;
    let tls_addr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"]));
    let gossip = format!("127.0.0.1:{}", free_port_for(&["127.0.0.1"], true));
    let rest = format!(
        "{}\n[[tls]]\ncert = \"a.pem\"\nkey = \"a.key\"\ndefault = true\n\n\
         [cluster]\nnode_id = \"edge-1\"\nlisten = \"{gossip}\"\nseeds = []\ncluster_id = \"deploy\"\nkey_file = \"cluster.key\"\n",
        remap(
            "app.test",
            &format!("app.test:{}", o[0].addr.port()),
            &server_list(&o),
            "outlier = { consecutive = 2, errors = \"5xx\", max_ejected = \"50%\" }"
        )
    );
    let hc = "[defaults]\ninterval = \"100ms\"\nunhealthy_interval = \"100ms\"\ntimeout = \"50ms\"\nhealthy_threshold = 1\n\n\
              [[check]]\norigin = \"app.test\"\npath = \"/healthz\"\n";
    let v = Vigil::start_with("deploy", files, &format!("listen_tls = \"{tls_addr}\""), &rest, hc).await;
    // Families show once they have a series: a check, a transition (its
    // first pass) and an ejection (a server answering 503).
    o[0].state.fail_status.store(503, std::sync::atomic::Ordering::SeqCst);
    let wanted =
        ["vigil_health_checks_total{", "vigil_health_transitions_total{", "vigil_outlier_ejections_total{"];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let _ = v.get("app.test", "/").await;
        let m = get_raw(v.admin, "admin", "/metrics").await.unwrap().2;
        if wanted.iter().all(|n| m.contains(n)) {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let have = exported(&metrics);
    for (file, text) in [("deploy/grafana/vigil.json", &dashboard), ("deploy/prometheus/alerts.yml", &rules)]
    {
        let names = referenced(text);
        assert!(names.len() >= 5, "{file} reads {names:?}");
        let missing: Vec<_> = names.difference(&have).collect();
        assert!(missing.is_empty(), "{file} reads metrics vigil does not export: {missing:?}\n{metrics}");
    }

    match Command::new("promtool").arg("check").arg("rules").arg(&rules_path).output() {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => {
            // Straight to stderr, past libtest's capture: a skip must show.
            let _ = writeln!(
                std::io::stderr(),
                "promtool is not installed: `promtool check rules` SKIPPED (apt-get install prometheus)"
            );
        }
    }
}
