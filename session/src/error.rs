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
    /// The connection was reset or closed before the response head arrived.
    ClosedBeforeHead,
    /// The server sent something that is not HTTP (garbage, bad framing).
    Protocol,
    /// The response head exceeded the configured limit.
    ResponseTooLarge,
    /// Reading or writing a body failed after the response head.
    Body,
    /// No response head within the caller's response timeout.
    ResponseTimeout,
}

impl ErrorKind {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::Connect => "connect_error",
            Self::ClosedBeforeHead => "closed_before_head",
            Self::Protocol => "protocol_error",
            Self::ResponseTooLarge => "response_too_large",
            Self::Body => "body_error",
            Self::ResponseTimeout => "response_timeout",
        }
    }
}

/// A failed connect, send or receive, with what a caller needs to decide on
/// a retry: whether the request left (only safe requests are retried after
/// sending) and whether the session was reused (a reused session may have
/// died idle: one retry on a fresh connection is then in order).
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

    /// Whether this failed while connecting.
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout | ErrorKind::Connect)
    }

    /// Whether the failure says something about the server at L4 (connect
    /// failures, and resets or EOF before the response head): what HostDB's
    /// fail function counts.
    pub fn is_l4_failure(&self) -> bool {
        self.is_connect() || self.kind == ErrorKind::ClosedBeforeHead
    }

    /// Whether one retry on a fresh connection is warranted whatever the
    /// method: the session was reused and the request never left, or the
    /// reused session was found closed before any response (the classic
    /// keep-alive race; pingora's `RetryType::ReusedOnly`). A caller retries
    /// a sent request only if it is safe to repeat.
    pub fn is_retryable_on_fresh(&self) -> bool {
        self.reused && (!self.sent || self.kind == ErrorKind::ClosedBeforeHead)
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}", self.kind.as_str().replace('_', " "), self.addr)?;
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

/// Maps hyper's error to a kind through its predicates (its text and
/// `source()` chain are not stable).
pub(crate) fn classify(err: &hyper::Error) -> ErrorKind {
    if err.is_parse_too_large() {
        ErrorKind::ResponseTooLarge
    } else if err.is_parse() || err.is_parse_status() || err.is_user() {
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
