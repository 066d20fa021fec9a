//! The request path: remap -> HostDB pick -> checker touch -> pooled
//! session -> streamed response, with SPEC's retries and error statuses.
//!
//! L4 outcomes are reported here, on the exact `Server` record the pick
//! returned: a connect failure, a reset or EOF before the response head, or
//! a garbage answer count as L4 failures; a response head clears them.
//! A response that takes longer than `origin_timeout` is a 504 and not an L4
//! failure (a slow endpoint is not a dead server; the L7 check, with its own
//! short timeout, is what catches a hung one).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use vigil_hostdb::{Attempt, LbPolicy, Pick, SelectError};
use vigil_session::{BoxError, ErrorKind, Freshness, PooledBody, Protocol, RequestBody, Target};

use crate::app::Shared;
use crate::routes::Route;

/// What the client gets: the origin's body streamed through (holding the
/// pick, so the server counts the request in flight until the body ends),
/// or a short body of our own.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    Upstream { body: PooledBody, _pick: Pick },
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
            Self::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
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
struct ClientBody {
    inner: Incoming,
    failed: Arc<AtomicBool>,
}

impl Body for ClientBody {
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
            other => other.map(|o| o.map(|r| r.map_err(BoxError::from))),
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
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// hyper's service entry point.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(handle(&shared, &peer, req).await)
}

async fn handle(shared: &Shared, peer: &Peer, req: Request<Incoming>) -> Response<ProxyBody> {
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
                static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
                shared.metrics.request(&NO_ROUTE, 404);
                return local(StatusCode::NOT_FOUND, "vigil: no remap rule for this host\n");
            }
        }
    };
    let resp = forward(shared, peer, &route, req, origin_timeout, attempts).await;
    shared.metrics.request(&route.label, resp.status().as_u16());
    resp
}

