//! chitchat's UDP transport with every datagram sealed under the cluster
//! key ([`seal`](crate::seal)).
//!
//! chitchat sizes its messages up to the largest UDP payload (65 507
//! bytes) and sealing adds [`OVERHEAD`] bytes, so a message that would no
//! longer fit is cut into fragments, each sealed on its own (an attacker
//! without the key can neither forge nor replay one), and put back together
//! by the receiver. Every received datagram is counted; one that fails to
//! open (another key, another cluster id, tampered, replayed) is dropped and
//! counted as rejected; one opened with a previous key of the keyring is
//! counted too, so an operator sees when no peer seals with it any more.
//!
//! A peer that showed it reads the compact (`compact.rs`) encoding (a
//! datagram of version 2, or one whose nonce says so: see
//! [`seal`](crate::seal)) is sent messages in it; any other, chitchat's own
//! (a node of an earlier release, or one not heard from yet). Ids a peer
//! sent in compact messages are named to it by hash from then on; a peer
//! that cannot resolve one (it restarted, or its table started over)
//! answers with a reset frame, after which it is sent full ids again. An
//! `Ack` with an empty delta is not sent at all: its receiver would apply
//! nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};

use crate::compact::{self, DecodeError, Ids, Known, Reader};
use crate::seal::{Format, Keyring, OVERHEAD, Opener, Sealer};

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Frame tag: the datagram holds a whole message.
const WHOLE: u8 = 0;
/// Frame tag: the datagram holds one fragment (`id: u32, index: u8, count: u8`).
const FRAGMENT: u8 = 1;
const FRAGMENT_HEADER: usize = 1 + 4 + 1 + 1;
/// Frame tags of version 2 beside the compact message kinds (0 to 4):
/// one fragment of a compact message (the same header as [`FRAGMENT`]),
/// and a reset, which asks its receiver to send full ids again.
const COMPACT_FRAGMENT: u8 = 8;
const COMPACT_RESET: u8 = 9;
/// Peers whose format and known ids are kept; past this they start over
/// (each is sent chitchat's encoding until it is heard from again).
const MAX_PEERS: usize = 1024;
/// Payload bytes per fragment.
const FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD - FRAGMENT_HEADER;
/// Most fragments of one message: chitchat keeps a message within
/// `MAX_DATAGRAM`, which two fragments hold. A fragment that claims more is
/// refused before anything is kept for it, so its `count` byte sizes no
/// table.
const MAX_FRAGMENTS: usize = 2;
const _: () = assert!(MAX_FRAGMENTS * FRAGMENT_PAYLOAD >= MAX_DATAGRAM);
/// Senders with a message half received; past this the table is cleared
/// (only key holders can fill it: fragments are authenticated first).
const MAX_PARTIAL: usize = 256;
/// What a message may inflate to when chitchat decodes it: its zstd
/// blocks' declared sizes added up, at most this many times its own size
/// (gossip compresses about twofold), or [`MIN_INFLATED`] when that is
/// more. chitchat inflates every block, up to 64 KiB each, into one buffer
/// before anything else: 185 blocks of 19 bytes, each a frame of 64 KiB of
/// zeros, made 12 MiB of a 4 KiB datagram, and a whole datagram would make
/// 200 MiB. Only key holders could send one; still, no message is taken
/// that asks for more memory than this.
const MAX_INFLATION: usize = 16;
/// What any message may inflate to (four of chitchat's 16 KiB blocks).
const MIN_INFLATED: usize = 64 * 1024;
/// The most one of chitchat's blocks inflates to: its buffer's size.
const MAX_BLOCK: usize = u16::MAX as usize;

/// Datagram and byte counts of one node's transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    rejected: AtomicU64,
    previous_key: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    compact_out: AtomicU64,
    acks_skipped: AtomicU64,
    resets_sent: AtomicU64,
}

impl TransportStats {
    /// Datagrams received, rejected ones included.
    pub fn datagrams_in(&self) -> u64 {
        self.datagrams_in.load(Ordering::Relaxed)
    }
    /// Datagrams sent.
    pub fn datagrams_out(&self) -> u64 {
        self.datagrams_out.load(Ordering::Relaxed)
    }
    /// Datagrams dropped because they did not open (wrong key or cluster id,
    /// tampered, replayed), did not decode, or would have inflated past 16
    /// times their size.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
    /// Datagrams that opened with a previous key of the keyring, not the
    /// current one: some peer still seals with it.
    pub fn previous_key(&self) -> u64 {
        self.previous_key.load(Ordering::Relaxed)
    }
    /// Bytes received (UDP payload).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
    /// Bytes sent (UDP payload).
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
    /// Datagrams sent in the compact format (version 2).
    pub fn compact_out(&self) -> u64 {
        self.compact_out.load(Ordering::Relaxed)
    }
    /// `Ack`s with an empty delta, which were not sent.
    pub fn acks_skipped(&self) -> u64 {
        self.acks_skipped.load(Ordering::Relaxed)
    }
    /// Reset frames sent: a peer named by hash a node this one does not
    /// hold (after this node restarted, typically), and was asked for
    /// full ids. Such a message is not counted as rejected.
    pub fn resets_sent(&self) -> u64 {
        self.resets_sent.load(Ordering::Relaxed)
    }
}

