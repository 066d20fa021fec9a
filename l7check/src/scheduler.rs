//! The lazy scheduler: checks start with the first user request for an
//! origin, run every `interval` (± jitter) per server, every
//! `unhealthy_interval` while a server is unhealthy, and stop after
//! `idle_after` without a request.
//!
//! Time is tokio's: tests drive it with paused time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::probe::OriginUpstream;
use parking_lot::RwLock;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use vigil_hostdb::{CheckResult, HostDb, L7State, Origin, OriginKey};

use crate::probe::{Probe, ProbeRequest};
use crate::{Check, HealthChecks};

/// Checker options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckerOptions {
    /// Checks in flight at once, over all origins; more wait their turn.
    ///
    /// A check's timeout starts when it gets its turn, so this bound turns
    /// overload into delay instead of timeouts (false failures). Measured
    /// with `check-scale` on a 2-core machine at 10 000 checks/s, 9 000
    /// servers, cold start: 4 096 and 1 024 in flight gave first-round
    /// timeouts, 512 and 256 none.
    pub max_in_flight: usize,
}

impl Default for CheckerOptions {
    /// 256 in flight: half the highest bound measured clean (see above).
    fn default() -> Self {
        Self { max_in_flight: 256 }
    }
}

/// Called with every check result, and the check that gave it (for
/// per-server metrics by kind).
pub type ResultHook = Arc<dyn Fn(&OriginKey, SocketAddr, &Check, &CheckResult) + Send + Sync>;

/// Asked before each check whether this node should send it (a cluster
/// member answers no for servers another node checks).
pub type CheckFilter = Arc<dyn Fn(&OriginKey, SocketAddr) -> bool + Send + Sync>;

/// Totals since start.
#[derive(Debug, Default)]
pub struct CheckerMetrics {
    passed: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    origins_started: AtomicU64,
    left_to_others: AtomicU64,
}

impl CheckerMetrics {
    /// Checks that passed.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }
    /// Checks that failed.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Checks running now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Times an origin's checks were started by a touch.
    pub fn origins_started(&self) -> u64 {
        self.origins_started.load(Ordering::Relaxed)
    }
    /// Checks not sent because the [`CheckFilter`] left them to another node.
    pub fn left_to_others(&self) -> u64 {
        self.left_to_others.load(Ordering::Relaxed)
    }
}

struct Inner {
    db: HostDb,
    probe: Arc<dyn Probe>,
    config: RwLock<Arc<HealthChecks>>,
    upstreams: RwLock<Arc<HashMap<OriginKey, OriginUpstream>>>,
    limit: Arc<Semaphore>,
    metrics: CheckerMetrics,
    hook: RwLock<Option<ResultHook>>,
    filter: RwLock<Option<CheckFilter>>,
}

/// The L7 checker: lazy per-origin schedules sending [`Probe`]s and
/// recording the results in HostDB.
///
/// It changes health only through HostDB's API: `Origin::record_check`
/// (hysteresis, flip events and logs are HostDB's), and
/// `Server::report_l4_failure` for connect failures and resets.
#[derive(Clone)]
pub struct Checker {
    inner: Arc<Inner>,
}

impl fmt::Debug for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker").field("checks", &self.inner.config.read().checks.len()).finish()
    }
}

