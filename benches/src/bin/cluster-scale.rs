//! Scale harness for the cluster: N members in one process (real UDP on
//! loopback, sealed), each with its own HostDB holding the same servers and
//! traffic for every origin. In the quiet phase the checking node of each
//! server records a passing result for it every check interval, as the
//! checker would; in the second phase a share of the servers changes state
//! at a steady rate.
//!
//! Prints: bytes of gossip state per server, gossip bandwidth per node and
//! per peer (a node's bytes over the other nodes; quiet and with changes),
//! and how long a change takes to reach every node (p50/p99).
//!
//! Run: `cargo run --release -p vigil-benches --bin cluster-scale -- [--nodes N] [--servers S] [--gossip-ms G] [--flips-per-s F] [--seconds T]`
//! (defaults: 3 nodes, 1 000 servers in origins of 10, 200 ms gossip
//! (SPEC's default), 10 changes per second, 10 s per phase).

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use vigil_benches::arg;
use vigil_cluster::{Cluster, ClusterConfig, ClusterKey};
use vigil_hostdb::{
    CheckResult, HostDb, HostDbConfig, L7Policy, L7State, OriginKey, OriginSpec, ServerSource, Source,
};

const PER_ORIGIN: usize = 10;
const POLICY: L7Policy = L7Policy { healthy_threshold: 2, unhealthy_threshold: 3 };

fn layout(servers: usize) -> Vec<(OriginKey, Vec<SocketAddr>)> {
    (0..servers.div_ceil(PER_ORIGIN))
        .map(|o| {
            let key: OriginKey = format!("app-{o}.internal:8080").parse().unwrap();
            let n = PER_ORIGIN.min(servers - o * PER_ORIGIN);
            let addrs = (0..n)
                .map(|i| {
                    let k = o * PER_ORIGIN + i;
                    SocketAddr::from(([127, 1, (k >> 8) as u8, k as u8], 8080))
                })
                .collect();
            (key, addrs)
        })
        .collect()
}

struct Node {
    db: HostDb,
    cluster: Cluster,
}

/// One check round: every server this node checks passes.
fn check_round(n: &Node) {
    let now = tokio::time::Instant::now().into_std();
    let pass = CheckResult::pass("200", Duration::ZERO);
    for o in n.db.origins() {
        for s in o.servers().iter() {
            if n.cluster.checks_here(o.key(), s.addr()) {
                o.record_check(s, &pass, now);
            }
        }
    }
}

