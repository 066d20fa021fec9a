//! The proxy listener's HTTP/1.1 server, driven inline on the connection's
//! task (no hyper dispatcher).
//!
//! Each head is parsed by `vigil-h1` (header values are slices of the read
//! buffer, not copies; strict framing in the same parse) and handed to the
//! request path; the request body is read from the connection as the
//! request path polls it; the response is written head and first body
//! bytes in one write (one `send` when the first piece is small enough to
//! copy in behind the head). h2c (prior knowledge) connections go to hyper.
//!
//! A refused head (SPEC, Security: `Content-Length` with
//! `Transfer-Encoding`, more than one `Content-Length`, a transfer coding
//! but one final `chunked`, `Transfer-Encoding` in HTTP/1.0, two `Host`
//! fields, an oversized head, ...) is answered with its status (400, 431,
//! 501) and the connection closes; the ambiguous-framing ones are also
//! counted in `vigil_requests_refused_framing_total`. A malformed chunked
//! body fails the request body: the request path answers 400 and closes.
//! A connection that sends no whole head (nothing, half a head, or half
//! the h2 preface) within the head timeout is closed.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use vigil_h1::{DecodeError, Decoder, Framing, HeadError, RequestLimits, ResponseLine, WriteQueue};

use crate::app::Shared;
use crate::forward::{self, Peer, ProxyBody};

/// Response body bytes queued for one write.
const MAX_QUEUED: usize = 64 * 1024;

/// How long a connection with no request begun (a keep-alive one between
/// requests, one just accepted, a TLS handshake) may still start one once
/// the server stops. A client that sent its next request as the stop came
/// gets it answered (with `Connection: close`) rather than a closed or
/// reset connection; one that stays quiet is closed after this.
pub(crate) const IDLE_GRACE: Duration = Duration::from_secs(1);

/// `deadline`, or [`IDLE_GRACE`] from now if that comes first.
fn grace(deadline: tokio::time::Instant) -> tokio::time::Instant {
    deadline.min(tokio::time::Instant::now() + IDLE_GRACE)
}

/// Runs `work` until `timer` fires (then `None`); once `stopped` fires
/// (`seen` records that it did), the timer is brought forward to
/// [`IDLE_GRACE`] from then at most. The notification (enabled) and the
/// timer are the caller's: a connection makes them once, not per request.
async fn wait_idle<F: Future>(
    mut stopped: Pin<&mut Notified<'_>>,
    seen: &mut bool,
    mut timer: Pin<&mut tokio::time::Sleep>,
    work: F,
) -> Option<F::Output> {
    let mut work = pin!(work);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            () = stopped.as_mut(), if !*seen => {
                *seen = true;
                let at = grace(timer.deadline());
                timer.as_mut().reset(at);
            }
            () = timer.as_mut() => return None,
        }
    }
}

/// Tells connections to finish: each answers the request it has begun
/// with `Connection: close` and closes; one with no request begun gets
/// [`IDLE_GRACE`] to begin one, then closes.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    stopping: AtomicBool,
    notify: Notify,
    live: AtomicUsize,
    drained: Notify,
}