/// A chitchat [`Transport`] over UDP that seals every datagram.
pub struct SealedTransport {
    keys: Arc<Keyring>,
    cluster_id: String,
    stats: Arc<TransportStats>,
}

impl std::fmt::Debug for SealedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedTransport").field("cluster_id", &self.cluster_id).finish_non_exhaustive()
    }
}

impl SealedTransport {
    /// A transport for `cluster_id` under `keys` (as they are when each
    /// datagram goes or comes: [`Keyring::set`] applies live), counting
    /// into `stats`.
    pub fn new(keys: &Arc<Keyring>, cluster_id: &str, stats: Arc<TransportStats>) -> Self {
        Self { keys: Arc::clone(keys), cluster_id: cluster_id.to_owned(), stats }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("cannot bind the gossip socket {listen}/udp"))?;
        Ok(Box::new(SealedSocket {
            socket,
            sealer: Sealer::new(&self.keys, &self.cluster_id),
            inbound: Inbound::new(&self.keys, &self.cluster_id, Arc::clone(&self.stats)),
            stats: Arc::clone(&self.stats),
            buf_send: Vec::new(),
            buf_compact: Vec::new(),
            buf_recv: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            next_id: 0,
        }))
    }
}

/// A message being put back together.
struct Partial {
    format: Format,
    id: u32,
    parts: Vec<Option<Vec<u8>>>,
    missing: usize,
}

/// The receiving half, without the socket: opens each datagram, puts
/// fragments back together and decodes chitchat's message. Everything a
/// peer's bytes reach is here, so the fuzz targets drive it directly
/// ([`crate::check`]).
pub(crate) struct Inbound {
    opener: Opener,
    cluster_id: Box<str>,
    stats: Arc<TransportStats>,
    partial: HashMap<SocketAddr, Partial>,
    /// What each peer heard from reads, and the ids it holds.
    peers: HashMap<SocketAddr, Peer>,
    /// Ids sent or received in compact messages, by hash.
    ids: Ids,
    /// Peers owed a reset frame: they named an id this node does not hold.
    resets: Vec<SocketAddr>,
}

/// What a node knows of a peer it heard from.
#[derive(Default)]
struct Peer {
    reads_compact: bool,
    known: Known,
}

impl Inbound {
    pub(crate) fn new(keys: &Arc<Keyring>, cluster_id: &str, stats: Arc<TransportStats>) -> Self {
        Self {
            opener: Opener::new(keys, cluster_id),
            cluster_id: cluster_id.into(),
            stats,
            partial: HashMap::new(),
            peers: HashMap::new(),
            ids: Ids::default(),
            resets: Vec::new(),
        }
    }

