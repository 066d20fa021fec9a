//! TLS to origins: a [`Connect`] that wraps TCP in rustls (ring as the
//! crypto provider), one client configuration per [`Profile`].
//!
//! A profile is everything a TLS connection presents and checks beyond the
//! address ([`TlsSettings`]: the server name, the roots, a client
//! certificate, the ALPN offer). Sessions are keyed by it, so a pooled
//! connection is never reused for another identity (pingora keys its
//! connections by the whole peer for the same reason). Each profile keeps
//! one rustls `ClientConfig`, and with it one session cache: a fresh
//! connection to a server it knows is a resumed handshake (tickets in TLS
//! 1.3, session ids in 1.2).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::connect::{Connect, ConnectFuture, Connection, Io, TcpConnect};
use crate::{Profile, Protocol, Target};

/// What a TLS connection to an origin presents and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The name sent as SNI and that the certificate must be valid for.
    pub server_name: String,
    /// Whose signatures a server certificate must chain to.
    pub roots: Roots,
    /// A client certificate chain and its key (mutual TLS).
    pub client_auth: Option<ClientAuth>,
    /// Accept any certificate (its signature on the handshake is still
    /// checked). For tests and labs only: it defeats the point of TLS.
    pub insecure_skip_verify: bool,
    /// What ALPN offers.
    pub alpn: Alpn,
}

/// Trust anchors for server certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's (`/etc/ssl/certs` and its kin, via rustls-native-certs).
    System,
    /// These certificates only (an operator's `ca_file`).
    Certificates(Vec<CertificateDer<'static>>),
}

/// A client certificate chain (leaf first) and its private key.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientAuth {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientAuth {
    fn clone(&self) -> Self {
        Self { chain: self.chain.clone(), key: self.key.clone_key() }
    }
}

/// The application protocols offered in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2` and `http/1.1`: the server picks.
    Auto,
    /// `h2` only.
    H2,
    /// `http/1.1` only.
    Http1,
}

impl Alpn {
    /// The protocol a target with this offer is spoken with before a
    /// connection says otherwise.
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Auto => Protocol::Auto,
            Self::H2 => Protocol::H2,
            Self::Http1 => Protocol::Http1,
        }
    }

    fn offer(self) -> Vec<Vec<u8>> {
        match self {
            Self::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Self::H2 => vec![b"h2".to_vec()],
            Self::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// Why a profile could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The server name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// No usable root certificate (an empty `ca_file`, or none on the system).
    #[error("no usable root certificate: {0}")]
    Roots(String),
    /// The client certificate or key was refused (a key that does not
    /// match, an unsupported key type).
    #[error("client certificate: {0}")]
    ClientAuth(rustls::Error),
    /// A profile this connector did not make (or the plain one).
    #[error("no TLS profile {0} here")]
    Profile(u32),
}

/// Why a handshake failed, in a few words an operator can act on. The
/// connect error's text says `tls: <this>`; metrics count by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The server's certificate has expired.
    CertificateExpired,
    /// The server's certificate is not valid yet.
    CertificateNotYetValid,
    /// The certificate is not valid for the server name asked for.
    CertificateNameMismatch,
    /// The certificate does not chain to a trusted root.
    UnknownIssuer,
    /// The certificate is otherwise unacceptable (revoked, bad signature,
    /// malformed).
    BadCertificate,
    /// The server speaks no TLS version we do (TLS 1.2 and 1.3 only).
    ProtocolVersion,
    /// No application protocol in common (ALPN).
    NoApplicationProtocol,
    /// The server refused the handshake (an alert: our client certificate,
    /// our ciphers).
    RefusedByPeer,
    /// What came back is not TLS.
    NotTls,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Every kind, for metrics that show zeros.
    pub const ALL: [Self; 10] = [
        Self::CertificateExpired,
        Self::CertificateNotYetValid,
        Self::CertificateNameMismatch,
        Self::UnknownIssuer,
        Self::BadCertificate,
        Self::ProtocolVersion,
        Self::NoApplicationProtocol,
        Self::RefusedByPeer,
        Self::NotTls,
        Self::Other,
    ];

    /// A short name for logs, `/hosts` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CertificateExpired => "certificate expired",
            Self::CertificateNotYetValid => "certificate not yet valid",
            Self::CertificateNameMismatch => "certificate name mismatch",
            Self::UnknownIssuer => "unknown issuer",
            Self::BadCertificate => "bad certificate",
            Self::ProtocolVersion => "protocol version",
            Self::NoApplicationProtocol => "no application protocol",
            Self::RefusedByPeer => "refused by peer",
            Self::NotTls => "not tls",
            Self::Other => "handshake failed",
        }
    }

    /// Sorts a rustls error.
    pub fn of(e: &rustls::Error) -> Self {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => Self::CertificateExpired,
            E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                Self::CertificateNotYetValid
            }
            E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                Self::CertificateNameMismatch
            }
            E::InvalidCertificate(C::UnknownIssuer) => Self::UnknownIssuer,
            E::InvalidCertificate(_) => Self::BadCertificate,
            E::PeerIncompatible(_) | E::AlertReceived(A::ProtocolVersion) => Self::ProtocolVersion,
            E::NoApplicationProtocol | E::AlertReceived(A::NoApplicationProtocol) => {
                Self::NoApplicationProtocol
            }
            E::AlertReceived(_) => Self::RefusedByPeer,
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. } => Self::NotTls,
            _ => Self::Other,
        }
    }

    /// The failure an I/O error from a handshake carries, if it is one.
    pub fn of_io(e: &std::io::Error) -> Option<Self> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).map(Self::of)
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of the TLS connector: monotonic totals.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    full: AtomicU64,
    resumed: AtomicU64,
    failures: [AtomicU64; HandshakeFailure::ALL.len()],
}