impl Stop {
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Counts a connection as open until the returned guard drops.
    pub(crate) fn enter(self: &Arc<Self>) -> Live {
        self.live.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(self))
    }

    /// Whether the server is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Runs `work`, the wait for a request to begin, until `deadline`; once
    /// the server stops, for [`IDLE_GRACE`] from the stop at most. `None`
    /// past either. (A connection that waits again and again makes its
    /// notification and timer once and calls [`wait_idle`].)
    pub(crate) async fn idle<F: Future>(&self, deadline: tokio::time::Instant, work: F) -> Option<F::Output> {
        let stopped = self.notify.notified();
        let mut stopped = pin!(stopped);
        stopped.as_mut().enable();
        let mut seen = self.stopping();
        let timer = tokio::time::sleep_until(if seen { grace(deadline) } else { deadline });
        wait_idle(stopped, &mut seen, pin!(timer), work).await
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Returns once every connection has ended.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection, counted in [`Stop`].
#[derive(Debug)]
pub(crate) struct Live(Arc<Stop>);

impl Drop for Live {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

/// The reading half of a client connection. It can also write the few
/// bytes of an interim `100 Continue`: the request body asks for it when
/// first read, while the connection's task is in the request path and
/// writes nothing else.
pub(crate) trait ConnRead: AsyncRead + Unpin + Send + 'static {
    /// Writes what it can of `bytes`.
    fn poll_write_interim(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>>;
}

impl ConnRead for OwnedReadHalf {
    fn poll_write_interim(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let stream: &TcpStream = self.as_ref();
        loop {
            match stream.try_write(bytes) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(stream.poll_write_ready(cx))?,
                done => return Poll::Ready(done),
            }
        }
    }
}

/// The reading side of a connection: shared by the connection loop (heads)
/// and the request body (the body reads while the request path runs).
struct ReadSide<R> {
    io: R,
    buf: BytesMut,
    body: Decoder,
    /// `Expect: 100-continue` not yet answered: how much of the interim
    /// answer is written. The body writes it when first read (so a request
    /// answered without its body, a 404 or a 503, never makes the client
    /// send it); the connection takes it back before the final answer.
    continue_at: Option<usize>,
}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl<R: ConnRead> ReadSide<R> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        vigil_h1::poll_fill(&mut self.io, &mut self.buf, cx)
    }
}

type SharedRead<R> = Arc<Mutex<ReadSide<R>>>;

/// Serves one HTTP/1.1 connection over plain TCP; `buf` holds what was read
/// already. (Not an `async fn`: a wrapper future would hold a second copy
/// of what it hands on, in every connection's task.)
pub(crate) fn serve(
    stream: TcpStream,
    buf: BytesMut,
    peer: Peer,
    shared: Arc<Shared>,
    live: Live,
) -> impl Future<Output = ()> + Send {
    let (r, w) = stream.into_split();
    serve_halves(r, w, buf, peer, shared, live)
}

