//! `vigil demo`: a self-contained show on loopback. Three origin servers on
//! 127.0.0.2-4, the real proxy in front of them (config files written to a
//! temporary folder, loaded the way `vigil run` loads them), client traffic
//! through it, one server put into maintenance by its own check endpoint, one
//! killed outright, a live status table, and a closing summary.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use vigil_hostdb::Event;
use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, Target};

use crate::{app, server, status};

const HOST: &str = "www.demo.test";
const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const CLIENTS: usize = 8;

pub(crate) fn main(seconds: u64) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil demo: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(show(Duration::from_secs(seconds))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// One demo origin server.
struct DemoOrigin {
    addr: SocketAddr,
    maintenance: Arc<AtomicBool>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl DemoOrigin {
    async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let maintenance = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (m, t) = (Arc::clone(&maintenance), Arc::clone(&tasks));
        tasks.lock().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let m = Arc::clone(&m);
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let down = m.load(Ordering::Relaxed);
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/healthz" if down => (503, "maintenance".to_owned()),
                            "/healthz" => (200, "OK".to_owned()),
                            _ => (200, format!("hello from {addr}\n")),
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("x-served-by", addr.to_string())
                                .body(Full::new(Bytes::from(body)))
                                .unwrap_or_default(),
                        )
                    }
                });
                t.lock().spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, maintenance, tasks })
    }

    /// Hard kill: the listener and every connection close at once.
    fn kill(&self) {
        self.tasks.lock().abort_all();
    }
}

/// Three origins on one port of 127.0.0.2-4.
async fn start_origins() -> Result<Vec<DemoOrigin>, String> {
    for _ in 0..20 {
        let probe =
            std::net::TcpListener::bind((IPS[0], 0)).map_err(|e| format!("cannot bind {}: {e}", IPS[0]))?;
        let port = probe.local_addr().map_err(|e| e.to_string())?.port();
        drop(probe);
        let mut out = Vec::new();
        for ip in IPS {
            match DemoOrigin::start(SocketAddr::new(ip.parse().map_err(|_| "bad ip")?, port)).await {
                Ok(o) => out.push(o),
                Err(_) => break,
            }
        }
        if out.len() == IPS.len() {
            return Ok(out);
        }
        out.iter().for_each(DemoOrigin::kill);
    }
    Err("no port free on 127.0.0.2-4".to_owned())
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    by_server: Mutex<BTreeMap<String, u64>>,
}

