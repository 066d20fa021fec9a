//! Binary upgrade without downtime (HAProxy's `-x`, Pingora's upgrade): a
//! new process, `vigil run --upgrade`, takes the listening sockets and the
//! server state from the running one over `proxy.upgrade_socket`, a Unix
//! socket, starts serving on the very same kernel sockets, and then the old
//! process stops accepting and drains as on SIGTERM.
//!
//! The exchange, each message a frame (a 4-byte big-endian length, then
//! JSON), each step bounded in time so that neither side hangs on a peer
//! that died or stalled:
//!
//! 1. new → old: `hello` (the exchange's format, the new version).
//! 2. old → new: `handover` (the format, the old version, each listener's
//!    role and bound address), then one byte carrying the listening sockets
//!    (SCM_RIGHTS, in the order `handover` lists them), then the server
//!    state as the state file holds it (`state.rs`). Or `refused`: another
//!    upgrade is under way, or this process is stopping.
//! 3. The new process adopts the sockets bound where its config listens
//!    (it binds any new address; one the config dropped closes with the
//!    old process), applies the state, starts serving, then new → old:
//!    `serving`. Or `failed` with its error, and it exits 1.
//! 4. old → new: `ack`. The old process stops accepting (it no longer
//!    calls accept on the shared sockets: nothing queued on them is lost)
//!    and drains; under systemd it first names the new process the
//!    service's main PID.
//! 5. old → new: `released` once it has left the cluster: the gossip port
//!    is free for the new process to join with the same node id.
//!
//! Until `serving`, nothing in the old process changed: any failure of the
//! new one (a bad config, an address it cannot bind, a dead peer, a step
//! past its time) leaves the old one serving as before.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vigil_hostdb::HostDb;

use crate::notify;
use crate::server::Sockets;

/// The exchange's format: both sides must speak the same.
const FORMAT: &str = "vigil-upgrade/1";

/// One step of the exchange: a peer silent this long is gone.
const STEP: Duration = Duration::from_secs(10);

/// How long the old process waits for the new one to serve once it has the
/// sockets (it builds its HostDB and pool, binds new addresses).
const START: Duration = Duration::from_secs(60);

/// How long the new process waits for the old one to leave the cluster
/// (a few gossip intervals, while requests drain).
const RELEASE: Duration = Duration::from_secs(60);

/// The largest frame: the server state of a very large HostDB fits.
const MAX_FRAME: usize = 256 << 20;

/// The most sockets that travel (the proxy, TLS and admin listeners).
const MAX_FDS: usize = 8;

/// The byte that carries the sockets.
const SOCKETS_BYTE: u8 = b'S';

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Message {
    Hello { format: String, version: String },
    Handover { format: String, version: String, listeners: Vec<Listener> },
    Refused { reason: String },
    Serving,
    Failed { error: String },
    Ack,
    Released,
}

/// One listening socket, as `handover` names it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Listener {
    /// `proxy.listen`, `proxy.listen_tls` or `proxy.admin`.
    role: String,
    /// Its bound address: how the new process matches it to its config.
    addr: SocketAddr,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("no {what} within the time allowed"))
}

async fn send_frame(conn: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("frame too large"))?;
    let write = async {
        conn.write_all(&len.to_be_bytes()).await?;
        conn.write_all(bytes).await?;
        conn.flush().await
    };
    tokio::time::timeout(STEP, write).await.map_err(|_| timed_out("room to write"))?
}

/// The next frame. Reads exactly its bytes: the sockets' byte that follows
/// a `handover` is left for [`recv_sockets`].
async fn recv_frame(conn: &mut UnixStream, within: Duration, what: &str) -> io::Result<Vec<u8>> {
    let read = async {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
        }
        let mut bytes = vec![0u8; len];
        conn.read_exact(&mut bytes).await?;
        Ok(bytes)
    };
    tokio::time::timeout(within, read).await.map_err(|_| timed_out(what))?
}

