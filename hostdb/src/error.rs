//! Error types. Each says what went wrong and names the input that caused it.

use std::fmt;
use std::time::Duration;

/// An invalid host name, origin or server address.
///
/// ```
/// let err = "bad host:80".parse::<vigil_hostdb::OriginKey>().unwrap_err();
/// assert_eq!(err.input(), "bad host:80");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrError {
    input: String,
    reason: &'static str,
}

impl AddrError {
    pub(crate) fn new(input: &str, reason: &'static str) -> Self {
        // Cap what we echo back: the input may be hostile or huge.
        let input: String = input.chars().take(300).collect();
        Self { input, reason }
    }

    /// The text that was rejected (at most 300 characters of it).
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid address {:?}: {}", self.input, self.reason)
    }
}

impl std::error::Error for AddrError {}

/// Why [`HostDb::select`](crate::HostDb::select) found no server.
///
/// Each variant maps to the answer a proxy gives its client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// No origin under that key: the caller's routing is stale or wrong (a 502 or 404).
    #[error("unknown origin")]
    UnknownOrigin,
    /// The origin has no server yet: its DNS name has not resolved (a 502 or 503).
    #[error("origin has no servers (DNS not resolved yet or empty answer)")]
    NoServers,
    /// Servers exist but none is routable now (a 503). `retry_after` is when the
    /// first L4-down server becomes eligible for a retry, if any is L4-down.
    #[error("no routable server")]
    NoneRoutable {
        /// Time until an L4-down server may be retried, for `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Every routable server was already tried by this request (a 502).
    #[error("every routable server was already tried")]
    Exhausted,
}

impl SelectError {
    /// Whether trying again later may succeed without any config change.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::UnknownOrigin)
    }
}

/// A config that [`HostDb::apply`](crate::HostDb::apply) refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// An origin is listed twice.
    #[error("origin {0} is configured twice")]
    DuplicateOrigin(String),
    /// A threshold or duration is out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// Which setting.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An origin resolves through DNS but the HostDb was built without a resolver.
    #[error("origin {0} needs DNS but no resolver is configured")]
    NoResolver(String),
    /// DNS origins need a tokio runtime to refresh in the background.
    #[error("origin {0} needs DNS refresh but apply() was called outside a tokio runtime")]
    NoRuntime(String),
}

/// A failed DNS resolution. The last good answer stays in use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS lookup of {host} failed: {message}")]
pub struct DnsError {
    /// The name looked up.
    pub host: String,
    /// The resolver's explanation.
    pub message: String,
}
