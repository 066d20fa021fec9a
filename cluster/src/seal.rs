//! Sealed datagrams: every gossip datagram is encrypted and authenticated
//! with the cluster key (XChaCha20-Poly1305), bound to the cluster id, and
//! numbered so a replay is refused.
//!
//! A node holds a [`Keyring`]: the current key, which seals and is tried
//! first, and previous keys, which still open (a rotation in progress,
//! as memberlist and Serf do it). The keyring is swapped whole, live; a
//! key no longer in it opens nothing any more.
//!
//! Layout: `version (1) | nonce (24) | ciphertext | tag (16)`: 41 bytes of
//! overhead. The nonce is a 16-byte prefix drawn from the OS at start (one
//! per sender incarnation) and a 64-bit counter, so two nodes, or one node
//! restarted, never reuse a nonce under the same key.
//!
//! Two versions, one per [`Format`] of the payload: 1, chitchat's own
//! encoding (what every release reads; the cluster id is the associated
//! data), and 2, the compact (`compact.rs`) one (the version byte is
//! associated data too, so a datagram cannot be passed off as the other
//! version). A node that reads version 2 sets the counter's top bit in
//! every nonce it seals (nodes of earlier releases count from 0 and never
//! reach it), so a receiver learns from any datagram whether its sender
//! reads the compact format ([`Opened::reads_compact`]): a new node sends
//! version 2 only to peers that showed they read it, and a cluster of old
//! and new nodes keeps talking during a rolling upgrade. Both versions
//! share the prefix and counter: no nonce repeats across them. The receiver keeps,
//! per prefix, the highest counter seen and a 64-wide window below it (the
//! IPsec/WireGuard scheme): a datagram outside or already in the window is
//! a replay. Replay state changes only after a datagram authenticates, so
//! forged traffic cannot disturb it. The windows are the opener's, by
//! sender, whatever key opened a datagram: a sender keeps its prefix and
//! counter when it changes keys, so a datagram it sealed under one key and
//! replayed after the switch is still a replay, and a keyring swap loses
//! no window.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use chacha20poly1305::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng, Payload};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use parking_lot::Mutex;

/// Bytes in a cluster key.
pub const KEY_LEN: usize = 32;
/// The version of a datagram whose payload is chitchat's encoding.
const VERSION_CHITCHAT: u8 = 1;
/// The version of a datagram whose payload is the compact encoding.
const VERSION_COMPACT: u8 = 2;
/// Set in the counter of every nonce a node that reads version 2 seals.
const READS_COMPACT: u64 = 1 << 63;
const NONCE_LEN: usize = 24;
const PREFIX_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its payload.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Senders whose replay windows are kept; the least recently heard goes first.
const MAX_SENDERS: usize = 4096;
const WINDOW: u64 = 64;

/// The shared secret every node of a cluster holds (`key_file`, and
/// `previous_key_files` during a rotation).
#[derive(Clone)]
pub struct ClusterKey([u8; KEY_LEN]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// A key file that is not 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exactly {KEY_LEN} random bytes, not {0}")]
pub struct KeyError(pub usize);

impl ClusterKey {
    /// The key from a key file's bytes.
    ///
    /// # Errors
    /// When `bytes` is not exactly [`KEY_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        <[u8; KEY_LEN]>::try_from(bytes).map(Self).map_err(|_| KeyError(bytes.len()))
    }
}

/// The keys of one node, shared by its [`Sealer`] and [`Opener`]: the
/// current key, which seals and is tried first, and the previous keys,
/// which only open. [`Keyring::set`] swaps them whole while gossip runs.
#[derive(Debug)]
pub struct Keyring {
    keys: ArcSwap<Keys>,
}

/// One generation of a keyring: the current key first, then the previous
/// ones, each with its cipher made once.
struct Keys {
    raw: Box<[ClusterKey]>,
    ciphers: Box<[XChaCha20Poly1305]>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").field("previous", &(self.raw.len() - 1)).finish()
    }
}

