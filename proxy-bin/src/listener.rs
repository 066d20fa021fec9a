//! The TLS listener: certificates chosen by SNI, reloadable without
//! touching open connections, ALPN h2 and http/1.1, TLS 1.2 and 1.3 only.
//!
//! The rustls `ServerConfig` is made once; its certificate resolver reads
//! an arc-swapped [`Certificates`], so a reload (SIGHUP, `POST /reload`)
//! that reads new files swaps them in for the next handshake while open
//! connections keep what they negotiated. A file that cannot be read or a
//! key that does not match its certificate fails the reload, and the old
//! certificates stay.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use vigil_hostdb::conf::FileError;
use vigil_session::tls::HandshakeFailure;

use crate::app::{read_certs, read_key};
use crate::config::ListenerCert;
use crate::h1::ConnRead;

/// The listener's certificates: the default one first.
pub(crate) struct Certificates {
    entries: Vec<Entry>,
}

struct Entry {
    key: Arc<CertifiedKey>,
    /// The leaf, to check a client's SNI against (the names the
    /// certificate itself is valid for: no list to keep in step).
    leaf: CertificateDer<'static>,
    /// The certificate file, as metrics label it.
    path: PathBuf,
    /// The leaf's notAfter.
    not_after: Option<SystemTime>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| e.path.display())).finish()
    }
}

impl Certificates {
    /// Reads and checks `[[tls]]`: each chain and its key, the key matching
    /// the leaf.
    pub(crate) fn load(certs: &[ListenerCert]) -> Result<Self, FileError> {
        let provider = rustls::crypto::ring::default_provider();
        let mut entries = Vec::new();
        for c in certs {
            let chain = read_certs(&c.cert, "cert")?;
            let key = read_key(&c.key)?;
            let signing = provider.key_provider.load_private_key(key).map_err(|e| {
                c.key.error(format!("key {}: not a usable private key: {e}", c.key.value.display()))
            })?;
            let certified = CertifiedKey::new(chain.clone(), signing);
            certified.keys_match().map_err(|e| {
                c.key.error(format!(
                    "key {} does not match the certificate {}: {e}",
                    c.key.value.display(),
                    c.cert.value.display()
                ))
            })?;
            let leaf = chain[0].clone();
            webpki::EndEntityCert::try_from(&leaf).map_err(|e| {
                c.cert.error(format!("cert {}: not a usable certificate: {e}", c.cert.value.display()))
            })?;
            let not_after = not_after(&leaf);
            entries.push(Entry { key: Arc::new(certified), leaf, path: c.cert.value.clone(), not_after });
        }
        Ok(Self { entries })
    }

    /// The certificate for a client that asked for `name`: the first valid
    /// for it, else the default.
    fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let wanted = name.and_then(|n| ServerName::try_from(n).ok());
        let matching = wanted.and_then(|wanted| {
            self.entries.iter().find(|e| {
                webpki::EndEntityCert::try_from(&e.leaf)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&wanted).is_ok())
            })
        });
        matching.or(self.entries.first()).map(|e| Arc::clone(&e.key))
    }

    /// Each certificate file and its seconds to expiry (negative: expired).
    pub(crate) fn expiry(&self) -> Vec<(String, f64)> {
        let now = SystemTime::now();
        self.entries
            .iter()
            .filter_map(|e| {
                let at = e.not_after?;
                let secs = match at.duration_since(now) {
                    Ok(left) => left.as_secs_f64(),
                    Err(past) => -past.duration().as_secs_f64(),
                };
                Some((e.path.display().to_string(), secs))
            })
            .collect()
    }
}

/// Picks certificates from the current [`Certificates`] (swapped on reload).
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<Certificates>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().for_name(hello.server_name())
    }
}

/// Server-side TLS counters.
#[derive(Debug, Default)]
pub(crate) struct TlsServerMetrics {
    pub(crate) full: AtomicU64,
    pub(crate) resumed: AtomicU64,
    failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Handshakes given up at the head timeout (a client that sent nothing,
    /// or not enough).
    pub(crate) timeouts: AtomicU64,
}

impl TlsServerMetrics {
    pub(crate) fn failures(&self, kind: HandshakeFailure) -> u64 {
        let i = HandshakeFailure::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.failures[i].load(Ordering::Relaxed)
    }

