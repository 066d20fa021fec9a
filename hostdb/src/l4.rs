//! L4 status: the fail function driven by connect, read and write errors.
//!
//! The whole state of one server is one `u64`, so every transition is a single
//! compare-and-swap and readers see a consistent value with one atomic load:
//!
//! ```text
//!  63            42 41 40 39                                0
//! | failures (22b) | P | D |   until_ms (40b, since epoch)   |
//! ```
//! `D` = down; `P` = a retry probe is out (claimed by one request);
//! `until_ms` = end of the down time, or while probing, when the claim lapses.
//!
//! SPEC's behaviour: at `fail_threshold` consecutive failures the server is down
//! for `down_time`; then it is in `retry`: the next request that picks it tries
//! it once (a *probe*); success brings it `up`, failure puts it down again for
//! another `down_time`. Any success, including a passing L7 check, clears it.

use std::time::Duration;

use serde::Serialize;

use crate::time::{MS_MAX, ceil_ms};

/// L4 policy: when consecutive failures take a server down, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Policy {
    /// Consecutive L4 failures that mark a server down (at least 1).
    pub fail_threshold: u32,
    /// How long a down server gets no requests before one request retries it.
    /// It is also how long a retry probe may take before another is allowed.
    pub down_time: Duration,
}

impl Default for L4Policy {
    /// SPEC's defaults: `fail_threshold = 1`, `down_time = "10s"`.
    fn default() -> Self {
        Self { fail_threshold: 1, down_time: Duration::from_secs(10) }
    }
}

impl L4Policy {
    /// Largest accepted `fail_threshold` (what the packed counter holds).
    pub const MAX_FAIL_THRESHOLD: u32 = FAIL_MAX as u32;

    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        let invalid = |field, reason| Err(crate::ConfigError::Invalid { field, reason });
        if self.fail_threshold == 0 || self.fail_threshold > Self::MAX_FAIL_THRESHOLD {
            return invalid("l4.fail_threshold", "must be between 1 and 4194303");
        }
        if self.down_time.is_zero() || self.down_time > Duration::from_secs(86_400 * 365) {
            return invalid("l4.down_time", "must be more than 0 and at most a year");
        }
        Ok(())
    }
}

/// A server's L4 state as the admin view shows it (`l4.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L4State {
    /// Routable as far as L4 goes.
    Up,
    /// Failed `fail_threshold` times; no requests until its down time ends.
    Down,
    /// Down time over: the next request that picks it probes it (or one is probing now).
    Retry,
}

impl L4State {
    /// The lower-case name used in JSON, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Retry => "retry",
        }
    }
}

const UNTIL_MASK: u64 = MS_MAX;
const DOWN: u64 = 1 << 40;
const PROBING: u64 = 1 << 41;
const FAIL_SHIFT: u32 = 42;
const FAIL_MAX: u64 = (1 << 22) - 1;

/// The packed L4 state of one server. A pure value: every method returns the
/// next state and never reads a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct L4Word(pub(crate) u64);

impl L4Word {
    pub(crate) const UP: Self = Self(0);

    pub(crate) fn failures(self) -> u32 {
        (self.0 >> FAIL_SHIFT) as u32
    }
    pub(crate) fn is_down(self) -> bool {
        self.0 & DOWN != 0
    }
    pub(crate) fn is_probing(self) -> bool {
        self.0 & PROBING != 0
    }
    pub(crate) fn until_ms(self) -> u64 {
        self.0 & UNTIL_MASK
    }

    fn pack(failures: u64, flags: u64, until: u64) -> Self {
        Self((failures.min(FAIL_MAX) << FAIL_SHIFT) | flags | until.min(UNTIL_MASK))
    }

    /// The state shown to operators at `now_ms`.
    pub(crate) fn state(self, now_ms: u64) -> L4State {
        if !self.is_down() {
            L4State::Up
        } else if self.is_probing() || now_ms >= self.until_ms() {
            L4State::Retry
        } else {
            L4State::Down
        }
    }

    /// Whether a request may pick this server at `now_ms` without a claim.
    #[inline]
    pub(crate) fn is_up(self) -> bool {
        !self.is_down()
    }

    /// Whether a request may claim the retry probe at `now_ms`: down time over
    /// and no probe out, or the probe out has lapsed.
    #[inline]
    pub(crate) fn probe_due(self, now_ms: u64) -> bool {
        self.is_down() && now_ms >= self.until_ms()
    }

    /// The state after a request claims the probe at `now_ms`.
    pub(crate) fn claim_probe(self, policy: &L4Policy, now_ms: u64) -> Self {
        debug_assert!(self.probe_due(now_ms));
        let until = now_ms.saturating_add(ceil_ms(policy.down_time));
        Self::pack(self.failures() as u64, DOWN | PROBING, until)
    }

