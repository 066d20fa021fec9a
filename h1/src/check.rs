//! Properties of the codec on any input, checked by the proptests below and
//! by the fuzz targets (`h1/fuzz`, built with the `fuzzing` feature):
//!
//! - **Any split, same result**: a message fed whole, in two pieces at any
//!   point, or byte by byte parses to the same head, body and leftover, or
//!   fails the same way.
//! - **Round trip**: whatever is accepted, encoded again by this crate's own
//!   encoders, parses to the same message.
//!
//! Each function panics when a property does not hold; that is what a fuzz
//! target reports.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};

use crate::{
    Decoded, Decoder, Framing, Response, ResponseLine, WriteQueue, encode_request_head, encode_response_head,
    parse_request, parse_response,
};

/// The head limit the checks parse under.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed message, comparable.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Request line or status line, as parsed.
    pub line: String,
    /// The version.
    pub version: Version,
    /// The header fields.
    pub headers: HeaderMap,
    /// The framing.
    pub framing: Framing,
    /// Whether the connection stays open.
    pub keep_alive: bool,
    /// The body, decoded.
    pub body: Vec<u8>,
    /// What came after the message.
    pub rest: Vec<u8>,
}

/// What feeding pieces to the parser gave: a message, or an error's text.
pub type Outcome = Result<Message, String>;

/// Feeds `pieces` one by one to the request parser and the body decoder.
pub fn drive_request<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut pieces = pieces.into_iter();
    let mut buf = BytesMut::new();
    let (head, rest) = loop {
        if let Some(parsed) = parse_request(&mut buf, MAX_HEAD).map_err(|e| e.to_string())? {
            break parsed;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return Err("incomplete head".into()),
        }
    };
    let r = &head.request;
    let line = format!("{} {} {:?}", r.method(), r.uri(), head.target_form);
    let (body, rest) = drive_body(Decoder::new(head.framing), rest, pieces)?;
    Ok(Message {
        line,
        version: r.version(),
        headers: r.headers().clone(),
        framing: head.framing,
        keep_alive: head.keep_alive,
        body,
        rest,
    })
}

/// Feeds `pieces` to the response parser (interim heads skipped) for a
/// request of `method`, and to the body decoder.
pub fn drive_response<'a>(method: &Method, pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut pieces = pieces.into_iter();
    let mut buf = BytesMut::new();
    let (head, rest) = loop {
        match parse_response(&mut buf, MAX_HEAD, method).map_err(|e| e.to_string())? {
            Some((Response::Final(head), rest)) => break (head, rest),
            Some((Response::Interim(_), rest)) => buf = BytesMut::from(&rest[..]),
            None => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Err("incomplete head".into()),
            },
        }
    };
    let r = &head.response;
    let (body, rest) = drive_body(Decoder::new(head.framing), rest, pieces)?;
    Ok(Message {
        line: r.status().as_str().to_owned(),
        version: r.version(),
        headers: r.headers().clone(),
        framing: head.framing,
        keep_alive: head.keep_alive,
        body,
        rest,
    })
}

/// Decodes a body from `first` and then `pieces`; the end of the pieces is
/// the peer closing.
fn drive_body<'a>(
    mut decoder: Decoder,
    first: Bytes,
    mut pieces: impl Iterator<Item = &'a [u8]>,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = BytesMut::from(&first[..]);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::End => break,
            Decoded::NeedMore => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => {
                    decoder.decode_eof().map_err(|e| e.to_string())?;
                    break;
                }
            },
        }
    }
    let mut rest = buf.to_vec();
    pieces.for_each(|p| rest.extend_from_slice(p));
    Ok((body, rest))
}

fn split_at(data: &[u8], at: usize) -> [&[u8]; 2] {
    let at = at.min(data.len());
    [&data[..at], &data[at..]]
}

/// Asserts that `data` parses as a request the same whole, split at `at`
/// and byte by byte, and that an accepted request survives a round trip.
pub fn request(data: &[u8], at: usize) -> Outcome {
    let whole = drive_request([data]);
    assert_eq!(whole, drive_request(split_at(data, at)), "split at {at}");
    if data.len() <= 2048 {
        assert_eq!(whole, drive_request(data.chunks(1)), "byte by byte");
    }
    if let Ok(m) = &whole
        && m.version == Version::HTTP_11
        && m.line.ends_with("Origin")
    {
        let again = drive_request([&encode_request(m)[..]]);
        assert_eq!(comparable(Ok(m.clone())), comparable(again), "round trip");
    }
    whole
}

