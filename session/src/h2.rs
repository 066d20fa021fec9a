//! The HTTP/2 driver: hyper's conn-level client over any [`Io`] stream,
//! one task per connection, streams counted against the server's limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::RequestBody;
use crate::connect::Io;
use crate::error::{ErrorKind, SessionError};

type Driver = http2::Connection<TokioIo<Box<dyn Io>>, RequestBody, TokioExecutor>;

/// One HTTP/2 connection, shared by the requests that fit on it.
pub(crate) struct H2Conn {
    pub(crate) tx: http2::SendRequest<RequestBody>,
    pub(crate) id: u64,
    pub(crate) streams: Arc<AtomicUsize>,
    /// The connection's dispatcher, shared with its driver task, to read
    /// the server's SETTINGS_MAX_CONCURRENT_STREAMS (it may change at any
    /// time) and to see a GOAWAY before a stream is handed out.
    driver: Arc<Mutex<Driven>>,
    pub(crate) idle_since: Instant,
}

/// hyper's dispatcher for one connection (it takes requests from the
/// `SendRequest` handles and opens their streams; the connection's I/O runs
/// in a task of hyper's own), and the waker of the task that drives it.
struct Driven {
    /// `None` once it ended: the connection closed, or the server sent
    /// GOAWAY (no new stream may open on it; the streams it still serves
    /// live on in their own tasks). Dropping it hands every request still
    /// queued for it back to its sender, unsent.
    conn: Option<Driver>,
    waker: Option<Waker>,
}

impl Driven {
    /// Polls the dispatcher; `Ready` once it has ended.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(()) };
        if Pin::new(conn).poll(cx).is_ready() {
            self.conn = None;
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl H2Conn {
    /// Handshakes over `io` and spawns the connection's driver task; the
    /// new connection counts one stream, its first request's.
    ///
    /// # Errors
    /// A protocol error when the server does not speak HTTP/2.
    pub(crate) async fn handshake(
        io: Box<dyn Io>,
        id: u64,
        max_streams: u32,
        err: impl Fn(ErrorKind) -> SessionError,
    ) -> Result<Self, SessionError> {
        let (tx, driver) = http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(max_streams)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| err(ErrorKind::Protocol).with_source(e))?;
        let driver = Arc::new(Mutex::new(Driven { conn: Some(driver), waker: None }));
        let driven = Arc::clone(&driver);
        // Drive the dispatcher; the pool reads its stream limit between polls.
        tokio::spawn(std::future::poll_fn(move |cx| {
            let mut d = driven.lock();
            if !d.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                d.waker = Some(cx.waker().clone());
            }
            d.poll(cx)
        }));
        Ok(Self { tx, id, streams: Arc::new(AtomicUsize::new(1)), driver, idle_since: Instant::now() })
    }

    /// Takes a stream slot if one is free under `cap` and the server's own
    /// limit, and the connection may still open streams.
    ///
    /// # Race window
    /// A GOAWAY wakes nobody on the dispatcher's side: hyper notices it
    /// when the next request arrives, and fails that request (unsent). So
    /// the dispatcher is polled here first, with its own task's waker (the
    /// wake-ups it registers still go to that task): a connection whose
    /// GOAWAY has been read is not handed out. One read after the check is
    /// still the race above, which the request's retry on a fresh session
    /// covers.
    pub(crate) fn try_stream(&self, cap: usize) -> Option<StreamGuard> {
        let mut driven = self.driver.lock();
        if let Some(waker) = driven.waker.take() {
            let ended = driven.poll(&mut Context::from_waker(&waker)).is_ready();
            driven.waker = Some(waker);
            if ended {
                return None;
            }
        }
        let server_max = driven.conn.as_ref()?.current_max_send_streams().max(1);
        drop(driven);
        if self.streams.load(Ordering::Relaxed) < cap.min(server_max) {
            self.streams.fetch_add(1, Ordering::Relaxed);
            Some(StreamGuard(Arc::clone(&self.streams)))
        } else {
            None
        }
    }

