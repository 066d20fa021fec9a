//! The request path: remap -> HostDB pick -> checker touch -> pooled
//! session -> streamed response, with SPEC's retries and error statuses.
//!
//! L4 outcomes are reported here, on the exact `Server` record the pick
//! returned; what counts is the session pool's one rule
//! (`SessionError::is_l4_failure`: a connect failure, a reset or EOF before
//! the response head, a garbage answer, and a malformed response body
//! found while streaming it; not an HTTP/2 stream the origin refused or
//! reset while its connection lived); a response head clears them. A response that
//! takes longer than `origin_timeout` is a 504 and not an L4 failure (a
//! slow endpoint is not a dead server; the L7 check, with its own short
//! timeout, is what catches a hung one). Whether a failed attempt may go to
//! another server is the pool's rule too (`SessionError::may_retry_elsewhere`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use vigil_hostdb::{Attempt, LbPolicy, Pick, SelectError};
use vigil_session::{
    BoxError, ErrorKind, Freshness, PooledBody, Protocol, RequestBody, RetryPolicy, SessionError, Upgraded,
    Upstream,
};

use crate::accesslog::{AccessLog, Entry};
use crate::app::Shared;
use crate::limits::QueueTimeout;
use crate::routes::{RequestPolicy, Route};

/// What the client gets: the origin's body streamed through (holding the
/// pick, so the server counts the request in flight until the body ends,
/// and the room in its origin's queue), or a short body of our own. With
/// the access log on, it carries the request's line, written when the body
/// is done with (sent, or dropped by a client that went away).
#[derive(Debug)]
pub(crate) struct ProxyBody {
    kind: Kind,
    log: Option<Box<Logged>>,
}

#[derive(Debug)]
enum Kind {
    Upstream { body: PooledBody, pick: Pick, _room: Option<OwnedSemaphorePermit> },
    Local(Option<Bytes>),
}

/// A request's access log line, waiting for its body's end.
#[derive(Debug)]
struct Logged {
    log: Arc<AccessLog>,
    entry: Entry,
    status: u16,
    bytes: u64,
}

impl ProxyBody {
    fn local(data: Bytes) -> Self {
        Self { kind: Kind::Local(Some(data)), log: None }
    }

    /// The origin's answer to an upgrade, taken apart for the tunnel: the
    /// connection, the pick (the server counts it in flight while the
    /// tunnel lives) and the room in the origin's queue. `None` (and the
    /// body dropped, its connection closed) when it is not one.
    pub(crate) fn into_tunnel(mut self) -> Option<Tunnel> {
        match std::mem::replace(&mut self.kind, Kind::Local(None)) {
            Kind::Upstream { body, pick, _room } => {
                let io = body.into_upgraded().ok()?;
                Some(Tunnel { io, _pick: pick, _room, log: self.log.take() })
            }
            Kind::Local(_) => None,
        }
    }
}

/// An upgraded connection to the origin, with what it holds while it lives.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub(crate) io: Upgraded,
    _pick: Pick,
    _room: Option<OwnedSemaphorePermit>,
    log: Option<Box<Logged>>,
}

impl Tunnel {
    /// Ends the tunnel: its log line says how many bytes the client got.
    pub(crate) fn finish(mut self, to_client: u64) {
        if let Some(l) = self.log.as_mut() {
            l.bytes = to_client;
        }
    }

