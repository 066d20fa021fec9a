//! One checked-out session, and the response body that holds it until the
//! exchange ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::client::conn::http2;

use crate::error::{BoxError, ErrorKind, SessionError};
use crate::h2::StreamGuard;
use crate::pool::{H1Home, Inner, Settle};
use crate::upgrade::Upgraded;
use crate::{RequestBody, Target, h1, h2};

enum Conn {
    H1(h1::Conn),
    H2 { tx: http2::SendRequest<RequestBody>, stream: StreamGuard, settle: Option<Settle> },
}

/// One checked-out session: send one request on it with [`Session::send`].
///
/// Dropped unused, an HTTP/1.1 session goes back to the pool.
pub struct Session {
    conn: Option<Conn>,
    target: Target,
    id: u64,
    reused: bool,
    /// Strong: a session out keeps its pool alive (one reference count, not
    /// a weak upgrade per check-in).
    pool: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .field("id", &self.id)
            .field("reused", &self.reused)
            .finish()
    }
}

impl Session {
    pub(crate) fn h1(inner: &Arc<Inner>, target: Target, conn: h1::Conn, reused: bool) -> Self {
        Self { id: conn.id, conn: Some(Conn::H1(conn)), target, reused, pool: Arc::clone(inner) }
    }

    pub(crate) fn h2(
        inner: &Arc<Inner>,
        target: Target,
        tx: http2::SendRequest<RequestBody>,
        id: u64,
        stream: StreamGuard,
        reused: bool,
        settle: Option<Settle>,
    ) -> Self {
        Self { conn: Some(Conn::H2 { tx, stream, settle }), target, id, reused, pool: Arc::clone(inner) }
    }

    /// Whether this session speaks HTTP/2 (an `Auto` target's settles on
    /// connect).
    pub(crate) fn is_h2(&self) -> bool {
        matches!(self.conn, Some(Conn::H2 { .. }))
    }

    /// Whether this session came from the pool (was used before).
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// The connection's id: equal ids mean the same connection.
    pub fn connection_id(&self) -> u64 {
        self.id
    }

    /// The target.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Sends `req` and waits for the response head. The session goes back to
    /// the pool when the response body has been read to the end (at once if
    /// it has none); if the body is dropped early or fails, it is closed.
    ///
    /// A request that asks for an upgrade gets its `101` as the response;
    /// see [`Pool::try_request`](crate::Pool::try_request) for the rest.
    ///
    /// # Errors
    /// A [`SessionError`] that says whether the request was sent and whether
    /// the session was reused. L4 failures of an established session are
    /// reported to the observer.
    pub async fn send(
        self,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<PooledBody>, SessionError> {
        let pool = Arc::clone(&self.pool);
        let mut req = req;
        self.send_keeping(&mut req, None).await.map_err(|(e, _)| pool.report(e))
    }

    /// [`Session::send`], bounded by `timeout` when given (request written,
    /// response head read). The request is borrowed, not moved through the
    /// layers below (each would keep a copy in its future); on failure the
    /// flag says whether `req` is still whole and can be sent again. A
    /// timeout closes the session: its response is unread.
    ///
    /// Not an `async fn`, for the reason given at [`Pool::try_request`](crate::Pool::try_request).
    #[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
    pub(crate) fn send_keeping(
        mut self,
        req: &mut http::Request<RequestBody>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<http::Response<PooledBody>, (SessionError, bool)>> + Send + '_ {
        async move {
            let (addr, reused) = (self.target.addr, self.reused);
            let err = move |kind, sent| SessionError::new(kind, addr).sent(sent).reused(reused);
            match self.conn.take() {
                Some(Conn::H1(conn)) => {
                    // Until `send` settles (the response body, or its own error
                    // path, then gives the slot back), a way out of here by this
                    // future being dropped (a timeout, a caller that went away)
                    // must give the in-use slot back.
                    let in_use = InUseH1 { pool: &self.pool, target: self.target, armed: true };
                    if self.target.protocol == crate::Protocol::Auto {
                        // Made for either protocol, it may carry the
                        // `te: trailers` HTTP/2 allows; on HTTP/1.1 TE is
                        // hop-by-hop, and this client drops trailers.
                        req.headers_mut().remove(http::header::TE);
                    }
                    let home = H1Home { pool: Arc::clone(&self.pool), target: self.target };
                    let max_head = self.pool.config.max_response_head_bytes;
                    let sent = h1::send(conn, req, max_head, addr, reused, home, timeout).await;
                    in_use.disarm();
                    // No await between here and the body taking the slot over.
                    sent.map(|resp| {
                        resp.map(|answer| match answer {
                            h1::Answer::Body(body) => PooledBody { inner: BodyInner::H1(body) },
                            h1::Answer::Switched(switched) => {
                                PooledBody { inner: BodyInner::Switched(Upgraded::new(*switched)) }
                            }
                        })
                    })
                }
                // Boxed, as the pool's other rarer paths: hyper's h2 futures are
                // large, and inline they would grow every HTTP/1.1 send's future.
                Some(Conn::H2 { tx, stream, settle }) => {
                    if h1::asks_upgrade(req.headers()) {
                        // h2 has no protocol switch (RFC 9113 section 8.6);
                        // the request stays whole, nothing was sent.
                        return Err((err(ErrorKind::UpgradeOverH2, false), true));
                    }
                    // hyper takes the request whole and hands it back only
                    // when it never left.
                    let owned = std::mem::replace(req, http::Request::new(crate::empty_body()));
                    let send = h2::send(tx, stream, settle, owned, err);
                    let sent = match timeout {
                        None => Box::pin(send).await,
                        Some(t) => match Box::pin(tokio::time::timeout(t, send)).await {
                            Ok(r) => r,
                            Err(_) => Err((err(ErrorKind::ResponseTimeout, true), None)),
                        },
                    };
                    match sent {
                        Ok(resp) => {
                            Ok(resp.map(|body| PooledBody { inner: BodyInner::H2 { body, addr, reused } }))
                        }
                        Err((e, Some(back))) => {
                            *req = back;
                            Err((e, true))
                        }
                        Err((e, None)) => Err((e, false)),
                    }
                }
                None => unreachable!("send consumes the session"),
            }
        }
    }
}

/// Gives an HTTP/1.1 session's in-use slot back when dropped armed.
struct InUseH1<'a> {
    pool: &'a Inner,
    target: Target,
    armed: bool,
}

