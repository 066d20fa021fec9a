//! What the cluster stores per server: a compact record under a 64-bit
//! hash of (origin, server), as the design note asks ("health status is
//! stored under a hashed key").
//!
//! Gossip key: `s:<16 hex digits>` (18 bytes). Value: the L7 state letter,
//! the consecutive passes and failures, the owner's version counter, the
//! L4 down-until mark and when the state last changed, in text (chitchat
//! values are strings): `h5.0.42.0.1796000000000` is healthy after 5
//! passes, version 42, not L4-down, healthy since that millisecond: about
//! 24 bytes for a steady server. A value without the last field (written
//! before it existed) decodes with `changed_ms` 0, unknown.

use std::net::SocketAddr;

use vigil_hostdb::{L7State, OriginKey};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The 64-bit key a server's record is stored under: stable across nodes,
/// processes and restarts (xxh3 of the origin's key, seeded with the
/// origin's own hash, over the server's address).
///
/// ```
/// let origin: vigil_hostdb::OriginKey = "app.internal:8080".parse()?;
/// let a = vigil_cluster::server_key(&origin, "127.0.0.2:8080".parse()?);
/// assert_eq!(a, vigil_cluster::server_key(&origin, "127.0.0.2:8080".parse()?));
/// assert_ne!(a, vigil_cluster::server_key(&origin, "127.0.0.3:8080".parse()?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn server_key(origin: &OriginKey, server: SocketAddr) -> u64 {
    use std::io::Write;
    // The address as text, formatted on the stack: this runs for every
    // server every gossip round. 64 bytes hold the longest socket address.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if write!(cursor, "{server}").is_err() {
        return xxh3_64_with_seed(server.to_string().as_bytes(), origin.hash64());
    }
    let n = cursor.position() as usize;
    xxh3_64_with_seed(&buf[..n], origin.hash64())
}

/// Prefix of the gossip keys of server records.
pub(crate) const RECORD: &str = "s:";
/// Prefix of the gossip keys that say a node has traffic for an origin.
pub(crate) const INTEREST: &str = "o:";

/// The gossip key of a server record.
pub fn gossip_key(server_key: u64) -> String {
    format!("{RECORD}{server_key:016x}")
}

/// The server key inside a gossip key written by [`gossip_key`].
pub fn parse_gossip_key(key: &str) -> Option<u64> {
    parse_hex64(key.strip_prefix(RECORD)?)
}

/// The gossip key that says a node has traffic for the origin whose
/// [`OriginKey::hash64`] is `origin_hash`.
pub(crate) fn interest_key(origin_hash: u64) -> String {
    format!("{INTEREST}{origin_hash:016x}")
}

/// The origin hash inside a key written by [`interest_key`].
pub(crate) fn parse_interest_key(key: &str) -> Option<u64> {
    parse_hex64(key.strip_prefix(INTEREST)?)
}

/// Exactly 16 lowercase hex digits, as the keys are written: one value has
/// one spelling (`from_str_radix` alone would also take a sign, uppercase
/// and fewer digits).
fn parse_hex64(hex: &str) -> Option<u64> {
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// One server's shared state, as its checking node last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRecord {
    /// L7 state.
    pub state: L7State,
    /// Consecutive passing checks.
    pub passes: u32,
    /// Consecutive failing checks.
    pub failures: u32,
    /// Increases with every change the owner publishes; a receiver keeps the
    /// highest.
    pub version: u64,
    /// Milliseconds since the Unix epoch until which the publisher saw the
    /// server L4-down; 0 when up. Advisory: local evidence wins.
    pub l4_down_until_ms: u64,
    /// Milliseconds since the Unix epoch (the publisher's clock) when the
    /// publisher's view of the server last changed to `state`; 0 when
    /// unknown. A receiver whose own view changed later does not take an
    /// older record that says otherwise: after a partition heals, a node's
    /// copy of the other side's records can be from before the partition.
    pub changed_ms: u64,
}

/// A gossip value that is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a server record: {0:?}")]
pub struct RecordError(pub String);

impl ServerRecord {
    /// The gossip value.
    pub fn encode(&self) -> String {
        let s = match self.state {
            L7State::Unknown => 'u',
            L7State::Healthy => 'h',
            L7State::Unhealthy => 'x',
            L7State::Unchecked => 'n',
        };
        format!(
            "{s}{}.{}.{}.{}.{}",
            self.passes, self.failures, self.version, self.l4_down_until_ms, self.changed_ms
        )
    }

