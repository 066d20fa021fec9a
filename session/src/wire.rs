//! HTTP/1.1 wire pieces shared by this crate's client and a server that
//! wants the same strictness (the `vigil` proxy's listener uses them).
//!
//! ```
//! use vigil_session::wire;
//!
//! assert_eq!(wire::parse_content_length(b"42"), Some(42));
//! assert_eq!(wire::parse_content_length(b"+42"), None); // digits only
//! assert_eq!(wire::parse_chunk_size(b"1a;ext=1"), Some(26));
//! assert!(wire::last_coding_is_chunked(b"gzip, chunked"));
//! ```

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// How much a read buffer grows by when little room is left: a read shorter
/// than what was offered tells tokio the socket is drained, which saves an
/// `EAGAIN` read next time.
pub const READ_CHUNK: usize = 8 * 1024;
/// Longest chunk-size or trailer line.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// All trailers of one body together.
const MAX_TRAILERS: usize = 16 * 1024;

/// A `Content-Length` value: ASCII digits only (no sign, no list, no
/// spaces), at most 19 of them, as hyper reads it.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

/// A chunk-size line without its CRLF, `1*HEXDIG [ BWS ";" extensions ]`:
/// the size, at most 16 hex digits; extensions are ignored.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    if !(rest.is_empty() || rest.trim_ascii_start().first() == Some(&b';')) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`
/// (only the last one decides how a message is framed).
pub fn last_coding_is_chunked(value: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Reads what `io` has into `buf`, growing it by [`READ_CHUNK`] when less
/// than a quarter of that is free. `Ready(Ok(0))` is end of stream.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Why a message body could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The peer closed the connection before the body's end.
    #[error("the peer closed the connection before the end of the body")]
    Closed,
    /// Reading failed (reset and the like).
    #[error("reading the body failed: {0}")]
    Io(#[from] io::Error),
    /// The chunked framing is malformed (bad size, overlong line or trailers).
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

/// Where a chunked body's decoding stands (opaque).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    state: ChunkState,
    /// Bytes left in the current chunk.
    left: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data,
    DataEnd,
    /// Trailer bytes seen so far.
    Trailers(usize),
}

/// A message body's decoder (RFC 9112 section 6), strict: chunk sizes as
/// [`parse_chunk_size`] reads them, CRLF line ends, bounded lines and
/// trailers (dropped). It reads from a connection's socket and buffer as it
/// is polled; bytes past the body stay in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the peer closes (responses only).
    UntilClose,
    /// The body has ended.
    Done,
    /// Decoding failed; the connection cannot carry another message.
    Failed,
}

impl Decoder {
    /// A chunked body, before its first size line.
    pub fn chunked() -> Self {
        Self::Chunked(Chunk { state: ChunkState::Size, left: 0 })
    }

    /// The next piece of body from `buf` (refilled from `io` when empty);
    /// `None` at the end (and, after a failure, ever after). An error leaves
    /// the decoder [`Decoder::Failed`].
    ///
    /// # Errors
    /// [`DecodeError`]: the peer closed early, a read failed, or the
    /// chunked framing is malformed.
    pub fn poll_data<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, DecodeError>> {
        let polled = self.poll_inner(io, buf, cx);
        if let Poll::Ready(Err(_)) = &polled {
            *self = Decoder::Failed;
        }
        polled
    }

