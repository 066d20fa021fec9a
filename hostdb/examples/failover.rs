//! A request path's view of HostDB: pick a server, report what happened,
//! and watch a failed server taken out, skipped, and tried again once its
//! down time is over. No network: the outcomes are reported by hand.
//!
//! ```sh
//! cargo run -p vigil-hostdb --example failover
//! ```

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use vigil_hostdb::{Attempt, HostDb, HostDbConfig, L4Policy, OriginKey, OriginSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = HostDb::new();
    let app: OriginKey = "app.internal:8080".parse()?;
    let servers = vec!["127.0.0.2:8080".parse()?, "127.0.0.3:8080".parse()?];
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec::with_servers(app.clone(), servers)],
        l4: L4Policy { fail_threshold: 1, down_time: Duration::from_secs(10) },
    })?;

    // HostDb takes `now` as an input; tokio's clock (outside a runtime, the
    // system's) is the one its tests can pause.
    let start = tokio::time::Instant::now().into_std();
    let pick = |now: Instant| db.select(&app, &mut Attempt::new(), now).map(|p| p.addr());
    println!("round robin: {} then {}", pick(start)?, pick(start)?);

    // A connect to the first server fails: one failure takes it down.
    let mut attempt = Attempt::new();
    let first = db.select(&app, &mut attempt, start)?;
    let state = first.server().report_l4_failure(start);
    println!("{} failed to connect: now {state:?}", first.addr());
    // The same request retries elsewhere; it never repeats a server.
    let retry = db.select(&app, &mut attempt, start)?;
    retry.server().report_l4_success(start);
    println!("the retry went to {}", retry.addr());

    // New requests skip the down server...
    let picks: Vec<_> = (0..4).map(|_| pick(start + Duration::from_secs(1))).collect::<Result<_, _>>()?;
    println!("for the next 10 s every pick is the healthy one: {picks:?}");
    // ...until its down time is over: then one request probes it.
    let later = start + Duration::from_secs(11);
    let server = db.origin_by_key(&app).map(|o| o.servers()[0].clone()).ok_or("no origin")?;
    println!(
        "after 11 s {} is {:?}: the next request that picks it tries it once",
        server.addr(),
        server.l4_state(later)
    );
    let probe = (0..2)
        .map(|_| db.select(&app, &mut Attempt::new(), later))
        .find_map(|p| p.ok().filter(|p| p.addr() == server.addr()));
    if let Some(probe) = probe {
        probe.server().report_l4_success(later);
        println!("the probe got an answer: {} is {:?} again", probe.addr(), probe.server().l4_state(later));
    }
    Ok(())
}
