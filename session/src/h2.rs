//! The HTTP/2 driver: hyper's conn-level client over any [`Io`] stream,
//! one task per connection, streams counted against the server's limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

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
    /// The connection itself, shared with its driver task, to read the
    /// server's SETTINGS_MAX_CONCURRENT_STREAMS (it may change at any time).
    driver: Arc<Mutex<Driver>>,
    pub(crate) idle_since: Instant,
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
        let driver = Arc::new(Mutex::new(driver));
        let driven = Arc::clone(&driver);
        // Drive the connection; the pool reads its stream limit between polls.
        tokio::spawn(std::future::poll_fn(move |cx| Pin::new(&mut *driven.lock()).poll(cx).map(|_| ())));
        Ok(Self { tx, id, streams: Arc::new(AtomicUsize::new(1)), driver, idle_since: Instant::now() })
    }

    /// Takes a stream slot if one is free under `cap` and the server's own limit.
    pub(crate) fn try_stream(&self, cap: usize) -> Option<StreamGuard> {
        let server_max = self.driver.lock().current_max_send_streams().max(1);
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

/// Maps hyper's error to a kind through its predicates (its text and
/// `source()` chain are not stable).
fn classify(err: &hyper::Error) -> ErrorKind {
    if err.is_parse() || err.is_parse_status() || err.is_user() {
        ErrorKind::Protocol
    } else if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        ErrorKind::ClosedBeforeHead
    } else if err.is_body_write_aborted() {
        ErrorKind::Body
    } else {
        // I/O errors (reset, broken pipe) surface without a predicate of their own.
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
