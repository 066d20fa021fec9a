//! The routing table built from `[[remap]]`, and the HostDB and checker
//! inputs built from the whole config. Rebuilt on reload and swapped in one
//! store; the request path reads it with one arc-swap load.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use vigil_hostdb::{HostDbConfig, L4Policy, LbPolicy, OriginKey, OriginSpec, ServerSource};
use vigil_l7check::{HealthChecks, OriginUpstream};
use vigil_session::Upstream;

use crate::accesslog::AccessLog;
use crate::config::{Config, HostMatch};
use crate::limits::OriginQueue;

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Where requests for one client host go.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) origin: OriginKey,
    pub(crate) preserve_host: bool,
    /// How the origin's servers are reached (protocol, TLS profile).
    pub(crate) upstream: OriginUpstream,
    /// How an upgrade (WebSocket) reaches them: HTTP/1.1, or `None` for an
    /// h2 origin, which cannot take one.
    pub(crate) upgrade: Option<Upstream>,
    /// `Host` sent upstream unless `preserve_host`: the origin's host, with
    /// its port unless the scheme's default.
    pub(crate) host_header: HeaderValue,
    /// The origin, as metric label.
    pub(crate) label: Arc<str>,
    /// This route's request counters (`vigil_requests_total`).
    pub(crate) counters: crate::metrics::RequestCounters,
    /// The origin's bound on requests in flight (`max_connections`), one
    /// per origin whichever remap leads to it.
    pub(crate) queue: Option<Arc<OriginQueue>>,
}

/// What every request follows, copied out of the table in one load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestPolicy {
    pub(crate) origin_timeout: Duration,
    pub(crate) connect_attempts: u32,
    pub(crate) request_id: bool,
    pub(crate) trust_forwarded: bool,
    pub(crate) max_request_body: Option<u64>,
    pub(crate) body_timeout: Duration,
}

/// Everything the request path needs from the config.
#[derive(Debug)]
pub(crate) struct Routes {
    exact: Map<Arc<Route>>,
    /// Keyed by `.suffix` (from `*.suffix`).
    suffix: Map<Arc<Route>>,
    pub(crate) policy: RequestPolicy,
    /// The access log, when one is on.
    pub(crate) access_log: Option<Arc<AccessLog>>,
    /// How each origin is reached (the admin view's pool counts ask).
    upstreams: HashMap<OriginKey, OriginUpstream>,
    /// Each bounded origin's queue.
    queues: HashMap<OriginKey, Arc<OriginQueue>>,
}

impl Routes {
    /// The table for `config`, each origin reached as `upstreams` says
    /// (plain HTTP/1.1 for one it does not name). An origin queue whose
    /// bounds did not change is taken over from `previous`: the requests in
    /// flight hold its room.
    pub(crate) fn new(
        config: &Config,
        upstreams: &HashMap<OriginKey, OriginUpstream>,
        upgrades: &HashMap<OriginKey, Upstream>,
        access_log: Option<Arc<AccessLog>>,
        previous: Option<&Self>,
    ) -> Self {
        let mut queues = HashMap::new();
        for (key, o) in &config.origins {
            let (Some(max), Ok(k)) = (o.max_connections, key.parse::<OriginKey>()) else { continue };
            let timeout = o.queue_timeout.unwrap_or(config.connect_timeout);
            let kept = previous
                .and_then(|p| p.queues.get(&k))
                .filter(|q| q.max == max && q.timeout == timeout)
                .cloned();
            queues.insert(k, kept.unwrap_or_else(|| Arc::new(OriginQueue::new(max, timeout))));
        }
        let mut routes = Self {
            exact: Map::default(),
            suffix: Map::default(),
            policy: RequestPolicy {
                origin_timeout: config.origin_timeout,
                connect_attempts: config.connect_attempts,
                request_id: config.request_id,
                trust_forwarded: config.trust_forwarded,
                max_request_body: config.limits.max_request_body,
                body_timeout: config.limits.body_timeout,
            },
            access_log,
            upstreams: upstreams.clone(),
            queues,
        };
        for remap in &config.remaps {
            let upstream = upstreams.get(&remap.to).copied().unwrap_or_default();
            let route = Arc::new(Route {
                origin: remap.to.clone(),
                preserve_host: remap.preserve_host,
                upstream,
                upgrade: match upstreams.get(&remap.to) {
                    Some(_) => upgrades.get(&remap.to).copied(),
                    None => Some(Upstream::plain(vigil_session::Protocol::Http1)),
                },
                host_header: host_header(&remap.to, upstream.https),
                label: Arc::from(remap.to.as_str()),
                counters: Default::default(),
                queue: routes.queues.get(&remap.to).cloned(),
            });
            // First rule wins for a host listed twice (check-config refuses that).
            let (map, key) = match &remap.from {
                HostMatch::Exact(h) => (&mut routes.exact, h),
                HostMatch::Suffix(s) => (&mut routes.suffix, s),
            };
            map.entry(key.as_str().into()).or_insert(route);
        }
        routes
    }