async fn send_msg(conn: &mut UnixStream, msg: &Message) -> io::Result<()> {
    // Plain data of our own types: serializing it cannot fail.
    send_frame(conn, &serde_json::to_vec(msg).unwrap_or_default()).await
}

async fn recv_msg(conn: &mut UnixStream, within: Duration, what: &str) -> io::Result<Message> {
    let bytes = recv_frame(conn, within, what).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}")))
}

/// Sends `fds` with one byte (SCM_RIGHTS).
async fn send_sockets(conn: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let send = async {
        loop {
            conn.writable().await?;
            let sent = conn.try_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::other("too many sockets for one message"));
                }
                let byte = [SOCKETS_BYTE];
                Ok(rustix::net::sendmsg(conn, &[IoSlice::new(&byte)], &mut control, SendFlags::empty())?)
            });
            match sent {
                Ok(1) => return Ok(()),
                Ok(_) => return Err(io::Error::other("the sockets' byte was not sent")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(STEP, send).await.map_err(|_| timed_out("room to send the sockets"))?
}

/// Receives the byte that carries the sockets, and them.
async fn recv_sockets(conn: &UnixStream) -> io::Result<Vec<OwnedFd>> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let recv = async {
        loop {
            conn.readable().await?;
            let got = conn.try_io(Interest::READABLE, || {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut byte = [0u8; 1];
                let msg = rustix::net::recvmsg(
                    conn,
                    &mut [IoSliceMut::new(&mut byte)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let mut fds = Vec::new();
                for m in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                if msg.bytes == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the old process went away"));
                }
                if byte[0] != SOCKETS_BYTE || msg.flags.contains(ReturnFlags::CTRUNC) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "not the sockets' message"));
                }
                Ok(fds)
            });
            match got {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
        }
    };
    tokio::time::timeout(STEP, recv).await.map_err(|_| timed_out("listening sockets"))?
}

// ---------------------------------------------------------------------------
// The new process.

/// What the new process took from the old one, before it serves.
#[derive(Debug)]
pub(crate) struct Takeover {
    conn: UnixStream,
    /// The old process's listening sockets.
    pub(crate) listeners: Vec<std::net::TcpListener>,
    /// Its server state, as the state file holds it.
    pub(crate) state: Vec<u8>,
    /// Its version.
    pub(crate) version: String,
}

/// Connects to the running process at `path` and takes its listening
/// sockets and server state.
///
/// # Errors
/// The socket cannot be reached, the old process refused (an upgrade under
/// way), speaks another format, or a step failed or timed out.
pub(crate) async fn take_over(path: &Path) -> Result<Takeover, String> {
    let at = path.display().to_string();
    let at = at.as_str();
    let mut conn = match tokio::time::timeout(STEP, UnixStream::connect(path)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(format!(
                "cannot reach the running vigil at {at} (proxy.upgrade_socket): {e}; is it running with this upgrade_socket?"
            ));
        }
        Err(_) => return Err(format!("cannot reach the running vigil at {at}: no answer within {STEP:?}")),
    };
    let step = |what: &'static str| move |e: io::Error| format!("upgrade through {at}: {what}: {e}");
    let step = &step;
    let hello = Message::Hello { format: FORMAT.to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() };
    send_msg(&mut conn, &hello).await.map_err(step("saying hello"))?;
    let (version, listeners) = match recv_msg(&mut conn, STEP, "hand-over")
        .await
        .map_err(step("hand-over"))?
    {
        Message::Handover { format, version, listeners } if format == FORMAT => (version, listeners),
        Message::Handover { format, .. } => {
            return Err(format!("upgrade through {at}: the running vigil speaks {format:?}, not {FORMAT:?}"));
        }
        Message::Refused { reason } => {
            return Err(format!("the running vigil refused the upgrade: {reason}"));
        }
        other => return Err(format!("upgrade through {at}: unexpected {other:?}")),
    };
    let fds = recv_sockets(&conn).await.map_err(step("listening sockets"))?;
    if fds.len() != listeners.len() {
        return Err(format!(
            "upgrade through {at}: {} sockets came, the hand-over names {}",
            fds.len(),
            listeners.len()
        ));
    }
    let mut adopted = Vec::with_capacity(fds.len());
    for (fd, named) in fds.into_iter().zip(&listeners) {
        let l = std::net::TcpListener::from(fd);
        match l.local_addr() {
            Ok(addr) if addr == named.addr => adopted.push(l),
            got => {
                return Err(format!(
                    "upgrade through {at}: the socket for {} {} is bound to {got:?}",
                    named.role, named.addr
                ));
            }
        }
    }
    let state = recv_frame(&mut conn, STEP, "server state").await.map_err(step("server state"))?;
    Ok(Takeover { conn, listeners: adopted, state, version })
}

