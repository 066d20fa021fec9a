//! # vigil-cluster: health shared across proxy nodes
//!
//! Gossips each server's L7 status and L4-down marks under a 64-bit hashed
//! key over an authenticated (AEAD-sealed) chitchat transport, and elects
//! one node per server to check it, so an origin sees about one check per
//! interval however many proxies front it.
//!
//! Built so far: the parts every node must agree on, each usable alone.
//! - [`seal`]: the authenticated datagram format (XChaCha20-Poly1305 under
//!   the cluster key, bound to the cluster id, replays refused).
//! - [`record`]: the compact per-server record and its 64-bit hashed key.
//! - [`ownership`]: rendezvous hashing, which node checks which server.
//!
//! Not built yet: the chitchat transport that carries sealed datagrams, the
//! membership and interest tracking, and the wiring into `vigil`. It will
//! read and write health only through `vigil-hostdb` (`Server::set_l7`, the
//! event subscription, `OriginKey::hash64`). See `ARCHITECTURE.md`.

#![warn(missing_docs)]

pub mod ownership;
pub mod record;
pub mod seal;

pub use ownership::owner;
pub use record::{RecordError, ServerRecord, gossip_key, parse_gossip_key, server_key};
pub use seal::{ClusterKey, KEY_LEN, KeyError, OVERHEAD, OpenError, Opener, Sealer};