    /// Per origin label, its requests and 5xx answers so far, from the
    /// routes' own counters (routes to one origin share them, so each
    /// origin and code is read once). The dashboard's stats read it.
    pub(crate) fn request_totals(&self) -> HashMap<Arc<str>, (u64, u64)> {
        let mut seen = std::collections::HashSet::new();
        let mut out: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        for route in self.exact.values().chain(self.suffix.values()) {
            for (code, n) in route.counters.counts() {
                if seen.insert((Arc::clone(&route.label), code)) {
                    let t = out.entry(Arc::clone(&route.label)).or_default();
                    t.0 += n;
                    if code >= 500 {
                        t.1 += n;
                    }
                }
            }
        }
        out
    }

    /// Each bounded origin's queue.
    pub(crate) fn queues(&self) -> impl Iterator<Item = (&OriginKey, &Arc<OriginQueue>)> {
        self.queues.iter()
    }

    /// How `origin` is reached (plain HTTP/1.1 when nothing says otherwise).
    pub(crate) fn upstream(&self, origin: &OriginKey) -> OriginUpstream {
        self.upstreams.get(origin).copied().unwrap_or_default()
    }

    /// The route for a client's `Host` (any case, port ignored): an exact
    /// rule first, then the longest `*.suffix` rule.
    pub(crate) fn find(&self, host: &str) -> Option<&Arc<Route>> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(r) = self.exact.get(host) {
            return Some(r);
        }
        if self.suffix.is_empty() {
            return None;
        }
        // Leftmost dot first: the longest suffix wins.
        host.match_indices('.').filter(|&(i, _)| i > 0).find_map(|(i, _)| self.suffix.get(&host[i..]))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split_once(']').map_or(host, |(addr, _)| addr);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The `Host` header for an origin: host, plus the port unless it is the
/// scheme's default (80, or 443 with `https`).
pub(crate) fn host_header(origin: &OriginKey, https: bool) -> HeaderValue {
    let host = origin.host();
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let default = if https { 443 } else { 80 };
    let value = if origin.port() == default { host } else { format!("{host}:{}", origin.port()) };
    // An OriginKey is a validated host name or address: always a valid value.
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Every origin the config names: the targets of remaps and the
/// `[origins."…"]` sections, with their servers, policy and check policy.
pub(crate) fn hostdb_config(config: &Config, hc: &HealthChecks) -> Result<HostDbConfig, String> {
    let mut keys: Vec<OriginKey> = config.remaps.iter().map(|r| r.to.clone()).collect();
    for key in config.origins.keys() {
        keys.push(key.parse().map_err(|e| format!("origin {key:?}: {e}"))?);
    }
    keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    keys.dedup();
    let origins = keys
        .into_iter()
        .map(|key| {
            let settings = config.origins.get(key.as_str());
            let servers = match settings.and_then(|s| s.servers.clone()) {
                Some(list) => ServerSource::Static(list),
                None => ServerSource::Dns,
            };
            let lb = settings.map_or(LbPolicy::RoundRobin, |s| s.lb);
            let check = hc.matching(&key).map(|c| c.settings.policy);
            let policy = settings.map(|s| s.policy.clone()).unwrap_or_default();
            OriginSpec { key, servers, lb, check, policy }
        })
        .collect();
    Ok(HostDbConfig {
        l4: L4Policy { fail_threshold: config.fail_threshold, down_time: config.down_time },
        origins,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn routes(remaps: &str) -> Routes {
        let text = format!("[proxy]\nlisten = \"127.0.0.1:8080\"\n{remaps}");
        Routes::new(
            &Config::parse(&text, Path::new("v.toml")).unwrap(),
            &HashMap::new(),
            &HashMap::new(),
            None,
            None,
        )
    }

    #[test]
    fn exact_then_longest_suffix_any_case_port_ignored() {
        let r = routes(
            r#"
[[remap]]
from = "www.example.com"
to = "http://exact:80"
[[remap]]
from = "*.example.com"
to = "http://wide:80"
[[remap]]
from = "*.api.example.com"
to = "http://narrow:8080"
"#,
        );
        let to = |h: &str| r.find(h).map(|r| r.origin.as_str().to_owned());
        assert_eq!(to("www.example.com").as_deref(), Some("exact:80"));
        assert_eq!(to("WWW.Example.COM:8080").as_deref(), Some("exact:80"));
        assert_eq!(to("www.example.com.").as_deref(), Some("exact:80"));
        assert_eq!(to("img.example.com").as_deref(), Some("wide:80"));
        assert_eq!(to("v1.api.example.com").as_deref(), Some("narrow:8080"));
        assert_eq!(to("example.com"), None, "*.example.com does not match the bare domain");
        assert_eq!(to(".example.com"), None);
        assert_eq!(to("other.org"), None);
        assert_eq!(r.find("x.api.example.com").unwrap().host_header, "narrow:8080");
        assert_eq!(r.find("www.example.com").unwrap().host_header, "exact");
    }

    #[test]
    fn ports_and_v6_are_stripped() {
        assert_eq!(strip_port("a.b:81"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.b:x"), "a.b:x");
    }
}
