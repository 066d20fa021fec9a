//! The compact wire encoding of chitchat's messages (sealed datagrams of
//! version 2, [`seal`](crate::seal)): the same message in fewer bytes,
//! transcoded from and back to chitchat 0.11's own layout, byte for byte.
//!
//! When nothing changes, gossip is chitchat's handshake: a `Syn` and a
//! `SynAck` each carry a digest, one entry per node (its `ChitchatId`,
//! which is its name, generation and gossip address, then heartbeat, last
//! GC version and max version, all fixed-width: 47 bytes for `edge-1` over
//! IPv4), and the `Syn` the cluster id. Here:
//! - numbers are LEB128 varints (a heartbeat takes 3 or 4 bytes, a version
//!   1 or 2, a GC version that is 0 none);
//! - the `Syn`'s cluster id is left out when it is the one the datagram is
//!   sealed under (the seal binds it: a datagram under another one does
//!   not open);
//! - a node's id is sent in full until the receiver has shown it holds it
//!   (it sent that id to this node: [`Known`]), then as the 64-bit xxh3
//!   hash of its chitchat bytes, which the receiver looks up among the ids
//!   it sent or received ([`Ids`]); one it cannot find makes it ask the
//!   sender, through the transport, to send every id in full again;
//! - the delta, chitchat's compressed blocks, is carried as it is.
//!
//! A digest entry for `edge-1` that the peer knows takes 15 bytes instead
//! of 47. Decoding reads only what is there (every length is checked
//! against the bytes left, nothing is sized by a number read from the
//! input) and stops past [`MAX_EXPANDED`] bytes of output.

use std::collections::{HashMap, HashSet};

use xxhash_rust::xxh3::xxh3_64;

/// chitchat's magic number and protocol version, which open its messages.
const MAGIC: [u8; 2] = 45_139u16.to_le_bytes();
const PROTOCOL: u8 = 0;

/// chitchat's message kinds.
const CC_SYN: u8 = 0;
const CC_SYN_ACK: u8 = 1;
const CC_ACK: u8 = 2;
const CC_BAD_CLUSTER: u8 = 3;

/// The first byte of a compact message: its kind.
/// A `Syn` under the sealing cluster id (left out).
pub(crate) const SYN: u8 = 0;
/// A `Syn` with its cluster id written out.
pub(crate) const SYN_CLUSTER: u8 = 1;
/// A `SynAck`.
pub(crate) const SYN_ACK: u8 = 2;
/// An `Ack`.
pub(crate) const ACK: u8 = 3;
/// `BadCluster`.
pub(crate) const BAD_CLUSTER: u8 = 4;

/// Digest entry flags: how the id is written (the low two bits), and
/// whether a GC version follows.
const ID_REF: u8 = 0;
const ID_V4: u8 = 1;
const ID_V6: u8 = 2;
const ID_FORM: u8 = 0b11;
const HAS_GC: u8 = 0b100;

/// Longest node name whose id is ever sent as a hash; longer ones always
/// go in full (and a table entry stays small: see [`MAX_EXPANDED`]).
const MAX_REF_NAME: usize = 64;
/// Ids a node keeps to resolve hashes; past this the table starts over
/// (peers are then asked for full ids again).
pub(crate) const MAX_IDS: usize = 4096;
/// Ids a node remembers a peer holds; past this it starts over (and sends
/// full ids until the peer shows them again).
pub(crate) const MAX_KNOWN: usize = 4096;
/// Most bytes a compact message decodes to: two fragments' worth, which is
/// more than any message chitchat sends (it keeps them within 65 507).
pub(crate) const MAX_EXPANDED: usize = 2 * 65_507;

/// Why a compact message was not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not a compact message (cut short, an unknown kind or flag, a number
    /// too large for its field, trailing bytes).
    Malformed,
    /// It names a node by a hash this node does not hold: the sender must
    /// send full ids again.
    UnknownId,
    /// It would decode past [`MAX_EXPANDED`] bytes.
    TooLarge,
}

/// Ids by hash: every id this node sent or received in a compact message,
/// so that a peer may name them by hash.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    by_hash: HashMap<u64, Box<[u8]>>,
}

impl Ids {
    fn insert(&mut self, hash: u64, id: &[u8]) {
        if self.by_hash.contains_key(&hash) {
            return;
        }
        if self.by_hash.len() >= MAX_IDS {
            self.by_hash.clear();
        }
        self.by_hash.insert(hash, id.into());
    }

