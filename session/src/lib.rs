//! # vigil-session: the origin session pool
//!
//! Keep-alive sessions to origin servers (HTTP/1.1 and h2c), shared by
//! proxied requests and L7 health checks, so a check warms a session a user
//! request then reuses and the other way round.
//!
//! Not built yet: this crate lands with the session-pool issue. Its place in
//! the layering is fixed already: it knows nothing of health policy (it
//! reports connect and I/O outcomes through an observer trait and never
//! depends on `vigil-hostdb`). See `ARCHITECTURE.md`.

#![warn(missing_docs)]