    /// The slot of the stream [`H2Conn::handshake`] counted.
    pub(crate) fn first_stream(&self) -> StreamGuard {
        StreamGuard(Arc::clone(&self.streams))
    }

    /// Whether a stream is open on it.
    pub(crate) fn in_use(&self) -> bool {
        self.streams.load(Ordering::Relaxed) > 0
    }

    /// Whether it takes no more streams (closed, or drained after GOAWAY).
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Holds one h2 stream slot until dropped.
#[derive(Debug)]
pub(crate) struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends `req` on an h2 connection (one stream, held by `stream`). `settle`
/// is dropped once a response head arrived or the request failed.
pub(crate) async fn send<S>(
    mut tx: http2::SendRequest<RequestBody>,
    stream: StreamGuard,
    settle: S,
    req: http::Request<RequestBody>,
    err: impl Fn(ErrorKind, bool) -> SessionError,
) -> Result<http::Response<ResponseBody>, (SessionError, Option<http::Request<RequestBody>>)> {
    if let Err(e) = tx.ready().await {
        return Err((err(ErrorKind::ClosedBeforeHead, false).with_source(e), Some(req)));
    }
    let sent = tx.try_send_request(req).await;
    drop(settle);
    match sent {
        Ok(resp) => Ok(resp.map(|body| ResponseBody::new(body, stream))),
        Err(mut e) => {
            let unsent = e.take_message();
            let kind = classify(e.error());
            Err((err(kind, unsent.is_none()).with_source(e.into_error()), unsent))
        }
    }
}

/// Maps hyper's error to a kind through its predicates (its text is not
/// stable), and an HTTP/2 error through the `h2::Error` hyper keeps as its
/// source: hyper has no predicate for a stream's fate, and that is where it
/// reads a reason itself (as tonic does); the session tests pin it.
fn classify(err: &hyper::Error) -> ErrorKind {
    if err.is_parse() || err.is_parse_status() || err.is_user() {
        return ErrorKind::Protocol;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<h2::Error>() {
            return classify_h2(e);
        }
        source = e.source();
    }
    if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        ErrorKind::ClosedBeforeHead
    } else if err.is_body_write_aborted() {
        ErrorKind::Body
    } else {
        // I/O errors (reset, broken pipe) surface without a predicate of their own.
        ErrorKind::ClosedBeforeHead
    }
}

/// What an HTTP/2 failure before the response head means.
fn classify_h2(e: &h2::Error) -> ErrorKind {
    let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM);
    if e.is_io() {
        ErrorKind::ClosedBeforeHead
    } else if e.is_reset() && e.is_remote() {
        // One stream's fate; the connection lives on.
        if refused { ErrorKind::Refused } else { ErrorKind::StreamReset }
    } else if e.is_go_away() && e.is_remote() {
        // Streams past a GOAWAY's last stream id were never processed; a
        // graceful one (NO_ERROR) is a server draining, not failing.
        if e.reason() == Some(h2::Reason::NO_ERROR) {
            ErrorKind::Refused
        } else {
            ErrorKind::ClosedBeforeHead
        }
    } else if e.is_library() {
        // hyper's h2 found the server's frames malformed: a garbage answer.
        ErrorKind::Protocol
    } else if e.is_reset() {
        // Reset from our side: the request body failed (the client's own
        // reset or a limit), which the caller already knows.
        ErrorKind::Body
    } else {
        ErrorKind::ClosedBeforeHead
    }
}

/// An h2 response body; the stream slot is held until it ends.
pub(crate) struct ResponseBody {
    body: Incoming,
    stream: Option<StreamGuard>,
}

impl ResponseBody {
    fn new(body: Incoming, stream: StreamGuard) -> Self {
        let stream = (!body.is_end_stream()).then_some(stream);
        Self { body, stream }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None | Some(Err(_))) => self.stream = None,
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.stream = None,
            _ => {}
        }
        polled
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
