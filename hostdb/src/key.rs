//! Origin keys: the canonical `host:port` under which HostDB files an origin.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::AddrError;

/// The port an origin gets when its text names none (SPEC: "port 80 when absent").
pub const DEFAULT_PORT: u16 = 80;

/// An origin's identity: a lower-cased host name or IP literal plus a port.
///
/// The canonical text is `host:port` (`[v6]:port` for IPv6 literals); it is
/// what [`HostDb`](crate::HostDb) is keyed by, so a lookup can be made with a
/// plain `&str` ([`Borrow<str>`]). Cloning is a reference-count increment.
///
/// ```
/// use vigil_hostdb::OriginKey;
///
/// let key: OriginKey = "App.Internal:8080".parse()?;
/// assert_eq!(key.as_str(), "app.internal:8080");
/// assert_eq!(key.host(), "app.internal");
/// assert_eq!(key.port(), 8080);
/// assert_eq!("app.internal".parse::<OriginKey>()?.port(), 80);
/// # Ok::<(), vigil_hostdb::AddrError>(())
/// ```
#[derive(Clone)]
pub struct OriginKey {
    text: Arc<str>,
    /// xxh3-64 of `text`, computed once: the hashed key HostDB files it under.
    hash: u64,
    /// Byte length of the host part inside `text` (brackets excluded for v6).
    host: (u16, u16),
    port: u16,
}

impl OriginKey {
    /// Builds a key from a host (name or IP literal) and a port.
    ///
    /// # Errors
    /// [`AddrError`] naming the input when the host is not a valid DNS name or IP literal.
    pub fn new(host: &str, port: u16) -> Result<Self, AddrError> {
        let host = host.trim_end_matches('.');
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(Self::from_ip(ip, port));
        }
        validate_hostname(host)?;
        let lower = host.to_ascii_lowercase();
        let text: Arc<str> = format!("{lower}:{port}").into();
        Ok(Self { host: (0, lower.len() as u16), hash: hash64(&text), text, port })
    }

    fn from_ip(ip: IpAddr, port: u16) -> Self {
        let sa = SocketAddr::new(ip, port).to_string();
        let host = match ip {
            IpAddr::V4(v4) => (0, v4.to_string().len() as u16),
            IpAddr::V6(v6) => (1, 1 + v6.to_string().len() as u16),
        };
        Self { hash: hash64(&sa), text: sa.into(), host, port }
    }

    /// The canonical `host:port` text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host part: a lower-cased name, or an IP literal without brackets.
    pub fn host(&self) -> &str {
        &self.text[self.host.0 as usize..self.host.1 as usize]
    }

    /// The key's 64-bit hash: xxh3 of the canonical text. xxh3 is a fixed,
    /// specified function, so every process and every node computes the same
    /// value (the cluster files shared status under it). Computed once, when
    /// the key is built.
    ///
    /// ```
    /// let a: vigil_hostdb::OriginKey = "App:80".parse()?;
    /// assert_eq!(a.hash64(), vigil_hostdb::OriginKey::hash_str("app:80"));
    /// # Ok::<(), vigil_hostdb::AddrError>(())
    /// ```
    #[inline]
    pub fn hash64(&self) -> u64 {
        self.hash
    }

    /// [`OriginKey::hash64`] of a canonical `host:port` text.
    #[inline]
    pub fn hash_str(canonical: &str) -> u64 {
        hash64(canonical)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address when it is a literal (no DNS needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host().parse().ok()
    }
}

impl FromStr for OriginKey {
    type Err = AddrError;

    /// Parses `host`, `host:port`, `ip:port` or `[v6]:port`; the port defaults to 80.
    fn from_str(s: &str) -> Result<Self, AddrError> {
        let bad = |why: &'static str| AddrError::new(s, why);
        if s.is_empty() {
            return Err(bad("empty origin"));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, tail) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| bad("invalid IPv6 address"))?;
            let port = match tail {
                "" => DEFAULT_PORT,
                t => parse_port(t.strip_prefix(':').ok_or_else(|| bad("expected ':port'"))?)
                    .ok_or_else(|| bad("invalid port"))?,
            };
            return Ok(Self::from_ip(IpAddr::V6(ip), port));
        }
        if s.parse::<Ipv6Addr>().is_ok() {
            return Err(bad("an IPv6 origin needs brackets: [addr]:port"));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p).ok_or_else(|| bad("invalid port"))?),
            None => (s, DEFAULT_PORT),
        };
        Self::new(host, port).map_err(|e| AddrError::new(s, e.reason()))
    }
}