impl TlsMetrics {
    /// Handshakes that were full (no resumption).
    pub fn full_handshakes(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    /// Handshakes that resumed an earlier session.
    pub fn resumed_handshakes(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    /// Failed handshakes of one kind.
    pub fn failures(&self, kind: HandshakeFailure) -> u64 {
        let i = HandshakeFailure::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.failures[i].load(Ordering::Relaxed)
    }

    fn failed(&self, kind: HandshakeFailure) {
        let i = HandshakeFailure::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }
}

struct TlsProfile {
    settings: TlsSettings,
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// TCP, and TLS over it for targets with a [`Profile`] made here.
///
/// ```no_run
/// use std::sync::Arc;
/// use vigil_session::{NoopObserver, Pool, PoolConfig, Target};
/// use vigil_session::tls::{Alpn, Roots, TlsConnect, TlsSettings};
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = Arc::new(TlsConnect::new());
/// let profile = tls.profile(TlsSettings {
///     server_name: "app.example".into(),
///     roots: Roots::System,
///     client_auth: None,
///     insecure_skip_verify: false,
///     alpn: Alpn::Auto,
/// })?;
/// let pool = Pool::with_connector(PoolConfig::default(), Arc::new(NoopObserver), tls.clone());
/// let target = Target::new("192.0.2.10:443".parse()?, Alpn::Auto.protocol()).with_profile(profile);
/// # Ok(()) }
/// ```
pub struct TlsConnect {
    tcp: TcpConnect,
    /// Profile `n` is at index `n - 1`; read at every TLS connect.
    profiles: ArcSwap<Vec<Arc<TlsProfile>>>,
    /// Serializes additions (interning compares settings).
    adding: Mutex<()>,
    system_roots: Mutex<Option<Arc<RootCertStore>>>,
    metrics: TlsMetrics,
}

impl fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnect").field("profiles", &self.profiles.load().len()).finish()
    }
}

impl Default for TlsConnect {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsConnect {
    /// A connector with no TLS profile yet: plain TCP for every target.
    pub fn new() -> Self {
        Self {
            tcp: TcpConnect,
            profiles: ArcSwap::default(),
            adding: Mutex::new(()),
            system_roots: Mutex::new(None),
            metrics: TlsMetrics::default(),
        }
    }

    /// The connector's counters.
    pub fn metrics(&self) -> &TlsMetrics {
        &self.metrics
    }

