//! The HTTP/1.1 client, driven inline on the caller's task.
//!
//! hyper's conn-level client runs each connection as a task of its own and
//! hands requests, heads and body chunks to it over channels: per proxied
//! request, two task hand-offs each way and a second HTTP state machine.
//! Replacing it (with two smaller fixes beside) took the proxy's measured
//! `proxy_request` from 35 719 to 28 034 instructions per request. Here
//! the task that sends the request does the I/O itself (Pingora's
//! approach): it writes the head (alone, one `send`; with the first body
//! chunk, one `writev`), reads and parses the response head with httparse,
//! and the response body reads the socket when polled. An idle session is
//! the socket, its read buffer and what it keeps for the next request (see
//! `Kept`) in the pool; nobody polls it.
//!
//! Framing is strict (RFC 9112 section 6): a response with both
//! `Transfer-Encoding` and `Content-Length`, or with differing
//! `Content-Length` values, is a protocol error, as nginx treats it; a bad
//! chunk size line fails the body. A session goes back to the pool only when
//! its response was read to the end, the request body was written whole,
//! the server did not ask to close, and no byte beyond the response arrived.
//!
//! The request body is written concurrently with reading the response (an
//! origin may answer before reading the whole upload, or stream its answer
//! while it reads), so neither side can block the other.

