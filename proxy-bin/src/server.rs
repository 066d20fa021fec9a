//! Listeners: the proxy (HTTP/1.1 on our own server in `h1`, with strict
//! framing; h2c prior knowledge on hyper), the same over TLS (`listen_tls`:
//! ALPN picks HTTP/1.1 or h2), and the admin API (hyper), with graceful
//! shutdown.
//!
//! A listener is bound, or adopted from the process a binary upgrade takes
//! over from (`upgrade.rs`): the same kernel socket, so connections queued
//! on it are accepted by whichever process accepts first, and none is
//! refused while the two overlap. Each keeps a duplicate of its socket for
//! the next upgrade, dropped when the server stops.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use bytes::BytesMut;

use crate::app::Shared;
use crate::forward::Peer;
use crate::h1::{self, Stop};
use crate::limits::{self, ClientSlot};
use crate::listener::Halves;
use crate::{admin, forward};

/// `SO_SNDBUF` of an admin connection (the kernel doubles it).
const ADMIN_SEND_BUFFER: usize = 64 * 1024;

/// The running listeners.
#[derive(Debug)]
pub(crate) struct Server {
    /// Where the proxy listens (the bound address, when the config said port 0).
    pub(crate) proxy: SocketAddr,
    /// Where the admin API listens.
    pub(crate) admin: SocketAddr,
    /// Where the TLS listener listens, if there is one.
    pub(crate) tls: Option<SocketAddr>,
    stop: watch::Sender<Option<Duration>>,
    loops: Vec<JoinHandle<()>>,
    /// What a binary upgrade hands over; emptied when the server stops.
    sockets: Sockets,
}

/// A listening socket as a binary upgrade hands it over.
#[derive(Debug)]
pub(crate) struct ListenSocket {
    /// Which listener: `proxy.listen`, `proxy.listen_tls`, `proxy.admin`.
    pub(crate) role: &'static str,
    /// Its bound address.
    pub(crate) addr: SocketAddr,
    /// A duplicate of the accepting descriptor.
    pub(crate) fd: OwnedFd,
}

/// The running listeners' sockets, for a binary upgrade; empty once the
/// server stops (the duplicates would keep a socket listening, with
/// nobody accepting, for as long as the process drains).
pub(crate) type Sockets = Arc<parking_lot::Mutex<Vec<ListenSocket>>>;

/// Binds the listeners, or adopts those of `inherited` bound to the
/// addresses the config names (what is left of it is closed), and starts
/// serving.
pub(crate) async fn start(
    shared: Arc<Shared>,
    listen: SocketAddr,
    admin: SocketAddr,
    inherited: Vec<std::net::TcpListener>,
) -> io::Result<Server> {
    let mut inherited = inherited;
    let mut kept = Vec::new();
    let proxy_l = bind(listen, "proxy.listen", &mut inherited, &mut kept).await?;
    let admin_l = bind(admin, "proxy.admin", &mut inherited, &mut kept).await?;
    let tls_l = match (shared.config.load().listen_tls, &shared.listener) {
        (Some(addr), Some(_)) => Some(bind(addr, "proxy.listen_tls", &mut inherited, &mut kept).await?),
        _ => None,
    };
    for gone in inherited {
        tracing::info!(addr = ?gone.local_addr().ok(), "a listener of the old process the config no longer names: closed here");
    }
    let (proxy, admin) = (proxy_l.local_addr()?, admin_l.local_addr()?);
    let tls = tls_l.as_ref().map(TcpListener::local_addr).transpose()?;
    let (stop, rx) = watch::channel(None);
    let files = limits::raise_open_files_limit().unwrap_or(1024);
    let auto_max = limits::auto_max_connections(files);
    tracing::debug!(open_files = files, max_connections = auto_max, "client connection limit when unset");
    let mut loops = vec![
        tokio::spawn(accept_loop(proxy_l, Kind::Proxy, Arc::clone(&shared), rx.clone(), auto_max)),
        tokio::spawn(accept_loop(admin_l, Kind::Admin, Arc::clone(&shared), rx.clone(), auto_max)),
    ];
    if let Some(l) = tls_l {
        loops.push(tokio::spawn(accept_loop(l, Kind::ProxyTls, shared, rx, auto_max)));
    }
    Ok(Server { proxy, admin, tls, stop, loops, sockets: Arc::new(parking_lot::Mutex::new(kept)) })
}

/// The listener for `addr` (`what` names its key): the inherited one bound
/// there, else a new one. A duplicate of its socket goes to `kept`.
async fn bind(
    addr: SocketAddr,
    what: &'static str,
    inherited: &mut Vec<std::net::TcpListener>,
    kept: &mut Vec<ListenSocket>,
) -> io::Result<TcpListener> {
    let cannot = |e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: cannot listen: {e}"));
    let listener = match inherited.iter().position(|l| l.local_addr().is_ok_and(|a| a == addr)) {
        Some(i) => {
            let l = inherited.swap_remove(i);
            l.set_nonblocking(true).map_err(cannot)?;
            tracing::debug!(%addr, what, "listening socket taken over from the old process");
            TcpListener::from_std(l).map_err(cannot)?
        }
        None => TcpListener::bind(addr).await.map_err(cannot)?,
    };
    let bound = listener.local_addr().map_err(cannot)?;
    let fd = listener.as_fd().try_clone_to_owned().map_err(cannot)?;
    kept.push(ListenSocket { role: what, addr: bound, fd });
    Ok(listener)
}

