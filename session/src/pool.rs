//! The pool: per-target idle HTTP/1.1 sessions and shared h2c connections.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{BoxError, ErrorKind, SessionError, classify};
use crate::h1;
use crate::{Observer, PoolConfig, PoolMetrics, Protocol, RequestBody, Target};

/// Whether a checkout may take an idle session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freshness {
    /// An idle session if one is open, else a new connection.
    #[default]
    IdlePreferred,
    /// Always a new connection (checks that must see the path a new
    /// connection takes; retries after a reused session failed). It joins
    /// the pool afterwards like any other.
    Fresh,
}

/// Idle and in-use counts for one server (the admin view's `pool`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Open sessions nobody uses (h2: connections with no stream open).
    pub idle: u32,
    /// Sessions in use (h2: connections with a stream open).
    pub in_use: u32,
}

type H2Driver = http2::Connection<TokioIo<TcpStream>, RequestBody, TokioExecutor>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct IdleH1 {
    conn: h1::Conn,
    since: Instant,
}

struct H2Conn {
    tx: http2::SendRequest<RequestBody>,
    id: u64,
    streams: Arc<AtomicUsize>,
    /// The connection itself, shared with its driver task, to read the
    /// server's SETTINGS_MAX_CONCURRENT_STREAMS (it may change at any time).
    conn: Arc<Mutex<H2Driver>>,
    idle_since: Instant,
}

#[derive(Default)]
struct Host {
    /// LIFO: push and pop at the back; the oldest sit at the front.
    idle: VecDeque<IdleH1>,
    in_use: usize,
    h2: Vec<H2Conn>,
    /// Set while one task connects h2c for this target; others wait on it.
    h2_connecting: Option<Arc<Notify>>,
}

impl Host {
    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.in_use == 0 && self.h2.is_empty() && self.h2_connecting.is_none()
    }
}

pub(crate) struct Inner {
    config: PoolConfig,
    observer: Arc<dyn Observer>,
    metrics: PoolMetrics,
    hosts: Mutex<HashMap<Target, Host, foldhash::fast::RandomState>>,
}

/// A pool of keep-alive origin sessions, shared by requests and checks.
///
/// Cheap to clone. Sessions are keyed by [`Target`] (server address and
/// protocol: only sessions that are interchangeable share a key).
///
/// # Concurrency note
/// One mutex guards the per-target lists; every critical section is a push,
/// a pop or a counter change (no I/O, no await). Connects happen outside it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("targets", &self.inner.hosts.lock().len()).finish()
    }
}

