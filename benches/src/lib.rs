//! Fixtures shared by the criterion benches (`benches/`) and the
//! instruction-count harness (`src/bin/vigil-perf.rs`), so both measure the
//! same code: HostDBs of a given size, key sets, the update storm, and the
//! `RwLock<HashMap>` baseline HostDB is compared against.

pub mod origin;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use vigil_hostdb::{
    Attempt, CheckResult, HostDb, HostDbConfig, L4Policy, L7Policy, LbPolicy, OriginKey, OriginSpec,
    ServerSource,
};

/// The number after `--name` on the command line, or `default` (for the
/// scale harnesses' flags).
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The word after `--name` on the command line, or `default` (the scale
/// harnesses' flags that name a choice, such as `--kind grpc`).
pub fn arg_str(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

/// Servers per origin in every fixture.
pub const SERVERS_PER_ORIGIN: u8 = 3;

/// The key of origin `i`.
pub fn origin_key(i: usize) -> String {
    format!("o{i}.app.internal:8080")
}

/// Server `j` of origin `i`, spread over 127.0.0.0/8.
pub fn server_addr(i: usize, j: u8) -> SocketAddr {
    let i = i as u32;
    SocketAddr::from(([127, (i >> 16) as u8, (i >> 8) as u8, i as u8], 10_000 + j as u16))
}

/// The config of a HostDB with `n` origins of [`SERVERS_PER_ORIGIN`] servers.
pub fn config(n: usize, lb: LbPolicy) -> HostDbConfig {
    HostDbConfig {
        l4: L4Policy::default(),
        origins: (0..n)
            .map(|i| OriginSpec {
                key: origin_key(i).parse().expect("fixture keys are valid"),
                servers: ServerSource::Static((0..SERVERS_PER_ORIGIN).map(|j| server_addr(i, j)).collect()),
                lb,
                check: Some(L7Policy::default()),
                policy: Default::default(),
            })
            .collect(),
    }
}

/// A HostDB with `n` origins.
pub fn hostdb(n: usize, lb: LbPolicy) -> HostDb {
    let db = HostDb::new();
    db.apply(&config(n, lb)).expect("fixture config is valid");
    db
}

/// [`hostdb`] with weights 1, 2 and 3 on each origin's three servers: every
/// origin takes the traffic-policy path (smooth weighted round robin).
pub fn weighted_hostdb(n: usize) -> HostDb {
    let mut config = config(n, LbPolicy::RoundRobin);
    for o in &mut config.origins {
        if let ServerSource::Static(servers) = &o.servers {
            o.policy.weights = servers.iter().zip(1..).map(|(s, w)| (*s, w)).collect();
        }
    }
    let db = HostDb::new();
    db.apply(&config).expect("fixture config is valid");
    db
}

/// `count` keys spread over the origins of `db` in a fixed pseudo-random
/// order (the working set a lookup walks through; defeats a warm single-key
/// cache). The keys are the HostDB's own, as a proxy's remap table holds the
/// keys parsed from the same config (so the lookup's `ptr_eq` fast path applies).
pub fn spread_keys(db: &HostDb, count: usize) -> Vec<OriginKey> {
    let n = db.len();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            key(db, (x % n as u64) as usize)
        })
        .collect()
}

/// The key of origin `i` as `db` holds it.
pub fn key(db: &HostDb, i: usize) -> OriginKey {
    db.origin(&origin_key(i)).expect("fixture origin exists").key().clone()
}

/// The measured operation: look an origin up and pick a server, then release it.
#[inline]
pub fn lookup_select(db: &HostDb, key: &OriginKey, now: Instant) -> SocketAddr {
    let mut attempt = Attempt::new();
    match db.select(key, &mut attempt, now) {
        Ok(pick) => pick.addr(),
        Err(e) => panic!("fixture origin {key} has no routable server: {e}"),
    }
}

/// Every origin key of `db`, in order (what the storm walks).
pub fn all_keys(db: &HostDb) -> Vec<OriginKey> {
    (0..db.len()).map(|i| key(db, i)).collect()
}

