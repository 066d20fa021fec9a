//! # vigil-session: the origin session pool
//!
//! Keep-alive sessions to origin servers, shared by proxied requests and L7
//! health checks: a check warms a session a user request then reuses, and
//! the other way round. The pool keeps the books; the rest has a module
//! each:
//!
//! - **Transport** ([`Connect`]): the pool never opens a socket itself. A
//!   connector turns a [`Target`] into a byte stream ([`TcpConnect`]: plain
//!   TCP; [`TlsConnect`]: TLS over it, one rustls configuration and session
//!   cache per [`Profile`]); the protocol drivers speak over whatever it
//!   returns, and [`Protocol::Auto`] speaks what TLS's ALPN settled on.
//! - **HTTP/1.1**: a client of our own, driven inline on the caller's task
//!   (no connection task, no channels) over `vigil-h1`'s strict codec; one
//!   request at a time per session (a unique reservation), idle sessions
//!   reused last-in first-out, as many kept as the load lately used (or a
//!   fixed number: [`IdleLimit`]), closed after `idle_timeout`. A session returns to the pool only when its
//!   response was read to the end and it is still open ([`PooledBody`]
//!   sees to it); one whose peer closed or sent stray bytes while idle is
//!   found closed and dropped. The request body is written while the
//!   response is read, so an origin that answers early cannot stall a
//!   request. A request asking for an upgrade (a WebSocket handshake) gets
//!   its `101` as the response and the connection as [`Upgraded`] (see
//!   [`PooledBody::into_upgraded`]); it never returns to the pool.
//! - **HTTP/2** (h2c, prior knowledge): hyper's conn-level client; a
//!   connection is shared by concurrent requests (a stream slot each),
//!   streams are counted against the server's `max_concurrent_streams` (and
//!   our cap), a second connection opens only when the first is full, one
//!   connect in flight per server. A connection that got GOAWAY takes no
//!   new stream; those on it finish. Bodies pass frame by frame, trailers
//!   included (gRPC's status).
//! - **Outcomes** ([`SessionError`], [`RetryPolicy`]): what happened,
//!   whether the request was sent, whether the session was reused, and the
//!   one place that decides whether a failure counts against the server
//!   ([`SessionError::is_l4_failure`]) and may be retried on a fresh session
//!   or another server.
//! - [`Observer`] hears connect outcomes and L4 failures of established
//!   sessions, so a binary can wire in a health database. This crate knows
//!   nothing of health policy.
//!
//! ```no_run
//! use std::sync::Arc;
//! use http_body_util::BodyExt;
//! use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, Target, empty_body};
//!
//! # async fn demo() -> Result<(), vigil_session::BoxError> {
//! let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
//! let target = Target::http1("127.0.0.2:8080".parse()?);
//! let session = pool.checkout(target, Freshness::IdlePreferred).await?;
//! let req = http::Request::get("/healthz").header("host", "app.internal").body(empty_body())?;
//! let resp = session.send(req).await?;
//! let body = resp.into_body().collect().await?.to_bytes(); // read to the end: the session goes back
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod connect;
mod error;
mod h1;
mod h2;
mod outcome;
mod pool;
mod replay;
mod retry;
mod session;
pub mod tls;
mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

pub use connect::{Connect, ConnectFuture, Connection, Io, TcpConnect};
pub use error::{BoxError, ErrorKind, SessionError};
pub use outcome::RetryPolicy;
pub use pool::{Freshness, Pool, PoolCounts};
pub use retry::Fetched;
pub use session::{PooledBody, Session};
pub use tls::TlsConnect;
pub use upgrade::Upgraded;

/// The request body every session takes: any body, boxed.
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// An empty request body.
pub fn empty_body() -> RequestBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// A request body from bytes in memory.
pub fn full_body(bytes: impl Into<Bytes>) -> RequestBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// The protocol spoken to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2: with prior knowledge over plain TCP (h2c), or forced by TLS's
    /// ALPN.
    H2,
    /// Whatever the transport negotiates (TLS's ALPN offering h2 and
    /// http/1.1): the first connection to a server tells the pool which
    /// books its sessions go in. Over a transport that negotiates nothing,
    /// HTTP/1.1.
    Auto,
}

/// Everything a connection to a server depends on, so that only sessions
/// that are interchangeable share a key: the server's address, the
/// protocol, and the connector's profile for it.
///
/// A profile is the [`Connect`]'s own business: what it presents and
/// checks beyond the address (a TLS server name, the roots a certificate
/// must chain to, a client certificate). The pool only keys sessions by it,
/// so a session opened under one profile is never handed out under
/// another. [`Profile::PLAIN`] (plain TCP) unless a connector says
/// otherwise. A small copyable handle, not the settings themselves: the
/// key is hashed and moved on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// The server.
    pub addr: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The connector's profile for this server.
    pub profile: Profile,
}

/// A connector's handle for what a connection presents beyond the address
/// (see [`Target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Profile(pub u32);

impl Profile {
    /// No profile: a plain connection to the address.
    pub const PLAIN: Self = Self(0);
}

impl Target {
    /// HTTP/1.1 to `addr`.
    pub fn http1(addr: SocketAddr) -> Self {
        Self::new(addr, Protocol::Http1)
    }

