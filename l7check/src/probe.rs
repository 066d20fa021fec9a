//! The probe: one health check of one server, judged. No scheduling, no
//! health policy: it says what it saw.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use vigil_hostdb::{CheckResult, OriginKey};
use vigil_session::{Fetched, Freshness, Pool, Protocol, RetryPolicy, SessionError, Upstream, empty_body};

use crate::Check;

/// Most body a check reads (SPEC: `expect_body` is looked for in the first 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct ProbeRequest<'a> {
    /// The origin (for the default Host header).
    pub origin: &'a OriginKey,
    /// The server.
    pub server: SocketAddr,
    /// How the origin's servers are reached.
    pub upstream: OriginUpstream,
    /// The check.
    pub check: &'a Check,
    /// Open a fresh connection instead of reusing an idle session.
    pub fresh: bool,
}

/// How an origin's servers are reached: the session pool's [`Upstream`]
/// (protocol and connector profile) and whether it is TLS (the URI scheme
/// an h2 request names, the default port left out of `Host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginUpstream {
    /// Protocol and connector profile.
    pub upstream: Upstream,
    /// `https`: TLS to the servers.
    pub https: bool,
}

impl Default for OriginUpstream {
    /// Plain HTTP/1.1.
    fn default() -> Self {
        Self { upstream: Upstream::plain(Protocol::Http1), https: false }
    }
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// Pass or fail, with the detail (`"200"`, `"timeout"`, ...).
    pub result: CheckResult,
    /// Whether the failure was at L4 ([`SessionError::is_l4_failure`]:
    /// connect refused or timed out, reset before the response head, a
    /// garbage answer): HostDB's fail function counts it.
    pub l4_failure: bool,
}

/// The boxed future a [`Probe`] returns.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>>;

/// Performs one check. [`HttpProbe`] is the real one.
pub trait Probe: Send + Sync + 'static {
    /// Checks `req.server` once, within `req.check.settings.timeout`.
    fn probe<'a>(&'a self, req: ProbeRequest<'a>) -> ProbeFuture<'a>;
}

/// HTTP checks over the shared session pool.
///
/// The request: the check's method and path, Host from the check (default:
/// the origin's host, with its port unless 80), the check's headers, no
/// body. Redirects are never followed (a 3xx is judged like any status).
/// One timeout covers connect, response head and body. A failure on a
/// reused session (it may have died idle, or sit behind a dead path) is
/// retried once on a fresh connection before it counts
/// ([`RetryPolicy::CHECK`]); what counts at L4 is the pool's one rule
/// ([`SessionError::is_l4_failure`]), the same as for a proxied request.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    pool: Pool,
}

impl HttpProbe {
    /// Probes through `pool` (the same pool user requests use).
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

impl Probe for HttpProbe {
    fn probe<'a>(&'a self, req: ProbeRequest<'a>) -> ProbeFuture<'a> {
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            let freshness = if req.fresh { Freshness::Fresh } else { Freshness::IdlePreferred };
            let target = req.upstream.upstream.target(req.server);
            let fetched = match build_request(&req) {
                Ok(request) => {
                    let timeout = req.check.settings.timeout;
                    self.pool.fetch(target, freshness, request, timeout, MAX_BODY, RetryPolicy::CHECK).await
                }
                // Unreachable with a validated config: a header the http crate refuses.
                Err(e) => return judge(req.check, Err(Failure::Request(e)), start.elapsed()),
            };
            judge(req.check, fetched.map_err(Failure::Session), start.elapsed())
        })
    }
}

/// Why a check got no response to judge.
enum Failure {
    Session(SessionError),
    Request(http::Error),
}

fn judge(check: &Check, fetched: Result<Fetched, Failure>, latency: Duration) -> ProbeOutcome {
    let (passed, detail, l4_failure): (bool, String, bool) = match fetched {
        Ok(f) => {
            let status = f.head.status.as_u16();
            let body_ok =
                check.expect_body.as_ref().is_none_or(|needle| contains(&f.body, needle.as_bytes()));
            if !check.status_ok(status) {
                (false, status.to_string(), false)
            } else if !body_ok {
                (false, format!("{status}, body without expected text"), false)
            } else {
                (true, status.to_string(), false)
            }
        }
        Err(Failure::Session(e)) => (false, e.detail(), e.is_l4_failure()),
        Err(Failure::Request(e)) => (false, format!("invalid check request: {e}"), false),
    };
    ProbeOutcome { result: CheckResult { passed, detail: detail.into(), latency }, l4_failure }
}

/// The Host header value for `origin`: host, plus the port unless it is
/// the scheme's default (80, or 443 with `https`).
pub(crate) fn default_host(origin: &OriginKey, https: bool) -> String {
    let host = origin.host();
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let default = if https { 443 } else { 80 };
    if origin.port() == default { host } else { format!("{host}:{}", origin.port()) }
}

fn build_request(req: &ProbeRequest<'_>) -> Result<http::Request<vigil_session::RequestBody>, http::Error> {
    let https = req.upstream.https;
    let host = req.check.host.clone().unwrap_or_else(|| default_host(req.origin, https));
    // HTTP/1.1 takes the origin form plus Host; h2 wants the authority in
    // the URI; a protocol settled by ALPN gets the absolute form and no
    // Host, which either protocol's client turns into what it needs.
    let mut builder = http::Request::builder().method(req.check.method.clone());
    builder = match req.upstream.upstream.protocol {
        Protocol::Http1 => builder.uri(req.check.path.as_str()).header(http::header::HOST, &host),
        Protocol::H2 | Protocol::Auto => {
            let scheme = if https { "https" } else { "http" };
            builder.uri(format!("{scheme}://{host}{}", req.check.path))
        }
    };
    for (name, value) in &req.check.headers {
        builder = builder.header(name, value);
    }
    builder.body(empty_body())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
