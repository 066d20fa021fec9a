//! The gRPC health check: `grpc.health.v1.Health/Check` (the standard
//! health protocol, <https://github.com/grpc/grpc/blob/master/doc/health-checking.md>).
//!
//! Its two messages are one field each, so they are encoded by hand here
//! rather than with a protobuf crate and generated code: a request is at
//! most a tag, a length and the service name; a response is read for field
//! 1 and every other field skipped, as protobuf requires. The tests check
//! both against a real gRPC server (tonic's, with prost's encoding).

use bytes::{BufMut, Bytes, BytesMut};
use vigil_session::Fetched;

/// The method's path.
pub(crate) const PATH: &str = "/grpc.health.v1.Health/Check";

/// A `HealthCheckRequest { service }` in gRPC's length-prefixed framing.
pub(crate) fn request(service: &str) -> Bytes {
    let mut message = BytesMut::with_capacity(service.len() + 16);
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited); proto3 leaves a default
        // (empty) string out.
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// `HealthCheckResponse.ServingStatus` values.
const SERVING: u64 = 1;

fn serving_status_name(v: u64) -> String {
    match v {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        other => format!("serving status {other}"),
    }
}

/// gRPC status codes by number.
fn status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("")
}

/// Judges a check's answer: `Ok` with the pass detail (`grpc: SERVING`),
/// or `Err` with what failed (`grpc: NOT_SERVING`, `grpc: NOT_FOUND: unknown
/// service`, `grpc: HTTP 404`).
pub(crate) fn judge(f: &Fetched) -> Result<String, String> {
    if f.head.version != http::Version::HTTP_2 {
        return Err(format!("grpc: the server answered over {:?}; gRPC needs h2", f.head.version));
    }
    if f.head.status != http::StatusCode::OK {
        return Err(format!("grpc: HTTP {}", f.head.status.as_u16()));
    }
    if f.truncated {
        // Its trailers were never read.
        return Err("grpc: answer longer than a health response can be".into());
    }
    // In the trailers; in the head for a trailers-only answer (an error).
    let field =
        |name: &str| f.trailers.as_ref().and_then(|t| t.get(name)).or_else(|| f.head.headers.get(name));
    let Some(status) = field("grpc-status") else {
        return Err("grpc: no grpc-status in the answer".into());
    };
    let code = status.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok());
    match code {
        Some(0) => {}
        Some(code) => {
            let name = status_name(code);
            let name = if name.is_empty() { format!("status {code}") } else { name.to_owned() };
            return Err(match field("grpc-message").map(|m| percent_decoded(m.as_bytes())) {
                Some(message) if !message.is_empty() => format!("grpc: {name}: {message}"),
                _ => format!("grpc: {name}"),
            });
        }
        None => {
            return Err(format!(
                "grpc: invalid grpc-status {:?}",
                status.as_bytes().escape_ascii().to_string()
            ));
        }
    }
    let serving = serving_status(&f.body)?;
    let name = serving_status_name(serving);
    if serving == SERVING { Ok(format!("grpc: {name}")) } else { Err(format!("grpc: {name}")) }
}

/// The `status` of the one `HealthCheckResponse` in a framed body.
fn serving_status(body: &[u8]) -> Result<u64, String> {
    let malformed = |why: &str| format!("grpc: malformed answer ({why})");
    let [flag, a, b, c, d, rest @ ..] = body else {
        return Err(malformed("no message"));
    };
    if *flag != 0 {
        return Err(malformed("compressed, which the check did not offer"));
    }
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    let Some(mut msg) = rest.get(..len) else {
        return Err(malformed("message shorter than its length"));
    };
    let mut status = 0; // proto3: an absent field is its default, UNKNOWN
    while !msg.is_empty() {
        let key = varint(&mut msg).ok_or_else(|| malformed("bad field key"))?;
        match (key >> 3, key & 7) {
            (1, 0) => status = varint(&mut msg).ok_or_else(|| malformed("bad status"))?,
            (_, 0) => {
                varint(&mut msg).ok_or_else(|| malformed("bad varint"))?;
            }
            (_, 1) => msg = msg.get(8..).ok_or_else(|| malformed("short fixed64"))?,
            (_, 5) => msg = msg.get(4..).ok_or_else(|| malformed("short fixed32"))?,
            (_, 2) => {
                let n = varint(&mut msg).ok_or_else(|| malformed("bad length"))?;
                let n = usize::try_from(n).map_err(|_| malformed("bad length"))?;
                msg = msg.get(n..).ok_or_else(|| malformed("field longer than the message"))?;
            }
            _ => return Err(malformed("unknown wire type")),
        }
    }
    Ok(status)
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(v);
        }
    }
    None
}

