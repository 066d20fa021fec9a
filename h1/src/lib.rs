//! # vigil-h1: a strict, I/O-free HTTP/1.1 codec
//!
//! One codec for both ends of a proxy: the server that reads requests and
//! writes responses, and the client that writes requests and reads
//! responses. Framing rules live here once, so a fix lands in one place.
//!
//! - **Heads**: [`parse_request`] and [`parse_response`] turn the front of a
//!   buffer into an `http` head (header values are slices of the buffer,
//!   not copies) and one [`Framing`]: how the body is delimited, and
//!   whether the connection may carry another message.
//! - **Strict framing** (RFC 9112 sections 6 and 7; SPEC's security rules):
//!   `Content-Length` with `Transfer-Encoding`, duplicated or malformed
//!   `Content-Length`, any transfer coding but one final `chunked` (a proxy
//!   must not drop a coding it did not decode), `Transfer-Encoding` in
//!   HTTP/1.0, two `Host` fields or a `Host` that disagrees with the
//!   target, bare-LF chunk lines and malformed chunk extensions are all
//!   refused, each with the status a server answers ([`HeadError::status`]).
//! - **Bodies**: [`Decoder`] reads every framing from a buffer, chunked
//!   included; [`WriteQueue`] gathers heads, bodies and chunk framing for
//!   the fewest writes.
//! - **Encoding**: [`encode_request_head`] and [`encode_response_head`]
//!   write heads with exactly the framing given.
//!
//! Nothing here reads a socket or a clock. With the `tokio` feature, three
//! small adapters drive it over any `AsyncRead`/`AsyncWrite`: `poll_fill`,
//! `Decoder::poll_data` and `WriteQueue::poll_flush`.
//!
//! ```
//! use bytes::{Buf, BytesMut};
//! use http::{Method, StatusCode};
//! use vigil_h1::{Decoded, Decoder, Framing, ResponseLine, WriteQueue, encode_response_head, parse_request};
//!
//! // A server reads a request with a chunked body...
//! let mut buf = BytesMut::from(&b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..]);
//! let (head, rest) = parse_request(&mut buf, 64 * 1024)?.expect("a whole head");
//! assert_eq!(head.framing, Framing::Chunked);
//! let mut body = BytesMut::from(&rest[..]);
//! let mut decoder = Decoder::new(head.framing);
//! assert_eq!(decoder.decode(&mut body)?, Decoded::Data("hello".into()));
//! assert_eq!(decoder.decode(&mut body)?, Decoded::End);
//!
//! // ...and answers it.
//! let mut out = WriteQueue::default();
//! let framing = Framing::for_response(head.request.method(), StatusCode::OK, Some(5), false);
//! let line = ResponseLine { status: StatusCode::OK, framing, http10: false, keep_alive: head.keep_alive };
//! encode_response_head(out.head_mut(), line, &http::HeaderMap::new(), || b"Thu, 03 Dec 2026 10:00:00 GMT");
//! out.push("hello".into());
//! assert!(out.chunk().starts_with(b"HTTP/1.1 200 OK\r\n") && out.chunk().ends_with(b"\r\n\r\nhello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/parse.rs` feeds a request and its response to the codec in
//! small pieces, as a socket would: `cargo run -p vigil-h1 --example parse`.

#![warn(missing_docs)]

mod body;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod check;
mod encode;
mod head;
#[cfg(feature = "tokio")]
mod io;
mod queue;
mod syntax;

pub use body::{Chunk, DecodeError, Decoded, Decoder};
pub use encode::{ResponseLine, encode_request_head, encode_response_head};
pub use head::{
    Framing, HeadError, MAX_HEADERS, RequestHead, RequestLimits, Response, ResponseHead, TargetForm,
    parse_request, parse_request_limited, parse_response, status_has_body,
};
#[cfg(feature = "tokio")]
pub use io::{LAZY_MIN, READ_CHUNK, poll_fill, poll_fill_lazy};
pub use queue::{COALESCE_MAX, WriteQueue};
pub use syntax::{connection_has, parse_chunk_size, parse_content_length};
