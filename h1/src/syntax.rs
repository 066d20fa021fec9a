//! The field-value grammar the framing rules need (RFC 9110 section 5.6,
//! RFC 9112 sections 6 and 7), each rule strict: what is not in the
//! grammar is refused, never guessed at.

/// Whether `b` is a `tchar` (RFC 9110 section 5.6.2): the characters of a token.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().copied().all(is_tchar)
}

/// A `Content-Length` value: ASCII digits only (no sign, no list, no
/// spaces), at most 19 of them, as hyper reads it.
///
/// ```
/// assert_eq!(vigil_h1::parse_content_length(b"42"), Some(42));
/// assert_eq!(vigil_h1::parse_content_length(b"+42"), None);
/// assert_eq!(vigil_h1::parse_content_length(b"1,1"), None);
/// ```
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

/// A chunk-size line without its CRLF (RFC 9112 section 7.1.1):
/// `1*HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, where an
/// ext-name is a token and an ext-val a token or a quoted string. The size
/// has at most 16 hex digits; the extensions are checked, then ignored.
///
/// ```
/// assert_eq!(vigil_h1::parse_chunk_size(b"1a;name=value"), Some(26));
/// assert_eq!(vigil_h1::parse_chunk_size(b"1a ; q=\"a b\""), Some(26));
/// assert_eq!(vigil_h1::parse_chunk_size(b"1a;="), None); // an extension needs a name
/// assert_eq!(vigil_h1::parse_chunk_size(b"1a junk"), None);
/// ```
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    if !chunk_extensions_ok(&line[digits..]) {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        Some(n << 4 | u64::from(d))
    })
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`.
fn chunk_extensions_ok(mut rest: &[u8]) -> bool {
    let ws = |s: &[u8]| -> usize { s.iter().take_while(|&&b| b == b' ' || b == b'\t').count() };
    loop {
        rest = &rest[ws(rest)..];
        let Some(after) = rest.strip_prefix(b";") else { return rest.is_empty() };
        rest = &after[ws(after)..];
        let name = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 {
            return false;
        }
        rest = &rest[name..];
        let eq = ws(rest);
        let Some(after) = rest[eq..].strip_prefix(b"=") else { continue };
        rest = &after[ws(after)..];
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let Some(len) = quoted_string_len(quoted) else { return false };
            rest = &quoted[len..];
        } else {
            let value = rest.iter().take_while(|&&b| is_tchar(b)).count();
            if value == 0 {
                return false;
            }
            rest = &rest[value..];
        }
    }
}

/// The length of a quoted string's remainder after its opening quote, up to
/// and including the closing one; `None` when it does not close or holds a
/// character the grammar forbids.
fn quoted_string_len(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let next = *s.get(i + 1)?;
                if !(next == b'\t' || next == b' ' || (0x21..=0x7e).contains(&next) || next >= 0x80) {
                    return None;
                }
                i += 2;
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// Whether a `Connection` header value lists `token` (case-insensitive).
///
/// ```
/// assert!(vigil_h1::connection_has(b"keep-alive, Close", b"close"));
/// assert!(!vigil_h1::connection_has(b"closed", b"close"));
/// ```
pub fn connection_has(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the `Transfer-Encoding` fields of a message say, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Codings {
    /// `chunked` seen, and where: it must be the only coding.
    chunked: u32,
    /// Codings other than `chunked` (gzip, deflate, anything).
    other: u32,
    /// An empty or malformed list member.
    malformed: bool,
}

/// What a message's transfer codings allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodingVerdict {
    /// Exactly one coding, `chunked`.
    Chunked,
    /// A coding we do not decode: relaying it without decoding it would
    /// drop it, so the message is refused (a request gets 501).
    Unsupported,
    /// `chunked` twice, or an empty or malformed list.
    Malformed,
}

impl Codings {
    /// Adds one `Transfer-Encoding` field value.
    pub(crate) fn add(&mut self, value: &[u8]) {
        for member in value.split(|&b| b == b',') {
            // A coding may carry parameters (`gzip;q=1` is not valid here,
            // but `x;p=v` is a legal transfer-coding): its name decides.
            let name = member.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
            if !is_token(name) {
                self.malformed = true;
            } else if name.eq_ignore_ascii_case(b"chunked") {
                if member.contains(&b';') {
                    self.malformed = true; // chunked takes no parameters
                }
                self.chunked += 1;
            } else {
                self.other += 1;
            }
        }
    }

    pub(crate) fn verdict(&self) -> CodingVerdict {
        if self.malformed || self.chunked > 1 {
            CodingVerdict::Malformed
        } else if self.other > 0 || self.chunked == 0 {
            CodingVerdict::Unsupported
        } else {
            CodingVerdict::Chunked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        for bad in [&b""[..], b"+5", b"-1", b"1,1", b" 1", b"1 ", b"99999999999999999999", b"0x10"] {
            assert_eq!(parse_content_length(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunk_sizes_and_extensions_follow_the_grammar() {
        for (line, size) in [
            (&b"0"[..], 0),
            (b"A", 10),
            (b"ffffffffffffffff", u64::MAX),
            (b"A;x", 10),
            (b"A ; x=y", 10),
            (b"A;x=y;z", 10),
            (b"A;x=\"quoted; value\"", 10),
            (b"A;x=\"esc\\\"aped\"", 10),
            (b"A\t;\tx\t=\ty", 10),
        ] {
            assert_eq!(parse_chunk_size(line), Some(size), "{}", String::from_utf8_lossy(line));
        }
        for bad in [
            &b""[..],
            b"zz",
            b"-1",
            b"1 2",
            b"+5",
            b"11111111111111111",
            b"A;",
            b"A;=y",
            b"A;x=",
            b"A;x=\"open",
            b"A;x=y z",
            b"A;x y",
            b"A;x=a\"b",
            b"A\n",
            b"A;x\r",
            b"A;x=\"\x01\"",
        ] {
            assert_eq!(parse_chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_a_single_chunked_is_decodable() {
        let verdict = |values: &[&[u8]]| {
            let mut c = Codings::default();
            for v in values {
                c.add(v);
            }
            c.verdict()
        };
        assert_eq!(verdict(&[b"chunked"]), CodingVerdict::Chunked);
        assert_eq!(verdict(&[b" Chunked "]), CodingVerdict::Chunked);
        assert_eq!(verdict(&[b"gzip, chunked"]), CodingVerdict::Unsupported);
        assert_eq!(verdict(&[b"gzip", b"chunked"]), CodingVerdict::Unsupported);
        assert_eq!(verdict(&[b"chunked, gzip"]), CodingVerdict::Unsupported);
        assert_eq!(verdict(&[b"gzip"]), CodingVerdict::Unsupported);
        assert_eq!(verdict(&[b"chunked, chunked"]), CodingVerdict::Malformed);
        assert_eq!(verdict(&[b"chunked", b"chunked"]), CodingVerdict::Malformed);
        assert_eq!(verdict(&[b"chunked,"]), CodingVerdict::Malformed);
        assert_eq!(verdict(&[b""]), CodingVerdict::Malformed);
        assert_eq!(verdict(&[b"chunked;x=1"]), CodingVerdict::Malformed);
        assert_eq!(verdict(&[b"ch unked"]), CodingVerdict::Malformed);
    }

    #[test]
    fn connection_tokens() {
        assert!(connection_has(b"keep-alive, Close", b"close"));
        assert!(connection_has(b" close ", b"close"));
        assert!(!connection_has(b"closed", b"close"));
        assert!(!connection_has(b"", b"close"));
    }
}