    fn peer(&mut self, addr: SocketAddr) -> &mut Peer {
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&addr) {
            self.peers.clear();
        }
        self.peers.entry(addr).or_default()
    }

    /// The message `datagram` from `from` carries or completes, if any;
    /// counts it (and counts it rejected when it does not open or decode).
    pub(crate) fn receive(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<ChitchatMessage> {
        self.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(datagram.len() as u64, Ordering::Relaxed);
        let opened = match self.opener.open(datagram) {
            Ok(opened) => {
                if opened.previous_key {
                    self.stats.previous_key.fetch_add(1, Ordering::Relaxed);
                }
                opened
            }
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(from = %from, error = %e, "gossip datagram rejected");
                return None;
            }
        };
        let peer = self.peer(from);
        peer.reads_compact = opened.reads_compact;
        if !opened.reads_compact {
            // A node of an earlier release (again) at this address.
            peer.known.clear();
        }
        let frame = opened.payload;
        // A whole message is decoded where it lies; fragments are collected.
        let whole;
        let expanded;
        let (message, wire_len) = match (opened.format, frame.first()) {
            (Format::Chitchat, Some(&WHOLE)) => (&frame[1..], frame.len() - 1),
            (Format::Chitchat, _) => {
                whole = self.reassemble(from, Format::Chitchat, &frame)?;
                (&whole[..], whole.len())
            }
            (Format::Compact, Some(&COMPACT_RESET)) => {
                self.peer(from).known.clear();
                return None;
            }
            (Format::Compact, first) => {
                let compact = if first == Some(&COMPACT_FRAGMENT) {
                    whole = self.reassemble(from, Format::Compact, &frame)?;
                    &whole[..]
                } else {
                    &frame[..]
                };
                expanded = self.expand(from, compact)?;
                (&expanded[..], compact.len())
            }
        };
        // The bound is on what came over the wire: the compact encoding
        // only shortens the digest, never the delta.
        let limit = MIN_INFLATED.max(MAX_INFLATION * wire_len);
        match inflated_len(message) {
            Some(n) if n <= limit => {}
            n => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(from = %from, bytes = message.len(), inflated = ?n, limit,
                    "gossip message from a key holder would inflate too far (or is not chitchat's)");
                return None;
            }
        }
        match ChitchatMessage::deserialize(&mut &message[..]) {
            Ok(message) => Some(message),
            Err(e) => {
                // Authentic but undecodable: a node of another version.
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(from = %from, error = %e, "gossip message from a key holder does not decode");
                None
            }
        }
    }

    /// chitchat's bytes for the compact message `compact` from `from`.
    fn expand(&mut self, from: SocketAddr, compact: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let Self { cluster_id, peers, ids, .. } = self;
        let known = &mut peers.entry(from).or_default().known;
        match compact::decode(compact, cluster_id, ids, known, &mut out) {
            Ok(()) => Some(out),
            Err(DecodeError::UnknownId) => {
                // It restarted, or this node's table started over: not an
                // error, the sender is asked for full ids.
                tracing::debug!(from = %from, "gossip message names a node this one does not hold");
                if !self.resets.contains(&from) {
                    self.resets.push(from);
                }
                None
            }
            Err(e) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(from = %from, error = ?e, "compact gossip message from a key holder does not decode");
                None
            }
        }
    }

    /// The peers owed a reset frame since the last call.
    fn take_resets(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.resets)
    }

    /// Ids held, and peers known.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn tables(&self) -> (usize, usize) {
        (self.ids.len(), self.peers.len())
    }

    /// The message a fragment (of a message in `format`) completes, if it does.
    fn reassemble(&mut self, from: SocketAddr, format: Format, frame: &[u8]) -> Option<Vec<u8>> {
        let tag = match format {
            Format::Chitchat => FRAGMENT,
            Format::Compact => COMPACT_FRAGMENT,
        };
        match frame.first().copied() {
            Some(t) if t == tag && frame.len() >= FRAGMENT_HEADER => {
                let id = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]);
                let (index, count) = (frame[5] as usize, frame[6] as usize);
                if !(2..=MAX_FRAGMENTS).contains(&count) || index >= count {
                    return None;
                }
                if self.partial.len() >= MAX_PARTIAL && !self.partial.contains_key(&from) {
                    self.partial.clear();
                }
                let entry = self.partial.entry(from).or_insert_with(|| Partial {
                    format,
                    id,
                    parts: vec![None; count],
                    missing: count,
                });
                if entry.id != id || entry.parts.len() != count || entry.format != format {
                    // A newer message started: the older one is lost (gossip repeats).
                    *entry = Partial { format, id, parts: vec![None; count], missing: count };
                }
                if entry.parts[index].is_none() {
                    entry.parts[index] = Some(frame[FRAGMENT_HEADER..].to_vec());
                    entry.missing -= 1;
                }
                if entry.missing > 0 {
                    return None;
                }
                let whole = self.partial.remove(&from)?;
                Some(whole.parts.into_iter().flatten().flatten().collect())
            }
            _ => None,
        }
    }

    /// Messages half received, and the bytes their fragments hold.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn buffered(&self) -> (usize, usize) {
        let bytes = self.partial.values().flat_map(|p| p.parts.iter().flatten()).map(Vec::len).sum();
        (self.partial.len(), bytes)
    }

    /// The most fragments a half-received message has room for.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn widest_partial(&self) -> usize {
        self.partial.values().map(|p| p.parts.len()).max().unwrap_or(0)
    }
}