    /// The tunnel never started: the client got `status` instead.
    pub(crate) fn fail(mut self, status: StatusCode) {
        if let Some(l) = self.log.as_mut() {
            l.status = status.as_u16();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(l) = self.log.take() {
            l.log.log(&l.entry, l.status, l.bytes, clock());
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(l) = self.log.take() {
            l.log.log(&l.entry, l.status, l.bytes, clock());
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream { body, pick, .. } => {
                let polled = Pin::new(body).poll_frame(cx);
                // A malformed body is a garbage answer: the server's fault.
                if let Poll::Ready(Some(Err(e))) = &polled
                    && SessionError::of_body(e).is_some_and(SessionError::is_l4_failure)
                {
                    pick.server().report_l4_failure(clock());
                }
                polled
            }
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let (Some(l), Poll::Ready(Some(Ok(frame)))) = (this.log.as_mut(), &polled)
            && let Some(d) = frame.data_ref()
        {
            l.bytes += d.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// The client's request body on its way upstream, within
/// `max_request_body` and `body_timeout`; notes why it failed (a bad chunk
/// size, a client that went away, too long, too slow), which is the
/// client's fault and not the server's.
struct ClientBody<B> {
    inner: B,
    failed: Arc<BodyFailure>,
    /// Bytes the body may still carry (`None`: no limit).
    left: Option<u64>,
    timeout: Duration,
    /// Set while the client keeps the body waiting (see `poll_frame`).
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

/// Why a client's body failed, if it did; and whether the origin has
/// answered (then `body_timeout` no longer applies: a gRPC stream or a long
/// upload the origin already took on may pause as long as it likes).
#[derive(Debug, Default)]
pub(crate) struct BodyFailure(AtomicU8, AtomicBool);

impl BodyFailure {
    const MALFORMED: u8 = 1;
    const TOO_LARGE: u8 = 2;
    const TIMEOUT: u8 = 3;

    fn set(&self, why: u8) {
        let _ = self.0.compare_exchange(0, why, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn answered(&self) {
        self.1.store(true, Ordering::Relaxed);
    }

    /// The answer a failed body gets: 400, 413 or 408.
    fn answer(&self) -> Option<(StatusCode, &'static str, Option<&'static str>)> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            Self::TOO_LARGE => Some((
                StatusCode::PAYLOAD_TOO_LARGE,
                "vigil: the request body is larger than allowed\n",
                Some("body"),
            )),
            Self::TIMEOUT => Some((
                StatusCode::REQUEST_TIMEOUT,
                "vigil: the request body came too slowly\n",
                Some("body_timeout"),
            )),
            _ => Some((StatusCode::BAD_REQUEST, "vigil: the request body is malformed\n", None)),
        }
    }
}

/// The body broke a limit.
#[derive(Debug, thiserror::Error)]
enum BodyLimit {
    #[error("the request body is larger than max_request_body")]
    TooLarge,
    #[error("the request body paused longer than body_timeout")]
    Timeout,
}

/// What a client request's body must be to go upstream (hyper's for h2c,
/// ours for HTTP/1.1).
pub(crate) trait ClientRequestBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static> ClientRequestBody for B {}

impl<B: ClientRequestBody> Body for ClientBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                this.failed.set(BodyFailure::MALFORMED);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if let (Some(left), Some(data)) = (this.left.as_mut(), frame.data_ref()) {
                    match left.checked_sub(data.len() as u64) {
                        Some(l) => *left = l,
                        None => {
                            this.failed.set(BodyFailure::TOO_LARGE);
                            return Poll::Ready(Some(Err(BodyLimit::TooLarge.into())));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Only the time the client keeps us waiting counts: the
                // clock starts when a read finds nothing, not when the
                // origin, slow to take the body, last polled.
                if this.failed.1.load(Ordering::Relaxed) {
                    return Poll::Pending;
                }
                let deadline = tokio::time::Instant::now() + this.timeout;
                if !this.waiting {
                    this.waiting = true;
                    match this.stalled.as_mut() {
                        Some(t) => t.as_mut().reset(deadline),
                        None => this.stalled = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                if let Some(t) = this.stalled.as_mut()
                    && t.as_mut().poll(cx).is_ready()
                {
                    this.failed.set(BodyFailure::TIMEOUT);
                    return Poll::Ready(Some(Err(BodyLimit::Timeout.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Per client connection: the peer, as `X-Forwarded-For` and the access
/// log want it, and the scheme it came in with.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) ip: HeaderValue,
    /// Came in over TLS (`X-Forwarded-Proto: https`).
    pub(crate) https: bool,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr, https: bool) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Self { ip, https }
    }
}

static VIA_11: HeaderValue = HeaderValue::from_static("1.1 vigil");
static VIA_10: HeaderValue = HeaderValue::from_static("1.0 vigil");
static VIA_2: HeaderValue = HeaderValue::from_static("2 vigil");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static HTTP: HeaderValue = HeaderValue::from_static("http");

/// hyper's service entry point.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(handle(&shared, &peer, req).await)
}

/// One request, answered: the request path for either listener protocol.
///
/// This and [`forward`] are plain functions returning `async` blocks: an
/// `async fn` keeps each argument twice in its future (the argument and the
/// local it is moved into), and the request is the largest of them. The
/// future is made anew per request and copied whole where it is awaited.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
pub(crate) fn handle<'a, B: ClientRequestBody>(
    shared: &'a Shared,
    peer: &'a Peer,
    req: Request<B>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
    async move {
        let mut req = req;
        let Admitted { route, policy, mut logged, upgrade } = match admit(shared, peer, &mut req) {
            Ok(admitted) => admitted,
            Err(answered) => return answered,
        };
        let resp = forward(shared, peer, &route, req, policy, logged.as_deref_mut(), upgrade).await;
        shared.metrics.route_request(&route.counters, &route.label, resp.status().as_u16());
        finish(resp, logged)
    }
}

/// A request let through to its origin, and what goes with it.
struct Admitted {
    route: Arc<Route>,
    policy: RequestPolicy,
    logged: Option<Box<Logged>>,
    upgrade: Option<HeaderValue>,
}

/// Everything decided before the origin is asked, without waiting (kept
/// out of [`handle`]'s future, which every `.await` above copies): the
/// request's id, its log line, its route and the limits on its body. A
/// request answered here gets that answer, its log line on it.
#[allow(
    clippy::result_large_err,
    reason = "consumed at once by its one caller; a box would allocate per request"
)]
fn admit<B: ClientRequestBody>(
    shared: &Shared,
    peer: &Peer,
    req: &mut Request<B>,
) -> Result<Admitted, Response<ProxyBody>> {
    let routes = shared.routes.load();
    let policy = routes.policy;
    let request_id = policy.request_id.then(|| request_id(req.headers_mut()));
    let logged = routes.access_log.as_ref().map(|log| {
        Box::new(Logged { log: Arc::clone(log), entry: entry(req, peer, request_id), status: 0, bytes: 0 })
    });
    if req.method() == Method::CONNECT {
        return Err(finish(
            local(StatusCode::METHOD_NOT_ALLOWED, "vigil: CONNECT is not supported\n"),
            logged,
        ));
    }
    let Some(host) = client_host(req) else {
        return Err(finish(
            close(local(StatusCode::BAD_REQUEST, "vigil: the request names no host\n")),
            logged,
        ));
    };
    let Some(route) = routes.find(host) else {
        static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        shared.metrics.request(&NO_ROUTE, 404);
        return Err(finish(local(StatusCode::NOT_FOUND, "vigil: no remap rule for this host\n"), logged));
    };
    let route = Arc::clone(route);
    if let (Some(max), Some(len)) = (policy.max_request_body, req.body().size_hint().exact())
        && len > max
    {
        shared.metrics.limit("body");
        shared.metrics.route_request(&route.counters, &route.label, 413);
        let refused =
            local(StatusCode::PAYLOAD_TOO_LARGE, "vigil: the request body is larger than allowed\n");
        return Err(finish(close(refused), logged));
    }
    Ok(Admitted { route, policy, logged, upgrade: upgrade_of(req) })
}

/// What an HTTP/1.1 request asks to switch to (`Connection: upgrade` and
/// `Upgrade`), if it does. `h2c` is declined (RFC 9113 deprecates the
/// upgrade; prior knowledge is how h2c reaches us): the request is served
/// as a plain one, its `Upgrade` dropped with the other hop-by-hop fields.
fn upgrade_of<B: Body>(req: &Request<B>) -> Option<HeaderValue> {
    // A request with a body is not switched: its body would have to be
    // written out after the 101, unbounded, before the tunnel could start.
    if req.version() != Version::HTTP_11 || req.body().size_hint().exact() != Some(0) {
        return None;
    }
    let h = req.headers();
    // `Upgrade` first: almost no request has one, so one lookup decides.
    let to = h.get(header::UPGRADE)?;
    if !h.get_all(header::CONNECTION).iter().any(|v| vigil_h1::connection_has(v.as_bytes(), b"upgrade")) {
        return None;
    }
    let h2c = to.as_bytes().split(|&b| b == b',').any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"));
    (!h2c).then(|| to.clone())
}

/// Puts the access log line, now that the status is known, on the body.
fn finish(mut resp: Response<ProxyBody>, logged: Option<Box<Logged>>) -> Response<ProxyBody> {
    if let Some(mut l) = logged {
        l.status = resp.status().as_u16();
        resp.body_mut().log = Some(l);
    }
    resp
}

fn entry<B>(req: &Request<B>, peer: &Peer, request_id: Option<HeaderValue>) -> Entry {
    let h = req.headers();
    let host = requested_host(req);
    let start = clock();
    Entry {
        start,
        time: crate::accesslog::wall_time(start),
        client_text: peer.ip.clone(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        host,
        user_agent: h.get(header::USER_AGENT).cloned(),
        referer: h.get(header::REFERER).cloned(),
        request_id,
        upstream: None,
        upstream_time: None,
        retries: 0,
    }
}

#[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
fn forward<'a, B: ClientRequestBody>(
    shared: &'a Shared,
    peer: &'a Peer,
    route: &'a Route,
    req: Request<B>,
    policy: RequestPolicy,
    mut trace: Option<&'a mut Logged>,
    upgrade: Option<HeaderValue>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
    async move {
        // An upgrade needs an HTTP/1.1 connection to tunnel over.
        let upstream = match (&upgrade, route.upgrade) {
            (None, _) => route.upstream.upstream,
            (Some(_), Some(upstream)) => upstream,
            (Some(_), None) => {
                return local(
                    StatusCode::NOT_IMPLEMENTED,
                    "vigil: this origin speaks h2; an upgrade (WebSocket) needs HTTP/1.1\n",
                );
            }
        };
        // The clock the log line's start read a moment ago, if it did.
        let mut now = trace.as_ref().map_or_else(clock, |t| t.entry.start);
        let Some(origin) = shared.db.origin_by_key(&route.origin) else {
            // Only between a reload's HostDB swap and its routes swap.
            return local(StatusCode::BAD_GATEWAY, "vigil: origin not configured\n");
        };
        shared.checker.touch(&origin, now);
        let room = match &route.queue {
            None => None,
            Some(q) => match q.enter(|| shared.metrics.queued(&route.label)).await {
                Ok(room) => {
                    now = clock();
                    Some(room)
                }
                Err(QueueTimeout) => {
                    shared.metrics.queue_timeout(&route.label);
                    let mut resp = local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "vigil: the origin is at its connection limit; no room in time\n",
                    );
                    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return resp;
                }
            },
        };

        let policy_retry = RetryPolicy::request(req.method());
        let mut attempt = Attempt::new();
        if origin.lb() == LbPolicy::ConsistentHash {
            attempt = attempt.with_hash_key(req.uri().path().as_bytes());
        }
        let body_failed = (!req.body().is_end_stream()).then(|| Arc::new(BodyFailure::default()));
        let mut next = upstream_request(req, route, peer, policy, body_failed.clone(), upstream, upgrade);
        let mut failures = 0u32;

        loop {
            let pick = match origin.select(&mut attempt, now) {
                Ok(pick) => pick,
                Err(SelectError::NoneRoutable { retry_after }) if failures == 0 => {
                    let secs = retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
                    let mut resp = local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "vigil: no server of this origin is available\n",
                    );
                    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                    return resp;
                }
                Err(SelectError::NoServers) if failures == 0 => {
                    let mut resp =
                        local(StatusCode::SERVICE_UNAVAILABLE, "vigil: the origin has no servers yet\n");
                    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return resp;
                }
                Err(_) => return all_failed(),
            };
            let target = upstream.target(pick.addr());
            let sent = shared
                .pool
                .try_request(target, Freshness::IdlePreferred, next, Some(policy.origin_timeout))
                .await;
            if let Some(t) = trace.as_deref_mut() {
                t.entry.upstream = Some(pick.addr());
                t.entry.upstream_time = Some(clock().saturating_duration_since(now));
                t.entry.retries = failures;
            }
            let (e, back) = match sent {
                Ok(resp) => {
                    if let Some(f) = &body_failed {
                        f.answered();
                    }
                    pick.server().report_l4_success(now);
                    let mut resp = resp;
                    origin.report_response(pick.server(), resp.status().as_u16(), now);
                    if let Some(signal) = resp.headers_mut().remove(&VIGIL_HEALTH) {
                        signalled(&origin, pick.server(), &signal, now);
                    }
                    return respond(resp, pick, room);
                }
                Err(failed) => failed,
            };
            if let Some((status, text, limit)) = body_failed.as_ref().and_then(|f| f.answer()) {
                if let Some(limit) = limit {
                    shared.metrics.limit(limit);
                }
                return close(local(status, text));
            }
            if e.kind() == ErrorKind::ResponseTimeout {
                tracing::debug!(server = %pick.addr(), "no response head within origin_timeout");
                // A gateway timeout for outlier detection, as Envoy counts it.
                origin.report_response(pick.server(), 504, now);
                return local(StatusCode::GATEWAY_TIMEOUT, "vigil: the origin did not answer in time\n");
            }
            // An attempt can take up to a connect timeout: read the clock again.
            now = clock();
            if e.is_l4_failure() {
                pick.server().report_l4_failure_because(now, &e.detail());
            }
            tracing::debug!(server = %pick.addr(), error = %e, "attempt failed");
            failures += 1;
            match back {
                Some(req) if e.may_retry_elsewhere(policy_retry) && failures < policy.connect_attempts => {
                    shared.metrics.retries.inc();
                    next = req;
                }
                _ => return all_failed(),
            }
        }
    }
}

/// The request's `X-Request-Id`: the client's when it is well formed (1 to
/// 200 characters of letters, digits and `-_.:+/=@`), else a new one (128
/// random bits in hex) put in its place.
fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    let ok = |v: &HeaderValue| {
        let b = v.as_bytes();
        (1..=200).contains(&b.len()) && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=@".contains(c))
    };
    match headers.entry(X_REQUEST_ID) {
        header::Entry::Occupied(mut e) => {
            if e.iter().count() == 1 && ok(e.get()) {
                return e.get().clone();
            }
            let id = new_request_id();
            e.insert(id.clone()); // replaces every value the client sent
            id
        }
        header::Entry::Vacant(e) => e.insert(new_request_id()).clone(),
    }
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * (31 - i))) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

fn all_failed() -> Response<ProxyBody> {
    local(StatusCode::BAD_GATEWAY, "vigil: every attempt to reach the origin failed\n")
}

fn clock() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The host the client asked for, as a field value: the absolute URI's
/// authority, else its `Host`.
fn requested_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// The client's host: the absolute URI's authority, else `Host`.
fn client_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(h) = req.uri().host() {
        return Some(h);
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty())
}

/// The request as the origin gets it: origin-form URI, hop-by-hop headers
/// gone, `Host` per `preserve_host`, `Via` and the `X-Forwarded-*` fields
/// added (or, with `trust_forwarded`, the client's kept and appended to).
///
/// Edited in place: only the body changes type, so the head moves once.
fn upstream_request<B: ClientRequestBody>(
    mut req: Request<B>,
    route: &Route,
    peer: &Peer,
    policy: RequestPolicy,
    body_failed: Option<Arc<BodyFailure>>,
    upstream: Upstream,
    upgrade: Option<HeaderValue>,
) -> Request<RequestBody> {
    let via = match req.version() {
        Version::HTTP_2 => &VIA_2,
        Version::HTTP_10 => &VIA_10,
        _ => &VIA_11,
    };
    let client_host = requested_host(&req);
    let host = match &client_host {
        Some(h) if route.preserve_host => h.clone(),
        _ => route.host_header.clone(),
    };
    // `te: trailers` says the sender will not drop trailer fields (RFC 9110
    // section 10.1.4), and gRPC origins refuse a call without it. It goes on
    // only where that holds end to end: an HTTP/2 client (hyper relays
    // trailers both ways) to an origin that may speak h2 (an `auto` one that
    // settles on HTTP/1.1 drops it in the pool). HTTP/1.1 trailers are
    // dropped on both sides, so TE stays hop-by-hop there.
    let te_trailers = req.version() == Version::HTTP_2 && upstream.protocol != Protocol::Http1;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, te_trailers);
    // What is added, in one rehash at most (the parser sizes the map to
    // what the client sent, plus a little).
    headers.reserve(4);
    headers.append(header::VIA, via.clone());
    forwarded(headers, peer, client_host, policy.trust_forwarded);
    if let Some(to) = upgrade {
        // Hop-by-hop, so stripped above; an upgrade carries them on.
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, to);
    }

    // The path moves as it is (a clone shares its bytes); both forms come
    // from a URI the listener accepted, so they are valid.
    let path = |uri: &Uri| uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    match upstream.protocol {
        Protocol::Http1 => {
            req.headers_mut().insert(header::HOST, host);
            // The common origin-form URI stays as it is; an absolute one is
            // cut down to its path.
            if req.uri().authority().is_some() {
                *req.uri_mut() = Uri::from(path(req.uri()));
            }
        }
        // h2 carries the host in :authority, not in a Host header; a
        // protocol ALPN settles gets the same, which HTTP/1.1 turns back
        // into a Host header.
        Protocol::H2 | Protocol::Auto => {
            req.headers_mut().remove(header::HOST);
            let uri = Uri::builder()
                .scheme(if route.upstream.https { "https" } else { "http" })
                .authority(host.as_bytes())
                .path_and_query(path(req.uri()))
                .build();
            *req.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
        }
    }
    *req.version_mut() = Version::HTTP_11;
    // What the listener attached (hyper's for h2c) is not for the origin.
    req.extensions_mut().clear();
    req.map(|body| match body_failed {
        Some(failed) => ClientBody {
            inner: body,
            failed,
            left: policy.max_request_body,
            timeout: policy.body_timeout,
            stalled: None,
            waiting: false,
        }
        .boxed(),
        None => vigil_session::empty_body(),
    })
}

/// `X-Forwarded-For`, `-Proto` and `-Host`: the client's own are replaced
/// (a client must not choose what the origin believes about it), or with
/// `trust` (the client is a proxy or CDN of the operator's) kept, the
/// client's address appended to `X-Forwarded-For`.
fn forwarded(headers: &mut HeaderMap, peer: &Peer, host: Option<HeaderValue>, trust: bool) {
    if !trust {
        // What a CGI-style backend reads as the same variable
        // (`X_Forwarded_For` is HTTP_X_FORWARDED_FOR too), and RFC 7239's
        // `Forwarded`: the client's word on either is not passed on.
        let spoofs = |n: &HeaderName| n.as_str().starts_with("x_forwarded") || n == header::FORWARDED;
        if headers.keys().any(spoofs) {
            let gone: Vec<HeaderName> = headers.keys().filter(|n| spoofs(n)).cloned().collect();
            for name in gone {
                headers.remove(name);
            }
        }
    }
    if trust {
        forwarded_for(headers, &peer.ip);
    } else {
        headers.insert(X_FORWARDED_FOR, peer.ip.clone());
    }
    let proto = if peer.https { &HTTPS } else { &HTTP };
    if !(trust && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, proto.clone());
    }
    match host {
        Some(host) if !(trust && headers.contains_key(X_FORWARDED_HOST)) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        Some(_) => {}
        None if !trust => {
            headers.remove(X_FORWARDED_HOST);
        }
        None => {}
    }
}

/// `X-Forwarded-For`: the client's address appended to what came in, on one line.
///
/// One hashed lookup: the name is not a standard one, and each lookup
/// hashes it anew (a `contains_key` then an `insert` cost about 200
/// instructions a request).
fn forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(ip.clone());
        }
        header::Entry::Occupied(mut e) => {
            let mut all: Vec<&[u8]> = e.iter().map(HeaderValue::as_bytes).collect();
            all.push(ip.as_bytes());
            let value = HeaderValue::from_bytes(&all.join(&b", "[..])).unwrap_or_else(|_| ip.clone());
            e.insert(value); // replaces every value the client sent
        }
    }
}

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, and every
/// header the `Connection` header names. One pass over the few names a
/// message has decides; most carry none of these (sixteen hashed removals
/// per request showed in profiles).
///
/// With `keep_te_trailers` (a request bound for HTTP/2), a `TE` that names
/// `trailers` leaves as `te: trailers` alone: the one value HTTP/2 allows
/// (RFC 9113 section 8.2.2); any other TE value goes.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let te_trailers = keep_te_trailers && headers.get_all(header::TE).iter().any(names_trailers);
    let mut gone: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    gone.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            // The proxy's own fields are not the client's to remove.
            .filter(|n| *n != X_REQUEST_ID),
    );
    for name in gone {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a `TE` value lists `trailers` (`trailers, deflate;q=0.5`).
fn names_trailers(value: &HeaderValue) -> bool {
    value.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The response field a server takes itself out with (Envoy's
/// `x-envoy-immediate-health-check-fail`): `down` or `drain`. Never passed
/// on to the client.
pub(crate) static VIGIL_HEALTH: HeaderName = HeaderName::from_static("vigil-health");

/// A server said `vigil-health: <value>` on a user response: `down` or
/// `drain` take it out at once (L7 unhealthy until its checks pass again;
/// nothing on an origin without checks, which nothing would bring back).
#[cold]
fn signalled(
    origin: &vigil_hostdb::Origin,
    server: &vigil_hostdb::Server,
    value: &HeaderValue,
    now: std::time::Instant,
) {
    let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match value.as_str() {
        "down" | "drain" => {
            let flip = origin.signal_unhealthy(server, &format!("vigil-health: {value}"), now);
            if flip.is_none() && origin.check_policy().is_none() {
                tracing::debug!(origin = %origin.key(), server = %server.addr(), "vigil-health ignored: the origin has no health check to bring the server back");
            }
        }
        other => {
            tracing::debug!(server = %server.addr(), value = other, "vigil-health value not understood; ignored")
        }
    }
}

fn respond(
    mut resp: Response<PooledBody>,
    pick: Pick,
    room: Option<OwnedSemaphorePermit>,
) -> Response<ProxyBody> {
    let switched = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| resp.headers().get(header::UPGRADE).cloned())
        .flatten();
    let headers = resp.headers_mut();
    strip_hop_by_hop(headers, false);
    if let Some(to) = switched {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, to);
    }
    headers.append(header::VIA, VIA_11.clone());
    resp.map(|body| ProxyBody { kind: Kind::Upstream { body, pick, _room: room }, log: None })
}

/// A response of our own.
pub(crate) fn local(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Asks hyper to close the connection after this response.
fn close(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn te_trailers_alone_survives_for_h2() {
        let strip = |te: &'static str, keep: bool| {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static("TE"));
            h.insert(header::TE, HeaderValue::from_static(te));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, keep);
            h.get(header::TE).map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        assert_eq!(strip("trailers", true).as_deref(), Some("trailers"));
        assert_eq!(strip("deflate;q=0.5, Trailers", true).as_deref(), Some("trailers"), "other values go");
        assert_eq!(strip("deflate", true), None);
        assert_eq!(strip("trailers", false), None, "hop-by-hop to HTTP/1.1");
    }

    #[test]
    fn forwarded_for_appends_on_one_line() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = HeaderMap::new();
        forwarded_for(&mut h, &ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        forwarded_for(&mut h, &ip);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
    }
}