/// Serves one HTTP/1.1 connection given as its two halves.
pub(crate) async fn serve_halves<R: ConnRead, W: AsyncWrite + Unpin + Send>(
    r: R,
    mut w: W,
    buf: BytesMut,
    peer: Peer,
    shared: Arc<Shared>,
    live: Live,
) {
    let stop = Arc::clone(&live.0);
    let read: SharedRead<R> =
        Arc::new(Mutex::new(ReadSide { io: r, buf, body: Decoder::Done, continue_at: None }));
    // How long a client may take to send a whole head
    // (`client_header_timeout`; the first one's from now), and to start the
    // next one on a keep-alive connection (`limits.keepalive_timeout`).
    let (head_timeout, keepalive_timeout, send_timeout, limits) = {
        let c = shared.config.load();
        (c.client_header_timeout, c.limits.keepalive_timeout, c.limits.send_timeout, c.limits.head())
    };
    let mut first_deadline = tokio::time::Instant::now() + head_timeout;
    // The stop's notification and the timer, made once per connection
    // (each is a registration: hundreds of instructions a request).
    let stopped = stop.notify.notified();
    let mut stopped = pin!(stopped);
    stopped.as_mut().enable();
    // A connection accepted after the stop has no notification coming.
    let mut stop_seen = stop.stopping();
    if stop_seen {
        first_deadline = grace(first_deadline);
    }
    let timer = tokio::time::sleep_until(first_deadline);
    let mut timer = pin!(timer);
    let mut out = Writer { q: WriteQueue::default(), send_timeout };
    let mut first = true;
    loop {
        let between_requests = {
            // Between requests the connection holds no buffers: the read
            // buffer is taken again when the next request's bytes come
            // (`poll_fill_lazy`), the write queue's with its answer. An
            // idle keep-alive connection then costs its task and stream.
            let mut r = read.lock();
            let empty = r.buf.is_empty();
            if empty {
                r.buf = BytesMut::new();
            }
            empty
        };
        if between_requests {
            if out.q.is_empty() {
                out.q = WriteQueue::default();
            }
            // No request begun: wait for one's first bytes. Once the server
            // stops, only for `IDLE_GRACE`: a client that sent its next
            // request as the stop came is answered, not cut off. (After a
            // stop a connection's answer closes it: there is no next wait.)
            if !first {
                timer.as_mut().reset(tokio::time::Instant::now() + keepalive_timeout);
            }
            let fill = poll_fn(|cx| {
                let mut r = read.lock();
                let r = &mut *r;
                vigil_h1::poll_fill_lazy(&mut r.io, &mut r.buf, cx)
            });
            let Some(more) = wait_idle(stopped.as_mut(), &mut stop_seen, timer.as_mut(), fill).await else {
                if stop_seen {
                    tracing::debug!("stopping, and no request came; closing");
                } else if first {
                    tracing::debug!("no request within client_header_timeout; closing");
                } else {
                    tracing::debug!("keep-alive connection idle past keepalive_timeout; closing");
                }
                return;
            };
            if !matches!(more, Ok(n) if n > 0) {
                return; // the client closed between requests
            }
        }
        // The request's work is a future of its own, boxed: what it holds
        // while it runs (the head's wait, the request path, the answer's
        // writing) is freed when it ends, not kept in the connection's task
        // while the connection waits for its next request.
        let first_deadline = first.then_some(first_deadline);
        first = false;
        let ask = Ask { shared: &shared, peer: &peer, read: &read, stop: &stop, limits, head_timeout };
        let step = Box::pin(request(ask, &mut w, &mut out, timer.as_mut(), first_deadline));
        match step.await {
            Step::Next => {}
            Step::Close => return,
            Step::Tunnel(resp) => {
                let tunnel = Box::pin(tunnel(read, w, *resp, &shared, &stop));
                tunnel.await;
                return;
            }
        }
    }
}

/// What a request's work reads of its connection.
struct Ask<'a, R> {
    shared: &'a Arc<Shared>,
    peer: &'a Peer,
    read: &'a SharedRead<R>,
    stop: &'a Stop,
    limits: RequestLimits,
    head_timeout: Duration,
}

/// One request on a connection whose first bytes of it came: its head
/// read (within `first_deadline` for a connection's first request, else
/// `head_timeout` from the first wait) and refused or forwarded.
async fn request<R: ConnRead, W: AsyncWrite + Unpin + Send>(
    ask: Ask<'_, R>,
    w: &mut W,
    out: &mut Writer,
    mut timer: Pin<&mut tokio::time::Sleep>,
    first_deadline: Option<tokio::time::Instant>,
) -> Step {
    let Ask { shared, peer, read, stop, limits, head_timeout } = ask;
    // Usually the whole head came with its first bytes: parsed at once,
    // with no timer to set. Only a head still partial waits, bounded
    // (and not cut short by a stop: the request has begun).
    let parsed = poll_head(&mut read.lock(), limits, &mut Context::from_waker(std::task::Waker::noop()));
    let head = match parsed {
        Poll::Ready(head) => head,
        Poll::Pending => {
            let deadline = first_deadline.unwrap_or_else(|| tokio::time::Instant::now() + head_timeout);
            timer.as_mut().reset(deadline);
            tokio::select! {
                biased;
                head = poll_fn(|cx| poll_head(&mut read.lock(), limits, cx)) => head,
                () = &mut timer => {
                    tracing::debug!("no whole request head within client_header_timeout; closing");
                    return Step::Close;
                }
            }
        }
    };
    let head = match head {
        Ok(Some(head)) => head,
        Ok(None) => return Step::Close, // the client closed between requests
        Err(refused) => {
            match refused {
                HeadError::Framing(_) => {
                    shared.metrics.framing_refused.fetch_add(1, Ordering::Relaxed);
                }
                HeadError::TooLarge => shared.metrics.limit("head"),
                HeadError::TooManyHeaders => shared.metrics.limit("headers"),
                HeadError::UriTooLong => shared.metrics.limit("uri"),
                _ => {}
            }
            tracing::debug!(reason = %refused, "request head refused");
            let send_timeout = out.send_timeout;
            let _ = tokio::time::timeout(send_timeout, refuse(w, refused.status())).await;
            // What the client still sends (the rest of a huge head) is
            // read and dropped, briefly, so that it reads the answer
            // rather than a reset.
            linger(read).await;
            return Step::Close;
        }
    };
    exchange(shared, peer, read, w, out, stop, head).await
}

