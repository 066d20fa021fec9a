//! Properties of the cluster's decoding on any input, checked by the unit
//! tests below and by the fuzz targets (`fuzz/`, built with the `fuzzing`
//! feature):
//!
//! - **Records and gossip keys** ([`record`]): decoding never panics; what
//!   decodes encodes back to itself; a key that parses is the very key
//!   written for its value; a refused record's error holds at most 64
//!   characters of it, whatever its length.
//! - **Datagrams** ([`datagrams`]): opening, reassembly and chitchat's
//!   decoding never panic, in either format (chitchat's and the compact
//!   one), and what is held between datagrams is bounded by what was
//!   received: half-received messages hold no more bytes than their
//!   fragments brought, and no more slots than a message can have; the id
//!   and peer tables stay within their bounds.
//!
//! Each function panics when a property does not hold; that is what a fuzz
//! target reports.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::record::{ServerRecord, gossip_key, interest_key, parse_gossip_key, parse_interest_key};
use crate::seal::{ClusterKey, Format, KEY_LEN, Keyring, Sealer};
use crate::transport::{Inbound, TransportStats};

/// The fuzz targets' cluster id; the key is `[7; KEY_LEN]`.
pub const CLUSTER_ID: &str = "fuzz";

fn keys() -> Arc<Keyring> {
    let key = ClusterKey::from_bytes(&[7; KEY_LEN]).expect("KEY_LEN bytes");
    Arc::new(Keyring::new(key, Vec::new()))
}

/// `data` as a gossip value and as a gossip key (both are strings: bytes
/// that are not UTF-8 cannot arrive, chitchat refuses them first).
pub fn record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ServerRecord::decode(text) {
        Ok(r) => assert_eq!(ServerRecord::decode(&r.encode()), Ok(r), "{text:?} does not round-trip"),
        Err(e) => assert!(e.0.chars().count() <= 64, "the error holds {} characters", e.0.chars().count()),
    }
    if let Some(k) = parse_gossip_key(text) {
        assert_eq!(gossip_key(k), text, "a record key with another spelling parses");
    }
    if let Some(h) = parse_interest_key(text) {
        assert_eq!(interest_key(h), text, "an interest key with another spelling parses");
    }
}

/// Two peers the datagrams come from.
const PEERS: [&str; 2] = ["127.0.0.2:7000", "127.0.0.3:7000"];

/// `data` as a datagram as it arrives (it opens to nothing: it is not
/// sealed under the key), then as frames that a key holder sealed: `data`
/// is a run of `[peer: u8][len: u16 LE][frame: len bytes]` (a short last
/// frame takes what is left), each frame sealed under the key and received
/// from peer `peer & 1`, as version 2 (the compact encoding) when `peer &
/// 2`. This reaches what only the key's holders reach: the frame tags,
/// reassembly, the compact decoding and chitchat's.
///
/// Returns how many messages decoded.
pub fn datagrams(data: &[u8]) -> usize {
    let keys = keys();
    let stats = Arc::new(TransportStats::default());
    let mut inbound = Inbound::new(&keys, CLUSTER_ID, Arc::clone(&stats));
    let sealer = Sealer::new(&keys, CLUSTER_ID);
    let peers: [SocketAddr; 2] = PEERS.map(|p| p.parse().expect("an ip:port"));

    let mut decoded = 0;
    let mut received = 0u64;
    if inbound.receive(peers[0], data).is_some() {
        decoded += 1;
    }
    received += 1;

    let (mut rest, mut fragment_bytes) = (data, 0usize);
    while let Some((&[peer, lo, hi], tail)) = rest.split_first_chunk::<3>() {
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        rest = tail;
        // What a fragment may keep: its bytes after the header.
        fragment_bytes += frame.len().saturating_sub(7);
        let format = if peer & 2 == 0 { Format::Chitchat } else { Format::Compact };
        if inbound.receive(peers[usize::from(peer & 1)], &sealer.seal_as(format, frame)).is_some() {
            decoded += 1;
        }
        received += 1;
        let (messages, bytes) = inbound.buffered();
        assert!(messages <= PEERS.len(), "{messages} half-received messages from {} peers", PEERS.len());
        assert!(bytes <= fragment_bytes, "{bytes} bytes held after {fragment_bytes} bytes of fragments");
        assert!(
            inbound.widest_partial() <= 2,
            "a message with room for {} fragments",
            inbound.widest_partial()
        );
        let (ids, senders) = inbound.tables();
        assert!(ids <= crate::compact::MAX_IDS, "{ids} ids held");
        assert!(senders <= PEERS.len(), "{senders} peers from {} senders", PEERS.len());
    }
    assert_eq!(stats.datagrams_in(), received);
    assert!(stats.rejected() + decoded as u64 <= received);
    decoded
}

