//! Binary upgrade: `vigil run --upgrade` takes the listening sockets and the
//! server state from the running process over `upgrade_socket`; the old one
//! drains and exits. Under continuous load no request is lost, refused or
//! reset, and the new process routes as the old one did from its first
//! request.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

use crate::harness::*;
use crate::tls::{Pki, client};

const SOCKET: &str = "upgrade_socket = \"upgrade.sock\"";

/// `vigil run --upgrade --config <config>`, its stderr in `<dir>/vigil.log`
/// (a folder of its own; the config is the old process's).
fn start_upgrade(config: &Path, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join("vigil.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--upgrade", "--config"])
        .arg(config)
        .env("VIGIL_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// What the load saw.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Connections the server closed gracefully (`Connection: close`).
    closed_gracefully: AtomicU64,
    errors: parking_lot::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock();
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

/// One `GET /` on `stream`, read to the end of its body: the status and
/// whether the server said `Connection: close`. Any error, an early close
/// or a reset among them, is an `Err` naming it.
async fn get_once(stream: &mut TcpStream) -> Result<(u16, bool), String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").await.map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut head: Option<(usize, u16, usize, bool)> = None;
    loop {
        if let Some((end, status, len, close)) = head
            && buf.len() >= end + len
        {
            return Ok((status, close));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e} after {} bytes", buf.len()))?;
        if n == 0 {
            return Err(format!("closed by the server after {} bytes of the answer", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none()
            && let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let text = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            let status: u16 =
                text.get(9..12).and_then(|s| s.parse().ok()).ok_or(format!("bad head: {text}"))?;
            let field =
                |name: &str| text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()));
            let len: usize = field("content-length:")
                .and_then(|v| v.parse().ok())
                .ok_or(format!("no content-length: {text}"))?;
            let close = field("connection:").is_some_and(|v| v.contains("close"));
            head = Some((at + 4, status, len, close));
        }
    }
}

