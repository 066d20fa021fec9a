//! Strict HTTP/1.1 request framing (SPEC, Security): a request with both
//! `Content-Length` and `Transfer-Encoding`, or with more than one
//! `Content-Length`, is refused with 400 and the connection closed.
//!
//! hyper resolves those cases itself the lenient way RFC 9112 allows (it drops
//! the `Content-Length`, or folds equal duplicates), so the handler never sees
//! them. [`Strict`] sits between the socket and hyper: it parses each request
//! head (httparse, as hyper does), follows the body's framing to find the next
//! head on a keep-alive connection, and when a head breaks the rules it blanks
//! the offending header values in place (`Transfer-Encoding: xxxxxxx`,
//! `Content-Length: x`). hyper then refuses the request with 400 and closes
//! the connection: one code path for every refusal, and nothing ambiguous ever
//! reaches an origin. Empty `Content-Length` and invalid chunk sizes hyper
//! refuses on its own (the latter surfaces as a body error: see `forward`).
//!
//! Cost: one copy and one extra parse of each head (a few hundred ns);
//! body bytes pass through with a counter (chunked: a byte scan).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest request head inspected; hyper is set to refuse anything larger.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Where in the byte stream the guard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request head.
    Head,
    /// Inside a body of known length: this many bytes left.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// Not inspecting any more (h2 preface, a head hyper will refuse
    /// anyway): bytes pass as they are.
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { digits: u8, size: u64 },
    Ext { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLineLf,
    EndLf,
}

/// An I/O wrapper enforcing strict request framing; see the module docs.
#[derive(Debug)]
pub(crate) struct Strict<S> {
    inner: S,
    state: State,
    buf: Vec<u8>,
    /// `buf[start..end]` holds bytes read and not yet handed to hyper;
    /// the first `ready` of them are cleared for delivery.
    start: usize,
    end: usize,
    ready: usize,
    eof: bool,
    refused: Arc<AtomicU64>,
}

impl<S> Strict<S> {
    /// Wraps a fresh client connection. `refused` counts heads blanked.
    pub(crate) fn new(inner: S, refused: Arc<AtomicU64>) -> Self {
        Self { inner, state: State::Head, buf: Vec::new(), start: 0, end: 0, ready: 0, eof: false, refused }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start + self.ready..self.end]
    }

    /// Clears as many pending bytes as the current state allows; returns
    /// whether more input is needed to make progress.
    fn advance(&mut self) -> bool {
        loop {
            if self.start + self.ready == self.end {
                return true;
            }
            match self.state {
                State::Pass => {
                    self.ready = self.end - self.start;
                    return false;
                }
                State::Length(left) => {
                    let n = (self.pending().len() as u64).min(left);
                    self.ready += n as usize;
                    self.state = if n == left { State::Head } else { State::Length(left - n) };
                }
                State::Chunked(chunk) => {
                    let (used, next) = scan_chunked(chunk, self.pending());
                    self.ready += used;
                    self.state = next;
                }
                State::Head => return self.head(),
            }
        }
    }

    /// Inspects the head at the front of the pending bytes.
    fn head(&mut self) -> bool {
        let at = self.start + self.ready;
        let pending = &self.buf[at..self.end];
        if HTTP2_PREFACE.starts_with(&pending[..pending.len().min(HTTP2_PREFACE.len())]) {
            if pending.len() < HTTP2_PREFACE.len() {
                return true;
            }
            self.state = State::Pass;
            return false;
        }
        // Uninitialized: zeroing room for MAX_HEADERS per request showed in profiles.
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(pending, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if pending.len() < MAX_HEAD => return true,
            // Too large, too many headers or not HTTP: hyper refuses it.
            _ => {
                self.state = State::Pass;
                return false;
            }
        };
        let (mut te, mut cl, mut chunked, mut length) = (0, 0, false, None);
        let mut blank = Vec::new();
        for h in req.headers.iter() {
            let offset = h.value.as_ptr() as usize - pending.as_ptr() as usize;
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te += 1;
                chunked = last_coding_is_chunked(h.value);
                blank.push((offset, h.value.len(), true));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                cl += 1;
                // Digits only, as hyper reads it ("+5" is no length).
                let v = h.value.trim_ascii();
                length = (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .flatten();
                blank.push((offset, h.value.len(), false));
            }
        }
        let violation = (te > 0 && cl > 0) || cl > 1;
        if violation {
            // Blank the header kind hyper rejects in any order: every
            // Transfer-Encoding if there is one, else every Content-Length.
            self.refused.fetch_add(1, Ordering::Relaxed);
            for (offset, n, is_te) in blank {
                if is_te == (te > 0) {
                    self.buf[at + offset..at + offset + n].fill(b'x');
                }
            }
            self.ready += len;
            self.state = State::Pass;
            return false;
        }
        self.ready += len;
        // An `Upgrade` or CONNECT does not stop inspection: the proxy never
        // answers 101 or a 2xx to CONNECT, so the connection stays HTTP/1.1.
        self.state = if te > 0 {
            if chunked { State::Chunked(Chunk::Size { digits: 0, size: 0 }) } else { State::Pass }
        } else {
            match (cl, length) {
                (0, _) | (_, Some(0)) => State::Head,
                (_, Some(n)) => State::Length(n),
                (_, None) => State::Pass, // invalid Content-Length: hyper refuses it
            }
        };
        false
    }
}

