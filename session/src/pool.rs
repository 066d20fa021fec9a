//! The pool's books: per target, idle HTTP/1.1 sessions (unique
//! reservations: one request at a time each) and shared HTTP/2 connections
//! (a stream slot each), as hyper-util keeps them. Connecting is
//! [`connect`](crate::connect)'s, speaking each protocol is `h1`'s and
//! `h2`'s, and the retry policy is `retry`'s and `outcome`'s.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connect::{self, Connect, Connection, TcpConnect};
use crate::error::SessionError;
use crate::h1;
use crate::h2::H2Conn;
use crate::session::Session;
use crate::{Observer, PoolConfig, PoolMetrics, Protocol, Target};

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

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct IdleH1 {
    conn: h1::Conn,
    since: Instant,
}

#[derive(Default)]
struct Host {
    /// LIFO: push and pop at the back; the oldest sit at the front.
    idle: VecDeque<IdleH1>,
    in_use: usize,
    h2: Vec<H2Conn>,
    /// Set while one task connects h2 for this target; others wait on it.
    h2_connecting: Option<Arc<Notify>>,
    /// For a [`Protocol::Auto`] target: what the last new connection
    /// settled on, so the next checkout looks in the right books.
    negotiated: Option<Protocol>,
    /// The most HTTP/1.1 sessions in use at once since the last sweep, and
    /// in the sweep interval before: what an adaptive idle limit keeps.
    peak: usize,
    last_peak: usize,
}

impl Host {
    /// One more HTTP/1.1 session in use.
    #[inline]
    fn take_h1(&mut self) {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
    }

    /// How many idle HTTP/1.1 sessions this target keeps now, within
    /// `(min, max)` ([`IdleLimit::bounds`]).
    #[inline]
    fn idle_limit(&self, (min, max): (usize, usize)) -> usize {
        self.peak.max(self.last_peak).max(min).min(max)
    }

    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.in_use == 0 && self.h2.is_empty() && self.h2_connecting.is_none()
    }
}

pub(crate) struct Inner {
    pub(crate) config: PoolConfig,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) metrics: PoolMetrics,
    connector: Arc<dyn Connect>,
    hosts: Mutex<HashMap<Target, Host, foldhash::fast::RandomState>>,
    /// `config.max_idle_per_server` as bounds, worked out once.
    idle_bounds: (usize, usize),
}

/// A pool of keep-alive origin sessions, shared by requests and checks.
///
/// Cheap to clone. Sessions are keyed by [`Target`] (server address,
/// protocol and server name: only sessions that are interchangeable share
/// a key). Connections come from a [`Connect`] ([`TcpConnect`] unless
/// [`Pool::with_connector`] says otherwise).
///
/// # Concurrency note
/// One mutex guards the per-target lists; every critical section is a push,
/// a pop or a counter change (no I/O, no await). Connects happen outside it.
#[derive(Clone)]
pub struct Pool {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("targets", &self.inner.hosts.lock().len()).finish()
    }
}

