//! The transport seam: how the pool gets a byte stream to a server.
//!
//! The pool never opens a socket itself. It asks a [`Connect`] for a
//! [`Connection`] to a [`Target`]; what comes back is any
//! `AsyncRead + AsyncWrite` stream ([`Io`]), and the protocol drivers
//! (`h1`, `h2`) speak over it without knowing what it is. [`TcpConnect`]
//! is plain TCP; a TLS connector wraps it and reports what ALPN chose.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{ErrorKind, SessionError};
use crate::{Protocol, Target};

/// A byte stream to a server: TCP, TLS over TCP, or anything else a
/// [`Connect`] makes (implement it for your stream with `impl Io for MyStream {}`).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Whether an idle connection can no longer carry a request: its peer
    /// closed or reset it, or sent bytes nobody asked for. Called on every
    /// reuse of an idle session, so it must not block and should be cheap.
    ///
    /// The default polls one read with a waker that does nothing: pending
    /// means open. A TLS stream handles what arrived on the way (a session
    /// ticket is no reason to close) and reports only data or EOF.
    fn is_idle_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut read = ReadBuf::new(&mut byte);
        Pin::new(self).poll_read(&mut cx, &mut read).is_ready()
    }
}

impl Io for TcpStream {
    /// No system call while the reactor has seen nothing on the socket: the
    /// last read of the previous response was short, so tokio holds the
    /// socket not readable until epoll says otherwise.
    fn is_idle_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            // Readable: EOF, an error or stray bytes, unless the readiness is
            // stale (then the read says WouldBlock and clears it).
            Poll::Ready(Ok(())) => {
                !matches!(self.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

#[cfg(unix)]
impl Io for tokio::net::UnixStream {}

impl Io for tokio::io::DuplexStream {}

/// A new connection to a server.
pub struct Connection {
    /// The stream.
    pub io: Box<dyn Io>,
    /// The protocol the transport settled on (TLS's ALPN); `None`: the
    /// target's own.
    pub negotiated: Option<Protocol>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("negotiated", &self.negotiated).finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection over `io` that speaks the target's protocol.
    pub fn new(io: impl Io) -> Self {
        Self { io: Box::new(io), negotiated: None }
    }
}

/// The future a [`Connect`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Connection>> + Send + 'a>>;

/// Opens connections for the pool (hyper-util's `Connect`, pingora's
/// connectors). The pool bounds each call by its `connect_timeout` and
/// sorts the error: `ConnectionRefused` is [`ErrorKind::ConnectRefused`],
/// `TimedOut` is [`ErrorKind::ConnectTimeout`], a rustls error inside an
/// I/O error is [`ErrorKind::Tls`], anything else [`ErrorKind::Connect`].
pub trait Connect: Send + Sync + 'static {
    /// A new connection to `target`.
    fn connect<'a>(&'a self, target: &'a Target) -> ConnectFuture<'a>;
}

/// Plain TCP, with `TCP_NODELAY` (a proxy writes whole messages; Nagle
/// would only delay the last segment of each).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnect;

impl Connect for TcpConnect {
    fn connect<'a>(&'a self, target: &'a Target) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = TcpStream::connect(target.addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Connection::new(stream))
        })
    }
}

/// Connects through `connector` within `timeout`, the error sorted.
pub(crate) async fn open(
    connector: &dyn Connect,
    target: &Target,
    timeout: Duration,
) -> Result<Connection, SessionError> {
    let addr = target.addr;
    match tokio::time::timeout(timeout, connector.connect(target)).await {
        Err(_) => Err(SessionError::new(ErrorKind::ConnectTimeout, addr)),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            let kind = match e.kind() {
                _ if crate::tls::HandshakeFailure::of_io(&e).is_some() => ErrorKind::Tls,
                io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
                io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
                _ => ErrorKind::Connect,
            };
            Err(SessionError::new(kind, addr).with_source(e))
        }
    }
}
