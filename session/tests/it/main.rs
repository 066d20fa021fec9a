//! Session-pool integration tests against real loopback origins.

// Helpers outside #[test] fns are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod errors;
mod h1;
mod h2;
mod limits;
mod tls;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vigil_session::{Observer, SessionError, empty_body};

/// A real origin on loopback that counts connections and requests.
pub(crate) struct Origin {
    pub(crate) addr: SocketAddr,
    pub(crate) conns: Arc<AtomicUsize>,
    pub(crate) requests: Arc<AtomicUsize>,
}

impl Origin {
    pub(crate) fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Paths: `/` answers `ok`; `/slow` waits 200 ms first; `/big` sends 256 KiB;
/// `/echo` streams the request body back as it arrives (chunked: its length
/// is unknown to hyper), so a client must read while it writes.
pub(crate) async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<OriginBody>, Infallible> {
    let body = match req.uri().path() {
        "/echo" => return Ok(hyper::Response::new(req.into_body().boxed())),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Bytes::from_static(b"slow")
        }
        "/big" => Bytes::from(vec![b'x'; 256 * 1024]),
        _ => Bytes::from_static(b"ok"),
    };
    Ok(hyper::Response::new(Full::new(body).map_err(|never| match never {}).boxed()))
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn counted(
    listener: TcpListener,
    serve: impl Fn(tokio::net::TcpStream, Arc<AtomicUsize>) + Send + 'static,
) -> Origin {
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&conns);
    let r = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            serve(s, Arc::clone(&r));
        }
    });
    Origin { addr, conns, requests }
}

/// A hyper HTTP/1.1 origin.
pub(crate) async fn h1_origin() -> Origin {
    let (l, _) = listen().await;
    counted(l, |s, r| {
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                r.fetch_add(1, Ordering::SeqCst);
                handle(req)
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
        });
    })
}

/// A hyper h2c origin allowing `max_streams` concurrent streams per connection.
pub(crate) async fn h2_origin(max_streams: u32) -> Origin {
    let (l, _) = listen().await;
    counted(l, move |s, r| {
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                r.fetch_add(1, Ordering::SeqCst);
                handle(req)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(max_streams)
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    })
}

/// A raw TCP origin: reads a request head, then writes `reply` and, if
/// `close`, closes; otherwise keeps the socket open and silent.
pub(crate) async fn raw_origin(reply: &'static [u8], close: bool) -> Origin {
    let (l, _) = listen().await;
    counted(l, move |mut s, r| {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            loop {
                let Ok(n) = s.read(&mut buf).await else { return };
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            r.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(reply).await;
            if close {
                let _ = s.shutdown().await;
            } else {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
    })
}

/// A request body of `n` pieces of `size` bytes each, its length unknown
/// (no exact size hint), so it goes out chunked.
pub(crate) struct Pieces {
    pub(crate) left: usize,
    pub(crate) size: usize,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = vigil_session::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![b'p'; self.size])))))
    }
}

pub(crate) fn get(path: &str) -> http::Request<vigil_session::RequestBody> {
    http::Request::get(path).header("host", "origin.test").body(empty_body()).unwrap()
}

/// `n` concurrent GETs of `path` through `pool`; returns their bodies.
pub(crate) async fn concurrent(
    pool: &vigil_session::Pool,
    t: vigil_session::Target,
    n: usize,
    path: &'static str,
) -> Vec<Bytes> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let resp = pool.request(t, vigil_session::Freshness::IdlePreferred, get(path)).await.unwrap();
                read_all(resp).await
            })
        })
        .collect();
    let mut bodies = Vec::with_capacity(n);
    for task in tasks {
        bodies.push(task.await.unwrap());
    }
    bodies
}

pub(crate) async fn read_all(resp: http::Response<vigil_session::PooledBody>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Records what the pool reports.
#[derive(Default)]
pub(crate) struct Recorder {
    pub(crate) connects: Mutex<Vec<(SocketAddr, Result<(), vigil_session::ErrorKind>)>>,
    pub(crate) io_errors: Mutex<Vec<(SocketAddr, vigil_session::ErrorKind)>>,
}

impl Observer for Recorder {
    fn on_connect(&self, addr: SocketAddr, result: Result<(), &SessionError>) {
        self.connects.lock().push((addr, result.map_err(|e| e.kind())));
    }
    fn on_io_error(&self, addr: SocketAddr, error: &SessionError) {
        self.io_errors.lock().push((addr, error.kind()));
    }
}
