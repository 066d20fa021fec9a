//! One server's status record: lock-free for readers, one CAS or one swap per write.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;

use crate::OriginKey;
use crate::event::{Event, Subscribers};
use crate::l4::{L4Policy, L4State, L4Word};
use crate::l7::{CheckResult, L7Flip, L7Policy, L7State, L7Status};
use crate::time::Epoch;

/// What every server of one HostDb shares: the clock epoch, the L4 policy and
/// the subscribers.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) epoch: Epoch,
    pub(crate) l4: ArcSwap<L4Policy>,
    pub(crate) subscribers: Subscribers,
}

const MAINT: u8 = 1;
const L7_DOWN: u8 = 2;
/// Ejected by outlier detection until `ejected_until` (then admitted again
/// by the first request that sees the time passed).
const EJECTED: u8 = 4;

/// What an origin's servers share with it: a count of the changes that may
/// move its routable share (for the panic threshold, recomputed only when
/// it moved).
#[derive(Debug, Default)]
pub(crate) struct OriginHealth {
    /// Bumped by every change of a server's routability.
    pub(crate) version: AtomicU64,
}

/// One server (`ip:port`) behind an origin and its health record.
///
/// Readers never lock: the routable test is two atomic loads (flags and the
/// packed L4 word). Writers: L4 changes are one compare-and-swap on the packed
/// word; L7 results publish a new immutable [`L7Status`] (serialized by a
/// writer-only mutex, so the flag bit and the record never disagree for long).
///
/// A server's record lives as long as the server stays in its origin: a
/// config reload or a DNS refresh that keeps the address keeps the record.
pub struct Server {
    id: u64,
    addr: SocketAddr,
    origin: OriginKey,
    hub: Arc<Hub>,
    /// `MAINT | L7_DOWN`: zero means nothing but L4 stands in the way.
    flags: AtomicU8,
    l4: AtomicU64,
    in_flight: AtomicU32,
    l7: ArcSwap<L7Status>,
    l7_writer: Mutex<()>,
    /// Why the last L4 failure happened (`connect refused`, `tls:
    /// certificate expired`), until a success; for operators, not policy.
    l4_error: ArcSwapOption<String>,
    /// Shared with the origin: bumped on every routability change.
    health: Arc<OriginHealth>,
    /// When the server became routable again (HostDB ms; 0: not ramping):
    /// the start of its slow-start window.
    ramp_from: AtomicU64,
    /// Outlier detection: failing user responses in a row, the end of the
    /// current ejection (ms; 0: none), and ejections so far.
    outlier_failures: AtomicU32,
    ejected_until: AtomicU64,
    ejections: AtomicU32,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("origin", &self.origin)
            .field("addr", &self.addr)
            .field("flags", &self.flags.load(Ordering::Relaxed))
            .field("l4", &L4Word(self.l4.load(Ordering::Relaxed)))
            .field("l7", &self.l7.load().state)
            .finish()
    }
}

