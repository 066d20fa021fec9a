//! The HTTP/1.1 client, driven inline on the caller's task.
//!
//! The task that sends the request does the I/O itself (Pingora's
//! approach, and no hyper connection task fed by channels): it writes the
//! head (with a small first body piece, one write), reads and parses the
//! response head, and the response body reads the stream when polled. An
//! idle session is the stream, its read buffer and what it keeps for the
//! next request (see `Kept`) in the pool; nobody polls it.
//!
//! Parsing, framing and encoding are `vigil-h1`'s (strict: RFC 9112
//! section 6, as nginx reads it). A session goes back home only when its
//! response was read to the end, the request body was written whole, the
//! server did not ask to close, and no byte beyond the response arrived.
//! Where home is (the pool's idle list) is the [`Home`]'s business: this
//! module knows nothing of the pool.
//!
//! The request body is written concurrently with reading the response (an
//! origin may answer before reading the whole upload, or stream its answer
//! while it reads), so neither side can block the other.
//!
//! A request that asks to switch protocols (`Connection: upgrade` and an
//! `Upgrade` field) takes a `101 Switching Protocols` as its final answer:
//! the connection then leaves HTTP/1.1 and is handed over whole
//! ([`Answer::Switched`]), with what was read past the 101. Any other
//! answer to such a request is an ordinary response, but its session never
//! goes home: the origin may be midway into a protocol we do not speak.

use std::future::{Future as _, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body::{Body as _, Frame, SizeHint};
use vigil_h1::{DecodeError, Decoder, Framing, HeadError, Response, WriteQueue};

use crate::RequestBody;
use crate::connect::Io;
use crate::error::{BoxError, ErrorKind, SessionError};

/// Request body bytes queued for one write before waiting for the stream.
const MAX_QUEUED: usize = 64 * 1024;

/// One HTTP/1.1 connection: the stream and what was read past the last
/// message (nothing, between messages of a healthy session).
///
/// It also keeps what each request would otherwise make anew: the write
/// queue (with the buffer heads are written into) and the response timer.
pub(crate) struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// Boxed: a `Conn` moves through several futures per request, and
    /// every byte it has is copied at each move.
    kept: Box<Kept>,
    pub(crate) id: u64,
}

/// What a connection keeps between requests to spare their allocations.
#[derive(Default)]
struct Kept {
    queue: WriteQueue,
    /// The response timeout, made once and then moved on per request.
    ///
    /// A timer per request cost about 800 instructions: registered in the
    /// runtime's timer wheel at its first poll and taken out again when
    /// dropped, each under the driver's lock. Moving a registered timer to
    /// a later deadline is one atomic store (the wheel re-files it lazily
    /// when the old deadline comes), so a busy session's timer never
    /// touches the wheel. An idle session's timer fires once, waking the
    /// task that last used it for one spurious poll.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    pub(crate) fn new(io: Box<dyn Io>, id: u64) -> Self {
        Self { io, buf: BytesMut::new(), kept: Box::default(), id }
    }

    /// Whether an idle session can no longer carry a request: its peer
    /// closed it, reset it, or sent bytes nobody asked for (see
    /// [`Io::is_idle_closed`]).
    pub(crate) fn is_closed(&mut self) -> bool {
        !self.buf.is_empty() || self.io.is_idle_closed()
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        vigil_h1::poll_fill(&mut *self.io, &mut self.buf, cx)
    }

    /// Gives back the read buffer and the write queue's allocations of a
    /// session that sits idle: its next request takes them again. (A busy
    /// session keeps them from one request to the next.)
    pub(crate) fn shed(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        if self.kept.queue.is_empty() {
            self.kept.queue = WriteQueue::default();
        }
    }

    /// Bytes of buffers [`Conn::shed`] would give back.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.capacity() + self.kept.queue.capacity()
    }
}

/// Where a finished session goes: back to an idle list, or closed.
pub(crate) trait Home: Send + Sync + 'static {
    /// Takes `conn` back; `reusable` when its last exchange ended cleanly.
    fn release(self, conn: Conn, reusable: bool);
}

fn release(home: impl Home, conn: Conn, reusable: bool) {
    let reusable = reusable && conn.buf.is_empty();
    home.release(conn, reusable);
}

/// The request's way out: queued bytes, and the body still to come.
struct Writer {
    q: WriteQueue,
    body: Option<RequestBody>,
    chunked: bool,
    /// Body bytes still owed under `Content-Length`.
    owed: u64,
    wrote: bool,
}

/// Why the request could not be written whole.
enum WriteError {
    Io(io::Error),
    Body(BoxError),
}

