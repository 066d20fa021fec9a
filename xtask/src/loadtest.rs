//! `cargo xtask loadtest`: vigil, nginx and HAProxy side by side, in one run,
//! in front of the same origin, each with one worker thread, loaded by wrk.
//!
//! Layout on the 2-core machine: each proxy pinned alone to CPU 1; wrk and
//! the origin (`load-origin`, one hyper thread) share CPU 0. On this VM
//! CPU 0 then saturates at about the rate a proxy does, so req/s can be the
//! harness's ceiling rather than the proxy's: each round prints the
//! origin's CPU per request too, and `--origin-cpu 1` moves the origin
//! beside the proxy, so that CPU 1 (proxy + origin) is the bottleneck and
//! the proxies' own cost sets req/s. Rounds are
//! interleaved (vigil, nginx, haproxy, vigil, …) so drift in the machine
//! hits all three alike; the best round of each is reported, and every round
//! is printed. Then, for each proxy, `strace -c -f` counts syscalls during
//! a shorter wrk run: syscalls per proxied request. vigil's `/metrics` gives
//! its origin connection reuse. Last, each proxy runs under callgrind for
//! its user-space instructions per request: the figure the machine's noise
//! cannot move (the kernel's share, about 80 % of a proxy's CPU here, is
//! outside it).
//!
//! With `--tls`, everything is HTTPS: wrk to each proxy's TLS listener, and
//! each proxy to a TLS origin (`load-origin --tls`), keep-alive both ways,
//! with the same certificate (made by `openssl req` for the run). vigil also
//! runs a health check every second: the origin counts its full and resumed
//! handshakes, so the run reports full handshakes per health check in
//! steady state. A last round per proxy sends `Connection: close` on every
//! request: the rate of new TLS connections a proxy sustains.
//!
//! Needs wrk and strace (and openssl with `--tls`); nginx and haproxy are
//! measured when installed. Everything listens on 127.0.0.0/8 and stops by
//! itself.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const ORIGIN: &str = "127.0.0.2:18301";
const VIGIL: &str = "127.0.0.1:18311";
const VIGIL_ADMIN: &str = "127.0.0.1:18312";
const NGINX: &str = "127.0.0.1:18321";
const HAPROXY: &str = "127.0.0.1:18331";
/// vigil's TLS listener (`--tls`); nginx and HAProxy take TLS on their own ports.
const VIGIL_TLS: &str = "127.0.0.1:18313";
/// `--access-log`: a second vigil, the same but writing an access log.
const VIGIL_LOG: &str = "127.0.0.1:18314";
const VIGIL_LOG_ADMIN: &str = "127.0.0.1:18315";
const VIGIL_LOG_TLS: &str = "127.0.0.1:18316";
/// `--access-log`: a second nginx, the same but writing a JSON access log
/// with the same fields, buffered (`buffer=256k flush=1s`): the peer's
/// cost of the same work on the same disk.
const NGINX_LOG: &str = "127.0.0.1:18322";

#[derive(Debug, Clone, Copy, Default)]
struct Round {
    rps: f64,
    p99_ms: f64,
    requests: u64,
    /// The proxy's CPU time (user + system) per request, in microseconds.
    cpu_us: f64,
    /// The system (kernel) part of `cpu_us`.
    sys_us: f64,
}

struct Proxy {
    name: &'static str,
    /// Where the load goes.
    addr: &'static str,
    /// `http` or `https`.
    scheme: &'static str,
    child: Child,
}

impl Proxy {
    fn url(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }
}