impl Keys {
    fn new(current: ClusterKey, previous: Vec<ClusterKey>) -> Self {
        let mut raw: Vec<ClusterKey> = Vec::with_capacity(1 + previous.len());
        raw.push(current);
        // A key listed twice would only cost a second tag check per
        // datagram that opens under neither.
        for key in previous {
            if !raw.iter().any(|k| k.0 == key.0) {
                raw.push(key);
            }
        }
        let ciphers = raw.iter().map(|k| XChaCha20Poly1305::new(&k.0.into())).collect();
        Self { raw: raw.into(), ciphers }
    }

    fn current(&self) -> &XChaCha20Poly1305 {
        &self.ciphers[0]
    }
}

impl Keyring {
    /// `current` seals and opens; each of `previous` only opens. A previous
    /// key equal to the current one or to an earlier one is left out.
    pub fn new(current: ClusterKey, previous: Vec<ClusterKey>) -> Self {
        Self { keys: ArcSwap::from_pointee(Keys::new(current, previous)) }
    }

    /// Takes these keys from the next datagram on: the next one sealed is
    /// sealed with `current`, and a key not given here opens nothing any
    /// more. Whether anything changed (the same keys again is a no-op).
    ///
    /// # Concurrency note
    /// A datagram being sealed or opened while this runs uses the keys it
    /// loaded; replay windows belong to the [`Opener`] and are untouched.
    /// Two calls at once: the last to store wins (the binary reloads one
    /// at a time).
    pub fn set(&self, current: ClusterKey, previous: Vec<ClusterKey>) -> bool {
        let keys = Keys::new(current, previous);
        let old = self.keys.load();
        let same =
            old.raw.len() == keys.raw.len() && old.raw.iter().zip(keys.raw.iter()).all(|(a, b)| a.0 == b.0);
        if !same {
            self.keys.store(Arc::new(keys));
        }
        !same
    }

    /// How many previous keys open datagrams (duplicates left out).
    pub fn previous_keys(&self) -> usize {
        self.keys.load().raw.len() - 1
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a sealed empty payload.
    #[error("too short to be sealed")]
    TooShort,
    /// A layout this node does not speak.
    #[error("unknown datagram version {0}")]
    Version(u8),
    /// It does not authenticate: another key, another cluster id, or tampered.
    #[error("does not authenticate (wrong key or cluster id, or altered)")]
    Forged,
    /// Authentic, but seen before (or older than the replay window).
    #[error("replayed")]
    Replayed,
}

/// What a sealed payload holds, told by the datagram's version byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// chitchat's own encoding (version 1, which every release reads).
    Chitchat,
    /// The compact (`compact.rs`) encoding (version 2).
    Compact,
}

impl Format {
    fn version(self) -> u8 {
        match self {
            Self::Chitchat => VERSION_CHITCHAT,
            Self::Compact => VERSION_COMPACT,
        }
    }
}

/// Seals outgoing datagrams with the keyring's current key. One per node;
/// cheap to share.
pub struct Sealer {
    keys: Arc<Keyring>,
    aad: Box<[u8]>,
    aad_compact: Box<[u8]>,
    prefix: [u8; PREFIX_LEN],
    counter: AtomicU64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("sent", &self.counter.load(Ordering::Relaxed)).finish()
    }
}

impl Sealer {
    /// A sealer for `cluster_id` under `keys`' current key (whichever it
    /// is when a datagram is sealed), with a fresh random prefix.
    pub fn new(keys: &Arc<Keyring>, cluster_id: &str) -> Self {
        let random = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&random[..PREFIX_LEN]);
        Self {
            keys: Arc::clone(keys),
            aad: cluster_id.as_bytes().into(),
            aad_compact: compact_aad(cluster_id),
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// `payload` (chitchat's encoding), sealed with the current key.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        self.seal_as(Format::Chitchat, payload)
    }

    /// `payload`, in `format`, sealed with the current key.
    pub fn seal_as(&self, format: Format, payload: &[u8]) -> Vec<u8> {
        // The prefix and counter outlive key changes: nonces never repeat
        // under any key, and receivers' replay windows carry on.
        let n = self.counter.fetch_add(1, Ordering::Relaxed) | READS_COMPACT;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..PREFIX_LEN].copy_from_slice(&self.prefix);
        nonce[PREFIX_LEN..].copy_from_slice(&n.to_be_bytes());
        let aad = match format {
            Format::Chitchat => &self.aad,
            Format::Compact => &self.aad_compact,
        };
        let sealed = self
            .keys
            .keys
            .load()
            .current()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: payload, aad })
            // Encryption fails only for payloads over 256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(format.version());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }
}