/// Asserts that `data` parses as a response to `method` the same whole,
/// split at `at` and byte by byte, and that an accepted response survives
/// a round trip.
pub fn response(method: &Method, data: &[u8], at: usize) -> Outcome {
    let whole = drive_response(method, [data]);
    assert_eq!(whole, drive_response(method, split_at(data, at)), "split at {at}");
    if data.len() <= 2048 {
        assert_eq!(whole, drive_response(method, data.chunks(1)), "byte by byte");
    }
    if let Ok(m) = &whole {
        let again = drive_response(method, [&encode_response(m)[..]]);
        assert_eq!(comparable(Ok(m.clone())), comparable(again), "round trip");
    }
    whole
}

/// Asserts that `data` decodes as a chunked body the same whole, split at
/// `at` and byte by byte, and that the body encoded again in pieces of
/// `piece` bytes decodes to the same bytes.
pub fn chunked(data: &[u8], at: usize, piece: usize) -> Result<Vec<u8>, String> {
    let decode = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        drive_body(Decoder::chunked(), Bytes::new(), pieces).map(|(body, _)| body)
    };
    let whole = decode(&mut [data].into_iter());
    assert_eq!(whole, decode(&mut split_at(data, at).into_iter()), "split at {at}");
    if data.len() <= 2048 {
        assert_eq!(whole, decode(&mut data.chunks(1)), "byte by byte");
    }
    if let Ok(body) = &whole {
        let mut q = WriteQueue::default();
        for p in body.chunks(piece.max(1)) {
            q.push_chunk(Bytes::copy_from_slice(p));
        }
        q.push_last_chunk();
        let wire = drain(q);
        assert_eq!(decode(&mut [&wire[..]].into_iter()).as_ref(), Ok(body), "round trip");
    }
    whole
}

/// What a round trip must keep: the encoders write their own framing,
/// connection and date fields, so those are set aside.
fn comparable(o: Outcome) -> Outcome {
    o.map(|mut m| {
        for name in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION, header::DATE] {
            m.headers.remove(name);
        }
        if m.framing == Framing::Length(0) {
            m.framing = Framing::None;
        }
        m.rest.clear(); // what followed the message is not part of it
        m
    })
}

fn body_into(q: &mut WriteQueue, m: &Message) {
    match m.framing {
        Framing::Chunked => {
            // Pieces of 7: chunk boundaries need not match the original's.
            for p in m.body.chunks(7) {
                q.push_chunk(Bytes::copy_from_slice(p));
            }
            q.push_last_chunk();
        }
        _ => q.push(Bytes::copy_from_slice(&m.body)),
    }
}

fn drain(mut q: WriteQueue) -> Vec<u8> {
    use bytes::Buf;
    let mut out = Vec::new();
    while q.has_remaining() {
        let c = q.chunk();
        out.extend_from_slice(c);
        let n = c.len();
        q.advance(n);
    }
    out
}