async fn forward(
    shared: &Shared,
    peer: &Peer,
    route: &Route,
    req: Request<Incoming>,
    origin_timeout: Duration,
    attempts: u32,
) -> Response<ProxyBody> {
    let now = now();
    let Some(origin) = shared.db.origin_by_key(&route.origin) else {
        // Only between a reload's HostDB swap and its routes swap.
        return local(StatusCode::BAD_GATEWAY, "vigil: origin not configured\n");
    };
    shared.checker.touch(&origin, now);

    let (parts, body) = req.into_parts();
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut attempt = Attempt::new();
    if origin.lb() == LbPolicy::ConsistentHash {
        attempt = attempt.with_hash_key(parts.uri.path().as_bytes());
    }
    let body_failed = (!body.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
    let mut next = Some(upstream_request(parts, body, route, peer, body_failed.clone()));
    let mut failures = 0u32;

    loop {
        let pick = match origin.select(&mut attempt, now_if(failures, now)) {
            Ok(pick) => pick,
            Err(SelectError::NoneRoutable { retry_after }) if failures == 0 => {
                let secs = retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
                let mut resp =
                    local(StatusCode::SERVICE_UNAVAILABLE, "vigil: no server of this origin is available\n");
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return resp;
            }
            Err(SelectError::NoServers) if failures == 0 => {
                let mut resp =
                    local(StatusCode::SERVICE_UNAVAILABLE, "vigil: the origin has no servers yet\n");
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
            Err(_) => {
                return local(StatusCode::BAD_GATEWAY, "vigil: every attempt to reach the origin failed\n");
            }
        };
        let Some(mut req) = next.take() else {
            return local(StatusCode::BAD_GATEWAY, "vigil: every attempt to reach the origin failed\n");
        };
        let target = Target { addr: pick.addr(), protocol: route.protocol };
        if route.protocol == Protocol::H2c {
            // h2 carries the host in :authority.
            if let Some(host) = req.headers_mut().remove(header::HOST) {
                set_authority(&mut req, &host);
            }
        }
        let sent = shared.pool.try_request(target, Freshness::IdlePreferred, req, Some(origin_timeout)).await;
        match sent {
            Ok(resp) => {
                pick.server().report_l4_success(now);
                return respond(resp, pick);
            }
            Err((e, back)) => {
                if body_failed.as_ref().is_some_and(|f| f.load(Ordering::Relaxed)) {
                    return close(local(StatusCode::BAD_REQUEST, "vigil: the request body is malformed\n"));
                }
                if e.kind() == ErrorKind::ResponseTimeout {
                    tracing::debug!(server = %pick.addr(), "no response head within origin_timeout");
                    return local(StatusCode::GATEWAY_TIMEOUT, "vigil: the origin did not answer in time\n");
                }
                let l4 = e.is_l4_failure()
                    || matches!(e.kind(), ErrorKind::Protocol | ErrorKind::ResponseTooLarge);
                if l4 {
                    pick.server().report_l4_failure(now_if(1, now));
                }
                tracing::debug!(server = %pick.addr(), error = %e, "attempt failed");
                failures += 1;
                let again = !e.is_sent() || safe;
                match back {
                    Some(req) if again && failures < attempts => {
                        shared.metrics.retries.inc();
                        next = Some(req);
                    }
                    _ => {
                        return local(
                            StatusCode::BAD_GATEWAY,
                            "vigil: every attempt to reach the origin failed\n",
                        );
                    }
                }
            }
        }
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The request's clock, re-read after a failure (an attempt can take up to
/// a connect timeout).
fn now_if(failures: u32, first: std::time::Instant) -> std::time::Instant {
    if failures == 0 { first } else { now() }
}

/// The client's host: the absolute URI's authority, else `Host`.
fn client_host(req: &Request<Incoming>) -> Option<&str> {
    if let Some(h) = req.uri().host() {
        return Some(h);
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty())
}

/// The request as the origin gets it: origin-form URI, hop-by-hop headers
/// gone, `Host` per `preserve_host`, `Via` and `X-Forwarded-For` added.
fn upstream_request(
    mut parts: http::request::Parts,
    body: Incoming,
    route: &Route,
    peer: &Peer,
    body_failed: Option<Arc<AtomicBool>>,
) -> Request<RequestBody> {
    let via = match parts.version {
        Version::HTTP_2 => &VIA_2,
        Version::HTTP_10 => &VIA_10,
        _ => &VIA_11,
    };
    let host = if route.preserve_host {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| parts.headers.get(header::HOST).cloned())
            .unwrap_or_else(|| route.host_header.clone())
    } else {
        route.host_header.clone()
    };
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    headers.insert(header::HOST, host);
    headers.append(header::VIA, via.clone());
    forwarded_for(headers, &peer.ip);

    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::new(match body_failed {
        Some(failed) => ClientBody { inner: body, failed }.boxed(),
        None => vigil_session::empty_body(),
    });
    *req.method_mut() = parts.method;
    *req.uri_mut() = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        parts.uri
    } else {
        Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"))
    };
    *req.headers_mut() = parts.headers;
    req
}

fn set_authority(req: &mut Request<RequestBody>, host: &HeaderValue) {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Ok(uri) = Uri::builder().scheme("http").authority(host.as_bytes()).path_and_query(path).build() {
        *req.uri_mut() = uri;
    }
}

/// `X-Forwarded-For`: the client's address appended to what came in, on one line.
fn forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter();
    let value = match (existing.next(), existing.next()) {
        (None, _) => ip.clone(),
        (Some(first), None) => join(&[first.as_bytes(), ip.as_bytes()]),
        (Some(_), Some(_)) => {
            let mut all: Vec<&[u8]> =
                headers.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes).collect();
            all.push(ip.as_bytes());
            join(&all)
        }
    };
    headers.insert(X_FORWARDED_FOR, value);
}

fn join(parts: &[&[u8]]) -> HeaderValue {
    let v = parts.join(&b", "[..]);
    HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, and every
/// header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few headers a message has: most carry none of
    // these, and sixteen hashed removals per request showed in profiles.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
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

fn respond(resp: Response<PooledBody>, pick: Pick) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.append(header::VIA, VIA_11.clone());
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, ProxyBody::Upstream { body, _pick: pick })
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