impl Pool {
    /// A pool with `config`, reporting connects and I/O errors to `observer`.
    /// Spawns its eviction task on the current tokio runtime; the task ends
    /// when the last clone of the pool is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(config: PoolConfig, observer: Arc<dyn Observer>) -> Self {
        let inner =
            Arc::new(Inner { config, observer, metrics: PoolMetrics::default(), hosts: Mutex::default() });
        let weak = Arc::downgrade(&inner);
        let every = inner.config.eviction_interval();
        tokio::spawn(evict_loop(weak, every));
        Self { inner }
    }

    /// The pool's counters.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.inner.metrics
    }

    /// Idle and in-use sessions to `addr`, all protocols.
    pub fn counts(&self, addr: SocketAddr) -> PoolCounts {
        let hosts = self.inner.hosts.lock();
        let mut c = PoolCounts::default();
        // A server has at most two keys: look them up, never scan the map
        // (the admin view asks once per server).
        let keys = [Target::http1(addr), Target::h2c(addr)];
        for h in keys.iter().filter_map(|t| hosts.get(t)) {
            c.idle += h.idle.len() as u32;
            c.in_use += h.in_use as u32;
            for conn in &h.h2 {
                if conn.streams.load(Ordering::Relaxed) == 0 {
                    c.idle += 1;
                } else {
                    c.in_use += 1;
                }
            }
        }
        c
    }

    /// Number of targets with any state in the pool (idle, in use, connecting).
    pub fn targets(&self) -> usize {
        self.inner.hosts.lock().len()
    }

    /// Drops every idle session at once (config reload, shutdown).
    pub fn clear_idle(&self) {
        let mut hosts = self.inner.hosts.lock();
        for h in hosts.values_mut() {
            h.idle.clear();
            h.h2.retain(|c| c.streams.load(Ordering::Relaxed) > 0);
        }
        hosts.retain(|_, h| !h.is_empty());
    }

    /// A session to `target`: an idle one when `freshness` allows and one is
    /// open, else a new connection (bounded by `connect_timeout`).
    ///
    /// # Errors
    /// Connect failures ([`SessionError::is_connect`]); they are also
    /// reported to the observer.
    pub async fn checkout(&self, target: Target, freshness: Freshness) -> Result<Session, SessionError> {
        // The futures of the paths that wait (a connect, h2c's handshake)
        // are boxed: they are rare next to an idle HTTP/1.1 session, and
        // kept inline they made every caller's future kilobytes large, and
        // every `.await` on it a copy of that size.
        match target.protocol {
            Protocol::Http1 => match self.idle_h1(target, freshness) {
                Some(session) => Ok(session),
                None => Box::pin(self.connect_h1(target)).await,
            },
            Protocol::H2c => Box::pin(self.checkout_h2(target, freshness)).await,
        }
    }

    /// Checks out a session and sends `req` on it, with the one retry a
    /// reused session deserves: if it fails before any response and the
    /// request either never left or has an empty body (so it can be sent
    /// again as it was), the request goes once more on a fresh connection.
    /// The retry's outcome is what the caller sees.
    ///
    /// # Errors
    /// As [`Pool::checkout`] and [`Session::send`].
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
    /// from [`SessionError::is_sent`] and the method whether to resend it,
    /// on another server.
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
    ) -> impl Future<
        Output = Result<http::Response<PooledBody>, (SessionError, Option<http::Request<RequestBody>>)>,
    > + Send
    + '_ {
        async move {
            let mut req = req;
            let replay = h2_replay(target, &req);
            let session = match self.checkout(target, freshness).await {
                Ok(session) => session,
                Err(e) => return Err((e, Some(req))),
            };
            match session.send_keeping(&mut req, response_timeout).await {
                Ok(resp) => Ok(resp),
                Err((e, replayable)) => {
                    let back = if replayable { Some(req) } else { replay.map(|r| *r) };
                    if !e.is_retryable_on_fresh() || back.is_none() {
                        return Err((report(&*self.inner.observer, e), back));
                    }
                    // Not reported to the observer: only the retry's outcome counts.
                    tracing::debug!(server = %target.addr, error = %e, "reused session failed; retrying on a fresh one");
                    let Some(req) = back else { return Err((e, None)) };
                    // Boxed: the rare path must not grow the common one's future.
                    Box::pin(self.retry_fresh(target, req, response_timeout)).await
                }
            }
        }
    }

    /// The second try of [`Pool::try_request`], on a fresh connection.
    async fn retry_fresh(
        &self,
        target: Target,
        mut req: http::Request<RequestBody>,
        response_timeout: Option<Duration>,
    ) -> Result<http::Response<PooledBody>, (SessionError, Option<http::Request<RequestBody>>)> {
        // The fresh send may fail too.
        let backup = h2_replay(target, &req);
        match self.checkout(target, Freshness::Fresh).await {
            Ok(session) => match session.send_keeping(&mut req, response_timeout).await {
                Ok(resp) => Ok(resp),
                Err((e, replayable)) => Err((
                    report(&*self.inner.observer, e),
                    if replayable { Some(req) } else { backup.map(|r| *r) },
                )),
            },
            Err(e) => Err((e, Some(req))),
        }
    }

    /// An idle HTTP/1.1 session to `target`, when `freshness` allows one
    /// and one is open.
    fn idle_h1(&self, target: Target, freshness: Freshness) -> Option<Session> {
        if freshness != Freshness::IdlePreferred {
            return None;
        }
        let mut hosts = self.inner.hosts.lock();
        let host = hosts.get_mut(&target)?;
        // Age is the sweep's business (it runs every idle_timeout/4); a
        // closed session is caught here, with no clock read and usually no
        // system call (see `h1::Conn::is_closed`).
        while let Some(mut idle) = host.idle.pop_back() {
            if idle.conn.is_closed() {
                self.inner.metrics.evicted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            host.in_use += 1;
            self.inner.metrics.reused.fetch_add(1, Ordering::Relaxed);
            return Some(Session::h1(&self.inner, target, idle.conn, true));
        }
        None
    }

    /// A new HTTP/1.1 session to `target`.
    async fn connect_h1(&self, target: Target) -> Result<Session, SessionError> {
        let stream = self.connect(target.addr).await?;
        self.inner.hosts.lock().entry(target).or_default().in_use += 1;
        let conn = h1::Conn::new(stream, NEXT_ID.fetch_add(1, Ordering::Relaxed));
        Ok(Session::h1(&self.inner, target, conn, false))
    }

    async fn checkout_h2(&self, target: Target, freshness: Freshness) -> Result<Session, SessionError> {
        loop {
            let wait = {
                let mut hosts = self.inner.hosts.lock();
                let host = hosts.entry(target).or_default();
                host.h2.retain(|c| !c.tx.is_closed());
                if freshness == Freshness::IdlePreferred {
                    let cap = self.inner.config.h2_max_concurrent_streams as usize;
                    if let Some(c) = host.h2.iter().find(|c| {
                        let server_max = c.conn.lock().current_max_send_streams().max(1);
                        c.streams.load(Ordering::Relaxed) < cap.min(server_max)
                    }) {
                        c.streams.fetch_add(1, Ordering::Relaxed);
                        self.inner.metrics.reused.fetch_add(1, Ordering::Relaxed);
                        let stream = StreamGuard(Arc::clone(&c.streams));
                        return Ok(Session::h2(&self.inner, target, c.tx.clone(), c.id, stream, true, None));
                    }
                }
                match &host.h2_connecting {
                    // One connect in flight per target, never a burst.
                    Some(n) if freshness == Freshness::IdlePreferred => Some(Arc::clone(n)),
                    _ => {
                        host.h2_connecting = Some(Arc::new(Notify::new()));
                        None
                    }
                }
            };
            match wait {
                Some(notify) => {
                    let notified = notify.notified();
                    // Re-check under the lock: the connect may have finished already.
                    if self.inner.hosts.lock().get(&target).and_then(|h| h.h2_connecting.as_ref()).is_some() {
                        notified.await;
                    }
                }
                None => return self.connect_h2(target).await,
            }
        }
    }

    async fn connect_h2(&self, target: Target) -> Result<Session, SessionError> {
        let result = async {
            let stream = self.connect(target.addr).await?;
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(self.inner.config.h2_max_concurrent_streams)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| SessionError::new(ErrorKind::Protocol, target.addr).with_source(e))?;
            let conn = Arc::new(Mutex::new(conn));
            let driven = Arc::clone(&conn);
            // Drive the connection; the pool reads its stream limit between polls.
            tokio::spawn(std::future::poll_fn(move |cx| Pin::new(&mut *driven.lock()).poll(cx).map(|_| ())));
            Ok((tx, conn))
        }
        .await;
        let mut hosts = self.inner.hosts.lock();
        let host = hosts.entry(target).or_default();
        let (tx, conn) = match result {
            Ok(ok) => ok,
            Err(e) => {
                if let Some(n) = host.h2_connecting.take() {
                    n.notify_waiters();
                }
                if host.is_empty() {
                    hosts.remove(&target);
                }
                return Err(e);
            }
        };
        let streams = Arc::new(AtomicUsize::new(1));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        host.h2.push(H2Conn {
            tx: tx.clone(),
            id,
            streams: Arc::clone(&streams),
            conn,
            idle_since: Instant::now(),
        });
        // Others keep waiting until this connection has settled (see
        // `Settle`), and at most SETTLE_WAIT: a slow first response must not
        // hold every other request back.
        if let Some(n) = host.h2_connecting.clone() {
            let (pool, target) = (Arc::downgrade(&self.inner), target);
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE_WAIT).await;
                Settle::release(&pool, target, &n);
            });
        }
        let settle = Settle { pool: Arc::downgrade(&self.inner), target };
        Ok(Session::h2(&self.inner, target, tx, id, StreamGuard(streams), false, Some(settle)))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, SessionError> {
        let result =
            match tokio::time::timeout(self.inner.config.connect_timeout, TcpStream::connect(addr)).await {
                Err(_) => Err(SessionError::new(ErrorKind::ConnectTimeout, addr)),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Err(SessionError::new(ErrorKind::ConnectRefused, addr).with_source(e))
                }
                Ok(Err(e)) => Err(SessionError::new(ErrorKind::Connect, addr).with_source(e)),
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(s)
                }
            };
        match &result {
            Ok(_) => {
                self.inner.metrics.connects_ok.fetch_add(1, Ordering::Relaxed);
                self.inner.observer.on_connect(addr, Ok(()));
            }
            Err(e) => {
                self.inner.metrics.connects_failed.fetch_add(1, Ordering::Relaxed);
                self.inner.observer.on_connect(addr, Err(e));
            }
        }
        result
    }
}

