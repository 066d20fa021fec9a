//! HTTPS end to end through the real binary: TLS origins (a rustls server
//! here, and nginx when it is installed), the TLS listener with real
//! clients (curl, openssl s_client, a rustls client), certificates made by
//! the tests (rcgen).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// A test PKI: a CA and the leaves it signs, as PEM for files.
pub(crate) struct Pki {
    pub(crate) ca: CertifiedIssuer<'static, KeyPair>,
}

pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) der: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "vigil test ca");
        Pki { ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    pub(crate) fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A leaf for `names` (the first is its common name); expired with `expired`.
    pub(crate) fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A TLS server's side for `leaf`, offering `alpn`, with session tickets.
pub(crate) fn acceptor(leaf: &Leaf, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A TLS origin serving the harness's origin handler, counting full
/// handshakes and connections.
struct TlsOrigin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    full_handshakes: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
}

impl TlsOrigin {
    async fn start(ip: &str, port: u16, leaf: &Leaf, alpn: &[&[u8]]) -> TlsOrigin {
        let acceptor = acceptor(leaf, alpn);
        let addr = SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let state = Arc::new(OriginState::default());
        let (full, conns) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, f, c) = (Arc::clone(&state), Arc::clone(&full), Arc::clone(&conns));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, s, f, c) = (acceptor.clone(), Arc::clone(&s), Arc::clone(&f), Arc::clone(&c));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    c.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    let svc = service_fn(move |req| origin_handler(addr, Arc::clone(&s), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsOrigin { addr, state, full_handshakes: full, conns }
    }
}

fn https_remap(host: &str, origin: &str, servers: &str, extra: &str) -> String {
    format!(
        "[[remap]]\nfrom = \"{host}\"\nto = \"https://{origin}\"\n\n[origins.\"{origin}\"]\nservers = {servers}\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origins_and_their_checks_ride_pooled_tls_sessions() {
    let pki = Pki::new();
    let port = free_port(&["127.0.0.2"]);
    let leaf = pki.leaf(&["app.test"], false);
    let origin = TlsOrigin::start("127.0.0.2", port, &leaf, &[b"h2", b"http/1.1"]).await;
    let servers = format!("[\"{}\"]", origin.addr);
    for (name, protocol) in [("tlsh1", "http1"), ("tlsauto", "auto")] {
        let (full_before, checks_before) =
            (origin.full_handshakes.load(Ordering::SeqCst), origin.state.checks.load(Ordering::SeqCst));
        let extra = format!("ca_file = \"ca.pem\"\nprotocol = \"{protocol}\"\nlb = \"round_robin\"");
        let rest = https_remap("www.app.test", &format!("app.test:{port}"), &servers, &extra);
        let ca_pem = pki.ca_pem();
        let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];
        let v = Vigil::start_with(name, files, "", &rest, FAST_CHECKS).await;
        // The first request starts the checks; it and the first check may
        // each open a connection before either has a session to resume.
        assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
        let first_check = wait_until(Duration::from_secs(10), || async {
            origin.state.checks.load(Ordering::SeqCst) > checks_before
        })
        .await;
        assert!(first_check, "no check ran: {}", v.log());
        let warm = origin.full_handshakes.load(Ordering::SeqCst) - full_before;
        assert!((1..=2).contains(&warm), "{protocol}: {warm} full handshakes to start");
        let (full_before, checks_before) =
            (origin.full_handshakes.load(Ordering::SeqCst), origin.state.checks.load(Ordering::SeqCst));
        for _ in 0..20 {
            let (status, headers, body) = v.get("www.app.test", "/headers").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            // Over h2 the host travels as :authority, not as a header.
            assert!(protocol == "auto" || body.contains("host: app.test"), "the origin's host: {body}");
            assert_eq!(headers["x-served-by"], origin.addr.to_string());
        }
        // Checks keep running over the same sessions.
        let checks_ran = wait_until(Duration::from_secs(10), || async {
            origin.state.checks.load(Ordering::SeqCst) >= checks_before + 10
        })
        .await;
        assert!(checks_ran, "checks did not run: {}", v.log());
        let full = origin.full_handshakes.load(Ordering::SeqCst) - full_before;
        assert_eq!(full, 0, "{protocol}: no full handshake for 20 requests and 10+ checks once warm");
        let server = v.server(origin.addr).await;
        assert_eq!(server["l7"]["state"], "healthy", "{server}");
        assert_eq!(server["l4"]["state"], "up");
        let metrics = get_raw(v.admin, "a", "/metrics").await.unwrap().2;
        let series = format!("vigil_tls_handshakes_total{{side=\"origin\",resumed=\"false\"}} {warm}");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_origin_certificate_takes_the_server_out_and_says_why() {
    let pki = Pki::new();
    let port = free_port(&["127.0.0.2", "127.0.0.3"]);
    let expired = TlsOrigin::start("127.0.0.2", port, &pki.leaf(&["app.test"], true), &[b"http/1.1"]).await;
    let wrong = TlsOrigin::start("127.0.0.3", port, &pki.leaf(&["other.test"], false), &[b"http/1.1"]).await;
    let servers = format!("[\"{}\", \"{}\"]", expired.addr, wrong.addr);
    let rest = https_remap("www.app.test", &format!("app.test:{port}"), &servers, "ca_file = \"ca.pem\"");
    let ca_pem = pki.ca_pem();
    let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];
    let v = Vigil::start_with("tlsbad", files, "", &rest, "").await;
    let (status, _, _) = v.get("www.app.test", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "neither server can be reached");
    for (addr, why) in
        [(expired.addr, "tls: certificate expired"), (wrong.addr, "tls: certificate name mismatch")]
    {
        let s = v.server(addr).await;
        assert_eq!(s["l4"]["state"], "down", "{s}");
        assert_eq!(s["l4"]["last_error"], why, "{s}");
        assert_eq!(s["routable"], false);
    }
    let status = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["status", "--admin", &v.admin.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("last L4 failure: tls: certificate expired"), "{table}");
    let metrics = get_raw(v.admin, "a", "/metrics").await.unwrap().2;
    assert!(
        metrics
            .contains("vigil_tls_handshake_failures_total{side=\"origin\",reason=\"certificate expired\"} 1"),
        "{metrics}"
    );
    assert_eq!(expired.conns.load(Ordering::SeqCst) + wrong.conns.load(Ordering::SeqCst), 0);
}

/// A rustls client trusting `ca`, offering `alpn`.
pub(crate) fn client(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The leaf certificate `name` is served over `addr`, by a fresh handshake.
async fn served_leaf(addr: SocketAddr, ca: &CertificateDer<'static>, name: &str) -> CertificateDer<'static> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = client(ca, &[b"http/1.1"])
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

async fn exchange(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, host: &str) -> String {
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n127.0.0") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_picks_by_sni_speaks_h2_and_reloads_certificates() {
    let pki = Pki::new();
    let o = origins(&["127.0.0.2"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let tls_port = free_port(&["127.0.0.1"]);
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let (a, b) = (pki.leaf(&["a.test"], false), pki.leaf(&["b.test"], false));
    let ca_pem = pki.ca_pem();
    let files: &[(&str, &[u8])] = &[
        ("a.pem", a.cert_pem.as_bytes()),
        ("a.key", a.key_pem.as_bytes()),
        ("b.pem", b.cert_pem.as_bytes()),
        ("b.key", b.key_pem.as_bytes()),
        ("ca.pem", ca_pem.as_bytes()),
    ];
    let tls_conf = "\n[[tls]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\n[[tls]]\ncert = \"b.pem\"\nkey = \"b.key\"\ndefault = true\n";
    let rest = format!(
        "[[remap]]\nfrom = \"b.test\"\nto = \"http://{origin}\"\n{}{tls_conf}",
        remap("a.test", &origin, &server_list(&o), ""),
    );
    let v = Vigil::start_with("tlslisten", files, &format!("listen_tls = \"{tls_addr}\""), &rest, "").await;
    let ca = pki.ca.der().clone();

    // SNI picks the certificate; no SNI (an IP) gets the default.
    assert_eq!(served_leaf(tls_addr, &ca, "a.test").await, a.der);
    assert_eq!(served_leaf(tls_addr, &ca, "b.test").await, b.der);
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &tls_addr.to_string(), "-noservername"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CN = b.test") || text.contains("CN=b.test"), "no SNI: the default: {text}");

    // Real clients: curl over HTTP/1.1 and h2 (ALPN), through to the origin.
    let ca_file = v.dir.join("ca.pem");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(&ca_file)
            .args(["--resolve", &format!("a.test:{tls_port}:127.0.0.1")])
            .args(["-w", "\n%{http_version} %{http_code}", &format!("https://a.test:{tls_port}/")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.ends_with(&format!("\n{version} 200")),
            "curl {flag}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("127.0.0.2:"), "served by the origin: {text}");
    }
    // TLS 1.0 and 1.1 are refused (rustls speaks 1.2 and 1.3 only).
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &tls_addr.to_string(), "-servername", "a.test", "-tls1_1"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() || text.contains("Cipher is (NONE)"), "TLS 1.1 accepted: {text}");

    // A connection opened before a reload keeps working; new handshakes get
    // the new certificate.
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut kept =
        client(&ca, &[b"http/1.1"]).connect(ServerName::try_from("a.test").unwrap(), tcp).await.unwrap();
    assert!(exchange(&mut kept, "a.test").await.starts_with("HTTP/1.1 200"));
    let a2 = pki.leaf(&["a.test"], false);
    std::fs::write(v.dir.join("a.pem"), &a2.cert_pem).unwrap();
    std::fs::write(v.dir.join("a.key"), &a2.key_pem).unwrap();
    let (status, body) = v.post("/reload", None, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(exchange(&mut kept, "a.test").await.starts_with("HTTP/1.1 200"), "the open connection goes on");
    assert_eq!(served_leaf(tls_addr, &ca, "a.test").await, a2.der, "new handshakes get the new certificate");
    // A key that does not match: the reload is refused and says why; the
    // certificates in use stay.
    std::fs::write(v.dir.join("a.key"), &b.key_pem).unwrap();
    let (status, body) = v.post("/reload", None, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("a.key") && body.contains("does not match"), "{body}");
    assert_eq!(served_leaf(tls_addr, &ca, "a.test").await, a2.der);

    // Garbage instead of a ClientHello: closed, counted, nothing logged above debug.
    let mut junk = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "a non-TLS client must be closed");
    // Counted once the handshake future has given up, which may be just
    // after the client saw the close.
    let series = "vigil_tls_handshake_failures_total{side=\"client\",reason=\"not tls\"} 1";
    let counted = wait_until(Duration::from_secs(5), || async {
        get_raw(v.admin, "a", "/metrics").await.is_some_and(|m| m.2.contains(series))
    })
    .await;
    let metrics = get_raw(v.admin, "a", "/metrics").await.unwrap().2;
    assert!(counted, "{series} in {metrics}");
    assert!(metrics.contains("vigil_tls_certificate_expiry_seconds{cert="), "{metrics}");
    assert!(!v.log().contains(" WARN ") || !v.log().contains("handshake"), "{}", v.log());
}

#[test]
fn check_config_names_tls_file_problems_at_their_place() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf(&["a.test"], false), pki.leaf(&["b.test"], false));
    let dir = test_dir("tlscheck");
    std::fs::write(dir.join("a.pem"), &a.cert_pem).unwrap();
    std::fs::write(dir.join("b.key"), &b.key_pem).unwrap();
    std::fs::write(dir.join("healthchecks.toml"), "").unwrap();
    let head = "[proxy]\nlisten = \"127.0.0.1:8080\"\nlisten_tls = \"127.0.0.1:8443\"\n";
    let cases = [
        (format!("{head}[[tls]]\ncert = \"missing.pem\"\nkey = \"b.key\"\n"), "5:8", "missing.pem: cannot read"),
        (format!("{head}[[tls]]\ncert = \"a.pem\"\nkey = \"b.key\"\n"), "6:7", "does not match"),
        (format!("{head}[[tls]]\ncert = \"b.key\"\nkey = \"b.key\"\n"), "5:8", "no certificate"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[[remap]]\nfrom = \"a\"\nto = \"https://b\"\n[origins.\"b:443\"]\nca_file = \"none.pem\"\n"
                .to_owned(),
            "7:11",
            "ca_file",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[[remap]]\nfrom = \"a\"\nto = \"http://b\"\n[origins.\"b:80\"]\nsni = \"x\"\n"
                .to_owned(),
            "7:7",
            "https origins only",
        ),
        (head.to_owned(), "3:14", "needs at least one [[tls]]"),
    ];
    for (main, at, what) in cases {
        std::fs::write(dir.join("vigil.toml"), &main).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["check-config", "--config"])
            .arg(dir.join("vigil.toml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{main}: {err}");
        assert!(err.contains(&format!("vigil.toml:{at}: ")), "{main}: expected {at} in {err}");
        assert!(err.contains(what), "{main}: expected {what:?} in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// nginx with ssl as the origin, when it is installed (CI installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_as_an_https_origin() {
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("nginx is not installed: skipped (CI installs it)");
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf(&["app.test"], false);
    let dir = test_dir("nginx-origin");
    std::fs::write(dir.join("app.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("app.key"), &leaf.key_pem).unwrap();
    let port = free_port(&["127.0.0.4"]);
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n access_log off;\n \
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n \
         server {{\n  listen 127.0.0.4:{port} ssl;\n  ssl_certificate {d}/app.pem;\n  ssl_certificate_key {d}/app.key;\n  \
         location / {{ return 200 \"nginx over tls\\n\"; }}\n }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut nginx =
        Command::new("nginx").arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(&dir).spawn().unwrap();
    let up = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.4", port)).await.is_ok()
    })
    .await;
    assert!(up, "nginx did not start");
    let rest = https_remap(
        "www.app.test",
        &format!("app.test:{port}"),
        &format!("[\"127.0.0.4:{port}\"]"),
        "ca_file = \"ca.pem\"",
    );
    let ca_pem = pki.ca_pem();
    let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];
    let v = Vigil::start_with("nginxorigin", files, "", &rest, "").await;
    for _ in 0..3 {
        let (status, _, body) = v.get("www.app.test", "/").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "nginx over tls\n"));
    }
    let _ = nginx.kill();
    let _ = nginx.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_admin_port_checks_an_https_origins_server() {
    let pki = Pki::new();
    let ip = "127.0.0.10";
    let leaf = pki.leaf(&["app.test"], false);
    let origin = TlsOrigin::start(ip, free_port(&[ip]), &leaf, &[b"http/1.1"]).await;
    let admin = Origin::start(ip, free_port(&[ip])).await;
    let port = origin.addr.port();
    let servers = format!("[\"{}\"]", origin.addr);
    let rest = https_remap("www.app.test", &format!("app.test:{port}"), &servers, "ca_file = \"ca.pem\"");
    let hc = FAST_CHECKS.replace(
        "path = \"/healthz\"",
        &format!("path = \"/healthz\"\nport = {}\ntls = false", admin.addr.port()),
    );
    let ca_pem = pki.ca_pem();
    let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];
    let v = Vigil::start_with("tlsadmin", files, "", &rest, &hc).await;
    assert_eq!(v.get("www.app.test", "/").await.0, StatusCode::OK);
    let healthy = wait_until(Duration::from_secs(5), || async {
        v.server(origin.addr).await["l7"]["state"] == "healthy" && admin.checks() >= 2
    })
    .await;
    assert!(healthy, "{}", v.server(origin.addr).await);
    assert_eq!(origin.state.checks.load(Ordering::SeqCst), 0, "checks go to the plain admin port");
    admin.state.health.store(503, Ordering::SeqCst);
    let out = wait_until(Duration::from_secs(5), || async {
        v.server(origin.addr).await["l7"]["state"] == "unhealthy"
    })
    .await;
    assert!(out, "{}", v.server(origin.addr).await);
    assert_eq!(v.server(origin.addr).await["l7"]["last_detail"], format!("port {}: 503", admin.addr.port()));
}