fn last_coding_is_chunked(value: &[u8]) -> bool {
    value.rsplit(|&b| b == b',').next().is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Follows chunked framing over `data`: returns the bytes consumed and the
/// state after them. Anything malformed switches to [`State::Pass`]; hyper's
/// own decoder then fails the body.
fn scan_chunked(mut chunk: Chunk, data: &[u8]) -> (usize, State) {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        chunk = match chunk {
            Chunk::Data(n) => {
                let take = (data.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                i += take;
                let left = n - take as u64;
                if left == 0 { Chunk::DataCr } else { Chunk::Data(left) }
            }
            other => {
                i += 1;
                let next = match (other, b) {
                    (Chunk::Size { digits, size }, _) if b.is_ascii_hexdigit() => {
                        let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                        if digits >= 15 {
                            None
                        } else {
                            Some(Chunk::Size { digits: digits + 1, size: size * 16 + d })
                        }
                    }
                    (Chunk::Size { digits, size }, b';' | b' ' | b'\t') if digits > 0 => {
                        Some(Chunk::Ext { size })
                    }
                    (Chunk::Size { digits, size }, b'\r') if digits > 0 => Some(Chunk::SizeLf { size }),
                    (Chunk::Ext { size }, b'\r') => Some(Chunk::SizeLf { size }),
                    (Chunk::Ext { size }, b) if b != b'\n' => Some(Chunk::Ext { size }),
                    (Chunk::SizeLf { size: 0 }, b'\n') => Some(Chunk::TrailerStart),
                    (Chunk::SizeLf { size }, b'\n') => Some(Chunk::Data(size)),
                    (Chunk::DataCr, b'\r') => Some(Chunk::DataLf),
                    (Chunk::DataLf, b'\n') => Some(Chunk::Size { digits: 0, size: 0 }),
                    (Chunk::TrailerStart, b'\r') => Some(Chunk::EndLf),
                    (Chunk::TrailerLine, b'\r') => Some(Chunk::TrailerLineLf),
                    (Chunk::TrailerStart | Chunk::TrailerLine, b) if b != b'\n' => Some(Chunk::TrailerLine),
                    (Chunk::TrailerLineLf, b'\n') => Some(Chunk::TrailerStart),
                    (Chunk::EndLf, b'\n') => return (i, State::Head),
                    _ => None,
                };
                match next {
                    Some(c) => c,
                    None => return (i, State::Pass),
                }
            }
        };
    }
    (i, State::Chunked(chunk))
}

impl<S: AsyncRead + Unpin> AsyncRead for Strict<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                this.ready -= n;
                if this.start == this.end {
                    this.start = 0;
                    this.end = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever is left (a partial head) goes to hyper, which
                // reports the incomplete message; then EOF.
                this.ready = this.end - this.start;
                if this.ready == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.start == this.end {
                // Nothing buffered: body bytes of known length go straight
                // into hyper's buffer, with no copy.
                if let State::Pass | State::Length(_) = this.state {
                    return this.read_direct(cx, out);
                }
            }
            let needs_input = this.advance();
            // Bytes cleared by this pass go out first: the peer may be
            // waiting for our answer and send nothing more.
            if this.ready > 0 || !needs_input {
                continue;
            }
            ready!(this.fill(cx))?;
        }
    }
}

