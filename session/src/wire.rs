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

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

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

/// Whether a `Connection` header value lists `token` (case-insensitive).
pub fn connection_has(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Bytes on their way out, written with vectored writes: a head and the
/// body pieces behind it leave in one `writev`, with no copy.
#[derive(Debug, Default)]
pub struct WriteQueue {
    out: VecDeque<Bytes>,
    queued: usize,
}

impl WriteQueue {
    /// Queues `b` behind what is queued (an empty one is dropped: a
    /// vectored write of nothing would read as a closed peer).
    pub fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.queued += b.len();
        self.out.push_back(b);
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
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
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); 16];
            let n_slices = self.out.iter().zip(slices.iter_mut()).map(|(b, s)| *s = IoSlice::new(b)).count();
            let mut n = ready!(Pin::new(&mut *w).poll_write_vectored(cx, &slices[..n_slices]))?;
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
