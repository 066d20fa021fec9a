//! Scale harness for the L7 checker: many servers checked at a high rate
//! against a fast local origin, reporting checks/s sustained, timeouts, CPU
//! per 1 000 checks/s and memory per tracked server.
//!
//! Run: `cargo run --release -p vigil-benches --bin check-scale -- [--servers N] [--interval-ms I] [--timeout-ms T] [--max-in-flight M] [--servers-per-origin K] [--seconds S]`
//! (defaults: 9 000 servers, every 900 ms = 10 000 checks/s, timeout half the interval, 20 s measured).
//!
//! Every server is its own `ip:port` (127.1.x.y on one port), so each is
//! its own pooled session: N servers need N client sockets here and N in the
//! origin, which runs as a second process (`--origin`) so each stays under
//! the descriptor limit. The origin listens on 0.0.0.0 bound to the `lo`
//! device: it takes connections to any 127.x.y.z and nothing from outside.
//! It stops by itself when the harness ends (it exits when its stdin closes).
//! Both processes raise their soft descriptor limit to the hard one; a
//! `--servers` count the limit cannot hold is refused up front.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_benches::arg;
use vigil_hostdb::{HostDb, HostDbConfig, OriginKey, OriginSpec, ServerSource};
use vigil_l7check::{Checker, CheckerOptions, HealthChecks, PoolProbe};
use vigil_session::{NoopObserver, Pool, PoolConfig};

const PORT: u16 = 18_181;

fn main() {
    if std::env::args().any(|a| a == "--origin") {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(origin());
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(harness());
}

/// The fast origin: `200 OK` with a 2-byte body to every request.
async fn origin() {
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
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"OK"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn server_addr(i: usize) -> SocketAddr {
    let i = i + 1;
    SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], PORT))
}

/// (user + system CPU seconds, resident bytes) of this process.
fn usage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0; // utime, stime in clock ticks (100/s)
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss_kb * 1024)
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

async fn harness() {
    let servers = arg("--servers", 9_000) as usize;
    // One client socket per server here, one accepted socket per server in
    // the origin process (which raises its own limit too), plus slack.
    let limit = raise_fd_limit();
    if servers as u64 + 200 > limit {
        eprintln!(
            "check-scale: {servers} servers need about {} descriptors in each process; the limit here is {limit} \
             (the hard limit: raising it needs CAP_SYS_RESOURCE). Use --servers {} or fewer.",
            servers + 200,
            limit.saturating_sub(200)
        );
        std::process::exit(2);
    }
    let interval_ms = arg("--interval-ms", 900);
    let seconds = arg("--seconds", 20);
    let per_origin = arg("--servers-per-origin", 10).max(1) as usize;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("--origin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await.unwrap();
    assert_eq!(line.trim(), "ready", "origin did not start");

    let (_, rss_before) = usage();
    let timeout_ms = arg("--timeout-ms", (interval_ms / 2).clamp(10, 1000));
    let file = format!(
        "[defaults]\ninterval = \"{interval_ms}ms\"\nunhealthy_interval = \"{interval_ms}ms\"\ntimeout = \"{timeout_ms}ms\"\njitter = \"10%\"\nidle_after = \"1h\"\n[[check]]\norigin = \"*.scale.test\"\npath = \"/healthz\"\n"
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
    let pool = Pool::new(PoolConfig { max_idle_per_server: 4, ..Default::default() }, Arc::new(NoopObserver));
    let max_in_flight = arg("--max-in-flight", CheckerOptions::default().max_in_flight as u64) as usize;
    let options = CheckerOptions { max_in_flight };
    let checker = Checker::new(db.clone(), Arc::new(PoolProbe::new(pool.clone())), hc, options);
    let failures: Arc<parking_lot::Mutex<HashMap<String, u64>>> = Arc::default();
    let f = Arc::clone(&failures);
    checker.on_result(Arc::new(move |_, _, _, r| {
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
    let (cpu0, rss_warm) = usage();
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
    let (cpu1, _) = usage();
    let (p1, f1) = (checker.metrics().passed(), checker.metrics().failed());
    let checks = (p1 + f1 - p0 - f0) as f64;
    let rate = checks / elapsed;
    let cores = (cpu1 - cpu0) / elapsed;
    println!(
        "check-scale: {servers} servers, interval {interval_ms} ms (+-10%), timeout {timeout_ms} ms, max_in_flight {max_in_flight}, {seconds} s measured"
    );
    println!(
        "  checks/s sustained        {rate:>10.0}  (target {:.0})",
        servers as f64 * 1000.0 / interval_ms as f64
    );
    println!("  failed in window          {:>10}  {:?}", f1 - f0, failures.lock());
    println!(
        "  CPU (checker process)     {cores:>10.3} cores = {:.3} cores per 1 000 checks/s",
        cores / (rate / 1000.0)
    );
    println!(
        "  memory per tracked server {:>10.0} bytes (RSS {:.1} MiB -> {:.1} MiB, sessions included)",
        (rss_warm.saturating_sub(rss_before)) as f64 / servers as f64,
        rss_before as f64 / 1048576.0,
        rss_warm as f64 / 1048576.0
    );
    let open: u32 =
        (0..servers).map(|i| pool.counts(server_addr(i)).idle + pool.counts(server_addr(i)).in_use).sum();
    println!(
        "  pooled sessions           {open:>10}  connects {} reused {}",
        pool.metrics().connects_ok(),
        pool.metrics().reused()
    );
    drop(child.stdin.take());
    let _ = child.kill().await;
}
