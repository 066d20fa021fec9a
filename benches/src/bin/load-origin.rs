//! The origin `cargo xtask loadtest` and the `proxy_request` perf scenario
//! put behind the proxies they measure: a one-thread hyper HTTP/1.1 server
//! answering `hello` with keep-alive (`vigil_benches::origin::serve_h1`).
//!
//! `load-origin IP:PORT`; it runs until killed.

#![allow(clippy::print_stderr)]

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
        vigil_benches::origin::serve_h1(listener, b"hello\n", Default::default()).await;
    });
}
