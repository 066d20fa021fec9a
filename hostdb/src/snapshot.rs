//! Point-in-time views for the admin API (`GET /hosts`). Field names are the
//! JSON contract of SPEC; serialize with serde.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::origin::Origin;
use crate::{L4State, L7State, LbPolicy, OriginKey, Source};

/// Every origin and server (`GET /hosts`).
#[derive(Debug, Clone, Serialize)]
pub struct HostsView {
    /// This node's id. HostDB leaves it empty; the caller fills it in.
    pub node: String,
    /// Origins, sorted by key.
    pub origins: Vec<OriginView>,
}

/// One origin.
#[derive(Debug, Clone, Serialize)]
pub struct OriginView {
    /// `host:port`.
    pub origin: OriginKey,
    /// Whether active checks run for it now.
    pub checking: bool,
    /// Milliseconds since the last user request; `null` if none yet.
    pub last_request_ms_ago: Option<u64>,
    /// Load-balancing policy.
    pub lb: LbPolicy,
    /// In panic: fewer routable servers than its `panic_threshold`, so
    /// requests go to every server not in maintenance.
    pub panic: bool,
    /// DNS state, for DNS origins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsView>,
    /// Servers, in list order.
    pub servers: Vec<ServerView>,
}

/// DNS state of one origin.
#[derive(Debug, Clone, Serialize)]
pub struct DnsView {
    /// Milliseconds since the last good answer; `null` if none yet.
    pub resolved_ms_ago: Option<u64>,
    /// TTL of the last good answer, in seconds.
    pub ttl_s: Option<u64>,
    /// The current error while lookups fail (the last answer stays in use).
    pub error: Option<String>,
    /// Milliseconds since lookups began failing.
    pub failing_for_ms: Option<u64>,
    /// Milliseconds until the next lookup.
    pub next_refresh_in_ms: Option<u64>,
}

/// One server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    /// `ip:port`.
    pub addr: SocketAddr,
    /// Not in maintenance, not L4-down, not L7-unhealthy.
    pub routable: bool,
    /// In maintenance.
    pub maintenance: bool,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Its weight (configured, or set at run time; 0: drained).
    pub weight: u32,
    /// In slow start: how far through its window (0 to 1); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<SlowStartView>,
    /// Outlier detection's view, when the origin has it on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierView>,
    /// L4 status.
    pub l4: L4View,
    /// L7 status.
    pub l7: L7View,
    /// Pool counts. HostDB knows nothing of the session pool: the caller fills
    /// them in (see [`HostsView::fill_pool`]).
    pub pool: PoolView,
}

/// Slow start of a [`ServerView`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SlowStartView {
    /// How far through the window (0 to 1): its share of its weight is
    /// 10 % plus 90 % of this.
    pub progress: f64,
}

/// Outlier detection of a [`ServerView`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutlierView {
    /// Ejected now.
    pub ejected: bool,
    /// Milliseconds of ejection left (0 unless ejected).
    pub until_ms: u64,
    /// Ejections so far.
    pub ejections: u32,
    /// Failing user responses in a row.
    pub consecutive_failures: u32,
}

/// L4 part of a [`ServerView`].
#[derive(Debug, Clone, Serialize)]
pub struct L4View {
    /// `up`, `down` or `retry`.
    pub state: L4State,
    /// Consecutive failures.
    pub consecutive_failures: u32,
    /// Milliseconds of down time left (0 unless `down`).
    pub down_for_ms: u64,
    /// Why the last L4 failure happened (`connect refused`, `tls:
    /// certificate expired`), until a success; absent when none was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// L7 part of a [`ServerView`].
#[derive(Debug, Clone, Serialize)]
pub struct L7View {
    /// `unknown`, `healthy`, `unhealthy` or `unchecked`.
    pub state: L7State,
    /// Passes in a row.
    pub consecutive_passes: u32,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Milliseconds since the last result; `null` if none.
    pub last_check_ms_ago: Option<u64>,
    /// `pass` or `fail`; `null` if none.
    pub last_result: Option<&'static str>,
    /// Status code or failure reason of the last result.
    pub last_detail: Option<String>,
    /// Latency of the last check in milliseconds.
    pub last_latency_ms: Option<f64>,
    /// `local` or `cluster:<node_id>`.
    pub source: Source,
}

/// Session-pool counts of a [`ServerView`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolView {
    /// Idle sessions.
    pub idle: u32,
    /// Sessions in use.
    pub in_use: u32,
}

