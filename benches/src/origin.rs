//! A real HTTP/1.1 origin on loopback for the session benches: answers `ok`
//! to everything, keeps connections alive, counts connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use vigil_session::{Freshness, Pool, Target, empty_body};

/// Starts the origin on the current runtime; returns its address and its
/// connection counter.
pub async fn start_h1_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(serve_h1(listener, b"ok", Arc::clone(&conns)));
    (addr, conns)
}

/// Answers every request on `listener` with `body`, HTTP/1.1 keep-alive and
/// `TCP_NODELAY`, one task per connection; counts connections. Runs until
/// the runtime stops.
pub async fn serve_h1(listener: tokio::net::TcpListener, body: &'static [u8], conns: Arc<AtomicUsize>) {
    while let Ok((stream, _)) = listener.accept().await {
        conns.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_h1_conn(stream, body));
    }
}

/// Answers every request on one connection (any stream: TCP, TLS) with
/// `body`, HTTP/1.1 keep-alive, until the client closes.
pub async fn serve_h1_conn<S>(stream: S, body: &'static [u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |_req| async move {
        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(body))))
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
}

/// One GET through the pool, body read to the end.
pub async fn get(pool: &Pool, target: Target, freshness: Freshness) {
    let req = http::Request::get("/").header("host", "bench.test").body(empty_body()).expect("valid request");
    let resp = pool.request(target, freshness, req).await.expect("origin answers");
    let body = resp.into_body().collect().await.expect("body");
    std::hint::black_box(body.to_bytes());
}
