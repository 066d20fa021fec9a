//! An origin (`host:port`) and its current server set.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;

use crate::event::Event;
use crate::policy::OriginPolicy;
use crate::select::{self, Attempt, LazyMs, LbPolicy, Pick, Ring};
use crate::server::{Hub, OriginHealth, Server};
use crate::{CheckResult, L7Flip, L7Policy, OriginKey, SelectError};

/// Where an origin's servers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSource {
    /// A fixed list of `ip:port` (SPEC: `servers = [...]`).
    Static(Vec<SocketAddr>),
    /// The origin's host name resolved through DNS, TTL honoured, the last
    /// answer kept when DNS fails. Each address gets the origin's port.
    Dns,
}

/// One origin as the config describes it; the input to [`HostDb::apply`](crate::HostDb::apply).
#[derive(Debug, Clone, PartialEq)]
pub struct OriginSpec {
    /// The origin's key.
    pub key: OriginKey,
    /// Where its servers come from.
    pub servers: ServerSource,
    /// How requests are spread over them.
    pub lb: LbPolicy,
    /// The L7 hysteresis when a health check matches this origin; `None`
    /// leaves its servers `unchecked` (L4 status only).
    pub check: Option<L7Policy>,
    /// Weights, slow start, panic threshold, outlier detection (all off by
    /// default).
    pub policy: OriginPolicy,
}

impl OriginSpec {
    /// An origin with a static server list, round robin, no health check.
    pub fn with_servers(key: OriginKey, servers: Vec<SocketAddr>) -> Self {
        Self {
            key,
            servers: ServerSource::Static(servers),
            lb: LbPolicy::RoundRobin,
            check: None,
            policy: OriginPolicy::default(),
        }
    }

    /// An origin resolved through DNS, round robin, no health check.
    pub fn with_dns(key: OriginKey) -> Self {
        Self {
            key,
            servers: ServerSource::Dns,
            lb: LbPolicy::RoundRobin,
            check: None,
            policy: OriginPolicy::default(),
        }
    }
}

/// Everything that must change together, under one swap: the server list,
/// the ring built from it, and the policies that judge it.
#[derive(Debug)]
// In C order, what a pick reads first: the servers, the policy, and of a
// traffic policy its scalars then its table, so a weighted pick reads
// about the same one or two cache lines a plain one does (in Rust's own
// order the table came first and a weighted pick spanned four).
#[repr(C)]
pub(crate) struct OriginState {
    pub(crate) servers: Arc<[Arc<Server>]>,
    pub(crate) lb: LbPolicy,
    /// What selection uses: `None` when the origin has no traffic policy
    /// (the plain, fastest path).
    traffic: Option<Traffic>,
    ring: Option<Ring>,
    pub(crate) check: Option<L7Policy>,
    pub(crate) dns: bool,
    /// The policy as configured (weights before run-time changes).
    pub(crate) policy: Arc<OriginPolicy>,
}

/// An origin's traffic policy compiled for selection; the scalars a pick
/// reads first, the table last (see [`OriginState`]).
#[derive(Debug)]
#[repr(C)]
struct Traffic {
    /// Whether the cycle is there (weights not all equal).
    cycle: bool,
    panic: Option<u8>,
    /// Servers: the weights are `table[..servers]`.
    servers: u32,
    slow_start_ms: u64,
    /// The weights by server index, then the smooth weighted round-robin
    /// cycle: one table, inside the state itself when small (most
    /// origins), so a pick touches no memory the plain path does not.
    table: Table,
}

/// Entries a [`Table`] holds inline: three servers with weights up to 1:2:3
/// and their cycle, and a little more.
const INLINE_TABLE: usize = 28;

#[derive(Debug)]
enum Table {
    Inline { len: u8, data: [u32; INLINE_TABLE] },
    Heap(Box<[u32]>),
}

impl Table {
    fn new(entries: Vec<u32>) -> Self {
        if entries.len() <= INLINE_TABLE {
            let mut data = [0; INLINE_TABLE];
            data[..entries.len()].copy_from_slice(&entries);
            Self::Inline { len: entries.len() as u8, data }
        } else {
            Self::Heap(entries.into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Self::Inline { len, data } => &data[..usize::from(*len)],
            Self::Heap(b) => b,
        }
    }
}

impl Traffic {
    fn weights(&self) -> &[u32] {
        &self.table.as_slice()[..self.servers as usize]
    }

