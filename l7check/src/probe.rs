//! The probe: one health check of one server, judged. No scheduling, no
//! health policy: it says what it saw.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use vigil_hostdb::{CheckResult, OriginKey};
use vigil_session::{Fetched, Freshness, Pool, Protocol, RetryPolicy, SessionError, Upstream};

use crate::Check;
use crate::config::{CheckKind, GrpcCheck, HttpCheck};

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
    /// The server said `vigil-health: down` or `drain` on the answer: out
    /// at once, whatever the thresholds (see `Origin::signal_unhealthy`).
    pub signalled: bool,
}

/// The boxed future a [`Probe`] returns.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = ProbeOutcome> + Send + 'a>>;

/// Performs one check. [`PoolProbe`] is the real one.
pub trait Probe: Send + Sync + 'static {
    /// Checks `req.server` once, within `req.check.settings.timeout`.
    fn probe<'a>(&'a self, req: ProbeRequest<'a>) -> ProbeFuture<'a>;
}

/// Every kind of check, HTTP and gRPC over the shared session pool, TCP on
/// connections of its own.
///
/// **HTTP**: the check's method and path, Host from the check (default:
/// the origin's host, with its port unless it is the scheme's default),
/// the check's headers, no body. Redirects are never followed (a 3xx is
/// judged like any status).
///
/// **gRPC**: `POST /grpc.health.v1.Health/Check` with the check's service
/// name, over the origin's h2 sessions (the ones user traffic uses);
/// `SERVING` passes, anything else fails with what it was.
///
/// For both, one timeout covers connect, response head and body, and a
/// failure on a reused session (it may have died idle, or sit behind a
/// dead path) is retried once on a fresh connection before it counts
/// ([`RetryPolicy::CHECK`]); what counts at L4 is the pool's one rule
/// ([`SessionError::is_l4_failure`]), the same as for a proxied request.
///
/// **TCP**: a connection of its own (a line protocol is no HTTP session to
/// share), then the `send` and `expect` steps; connect failures and resets
/// count at L4.
///
/// A check with a `port` of its own counts nothing at L4: its failures are
/// failed checks, with the port in the detail.
#[derive(Debug, Clone)]
pub struct PoolProbe {
    pool: Pool,
}

impl PoolProbe {
    /// Probes through `pool` (the same pool user requests use).
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

impl Probe for PoolProbe {
    fn probe<'a>(&'a self, req: ProbeRequest<'a>) -> ProbeFuture<'a> {
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            let addr = req.check.addr_for(req.server);
            let req = if req.check.plain {
                // `tls = false` on another port: plain HTTP/1.1, or h2c for gRPC.
                let protocol =
                    if matches!(req.check.kind, CheckKind::Grpc(_)) { Protocol::H2 } else { Protocol::Http1 };
                ProbeRequest {
                    upstream: OriginUpstream { upstream: Upstream::plain(protocol), https: false },
                    ..req
                }
            } else {
                req
            };
            let timeout = req.check.settings.timeout;
            let mut signalled = false;
            let (passed, detail, l4_failure) = match &req.check.kind {
                CheckKind::Http(http) => {
                    let fetched = self.fetch(&req, addr, build_http(&req, http)).await;
                    if let Ok(f) = &fetched
                        && let Some(value) = going_away(&f.head.headers)
                    {
                        signalled = true;
                        (false, format!("{}, vigil-health: {value}", f.head.status.as_u16()), false)
                    } else {
                        judge_http(http, fetched)
                    }
                }
                CheckKind::Grpc(grpc) => {
                    let fetched = self.fetch(&req, addr, build_grpc(&req, grpc)).await;
                    let gone = fetched.as_ref().ok().and_then(|f| {
                        going_away(&f.head.headers).or_else(|| f.trailers.as_ref().and_then(going_away))
                    });
                    match fetched {
                        Ok(_) if let Some(value) = gone => {
                            signalled = true;
                            (false, format!("grpc: vigil-health: {value}"), false)
                        }
                        Ok(f) => match crate::grpc::judge(&f) {
                            Ok(detail) => (true, detail, false),
                            Err(detail) => (false, detail, false),
                        },
                        Err(e) => failure(e),
                    }
                }
                CheckKind::Tcp(tcp) => {
                    let seen = crate::tcp::check(addr, tcp, timeout).await;
                    (seen.passed, seen.detail, seen.l4_failure)
                }
            };
            // Another port's failures are the check's, not the service port's.
            let (detail, l4_failure) = match req.check.port {
                Some(port) if !passed => (format!("port {port}: {detail}"), false),
                _ => (detail, l4_failure),
            };
            let result = CheckResult { passed, detail: detail.into(), latency: start.elapsed() };
            ProbeOutcome { result, l4_failure, signalled }
        })
    }
}