    fn poll_inner<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, DecodeError>> {
        loop {
            let left = match self {
                Decoder::Done | Decoder::Failed => return Poll::Ready(Ok(None)),
                Decoder::UntilClose => {
                    if buf.is_empty() && ready!(poll_fill(io, buf, cx))? == 0 {
                        *self = Decoder::Done;
                        return Poll::Ready(Ok(None));
                    }
                    return Poll::Ready(Ok(Some(buf.split().freeze())));
                }
                Decoder::Length(left) | Decoder::Chunked(Chunk { state: ChunkState::Data, left }) => left,
                Decoder::Chunked(chunk) => {
                    let scan = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
                    let Some(end) = scan.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Err(DecodeError::Chunk("a chunk line is too long")));
                        }
                        if ready!(poll_fill(io, buf, cx))? == 0 {
                            return Poll::Ready(Err(DecodeError::Closed));
                        }
                        continue;
                    };
                    let line = buf.split_to(end + 2);
                    let line = &line[..end];
                    chunk.state = match chunk.state {
                        ChunkState::Size => {
                            chunk.left =
                                parse_chunk_size(line).ok_or(DecodeError::Chunk("invalid chunk size"))?;
                            if chunk.left == 0 { ChunkState::Trailers(0) } else { ChunkState::Data }
                        }
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => {
                            return Poll::Ready(Err(DecodeError::Chunk("a chunk is longer than its size")));
                        }
                        ChunkState::Trailers(_) if line.is_empty() => {
                            *self = Decoder::Done;
                            return Poll::Ready(Ok(None));
                        }
                        ChunkState::Trailers(seen) if seen + end + 2 > MAX_TRAILERS => {
                            return Poll::Ready(Err(DecodeError::Chunk("the trailers are too large")));
                        }
                        ChunkState::Trailers(seen) => ChunkState::Trailers(seen + end + 2),
                        // Matched by the arm above.
                        ChunkState::Data => ChunkState::Data,
                    };
                    continue;
                }
            };
            // Length-delimited bytes: the body's, or the current chunk's.
            if buf.is_empty() && ready!(poll_fill(io, buf, cx))? == 0 {
                return Poll::Ready(Err(DecodeError::Closed));
            }
            let take = (*left).min(buf.len() as u64);
            *left -= take;
            let data = buf.split_to(take as usize).freeze();
            match self {
                Decoder::Length(0) => *self = Decoder::Done,
                Decoder::Chunked(chunk) if chunk.left == 0 => chunk.state = ChunkState::DataEnd,
                _ => {}
            }
            return Poll::Ready(Ok(Some(data)));
        }
    }
}