/// One status update of the storm, `i`-th of the sequence: L4 failures and
/// successes, L7 passes and failures and maintenance flips on the second or
/// third server of origin `i % keys.len()`. The first server of each origin
/// is never touched, so every origin always has a routable server.
pub fn storm_update(db: &HostDb, keys: &[OriginKey], i: usize, now: Instant) {
    let n = keys.len();
    let Some(origin) = db.origin_by_key(&keys[i % n]) else { return };
    let server = &origin.servers()[1 + (i / n) % 2];
    match i % 4 {
        0 => {
            server.report_l4_failure(now);
        }
        1 => server.report_l4_success(now),
        2 => {
            let passed = i % 8 < 4;
            let r = CheckResult { passed, detail: "200".into(), latency: Duration::from_millis(1) };
            origin.record_check(server, &r, now);
        }
        _ => {
            server.set_maintenance(i % 8 == 3);
        }
    }
}

/// Runs `update` in a loop on another thread until the returned guard drops.
pub fn spawn_storm(update: impl Fn(usize) + Send + 'static) -> StormGuard {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (s, c) = (Arc::clone(&stop), Arc::clone(&count));
    let handle = std::thread::spawn(move || {
        let mut i = 0usize;
        while !s.load(Ordering::Relaxed) {
            update(i);
            i = i.wrapping_add(1);
            if i.is_multiple_of(1024) {
                c.store(i, Ordering::Relaxed);
            }
        }
    });
    StormGuard { stop, count, handle: Some(handle) }
}

/// Stops the storm thread on drop.
#[derive(Debug)]
pub struct StormGuard {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl StormGuard {
    /// Updates made so far (to the nearest 1 024).
    pub fn updates(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for StormGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The conventional design HostDB is measured against: one `RwLock` over a
/// `HashMap` of origins with plain status fields; updates take the write lock.
#[derive(Debug, Default)]
pub struct Baseline {
    map: RwLock<HashMap<String, BaselineOrigin>>,
}

#[derive(Debug)]
struct BaselineOrigin {
    rr: AtomicUsize,
    servers: Vec<BaselineServer>,
}

#[derive(Debug)]
struct BaselineServer {
    addr: SocketAddr,
    maintenance: bool,
    l4_failures: u32,
    l4_down_until: Option<Instant>,
    l7_passes: u32,
    l7_failures: u32,
    l7_unhealthy: bool,
}

impl Baseline {
    /// `n` origins, as [`hostdb`] builds them.
    pub fn new(n: usize) -> Self {
        let map = (0..n)
            .map(|i| {
                let servers = (0..SERVERS_PER_ORIGIN)
                    .map(|j| BaselineServer {
                        addr: server_addr(i, j),
                        maintenance: false,
                        l4_failures: 0,
                        l4_down_until: None,
                        l7_passes: 0,
                        l7_failures: 0,
                        l7_unhealthy: false,
                    })
                    .collect();
                (origin_key(i), BaselineOrigin { rr: AtomicUsize::new(0), servers })
            })
            .collect();
        Self { map: RwLock::new(map) }
    }

    /// Lookup and round-robin select under the read lock.
    pub fn lookup_select(&self, key: &OriginKey, now: Instant) -> Option<SocketAddr> {
        let map = self.map.read();
        let o = map.get(key.as_str())?;
        let n = o.servers.len();
        let start = o.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &o.servers[(start + k) % n])
            .find(|s| !s.maintenance && !s.l7_unhealthy && s.l4_down_until.is_none_or(|t| now >= t))
            .map(|s| s.addr)
    }

    /// The same update sequence as [`storm_update`], under the write lock.
    pub fn storm_update(&self, keys: &[OriginKey], i: usize, now: Instant) {
        let n = keys.len();
        let mut map = self.map.write();
        let Some(o) = map.get_mut(keys[i % n].as_str()) else { return };
        let s = &mut o.servers[1 + (i / n) % 2];
        match i % 4 {
            0 => {
                s.l4_failures += 1;
                s.l4_down_until = Some(now + Duration::from_secs(10));
            }
            1 => {
                s.l4_failures = 0;
                s.l4_down_until = None;
            }
            2 => {
                if i % 8 < 4 {
                    s.l7_passes += 1;
                    s.l7_failures = 0;
                    s.l7_unhealthy &= s.l7_passes < 2;
                } else {
                    s.l7_failures += 1;
                    s.l7_passes = 0;
                    s.l7_unhealthy |= s.l7_failures >= 3;
                }
            }
            _ => s.maintenance = i % 8 == 3,
        }
    }
}
