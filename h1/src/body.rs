//! Message bodies over buffers: the decoder for every framing (chunked
//! included), strict, and the chunked encoding (see [`WriteQueue`](crate::WriteQueue)).

use std::io;

use bytes::{Bytes, BytesMut};

use crate::head::Framing;
use crate::syntax::{self, is_tchar};

/// Longest chunk-size or trailer line.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// All trailers of one body together.
const MAX_TRAILERS: usize = 16 * 1024;

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
    /// The chunked framing is malformed (bad size or extension, a bare LF
    /// or CR, a chunk longer than its size, overlong lines or trailers).
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

/// What one call to [`Decoder::decode`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A piece of the body.
    Data(Bytes),
    /// The buffer holds no more of the body: read more into it, or call
    /// [`Decoder::decode_eof`] if the peer closed.
    NeedMore,
    /// The body has ended; what follows it is left in the buffer.
    End,
}

/// A message body's decoder (RFC 9112 sections 6 and 7), strict: chunk
/// sizes and extensions as [`parse_chunk_size`](crate::parse_chunk_size)
/// reads them, every line ended by CRLF (a bare LF or CR is an error),
/// bounded lines and trailers (checked, then dropped).
///
/// It works on a buffer and does no I/O: feed it what was read with
/// [`Decoder::decode`]; bytes past the body stay in the buffer. With the
/// `tokio` feature, `Decoder::poll_data` does the reading too.
///
/// ```
/// use bytes::BytesMut;
/// use vigil_h1::{Decoded, Decoder, Framing};
///
/// let mut d = Decoder::new(Framing::Chunked);
/// let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nNEXT"[..]);
/// assert_eq!(d.decode(&mut buf)?, Decoded::Data("abc".into()));
/// assert_eq!(d.decode(&mut buf)?, Decoded::End);
/// assert_eq!(&buf[..], b"NEXT");
/// # Ok::<(), vigil_h1::DecodeError>(())
/// ```
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
    /// The decoder for a body of `framing`.
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::None | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::chunked(),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    /// A chunked body, before its first size line.
    pub fn chunked() -> Self {
        Self::Chunked(Chunk { state: ChunkState::Size, left: 0 })
    }

    /// Whether the body has ended (not failed).
    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// The next piece of body from the front of `buf`.
    ///
    /// # Errors
    /// [`DecodeError::Chunk`] for malformed chunked framing; the decoder is
    /// then [`Decoder::Failed`] and says [`Decoded::End`] ever after.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        let decoded = self.decode_inner(buf);
        if decoded.is_err() {
            *self = Self::Failed;
        }
        decoded
    }

    /// The peer closed the connection, and [`Decoder::decode`] said it
    /// needs more: the end of a close-delimited body, else an early close.
    ///
    /// # Errors
    /// [`DecodeError::Closed`] unless the body was close-delimited or over.
    pub fn decode_eof(&mut self) -> Result<(), DecodeError> {
        match self {
            Self::UntilClose | Self::Done => {
                *self = Self::Done;
                Ok(())
            }
            _ => {
                *self = Self::Failed;
                Err(DecodeError::Closed)
            }
        }
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            let left = match self {
                Self::Done | Self::Failed => return Ok(Decoded::End),
                Self::UntilClose if buf.is_empty() => return Ok(Decoded::NeedMore),
                Self::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                Self::Length(left) | Self::Chunked(Chunk { state: ChunkState::Data, left }) => left,
                Self::Chunked(chunk) if chunk.state == ChunkState::DataEnd => {
                    match buf.get(..2) {
                        Some(b"\r\n") => {}
                        Some(_) => return Err(DecodeError::Chunk("a chunk is longer than its size")),
                        None if buf.first().is_some_and(|&b| b != b'\r') => {
                            return Err(DecodeError::Chunk("a chunk is longer than its size"));
                        }
                        None => return Ok(Decoded::NeedMore),
                    }
                    let _ = buf.split_to(2);
                    chunk.state = ChunkState::Size;
                    continue;
                }
                Self::Chunked(chunk) => {
                    let Some(end) = line(buf)? else { return Ok(Decoded::NeedMore) };
                    let line = buf.split_to(end + 2);
                    let line = &line[..end];
                    chunk.state = match chunk.state {
                        ChunkState::Size => {
                            chunk.left = syntax::parse_chunk_size(line)
                                .ok_or(DecodeError::Chunk("invalid chunk size line"))?;
                            if chunk.left == 0 { ChunkState::Trailers(0) } else { ChunkState::Data }
                        }
                        ChunkState::Trailers(_) if line.is_empty() => {
                            *self = Self::Done;
                            return Ok(Decoded::End);
                        }
                        ChunkState::Trailers(seen) if seen + end + 2 > MAX_TRAILERS => {
                            return Err(DecodeError::Chunk("the trailers are too large"));
                        }
                        ChunkState::Trailers(seen) => {
                            if !is_field_line(line) {
                                return Err(DecodeError::Chunk("a malformed trailer field"));
                            }
                            ChunkState::Trailers(seen + end + 2)
                        }
                        // Handled above.
                        ChunkState::Data | ChunkState::DataEnd => chunk.state,
                    };
                    continue;
                }
            };
            // Length-delimited bytes: the body's, or the current chunk's.
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = (*left).min(buf.len() as u64);
            *left -= take;
            let data = buf.split_to(take as usize).freeze();
            match self {
                Self::Length(0) => *self = Self::Done,
                Self::Chunked(chunk) if chunk.left == 0 => chunk.state = ChunkState::DataEnd,
                _ => {}
            }
            return Ok(Decoded::Data(data));
        }
    }
}

