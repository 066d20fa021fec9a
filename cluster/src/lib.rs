//! # vigil-cluster: health shared across proxy nodes
//!
//! Gossips each server's L7 status and L4-down marks under a 64-bit hashed
//! key over an authenticated (AEAD-sealed) chitchat transport, and elects
//! one node per server to check it, so an origin sees about one check per
//! interval however many proxies front it.
//!
//! Not built yet: this crate lands with the cluster issue. It reads and
//! writes health only through `vigil-hostdb` (`Server::set_l7`, the event
//! subscription, `OriginKey::hash64`). See `ARCHITECTURE.md`.

#![warn(missing_docs)]