impl<S: AsyncRead + Unpin> Strict<S> {
    fn read_direct(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = out.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, out))?;
        let n = (out.filled().len() - before) as u64;
        if let State::Length(left) = self.state {
            if n >= left {
                // The rest belongs to the next request: keep it for inspection.
                let extra = out.filled()[before + left as usize..].to_vec();
                out.set_filled(before + left as usize);
                self.buf.clear();
                self.buf.extend_from_slice(&extra);
                self.start = 0;
                self.end = extra.len();
                self.state = State::Head;
            } else {
                self.state = State::Length(left - n);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more from the socket into the buffer.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).clamp(4096, MAX_HEAD + 4096);
            if grown == self.buf.len() {
                // Full with no head in it: hyper gets it and refuses it.
                self.state = State::Pass;
                return Poll::Ready(Ok(()));
            }
            self.buf.resize(grown, 0);
        }
        let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            self.eof = true;
        }
        self.end += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Strict<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns what hyper would read.
    async fn through(input: &[u8], step: usize) -> (Vec<u8>, u64) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let refused = Arc::new(AtomicU64::new(0));
        let mut strict = Strict::new(server, Arc::clone(&refused));
        for piece in input.chunks(step) {
            client.write_all(piece).await.unwrap();
        }
        drop(client);
        let mut out = Vec::new();
        strict.read_to_end(&mut out).await.unwrap();
        (out, refused.load(Ordering::Relaxed))
    }

    /// Reads whatever the guard hands out now, without waiting.
    fn read_now(strict: &mut Strict<tokio::io::DuplexStream>) -> Vec<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; 7];
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *strict).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => out.extend_from_slice(rb.filled()),
                _ => return out,
            }
        }
    }

    #[tokio::test]
    async fn what_arrived_is_delivered_without_waiting_for_more() {
        // A client sends a whole request and waits for the answer: every
        // byte must reach hyper with no further input and no EOF.
        let chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let sized = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        for input in [&chunked[..], &sized[..]] {
            for step in [1, 4, 9, 4096] {
                let (mut client, server) = tokio::io::duplex(1 << 16);
                let mut strict = Strict::new(server, Arc::new(AtomicU64::new(0)));
                let mut got = Vec::new();
                for piece in input.chunks(step) {
                    client.write_all(piece).await.unwrap();
                    got.extend(read_now(&mut strict));
                }
                assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(input), "step {step}");
            }
        }
    }

    #[tokio::test]
    async fn clean_requests_pass_unchanged_in_any_split() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: v\r\n\r\nGET /last HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nz";
        for step in [1, 3, 7, 64, 4096] {
            let (out, refused) = through(input, step).await;
            // Everything passes; only the last head (two Content-Length) is blanked.
            assert_eq!(out.len(), input.len(), "step {step}");
            assert_eq!(refused, 1, "step {step}");
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with("GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /p"), "step {step}");
            assert!(text.contains("Content-Length: x\r\nContent-Length: x\r\n"), "step {step}");
        }
    }

    #[tokio::test]
    async fn te_and_cl_together_blank_the_transfer_encoding() {
        for input in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"[..],
        ] {
            let (out, refused) = through(input, 5).await;
            assert_eq!(refused, 1);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("Transfer-Encoding: xxxxxxx\r\n"), "{text}");
            assert!(text.contains("Content-Length: 4\r\n"), "{text}");
        }
    }

    #[tokio::test]
    async fn smuggled_head_inside_a_body_is_not_inspected_but_the_next_one_is() {
        // The body of the first request looks like a bad head; it is body.
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let mut input = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"GET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (out, refused) = through(&input, 11).await;
        assert_eq!(refused, 1);
        assert!(String::from_utf8_lossy(&out).contains("Content-Length: 1\r\nContent-Length: 2"));
    }

    #[tokio::test]
    async fn an_upgrade_header_does_not_end_inspection() {
        let input = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (out, refused) = through(input, 6).await;
        assert_eq!(refused, 1);
        assert!(String::from_utf8_lossy(&out).contains("Transfer-Encoding: xxxxxxx"));
    }

    #[tokio::test]
    async fn h2_preface_passes_untouched() {
        let input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let (out, refused) = through(input, 3).await;
        assert_eq!((out.as_slice(), refused), (&input[..], 0));
    }

    #[test]
    fn chunk_scanner_finds_the_end_and_rejects_bad_sizes() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\nNEXT";
        assert_eq!(scan_chunked(Chunk::Size { digits: 0, size: 0 }, body), (body.len() - 4, State::Head));
        assert_eq!(scan_chunked(Chunk::Size { digits: 0, size: 0 }, b"zz\r\n").1, State::Pass);
        assert_eq!(scan_chunked(Chunk::Size { digits: 0, size: 0 }, b"\r\n").1, State::Pass);
        assert_eq!(scan_chunked(Chunk::Size { digits: 0, size: 0 }, b"ffffffffffffffff\r\n").1, State::Pass);
        assert!(last_coding_is_chunked(b"gzip, chunked") && !last_coding_is_chunked(b"chunked, gzip"));
    }
}
