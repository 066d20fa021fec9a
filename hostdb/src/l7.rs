//! L7 status: the rise/fall hysteresis over active health-check results.
//!
//! [`L7Status::apply`] is a pure function of (status, result, policy, now):
//! it returns the next status and, when the state flipped, an [`L7Flip`].
//! Probing (sending the check) lives elsewhere; this module only judges.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

/// A server's L7 state (`l7.state` in the admin view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum L7State {
    /// Checked, but not enough results yet to decide. Routable: traffic never
    /// waits for a first check.
    Unknown,
    /// `healthy_threshold` consecutive passes.
    Healthy,
    /// `unhealthy_threshold` consecutive failures. Not routable.
    Unhealthy,
    /// No health check is configured for the origin: L4 status only.
    Unchecked,
}

impl L7State {
    /// Whether a server in this state may receive requests.
    pub fn is_routable(self) -> bool {
        self != Self::Unhealthy
    }

    /// The lower-case name used in JSON, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Unchecked => "unchecked",
        }
    }
}

impl fmt::Display for L7State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hysteresis thresholds (from the origin's `[[check]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L7Policy {
    /// Consecutive passes that turn `unknown`/`unhealthy` into `healthy` (at least 1).
    pub healthy_threshold: u32,
    /// Consecutive failures that turn `unknown`/`healthy` into `unhealthy` (at least 1).
    pub unhealthy_threshold: u32,
}

impl Default for L7Policy {
    /// SPEC's defaults: 2 passes to rise, 3 failures to fall.
    fn default() -> Self {
        Self { healthy_threshold: 2, unhealthy_threshold: 3 }
    }
}

impl L7Policy {
    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.healthy_threshold == 0 || self.unhealthy_threshold == 0 {
            return Err(crate::ConfigError::Invalid {
                field: "healthy_threshold/unhealthy_threshold",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}

/// The outcome of one health check, as the probe reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// Whether the check passed.
    pub passed: bool,
    /// What was seen: the status code (`"200"`), or why it failed (`"timeout"`).
    pub detail: Arc<str>,
    /// Time from sending the check to judging it.
    pub latency: Duration,
}

impl CheckResult {
    /// A passing result.
    pub fn pass(detail: impl Into<Arc<str>>, latency: Duration) -> Self {
        Self { passed: true, detail: detail.into(), latency }
    }

    /// A failing result.
    pub fn fail(detail: impl Into<Arc<str>>, latency: Duration) -> Self {
        Self { passed: false, detail: detail.into(), latency }
    }
}

/// Who produced a server's L7 status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// This node's own checks.
    Local,
    /// Adopted from the cluster node with this id.
    Cluster(Arc<str>),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Cluster(node) => write!(f, "cluster:{node}"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One server's L7 record. Immutable: a change publishes a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct L7Status {
    /// Current state.
    pub state: L7State,
    /// Passes in a row (0 after a failure).
    pub consecutive_passes: u32,
    /// Failures in a row (0 after a pass).
    pub consecutive_failures: u32,
    /// When the last result was recorded.
    pub last_check: Option<Instant>,
    /// The last result, if any.
    pub last_result: Option<CheckResult>,
    /// Who produced this status.
    pub source: Source,
}

/// A change of L7 state, as [`L7Status::apply`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L7Flip {
    /// State before.
    pub from: L7State,
    /// State after.
    pub to: L7State,
}

impl L7Status {
    /// The status a server starts in: `unknown` when checked, `unchecked` when not.
    pub fn initial(checked: bool) -> Self {
        Self {
            state: if checked { L7State::Unknown } else { L7State::Unchecked },
            consecutive_passes: 0,
            consecutive_failures: 0,
            last_check: None,
            last_result: None,
            source: Source::Local,
        }
    }

