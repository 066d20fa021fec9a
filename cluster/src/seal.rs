//! Sealed datagrams: every gossip datagram is encrypted and authenticated
//! with the cluster key (XChaCha20-Poly1305), bound to the cluster id, and
//! numbered so a replay is refused.
//!
//! Layout: `version (1) | nonce (24) | ciphertext | tag (16)`: 41 bytes of
//! overhead. The nonce is a 16-byte prefix drawn from the OS at start (one
//! per sender incarnation) and a 64-bit counter, so two nodes, or one node
//! restarted, never reuse a nonce under the same key. The receiver keeps,
//! per prefix, the highest counter seen and a 64-wide window below it (the
//! IPsec/WireGuard scheme): a datagram outside or already in the window is
//! a replay. Replay state changes only after a datagram authenticates, so
//! forged traffic cannot disturb it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use parking_lot::Mutex;

/// Bytes in a cluster key.
pub const KEY_LEN: usize = 32;
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const PREFIX_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its payload.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Senders whose replay windows are kept; the least recently heard goes first.
const MAX_SENDERS: usize = 4096;
const WINDOW: u64 = 64;

/// The shared secret every node of a cluster holds (`key_file`).
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

/// Seals outgoing datagrams. One per node; cheap to share.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
    aad: Box<[u8]>,
    prefix: [u8; PREFIX_LEN],
    counter: AtomicU64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("sent", &self.counter.load(Ordering::Relaxed)).finish()
    }
}

impl Sealer {
    /// A sealer for `cluster_id` under `key`, with a fresh random prefix.
    pub fn new(key: &ClusterKey, cluster_id: &str) -> Self {
        let random = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&random[..PREFIX_LEN]);
        Self {
            cipher: XChaCha20Poly1305::new(&key.0.into()),
            aad: cluster_id.as_bytes().into(),
            prefix,
            counter: AtomicU64::new(0),
        }
    }

    /// `payload`, sealed.
    pub fn seal(&self, payload: &[u8]) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..PREFIX_LEN].copy_from_slice(&self.prefix);
        nonce[PREFIX_LEN..].copy_from_slice(&n.to_be_bytes());
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: payload, aad: &self.aad })
            // Encryption fails only for payloads over 256 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
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

/// Opens incoming datagrams and refuses replays.
pub struct Opener {
    cipher: XChaCha20Poly1305,
    aad: Box<[u8]>,
    windows: Mutex<(HashMap<[u8; PREFIX_LEN], ReplayWindow>, u64)>,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").field("senders", &self.windows.lock().0.len()).finish()
    }
}

impl Opener {
    /// An opener for `cluster_id` under `key`.
    pub fn new(key: &ClusterKey, cluster_id: &str) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&key.0.into()),
            aad: cluster_id.as_bytes().into(),
            windows: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// The payload of `datagram` if it authenticates and is new.
    ///
    /// # Errors
    /// [`OpenError`] says why it was dropped.
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, OpenError> {
        if datagram.len() < OVERHEAD {
            return Err(OpenError::TooShort);
        }
        if datagram[0] != VERSION {
            return Err(OpenError::Version(datagram[0]));
        }
        let nonce = &datagram[1..1 + NONCE_LEN];
        let payload = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: &datagram[1 + NONCE_LEN..], aad: &self.aad })
            .map_err(|_| OpenError::Forged)?;
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
        if window.accept(n) { Ok(payload) } else { Err(OpenError::Replayed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes(&[b; KEY_LEN]).unwrap()
    }

    #[test]
    fn round_trip_and_overhead() {
        let (s, o) = (Sealer::new(&key(1), "vigil"), Opener::new(&key(1), "vigil"));
        let d = s.seal(b"hello");
        assert_eq!(d.len(), 5 + OVERHEAD);
        assert_eq!(o.open(&d).unwrap(), b"hello");
        assert_eq!(o.open(&s.seal(b"")).unwrap(), b"");
    }

    #[test]
    fn wrong_key_wrong_cluster_and_tampering_are_forged() {
        let s = Sealer::new(&key(1), "vigil");
        let d = s.seal(b"mark 10.0.0.1 down");
        assert_eq!(Opener::new(&key(2), "vigil").open(&d), Err(OpenError::Forged));
        assert_eq!(Opener::new(&key(1), "other").open(&d), Err(OpenError::Forged));
        let o = Opener::new(&key(1), "vigil");
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

    #[test]
    fn replays_are_refused_reordering_within_the_window_is_not() {
        let (s, o) = (Sealer::new(&key(3), "c"), Opener::new(&key(3), "c"));
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
        let o = Opener::new(&key(4), "c");
        let (a, b) = (Sealer::new(&key(4), "c"), Sealer::new(&key(4), "c"));
        for _ in 0..3 {
            assert!(o.open(&a.seal(b"a")).is_ok());
            assert!(o.open(&b.seal(b"b")).is_ok());
        }
        // A restarted node counts from 0 again under a new prefix.
        let a2 = Sealer::new(&key(4), "c");
        assert!(o.open(&a2.seal(b"a again")).is_ok());
    }

    #[test]
    fn key_length_is_checked() {
        assert_eq!(ClusterKey::from_bytes(&[0; 31]).unwrap_err(), KeyError(31));
        assert!(ClusterKey::from_bytes(&[0; 32]).is_ok());
        assert_eq!(format!("{:?}", key(7)), "ClusterKey(<redacted>)");
    }
}