fn encode_request(m: &Message) -> Vec<u8> {
    let mut parts = m.line.splitn(3, ' ');
    let method = parts.next().and_then(|s| Method::from_bytes(s.as_bytes()).ok()).unwrap_or_default();
    let uri = parts.next().unwrap_or("/");
    let mut req = http::Request::builder().method(method).uri(uri).body(()).unwrap_or_default();
    *req.headers_mut() = m.headers.clone();
    if !m.keep_alive {
        req.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    let mut q = WriteQueue::default();
    encode_request_head(q.head_mut(), &req, m.framing);
    body_into(&mut q, m);
    drain(q)
}

fn encode_response(m: &Message) -> Vec<u8> {
    let status = m.line.parse::<u16>().ok().and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or_default();
    let line = ResponseLine {
        status,
        framing: m.framing,
        http10: m.version == Version::HTTP_10,
        keep_alive: m.keep_alive,
    };
    let mut q = WriteQueue::default();
    encode_response_head(q.head_mut(), line, &m.headers, || b"Thu, 03 Dec 2026 10:00:00 GMT");
    body_into(&mut q, m);
    drain(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TargetForm;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,11}".prop_filter("not a framing or routing field", |n| {
            !matches!(
                n.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection" | "expect" | "date"
            )
        })
    }

    fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((token(), "[ -~]{0,20}".prop_map(|v| v.trim().to_owned())), 0..8)
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..300)
    }

    proptest! {
        /// Requests this crate encodes parse back to themselves, however the
        /// bytes are split into reads.
        #[test]
        fn requests_round_trip_in_any_split(
            method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"]),
            path in "/[a-zA-Z0-9/._~%!$&'()*+,;=:@-]{0,40}(\\?[a-z0-9=&]{0,20})?",
            fields in fields(),
            body in body(),
            chunked in any::<bool>(),
            keep_alive in any::<bool>(),
            at in any::<usize>(),
        ) {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, http::HeaderValue::from_static("app.internal"));
            for (n, v) in &fields {
                headers.append(http::HeaderName::try_from(n.as_str()).unwrap_or(header::ACCEPT),
                    http::HeaderValue::try_from(v.as_str()).unwrap_or(http::HeaderValue::from_static("x")));
            }
            let framing = match (body.is_empty(), chunked) {
                (true, _) => Framing::None,
                (false, true) => Framing::Chunked,
                (false, false) => Framing::Length(body.len() as u64),
            };
            let m = Message {
                line: format!("{method} {path} {:?}", TargetForm::Origin),
                version: Version::HTTP_11,
                headers,
                framing,
                keep_alive,
                body,
                rest: Vec::new(),
            };
            let wire = encode_request(&m);
            let got = request(&wire, at % (wire.len() + 1));
            prop_assert_eq!(comparable(got), comparable(Ok(m)));
        }

        /// Responses this crate encodes parse back to themselves, however the
        /// bytes are split into reads.
        #[test]
        fn responses_round_trip_in_any_split(
            status in 200u16..600,
            fields in fields(),
            body in body(),
            framing in 0u8..3,
            http10 in any::<bool>(),
            at in any::<usize>(),
        ) {
            let status = StatusCode::from_u16(status).unwrap_or_default();
            let framing = if !crate::status_has_body(status) {
                Framing::None
            } else {
                match framing {
                    0 => Framing::Length(body.len() as u64),
                    1 if !http10 => Framing::Chunked,
                    _ => Framing::UntilClose,
                }
            };
            let body = if framing == Framing::None { Vec::new() } else { body };
            let mut headers = HeaderMap::new();
            for (n, v) in &fields {
                headers.append(http::HeaderName::try_from(n.as_str()).unwrap_or(header::ACCEPT),
                    http::HeaderValue::try_from(v.as_str()).unwrap_or(http::HeaderValue::from_static("x")));
            }
            let m = Message {
                line: status.as_str().to_owned(),
                version: if http10 { Version::HTTP_10 } else { Version::HTTP_11 },
                headers,
                framing,
                keep_alive: framing != Framing::UntilClose,
                body,
                rest: Vec::new(),
            };
            let wire = encode_response(&m);
            let got = response(&Method::GET, &wire, at % (wire.len() + 1));
            prop_assert_eq!(comparable(got), comparable(Ok(m)));
        }

        /// Chunked bodies round trip whatever the chunk sizes.
        #[test]
        fn chunked_bodies_round_trip(body in body(), piece in 1usize..64, at in any::<usize>()) {
            let mut q = WriteQueue::default();
            for p in body.chunks(piece) {
                q.push_chunk(Bytes::copy_from_slice(p));
            }
            q.push_last_chunk();
            let wire = drain(q);
            prop_assert_eq!(chunked(&wire, at, piece + 3), Ok(body));
        }

        /// Arbitrary bytes, and valid heads with bytes flipped, parse the same
        /// in any split (the fuzz targets' properties, on proptest's inputs).
        #[test]
        fn any_bytes_parse_the_same_in_any_split(
            data in prop::collection::vec(any::<u8>(), 0..400),
            flip in any::<usize>(),
            byte in any::<u8>(),
            at in any::<usize>(),
        ) {
            let _ = request(&data, at);
            let _ = response(&Method::GET, &data, at);
            let _ = chunked(&data, at, 5);
            let mut valid = b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=\"y\"\r\nabc\r\n0\r\nt: 1\r\n\r\n".to_vec();
            let i = flip % valid.len();
            valid[i] = byte;
            let _ = request(&valid, at);
            let mut valid = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 204 No Content\r\n\r\n".to_vec();
            let i = flip % valid.len();
            valid[i] = byte;
            let _ = response(&Method::GET, &valid, at);
        }
    }

    #[test]
    fn pipelined_leftovers_are_kept() {
        let wire = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        let m = request(wire, 5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.rest, b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    }
}
