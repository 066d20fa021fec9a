//! Server selection: the per-request [`Attempt`], the [`Pick`] it yields, the
//! load-balancing policies, and the consistent-hash ring.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::server::{Admit, Server};
use crate::time::Epoch;

/// How an origin spreads requests over its routable servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each request takes the next routable server in turn.
    #[default]
    RoundRobin,
    /// Power of two choices: two random routable servers, the one with fewer
    /// requests in flight wins.
    LeastRequests,
    /// A ring of virtual nodes hashed from the request's key (the path): a
    /// key keeps its server, and a server leaving remaps only its own share.
    /// Without a key it behaves as round robin.
    ConsistentHash,
}

impl std::str::FromStr for LbPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" => Ok(Self::RoundRobin),
            "least_requests" => Ok(Self::LeastRequests),
            "consistent_hash" => Ok(Self::ConsistentHash),
            other => {
                Err(format!("unknown lb {other:?}: expected round_robin, least_requests or consistent_hash"))
            }
        }
    }
}

const INLINE_TRIED: usize = 8;

/// One request's selection state: which servers it already tried (so a retry
/// never picks one twice) and its consistent-hash key, if any.
///
/// Allocation-free for up to eight attempts.
///
/// ```
/// let mut attempt = vigil_hostdb::Attempt::new().with_hash_key(b"/images/cat.png");
/// assert_eq!(attempt.tried(), 0);
/// ```
#[derive(Clone, Default)]
pub struct Attempt {
    tried: [u64; INLINE_TRIED],
    len: usize,
    overflow: Vec<u64>,
    hash: Option<u64>,
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt").field("tried", &self.tried()).field("hash", &self.hash).finish()
    }
}

impl Attempt {
    /// A fresh attempt: nothing tried, no hash key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the consistent-hash key (SPEC: the request path). The hash is
    /// stable across processes and nodes.
    pub fn with_hash_key(mut self, key: &[u8]) -> Self {
        self.hash = Some(xxh3_64(key));
        self
    }

    /// How many servers this request has picked so far.
    pub fn tried(&self) -> usize {
        self.len + self.overflow.len()
    }

    pub(crate) fn hash(&self) -> Option<u64> {
        self.hash
    }

    fn has_tried(&self, id: u64) -> bool {
        self.tried[..self.len].contains(&id) || self.overflow.contains(&id)
    }

    fn push(&mut self, id: u64) {
        if self.len < INLINE_TRIED {
            self.tried[self.len] = id;
            self.len += 1;
        } else {
            self.overflow.push(id);
        }
    }
}

/// A server chosen for one request. Counts as a request in flight until dropped.
///
/// Report the outcome on [`Pick::server`] (`report_l4_success` /
/// `report_l4_failure`); if the pick is an L4 retry probe, that report is what
/// brings the server back up or down again.
pub struct Pick {
    server: Arc<Server>,
    probe: bool,
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick").field("server", &self.server.addr()).field("probe", &self.probe).finish()
    }
}

impl Pick {
    pub(crate) fn new(server: &Arc<Server>, probe: bool, attempt: &mut Attempt) -> Self {
        server.in_flight_add();
        attempt.push(server.id());
        Self { server: Arc::clone(server), probe }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The server's record, for reporting L4 results.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Whether this request is the single retry probe of an L4-down server.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.server.in_flight_sub();
    }
}

/// The clock read at most once per selection, and only if some server is L4-down.
pub(crate) struct LazyMs {
    epoch: Epoch,
    now: Instant,
    ms: Option<u64>,
}

impl LazyMs {
    pub(crate) fn new(epoch: Epoch, now: Instant) -> Self {
        Self { epoch, now, ms: None }
    }
    pub(crate) fn get(&mut self) -> u64 {
        *self.ms.get_or_insert_with(|| self.epoch.ms(self.now))
    }
}

/// Whether `s` can take this request; claims the retry probe when it is due.
/// `Some(probe)` when it can.
#[inline]
pub(crate) fn consider(s: &Server, attempt: &Attempt, clock: &mut LazyMs) -> Option<bool> {
    if attempt.len != 0 && attempt.has_tried(s.id()) {
        return None;
    }
    match s.admit(|| clock.get()) {
        Admit::Yes => Some(false),
        Admit::Probe => s.claim_probe(clock.get()).then_some(true),
        Admit::No => None,
    }
}