    /// h2c to `addr`.
    pub fn h2c(addr: SocketAddr) -> Self {
        Self::new(addr, Protocol::H2)
    }

    /// `protocol` to `addr`, plain.
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Self {
        Self { addr, protocol, profile: Profile::PLAIN }
    }

    /// This target under a connector's `profile`.
    pub fn with_profile(self, profile: Profile) -> Self {
        Self { profile, ..self }
    }
}

/// How to reach the servers of one origin: the protocol and the
/// connector's profile. A [`Target`] once a server is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The protocol.
    pub protocol: Protocol,
    /// The connector's profile ([`Profile::PLAIN`] for plain TCP).
    pub profile: Profile,
}

impl Upstream {
    /// Plain TCP speaking `protocol`.
    pub fn plain(protocol: Protocol) -> Self {
        Self { protocol, profile: Profile::PLAIN }
    }

    /// The target for server `addr`.
    pub fn target(self, addr: SocketAddr) -> Target {
        Target { addr, protocol: self.protocol, profile: self.profile }
    }
}

/// Pool settings (SPEC's `[pool]` and `[l4] connect_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle HTTP/1.1 sessions kept per target; beyond that the oldest closes.
    pub max_idle_per_server: IdleLimit,
    /// An idle session (or an h2 connection with no stream) older than this closes.
    pub idle_timeout: Duration,
    /// Bound on one TCP connect.
    pub connect_timeout: Duration,
    /// Largest response head accepted (HTTP/1.1); more is `ResponseTooLarge`.
    pub max_response_head_bytes: usize,
    /// Our cap on concurrent streams per h2 connection (the server's own
    /// limit applies too, whichever is lower).
    pub h2_max_concurrent_streams: u32,
}

impl Default for PoolConfig {
    /// Idle sessions per server as many as it had in use at once lately
    /// (at least 64, at most 1 024), 60 s idle timeout, 2 s connect timeout.
    fn default() -> Self {
        Self {
            max_idle_per_server: IdleLimit::AUTO,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            max_response_head_bytes: 64 * 1024,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// How many idle HTTP/1.1 sessions a target keeps.
///
/// A fixed number churns under many clients: with more requests in flight
/// to a server than it keeps idle, each ebb of the load closes sessions
/// the next flow opens again (a connect per request, at 500 clients for
/// 40 % of requests with 64 kept). [`IdleLimit::Adaptive`] keeps what the
/// load uses: a target keeps as many idle sessions as it had in use at
/// once since the pool's last sweep or the one before (the sweep runs
/// every quarter of `idle_timeout`, at most 10 s apart), so a steady load
/// reuses every session, and one that fell off gives back what it no
/// longer uses within two sweeps; idle sessions still close after
/// `idle_timeout`. In-use sessions are never more than the requests in
/// flight, which an origin's own limit (a proxy's queue) bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleLimit {
    /// At most this many (0: none kept).
    Fixed(usize),
    /// As many as were in use at once lately, between `min` and `max`.
    Adaptive {
        /// Kept whatever the load.
        min: usize,
        /// Never more, whatever the load.
        max: usize,
    },
}

impl IdleLimit {
    /// The default: adaptive between 64 and 1 024.
    pub const AUTO: Self = Self::Adaptive { min: 64, max: 1024 };

    /// The bounds on a target's idle sessions, whatever its recent peak of
    /// sessions in use: `(n, n)` for a fixed limit.
    pub(crate) fn bounds(self) -> (usize, usize) {
        match self {
            Self::Fixed(n) => (n, n),
            Self::Adaptive { min, max } => (min, max.max(min)),
        }
    }
}

impl PoolConfig {
    /// How often idle sessions are swept: a quarter of the idle timeout,
    /// between 100 ms and 10 s.
    fn eviction_interval(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// Hears what the pool learns about servers at L4. Called inline: be quick.
pub trait Observer: Send + Sync {
    /// A TCP connect finished.
    fn on_connect(&self, addr: SocketAddr, result: Result<(), &SessionError>);
    /// An established session failed at L4 ([`SessionError::is_l4_failure`]:
    /// a reset or EOF before the response head, a garbage answer).
    fn on_io_error(&self, addr: SocketAddr, error: &SessionError);
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {
    fn on_connect(&self, _: SocketAddr, _: Result<(), &SessionError>) {}
    fn on_io_error(&self, _: SocketAddr, _: &SessionError) {}
}

/// The pool's counters (for metrics): monotonic totals.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    pub(crate) connects_ok: AtomicU64,
    pub(crate) connects_failed: AtomicU64,
    pub(crate) reused: AtomicU64,
    pub(crate) evicted: AtomicU64,
}

impl PoolMetrics {
    /// Successful connects.
    pub fn connects_ok(&self) -> u64 {
        self.connects_ok.load(Ordering::Relaxed)
    }
    /// Failed connects.
    pub fn connects_failed(&self) -> u64 {
        self.connects_failed.load(Ordering::Relaxed)
    }
    /// Checkouts served by an existing session.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }
    /// Idle sessions closed by the pool (timeout, over the limit, found closed).
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}
