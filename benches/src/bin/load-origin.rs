//! The origin `cargo xtask loadtest` puts behind every proxy it measures: a
//! one-thread hyper HTTP/1.1 server answering `hello` with keep-alive.
//!
//! `load-origin IP:PORT`; it runs until killed.

#![allow(clippy::print_stderr)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() {
    let Some(addr) = std::env::args().nth(1).and_then(|a| a.parse::<std::net::SocketAddr>().ok()) else {
        eprintln!("usage: load-origin IP:PORT (loopback only)");
        std::process::exit(2);
    };
    if !addr.ip().is_loopback() {
        eprintln!("load-origin: {addr} is not on loopback");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"hello\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