/// First index from `start` onwards (wrapping, `n` in all) that `accept`
/// takes.
#[inline]
fn scan(n: usize, start: usize, mut accept: impl FnMut(usize) -> Option<bool>) -> Option<(usize, bool)> {
    let mut i = start;
    for _ in 0..n {
        if let Some(probe) = accept(i) {
            return Some((i, probe));
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
    None
}

pub(crate) fn round_robin(
    servers: &[Arc<Server>],
    counter: usize,
    attempt: &Attempt,
    clock: &mut LazyMs,
) -> Option<(usize, bool)> {
    scan_plain(servers, counter % servers.len(), attempt, clock)
}

/// First server from `start` onwards (wrapping) that can take the request:
/// the plain path's [`scan`], written out (through the generic one the
/// least-requests path costs a few dozen instructions more).
#[inline]
fn scan_plain(
    servers: &[Arc<Server>],
    start: usize,
    attempt: &Attempt,
    clock: &mut LazyMs,
) -> Option<(usize, bool)> {
    let n = servers.len();
    let mut i = start;
    for _ in 0..n {
        if let Some(probe) = consider(&servers[i], attempt, clock) {
            return Some((i, probe));
        }
        i += 1;
        if i == n {
            i = 0;
        }
    }
    None
}

/// Power of two choices over requests in flight. A due retry probe met on
/// the way is taken at once: a down server only comes back through a request.
pub(crate) fn least_requests(
    servers: &[Arc<Server>],
    attempt: &Attempt,
    clock: &mut LazyMs,
) -> Option<(usize, bool)> {
    let n = servers.len();
    if n == 1 {
        return scan_plain(servers, 0, attempt, clock);
    }
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    let first = scan_plain(servers, a, attempt, clock)?;
    if first.1 {
        return Some(first);
    }
    match scan_plain(servers, b, attempt, clock) {
        Some(second) if second.1 => Some(second),
        Some(second) if servers[second.0].in_flight() < servers[first.0].in_flight() => Some(second),
        _ => Some(first),
    }
}

/// splitmix64: a well-mixed 64-bit value from any input, for the policy
/// path's draws (per request, from the origin's counter; per key, from the
/// key's hash). The policy path does not touch fastrand: a second user of
/// its thread-local in this crate makes the compiler stop inlining it into
/// the plain least-requests path.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform draw in `[0, 1)` from 64 mixed bits.
#[inline]
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

// ---- origins with a traffic policy -----------------------------------------

/// What selection needs when an origin has a traffic policy (weights, slow
/// start, panic): origins without one take the plain functions above.
pub(crate) struct Policy<'a> {
    /// Effective weights, by server index.
    pub(crate) weights: &'a [u32],
    /// The smooth weighted round-robin cycle, unless the weights are equal.
    pub(crate) sequence: Option<&'a [u32]>,
    /// Slow-start window in ms (0: off).
    pub(crate) slow_start_ms: u64,
    /// In panic: every server not in maintenance is a candidate, whatever
    /// its health.
    pub(crate) panic: bool,
    /// This request's random bits (the origin's request counter, mixed).
    pub(crate) seed: u64,
}

/// What [`Policy::consider`] says of a server.
enum Verdict {
    /// It takes the request (`true`: as the L4 retry probe).
    Take(bool),
    /// It could, but its slow start declined this time: the choice if no
    /// other server takes the request.
    Ramping,
    No,
}

impl Policy<'_> {
    /// [`consider`] with weights (0: drained), panic and slow start. `key`:
    /// the consistent-hash key, which makes a ramping server's choice the
    /// same for the same key (its share of keys grows with the ramp).
    #[inline]
    fn consider(
        &self,
        servers: &[Arc<Server>],
        i: usize,
        attempt: &Attempt,
        clock: &mut LazyMs,
        key: Option<u64>,
    ) -> Verdict {
        let s = &servers[i];
        if self.weights[i] == 0 || (attempt.len != 0 && attempt.has_tried(s.id())) {
            return Verdict::No;
        }
        let probe = if self.panic {
            if s.maintenance() {
                return Verdict::No;
            }
            false
        } else {
            match s.admit(|| clock.get()) {
                Admit::Yes => false,
                Admit::Probe if s.claim_probe(clock.get()) => true,
                Admit::Probe | Admit::No => return Verdict::No,
            }
        };
        if self.slow_start_ms > 0 && !probe {
            let factor = self.ramp(s, clock);
            if factor < 1.0 {
                // The same key and server draw the same number (on every
                // node: the address, not a process-local id); a request
                // without a key draws from its own bits.
                let draw = unit(mix(key.unwrap_or(self.seed) ^ addr_seed(s.addr())));
                if draw >= factor {
                    return Verdict::Ramping;
                }
            }
        }
        Verdict::Take(probe)
    }

    /// The share of its weight `s` gets now (1 outside slow start).
    fn ramp(&self, s: &Server, clock: &mut LazyMs) -> f64 {
        let from = s.ramp_from_ms();
        if from == 0 {
            return 1.0;
        }
        let elapsed = clock.get().saturating_sub(from);
        if elapsed >= self.slow_start_ms {
            s.ramp_done(from);
            return 1.0;
        }
        crate::policy::slow_start_factor(
            std::time::Duration::from_millis(elapsed),
            std::time::Duration::from_millis(self.slow_start_ms),
        )
    }

    /// Scans `n` positions from `start` through `index` (a position to a
    /// server index): the first server that takes the request, and the
    /// first ramping one that declined (the choice if no other takes it).
    fn scan_by(
        &self,
        servers: &[Arc<Server>],
        n: usize,
        start: usize,
        index: &dyn Fn(usize) -> usize,
        attempt: &Attempt,
        clock: &mut LazyMs,
    ) -> (Option<(usize, bool)>, Option<usize>) {
        let mut ramping = None;
        let mut pos = start;
        for _ in 0..n {
            let i = index(pos);
            match self.consider(servers, i, attempt, clock, None) {
                Verdict::Take(probe) => return (Some((i, probe)), ramping),
                Verdict::Ramping => {
                    ramping.get_or_insert(i);
                }
                Verdict::No => {}
            }
            pos = pos.wrapping_add(1);
        }
        (None, ramping)
    }

    /// Weighted round robin: the server at `counter`'s place in the smooth
    /// cycle; if it is out, the next ones in the cycle, then (every server
    /// in the cycle's window out) the rest in list order. A ramping server
    /// that declines sends the request on from a random place in the
    /// cycle, so what it declines is spread over the others by their
    /// weights rather than handed to its neighbour. A ramping server is
    /// the choice only when no other can take the request.
    pub(crate) fn round_robin(
        &self,
        servers: &[Arc<Server>],
        counter: usize,
        attempt: &Attempt,
        clock: &mut LazyMs,
    ) -> Option<(usize, bool)> {
        let n = servers.len();
        let (len, steps) = match self.sequence {
            None => (n, n),
            Some([]) => return None,
            // A whole cycle visits every weighted server; bounded so an
            // outage costs O(servers), not O(cycle).
            Some(seq) => (seq.len(), seq.len().min(4 * n + 16)),
        };
        let index = |pos: usize| match self.sequence {
            Some(seq) => seq[pos % len] as usize,
            None => pos % n,
        };
        let start = counter % len;
        let mut ramping = None;
        let from = match self.consider(servers, index(start), attempt, clock, None) {
            Verdict::Take(probe) => return Some((index(start), probe)),
            Verdict::Ramping => {
                ramping = Some(index(start));
                (mix(self.seed ^ 0x9e37) % len as u64) as usize
            }
            Verdict::No => start + 1,
        };
        let (found, later) = self.scan_by(servers, steps, from, &index, attempt, clock);
        if let Some(found) = found {
            return Some(found);
        }
        ramping = ramping.or(later);
        if self.sequence.is_some() {
            let (found, later) = self.scan_by(servers, n, counter % n, &|i| i, attempt, clock);
            if let Some(found) = found {
                return Some(found);
            }
            ramping = ramping.or(later);
        }
        ramping.map(|i| (i, false))
    }

    /// Power of two choices over requests in flight per unit of weight. A
    /// ramping server takes part as often as its ramp draws say (its share
    /// of its weight), and is compared by its weight when it does: the ramp
    /// counts once.
    pub(crate) fn least_requests(
        &self,
        servers: &[Arc<Server>],
        attempt: &Attempt,
        clock: &mut LazyMs,
    ) -> Option<(usize, bool)> {
        let n = servers.len();
        let direct = |i: usize| i % n;
        let pick =
            |start: usize, clock: &mut LazyMs| self.scan_by(servers, n, start, &direct, attempt, clock);
        if n == 1 {
            let (found, ramping) = pick(0, clock);
            return found.or(ramping.map(|i| (i, false)));
        }
        let a = (mix(self.seed) % n as u64) as usize;
        let mut b = (mix(self.seed ^ 0x5555_5555) % (n as u64 - 1)) as usize;
        if b >= a {
            b += 1;
        }
        let (first, ramping) = pick(a, clock);
        let Some(first) = first else {
            return ramping.map(|i| (i, false));
        };
        if first.1 {
            return Some(first);
        }
        let Some(second) = pick(b, clock).0 else {
            return Some(first);
        };
        if second.1 {
            return Some(second);
        }
        let load = |i: usize| f64::from(servers[i].in_flight() + 1) / f64::from(self.weights[i]);
        if load(second.0) < load(first.0) { Some(second) } else { Some(first) }
    }
}

