//! TLS to origins through the pool: real rustls servers on loopback with
//! certificates made here (rcgen), no mocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use vigil_session::tls::{Alpn, ClientAuth, HandshakeFailure, Roots, TlsConnect, TlsSettings};
use vigil_session::{ErrorKind, Freshness, NoopObserver, Pool, PoolConfig, Profile, Protocol, Target};

use crate::{get, handle, read_all};

/// A test PKI: a CA and leaves it signs.
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key.
pub(crate) struct Leaf {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Pki { ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    pub(crate) fn root(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A leaf for `names`, valid now, or expired with `expired`.
    pub(crate) fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A TLS origin (HTTP/1.1 or h2, as ALPN picks) that counts connections
/// and full handshakes; with `client_ca`, it demands a client certificate.
pub(crate) struct TlsOrigin {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) conns: Arc<AtomicUsize>,
    pub(crate) full_handshakes: Arc<AtomicUsize>,
}

pub(crate) async fn tls_origin(
    leaf: Leaf,
    alpn: &[&[u8]],
    client_ca: Option<CertificateDer<'static>>,
) -> TlsOrigin {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(leaf.chain, leaf.key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, full) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, f) = (Arc::clone(&conns), Arc::clone(&full));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, c, f) = (acceptor.clone(), Arc::clone(&c), Arc::clone(&f));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                c.fetch_add(1, Ordering::SeqCst);
                if tls.get_ref().1.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service_fn(handle))
                    .await;
            });
        }
    });
    TlsOrigin { addr, conns, full_handshakes: full }
}

fn settings(name: &str, root: CertificateDer<'static>, alpn: Alpn) -> TlsSettings {
    TlsSettings {
        server_name: name.into(),
        roots: Roots::Certificates(vec![root]),
        client_auth: None,
        insecure_skip_verify: false,
        alpn,
    }
}

fn pool(tls: &Arc<TlsConnect>) -> Pool {
    Pool::with_connector(PoolConfig::default(), Arc::new(NoopObserver), Arc::clone(tls) as _)
}

#[tokio::test]
async fn https_sessions_are_reused_and_fresh_ones_resume() {
    let pki = Pki::new("test ca");
    let origin = tls_origin(pki.leaf(&["app.test"], false), &[b"http/1.1"], None).await;
    let tls = Arc::new(TlsConnect::new());
    let profile = tls.profile(settings("app.test", pki.root(), Alpn::Http1)).unwrap();
    let pool = pool(&tls);
    let target = Target::new(origin.addr, Protocol::Http1).with_profile(profile);
    for _ in 0..5 {
        let resp = pool.request(target, Freshness::IdlePreferred, get("/")).await.unwrap();
        assert_eq!(read_all(resp).await, "ok");
    }
    assert_eq!(origin.conns.load(Ordering::SeqCst), 1, "one TLS session carried all five");
    for _ in 0..3 {
        let resp = pool.request(target, Freshness::Fresh, get("/")).await.unwrap();
        assert_eq!(read_all(resp).await, "ok");
    }
    assert_eq!(origin.conns.load(Ordering::SeqCst), 4);
    assert_eq!(
        origin.full_handshakes.load(Ordering::SeqCst),
        1,
        "fresh connections resumed the first session"
    );
    assert_eq!((tls.metrics().full_handshakes(), tls.metrics().resumed_handshakes()), (1, 3));
    // Equal settings, the same profile: a reload keeps sessions and cache.
    assert_eq!(tls.profile(settings("app.test", pki.root(), Alpn::Http1)).unwrap(), profile);
    assert_ne!(tls.profile(settings("other.test", pki.root(), Alpn::Http1)).unwrap(), profile);
}

#[tokio::test]
async fn an_http1_twin_of_an_auto_profile_speaks_http1_to_a_server_that_prefers_h2() {
    let pki = Pki::new("test ca");
    let origin = tls_origin(pki.leaf(&["app.test"], false), &[b"h2", b"http/1.1"], None).await;
    let tls = Arc::new(TlsConnect::new());
    let auto = tls.profile(settings("app.test", pki.root(), Alpn::Auto)).unwrap();
    let twin = tls.with_alpn(auto, Alpn::Http1).unwrap();
    assert_ne!(twin, auto);
    assert_eq!(tls.with_alpn(auto, Alpn::Http1).unwrap(), twin, "made once");
    assert_eq!(
        tls.profile(settings("app.test", pki.root(), Alpn::Http1)).unwrap(),
        twin,
        "the same settings"
    );
    assert!(tls.with_alpn(Profile::PLAIN, Alpn::Http1).is_err(), "the plain profile has no TLS settings");
    // Offered only http/1.1, the server cannot pick h2: an HTTP/1.1 session
    // over it works (over h2 it would be garbage).
    let target = Target::new(origin.addr, Protocol::Http1).with_profile(twin);
    let resp = pool(&tls).request(target, Freshness::IdlePreferred, get("/")).await.unwrap();
    assert_eq!(read_all(resp).await, "ok");
}

#[tokio::test]
async fn auto_speaks_what_alpn_settled_on() {
    let pki = Pki::new("test ca");
    let h2 = tls_origin(pki.leaf(&["app.test"], false), &[b"h2", b"http/1.1"], None).await;
    let h1 = tls_origin(pki.leaf(&["app.test"], false), &[b"http/1.1"], None).await;
    let tls = Arc::new(TlsConnect::new());
    let profile = tls.profile(settings("app.test", pki.root(), Alpn::Auto)).unwrap();
    let pool = pool(&tls);
    for (origin, concurrent_conns) in [(&h2, 1), (&h1, 8)] {
        let target = Target::new(origin.addr, Protocol::Auto).with_profile(profile);
        // One request first: it tells the pool what the server speaks.
        read_all(pool.request(target, Freshness::IdlePreferred, get("/")).await.unwrap()).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    read_all(pool.request(target, Freshness::IdlePreferred, get("/slow")).await.unwrap())
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "slow");
        }
        assert_eq!(
            origin.conns.load(Ordering::SeqCst),
            concurrent_conns,
            "h2 shares one connection; HTTP/1.1 needs one per request in flight"
        );
    }
}