    /// Ids held.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }
}

/// The hashes of the ids one peer has shown it holds: those it sent to
/// this node.
#[derive(Debug, Default)]
pub(crate) struct Known {
    hashes: HashSet<u64>,
}

impl Known {
    fn insert(&mut self, hash: u64) {
        if self.hashes.len() >= MAX_KNOWN && !self.hashes.contains(&hash) {
            self.hashes.clear();
        }
        self.hashes.insert(hash);
    }

    fn contains(&self, hash: u64) -> bool {
        self.hashes.contains(&hash)
    }

    /// Forgets them all: the peer asked for full ids, or is not the node
    /// it was.
    pub(crate) fn clear(&mut self) {
        self.hashes.clear();
    }
}

/// `message` (chitchat's bytes) in the compact encoding, appended to
/// `out`, naming by hash the ids `peer` holds; records the ids sent in
/// `ids`. `None` (and `out` as it was) for what is not chitchat 0.11's
/// layout: it is then sent as it is.
pub(crate) fn encode(
    message: &[u8],
    cluster_id: &str,
    peer: &Known,
    ids: &mut Ids,
    out: &mut Vec<u8>,
) -> Option<()> {
    let start = out.len();
    let done = encode_inner(message, cluster_id, peer, ids, out);
    if done.is_none() {
        out.truncate(start);
    }
    done
}

fn encode_inner(
    message: &[u8],
    cluster_id: &str,
    peer: &Known,
    ids: &mut Ids,
    out: &mut Vec<u8>,
) -> Option<()> {
    let mut r = Reader(message);
    if r.take(2)? != MAGIC || r.u8()? != PROTOCOL {
        return None;
    }
    match r.u8()? {
        CC_SYN => {
            // The digest is written after the kind, the cluster id after it.
            let kind_at = out.len();
            out.push(SYN);
            digest(&mut r, peer, ids, out)?;
            let id = r.str()?;
            if id == cluster_id.as_bytes() {
                out[kind_at] = SYN;
            } else {
                out[kind_at] = SYN_CLUSTER;
                varint(out, id.len() as u64);
                out.extend_from_slice(id);
            }
            r.end()
        }
        CC_SYN_ACK => {
            out.push(SYN_ACK);
            digest(&mut r, peer, ids, out)?;
            out.extend_from_slice(r.rest());
            Some(())
        }
        CC_ACK => {
            out.push(ACK);
            out.extend_from_slice(r.rest());
            Some(())
        }
        CC_BAD_CLUSTER => {
            out.push(BAD_CLUSTER);
            r.end()
        }
        _ => None,
    }
}

/// One chitchat digest, compact.
fn digest(r: &mut Reader<'_>, peer: &Known, ids: &mut Ids, out: &mut Vec<u8>) -> Option<()> {
    let count = r.u16()?;
    varint(out, u64::from(count));
    for _ in 0..count {
        let id_start = r.0;
        let name = r.str()?;
        let generation = r.u64()?;
        let ip_tag = r.u8()?;
        let ip = match ip_tag {
            4 => r.take(4)?,
            6 => r.take(16)?,
            _ => return None,
        };
        let port = r.take(2)?;
        let id = &id_start[..id_start.len() - r.0.len()];
        let (heartbeat, gc, max_version) = (r.u64()?, r.u64()?, r.u64()?);

        let gc_flag = if gc != 0 { HAS_GC } else { 0 };
        let hash = (name.len() <= MAX_REF_NAME).then(|| xxh3_64(id));
        match hash {
            Some(h) if peer.contains(h) => {
                out.push(ID_REF | gc_flag);
                out.extend_from_slice(&h.to_le_bytes());
            }
            _ => {
                out.push(if ip_tag == 4 { ID_V4 } else { ID_V6 } | gc_flag);
                varint(out, name.len() as u64);
                out.extend_from_slice(name);
                varint(out, generation);
                out.extend_from_slice(ip);
                out.extend_from_slice(port);
            }
        }
        if let Some(h) = hash {
            ids.insert(h, id);
        }
        varint(out, heartbeat);
        if gc != 0 {
            varint(out, gc);
        }
        varint(out, max_version);
    }
    Some(())
}