/// 64 bits from an address, the same on every node.
fn addr_seed(addr: std::net::SocketAddr) -> u64 {
    let (bytes, len) = addr_bytes(addr);
    xxh3_64(&bytes[..len])
}

/// Virtual nodes per server on the ring: enough for an even split (about
/// ±10% at 100) while a ring of 1 000 servers still fits in 800 KB.
const VNODES: u64 = 100;

/// Ring points a walk visits before falling back to a linear scan.
const WALK_LIMIT: usize = 4 * VNODES as usize;

/// A consistent-hash ring of `(point, server index)`, sorted by point.
/// Points depend only on server addresses, so every node and every restart
/// builds the same ring.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    points: Box<[(u64, u32)]>,
}

fn addr_bytes(addr: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let n = match addr.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            out[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    out[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
    (out, n + 2)
}

impl Ring {
    /// A ring with [`VNODES`] points per server, or, with `weights`, points
    /// in proportion to them (a weight of 0: none).
    pub(crate) fn build(servers: &[Arc<Server>], weights: Option<&[u32]>) -> Self {
        let vnodes = match weights {
            Some(w) => crate::policy::ring_vnodes(w, VNODES),
            None => vec![VNODES; servers.len()],
        };
        let mut points = Vec::with_capacity(vnodes.iter().sum::<u64>() as usize);
        for (i, s) in servers.iter().enumerate() {
            let (bytes, len) = addr_bytes(s.addr());
            for v in 0..vnodes[i] {
                points.push((xxh3_64_with_seed(&bytes[..len], v), i as u32));
            }
        }
        points.sort_unstable();
        Self { points: points.into() }
    }

    /// Walks clockwise from `hash` to the first server that can take the request.
    ///
    /// The walk is bounded by [`WALK_LIMIT`] points; past that (most servers
    /// out) it falls back to a linear scan from the key's home server, so a
    /// request costs O(limit + servers), not O(100 x servers), during an
    /// outage, and the choice stays deterministic per key.
    pub(crate) fn walk(
        &self,
        servers: &[Arc<Server>],
        hash: u64,
        attempt: &Attempt,
        clock: &mut LazyMs,
    ) -> Option<(usize, bool)> {
        self.walk_with(servers.len(), hash, |i| consider(&servers[i], attempt, clock))
    }

    /// [`Ring::walk`] under a traffic policy: weights, panic, slow start
    /// (a ramping server keeps the share of keys its ramp gives it).
    pub(crate) fn walk_policy(
        &self,
        policy: &Policy<'_>,
        servers: &[Arc<Server>],
        hash: u64,
        attempt: &Attempt,
        clock: &mut LazyMs,
    ) -> Option<(usize, bool)> {
        let mut ramping = None;
        let found = self.walk_with(servers.len(), hash, |i| {
            match policy.consider(servers, i, attempt, clock, Some(hash)) {
                Verdict::Take(probe) => Some(probe),
                Verdict::Ramping => {
                    ramping.get_or_insert(i);
                    None
                }
                Verdict::No => None,
            }
        });
        found.or(ramping.map(|i| (i, false)))
    }

    fn walk_with(
        &self,
        n: usize,
        hash: u64,
        mut accept: impl FnMut(usize) -> Option<bool>,
    ) -> Option<(usize, bool)> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|p| p.0 < hash) % len;
        let mut i = start;
        let mut last = u32::MAX;
        for _ in 0..len.min(WALK_LIMIT) {
            let idx = self.points[i].1;
            if idx != last {
                if let Some(probe) = accept(idx as usize) {
                    return Some((idx as usize, probe));
                }
                last = idx;
            }
            i += 1;
            if i == len {
                i = 0;
            }
        }
        if len <= WALK_LIMIT {
            return None; // the whole ring was walked
        }
        scan(n, self.points[start].1 as usize, accept)
    }
}
