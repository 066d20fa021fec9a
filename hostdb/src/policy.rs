//! Who gets how much traffic: weights, slow start and the panic threshold,
//! as pure functions of state and time, so each is tested on its own.
//!
//! Per origin, [`OriginPolicy`] holds the settings; the origin's state
//! holds what they compile to (the weighted round-robin sequence, the
//! weighted ring), and selection asks the functions here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The highest weight a server may have (as HAProxy's). 0 drains.
pub const MAX_WEIGHT: u32 = 256;

/// A server's weight when its origin does not give one.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The share of its weight a server starting its slow-start window gets at
/// once (Envoy's default `min_weight_percent`): enough that the first
/// requests arrive, little enough not to flood a cold server.
pub const SLOW_START_FLOOR: f64 = 0.10;

/// An origin's traffic policy (all off by default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OriginPolicy {
    /// Weights by server address (0 to [`MAX_WEIGHT`]); a server not listed
    /// weighs [`DEFAULT_WEIGHT`].
    pub weights: HashMap<SocketAddr, u32>,
    /// `slow_start`: a server that becomes routable again ramps up over
    /// this long (see [`slow_start_factor`]).
    pub slow_start: Option<Duration>,
    /// `panic_threshold` in percent (1 to 100): below that share of
    /// routable servers, route across every server not in maintenance.
    pub panic_threshold: Option<u8>,
    /// `outlier_*`: ejection of servers that fail user requests.
    pub outlier: Option<OutlierPolicy>,
}

impl OriginPolicy {
    /// The configured weight of `addr`.
    pub fn weight_of(&self, addr: SocketAddr) -> u32 {
        self.weights.get(&addr).copied().unwrap_or(DEFAULT_WEIGHT)
    }
}

/// Passive outlier detection from user traffic (Envoy's consecutive-5xx
/// detector): `consecutive` failing responses in a row eject a server for
/// `base` times 2^(its earlier ejections), at most `max`, and never more
/// than `max_percent` of an origin's servers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failing responses in a row that eject.
    pub consecutive: u32,
    /// Only 502, 503 and 504 count (a server's own 500s may be the
    /// request's fault); `false`: any 5xx.
    pub gateway_only: bool,
    /// The first ejection's length.
    pub base: Duration,
    /// The longest ejection.
    pub max: Duration,
    /// At most this share of the origin's servers ejected at once (percent).
    pub max_percent: u8,
}

impl Default for OutlierPolicy {
    /// Envoy's defaults: 5 in a row, 30 s doubling to at most 300 s, at
    /// most 10 % of the servers (but always at least one, see [`may_eject`]).
    fn default() -> Self {
        Self {
            consecutive: 5,
            gateway_only: false,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_percent: 10,
        }
    }
}

impl OutlierPolicy {
    /// Whether `status` counts as a failure.
    pub fn counts(&self, status: u16) -> bool {
        if self.gateway_only { matches!(status, 502..=504) } else { (500..=599).contains(&status) }
    }
}

/// How long the `n`th ejection (1-based) lasts: `base` doubled for each
/// earlier one, at most `max`.
pub fn ejection_time(policy: &OutlierPolicy, n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(31);
    policy.base.saturating_mul(1 << doublings).min(policy.max)
}

/// Whether one more of `total` servers may be ejected while `ejected` are:
/// never past `max_percent`, but one may always go when none is out (with
/// 10 % of 3 servers, Envoy would never eject; one bad server of three
/// should still leave). The caller also keeps the last server that could
/// take requests.
pub fn may_eject(ejected: usize, total: usize, max_percent: u8) -> bool {
    if total <= 1 {
        return false;
    }
    ejected == 0 || (ejected + 1) * 100 <= total * usize::from(max_percent)
}

/// The share of its weight a server gets `elapsed` into a slow-start
/// `window`: linear from [`SLOW_START_FLOOR`] to 1 at the window's end.
pub fn slow_start_factor(elapsed: Duration, window: Duration) -> f64 {
    if window.is_zero() || elapsed >= window {
        return 1.0;
    }
    let t = elapsed.as_secs_f64() / window.as_secs_f64();
    SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * t
}

/// Whether an origin with `routable` of `total` servers is in panic under
/// `threshold` percent: fewer than that share routable.
pub fn panics(routable: usize, total: usize, threshold: u8) -> bool {
    total > 0 && routable * 100 < total * usize::from(threshold)
}

