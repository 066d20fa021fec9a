//! Bytes on their way out, chunk framing included.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Largest piece copied in behind bytes written into a [`WriteQueue`]'s own
/// buffer rather than queued on its own. perf put writev's extra path at
/// about 0.2 us a call; a copy of a few KiB costs about that. The limit is
/// a judgement, not a measurement.
pub const COALESCE_MAX: usize = 8 * 1024;

/// Bytes on their way out: pieces leave together in one vectored write,
/// with no copy, and a lone buffer in one plain write.
///
/// The queue has a buffer of its own at its tail ([`WriteQueue::head_mut`]):
/// a message head is written there, chunk lines too, and a piece of at most
/// [`COALESCE_MAX`] pushed behind such bytes is copied in after them, so a
/// head with a small body, or a small chunk with its framing, is one buffer
/// and one write. The buffer's allocation comes back once what was written
/// from it is gone.
///
/// It does no I/O itself: it is a [`bytes::Buf`] (write [`Buf::chunk`] or
/// [`Buf::chunks_vectored`], then [`Buf::advance`] by what was written).
/// With the `tokio` feature, `WriteQueue::poll_flush` writes it to an
/// `AsyncWrite`.
///
/// ```
/// use bytes::{Buf, Bytes};
/// use vigil_h1::WriteQueue;
///
/// let mut q = WriteQueue::default();
/// q.head_mut().extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
/// q.push_chunk(Bytes::from_static(b"hello"));
/// q.push_last_chunk();
/// assert_eq!(q.chunk(), &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..]);
/// ```
#[derive(Debug, Default)]
pub struct WriteQueue {
    out: VecDeque<Bytes>,
    /// Bytes in `out`.
    queued: usize,
    /// The tail: written into, sealed into `out` before a larger piece or a
    /// flush.
    staged: BytesMut,
}

impl WriteQueue {
    /// The queue's own buffer, behind everything queued: write a head (or
    /// any bytes) into it.
    pub fn head_mut(&mut self) -> &mut BytesMut {
        &mut self.staged
    }

    /// Moves the own buffer's bytes into the queue as one piece (a flush
    /// does it; the allocation comes back once the piece is written).
    pub fn seal(&mut self) {
        if !self.staged.is_empty() {
            let b = self.staged.split().freeze();
            self.queued += b.len();
            self.out.push_back(b);
        }
    }

    /// Queues `data` as one chunk of a chunked body (empty data: nothing,
    /// since an empty chunk would end the body; see [`WriteQueue::push_last_chunk`]).
    pub fn push_chunk(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        use std::fmt::Write as _;
        let _ = write!(self.staged, "{:x}\r\n", data.len());
        self.push(data);
        self.staged.extend_from_slice(b"\r\n");
    }

    /// Queues the last chunk of a chunked body (no trailers).
    pub fn push_last_chunk(&mut self) {
        self.staged.extend_from_slice(b"0\r\n\r\n");
    }

    /// Queues `b` behind what is queued: copied in behind bytes written
    /// into the queue's own buffer when it is small, else as it is (an
    /// empty one is dropped: a write of nothing would read as a closed peer).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if !self.staged.is_empty() && b.len() <= COALESCE_MAX {
            self.staged.extend_from_slice(&b);
            return;
        }
        self.seal();
        self.queued += b.len();
        self.out.push_back(b);
    }

    /// Whether all that is queued is in the own buffer (nothing is in the
    /// list of pieces): it can be written from there as it is.
    #[cfg(feature = "tokio")]
    pub(crate) fn only_own_buffer(&self) -> bool {
        self.out.is_empty()
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.queued + self.staged.len()
    }

    /// Bytes its own buffer holds allocated, in use or not.
    pub fn capacity(&self) -> usize {
        self.staged.capacity()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.staged.is_empty()
    }

    /// How many separate pieces a write would gather (after [`WriteQueue::seal`]).
    pub fn pieces(&self) -> usize {
        self.out.len() + usize::from(!self.staged.is_empty())
    }
}

impl Buf for WriteQueue {
    fn remaining(&self) -> usize {
        self.len()
    }

    fn chunk(&self) -> &[u8] {
        self.out.front().map_or(&self.staged[..], |b| &b[..])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let pieces = self.out.iter().map(|b| &b[..]).chain([&self.staged[..]]).filter(|b| !b.is_empty());
        dst.iter_mut().zip(pieces).map(|(slot, piece)| *slot = IoSlice::new(piece)).count()
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                self.staged.advance(n);
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.queued -= front.len();
                self.out.pop_front();
            } else {
                front.advance(n);
                self.queued -= n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut WriteQueue) -> Vec<u8> {
        let mut all = Vec::new();
        while q.has_remaining() {
            let c = q.chunk().to_vec();
            // Partial writes: take at most 3 bytes at a time.
            let n = c.len().min(3);
            all.extend_from_slice(&c[..n]);
            q.advance(n);
        }
        all
    }

    #[test]
    fn small_pieces_behind_the_queues_own_bytes_are_one_buffer() {
        let mut q = WriteQueue::default();
        q.head_mut().extend_from_slice(b"HEAD\r\n\r\n");
        q.push(Bytes::from_static(b"small body"));
        assert_eq!(q.len(), 18);
        q.seal();
        assert_eq!(q.pieces(), 1, "the head and a small body: one buffer");
        assert_eq!(q.chunk(), b"HEAD\r\n\r\nsmall body");

        let mut q = WriteQueue::default();
        q.head_mut().extend_from_slice(b"HEAD\r\n\r\n");
        q.push(Bytes::from(vec![b'x'; COALESCE_MAX + 1]));
        q.push(Bytes::from_static(b"tail"));
        q.seal();
        assert_eq!(q.pieces(), 3, "a large piece is not copied, nor what follows it");

        let mut q = WriteQueue::default();
        q.push_chunk(Bytes::from_static(b"abc"));
        q.push_chunk(Bytes::new());
        q.push_last_chunk();
        q.seal();
        assert_eq!(q.pieces(), 1, "a small chunk with its framing: one buffer");
        assert_eq!(q.chunk(), b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[test]
    fn a_queue_leaves_whole_and_in_order_through_partial_writes() {
        let mut q = WriteQueue::default();
        for piece in ["head\r\n", "", "body-", "0123456789"] {
            q.push(Bytes::from_static(piece.as_bytes()));
        }
        q.head_mut().extend_from_slice(b"+staged");
        q.push(Bytes::from(vec![b'y'; COALESCE_MAX + 1]));
        assert_eq!(q.len(), 28 + COALESCE_MAX + 1);
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(q.chunks_vectored(&mut slices), 5);
        let got = drain(&mut q);
        assert!(q.is_empty() && q.remaining() == 0);
        let want = [&b"head\r\nbody-0123456789+staged"[..], &vec![b'y'; COALESCE_MAX + 1]].concat();
        assert_eq!(got, want);
    }
}
