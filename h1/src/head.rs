//! Request and response heads: parsed into one framing type, strict.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::syntax::{self, CodingVerdict, Codings};

/// Most header fields one head may carry (hyper's default is 100).
pub const MAX_HEADERS: usize = 128;

/// What a request head may be: the limits a server enforces while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// The whole head, request line to the blank line (431 past it).
    pub max_head: usize,
    /// Header fields, at most [`MAX_HEADERS`] (431 past it).
    pub max_headers: usize,
    /// The request target (414 past it).
    pub max_uri: usize,
}

impl RequestLimits {
    /// A `max_head` bound alone: as many fields as the parser holds, a
    /// target as long as the head.
    pub const fn head(max_head: usize) -> Self {
        Self { max_head, max_headers: MAX_HEADERS, max_uri: max_head }
    }
}

/// How a message's body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// No body (a request without one; a response to HEAD, a 1xx, 204 or 304).
    None,
    /// Exactly this many bytes (more than zero for a parsed message).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

impl Framing {
    /// How a response to a request of `method` with `status` and a body of
    /// `len` bytes (`None`: not known in advance) is framed to an HTTP/1.x
    /// client: no body where the protocol allows none, a length when it is
    /// known, chunked to HTTP/1.1, and close-delimited to HTTP/1.0.
    ///
    /// ```
    /// use http::{Method, StatusCode};
    /// use vigil_h1::Framing;
    ///
    /// assert_eq!(Framing::for_response(&Method::GET, StatusCode::OK, Some(5), false), Framing::Length(5));
    /// assert_eq!(Framing::for_response(&Method::GET, StatusCode::OK, None, false), Framing::Chunked);
    /// assert_eq!(Framing::for_response(&Method::GET, StatusCode::OK, None, true), Framing::UntilClose);
    /// assert_eq!(Framing::for_response(&Method::HEAD, StatusCode::OK, Some(5), false), Framing::None);
    /// assert_eq!(Framing::for_response(&Method::GET, StatusCode::NOT_MODIFIED, None, false), Framing::None);
    /// ```
    pub fn for_response(method: &Method, status: StatusCode, len: Option<u64>, http10: bool) -> Self {
        if method == Method::HEAD || !status_has_body(status) {
            Framing::None
        } else if let Some(n) = len {
            Framing::Length(n)
        } else if http10 {
            Framing::UntilClose
        } else {
            Framing::Chunked
        }
    }
}

/// Whether a response with `status` may have a body at all (RFC 9110
/// section 6.4.1: 1xx, 204 and 304 never do).
pub fn status_has_body(status: StatusCode) -> bool {
    !(status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED)
}

/// The form of a request target (RFC 9112 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetForm {
    /// `/path?query`: the usual one.
    Origin,
    /// `http://host/path`: to a proxy.
    Absolute,
    /// `host:port`: CONNECT only.
    Authority,
    /// `*`: server-wide OPTIONS only.
    Asterisk,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and header fields (values are slices of the
    /// read buffer, not copies). The version is `HTTP/1.0` or `HTTP/1.1`.
    pub request: http::Request<()>,
    /// The target's form.
    pub target_form: TargetForm,
    /// How the body is delimited: [`Framing::None`], [`Framing::Length`] or
    /// [`Framing::Chunked`].
    pub framing: Framing,
    /// Whether the client allows another request on this connection after
    /// this one (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version and header fields. A 204 or 304 comes without its
    /// `Content-Length` and `Transfer-Encoding`: they describe no body here.
    pub response: http::Response<()>,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this
    /// response's body (never after a close-delimited one).
    pub keep_alive: bool,
}

/// A parsed response head: an interim one (1xx) or the final one.
#[derive(Debug)]
pub enum Response {
    /// A 1xx head: `100 Continue`, `103 Early Hints`, `101 Switching Protocols`.
    Interim(http::Response<()>),
    /// The final head.
    Final(ResponseHead),
}