/// What follows an exchange on its connection.
enum Step {
    /// The next request.
    Next,
    /// Nothing: the connection closes.
    Close,
    /// The origin switched protocols: the connection becomes a tunnel.
    /// (Boxed: the step is kept in the connection's task.)
    Tunnel(Box<Response<ProxyBody>>),
}

/// One request: forwarded, and its answer written.
async fn exchange<R: ConnRead, W: AsyncWrite + Unpin + Send>(
    shared: &Arc<Shared>,
    peer: &Peer,
    read: &SharedRead<R>,
    w: &mut W,
    out: &mut Writer,
    stop: &Stop,
    head: Head<R>,
) -> Step {
    let Head { mut req, keep_alive, expect_continue } = head;
    let head_only = req.method() == Method::HEAD;
    let http10 = req.version() == Version::HTTP_10;
    if req.body().hint.exact() != Some(0) {
        req.body_mut().read = Some(Arc::clone(read));
        if expect_continue {
            read.lock().continue_at = Some(0);
        }
    }
    let resp = forward::handle(shared, peer, req).await;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only an upgrade request gets one (the pool refuses a 101
        // nobody asked for): the connection becomes a tunnel.
        return Step::Tunnel(Box::new(resp));
    }
    let (begun, body_done) = {
        let mut r = read.lock();
        // An interim answer not begun is not sent after the final one
        // (the body may still be read, by an upload the origin answered
        // early); one begun is finished first.
        let begun = if expect_continue { r.continue_at.take().filter(|&at| at > 0) } else { None };
        (begun, matches!(r.body, Decoder::Done))
    };
    if let Some(at) = begun
        && write_all(w, &CONTINUE[at..]).await.is_err()
    {
        return Step::Close;
    }
    // Stopping: this answer is the connection's last, and says so.
    let keep = keep_alive && body_done && !wants_close(resp.headers()) && !stop.stopping();
    match out.respond(w, resp, keep, head_only, http10).await {
        Ok(true) if keep => Step::Next,
        Ok(_) if !matches!(read.lock().body, Decoder::Done | Decoder::Failed) => {
            // The answer came before the request body was read (a 404
            // to a POST): read and drop what the client still sends, so
            // closing with unread bytes does not reset the connection
            // before the client has read the answer (nginx's lingering close).
            linger(read).await;
            Step::Close
        }
        _ => Step::Close,
    }
}

