//! The soak harness behind `cargo xtask soak`: the real `vigil` binary under
//! steady load for minutes while, at seeded random times, its origin servers
//! are killed and restarted, go into maintenance and back (their health
//! endpoint answering 503, or through the admin API), answer slowly, cut
//! responses off mid-body, and the config is reloaded (valid and invalid
//! files, by SIGHUP and by `POST /reload`), with admin calls in between.
//! Then a second phase: an origin that accepts and reads but never answers,
//! with tens of thousands of h2 requests in flight through the proxy.
//!
//! Everything runs in this process but the proxy: the origin servers (so a
//! fault is a flag, not a guess), the clients (so every request's outcome is
//! classified), the fault schedule, the sampler of the proxy's memory and
//! descriptors (`/proc/<pid>`), and a follower of its `/events` stream (so
//! the transitions it reports are compared with those the schedule caused).
//! It prints a table of figures and exits 1 when an assertion fails.
//!
//! Run through `cargo xtask soak --minutes N [--seed S]`, which builds
//! `vigil` and this in release and passes:
//! `soak --vigil PATH --minutes N --seed S [--rate R] [--hold-seconds H]`.
//! Listens on 127.0.0.1 and 127.0.0.21-30, ports 18501-18530.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::too_many_lines
)]

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

const LISTEN: &str = "127.0.0.1:18501";
const ADMIN: &str = "127.0.0.1:18502";
/// The origin under load: three servers always, a fourth in config variant B.
const APP_PORT: u16 = 18510;
const APP_IPS: [&str; 4] = ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24"];
/// The origin that never answers.
const HOLE: &str = "127.0.0.30:18520";
/// What the proxy may hold for the hole origin: its upstream connections
/// (`max_connections`) and how long a request waits for one (`queue_timeout`).
const HOLE_MAX_CONNECTIONS: u64 = 1000;
const ORIGIN_TIMEOUT_S: u64 = 8;
const HOLE_QUEUE_TIMEOUT_S: u64 = 15;
/// A request with no outcome after this long is lost.
const LOST_AFTER: Duration = Duration::from_secs(30);
/// After a fault ends, how long the proxy has to report the server back,
/// and the least time before the same server's next fault.
const RECOVERY_S: f64 = 5.0;
/// Bounds on growth after warm-up, per minute.
const RSS_SLOPE_BOUND_KIB: f64 = 1024.0;
/// The descriptor count moves with the connections open at the instant of
/// each sample (tens up and down); a leak of one per fault would be about
/// 10 a minute at this schedule's pace.
const FD_SLOPE_BOUND: f64 = 5.0;
/// The memory budget per request in flight to the never-answering origin.
/// (Measured: about 6 KiB in release.)
const HOLE_BUDGET_KIB_PER_REQUEST: u64 = 16;
/// Slopes are asserted only over at least this long after warm-up: over a
/// minute or two they measure the allocator settling, not a leak.
const SLOPE_WINDOW_MIN_S: f64 = 180.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let Some(vigil) = value("--vigil").map(PathBuf::from) else {
        eprintln!("usage: soak --vigil PATH [--minutes N] [--seed S] [--rate R] [--hold-seconds H]");
        std::process::exit(2);
    };
    let num = |name: &str, default: f64| value(name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
    let opts = Opts {
        vigil,
        seconds: num("--minutes", 5.0) * 60.0,
        seed: value("--seed").and_then(|v| v.parse().ok()).unwrap_or(1),
        rate: num("--rate", 600.0),
        hold_seconds: num("--hold-seconds", 45.0),
    };
    // Raise the soft descriptor limit to the hard one: the hold phase opens
    // a thousand origin connections here.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let ok = rt.block_on(run(opts));
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(i32::from(!ok));
}

struct Opts {
    vigil: PathBuf,
    seconds: f64,
    seed: u64,
    rate: f64,
    hold_seconds: f64,
}

// ---------------------------------------------------------------- origins

/// What a server does with user requests (its health endpoint apart).
const NORMAL: u8 = 0;
const SLOW: u8 = 1;
const CUT: u8 = 2;

/// One origin server in this process, whose faults are flags.
struct Server {
    addr: SocketAddr,
    mode: AtomicU8,
    /// What `/healthz` answers.
    health: AtomicU16,
    /// Bumped by a kill: the accept loop and every connection end.
    generation: tokio::sync::watch::Sender<u64>,
    alive: AtomicBool,
    served: AtomicU64,
    /// Responses cut off mid-body in `CUT` mode.
    cuts: AtomicU64,
    /// Responses begun and not yet sent to the end.
    in_progress: AtomicI64,
    /// Responses in progress when the server was killed: each may reach a
    /// client cut off.
    in_progress_at_kills: AtomicU64,
    posts: Mutex<HashSet<u64>>,
    duplicate_posts: AtomicU64,
}