fn hash64(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|&n| n != 0)
}

/// RFC 1123 host name: labels of 1..=63 of `[A-Za-z0-9-]` (plus `_`, seen in
/// service names), not starting or ending with `-`, 253 bytes in all.
fn validate_hostname(host: &str) -> Result<(), AddrError> {
    let bad = |why| Err(AddrError::new(host, why));
    if host.is_empty() {
        return bad("empty host");
    }
    if host.len() > 253 {
        return bad("host name longer than 253 bytes");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated label must be 1 to 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return bad("host names hold only letters, digits, '-' and '_'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label may not start or end with '-'");
        }
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return bad("not a valid IPv4 address");
    }
    Ok(())
}

/// Parses a server address (`ip:port` or `[v6]:port`), naming it on error.
///
/// ```
/// let addr = vigil_hostdb::parse_server_addr("127.0.0.2:8080")?;
/// assert_eq!(addr.port(), 8080);
/// assert!(vigil_hostdb::parse_server_addr("app:80").is_err());
/// # Ok::<(), vigil_hostdb::AddrError>(())
/// ```
///
/// # Errors
/// [`AddrError`] when the text is not an IP address with a non-zero port.
pub fn parse_server_addr(s: &str) -> Result<SocketAddr, AddrError> {
    let addr: SocketAddr =
        s.parse().map_err(|_| AddrError::new(s, "a server is an IP address and port, like 10.0.0.1:8080"))?;
    if addr.port() == 0 {
        return Err(AddrError::new(s, "port 0 is not a server port"));
    }
    Ok(addr)
}

impl PartialEq for OriginKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}
impl Eq for OriginKey {}
impl Hash for OriginKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as `str` does, for `Borrow<str>` lookups.
        self.as_str().hash(state);
    }
}
impl Borrow<str> for OriginKey {
    fn borrow(&self) -> &str {
        &self.text
    }
}
impl fmt::Display for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
impl fmt::Debug for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}
impl serde::Serialize for OriginKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        let k: OriginKey = "WWW.Example.com.:443".parse().unwrap();
        assert_eq!(k.as_str(), "www.example.com:443");
        assert_eq!(k.host(), "www.example.com");
        let k: OriginKey = "[::1]:8080".parse().unwrap();
        assert_eq!((k.as_str(), k.host(), k.port()), ("[::1]:8080", "::1", 8080));
        assert_eq!(k.ip(), Some("::1".parse().unwrap()));
        let k: OriginKey = "10.0.0.1".parse().unwrap();
        assert_eq!((k.as_str(), k.host()), ("10.0.0.1:80", "10.0.0.1"));
        assert_eq!(OriginKey::new("[::1]", 9).unwrap().as_str(), "[::1]:9");
    }

    #[test]
    fn bad_input_names_itself() {
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a b",
            "host:",
            "host:0",
            "host:99999",
            "host:x",
            "::1",
            "[::1",
            "[zz]:1",
            "300.1.1.1",
            "a:b:c",
        ] {
            let err = bad.parse::<OriginKey>().unwrap_err();
            assert_eq!(err.input(), bad, "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(parse_server_addr("1.2.3.4").is_err());
        assert!(parse_server_addr("1.2.3.4:0").is_err());
        assert!(parse_server_addr("[::1]:80").is_ok());
    }

    proptest::proptest! {
        /// Any text either parses to a key whose canonical form parses back to
        /// itself, or is refused with an error naming (a prefix of) it. Never a panic.
        #[test]
        fn parsing_never_panics_and_round_trips(s in "\\PC{0,40}|[a-zA-Z0-9.:\\[\\]-]{0,40}") {
            match s.parse::<OriginKey>() {
                Ok(k) => {
                    let again: OriginKey = k.as_str().parse().unwrap();
                    proptest::prop_assert_eq!(again.as_str(), k.as_str());
                    proptest::prop_assert_eq!(again.hash64(), k.hash64());
                }
                Err(e) => proptest::prop_assert!(s.starts_with(e.input())),
            }
            let _ = parse_server_addr(&s);
        }
    }

    #[test]
    fn borrow_lookup_matches_hash() {
        let mut m = std::collections::HashMap::new();
        m.insert("app:81".parse::<OriginKey>().unwrap(), 1);
        assert_eq!(m.get("app:81"), Some(&1));
    }
}
