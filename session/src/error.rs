//! The one error type of the pool: what happened, and what a caller may do.

use std::fmt;
use std::net::SocketAddr;

/// Boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server refused the connection (nothing listens there).
    ConnectRefused,
    /// Connecting took longer than `connect_timeout`.
    ConnectTimeout,
    /// Connecting failed otherwise (unreachable, no route, out of descriptors).
    Connect,
    /// The TLS handshake failed (a bad or expired certificate, a wrong
    /// name, no protocol version in common); [`SessionError::detail`] says
    /// which.
    Tls,
    /// The connection was reset or closed before the response head arrived.
    ClosedBeforeHead,
    /// The server sent something that is not HTTP (garbage, bad framing,
    /// a malformed chunked body).
    Protocol,
    /// The response head exceeded the configured limit.
    ResponseTooLarge,
    /// The server refused the request's HTTP/2 stream unprocessed:
    /// `REFUSED_STREAM`, or a graceful `GOAWAY` whose last stream id came
    /// before it (RFC 9113 sections 8.7 and 6.8). Not the server's L4
    /// fault; the request may go again, on a fresh connection or to
    /// another server, whatever its method.
    Refused,
    /// The server reset the request's HTTP/2 stream (`RST_STREAM`) before
    /// the response head: this request failed, its connection did not.
    /// Not an L4 failure; the client gets 502.
    StreamReset,
    /// Reading or writing a body failed after the response head (the
    /// server went away mid-body, or the request body's source failed).
    Body,
    /// No response head within the caller's response timeout.
    ResponseTimeout,
    /// The request asks to switch protocols (`Connection: upgrade` and an
    /// `Upgrade` field) but the session speaks HTTP/2, which has no such
    /// switch: the request was not sent. Not the server's fault, and no
    /// retry helps; an upgrade needs an HTTP/1.1 target.
    UpgradeOverH2,
}

impl ErrorKind {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::Connect => "connect_error",
            Self::Tls => "tls_error",
            Self::ClosedBeforeHead => "closed_before_head",
            Self::Protocol => "protocol_error",
            Self::ResponseTooLarge => "response_too_large",
            Self::Refused => "stream_refused",
            Self::StreamReset => "stream_reset",
            Self::Body => "body_error",
            Self::ResponseTimeout => "response_timeout",
            Self::UpgradeOverH2 => "upgrade_over_h2",
        }
    }
}

/// A failed connect, send or receive, with what a caller needs to decide on
/// a retry: whether the request left (only safe requests are retried after
/// sending) and whether the session was reused (a reused session may have
/// died idle: one retry on a fresh connection is then in order). What
/// counts against the server and what may be retried is decided in one
/// place, the `outcome` module: [`SessionError::is_l4_failure`],
/// [`SessionError::may_retry_on_fresh`], [`SessionError::may_retry_elsewhere`].
#[derive(Debug)]
pub struct SessionError {
    kind: ErrorKind,
    addr: SocketAddr,
    sent: bool,
    reused: bool,
    source: Option<BoxError>,
}

impl SessionError {
    pub(crate) fn new(kind: ErrorKind, addr: SocketAddr) -> Self {
        Self { kind, addr, sent: false, reused: false, source: None }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn sent(mut self, sent: bool) -> Self {
        self.sent = sent;
        self
    }

    pub(crate) fn reused(mut self, reused: bool) -> Self {
        self.reused = reused;
        self
    }

    /// What happened.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the request (or part of it) was written before the failure.
    pub fn is_sent(&self) -> bool {
        self.sent
    }

    /// Whether the failure happened on a session taken from the pool.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// The [`SessionError`] inside a [`PooledBody`](crate::PooledBody)'s
    /// error, if it is one (a body's errors are boxed).
    pub fn of_body(e: &BoxError) -> Option<&SessionError> {
        e.downcast_ref::<SessionError>()
    }

    /// Whether this failed while connecting (a TLS handshake included).
    pub fn is_connect(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout | ErrorKind::Connect | ErrorKind::Tls
        )
    }

    /// Why, in a few words for `/hosts`, a check's detail and logs:
    /// `connect refused`, `tls: certificate expired`, `timeout`, ...
    pub fn detail(&self) -> String {
        match self.kind {
            ErrorKind::Tls => {
                let why = self
                    .source
                    .as_deref()
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .and_then(crate::tls::HandshakeFailure::of_io)
                    .map_or("handshake failed", crate::tls::HandshakeFailure::as_str);
                format!("tls: {why}")
            }
            ErrorKind::ResponseTimeout => "timeout".to_owned(),
            ErrorKind::Body => "body error".to_owned(),
            ErrorKind::UpgradeOverH2 => "upgrade over http/2".to_owned(),
            kind => kind.as_str().replace('_', " "),
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::UpgradeOverH2 => {
                write!(f, "protocol upgrade refused: the session to {} speaks HTTP/2", self.addr)?;
            }
            kind => write!(f, "{} to {}", kind.as_str().replace('_', " "), self.addr)?,
        }
        if self.reused {
            f.write_str(" (reused session)")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}
