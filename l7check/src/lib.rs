//! # vigil-l7check: lazy L7 health checks
//!
//! Reads the dedicated health-check file, starts checking an origin's servers
//! when user traffic for it arrives (and stops after `idle_after`), sends the
//! checks over `vigil-session`'s pooled sessions and records results through
//! `vigil-hostdb`'s API.
//!
//! Built so far: the file ([`HealthChecks`]): parsing with unknown keys
//! refused, validation, errors at `file:line:column`, and matching checks to
//! origins (`host:port` beats `host` beats `*.suffix`). The scheduler and the
//! probe land with the rest of the L7-check issue. This crate changes health
//! only through `vigil-hostdb` (`Origin::record_check`,
//! `Server::report_l4_failure`). See `ARCHITECTURE.md`.

#![warn(missing_docs)]

mod config;

pub use config::{Check, ConfigError, HealthChecks, OriginPattern, Settings, StatusRange, parse_duration};
