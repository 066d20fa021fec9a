//! The codec driven over tokio's `AsyncRead`/`AsyncWrite` (the `tokio`
//! feature): any stream, TCP, TLS or a test pipe.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{DecodeError, Decoded, Decoder};
use crate::queue::WriteQueue;

/// How much a read buffer grows by when little room is left: a read shorter
/// than what was offered tells tokio the socket is drained, which saves an
/// `EAGAIN` read next time.
pub const READ_CHUNK: usize = 8 * 1024;

/// Reads what `io` has into `buf`, growing it by [`READ_CHUNK`] when less
/// than a quarter of that is free. `Ready(Ok(0))` is end of stream.
pub fn poll_fill<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The least a buffer taken by [`poll_fill_lazy`] holds: a usual request
/// head, and a size allocators serve from their fastest lists.
pub const LAZY_MIN: usize = 1024;

/// [`poll_fill`] for a connection waiting for its next message: while
/// nothing comes, no buffer is held. With `buf` empty and holding no
/// allocation, the read goes through the stack and `buf` takes an
/// allocation only for bytes that arrived (at least [`LAZY_MIN`]), so an
/// idle connection costs its stream and not a read buffer (HAProxy and
/// nginx do the same). Otherwise it is [`poll_fill`].
pub fn poll_fill_lazy<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() > 0 {
        return poll_fill(io, buf, cx);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let got = read.filled();
    if !got.is_empty() {
        buf.reserve(got.len().max(LAZY_MIN));
        buf.extend_from_slice(got);
    }
    Poll::Ready(Ok(got.len()))
}

impl Decoder {
    /// The next piece of body from `buf`, refilled from `io` when it runs
    /// dry; `None` at the end (and, after a failure, ever after). Bytes past
    /// the body stay in `buf`.
    ///
    /// # Errors
    /// [`DecodeError`]: the peer closed early, a read failed, or the
    /// chunked framing is malformed; the decoder is then [`Decoder::Failed`].
    pub fn poll_data<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        io: &mut R,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, DecodeError>> {
        loop {
            match self.decode(buf)? {
                Decoded::Data(data) => return Poll::Ready(Ok(Some(data))),
                Decoded::End => return Poll::Ready(Ok(None)),
                Decoded::NeedMore => match ready!(poll_fill(io, buf, cx)) {
                    Ok(0) => return Poll::Ready(self.decode_eof().map(|()| None)),
                    Ok(_) => {}
                    Err(e) => {
                        *self = Decoder::Failed;
                        return Poll::Ready(Err(e.into()));
                    }
                },
            }
        }
    }
}

impl WriteQueue {
    /// Writes everything queued to `w`.
    ///
    /// # Errors
    /// The write's; a write of zero bytes is `WriteZero`.
    pub fn poll_flush<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        // Only the queue's own buffer (a head with a small body): written
        // from where it is, with no piece split off it (which would make
        // its allocation shared, and take the queue's list).
        if !self.only_own_buffer() {
            self.seal();
        }
        while self.has_remaining() {
            let n = if self.pieces() == 1 {
                // On a socket, writev goes through the VFS layer (file
                // position, fsnotify, importing the iovec) and send does not:
                // perf (cpu-clock) on vigil under wrk put the functions only
                // writev's path takes at 3.8 % of its CPU, about 0.2 us a call.
                ready!(Pin::new(&mut *w).poll_write(cx, self.chunk()))?
            } else {
                let mut slices = [IoSlice::new(&[]); 16];
                let n = self.chunks_vectored(&mut slices);
                ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queue_flushes_whole_and_in_order_through_a_narrow_pipe() {
        let (mut a, mut b) = tokio::io::duplex(7); // a small pipe: many partial writes
        let mut q = WriteQueue::default();
        for piece in ["head\r\n", "", "body-", "0123456789"] {
            q.push(Bytes::from_static(piece.as_bytes()));
        }
        q.push(Bytes::from(vec![b'z'; crate::COALESCE_MAX + 1]));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got).await.map(|_| got)
        });
        let flushed = std::future::poll_fn(|cx| q.poll_flush(&mut a, cx)).await;
        assert!(flushed.is_ok());
        drop(a);
        assert!(q.is_empty());
        let got = reader.await.ok().and_then(Result::ok).unwrap_or_default();
        assert_eq!(got, [&b"head\r\nbody-0123456789"[..], &vec![b'z'; crate::COALESCE_MAX + 1]].concat());
    }

    #[tokio::test]
    async fn a_lazy_fill_holds_no_buffer_until_bytes_come() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let waker = std::task::Waker::noop();
        let pending = poll_fill_lazy(&mut rx, &mut buf, &mut Context::from_waker(waker));
        assert!(pending.is_pending());
        assert_eq!(buf.capacity(), 0, "nothing came: nothing is held");
        let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, b"GET / HTTP/1.1\r\n").await;
        let n = std::future::poll_fn(|cx| poll_fill_lazy(&mut rx, &mut buf, cx)).await.ok();
        assert_eq!(n, Some(16));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        assert!(buf.capacity() >= LAZY_MIN);
        // With a buffer held, it reads on into it.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, b"\r\n").await;
        drop(tx);
        let n = std::future::poll_fn(|cx| poll_fill_lazy(&mut rx, &mut buf, cx)).await.ok();
        assert_eq!(n, Some(2));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n\r\n");
        let mut empty = BytesMut::new();
        let eof = std::future::poll_fn(|cx| poll_fill_lazy(&mut rx, &mut empty, cx)).await.ok();
        assert_eq!(eof, Some(0));
        assert_eq!(empty.capacity(), 0, "end of stream takes no buffer");
    }

    #[tokio::test]
    async fn bodies_read_from_a_stream_leave_what_follows() {
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let feeder = tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut tx, b"3\r\nabc\r\n0\r\n\r\nNEXT").await;
        });
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        while let Some(piece) =
            std::future::poll_fn(|cx| d.poll_data(&mut rx, &mut buf, cx)).await.ok().flatten()
        {
            body.extend_from_slice(&piece);
        }
        assert_eq!(body, b"abc");
        assert!(d.is_done());
        assert!(b"NEXT".starts_with(&buf), "{buf:?}");
        let _ = feeder.await;
    }
}
