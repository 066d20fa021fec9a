//! Health events: every state change HostDB makes, for logs, metrics and the cluster.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::{L4State, L7State, OriginKey, Source};

/// A change HostDB made. Delivered to every [`Subscriber`] once, on the
/// thread that made the change, after the change is visible to readers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A server's L4 state changed (`up` -> `down`, or back to `up`).
    L4 {
        /// The origin.
        origin: OriginKey,
        /// The server.
        server: SocketAddr,
        /// State before.
        from: L4State,
        /// State after.
        to: L4State,
        /// Consecutive failures at the time of the change.
        consecutive_failures: u32,
    },
    /// A server's L7 state flipped.
    L7 {
        /// The origin.
        origin: OriginKey,
        /// The server.
        server: SocketAddr,
        /// State before.
        from: L7State,
        /// State after.
        to: L7State,
        /// The detail of the result that caused it (`"503"`, `"timeout"`).
        reason: Arc<str>,
        /// Whose result it was.
        source: Source,
    },
    /// A server was put into or taken out of maintenance.
    Maintenance {
        /// The origin.
        origin: OriginKey,
        /// The server.
        server: SocketAddr,
        /// Whether it is now in maintenance.
        on: bool,
    },
    /// An origin's server list changed (config apply or DNS refresh).
    Servers {
        /// The origin.
        origin: OriginKey,
        /// Servers that joined.
        added: Vec<SocketAddr>,
        /// Servers that left.
        removed: Vec<SocketAddr>,
    },
    /// Outlier detection ejected a server, or its ejection ended (its time
    /// ran out, or a check passed).
    Outlier {
        /// The origin.
        origin: OriginKey,
        /// The server.
        server: SocketAddr,
        /// `true`: ejected; `false`: back.
        ejected: bool,
    },
    /// An origin entered or left panic: too few routable servers under its
    /// `panic_threshold`, so it routes across all not in maintenance.
    Panic {
        /// The origin.
        origin: OriginKey,
        /// Whether it is in panic now.
        on: bool,
        /// Routable servers when it changed.
        routable: usize,
        /// Servers not in maintenance.
        total: usize,
    },
    /// DNS for an origin failed (first failure of a run) or recovered.
    Dns {
        /// The origin.
        origin: OriginKey,
        /// `Some(message)` when failing (last answer kept), `None` when recovered.
        error: Option<String>,
    },
}

/// Receives [`Event`]s. Called synchronously on the thread that made the
/// change, so it must be quick and must not block: count, log, or push into a
/// channel. Any `Fn(&Event) + Send + Sync` is a subscriber.
pub trait Subscriber: Send + Sync {
    /// Called once per change.
    fn on_event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync> Subscriber for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// Handle returned by [`HostDb::subscribe`](crate::HostDb::subscribe); pass it
/// to [`HostDb::unsubscribe`](crate::HostDb::unsubscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(pub(crate) u64);

pub(crate) struct Subscribers {
    pub(crate) list: arc_swap::ArcSwap<Vec<(SubscriptionId, Arc<dyn Subscriber>)>>,
    pub(crate) next: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Subscribers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subscribers({})", self.list.load().len())
    }
}

impl Subscribers {
    pub(crate) fn new() -> Self {
        Self { list: Default::default(), next: Default::default() }
    }

    pub(crate) fn emit(&self, event: Event) {
        log(&event);
        for (_, s) in self.list.load().iter() {
            s.on_event(&event);
        }
    }
}

/// One log line per change, with fields (STYLE: warn = a server changed state).
fn log(event: &Event) {
    match event {
        Event::L4 { origin, server, from, to, consecutive_failures } => tracing::warn!(
            %origin, %server, from = from.as_str(), to = to.as_str(),
            consecutive_failures, "L4 state changed"
        ),
        Event::L7 { origin, server, from, to, reason, source } => tracing::warn!(
            %origin, %server, from = from.as_str(), to = to.as_str(),
            reason = &**reason, %source, "L7 state changed"
        ),
        Event::Maintenance { origin, server, on } => {
            tracing::warn!(%origin, %server, on, "maintenance changed")
        }
        Event::Servers { origin, added, removed } => tracing::info!(
            %origin, ?added, ?removed, "server list changed"
        ),
        Event::Dns { origin, error: Some(error) } => tracing::warn!(
            %origin, %error, "DNS lookup failing; serving the last answer"
        ),
        Event::Dns { origin, error: None } => tracing::info!(%origin, "DNS lookup recovered"),
        Event::Outlier { origin, server, ejected: true } => {
            tracing::warn!(%origin, %server, "ejected: failing user requests in a row")
        }
        Event::Outlier { origin, server, ejected: false } => {
            tracing::warn!(%origin, %server, "ejection over")
        }
        Event::Panic { origin, on: true, routable, total } => tracing::error!(
            %origin, routable, total,
            "panic: too few routable servers; routing across every server not in maintenance"
        ),
        Event::Panic { origin, on: false, routable, total } => {
            tracing::warn!(%origin, routable, total, "panic over")
        }
    }
}
