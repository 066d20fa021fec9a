//! Rotating the cluster key of three running `vigil` processes the way
//! docs/configuration.md tells an operator to, reload by reload, with
//! gossip flowing after every step and the old key refused at the end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;

use crate::cluster::{CHECKS, cluster_section, free_udp, metric, metrics, sources, three_nodes, www_remap};
use crate::harness::*;

/// One node's gossip counters, from one read of `/metrics`.
#[derive(Debug, Clone, Copy)]
struct Gossip {
    datagrams_in: u64,
    rejected: u64,
    previous_key: u64,
    live: u64,
}

async fn gossip(v: &Vigil) -> Gossip {
    let m = metrics(v).await;
    Gossip {
        datagrams_in: metric(&m, "vigil_cluster_datagrams_in_total"),
        rejected: metric(&m, "vigil_cluster_datagrams_rejected_total"),
        previous_key: metric(&m, "vigil_cluster_datagrams_previous_key_total"),
        live: metric(&m, "vigil_cluster_live_nodes"),
    }
}

async fn all_gossip(vigils: &[Vigil]) -> Vec<Gossip> {
    let mut out = Vec::new();
    for v in vigils {
        out.push(gossip(v).await);
    }
    out
}

/// Writes `key` and `previous` as `v`'s key files (its `[cluster]` is the
/// last section) and reloads it by SIGHUP; waits until the reload is
/// counted with `result` (`ok` or `error`).
async fn rekey(v: &Vigil, key: &Path, previous: &[&PathBuf], result: &str) {
    let path = v.dir.join("vigil.toml");
    let mut text: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("key_file") && !l.starts_with("previous_key_files"))
        .map(|l| format!("{l}\n"))
        .collect();
    let previous: Vec<String> = previous.iter().map(|p| format!("\"{}\"", p.display())).collect();
    text.push_str(&format!(
        "key_file = \"{}\"\nprevious_key_files = [{}]\n",
        key.display(),
        previous.join(", ")
    ));
    std::fs::write(&path, text).unwrap();
    let series = format!("vigil_reloads_total{{result=\"{result}\"}}");
    let before = v.metric(&series).await;
    v.signal("HUP");
    let counted = wait_until(Duration::from_secs(10), || async { v.metric(&series).await > before }).await;
    assert!(counted, "the reload was not counted as {result}: {}", v.log());
}