#[tokio::test]
async fn verification_failures_are_tls_errors_that_say_why() {
    let pki = Pki::new("test ca");
    let other = Pki::new("another ca");
    let good = tls_origin(pki.leaf(&["app.test"], false), &[b"http/1.1"], None).await;
    let expired = tls_origin(pki.leaf(&["app.test"], true), &[b"http/1.1"], None).await;
    let tls = Arc::new(TlsConnect::new());
    let pool = pool(&tls);
    let cases = [
        (expired.addr, settings("app.test", pki.root(), Alpn::Http1), HandshakeFailure::CertificateExpired),
        (
            good.addr,
            settings("wrong.test", pki.root(), Alpn::Http1),
            HandshakeFailure::CertificateNameMismatch,
        ),
        (good.addr, settings("app.test", other.root(), Alpn::Http1), HandshakeFailure::UnknownIssuer),
        (good.addr, settings("app.test", pki.root(), Alpn::H2), HandshakeFailure::NoApplicationProtocol),
    ];
    for (addr, settings, why) in cases {
        let profile = tls.profile(settings).unwrap();
        let target = Target::new(addr, Protocol::Http1).with_profile(profile);
        let err = pool.checkout(target, Freshness::IdlePreferred).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
        assert!(err.is_connect() && err.is_l4_failure(), "a handshake failure is the server's, at L4");
        assert_eq!(err.detail(), format!("tls: {why}"));
        assert_eq!(tls.metrics().failures(why), 1, "{why}");
    }
    // Verification off: the wrong name and the foreign CA both pass.
    let insecure =
        TlsSettings { insecure_skip_verify: true, ..settings("wrong.test", other.root(), Alpn::Http1) };
    let target = Target::new(good.addr, Protocol::Http1).with_profile(tls.profile(insecure).unwrap());
    assert_eq!(read_all(pool.request(target, Freshness::IdlePreferred, get("/")).await.unwrap()).await, "ok");
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new("test ca");
    let clients = Pki::new("client ca");
    let origin = tls_origin(pki.leaf(&["app.test"], false), &[b"http/1.1"], Some(clients.root())).await;
    let tls = Arc::new(TlsConnect::new());
    let pool = pool(&tls);
    let without = tls.profile(settings("app.test", pki.root(), Alpn::Http1)).unwrap();
    let err = pool
        .request(Target::new(origin.addr, Protocol::Http1).with_profile(without), Freshness::Fresh, get("/"))
        .await
        .unwrap_err();
    assert!(err.is_l4_failure(), "{err}");
    let me = clients.leaf(&["edge-1.vigil"], false);
    let with = tls
        .profile(TlsSettings {
            client_auth: Some(ClientAuth { chain: me.chain, key: me.key }),
            ..settings("app.test", pki.root(), Alpn::Http1)
        })
        .unwrap();
    let target = Target::new(origin.addr, Protocol::Http1).with_profile(with);
    assert_eq!(read_all(pool.request(target, Freshness::IdlePreferred, get("/")).await.unwrap()).await, "ok");
    assert_ne!(with, Profile::PLAIN);
}

#[tokio::test]
async fn an_origin_that_speaks_only_tls_1_0_is_refused_with_the_reason() {
    // openssl's own server, forced to TLS 1.0 (and to the ciphers it allows).
    let dir = std::env::temp_dir().join(format!("vigil-tls10-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut params = CertificateParams::new(vec!["app.test".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "app.test");
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let server = std::process::Command::new("openssl")
        .args(["s_server", "-accept", &addr.to_string(), "-tls1", "-cipher", "DEFAULT@SECLEVEL=0", "-www"])
        .arg("-cert")
        .arg(dir.join("c.pem"))
        .arg("-key")
        .arg(dir.join("k.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut server) = server else {
        eprintln!("openssl is not installed: skipped");
        return;
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let tls = Arc::new(TlsConnect::new());
    let profile = tls
        .profile(TlsSettings {
            insecure_skip_verify: true,
            ..settings("app.test", cert.der().clone(), Alpn::Http1)
        })
        .unwrap();
    let target = Target::new(addr, Protocol::Http1).with_profile(profile);
    let err = pool(&tls).checkout(target, Freshness::Fresh).await.unwrap_err();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert_eq!(err.detail(), "tls: protocol version", "{err}");
}

#[tokio::test]
async fn a_refused_stream_on_an_auto_target_that_settled_on_h2_goes_again_whole() {
    let pki = Pki::new("test ca");
    let leaf = pki.leaf(&["app.test"], false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let origin = crate::h2::refusing_origin_over(1, move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await.ok() }
    })
    .await;
    let tls = Arc::new(TlsConnect::new());
    let profile = tls.profile(settings("app.test", pki.root(), Alpn::Auto)).unwrap();
    let target = Target::new(origin.addr, Protocol::Auto).with_profile(profile);
    let req = http::Request::post("/pkg.Svc/Call")
        .header("host", "app.test")
        .body(crate::h2::streamed(&["ping-", "over-", "tls"]))
        .unwrap();
    let resp = pool(&tls).request(target, Freshness::IdlePreferred, req).await.unwrap();
    assert_eq!(read_all(resp).await, "ping-over-tls");
    assert_eq!(
        (origin.conns(), origin.requests()),
        (2, 1),
        "refused on the first connection, answered on the second"
    );
}