/// `compact` (a compact message sealed under `cluster_id`) as chitchat's
/// bytes, appended to `out`; records in `ids` the ids it holds and in
/// `sender` that the sender holds them.
pub(crate) fn decode(
    compact: &[u8],
    cluster_id: &str,
    ids: &mut Ids,
    sender: &mut Known,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    use DecodeError::Malformed;
    let mut r = Reader(compact);
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL);
    match r.u8().ok_or(Malformed)? {
        kind @ (SYN | SYN_CLUSTER) => {
            out.push(CC_SYN);
            read_digest(&mut r, ids, sender, out)?;
            if kind == SYN {
                write_str(out, cluster_id.as_bytes());
            } else {
                let len = r.varint().ok_or(Malformed)?;
                let len = u16::try_from(len).map_err(|_| Malformed)?;
                write_str(out, r.take(usize::from(len)).ok_or(Malformed)?);
            }
            r.end().ok_or(Malformed)?;
        }
        SYN_ACK => {
            out.push(CC_SYN_ACK);
            read_digest(&mut r, ids, sender, out)?;
            out.extend_from_slice(r.rest());
        }
        ACK => {
            out.push(CC_ACK);
            out.extend_from_slice(r.rest());
        }
        BAD_CLUSTER => {
            out.push(CC_BAD_CLUSTER);
            r.end().ok_or(Malformed)?;
        }
        _ => return Err(Malformed),
    }
    if out.len() > MAX_EXPANDED { Err(DecodeError::TooLarge) } else { Ok(()) }
}

fn read_digest(
    r: &mut Reader<'_>,
    ids: &mut Ids,
    sender: &mut Known,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    use DecodeError::Malformed;
    let count = u16::try_from(r.varint().ok_or(Malformed)?).map_err(|_| Malformed)?;
    out.extend_from_slice(&count.to_le_bytes());
    for _ in 0..count {
        let flags = r.u8().ok_or(Malformed)?;
        if flags & !(ID_FORM | HAS_GC) != 0 {
            return Err(Malformed);
        }
        match flags & ID_FORM {
            ID_REF => {
                let h = u64::from_le_bytes(r.take(8).ok_or(Malformed)?.try_into().map_err(|_| Malformed)?);
                let id = ids.by_hash.get(&h).ok_or(DecodeError::UnknownId)?;
                out.extend_from_slice(id);
                sender.insert(h);
            }
            form @ (ID_V4 | ID_V6) => {
                let id_start = out.len();
                let len = r.varint().ok_or(Malformed)?;
                let len = u16::try_from(len).map_err(|_| Malformed)?;
                let name = r.take(usize::from(len)).ok_or(Malformed)?;
                write_str(out, name);
                out.extend_from_slice(&r.varint().ok_or(Malformed)?.to_le_bytes());
                let (tag, ip_len) = if form == ID_V4 { (4, 4) } else { (6, 16) };
                out.push(tag);
                out.extend_from_slice(r.take(ip_len).ok_or(Malformed)?);
                out.extend_from_slice(r.take(2).ok_or(Malformed)?);
                if name.len() <= MAX_REF_NAME {
                    let id = &out[id_start..];
                    let h = xxh3_64(id);
                    ids.insert(h, id);
                    sender.insert(h);
                }
            }
            _ => return Err(Malformed),
        }
        out.extend_from_slice(&r.varint().ok_or(Malformed)?.to_le_bytes());
        let gc = if flags & HAS_GC != 0 { r.varint().ok_or(Malformed)? } else { 0 };
        out.extend_from_slice(&gc.to_le_bytes());
        out.extend_from_slice(&r.varint().ok_or(Malformed)?.to_le_bytes());
        if out.len() > MAX_EXPANDED {
            return Err(DecodeError::TooLarge);
        }
    }
    Ok(())
}

/// Whether `message` (chitchat's bytes) is an `Ack` with an empty delta.
/// Its receiver would apply nothing (chitchat 0.11 only counts a
/// heartbeat of its own on any message), so it is not sent.
pub(crate) fn is_empty_ack(message: &[u8]) -> bool {
    message == [MAGIC[0], MAGIC[1], PROTOCOL, CC_ACK, 0]
}

/// chitchat's string: a `u16` length, then the bytes.
fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