    /// Parses a gossip value written by [`ServerRecord::encode`].
    ///
    /// # Errors
    /// [`RecordError`] for anything else; a record from a newer or broken
    /// node is ignored, never half-applied.
    pub fn decode(value: &str) -> Result<Self, RecordError> {
        let bad = || RecordError(value.chars().take(64).collect());
        let mut chars = value.chars();
        let state = match chars.next() {
            Some('u') => L7State::Unknown,
            Some('h') => L7State::Healthy,
            Some('x') => L7State::Unhealthy,
            Some('n') => L7State::Unchecked,
            _ => return Err(bad()),
        };
        let mut fields = chars.as_str().split('.');
        let mut next = || fields.next().filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
        let (p, f, v, d) = (next(), next(), next(), next());
        // The fifth field is optional (records of nodes that predate it).
        let changed = match fields.next() {
            None => Some(0),
            Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) => c.parse().ok(),
            Some(_) => None,
        };
        if fields.next().is_some() {
            return Err(bad());
        }
        Ok(Self {
            state,
            passes: p.and_then(|x| x.parse().ok()).ok_or_else(bad)?,
            failures: f.and_then(|x| x.parse().ok()).ok_or_else(bad)?,
            version: v.and_then(|x| x.parse().ok()).ok_or_else(bad)?,
            l4_down_until_ms: d.and_then(|x| x.parse().ok()).ok_or_else(bad)?,
            changed_ms: changed.ok_or_else(bad)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_key_hashes_the_address_as_text_even_the_longest() {
        let origin: OriginKey = "app.internal:8080".parse().unwrap();
        let longest = std::net::SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap(),
            65535,
            0,
            u32::MAX,
        );
        for addr in ["127.0.0.2:8080".parse().unwrap(), SocketAddr::V6(longest)] {
            let text = addr.to_string();
            assert_eq!(
                server_key(&origin, addr),
                xxh3_64_with_seed(text.as_bytes(), origin.hash64()),
                "{text}"
            );
        }
    }

    #[test]
    fn compact_and_round_trips() {
        let r = ServerRecord {
            state: L7State::Healthy,
            passes: 5,
            failures: 0,
            version: 42,
            l4_down_until_ms: 0,
            changed_ms: 1_796_000_000_000,
        };
        assert_eq!(r.encode(), "h5.0.42.0.1796000000000");
        assert_eq!(ServerRecord::decode("h5.0.42.0.1796000000000"), Ok(r));
        // Written before the change time existed: unknown.
        assert_eq!(ServerRecord::decode("h5.0.42.0"), Ok(ServerRecord { changed_ms: 0, ..r }));
        let k = 0x00ab_cdef_0123_4567;
        assert_eq!(gossip_key(k), "s:00abcdef01234567");
        assert_eq!(parse_gossip_key(&gossip_key(k)), Some(k));
        assert_eq!(parse_gossip_key("s:123"), None);
        assert_eq!(parse_gossip_key("origins"), None);
        assert_eq!(interest_key(k), "o:00abcdef01234567");
        assert_eq!(parse_interest_key(&interest_key(k)), Some(k));
        assert_eq!(parse_interest_key(&gossip_key(k)), None);
    }

    #[test]
    fn a_key_has_one_spelling() {
        // Each of these parsed before: a sign, uppercase digits.
        for key in ["s:+0abcdef01234567", "s:00ABCDEF01234567", "s:00abcdef0123456 "] {
            assert_eq!(parse_gossip_key(key), None, "{key:?}");
            let interest = key.replacen("s:", "o:", 1);
            assert_eq!(parse_interest_key(&interest), None, "{interest:?}");
        }
    }

    #[test]
    fn garbage_is_refused_whole() {
        for v in [
            "",
            "h",
            "h1.2.3",
            "h1.2.3.4.5.6",
            "h1.2.3.4.",
            "h1.2.3.4.-5",
            "q1.2.3.4",
            "h1..3.4",
            "h-1.2.3.4",
            "h1.2.3.99999999999999999999",
            "h1.2.3.4 ",
        ] {
            assert!(ServerRecord::decode(v).is_err(), "{v:?}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,40}") {
            let _ = ServerRecord::decode(&s);
            let _ = parse_gossip_key(&s);
        }

        #[test]
        fn any_record_round_trips(st in 0u8..4, p: u32, f: u32, v: u64, d: u64, c: u64) {
            let state = [L7State::Unknown, L7State::Healthy, L7State::Unhealthy, L7State::Unchecked][st as usize];
            let r = ServerRecord { state, passes: p, failures: f, version: v, l4_down_until_ms: d, changed_ms: c };
            prop_assert_eq!(ServerRecord::decode(&r.encode()), Ok(r));
        }
    }
}