/// The run's certificates (`--tls`): a CA, and an ECDSA P-256 leaf it
/// signed for `load.test`, `localhost` and 127.0.0.1, used by the origin
/// and by every proxy's listener; every proxy trusts the CA for the origin.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Leaf and key in one file (HAProxy's `crt`).
    both: PathBuf,
    /// Where `load-origin` writes its handshake counts.
    stats: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Result<Self> {
        let f = |name: &str| dir.join(name);
        let openssl = |build: &dyn Fn(&mut Command)| -> Result<()> {
            let mut cmd = Command::new("openssl");
            build(&mut cmd);
            let ok = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().context("openssl")?;
            if !ok.success() {
                bail!("openssl failed making the run's certificates: {cmd:?}");
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(&|c| {
            c.args(["req", "-x509"]).args(ec).args(["-days", "2", "-subj", "/CN=vigil loadtest ca"]);
            c.arg("-keyout").arg(f("ca.key")).arg("-out").arg(f("ca.pem"));
        })?;
        std::fs::write(
            f("leaf.ext"),
            "subjectAltName=DNS:load.test,DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )?;
        openssl(&|c| {
            c.arg("req").args(ec).args(["-subj", "/CN=load.test"]);
            c.arg("-keyout").arg(f("key.pem")).arg("-out").arg(f("leaf.csr"));
        })?;
        openssl(&|c| {
            c.args(["x509", "-req", "-days", "2", "-CAcreateserial"]).arg("-in").arg(f("leaf.csr"));
            c.arg("-CA").arg(f("ca.pem")).arg("-CAkey").arg(f("ca.key"));
            c.arg("-extfile").arg(f("leaf.ext")).arg("-out").arg(f("cert.pem"));
        })?;
        let (cert, key, both) = (f("cert.pem"), f("key.pem"), f("both.pem"));
        std::fs::write(&both, [std::fs::read(&cert)?, std::fs::read(&key)?].concat())?;
        Ok(Self { ca: f("ca.pem"), cert, key, both, stats: f("origin-handshakes.txt") })
    }

    /// The origin's (full, resumed) handshakes so far; it writes them once a second.
    fn handshakes(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        let read = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        (read("full "), read("resumed "))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options: `--rounds N` (default 3), `--seconds S` per round (default 8),
/// `--connections C` (default 50), `--origin-cpu 0|1` (default 0), `--tls`,
/// `--access-log` (a second vigil, `vigil+log`, writing a JSON access log,
/// in the same interleaved rounds: what the log costs), `--idle N
/// [--settle S]` (memory per idle keep-alive connection instead: see
/// [`idle_memory`]).
pub(crate) fn run(args: &[String]) -> Result<()> {
    let opt = |name: &str, default: u64| -> Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .context("missing value")?
                .parse()
                .with_context(|| format!("{name} takes a number")),
            None => Ok(default),
        }
    };
    let (rounds, seconds, conns) = (opt("--rounds", 3)?, opt("--seconds", 8)?, opt("--connections", 50)?);
    let origin_cpu = match opt("--origin-cpu", 0)? {
        0 => "0",
        1 => "1",
        _ => bail!("--origin-cpu takes 0 or 1"),
    };
    let tls_mode = args.iter().any(|a| a == "--tls");
    let with_log = args.iter().any(|a| a == "--access-log");
    for tool in ["wrk", "strace", "taskset"].into_iter().chain(tls_mode.then_some("openssl")) {
        if which(tool).is_none() {
            bail!("{tool} is not installed (apt-get install wrk strace util-linux openssl)");
        }
    }
    crate::cargo(
        &[
            "build",
            "--release",
            "-p",
            "vigil-proxy",
            "-p",
            "vigil-benches",
            "--bin",
            "vigil",
            "--bin",
            "load-origin",
        ],
        &[],
    )?;
    let dir = std::env::temp_dir().join(format!("vigil-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let release = crate::target_dir()?.join("release");
    let certs = if tls_mode { Some(Certs::make(&dir)?) } else { None };
    let certs = certs.as_ref();

    let mut origin = Command::new("taskset");
    origin.args(["-c", origin_cpu]).arg(release.join("load-origin")).arg(ORIGIN);
    if let Some(c) = certs {
        origin.arg("--tls").arg(&c.cert).arg(&c.key).arg(&c.stats);
    }
    let _origin = Proxy { name: "origin", addr: ORIGIN, scheme: "http", child: origin.spawn()? };
    wait_port(ORIGIN)?;

    if let Some(n) = args.iter().position(|a| a == "--idle") {
        let n: usize = args.get(n + 1).and_then(|v| v.parse().ok()).context("--idle takes a number")?;
        let settle = opt("--settle", 60)?;
        return idle_memory(&release, &dir, n, Duration::from_secs(settle));
    }
    let proxies = start_all(&release, &dir, &Wrap::Pinned, certs, with_log)?;
    for p in &proxies {
        wait_port(p.addr)?;
        // Warm up: connections to the origin opened, caches hot.
        wrk(&p.url(), 2, conns, None)?;
    }
    // With --tls: the origin's handshakes during each proxy's rounds, and
    // vigil's checks meanwhile.
    let mut handshakes = vec![(0u64, 0u64); proxies.len()];
    let checks_before = vigil_checks();

    let mut results: Vec<Vec<Round>> = vec![Vec::new(); proxies.len()];
    for round in 0..rounds {
        for (i, p) in proxies.iter().enumerate() {
            let before = cpu_ticks(p.child.id());
            let origin_before = cpu_ticks(_origin.child.id());
            let hs_before = certs.map(settled).unwrap_or_default();
            let mut r = wrk(&p.url(), seconds, conns, None)?;
            if let Some(c) = certs {
                let after = settled(c);
                handshakes[i].0 += after.0 - hs_before.0;
                handshakes[i].1 += after.1 - hs_before.1;
            }
            let per_request = 1e6 / clock_ticks_per_second() / r.requests.max(1) as f64;
            if let (Some(a), Some(b)) = (before, cpu_ticks(p.child.id())) {
                r.cpu_us = (b.0 + b.1 - a.0 - a.1) as f64 * per_request;
                r.sys_us = (b.1 - a.1) as f64 * per_request;
            }
            let origin_us = match (origin_before, cpu_ticks(_origin.child.id())) {
                (Some(a), Some(b)) => (b.0 + b.1 - a.0 - a.1) as f64 * per_request,
                _ => 0.0,
            };
            // How busy CPU 1 was (the proxy, and the origin when it is
            // there): near 100 % means CPU 1 set the rate; well below, CPU 0
            // (wrk, and the origin by default) did.
            let on_cpu1 = r.cpu_us + if origin_cpu == "1" { origin_us } else { 0.0 };
            let busy = on_cpu1 * r.rps / 1e4;
            println!(
                "round {} {:<8} {:>9.0} req/s  p99 {:>6.2} ms  cpu {:>5.1} us/req ({:.1} in the kernel; origin {:.1}), CPU 1 busy {:.0} %",
                round + 1,
                p.name,
                r.rps,
                r.p99_ms,
                r.cpu_us,
                r.sys_us,
                origin_us,
                busy
            );
            results[i].push(r);
        }
    }

    let checks = vigil_checks() - checks_before;
    // A new connection per request: what a proxy's TLS handshakes cost
    // (plain TCP without --tls).
    let mut fresh = Vec::new();
    for p in &proxies {
        let r = wrk(&p.url(), seconds.min(5), conns, Some("Connection: close"))?;
        println!("new connection per request {:<8} {:>9.0} req/s", p.name, r.rps);
        fresh.push(r.rps);
    }
    let mut syscalls = Vec::new();
    for p in &proxies {
        syscalls.push(syscalls_per_request(p, &dir, conns)?);
    }
    let reuse = vigil_reuse()?;
    let names: Vec<&str> = proxies.iter().map(|p| p.name).collect();
    drop(proxies);

    // User-space instructions per request: what wall clock cannot give on
    // a shared machine. Each proxy again, now under callgrind.
    let mut instructions = Vec::new();
    if which("valgrind").is_some() && which("callgrind_control").is_some() {
        let wrap = Wrap::Callgrind(dir.clone());
        for name in &names {
            let p = start(name, &release, &dir, &wrap, certs)?.context("proxy vanished")?;
            instructions.push(Some(instructions_per_request(&p, &dir)?));
        }
    } else {
        println!("valgrind not installed: no instruction counts");
        instructions.resize(names.len(), None);
    }

    let best: Vec<Round> = results
        .iter()
        .map(|rs| rs.iter().copied().fold(Round::default(), |a, b| if b.rps > a.rps { b } else { a }))
        .collect();
    // CPU per request: the round that spent the least (noise only adds to
    // it), and the kernel's part of that same round.
    let leanest: Vec<Round> = results
        .iter()
        .map(|rs| {
            rs.iter()
                .copied()
                .filter(|r| r.cpu_us > 0.0)
                .min_by(|a, b| a.cpu_us.total_cmp(&b.cpu_us))
                .unwrap_or_default()
        })
        .collect();
    // The median round too: one lucky or unlucky round moves the best.
    let median: Vec<f64> = results
        .iter()
        .map(|rs| {
            let mut v: Vec<f64> = rs.iter().map(|r| r.rps).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nloadtest{}: wrk -t1 -c{conns} -d{seconds}s, {rounds} interleaved rounds, best round shown; each proxy 1 worker on CPU 1, the origin on CPU {origin_cpu}",
        if tls_mode { " --tls (HTTPS client to proxy and proxy to origin, keep-alive)" } else { "" }
    );
    let _ = writeln!(
        out,
        "{:<8} {:>10} {:>9} {:>10} {:>10} {:>10} {:>11} {:>8} {:>13} {:>14} {:>12}",
        "proxy",
        "req/s",
        "p99 ms",
        "vigil/this",
        "median",
        "vigil/this",
        "cpu us/req",
        "kernel",
        "syscalls/req",
        "user instr/req",
        "new conn/s"
    );
    for (i, name) in names.iter().enumerate() {
        let ratio =
            |ours: f64, theirs: f64| if i == 0 { "-".to_owned() } else { format!("{:.2}", ours / theirs) };
        let instr = instructions[i].map_or_else(|| "-".to_owned(), |n: u64| n.to_string());
        let _ = writeln!(
            out,
            "{:<8} {:>10.0} {:>9.2} {:>10} {:>10.0} {:>10} {:>11.1} {:>8.1} {:>13.2} {:>14} {:>12.0}",
            name,
            best[i].rps,
            best[i].p99_ms,
            ratio(best[0].rps, best[i].rps),
            median[i],
            ratio(median[0], median[i]),
            leanest[i].cpu_us,
            leanest[i].sys_us,
            syscalls[i],
            instr,
            fresh[i]
        );
    }
    let _ = writeln!(
        out,
        "vigil origin connection reuse: {:.3} % of upstream requests on an existing session",
        reuse
    );
    if tls_mode {
        for (i, name) in names.iter().enumerate() {
            let (full, resumed) = handshakes[i];
            let _ = writeln!(
                out,
                "origin TLS handshakes during {name}'s rounds: {full} full, {resumed} resumed ({:.4} per 1 000 requests)",
                (full + resumed) as f64 * 1000.0
                    / results[i].iter().map(|r| r.requests).sum::<u64>().max(1) as f64
            );
        }
        let vigil_full = names.iter().position(|n| *n == "vigil").map_or(0, |i| handshakes[i].0);
        let _ = writeln!(
            out,
            "vigil health checks during the rounds: {checks} (every 1 s, over the pooled TLS sessions); full handshakes per check: {:.3}",
            vigil_full as f64 / checks.max(1) as f64
        );
    }
    // What each access log costs its proxy: throughput against the same
    // proxy without it, and CPU per request (the leanest rounds), which
    // does not depend on the load generator keeping up.
    for (with, without, file) in
        [("vigil+log", "vigil", "access.log"), ("nginx+log", "nginx", "nginx-access.log")]
    {
        let (Some(i), Some(j)) =
            (names.iter().position(|n| *n == with), names.iter().position(|n| *n == without))
        else {
            continue;
        };
        let lines = std::fs::read_to_string(dir.join(file)).map_or(0, |t| t.lines().count());
        let _ = writeln!(
            out,
            "{without} with its access log: {:.1} % of its best round, {:.1} % of its median; CPU per request +{:.2} us \
             (+{:.1} %: user +{:.2}, kernel +{:.2}); {lines} lines written",
            best[i].rps * 100.0 / best[j].rps.max(1.0),
            median[i] * 100.0 / median[j].max(1.0),
            leanest[i].cpu_us - leanest[j].cpu_us,
            (leanest[i].cpu_us / leanest[j].cpu_us.max(f64::MIN_POSITIVE) - 1.0) * 100.0,
            (leanest[i].cpu_us - leanest[i].sys_us) - (leanest[j].cpu_us - leanest[j].sys_us),
            leanest[i].sys_us - leanest[j].sys_us,
        );
    }
    print!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `--idle N`: each proxy's memory per idle keep-alive client connection.
/// N connections each carry one GET and then wait; the proxy's resident
/// memory before and with them gives bytes per connection. Then they close,
/// and `settle` later vigil's memory is read again: whether what the burst
/// took went back. (nginx and HAProxy too, for comparison.)
fn idle_memory(release: &Path, dir: &Path, n: usize, settle: Duration) -> Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    // This process holds N client sockets: its soft open-file limit goes
    // up to the hard one (the proxies it starts inherit it; vigil's
    // default `max_connections` is half of it).
    let hard: usize = std::fs::read_to_string("/proc/self/limits")?
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .context("the hard open-file limit, from /proc/self/limits")?;
    if hard < 2 * n + 100 {
        bail!("--idle {n} needs an open-file limit of {} (the hard limit is {hard})", 2 * n + 100);
    }
    let ok = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .context("prlimit (util-linux)")?;
    if !ok.success() {
        bail!("cannot raise the open-file limit to {hard}");
    }
    let proxies = start_all(release, dir, &Wrap::Pinned, None, false)?;
    let rss_kib = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    println!("{n} idle keep-alive connections, one GET each:");
    let mut settled = Vec::new();
    for p in &proxies {
        wait_port(p.addr)?;
        wrk(&p.url(), 1, 10, None)?; // warm: the origin pool, the runtime
        let pid = p.child.id();
        let before = rss_kib(pid);
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = std::net::TcpStream::connect(p.addr)?;
            c.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut r = BufReader::new(c.try_clone()?);
            let (mut line, mut length) = (String::new(), 0usize);
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    bail!("{} closed a connection mid-answer", p.name);
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse()?;
                }
            }
            r.read_exact(&mut vec![0; length])?;
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(1));
        let held = rss_kib(pid);
        drop(conns);
        println!(
            "  {:<8} {:>7} KiB before, {:>7} KiB with them: {:>6.0} bytes per connection",
            p.name,
            before,
            held,
            held.saturating_sub(before) as f64 * 1024.0 / n as f64
        );
        settled.push((p, before, held));
    }
    println!("after they closed, {settle:?} later:");
    std::thread::sleep(settle);
    for (p, before, held) in settled {
        let now = rss_kib(p.child.id());
        println!(
            "  {:<8} {:>7} KiB ({:+.1} % of before; {:.0} % of what the connections took went back)",
            p.name,
            now,
            (now as f64 / before.max(1) as f64 - 1.0) * 100.0,
            held.saturating_sub(now) as f64 * 100.0 / held.saturating_sub(before).max(1) as f64
        );
    }
    Ok(())
}

/// User and system CPU ticks of `pid` so far (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces: count from after its ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// `getconf CLK_TCK`, 100 where it cannot be asked.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

fn wait_port(addr: &str) -> Result<()> {
    wait_port_for(addr, Duration::from_secs(10))
}

fn wait_port_for(addr: &str, within: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < within {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr} after {within:?}")
}

fn start_vigil(release: &Path, dir: &Path, wrap: &Wrap, certs: Option<&Certs>, log: bool) -> Result<Proxy> {
    let host = VIGIL.split(':').next().unwrap_or("127.0.0.1");
    let (listen, admin, listen_tls, name) = if log {
        (VIGIL_LOG, VIGIL_LOG_ADMIN, VIGIL_LOG_TLS, "vigil+log")
    } else {
        (VIGIL, VIGIL_ADMIN, VIGIL_TLS, "vigil")
    };
    let access_log = if log {
        format!("[access_log]\npath = \"{}\"\nformat = \"json\"\n\n", dir.join("access.log").display())
    } else {
        String::new()
    };
    let config = match certs {
        None => format!(
            "[proxy]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nthreads = 1\n\n{access_log}\
             [[remap]]\nfrom = \"{host}\"\nto = \"http://load.test:18301\"\n\n\
             [origins.\"load.test:18301\"]\nservers = [\"{ORIGIN}\"]\n"
        ),
        Some(c) => format!(
            "[proxy]\nlisten = \"{listen}\"\nlisten_tls = \"{listen_tls}\"\nadmin = \"{admin}\"\nthreads = 1\n\n{access_log}\
             [[tls]]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
             [[remap]]\nfrom = \"{host}\"\nto = \"https://load.test:18301\"\n\n\
             [origins.\"load.test:18301\"]\nservers = [\"{ORIGIN}\"]\nprotocol = \"http1\"\nca_file = \"{ca}\"\n",
            cert = c.cert.display(),
            key = c.key.display(),
            ca = c.ca.display()
        ),
    };
    let config_file = dir.join(format!("{name}.toml"));
    std::fs::write(&config_file, config)?;
    // With TLS, a check every second: its handshakes are counted at the origin.
    let checks = if certs.is_some() {
        "[defaults]\ninterval = \"1s\"\nunhealthy_interval = \"1s\"\ntimeout = \"500ms\"\n\n\
         [[check]]\norigin = \"load.test\"\npath = \"/healthz\"\n"
    } else {
        ""
    };
    std::fs::write(dir.join("healthchecks.toml"), checks)?;
    let child = wrap
        .command(name)
        .arg(release.join("vigil"))
        .arg("--config")
        .arg(&config_file)
        .env("VIGIL_LOG", "warn")
        .spawn()?;
    let (addr, scheme) = if certs.is_some() { (listen_tls, "https") } else { (listen, "http") };
    Ok(Proxy { name, addr, scheme, child })
}

fn start_nginx(nginx: &Path, dir: &Path, wrap: &Wrap, certs: Option<&Certs>, log: bool) -> Result<Proxy> {
    let d = dir.display();
    let (name, addr, conf) =
        if log { ("nginx+log", NGINX_LOG, "nginx-log") } else { ("nginx", NGINX, "nginx") };
    let access_log = if log {
        // The fields of vigil's JSON line, escaped as JSON.
        format!(
            "log_format json escape=json '{{\"time\":\"$time_iso8601\",\"client\":\"$remote_addr\",\
             \"method\":\"$request_method\",\"host\":\"$host\",\"path\":\"$request_uri\",\
             \"protocol\":\"$server_protocol\",\"status\":$status,\"bytes\":$body_bytes_sent,\
             \"duration_ms\":$request_time,\"upstream\":\"$upstream_addr\",\
             \"upstream_duration_ms\":\"$upstream_response_time\",\"request_id\":\"$request_id\",\
             \"user_agent\":\"$http_user_agent\",\"referer\":\"$http_referer\"}}';\n  \
             access_log {d}/nginx-access.log json buffer=256k flush=1s;"
        )
    } else {
        "access_log off;".to_owned()
    };
    let (listen, to) = match certs {
        None => (format!("listen {addr};"), "proxy_pass http://origin;".to_owned()),
        Some(c) => (
            format!(
                "listen {addr} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_session_cache shared:tls:10m;",
                cert = c.cert.display(),
                key = c.key.display()
            ),
            format!(
                "proxy_pass https://origin; proxy_ssl_session_reuse on; proxy_ssl_server_name on; proxy_ssl_name load.test;\n      \
                 proxy_ssl_verify on; proxy_ssl_trusted_certificate {ca};",
                ca = c.ca.display()
            ),
        ),
    };
    std::fs::write(
        dir.join(format!("{conf}.conf")),
        format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\nerror_log {d}/{conf}.err warn;\npid {d}/{conf}.pid;\n\
             events {{ worker_connections 20000; }}\n\
             http {{\n  {access_log}\n  client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;\n\
               uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n\
               upstream origin {{ server {ORIGIN}; keepalive 64; keepalive_requests 1000000; }}\n\
               server {{\n    {listen}\n    keepalive_requests 1000000;\n\
                 location / {{ {to} proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
        ),
    )?;
    let child = wrap
        .command(name)
        .arg(nginx)
        .arg("-c")
        .arg(dir.join(format!("{conf}.conf")))
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proxy { name, addr, scheme: if certs.is_some() { "https" } else { "http" }, child })
}

fn start_haproxy(haproxy: &Path, dir: &Path, wrap: &Wrap, certs: Option<&Certs>) -> Result<Proxy> {
    let (bind, server) = match certs {
        None => (HAPROXY.to_owned(), ORIGIN.to_owned()),
        Some(c) => (
            format!("{HAPROXY} ssl crt {} alpn http/1.1", c.both.display()),
            format!(
                "{ORIGIN} ssl verify required ca-file {} sni str(load.test) alpn http/1.1",
                c.ca.display()
            ),
        ),
    };
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  nbthread 1\n  maxconn 9000\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n\
             timeout server 30s\n  http-reuse always\n\nfrontend f\n  bind {bind}\n  default_backend b\n\n\
             backend b\n  server s1 {server}\n"
        ),
    )?;
    let child = wrap
        .command("haproxy")
        .arg(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Proxy {
        name: "haproxy",
        addr: HAPROXY,
        scheme: if certs.is_some() { "https" } else { "http" },
        child,
    })
}

/// How a proxy is started: pinned to CPU 1, or under callgrind.
enum Wrap {
    Pinned,
    Callgrind(PathBuf),
}

impl Wrap {
    fn command(&self, name: &str) -> Command {
        match self {
            Self::Pinned => {
                let mut c = Command::new("taskset");
                c.args(["-c", "1"]);
                c
            }
            Self::Callgrind(dir) => {
                let mut c = Command::new("valgrind");
                c.args(["--tool=callgrind", "-q"])
                    .arg(format!("--callgrind-out-file={}", dir.join(format!("cg.{name}")).display()));
                c
            }
        }
    }
}

fn start_all(
    release: &Path,
    dir: &Path,
    wrap: &Wrap,
    certs: Option<&Certs>,
    with_log: bool,
) -> Result<Vec<Proxy>> {
    let mut proxies = Vec::new();
    let logs = if with_log { &["vigil+log", "nginx+log"][..] } else { &[] };
    for name in ["vigil"].into_iter().chain(logs.iter().copied()).chain(["nginx", "haproxy"]) {
        match start(name, release, dir, wrap, certs)? {
            Some(p) => proxies.push(p),
            None => println!("{name} not installed: skipped"),
        }
    }
    Ok(proxies)
}

/// Starts one proxy by name; `None` when it is not installed.
fn start(
    name: &str,
    release: &Path,
    dir: &Path,
    wrap: &Wrap,
    certs: Option<&Certs>,
) -> Result<Option<Proxy>> {
    match name {
        "vigil" => start_vigil(release, dir, wrap, certs, false).map(Some),
        "vigil+log" => start_vigil(release, dir, wrap, certs, true).map(Some),
        "nginx" | "nginx+log" => {
            which("nginx").map(|bin| start_nginx(&bin, dir, wrap, certs, name == "nginx+log")).transpose()
        }
        _ => which("haproxy").map(|bin| start_haproxy(&bin, dir, wrap, certs)).transpose(),
    }
}

/// The origin's handshake counts once they are written out (once a second).
fn settled(c: &Certs) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(1100));
    c.handshakes()
}

/// Under callgrind: warm up 2 s, zero the counters, load 4 s with 10
/// connections, dump; instructions / requests.
fn instructions_per_request(p: &Proxy, dir: &Path) -> Result<u64> {
    wait_port_for(p.addr, Duration::from_secs(60))?;
    wrk(&p.url(), 2, 10, None)?;
    let pid = p.child.id().to_string();
    Command::new("callgrind_control")
        .args(["-z", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let r = wrk(&p.url(), 4, 10, None)?;
    Command::new("callgrind_control")
        .args(["-d", &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    std::thread::sleep(Duration::from_millis(500));
    let prefix = format!("cg.{}.", p.name);
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)) {
            let text = std::fs::read_to_string(&path)?;
            total += text
                .lines()
                .find_map(|l| l.strip_prefix("totals:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let per = total / r.requests.max(1);
    println!("callgrind {:<8} {total:>12} instructions for {:>6} requests", p.name, r.requests);
    Ok(per)
}

/// wrk against `url`; `header`: one more request header (`Connection: close`).
fn wrk(url: &str, seconds: u64, conns: u64, header: Option<&str>) -> Result<Round> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "wrk", "-t1", "--latency"]).arg(format!("-c{conns}")).arg(format!("-d{seconds}s"));
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().context("wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

fn parse_wrk(text: &str) -> Option<Round> {
    let mut r = Round::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = parse_duration_ms(v.trim())?;
        } else if line.contains(" requests in ") {
            r.requests = line.split_whitespace().next()?.parse().ok()?;
        } else if line.starts_with("Non-2xx") || line.starts_with("Socket errors") {
            println!("  wrk: {line}");
        }
    }
    (r.rps > 0.0).then_some(r)
}

fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// `strace -c -f` on the proxy during a 4 s wrk run: syscalls / requests.
fn syscalls_per_request(p: &Proxy, dir: &Path, conns: u64) -> Result<f64> {
    let file = dir.join(format!("strace-{}.txt", p.name));
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-q", "-o"])
        .arg(&file)
        .arg("-p")
        .arg(p.child.id().to_string())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(500));
    let r = wrk(&p.url(), 4, conns, None)?;
    std::thread::sleep(Duration::from_millis(200));
    // SIGINT makes strace detach and write its table.
    Command::new("kill").args(["-INT", &strace.id().to_string()]).status()?;
    strace.wait()?;
    let table = std::fs::read_to_string(&file)?;
    let total = table
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("cannot read strace's table:\n{table}"))?;
    println!("strace {:<8} {:>10.0} syscalls for {:>8} requests", p.name, total, r.requests);
    Ok(total / r.requests.max(1) as f64)
}

/// vigil's `/metrics` text.
fn vigil_metrics() -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(VIGIL_ADMIN)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Health checks vigil has run so far.
fn vigil_checks() -> u64 {
    let text = vigil_metrics().unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("vigil_health_checks_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// From vigil's `/metrics`: reused / (reused + new connections), in percent.
fn vigil_reuse() -> Result<f64> {
    let text = vigil_metrics()?;
    let sum = |prefix: &str, needle: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let reused = sum("vigil_pool_reused_total", "");
    let opened = sum("vigil_upstream_connects_total", "result=\"ok\"");
    Ok(100.0 * reused / (reused + opened).max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 8s test @ http://127.0.0.1:18311/\n  Latency Distribution\n     50%  510.00us\n     99%    1.52ms\n  \
                    400000 requests in 8.00s, 40.00MB read\nRequests/sec:  50000.12\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!((r.requests, r.rps, r.p99_ms), (400_000, 50000.12, 1.52));
        assert_eq!(parse_duration_ms("510.00us"), Some(0.51));
        assert_eq!(parse_duration_ms("1.20s"), Some(1200.0));
    }

    #[test]
    fn reads_cpu_ticks_past_a_command_with_spaces() {
        let stat = "4242 (vigil (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 372 424 0 0 20 0 2 0";
        assert_eq!(parse_stat_ticks(stat), Some((372, 424)));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }
}