impl HostsView {
    /// Fills every server's pool counts from `counts(origin, server)`.
    pub fn fill_pool(&mut self, mut counts: impl FnMut(&OriginKey, SocketAddr) -> PoolView) {
        for o in &mut self.origins {
            for s in &mut o.servers {
                s.pool = counts(&o.origin, s.addr);
            }
        }
    }

    /// The view of one origin.
    pub fn origin(&self, key: &str) -> Option<&OriginView> {
        self.origins.iter().find(|o| o.origin.as_str() == key)
    }
}

impl OriginView {
    /// The view of one server.
    pub fn server(&self, addr: SocketAddr) -> Option<&ServerView> {
        self.servers.iter().find(|s| s.addr == addr)
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub(crate) fn build(origins: &[Arc<Origin>], now: Instant) -> HostsView {
    let mut out: Vec<OriginView> = origins.iter().map(|o| origin_view(o, now)).collect();
    out.sort_by(|a, b| a.origin.as_str().cmp(b.origin.as_str()));
    HostsView { node: String::new(), origins: out }
}

fn origin_view(o: &Origin, now: Instant) -> OriginView {
    let ago = |t: Instant| ms(now.saturating_duration_since(t));
    let policy = o.policy();
    let weights: std::collections::HashMap<SocketAddr, u32> = o.weights().into_iter().collect();
    let servers = o.servers().iter().map(|s| server_view(s, &policy, &weights, now)).collect();
    OriginView {
        origin: o.key().clone(),
        checking: o.is_checking(),
        last_request_ms_ago: o.last_request_ago(now).map(ms),
        lb: o.lb(),
        panic: o.panicking(),
        dns: o.dns_status().map(|d| DnsView {
            resolved_ms_ago: d.resolved_at.map(ago),
            ttl_s: d.ttl.map(|t| t.as_secs()),
            error: d.error,
            failing_for_ms: d.failing_since.map(ago),
            next_refresh_in_ms: d.next_refresh.map(|t| ms(t.saturating_duration_since(now))),
        }),
        servers,
    }
}

/// One server's view (as in [`origin_view`]); `weights` are its origin's.
fn server_view(
    s: &crate::Server,
    policy: &crate::OriginPolicy,
    weights: &std::collections::HashMap<SocketAddr, u32>,
    now: Instant,
) -> ServerView {
    let ago = |t: Instant| ms(now.saturating_duration_since(t));
    let l7 = s.l7();
    let last = l7.last_result.as_ref();
    let (failures, ejections, left) = s.outlier(now);
    ServerView {
        addr: s.addr(),
        routable: s.is_routable(now),
        maintenance: s.maintenance(),
        in_flight: s.in_flight(),
        weight: weights.get(&s.addr()).copied().unwrap_or(crate::policy::DEFAULT_WEIGHT),
        slow_start: policy
            .slow_start
            .and_then(|window| s.ramp(now, window))
            .map(|progress| SlowStartView { progress }),
        outlier: policy.outlier.map(|_| OutlierView {
            ejected: left.is_some(),
            until_ms: left.map_or(0, ms),
            ejections,
            consecutive_failures: failures,
        }),
        l4: L4View {
            state: s.l4_state(now),
            consecutive_failures: s.l4_failures(),
            down_for_ms: s.l4_down_for(now).map_or(0, ms),
            last_error: s.l4_error().map(|e| e.to_string()),
        },
        l7: L7View {
            state: l7.state,
            consecutive_passes: l7.consecutive_passes,
            consecutive_failures: l7.consecutive_failures,
            last_check_ms_ago: l7.last_check.map(ago),
            last_result: last.map(|r| if r.passed { "pass" } else { "fail" }),
            last_detail: last.map(|r| r.detail.to_string()),
            last_latency_ms: last.map(|r| r.latency.as_secs_f64() * 1000.0),
            source: l7.source.clone(),
        },
        pool: PoolView::default(),
    }
}

/// The view of `server` of `o` now, as `GET /hosts` shows it (pool counts
/// left at zero), or `None` when the origin has no such server.
pub(crate) fn one_server(o: &Origin, server: SocketAddr, now: Instant) -> Option<ServerView> {
    let s = o.server(server)?;
    let weights: std::collections::HashMap<SocketAddr, u32> = o.weights().into_iter().collect();
    Some(server_view(&s, &o.policy(), &weights, now))
}