/// Turns every origin server `state` ("healthy" or "unhealthy") and waits
/// until each node shows it (the checking node's result reached the others
/// by gossip), then until every node heard 10 more datagrams, none refused,
/// with both others still members.
async fn gossip_flows(vigils: &[Vigil], o: &[Origin], state: &str, step: &str) {
    for origin in o {
        origin.state.health.store(if state == "healthy" { 0 } else { 503 }, Ordering::SeqCst);
    }
    let seen = wait_until(Duration::from_secs(20), || async {
        for v in vigils {
            let view = sources(v).await;
            if !o.iter().all(|x| view.get(&x.addr.to_string()).is_some_and(|(st, _)| st == state)) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(seen, "{step}: not every node saw the servers {state}: {:?}", sources(&vigils[0]).await);
    let before = all_gossip(vigils).await;
    let heard = wait_until(Duration::from_secs(10), || async {
        let now = all_gossip(vigils).await;
        now.iter().zip(&before).all(|(n, b)| n.datagrams_in >= b.datagrams_in + 10 && n.live == 2)
    })
    .await;
    let now = all_gossip(vigils).await;
    assert!(heard, "{step}: gossip stopped: {now:?}");
    assert!(now.iter().all(|g| g.rejected == 0), "{step}: datagrams refused: {now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_vigils_rotate_the_cluster_key_with_reloads_and_the_old_key_is_refused() {
    let o = origins(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    let servers: Vec<SocketAddr> = o.iter().map(|x| x.addr).collect();
    let remap = www_remap(&o);
    let keys = test_dir("cluster-rotation-keys");
    let (old, new, bad) = (keys.join("old.key"), keys.join("new.key"), keys.join("bad.key"));
    std::fs::write(&old, [21u8; 32]).unwrap();
    std::fs::write(&new, [22u8; 32]).unwrap();
    std::fs::write(&bad, [23u8; 5]).unwrap();
    let (vigils, gossip_at) = three_nodes("rotation", &remap, &old, &servers).await;
    gossip_flows(&vigils, &o, "healthy", "on the old key").await;

    // (a) Every node opens the new key too. Nobody seals with it yet.
    for v in &vigils {
        rekey(v, &old, &[&new], "ok").await;
    }
    gossip_flows(&vigils, &o, "unhealthy", "(a) new key added").await;
    let counts = all_gossip(&vigils).await;
    assert!(counts.iter().all(|g| g.previous_key == 0), "nobody seals with the new key yet: {counts:?}");

    // A key file that is not 32 bytes refuses the reload: the node keeps
    // its keys, and gossip goes on.
    rekey(&vigils[1], &bad, &[&old], "error").await;
    assert!(vigils[1].log().contains("reload refused, the running config stays"), "{}", vigils[1].log());
    gossip_flows(&vigils, &o, "healthy", "after a refused reload").await;

    // (b) Node by node, seal with the new key and keep opening the old one.
    // After the first switch, every node reads some peer through its
    // previous key: the switched one its old-key peers, they it.
    rekey(&vigils[0], &new, &[&old], "ok").await;
    gossip_flows(&vigils, &o, "unhealthy", "(b) edge-0 switched").await;
    let counts = all_gossip(&vigils).await;
    assert!(counts.iter().all(|g| g.previous_key > 0), "a previous key opened nothing: {counts:?}");
    rekey(&vigils[1], &new, &[&old], "ok").await;
    gossip_flows(&vigils, &o, "healthy", "(b) edge-1 switched").await;
    rekey(&vigils[2], &new, &[&old], "ok").await;
    gossip_flows(&vigils, &o, "unhealthy", "(b) edge-2 switched").await;

    // (c) The previous-key count stays flat everywhere while gossip goes
    // on: nobody seals with the old key any more, so it goes.
    let settled = all_gossip(&vigils).await;
    let more = wait_until(Duration::from_secs(10), || async {
        let now = all_gossip(&vigils).await;
        now.iter().zip(&settled).all(|(n, s)| n.datagrams_in >= s.datagrams_in + 20)
    })
    .await;
    let now = all_gossip(&vigils).await;
    assert!(more, "gossip stopped: {now:?}");
    for (n, s) in now.iter().zip(&settled) {
        assert_eq!(n.previous_key, s.previous_key, "the old key still opened datagrams: {now:?}");
    }
    // The admin reload says what it did, and that no restart is needed.
    let path = vigils[0].dir.join("vigil.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&format!("previous_key_files = [\"{}\"]", old.display()), ""))
        .unwrap();
    let (status, reply) = vigils[0].post("/reload", None, "").await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(reply.contains("cluster keys changed") && reply.contains("previous keys: 0"), "{reply}");
    assert!(!reply.contains("restart"), "{reply}");
    for v in &vigils[1..] {
        rekey(v, &new, &[], "ok").await;
    }
    gossip_flows(&vigils, &o, "healthy", "(c) old key dropped").await;
    for v in &vigils {
        assert_eq!(v.log().matches("cluster: keys changed").count(), 3, "{}", v.log());
    }

    // A node still sealing with the old key only (one that missed the
    // rotation): every node refuses it, and it never becomes a member.
    let rest = format!("{remap}\n{}", cluster_section("stale", free_udp(), &gossip_at, &old));
    let stale = Vigil::start("rotation-stale", "", &rest, CHECKS).await;
    let refused = wait_until(Duration::from_secs(10), || async {
        all_gossip(&vigils).await.iter().all(|g| g.rejected > 0)
    })
    .await;
    assert!(refused, "not every node refused the old key: {:?}", all_gossip(&vigils).await);
    let before = all_gossip(&vigils).await;
    let heard = wait_until(Duration::from_secs(10), || async {
        let now = all_gossip(&vigils).await;
        now.iter().zip(&before).all(|(n, b)| n.datagrams_in >= b.datagrams_in + 20 && n.rejected > b.rejected)
    })
    .await;
    assert!(heard, "{:?}", all_gossip(&vigils).await);
    for v in &vigils {
        let hosts = v.hosts().await;
        let live = hosts["cluster"]["live_nodes"].as_array().unwrap();
        assert_eq!(live.len(), 2, "{hosts}");
        assert!(live.iter().all(|n| n != "stale"), "{hosts}");
    }
    let g = gossip(&stale).await;
    assert_eq!((g.live, g.datagrams_in), (0, 0), "someone answered the stale node: {g:?}");
    let _ = std::fs::remove_dir_all(&keys);
}