    fn failed(&self, kind: HandshakeFailure) {
        let i = HandshakeFailure::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The TLS listener's state: what a reload swaps, and the acceptor.
pub(crate) struct TlsListener {
    certificates: Arc<ArcSwap<Certificates>>,
    acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) metrics: TlsServerMetrics,
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener").field("certificates", &self.certificates.load()).finish()
    }
}

impl TlsListener {
    /// A listener serving `certificates`: TLS 1.2 and 1.3, ALPN h2 then
    /// http/1.1, session tickets and a session cache for resumption.
    pub(crate) fn new(certificates: Certificates) -> Result<Self, String> {
        let certificates = Arc::new(ArcSwap::from_pointee(certificates));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(&certificates))));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Ok(Self { certificates, acceptor, metrics: TlsServerMetrics::default() })
    }

    /// Serves `certificates` from the next handshake on.
    pub(crate) fn set_certificates(&self, certificates: Certificates) {
        self.certificates.store(Arc::new(certificates));
    }

    /// The certificates now served.
    pub(crate) fn certificates(&self) -> Arc<Certificates> {
        self.certificates.load_full()
    }

    /// The server side of a handshake on `tcp`, within `timeout`; `None`
    /// when it failed (counted, logged at debug: a client sending garbage
    /// must not flood the log).
    pub(crate) async fn accept(&self, tcp: TcpStream, timeout: Duration) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let counter = match tls.get_ref().1.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => &self.metrics.resumed,
                    _ => &self.metrics.full,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Some(tls)
            }
            Ok(Err(e)) => {
                let why = HandshakeFailure::of_io(&e).unwrap_or(HandshakeFailure::Other);
                self.metrics.failed(why);
                tracing::debug!(error = %e, "TLS handshake with a client failed");
                None
            }
            Err(_) => {
                self.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("no TLS handshake within the head timeout; closing");
                None
            }
        }
    }
}

/// A TLS connection shared by its reading and its writing half (a TLS
/// stream cannot be split at the socket: both directions share its state).
/// Each poll takes the lock; the two halves live on one task, so it is
/// never contended.
pub(crate) struct Halves<S>(Arc<Mutex<S>>);

impl<S> Halves<S> {
    pub(crate) fn split(stream: S) -> (Self, Self) {
        let shared = Arc::new(Mutex::new(stream));
        (Self(Arc::clone(&shared)), Self(shared))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Halves<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Halves<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.lock()).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.lock()).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.lock().is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock()).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ConnRead for Halves<S> {
    fn poll_write_interim(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut stream = self.0.lock();
        let n = std::task::ready!(Pin::new(&mut *stream).poll_write(cx, bytes))?;
        // TLS buffers what it encrypts: push the record out now.
        std::task::ready!(Pin::new(&mut *stream).poll_flush(cx))?;
        Poll::Ready(Ok(n))
    }
}

/// A certificate's notAfter, read from its DER: the one field the expiry
/// gauge needs, so a few lines of DER walking rather than an X.509 crate.
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
/// notBefore, notAfter }, ... } ... }`.
fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    // The version ([0], optional) and the serial number, then the
    // signature algorithm and the issuer.
    let (tag, _, rest) = tlv(tbs)?;
    let after_serial = if tag == 0xa0 { tlv(rest)?.2 } else { rest };
    let after_signature = tlv(after_serial)?.2;
    let tbs = tlv(after_signature)?.2;
    let (tag, validity, _) = tlv(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    let text = std::str::from_utf8(time).ok()?;
    let (year, rest) = match tag {
        // UTCTime: YYMMDDHHMMSSZ, 1950-2049.
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        // GeneralizedTime: YYYYMMDDHHMMSSZ.
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| -> Option<i64> { rest.get(r)?.parse().ok() };
    let (month, day, hour, minute, second) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// One DER tag-length-value: (tag, value, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |l, &b| l << 8 | usize::from(b)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_is_read_from_utc_and_generalized_times() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for (year, expect_generalized) in [(2031, false), (2060, true)] {
            let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 6, 15);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let at = not_after(cert.der()).unwrap();
            let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            assert_eq!(
                secs,
                days_from_civil(i64::from(year), 6, 15) * 86_400,
                "{year} (generalized: {expect_generalized})"
            );
        }
        assert_eq!(not_after(b"\x30\x03\x02\x01\x00"), None);
        assert_eq!(not_after(b""), None);
    }
}