    /// The profile for `settings`: the one made before for equal settings
    /// (so a config reload that keeps an origin's TLS settings keeps its
    /// sessions and its session cache), else a new one. Profiles are never
    /// dropped: there are as many as distinct settings ever configured.
    ///
    /// # Errors
    /// An invalid server name, no usable root, a client key that does not
    /// fit its certificate.
    pub fn profile(&self, settings: TlsSettings) -> Result<Profile, TlsError> {
        let _one_at_a_time = self.adding.lock();
        let profiles = self.profiles.load();
        if let Some(i) = profiles.iter().position(|p| p.settings == settings) {
            return Ok(Profile(i as u32 + 1));
        }
        let name = ServerName::try_from(settings.server_name.clone())
            .map_err(|_| TlsError::ServerName(settings.server_name.clone()))?;
        let config = self.client_config(&settings)?;
        let profile =
            Arc::new(TlsProfile { connector: TlsConnector::from(Arc::new(config)), name, settings });
        let mut next = Vec::clone(&profiles);
        next.push(profile);
        let id = next.len() as u32;
        self.profiles.store(Arc::new(next));
        Ok(Profile(id))
    }

    /// The profile that is `profile` but for what ALPN offers (an
    /// HTTP/1.1-only twin of an `Auto` profile, for requests that must not
    /// land on h2): made from the settings `profile` holds, files not read
    /// again.
    ///
    /// # Errors
    /// As [`TlsConnect::profile`]; an unknown or plain `profile` is
    /// [`TlsError::Profile`].
    pub fn with_alpn(&self, profile: Profile, alpn: Alpn) -> Result<Profile, TlsError> {
        let settings = match profile {
            Profile(n) if n > 0 => self.profiles.load().get(n as usize - 1).map(|p| p.settings.clone()),
            Profile(_) => None,
        };
        let settings = settings.ok_or(TlsError::Profile(profile.0))?;
        self.profile(TlsSettings { alpn, ..settings })
    }

    fn client_config(&self, settings: &TlsSettings) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
        let builder = if settings.insecure_skip_verify {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            let roots = match &settings.roots {
                Roots::System => self.system_roots()?,
                Roots::Certificates(certs) => {
                    let mut store = RootCertStore::empty();
                    let (added, _) = store.add_parsable_certificates(certs.iter().cloned());
                    if added == 0 {
                        return Err(TlsError::Roots("the CA file holds no usable certificate".into()));
                    }
                    Arc::new(store)
                }
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &settings.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => builder
                .with_client_auth_cert(auth.chain.clone(), auth.key.clone_key())
                .map_err(TlsError::ClientAuth)?,
        };
        config.alpn_protocols = settings.alpn.offer();
        Ok(config)
    }

    /// The system's roots, read once.
    fn system_roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut cached = self.system_roots.lock();
        if let Some(roots) = cached.as_ref() {
            return Ok(Arc::clone(roots));
        }
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found.errors.first().map_or("none found".to_owned(), ToString::to_string);
            return Err(TlsError::Roots(format!("the system's roots: {why}")));
        }
        let store = Arc::new(store);
        *cached = Some(Arc::clone(&store));
        Ok(store)
    }
}

impl Connect for TlsConnect {
    fn connect<'a>(&'a self, target: &'a Target) -> ConnectFuture<'a> {
        Box::pin(async move {
            let profile = match target.profile {
                Profile::PLAIN => None,
                Profile(n) => Some(self.profiles.load().get(n as usize - 1).cloned().ok_or_else(|| {
                    std::io::Error::other(format!("no TLS profile {n} for {}", target.addr))
                })?),
            };
            let Some(profile) = profile else { return self.tcp.connect(target).await };
            let stream = TcpStream::connect(target.addr).await?;
            let _ = stream.set_nodelay(true);
            let tls = match profile.connector.connect(profile.name.clone(), stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    if let Some(kind) = HandshakeFailure::of_io(&e) {
                        self.metrics.failed(kind);
                    }
                    return Err(e);
                }
            };
            let session = tls.get_ref().1;
            match session.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => self.metrics.resumed.fetch_add(1, Ordering::Relaxed),
                _ => self.metrics.full.fetch_add(1, Ordering::Relaxed),
            };
            let negotiated = match session.alpn_protocol() {
                Some(b"h2") => Some(Protocol::H2),
                Some(b"http/1.1") => Some(Protocol::Http1),
                _ => None,
            };
            Ok(Connection { io: Box::new(tls), negotiated })
        })
    }
}

impl Io for tokio_rustls::client::TlsStream<TcpStream> {}

/// Accepts any server certificate; the handshake's signature is still
/// checked with the provider's algorithms (`insecure_skip_verify`).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