impl Pool {
    /// A pool with `config` over plain TCP, reporting connects and I/O
    /// errors to `observer`. Spawns its eviction task on the current tokio
    /// runtime; the task ends when the last clone of the pool is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(config: PoolConfig, observer: Arc<dyn Observer>) -> Self {
        Self::with_connector(config, observer, Arc::new(TcpConnect))
    }

    /// [`Pool::new`], with connections from `connector`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn with_connector(
        config: PoolConfig,
        observer: Arc<dyn Observer>,
        connector: Arc<dyn Connect>,
    ) -> Self {
        let inner = Arc::new(Inner {
            idle_bounds: config.max_idle_per_server.bounds(),
            config,
            observer,
            metrics: PoolMetrics::default(),
            connector,
            hosts: Mutex::default(),
        });
        let weak = Arc::downgrade(&inner);
        let every = inner.config.eviction_interval();
        tokio::spawn(evict_loop(weak, every));
        Self { inner }
    }

    /// The pool's counters.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.inner.metrics
    }

    /// Idle and in-use sessions to `addr` over plain TCP, HTTP/1.1 and h2c.
    pub fn counts(&self, addr: SocketAddr) -> PoolCounts {
        self.counts_of(&[Target::http1(addr), Target::h2c(addr)])
    }

    /// Idle and in-use sessions of these targets together (the admin view
    /// asks once per server: the keys are looked up, the map never scanned).
    pub fn counts_of(&self, targets: &[Target]) -> PoolCounts {
        let hosts = self.inner.hosts.lock();
        let mut c = PoolCounts::default();
        for h in targets.iter().filter_map(|t| hosts.get(t)) {
            c.idle += h.idle.len() as u32;
            c.in_use += h.in_use as u32;
            for conn in &h.h2 {
                if conn.in_use() {
                    c.in_use += 1;
                } else {
                    c.idle += 1;
                }
            }
        }
        c
    }

    /// Bytes of read and write buffers the idle HTTP/1.1 sessions to
    /// `addr` hold. A session idle since before the last sweep holds none:
    /// its next request takes them again.
    pub fn idle_buffered(&self, addr: SocketAddr) -> usize {
        let hosts = self.inner.hosts.lock();
        hosts.get(&Target::http1(addr)).map_or(0, |h| h.idle.iter().map(|s| s.conn.buffered()).sum())
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
            h.h2.retain(H2Conn::in_use);
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
        // The futures of the paths that wait (a connect, h2's handshake)
        // are boxed: they are rare next to an idle HTTP/1.1 session, and
        // kept inline they made every caller's future kilobytes large, and
        // every `.await` on it a copy of that size.
        match target.protocol {
            Protocol::Http1 => match self.idle_h1(target, freshness) {
                Some(session) => Ok(session),
                None => Box::pin(self.connect_h1(target)).await,
            },
            Protocol::H2 => Box::pin(self.checkout_h2(target, freshness)).await,
            Protocol::Auto => Box::pin(self.checkout_auto(target, freshness)).await,
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
            host.take_h1();
            self.inner.metrics.reused.fetch_add(1, Ordering::Relaxed);
            return Some(Session::h1(&self.inner, target, idle.conn, true));
        }
        None
    }

    /// A session to a [`Protocol::Auto`] target, in the books of the
    /// protocol its last new connection settled on (HTTP/1.1 until one has).
    async fn checkout_auto(&self, target: Target, freshness: Freshness) -> Result<Session, SessionError> {
        let learned = self.inner.hosts.lock().get(&target).and_then(|h| h.negotiated);
        if learned == Some(Protocol::H2) {
            return self.checkout_h2(target, freshness).await;
        }
        match self.idle_h1(target, freshness) {
            Some(session) => Ok(session),
            None => self.connect_h1(target).await,
        }
    }

    /// A new HTTP/1.1 session to `target`; for a [`Protocol::Auto`] target,
    /// an h2 one if that is what the connection settled on.
    async fn connect_h1(&self, target: Target) -> Result<Session, SessionError> {
        let conn = self.connect(target).await?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if target.protocol == Protocol::Auto {
            let speaks = conn.negotiated.unwrap_or(Protocol::Http1);
            self.inner.hosts.lock().entry(target).or_default().negotiated = Some(speaks);
            if speaks == Protocol::H2 {
                // Nobody waits on this one (no connect-in-flight state).
                return self.start_h2(target, conn, id, false).await;
            }
        }
        self.inner.hosts.lock().entry(target).or_default().take_h1();
        Ok(Session::h1(&self.inner, target, h1::Conn::new(conn.io, id), false))
    }

    async fn checkout_h2(&self, target: Target, freshness: Freshness) -> Result<Session, SessionError> {
        loop {
            let wait = {
                let mut hosts = self.inner.hosts.lock();
                let host = hosts.entry(target).or_default();
                host.h2.retain(|c| !c.is_closed());
                if freshness == Freshness::IdlePreferred {
                    let cap = self.inner.config.h2_max_concurrent_streams as usize;
                    if let Some((c, stream)) = host.h2.iter().find_map(|c| c.try_stream(cap).map(|s| (c, s)))
                    {
                        self.inner.metrics.reused.fetch_add(1, Ordering::Relaxed);
                        let tx = c.tx.clone();
                        return Ok(Session::h2(&self.inner, target, tx, c.id, stream, true, None));
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

    /// A new h2 connection to `target`, made by the one task that holds the
    /// target's connect-in-flight state; waiters are let go when it settles
    /// or fails.
    async fn connect_h2(&self, target: Target) -> Result<Session, SessionError> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let conn = match self.connect(target).await {
            Ok(conn) => conn,
            Err(e) => {
                self.h2_connect_failed(target);
                return Err(e);
            }
        };
        if target.protocol == Protocol::Auto && conn.negotiated != Some(Protocol::H2) {
            // The server no longer offers h2: HTTP/1.1 from now on.
            self.h2_connect_failed(target);
            let mut hosts = self.inner.hosts.lock();
            let host = hosts.entry(target).or_default();
            host.negotiated = Some(Protocol::Http1);
            host.take_h1();
            drop(hosts);
            return Ok(Session::h1(&self.inner, target, h1::Conn::new(conn.io, id), false));
        }
        self.start_h2(target, conn, id, true).await
    }

    /// Ends the connect-in-flight state of `target` after a failed connect.
    fn h2_connect_failed(&self, target: Target) {
        let mut hosts = self.inner.hosts.lock();
        let Some(host) = hosts.get_mut(&target) else { return };
        if let Some(n) = host.h2_connecting.take() {
            n.notify_waiters();
        }
        if host.is_empty() {
            hosts.remove(&target);
        }
    }

    /// Speaks h2 over a new connection: the handshake, then the connection
    /// joins the books with the first stream taken. `waited_on`: this task
    /// holds the target's connect-in-flight state, to be ended when the
    /// connection settles.
    async fn start_h2(
        &self,
        target: Target,
        conn: Connection,
        id: u64,
        waited_on: bool,
    ) -> Result<Session, SessionError> {
        let max = self.inner.config.h2_max_concurrent_streams;
        let handshake =
            H2Conn::handshake(conn.io, id, max, |kind| SessionError::new(kind, target.addr)).await;
        let conn = match handshake {
            Ok(conn) => conn,
            Err(e) => {
                if waited_on {
                    self.h2_connect_failed(target);
                }
                return Err(e);
            }
        };
        let mut hosts = self.inner.hosts.lock();
        let host = hosts.entry(target).or_default();
        let (tx, stream) = (conn.tx.clone(), conn.first_stream());
        host.h2.push(conn);
        // Others keep waiting until this connection has settled (see
        // `Settle`), and at most SETTLE_WAIT: a slow first response must not
        // hold every other request back.
        if !waited_on {
            return Ok(Session::h2(&self.inner, target, tx, id, stream, false, None));
        }
        if let Some(n) = host.h2_connecting.clone() {
            let pool = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE_WAIT).await;
                Settle::release(&pool, target, &n);
            });
        }
        let settle = Settle { pool: Arc::downgrade(&self.inner), target };
        Ok(Session::h2(&self.inner, target, tx, id, stream, false, Some(settle)))
    }

    /// A new connection to `target`, counted and reported to the observer.
    async fn connect(&self, target: Target) -> Result<Connection, SessionError> {
        let result = connect::open(&*self.inner.connector, &target, self.inner.config.connect_timeout).await;
        match &result {
            Ok(_) => {
                self.inner.metrics.connects_ok.fetch_add(1, Ordering::Relaxed);
                self.inner.observer.on_connect(target.addr, Ok(()));
            }
            Err(e) => {
                self.inner.metrics.connects_failed.fetch_add(1, Ordering::Relaxed);
                self.inner.observer.on_connect(target.addr, Err(e));
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
        let limit = host.idle_limit(self.idle_bounds);
        if limit == 0 {
            self.metrics.evicted.fetch_add(1, Ordering::Relaxed);
        } else {
            if host.idle.len() >= limit {
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

    /// Tells the observer about an L4 failure of an established session.
    pub(crate) fn report(&self, e: SessionError) -> SessionError {
        if e.is_l4_failure() && !e.is_connect() {
            self.observer.on_io_error(e.addr(), &e);
        }
        e
    }
}

/// Where an HTTP/1.1 session of this pool goes when its exchange ends.
pub(crate) struct H1Home {
    /// Strong: a session out keeps its pool alive (one reference count, not
    /// a weak upgrade per check-in).
    pub(crate) pool: Arc<Inner>,
    pub(crate) target: Target,
}

impl h1::Home for H1Home {
    fn release(self, conn: h1::Conn, reusable: bool) {
        if reusable {
            self.pool.checkin_h1(self.target, conn);
        } else {
            drop(conn); // closes it
            self.pool.discard_h1(self.target);
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
            host.idle.retain_mut(|s| {
                let idle = s.since.elapsed();
                if idle >= every {
                    // Idle since before the last sweep: its buffers go.
                    s.conn.shed();
                }
                !s.conn.is_closed() && idle < timeout
            });
            // A new window for the adaptive limit; what the load no longer
            // uses goes, the oldest first.
            host.last_peak = std::mem::replace(&mut host.peak, host.in_use);
            let keep = host.idle_limit(inner.idle_bounds);
            let surplus = host.idle.len().saturating_sub(keep);
            host.idle.drain(..surplus);
            let now = Instant::now();
            host.h2.retain_mut(|c| {
                if c.in_use() {
                    c.idle_since = now;
                }
                !c.is_closed() && now.duration_since(c.idle_since) < timeout
            });
            evicted += before - host.idle.len() - host.h2.len();
        }
        // Pingora's lesson: a map that keeps an empty entry per key grows forever.
        hosts.retain(|_, h| !h.is_empty());
        inner.metrics.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
    }
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
pub(crate) struct Settle {
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
