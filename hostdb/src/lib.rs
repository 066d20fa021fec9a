//! # vigil-hostdb: the host database of an origin-health proxy
//!
//! A reverse proxy in front of several origin servers has to answer, on every
//! request and in nanoseconds, "which server may this request go to?". The
//! answer depends on health learned in two ways: **L4** (connect, read and
//! write failures of real traffic and checks) and **L7** (active HTTP health
//! checks, run elsewhere). This crate keeps both, per server, and picks
//! servers with them. It knows nothing of HTTP or connection pools.
//!
//! - [`HostDb`]: origins keyed by `host:port` ([`OriginKey`]), each with its
//!   [`Server`]s from a static list or from DNS ([`Resolve`], TTL honoured,
//!   last answer kept when DNS fails). [`HostDb::apply`] swaps in a new
//!   config as one batch; servers that remain keep their status.
//! - [`Server`]: one lock-free status record. Readers never lock.
//! - The fail functions are pure and take time as an input: the L4 one is
//!   behind [`Server::report_l4_failure`] / [`Server::report_l4_success`], the L7
//!   hysteresis is [`L7Status::apply`].
//! - [`HostDb::select`] with [`LbPolicy`] `RoundRobin`, `LeastRequests`
//!   (power of two choices) or `ConsistentHash` (a ring); an [`Attempt`]
//!   remembers what a request tried so a retry never repeats a server.
//! - [`HostDb::subscribe`]: every state change as an [`Event`], once.
//! - [`HostDb::snapshot`]: the admin view ([`HostsView`], serde).
//!
//! ```
//! use std::time::Instant;
//! use vigil_hostdb::{Attempt, HostDb, HostDbConfig, L4State, OriginKey, OriginSpec, SelectError};
//!
//! let db = HostDb::new();
//! let app: OriginKey = "app.internal:8080".parse()?;
//! let servers = vec!["127.0.0.2:8080".parse()?, "127.0.0.3:8080".parse()?];
//! db.apply(&HostDbConfig {
//!     origins: vec![OriginSpec::with_servers(app.clone(), servers)],
//!     ..Default::default()
//! })?;
//!
//! // The request path: pick, send, report.
//! let now = Instant::now();
//! let mut attempt = Attempt::new();
//! let pick = db.select(&app, &mut attempt, now)?;
//! // ... connecting failed: count an L4 failure (fail_threshold = 1 takes it down) ...
//! assert_eq!(pick.server().report_l4_failure(now), L4State::Down);
//! // ... and retry on another server; the attempt never repeats one.
//! let retry = db.select(&app, &mut attempt, now)?;
//! assert_ne!(retry.addr(), pick.addr());
//! assert_eq!(db.select(&app, &mut attempt, now).unwrap_err(), SelectError::Exhausted);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Time: every time-dependent call takes `now: std::time::Instant`. Pass
//! `tokio::time::Instant::now().into_std()` to honour tokio's paused clock in
//! tests. The clock epoch is taken from tokio's clock when the HostDb is built.
//!
//! `examples/failover.rs` walks a request path through a failure: a server
//! taken down, skipped, then probed once its down time is over
//! (`cargo run -p vigil-hostdb --example failover`).

#![warn(missing_docs)]

pub mod conf;
mod db;
mod dns;
pub mod docs;
mod error;
mod event;
mod key;
mod l4;
mod l7;
mod origin;
pub mod policy;
mod select;
mod server;
mod snapshot;
mod time;

pub use db::{ApplyReport, HostDb, HostDbBuilder, HostDbConfig};
#[cfg(feature = "hickory")]
pub use dns::HickoryResolver;
pub use dns::{DnsAnswer, DnsPolicy, Resolve, ResolveFuture, StaticResolver};
pub use error::{AddrError, ConfigError, DnsError, SelectError};
pub use event::{Event, Subscriber, SubscriptionId};
pub use key::{DEFAULT_PORT, OriginKey, parse_server_addr};
pub use l4::{L4Policy, L4State};
pub use l7::{CheckResult, L7Flip, L7Policy, L7State, L7Status, Source};
pub use origin::{DnsStatus, Origin, OriginSpec, ServerSource};
pub use policy::{OriginPolicy, OutlierPolicy};
pub use select::{Attempt, LbPolicy, Pick};
pub use server::Server;
pub use snapshot::{
    DnsView, HostsView, L4View, L7View, OriginView, OutlierView, PoolView, ServerView, SlowStartView,
};