/// The bytes chitchat's decoding of `message` inflates its blocks to,
/// read from chitchat 0.11's layout (protocol 0) without inflating them:
/// an uncompressed block counts its length, a compressed one the sizes its
/// zstd frames declare (or [`MAX_BLOCK`], which is what chitchat inflates
/// it into, when a frame declares none or cannot be read). `None` when the
/// layout cannot be followed: such a message is not taken either.
fn inflated_len(message: &[u8]) -> Option<usize> {
    let mut r = Reader(message);
    r.take(3)?; // magic number and protocol version: chitchat checks them
    match r.u8()? {
        // Syn (a digest and the cluster id), BadCluster: no blocks.
        0 | 3 => Some(0),
        // SynAck: a digest, then a delta.
        1 => {
            for _ in 0..r.u16()? {
                let node_id = r.u16()?;
                r.take(usize::from(node_id) + 8)?; // node id, generation
                match r.u8()? {
                    4 => r.take(4 + 2)?,
                    6 => r.take(16 + 2)?,
                    _ => return None,
                };
                r.take(24)?; // heartbeat, last GC version, max version
            }
            blocks(&mut r)
        }
        // Ack: a delta.
        2 => blocks(&mut r),
        _ => None,
    }
}

/// A delta's blocks, until the end tag.
fn blocks(r: &mut Reader<'_>) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let block = match r.u8()? {
            0 => return Some(total),
            1 => {
                let len = r.u16()?;
                zstd_declared(r.take(usize::from(len))?)
            }
            2 => {
                let len = r.u16()?;
                r.take(usize::from(len))?.len()
            }
            _ => return None,
        };
        total = total.saturating_add(block);
    }
}

/// What a compressed block inflates to: its frames' declared sizes, at
/// most [`MAX_BLOCK`].
fn zstd_declared(mut frames: &[u8]) -> usize {
    use zstd::zstd_safe::{find_frame_compressed_size, get_frame_content_size};
    let mut total = 0usize;
    while !frames.is_empty() && total < MAX_BLOCK {
        let size = match get_frame_content_size(frames) {
            Ok(Some(n)) => usize::try_from(n).unwrap_or(MAX_BLOCK),
            _ => MAX_BLOCK,
        };
        total = total.saturating_add(size);
        match find_frame_compressed_size(frames) {
            Ok(n) if n > 0 && n <= frames.len() => frames = &frames[n..],
            _ => return MAX_BLOCK,
        }
    }
    total.min(MAX_BLOCK)
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    sealer: Sealer,
    inbound: Inbound,
    stats: Arc<TransportStats>,
    buf_send: Vec<u8>,
    buf_compact: Vec<u8>,
    buf_recv: Box<[u8]>,
    next_id: u32,
}