use std::future::{Future as _, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::error::{BoxError, ErrorKind, SessionError};
use crate::pool::Inner;
use crate::wire::{self, Decoder, WriteQueue};
use crate::{RequestBody, Target};

/// Most headers a response head may carry (hyper's default is 100).
const MAX_HEADERS: usize = 128;
/// Request body bytes queued for one write before waiting for the socket.
const MAX_QUEUED: usize = 64 * 1024;

/// One HTTP/1.1 connection: the socket and what was read past the last
/// message (nothing, between messages of a healthy session).
///
/// It also keeps what each request would otherwise make anew: the write
/// queue (with the buffer heads are written into) and the response timer.
pub(crate) struct Conn {
    io: TcpStream,
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
    pub(crate) fn new(io: TcpStream, id: u64) -> Self {
        Self { io, buf: BytesMut::new(), kept: Box::default(), id }
    }

    /// Whether an idle session can no longer carry a request: its peer
    /// closed it, reset it, or sent bytes nobody asked for.
    ///
    /// Costs no system call while the reactor has seen nothing on the
    /// socket: the last read of the previous response was short, so tokio
    /// holds the socket not readable until epoll says otherwise.
    pub(crate) fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readable: EOF, an error or stray bytes, unless the readiness is
            // stale (then the read says WouldBlock and clears it).
            Poll::Ready(Ok(())) => {
                !matches!(self.io.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        wire::poll_fill(&mut self.io, &mut self.buf, cx)
    }
}

/// Where a finished session goes: back to its pool's idle list, or closed.
pub(crate) struct Home {
    pub(crate) pool: Arc<Inner>,
    pub(crate) target: Target,
}

impl Home {
    fn release(self, conn: Conn, reusable: bool) {
        if reusable && conn.buf.is_empty() {
            self.pool.checkin_h1(self.target, conn);
        } else {
            drop(conn); // closes it
            self.pool.discard_h1(self.target);
        }
    }
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    Length(u64),
    Chunked,
}

/// The request's way out: queued bytes, and the body still to come.
struct Writer {
    q: WriteQueue,
    body: Option<RequestBody>,
    framing: ReqFraming,
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
    fn poll_write(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        loop {
            // Gather what the body has ready so it leaves with what is queued.
            while self.q.len() < MAX_QUEUED {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        self.body = None;
                        match self.framing {
                            ReqFraming::Chunked => self.q.push_last_chunk(),
                            ReqFraming::Length(_) if self.owed > 0 => {
                                return Poll::Ready(Err(WriteError::Body(
                                    "the request body ended before its Content-Length".into(),
                                )));
                            }
                            ReqFraming::Length(_) => {}
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
                        match self.framing {
                            ReqFraming::Length(_) => {
                                if data.len() as u64 > self.owed {
                                    self.body = None;
                                    return Poll::Ready(Err(WriteError::Body(
                                        "the request body is longer than its Content-Length".into(),
                                    )));
                                }
                                self.owed -= data.len() as u64;
                                self.q.push(data);
                            }
                            ReqFraming::Chunked => self.q.push_chunk(data),
                        }
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

/// Sends `req` on `conn` and reads the response head.
///
/// The request is borrowed: its body is taken out to be written, its head
/// stays. On failure the flag says whether `req` can be sent again as it
/// is (its body was empty, and it did not time out); whether it left is in
/// the error.
///
/// A plain function returning an `async` block rather than an `async fn`:
/// an `async fn` keeps each argument twice in its future (the argument and
/// the local it is moved into), and this future is carried inside several
/// others, each `.await` copying it whole.
#[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
pub(crate) fn send(
    mut conn: Conn,
    req: &mut http::Request<RequestBody>,
    max_head: usize,
    reused: bool,
    home: Home,
    timeout: Option<Duration>,
) -> impl Future<Output = Result<http::Response<ResponseBody>, (SessionError, bool)>> + Send + '_ {
    async move {
        let addr = home.target.addr;
        if let Some(t) = timeout {
            let deadline = tokio::time::Instant::now() + t;
            match conn.kept.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => conn.kept.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let head_only = req.method() == Method::HEAD;
        let framing = if req.body().is_end_stream() {
            None
        } else if let Some(n) = req.body().size_hint().exact() {
            Some(ReqFraming::Length(n))
        } else {
            Some(ReqFraming::Chunked)
        };
        // A request without a body stays whole, to be sent again if need
        // be; one with a body gives it up to be written.
        let replayable = framing.is_none();
        let send_body = (!replayable).then(|| std::mem::replace(req.body_mut(), crate::empty_body()));
        let mut writer = Writer {
            q: std::mem::take(&mut conn.kept.queue),
            body: send_body,
            framing: framing.unwrap_or(ReqFraming::Length(0)),
            owed: match framing {
                Some(ReqFraming::Length(n)) => n,
                _ => 0,
            },
            wrote: false,
        };
        encode_head(writer.q.head_mut(), req, framing);

        let err = |kind, sent: bool| SessionError::new(kind, addr).sent(sent).reused(reused);
        let mut write_failed: Option<WriteError> = None;
        let head = poll_fn(|cx| {
            if write_failed.is_none()
                && !writer.done()
                && let Poll::Ready(Err(e)) = writer.poll_write(&mut conn.io, cx)
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
            match poll_head(&mut conn, cx, max_head, head_only) {
                Poll::Pending if timeout.is_some() => {
                    let expired = conn.kept.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready());
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
                home.release(conn, false);
                return Err((e, replayable && !timed_out));
            }
        };
        let Head { resp, mut decoder, keep_alive } = head;
        // A failed upload ends the session; one still going moves into the body
        // (`finish` sees to it that it ended before the session is reused).
        let keep_alive = keep_alive && write_failed.is_none();
        let pending_write = if write_failed.is_none() && !writer.done() {
            Some(writer)
        } else {
            conn.kept.queue = writer.q; // empty, its allocation kept for the next request
            None
        };
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
            home.release(conn, keep_alive);
            ResponseBody { ready, active: None, hint }
        } else {
            let active = Active { conn, home, decoder, writer: pending_write, keep_alive };
            ResponseBody { ready, active: Some(Box::new(active)), hint }
        };
        Ok(resp.map(|()| body))
    }
}

/// The request head on the wire: origin-form target, the caller's headers
/// (its own framing headers replaced by ours), `Host` if it set none.
///
/// Written into `out`, the write queue's own buffer: a small body is copied
/// in behind it, and the allocation is reused once the head is written.
fn encode_head<B>(out: &mut BytesMut, req: &http::Request<B>, framing: Option<ReqFraming>) {
    out.reserve(256);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
    {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(a.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Some(ReqFraming::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Some(ReqFraming::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A method whose body means something says it has none.
        None if had_length || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
}

struct Head {
    resp: http::Response<()>,
    decoder: Decoder,
    keep_alive: bool,
}

/// Reads until a final response head is parsed (1xx heads are skipped).
fn poll_head(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    max_head: usize,
    head_only: bool,
) -> Poll<Result<(Head, Bytes), ErrorKind>> {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, max_head, head_only)? {
                Some(Parsed::Final(head, rest)) => return Poll::Ready(Ok((head, rest))),
                Some(Parsed::Informational) => continue,
                None => {}
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) | Err(_) => return Poll::Ready(Err(ErrorKind::ClosedBeforeHead)),
            Ok(_) => {}
        }
    }
}

enum Parsed {
    /// The head, and the bytes that came after it.
    Final(Head, Bytes),
    Informational,
}

/// Parses one response head off the front of `buf`; `None` until it is
/// complete. A final head comes with what followed it (usually the whole
/// body), and `buf` is left empty.
///
/// The buffer is frozen before parsing so header values are slices of it,
/// not copies; a partial head goes back into `buf` without a copy (nothing
/// else holds the buffer then).
fn parse_head(buf: &mut BytesMut, max_head: usize, head_only: bool) -> Result<Option<Parsed>, ErrorKind> {
    let bytes = buf.split().freeze();
    // Uninitialized: a head has a handful of headers, and zeroing room for
    // MAX_HEADERS showed in profiles.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        &bytes,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(ErrorKind::ResponseTooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= max_head => return Err(ErrorKind::ResponseTooLarge),
        Ok(httparse::Status::Partial) => {
            *buf = BytesMut::from(bytes);
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ErrorKind::ResponseTooLarge),
        Err(_) => return Err(ErrorKind::Protocol),
    };
    let code = resp.code.unwrap_or(0);
    match code {
        // An upgrade nobody asked for (Upgrade is never forwarded).
        101 => return Err(ErrorKind::Protocol),
        100..=199 => {
            buf.extend_from_slice(&bytes[len..]);
            return Ok(Some(Parsed::Informational));
        }
        _ => {}
    }
    let http10 = resp.version == Some(0);
    let status = StatusCode::from_u16(code).map_err(|_| ErrorKind::Protocol)?;

    // Room for one more: a proxy adds `Via`, and a full map rehashes.
    let mut map = HeaderMap::with_capacity(resp.headers.len() + 1);
    let mut length: Option<u64> = None;
    let (mut te, mut chunked) = (false, false);
    let (mut close, mut keep_alive_token) = (false, false);
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ErrorKind::Protocol)?;
        let value =
            HeaderValue::from_maybe_shared(bytes.slice_ref(h.value)).map_err(|_| ErrorKind::Protocol)?;
        if name == header::CONTENT_LENGTH {
            let n = wire::parse_content_length(value.as_bytes()).ok_or(ErrorKind::Protocol)?;
            if length.is_some_and(|l| l != n) {
                return Err(ErrorKind::Protocol);
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            te = true;
            // Only the last coding decides whether the body is chunked.
            chunked = wire::last_coding_is_chunked(value.as_bytes());
        } else if name == header::CONNECTION {
            close |= wire::connection_has(value.as_bytes(), b"close");
            keep_alive_token |= wire::connection_has(value.as_bytes(), b"keep-alive");
        }
        map.append(name, value);
    }
    if te && length.is_some() {
        // RFC 9112 6.3: a smuggling vector; nginx refuses it too.
        return Err(ErrorKind::Protocol);
    }
    let decoder = if head_only || matches!(code, 204 | 304) {
        Decoder::Done
    } else if te {
        if chunked { Decoder::chunked() } else { Decoder::UntilClose }
    } else {
        match length {
            Some(0) => Decoder::Done,
            Some(n) => Decoder::Length(n),
            None => Decoder::UntilClose,
        }
    };
    let keep_alive = decoder != Decoder::UntilClose && !close && (!http10 || keep_alive_token);
    let mut head = http::Response::new(());
    *head.status_mut() = status;
    *head.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *head.headers_mut() = map;
    Ok(Some(Parsed::Final(Head { resp: head, decoder, keep_alive }, bytes.slice(len..))))
}

/// A response whose body is still on the wire.
struct Active {
    conn: Conn,
    home: Home,
    decoder: Decoder,
    /// The request body, when the answer came before all of it was written.
    writer: Option<Writer>,
    keep_alive: bool,
}

/// The response body of an HTTP/1.1 session, read from the socket as it is
/// polled. At its end the session goes back to the pool (or closes);
/// dropped before, it closes.
pub(crate) struct ResponseBody {
    /// A piece read with the head, handed out first.
    ready: Option<Bytes>,
    active: Option<Box<Active>>,
    hint: SizeHint,
}

impl ResponseBody {
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
            match w.poll_write(&mut active.conn.io, cx) {
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
        match active.decoder.poll_data(&mut conn.io, &mut conn.buf, cx) {
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
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(active) = self.active.take() {
            let Active { conn, home, writer, keep_alive, .. } = *active;
            home.release(conn, complete && keep_alive && writer.is_none());
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Parsed>, ErrorKind> {
        parse_head(&mut BytesMut::from(raw), 64 * 1024, false)
    }

    fn framing(raw: &[u8]) -> (Decoder, bool) {
        match parse(raw) {
            Ok(Some(Parsed::Final(h, _))) => (h.decoder, h.keep_alive),
            _ => panic!("not a final head: {}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), (Decoder::Length(5), true));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (Decoder::chunked(), true)
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            (Decoder::UntilClose, false)
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\n"), (Decoder::UntilClose, false));
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\n\r\n"), (Decoder::Done, true));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"),
            (Decoder::Length(2), false)
        );
        assert_eq!(framing(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n"), (Decoder::Length(2), false));
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nConnection: Keep-Alive\r\n\r\n"),
            (Decoder::Length(2), true)
        );
        // The same length twice is one length.
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n"),
            (Decoder::Length(2), true)
        );
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1,1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        ] {
            assert!(matches!(parse(raw), Err(ErrorKind::Protocol)), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_heads_wait() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut buf, 1024, false), Ok(Some(Parsed::Informational))));
        assert!(matches!(parse_head(&mut buf, 1024, false), Ok(Some(Parsed::Final(..)))));
        assert!(buf.is_empty());
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)));
        let big = [&b"HTTP/1.1 200 OK\r\nx: "[..], &[b'a'; 2000]].concat();
        assert!(matches!(
            parse_head(&mut BytesMut::from(&big[..]), 1024, false),
            Err(ErrorKind::ResponseTooLarge)
        ));
    }

    #[test]
    fn head_requests_and_not_modified_have_no_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        match parse_head(&mut BytesMut::from(&raw[..]), 1024, true) {
            Ok(Some(Parsed::Final(h, _))) => assert_eq!(h.decoder, Decoder::Done),
            _ => panic!("HEAD's answer"),
        }
        assert_eq!(framing(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n").0, Decoder::Done);
    }

    #[test]
    fn request_heads_carry_our_framing_only() {
        let req = http::Request::post("http://app.internal/upload?x=1")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .header("x-kept", "1")
            .body(())
            .unwrap_or_default();
        let head = |req: &http::Request<()>, framing| {
            let mut out = BytesMut::new();
            encode_head(&mut out, req, framing);
            out
        };
        assert_eq!(
            &head(&req, Some(ReqFraming::Length(5)))[..],
            b"POST /upload?x=1 HTTP/1.1\r\nx-kept: 1\r\nhost: app.internal\r\ncontent-length: 5\r\n\r\n"
        );
        let req = http::Request::get("/").body(()).unwrap_or_default();
        assert_eq!(&head(&req, None)[..], b"GET / HTTP/1.1\r\n\r\n");
        let req = http::Request::put("/").body(()).unwrap_or_default();
        assert_eq!(&head(&req, None)[..], b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }
}