    /// Applies one local check result at `now`. Pure: returns the next status
    /// and the flip, if the state changed.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use vigil_hostdb::{CheckResult, L7Policy, L7State, L7Status};
    ///
    /// let policy = L7Policy { healthy_threshold: 2, unhealthy_threshold: 3 };
    /// let now = Instant::now();
    /// let pass = CheckResult::pass("200", Duration::from_millis(1));
    /// let (s, flip) = L7Status::initial(true).apply(&pass, &policy, now);
    /// assert_eq!((s.state, flip), (L7State::Unknown, None));
    /// let (s, flip) = s.apply(&pass, &policy, now);
    /// assert_eq!(s.state, L7State::Healthy);
    /// assert_eq!(flip.map(|f| f.from), Some(L7State::Unknown));
    /// ```
    pub fn apply(&self, result: &CheckResult, policy: &L7Policy, now: Instant) -> (Self, Option<L7Flip>) {
        let (passes, failures) = if result.passed {
            (self.consecutive_passes.saturating_add(1), 0)
        } else {
            (0, self.consecutive_failures.saturating_add(1))
        };
        // A result for an `unchecked` server (a check was just configured)
        // starts from `unknown`.
        let from = match self.state {
            L7State::Unchecked => L7State::Unknown,
            s => s,
        };
        let to = match from {
            L7State::Unknown | L7State::Unhealthy if result.passed && passes >= policy.healthy_threshold => {
                L7State::Healthy
            }
            L7State::Unknown | L7State::Healthy
                if !result.passed && failures >= policy.unhealthy_threshold =>
            {
                L7State::Unhealthy
            }
            s => s,
        };
        let next = Self {
            state: to,
            consecutive_passes: passes,
            consecutive_failures: failures,
            last_check: Some(now),
            last_result: Some(result.clone()),
            source: Source::Local,
        };
        let flip = (to != self.state).then_some(L7Flip { from: self.state, to });
        (next, flip)
    }
}

impl L7Status {
    /// The status after the server signalled it is going away (a
    /// `vigil-health: down` answer): unhealthy at once, whatever the
    /// thresholds; passes count from zero.
    pub fn signalled(&self, result: &CheckResult, now: Instant) -> (Self, Option<L7Flip>) {
        let next = Self {
            state: L7State::Unhealthy,
            consecutive_passes: 0,
            consecutive_failures: self.consecutive_failures.saturating_add(1),
            last_check: Some(now),
            last_result: Some(result.clone()),
            source: Source::Local,
        };
        let flip =
            (self.state != L7State::Unhealthy).then_some(L7Flip { from: self.state, to: L7State::Unhealthy });
        (next, flip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(passed: bool) -> CheckResult {
        CheckResult { passed, detail: "x".into(), latency: Duration::ZERO }
    }

    #[test]
    fn rise_and_fall_with_hysteresis() {
        let p = L7Policy { healthy_threshold: 2, unhealthy_threshold: 3 };
        let now = tokio::time::Instant::now().into_std();
        let mut s = L7Status::initial(true);
        let mut flips = vec![];
        for passed in [true, false, true, true, false, false, true, false, false, false, true, true] {
            let (n, f) = s.apply(&r(passed), &p, now);
            flips.extend(f.map(|f| (f.from, f.to)));
            s = n;
        }
        use L7State::*;
        assert_eq!(flips, vec![(Unknown, Healthy), (Healthy, Unhealthy), (Unhealthy, Healthy)]);
    }

    #[test]
    fn unchecked_server_starts_from_unknown() {
        let p = L7Policy { healthy_threshold: 1, unhealthy_threshold: 1 };
        let (s, f) = L7Status::initial(false).apply(&r(false), &p, tokio::time::Instant::now().into_std());
        assert_eq!(s.state, L7State::Unhealthy);
        assert_eq!(f, Some(L7Flip { from: L7State::Unchecked, to: L7State::Unhealthy }));
    }

    proptest! {
        /// Random result sequences never reach an impossible status: a state
        /// changes only at its threshold, counters are exclusive, and `unknown`
        /// is never re-entered.
        #[test]
        fn no_impossible_state(h in 1u32..5, u in 1u32..5, results in prop::collection::vec(any::<bool>(), 0..300)) {
            let p = L7Policy { healthy_threshold: h, unhealthy_threshold: u };
            let now = tokio::time::Instant::now().into_std();
            let mut s = L7Status::initial(true);
            for passed in results {
                let (n, flip) = s.apply(&r(passed), &p, now);
                prop_assert!(n.consecutive_passes == 0 || n.consecutive_failures == 0);
                prop_assert_eq!(flip.is_some(), n.state != s.state);
                if let Some(f) = flip {
                    prop_assert_ne!(f.to, L7State::Unknown);
                    if f.to == L7State::Healthy { prop_assert_eq!(n.consecutive_passes, h); }
                    if f.to == L7State::Unhealthy { prop_assert_eq!(n.consecutive_failures, u); }
                }
                match n.state {
                    L7State::Healthy => prop_assert!(n.consecutive_failures < u),
                    L7State::Unhealthy => prop_assert!(n.consecutive_passes < h),
                    L7State::Unknown => prop_assert!(n.consecutive_passes < h && n.consecutive_failures < u),
                    L7State::Unchecked => prop_assert!(false, "checked server became unchecked"),
                }
                s = n;
            }
        }
    }
}