impl Server {
    /// The listening sockets a binary upgrade hands over.
    pub(crate) fn sockets(&self) -> Sockets {
        Arc::clone(&self.sockets)
    }

    /// Stops accepting, lets connections finish what is in flight (up to
    /// `grace`), then returns.
    pub(crate) async fn shutdown(self, grace: Duration) {
        self.sockets.lock().clear();
        let _ = self.stop.send(Some(grace));
        for l in self.loops {
            let _ = l.await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Proxy,
    ProxyTls,
    Admin,
}

fn builder(kind: Kind, max_head: usize) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30)).max_buf_size(1 << 20);
    // An h2 client's header block is bounded as an HTTP/1.1 head is
    // (`limits.max_request_head`, as of the listener's start).
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(if kind == Kind::Admin { 16 } else { 256 })
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    b
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
    auto_max: usize,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(kind, shared.config.load().limits.max_request_head));
    let h1_stop = Arc::new(Stop::default());
    let grace = loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                break if changed.is_ok() { *stop.borrow() } else { Some(Duration::ZERO) };
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Past the limit: closed at once, counted (the admin
                    // listener is not limited: operators must get in).
                    let slot = match kind {
                        Kind::Admin => None,
                        _ => {
                            let max = shared.config.load().limits.max_connections.unwrap_or(auto_max);
                            match shared.metrics.clients.take(max) {
                                Some(slot) => Some(slot),
                                None => {
                                    shared.metrics.limit("connections");
                                    continue;
                                }
                            }
                        }
                    };
                    let accepted = Accepted { stream, peer, slot };
                    serve(accepted, kind, &shared, &builder, &graceful, &h1_stop);
                }
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
    let open = graceful.count() + h1_stop.live();
    if open > 0 {
        tracing::info!(?kind, open, "draining connections");
    }
    h1_stop.stop();
    let drained = async {
        graceful.shutdown().await;
        h1_stop.drained().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(?kind, "connections still open after the grace period; closing them");
    }
}

/// A connection just accepted, with its slot under `limits.max_connections`
/// (none on the admin listener).
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<ClientSlot>,
}

/// An h2 client connection (h2c by prior knowledge, or h2 by ALPN), served
/// by hyper and counted by the graceful shutdown's watcher.
async fn serve_h2<I>(
    io: I,
    shared: Arc<Shared>,
    peer: Peer,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| forward::serve(Arc::clone(&shared), peer.clone(), req));
    if let Err(e) = watcher.watch(builder.serve_connection(TokioIo::new(io), svc).into_owned()).await {
        tracing::debug!(error = %e, "h2 client connection ended with an error");
    }
}

fn serve(
    accepted: Accepted,
    kind: Kind,
    shared: &Arc<Shared>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    h1_stop: &Arc<Stop>,
) {
    let Accepted { stream, peer, slot } = accepted;
    let _ = stream.set_nodelay(true);
    let shared = Arc::clone(shared);
    match kind {
        Kind::Proxy => {
            let peer = Peer::new(peer, false);
            let (builder, watcher) = (Arc::clone(builder), graceful.watcher());
            let live = h1_stop.enter();
            let stop = Arc::clone(h1_stop);
            let head_timeout = shared.config.load().client_header_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                let mut stream = stream;
                // The first bytes tell HTTP/1.1 from h2c: within the head
                // timeout, like any head, or the connection closes (a client
                // that sends nothing, or half the preface, holds no descriptor).
                // A stop leaves it `IDLE_GRACE` to send them: a request sent
                // as the server stopped is answered.
                let deadline = tokio::time::Instant::now() + head_timeout;
                let Some(Ok((first, h2))) = stop.idle(deadline, h1::sniff(&mut stream)).await else { return };
                if !h2 {
                    h1::serve(stream, first, peer, shared, live).await;
                    return;
                }
                drop(live); // hyper's graceful watcher counts this one
                let io = h1::Prefixed::new(first.freeze(), stream);
                // Boxed: hyper's connection is a large future, and inline it
                // would size every HTTP/1.1 connection's task too.
                Box::pin(serve_h2(io, shared, peer, &builder, watcher)).await;
            });
        }
        Kind::ProxyTls => {
            let peer = Peer::new(peer, true);
            let (builder, watcher) = (Arc::clone(builder), graceful.watcher());
            let live = h1_stop.enter();
            let stop = Arc::clone(h1_stop);
            let head_timeout = shared.config.load().client_header_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                let Some(listener) = shared.listener.clone() else { return };
                let deadline = tokio::time::Instant::now() + head_timeout;
                let Some(Some(tls)) = stop.idle(deadline, listener.accept(stream, head_timeout)).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    let (r, w) = Halves::split(tls);
                    h1::serve_halves(r, w, BytesMut::new(), peer, shared, live).await;
                    return;
                }
                drop(live); // hyper's graceful watcher counts this one
                Box::pin(serve_h2(tls, shared, peer, &builder, watcher)).await;
            });
        }
        Kind::Admin => {
            // What an admin client that reads slowly can hold in the kernel:
            // on loopback the send buffer grows to megabytes by default, so
            // an event stream's reader that stopped would hold that before its
            // own queue (events::BEHIND) filled and it was dropped.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(ADMIN_SEND_BUFFER);
            let io = TokioIo::new(stream);
            let svc = service_fn(move |req| admin::serve(Arc::clone(&shared), req));
            let conn = graceful.watch(builder.serve_connection(io, svc).into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
}
