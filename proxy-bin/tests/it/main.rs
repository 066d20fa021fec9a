//! End-to-end tests of the real `vigil` binary.

// Helpers outside #[test] fns are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod browser;
mod check_config;
mod checks;
mod cli;
mod cluster;
mod cluster_keys;
mod dashboard;
mod deploy;
mod essentials;
mod faults;
mod grpc;
mod harness;
mod hostile;
mod netns;
mod policy;
mod proxy;
mod systemd;
mod tls;
mod upgrade;
