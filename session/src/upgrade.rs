//! The connection after an HTTP/1.1 protocol switch, handed to the caller.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::Target;
use crate::connect::Io;
use crate::h1::Switched;
use crate::pool::H1Home;

/// A connection that switched protocols after a `101 Switching Protocols`
/// (a WebSocket, say): the bytes the server sent after the 101 first, then
/// the stream itself, TCP or TLS as it was connected. Take it from the
/// 101's body with [`PooledBody::into_upgraded`](crate::PooledBody::into_upgraded).
///
/// It never returns to the pool. While it lives it counts as a session in
/// use for its target ([`Pool::counts`](crate::Pool::counts)); dropped, it
/// closes and frees that slot.
pub struct Upgraded {
    io: Box<dyn Io>,
    /// Read with the 101's head, served before the stream's own bytes.
    read_ahead: Bytes,
    /// The pool and target whose in-use slot this holds.
    home: H1Home,
}

impl Upgraded {
    /// Takes over a switched connection and its in-use slot.
    pub(crate) fn new(switched: Switched<H1Home>) -> Self {
        let Switched { io, read_ahead, home } = switched;
        Self { io, read_ahead, home }
    }

    /// The target the connection goes to.
    pub fn target(&self) -> Target {
        self.home.target
    }
}

impl fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgraded")
            .field("target", &self.home.target)
            .field("read_ahead", &self.read_ahead.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        // The stream closes as the fields drop; it never goes back idle.
        self.home.pool.discard_h1(self.home.target);
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.read_ahead.is_empty() {
            let n = this.read_ahead.len().min(buf.remaining());
            buf.put_slice(&this.read_ahead[..n]);
            this.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