/// How a request may use a server right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Yes,
    /// L4-down with its down time over: routable for exactly one request.
    Probe,
    No,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Server {
    pub(crate) fn new(
        origin: OriginKey,
        addr: SocketAddr,
        hub: Arc<Hub>,
        health: Arc<OriginHealth>,
        checked: bool,
    ) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            origin,
            hub,
            flags: AtomicU8::new(0),
            l4: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            l7: ArcSwap::from_pointee(L7Status::initial(checked)),
            l7_writer: Mutex::new(()),
            l4_error: ArcSwapOption::empty(),
            health,
            ramp_from: AtomicU64::new(0),
            outlier_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    /// A process-unique id (never reused), for "already tried" sets.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The origin this server belongs to.
    pub fn origin(&self) -> &OriginKey {
        &self.origin
    }

    // ---- readers -------------------------------------------------------

    /// Whether a request may be sent here at `now`: not in maintenance, not
    /// L7-unhealthy, and L4 up or due for its retry probe.
    pub fn is_routable(&self, now: Instant) -> bool {
        self.admit_at(self.hub.epoch.ms(now)) != Admit::No
    }

    #[inline]
    pub(crate) fn admit_at(&self, now_ms: u64) -> Admit {
        self.admit(|| now_ms)
    }

    /// Hot path: flags, then the L4 word; the clock is consulted only when the
    /// server is L4-down.
    #[inline(always)]
    pub(crate) fn admit(&self, now_ms: impl FnOnce() -> u64) -> Admit {
        let flags = self.flags.load(Ordering::Acquire);
        if flags != 0 {
            return self.admit_flagged(flags, now_ms);
        }
        let w = L4Word(self.l4.load(Ordering::Acquire));
        if w.is_up() {
            Admit::Yes
        } else if w.probe_due(now_ms()) {
            Admit::Probe
        } else {
            Admit::No
        }
    }

    /// [`Server::admit`] for a server with a flag set: out, unless the flag
    /// is an ejection whose time is over.
    #[cold]
    #[inline(never)]
    fn admit_flagged(&self, flags: u8, now_ms: impl FnOnce() -> u64) -> Admit {
        if flags != EJECTED {
            return Admit::No;
        }
        let now = now_ms();
        if !self.ejection_over(now) {
            return Admit::No;
        }
        let w = L4Word(self.l4.load(Ordering::Acquire));
        if w.is_up() {
            Admit::Yes
        } else if w.probe_due(now) {
            Admit::Probe
        } else {
            Admit::No
        }
    }

    /// Whether the server is in maintenance.
    pub fn maintenance(&self) -> bool {
        self.flags.load(Ordering::Acquire) & MAINT != 0
    }

    /// The L4 state at `now`.
    pub fn l4_state(&self, now: Instant) -> L4State {
        self.l4_word().state(self.hub.epoch.ms(now))
    }

    /// Consecutive L4 failures.
    pub fn l4_failures(&self) -> u32 {
        self.l4_word().failures()
    }

    /// How long until an L4-down server may be retried (zero in `retry`), or
    /// `None` when it is up.
    pub fn l4_down_for(&self, now: Instant) -> Option<Duration> {
        self.l4_word().retry_in_ms(self.hub.epoch.ms(now)).map(Duration::from_millis)
    }

    fn l4_word(&self) -> L4Word {
        L4Word(self.l4.load(Ordering::Acquire))
    }

    /// The current L7 record.
    pub fn l7(&self) -> Arc<L7Status> {
        self.l7.load_full()
    }

    /// The current L7 state (cheaper than [`Server::l7`]: no reference count).
    pub fn l7_state(&self) -> L7State {
        self.l7.load().state
    }

    /// Requests now in flight to this server (picks not yet dropped).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight_add(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn in_flight_sub(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    // ---- L4 writers ----------------------------------------------------

    /// Claims the single retry probe of an L4-down server whose down time is
    /// over. `true`: the caller's request is the probe.
    ///
    /// # Concurrency note
    /// Several requests may see the server due at once; the compare-and-swap
    /// lets exactly one of them through. A probe that never reports lapses
    /// after `down_time`, so a cancelled request cannot strand the server.
    pub(crate) fn claim_probe(&self, now_ms: u64) -> bool {
        let policy = **self.hub.l4.load();
        let cur = self.l4_word();
        if !cur.probe_due(now_ms) {
            return false;
        }
        let next = cur.claim_probe(&policy, now_ms);
        self.l4.compare_exchange(cur.0, next.0, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Records an L4 failure (connect refused or timed out, read or write
    /// error before the response head) at `now`. Returns the new state.
    pub fn report_l4_failure(&self, now: Instant) -> L4State {
        let now_ms = self.hub.epoch.ms(now);
        let policy = **self.hub.l4.load();
        let mut cur = self.l4_word();
        loop {
            let next = cur.on_failure(&policy, now_ms);
            match self.l4.compare_exchange_weak(cur.0, next.0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let (from, to) = (cur.state(now_ms), next.state(now_ms));
                    if from != to {
                        self.emit_l4(from, to, next.failures());
                    }
                    return to;
                }
                Err(actual) => cur = L4Word(actual),
            }
        }
    }

    /// [`Server::report_l4_failure`], keeping `reason` (a few words:
    /// `connect refused`, `tls: certificate expired`) for the admin view
    /// until the next success.
    pub fn report_l4_failure_because(&self, now: Instant, reason: &str) -> L4State {
        if self.l4_error.load().as_deref().map(String::as_str) != Some(reason) {
            self.l4_error.store(Some(Arc::new(reason.to_owned())));
        }
        self.report_l4_failure(now)
    }

    /// Why the last L4 failure happened, if it was reported with a reason
    /// and no success came since.
    pub fn l4_error(&self) -> Option<Arc<String>> {
        self.l4_error.load_full()
    }

    /// Records an L4 success (a response head was read). Clears failures,
    /// any down mark and the last failure's reason. Costs one load and no
    /// store when already clean, so it can run on every request.
    #[inline]
    pub fn report_l4_success(&self, now: Instant) {
        let cur = self.l4_word();
        if cur != L4Word::UP {
            self.recover_l4(cur, now);
        }
    }

    /// The rare half of [`Server::report_l4_success`], out of line so the
    /// clean check stays a load and a compare where it is called.
    #[cold]
    #[inline(never)]
    fn recover_l4(&self, cur: L4Word, now: Instant) {
        self.l4_error.store(None);
        let prev = L4Word(self.l4.swap(cur.on_success().0, Ordering::AcqRel));
        if prev.is_down() {
            let now_ms = self.hub.epoch.ms(now);
            self.start_ramp(now_ms);
            self.emit_l4(prev.state(now_ms), L4State::Up, 0);
        }
    }

    /// Takes another node's L4-down mark (the cluster's, advisory): a
    /// server that is up here is down until `until`, then, as after a local
    /// failure, the next request that picks it tries it once. A server with
    /// local L4 history (failures, down, a retry out) keeps its own timing.
    /// Returns whether the mark was taken.
    pub fn adopt_l4_down(&self, until: Instant, now: Instant) -> bool {
        let until_ms = self.hub.epoch.ms(until);
        if until_ms <= self.hub.epoch.ms(now) {
            return false;
        }
        let next = L4Word::remote_down(until_ms);
        if self.l4.compare_exchange(L4Word::UP.0, next.0, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        self.emit_l4(L4State::Up, L4State::Down, 0);
        true
    }

    fn emit_l4(&self, from: L4State, to: L4State, consecutive_failures: u32) {
        self.changed();
        self.hub.subscribers.emit(Event::L4 {
            origin: self.origin.clone(),
            server: self.addr,
            from,
            to,
            consecutive_failures,
        });
    }

    // ---- L7 writers ----------------------------------------------------

    /// Records a local health-check result under `policy` at `now`. A passing
    /// check also clears L4 failures (SPEC: "a passing L7 check also clears
    /// L4-down"). Returns the flip, if the L7 state changed.
    pub fn record_check(&self, result: &CheckResult, policy: &L7Policy, now: Instant) -> Option<L7Flip> {
        self.record(result, policy, now, true)
    }

    /// Records a result of a check sent to another port of this server (an
    /// admin port beside the service port): judged like any check, but a
    /// pass says nothing of the service port, so L4 state is left as it is.
    pub fn record_check_on_other_port(
        &self,
        result: &CheckResult,
        policy: &L7Policy,
        now: Instant,
    ) -> Option<L7Flip> {
        self.record(result, policy, now, false)
    }

    fn record(
        &self,
        result: &CheckResult,
        policy: &L7Policy,
        now: Instant,
        clears_l4: bool,
    ) -> Option<L7Flip> {
        let flip = {
            let _w = self.l7_writer.lock();
            let (next, flip) = self.l7.load().apply(result, policy, now);
            self.publish_l7(Arc::new(next));
            flip
        };
        if let Some(f) = flip {
            self.emit_l7(f, result.detail.clone(), crate::Source::Local, self.hub.epoch.ms(now));
        }
        if result.passed {
            // Checks bring an ejected server back (its time need not run
            // out), as Envoy's successful_active_health_check_uneject_host.
            self.end_ejection(self.hub.epoch.ms(now), true);
            if clears_l4 {
                self.report_l4_success(now);
            }
        }
        flip
    }

    /// The server told us, on a response, that it is going away
    /// (`vigil-health: down` or `drain`): L7 unhealthy at once, whatever the
    /// thresholds, until checks pass `healthy_threshold` times again. For a
    /// server without checks (`unchecked`) nothing changes: no check would
    /// ever bring it back. Returns the flip, if the state changed.
    pub fn signal_unhealthy(&self, result: &CheckResult, now: Instant) -> Option<L7Flip> {
        let flip = {
            let _w = self.l7_writer.lock();
            let cur = self.l7.load();
            if cur.state == L7State::Unchecked {
                return None;
            }
            let (next, flip) = cur.signalled(result, now);
            self.publish_l7(Arc::new(next));
            flip
        };
        if let Some(f) = flip {
            self.emit_l7(f, result.detail.clone(), crate::Source::Local, self.hub.epoch.ms(now));
        }
        flip
    }

    /// Replaces the L7 record wholesale: for statuses adopted from another
    /// node (`source = cluster:<id>`) or restored from a state file. Returns
    /// the flip, if the state changed.
    pub fn set_l7(&self, status: L7Status) -> Option<L7Flip> {
        let (reason, source, to) = (
            status.last_result.as_ref().map(|r| r.detail.clone()).unwrap_or_else(|| "".into()),
            status.source.clone(),
            status.state,
        );
        let from = {
            let _w = self.l7_writer.lock();
            let from = self.l7.load().state;
            self.publish_l7(Arc::new(status));
            from
        };
        let flip = (from != to).then_some(L7Flip { from, to });
        if let Some(f) = flip {
            self.emit_l7(f, reason, source, self.clock_ms());
        }
        flip
    }

    /// Resets L7 to its initial state (used when a reload adds or removes the
    /// origin's check). No event: nothing was learned about the server.
    pub(crate) fn reset_l7(&self, checked: bool) {
        let _w = self.l7_writer.lock();
        self.publish_l7(Arc::new(L7Status::initial(checked)));
    }

    /// Called with `l7_writer` held: record first, then the routable bit.
    fn publish_l7(&self, status: Arc<L7Status>) {
        let routable = status.state.is_routable();
        self.l7.store(status);
        if routable {
            self.flags.fetch_and(!L7_DOWN, Ordering::AcqRel);
        } else {
            self.flags.fetch_or(L7_DOWN, Ordering::AcqRel);
        }
    }

    fn emit_l7(&self, flip: L7Flip, reason: Arc<str>, source: crate::Source, now_ms: u64) {
        self.changed();
        if flip.from == L7State::Unhealthy && flip.to.is_routable() {
            self.start_ramp(now_ms);
        }
        self.hub.subscribers.emit(Event::L7 {
            origin: self.origin.clone(),
            server: self.addr,
            from: flip.from,
            to: flip.to,
            reason,
            source,
        });
    }

    // ---- traffic policy ------------------------------------------------

    /// Notes a change that may move the origin's routable share.
    fn changed(&self) {
        self.health.version.fetch_add(1, Ordering::Release);
    }

    /// Starts the slow-start window at `now_ms`: the server became routable
    /// again, or joined a running origin.
    pub(crate) fn start_ramp(&self, now_ms: u64) {
        self.ramp_from.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Now, for the changes that carry no time of their own (an operator's
    /// maintenance switch, a status adopted from the cluster): tokio's clock,
    /// as everywhere else.
    fn clock_ms(&self) -> u64 {
        self.hub.epoch.ms(tokio::time::Instant::now().into_std())
    }

    /// When the current slow-start window began (HostDB ms), 0 when none.
    #[inline]
    pub(crate) fn ramp_from_ms(&self) -> u64 {
        self.ramp_from.load(Ordering::Relaxed)
    }

    /// Ends the slow-start window that began at `from` (unless a new one began).
    pub(crate) fn ramp_done(&self, from: u64) {
        let _ = self.ramp_from.compare_exchange(from, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the server is in slow start at `now`, and how far in (0 to 1).
    pub fn ramp(&self, now: Instant, window: Duration) -> Option<f64> {
        let from = self.ramp_from_ms();
        let elapsed = self.hub.epoch.ms(now).saturating_sub(from);
        (from != 0 && elapsed < window.as_millis() as u64).then(|| elapsed as f64 / window.as_millis() as f64)
    }

    /// Outlier detection's counters: failing responses in a row, ejections
    /// so far, and how long the current ejection still lasts (`None`: not
    /// ejected).
    pub fn outlier(&self, now: Instant) -> (u32, u32, Option<Duration>) {
        let until = self.ejected_until.load(Ordering::Acquire);
        let now_ms = self.hub.epoch.ms(now);
        let left = (self.flags.load(Ordering::Acquire) & EJECTED != 0 && until > now_ms)
            .then(|| Duration::from_millis(until - now_ms));
        (self.outlier_failures.load(Ordering::Relaxed), self.ejections.load(Ordering::Relaxed), left)
    }

    /// Whether the server is ejected now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier(now).2.is_some()
    }

    /// Counts a user response for outlier detection: `failed` (a 5xx the
    /// policy counts) adds to the run, anything else ends it. Returns the
    /// run's length. One load and no store for a good answer after good ones.
    #[inline]
    pub(crate) fn outlier_response(&self, failed: bool) -> u32 {
        if failed {
            self.outlier_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            if self.outlier_failures.load(Ordering::Relaxed) != 0 {
                self.outlier_failures.store(0, Ordering::Relaxed);
            }
            0
        }
    }

    /// Ejects the server until `until_ms`. Returns whether it was not
    /// ejected before (and so is now).
    pub(crate) fn eject(&self, until_ms: u64, now_ms: u64) -> bool {
        let prev_until = self.ejected_until.swap(until_ms, Ordering::AcqRel);
        self.outlier_failures.store(0, Ordering::Relaxed);
        let prev = self.flags.fetch_or(EJECTED, Ordering::AcqRel);
        // A new ejection, or one whose time had run out unnoticed (the flag
        // is cleared lazily): counted, doubled and told either way.
        if prev & EJECTED == 0 || prev_until <= now_ms {
            self.ejections.fetch_add(1, Ordering::Relaxed);
            self.changed();
            self.hub.subscribers.emit(Event::Outlier {
                origin: self.origin.clone(),
                server: self.addr,
                ejected: true,
            });
            return true;
        }
        false
    }

    /// Ends any ejection and forgets the run of failures (outlier detection
    /// was turned off by a reload). The count of past ejections stays.
    pub(crate) fn clear_outlier(&self, now_ms: u64) {
        self.outlier_failures.store(0, Ordering::Relaxed);
        self.end_ejection(now_ms, true);
    }

    /// Restores an ejection (from a state file written before a restart):
    /// ejected until `until` after `ejections` ejections. Nothing when
    /// `until` is past.
    pub fn restore_ejection(&self, until: Instant, ejections: u32, now: Instant) {
        self.ejections.fetch_max(ejections.saturating_sub(1), Ordering::Relaxed);
        let until_ms = self.hub.epoch.ms(until);
        let now_ms = self.hub.epoch.ms(now);
        if until_ms > now_ms {
            self.eject(until_ms, now_ms);
        }
        self.ejections.fetch_max(ejections, Ordering::Relaxed);
    }

    /// Ejections so far.
    pub(crate) fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Whether an ejection (if any) is over at `now_ms`; ends it if so.
    fn ejection_over(&self, now_ms: u64) -> bool {
        if now_ms < self.ejected_until.load(Ordering::Acquire) {
            return false;
        }
        self.end_ejection(now_ms, false);
        // A new ejection may have begun meanwhile.
        self.flags.load(Ordering::Acquire) & EJECTED == 0
    }

    /// Ends an ejection: its time ran out (`forced` false: unless a new one
    /// began meanwhile, which keeps the flag), or a check passed (`forced`).
    fn end_ejection(&self, now_ms: u64, forced: bool) {
        if self.flags.load(Ordering::Acquire) & EJECTED == 0 {
            return;
        }
        if forced {
            self.ejected_until.store(0, Ordering::Release);
        }
        if self.flags.fetch_and(!EJECTED, Ordering::AcqRel) & EJECTED == 0 {
            return; // another thread ended it
        }
        if !forced && self.ejected_until.load(Ordering::Acquire) > now_ms {
            // Re-ejected between our look at the time and the clear.
            self.flags.fetch_or(EJECTED, Ordering::AcqRel);
            return;
        }
        self.changed();
        self.start_ramp(now_ms);
        self.hub.subscribers.emit(Event::Outlier {
            origin: self.origin.clone(),
            server: self.addr,
            ejected: false,
        });
    }

    // ---- maintenance ---------------------------------------------------

    /// Puts the server into maintenance (`true`) or takes it out. In
    /// maintenance it gets no new requests; requests in flight finish.
    /// Returns whether anything changed.
    pub fn set_maintenance(&self, on: bool) -> bool {
        let prev = if on {
            self.flags.fetch_or(MAINT, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!MAINT, Ordering::AcqRel)
        };
        let changed = (prev & MAINT != 0) != on;
        if changed {
            self.changed();
            if !on {
                self.start_ramp(self.clock_ms());
            }
            self.hub.subscribers.emit(Event::Maintenance {
                origin: self.origin.clone(),
                server: self.addr,
                on,
            });
        }
        changed
    }
}