async fn show(length: Duration) -> Result<(), String> {
    let origins = start_origins().await?;
    let port = origins[0].addr.port();
    let dir = std::env::temp_dir().join(format!("vigil-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let servers: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    let main = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[l4]\ndown_time = \"5s\"\n\n\
         [[remap]]\nfrom = \"{HOST}\"\nto = \"http://demo.internal:{port}\"\n\n\
         [origins.\"demo.internal:{port}\"]\nservers = [{}]\n",
        servers.join(", ")
    );
    let checks = "[defaults]\ninterval = \"300ms\"\nunhealthy_interval = \"300ms\"\ntimeout = \"200ms\"\n\
                  healthy_threshold = 2\nunhealthy_threshold = 2\n\n\
                  [[check]]\norigin = \"demo.internal\"\npath = \"/healthz\"\nexpect_body = \"OK\"\n";
    let path = dir.join("vigil.toml");
    std::fs::write(&path, main).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("healthchecks.toml"), checks).map_err(|e| e.to_string())?;
    let tls = Arc::new(vigil_session::TlsConnect::new());
    let loaded = app::load(&path, &tls);
    let _ = std::fs::remove_dir_all(&dir);
    let shared = app::Shared::start(loaded?, path, tls).await?;
    let (listen, admin) =
        ("127.0.0.1:0".parse().map_err(|_| "addr")?, "127.0.0.1:0".parse().map_err(|_| "addr")?);
    let srv =
        server::start(Arc::clone(&shared), listen, admin, Vec::new()).await.map_err(|e| e.to_string())?;

    let tty = std::io::stdout().is_terminal();
    println!("vigil demo: proxy on {}, admin API on {}", srv.proxy, srv.admin);
    println!("  dashboard: http://{}/  (open it to watch the maintenance and the kill live)", srv.admin);
    println!("  origin demo.internal:{port} = {} (health check: GET /healthz every 300 ms)", IPS.join(", "));
    println!("  {CLIENTS} clients send GET http://{HOST}/ through the proxy for {} s\n", length.as_secs());

    // HostDB's events, narrated.
    let (events_tx, mut events) = mpsc::unbounded_channel::<String>();
    shared.db.subscribe(Arc::new(move |e: &Event| {
        let line = match e {
            Event::L7 { server, from, to, reason, .. } => {
                format!("{server}: L7 {} -> {} ({reason})", from.as_str(), to.as_str())
            }
            Event::L4 { server, from, to, .. } => {
                format!("{server}: L4 {} -> {}", from.as_str(), to.as_str())
            }
            Event::Maintenance { server, on, .. } => format!("{server}: maintenance {on}"),
            _ => return,
        };
        let _ = events_tx.send(line);
    }));

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(client(pool.clone(), srv.proxy, Arc::clone(&tally), Arc::clone(&stop)));
    }

    let start = tokio::time::Instant::now();
    let at = |fraction: f64| start + length.mul_f64(fraction);
    let mut script: Vec<(tokio::time::Instant, &str)> =
        vec![(at(0.25), "maintenance"), (at(0.5), "kill"), (at(0.75), "back")];
    script.reverse();
    let mut log: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = start + length;
    loop {
        let next_step = script.last().map_or(end, |s| s.0).min(end);
        tokio::select! {
            _ = tick.tick() => {
                let t = start.elapsed().as_secs_f64();
                let table = status::render(&crate::admin::hosts(&shared));
                let head = format!(
                    "t={t:4.1}s  requests ok {}  client errors {}",
                    tally.ok.load(Ordering::Relaxed),
                    tally.errors.load(Ordering::Relaxed)
                );
                if tty {
                    let recent = log.iter().rev().take(8).rev().cloned().collect::<Vec<_>>().join("\n");
                    print!("\x1b[H\x1b[2J{head}\n\n{table}\n{recent}\n");
                } else if (t as u64).is_multiple_of(2) {
                    println!("{head}\n{table}");
                }
            }
            Some(line) = events.recv() => {
                let line = format!("  [{:4.1}s] {line}", start.elapsed().as_secs_f64());
                if !tty {
                    println!("{line}");
                }
                log.push(line);
            }
            _ = tokio::time::sleep_until(next_step) => {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                let Some((_, step)) = script.pop() else { continue };
                let line = match step {
                    "maintenance" => {
                        origins[1].maintenance.store(true, Ordering::Relaxed);
                        format!("{} goes into maintenance: its /healthz answers 503", origins[1].addr)
                    }
                    "kill" => {
                        origins[2].kill();
                        format!("{} is killed: listener and connections closed", origins[2].addr)
                    }
                    _ => {
                        origins[1].maintenance.store(false, Ordering::Relaxed);
                        format!("{} leaves maintenance: /healthz answers 200 again", origins[1].addr)
                    }
                };
                let line = format!("  [{:4.1}s] >>> {line}", start.elapsed().as_secs_f64());
                if !tty {
                    println!("{line}");
                }
                log.push(line);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}

    let ok = tally.ok.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let m = shared.pool.metrics();
    println!("\n{}", status::render(&crate::admin::hosts(&shared)));
    println!("summary after {:.1} s", start.elapsed().as_secs_f64());
    println!("  requests: {}   client errors: {errors}", ok + errors);
    for (server, n) in tally.by_server.lock().iter() {
        println!("  {server:<22} {n:>7} ({:.1} %)", 100.0 * *n as f64 / ok.max(1) as f64);
    }
    println!(
        "  proxy -> origin: {} connections opened, {} sessions reused; {} health checks ({} failed)",
        m.connects_ok(),
        m.reused(),
        shared.checker.metrics().passed() + shared.checker.metrics().failed(),
        shared.checker.metrics().failed()
    );
    if errors == 0 {
        println!("  no client saw an error: maintenance and the kill were absorbed by checks and retries");
    }
    shared.events.close();
    srv.shutdown(Duration::from_secs(2)).await;
    origins.iter().for_each(DemoOrigin::kill);
    Ok(())
}

async fn client(pool: Pool, proxy: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let req = http::Request::get("/")
            .header(http::header::HOST, HOST)
            .body(vigil_session::empty_body())
            .unwrap_or_default();
        match pool.request(Target::http1(proxy), Freshness::IdlePreferred, req).await {
            Ok(resp) if resp.status().is_success() => {
                let server =
                    resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
                let _ = resp.into_body().collect().await;
                tally.ok.fetch_add(1, Ordering::Relaxed);
                *tally.by_server.lock().entry(server).or_default() += 1;
            }
            _ => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