impl SealedSocket {
    async fn send_sealed(&self, to: SocketAddr, format: Format, frame: &[u8]) -> anyhow::Result<()> {
        let datagram = self.sealer.seal_as(format, frame);
        match self.socket.send_to(&datagram, to).await {
            Ok(n) => {
                self.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                if format == Format::Compact {
                    self.stats.compact_out.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            // A peer that is gone (ICMP unreachable reported on this
            // socket) or a full buffer loses one datagram; gossip repeats.
            Err(e) if is_transient(&e) => {
                tracing::debug!(to = %to, error = %e, "gossip datagram not sent");
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("cannot send gossip to {to}")),
        }
    }
}

impl SealedSocket {
    /// `whole` (a frame holding the message) in one datagram if it fits,
    /// else `body` (the message alone) cut into fragments tagged `tag`.
    async fn send_frames(
        &mut self,
        to: SocketAddr,
        format: Format,
        whole: &[u8],
        body: &[u8],
        tag: u8,
    ) -> anyhow::Result<()> {
        if whole.len() + OVERHEAD <= MAX_DATAGRAM {
            return self.send_sealed(to, format, whole).await;
        }
        self.next_id = self.next_id.wrapping_add(1);
        let chunks: Vec<&[u8]> = body.chunks(FRAGMENT_PAYLOAD).collect();
        if chunks.len() > MAX_FRAGMENTS {
            // chitchat stays under 65 507 bytes: never so. A receiver
            // would refuse it, so it is not sent.
            tracing::warn!(to = %to, bytes = whole.len(), "gossip message too large to send");
            return Ok(());
        }
        let count = chunks.len() as u8;
        let mut frame = Vec::with_capacity(MAX_DATAGRAM);
        for (index, chunk) in chunks.iter().enumerate() {
            frame.clear();
            frame.push(tag);
            frame.extend_from_slice(&self.next_id.to_be_bytes());
            frame.extend_from_slice(&[index as u8, count]);
            frame.extend_from_slice(chunk);
            self.send_sealed(to, format, &frame).await?;
        }
        Ok(())
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionReset | WouldBlock | OutOfMemory)
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut buf = std::mem::take(&mut self.buf_send);
        buf.clear();
        buf.push(WHOLE);
        message.serialize(&mut buf);
        if compact::is_empty_ack(&buf[1..]) {
            self.stats.acks_skipped.fetch_add(1, Ordering::Relaxed);
            self.buf_send = buf;
            return Ok(());
        }
        let mut cbuf = std::mem::take(&mut self.buf_compact);
        cbuf.clear();
        let Inbound { peers, ids, cluster_id, .. } = &mut self.inbound;
        // The compact encoding to a peer that reads it, unless it would be
        // longer (ids in full with huge numbers).
        let compact = peers.get(&to).is_some_and(|p| {
            p.reads_compact && compact::encode(&buf[1..], cluster_id, &p.known, ids, &mut cbuf).is_some()
        }) && cbuf.len() < buf.len();
        let result = if compact {
            self.send_frames(to, Format::Compact, &cbuf, &cbuf, COMPACT_FRAGMENT).await
        } else {
            self.send_frames(to, Format::Chitchat, &buf, &buf[1..], FRAGMENT).await
        };
        self.buf_send = buf;
        self.buf_compact = cbuf;
        result
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.buf_recv).await {
                Ok(x) => x,
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e).context("the gossip socket failed"),
            };
            let message = self.inbound.receive(from, &self.buf_recv[..n]);
            for peer in self.inbound.take_resets() {
                self.stats.resets_sent.fetch_add(1, Ordering::Relaxed);
                self.send_sealed(peer, Format::Compact, &[COMPACT_RESET]).await?;
            }
            if let Some(message) = message {
                return Ok((from, message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Arc<Keyring> {
        Arc::new(Keyring::new(crate::ClusterKey::from_bytes(&[b; 32]).unwrap(), Vec::new()))
    }

    /// A fragment frame: `id`, `index` of `count`, then `body`.
    fn frag(id: u32, index: u8, count: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![FRAGMENT];
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&[index, count]);
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn fragments_reassemble_in_any_order_and_a_newer_message_replaces_an_older() {
        let mut s = Inbound::new(&key(1), "c", Arc::default());
        let from: SocketAddr = "127.0.0.9:1".parse().unwrap();
        assert_eq!(s.reassemble(from, Format::Chitchat, &frag(7, 1, 2, b"world")), None);
        assert_eq!(
            s.reassemble(from, Format::Chitchat, &frag(7, 0, 2, b"hello ")),
            Some(b"hello world".to_vec())
        );
        // Message 8's first half is lost when 9 starts.
        assert_eq!(s.reassemble(from, Format::Chitchat, &frag(8, 0, 2, b"old")), None);
        assert_eq!(s.reassemble(from, Format::Chitchat, &frag(9, 0, 2, b"new ")), None);
        assert_eq!(s.reassemble(from, Format::Chitchat, &frag(9, 1, 2, b"one")), Some(b"new one".to_vec()));
        // Nonsense headers are ignored.
        assert_eq!(s.reassemble(from, Format::Chitchat, &frag(1, 2, 2, b"x")), None);
        assert_eq!(s.reassemble(from, Format::Chitchat, &[FRAGMENT, 0]), None);
        assert_eq!(s.reassemble(from, Format::Chitchat, &[9]), None);
        assert_eq!(s.reassemble(from, Format::Chitchat, &[WHOLE, b'a']), None, "not a fragment");
        assert_eq!(s.buffered(), (0, 0));
    }

    #[test]
    fn a_fragment_count_past_what_a_message_needs_keeps_nothing() {
        // A 7-byte frame claiming 255 fragments used to make a table of 255
        // slots: an allocation sized by a byte of the input.
        let mut s = Inbound::new(&key(1), "c", Arc::default());
        let from: SocketAddr = "127.0.0.9:1".parse().unwrap();
        for count in [3, 255] {
            assert_eq!(s.reassemble(from, Format::Chitchat, &frag(1, 0, count, b"")), None);
            assert_eq!(s.reassemble(from, Format::Chitchat, &frag(1, count - 1, count, b"x")), None);
        }
        assert_eq!(s.buffered(), (0, 0));
        assert_eq!(s.widest_partial(), 0);
        // Two still go through.
        assert_eq!(s.reassemble(from, Format::Chitchat, &frag(2, 0, 2, b"a")), None);
        assert_eq!(s.widest_partial(), 2);
        assert_eq!(s.reassemble(from, Format::Chitchat, &frag(2, 1, 2, b"b")), Some(b"ab".to_vec()));
    }

    /// chitchat's message header (magic number, protocol 0) and `kind`.
    fn header(kind: u8) -> Vec<u8> {
        let mut m = 45_139u16.to_le_bytes().to_vec();
        m.extend_from_slice(&[0, kind]);
        m
    }

    /// Found by the cluster_datagram fuzz target's allocation limit, with
    /// an input built for it: an Ack of 185 compressed blocks of 19 bytes,
    /// each a zstd frame of 64 KiB of zeros, which chitchat inflated into
    /// 12 MiB from a 4 KiB datagram.
    #[test]
    fn a_message_that_would_inflate_far_past_its_size_is_refused_before_chitchat() {
        let zeros = zstd::bulk::compress(&[0u8; MAX_BLOCK], 19).unwrap();
        assert!(zeros.len() < 32, "{} bytes", zeros.len());
        let mut ack = header(2);
        for _ in 0..185 {
            ack.push(1);
            ack.extend_from_slice(&(zeros.len() as u16).to_le_bytes());
            ack.extend_from_slice(&zeros);
        }
        ack.push(0);
        assert_eq!(inflated_len(&ack), Some(185 * MAX_BLOCK));
        let stats = Arc::new(TransportStats::default());
        let mut inbound = Inbound::new(&key(1), "c", Arc::clone(&stats));
        let sealer = Sealer::new(&key(1), "c");
        let from: SocketAddr = "127.0.0.9:1".parse().unwrap();
        let mut frame = vec![WHOLE];
        frame.extend_from_slice(&ack);
        assert_eq!(inbound.receive(from, &sealer.seal(&frame)), None);
        assert_eq!(stats.rejected(), 1);

        // A few such blocks are within bounds, and chitchat decodes (and
        // refuses) them as before; so is an empty delta.
        let mut small = header(2);
        small.extend_from_slice(&[1, zeros.len() as u8, 0]);
        small.extend_from_slice(&zeros);
        small.push(0);
        assert_eq!(inflated_len(&small), Some(MAX_BLOCK));
        frame.truncate(1);
        frame.extend_from_slice(&small);
        assert_eq!(inbound.receive(from, &sealer.seal(&frame)), None);
        assert_eq!(stats.rejected(), 2, "zeros are no delta op");
        let mut empty = header(2);
        empty.push(0);
        frame.truncate(1);
        frame.extend_from_slice(&empty);
        assert!(inbound.receive(from, &sealer.seal(&frame)).is_some());
        // A layout that cannot be followed is not taken either.
        assert_eq!(inflated_len(&header(9)), None);
        assert_eq!(inflated_len(&[header(2), vec![7]].concat()), None);
        assert_eq!(inflated_len(&[header(2), vec![2, 9, 0, 1]].concat()), None, "a block past the end");
    }

    #[test]
    fn what_chitchat_sends_is_within_bounds_even_a_full_datagram_of_records() {
        // Two nodes, one with enough records that its deltas fill whole
        // datagrams with compressed blocks; the other learns every one,
        // and nothing is refused.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, spawn_chitchat};
            let stats = [Arc::new(TransportStats::default()), Arc::new(TransportStats::default())];
            let addrs: Vec<SocketAddr> = (0..2)
                .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
                .collect();
            let records: Vec<(String, String)> = (0..4000u64)
                .map(|i| {
                    let k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    (crate::gossip_key(k), format!("h{}.0.{}.0", i % 4, i + 1))
                })
                .collect();
            let mut handles = Vec::new();
            for i in 0..2 {
                let transport = SealedTransport::new(&key(1), "c", Arc::clone(&stats[i]));
                let config = ChitchatConfig {
                    chitchat_id: ChitchatId::new(format!("node-{i}"), 1, addrs[i]),
                    cluster_id: "c".into(),
                    gossip_interval: std::time::Duration::from_millis(20),
                    listen_addr: addrs[i],
                    seed_nodes: vec![addrs[1 - i].to_string()],
                    failure_detector_config: FailureDetectorConfig::default(),
                    marked_for_deletion_grace_period: std::time::Duration::from_secs(3600),
                    catchup_callback: None,
                    extra_liveness_predicate: None,
                };
                let kvs = if i == 0 { records.clone() } else { Vec::new() };
                handles.push(spawn_chitchat(config, kvs, &transport).await.unwrap());
            }
            let source = ChitchatId::new("node-0", 1, addrs[0]);
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let learned = handles[1]
                    .with_chitchat(|cc| cc.node_state(&source).map_or(0, |n| n.key_values().count()))
                    .await;
                if learned >= records.len() {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{learned} of {} records", records.len());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!((stats[0].rejected(), stats[1].rejected()), (0, 0));
            assert!(stats[0].bytes_out() > 65_507, "whole datagrams were sent");
        });
    }

    #[test]
    fn a_message_too_big_for_one_sealed_datagram_arrives_whole_and_sealed() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (a_stats, b_stats) =
                (Arc::new(TransportStats::default()), Arc::new(TransportStats::default()));
            let a = SealedTransport::new(&key(1), "c", Arc::clone(&a_stats));
            let b = SealedTransport::new(&key(1), "c", Arc::clone(&b_stats));
            let mut tx = a.open("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let b_addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let mut rx = b.open(b_addr).await.unwrap();
            // chitchat fills a message up to 65 507 bytes; sealing adds 41.
            for len in [10, MAX_DATAGRAM - 20] {
                let message =
                    || ChitchatMessage::Syn { cluster_id: "x".repeat(len), digest: Default::default() };
                let out = a_stats.datagrams_out();
                tx.send(b_addr, message()).await.unwrap();
                let (_, got) = rx.recv().await.unwrap();
                assert_eq!(got, message());
                let datagrams = a_stats.datagrams_out() - out;
                assert_eq!(datagrams, if len > FRAGMENT_PAYLOAD { 2 } else { 1 }, "{len} bytes");
            }
            assert_eq!(b_stats.rejected(), 0);
        });
    }

