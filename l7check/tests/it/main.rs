//! vigil-l7check integration tests.

// Helpers outside #[test] fns are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod config;
mod probe;
mod scheduler;