/// Why a head was refused. Each says what a server answers
/// ([`HeadError::status`]); a client treats any of them as a protocol error
/// of the server it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// The head is longer than the limit given (431 for a request).
    #[error("the head is larger than allowed")]
    TooLarge,
    /// More header fields than allowed (431 for a request).
    #[error("the head has too many header fields")]
    TooManyHeaders,
    /// The request target is longer than allowed (414).
    #[error("the request target is longer than allowed")]
    UriTooLong,
    /// Not HTTP/1.x, or a field or target the grammar forbids (400).
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    /// The body's length cannot be known for sure: a request smuggling
    /// vector (400, and worth counting).
    #[error("ambiguous framing: {0}")]
    Framing(&'static str),
    /// A transfer coding other than one final `chunked`: not decoded here,
    /// so it cannot be relayed (501 for a request).
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
}

impl HeadError {
    /// The status a server answers with (and then closes the connection).
    pub fn status(self) -> StatusCode {
        match self {
            Self::TooLarge | Self::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::Malformed(_) | Self::Framing(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

type Headers<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Takes the whole buffer for parsing: header values become slices of it.
/// Returns the frozen bytes; a head that is not complete yet goes back with
/// [`put_back`] (no copy: nothing else holds the bytes then).
#[inline]
fn take(buf: &mut BytesMut) -> Bytes {
    buf.split().freeze()
}

#[inline]
fn put_back(buf: &mut BytesMut, bytes: Bytes) {
    *buf = BytesMut::from(bytes);
}

/// Puts `value` in `slot`, which holds what `Request::new` or
/// `Response::new` made there: an empty header map or the default URI,
/// neither of which owns an allocation (the test `defaults_own_nothing`
/// holds the `http` crate to that). Forgetting the old value instead of
/// dropping it saves its drop glue: about 150 instructions a proxied
/// request, under callgrind.
#[inline]
fn fill<T>(slot: &mut T, value: T) {
    std::mem::forget(std::mem::replace(slot, value));
}

#[inline]
fn header_name(name: &str) -> Result<HeaderName, HeadError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeadError::Malformed("invalid header name"))
}

#[inline]
fn header_value(bytes: &Bytes, value: &[u8]) -> Result<HeaderValue, HeadError> {
    HeaderValue::from_maybe_shared(bytes.slice_ref(value))
        .map_err(|_| HeadError::Malformed("invalid header value"))
}

/// Parses one request head off the front of `buf`.
///
/// `Ok(None)` until the head is complete (`buf` is left as it was). A
/// complete head comes with what followed it (a body's first bytes, a
/// pipelined request), and `buf` is left empty. Empty lines before the
/// request line are skipped (RFC 9112 section 2.2).
///
/// # Errors
/// A [`HeadError`]: too large (`max_head` bytes, [`MAX_HEADERS`] fields),
/// malformed, ambiguous framing, or a transfer coding other than a single
/// `chunked`. Also refused: `Transfer-Encoding` in an HTTP/1.0 request, two
/// `Host` fields, a `Host` that disagrees with an absolute target's
/// authority, an HTTP/1.1 request without `Host`, an authority-form target
/// on any method but CONNECT, and `*` on any method but OPTIONS.
///
/// ```
/// use bytes::BytesMut;
/// use vigil_h1::{Framing, parse_request};
///
/// let mut buf = BytesMut::from(&b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"[..]);
/// let (head, rest) = parse_request(&mut buf, 64 * 1024)?.expect("complete");
/// assert_eq!(head.framing, Framing::Length(3));
/// assert!(head.keep_alive);
/// assert_eq!(&rest[..], b"abc");
///
/// let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..]);
/// assert_eq!(parse_request(&mut buf, 64 * 1024).unwrap_err().status(), 501);
/// # Ok::<(), vigil_h1::HeadError>(())
/// ```
pub fn parse_request(buf: &mut BytesMut, max_head: usize) -> Result<Option<(RequestHead, Bytes)>, HeadError> {
    parse_request_limited(buf, RequestLimits::head(max_head))
}

/// [`parse_request`] with every limit a server sets: the head's size, its
/// field count ([`HeadError::TooManyHeaders`]) and its target's length
/// ([`HeadError::UriTooLong`], also when a request line alone fills
/// `max_head`).
///
/// # Errors
/// As [`parse_request`], and the limits above.
///
/// ```
/// use bytes::BytesMut;
/// use vigil_h1::{RequestLimits, parse_request_limited};
///
/// let limits = RequestLimits { max_head: 1024, max_headers: 2, max_uri: 16 };
/// let mut buf = BytesMut::from(&b"GET /a-very-long-path-indeed HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
/// assert_eq!(parse_request_limited(&mut buf, limits).unwrap_err().status(), 414);
/// let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nx: 1\r\ny: 2\r\n\r\n"[..]);
/// assert_eq!(parse_request_limited(&mut buf, limits).unwrap_err().status(), 431);
/// ```
pub fn parse_request_limited(
    buf: &mut BytesMut,
    limits: RequestLimits,
) -> Result<Option<(RequestHead, Bytes)>, HeadError> {
    let max_head = limits.max_head;
    let skip = buf.chunks(2).take_while(|c| *c == b"\r\n").count() * 2;
    if skip > 0 {
        let _ = buf.split_to(skip);
    }
    if buf.is_empty() {
        return Ok(None);
    }
    let bytes = take(buf);
    let mut headers: Headers<'_> = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(&bytes, &mut headers) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= max_head => {
            // No end of the request line yet: the target is what is too long.
            let line_open = !bytes.contains(&b'\n');
            return Err(if line_open { HeadError::UriTooLong } else { HeadError::TooLarge });
        }
        Ok(httparse::Status::Partial) => {
            put_back(buf, bytes);
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("not HTTP/1.x")),
        Err(_) => return Err(HeadError::Malformed("not a request head")),
    };
    if req.headers.len() > limits.max_headers {
        return Err(HeadError::TooManyHeaders);
    }
    if req.path.is_some_and(|p| p.len() > limits.max_uri) {
        return Err(HeadError::UriTooLong);
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let path = req.path.unwrap_or("");
    let uri = Uri::from_maybe_shared(bytes.slice_ref(path.as_bytes()))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let target_form = if path == "*" {
        TargetForm::Asterisk
    } else if path.starts_with('/') {
        TargetForm::Origin
    } else if uri.scheme().is_some() {
        if uri.authority().is_none() {
            return Err(HeadError::Malformed("an absolute target without an authority"));
        }
        TargetForm::Absolute
    } else {
        TargetForm::Authority
    };
    match target_form {
        TargetForm::Authority if method != Method::CONNECT => {
            return Err(HeadError::Malformed("an authority-form target on a method other than CONNECT"));
        }
        TargetForm::Asterisk if method != Method::OPTIONS => {
            return Err(HeadError::Malformed("a '*' target on a method other than OPTIONS"));
        }
        TargetForm::Origin | TargetForm::Absolute if method == Method::CONNECT => {
            return Err(HeadError::Malformed("CONNECT needs an authority-form target"));
        }
        _ => {}
    }
    let http10 = req.version == Some(0);

    // Room for a few more: a proxy adds `Via`, `X-Request-Id` and three
    // `X-Forwarded-*` fields, and a full map rehashes.
    let mut map = HeaderMap::with_capacity(req.headers.len() + 6);
    let mut codings = Codings::default();
    let (mut te, mut cl, mut length, mut hosts) = (0u32, 0u32, None::<u64>, 0u32);
    let (mut close, mut keep_alive_token, mut expect_continue) = (false, false, false);
    let mut host_value: Option<&[u8]> = None;
    for h in req.headers.iter() {
        let name = header_name(h.name)?;
        let value = header_value(&bytes, h.value)?;
        if name == header::TRANSFER_ENCODING {
            te += 1;
            codings.add(value.as_bytes());
        } else if name == header::CONTENT_LENGTH {
            cl += 1;
            length = syntax::parse_content_length(value.as_bytes());
        } else if name == header::HOST {
            hosts += 1;
            host_value = Some(h.value);
        } else if name == header::CONNECTION {
            close |= syntax::connection_has(value.as_bytes(), b"close");
            keep_alive_token |= syntax::connection_has(value.as_bytes(), b"keep-alive");
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        map.append(name, value);
    }
    if te > 0 && cl > 0 {
        return Err(HeadError::Framing("Content-Length with Transfer-Encoding"));
    }
    if cl > 1 {
        return Err(HeadError::Framing("more than one Content-Length"));
    }
    if te > 0 && http10 {
        // RFC 9112 section 6.1: the framing is faulty.
        return Err(HeadError::Framing("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    if hosts == 0 && !http10 {
        return Err(HeadError::Malformed("an HTTP/1.1 request without Host"));
    }
    if let (TargetForm::Absolute, Some(host)) = (target_form, host_value)
        && !same_authority(host, &uri)
    {
        return Err(HeadError::Malformed("Host disagrees with the target's authority"));
    }
    let framing = if te > 0 {
        match codings.verdict() {
            CodingVerdict::Chunked => Framing::Chunked,
            CodingVerdict::Unsupported => return Err(HeadError::UnsupportedCoding),
            CodingVerdict::Malformed => return Err(HeadError::Malformed("invalid Transfer-Encoding")),
        }
    } else if cl > 0 {
        match length {
            None => return Err(HeadError::Malformed("invalid Content-Length")),
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        }
    } else {
        Framing::None
    };
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    fill(request.uri_mut(), uri);
    *request.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    fill(request.headers_mut(), map);
    let head = RequestHead {
        request,
        target_form,
        framing,
        keep_alive: !close && (!http10 || keep_alive_token),
        expect_continue: expect_continue && !http10,
    };
    Ok(Some((head, bytes.slice(len..))))
}

/// Whether a `Host` value names the absolute target's authority: the same
/// host (any case) and the same port, a missing one being the scheme's
/// default.
fn same_authority(host: &[u8], uri: &Uri) -> bool {
    let Some(authority) = uri.authority() else { return false };
    let default = if uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("https")) { 443 } else { 80 };
    let Ok(host) = std::str::from_utf8(host) else { return false };
    let Ok(host) = host.parse::<http::uri::Authority>() else { return false };
    host.host().eq_ignore_ascii_case(authority.host())
        && host.port_u16().unwrap_or(default) == authority.port_u16().unwrap_or(default)
}

/// Parses one response head off the front of `buf`, for a request of
/// `method` (a response to HEAD has no body whatever it says).
///
/// `Ok(None)` until the head is complete (`buf` is left as it was). A
/// complete head (interim or final) comes with what followed it, and `buf`
/// is left empty.
///
/// # Errors
/// A [`HeadError`]: too large, malformed, `Content-Length` with
/// `Transfer-Encoding`, differing `Content-Length` values, a transfer
/// coding other than a single `chunked` (relaying it would drop a coding
/// nobody decoded, so nginx refuses it too), or `Transfer-Encoding` in an
/// HTTP/1.0 response.
///
/// ```
/// use bytes::BytesMut;
/// use http::Method;
/// use vigil_h1::{Framing, Response, parse_response};
///
/// let mut buf = BytesMut::from(&b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"[..]);
/// let Some((Response::Final(head), _)) = parse_response(&mut buf, 64 * 1024, &Method::GET)? else {
///     panic!("a final head")
/// };
/// assert_eq!(head.framing, Framing::None);
/// assert!(head.response.headers().get("content-length").is_none());
/// # Ok::<(), vigil_h1::HeadError>(())
/// ```
pub fn parse_response(
    buf: &mut BytesMut,
    max_head: usize,
    method: &Method,
) -> Result<Option<(Response, Bytes)>, HeadError> {
    let bytes = take(buf);
    // Uninitialized: a head has a handful of headers, and zeroing room for
    // MAX_HEADERS showed in profiles.
    let mut headers: Headers<'_> = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        &bytes,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => {
            put_back(buf, bytes);
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("not a response head")),
    };
    let status = StatusCode::from_u16(resp.code.unwrap_or(0))
        .map_err(|_| HeadError::Malformed("invalid status code"))?;
    let http10 = resp.version == Some(0);

    // Room for one more: a proxy adds `Via`, and a full map rehashes.
    let mut map = HeaderMap::with_capacity(resp.headers.len() + 1);
    let mut codings = Codings::default();
    let (mut te, mut length) = (false, None::<u64>);
    let (mut close, mut keep_alive_token) = (false, false);
    for h in resp.headers.iter() {
        let name = header_name(h.name)?;
        let value = header_value(&bytes, h.value)?;
        if name == header::CONTENT_LENGTH {
            let n = syntax::parse_content_length(value.as_bytes())
                .ok_or(HeadError::Framing("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Framing("differing Content-Length values"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            te = true;
            codings.add(value.as_bytes());
        } else if name == header::CONNECTION {
            close |= syntax::connection_has(value.as_bytes(), b"close");
            keep_alive_token |= syntax::connection_has(value.as_bytes(), b"keep-alive");
        }
        map.append(name, value);
    }
    let version = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    if status.is_informational() {
        fill(response.headers_mut(), map);
        return Ok(Some((Response::Interim(response), bytes.slice(len..))));
    }
    let framing = if *method == Method::HEAD || !status_has_body(status) {
        if !status_has_body(status) {
            // They describe no body here: the client must not see them.
            map.remove(header::CONTENT_LENGTH);
            map.remove(header::TRANSFER_ENCODING);
        }
        Framing::None
    } else if te {
        if length.is_some() {
            // RFC 9112 section 6.3: a smuggling vector; nginx refuses it too.
            return Err(HeadError::Framing("Content-Length with Transfer-Encoding"));
        }
        if http10 {
            return Err(HeadError::Framing("Transfer-Encoding in an HTTP/1.0 response"));
        }
        match codings.verdict() {
            CodingVerdict::Chunked => Framing::Chunked,
            CodingVerdict::Unsupported => return Err(HeadError::UnsupportedCoding),
            CodingVerdict::Malformed => return Err(HeadError::Malformed("invalid Transfer-Encoding")),
        }
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let keep_alive = framing != Framing::UntilClose && !close && (!http10 || keep_alive_token);
    fill(response.headers_mut(), map);
    Ok(Some((Response::Final(ResponseHead { response, framing, keep_alive }), bytes.slice(len..))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8]) -> Result<RequestHead, HeadError> {
        let mut buf = BytesMut::from(raw);
        parse_request(&mut buf, 64 * 1024).map(|r| r.map(|(h, _)| h).expect("a complete head"))
    }

    fn response(raw: &[u8]) -> Result<ResponseHead, HeadError> {
        response_to(raw, &Method::GET)
    }

    fn response_to(raw: &[u8], method: &Method) -> Result<ResponseHead, HeadError> {
        match parse_response(&mut BytesMut::from(raw), 64 * 1024, method)? {
            Some((Response::Final(h), _)) => Ok(h),
            other => panic!("not a final head: {other:?}"),
        }
    }

    #[test]
    fn defaults_own_nothing() {
        // What `fill` forgets must own no allocation.
        assert_eq!(http::Request::new(()).headers().capacity(), 0);
        assert_eq!(http::Response::new(()).headers().capacity(), 0);
        assert_eq!(http::Request::new(()).uri(), &Uri::from_static("/"));
    }

    #[test]
    fn request_framing_and_keep_alive() {
        let h = request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((h.framing, h.keep_alive, h.target_form), (Framing::None, true, TargetForm::Origin));
        let h = request(b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = request(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::None);
        let h = request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = request(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        let h = request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let h = request(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\ncontent-length: 1\r\n\r\n")
            .unwrap();
        assert!(h.expect_continue);
        let h = request(b"GET http://a.example/x?y HTTP/1.1\r\nHost: A.example\r\n\r\n").unwrap();
        assert_eq!(h.target_form, TargetForm::Absolute);
        let h = request(b"GET http://a.example:80/ HTTP/1.1\r\nHost: a.example\r\n\r\n").unwrap();
        assert_eq!(h.target_form, TargetForm::Absolute, "the default port is the same authority");
        let h = request(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(h.target_form, TargetForm::Asterisk);
        let h = request(b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n").unwrap();
        assert_eq!(h.target_form, TargetForm::Authority);
    }

    #[test]
    fn hostile_requests_are_refused_with_the_right_status() {
        for (raw, status) in [
            (&b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"[..], 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: \r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: +2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", 400),
            (b"GET http://a.example/ HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", 400),
            (b"GET a.example:80 HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
            (b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ] {
            let got = request(raw).map(|_| ()).map_err(HeadError::status);
            assert_eq!(got, Err(StatusCode::from_u16(status).unwrap()), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn heads_wait_for_more_bytes_and_are_bounded() {
        let mut buf = BytesMut::from(&b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n"[..]);
        assert!(matches!(parse_request(&mut buf, 1024), Ok(None)));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\nHost: a\r\n", "the empty lines are gone, the rest kept");
        buf.extend_from_slice(b"\r\nGET /2 HTTP/1.1\r\n");
        let (head, rest) = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(head.request.uri(), "/");
        assert_eq!(&rest[..], b"GET /2 HTTP/1.1\r\n");
        assert!(buf.is_empty());
        let big = [&b"GET / HTTP/1.1\r\nx: "[..], &[b'a'; 2000]].concat();
        assert_eq!(parse_request(&mut BytesMut::from(&big[..]), 1024).unwrap_err(), HeadError::TooLarge);
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..]]
            .into_iter()
            .chain(std::iter::repeat_n(&b"x: 1\r\n"[..], MAX_HEADERS + 1))
            .chain([&b"\r\n"[..]])
            .flatten()
            .copied()
            .collect();
        let err = parse_request(&mut BytesMut::from(&many[..]), 64 * 1024).unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn limits_on_fields_and_target() {
        let limits = RequestLimits { max_head: 256, max_headers: 3, max_uri: 20 };
        let parse = |raw: &[u8]| parse_request_limited(&mut BytesMut::from(raw), limits);
        assert!(
            parse(b"GET /12345678901234567 HTTP/1.1\r\nHost: a\r\nb: 1\r\nc: 2\r\n\r\n").unwrap().is_some()
        );
        assert_eq!(
            parse(b"GET /123456789012345678901 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap_err(),
            HeadError::UriTooLong
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nb: 1\r\nc: 2\r\nd: 3\r\n\r\n").unwrap_err(),
            HeadError::TooManyHeaders
        );
        // A request line that fills the head alone is a target too long,
        // whatever the target limit.
        let line = [&b"GET /"[..], &[b'a'; 300]].concat();
        assert_eq!(parse(&line).unwrap_err(), HeadError::UriTooLong);
        let fields = [&b"GET / HTTP/1.1\r\nx: "[..], &[b'a'; 300]].concat();
        assert_eq!(parse(&fields).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let f = |raw: &[u8]| response(raw).map(|h| (h.framing, h.keep_alive));
        assert_eq!(f(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), Ok((Framing::Length(5), true)));
        assert_eq!(f(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"), Ok((Framing::Chunked, true)));
        assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n"), Ok((Framing::UntilClose, false)));
        assert_eq!(f(b"HTTP/1.1 204 No Content\r\n\r\n"), Ok((Framing::None, true)));
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n"),
            Ok((Framing::Length(2), false))
        );
        assert_eq!(f(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n"), Ok((Framing::Length(2), false)));
        assert_eq!(
            f(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nConnection: Keep-Alive\r\n\r\n"),
            Ok((Framing::Length(2), true))
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n"),
            Ok((Framing::Length(2), true)),
            "the same length twice is one length"
        );
        let head = response_to(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &Method::HEAD).unwrap();
        assert_eq!(head.framing, Framing::None);
        assert_eq!(head.response.headers()["content-length"], "5", "HEAD keeps the length it describes");
        let head = response(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\netag: x\r\n\r\n").unwrap();
        assert_eq!(head.framing, Framing::None);
        assert!(head.response.headers().get("content-length").is_none());
        assert_eq!(head.response.headers()["etag"], "x");
    }

    #[test]
    fn ambiguous_or_malformed_responses_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1,1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 099 What\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        ] {
            assert!(response(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn interim_heads_come_alone_with_what_follows() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
        let Ok(Some((Response::Interim(head), rest))) = parse_response(&mut buf, 1024, &Method::GET) else {
            panic!("an interim head");
        };
        assert_eq!(head.status(), 100);
        let mut buf = BytesMut::from(&rest[..]);
        assert!(matches!(parse_response(&mut buf, 1024, &Method::GET), Ok(Some((Response::Final(_), _)))));
        assert!(matches!(
            parse_response(&mut BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]), 1024, &Method::GET),
            Ok(None)
        ));
    }
}