/// Most entries a weighted round-robin sequence holds; weights whose sum
/// (after dividing by their common divisor) is larger are scaled down to
/// fit, keeping their proportions within one part in this many.
pub(crate) const MAX_SEQUENCE: u32 = 1 << 16;

/// The order in which weighted round robin visits servers: server `i`
/// appears `weights[i]` times per cycle (after reduction), spread out as
/// nginx's smooth weighted round robin spreads them (each step every server
/// gains its weight, the one with the most goes and pays the total: 5, 1,
/// 1 give `a a b a c a a`). Built once per swap in O(servers x cycle), the
/// cycle at most [`MAX_SEQUENCE`]. `None` when every weight is the same and
/// not 0: plain round robin is that.
pub(crate) fn wrr_sequence(weights: &[u32]) -> Option<Box<[u32]>> {
    let first = *weights.first()?;
    if first != 0 && weights.iter().all(|&w| w == first) {
        return None;
    }
    let divisor = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if divisor == 0 {
        return Some(Box::new([])); // every server drained
    }
    let mut reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = reduced.iter().sum();
    let cap = i64::from(MAX_SEQUENCE);
    if total > cap {
        for w in reduced.iter_mut().filter(|w| **w > 0) {
            *w = (*w * cap / total).max(1);
        }
    }
    let total: i64 = reduced.iter().sum();
    let live: Vec<usize> = (0..reduced.len()).filter(|&i| reduced[i] > 0).collect();
    let mut current = vec![0i64; reduced.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = live[0];
        for &i in &live {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    Some(out.into_boxed_slice())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Virtual nodes of each server on a consistent-hash ring of about
/// `per_server` points per server, in proportion to the weights (at least
/// one for a weight above 0). Equal weights give `per_server` each, so an
/// origin without weights keeps the ring it always had.
pub(crate) fn ring_vnodes(weights: &[u32], per_server: u64) -> Vec<u64> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let points = per_server * weights.len() as u64;
    weights
        .iter()
        .map(|&w| match w {
            0 => 0,
            w => ((points * u64::from(w) + total / 2) / total).max(1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_need_no_sequence_and_a_drained_server_none_of_it() {
        assert_eq!(wrr_sequence(&[1, 1, 1]), None);
        assert_eq!(wrr_sequence(&[5, 5]), None);
        assert_eq!(wrr_sequence(&[0, 0]).as_deref(), Some(&[][..]));
        assert_eq!(wrr_sequence(&[2, 0, 2]).as_deref(), Some(&[0, 2][..]), "reduced by the common divisor");
    }

    #[test]
    fn the_heavy_server_gets_no_burst() {
        // nginx's own example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(wrr_sequence(&[5, 1, 1]).as_deref(), Some(&[0, 0, 1, 0, 2, 0, 0][..]));
        assert_eq!(wrr_sequence(&[1, 3]).as_deref(), Some(&[1, 0, 1, 1][..]));
    }

    #[test]
    fn a_huge_weight_sum_is_scaled_to_fit() {
        let weights: Vec<u32> = (0..1000).map(|i| if i % 2 == 0 { 256 } else { 255 }).collect();
        let seq = wrr_sequence(&weights).unwrap();
        assert!(seq.len() <= MAX_SEQUENCE as usize + weights.len());
        let mut counts = vec![0usize; weights.len()];
        for &i in seq.iter() {
            counts[i as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c >= 1), "every weighted server stays in");
    }

    #[test]
    fn ring_points_follow_weights_and_equal_weights_keep_the_old_ring() {
        assert_eq!(ring_vnodes(&[1, 1, 1], 100), [100, 100, 100]);
        assert_eq!(ring_vnodes(&[3, 1], 100), [150, 50]);
        assert_eq!(ring_vnodes(&[0, 1], 100), [0, 200]);
        assert_eq!(ring_vnodes(&[256, 1], 100), [199, 1], "a light server keeps a point");
    }

    #[test]
    fn ejections_double_up_to_the_cap_and_leave_one_server_at_least() {
        let p = OutlierPolicy::default();
        let secs = |n| ejection_time(&p, n).as_secs();
        assert_eq!((secs(1), secs(2), secs(3), secs(4), secs(5), secs(40)), (30, 60, 120, 240, 300, 300));
        assert!(may_eject(0, 3, 10), "one of three may go");
        assert!(!may_eject(1, 3, 10));
        assert!(!may_eject(0, 1, 100), "never the only server");
        assert!(may_eject(4, 10, 50) && !may_eject(5, 10, 50));
    }
}