/// Whether a `Connection` header value lists `token` (case-insensitive).
pub fn connection_has(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Bytes on their way out: pieces leave together in one `writev`, with no
/// copy, and a lone buffer in one `send`.
///
/// The queue has a buffer of its own at its tail ([`WriteQueue::head_mut`]):
/// a message head is written there, chunk lines too, and a piece of at most
/// [`COALESCE_MAX`] pushed behind such bytes is copied in after them, so a
/// head with a small body, or a small chunk with its framing, is one buffer
/// and one `send`. The buffer's allocation comes back once what was written
/// from it is gone.
#[derive(Debug, Default)]
pub struct WriteQueue {
    out: VecDeque<Bytes>,
    /// Bytes in `out`.
    queued: usize,
    /// The tail: written into, sealed into `out` before a larger piece or a
    /// flush.
    staged: BytesMut,
}

/// Largest piece copied in behind bytes written into a [`WriteQueue`]'s own
/// buffer rather than queued on its own. perf put writev's extra path at
/// about 0.2 us a call here; a copy of a few KiB costs about that. The
/// limit is a judgement, not a measurement.
pub const COALESCE_MAX: usize = 8 * 1024;

impl WriteQueue {
    /// The queue's own buffer, behind everything queued: write a head (or
    /// any bytes) into it.
    pub fn head_mut(&mut self) -> &mut BytesMut {
        &mut self.staged
    }

    /// Moves the own buffer's bytes into the queue as one piece.
    fn seal(&mut self) {
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

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.queued + self.staged.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty() && self.staged.is_empty()
    }

    /// Writes everything queued to `w`.
    ///
    /// # Errors
    /// The write's; a write of zero bytes is `WriteZero`.
    pub fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.seal();
        while !self.out.is_empty() {
            let mut n = if let [one] = self.out.as_slices().0
                && self.out.len() == 1
            {
                // On a socket, writev goes through the VFS layer (file
                // position, fsnotify, importing the iovec) and send does not:
                // perf (cpu-clock) on vigil under wrk put the functions only
                // writev's path takes at 3.8 % of its CPU, about 0.2 us a call.
                ready!(Pin::new(&mut *w).poll_write(cx, one))?
            } else {
                let mut slices = [IoSlice::new(&[]); 16];
                let n_slices =
                    self.out.iter().zip(slices.iter_mut()).map(|(b, s)| *s = IoSlice::new(b)).count();
                ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n_slices]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= n;
            while n > 0 {
                let Some(front) = self.out.front_mut() else { break };
                if front.len() <= n {
                    n -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_chunk_sizes_are_strict() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        for bad in [&b""[..], b"+5", b"-1", b"1,1", b" 1", b"99999999999999999999"] {
            assert_eq!(parse_content_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_chunk_size(b"A ; x=y"), Some(10));
        for bad in [&b""[..], b"zz", b"-1", b"1 2", b"+5", b"11111111111111111"] {
            assert_eq!(parse_chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert!(last_coding_is_chunked(b"Chunked"));
        assert!(!last_coding_is_chunked(b"chunked, gzip"));
        assert!(connection_has(b"keep-alive, Close", b"close"));
        assert!(!connection_has(b"closed", b"close"));
    }

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body and what is left.
    async fn decode(mut d: Decoder, wire: &[u8], step: usize) -> (Result<Vec<u8>, DecodeError>, Vec<u8>) {
        let (mut tx, mut rx) = tokio::io::duplex(step);
        let data = wire.to_vec();
        let feeder = tokio::spawn(async move {
            for piece in data.chunks(step) {
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, piece).await;
            }
        });
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let result = loop {
            match std::future::poll_fn(|cx| d.poll_data(&mut rx, &mut buf, cx)).await {
                Ok(Some(b)) => body.extend_from_slice(&b),
                Ok(None) => break Ok(body),
                Err(e) => break Err(e),
            }
        };
        drop(rx); // a feeder blocked on bytes past the body gives up
        let _ = feeder.await;
        (result, buf.to_vec())
    }

    #[tokio::test]
    async fn bodies_decode_in_any_split_and_leave_what_follows() {
        for step in [1, 3, 64] {
            let chunked = b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\nNEXT";
            let (body, rest) = decode(Decoder::chunked(), chunked, step).await;
            assert_eq!(body.ok().as_deref(), Some(&b"abcde"[..]), "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
            let (body, _) = decode(Decoder::Length(5), b"hello", step).await;
            assert_eq!(body.ok().as_deref(), Some(&b"hello"[..]));
        }
        let (body, _) = decode(Decoder::Length(9), b"short", 4).await;
        assert!(matches!(body, Err(DecodeError::Closed)));
        for bad in [&b"zz\r\nabc\r\n0\r\n\r\n"[..], b"2\r\nabc\r\n0\r\n\r\n"] {
            let (body, _) = decode(Decoder::chunked(), bad, 64).await;
            assert!(matches!(body, Err(DecodeError::Chunk(_))), "{}", String::from_utf8_lossy(bad));
        }
        let mut q = WriteQueue::default();
        q.push_chunk(Bytes::from_static(&[b'x'; 26]));
        q.push_chunk(Bytes::new());
        q.push_last_chunk();
        q.seal();
        let wire: Vec<u8> = q.out.iter().flat_map(|b| b.iter().copied()).collect();
        let (body, _) = decode(Decoder::chunked(), &wire, 7).await;
        assert_eq!(body.ok(), Some(vec![b'x'; 26]), "{}", String::from_utf8_lossy(&wire));
        assert!(wire.starts_with(b"1a\r\n"));
    }

    #[test]
    fn small_pieces_behind_the_queues_own_bytes_are_one_buffer() {
        let mut q = WriteQueue::default();
        q.head_mut().extend_from_slice(b"HEAD\r\n\r\n");
        q.push(Bytes::from_static(b"small body"));
        assert_eq!(q.len(), 18);
        q.seal();
        assert_eq!(q.out.len(), 1, "the head and a small body: one buffer");
        assert_eq!(&q.out[0][..], b"HEAD\r\n\r\nsmall body");

        let mut q = WriteQueue::default();
        q.head_mut().extend_from_slice(b"HEAD\r\n\r\n");
        q.push(Bytes::from(vec![b'x'; COALESCE_MAX + 1]));
        q.push(Bytes::from_static(b"tail"));
        q.seal();
        assert_eq!(q.out.len(), 3, "a large piece is not copied, nor what follows it");

        let mut q = WriteQueue::default();
        q.push_chunk(Bytes::from_static(b"abc"));
        q.push_last_chunk();
        q.seal();
        assert_eq!(q.out.len(), 1, "a small chunk with its framing: one buffer");
        assert_eq!(&q.out[0][..], b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_queue_leaves_whole_and_in_order() {
        let (mut a, mut b) = tokio::io::duplex(7); // a small pipe: many partial writes
        let mut q = WriteQueue::default();
        for piece in ["head\r\n", "", "body-", "0123456789"] {
            q.push(Bytes::from_static(piece.as_bytes()));
        }
        assert_eq!(q.len(), 21);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got).await.map(|_| got)
        });
        std::future::poll_fn(|cx| q.poll_flush(&mut a, cx)).await.ok();
        drop(a);
        assert!(q.is_empty());
        let got = reader.await.ok().and_then(Result::ok).unwrap_or_default();
        assert_eq!(got, b"head\r\nbody-0123456789");
    }
}