/// A gossip message as the frame a node seals (for the seed corpus and
/// the tests): a `Syn` with an empty digest.
pub fn syn_frame() -> Vec<u8> {
    use chitchat::{ChitchatMessage, Serializable};
    let message = ChitchatMessage::Syn { cluster_id: CLUSTER_ID.into(), digest: Default::default() };
    let mut frame = vec![0];
    message.serialize(&mut frame);
    frame
}

/// A compact `Syn` naming one node in full (for the seed corpus and the
/// tests): the frame a node seals as version 2.
pub fn compact_syn_frame() -> Vec<u8> {
    // Kind Syn, 1 entry: IPv4 id "edge-1", generation 7, 10.0.0.1:7946,
    // heartbeat 300, max version 12.
    let mut f = vec![crate::compact::SYN, 1, 1, 6];
    f.extend_from_slice(b"edge-1");
    f.extend_from_slice(&[7, 10, 0, 0, 1]);
    f.extend_from_slice(&7946u16.to_le_bytes());
    f.extend_from_slice(&[0xac, 0x02, 12]);
    f
}

/// The same `Syn` as [`compact_syn_frame`], naming the node by hash: it
/// decodes where that one was received first.
pub fn compact_syn_by_hash_frame() -> Vec<u8> {
    let mut id = vec![6, 0];
    id.extend_from_slice(b"edge-1");
    id.extend_from_slice(&7u64.to_le_bytes());
    id.extend_from_slice(&[4, 10, 0, 0, 1]);
    id.extend_from_slice(&7946u16.to_le_bytes());
    let mut f = vec![crate::compact::SYN, 1, 0];
    f.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&id).to_le_bytes());
    f.extend_from_slice(&[0xac, 0x02, 12]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `frame` as one input of [`datagrams`], from peer 0.
    fn input(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.push(0);
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn records_and_keys_hold() {
        for text in [
            "h5.0.42.0",
            "x0.3.7.1700000000000",
            "h05.0.1.0",
            "s:00abcdef01234567",
            "o:00abcdef01234567",
            "",
            "q",
            "s:+0abcdef01234567",
        ] {
            record(text.as_bytes());
        }
        record(&[0xff, 0xfe]);
        record("h".repeat(10_000).as_bytes());
    }

    #[test]
    fn a_sealed_message_decodes_and_fragments_are_bounded() {
        let syn = syn_frame();
        assert_eq!(datagrams(&input(&[&syn])), 1);
        // The same message cut in two fragments, then a fragment claiming
        // 255 parts: one message, nothing held for the claim.
        let body = &syn[1..];
        let (a, b) = body.split_at(body.len() / 2);
        let frag = |i: u8, n: u8, part: &[u8]| {
            let mut f = vec![1, 0, 0, 0, 9, i, n];
            f.extend_from_slice(part);
            f
        };
        assert_eq!(datagrams(&input(&[&frag(1, 2, b), &frag(0, 2, a), &frag(0, 255, a)])), 1);
        // Compact: the same Syn decodes, from either peer; cut short it does not.
        let compact = compact_syn_frame();
        let input_as = |peer: u8, f: &[u8]| {
            let mut out = vec![peer];
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(f);
            out
        };
        assert_eq!(datagrams(&[input_as(2, &compact), input_as(3, &compact)].concat()), 2);
        assert_eq!(datagrams(&input_as(2, &compact[..compact.len() - 1])), 0);
        // By hash: unknown first (a reset is owed, nothing rejected), then
        // known once the full id came.
        let by_hash = compact_syn_by_hash_frame();
        assert_eq!(datagrams(&input_as(2, &by_hash)), 0);
        // (The seed corpus's `compact-syn`.)
        let seed = [input_as(2, &compact), input_as(2, &by_hash)].concat();
        assert_eq!(datagrams(&seed), 2);
        // chitchat's bytes sealed as compact, and compact as chitchat's: refused.
        assert_eq!(datagrams(&[input_as(2, &syn), input_as(0, &compact)].concat()), 0);
        // Garbage: nothing decodes, nothing panics.
        assert_eq!(datagrams(b"\x00\x05\x00hello\x01\x02"), 0);
    }
}
