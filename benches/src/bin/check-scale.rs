//! Scale harness for the L7 checker: many servers checked at a high rate
//! against a fast local origin, reporting checks/s sustained, timeouts, CPU
//! per 1 000 checks/s and memory per tracked server, for one kind of check.
//!
//! Run: `cargo run --release -p vigil-benches --bin check-scale -- [--kind http|grpc|tcp] [--servers N] [--interval-ms I] [--timeout-ms T] [--max-in-flight M] [--servers-per-origin K] [--seconds S]`
//! (defaults: `--kind http`, 9 000 servers, every 900 ms = 10 000 checks/s, timeout half the interval, 20 s measured).
//!
//! The kinds, each against an origin that speaks it:
//! - `http`: `GET /healthz` over pooled HTTP/1.1 sessions; the origin
//!   answers `200 OK`.
//! - `grpc`: `grpc.health.v1.Health/Check` over pooled h2 sessions (the
//!   origins' upstream set to plain h2, as `protocol = "h2c"` does in the
//!   proxy); the origin serves h2c with prior knowledge and answers
//!   `SERVING` with `grpc-status: 0` in the trailers.
//! - `tcp`: `send "PING\r\n"`, `expect "+PONG"`; the origin speaks that line
//!   protocol. A TCP check opens a connection of its own every time and
//!   closes it (a line protocol is no HTTP session to share): the connect,
//!   the handshake and the close are part of what it costs, and each check
//!   leaves a socket in TIME_WAIT on the checker's side.
//!
//! Every server is its own `ip:port` (127.1.x.y on one port), so each is
//! its own pooled session (HTTP/1.1 or h2: one connection per server
//! either way): N servers need N client sockets here and N in the
//! origin, which runs as a second process (`--origin --kind K`) so each stays under
//! the descriptor limit. The origin listens on 0.0.0.0 bound to the `lo`
//! device: it takes connections to any 127.x.y.z and nothing from outside.
//! It stops by itself when the harness ends (it exits when its stdin closes).
//! Both processes raise their soft descriptor limit to the hard one; a
//! `--servers` count the limit cannot hold is refused up front (`tcp`
//! holds no sessions: it needs only as many descriptors as checks in flight).
//!
//! Besides the figures above it prints check latency (p50, p99, max), the
//! origin process's CPU, and the machine's: its softirq time (on loopback
//! the kernel's TCP work of both ends, mostly charged to the two processes
//! as system time) and the user time of other programs, which should be
//! near 0: more than a few hundredths of a core means something else ran
//! and the run is noisy (a 2-core machine has little to spare). Memory is
//! the checker's RSS growth over the servers, after warm-up and again at
//! the end: it keeps growing, more and more slowly, for minutes (glibc's
//! malloc here, not the proxy's mimalloc), so a longer `--seconds` gives
//! a higher figure at the end.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use vigil_benches::{arg, arg_str};
use vigil_hostdb::{HostDb, HostDbConfig, OriginKey, OriginSpec, ServerSource};
use vigil_l7check::{Checker, CheckerOptions, HealthChecks, OriginUpstream, PoolProbe};
use vigil_session::{IdleLimit, NoopObserver, Pool, PoolConfig, Protocol, Upstream};

const PORT: u16 = 18_181;

/// The kind of check measured (`--kind`), and what the origin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Grpc,
    Tcp,
}

impl Kind {
    fn from_args() -> Self {
        match arg_str("--kind", "http").as_str() {
            "http" => Self::Http,
            "grpc" => Self::Grpc,
            "tcp" => Self::Tcp,
            other => {
                eprintln!("check-scale: --kind {other:?}: expected http, grpc or tcp");
                std::process::exit(2);
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Tcp => "tcp",
        }
    }

    /// The `[[check]]` keys after `origin`, in the health-check file's syntax.
    fn check_keys(self) -> &'static str {
        match self {
            Self::Http => "path = \"/healthz\"\n",
            Self::Grpc => "kind = \"grpc\"\n",
            Self::Tcp => "kind = \"tcp\"\nsteps = [{ send = \"PING\\r\\n\" }, { expect = \"+PONG\" }]\n",
        }
    }

    /// Whether its checks ride pooled sessions (one per server, kept open).
    fn pooled(self) -> bool {
        self != Self::Tcp
    }
}

fn main() {
    let kind = Kind::from_args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    if std::env::args().any(|a| a == "--origin") {
        rt.block_on(origin(kind));
    } else {
        rt.block_on(harness(kind));
    }
}