    /// The state after an L4 failure at `now_ms`.
    pub(crate) fn on_failure(self, policy: &L4Policy, now_ms: u64) -> Self {
        let failures = self.failures() as u64 + 1;
        let down_for = ceil_ms(policy.down_time);
        if self.is_down() {
            if self.is_probing() || now_ms >= self.until_ms() {
                // The retry failed (or a request failed after the down time):
                // down again for a full down time.
                Self::pack(failures, DOWN, now_ms.saturating_add(down_for))
            } else {
                // A request sent before it went down failed late: count it,
                // but do not stretch the down time.
                Self::pack(failures, DOWN, self.until_ms())
            }
        } else if failures >= policy.fail_threshold as u64 {
            Self::pack(failures, DOWN, now_ms.saturating_add(down_for))
        } else {
            Self::pack(failures, 0, 0)
        }
    }

    /// Down until `until_ms` on another node's word, with no local failure
    /// counted.
    pub(crate) fn remote_down(until_ms: u64) -> Self {
        Self::pack(0, DOWN, until_ms)
    }

    /// The state after a success (a response head read, or a passing L7 check).
    pub(crate) fn on_success(self) -> Self {
        Self::UP
    }

    /// Milliseconds until a probe may be claimed, if down.
    pub(crate) fn retry_in_ms(self, now_ms: u64) -> Option<u64> {
        self.is_down().then(|| self.until_ms().saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: L4Policy = L4Policy { fail_threshold: 3, down_time: Duration::from_secs(10) };

    #[test]
    fn threshold_down_retry_up() {
        let mut w = L4Word::UP;
        w = w.on_failure(&P, 100);
        w = w.on_failure(&P, 200);
        assert_eq!((w.state(200), w.failures()), (L4State::Up, 2));
        w = w.on_failure(&P, 300);
        assert_eq!(w.state(300), L4State::Down);
        assert_eq!(w.state(10_299), L4State::Down);
        assert!(!w.probe_due(10_299));
        assert_eq!(w.state(10_300), L4State::Retry);
        assert!(w.probe_due(10_300));
        let claimed = w.claim_probe(&P, 10_300);
        assert!(!claimed.probe_due(10_301), "one probe at a time");
        assert_eq!(claimed.state(10_301), L4State::Retry);
        assert!(claimed.probe_due(20_300), "a lost probe lapses after down_time");
        let again = claimed.on_failure(&P, 10_400);
        assert_eq!((again.state(10_400), again.until_ms()), (L4State::Down, 20_400));
        assert_eq!(again.on_success(), L4Word::UP);
    }

    #[test]
    fn late_failure_does_not_extend_down_time() {
        let w = L4Word::UP.on_failure(&L4Policy { fail_threshold: 1, ..P }, 0);
        assert_eq!(w.until_ms(), 10_000);
        assert_eq!(w.on_failure(&P, 5_000).until_ms(), 10_000);
    }

    #[test]
    fn success_resets_failures_below_threshold() {
        let w = L4Word::UP.on_failure(&P, 1).on_failure(&P, 2).on_success();
        assert_eq!(w.on_failure(&P, 3).state(3), L4State::Up);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Fail,
        Ok,
        Claim,
        Wait(u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![Just(Ev::Fail), Just(Ev::Ok), Just(Ev::Claim), (0u64..30_000).prop_map(Ev::Wait)]
    }

    proptest! {
        /// No sequence of events reaches an impossible state: probing implies
        /// down; up implies fewer failures than the threshold; down never
        /// lasts longer than one down time past the last event.
        #[test]
        fn no_impossible_state(thr in 1u32..5, down_s in 1u64..20, evs in prop::collection::vec(ev(), 0..200)) {
            let p = L4Policy { fail_threshold: thr, down_time: Duration::from_secs(down_s) };
            let mut w = L4Word::UP;
            let mut now = 0u64;
            for e in evs {
                match e {
                    Ev::Fail => w = w.on_failure(&p, now),
                    Ev::Ok => w = w.on_success(),
                    Ev::Claim => if w.probe_due(now) { w = w.claim_probe(&p, now) },
                    Ev::Wait(ms) => now += ms,
                }
                prop_assert!(!w.is_probing() || w.is_down());
                if !w.is_down() {
                    prop_assert!(w.failures() < thr);
                    prop_assert_eq!(w.until_ms(), 0);
                } else {
                    prop_assert!(w.failures() >= 1);
                    prop_assert!(w.until_ms() <= now + down_s * 1000);
                }
                let st = w.state(now);
                prop_assert_eq!(st == L4State::Up, !w.is_down());
            }
        }
    }
}