impl Takeover {
    /// Tells the old process this one failed (it serves on), best effort.
    pub(crate) async fn fail(mut self, error: &str) {
        let _ = send_msg(&mut self.conn, &Message::Failed { error: error.to_owned() }).await;
    }

    /// Tells the old process this one serves, and waits for its `ack`: it
    /// stops accepting and drains. Whatever the answer, this process serves
    /// on (both serve the same sockets until the old one stops).
    pub(crate) async fn serving(mut self) -> Handed {
        let confirmed = match send_msg(&mut self.conn, &Message::Serving).await {
            Ok(()) => match recv_msg(&mut self.conn, STEP, "acknowledgement").await {
                Ok(Message::Ack) => Ok(()),
                Ok(other) => Err(format!("unexpected {other:?}")),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &confirmed {
            tracing::warn!(error = %e, "the old process did not confirm the hand-over; it may still be serving too");
        }
        Handed { conn: confirmed.is_ok().then_some(self.conn) }
    }
}

/// The new process, serving, still connected to the old one.
#[derive(Debug)]
pub(crate) struct Handed {
    conn: Option<UnixStream>,
}

impl Handed {
    /// Waits until the old process has left the cluster (it says so, or it
    /// is gone); bounded.
    pub(crate) async fn released(self) {
        let Some(mut conn) = self.conn else { return };
        match recv_msg(&mut conn, RELEASE, "release").await {
            Ok(Message::Released) => {}
            // EOF: the old process has exited, its gossip socket with it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            other => {
                tracing::warn!(?other, "the old process did not say it left the cluster; joining anyway")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The running process.

/// A new process that serves now: this one stops accepting and drains.
#[derive(Debug)]
pub(crate) struct TakenOver {
    /// The new process's pid.
    pub(crate) pid: u32,
    conn: UnixStream,
}

impl TakenOver {
    /// Tells the new process this one has left the cluster.
    pub(crate) async fn released(mut self) {
        let _ = send_msg(&mut self.conn, &Message::Released).await;
    }
}

/// The running process's upgrade socket.
#[derive(Debug)]
pub(crate) struct UpgradeSocket {
    path: PathBuf,
    /// The socket file's device and inode: removed at the end only if it is
    /// still ours (after an upgrade it is the new process's).
    id: (u64, u64),
    task: JoinHandle<()>,
}

/// Listens on `path` (mode 0600, replacing a stale socket file) for one new
/// process at a time; the one that ends up serving is sent on `taken`.
///
/// # Errors
/// The socket cannot be bound there.
pub(crate) fn listen(
    path: &Path,
    db: HostDb,
    sockets: Sockets,
    taken: mpsc::Sender<TakenOver>,
) -> Result<UpgradeSocket, String> {
    let cannot = |e: io::Error| format!("proxy.upgrade_socket {}: cannot listen: {e}", path.display());
    // Bound under a name of its own, made private, then renamed over the
    // path: a stale file (a process that died) or the old process's socket
    // (after an upgrade) is replaced at once, and the path never names a
    // socket anyone may connect to.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(cannot(e)),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(cannot)?;
    let bound = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        listener.set_nonblocking(true)?;
        std::fs::metadata(path)
    })();
    let meta = bound.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        cannot(e)
    })?;
    let listener = UnixListener::from_std(listener).map_err(cannot)?;
    let owner = meta.uid();
    let task = tokio::spawn(accept_loop(listener, owner, db, sockets, taken));
    tracing::info!(socket = %path.display(), "binary upgrade: listening for a new process (vigil run --upgrade)");
    Ok(UpgradeSocket { path: path.to_owned(), id: (meta.dev(), meta.ino()), task })
}

impl UpgradeSocket {
    /// Stops listening; removes the socket file if it is still this one's.
    pub(crate) fn close(self) {
        self.task.abort();
        if std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    owner: u32,
    db: HostDb,
    sockets: Sockets,
    taken: mpsc::Sender<TakenOver>,
) {
    let busy = Arc::new(AtomicBool::new(false));
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Only this process's user (or root) may take its sockets; the
        // file's mode says the same, this holds whatever the folder allows.
        let peer = rustix::net::sockopt::socket_peercred(conn.as_fd());
        let pid = match peer {
            Ok(c) if c.uid.as_raw() == owner || c.uid.is_root() => {
                c.pid.as_raw_nonzero().get().unsigned_abs()
            }
            other => {
                tracing::warn!(peer = ?other, "upgrade socket: a process of another user was refused");
                continue;
            }
        };
        if busy.swap(true, Ordering::SeqCst) {
            tokio::spawn(async move {
                let reason = "another upgrade is under way".to_owned();
                let _ = send_msg(&mut conn, &Message::Refused { reason }).await;
            });
            continue;
        }
        let (db, sockets, taken, busy) = (db.clone(), Arc::clone(&sockets), taken.clone(), Arc::clone(&busy));
        tokio::spawn(async move {
            tracing::info!(pid, "binary upgrade: a new process asks for the listeners");
            match hand_over(conn, pid, &db, &sockets).await {
                // Stays busy: this process is on its way out.
                Ok(t) => {
                    let _ = taken.send(t).await;
                }
                Err(e) => {
                    tracing::error!(pid, "binary upgrade aborted, this process serves on: {e}");
                    busy.store(false, Ordering::SeqCst);
                }
            }
        });
    }
}

/// The old process's side of the exchange, up to the new one's `serving`.
async fn hand_over(
    mut conn: UnixStream,
    pid: u32,
    db: &HostDb,
    sockets: &Sockets,
) -> Result<TakenOver, String> {
    let io = |what: &'static str| move |e: io::Error| format!("{what}: {e}");
    match recv_msg(&mut conn, STEP, "hello").await.map_err(io("hello"))? {
        Message::Hello { format, .. } if format == FORMAT => {}
        Message::Hello { format, version } => {
            let reason = format!("this vigil speaks {FORMAT:?}, the new one ({version}) {format:?}");
            let _ = send_msg(&mut conn, &Message::Refused { reason: reason.clone() }).await;
            return Err(reason);
        }
        other => return Err(format!("unexpected {other:?}")),
    }
    // Duplicates, sent then closed here: the server's own stay with it.
    let (listeners, fds) = {
        let sockets = sockets.lock();
        let mut fds = Vec::with_capacity(sockets.len());
        for s in sockets.iter() {
            fds.push(s.fd.try_clone().map_err(io("duplicating a listening socket"))?);
        }
        let listeners: Vec<Listener> =
            sockets.iter().map(|s| Listener { role: s.role.to_owned(), addr: s.addr }).collect();
        (listeners, fds)
    };
    if fds.is_empty() {
        let reason = "this process is stopping".to_owned();
        let _ = send_msg(&mut conn, &Message::Refused { reason: reason.clone() }).await;
        return Err(reason);
    }
    let handover = Message::Handover {
        format: FORMAT.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        listeners,
    };
    send_msg(&mut conn, &handover).await.map_err(io("hand-over"))?;
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    send_sockets(&conn, &borrowed).await.map_err(io("sending the listening sockets"))?;
    drop(borrowed);
    drop(fds);
    send_frame(&mut conn, &crate::state::to_bytes(db)).await.map_err(io("sending the server state"))?;
    match recv_msg(&mut conn, START, "word from the new process").await {
        Ok(Message::Serving) => {}
        Ok(Message::Failed { error }) => return Err(format!("the new process failed: {error}")),
        Ok(other) => return Err(format!("unexpected {other:?}")),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err("the new process went away before it served (its log says why)".to_owned());
        }
        Err(e) => return Err(e.to_string()),
    }
    // systemd follows the new process from now on (before the `ack`, after
    // which it says READY=1 itself).
    notify::main_pid(pid, &format!("handing over to the new process (pid {pid}); draining"));
    if let Err(e) = send_msg(&mut conn, &Message::Ack).await {
        notify::main_pid(std::process::id(), "the hand-over failed; serving");
        return Err(format!("the new process went away as it began to serve: {e}"));
    }
    tracing::info!(pid, "binary upgrade: the new process serves");
    Ok(TakenOver { pid, conn })
}