    fn sequence(&self) -> Option<&[u32]> {
        self.cycle.then(|| &self.table.as_slice()[self.servers as usize..])
    }

    /// Round robin's first choice for the `n`-th request: the server at
    /// `n`'s place in the cycle (which holds only servers of weight > 0),
    /// or without a cycle the `n`-th in list order unless drained.
    #[inline]
    fn first_choice(&self, n: usize) -> Option<usize> {
        let table = self.table.as_slice();
        if self.cycle {
            let seq = &table[self.servers as usize..];
            (!seq.is_empty()).then(|| seq[n % seq.len()] as usize)
        } else {
            let i = n % self.servers as usize;
            (table[i] != 0).then_some(i)
        }
    }
}

/// What DNS last did for an origin.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsStatus {
    /// When the last good answer arrived.
    pub resolved_at: Option<Instant>,
    /// That answer's TTL (before clamping).
    pub ttl: Option<Duration>,
    /// The current error, while lookups fail (the last answer stays in use).
    pub error: Option<String>,
    /// When the current run of failures began.
    pub failing_since: Option<Instant>,
    /// When the next lookup is due.
    pub next_refresh: Option<Instant>,
}

const NEVER: u64 = u64::MAX;

/// An origin: its key, its servers and their records, and the bookkeeping the
/// request path and the checker share (last request, checking).
///
/// Held as `Arc<Origin>`; a reload that keeps the origin keeps this object,
/// so its servers keep their status.
pub struct Origin {
    key: OriginKey,
    hub: Arc<Hub>,
    state: ArcSwap<OriginState>,
    rr: AtomicUsize,
    last_request_ms: AtomicU64,
    checking: AtomicBool,
    pub(crate) dns: ArcSwapOption<DnsStatus>,
    /// Serializes writers of `state` (apply and DNS refresh); readers never take it.
    writer: Mutex<()>,
    pub(crate) dns_task: Mutex<Option<tokio::task::AbortHandle>>,
    pub(crate) ready: tokio::sync::watch::Sender<bool>,
    /// Shared with the servers: their routability changes.
    health: Arc<OriginHealth>,
    /// The panic verdict (bit 0) and the `health.version` it was made at
    /// (the rest), one word; and when it was last counted (ms).
    panic: AtomicU64,
    panic_checked_ms: AtomicU64,
    /// Weights set at run time (`POST /weight`), until the next apply.
    weight_overrides: Mutex<HashMap<SocketAddr, u32>>,
    /// Whether outlier detection is on (so a response costs nothing when off).
    outlier_on: AtomicBool,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.load();
        f.debug_struct("Origin")
            .field("key", &self.key)
            .field("servers", &st.servers.iter().map(|s| s.addr()).collect::<Vec<_>>())
            .field("lb", &st.lb)
            .finish()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(task) = self.dns_task.get_mut().take() {
            task.abort();
        }
    }
}

impl Origin {
    pub(crate) fn new(spec: &OriginSpec, hub: Arc<Hub>) -> Self {
        let dns = spec.servers == ServerSource::Dns;
        let origin = Self {
            key: spec.key.clone(),
            hub,
            state: ArcSwap::from_pointee(OriginState {
                servers: Arc::from(Vec::new()),
                ring: None,
                lb: spec.lb,
                check: spec.check,
                dns,
                policy: Arc::default(),
                traffic: None,
            }),
            rr: AtomicUsize::new(0),
            last_request_ms: AtomicU64::new(NEVER),
            checking: AtomicBool::new(false),
            dns: ArcSwapOption::empty(),
            writer: Mutex::new(()),
            dns_task: Mutex::new(None),
            ready: tokio::sync::watch::Sender::new(!dns),
            health: Arc::default(),
            panic: AtomicU64::new(u64::MAX << 1),
            panic_checked_ms: AtomicU64::new(0),
            weight_overrides: Mutex::new(HashMap::new()),
            outlier_on: AtomicBool::new(false),
        };
        origin.reconfigure(spec);
        origin
    }

