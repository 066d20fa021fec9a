//! The request path: remap -> HostDB pick -> checker touch -> pooled
//! session -> streamed response, with SPEC's retries and error statuses.
//!
//! L4 outcomes are reported here, on the exact `Server` record the pick
//! returned; what counts is the session pool's one rule
//! (`SessionError::is_l4_failure`: a connect failure, a reset or EOF before
//! the response head, a garbage answer, and a malformed response body
//! found while streaming it); a response head clears them. A response that
//! takes longer than `origin_timeout` is a 504 and not an L4 failure (a
//! slow endpoint is not a dead server; the L7 check, with its own short
//! timeout, is what catches a hung one). Whether a failed attempt may go to
//! another server is the pool's rule too (`SessionError::may_retry_elsewhere`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use vigil_hostdb::{Attempt, LbPolicy, Pick, SelectError};
use vigil_session::{
    BoxError, ErrorKind, Freshness, PooledBody, Protocol, RequestBody, RetryPolicy, SessionError,
};

use crate::app::Shared;
use crate::routes::Route;

/// What the client gets: the origin's body streamed through (holding the
/// pick, so the server counts the request in flight until the body ends),
/// or a short body of our own.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    Upstream { body: PooledBody, pick: Pick },
    Local(Option<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Upstream { body, pick } => {
                let polled = Pin::new(body).poll_frame(cx);
                // A malformed body is a garbage answer: the server's fault.
                if let Poll::Ready(Some(Err(e))) = &polled
                    && SessionError::of_body(e).is_some_and(SessionError::is_l4_failure)
                {
                    pick.server().report_l4_failure(clock());
                }
                polled
            }
            Self::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body, .. } => body.is_end_stream(),
            Self::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body, .. } => body.size_hint(),
            Self::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// The client's request body on its way upstream; notes whether it failed
/// (a bad chunk size, a client that went away), which is the client's
/// fault and not the server's.
struct ClientBody<B> {
    inner: B,
    failed: Arc<AtomicBool>,
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
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Per client connection: the peer, as `X-Forwarded-For` wants it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) ip: HeaderValue,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Self { ip }
    }
}

static VIA_11: HeaderValue = HeaderValue::from_static("1.1 vigil");
static VIA_10: HeaderValue = HeaderValue::from_static("1.0 vigil");
static VIA_2: HeaderValue = HeaderValue::from_static("2 vigil");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

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
        if req.method() == Method::CONNECT {
            return local(StatusCode::METHOD_NOT_ALLOWED, "vigil: CONNECT is not supported\n");
        }
        let Some(host) = client_host(&req) else {
            return close(local(StatusCode::BAD_REQUEST, "vigil: the request names no host\n"));
        };
        let (route, origin_timeout, attempts) = {
            let routes = shared.routes.load();
            match routes.find(host) {
                Some(r) => (Arc::clone(r), routes.origin_timeout, routes.connect_attempts),
                None => {
                    static NO_ROUTE: std::sync::LazyLock<Arc<str>> =
                        std::sync::LazyLock::new(|| Arc::from(""));
                    shared.metrics.request(&NO_ROUTE, 404);
                    return local(StatusCode::NOT_FOUND, "vigil: no remap rule for this host\n");
                }
            }
        };
        let resp = forward(shared, peer, &route, req, origin_timeout, attempts).await;
        shared.metrics.route_request(&route.counters, &route.label, resp.status().as_u16());
        resp
    }
}

#[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
fn forward<'a, B: ClientRequestBody>(
    shared: &'a Shared,
    peer: &'a Peer,
    route: &'a Route,
    req: Request<B>,
    origin_timeout: Duration,
    attempts: u32,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
    async move {
        let mut now = clock();
        let Some(origin) = shared.db.origin_by_key(&route.origin) else {
            // Only between a reload's HostDB swap and its routes swap.
            return local(StatusCode::BAD_GATEWAY, "vigil: origin not configured\n");
        };
        shared.checker.touch(&origin, now);

        let policy = RetryPolicy::request(req.method());
        let mut attempt = Attempt::new();
        if origin.lb() == LbPolicy::ConsistentHash {
            attempt = attempt.with_hash_key(req.uri().path().as_bytes());
        }
        let body_failed = (!req.body().is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        let mut next = upstream_request(req, route, peer, body_failed.clone());
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
            let target = route.upstream.upstream.target(pick.addr());
            let sent =
                shared.pool.try_request(target, Freshness::IdlePreferred, next, Some(origin_timeout)).await;
            let (e, back) = match sent {
                Ok(resp) => {
                    pick.server().report_l4_success(now);
                    return respond(resp, pick);
                }
                Err(failed) => failed,
            };
            if body_failed.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
                return close(local(StatusCode::BAD_REQUEST, "vigil: the request body is malformed\n"));
            }
            if e.kind() == ErrorKind::ResponseTimeout {
                tracing::debug!(server = %pick.addr(), "no response head within origin_timeout");
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
                Some(req) if e.may_retry_elsewhere(policy) && failures < attempts => {
                    shared.metrics.retries.inc();
                    next = req;
                }
                _ => return all_failed(),
            }
        }
    }
}

fn all_failed() -> Response<ProxyBody> {
    local(StatusCode::BAD_GATEWAY, "vigil: every attempt to reach the origin failed\n")
}

fn clock() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The client's host: the absolute URI's authority, else `Host`.
fn client_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(h) = req.uri().host() {
        return Some(h);
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty())
}

/// The request as the origin gets it: origin-form URI, hop-by-hop headers
/// gone, `Host` per `preserve_host`, `Via` and `X-Forwarded-For` added.
///
/// Edited in place: only the body changes type, so the head moves once.
fn upstream_request<B: ClientRequestBody>(
    mut req: Request<B>,
    route: &Route,
    peer: &Peer,
    body_failed: Option<Arc<AtomicBool>>,
) -> Request<RequestBody> {
    let via = match req.version() {
        Version::HTTP_2 => &VIA_2,
        Version::HTTP_10 => &VIA_10,
        _ => &VIA_11,
    };
    let host = if route.preserve_host {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| req.headers().get(header::HOST).cloned())
            .unwrap_or_else(|| route.host_header.clone())
    } else {
        route.host_header.clone()
    };
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // `Via` and `X-Forwarded-For` in one rehash at most (hyper sizes the map
    // to what the client sent).
    headers.reserve(2);
    headers.append(header::VIA, via.clone());
    forwarded_for(headers, &peer.ip);

    // The path moves as it is (a clone shares its bytes); both forms come
    // from a URI the listener accepted, so they are valid.
    let path = |uri: &Uri| uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    match route.upstream.upstream.protocol {
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
        Some(failed) => ClientBody { inner: body, failed }.boxed(),
        None => vigil_session::empty_body(),
    })
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
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut gone: Vec<HeaderName> = headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    gone.extend(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
    );
    for name in gone {
        headers.remove(name);
    }
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

fn respond(mut resp: Response<PooledBody>, pick: Pick) -> Response<ProxyBody> {
    let headers = resp.headers_mut();
    strip_hop_by_hop(headers);
    headers.append(header::VIA, VIA_11.clone());
    resp.map(|body| ProxyBody::Upstream { body, pick })
}

/// A response of our own.
pub(crate) fn local(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Some(Bytes::from_static(text.as_bytes()))));
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
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
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