/// `grpc-message` is percent-encoded; shown decoded, at most 128
/// characters, control characters escaped (it ends up in logs and on
/// operators' terminals).
fn percent_decoded(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (raw[i], raw.get(i + 1).and_then(|&b| hex(b)), raw.get(i + 2).and_then(|&b| hex(b))) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    let mut shown = String::new();
    for c in String::from_utf8_lossy(&out).chars().take(128) {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(status: u16, body: &[u8], trailers: &[(&str, &str)]) -> Fetched {
        let mut head = http::Response::new(()).into_parts().0;
        head.status = http::StatusCode::from_u16(status).unwrap();
        head.version = http::Version::HTTP_2;
        let mut t = http::HeaderMap::new();
        for (k, v) in trailers {
            t.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        Fetched { head, body: Bytes::copy_from_slice(body), trailers: Some(t), truncated: false }
    }

    #[test]
    fn a_request_names_its_service_or_nothing() {
        assert_eq!(&request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(&request("db")[..], [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']);
        let long = "s".repeat(200);
        let framed = request(&long);
        assert_eq!(&framed[5..8], [0x0a, 0xc8, 0x01], "a two-byte length varint");
    }

    #[test]
    fn serving_passes_and_every_other_answer_fails_with_what_it_was() {
        let ok = [("grpc-status", "0")];
        assert_eq!(judge(&fetched(200, &[0, 0, 0, 0, 2, 0x08, 1], &ok)), Ok("grpc: SERVING".into()));
        assert_eq!(judge(&fetched(200, &[0, 0, 0, 0, 2, 0x08, 2], &ok)), Err("grpc: NOT_SERVING".into()));
        assert_eq!(
            judge(&fetched(200, &[0, 0, 0, 0, 0], &ok)),
            Err("grpc: UNKNOWN".into()),
            "absent: default"
        );
        // Unknown fields before the status are skipped.
        let body = [0, 0, 0, 0, 7, 0x12, 2, b'h', b'i', 0x18, 5, 0x08, 1];
        let body = &body[..];
        let mut framed = body.to_vec();
        framed[4] = (body.len() - 5) as u8;
        assert_eq!(judge(&fetched(200, &framed[..], &ok)), Ok("grpc: SERVING".into()));
        let nf = [("grpc-status", "5"), ("grpc-message", "unknown%20service")];
        assert_eq!(judge(&fetched(200, b"", &nf)), Err("grpc: NOT_FOUND: unknown service".into()));
        assert_eq!(judge(&fetched(404, b"", &[])), Err("grpc: HTTP 404".into()));
        assert!(judge(&fetched(200, b"", &[])).unwrap_err().contains("no grpc-status"));
        assert!(judge(&fetched(200, &[1, 0, 0, 0, 0], &ok)).unwrap_err().contains("compressed"));
        assert!(judge(&fetched(200, &[0, 0, 0, 0, 9, 0x08], &ok)).unwrap_err().contains("shorter"));
        assert!(judge(&fetched(200, &[0, 0, 0, 0, 1, 0x08], &ok)).unwrap_err().contains("bad status"));
        let odd = [("grpc-status", "42"), ("grpc-message", "a%1B[31mb%0A")];
        assert_eq!(
            judge(&fetched(200, b"", &odd)),
            Err("grpc: status 42: a\\u{1b}[31mb\\n".into()),
            "escaped"
        );
        let mut long = fetched(200, b"", &ok);
        long.truncated = true;
        assert!(judge(&long).unwrap_err().contains("longer"));
        assert!(judge(&fetched(200, &[0, 0, 0, 0, 1, 0x0f], &ok)).unwrap_err().contains("wire type"));
        let mut h1 = fetched(200, b"", &ok);
        h1.head.version = http::Version::HTTP_11;
        assert!(judge(&h1).unwrap_err().contains("needs h2"));
    }
}