impl Checker {
    /// A checker over `db`, probing with `probe`, configured by `config`.
    /// Nothing is checked until [`Checker::touch`].
    pub fn new(db: HostDb, probe: Arc<dyn Probe>, config: HealthChecks, options: CheckerOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                probe,
                config: RwLock::new(Arc::new(config)),
                upstreams: RwLock::default(),
                limit: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
                metrics: CheckerMetrics::default(),
                hook: RwLock::new(None),
                filter: RwLock::new(None),
            }),
        }
    }

    /// Replaces the health-check file (reload). Running schedules pick the
    /// new checks up at their next step; an origin that lost its check stops.
    pub fn set_config(&self, config: HealthChecks) {
        *self.inner.config.write() = Arc::new(config);
    }

    /// The health-check file in force.
    pub fn config(&self) -> Arc<HealthChecks> {
        Arc::clone(&self.inner.config.read())
    }

    /// Sets how each origin's servers are reached (the protocol, the
    /// connector profile, TLS or not); an origin not in the map: plain
    /// HTTP/1.1. A check follows its origin's scheme: the health-check file
    /// needs no key for TLS.
    pub fn set_upstreams(&self, upstreams: HashMap<OriginKey, OriginUpstream>) {
        *self.inner.upstreams.write() = Arc::new(upstreams);
    }

    /// Calls `hook` with every result.
    pub fn on_result(&self, hook: ResultHook) {
        *self.inner.hook.write() = Some(hook);
    }

    /// Asks `filter` before each check; a server it says no to is not
    /// checked this time and asked about again one `interval` later, so a
    /// server this node takes over is checked within an interval.
    pub fn set_filter(&self, filter: Option<CheckFilter>) {
        *self.inner.filter.write() = filter;
    }

    /// The counters.
    pub fn metrics(&self) -> &CheckerMetrics {
        &self.inner.metrics
    }

    /// The request path's call: notes a user request for `origin` at `now`
    /// and starts its checks if they are not running. While they run this
    /// is one atomic load (and a store at most once a millisecond).
    /// Origins without a check (HostDB says `check_policy() == None`) are
    /// never started.
    #[inline]
    pub fn touch(&self, origin: &Arc<Origin>, now: std::time::Instant) {
        origin.touch(now);
        if !origin.is_checking() {
            self.start(origin);
        }
    }

    #[cold]
    fn start(&self, origin: &Arc<Origin>) {
        if origin.check_policy().is_none() || self.inner.config.read().matching(origin.key()).is_none() {
            return;
        }
        if origin.set_checking(true) {
            return; // another request started it first
        }
        self.inner.metrics.origins_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(origin = %origin.key(), "health checks started");
        tokio::spawn(run_origin(Arc::downgrade(&self.inner), Arc::clone(origin)));
    }
}

/// One server's place in its origin's schedule.
struct Slot {
    /// When the next check starts; `None` while one is in flight.
    at: Option<Instant>,
    /// Matches the heap entry that is current (older entries are stale).
    seq: u64,
    /// Checks started so far (for `fresh_connect_every`).
    count: u64,
}

/// The due times of one origin's servers: a min-heap with lazy deletion,
/// so finding the next due server is O(log n), whatever the origin's size.
#[derive(Default)]
struct Schedule {
    slots: HashMap<SocketAddr, Slot>,
    heap: BinaryHeap<Reverse<(Instant, u64, SocketAddr)>>,
    servers: HashMap<SocketAddr, Arc<vigil_hostdb::Server>>,
    list: Option<Arc<[Arc<vigil_hostdb::Server>]>>,
    seq: u64,
}