    #[test]
    fn a_previous_key_is_counted_and_a_removed_one_rejected() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let b_stats = Arc::new(TransportStats::default());
            let b_keys = Arc::new(Keyring::new(
                crate::ClusterKey::from_bytes(&[2; 32]).unwrap(),
                vec![crate::ClusterKey::from_bytes(&[1; 32]).unwrap()],
            ));
            let a = SealedTransport::new(&key(1), "c", Arc::default());
            let b = SealedTransport::new(&b_keys, "c", Arc::clone(&b_stats));
            let mut tx = a.open("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let b_addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let mut rx = b.open(b_addr).await.unwrap();
            let message =
                |id: &str| ChitchatMessage::Syn { cluster_id: id.into(), digest: Default::default() };
            tx.send(b_addr, message("one")).await.unwrap();
            assert_eq!(rx.recv().await.unwrap().1, message("one"));
            assert_eq!((b_stats.previous_key(), b_stats.rejected()), (1, 0));
            // Key 1 dropped while the socket runs: refused from then on.
            assert!(b_keys.set(crate::ClusterKey::from_bytes(&[2; 32]).unwrap(), Vec::new()));
            tx.send(b_addr, message("two")).await.unwrap();
            let c = SealedTransport::new(&key(2), "c", Arc::default());
            let mut tx2 = c.open("127.0.0.1:0".parse().unwrap()).await.unwrap();
            tx2.send(b_addr, message("three")).await.unwrap();
            // "two" was dropped; "three", under the current key, is next.
            assert_eq!(rx.recv().await.unwrap().1, message("three"));
            assert_eq!((b_stats.previous_key(), b_stats.rejected()), (1, 1));
        });
    }

    /// Two chitchat nodes over sealed transports, each the other's seed.
    async fn pair(
        stats: &[Arc<TransportStats>; 2],
        addrs: &[SocketAddr; 2],
        generation: [u64; 2],
    ) -> Vec<chitchat::ChitchatHandle> {
        let mut handles = Vec::new();
        for i in 0..2 {
            handles.push(node(&stats[i], addrs[i], addrs[1 - i], generation[i]).await);
        }
        handles
    }

    /// A chitchat node gossiping every 20 ms, holding `k<port> = v<generation>`.
    async fn node(
        stats: &Arc<TransportStats>,
        addr: SocketAddr,
        seed: SocketAddr,
        generation: u64,
    ) -> chitchat::ChitchatHandle {
        use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, spawn_chitchat};
        let transport = SealedTransport::new(&key(1), "c", Arc::clone(stats));
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(format!("node-{}", addr.port()), generation, addr),
            cluster_id: "c".into(),
            gossip_interval: std::time::Duration::from_millis(20),
            listen_addr: addr,
            seed_nodes: vec![seed.to_string()],
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: std::time::Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let kvs = vec![(format!("k{}", addr.port()), format!("v{generation}"))];
        spawn_chitchat(config, kvs, &transport).await.unwrap()
    }

    /// Waits until `handle` holds `key = value` of the node `id`.
    async fn learns(handle: &chitchat::ChitchatHandle, id: &chitchat::ChitchatId, key: &str, value: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = handle
                .with_chitchat(|cc| cc.node_state(id).and_then(|n| n.get(key).map(str::to_owned)))
                .await;
            if got.as_deref() == Some(value) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{key} of {id:?}: {got:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn addrs() -> [SocketAddr; 2] {
        [0, 1].map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap())
    }

    #[test]
    fn nodes_of_this_release_gossip_compact_skip_empty_acks_and_recover_from_a_restart() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let stats = [Arc::new(TransportStats::default()), Arc::new(TransportStats::default())];
            let addrs = addrs();
            let handles = pair(&stats, &addrs, [1, 1]).await;
            let ids = addrs.map(|a| chitchat::ChitchatId::new(format!("node-{}", a.port()), 1, a));
            learns(&handles[0], &ids[1], &format!("k{}", addrs[1].port()), "v1").await;
            learns(&handles[1], &ids[0], &format!("k{}", addrs[0].port()), "v1").await;
            // Quiet: after a few rounds, ids go by hash and empty Acks stay home.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let (bytes, datagrams) = (stats[0].bytes_out(), stats[0].datagrams_out());
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            let mean = (stats[0].bytes_out() - bytes) / (stats[0].datagrams_out() - datagrams).max(1);
            // chitchat's Syn of two entries, sealed: 4 + 2 + 2 * 52 + 3 + 42
            // = 155 bytes; compact by hash: 2 + 2 * 15 + 42 = 74 or so.
            assert!(mean < 90, "{mean} bytes a datagram");
            assert!(stats[0].compact_out() > 0 && stats[0].acks_skipped() > 0);
            assert_eq!((stats[0].rejected(), stats[1].rejected()), (0, 0));
            assert_eq!(stats[0].resets_sent() + stats[1].resets_sent(), 0);

            // Node 1 restarts (a new generation, the same address). Node 0
            // names ids by hash that the new node 1 does not hold: it is
            // asked for full ids, and the two converge again.
            handles[1].abort();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let restarted = Arc::new(TransportStats::default());
            let again = node(&restarted, addrs[1], addrs[0], 2).await;
            let new_id = chitchat::ChitchatId::new(format!("node-{}", addrs[1].port()), 2, addrs[1]);
            learns(&again, &ids[0], &format!("k{}", addrs[0].port()), "v1").await;
            learns(&handles[0], &new_id, &format!("k{}", addrs[1].port()), "v2").await;
            assert!(restarted.resets_sent() > 0, "the restarted node asked for full ids");
            assert_eq!((stats[0].rejected(), restarted.rejected()), (0, 0));
        });
    }

    /// A datagram as a node of an earlier release seals it (version 1, the
    /// counter's top bit clear).
    fn sealed_by_an_older_node(counter: u64, frame: &[u8]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let mut nonce = [0x33u8; 24];
        nonce[16..].copy_from_slice(&counter.to_be_bytes());
        let cipher = chacha20poly1305::XChaCha20Poly1305::new(&[1; 32].into());
        let sealed = cipher
            .encrypt(chacha20poly1305::XNonce::from_slice(&nonce), Payload { msg: frame, aad: b"c" })
            .unwrap();
        [&[1u8][..], &nonce, &sealed].concat()
    }

    #[test]
    fn an_older_node_is_sent_chitchat_s_encoding_and_a_newer_one_the_compact() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let stats = Arc::new(TransportStats::default());
            let t = SealedTransport::new(&key(1), "c", Arc::clone(&stats));
            let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let mut socket = t.open(addr).await.unwrap();
            let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let peer_addr = peer.local_addr().unwrap();
            let syn = || ChitchatMessage::Syn { cluster_id: "c".into(), digest: Default::default() };
            let syn_ack =
                || ChitchatMessage::SynAck { digest: Default::default(), delta: Default::default() };
            let mut frame = vec![WHOLE];
            syn().serialize(&mut frame);
            let mut buf = vec![0u8; 2048];
            let newer = Sealer::new(&key(1), "c");
            // An older node, a newer one, then an older one again at the
            // same address (a node rolled back): each is answered in what
            // it reads.
            for (i, (datagram, expect)) in [
                (sealed_by_an_older_node(0, &frame), 1u8),
                (newer.seal(&frame), 2),
                (sealed_by_an_older_node(1, &frame), 1),
            ]
            .into_iter()
            .enumerate()
            {
                peer.send_to(&datagram, addr).await.unwrap();
                let (from, got) = socket.recv().await.unwrap();
                assert_eq!((from, got), (peer_addr, syn()), "datagram {i}");
                socket.send(peer_addr, syn_ack()).await.unwrap();
                let n = peer.recv(&mut buf).await.unwrap();
                assert_eq!(buf[0], expect, "datagram {i}");
                if expect == 1 {
                    // What an older node's opener reads: chitchat's SynAck, whole.
                    let opened = Opener::new(&key(1), "c").open(&buf[..n]).unwrap();
                    assert_eq!(opened.payload[0], WHOLE);
                    assert_eq!(ChitchatMessage::deserialize(&mut &opened.payload[1..]).unwrap(), syn_ack());
                }
            }
            // An empty Ack goes to nobody.
            socket.send(peer_addr, ChitchatMessage::Ack { delta: Default::default() }).await.unwrap();
            assert_eq!(stats.acks_skipped(), 1);
            assert_eq!(stats.datagrams_out(), 3);
            assert_eq!(stats.rejected(), 0);
        });
    }
}