impl Inner {
    /// Returns an HTTP/1.1 session whose response was read to the end.
    pub(crate) fn checkin_h1(&self, target: Target, conn: h1::Conn) {
        let mut hosts = self.hosts.lock();
        let Some(host) = hosts.get_mut(&target) else { return };
        host.in_use = host.in_use.saturating_sub(1);
        if self.config.max_idle_per_server == 0 {
            self.metrics.evicted.fetch_add(1, Ordering::Relaxed);
        } else {
            if host.idle.len() >= self.config.max_idle_per_server {
                host.idle.pop_front(); // the oldest goes
                self.metrics.evicted.fetch_add(1, Ordering::Relaxed);
            }
            host.idle.push_back(IdleH1 { conn, since: Instant::now() });
        }
        if host.is_empty() {
            hosts.remove(&target);
        }
    }

    /// An HTTP/1.1 session that will not come back (error, unread body).
    pub(crate) fn discard_h1(&self, target: Target) {
        let mut hosts = self.hosts.lock();
        if let Some(host) = hosts.get_mut(&target) {
            host.in_use = host.in_use.saturating_sub(1);
            if host.is_empty() {
                hosts.remove(&target);
            }
        }
    }
}

async fn evict_loop(pool: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        let timeout = inner.config.idle_timeout;
        let mut hosts = inner.hosts.lock();
        let mut evicted = 0;
        for host in hosts.values_mut() {
            let before = host.idle.len() + host.h2.len();
            host.idle.retain_mut(|s| !s.conn.is_closed() && s.since.elapsed() < timeout);
            let now = Instant::now();
            host.h2.retain_mut(|c| {
                if c.streams.load(Ordering::Relaxed) > 0 {
                    c.idle_since = now;
                }
                !c.tx.is_closed() && now.duration_since(c.idle_since) < timeout
            });
            evicted += before - host.idle.len() - host.h2.len();
        }
        // Pingora's lesson: a map that keeps an empty entry per key grows forever.
        hosts.retain(|_, h| !h.is_empty());
        inner.metrics.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
    }
}

