//! Sending with the one retry a reused session deserves, for proxied
//! requests ([`Pool::try_request`]) and for small whole exchanges such as
//! health checks ([`Pool::fetch`]). What may be retried is `outcome`'s call.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use crate::error::{ErrorKind, SessionError};
use crate::outcome::RetryPolicy;
use crate::pool::{Freshness, Pool};
use crate::replay::{Replay, replayable};
use crate::session::PooledBody;
use crate::{Protocol, RequestBody, Target};

/// A response read into memory: its head, and its body up to a limit.
#[derive(Debug)]
pub struct Fetched {
    /// Status, version and header fields.
    pub head: http::response::Parts,
    /// The body's first bytes, up to the limit asked for.
    pub body: Bytes,
    /// The trailer fields, if the body ended with some (gRPC's status).
    pub trailers: Option<http::HeaderMap>,
    /// More body followed the limit (it was not read; the session closed).
    pub truncated: bool,
}

/// The request handed back with a failure, when it can be sent again.
type Failed = (SessionError, Option<http::Request<RequestBody>>);

impl Pool {
    /// Checks out a session and sends `req` on it, with the one retry a
    /// reused session deserves (see [`SessionError::may_retry_on_fresh`]):
    /// the retry's outcome is what the caller sees.
    ///
    /// # Errors
    /// As [`Pool::checkout`] and [`Session::send`](crate::Session::send).
    pub async fn request(
        &self,
        target: Target,
        freshness: Freshness,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<PooledBody>, SessionError> {
        self.try_request(target, freshness, req, None).await.map_err(|(e, _)| e)
    }

    /// [`Pool::request`] for a proxy: `response_timeout` bounds each send
    /// (request written, response head read; the connect has its own
    /// bound), and a failure hands the request back whenever it can be sent
    /// again: it never left (a failed connect, a session found closed), or
    /// its body was empty (a copy of its head is kept). The caller decides
    /// with [`SessionError::may_retry_elsewhere`] whether to resend it, on
    /// another server.
    ///
    /// # Upgrades
    /// A request that asks to switch protocols (`Connection: upgrade` and an
    /// `Upgrade` field, as a WebSocket handshake does) must go to an
    /// HTTP/1.1 target: a `101 Switching Protocols` is then its response,
    /// whose empty body gives the connection with
    /// [`PooledBody::into_upgraded`]. The connection never returns to the
    /// pool, and neither does one whose server answered such a request with
    /// anything but a 101. On an h2 session ([`Protocol::H2`], or
    /// [`Protocol::Auto`] that settled on h2) it fails unsent with
    /// [`ErrorKind::UpgradeOverH2`], not retried and handed back.
    ///
    /// # Errors
    /// As [`Pool::request`], plus [`ErrorKind::ResponseTimeout`]; with the
    /// request when it can be sent again.
    // Not an `async fn`: that keeps every argument twice in the future (the
    // argument and the local it is moved into), and a proxy carries this
    // future inside its own, each `.await` copying it whole.
    #[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
    pub fn try_request(
        &self,
        target: Target,
        freshness: Freshness,
        req: http::Request<RequestBody>,
        response_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<http::Response<PooledBody>, Failed>> + Send + '_ {
        async move {
            let mut req = req;
            let session = match self.checkout(target, freshness).await {
                Ok(session) => session,
                Err(e) => return Err((e, Some(req))),
            };
            let resend = Resend::prepare(&session, &mut req, None);
            match session.send_keeping(&mut req, response_timeout).await {
                Ok(resp) => {
                    Resend::release(resend);
                    Ok(resp)
                }
                Err((e, replayable)) => {
                    let back = Resend::back(resend.as_deref(), replayable, req);
                    match back {
                        Some(req) if e.may_retry_on_fresh(RetryPolicy::request(req.method())) => {
                            // Not reported to the observer: only the retry's outcome counts.
                            tracing::debug!(server = %target.addr, error = %e, "reused session failed; retrying on a fresh one");
                            // Boxed: the rare path must not grow the common one's future.
                            Box::pin(self.retry_fresh(target, req, resend, response_timeout)).await
                        }
                        back => Err((self.inner.report(e), back)),
                    }
                }
            }
        }
    }

    /// The second try of [`Pool::try_request`], on a fresh connection.
    async fn retry_fresh(
        &self,
        target: Target,
        mut req: http::Request<RequestBody>,
        resend: Option<Box<Resend>>,
        response_timeout: Option<Duration>,
    ) -> Result<http::Response<PooledBody>, Failed> {
        let session = match self.checkout(target, Freshness::Fresh).await {
            Ok(session) => session,
            Err(e) => return Err((e, Some(req))),
        };
        // The fresh send may fail too, and the request go to another server.
        let resend = Resend::prepare(&session, &mut req, resend);
        match session.send_keeping(&mut req, response_timeout).await {
            Ok(resp) => {
                Resend::release(resend);
                Ok(resp)
            }
            Err((e, replayable)) => {
                let back = Resend::back(resend.as_deref(), replayable, req);
                Err((self.inner.report(e), back))
            }
        }
    }

    /// Sends a small request held in memory (a health check's: no body, or
    /// a few bytes such as a gRPC message) and reads the answer into
    /// memory: its head, at most `max_body` bytes of its body, and its
    /// trailers, all within `timeout` (connect included). A failure the
    /// `policy` allows to be retried on a fresh session (see
    /// [`SessionError::may_retry_on_fresh`]; [`RetryPolicy::CHECK`]: any
    /// failure on a reused one) is tried once more, the same request on a
    /// fresh connection, with what is left of the time (at least half of it).
    ///
    /// # Errors
    /// A [`SessionError`]; [`ErrorKind::ResponseTimeout`] when the whole
    /// exchange took longer than `timeout`.
    pub async fn fetch(
        &self,
        target: Target,
        freshness: Freshness,
        req: http::Request<Bytes>,
        timeout: Duration,
        max_body: usize,
        policy: RetryPolicy,
    ) -> Result<Fetched, SessionError> {
        let start = tokio::time::Instant::now();
        let (head, body) = req.into_parts();
        let mut req = http::Request::from_parts(head, body_of(&body));
        // hyper's h2 client takes a sent request whole: keep a copy of the
        // head for a retry (only a reused session's failure has one).
        // HTTP/1.1 leaves the request with us (its body is put back below).
        let replay =
            (target.protocol != Protocol::Http1 && freshness != Freshness::Fresh).then(|| copy_head(&req));
        let e = match self.fetch_once(target, freshness, &mut req, timeout, max_body).await {
            Ok(fetched) => return Ok(fetched),
            Err(e) => e,
        };
        // HTTP/1.1 never takes the request, even when it failed after the
        // head; h2 hands it back only when it never left.
        let whole = e.1 || target.protocol == Protocol::Http1;
        let again = if whole { Some(req) } else { replay };
        let Some(mut again) = again.filter(|_| e.0.may_retry_on_fresh(policy)) else {
            return Err(self.inner.report(e.0));
        };
        tracing::debug!(server = %target.addr, error = %e.0, "reused session failed; retrying on a fresh one");
        *again.body_mut() = body_of(&body);
        let left = timeout.saturating_sub(start.elapsed()).max(timeout / 2);
        self.fetch_once(target, Freshness::Fresh, &mut again, left, max_body)
            .await
            .map_err(|(e, _)| self.inner.report(e))
    }

    /// One try of [`Pool::fetch`]; a failure says whether `req` is still
    /// whole (its head; the body is the caller's to put back).
    async fn fetch_once(
        &self,
        target: Target,
        freshness: Freshness,
        req: &mut http::Request<RequestBody>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Fetched, (SessionError, bool)> {
        let addr = target.addr;
        let mut reused = false;
        let exchange = async {
            let session = self.checkout(target, freshness).await.map_err(|e| (e, true))?;
            reused = session.is_reused();
            let resp = session.send_keeping(req, None).await?;
            let (head, mut body) = resp.into_parts();
            let mut seen = BytesMut::new();
            let mut truncated = false;
            let mut trailers = None;
            // Read to the end (so the session can be reused) or to the limit.
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| match e.downcast::<SessionError>() {
                    Ok(e) => (*e, false),
                    Err(e) => (SessionError::new(ErrorKind::Body, addr).sent(true).with_source(e), false),
                })?;
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                };
                let room = max_body - seen.len();
                seen.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    truncated = true;
                    break;
                }
            }
            Ok(Fetched { head, body: seen.freeze(), trailers, truncated })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                Err((SessionError::new(ErrorKind::ResponseTimeout, addr).sent(true).reused(reused), false))
            }
        }
    }
}