/// SIGUSR2: starts `exe run --upgrade --config config`, a child of this
/// process (under systemd, inside the service, which then follows it as its
/// main PID). Its log goes where this one's goes; a failure is logged here.
pub(crate) fn spawn(exe: &Path, config: &Path) {
    let child = std::process::Command::new(exe)
        .args(["run", "--upgrade", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(exe = %exe.display(), "SIGUSR2: cannot start the new process: {e}");
            return;
        }
    };
    let pid = child.id();
    tracing::info!(pid, exe = %exe.display(), "SIGUSR2: started the new process (vigil run --upgrade)");
    // Reaped by a thread of its own: it outlives this process when it
    // succeeds, and says in its log why when it does not.
    let waiter = std::thread::Builder::new().name("vigil-upgrade".into()).spawn(move || match child.wait() {
        Ok(status) if status.success() => {}
        Ok(status) => tracing::error!(pid, %status, "the new process ended; this process serves on"),
        Err(e) => tracing::warn!(pid, "cannot wait for the new process: {e}"),
    });
    if let Err(e) = waiter {
        tracing::warn!("cannot watch the new process: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ListenSocket;

    #[tokio::test]
    async fn the_sockets_and_the_state_travel_and_one_upgrade_at_a_time() {
        let dir = std::env::temp_dir().join(format!("vigil-upgrade-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("upgrade.sock");
        // A stale file where the socket goes is replaced.
        std::fs::write(&path, b"stale").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let fd = OwnedFd::from(tcp);
        let sockets: Sockets = Arc::new(parking_lot::Mutex::new(vec![ListenSocket {
            role: "proxy.listen",
            addr,
            fd: fd.try_clone().unwrap(),
        }]));
        let db = HostDb::builder().build().unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let socket = listen(&path, db, Arc::clone(&sockets), tx).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let first = take_over(&path).await.unwrap();
        assert_eq!(first.listeners.len(), 1);
        assert_eq!(first.listeners[0].local_addr().unwrap(), addr);
        let state: serde_json::Value = serde_json::from_slice(&first.state).unwrap();
        assert_eq!(state["format"], "vigil-state/1");
        // The very socket: a connection to it is accepted through the copy.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        first.listeners[0].accept().unwrap();

        // A second new process while the first has not served yet: refused.
        let second = take_over(&path).await.unwrap_err();
        assert!(second.contains("another upgrade is under way"), "{second}");

        // The first serves: this process hears it, acknowledges, and later
        // says it released the cluster.
        let serving = tokio::spawn(first.serving());
        let taken = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(taken.pid, std::process::id());
        let handed = serving.await.unwrap();
        assert!(handed.conn.is_some(), "acknowledged");
        taken.released().await;
        tokio::time::timeout(Duration::from_secs(5), handed.released()).await.unwrap();

        // Closed: the socket file goes with it (it is still this one's).
        socket.close();
        assert!(!path.exists());
        let err = take_over(&path).await.unwrap_err();
        assert!(err.contains("cannot reach the running vigil"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