    /// The origin's key.
    pub fn key(&self) -> &OriginKey {
        &self.key
    }

    /// The current servers (a cheap reference-counted copy of the list).
    pub fn servers(&self) -> Arc<[Arc<Server>]> {
        Arc::clone(&self.state.load().servers)
    }

    /// The server at `addr`, if it belongs to this origin now.
    pub fn server(&self, addr: SocketAddr) -> Option<Arc<Server>> {
        self.state.load().servers.iter().find(|s| s.addr() == addr).cloned()
    }

    /// The load-balancing policy.
    pub fn lb(&self) -> LbPolicy {
        self.state.load().lb
    }

    /// The health-check hysteresis, when a check matches this origin.
    pub fn check_policy(&self) -> Option<L7Policy> {
        self.state.load().check
    }

    /// Whether the servers come from DNS.
    pub fn uses_dns(&self) -> bool {
        self.state.load().dns
    }

    /// What DNS last did, for DNS origins.
    pub fn dns_status(&self) -> Option<DnsStatus> {
        self.dns.load_full().map(|d| (*d).clone())
    }

    /// Waits until the origin has servers to offer or DNS has answered at
    /// least once (with an error or not). Returns at once for static origins.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        // `wait_for` only fails when the sender is gone, and `self` holds it.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    // ---- request path --------------------------------------------------

    /// Picks a server for one request at `now` (see [`HostDb::select`](crate::HostDb::select)).
    pub fn select(&self, attempt: &mut Attempt, now: Instant) -> Result<Pick, SelectError> {
        let state = self.state.load();
        let servers = &*state.servers;
        if servers.is_empty() {
            return Err(SelectError::NoServers);
        }
        let mut clock = LazyMs::new(self.hub.epoch, now);
        if let Some(traffic) = &state.traffic {
            return self.select_traffic(&state, traffic, attempt, &mut clock, now);
        }
        let found = match (state.lb, &state.ring, attempt.hash()) {
            (LbPolicy::LeastRequests, ..) => select::least_requests(servers, attempt, &mut clock),
            (LbPolicy::ConsistentHash, Some(ring), Some(hash)) => {
                ring.walk(servers, hash, attempt, &mut clock)
            }
            _ => {
                // A plain load and store, not a `fetch_add`: a lock-prefixed
                // RMW costs ~20 cycles per request. Under contention two
                // requests may read the same value and pick the same server;
                // the split stays even on average (what per-worker counters
                // in nginx and Envoy give too), and no request is refused.
                let n = self.rr.load(Ordering::Relaxed);
                self.rr.store(n.wrapping_add(1), Ordering::Relaxed);
                select::round_robin(servers, n, attempt, &mut clock)
            }
        };
        self.picked(servers, found, attempt, now)
    }

    /// What a selection found, as [`Origin::select`] answers it. Always
    /// inlined: called out of line it costs the plain path ~30 instructions.
    #[inline(always)]
    fn picked(
        &self,
        servers: &[Arc<Server>],
        found: Option<(usize, bool)>,
        attempt: &mut Attempt,
        now: Instant,
    ) -> Result<Pick, SelectError> {
        match found {
            Some((i, probe)) => Ok(Pick::new(&servers[i], probe, attempt)),
            None if attempt.tried() > 0 => Err(SelectError::Exhausted),
            None => Err(SelectError::NoneRoutable { retry_after: self.retry_after(servers, now) }),
        }
    }

    /// [`Origin::select`] for an origin with a traffic policy. Out of line
    /// (inlined, its registers cost the plain path a few instructions), and
    /// small: the usual case is answered here, the rest in
    /// [`Origin::select_policy`].
    #[inline(never)]
    fn select_traffic(
        &self,
        state: &OriginState,
        traffic: &Traffic,
        attempt: &mut Attempt,
        clock: &mut LazyMs,
        now: Instant,
    ) -> Result<Pick, SelectError> {
        let servers = &*state.servers;
        // One counter for the order (round robin) and the draws (the rest).
        let n = self.rr.load(Ordering::Relaxed);
        self.rr.store(n.wrapping_add(1), Ordering::Relaxed);
        // The usual case: round robin, not in panic, and the server at the
        // counter's place in the cycle takes the request at full weight.
        // Anything else (that server out or ramping up, a panic verdict to
        // count again) goes the general way, which starts from the same place.
        if state.lb == LbPolicy::RoundRobin
            && let Some(i) = traffic.first_choice(n)
            && (traffic.panic.is_none() || self.panic_settled_off())
            && let Some(probe) = select::consider(&servers[i], attempt, clock)
            && (probe || traffic.slow_start_ms == 0 || servers[i].ramp_from_ms() == 0)
        {
            return Ok(Pick::new(&servers[i], probe, attempt));
        }
        self.select_policy(state, traffic, n, attempt, clock, now)
    }