impl Server {
    fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            mode: AtomicU8::new(NORMAL),
            health: AtomicU16::new(200),
            generation: tokio::sync::watch::channel(0).0,
            alive: AtomicBool::new(false),
            served: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            in_progress: AtomicI64::new(0),
            in_progress_at_kills: AtomicU64::new(0),
            posts: Mutex::new(HashSet::new()),
            duplicate_posts: AtomicU64::new(0),
        })
    }

    /// Binds (again, after a kill) and serves until the next kill.
    fn start(self: &Arc<Self>) {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(self.addr).unwrap_or_else(|e| panic!("binding {}: {e}", self.addr));
        let listener = socket.listen(1024).unwrap();
        self.alive.store(true, Ordering::SeqCst);
        let me = Arc::clone(self);
        let mut killed = self.generation.subscribe();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = killed.changed() => return,
                };
                let me = Arc::clone(&me);
                let mut killed = me.generation.subscribe();
                tokio::spawn(async move {
                    let svc = {
                        let me = Arc::clone(&me);
                        hyper::service::service_fn(move |req| handle(Arc::clone(&me), req))
                    };
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
    }

    /// Hard kill: the listener and every connection go at once.
    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let open = self.in_progress.load(Ordering::SeqCst).max(0);
        self.in_progress_at_kills.fetch_add(open as u64, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}

/// `/healthz`; `GET /r/<id>/<size>` (a length), `GET /c/<id>/<size>`
/// (chunked), `POST /p/<id>` (the body's length and checksum back). Every
/// answer names the request's id, so a crossed answer is seen.
async fn handle(s: Arc<Server>, req: Request<Incoming>) -> Result<Response<Reply>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let status = s.health.load(Ordering::SeqCst);
        let body = Reply::new(vec![Bytes::from_static(b"OK")], Some(2), &s);
        return Ok(Response::builder().status(status).body(body).unwrap());
    }
    s.served.fetch_add(1, Ordering::SeqCst);
    let mode = s.mode.load(Ordering::SeqCst);
    if mode == SLOW {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let (kind, id) = (parts.next().unwrap_or(""), parts.next().and_then(|v| v.parse::<u64>().ok()));
    let size: usize = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let Some(id) = id else {
        let body = Reply::new(vec![Bytes::from_static(b"bad path")], Some(8), &s);
        return Ok(Response::builder().status(404).body(body).unwrap());
    };
    let text = match kind {
        "p" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if !s.posts.lock().insert(id) {
                s.duplicate_posts.fetch_add(1, Ordering::SeqCst);
            }
            format!("id={id} len={} sum={}", body.len(), checksum(&body))
        }
        _ => expected_get(id, size),
    };
    let whole = Bytes::from(text);
    let half = whole.len() / 2;
    let pieces = vec![whole.slice(..half), whole.slice(half..)];
    let mut reply = Reply::new(pieces, (kind != "c").then_some(whole.len() as u64), &s);
    if mode == CUT {
        // Half the time at once (the proxy may still retry a GET on another
        // server), half the time once the head has had time to reach the
        // client (then nobody can hide the cut: the client must see it).
        reply.cut = true;
        reply.frames.truncate(1);
        if fastrand::bool() {
            reply.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        }
    }
    Ok(Response::builder().header("x-served-by", s.addr.to_string()).body(reply).unwrap())
}

/// The body `GET /r/<id>/<size>` and `/c/...` answer: the id, then padding
/// to `size` bytes.
fn expected_get(id: u64, size: usize) -> String {
    let mut text = format!("id={id} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// A response body: its pieces; with `cut`, an error after them (hyper
/// then closes the connection mid-body). Counted in progress until dropped.
struct Reply {
    frames: VecDeque<Bytes>,
    len: Option<u64>,
    cut: bool,
    /// Before the cut.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    server: Arc<Server>,
}

impl Reply {
    fn new(frames: Vec<Bytes>, len: Option<u64>, server: &Arc<Server>) -> Self {
        server.in_progress.fetch_add(1, Ordering::SeqCst);
        Self { frames: frames.into(), len, cut: false, pause: None, server: Arc::clone(server) }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.server.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

impl hyper::body::Body for Reply {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(f))));
        }
        if let Some(pause) = self.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        if self.cut {
            self.cut = false;
            self.server.cuts.fetch_add(1, Ordering::SeqCst);
            return Poll::Ready(Some(Err(std::io::Error::other("cut off mid-response"))));
        }
        Poll::Ready(None)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.len.map_or_else(hyper::body::SizeHint::default, hyper::body::SizeHint::with_exact)
    }
}

/// The origin that never answers: it accepts, reads and discards.
#[derive(Default)]
struct Hole {
    open: AtomicI64,
    max_open: AtomicI64,
    accepted: AtomicU64,
}