/// LEB128: seven bits a byte, low first.
pub(crate) fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Fields off the front of a slice: chitchat's (little-endian, fixed
/// width) and the compact encoding's (varints). The transport reads
/// chitchat's layout with it too.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
    /// A LEB128 `u64` in its shortest spelling (one value, one spelling:
    /// a message decodes back to the bytes it was encoded from).
    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return None; // past 64 bits
            }
            n |= bits << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return None; // a trailing zero byte: not the shortest
                }
                return Some(n);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use chitchat::{ChitchatMessage, Deserializable, Serializable};
    use proptest::prelude::*;

    use super::*;

    /// One digest entry as chitchat writes it.
    fn entry(name: &str, generation: u64, addr: SocketAddr, hb: u64, gc: u64, max: u64) -> Vec<u8> {
        let mut e = Vec::new();
        write_str(&mut e, name.as_bytes());
        e.extend_from_slice(&generation.to_le_bytes());
        match addr.ip() {
            std::net::IpAddr::V4(ip) => {
                e.push(4);
                e.extend_from_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                e.push(6);
                e.extend_from_slice(&ip.octets());
            }
        }
        e.extend_from_slice(&addr.port().to_le_bytes());
        for n in [hb, gc, max] {
            e.extend_from_slice(&n.to_le_bytes());
        }
        e
    }

    /// A chitchat message of `kind` with a digest of `entries` (Syn and
    /// SynAck), then `tail` (the cluster id of a Syn, the delta).
    fn message(kind: u8, entries: &[Vec<u8>], tail: &[u8]) -> Vec<u8> {
        let mut m = vec![MAGIC[0], MAGIC[1], PROTOCOL, kind];
        if kind == CC_SYN || kind == CC_SYN_ACK {
            m.extend_from_slice(&(entries.len() as u16).to_le_bytes());
            for e in entries {
                m.extend_from_slice(e);
            }
        }
        m.extend_from_slice(tail);
        m
    }

    fn cluster(id: &str) -> Vec<u8> {
        let mut s = Vec::new();
        write_str(&mut s, id.as_bytes());
        s
    }

    fn three() -> Vec<Vec<u8>> {
        let generation = 1_796_000_000_000;
        (0..3)
            .map(|i| {
                let addr: SocketAddr = format!("10.0.0.{i}:7946").parse().unwrap();
                entry(&format!("edge-{i}"), generation + i, addr, 2_000_000 + i, 0, 1_200)
            })
            .collect()
    }

    /// `m` sent from a to b and decoded there.
    fn hop(
        m: &[u8],
        a: (&Known, &mut Ids),
        b: (&mut Ids, &mut Known),
    ) -> (Vec<u8>, Result<Vec<u8>, DecodeError>) {
        let mut wire = Vec::new();
        encode(m, "vigil", a.0, a.1, &mut wire).expect("chitchat's layout");
        let mut back = Vec::new();
        let r = decode(&wire, "vigil", b.0, b.1, &mut back).map(|()| back);
        (wire, r)
    }

    #[test]
    fn what_chitchat_writes_decodes_to_itself_and_chitchat_reads_it() {
        // The test messages are chitchat's: it reads them and writes them back.
        let syn = message(CC_SYN, &three(), &cluster("vigil"));
        let other = message(CC_SYN, &three(), &cluster("another"));
        let syn_ack = message(CC_SYN_ACK, &three(), &[0]);
        let ack = message(CC_ACK, &[], &[0]);
        let bad = message(CC_BAD_CLUSTER, &[], &[]);
        for m in [&syn, &other, &syn_ack, &ack, &bad] {
            let parsed = ChitchatMessage::deserialize(&mut &m[..]).unwrap();
            assert_eq!(&parsed.serialize_to_vec(), m);
        }
        let (mut ids_a, mut ids_b) = (Ids::default(), Ids::default());
        let (mut a_knows, mut b_knows) = (Known::default(), Known::default());
        let (full, _) = hop(&syn, (&b_knows, &mut ids_a), (&mut ids_b, &mut a_knows));
        for m in [&syn, &other, &syn_ack, &ack, &bad] {
            let (_, back) = hop(m, (&b_knows, &mut ids_a), (&mut ids_b, &mut a_knows));
            assert_eq!(back.as_ref(), Ok(m));
        }
        // Every id crossed in full from a; b holds them, and names them to
        // a by hash (a sent them, so a holds them).
        assert_eq!(ids_b.len(), 3);
        let (back_to_a, back) = hop(&syn, (&a_knows, &mut ids_b), (&mut ids_a, &mut b_knows));
        assert_eq!(back.as_ref(), Ok(&syn));
        // Now a knows b holds them too.
        let (short, back) = hop(&syn, (&b_knows, &mut ids_a), (&mut ids_b, &mut a_knows));
        assert_eq!(back.as_ref(), Ok(&syn));
        // 47 bytes an entry, 154 in all for chitchat; compact, 77 with full
        // ids (25 an entry), then 44 by hash (14 an entry: flags, hash,
        // heartbeat in 3 bytes, max version in 2), the cluster id left out.
        assert_eq!((syn.len(), full.len(), back_to_a.len(), short.len()), (154, 77, 44, 44));
        let (short_ack, _) = hop(&syn_ack, (&b_knows, &mut ids_a), (&mut ids_b, &mut a_knows));
        assert_eq!((syn_ack.len(), short_ack.len()), (148, 45));
        assert_eq!(short_ack.len() - 1, short.len(), "the same digest, and the empty delta");
    }

    #[test]
    fn an_id_the_receiver_does_not_hold_is_unknown_and_it_learns_nothing_wrong() {
        let syn = message(CC_SYN, &three(), &cluster("vigil"));
        let mut ids = Ids::default();
        let mut knows = Known::default();
        // b says it holds every id: a names them by hash.
        for e in three() {
            let name_end = 2 + usize::from(u16::from_le_bytes([e[0], e[1]]));
            knows.insert(xxh3_64(&e[..name_end + 8 + 5 + 2]));
        }
        let mut wire = Vec::new();
        encode(&syn, "vigil", &knows, &mut ids, &mut wire).unwrap();
        assert_eq!(wire.len(), 44);
        // A receiver that restarted holds none of them.
        let mut out = Vec::new();
        assert_eq!(
            decode(&wire, "vigil", &mut Ids::default(), &mut Known::default(), &mut out),
            Err(DecodeError::UnknownId)
        );
        // Under another cluster id, a Syn that left it out reads as that
        // cluster's (the seal would not have opened it there).
        let mut out = Vec::new();
        let mut ids_b = Ids::default();
        for e in three() {
            let name_end = 2 + usize::from(u16::from_le_bytes([e[0], e[1]]));
            ids_b.insert(xxh3_64(&e[..name_end + 15]), &e[..name_end + 15]);
        }
        decode(&wire, "other", &mut ids_b, &mut Known::default(), &mut out).unwrap();
        assert!(out.ends_with(&cluster("other")));
    }

    #[test]
    fn gc_versions_ipv6_and_long_names_round_trip() {
        let v6: SocketAddr = "[fd00::1:2]:7946".parse().unwrap();
        let long = "n".repeat(MAX_REF_NAME + 1);
        let entries = vec![
            entry("a", 1, v6, 0, 17, u64::MAX),
            entry(&long, u64::MAX, "10.0.0.1:1".parse().unwrap(), u64::MAX, u64::MAX, 0),
        ];
        let m = message(CC_SYN_ACK, &entries, &[1, 3, 0, 9, 9, 9, 0]);
        let mut ids_a = Ids::default();
        let mut a_knows = Known::default();
        let (_, back) = hop(&m, (&Known::default(), &mut ids_a), (&mut Ids::default(), &mut a_knows));
        assert_eq!(back, Ok(m.clone()));
        // The long name is never held nor named by hash.
        assert_eq!(ids_a.len(), 1);
        assert_eq!(a_knows.hashes.len(), 1);
    }

    #[test]
    fn what_is_not_chitchat_s_layout_is_not_encoded() {
        let mut ids = Ids::default();
        let mut out = vec![9];
        for m in [
            &b""[..],
            &[MAGIC[0], MAGIC[1], 1, CC_ACK, 0],
            &[MAGIC[0], MAGIC[1], PROTOCOL, 7],
            &message(CC_SYN, &three(), &cluster("vigil"))[..150],
            &message(CC_BAD_CLUSTER, &[], &[1]),
            &message(CC_SYN, &three(), &[cluster("vigil"), vec![0]].concat()),
        ] {
            assert_eq!(encode(m, "vigil", &Known::default(), &mut ids, &mut out), None, "{m:?}");
            assert_eq!(out, [9], "left as it was");
        }
    }

    #[test]
    fn malformed_compact_messages_are_refused() {
        let mut ids = Ids::default();
        let mut k = Known::default();
        let bad: &[&[u8]] = &[
            b"",
            &[9],
            &[SYN],
            &[SYN, 1, 0b1000],
            &[SYN, 1, 3],
            &[SYN, 0, 0],                 // trailing bytes after a Syn
            &[SYN_CLUSTER, 0, 5, b'a'],   // a cluster id cut short
            &[SYN, 1, ID_V4, 1, b'a', 1], // an id cut short
            &[SYN_ACK, 0x80],             // a varint cut short
            &[SYN_ACK, 0x81, 0],          // not the shortest spelling
            &[SYN_ACK, 0x80, 0x80, 0x04], // a count past u16
            &[BAD_CLUSTER, 0],
        ];
        for m in bad {
            let mut out = Vec::new();
            assert_eq!(decode(m, "c", &mut ids, &mut k, &mut out), Err(DecodeError::Malformed), "{m:?}");
        }
        let mut r = Reader(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(r.varint(), None, "65 bits");
        let mut r = Reader(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(r.varint(), Some(u64::MAX));
    }

    #[test]
    fn decoding_stops_past_its_bound() {
        // A key holder's digest of the most entries by hash, each naming
        // the longest id a table holds: refused once past the bound, not
        // after building it all.
        let name = "n".repeat(MAX_REF_NAME);
        let e = entry(&name, u64::MAX, "[::1]:1".parse().unwrap(), 0, 0, 0);
        let id = &e[..e.len() - 24];
        let h = xxh3_64(id);
        let mut ids = Ids::default();
        ids.insert(h, id);
        let mut m = vec![SYN_ACK];
        varint(&mut m, u64::from(u16::MAX));
        for _ in 0..u16::MAX {
            m.push(ID_REF);
            m.extend_from_slice(&h.to_le_bytes());
            m.extend_from_slice(&[0, 0]);
        }
        m.push(0);
        let mut out = Vec::new();
        assert_eq!(decode(&m, "c", &mut ids, &mut Known::default(), &mut out), Err(DecodeError::TooLarge));
        assert!(out.len() <= MAX_EXPANDED + e.len(), "{}", out.len());
    }

    #[test]
    fn tables_are_bounded() {
        let mut ids = Ids::default();
        let mut k = Known::default();
        for i in 0..(MAX_IDS as u64 + 10) {
            ids.insert(i, b"x");
            k.insert(i);
        }
        assert!(ids.len() <= MAX_IDS && k.hashes.len() <= MAX_KNOWN);
        assert!(is_empty_ack(&message(CC_ACK, &[], &[0])));
        assert!(!is_empty_ack(&message(CC_ACK, &[], &[2, 1, 0, 7, 0])));
    }

    proptest! {
        #[test]
        fn any_digest_round_trips(
            nodes in proptest::collection::vec(
                ("[a-z0-9-]{0,80}", any::<u64>(), any::<bool>(), any::<u16>(), any::<u64>(), 0u64..3, any::<u64>()),
                0..8,
            ),
            known in any::<bool>(),
            kind in 0u8..2,
        ) {
            let entries: Vec<Vec<u8>> = nodes
                .iter()
                .map(|(name, generation, v6, port, hb, gc, max)| {
                    let addr: SocketAddr = if *v6 { (std::net::Ipv6Addr::LOCALHOST, *port).into() } else { ([10, 1, 2, 3], *port).into() };
                    entry(name, *generation, addr, *hb, *gc, *max)
                })
                .collect();
            let tail = if kind == CC_SYN { cluster("vigil") } else { vec![0] };
            let m = message(kind, &entries, &tail);
            let (mut ids_a, mut ids_b) = (Ids::default(), Ids::default());
            let (mut a_knows, mut b_knows) = (Known::default(), Known::default());
            let (_, back) = hop(&m, (&b_knows, &mut ids_a), (&mut ids_b, &mut a_knows));
            prop_assert_eq!(back, Ok(m.clone()));
            if known {
                // b sends them back; a then names them by hash.
                let (_, back) = hop(&m, (&a_knows, &mut ids_b), (&mut ids_a, &mut b_knows));
                prop_assert_eq!(back, Ok(m.clone()));
                let (_, back) = hop(&m, (&b_knows, &mut ids_a), (&mut ids_b, &mut a_knows));
                prop_assert_eq!(back, Ok(m.clone()));
            }
        }

        #[test]
        fn decoding_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let _ = decode(&data, "c", &mut Ids::default(), &mut Known::default(), &mut out);
            prop_assert!(out.len() <= MAX_EXPANDED + 200);
        }
    }
}