impl Schedule {
    /// Follows the origin's server list (a pointer compare when unchanged).
    /// New servers are staggered, never all at once (HAProxy's
    /// start_checks does the same): server k of n starts k/n of an interval
    /// in, after this origin's own random offset within the jitter window.
    fn sync(
        &mut self,
        list: &Arc<[Arc<vigil_hostdb::Server>]>,
        now: Instant,
        offset: Duration,
        interval: Duration,
    ) {
        if self.list.as_ref().is_some_and(|l| Arc::ptr_eq(l, list)) {
            return;
        }
        self.servers = list.iter().map(|s| (s.addr(), Arc::clone(s))).collect();
        self.slots.retain(|addr, _| self.servers.contains_key(addr));
        let n = list.len().max(1) as u32;
        for (k, server) in list.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(e) = self.slots.entry(server.addr()) {
                e.insert(Slot { at: None, seq: 0, count: 0 });
                self.set(server.addr(), now + offset + interval * k as u32 / n);
            }
        }
        self.list = Some(Arc::clone(list));
    }

    fn set(&mut self, addr: SocketAddr, at: Instant) {
        if let Some(slot) = self.slots.get_mut(&addr) {
            self.seq += 1;
            slot.seq = self.seq;
            slot.at = Some(at);
            self.heap.push(Reverse((at, self.seq, addr)));
        }
    }

    /// A check ended: its server's next one is an interval (the one its
    /// state now calls for, jittered) after that.
    fn done(&mut self, done: &Done, settings: &crate::Settings) {
        if self.slots.get(&done.server).is_some_and(|s| s.at.is_none()) {
            let interval = if done.unhealthy { settings.unhealthy_interval } else { settings.interval };
            self.set(done.server, done.at + jittered(interval, settings.jitter));
        }
    }

    /// A popped server that is not checked this time: due again at `at`,
    /// its check count as before.
    fn skip(&mut self, addr: SocketAddr, at: Instant) {
        if let Some(slot) = self.slots.get_mut(&addr) {
            slot.count -= 1;
        }
        self.set(addr, at);
    }

    /// The next server due at or before `now`, marked in flight, with its
    /// check count.
    fn pop_due(&mut self, now: Instant) -> Option<(Arc<vigil_hostdb::Server>, u64)> {
        while let Some(Reverse((at, seq, addr))) = self.heap.peek().copied() {
            let current = self.slots.get(&addr).is_some_and(|s| s.seq == seq && s.at == Some(at));
            if !current {
                self.heap.pop(); // stale: rescheduled, in flight, or gone
                continue;
            }
            if at > now {
                return None;
            }
            self.heap.pop();
            let slot = self.slots.get_mut(&addr)?;
            slot.at = None;
            slot.count += 1;
            return self.servers.get(&addr).map(|s| (Arc::clone(s), slot.count));
        }
        None
    }

    /// When the next check is due, if any server is waiting.
    fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, seq, addr))) = self.heap.peek().copied() {
            if self.slots.get(&addr).is_some_and(|s| s.seq == seq && s.at == Some(at)) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }
}

/// Sent by a finished check to its origin's schedule.
struct Done {
    server: SocketAddr,
    at: Instant,
    unhealthy: bool,
}

