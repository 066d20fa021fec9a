//! Two cluster members in one process, gossiping over loopback UDP with a
//! shared key. Both have traffic for one origin; rendezvous hashing makes
//! one of them the checker of its server, and a result recorded there
//! reaches the other, which adopts it (`source = cluster:<node>`).
//!
//! ```sh
//! cargo run -p vigil-cluster --example two_nodes
//! ```

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::Duration;

use vigil_cluster::{Cluster, ClusterConfig, ClusterKey};
use vigil_hostdb::{CheckResult, HostDb, HostDbConfig, L7Policy, OriginKey, OriginSpec, ServerSource};

const ORIGIN: &str = "app.internal:8080";

fn db(server: SocketAddr) -> Result<HostDb, Box<dyn std::error::Error>> {
    let db = HostDb::new();
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec {
            key: ORIGIN.parse()?,
            servers: ServerSource::Static(vec![server]),
            lb: Default::default(),
            check: Some(L7Policy { healthy_threshold: 1, unhealthy_threshold: 1 }),
            policy: Default::default(),
        }],
        ..Default::default()
    })?;
    // Traffic for the origin here: its checks run on this node.
    db.origin(ORIGIN).ok_or("no origin")?.set_checking(true);
    Ok(db)
}

fn free_udp() -> Result<SocketAddr, std::io::Error> {
    std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = [7u8; 32]; // every node has the same 32 bytes (a file in real life)
    let server: SocketAddr = "127.0.0.2:8080".parse()?;
    let (a_addr, b_addr) = (free_udp()?, free_udp()?);
    let config = |node_id: &str, listen, seeds| -> Result<ClusterConfig, Box<dyn std::error::Error>> {
        Ok(ClusterConfig {
            node_id: node_id.into(),
            listen,
            seeds,
            cluster_id: "example".into(),
            gossip_interval: Duration::from_millis(100),
            key: ClusterKey::from_bytes(&key)?,
            previous_keys: Vec::new(),
        })
    };
    let (db_a, db_b) = (db(server)?, db(server)?);
    let a = Cluster::start(config("edge-a", a_addr, vec![b_addr])?, db_a.clone()).await?;
    let b = Cluster::start(config("edge-b", b_addr, vec![a_addr])?, db_b.clone()).await?;

    let origin: OriginKey = ORIGIN.parse()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.owner(&origin, server).is_none() || a.owner(&origin, server) != b.owner(&origin, server) {
        if tokio::time::Instant::now() > deadline {
            return Err("the nodes did not agree on an owner in 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owner = a.owner(&origin, server).ok_or("no owner")?;
    println!("both nodes agree: {owner} checks {server}");

    // The owner's checker records a failing result...
    let (owner_db, other_db) = if &*owner == "edge-a" { (&db_a, &db_b) } else { (&db_b, &db_a) };
    let now = tokio::time::Instant::now().into_std();
    let failed = CheckResult { passed: false, detail: "503".into(), latency: Duration::from_millis(2) };
    let owned = owner_db.origin(ORIGIN).ok_or("no origin")?;
    let record = owned.server(server).ok_or("no server")?;
    owned.record_check(&record, &failed, now);
    // ...and the other node adopts it.
    let adopted = other_db.origin(ORIGIN).ok_or("no origin")?.server(server).ok_or("no server")?;
    let started = tokio::time::Instant::now();
    while adopted.l7().state != vigil_hostdb::L7State::Unhealthy {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("the result did not reach the other node in 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "the other node sees {server} {:?} from {:?} after {:?}",
        adopted.l7().state,
        adopted.l7().source,
        started.elapsed()
    );
    a.abort();
    b.abort();
    Ok(())
}