impl InUseH1<'_> {
    /// The response body holds the slot from here on.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for InUseH1<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.discard_h1(self.target);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Checked out and never used: still clean, so it goes back.
        if let Some(Conn::H1(conn)) = self.conn.take() {
            self.pool.checkin_h1(self.target, conn);
        }
    }
}

/// A response body that returns its session to the pool when read to the
/// end, and closes it if dropped early or failed. Its errors are boxed
/// [`SessionError`]s (see [`SessionError::of_body`]): a malformed body is
/// [`ErrorKind::Protocol`] (an L4 failure of the server, as a garbage head
/// is), one cut short [`ErrorKind::Body`]. Boxed, so that a proxy relays the
/// body's frames as they are, without converting each poll's result.
///
/// The body of a `101 Switching Protocols` to a request that asked for an
/// upgrade is empty and holds the connection: take it with
/// [`PooledBody::into_upgraded`]; dropped, it closes the connection.
pub struct PooledBody {
    inner: BodyInner,
}

enum BodyInner {
    H1(h1::ResponseBody<H1Home>),
    H2 {
        body: h2::ResponseBody,
        addr: std::net::SocketAddr,
        reused: bool,
    },
    /// A 101's: no body, the connection.
    Switched(Upgraded),
}

impl PooledBody {
    /// The connection after a `101 Switching Protocols` to a request that
    /// asked for an upgrade, to speak the new protocol over; the body of
    /// any other response comes back as it was.
    ///
    /// # Errors
    /// `self`, when this is not a 101's body.
    pub fn into_upgraded(self) -> Result<Upgraded, PooledBody> {
        match self.inner {
            BodyInner::Switched(upgraded) => Ok(upgraded),
            inner => Err(Self { inner }),
        }
    }
}

impl fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBody").field("done", &http_body::Body::is_end_stream(self)).finish()
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            BodyInner::H1(body) => body.poll_frame(cx),
            BodyInner::H2 { body, addr, reused } => body.poll_frame(cx).map(|o| {
                o.map(|r| {
                    r.map_err(|e| {
                        SessionError::new(ErrorKind::Body, *addr)
                            .sent(true)
                            .reused(*reused)
                            .with_source(e)
                            .into()
                    })
                })
            }),
            BodyInner::Switched(_) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::H1(body) => body.is_end_stream(),
            BodyInner::H2 { body, .. } => body.is_end_stream(),
            BodyInner::Switched(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyInner::H1(body) => body.size_hint(),
            BodyInner::H2 { body, .. } => body.size_hint(),
            BodyInner::Switched(_) => SizeHint::with_exact(0),
        }
    }
}