    /// The general traffic-policy selection (weights, slow start, panic).
    #[inline(never)]
    fn select_policy(
        &self,
        state: &OriginState,
        traffic: &Traffic,
        n: usize,
        attempt: &mut Attempt,
        clock: &mut LazyMs,
        now: Instant,
    ) -> Result<Pick, SelectError> {
        let servers = &*state.servers;
        let policy = select::Policy {
            weights: traffic.weights(),
            sequence: traffic.sequence(),
            slow_start_ms: traffic.slow_start_ms,
            panic: traffic.panic.is_some_and(|t| self.in_panic(servers, traffic.weights(), t, clock)),
            seed: n as u64,
        };
        let found = match (state.lb, &state.ring, attempt.hash()) {
            (LbPolicy::LeastRequests, ..) => policy.least_requests(servers, attempt, clock),
            (LbPolicy::ConsistentHash, Some(ring), Some(hash)) => {
                ring.walk_policy(&policy, servers, hash, attempt, clock)
            }
            _ => policy.round_robin(servers, n, attempt, clock),
        };
        self.picked(servers, found, attempt, now)
    }

    /// Whether the origin is in panic (fewer than `threshold` percent of its
    /// servers that could take traffic, not in maintenance and not drained
    /// by a weight of 0, are routable). Counted again only after a server's
    /// routability or the origin's state changed, and every second while in
    /// panic (an ejection that ran out changes nothing until a request
    /// notices it). The verdict and the version it was made at are one
    /// word, so a slower thread cannot stamp a stale verdict as current; a
    /// change of verdict is an event (logged once) from the thread that
    /// made it.
    fn in_panic(&self, servers: &[Arc<Server>], weights: &[u32], threshold: u8, clock: &mut LazyMs) -> bool {
        let version = self.health.version.load(Ordering::Acquire);
        let cur = self.panic.load(Ordering::Acquire);
        let (cur_version, was) = (cur >> 1, cur & 1 == 1);
        if cur_version == version & (u64::MAX >> 1)
            && (!was || clock.get().saturating_sub(self.panic_checked_ms.load(Ordering::Relaxed)) < 1_000)
        {
            return was;
        }
        let now_ms = clock.get();
        let (mut total, mut routable) = (0, 0);
        for (s, &w) in servers.iter().zip(weights) {
            if w == 0 || s.maintenance() {
                continue;
            }
            total += 1;
            if s.admit_at(now_ms) == crate::server::Admit::Yes {
                routable += 1;
            }
        }
        let on = crate::policy::panics(routable, total, threshold);
        // Re-read: counting may have ended an ejection (a new version).
        let version = self.health.version.load(Ordering::Acquire);
        let next = (version << 1) | u64::from(on);
        self.panic_checked_ms.store(now_ms, Ordering::Relaxed);
        if self.panic.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire).is_ok() && was != on {
            self.hub.subscribers.emit(Event::Panic { origin: self.key.clone(), on, routable, total });
        }
        on
    }

    /// Whether the panic verdict is "off" and current (nothing changed since
    /// it was counted): the request path may skip [`Origin::in_panic`].
    #[inline]
    fn panic_settled_off(&self) -> bool {
        let cur = self.panic.load(Ordering::Acquire);
        cur & 1 == 0 && cur >> 1 == self.health.version.load(Ordering::Acquire) & (u64::MAX >> 1)
    }

    /// Whether the origin is in panic now (as of the last time it was counted).
    pub fn panicking(&self) -> bool {
        self.state.load().traffic.as_ref().is_some_and(|t| t.panic.is_some())
            && self.panic.load(Ordering::Acquire) & 1 == 1
    }

    /// The weights in force, by server (configured, or set at run time).
    pub fn weights(&self) -> Vec<(SocketAddr, u32)> {
        let state = self.state.load();
        state
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let w = state.traffic.as_ref().map_or(crate::policy::DEFAULT_WEIGHT, |t| t.weights()[i]);
                (s.addr(), w)
            })
            .collect()
    }

    /// The weight `server` was given at run time ([`Origin::set_weight`]),
    /// if any since the last apply.
    pub fn weight_override(&self, server: SocketAddr) -> Option<u32> {
        self.weight_overrides.lock().get(&server).copied()
    }

    /// The origin's traffic policy as configured.
    pub fn policy(&self) -> Arc<OriginPolicy> {
        Arc::clone(&self.state.load().policy)
    }

    /// Sets `server`'s weight (0 to [`MAX_WEIGHT`](crate::policy::MAX_WEIGHT);
    /// 0 drains it) until the next apply. Returns the weight it had.
    ///
    /// # Errors
    /// The server is not in this origin, or the weight is out of range.
    pub fn set_weight(&self, server: SocketAddr, weight: u32) -> Result<u32, String> {
        if weight > crate::policy::MAX_WEIGHT {
            return Err(format!("weight must be from 0 to {}, not {weight}", crate::policy::MAX_WEIGHT));
        }
        let _w = self.writer.lock();
        let cur = self.state.load_full();
        let Some(i) = cur.servers.iter().position(|s| s.addr() == server) else {
            return Err(format!("{server} is not a server of {}", self.key));
        };
        let old = cur.traffic.as_ref().map_or(crate::policy::DEFAULT_WEIGHT, |t| t.weights()[i]);
        self.weight_overrides.lock().insert(server, weight);
        self.swap(&cur, None, cur.lb, cur.check, cur.dns, Arc::clone(&cur.policy));
        if old == 0 && weight > 0 {
            // Back from a drain: as after maintenance, a slow start.
            cur.servers[i].start_ramp(self.hub.epoch.ms(tokio::time::Instant::now().into_std()));
        }
        Ok(old)
    }

    /// Reports a user request's response `status` from `server`, for outlier
    /// detection: a run of failing answers ejects it (see
    /// [`OutlierPolicy`](crate::policy::OutlierPolicy)). Costs one relaxed
    /// load when the origin does not detect outliers.
    #[inline]
    pub fn report_response(&self, server: &Server, status: u16, now: Instant) {
        if self.outlier_on.load(Ordering::Relaxed) {
            self.outlier_response(server, status, now);
        }
    }

    #[inline(never)]
    fn outlier_response(&self, server: &Server, status: u16, now: Instant) {
        let state = self.state.load();
        let Some(policy) = state.policy.outlier else { return };
        let run = server.outlier_response(policy.counts(status));
        if run < policy.consecutive.max(1) || server.is_ejected(now) {
            return;
        }
        // The cap, and never the last server that could take requests.
        let weight = |i: usize| state.traffic.as_ref().map_or(1, |t| t.weights()[i]);
        let (mut ejected, mut others) = (0, 0);
        for (i, s) in state.servers.iter().enumerate() {
            if s.is_ejected(now) {
                ejected += 1;
            } else if !std::ptr::eq(&**s, server) && weight(i) > 0 && s.is_routable(now) {
                others += 1;
            }
        }
        if others == 0 || !crate::policy::may_eject(ejected, state.servers.len(), policy.max_percent) {
            return;
        }
        let time = crate::policy::ejection_time(&policy, server.ejection_count() + 1);
        let now_ms = self.hub.epoch.ms(now);
        server.eject(now_ms + crate::time::ceil_ms(time), now_ms);
    }

    /// The server answered a user request with `vigil-health: down` or
    /// `drain` (`detail` says which): see [`Server::signal_unhealthy`].
    pub fn signal_unhealthy(&self, server: &Server, detail: &str, now: Instant) -> Option<L7Flip> {
        self.state.load().check?;
        server.signal_unhealthy(&CheckResult::fail(detail, Duration::ZERO), now)
    }

    /// The soonest an L4-down server (not otherwise out) may be retried.
    fn retry_after(&self, servers: &[Arc<Server>], now: Instant) -> Option<Duration> {
        servers
            .iter()
            .filter(|s| !s.maintenance() && s.l7_state().is_routable())
            .filter_map(|s| s.l4_down_for(now))
            .min()
    }

    /// Notes a user request for this origin at `now` (for `idle_after` and the
    /// admin view). One relaxed load, and a store at most once a millisecond.
    #[inline]
    pub fn touch(&self, now: Instant) {
        let ms = self.hub.epoch.ms(now);
        if self.last_request_ms.load(Ordering::Relaxed) != ms {
            self.last_request_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Time since the last [`Origin::touch`], `None` if never touched.
    pub fn last_request_ago(&self, now: Instant) -> Option<Duration> {
        match self.last_request_ms.load(Ordering::Relaxed) {
            NEVER => None,
            ms => Some(now.saturating_duration_since(self.hub.epoch.instant(ms))),
        }
    }

    /// Whether active checks are running for this origin (set by the checker).
    pub fn is_checking(&self) -> bool {
        self.checking.load(Ordering::Relaxed)
    }

    /// Marks checks as running or stopped. Returns the previous value.
    pub fn set_checking(&self, on: bool) -> bool {
        self.checking.swap(on, Ordering::AcqRel)
    }

    /// Records a local check result for `server` under this origin's current
    /// check policy. `None` (and nothing recorded) when the origin has no check.
    pub fn record_check(&self, server: &Server, result: &CheckResult, now: Instant) -> Option<L7Flip> {
        let policy = self.state.load().check?;
        server.record_check(result, &policy, now)
    }

    /// [`Origin::record_check`] for a check sent to another port of
    /// `server` ([`Server::record_check_on_other_port`]: L4 state untouched).
    pub fn record_check_on_other_port(
        &self,
        server: &Server,
        result: &CheckResult,
        now: Instant,
    ) -> Option<L7Flip> {
        let policy = self.state.load().check?;
        server.record_check_on_other_port(result, &policy, now)
    }

    // ---- writers (config apply, DNS) -----------------------------------

    pub(crate) fn hub_emit(&self, event: Event) {
        self.hub.subscribers.emit(event);
    }

    /// Applies a spec to this origin. Servers whose address stays keep their
    /// record. Returns whether the server list changed.
    pub(crate) fn reconfigure(&self, spec: &OriginSpec) -> bool {
        let _w = self.writer.lock();
        let cur = self.state.load_full();
        // An apply (a reload) sets the configured weights again.
        self.weight_overrides.lock().clear();
        let policy = Arc::new(spec.policy.clone());
        self.outlier_on.store(policy.outlier.is_some(), Ordering::Relaxed);
        let addrs: Vec<SocketAddr> = match &spec.servers {
            ServerSource::Static(list) => list.clone(),
            // Switching to DNS keeps the current servers until DNS answers.
            ServerSource::Dns if cur.dns => {
                return self.swap(&cur, None, spec.lb, spec.check, true, policy);
            }
            ServerSource::Dns => cur.servers.iter().map(|s| s.addr()).collect(),
        };
        let dns = spec.servers == ServerSource::Dns;
        self.swap(&cur, Some(&addrs), spec.lb, spec.check, dns, policy)
    }

    /// Installs a DNS answer. Returns whether the server list changed.
    pub(crate) fn set_resolved(&self, addrs: &[SocketAddr]) -> bool {
        let _w = self.writer.lock();
        let cur = self.state.load_full();
        if !cur.dns {
            return false; // reconfigured to a static list meanwhile
        }
        self.swap(&cur, Some(addrs), cur.lb, cur.check, true, Arc::clone(&cur.policy))
    }

    /// Called with `writer` held. Builds and publishes the next state.
    fn swap(
        &self,
        cur: &OriginState,
        addrs: Option<&[SocketAddr]>,
        lb: LbPolicy,
        check: Option<L7Policy>,
        dns: bool,
        policy: Arc<OriginPolicy>,
    ) -> bool {
        let checked = check.is_some();
        let check_toggled = cur.check.is_some() != checked;
        let (servers, added, removed) = match addrs {
            None => (Arc::clone(&cur.servers), vec![], vec![]),
            Some(addrs) => self.merge(&cur.servers, addrs, checked),
        };
        if check_toggled {
            for s in servers.iter().filter(|s| !added.contains(&s.addr())) {
                s.reset_l7(checked);
            }
        }
        let list_changed = !added.is_empty() || !removed.is_empty();
        if !removed.is_empty() {
            // A run-time weight goes with its server.
            self.weight_overrides.lock().retain(|a, _| !removed.contains(a));
        }
        if policy.outlier.is_none() && cur.policy.outlier.is_some() {
            let now_ms = self.hub.epoch.ms(tokio::time::Instant::now().into_std());
            for s in servers.iter() {
                s.clear_outlier(now_ms);
            }
        }
        let traffic = self.traffic(&servers, &policy);
        // Rebuilt on every swap: swaps are rare (apply, DNS change, a weight
        // set) and a ring of 1 000 servers builds in well under a millisecond.
        let ring = (lb == LbPolicy::ConsistentHash)
            .then(|| Ring::build(&servers, traffic.as_ref().map(Traffic::weights)));
        self.state.store(Arc::new(OriginState { servers, ring, lb, check, dns, policy, traffic }));
        // Any new state may change the panic verdict (a threshold, a weight).
        self.health.version.fetch_add(1, Ordering::Release);
        if list_changed {
            self.hub.subscribers.emit(Event::Servers { origin: self.key.clone(), added, removed });
        }
        list_changed
    }

    /// The traffic policy compiled for `servers`: `None` when it changes
    /// nothing (equal weights, no slow start, no panic threshold), so such an
    /// origin selects on the plain path.
    fn traffic(&self, servers: &[Arc<Server>], policy: &OriginPolicy) -> Option<Traffic> {
        let overrides = self.weight_overrides.lock();
        let weights: Vec<u32> = servers
            .iter()
            .map(|s| overrides.get(&s.addr()).copied().unwrap_or_else(|| policy.weight_of(s.addr())))
            .collect();
        let sequence = crate::policy::wrr_sequence(&weights);
        let slow_start_ms = policy.slow_start.map_or(0, crate::time::ceil_ms);
        if sequence.is_none() && slow_start_ms == 0 && policy.panic_threshold.is_none() {
            return None;
        }
        let (n, cycle) = (weights.len(), sequence.is_some());
        let mut table = weights;
        table.extend(sequence.iter().flat_map(|s| s.iter().copied()));
        Some(Traffic {
            table: Table::new(table),
            // No origin has 2^32 servers (their records alone would not fit).
            servers: u32::try_from(n).unwrap_or(u32::MAX),
            cycle,
            slow_start_ms,
            panic: policy.panic_threshold,
        })
    }

    /// The new list in the order given, reusing records for addresses that stay.
    fn merge(
        &self,
        old: &[Arc<Server>],
        addrs: &[SocketAddr],
        checked: bool,
    ) -> (Arc<[Arc<Server>]>, Vec<SocketAddr>, Vec<SocketAddr>) {
        let by_addr: HashMap<SocketAddr, &Arc<Server>> = old.iter().map(|s| (s.addr(), s)).collect();
        // A server joining a running origin starts its slow start (one in
        // the first list, or the first DNS answer, does not).
        let joined_ms = (!old.is_empty()).then(|| self.hub.epoch.ms(tokio::time::Instant::now().into_std()));
        let mut added = Vec::new();
        let mut seen = HashMap::with_capacity(addrs.len());
        let mut servers = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            if seen.insert(addr, ()).is_some() {
                continue; // a duplicate address is one server
            }
            match by_addr.get(&addr) {
                Some(s) => servers.push(Arc::clone(s)),
                None => {
                    added.push(addr);
                    let server = Server::new(
                        self.key.clone(),
                        addr,
                        Arc::clone(&self.hub),
                        Arc::clone(&self.health),
                        checked,
                    );
                    if let Some(ms) = joined_ms {
                        server.start_ramp(ms);
                    }
                    servers.push(Arc::new(server));
                }
            }
        }
        let removed = old.iter().map(|s| s.addr()).filter(|a| !seen.contains_key(a)).collect();
        (servers.into(), added, removed)
    }
}