/// The fast origin, speaking `kind`: `200 OK` with a 2-byte body to every
/// HTTP/1.1 request; `SERVING` to every gRPC health check over h2c; `+PONG`
/// to every `PING` line.
async fn origin(kind: Kind) {
    raise_fd_limit();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_reuseaddr(true).unwrap();
    sock.bind_device(Some(b"lo")).expect("SO_BINDTODEVICE lo");
    sock.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT))).unwrap();
    let listener = sock.listen(4096).unwrap();
    println!("ready");
    // Exit when the harness closes our stdin (or dies).
    tokio::spawn(async {
        let mut buf = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut tokio::io::stdin(), &mut buf).await;
        std::process::exit(0);
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            match kind {
                Kind::Http => {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"OK"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                }
                Kind::Grpc => {
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper::service::service_fn(grpc),
                        )
                        .await;
                }
                Kind::Tcp => pong(stream).await,
            }
        });
    }
}

/// `grpc.health.v1.Health/Check`: `HealthCheckResponse { status: SERVING }`
/// in gRPC's framing, then `grpc-status: 0` in the trailers; any other
/// path: `UNIMPLEMENTED` (12), no message.
async fn grpc(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<
    hyper::Response<impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible>>,
    hyper::Error,
> {
    let known = req.uri().path() == "/grpc.health.v1.Health/Check";
    // Read the request (its 5-byte frame, or the frame and a service name).
    req.into_body().collect().await?;
    // 0: not compressed; 2: the message's length; 0x08 0x01: field 1 = 1 (SERVING).
    const SERVING: &[u8] = &[0, 0, 0, 0, 2, 0x08, 0x01];
    let (message, status) = if known { (SERVING, "0") } else { (&[][..], "12") };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let body = Full::new(Bytes::from_static(message)).with_trailers(async move { Some(Ok(trailers)) });
    Ok(hyper::Response::builder().header(http::header::CONTENT_TYPE, "application/grpc").body(body).unwrap())
}

/// The line protocol: `+PONG` to each `PING`, an error to any other line,
/// until the checker closes.
async fn pong(stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut stream = tokio::io::BufReader::new(stream);
    let mut line = Vec::with_capacity(64);
    loop {
        line.clear();
        match stream.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply: &[u8] = if line == b"PING\r\n" { b"+PONG\r\n" } else { b"-ERR unknown command\r\n" };
        if stream.get_mut().write_all(reply).await.is_err() {
            return;
        }
    }
}

fn server_addr(i: usize) -> SocketAddr {
    let i = i + 1;
    SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], PORT))
}

/// CPU seconds and resident bytes of a process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    user: f64,
    /// Includes the softirq ticks that hit while it ran: on loopback,
    /// much of both ends' TCP work.
    system: f64,
    rss: u64,
}

/// What process `pid` ("self": this one) has used so far.
fn usage(pid: &str) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime in clock ticks (100/s)
    let (user, system) = (ticks(11) / 100.0, ticks(12) / 100.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Usage { user, system, rss: rss_kb * 1024 }
}

/// Clock ticks of the whole machine, all cores, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
struct Machine {
    /// user + nice.
    user: u64,
    softirq: u64,
    /// Everything but idle and iowait.
    busy: u64,
    total: u64,
}

fn machine() -> Machine {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let total: u64 = (0..8).map(at).sum();
    Machine { user: at(0) + at(1), softirq: at(6), busy: total - at(3) - at(4), total }
}

/// Check latencies (probe start to result), in buckets of about 12 %:
/// exact below 16 us, then 8 buckets per power of two.
struct Latencies([AtomicU64; 16 + 8 * 36]);

impl Latencies {
    fn new() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn record(&self, latency: Duration) {
        let us = latency.as_micros().min(u64::MAX as u128) as u64;
        let i = if us < 16 {
            us as usize
        } else {
            let e = 63 - us.leading_zeros() as usize; // 4 and up
            16 + (e - 4) * 8 + ((us >> (e - 3)) & 7) as usize
        };
        self.0[i.min(self.0.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }

    fn clear(&self) {
        self.0.iter().for_each(|b| b.store(0, Ordering::Relaxed));
    }

    /// The upper bound of bucket `i`, in microseconds.
    fn bound(i: usize) -> u64 {
        if i < 16 {
            return i as u64 + 1;
        }
        let (e, sub) = ((i - 16) / 8 + 4, ((i - 16) % 8) as u64);
        (8 + sub + 1) << (e - 3)
    }

    /// The latency at quantile `q` (the bound of its bucket), in ms.
    fn quantile_ms(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self.0.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let want = (counts.iter().sum::<u64>() as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return Self::bound(i) as f64 / 1000.0;
            }
        }
        0.0
    }
}

/// Raises the soft descriptor limit to the hard one; returns it.
fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("check-scale: cannot read the descriptor limit: {e}");
            0
        }
    }
}