/// Tells the observer about an I/O failure of an established session.
fn report(observer: &dyn Observer, e: SessionError) -> SessionError {
    if e.is_l4_failure() && !e.is_connect() {
        observer.on_io_error(e.addr(), &e);
    }
    e
}

/// Marks a new h2 connection as settled when dropped: its first response
/// head arrived (or its first request failed, or was never sent).
///
/// # Race window
/// Until the server's SETTINGS arrive, a new connection reports the
/// protocol's default stream limit (100). Were waiters let onto it at once,
/// streams past the server's real limit would be refused and retried on
/// fresh connections: a burst. A response head comes after SETTINGS, so
/// the waiters are held until then, one round trip.
struct Settle {
    pool: Weak<Inner>,
    target: Target,
}

/// Longest a new h2 connection holds other requests back (SETTINGS take
/// one round trip to arrive; this is many).
const SETTLE_WAIT: Duration = Duration::from_millis(50);

impl Settle {
    /// Ends the connect-in-flight state of `target` if `which` is still it.
    fn release(pool: &Weak<Inner>, target: Target, which: &Arc<Notify>) {
        let Some(inner) = pool.upgrade() else { return };
        let mut hosts = inner.hosts.lock();
        let Some(host) = hosts.get_mut(&target) else { return };
        if host.h2_connecting.as_ref().is_some_and(|n| Arc::ptr_eq(n, which)) {
            host.h2_connecting = None;
            which.notify_waiters();
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        let Some(inner) = self.pool.upgrade() else { return };
        let mut hosts = inner.hosts.lock();
        if let Some(n) = hosts.get_mut(&self.target).and_then(|h| h.h2_connecting.take()) {
            n.notify_waiters();
        }
    }
}

/// Holds one h2 stream slot until dropped.
#[derive(Debug)]
struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Conn {
    H1(h1::Conn),
    H2 { tx: http2::SendRequest<RequestBody>, _stream: StreamGuard, settle: Option<Settle> },
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
    fn h1(inner: &Arc<Inner>, target: Target, conn: h1::Conn, reused: bool) -> Self {
        Self { id: conn.id, conn: Some(Conn::H1(conn)), target, reused, pool: Arc::clone(inner) }
    }

    fn h2(
        inner: &Arc<Inner>,
        target: Target,
        tx: http2::SendRequest<RequestBody>,
        id: u64,
        stream: StreamGuard,
        reused: bool,
        settle: Option<Settle>,
    ) -> Self {
        Self {
            conn: Some(Conn::H2 { tx, _stream: stream, settle }),
            target,
            id,
            reused,
            pool: Arc::clone(inner),
        }
    }

    /// Whether this session came from the pool (was used before).
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// The connection's id: equal ids mean the same TCP connection.
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
    /// # Errors
    /// A [`SessionError`] that says whether the request was sent and whether
    /// the session was reused. Resets and EOF before the head are reported
    /// to the observer as I/O errors.
    pub async fn send(
        self,
        req: http::Request<RequestBody>,
    ) -> Result<http::Response<PooledBody>, SessionError> {
        let pool = Arc::clone(&self.pool);
        let mut req = req;
        self.send_keeping(&mut req, None).await.map_err(|(e, _)| report(&*pool.observer, e))
    }

    /// [`Session::send`], bounded by `timeout` when given (request written,
    /// response head read). The request is borrowed, not moved through the
    /// layers below (each would keep a copy in its future); on failure the
    /// flag says whether `req` is still whole and can be sent again. A
    /// timeout closes the session: its response is unread.
    ///
    /// Not an `async fn`, for the reason given at [`Pool::try_request`].
    #[allow(clippy::manual_async_fn, reason = "an async fn keeps each argument twice in its future")]
    fn send_keeping(
        mut self,
        req: &mut http::Request<RequestBody>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<http::Response<PooledBody>, (SessionError, bool)>> + Send + '_ {
        async move {
            let (target, reused) = (self.target, self.reused);
            let err = |kind, sent| SessionError::new(kind, target.addr).sent(sent).reused(reused);
            match self.conn.take() {
                Some(Conn::H1(conn)) => {
                    // Until `send` settles (the response body, or its own error
                    // path, then gives the slot back), a way out of here by this
                    // future being dropped (a timeout, a caller that went away)
                    // must give the in-use slot back.
                    let in_use = InUseH1 { pool: &self.pool, target, armed: true };
                    let home = h1::Home { pool: Arc::clone(&self.pool), target };
                    let max_head = self.pool.config.max_response_head_bytes;
                    let sent = h1::send(conn, req, max_head, reused, home, timeout).await;
                    in_use.disarm();
                    sent.map(|resp| resp.map(|body| PooledBody { inner: BodyInner::H1(body) }))
                }
                // Boxed, as the pool's other rarer paths: hyper's h2 futures are
                // large, and inline they would grow every HTTP/1.1 send's future.
                Some(Conn::H2 { tx, _stream, settle }) => {
                    // hyper takes the request whole and hands it back only
                    // when it never left.
                    let owned = std::mem::replace(req, http::Request::new(crate::empty_body()));
                    let send = send_h2(tx, _stream, settle, owned, err);
                    let sent = match timeout {
                        None => Box::pin(send).await,
                        Some(t) => match Box::pin(tokio::time::timeout(t, send)).await {
                            Ok(r) => r,
                            Err(_) => Err((err(ErrorKind::ResponseTimeout, true), None)),
                        },
                    };
                    sent.map_err(|(e, back)| match back {
                        Some(back) => {
                            *req = back;
                            (e, true)
                        }
                        None => (e, false),
                    })
                }
                None => unreachable!("send consumes the session"),
            }
        }
    }
}

/// Sends `req` on an h2c connection (one stream, held by `stream`).
async fn send_h2(
    mut tx: http2::SendRequest<RequestBody>,
    stream: StreamGuard,
    settle: Option<Settle>,
    req: http::Request<RequestBody>,
    err: impl Fn(ErrorKind, bool) -> SessionError,
) -> Result<http::Response<PooledBody>, (SessionError, Option<http::Request<RequestBody>>)> {
    if let Err(e) = tx.ready().await {
        return Err((err(ErrorKind::ClosedBeforeHead, false).with_source(e), Some(req)));
    }
    let sent = tx.try_send_request(req).await;
    drop(settle); // a head arrived (after SETTINGS) or the request failed
    match sent {
        Ok(resp) => Ok(resp.map(|body| PooledBody::h2(body, stream))),
        Err(mut e) => {
            let unsent = e.take_message();
            let kind = classify(e.error());
            Err((err(kind, unsent.is_none()).with_source(e.into_error()), unsent))
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

/// For h2c, a copy of a body-less request to send it again: HTTP/1.1 keeps
/// the request whole until the answer, hyper's h2 client does not hand it
/// back once it left. Boxed: the future holding it is on every request's path.
fn h2_replay(target: Target, req: &http::Request<RequestBody>) -> Option<Box<http::Request<RequestBody>>> {
    (target.protocol == Protocol::H2c && req.body().is_end_stream()).then(|| Box::new(copy_head(req)))
}

/// A copy of a body-less request's head, to send it again.
fn copy_head(req: &http::Request<RequestBody>) -> http::Request<RequestBody> {
    let mut copy = http::Request::new(crate::empty_body());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
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
/// end, and closes it if dropped early or failed.
pub struct PooledBody {
    inner: BodyInner,
}

enum BodyInner {
    H1(h1::ResponseBody),
    /// The stream slot is held until the body ends.
    H2 {
        body: Incoming,
        stream: Option<StreamGuard>,
    },
}

impl fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBody").field("done", &self.is_end_stream()).finish()
    }
}

impl PooledBody {
    fn h2(body: Incoming, stream: StreamGuard) -> Self {
        let stream = (!body.is_end_stream()).then_some(stream);
        Self { inner: BodyInner::H2 { body, stream } }
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
            BodyInner::H2 { body, stream } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(None | Some(Err(_))) => *stream = None,
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => *stream = None,
                    _ => {}
                }
                polled.map(|o| o.map(|r| r.map_err(BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::H1(body) => body.is_end_stream(),
            BodyInner::H2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyInner::H1(body) => body.size_hint(),
            BodyInner::H2 { body, .. } => body.size_hint(),
        }
    }
}