/// A fetch's body: empty, or the bytes in memory.
fn body_of(bytes: &Bytes) -> RequestBody {
    if bytes.is_empty() { crate::empty_body() } else { crate::full_body(bytes.clone()) }
}

/// What it takes to send a request again after hyper's h2 client took it
/// (HTTP/1.1 keeps the request whole until the answer): a copy of its head,
/// and for a body a [`Replay`] of what was sent of it. Boxed: the future
/// holding it is on every request's path.
struct Resend {
    head: http::Request<RequestBody>,
    body: Option<Replay>,
}

impl Resend {
    /// Made when `session` speaks h2 (a request to an `Auto` target learns
    /// it only here); `have` is an earlier try's, for the same request.
    fn prepare(
        session: &crate::Session,
        req: &mut http::Request<RequestBody>,
        have: Option<Box<Resend>>,
    ) -> Option<Box<Resend>> {
        if !session.is_h2() {
            return None;
        }
        if have.is_some() {
            return have;
        }
        let body = (!req.body().is_end_stream()).then(|| {
            let (body, replay) = replayable(std::mem::replace(req.body_mut(), crate::empty_body()));
            *req.body_mut() = body;
            replay
        });
        Some(Box::new(Resend { head: copy_head(req), body }))
    }

    /// The request again, or `None` when its body outgrew what is kept.
    fn request(&self) -> Option<http::Request<RequestBody>> {
        let mut req = copy_head(&self.head);
        if let Some(replay) = &self.body {
            *req.body_mut() = replay.again()?;
        }
        Some(req)
    }

    /// What may go again after a failed send: `req` itself when it is
    /// whole (it never left, or HTTP/1.1 kept it), else the request made
    /// again from `resend`.
    fn back(
        resend: Option<&Self>,
        whole: bool,
        req: http::Request<RequestBody>,
    ) -> Option<http::Request<RequestBody>> {
        if whole { Some(req) } else { resend.and_then(Self::request) }
    }

    /// The request was answered: what was kept of its body may go.
    fn release(this: Option<Box<Self>>) {
        if let Some(replay) = this.and_then(|this| this.body) {
            replay.release();
        }
    }
}

/// A copy of a request's head (with an empty body), to send it again.
fn copy_head(req: &http::Request<RequestBody>) -> http::Request<RequestBody> {
    let mut copy = http::Request::new(crate::empty_body());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}