impl PoolProbe {
    /// Sends a check's request over the pool to `addr` (the server, or the
    /// check's own port of it).
    async fn fetch(
        &self,
        req: &ProbeRequest<'_>,
        addr: SocketAddr,
        request: Result<http::Request<Bytes>, http::Error>,
    ) -> Result<Fetched, Failure> {
        let request = request.map_err(Failure::Request)?;
        let freshness = if req.fresh { Freshness::Fresh } else { Freshness::IdlePreferred };
        let target = req.upstream.upstream.target(addr);
        let timeout = req.check.settings.timeout;
        self.pool
            .fetch(target, freshness, request, timeout, MAX_BODY, RetryPolicy::CHECK)
            .await
            .map_err(Failure::Session)
    }
}

/// Why a check got no response to judge.
enum Failure {
    Session(SessionError),
    /// Unreachable with a validated config: a header the http crate refuses.
    Request(http::Error),
}

fn failure(e: Failure) -> (bool, String, bool) {
    match e {
        Failure::Session(e) => (false, e.detail(), e.is_l4_failure()),
        Failure::Request(e) => (false, format!("invalid check request: {e}"), false),
    }
}

/// `vigil-health: down` or `drain` on an answer: the server is going away.
fn going_away(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("vigil-health")?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("down") {
        Some("down")
    } else if value.eq_ignore_ascii_case("drain") {
        Some("drain")
    } else {
        None
    }
}

fn judge_http(check: &HttpCheck, fetched: Result<Fetched, Failure>) -> (bool, String, bool) {
    let f = match fetched {
        Ok(f) => f,
        Err(e) => return failure(e),
    };
    let status = f.head.status.as_u16();
    if !check.status_ok(status) {
        return (false, status.to_string(), false);
    }
    if let Some(needle) = &check.expect_body
        && !contains(&f.body, needle.as_bytes())
    {
        return (false, format!("{status}, body without expected text"), false);
    }
    if let Some(want) = &check.expect_header
        && !want.satisfied_by(&f.head.headers)
    {
        let detail = match f.head.headers.get(&want.name) {
            None => format!("{status}, no {} header", want.name),
            Some(v) => format!(
                "{status}, {}: {:?} not as expected",
                want.name,
                v.as_bytes().escape_ascii().to_string()
            ),
        };
        return (false, detail, false);
    }
    (true, status.to_string(), false)
}

/// The Host header value for `origin`: host, plus the port unless it is
/// the scheme's default (80, or 443 with `https`).
pub(crate) fn default_host(origin: &OriginKey, https: bool) -> String {
    let host = origin.host();
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let default = if https { 443 } else { 80 };
    if origin.port() == default { host } else { format!("{host}:{}", origin.port()) }
}

/// A request line and Host for `path` as the origin's protocol wants it:
/// HTTP/1.1 takes the origin form plus Host; h2 wants the authority in the
/// URI; a protocol settled by ALPN gets the absolute form and no Host,
/// which either protocol's client turns into what it needs.
fn builder(req: &ProbeRequest<'_>, host: Option<&String>, path: &str) -> http::request::Builder {
    let https = req.upstream.https;
    let host = host.cloned().unwrap_or_else(|| default_host(req.origin, https));
    let builder = http::Request::builder();
    match req.upstream.upstream.protocol {
        Protocol::Http1 => builder.uri(path).header(http::header::HOST, &host),
        Protocol::H2 | Protocol::Auto => {
            let scheme = if https { "https" } else { "http" };
            builder.uri(format!("{scheme}://{host}{path}"))
        }
    }
}

fn build_http(req: &ProbeRequest<'_>, check: &HttpCheck) -> Result<http::Request<Bytes>, http::Error> {
    let mut builder = builder(req, check.host.as_ref(), &check.path).method(check.method.clone());
    for (name, value) in &check.headers {
        builder = builder.header(name, value);
    }
    builder.body(Bytes::new())
}

fn build_grpc(req: &ProbeRequest<'_>, check: &GrpcCheck) -> Result<http::Request<Bytes>, http::Error> {
    // The server's deadline is the check's timeout (gRPC's `grpc-timeout`,
    // in milliseconds: at most 8 digits).
    let deadline = req.check.settings.timeout.as_micros().div_ceil(1000).clamp(1, 99_999_999);
    let mut builder = builder(req, check.host.as_ref(), crate::grpc::PATH)
        .method(http::Method::POST)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header("grpc-timeout", format!("{deadline}m"));
    for (name, value) in &check.headers {
        builder = builder.header(name, value);
    }
    builder.body(crate::grpc::request(&check.service))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
