//! Several `vigil` processes in one cluster, gossiping over loopback UDP,
//! in front of the same origin servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::harness::*;

pub(crate) const CHECKS: &str = r#"[defaults]
interval = "200ms"
unhealthy_interval = "200ms"
timeout = "150ms"
jitter = "0%"
healthy_threshold = 1
unhealthy_threshold = 2
[[check]]
origin = "app.test"
path = "/healthz"
"#;

pub(crate) fn free_udp() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port_for(&["127.0.0.1"], true)))
}

pub(crate) fn cluster_section(
    node: &str,
    listen: SocketAddr,
    seeds: &[SocketAddr],
    key: &std::path::Path,
) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[cluster]\nnode_id = \"{node}\"\nlisten = \"{listen}\"\nseeds = [{}]\ncluster_id = \"e2e\"\ngossip_interval = \"100ms\"\nkey_file = \"{}\"\n",
        seeds.join(", "),
        key.display()
    )
}

/// Server address -> (node, l7 state, l7 source) as `v` shows it.
pub(crate) async fn sources(v: &Vigil) -> HashMap<String, (String, String)> {
    let hosts = v.hosts().await;
    let mut out = HashMap::new();
    for o in hosts["origins"].as_array().unwrap() {
        for s in o["servers"].as_array().unwrap() {
            out.insert(
                s["addr"].as_str().unwrap().to_owned(),
                (
                    s["l7"]["state"].as_str().unwrap().to_owned(),
                    s["l7"]["source"].as_str().unwrap().to_owned(),
                ),
            );
        }
    }
    out
}

/// For every server, the node whose status is its own while the others show
/// `cluster:<that node>`; `None` until all nodes agree on that.
pub(crate) async fn owners(
    nodes: &[(&str, &Vigil)],
    servers: &[SocketAddr],
) -> Option<HashMap<SocketAddr, String>> {
    let mut views = Vec::new();
    for (name, v) in nodes {
        views.push((*name, sources(v).await));
    }
    let mut out = HashMap::new();
    for s in servers {
        let local: Vec<&str> = views
            .iter()
            .filter(|(_, view)| view.get(&s.to_string()).is_some_and(|(_, src)| src == "local"))
            .map(|(n, _)| *n)
            .collect();
        let [owner] = local[..] else { return None };
        let adopted = views.iter().filter(|(n, _)| *n != owner).all(|(_, view)| {
            view.get(&s.to_string()).is_some_and(|(_, src)| *src == format!("cluster:{owner}"))
        });
        if !adopted {
            return None;
        }
        out.insert(*s, owner.to_owned());
    }
    Some(out)
}

/// `www.app.test` routed to the origin whose servers are `o`.
pub(crate) fn www_remap(o: &[Origin]) -> String {
    remap("www.app.test", &format!("app.test:{}", o[0].addr.port()), &server_list(o), "")
}

/// Three nodes, `edge-0` to `edge-2`, the first the others' seed, sealing
/// with `key`; returned (with their gossip addresses) once each has had a
/// request (checks start lazily) and they agree which node checks each of
/// `servers`.
pub(crate) async fn three_nodes(
    name: &str,
    remap: &str,
    key: &std::path::Path,
    servers: &[SocketAddr],
) -> (Vec<Vigil>, Vec<SocketAddr>) {
    let gossip: Vec<SocketAddr> = (0..3).map(|_| free_udp()).collect();
    let mut vigils = Vec::new();
    for (i, listen) in gossip.iter().enumerate() {
        let seeds = if i == 0 { vec![] } else { vec![gossip[0]] };
        let rest = format!("{remap}\n{}", cluster_section(&format!("edge-{i}"), *listen, &seeds, key));
        vigils.push(Vigil::start(&format!("{name}-{i}"), "", &rest, CHECKS).await);
    }
    for v in &vigils {
        assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    }
    let nodes: Vec<(&str, &Vigil)> =
        vec![("edge-0", &vigils[0]), ("edge-1", &vigils[1]), ("edge-2", &vigils[2])];
    let agreed =
        wait_until(Duration::from_secs(20), || async { owners(&nodes, servers).await.is_some() }).await;
    assert!(agreed, "nodes never agreed: {:?}", sources(&vigils[0]).await);
    (vigils, gossip)
}

pub(crate) fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

