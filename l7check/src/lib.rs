//! # vigil-l7check: lazy L7 health checks
//!
//! Health checks (HTTP, gRPC, TCP) configured in their own file, mapped to origin host
//! names, started by user traffic, sent over the same pooled sessions as
//! user requests, with results kept in HostDB.
//!
//! - [`HealthChecks`]: the file. Unknown keys refused, values validated,
//!   errors at `file:line:column`; [`HealthChecks::matching`] finds an
//!   origin's check (`host:port` beats `host` beats `*.suffix`).
//! - [`Checker`]: the lazy scheduler. [`Checker::touch`] from the request
//!   path starts an origin's checks (one atomic load once they run); each
//!   server is checked every `interval` (± jitter), every
//!   `unhealthy_interval` while unhealthy; checks stop after `idle_after`
//!   without a request. Checks in flight are bounded.
//! - [`Check`] and its [`CheckKind`]: `http` (status ranges, a body
//!   substring, a response header), `grpc` (`grpc.health.v1.Health/Check`
//!   over the origin's h2 sessions, `SERVING` passes) or `tcp` (connect,
//!   then `send`/`expect` steps); any of them on another `port` of the
//!   server.
//! - [`Probe`] and [`PoolProbe`]: one check, one timeout for everything,
//!   redirects never followed, a failure on a reused session retried once
//!   on a fresh one; TCP checks on connections of their own.
//!
//! It changes health only through `vigil-hostdb`: `Origin::record_check`
//! (the hysteresis and the one log line per flip are HostDB's),
//! `Origin::record_check_on_other_port` for checks on another port (their
//! passes leave L4 alone) and `Server::report_l4_failure` for connect
//! failures. See `ARCHITECTURE.md`.
//!
//! `examples/check.rs` runs the checker against two servers on loopback,
//! one healthy and one refusing connections
//! (`cargo run -p vigil-l7check --example check`).

#![warn(missing_docs)]

mod config;
mod grpc;
mod probe;
mod scheduler;
mod tcp;

pub use config::{
    Check, CheckKind, Expect, GrpcCheck, HeaderExpect, HeaderValueMatch, HealthChecks, HttpCheck,
    OriginPattern, Pattern, Position, Settings, StatusRange, TcpCheck, TcpStep,
};
pub use probe::{MAX_BODY, OriginUpstream, PoolProbe, Probe, ProbeFuture, ProbeOutcome, ProbeRequest};
pub use scheduler::{CheckFilter, Checker, CheckerMetrics, CheckerOptions, ResultHook};
