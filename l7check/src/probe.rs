//! The probe: one health check of one server, judged. No scheduling, no
//! health policy: it says what it saw.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http_body_util::BodyExt;
use vigil_hostdb::{CheckResult, OriginKey};
use vigil_session::{Freshness, Pool, Protocol, SessionError, Target, empty_body};

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
    /// The protocol the origin speaks.
    pub protocol: Protocol,
    /// The check.
    pub check: &'a Check,
    /// Open a fresh connection instead of reusing an idle session.
    pub fresh: bool,
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    /// Pass or fail, with the detail (`"200"`, `"timeout"`, ...).
    pub result: CheckResult,
    /// Whether the failure was at L4 (connect refused or timed out, reset
    /// before the response head): HostDB's fail function counts it.
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
/// retried once on a fresh connection before it counts.
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

/// How one attempt ended.
enum Attempt {
    Judged { status: u16, body_ok: bool },
    Transport(SessionError),
    BodyError,
    TimedOut,
}

impl Probe for HttpProbe {
    fn probe<'a>(&'a self, req: ProbeRequest<'a>) -> ProbeFuture<'a> {
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            let timeout = req.check.settings.timeout;
            let freshness = if req.fresh { Freshness::Fresh } else { Freshness::IdlePreferred };
            let (mut outcome, reused) = self.attempt(&req, freshness, timeout).await;
            let retry = match &outcome {
                Attempt::Transport(e) => reused && !e.is_connect(),
                Attempt::TimedOut | Attempt::BodyError => reused,
                Attempt::Judged { .. } => false,
            };
            if retry {
                let left = timeout.saturating_sub(start.elapsed()).max(timeout / 2);
                outcome = self.attempt(&req, Freshness::Fresh, left).await.0;
            }
            judge(req.check, outcome, start.elapsed())
        })
    }
}

impl HttpProbe {
    /// One try; also says whether the session was a reused one.
    async fn attempt(
        &self,
        req: &ProbeRequest<'_>,
        freshness: Freshness,
        timeout: Duration,
    ) -> (Attempt, bool) {
        let mut reused = false;
        let work = async {
            let target = Target { addr: req.server, protocol: req.protocol };
            let session = match self.pool.checkout(target, freshness).await {
                Ok(s) => s,
                Err(e) => return Attempt::Transport(e),
            };
            reused = session.is_reused();
            let request = match build_request(req) {
                Ok(r) => r,
                Err(_) => return Attempt::BodyError, // unreachable with a validated config
            };
            let resp = match session.send(request).await {
                Ok(r) => r,
                Err(e) => return Attempt::Transport(e),
            };
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut seen: Vec<u8> = Vec::new();
            // Read to the end (so the session can be reused) or to 64 KiB.
            while seen.len() < MAX_BODY {
                match body.frame().await {
                    None => break,
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = MAX_BODY - seen.len();
                            seen.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    Some(Err(_)) => return Attempt::BodyError,
                }
            }
            let body_ok = match &req.check.expect_body {
                None => true,
                Some(needle) => contains(&seen, needle.as_bytes()),
            };
            Attempt::Judged { status, body_ok }
        };
        let outcome = tokio::time::timeout(timeout, work).await.unwrap_or(Attempt::TimedOut);
        (outcome, reused)
    }
}

fn judge(check: &Check, outcome: Attempt, latency: Duration) -> ProbeOutcome {
    let (passed, detail, l4_failure): (bool, String, bool) = match outcome {
        Attempt::Judged { status, .. } if !check.status_ok(status) => (false, status.to_string(), false),
        Attempt::Judged { status, body_ok: false } => {
            (false, format!("{status}, body without expected text"), false)
        }
        Attempt::Judged { status, .. } => (true, status.to_string(), false),
        Attempt::Transport(e) => (false, e.kind().as_str().replace('_', " "), e.is_l4_failure()),
        Attempt::BodyError => (false, "body error".into(), false),
        Attempt::TimedOut => (false, "timeout".into(), false),
    };
    ProbeOutcome { result: CheckResult { passed, detail: detail.into(), latency }, l4_failure }
}

/// The Host header value for `origin`: host, plus the port unless 80.
pub(crate) fn default_host(origin: &OriginKey) -> String {
    let host = origin.host();
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    if origin.port() == 80 { host } else { format!("{host}:{}", origin.port()) }
}

fn build_request(req: &ProbeRequest<'_>) -> Result<http::Request<vigil_session::RequestBody>, http::Error> {
    let host = req.check.host.clone().unwrap_or_else(|| default_host(req.origin));
    // HTTP/1.1 takes the origin form plus Host; h2 wants the authority in the URI.
    let uri = match req.protocol {
        Protocol::Http1 => req.check.path.clone(),
        Protocol::H2c => format!("http://{host}{}", req.check.path),
    };
    let mut builder = http::Request::builder().method(req.check.method.clone()).uri(uri);
    if req.protocol == Protocol::Http1 {
        builder = builder.header(http::header::HOST, &host);
    }
    for (name, value) in &req.check.headers {
        builder = builder.header(name, value);
    }
    builder.body(empty_body())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
