//! Listeners: the proxy (HTTP/1.1 and h2c prior knowledge, strict framing)
//! and the admin API, with graceful shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::Shared;
use crate::forward::Peer;
use crate::{admin, forward, framing};

/// The running listeners.
#[derive(Debug)]
pub(crate) struct Server {
    /// Where the proxy listens (the bound address, when the config said port 0).
    pub(crate) proxy: SocketAddr,
    /// Where the admin API listens.
    pub(crate) admin: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    loops: Vec<JoinHandle<()>>,
}

/// Binds both listeners and starts serving.
pub(crate) async fn start(shared: Arc<Shared>, listen: SocketAddr, admin: SocketAddr) -> io::Result<Server> {
    let proxy_l = bind(listen, "proxy.listen").await?;
    let admin_l = bind(admin, "proxy.admin").await?;
    let (proxy, admin) = (proxy_l.local_addr()?, admin_l.local_addr()?);
    let (stop, rx) = watch::channel(None);
    let loops = vec![
        tokio::spawn(accept_loop(proxy_l, Kind::Proxy, Arc::clone(&shared), rx.clone())),
        tokio::spawn(accept_loop(admin_l, Kind::Admin, shared, rx)),
    ];
    Ok(Server { proxy, admin, stop, loops })
}

async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("{what} {addr}: cannot listen: {e}")))
}

impl Server {
    /// Stops accepting, lets connections finish what is in flight (up to
    /// `grace`), then returns.
    pub(crate) async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        for l in self.loops {
            let _ = l.await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Proxy,
    Admin,
}

fn builder(kind: Kind) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(framing::MAX_HEAD + 8192);
    b.http2().timer(TokioTimer::new()).max_concurrent_streams(if kind == Kind::Proxy { 256 } else { 16 });
    b
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let graceful = GracefulShutdown::new();
    let builder = builder(kind);
    let grace = loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                break if changed.is_ok() { *stop.borrow() } else { Some(Duration::ZERO) };
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve(stream, peer, kind, &shared, &builder, &graceful),
                Err(e) => {
                    // Out of descriptors and the like: say so, back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    };
    drop(listener);
    let grace = grace.unwrap_or(Duration::ZERO);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(?kind, open, "draining connections");
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?kind, "connections still open after the grace period; closing them");
    }
}

fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shared: &Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let shared = Arc::clone(shared);
    match kind {
        Kind::Proxy => {
            let io = TokioIo::new(framing::Strict::new(stream, Arc::clone(&shared.metrics.framing_refused)));
            let peer = Peer::new(peer);
            let svc = service_fn(move |req| forward::serve(Arc::clone(&shared), peer.clone(), req));
            let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            });
        }
        Kind::Admin => {
            let io = TokioIo::new(stream);
            let svc = service_fn(move |req| admin::serve(Arc::clone(&shared), req));
            let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
}
