//! # vigil-cluster: health shared across proxy nodes
//!
//! Gossips each server's L7 status and L4-down marks under a 64-bit hashed
//! key over an authenticated (AEAD-sealed) chitchat transport, and elects
//! one node per server to check it, so an origin sees about one check per
//! interval however many proxies front it.
//!
//! Built so far: the parts every node must agree on, each usable alone.
//! - [`seal`]: the authenticated datagram format (XChaCha20-Poly1305 under
//!   the cluster key, bound to the cluster id, replays refused), and the
//!   [`Keyring`] that lets a key be rotated live (previous keys still open).
//! - [`record`]: the compact per-server record and its 64-bit hashed key.
//! - [`ownership`]: rendezvous hashing, which node checks which server.
//!
//! - [`transport`]: chitchat's UDP transport with every datagram sealed,
//!   in chitchat's encoding or, to peers that read it, a compact one
//!   (`compact.rs`: varints, ids by hash once the peer holds them).
//! - [`node`]: a running member ([`Cluster`]): interest, ownership,
//!   publishing and adopting records. It reads and writes health only
//!   through `vigil-hostdb` (`Server::l7`, `Server::set_l7`,
//!   `Origin::is_checking`). See `ARCHITECTURE.md`.
//!
//! `examples/two_nodes.rs` starts two members in one process on loopback
//! UDP and shows a result recorded on one adopted by the other
//! (`cargo run -p vigil-cluster --example two_nodes`).

#![warn(missing_docs)]

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod check;
mod compact;
pub mod node;
pub mod ownership;
pub mod record;
pub mod seal;
pub mod transport;

pub use node::{Cluster, ClusterConfig, ClusterError, ClusterMetrics};
pub use ownership::{owner, owner_in};
pub use record::{RecordError, ServerRecord, gossip_key, parse_gossip_key, server_key};
pub use seal::{ClusterKey, Format, KEY_LEN, KeyError, Keyring, OVERHEAD, OpenError, Opened, Opener, Sealer};
pub use transport::{SealedTransport, TransportStats};