#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    top: u64,
    seen: u64,
    last_heard: u64,
}

impl ReplayWindow {
    /// Accepts `n` once; refuses it again or when older than the window.
    fn accept(&mut self, n: u64) -> bool {
        if n > self.top {
            let shift = n - self.top;
            self.seen = if shift >= WINDOW { 1 } else { (self.seen << shift) | 1 };
            self.top = n;
            return true;
        }
        let age = self.top - n;
        if age >= WINDOW || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

/// A datagram that opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// What the sender sealed.
    pub payload: Vec<u8>,
    /// Opened with a previous key, not the current one: its sender has not
    /// switched to the current key yet.
    pub previous_key: bool,
    /// What the payload holds (the datagram's version).
    pub format: Format,
    /// Its sender reads the compact format (it sealed a version 2
    /// datagram, or marked its nonce): it may be sent version 2.
    pub reads_compact: bool,
}

/// Version 2's associated data: the version, then the cluster id.
fn compact_aad(cluster_id: &str) -> Box<[u8]> {
    [&[VERSION_COMPACT][..], cluster_id.as_bytes()].concat().into()
}

/// Opens incoming datagrams with the keyring's keys, current first, and
/// refuses replays.
pub struct Opener {
    keys: Arc<Keyring>,
    aad: Box<[u8]>,
    aad_compact: Box<[u8]>,
    windows: Mutex<(HashMap<[u8; PREFIX_LEN], ReplayWindow>, u64)>,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").field("senders", &self.windows.lock().0.len()).finish()
    }
}