impl Writer {
    fn done(&self) -> bool {
        self.body.is_none() && self.q.is_empty()
    }

    /// Writes what is queued and what the body has ready, until both are
    /// done (`Ready(Ok)`) or one must wait.
    fn poll_write(&mut self, io: &mut dyn Io, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        loop {
            // Gather what the body has ready so it leaves with what is queued.
            while self.q.len() < MAX_QUEUED {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.q.push_last_chunk();
                        } else if self.owed > 0 {
                            return Poll::Ready(Err(WriteError::Body(
                                "the request body ended before its Content-Length".into(),
                            )));
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.body = None;
                        return Poll::Ready(Err(WriteError::Body(e)));
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers are not forwarded over HTTP/1.1.
                        let Ok(data) = frame.into_data() else { continue };
                        if data.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            self.q.push_chunk(data);
                            continue;
                        }
                        if data.len() as u64 > self.owed {
                            self.body = None;
                            return Poll::Ready(Err(WriteError::Body(
                                "the request body is longer than its Content-Length".into(),
                            )));
                        }
                        self.owed -= data.len() as u64;
                        self.q.push(data);
                    }
                }
            }
            if self.q.is_empty() {
                return if self.body.is_none() { Poll::Ready(Ok(())) } else { Poll::Pending };
            }
            let before = self.q.len();
            let flushed = self.q.poll_flush(io, cx);
            self.wrote |= self.q.len() < before;
            ready!(flushed).map_err(WriteError::Io)?;
        }
    }
}

/// How a failure to read a response body is told: a malformed body is the
/// server speaking garbage; anything else, the body cut short.
fn body_error(e: DecodeError, addr: SocketAddr, reused: bool) -> SessionError {
    let kind = match e {
        DecodeError::Chunk(_) => ErrorKind::Protocol,
        _ => ErrorKind::Body,
    };
    SessionError::new(kind, addr).sent(true).reused(reused).with_source(e)
}

fn head_error(e: HeadError) -> ErrorKind {
    match e {
        HeadError::TooLarge | HeadError::TooManyHeaders => ErrorKind::ResponseTooLarge,
        _ => ErrorKind::Protocol,
    }
}

/// Whether a request asks to switch protocols (RFC 9110 section 7.8): an
/// `Upgrade` field, and `upgrade` among its `Connection` options. One map
/// lookup for a request without `Upgrade`, which is nearly all of them.
#[inline]
pub(crate) fn asks_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| vigil_h1::connection_has(v.as_bytes(), b"upgrade"))
}

/// What a request got: a response with a body to read, or the connection
/// itself after a `101 Switching Protocols` it asked for.
pub(crate) enum Answer<H: Home> {
    /// An HTTP/1.1 response body.
    Body(ResponseBody<H>),
    /// The connection after a 101: boxed, as rare.
    Switched(Box<Switched<H>>),
}

/// A connection that switched protocols: no longer HTTP/1.1, so it never
/// goes home. The taker closes it and tells `home` its slot is free; this
/// module is done with it.
pub(crate) struct Switched<H> {
    /// The stream.
    pub(crate) io: Box<dyn Io>,
    /// What the server sent right after the 101's head: the new protocol's
    /// first bytes.
    pub(crate) read_ahead: Bytes,
    /// Where the session would have gone.
    pub(crate) home: H,
}