fn traffic(nodes: &[Node]) -> u64 {
    nodes.iter().map(|n| n.cluster.metrics().transport().bytes_out()).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n_nodes = arg("--nodes", 3) as usize;
    let n_servers = arg("--servers", 1000) as usize;
    let gossip = Duration::from_millis(arg("--gossip-ms", 200));
    let flips_per_s = arg("--flips-per-s", 10);
    let phase = Duration::from_secs(arg("--seconds", 10));
    let check_interval = Duration::from_secs(2);
    let origins = layout(n_servers);
    let spec = HostDbConfig {
        origins: origins
            .iter()
            .map(|(k, s)| OriginSpec {
                key: k.clone(),
                servers: ServerSource::Static(s.clone()),
                lb: Default::default(),
                check: Some(POLICY),
                policy: Default::default(),
            })
            .collect(),
        ..Default::default()
    };

    let mut nodes = Vec::new();
    let mut seeds = Vec::new();
    for i in 0..n_nodes {
        let listen = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let db = HostDb::new();
        db.apply(&spec).unwrap();
        for o in db.origins() {
            o.set_checking(true);
        }
        let cluster = Cluster::start(
            ClusterConfig {
                node_id: format!("edge-{i}"),
                listen,
                seeds: seeds.clone(),
                cluster_id: "scale".into(),
                gossip_interval: gossip,
                key: ClusterKey::from_bytes(&[3; 32]).unwrap(),
                previous_keys: Vec::new(),
            },
            db.clone(),
        )
        .await
        .unwrap();
        seeds = vec![listen];
        nodes.push(Node { db, cluster });
    }
    let t0 = Instant::now();
    while nodes.iter().any(|n| n.cluster.live_nodes().len() != n_nodes - 1) {
        assert!(t0.elapsed() < Duration::from_secs(30), "members did not find each other");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "cluster-scale: {n_nodes} nodes, {n_servers} servers in {} origins, gossip every {gossip:?}; membership in {:?}",
        origins.len(),
        t0.elapsed()
    );

    // Warm up: every server checked healthy, all records spread.
    for _ in 0..3 {
        for n in &nodes {
            check_round(n);
        }
        tokio::time::sleep(gossip * 5).await;
    }
    let all_adopted = |nodes: &[Node]| {
        nodes.iter().all(|n| {
            n.db.origins().iter().all(|o| {
                o.servers().iter().all(|s| {
                    let l7 = s.l7();
                    l7.state == L7State::Healthy
                        && (l7.source != Source::Local || n.cluster.checks_here(o.key(), s.addr()))
                })
            })
        })
    };
    let t0 = Instant::now();
    while !all_adopted(&nodes) {
        assert!(t0.elapsed() < Duration::from_secs(60), "records did not spread");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // State per server: what the nodes publish (records and interest).
    tokio::time::sleep(gossip * 2).await;
    let state: u64 = nodes.iter().map(|n| n.cluster.metrics().state_bytes()).sum();
    println!(
        "state: {state} bytes published over all nodes, {:.1} bytes per server (keys and values, before chitchat's framing and zstd)",
        state as f64 / n_servers as f64
    );

    // Quiet: checks keep passing, nothing changes.
    let start = (traffic(&nodes), Instant::now());
    let mut next_round = Instant::now();
    while start.1.elapsed() < phase {
        if Instant::now() >= next_round {
            for n in &nodes {
                check_round(n);
            }
            next_round += check_interval;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = (traffic(&nodes) - start.0) as f64 / start.1.elapsed().as_secs_f64() / n_nodes as f64;
    let peers = n_nodes.saturating_sub(1).max(1) as f64;
    println!(
        "quiet: {:.0} bytes/s sent per node, {:.0} per peer ({:.2} per server)",
        quiet,
        quiet / peers,
        quiet / n_servers as f64
    );

    // Changes: `flips_per_s` servers change state every second; each change
    // is timed until every node holds it.
    let all_addrs: Vec<(OriginKey, SocketAddr)> =
        origins.iter().flat_map(|(k, s)| s.iter().map(move |a| (k.clone(), *a))).collect();
    let mut delays = Vec::new();
    let start = (traffic(&nodes), Instant::now());
    let mut pending: Vec<(OriginKey, SocketAddr, L7State, Instant)> = Vec::new();
    let mut next_flip = Instant::now();
    while start.1.elapsed() < phase {
        if Instant::now() >= next_flip {
            for _ in 0..flips_per_s {
                let (key, addr) = all_addrs[fastrand::usize(..all_addrs.len())].clone();
                if pending.iter().any(|p| p.1 == addr) {
                    continue;
                }
                let owner = nodes.iter().find(|n| n.cluster.checks_here(&key, addr)).unwrap();
                let origin = owner.db.origin(key.as_str()).unwrap();
                let server = origin.server(addr).unwrap();
                let fail = server.l7_state() == L7State::Healthy;
                let r = if fail {
                    CheckResult::fail("503", Duration::ZERO)
                } else {
                    CheckResult::pass("200", Duration::ZERO)
                };
                let now = tokio::time::Instant::now().into_std();
                for _ in 0..3 {
                    origin.record_check(&server, &r, now);
                }
                pending.push((key, addr, server.l7_state(), Instant::now()));
            }
            next_flip += Duration::from_secs(1);
        }
        pending.retain(|(key, addr, state, at)| {
            let done = nodes
                .iter()
                .all(|n| n.db.origin(key.as_str()).unwrap().server(*addr).unwrap().l7_state() == *state);
            if done {
                delays.push(at.elapsed());
            }
            !done
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = (traffic(&nodes) - start.0) as f64 / start.1.elapsed().as_secs_f64() / n_nodes as f64;
    delays.sort();
    let pct =
        |p: f64| delays.get(((delays.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    println!(
        "with {flips_per_s} changes/s: {:.0} bytes/s sent per node, {:.0} per peer; change reached all {n_nodes} nodes: p50 {:?}, p99 {:?} ({} changes, {} still spreading)",
        busy,
        busy / peers,
        pct(0.5),
        pct(0.99),
        delays.len(),
        pending.len()
    );
    let rejected: u64 = nodes.iter().map(|n| n.cluster.metrics().transport().rejected()).sum();
    let sum = |f: fn(&vigil_cluster::TransportStats) -> u64| -> u64 {
        nodes.iter().map(|n| f(n.cluster.metrics().transport())).sum()
    };
    println!(
        "rejected datagrams: {rejected}; compact {} of {} sent; empty Acks not sent: {}; resets: {}",
        sum(vigil_cluster::TransportStats::compact_out),
        sum(vigil_cluster::TransportStats::datagrams_out),
        sum(vigil_cluster::TransportStats::acks_skipped),
        sum(vigil_cluster::TransportStats::resets_sent),
    );
    for n in &nodes {
        n.cluster.abort();
    }
}