/// Writes the `101` and carries bytes both ways between the client and the
/// origin's upgraded connection until either side closes, nothing moves for
/// `limits.tunnel_idle_timeout`, or the server stops (a tunnel may live for
/// hours: the shutdown's drain does not wait for it). The origin's
/// connection never goes back to the pool; the server counts the tunnel in
/// flight.
async fn tunnel<R: ConnRead, W: AsyncWrite + Unpin + Send>(
    read: SharedRead<R>,
    mut w: W,
    resp: Response<ProxyBody>,
    shared: &Shared,
    stop: &Stop,
) {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in resp.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let limits = shared.config.load().limits;
    let Some(upstream) = resp.into_body().into_tunnel() else {
        let _ = tokio::time::timeout(limits.send_timeout, refuse(&mut w, StatusCode::BAD_GATEWAY)).await;
        return;
    };
    // The request had no body (see `forward::upgrade_of`): nothing else
    // holds the read side.
    let read = match Arc::try_unwrap(read) {
        Ok(read) => read,
        Err(_) => {
            let _ = tokio::time::timeout(limits.send_timeout, refuse(&mut w, StatusCode::BAD_GATEWAY)).await;
            upstream.fail(StatusCode::BAD_GATEWAY);
            return;
        }
    };
    let ReadSide { io: client_r, buf: early, .. } = read.into_inner();
    if !matches!(tokio::time::timeout(limits.send_timeout, write_all(&mut w, &head)).await, Ok(Ok(()))) {
        return;
    }
    let _open = shared.metrics.tunnel_opened();
    let mut upstream = upstream;
    let stopping = async {
        let stopped = stop.notify.notified();
        let mut stopped = pin!(stopped);
        stopped.as_mut().enable();
        if !stop.stopping.load(Ordering::SeqCst) {
            stopped.await;
        }
    };
    let (to_client, _) = crate::tunnel::run(
        client_r,
        early.freeze(),
        w,
        &mut upstream.io,
        limits.tunnel_idle_timeout,
        stopping,
    )
    .await;
    upstream.finish(to_client);
}