/// Clients until `stop`: keep-alive ones (a connection kept for as long as
/// the server allows, a new one when it said `Connection: close`) and ones
/// that open a connection for each request. Every outcome is counted.
fn load(
    listen: SocketAddr,
    keep_alive: usize,
    fresh: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..keep_alive + fresh {
        let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
        let keep = i < keep_alive;
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<TcpStream> = None;
            while !stop.load(Ordering::SeqCst) {
                let mut stream = match conn.take() {
                    Some(s) => s,
                    None => match TcpStream::connect(listen).await {
                        Ok(s) => s,
                        Err(e) => {
                            tally.fail(format!("connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    },
                };
                match tokio::time::timeout(Duration::from_secs(10), get_once(&mut stream)).await {
                    Ok(Ok((200, close))) => {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                        if close {
                            tally.closed_gracefully.fetch_add(1, Ordering::SeqCst);
                        } else if keep {
                            conn = Some(stream);
                        }
                    }
                    Ok(Ok((status, _))) => tally.fail(format!("status {status}")),
                    Ok(Err(e)) => {
                        tally.fail(format!("{} connection: {e}", if keep { "keep-alive" } else { "new" }))
                    }
                    Err(_) => tally.fail("no answer within 10 s".to_owned()),
                }
            }
        }));
    }
    tasks
}

async fn maintenance(v: &Vigil, origin: &str, server: SocketAddr) {
    let body = format!("{{\"origin\": \"{origin}\", \"server\": \"{server}\", \"on\": true}}");
    assert_eq!(v.post("/maintenance", None, &body).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_loses_no_request_and_keeps_every_status() {
    let o = origins(&["127.0.0.60", "127.0.0.61", "127.0.0.62", "127.0.0.63"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let rest = remap("app.test", &origin, &server_list(&o), "");
    let mut a = Vigil::start("upgrade-load", SOCKET, &rest, FAST_CHECKS).await;

    // Checks start with traffic; one server fails them, one is taken out
    // by the operator.
    o[2].state.health.store(503, Ordering::SeqCst);
    assert_eq!(a.get("app.test", "/").await.0, StatusCode::OK);
    maintenance(&a, &origin, o[1].addr).await;
    let unhealthy = wait_until(Duration::from_secs(10), || async {
        a.server(o[2].addr).await["l7"]["state"] == "unhealthy"
    })
    .await;
    assert!(unhealthy, "{}", a.server(o[2].addr).await);
    let (in_maintenance, failing) = (o[1].requests(), o[2].requests());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = load(a.listen, 4, 4, &stop, &tally);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tally.ok.load(Ordering::SeqCst);
    assert!(before > 0, "the load runs: {:?}", tally.errors.lock());

    // A slow request in flight at the old process: it finishes there.
    let listen = a.listen;
    let slow = tokio::spawn(async move { get_raw(listen, "app.test", "/slow?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The new process takes over; the old one drains and exits 0.
    let b_dir = test_dir("upgrade-load-new");
    let child = start_upgrade(&a.dir.join("vigil.toml"), &b_dir);
    let mut b = Vigil { child, listen: a.listen, admin: a.admin, dir: b_dir };
    let t0 = tokio::time::Instant::now();
    let code = a.exit_code(Duration::from_secs(40)).await;
    let took = t0.elapsed();
    assert_eq!(code, Some(0), "the old process: {}\n--- new ---\n{}", a.log(), b.log());
    let at_exit = tally.ok.load(Ordering::SeqCst);
    let (status, _, body) = slow.await.unwrap().expect("the request in flight was cut");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(took >= Duration::from_millis(1000), "the old process waited for it: {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert!(b.child.try_wait().unwrap().is_none(), "the new process serves on: {}", b.log());

    let (ok, failed) = (tally.ok.load(Ordering::SeqCst), tally.failed.load(Ordering::SeqCst));
    println!(
        "upgrade under load: {ok} requests answered 200 ({} during the hand-over and drain, {took:?}), \
         {failed} failed, {} connections closed gracefully",
        at_exit - before,
        tally.closed_gracefully.load(Ordering::SeqCst)
    );
    assert_eq!(
        failed,
        0,
        "failures: {:?}\n--- old ---\n{}\n--- new ---\n{}",
        tally.errors.lock(),
        a.log(),
        b.log()
    );
    assert!(ok > at_exit, "requests after the old process exited");

    // The new process answers on the same ports (the admin one included),
    // served part of the load, and never sent a request to the server in
    // maintenance or to the failing one: it knew from its first request.
    let series = format!("vigil_requests_total{{origin=\"{origin}\",code=\"200\"}}");
    let served = b.metric(&series).await;
    assert!(served > 0.0, "the new process served none of the load");
    println!("the new process served {served} of them");
    assert_eq!(o[1].requests(), in_maintenance, "a request reached the server in maintenance");
    assert_eq!(o[2].requests(), failing, "a request reached the server failing its checks");
    assert_eq!(b.server(o[1].addr).await["maintenance"], true);
    let c = b.server(o[2].addr).await;
    assert_eq!(c["l7"]["state"], "unhealthy", "{c}");
    assert!(b.log().contains("server state taken from the old process"), "{}", b.log());
    assert!(a.log().contains("handed over to the new process"), "{}", a.log());
    // The new process is upgradable in turn: it owns the socket now.
    assert!(a.dir.join("upgrade.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let o = origins(&["127.0.0.64"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let rest = remap("app.test", &origin, &server_list(&o), "");
    let mut a = Vigil::start("upgrade-fail", SOCKET, &rest, "").await;
    let config = std::fs::read_to_string(a.dir.join("vigil.toml")).unwrap();
    let run = |file: &str| {
        let dir = test_dir(&format!("upgrade-fail-{}", file.trim_end_matches(".toml")));
        let child = start_upgrade(&a.dir.join(file), &dir);
        Vigil { child, listen: a.listen, admin: a.admin, dir }
    };

    // A config with an error: the new process says where, exits 1, and
    // never reached the old one.
    std::fs::write(a.dir.join("bad.toml"), format!("{config}\n[proxy]\nlisten = \"nowhere\"\n")).unwrap();
    let mut bad = run("bad.toml");
    assert_eq!(bad.exit_code(Duration::from_secs(10)).await, Some(1), "{}", bad.log());
    assert!(bad.log().contains("bad.toml:"), "the error names the file: {}", bad.log());

    // A config without upgrade_socket has nothing to take over from.
    let without = config.replace(SOCKET, "");
    std::fs::write(a.dir.join("nosocket.toml"), &without).unwrap();
    let mut nosocket = run("nosocket.toml");
    assert_eq!(nosocket.exit_code(Duration::from_secs(10)).await, Some(1));
    assert!(nosocket.log().contains("--upgrade needs proxy.upgrade_socket"), "{}", nosocket.log());

    // A new admin address that is taken: the new process has the sockets
    // and the state, fails to bind, tells the old one and exits 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = config.replace(&a.admin.to_string(), &taken.local_addr().unwrap().to_string());
    std::fs::write(a.dir.join("taken.toml"), &moved).unwrap();
    let mut bind_fails = run("taken.toml");
    assert_eq!(bind_fails.exit_code(Duration::from_secs(20)).await, Some(1), "{}", bind_fails.log());
    let log = bind_fails.log();
    assert!(log.contains("proxy.admin") && log.contains("cannot listen"), "{log}");
    assert!(log.contains("the running vigil serves on"), "{log}");
    let told =
        wait_until(Duration::from_secs(5), || async { a.log().contains("the new process failed") }).await;
    assert!(told, "{}", a.log());

    // The old process never stopped: both its ports answer, and it still
    // takes an upgrade.
    assert!(a.child.try_wait().unwrap().is_none(), "{}", a.log());
    for _ in 0..5 {
        assert_eq!(a.get("app.test", "/").await.0, StatusCode::OK);
    }
    assert_eq!(get_raw(a.admin, "admin", "/healthz").await.map(|r| r.0), Some(StatusCode::OK));
    let mut good = run("vigil.toml");
    assert_eq!(a.exit_code(Duration::from_secs(40)).await, Some(0), "{}\n{}", a.log(), good.log());
    assert_eq!(a.get("app.test", "/").await.0, StatusCode::OK);
    assert!(good.child.try_wait().unwrap().is_none(), "{}", good.log());
}

/// A process that is not this test's child (the one SIGUSR2 starts):
/// signalled by pid, ended when the test ends.
struct Orphan(u32);

impl Orphan {
    /// Running (a zombie nobody reaped yet has exited).
    fn alive(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        // `pid (comm) state ...`: the state follows the last `)`.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None))
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).stderr(Stdio::null()).status();
    }
}

/// The next notification, as its `KEY=value` lines.
async fn next(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n =
        tokio::time::timeout(within, sock.recv(&mut buf)).await.expect("no notification in time").unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_new_process_and_systemd_follows_it() {
    let o = origins(&["127.0.0.65"]).await;
    let origin = format!("app.test:{}", o[0].addr.port());
    let dir = test_dir("upgrade-usr2");
    let sock = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
    // A TLS listener too: its socket is handed over like the others.
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
    let pki = Pki::new();
    let leaf = pki.leaf(&["app.test"], false);
    std::fs::write(dir.join("leaf.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("leaf.key"), &leaf.key_pem).unwrap();
    let main = format!(
        "[proxy]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nlisten_tls = \"{tls_addr}\"\nthreads = 2\n{SOCKET}\n\n{}\n[[tls]]\ncert = \"leaf.pem\"\nkey = \"leaf.key\"\n",
        remap("app.test", &origin, &server_list(&o), "")
    );
    std::fs::write(dir.join("vigil.toml"), &main).unwrap();
    std::fs::write(dir.join("healthchecks.toml"), "").unwrap();
    let mut a = Vigil::spawn(dir.clone(), listen, admin, true);
    let old_pid = a.child.id();
    let ready = next(&sock, Duration::from_secs(10)).await;
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");

    // SIGUSR2: the old process starts `vigil run --upgrade` itself, names
    // it the main PID once it serves, and never says STOPPING=1 (the
    // service goes on); the new one then says READY=1.
    a.signal("USR2");
    let handed = next(&sock, Duration::from_secs(20)).await;
    let pid: u32 = handed
        .iter()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .unwrap_or_else(|| panic!("no MAINPID= in {handed:?}: {}", a.log()))
        .parse()
        .unwrap();
    let new = Orphan(pid);
    assert_ne!(pid, old_pid);
    let ready = next(&sock, Duration::from_secs(10)).await;
    assert!(ready.iter().any(|l| l == "READY=1"), "{ready:?}");
    assert_eq!(a.exit_code(Duration::from_secs(40)).await, Some(0), "{}", a.log());
    assert!(new.alive(), "{}", a.log());
    assert_eq!(get_raw(listen, "app.test", "/").await.map(|r| r.0), Some(StatusCode::OK));
    assert_eq!(get_raw(admin, "admin", "/healthz").await.map(|r| r.0), Some(StatusCode::OK));
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    let mut tls = client(&pki.ca.der().clone(), &[b"http/1.1"]).connect(name, tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "over TLS: {answer}");

    // The new process is the service now: SIGTERM stops it as usual.
    let term = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(term.success());
    let stopping = next(&sock, Duration::from_secs(5)).await;
    assert!(stopping.iter().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(wait_until(Duration::from_secs(10), || async { !new.alive() }).await, "{}", a.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_hands_over_to_a_successor_with_the_same_node_id() {
    use crate::cluster::{CHECKS, cluster_section, free_udp, owners};
    let o = origins(&["127.0.0.66", "127.0.0.67"]).await;
    let servers: Vec<SocketAddr> = o.iter().map(|x| x.addr).collect();
    let origin = format!("app.test:{}", o[0].addr.port());
    let rest = remap("app.test", &origin, &server_list(&o), "");
    let keys = test_dir("upgrade-cluster-keys");
    let key = keys.join("cluster.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let gossip = [free_udp(), free_udp()];
    let node = |i: usize, seeds: &[SocketAddr]| {
        format!("{rest}\n{}", cluster_section(&format!("edge-{i}"), gossip[i], seeds, &key))
    };
    let mut a = Vigil::start("upgrade-cluster-0", SOCKET, &node(0, &[]), CHECKS).await;
    let peer = Vigil::start("upgrade-cluster-1", "", &node(1, &[gossip[0]]), CHECKS).await;
    let live = |v: &Vigil| {
        let v = v.admin;
        async move {
            let (_, _, body) = get_raw(v, "admin", "/hosts").await.unwrap();
            let hosts: serde_json::Value = serde_json::from_str(&body).unwrap();
            let nodes: Vec<String> = hosts["cluster"]["live_nodes"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            (hosts["cluster"]["node"].as_str().unwrap_or("").to_owned(), nodes)
        }
    };
    for v in [&a, &peer] {
        assert_eq!(v.get("app.test", "/").await.0, StatusCode::OK);
    }
    let met = wait_until(Duration::from_secs(15), || async { live(&a).await.1 == ["edge-1"] }).await;
    assert!(met, "the nodes never met: {:?}", live(&a).await);

    // The old node leaves, the new process joins as edge-0 in its place:
    // the peer sees edge-0 live again, and the two share the checks.
    let b_dir = test_dir("upgrade-cluster-new");
    let child = start_upgrade(&a.dir.join("vigil.toml"), &b_dir);
    let b = Vigil { child, listen: a.listen, admin: a.admin, dir: b_dir };
    assert_eq!(a.exit_code(Duration::from_secs(40)).await, Some(0), "{}", a.log());
    let joined = wait_until(Duration::from_secs(20), || async {
        live(&b).await == ("edge-0".to_owned(), vec!["edge-1".to_owned()])
            && live(&peer).await.1 == ["edge-0"]
    })
    .await;
    assert!(joined, "new: {:?}, peer: {:?}\n{}", live(&b).await, live(&peer).await, b.log());
    assert!(b.log().contains("cluster: joined in place of the old process"), "{}", b.log());
    assert_eq!(b.get("app.test", "/").await.0, StatusCode::OK);
    let nodes = [("edge-0", &b), ("edge-1", &peer)];
    let shared =
        wait_until(Duration::from_secs(20), || async { owners(&nodes, &servers).await.is_some() }).await;
    assert!(shared, "the checks were never shared again: {}", b.hosts().await);
}