/// Sends `req` on `conn` to `addr` and reads the response head.
///
/// The request is borrowed: its body is taken out to be written, its head
/// stays. On failure the flag says whether `req` can be sent again as it
/// is (its body was empty, and it did not time out); whether it left is in
/// the error. A `101` to a request that asked for an upgrade is the final
/// answer (see the module's doc).
///
/// A plain function returning an `async` block rather than an `async fn`:
/// an `async fn` keeps each argument twice in its future (the argument and
/// the local it is moved into), and this future is carried inside several
/// others, each `.await` copying it whole.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
pub(crate) fn send<H: Home>(
    mut conn: Conn,
    req: &mut http::Request<RequestBody>,
    max_head: usize,
    addr: SocketAddr,
    reused: bool,
    home: H,
    timeout: Option<Duration>,
) -> impl Future<Output = Result<http::Response<Answer<H>>, (SessionError, bool)>> + Send + '_ {
    async move {
        if let Some(t) = timeout {
            let deadline = tokio::time::Instant::now() + t;
            match conn.kept.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => conn.kept.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let framing = if req.body().is_end_stream() {
            Framing::None
        } else if let Some(n) = req.body().size_hint().exact() {
            Framing::Length(n)
        } else {
            Framing::Chunked
        };
        // A request without a body stays whole, to be sent again if need
        // be; one with a body gives it up to be written.
        let replayable = framing == Framing::None;
        let send_body = (!replayable).then(|| std::mem::replace(req.body_mut(), crate::empty_body()));
        let mut writer = Writer {
            q: std::mem::take(&mut conn.kept.queue),
            body: send_body,
            chunked: framing == Framing::Chunked,
            owed: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            wrote: false,
        };
        vigil_h1::encode_request_head(writer.q.head_mut(), req, framing);

        let head_of: &http::Request<RequestBody> = req;
        let err = |kind, sent: bool| SessionError::new(kind, addr).sent(sent).reused(reused);
        let mut write_failed: Option<WriteError> = None;
        // The head and all that follows it are in a block of their own, and
        // the 101 path awaits only outside it: a local still in scope at an
        // `.await` takes room in the future even once moved from, and these
        // would grow every request's future by a few hundred bytes.
        let switching = 'answer: {
            let head = poll_fn(|cx| {
                if write_failed.is_none()
                    && !writer.done()
                    && let Poll::Ready(Err(e)) = writer.poll_write(&mut *conn.io, cx)
                {
                    write_failed = Some(e);
                }
                if let Some(WriteError::Body(_)) = &write_failed {
                    // The client's body failed: nothing more can be said to this server.
                    return Poll::Ready(Err(ErrorKind::Body));
                }
                if matches!(write_failed, Some(WriteError::Io(_))) && !writer.wrote {
                    return Poll::Ready(Err(ErrorKind::ClosedBeforeHead));
                }
                // After a write error the server may still have answered (an early
                // 413 before it closed): what it said is read before giving up.
                match poll_head(&mut conn, cx, max_head, head_of) {
                    Poll::Pending if timeout.is_some() => {
                        let expired =
                            conn.kept.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready());
                        if expired { Poll::Ready(Err(ErrorKind::ResponseTimeout)) } else { Poll::Pending }
                    }
                    polled => polled,
                }
            })
            .await;
            let sent = writer.wrote;
            let (head, rest) = match head {
                Ok(parsed) => parsed,
                Err(kind) => {
                    // A request that timed out counts as sent, whatever left: the
                    // server may be working on it.
                    let timed_out = kind == ErrorKind::ResponseTimeout;
                    let mut e = err(kind, sent || timed_out);
                    match write_failed {
                        Some(WriteError::Io(io)) => e = e.with_source(io),
                        Some(WriteError::Body(b)) => e = e.with_source(b),
                        None => {}
                    }
                    release(home, conn, false);
                    return Err((e, replayable && !timed_out));
                }
            };
            let vigil_h1::ResponseHead { response, framing, keep_alive } = head;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                // `poll_head` lets a 101 through only to a request that asked
                // for it. Boxed: rare, and its future must not grow this one.
                break 'answer Box::pin(switch(conn, writer, write_failed, home, response, rest, err));
            }
            // A failed upload ends the session; one still going moves into the body
            // (`finish` sees to it that it ended before the session is reused).
            // An upgrade refused leaves the origin in a state we cannot vouch for.
            let keep_alive = keep_alive && write_failed.is_none() && !asks_upgrade(req.headers());
            let pending_write = if write_failed.is_none() && !writer.done() {
                Some(writer)
            } else {
                conn.kept.queue = writer.q; // empty, its allocation kept for the next request
                None
            };
            let mut decoder = Decoder::new(framing);
            let hint = match decoder {
                Decoder::Length(n) => SizeHint::with_exact(n),
                Decoder::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            };
            // What came with the head: usually the whole body, and then the
            // session goes back now, before the client is even written to.
            let mut ready = None;
            match &mut decoder {
                Decoder::Length(n) if rest.len() as u64 >= *n => {
                    ready = Some(rest.slice(..*n as usize));
                    // Bytes past the response: the session will not be reused.
                    conn.buf.extend_from_slice(&rest[*n as usize..]);
                    decoder = Decoder::Done;
                }
                Decoder::Length(n) if !rest.is_empty() => {
                    *n -= rest.len() as u64;
                    ready = Some(rest);
                }
                Decoder::UntilClose if !rest.is_empty() => ready = Some(rest),
                _ => conn.buf.extend_from_slice(&rest),
            }
            let body = if decoder == Decoder::Done && pending_write.is_none() {
                release(home, conn, keep_alive);
                ResponseBody { ready, active: None, hint, addr, reused }
            } else {
                let active = Active { conn, home, decoder, writer: pending_write, keep_alive };
                ResponseBody { ready, active: Some(Box::new(active)), hint, addr, reused }
            };
            return Ok(response.map(|()| Answer::Body(body)));
        };
        switching.await
    }
}