pub(crate) async fn metrics(v: &Vigil) -> String {
    get_raw(v.admin, "admin", "/metrics").await.unwrap().2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_vigils_check_each_server_once_share_results_and_hand_over() {
    let o = origins(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    let servers: Vec<SocketAddr> = o.iter().map(|x| x.addr).collect();
    let remap = www_remap(&o);
    let keys = test_dir("cluster-keys");
    let key = keys.join("cluster.key");
    std::fs::write(&key, [42u8; 32]).unwrap();
    // Traffic through every node starts its checks (lazy start).
    let (mut vigils, gossip) = three_nodes("cluster", &remap, &key, &servers).await;
    let nodes: Vec<(&str, &Vigil)> =
        vec![("edge-0", &vigils[0]), ("edge-1", &vigils[1]), ("edge-2", &vigils[2])];
    let owner_map = owners(&nodes, &servers).await.unwrap();

    // What the dashboard shows: every node names the checking node of each
    // server (the one whose result is its own) and the other live members.
    // Polled: ownership may still be settling between two reads.
    let shown = wait_until(Duration::from_secs(10), || async {
        let Some(map) = owners(&nodes, &servers).await else { return false };
        for (name, v) in &nodes {
            let hosts = v.hosts().await;
            let mut live: Vec<&str> = hosts["cluster"]["live_nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n.as_str())
                .collect();
            live.sort_unstable();
            let others: Vec<&str> =
                ["edge-0", "edge-1", "edge-2"].into_iter().filter(|n| n != name).collect();
            if hosts["cluster"]["node"] != *name || live != others {
                return false;
            }
            for s in hosts["origins"][0]["servers"].as_array().unwrap() {
                let addr: SocketAddr = s["addr"].as_str().unwrap().parse().unwrap();
                if s["checked_by"] != map[&addr].as_str() {
                    return false;
                }
            }
        }
        true
    })
    .await;
    assert!(shown, "/hosts never named the members and checking nodes: {}", vigils[0].hosts().await);

    // About one check per interval per server at the origins, not three.
    let before: u64 = o.iter().map(Origin::checks).sum();
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let checks = o.iter().map(Origin::checks).sum::<u64>() - before;
    let per_interval = checks as f64 / (window.as_secs_f64() / 0.2) / servers.len() as f64;
    println!(
        "3 nodes: {checks} checks in {window:?} over 3 servers = {per_interval:.2} per server per interval"
    );
    assert!((0.7..1.5).contains(&per_interval), "{per_interval:.2} checks per server per interval");

    // The origin's maintenance answer reaches every node.
    o[0].state.health.store(503, std::sync::atomic::Ordering::SeqCst);
    let down = wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for v in &vigils {
            all &= sources(v).await.get(&servers[0].to_string()).is_some_and(|(st, _)| st == "unhealthy");
        }
        all
    })
    .await;
    assert!(down, "maintenance did not reach every node");
    for v in &vigils {
        // The unhealthy server gets no traffic from any node.
        for _ in 0..6 {
            assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
        }
    }
    o[0].state.health.store(0, std::sync::atomic::Ordering::SeqCst);
    // A node that does not check server 0 adopted its change (with 3 nodes
    // and 3 servers one node may check them all, so pick by ownership).
    let watcher = (0..3).find(|k| owner_map[&servers[0]] != format!("edge-{k}")).unwrap();
    let m = metrics(&vigils[watcher]).await;
    assert!(metric(&m, "vigil_cluster_adopted_total") >= 1, "{m}");
    assert!(metric(&m, "vigil_cluster_datagrams_in_total") > 10, "{m}");
    assert_eq!(metric(&m, "vigil_cluster_datagrams_rejected_total"), 0);
    assert_eq!(metric(&m, "vigil_cluster_live_nodes"), 2);
    // Nodes of one release gossip in the compact format.
    let compact = metric(&m, "vigil_cluster_datagrams_compact_total");
    assert!(compact > metric(&m, "vigil_cluster_datagrams_out_total") / 2, "{m}");

    // A node with another key: refused by everyone, it changes nothing.
    let other = keys.join("other.key");
    std::fs::write(&other, [7u8; 32]).unwrap();
    let rest = format!("{remap}\n{}", cluster_section("intruder", free_udp(), &[gossip[0]], &other));
    let intruder = Vigil::start("cluster-intruder", "", &rest, CHECKS).await;
    assert_eq!(intruder.get("www.app.test", "/").await.0, StatusCode::OK);
    let rejected = wait_until(Duration::from_secs(10), || async {
        metric(&metrics(&vigils[0]).await, "vigil_cluster_datagrams_rejected_total") > 0
    })
    .await;
    assert!(rejected, "the intruder's datagrams were not counted as rejected");
    assert_eq!(owners(&nodes, &servers).await.as_ref(), Some(&owner_map), "the intruder moved ownership");
    assert!(sources(&intruder).await.values().all(|(_, src)| src == "local"));

    // SIGTERM the owner of server 1: it leaves, the others take over.
    let victim = owner_map[&servers[1]].clone();
    let i: usize = victim.trim_start_matches("edge-").parse().unwrap();
    vigils[i].signal("TERM");
    let rest: Vec<(&str, &Vigil)> = nodes.iter().filter(|(n, _)| *n != victim).copied().collect();
    let t0 = tokio::time::Instant::now();
    let took_over = wait_until(Duration::from_secs(15), || async {
        owners(&rest, &servers[1..2]).await.is_some_and(|m| m[&servers[1]] != victim)
    })
    .await;
    assert!(took_over, "nobody took over {} from {victim}", servers[1]);
    println!("SIGTERM of the owner: the others took over in {:?}", t0.elapsed());
    let survivor = &vigils[(i + 1) % 3];
    let logged = wait_until(Duration::from_secs(10), || async {
        survivor
            .log()
            .contains(&format!("cluster: node gone (left or failed); its servers move node={victim}"))
    })
    .await;
    assert!(logged && survivor.log().contains("cluster: node joined"), "{}", survivor.log());
    assert_eq!(vigils[i].exit_code(Duration::from_secs(35)).await, Some(0));
}