async fn harness(kind: Kind) {
    let servers = arg("--servers", 9_000) as usize;
    let max_in_flight = arg("--max-in-flight", CheckerOptions::default().max_in_flight as u64) as usize;
    // Pooled kinds: one client socket per server here, one accepted socket
    // per server in the origin process (which raises its own limit too),
    // plus slack. TCP: one socket per check in flight.
    let limit = raise_fd_limit();
    let sockets = if kind.pooled() { servers } else { servers.min(max_in_flight) };
    if sockets as u64 + 200 > limit {
        eprintln!(
            "check-scale: {servers} servers need about {} descriptors in each process; the limit here is {limit} \
             (the hard limit: raising it needs CAP_SYS_RESOURCE). Use --servers {} or fewer.",
            sockets + 200,
            limit.saturating_sub(200)
        );
        std::process::exit(2);
    }
    let interval_ms = arg("--interval-ms", 900);
    let seconds = arg("--seconds", 20);
    let per_origin = arg("--servers-per-origin", 10).max(1) as usize;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--origin", "--kind", kind.name()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let child_pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).await.unwrap();
    assert_eq!(line.trim(), "ready", "origin did not start");

    let latencies = Arc::new(Latencies::new());
    let rss_before = usage("self").rss;
    let timeout_ms = arg("--timeout-ms", (interval_ms / 2).clamp(10, 1000));
    let file = format!(
        "[defaults]\ninterval = \"{interval_ms}ms\"\nunhealthy_interval = \"{interval_ms}ms\"\ntimeout = \"{timeout_ms}ms\"\njitter = \"10%\"\nidle_after = \"1h\"\n[[check]]\norigin = \"*.scale.test\"\n{}",
        kind.check_keys()
    );
    let hc = HealthChecks::parse(&file, "check-scale").unwrap();
    let db = HostDb::new();
    let origins: Vec<OriginSpec> = (0..servers.div_ceil(per_origin))
        .map(|o| {
            let key: OriginKey = format!("o{o}.scale.test:{PORT}").parse().unwrap();
            let addrs = (o * per_origin..((o + 1) * per_origin).min(servers)).map(server_addr).collect();
            OriginSpec {
                check: hc.matching(&key).map(|c| c.settings.policy),
                policy: Default::default(),
                key,
                servers: ServerSource::Static(addrs),
                lb: Default::default(),
            }
        })
        .collect();
    db.apply(&HostDbConfig { origins, ..Default::default() }).unwrap();
    let pool = Pool::new(
        PoolConfig { max_idle_per_server: IdleLimit::Fixed(4), ..Default::default() },
        Arc::new(NoopObserver),
    );
    let options = CheckerOptions { max_in_flight };
    let checker = Checker::new(db.clone(), Arc::new(PoolProbe::new(pool.clone())), hc, options);
    if kind == Kind::Grpc {
        // gRPC rides h2: the origins' servers are reached over plain h2
        // (what `protocol = "h2c"` on an origin sets up in the proxy).
        let h2 = OriginUpstream { upstream: Upstream::plain(Protocol::H2), https: false };
        checker.set_upstreams(db.origins().iter().map(|o| (o.key().clone(), h2)).collect());
    }
    let failures: Arc<parking_lot::Mutex<HashMap<String, u64>>> = Arc::default();
    let (f, l) = (Arc::clone(&failures), Arc::clone(&latencies));
    checker.on_result(Arc::new(move |_, _, _, r| {
        l.record(r.latency);
        if !r.passed {
            *f.lock().entry(r.detail.to_string()).or_default() += 1;
        }
    }));
    let now = tokio::time::Instant::now().into_std();
    for o in db.origins() {
        checker.touch(&o, now);
    }

    // Warm up: every server checked at least once, sessions open.
    let warm = Duration::from_millis(interval_ms * 3);
    tokio::time::sleep(warm).await;
    let (me0, origin0) = (usage("self"), usage(&child_pid));
    let rss_warm = me0.rss;
    failures.lock().clear();
    latencies.clear();
    let machine0 = machine();
    let (p0, f0) = (checker.metrics().passed(), checker.metrics().failed());
    let t0 = Instant::now();
    // Keep every origin touched (lazy checks stop after idle_after without traffic).
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tokio::time::Instant::now().into_std();
        for o in db.origins() {
            checker.touch(&o, now);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (me1, origin1, machine1) = (usage("self"), usage(&child_pid), machine());
    let rss_end = me1.rss;
    let (p1, f1) = (checker.metrics().passed(), checker.metrics().failed());
    let checks = (p1 + f1 - p0 - f0) as f64;
    let rate = checks / elapsed;
    let (user, system) = ((me1.user - me0.user) / elapsed, (me1.system - me0.system) / elapsed);
    let cores = user + system;
    let origin_user = (origin1.user - origin0.user) / elapsed;
    let origin_cores = origin_user + (origin1.system - origin0.system) / elapsed;
    // Machine ticks as cores: the share of all ticks, times the cores.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ticks = (machine1.total - machine0.total).max(1) as f64 / cpus as f64;
    let machine_cores = (machine1.busy - machine0.busy) as f64 / ticks;
    let softirq_cores = (machine1.softirq - machine0.softirq) as f64 / ticks;
    let others_user = ((machine1.user - machine0.user) as f64 / ticks - user - origin_user).max(0.0);
    let failures = std::mem::take(&mut *failures.lock());
    let timeouts: u64 = failures.iter().filter(|(d, _)| d.contains("timeout")).map(|(_, n)| n).sum();
    println!(
        "check-scale: kind {}, {servers} servers, interval {interval_ms} ms (+-10%), timeout {timeout_ms} ms, max_in_flight {max_in_flight}, {seconds} s measured",
        kind.name()
    );
    println!(
        "  checks/s sustained        {rate:>10.0}  (target {:.0})",
        servers as f64 * 1000.0 / interval_ms as f64
    );
    println!("  timeouts in window        {timeouts:>10}");
    println!(
        "  check latency             {:>10.2} ms p50, {:.2} ms p99, {:.2} ms max (probe start to result; the wait for a turn not included)",
        latencies.quantile_ms(0.5),
        latencies.quantile_ms(0.99),
        latencies.quantile_ms(1.0)
    );
    println!("  failed in window          {:>10}  {failures:?}", f1 - f0);
    println!(
        "  CPU (checker process)     {cores:>10.3} cores = {:.3} cores per 1 000 checks/s ({:.0} us per check; user {user:.3}, system {system:.3})",
        cores / (rate / 1000.0),
        cores * 1e6 / rate
    );
    println!("  CPU (origin process)      {origin_cores:>10.3} cores (for scale; not the checker's cost)");
    println!(
        "  machine busy              {machine_cores:>10.3} cores of {cpus} (softirq {softirq_cores:.3}, mostly in the two processes); user time of other programs {others_user:.3} cores (more than a few hundredths: a noisy run)"
    );
    println!(
        "  memory per tracked server {:>10.0} bytes after warm-up, {:.0} at the end (RSS {:.1} MiB -> {:.1} MiB -> {:.1} MiB, {})",
        (rss_warm.saturating_sub(rss_before)) as f64 / servers as f64,
        (rss_end.saturating_sub(rss_before)) as f64 / servers as f64,
        rss_before as f64 / 1048576.0,
        rss_warm as f64 / 1048576.0,
        rss_end as f64 / 1048576.0,
        if kind.pooled() { "sessions included" } else { "no sessions: tcp keeps none" }
    );
    if kind.pooled() {
        let open: u32 =
            (0..servers).map(|i| pool.counts(server_addr(i)).idle + pool.counts(server_addr(i)).in_use).sum();
        println!(
            "  pooled sessions           {open:>10}  connects {} reused {}",
            pool.metrics().connects_ok(),
            pool.metrics().reused()
        );
    } else {
        println!("  pooled sessions           {:>10}  (tcp: a new connection per check, closed after it)", 0);
        let tw = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let tw = tw.split_whitespace().skip_while(|w| *w != "tw").nth(1).unwrap_or("?").to_owned();
        let cap = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets").unwrap_or_default();
        println!(
            "  sockets in TIME_WAIT      {tw:>10}  (the checker closes first; net.ipv4.tcp_max_tw_buckets {})",
            cap.trim()
        );
    }
    drop(child.stdin.take());
    let _ = child.kill().await;
}