/// Reads and drops what a client still sends, for at most a second.
async fn linger<R: ConnRead>(read: &SharedRead<R>) {
    let drain = poll_fn(|cx| {
        let mut r = read.lock();
        loop {
            r.buf.clear();
            match ready!(r.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

fn wants_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| vigil_h1::connection_has(v.as_bytes(), b"close"))
}

struct Head<R> {
    /// Its body reads nothing yet: the connection's read side is set in
    /// when it has one.
    req: Request<RequestBody<R>>,
    keep_alive: bool,
    expect_continue: bool,
}

/// Reads until one request head is parsed; `None` when the client closed
/// cleanly with nothing pending (or the connection failed).
fn poll_head<R: ConnRead>(
    read: &mut ReadSide<R>,
    limits: RequestLimits,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Head<R>>, HeadError>> {
    loop {
        if !read.buf.is_empty()
            && let Some((head, rest)) = vigil_h1::parse_request_limited(&mut read.buf, limits)?
        {
            read.buf.extend_from_slice(&rest);
            read.body = Decoder::new(head.framing);
            let (parts, ()) = head.request.into_parts();
            let req = Request::from_parts(parts, RequestBody::unread(head.framing));
            return Poll::Ready(Ok(Some(Head {
                req,
                keep_alive: head.keep_alive,
                expect_continue: head.expect_continue,
            })));
        }
        match ready!(read.poll_fill(cx)) {
            Ok(0) if read.buf.is_empty() => return Poll::Ready(Ok(None)),
            // Half a head, then EOF.
            Ok(0) => return Poll::Ready(Err(HeadError::Malformed("the connection closed mid-head"))),
            Ok(_) => {}
            Err(_) => return Poll::Ready(Ok(None)),
        }
    }
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, status: StatusCode) -> io::Result<()> {
    let text = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    write_all(w, text.as_bytes()).await?;
    poll_fn(|cx| Pin::new(&mut *w).poll_shutdown(cx)).await
}

async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *w).poll_write(cx, data)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// The request body the request path sees: read from the connection as it
/// is polled.
pub(crate) struct RequestBody<R> {
    read: Option<SharedRead<R>>,
    hint: SizeHint,
}

impl<R> std::fmt::Debug for RequestBody<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody").field("done", &self.read.is_none()).finish()
    }
}

impl<R> RequestBody<R> {
    /// A body of `framing`, its reader yet to be set (none: no body).
    fn unread(framing: Framing) -> Self {
        let hint = match framing {
            Framing::None => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked | Framing::UntilClose => SizeHint::default(),
        };
        Self { read: None, hint }
    }
}

impl<R: ConnRead> Body for RequestBody<R> {
    type Data = Bytes;
    type Error = DecodeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DecodeError>>> {
        let this = self.get_mut();
        let Some(read) = this.read.as_ref() else { return Poll::Ready(None) };
        let polled = {
            let mut r = read.lock();
            if let Err(e) = ready!(poll_continue(&mut r, cx)) {
                drop(r);
                this.read = None;
                return Poll::Ready(Some(Err(DecodeError::Io(e))));
            }
            let ReadSide { io, buf, body, .. } = &mut *r;
            body.poll_data(io, buf, cx)
        };
        match polled {
            Poll::Ready(Ok(Some(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Ok(None)) => {
                this.read = None;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                this.read = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Writes what is still to be written of the `100 Continue` the client
/// waits for, straight to the socket (the connection's task is in the
/// request path meanwhile and writes nothing).
fn poll_continue<R: ConnRead>(r: &mut ReadSide<R>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    while let Some(at) = r.continue_at {
        if at >= CONTINUE.len() {
            r.continue_at = None;
            break;
        }
        match ready!(r.io.poll_write_interim(cx, &CONTINUE[at..]))? {
            0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => r.continue_at = Some(at + n),
        }
    }
    Poll::Ready(Ok(()))
}

/// The write side's queue: its allocations serve an answer's head and
/// body pieces, and are given back when the connection waits for its next
/// request.
#[derive(Default)]
struct Writer {
    q: WriteQueue,
    send_timeout: Duration,
}

impl Writer {
    /// Writes `resp`; returns whether the connection may carry another request.
    async fn respond(
        &mut self,
        w: &mut (impl AsyncWrite + Unpin),
        resp: Response<ProxyBody>,
        keep: bool,
        head_only: bool,
        http10: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = resp.into_parts();
        let method = if head_only { &Method::HEAD } else { &Method::GET };
        let framing = Framing::for_response(method, parts.status, body.size_hint().exact(), http10);
        let keep = keep && framing != Framing::UntilClose;
        let line = ResponseLine { status: parts.status, framing, http10, keep_alive: keep };
        // Room for a usual head and a small body copied in behind it, taken
        // at once (the queue gave its buffer back while the connection was
        // idle; growing it in steps would copy).
        self.q.head_mut().reserve(vigil_h1::LAZY_MIN);
        vigil_h1::encode_response_head(self.q.head_mut(), line, &parts.headers, date);
        if framing == Framing::None {
            drop(body);
            self.flush(w).await?;
            return Ok(keep);
        }
        let mut body = Pin::new(&mut body);
        let mut ended = false;
        let mut failed = false;
        while !ended {
            // Gather what the body has ready, then write it with what is queued.
            let polled = poll_fn(|cx| {
                let mut progressed = false;
                while self.q.len() < MAX_QUEUED {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Pending => break,
                        Poll::Ready(None) => {
                            ended = true;
                            break;
                        }
                        Poll::Ready(Some(Err(_))) => {
                            failed = true;
                            break;
                        }
                        Poll::Ready(Some(Ok(frame))) => {
                            let Ok(data) = frame.into_data() else { continue };
                            if data.is_empty() {
                                continue;
                            }
                            // A small first piece ready at once (usually the
                            // whole body, read with the origin's head) is
                            // copied in behind the head by the queue: one
                            // buffer, one `send`.
                            progressed = true;
                            if framing == Framing::Chunked {
                                self.q.push_chunk(data);
                            } else {
                                self.q.push(data);
                            }
                        }
                    }
                }
                if ended || failed || progressed || !self.q.is_empty() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            polled.await;
            if failed {
                // The origin failed mid-body: what the client has is cut
                // short; closing is the only way to say so.
                let _ = self.flush(w).await;
                return Ok(false);
            }
            if ended && framing == Framing::Chunked {
                self.q.push_last_chunk();
            }
            self.flush(w).await?;
        }
        if !keep {
            poll_fn(|cx| Pin::new(&mut *w).poll_shutdown(cx)).await?;
        }
        Ok(keep)
    }

    /// Writes out the queue. A client that takes nothing for
    /// `limits.send_timeout` is cut off (it would hold the origin's
    /// session, its queue room and the server's in-flight count); the timer
    /// is armed only when the socket is full, not on every response.
    async fn flush(&mut self, w: &mut (impl AsyncWrite + Unpin)) -> io::Result<()> {
        if let Poll::Ready(done) = poll_fn(|cx| Poll::Ready(self.q.poll_flush(w, cx))).await {
            return done;
        }
        match tokio::time::timeout(self.send_timeout, poll_fn(|cx| self.q.poll_flush(w, cx))).await {
            Ok(done) => done,
            Err(_) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the client took nothing for send_timeout"))
            }
        }
    }
}

/// The `Date` value, formatted once a second per thread.
fn date() -> [u8; 29] {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            let mut out = [b' '; 29];
            let n = text.len().min(29);
            out[..n].copy_from_slice(&text.as_bytes()[..n]);
            *c = (secs, out);
        }
        c.1
    })
}

/// A stream with bytes already read from it in front (the h2c preface
/// sniffed before hyper takes the connection).
#[derive(Debug)]
pub(crate) struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The h2c connection preface (RFC 9113 3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a connection: enough to tell h2c prior knowledge
/// from HTTP/1.1. Returns them, and whether they start the h2 preface.
pub(crate) async fn sniff(stream: &mut TcpStream) -> io::Result<(BytesMut, bool)> {
    let mut buf = BytesMut::new();
    loop {
        // Lazily: a connection that sends nothing yet holds no buffer.
        let n = poll_fn(|cx| vigil_h1::poll_fill_lazy(stream, &mut buf, cx)).await?;
        let seen = &buf[..buf.len().min(H2_PREFACE.len())];
        if n == 0 || !H2_PREFACE.starts_with(seen) {
            return Ok((buf, false));
        }
        if buf.len() >= H2_PREFACE.len() {
            return Ok((buf, true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stop_leaves_a_connection_with_no_request_the_idle_grace() {
        use tokio::time::{Instant, sleep};
        let stop = Arc::new(Stop::default());
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(60);
        // Work that finishes in time is not cut short.
        assert_eq!(stop.idle(far, async { 7 }).await, Some(7));
        // A stop during the wait: IDLE_GRACE from the stop, not the deadline.
        let s = Arc::clone(&stop);
        let stopper = tokio::spawn(async move {
            sleep(Duration::from_secs(5)).await;
            s.stop();
        });
        assert_eq!(stop.idle(far, std::future::pending::<()>()).await, None);
        assert_eq!(t0.elapsed(), Duration::from_secs(5) + IDLE_GRACE);
        stopper.await.unwrap();
        // Work that comes within the grace is done.
        let late = async {
            sleep(IDLE_GRACE / 2).await;
            1
        };
        assert_eq!(stop.idle(far, late).await, Some(1));
        // Stopped already: the grace at most, an earlier deadline first.
        let t1 = Instant::now();
        assert_eq!(stop.idle(far, std::future::pending::<()>()).await, None);
        assert_eq!(t1.elapsed(), IDLE_GRACE);
        let soon = Instant::now() + IDLE_GRACE / 4;
        assert_eq!(stop.idle(soon, std::future::pending::<()>()).await, None);
        assert_eq!(t1.elapsed(), IDLE_GRACE + IDLE_GRACE / 4);
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let d = date();
        let s = std::str::from_utf8(&d).unwrap_or("");
        assert!(s.ends_with(" GMT") && s.len() == 29, "{s}");
        assert!(httpdate::parse_http_date(s).is_ok(), "{s}");
    }
}
