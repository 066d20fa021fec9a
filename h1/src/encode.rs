//! Heads on the wire: the request a client sends, the response a server
//! sends, each carrying exactly the framing given (never the message's own
//! framing headers).

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use crate::head::{Framing, status_has_body};

#[inline]
fn field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn length(out: &mut BytesMut, n: u64) {
    field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
}

/// Writes an HTTP/1.1 request head for `req` into `out`: its method, its
/// target in origin form (the path and query of whatever URI it has), its
/// header fields but `Content-Length` and `Transfer-Encoding`, `Host` from
/// the URI's authority if it has none, and the framing given.
///
/// [`Framing::None`] on a method whose body means something (POST, PUT,
/// PATCH), or on a request that carried a `Content-Length`, says
/// `content-length: 0`. A request cannot be close-delimited:
/// [`Framing::UntilClose`] is written as chunked.
///
/// ```
/// use bytes::BytesMut;
/// use vigil_h1::{Framing, encode_request_head};
///
/// let req = http::Request::post("http://app.internal/up?x=1").header("x-kept", "1").body(())?;
/// let mut out = BytesMut::new();
/// encode_request_head(&mut out, &req, Framing::Length(5));
/// assert_eq!(
///     &out[..],
///     b"POST /up?x=1 HTTP/1.1\r\nx-kept: 1\r\nhost: app.internal\r\ncontent-length: 5\r\n\r\n"
/// );
/// # Ok::<(), http::Error>(())
/// ```
pub fn encode_request_head<B>(out: &mut BytesMut, req: &http::Request<B>, framing: Framing) {
    out.reserve(256);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
    {
        field(out, b"host", a.as_str().as_bytes());
    }
    match framing {
        Framing::Length(n) => length(out, n),
        Framing::Chunked | Framing::UntilClose => field(out, b"transfer-encoding", b"chunked"),
        Framing::None
            if had_length || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) =>
        {
            length(out, 0);
        }
        Framing::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLine {
    /// The status.
    pub status: StatusCode,
    /// The body's framing (see [`Framing::for_response`]).
    pub framing: Framing,
    /// Answer as HTTP/1.0 (to an HTTP/1.0 request).
    pub http10: bool,
    /// Whether the connection stays open after this response: `false`
    /// adds `connection: close`; to HTTP/1.0, `true` adds
    /// `connection: keep-alive`.
    pub keep_alive: bool,
}

/// Writes a response head into `out`: the status line, `headers` but the
/// framing and connection fields (`Content-Length` is kept only where it
/// describes a body not sent, a response to HEAD), a `date` field from
/// `date()` unless `headers` has one (it is only asked for then), then the
/// framing and the connection's fate.
///
/// A 1xx, 204 or 304 never carries `Content-Length` or `Transfer-Encoding`.
///
/// ```
/// use bytes::BytesMut;
/// use http::{HeaderMap, StatusCode};
/// use vigil_h1::{Framing, ResponseLine, encode_response_head};
///
/// let mut out = BytesMut::new();
/// let line = ResponseLine { status: StatusCode::OK, framing: Framing::Chunked, http10: false, keep_alive: true };
/// encode_response_head(&mut out, line, &HeaderMap::new(), || b"Thu, 03 Dec 2026 10:00:00 GMT");
/// assert_eq!(
///     &out[..],
///     &b"HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 10:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"[..]
/// );
/// ```
pub fn encode_response_head<D: AsRef<[u8]>>(
    out: &mut BytesMut,
    line: ResponseLine,
    headers: &HeaderMap,
    date: impl FnOnce() -> D,
) {
    let ResponseLine { status, framing, http10, keep_alive } = line;
    // A HEAD response's length describes the body a GET would get.
    let keep_length = framing == Framing::None && status_has_body(status);
    out.reserve(256);
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        if (name == header::CONTENT_LENGTH && !keep_length)
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        has_date |= name == header::DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        field(out, b"date", date().as_ref());
    }
    match framing {
        Framing::Length(n) => length(out, n),
        Framing::Chunked => field(out, b"transfer-encoding", b"chunked"),
        Framing::None | Framing::UntilClose => {}
    }
    if !keep_alive || framing == Framing::UntilClose {
        field(out, b"connection", b"close");
    } else if http10 {
        field(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn request_heads_carry_our_framing_only() {
        let req = http::Request::post("http://app.internal/upload?x=1")
            .header("content-length", "999")
            .header("transfer-encoding", "chunked")
            .header("x-kept", "1")
            .body(())
            .unwrap_or_default();
        let head = |req: &http::Request<()>, framing| {
            let mut out = BytesMut::new();
            encode_request_head(&mut out, req, framing);
            out
        };
        assert_eq!(
            &head(&req, Framing::Length(5))[..],
            b"POST /upload?x=1 HTTP/1.1\r\nx-kept: 1\r\nhost: app.internal\r\ncontent-length: 5\r\n\r\n"
        );
        assert!(head(&req, Framing::None).ends_with(b"content-length: 0\r\n\r\n"));
        let req = http::Request::get("/").body(()).unwrap_or_default();
        assert_eq!(&head(&req, Framing::None)[..], b"GET / HTTP/1.1\r\n\r\n");
        let req = http::Request::put("/").body(()).unwrap_or_default();
        assert_eq!(&head(&req, Framing::None)[..], b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            &head(&req, Framing::Chunked)[..],
            b"PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn response_heads_never_frame_a_body_that_is_not_there() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("x"));
        headers.insert(header::DATE, HeaderValue::from_static("then"));
        let head = |status: u16, framing, http10, keep_alive| {
            let mut out = BytesMut::new();
            let status = StatusCode::from_u16(status).unwrap_or_default();
            let line = ResponseLine { status, framing, http10, keep_alive };
            encode_response_head(&mut out, line, &headers, || b"never: the headers have one");
            String::from_utf8_lossy(&out).into_owned()
        };
        assert_eq!(head(304, Framing::None, false, true), "HTTP/1.1 304 Not Modified\r\ndate: then\r\n\r\n");
        assert_eq!(
            head(204, Framing::None, false, false),
            "HTTP/1.1 204 No Content\r\ndate: then\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(
            head(200, Framing::None, false, true),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: then\r\n\r\n"
        );
        assert_eq!(
            head(200, Framing::Length(3), true, true),
            "HTTP/1.0 200 OK\r\ndate: then\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\n"
        );
        assert_eq!(
            head(200, Framing::UntilClose, true, true),
            "HTTP/1.0 200 OK\r\ndate: then\r\nconnection: close\r\n\r\n"
        );
    }
}
