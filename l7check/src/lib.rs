//! # vigil-l7check: lazy L7 health checks
//!
//! Reads the dedicated health-check file, starts checking an origin's servers
//! when user traffic for it arrives (and stops after `idle_after`), sends the
//! checks over `vigil-session`'s pooled sessions and records results through
//! `vigil-hostdb`'s API.
//!
//! Not built yet: this crate lands with the L7-check issue. It changes health
//! only through `vigil-hostdb` (`Origin::record_check`,
//! `Server::report_l4_failure`). See `ARCHITECTURE.md`.

#![warn(missing_docs)]