/// The end of [`send`] after a `101` to a request that asked for it: the
/// request is written whole (a body still going is finished under
/// HTTP/1.1's framing, so the new protocol starts at a clean boundary), then
/// the connection is handed over with what followed the 101.
async fn switch<H: Home>(
    mut conn: Conn,
    mut writer: Writer,
    write_failed: Option<WriteError>,
    home: H,
    response: http::Response<()>,
    read_ahead: Bytes,
    err: impl Fn(ErrorKind, bool) -> SessionError,
) -> Result<http::Response<Answer<H>>, (SessionError, bool)> {
    let failed = match write_failed {
        Some(failed) => Some(failed),
        None => poll_fn(|cx| writer.poll_write(&mut *conn.io, cx)).await.err(),
    };
    if let Some(failed) = failed {
        release(home, conn, false);
        let e = err(ErrorKind::Body, true);
        return Err((
            match failed {
                WriteError::Io(io) => e.with_source(io),
                WriteError::Body(b) => e.with_source(b),
            },
            false,
        ));
    }
    let switched = Switched { io: conn.io, read_ahead, home };
    Ok(response.map(|()| Answer::Switched(Box::new(switched))))
}

/// Reads until a final response head is parsed. Interim heads are skipped,
/// but a `101` is final to a request that asked for an upgrade (the bytes
/// after it are the new protocol's), and a protocol error to one that did
/// not.
fn poll_head(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    max_head: usize,
    req: &http::Request<RequestBody>,
) -> Poll<Result<(vigil_h1::ResponseHead, Bytes), ErrorKind>> {
    loop {
        if !conn.buf.is_empty() {
            match vigil_h1::parse_response(&mut conn.buf, max_head, req.method()).map_err(head_error)? {
                Some((Response::Final(head), rest)) => return Poll::Ready(Ok((head, rest))),
                Some((Response::Interim(head), rest)) if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    if !asks_upgrade(req.headers()) {
                        return Poll::Ready(Err(ErrorKind::Protocol));
                    }
                    let head =
                        vigil_h1::ResponseHead { response: head, framing: Framing::None, keep_alive: false };
                    return Poll::Ready(Ok((head, rest)));
                }
                Some((Response::Interim(_), rest)) => {
                    conn.buf.extend_from_slice(&rest);
                    continue;
                }
                None => {}
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) | Err(_) => return Poll::Ready(Err(ErrorKind::ClosedBeforeHead)),
            Ok(_) => {}
        }
    }
}

/// A response whose body is still on the wire.
struct Active<H> {
    conn: Conn,
    home: H,
    decoder: Decoder,
    /// The request body, when the answer came before all of it was written.
    writer: Option<Writer>,
    keep_alive: bool,
}

/// The response body of an HTTP/1.1 session, read from the stream as it is
/// polled. At its end the session goes home (or closes); dropped before,
/// it closes.
pub(crate) struct ResponseBody<H: Home> {
    /// A piece read with the head, handed out first.
    ready: Option<Bytes>,
    active: Option<Box<Active<H>>>,
    hint: SizeHint,
    addr: SocketAddr,
    reused: bool,
}

impl<H: Home> ResponseBody<H> {
    pub(crate) fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.active.is_none()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.hint
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(active) = self.active.as_mut() else { return Poll::Ready(None) };
        if let Some(w) = active.writer.as_mut() {
            match w.poll_write(&mut *active.conn.io, cx) {
                Poll::Ready(Ok(())) => active.writer = None,
                // The answer is still worth reading; the session is not.
                Poll::Ready(Err(_)) => {
                    active.writer = None;
                    active.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        let conn = &mut active.conn;
        match active.decoder.poll_data(&mut *conn.io, &mut conn.buf, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(data))) => {
                if active.decoder == Decoder::Done {
                    self.finish(true);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Ok(None)) => {
                self.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.finish(false);
                Poll::Ready(Some(Err(body_error(e, self.addr, self.reused).into())))
            }
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(active) = self.active.take() {
            let Active { conn, home, writer, keep_alive, .. } = *active;
            release(home, conn, complete && keep_alive && writer.is_none());
        }
    }
}

impl<H: Home> Drop for ResponseBody<H> {
    fn drop(&mut self) {
        self.finish(false);
    }
}