impl Opener {
    /// An opener for `cluster_id` under `keys` (whichever they are when a
    /// datagram arrives).
    pub fn new(keys: &Arc<Keyring>, cluster_id: &str) -> Self {
        Self {
            keys: Arc::clone(keys),
            aad: cluster_id.as_bytes().into(),
            aad_compact: compact_aad(cluster_id),
            windows: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// The payload of `datagram` if it authenticates under one of the keys
    /// and is new.
    ///
    /// # Errors
    /// [`OpenError`] says why it was dropped.
    pub fn open(&self, datagram: &[u8]) -> Result<Opened, OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::TooShort);
        }
        let (format, aad) = match datagram[0] {
            VERSION_CHITCHAT => (Format::Chitchat, &self.aad),
            VERSION_COMPACT => (Format::Compact, &self.aad_compact),
            v => return Err(OpenError::Version(v)),
        };
        let nonce = &datagram[1..1 + NONCE_LEN];
        let body = &datagram[1 + NONCE_LEN..];
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let (xnonce, tag) = (XNonce::from_slice(nonce), Tag::from_slice(tag));
        let mut payload = ciphertext.to_vec();
        let keys = self.keys.keys.load();
        // The current key first: the common case is one tag check and one
        // copy, as with a single key. The others only when it fails.
        let mut used = None;
        for (i, cipher) in keys.ciphers.iter().enumerate() {
            if i > 0 {
                // Start again from the ciphertext whatever a failed attempt
                // left in the buffer.
                payload.copy_from_slice(ciphertext);
            }
            if cipher.decrypt_in_place_detached(xnonce, aad, &mut payload, tag).is_ok() {
                used = Some(i);
                break;
            }
        }
        drop(keys);
        let Some(used) = used else { return Err(OpenError::Forged) };
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&nonce[..PREFIX_LEN]);
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&nonce[PREFIX_LEN..]);
        let n = u64::from_be_bytes(counter);

        let mut guard = self.windows.lock();
        let (windows, clock) = &mut *guard;
        *clock += 1;
        let now = *clock;
        if !windows.contains_key(&prefix) && windows.len() >= MAX_SENDERS {
            // Forget the sender heard from least recently (a restarted node's
            // old incarnation, typically).
            if let Some(oldest) = windows.iter().min_by_key(|(_, w)| w.last_heard).map(|(k, _)| *k) {
                windows.remove(&oldest);
            }
        }
        // A new sender's window starts at its first counter, not yet seen.
        let window = windows.entry(prefix).or_insert(ReplayWindow { top: n, seen: 0, last_heard: now });
        window.last_heard = now;
        if window.accept(n) {
            let reads_compact = format == Format::Compact || n & READS_COMPACT != 0;
            Ok(Opened { payload, previous_key: used > 0, format, reads_compact })
        } else {
            Err(OpenError::Replayed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes(&[b; KEY_LEN]).unwrap()
    }

    /// A keyring of the one key `b`.
    fn one(b: u8) -> Arc<Keyring> {
        Arc::new(Keyring::new(key(b), Vec::new()))
    }

    /// A keyring sealing with `current`, opening also `previous`.
    fn ring(current: u8, previous: &[u8]) -> Arc<Keyring> {
        Arc::new(Keyring::new(key(current), previous.iter().map(|b| key(*b)).collect()))
    }

    fn payload(o: &Opener, d: &[u8]) -> Result<Vec<u8>, OpenError> {
        o.open(d).map(|opened| opened.payload)
    }

    #[test]
    fn round_trip_and_overhead() {
        let (s, o) = (Sealer::new(&one(1), "vigil"), Opener::new(&one(1), "vigil"));
        let d = s.seal(b"hello");
        assert_eq!(d.len(), 5 + OVERHEAD);
        assert_eq!(
            o.open(&d).unwrap(),
            Opened {
                payload: b"hello".to_vec(),
                previous_key: false,
                format: Format::Chitchat,
                reads_compact: true
            }
        );
        assert_eq!(payload(&o, &s.seal(b"")).unwrap(), b"");
    }

    #[test]
    fn wrong_key_wrong_cluster_and_tampering_are_forged() {
        let s = Sealer::new(&one(1), "vigil");
        let d = s.seal(b"mark 10.0.0.1 down");
        assert_eq!(Opener::new(&one(2), "vigil").open(&d), Err(OpenError::Forged));
        assert_eq!(Opener::new(&one(1), "other").open(&d), Err(OpenError::Forged));
        // Under every key of a keyring, tampering is caught.
        for o in [Opener::new(&one(1), "vigil"), Opener::new(&ring(2, &[3, 1]), "vigil")] {
            for i in 1..d.len() {
                let mut t = d.clone();
                t[i] ^= 0x40;
                assert_eq!(o.open(&t), Err(OpenError::Forged), "byte {i}");
            }
            let mut v = d.clone();
            v[0] = 9;
            assert_eq!(o.open(&v), Err(OpenError::Version(9)));
            assert_eq!(o.open(&d[..OVERHEAD - 1]), Err(OpenError::TooShort));
            // Forgeries did not disturb the replay state: the original still opens once.
            assert!(o.open(&d).is_ok());
            assert_eq!(o.open(&d), Err(OpenError::Replayed));
        }
    }

    #[test]
    fn replays_are_refused_reordering_within_the_window_is_not() {
        let (s, o) = (Sealer::new(&one(3), "c"), Opener::new(&one(3), "c"));
        let d: Vec<Vec<u8>> = (0..200).map(|i| s.seal(&[i as u8])).collect();
        assert!(o.open(&d[10]).is_ok());
        assert!(o.open(&d[12]).is_ok());
        assert!(o.open(&d[11]).is_ok(), "late but inside the window");
        assert_eq!(o.open(&d[11]), Err(OpenError::Replayed));
        assert!(o.open(&d[150]).is_ok());
        assert_eq!(o.open(&d[12]), Err(OpenError::Replayed), "older than the window");
        assert!(o.open(&d[100]).is_ok(), "inside the window below 150");
        assert_eq!(o.open(&d[100]), Err(OpenError::Replayed));
        assert!(o.open(&d[199]).is_ok());
    }

    #[test]
    fn each_sender_and_each_restart_has_its_own_window() {
        let o = Opener::new(&one(4), "c");
        let (a, b) = (Sealer::new(&one(4), "c"), Sealer::new(&one(4), "c"));
        for _ in 0..3 {
            assert!(o.open(&a.seal(b"a")).is_ok());
            assert!(o.open(&b.seal(b"b")).is_ok());
        }
        // A restarted node counts from 0 again under a new prefix.
        let a2 = Sealer::new(&one(4), "c");
        assert!(o.open(&a2.seal(b"a again")).is_ok());
    }

    #[test]
    fn a_previous_key_opens_and_says_so() {
        let o = Opener::new(&ring(2, &[1, 5]), "c");
        let (old, new, last) =
            (Sealer::new(&one(1), "c"), Sealer::new(&one(2), "c"), Sealer::new(&one(5), "c"));
        // After the current key failed on it, the same buffer opens under the
        // previous one: the payload is whole.
        assert_eq!(
            o.open(&old.seal(b"from old")).unwrap(),
            Opened {
                payload: b"from old".to_vec(),
                previous_key: true,
                format: Format::Chitchat,
                reads_compact: true
            }
        );
        assert_eq!(
            o.open(&last.seal(b"from last")).unwrap(),
            Opened {
                payload: b"from last".to_vec(),
                previous_key: true,
                format: Format::Chitchat,
                reads_compact: true
            }
        );
        assert_eq!(
            o.open(&new.seal(b"from new")).unwrap(),
            Opened {
                payload: b"from new".to_vec(),
                previous_key: false,
                format: Format::Chitchat,
                reads_compact: true
            }
        );
        assert_eq!(
            o.open(&Sealer::new(&one(9), "c").seal(b"x")),
            Err(OpenError::Forged),
            "a key it does not hold"
        );
        // A previous key that is also the current or listed twice is kept once.
        assert_eq!(ring(2, &[1, 2, 1, 5]).previous_keys(), 2);
    }

    #[test]
    fn a_replay_under_another_key_is_still_a_replay() {
        // The sender switches from key 1 to key 2 half way; the receiver opens both.
        let sending = one(1);
        let s = Sealer::new(&sending, "c");
        let o = Opener::new(&ring(2, &[1]), "c");
        let before: Vec<Vec<u8>> = (0..3).map(|i| s.seal(&[i])).collect();
        assert!(sending.set(key(2), vec![key(1)]));
        let after: Vec<Vec<u8>> = (3..6).map(|i| s.seal(&[i])).collect();
        // Same prefix, counters carry on across the switch: one window.
        assert_eq!(before[0][1..1 + PREFIX_LEN], after[0][1..1 + PREFIX_LEN]);
        for d in before.iter().chain(&after) {
            assert!(o.open(d).is_ok());
        }
        for d in before.iter().chain(&after) {
            assert_eq!(o.open(d), Err(OpenError::Replayed));
        }
        // A datagram sealed before the switch, first seen after newer ones
        // under the new key, is placed in the same window.
        let o2 = Opener::new(&ring(2, &[1]), "c");
        assert!(o2.open(&after[2]).is_ok());
        assert_eq!(o2.open(&before[2]).map(|x| x.previous_key), Ok(true), "inside the window");
        assert_eq!(o2.open(&before[2]), Err(OpenError::Replayed));
    }

    #[test]
    fn a_removed_key_opens_nothing() {
        let keys = ring(2, &[1]);
        let o = Opener::new(&keys, "c");
        let old = Sealer::new(&one(1), "c");
        assert!(o.open(&old.seal(b"1")).unwrap().previous_key);
        assert!(keys.set(key(2), Vec::new()));
        assert_eq!(keys.previous_keys(), 0);
        assert_eq!(o.open(&old.seal(b"2")), Err(OpenError::Forged));
        assert!(!keys.set(key(2), Vec::new()), "the same keys again change nothing");
        // Nor from a sender new to this node (no window to lean on).
        assert_eq!(o.open(&Sealer::new(&one(1), "c").seal(b"3")), Err(OpenError::Forged));
        assert!(o.open(&Sealer::new(&one(2), "c").seal(b"4")).is_ok());
    }

    #[test]
    fn a_key_swap_keeps_the_replay_windows() {
        let (sending, receiving) = (one(1), one(1));
        let (s, o) = (Sealer::new(&sending, "c"), Opener::new(&receiving, "c"));
        let d: Vec<Vec<u8>> = (0..3).map(|i| s.seal(&[i])).collect();
        for x in &d {
            assert!(o.open(x).is_ok());
        }
        // The receiver moves first (key 2 current, 1 previous), then the sender.
        assert!(receiving.set(key(2), vec![key(1)]));
        for x in &d {
            assert_eq!(o.open(x), Err(OpenError::Replayed), "the window survived the swap");
        }
        assert!(o.open(&s.seal(b"still 1")).unwrap().previous_key);
        assert!(sending.set(key(2), Vec::new()));
        let next = s.seal(b"now 2");
        assert_eq!(
            o.open(&next).unwrap(),
            Opened {
                payload: b"now 2".to_vec(),
                previous_key: false,
                format: Format::Chitchat,
                reads_compact: true
            }
        );
        assert_eq!(o.open(&next), Err(OpenError::Replayed));
        // The old key dropped too: its datagrams are refused as forged, and
        // the window did not move for them.
        assert!(receiving.set(key(2), Vec::new()));
        assert_eq!(o.open(&d[0]), Err(OpenError::Forged));
        assert!(o.open(&s.seal(b"after")).is_ok());
    }

    /// A datagram as a node of an earlier release seals it: version 1, its
    /// counter without the top bit.
    fn sealed_by_an_older_node(key_byte: u8, cluster_id: &str, counter: u64, payload: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..PREFIX_LEN].copy_from_slice(&[0x5a; PREFIX_LEN]);
        nonce[PREFIX_LEN..].copy_from_slice(&counter.to_be_bytes());
        let cipher = XChaCha20Poly1305::new(&[key_byte; KEY_LEN].into());
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: payload, aad: cluster_id.as_bytes() })
            .unwrap();
        [&[VERSION_CHITCHAT][..], &nonce, &sealed].concat()
    }

    #[test]
    fn both_versions_open_and_say_what_they_hold_and_who_reads_compact() {
        let (s, o) = (Sealer::new(&one(1), "vigil"), Opener::new(&one(1), "vigil"));
        let compact = s.seal_as(Format::Compact, b"short");
        assert_eq!((compact[0], compact.len()), (2, 5 + OVERHEAD));
        let opened = o.open(&compact).unwrap();
        assert_eq!(
            (opened.payload.as_slice(), opened.format, opened.reads_compact),
            (&b"short"[..], Format::Compact, true)
        );
        // Version 1 from this release: marked.
        let opened = o.open(&s.seal(b"long")).unwrap();
        assert_eq!((opened.format, opened.reads_compact), (Format::Chitchat, true));
        // From an older node: not marked; it opens as before.
        let old = o.open(&sealed_by_an_older_node(1, "vigil", 0, b"old")).unwrap();
        assert_eq!(
            (old.payload.as_slice(), old.format, old.reads_compact),
            (&b"old"[..], Format::Chitchat, false)
        );
        // What an older node's opener does with this release's version 1:
        // the same key, nonce layout and associated data, so it opens (the
        // marked counter is only a larger number to its replay window).
        let v1 = s.seal(b"to an old node");
        let cipher = XChaCha20Poly1305::new(&[1; KEY_LEN].into());
        let (nonce, body) = v1[1..].split_at(NONCE_LEN);
        let plain = cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: b"vigil" }).unwrap();
        assert_eq!(plain, b"to an old node");
    }

    #[test]
    fn a_datagram_passed_off_as_the_other_version_does_not_open() {
        let s = Sealer::new(&one(1), "vigil");
        for (format, other) in [(Format::Chitchat, VERSION_COMPACT), (Format::Compact, VERSION_CHITCHAT)] {
            let o = Opener::new(&one(1), "vigil");
            let d = s.seal_as(format, b"\x00\x01\x02");
            let mut flipped = d.clone();
            flipped[0] = other;
            assert_eq!(o.open(&flipped), Err(OpenError::Forged));
            // Nor did it use up the original's counter.
            assert!(o.open(&d).is_ok());
            assert_eq!(o.open(&d), Err(OpenError::Replayed));
        }
        // The two versions share one counter: no nonce is sealed twice.
        let (a, b) = (s.seal_as(Format::Chitchat, b"a"), s.seal_as(Format::Compact, b"b"));
        assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
        assert_eq!(a[1..1 + PREFIX_LEN], b[1..1 + PREFIX_LEN]);
    }

    #[test]
    fn key_length_is_checked() {
        assert_eq!(ClusterKey::from_bytes(&[0; 31]).unwrap_err(), KeyError(31));
        assert!(ClusterKey::from_bytes(&[0; 32]).is_ok());
        assert_eq!(format!("{:?}", key(7)), "ClusterKey(<redacted>)");
    }
}