async fn start_hole(hole: Arc<Hole>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(HOLE.parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { continue };
            hole.accepted.fetch_add(1, Ordering::SeqCst);
            let now = hole.open.fetch_add(1, Ordering::SeqCst) + 1;
            hole.max_open.fetch_max(now, Ordering::SeqCst);
            let hole = Arc::clone(&hole);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = [0u8; 2048];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                hole.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

// ---------------------------------------------------------------- the proxy

fn write_config(dir: &Path, variant: usize) {
    let n = if variant == 0 { 3 } else { 4 };
    let servers: Vec<String> = APP_IPS[..n].iter().map(|ip| format!("\"{ip}:{APP_PORT}\"")).collect();
    let lb = if variant == 0 { "round_robin" } else { "least_requests" };
    let main = format!(
        "[proxy]\nlisten = \"{LISTEN}\"\nadmin = \"{ADMIN}\"\nthreads = 2\norigin_timeout = \"{ORIGIN_TIMEOUT_S}s\"\n\n\
         [l4]\nconnect_timeout = \"1s\"\nfail_threshold = 1\ndown_time = \"2s\"\nconnect_attempts = 3\n\n\
         [limits]\nmax_connections = 2000\n\n\
         [[remap]]\nfrom = \"app.soak\"\nto = \"http://app.soak:{APP_PORT}\"\n\n\
         [origins.\"app.soak:{APP_PORT}\"]\nservers = [{}]\nlb = \"{lb}\"\n\n\
         [[remap]]\nfrom = \"hole.soak\"\nto = \"http://hole.soak:18520\"\n\n\
         [origins.\"hole.soak:18520\"]\nservers = [\"{HOLE}\"]\nmax_connections = {HOLE_MAX_CONNECTIONS}\n\
         queue_timeout = \"{HOLE_QUEUE_TIMEOUT_S}s\"\n",
        servers.join(", ")
    );
    std::fs::write(dir.join("vigil.toml"), main).unwrap();
    let interval = if variant == 0 { "500ms" } else { "400ms" };
    let checks = format!(
        "[defaults]\ninterval = \"{interval}\"\nunhealthy_interval = \"{interval}\"\ntimeout = \"350ms\"\n\
         healthy_threshold = 2\nunhealthy_threshold = 3\n\n[[check]]\norigin = \"app.soak\"\npath = \"/healthz\"\n"
    );
    std::fs::write(dir.join("healthchecks.toml"), checks).unwrap();
}

/// The process's resident memory (KiB) and open descriptors.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

/// The sockets `pid` holds open that are established connections to
/// `addr`: the inodes `/proc/net/tcp` lists as such, then those of them
/// among the process's descriptors. `/proc/net/tcp` is read in pieces, so
/// over a burst of closes and connects it may list sockets of before and
/// after together; a socket the process has closed since is no longer
/// among its descriptors, read second, so the count is never more than
/// the process held at that instant.
fn upstream_sockets(pid: u32, addr: &str) -> u64 {
    let a: SocketAddr = addr.parse().unwrap();
    let std::net::IpAddr::V4(ip) = a.ip() else { return 0 };
    // The kernel prints the address as a native-endian u32 in hex.
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port());
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inodes: HashSet<&str> = table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().take(10).collect();
            (f.len() == 10 && f[2] == want && f[3] == "01").then_some(f[9])
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    fds.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|link| {
            link.to_str()
                .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
        .count() as u64
}

/// One request on a fresh connection to `addr`: status and body, `None` on
/// any failure.
async fn call(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::from(body.to_owned())))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req)).await.ok()?.ok()?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect()).await.ok()?.ok()?;
    Some((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
}

/// The sum of the `/metrics` series that start with `prefix` and contain `needle`.
fn metric(text: &str, prefix: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------- the schedule

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    HealthMaintenance,
    AdminMaintenance,
    Slow,
    Cut,
}

const FAULTS: [Fault; 5] =
    [Fault::Kill, Fault::HealthMaintenance, Fault::AdminMaintenance, Fault::Slow, Fault::Cut];

#[derive(Debug, Clone, Copy)]
struct Episode {
    server: usize,
    fault: Fault,
    from: f64,
    to: f64,
}

#[derive(Debug, Clone, Copy)]
enum Reload {
    /// Switch to the other valid variant.
    Valid,
    /// An unknown key in `vigil.toml`.
    BadMain,
    /// A bad duration in the health-check file.
    BadChecks,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Begin(usize),
    End(usize),
    Reload { kind: Reload, by_signal: bool },
    BadAdminPost,
}

struct Plan {
    episodes: Vec<Episode>,
    actions: Vec<(f64, Action)>,
}

/// The seeded schedule: a fault every 2-6 s on one of the three main
/// servers, lasting 4-12 s, never more than two servers faulty at once (the
/// third is always sound), where a server counts as faulty until
/// `RECOVERY_S` after its fault ends (a server whose health endpoint is
/// back is unhealthy until its next passing checks; one started again is
/// down until it is retried), and so a server's next fault at least
/// `RECOVERY_S` after its last; a reload every 4-10 s; a malformed admin call every 10-20 s.
fn plan(seed: u64, seconds: f64) -> Plan {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut episodes = Vec::new();
    let mut busy_until = [0.0f64; 3];
    let mut t = 5.0;
    let last = seconds - 2.0 * RECOVERY_S;
    loop {
        t += 2.0 + rng.f64() * 4.0;
        if t + 4.0 > last {
            break;
        }
        let faulty = busy_until.iter().filter(|&&b| b + RECOVERY_S > t).count();
        let free: Vec<usize> = (0..3).filter(|&s| busy_until[s] + RECOVERY_S <= t).collect();
        if faulty >= 2 || free.is_empty() {
            continue;
        }
        let server = free[rng.usize(..free.len())];
        let fault = FAULTS[rng.usize(..FAULTS.len())];
        let to = (t + 4.0 + rng.f64() * 8.0).min(last);
        busy_until[server] = to;
        episodes.push(Episode { server, fault, from: t, to });
    }
    let mut actions: Vec<(f64, Action)> = Vec::new();
    for (i, e) in episodes.iter().enumerate() {
        actions.push((e.from, Action::Begin(i)));
        actions.push((e.to, Action::End(i)));
    }
    let mut t = 3.0;
    loop {
        t += 4.0 + rng.f64() * 6.0;
        if t > seconds - 3.0 {
            break;
        }
        let kind = match rng.u8(..4) {
            0 | 1 => Reload::Valid,
            2 => Reload::BadMain,
            _ => Reload::BadChecks,
        };
        actions.push((t, Action::Reload { kind, by_signal: rng.bool() }));
    }
    let mut t = 0.0;
    loop {
        t += 10.0 + rng.f64() * 10.0;
        if t > seconds - 3.0 {
            break;
        }
        actions.push((t, Action::BadAdminPost));
    }
    actions.sort_by(|a, b| a.0.total_cmp(&b.0));
    Plan { episodes, actions }
}

// ---------------------------------------------------------------- client outcomes

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    gets: AtomicU64,
    posts: AtomicU64,
    ok: AtomicU64,
    /// An idempotent request (GET) answered with an error status or a
    /// connection closed before the head.
    get_errors: AtomicU64,
    post_errors: AtomicU64,
    /// The head came, the body was cut off.
    truncated: AtomicU64,
    /// A complete answer that is not the one asked for.
    wrong: AtomicU64,
    lost: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Tally {
    fn example(&self, t: f64, what: String) {
        let mut e = self.examples.lock();
        if e.len() < 20 {
            e.push(format!("{t:>7.1}s {what}"));
        }
    }
}

struct Shared {
    start: Instant,
    tally: Tally,
    stop: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// One keep-alive client connection's loop: paced requests, each one's
/// outcome classified; a new connection after any failure.
async fn client(shared: Arc<Shared>, period: Duration, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if let Some(tx) = conn.as_mut()
            && tx.ready().await.is_err()
        {
            conn = None;
        }
        let tx = match conn.as_mut() {
            Some(tx) => tx,
            None => {
                let Ok(stream) = TcpStream::connect(LISTEN).await else {
                    shared.tally.example(shared.now(), "cannot connect to the proxy".into());
                    continue;
                };
                let Ok((tx, c)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
                    continue;
                };
                tokio::spawn(c);
                conn.insert(tx)
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let t = &shared.tally;
        t.sent.fetch_add(1, Ordering::SeqCst);
        let pick = rng.u8(..100);
        let (req, expect, is_get) = if pick < 85 {
            let size = rng.usize(16..16_384);
            let kind = if pick < 70 { "r" } else { "c" };
            let req = Request::get(format!("/{kind}/{id}/{size}"))
                .header("host", "app.soak")
                .body(Full::new(Bytes::new()))
                .unwrap();
            (req, expected_get(id, size), true)
        } else {
            let body: Vec<u8> = (0..rng.usize(0..8192)).map(|_| rng.u8(..)).collect();
            let expect = format!("id={id} len={} sum={}", body.len(), checksum(&body));
            let req = Request::post(format!("/p/{id}"))
                .header("host", "app.soak")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            (req, expect, false)
        };
        if is_get { &t.gets } else { &t.posts }.fetch_add(1, Ordering::SeqCst);
        let errors = if is_get { &t.get_errors } else { &t.post_errors };
        let what = if is_get { "GET" } else { "POST" };
        let outcome = tokio::time::timeout(LOST_AFTER, async {
            let resp = tx.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        match outcome {
            Err(_) => {
                t.lost.fetch_add(1, Ordering::SeqCst);
                t.example(shared.now(), format!("{what} {id}: no answer in {LOST_AFTER:?}"));
                conn = None;
            }
            Ok(Err(e)) => {
                errors.fetch_add(1, Ordering::SeqCst);
                t.example(shared.now(), format!("{what} {id}: {e}"));
                conn = None;
            }
            Ok(Ok((status, _))) if status != StatusCode::OK => {
                errors.fetch_add(1, Ordering::SeqCst);
                t.example(shared.now(), format!("{what} {id}: status {status}"));
            }
            Ok(Ok((_, Err(_)))) => {
                t.truncated.fetch_add(1, Ordering::SeqCst);
                conn = None;
            }
            Ok(Ok((_, Ok(body)))) => {
                if body == expect.as_bytes() {
                    t.ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    t.wrong.fetch_add(1, Ordering::SeqCst);
                    let got = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
                    t.example(
                        shared.now(),
                        format!("{what} {id}: wrong answer {got:?} ({} bytes)", body.len()),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone)]
struct Seen {
    t: f64,
    kind: String,
    server: String,
    from: String,
    to: String,
}

/// Follows `/events` for the whole run, reconnecting (with `since=`) if
/// the stream ends.
async fn follow_events(shared: Arc<Shared>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut last_id: Option<u64> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(stream) = TcpStream::connect(ADMIN).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok((mut tx, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            continue;
        };
        tokio::spawn(conn);
        let path = last_id.map_or_else(|| "/events".to_owned(), |id| format!("/events?since={id}"));
        let req = Request::get(path).header("host", "admin").body(Empty::<Bytes>::new()).unwrap();
        let Ok(resp) = tx.send_request(req).await else { continue };
        let mut body = resp.into_body();
        let mut buf = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if block.lines().any(|l| l.starts_with("event:")) {
                    continue;
                }
                let Some(doc) = block.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(doc) else { continue };
                last_id = v["id"].as_u64().or(last_id);
                let s = |k: &str| match &v[k] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                };
                let to = if v["type"] == "maintenance" { s("on") } else { s("to") };
                seen.lock().push(Seen {
                    t: shared.now(),
                    kind: s("type"),
                    server: s("server"),
                    from: s("from"),
                    to,
                });
            }
        }
    }
}

// ---------------------------------------------------------------- the run

/// The least-squares slope of `points` (seconds, value), per minute, and
/// its standard error.
fn slope_per_minute(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if n < 3.0 {
        return (0.0, 0.0);
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        return (0.0, 0.0);
    }
    let b = sxy / sxx;
    let residuals: f64 = points.iter().map(|p| (p.1 - my - b * (p.0 - mx)).powi(2)).sum();
    (b * 60.0, (residuals / (n - 2.0) / sxx).sqrt() * 60.0)
}

struct Vigil(Child);

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run(o: Opts) -> bool {
    let dir = std::env::temp_dir().join(format!("vigil-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let plan = plan(o.seed, o.seconds);
    println!(
        "soak: seed {}, {:.0} s of load at {:.0} req/s, {} faults, {} other scheduled actions; files in {}",
        o.seed,
        o.seconds,
        o.rate,
        plan.episodes.len(),
        plan.actions.len() - 2 * plan.episodes.len(),
        dir.display()
    );

    let servers: Vec<Arc<Server>> =
        APP_IPS.iter().map(|ip| Server::new(format!("{ip}:{APP_PORT}").parse().unwrap())).collect();
    for s in &servers {
        s.start();
    }
    let hole = Arc::new(Hole::default());
    start_hole(Arc::clone(&hole)).await;

    write_config(&dir, 0);
    let log = std::fs::File::create(dir.join("vigil.log")).unwrap();
    let child = Command::new(&o.vigil)
        .args(["run", "--config"])
        .arg(dir.join("vigil.toml"))
        .env("VIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", o.vigil.display()));
    let vigil = Vigil(child);
    let pid = vigil.0.id();
    let up = async {
        while call(ADMIN, "GET", "/healthz", "").await.map(|r| r.0) != Some(200) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), up).await.is_err() {
        println!(
            "vigil did not come up; its log:\n{}",
            std::fs::read_to_string(dir.join("vigil.log")).unwrap_or_default()
        );
        return false;
    }

    let shared = Arc::new(Shared {
        start: Instant::now(),
        tally: Tally::default(),
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let events = tokio::spawn(follow_events(Arc::clone(&shared), Arc::clone(&seen)));
    let workers = 16u32;
    let period = Duration::from_secs_f64(f64::from(workers) / o.rate);
    let mut clients = tokio::task::JoinSet::new();
    for w in 0..workers {
        clients.spawn(client(
            Arc::clone(&shared),
            period,
            o.seed.wrapping_mul(1000).wrapping_add(u64::from(w)),
        ));
    }

    // The sampler and the admin reads: every 2 s.
    let samples: Arc<Mutex<Vec<(f64, u64, u64)>>> = Arc::default();
    let admin_calls = Arc::new(AtomicU64::new(0));
    let admin_failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let sampler = {
        let (shared, samples, calls, failures) = (
            Arc::clone(&shared),
            Arc::clone(&samples),
            Arc::clone(&admin_calls),
            Arc::clone(&admin_failures),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            while !shared.stop.load(Ordering::SeqCst) {
                tick.tick().await;
                if let Some((rss, fds)) = sample(pid) {
                    samples.lock().push((shared.now(), rss, fds));
                }
                for path in ["/hosts", "/metrics", "/healthz", "/checks"] {
                    calls.fetch_add(1, Ordering::SeqCst);
                    match call(ADMIN, "GET", path, "").await {
                        Some((200, _)) => {}
                        other => failures.lock().push(format!("{:.1}s GET {path}: {other:?}", shared.now())),
                    }
                }
            }
        })
    };

    // The schedule.
    let mut variant = 0usize;
    let (mut valid_reloads, mut invalid_reloads, mut by_signal) = (0u64, 0u64, 0u64);
    let mut reload_failures = Vec::new();
    let mut bad_admin = 0u64;
    // When each fault really began and ended (an action may run late).
    let mut episodes = plan.episodes.clone();
    for (at, action) in &plan.actions {
        tokio::time::sleep_until(shared.start + Duration::from_secs_f64(*at)).await;
        let t = shared.now();
        match *action {
            Action::Begin(i) | Action::End(i) => {
                let e = plan.episodes[i];
                let begin = matches!(action, Action::Begin(_));
                if begin {
                    episodes[i].from = t;
                } else {
                    episodes[i].to = t;
                }
                let s = &servers[e.server];
                println!("{t:>7.1}s {} {:?} on {}", if begin { "begin" } else { "end  " }, e.fault, s.addr);
                match (e.fault, begin) {
                    (Fault::Kill, true) => s.kill(),
                    (Fault::Kill, false) => s.start(),
                    (Fault::HealthMaintenance, _) => {
                        s.health.store(if begin { 503 } else { 200 }, Ordering::SeqCst)
                    }
                    (Fault::Slow, _) => s.mode.store(if begin { SLOW } else { NORMAL }, Ordering::SeqCst),
                    (Fault::Cut, _) => s.mode.store(if begin { CUT } else { NORMAL }, Ordering::SeqCst),
                    (Fault::AdminMaintenance, _) => {
                        let body = format!(
                            "{{\"origin\": \"app.soak:{APP_PORT}\", \"server\": \"{}\", \"on\": {begin}}}",
                            s.addr
                        );
                        admin_calls.fetch_add(1, Ordering::SeqCst);
                        let r = call(ADMIN, "POST", "/maintenance", &body).await;
                        if r.as_ref().map(|r| r.0) != Some(200) {
                            admin_failures.lock().push(format!("{t:.1}s POST /maintenance {body}: {r:?}"));
                        }
                    }
                }
            }
            Action::Reload { kind, by_signal: signal } => {
                let before = call(ADMIN, "GET", "/metrics", "").await.map(|r| r.1).unwrap_or_default();
                let count = |text: &str| metric(text, "vigil_reloads_total", "");
                let valid = matches!(kind, Reload::Valid);
                if valid {
                    variant ^= 1;
                    write_config(&dir, variant);
                } else {
                    let (file, bad) = match kind {
                        Reload::BadMain => ("vigil.toml", "\n[proxy_typo]\nlisten = 1\n"),
                        _ => ("healthchecks.toml", "\n[[check]]\norigin = \"x.soak\"\ninterval = \"soon\"\n"),
                    };
                    let mut text = std::fs::read_to_string(dir.join(file)).unwrap();
                    text.push_str(bad);
                    std::fs::write(dir.join(file), text).unwrap();
                }
                println!(
                    "{t:>7.1}s reload by {} with {}",
                    if signal { "SIGHUP" } else { "POST /reload" },
                    match kind {
                        Reload::Valid => format!("valid variant {}", ["A", "B"][variant]),
                        Reload::BadMain => "an invalid vigil.toml".into(),
                        Reload::BadChecks => "an invalid healthchecks.toml".into(),
                    }
                );
                if signal {
                    by_signal += 1;
                    let _ = Command::new("kill").args(["-HUP", &pid.to_string()]).status();
                } else {
                    admin_calls.fetch_add(1, Ordering::SeqCst);
                    let r = call(ADMIN, "POST", "/reload", "").await;
                    let want = if valid { 200 } else { 400 };
                    if r.as_ref().map(|r| r.0) != Some(want) {
                        reload_failures.push(format!("{t:.1}s POST /reload: wanted {want}, got {r:?}"));
                    }
                }
                // Wait for the proxy to count it before the files change again.
                let counted = async {
                    loop {
                        let now = call(ADMIN, "GET", "/metrics", "").await.map(|r| r.1).unwrap_or_default();
                        if count(&now) > count(&before) {
                            return now;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), counted).await {
                    Ok(now) => {
                        let result = if valid { "result=\"ok\"" } else { "result=\"error\"" };
                        if metric(&now, "vigil_reloads_total", result)
                            <= metric(&before, "vigil_reloads_total", result)
                        {
                            reload_failures.push(format!("{t:.1}s reload counted, but not as {result}"));
                        }
                    }
                    Err(_) => reload_failures.push(format!("{t:.1}s reload never counted")),
                }
                if valid {
                    valid_reloads += 1;
                } else {
                    invalid_reloads += 1;
                    write_config(&dir, variant);
                }
            }
            Action::BadAdminPost => {
                bad_admin += 1;
                admin_calls.fetch_add(1, Ordering::SeqCst);
                let r = call(ADMIN, "POST", "/maintenance", "{\"origin\": 7}").await;
                if r.as_ref().map(|r| r.0) != Some(400) {
                    admin_failures
                        .lock()
                        .push(format!("{t:.1}s POST /maintenance (bad body): {r:?}, wanted 400"));
                }
            }
        }
    }
    tokio::time::sleep_until(shared.start + Duration::from_secs_f64(o.seconds)).await;
    shared.stop.store(true, Ordering::SeqCst);
    while clients.join_next().await.is_some() {}
    let load_seconds = shared.now();
    let _ = sampler.await;
    events.abort();
    let metrics_text = call(ADMIN, "GET", "/metrics", "").await.map(|r| r.1).unwrap_or_default();

    // ------------------------------------------------------------ figures
    let mut failures: Vec<String> = Vec::new();
    let mut out = String::new();
    let t = &shared.tally;
    let n = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let cuts: u64 = servers.iter().map(|s| n(&s.cuts)).sum();
    let at_kills: u64 = servers.iter().map(|s| n(&s.in_progress_at_kills)).sum();
    let dup: u64 = servers.iter().map(|s| n(&s.duplicate_posts)).sum();
    let count_faults = |f: Fault| plan.episodes.iter().filter(|e| e.fault == f).count();
    let _ = writeln!(
        out,
        "\nsoak figures (seed {}, {:.0} s of load, target {:.0} req/s, 16 keep-alive clients):",
        o.seed, load_seconds, o.rate
    );
    let _ = writeln!(
        out,
        "  requests sent                         {:>9} ({} GET, {} POST)",
        n(&t.sent),
        n(&t.gets),
        n(&t.posts)
    );
    let _ = writeln!(out, "  answered in full and verified         {:>9}", n(&t.ok));
    let _ = writeln!(
        out,
        "  client errors, GET (goal 0)           {:>9}   a sound server was always there",
        n(&t.get_errors)
    );
    let _ = writeln!(
        out,
        "  client errors, POST                   {:>9}   a POST is not sent twice, so a fault after sending reaches its client",
        n(&t.post_errors)
    );
    let _ = writeln!(
        out,
        "  cut off mid-body                      {:>9}   origins cut {cuts}, and {at_kills} were in progress at kills",
        n(&t.truncated)
    );
    let _ = writeln!(out, "  wrong answers (goal 0)                {:>9}", n(&t.wrong));
    let _ =
        writeln!(out, "  lost: no answer in {:>2} s (goal 0)     {:>9}", LOST_AFTER.as_secs(), n(&t.lost));
    let _ = writeln!(out, "  POSTs an origin got twice (goal 0)    {:>9}", dup);
    let _ = writeln!(
        out,
        "  faults                                kill {}, health 503 {}, admin maintenance {}, slow {}, cut mid-body {}",
        count_faults(Fault::Kill),
        count_faults(Fault::HealthMaintenance),
        count_faults(Fault::AdminMaintenance),
        count_faults(Fault::Slow),
        count_faults(Fault::Cut)
    );
    let _ = writeln!(
        out,
        "  reloads                               valid {valid_reloads}, invalid {invalid_reloads} ({by_signal} by SIGHUP, the rest POST /reload); vigil counted ok {}, error {}",
        metric(&metrics_text, "vigil_reloads_total", "result=\"ok\""),
        metric(&metrics_text, "vigil_reloads_total", "result=\"error\"")
    );
    let _ = writeln!(
        out,
        "  admin calls                           {:>9} ({bad_admin} malformed on purpose), failed {}",
        n(&admin_calls),
        admin_failures.lock().len()
    );
    let _ = writeln!(
        out,
        "  vigil retries (its own count)         {:>9}",
        metric(&metrics_text, "vigil_retries_total", "")
    );
    if n(&t.get_errors) > 0 {
        failures.push(format!("{} GETs failed while a sound server was there", n(&t.get_errors)));
    }
    if n(&t.lost) > 0 {
        failures.push(format!("{} requests lost", n(&t.lost)));
    }
    if n(&t.wrong) > 0 {
        failures.push(format!("{} wrong answers", n(&t.wrong)));
    }
    if dup > 0 {
        failures.push(format!("{dup} POSTs reached an origin twice"));
    }
    if n(&t.truncated) > cuts + at_kills {
        failures.push(format!(
            "{} answers cut off, more than origins cut ({cuts}) or kills could ({at_kills})",
            n(&t.truncated)
        ));
    }
    failures.extend(reload_failures);
    failures.extend(admin_failures.lock().iter().cloned());

    // Transitions: what each fault must make the proxy report, and what it
    // reported that no fault explains.
    let seen = seen.lock().clone();
    let addr = |i: usize| servers[i].addr.to_string();
    let find = |server: &str, kind: &str, to: &str, from: f64, until: f64| {
        seen.iter().any(|s| s.server == server && s.kind == kind && s.to == to && s.t >= from && s.t <= until)
    };
    let (mut caused, mut missing) = (0u64, Vec::new());
    for e in &episodes {
        let a = addr(e.server);
        let grace = RECOVERY_S;
        let expect: &[(&str, &str, f64, f64)] = match e.fault {
            Fault::Kill => &[("l4", "down", e.from, e.to), ("l4", "up", e.to, e.to + grace)],
            Fault::HealthMaintenance => {
                &[("l7", "unhealthy", e.from, e.to), ("l7", "healthy", e.to, e.to + grace)]
            }
            Fault::AdminMaintenance => {
                &[("maintenance", "true", e.from, e.from + 2.0), ("maintenance", "false", e.to, e.to + 2.0)]
            }
            Fault::Slow | Fault::Cut => &[],
        };
        for (kind, to, from, until) in expect {
            caused += 1;
            if !find(&a, kind, to, *from, *until) {
                missing.push(format!(
                    "{a} {kind} -> {to} within {from:.1}-{until:.1}s ({:?} {:.1}-{:.1}s)",
                    e.fault, e.from, e.to
                ));
            }
        }
    }
    let explained = |s: &Seen| {
        !matches!(s.kind.as_str(), "l4" | "l7" | "maintenance" | "outlier")
            || s.from == "unknown"
            || episodes
                .iter()
                .any(|e| addr(e.server) == s.server && s.t >= e.from - 0.5 && s.t <= e.to + RECOVERY_S)
    };
    let unexplained: Vec<&Seen> = seen.iter().filter(|s| !explained(s)).collect();
    let by_kind = |k: &str| seen.iter().filter(|s| s.kind == k).count();
    let _ = writeln!(
        out,
        "  transitions caused (must be seen)     {caused:>9}, seen {}, missing {}",
        caused - missing.len() as u64,
        missing.len()
    );
    let _ = writeln!(
        out,
        "  transitions vigil reported            {:>9} (l4 {}, l7 {}, maintenance {}, servers {}), none a fault explains: {}",
        seen.len(),
        by_kind("l4"),
        by_kind("l7"),
        by_kind("maintenance"),
        by_kind("servers"),
        unexplained.len()
    );
    for m in &missing {
        failures.push(format!("transition not seen: {m}"));
    }
    for u in unexplained.iter().take(10) {
        failures.push(format!(
            "transition no fault explains at {:.1}s: {} {} {} -> {}",
            u.t, u.kind, u.server, u.from, u.to
        ));
    }

    // Memory and descriptors after warm-up (the first fifth, at most 60 s).
    let samples = samples.lock().clone();
    let warm = (load_seconds / 5.0).min(60.0);
    let after: Vec<&(f64, u64, u64)> = samples.iter().filter(|s| s.0 >= warm).collect();
    let (rss_slope, rss_se) = slope_per_minute(&after.iter().map(|s| (s.0, s.1 as f64)).collect::<Vec<_>>());
    let (fd_slope, fd_se) = slope_per_minute(&after.iter().map(|s| (s.0, s.2 as f64)).collect::<Vec<_>>());
    if let (Some(first), Some(last)) = (after.first(), after.last()) {
        let max_rss = after.iter().map(|s| s.1).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "  RSS after {warm:.0} s warm-up             {:.1} MiB -> {:.1} MiB (max {:.1}), slope {rss_slope:+.0} ± {rss_se:.0} KiB/min (bound {RSS_SLOPE_BOUND_KIB:.0})",
            first.1 as f64 / 1024.0,
            last.1 as f64 / 1024.0,
            max_rss as f64 / 1024.0
        );
        let _ = writeln!(
            out,
            "  open descriptors after warm-up        {} -> {} (max {}), slope {fd_slope:+.2} ± {fd_se:.2}/min (bound {FD_SLOPE_BOUND:.0})",
            first.2,
            last.2,
            after.iter().map(|s| s.2).max().unwrap_or(0)
        );
    }
    if load_seconds - warm < SLOPE_WINDOW_MIN_S {
        let _ = writeln!(
            out,
            "  (slopes not asserted: under {SLOPE_WINDOW_MIN_S:.0} s after warm-up; run 5 minutes or more)"
        );
    } else {
        if rss_slope > RSS_SLOPE_BOUND_KIB {
            failures.push(format!("RSS grows {rss_slope:.0} KiB/min after warm-up"));
        }
        if fd_slope > FD_SLOPE_BOUND {
            failures.push(format!("descriptors grow {fd_slope:.2}/min after warm-up"));
        }
    }
    let _ = writeln!(out, "  series (s, RSS MiB, fds), every 10 s:");
    let mut line = String::from("   ");
    let mut next = 0.0;
    for s in &samples {
        if s.0 >= next {
            let _ = write!(line, " {:.0}:{:.1}/{}", s.0, s.1 as f64 / 1024.0, s.2);
            next = s.0 + 10.0 - 1.0;
            if line.len() > 100 {
                let _ = writeln!(out, "{line}");
                line = String::from("   ");
            }
        }
    }
    let _ = writeln!(out, "{line}");
    let examples = t.examples.lock().clone();
    if !examples.is_empty() {
        let _ = writeln!(out, "  first failures seen by clients:");
        for e in examples {
            let _ = writeln!(out, "    {e}");
        }
    }
    print!("{out}");

    // ------------------------------------------------------------ the hold phase
    if o.hold_seconds > 0.0 {
        failures.extend(hold(&o, pid, &hole).await);
    }

    if vigil_exited(&vigil) {
        failures.push("vigil exited during the run".into());
    }
    if failures.is_empty() {
        println!("\nsoak: every assertion held");
        let _ = std::fs::remove_dir_all(&dir);
        true
    } else {
        println!("\nsoak FAILED ({}); vigil's log is in {}:", failures.len(), dir.display());
        for f in &failures {
            println!("  - {f}");
        }
        false
    }
}

fn vigil_exited(v: &Vigil) -> bool {
    std::fs::metadata(format!("/proc/{}", v.0.id())).is_err()
        || std::fs::read_to_string(format!("/proc/{}/stat", v.0.id())).is_ok_and(|s| s.contains(") Z "))
}

/// The never-answering origin: `conns` h2c connections to the proxy, each
/// with `streams` requests always in flight to it (a new one as soon as one
/// is answered), for `hold_seconds`; then every client leaves at once.
async fn hold(o: &Opts, pid: u32, hole: &Arc<Hole>) -> Vec<String> {
    const CONNS: u64 = 80;
    const STREAMS: u64 = 250;
    let mut failures = Vec::new();
    let (rss_before, fds_before) = sample(pid).unwrap_or((0, 0));
    let in_flight = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut drivers = tokio::task::JoinSet::new();
    let mut opened = 0;
    for _ in 0..CONNS {
        let Ok(stream) = TcpStream::connect(LISTEN).await else { continue };
        let Ok((tx, conn)) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
        else {
            continue;
        };
        opened += 1;
        drivers.spawn(async move {
            let _ = conn.await;
        });
        for _ in 0..STREAMS {
            let (mut tx, in_flight, stop, statuses) =
                (tx.clone(), Arc::clone(&in_flight), Arc::clone(&stop), Arc::clone(&statuses));
            tasks.spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    if tx.ready().await.is_err() {
                        *statuses.lock().entry("connection failed".into()).or_default() += 1;
                        return;
                    }
                    let req = Request::get(format!("http://hole.soak/hole/{i}"))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let r = tokio::time::timeout(LOST_AFTER, async {
                        let resp = tx.send_request(req).await?;
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        Ok::<_, hyper::Error>(status)
                    })
                    .await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let key = match r {
                        Ok(Ok(s)) => s.as_u16().to_string(),
                        Ok(Err(e)) => format!("error: {e}"),
                        Err(_) => "lost".into(),
                    };
                    *statuses.lock().entry(key).or_default() += 1;
                }
            });
        }
    }
    println!(
        "\nhold: {opened} h2c connections x {STREAMS} streams to an origin that never answers, for {:.0} s",
        o.hold_seconds
    );
    let start = Instant::now();
    // (s, RSS KiB, fds, requests in flight, the proxy's connections to the origin)
    let mut series: Vec<(f64, u64, u64, i64, u64)> = Vec::new();
    while start.elapsed().as_secs_f64() < o.hold_seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((rss, fds)) = sample(pid) {
            series.push((
                start.elapsed().as_secs_f64(),
                rss,
                fds,
                in_flight.load(Ordering::SeqCst),
                upstream_sockets(pid, HOLE),
            ));
        }
    }
    // Everyone leaves at once: the proxy must let go of every queued and
    // in-flight request, and of its connections to the origin.
    stop.store(true, Ordering::SeqCst);
    tasks.abort_all();
    drivers.abort_all();
    while tasks.join_next().await.is_some() {}
    while drivers.join_next().await.is_some() {}
    let settled = async {
        loop {
            let (_, fds) = sample(pid).unwrap_or((0, 0));
            if hole.open.load(Ordering::SeqCst) == 0 && fds <= fds_before + 8 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let settled_in = Instant::now();
    let settled = tokio::time::timeout(Duration::from_secs(20), settled).await.is_ok();
    let settle_s = settled_in.elapsed().as_secs_f64();
    let (rss_after, fds_after) = sample(pid).unwrap_or((0, 0));

    let max_in_flight = series.iter().map(|s| s.3).max().unwrap_or(0).max(0) as u64;
    let peak = series.iter().map(|s| s.1).max().unwrap_or(0);
    let half = o.hold_seconds / 2.0;
    let first_half = series.iter().filter(|s| s.0 < half).map(|s| s.1).max().unwrap_or(0);
    let second_half = series.iter().filter(|s| s.0 >= half).map(|s| s.1).max().unwrap_or(0);
    let max_open = hole.max_open.load(Ordering::SeqCst);
    let max_upstream = series.iter().map(|s| s.4).max().unwrap_or(0);
    let bound = rss_before + max_in_flight * HOLE_BUDGET_KIB_PER_REQUEST;
    let per_request = (peak.saturating_sub(rss_before) as f64) / (max_in_flight.max(1) as f64);
    let statuses = statuses.lock().clone();
    let answered: u64 = statuses.values().sum();
    let mib = |k: u64| k as f64 / 1024.0;
    println!("hold figures:");
    println!(
        "  requests in flight at once (max)      {max_in_flight:>9}  ({opened} connections x {STREAMS} streams)"
    );
    println!("  answers                               {answered:>9}  {statuses:?}");
    println!(
        "  vigil's connections to it (max)       {max_upstream:>9}  (its open sockets established to it, sampled each second; origin max_connections {HOLE_MAX_CONNECTIONS})"
    );
    println!(
        "  connections the origin saw open (max) {max_open:>9}  ({} accepted in all; a closed one counts until its EOF is read here)",
        hole.accepted.load(Ordering::SeqCst)
    );
    println!(
        "  vigil RSS                             before {:.1} MiB, peak {:.1} MiB (first half {:.1}, second half {:.1}), after {:.1}",
        mib(rss_before),
        mib(peak),
        mib(first_half),
        mib(second_half),
        mib(rss_after)
    );
    println!(
        "  bound                                 {:.1} MiB = before + {max_in_flight} in flight x {HOLE_BUDGET_KIB_PER_REQUEST} KiB; measured {per_request:.1} KiB per request in flight",
        mib(bound)
    );
    println!(
        "  vigil descriptors                     before {fds_before}, peak {}, after the clients left {fds_after} (settled in {settle_s:.1} s)",
        series.iter().map(|s| s.2).max().unwrap_or(0)
    );
    println!("  series (s, RSS MiB, fds, in flight, origin connections), every 5 s:");
    let mut line = String::from("   ");
    for s in series.iter().step_by(5) {
        let _ = write!(line, " {:.0}:{:.1}/{}/{}/{}", s.0, mib(s.1), s.2, s.3, s.4);
        if line.len() > 100 {
            println!("{line}");
            line = String::from("   ");
        }
    }
    println!("{line}");
    if max_in_flight < 10_000 {
        failures.push(format!("hold: only {max_in_flight} requests in flight at once"));
    }
    if max_upstream > HOLE_MAX_CONNECTIONS {
        failures
            .push(format!("hold: vigil held {max_upstream} connections to the origin, over max_connections"));
    }
    if peak > bound {
        failures.push(format!(
            "hold: RSS peaked at {:.1} MiB, over the bound {:.1} MiB",
            mib(peak),
            mib(bound)
        ));
    }
    if second_half > first_half + first_half / 10 + 16 * 1024 {
        failures.push(format!(
            "hold: RSS still growing: first half's peak {:.1} MiB, second half's {:.1} MiB",
            mib(first_half),
            mib(second_half)
        ));
    }
    // Queue timeouts and origin timeouts, nothing else: no request lost,
    // no stream or connection refused.
    let other: Vec<(&String, &u64)> = statuses.iter().filter(|(k, _)| *k != "503" && *k != "504").collect();
    if !other.is_empty() {
        failures.push(format!("hold: answers other than 503 and 504: {other:?}"));
    }
    if !settled {
        failures.push(format!(
            "hold: 20 s after the clients left, the origin still had {} connections and vigil {fds_after} descriptors (before: {fds_before})",
            hole.open.load(Ordering::SeqCst)
        ));
    }
    failures
}