/// The length of the CRLF-ended line at the front of `buf` (without its
/// CRLF); `None` until it is all there.
///
/// # Errors
/// A bare LF or CR, or a line longer than [`MAX_CHUNK_LINE`].
fn line(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let scan = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
    match scan.iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) if scan[i] == b'\n' => Err(DecodeError::Chunk("a line ended by a bare LF")),
        Some(i) => match scan.get(i + 1) {
            Some(b'\n') => Ok(Some(i)),
            Some(_) => Err(DecodeError::Chunk("a bare CR in a chunk line")),
            None if buf.len() > MAX_CHUNK_LINE => Err(DecodeError::Chunk("a chunk line is too long")),
            None => Ok(None),
        },
        None if buf.len() > MAX_CHUNK_LINE => Err(DecodeError::Chunk("a chunk line is too long")),
        None => Ok(None),
    }
}

/// `field-name ":" OWS field-value OWS`, with no control character but HTAB.
fn is_field_line(line: &[u8]) -> bool {
    let name = line.iter().take_while(|&&b| is_tchar(b)).count();
    name > 0
        && line.get(name) == Some(&b':')
        && line[name + 1..].iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body and what is left.
    pub(crate) fn decode_split(
        mut d: Decoder,
        wire: &[u8],
        step: usize,
    ) -> (Result<Vec<u8>, String>, Vec<u8>) {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(step.max(1));
        loop {
            match d.decode(&mut buf) {
                Ok(Decoded::Data(b)) => body.extend_from_slice(&b),
                Ok(Decoded::End) => return (Ok(body), buf.to_vec()),
                Ok(Decoded::NeedMore) => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => {
                        return match d.decode_eof() {
                            Ok(()) => (Ok(body), Vec::new()),
                            Err(e) => (Err(e.to_string()), Vec::new()),
                        };
                    }
                },
                Err(e) => return (Err(e.to_string()), buf.to_vec()),
            }
        }
    }

    #[test]
    fn bodies_decode_in_any_split_and_leave_what_follows() {
        for step in [1, 2, 3, 7, 64] {
            let chunked = b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\nNEXT";
            let (body, rest) = decode_split(Decoder::chunked(), chunked, step);
            assert_eq!(body.as_deref(), Ok(&b"abcde"[..]), "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
            let (body, _) = decode_split(Decoder::Length(5), b"hello", step);
            assert_eq!(body.as_deref(), Ok(&b"hello"[..]));
            let (body, _) = decode_split(Decoder::UntilClose, b"until close", step);
            assert_eq!(body.as_deref(), Ok(&b"until close"[..]));
        }
        let (body, _) = decode_split(Decoder::Length(9), b"short", 4);
        assert!(body.is_err_and(|e| e.contains("closed")));
        let (body, _) = decode_split(Decoder::chunked(), b"3\r\nab", 4);
        assert!(body.is_err_and(|e| e.contains("closed")));
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"2\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"3\r\nabc\r\n0\n\r\n",
            b"3\r\nabc\r\n0\r\n\n",
            b"3\r\nabc\r\n0\r\nx-t: 1\n\r\n",
            b"3\r\nabc\r\n0\r\nno colon\r\n\r\n",
            b"3 \rx\r\nabc\r\n0\r\n\r\n",
            b"3;=x\r\nabc\r\n0\r\n\r\n",
            b"3;a=\"b\r\nabc\r\n0\r\n\r\n",
        ] {
            for step in [1, 64] {
                let (body, _) = decode_split(Decoder::chunked(), bad, step);
                assert!(
                    body.as_ref().is_err_and(|e| e.contains("malformed")),
                    "{} in steps of {step}: {body:?}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        let long = [&[b'1'; MAX_CHUNK_LINE + 10][..], b"\r\n"].concat();
        let (body, _) = decode_split(Decoder::chunked(), &long, 1000);
        assert!(body.is_err());
    }

    #[test]
    fn a_failed_decoder_stays_failed() {
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(d.decode(&mut buf).is_err());
        assert_eq!(d, Decoder::Failed);
        assert_eq!(d.decode(&mut BytesMut::from(&b"3\r\nabc\r\n"[..])).ok(), Some(Decoded::End));
        assert!(!d.is_done());
    }
}