/// One origin's schedule. Ends when the origin goes idle, loses its check,
/// leaves HostDB, or the checker is dropped.
///
/// The next check of a server is timed from the end of the last one (as
/// Envoy does), with the interval its state then calls for: a server that
/// just turned unhealthy is next checked after `unhealthy_interval`. A
/// server with a check in flight is never scheduled again until it ends.
async fn run_origin(inner: Weak<Inner>, origin: Arc<Origin>) {
    let mut schedule = Schedule::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let mut origin_offset = None;
    let mut matched: Option<(Arc<HealthChecks>, Option<Arc<Check>>)> = None;
    loop {
        let Some(inner) = inner.upgrade() else {
            origin.set_checking(false);
            return;
        };
        let now = Instant::now();
        let still_ours = inner.db.origin_by_key(origin.key()).is_some_and(|o| Arc::ptr_eq(&o, &origin));
        // Re-match only when the config was replaced, not on every wake:
        // matching is a scan over the checks and a Check holds strings.
        let config = Arc::clone(&inner.config.read());
        if !matched.as_ref().is_some_and(|(c, _)| Arc::ptr_eq(c, &config)) {
            let check = config.matching(origin.key()).cloned().map(Arc::new);
            matched = Some((config, check));
        }
        let check = matched.as_ref().and_then(|(_, c)| c.clone());
        let Some(check) = check.filter(|_| still_ours && origin.check_policy().is_some()) else {
            stop(&origin, "no check for the origin any more");
            return;
        };
        let settings = check.settings;
        let offset = *origin_offset
            .get_or_insert_with(|| settings.interval.mul_f64(settings.jitter * fastrand::f64()));
        while let Ok(done) = done_rx.try_recv() {
            schedule.done(&done, &settings);
        }
        let idle_after = settings.idle_after;
        let idle_in = match origin.last_request_ago(now.into_std()) {
            Some(ago) if ago < idle_after => idle_after - ago,
            _ => {
                // Idle. A touch racing with this sees `checking` still set
                // and starts nothing, so look once more after clearing it.
                origin.set_checking(false);
                let touched =
                    origin.last_request_ago(Instant::now().into_std()).is_some_and(|a| a < idle_after);
                if touched && !origin.set_checking(true) {
                    continue;
                }
                tracing::info!(origin = %origin.key(), "health checks stopped: no requests for {idle_after:?}");
                return;
            }
        };
        let upstream = inner.upstreams.read().get(origin.key()).copied().unwrap_or_default();
        schedule.sync(&origin.servers(), now, offset, settings.interval);
        let every = settings.fresh_connect_every as u64;
        let filter = inner.filter.read().clone();
        while let Some((server, count)) = schedule.pop_due(now) {
            if let Some(filter) = &filter
                && !filter(origin.key(), server.addr())
            {
                inner.metrics.left_to_others.fetch_add(1, Ordering::Relaxed);
                schedule.skip(server.addr(), now + jittered(settings.interval, settings.jitter));
                continue;
            }
            let fresh = every > 0 && count.is_multiple_of(every);
            spawn_check(&inner, &origin, server, Arc::clone(&check), upstream, fresh, done_tx.clone());
        }
        let wake = schedule.next().unwrap_or(now + idle_in).min(now + idle_in);
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            Some(done) = done_rx.recv() => schedule.done(&done, &settings),
        }
    }
}

fn stop(origin: &Origin, why: &str) {
    origin.set_checking(false);
    tracing::info!(origin = %origin.key(), "health checks stopped: {why}");
}

/// `interval` times a uniform factor in `[1 - jitter, 1 + jitter]`.
pub(crate) fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return interval;
    }
    interval.mul_f64(1.0 + jitter * (fastrand::f64() * 2.0 - 1.0))
}

fn spawn_check(
    inner: &Arc<Inner>,
    origin: &Arc<Origin>,
    server: Arc<vigil_hostdb::Server>,
    check: Arc<Check>,
    upstream: OriginUpstream,
    fresh: bool,
    done: tokio::sync::mpsc::UnboundedSender<Done>,
) {
    let (inner, origin) = (Arc::clone(inner), Arc::clone(origin));
    tokio::spawn(async move {
        // Bounded: past max_in_flight, checks wait here for a turn.
        let Ok(_permit) = Arc::clone(&inner.limit).acquire_owned().await else { return };
        inner.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let req =
            ProbeRequest { origin: origin.key(), server: server.addr(), upstream, check: &check, fresh };
        let outcome = inner.probe.probe(req).await;
        inner.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now().into_std();
        // A check on a port of its own never speaks for the service port.
        if outcome.l4_failure && check.port.is_none() {
            server.report_l4_failure_because(now, &outcome.result.detail);
        }
        if outcome.signalled {
            origin.signal_unhealthy(&server, &outcome.result.detail, now);
        } else if check.port.is_some() {
            origin.record_check_on_other_port(&server, &outcome.result, now);
        } else {
            origin.record_check(&server, &outcome.result, now);
        }
        let unhealthy = server.l7_state() == L7State::Unhealthy;
        let _ = done.send(Done { server: server.addr(), at: Instant::now(), unhealthy });
        let counter = if outcome.result.passed { &inner.metrics.passed } else { &inner.metrics.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let hook = inner.hook.read().clone();
        if let Some(hook) = hook {
            hook(origin.key(), server.addr(), &check, &outcome.result);
        }
    });
}
