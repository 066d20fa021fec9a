//! The origin `cargo xtask loadtest` and the `proxy_request` perf scenario
//! put behind the proxies they measure: a one-thread hyper HTTP/1.1 server
//! answering `hello` with keep-alive (`vigil_benches::origin::serve_h1`).
//!
//! `load-origin IP:PORT [--tls CERT KEY STATS]`; it runs until killed. With
//! `--tls` it serves HTTPS with the PEM certificate chain and key given
//! (ALPN http/1.1, session tickets), and every second writes to STATS how
//! many handshakes it did, full and resumed: what `loadtest --tls` reports
//! as handshakes per health check.

#![allow(clippy::print_stderr)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.first().and_then(|a| a.parse::<std::net::SocketAddr>().ok()) else {
        eprintln!("usage: load-origin IP:PORT [--tls CERT KEY STATS] (loopback only)");
        std::process::exit(2);
    };
    if !addr.ip().is_loopback() {
        eprintln!("load-origin: {addr} is not on loopback");
        std::process::exit(2);
    }
    let tls = match args.get(1).map(String::as_str) {
        None => None,
        Some("--tls") if args.len() == 5 => Some((args[2].clone(), args[3].clone(), args[4].clone())),
        Some(_) => {
            eprintln!("usage: load-origin IP:PORT [--tls CERT KEY STATS]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        match tls {
            None => vigil_benches::origin::serve_h1(listener, b"hello\n", Default::default()).await,
            Some((cert, key, stats)) => serve_tls(listener, &cert, &key, stats).await,
        }
    });
}

async fn serve_tls(listener: tokio::net::TcpListener, cert: &str, key: &str, stats: String) {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("cert file").collect::<Result<_, _>>().expect("PEM certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("PEM key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let written = Arc::clone(&counts);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let (full, resumed) = (written.0.load(Ordering::Relaxed), written.1.load(Ordering::Relaxed));
            let _ = std::fs::write(&stats, format!("full {full}\nresumed {resumed}\n"));
        }
    });
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let (acceptor, counts) = (acceptor.clone(), Arc::clone(&counts));
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            match tls.get_ref().1.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => counts.1.fetch_add(1, Ordering::Relaxed),
                _ => counts.0.fetch_add(1, Ordering::Relaxed),
            };
            vigil_benches::origin::serve_h1_conn(tls, b"hello\n").await;
        });
    }
}
