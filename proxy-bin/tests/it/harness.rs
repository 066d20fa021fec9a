//! Real parts for end-to-end tests: hyper origins on 127.0.0.x, the real
//! `vigil` binary as a child process, a hyper client.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A port free on every one of `ips` (origins of one origin share a port),
/// for TCP, or for UDP with `udp`.
///
/// Ports come from below the kernel's ephemeral range (32768-60999 unless
/// configured otherwise), handed out once each per test process. A port the
/// kernel picked for a bind to port 0 could be taken by an outgoing
/// connection (another test's) between being let go here and being bound
/// by `vigil`: that made tests fail with "Address already in use".
pub(crate) fn free_port_for(ips: &[&str], udp: bool) -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    // Test processes that run at once (a second `cargo test`) start apart.
    let offset = std::process::id() % 64 * 150;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (offset + n) % SPAN).unwrap();
        let free = ips.iter().all(|ip| {
            if udp {
                std::net::UdpSocket::bind((*ip, port)).is_ok()
            } else {
                std::net::TcpListener::bind((*ip, port)).is_ok()
            }
        });
        if free {
            return port;
        }
    }
    panic!("no free port on {ips:?}");
}

/// A TCP port free on every one of `ips`; see [`free_port_for`].
pub(crate) fn free_port(ips: &[&str]) -> u16 {
    free_port_for(ips, false)
}

/// What an origin server does; shared with the test.
#[derive(Debug, Default)]
pub(crate) struct OriginState {
    /// Status `/healthz` answers (0 = 200).
    pub(crate) health: AtomicU16,
    pub(crate) requests: AtomicU64,
    pub(crate) checks: AtomicU64,
    /// Set: every connection gets garbage instead of HTTP.
    pub(crate) garbage: AtomicBool,
    /// `/late` sends the rest of its body once this is notified.
    pub(crate) release: tokio::sync::Notify,
    /// Not 0: the status every request but `/healthz` gets.
    pub(crate) fail_status: AtomicU16,
    /// 1: every answer but `/healthz`'s says `vigil-health: drain`.
    pub(crate) signal_drain: AtomicBool,
}

/// A hyper origin server on one address (HTTP/1.1 and h2c).
#[derive(Debug)]
pub(crate) struct Origin {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<OriginState>,
    /// The accept loop and every connection, so a kill can drop them all.
    tasks: Arc<parking_lot::Mutex<JoinSet<()>>>,
}

impl Origin {
    pub(crate) async fn start(ip: &str, port: u16) -> Origin {
        let addr = SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port);
        let listener = TcpListener::bind(addr).await.unwrap();
        let state = Arc::new(OriginState::default());
        let tasks = Arc::new(parking_lot::Mutex::new(JoinSet::new()));
        let (s, t) = (Arc::clone(&state), Arc::clone(&tasks));
        tasks.lock().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let s = Arc::clone(&s);
                t.lock().spawn(serve_origin(stream, addr, s));
            }
        });
        Origin { addr, state, tasks }
    }

    /// Hard kill: the listener and every open connection go at once.
    pub(crate) fn kill(&self) {
        self.tasks.lock().abort_all();
    }

    pub(crate) fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn checks(&self) -> u64 {
        self.state.checks.load(Ordering::SeqCst)
    }
}

async fn serve_origin(mut stream: TcpStream, me: SocketAddr, state: Arc<OriginState>) {
    if state.garbage.load(Ordering::SeqCst) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream.write_all(b"this is not HTTP at all\r\n\r\n").await;
        return;
    }
    let svc = service_fn(move |req| origin_handler(me, Arc::clone(&state), req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

pub(crate) async fn origin_handler(
    me: SocketAddr,
    state: Arc<OriginState>,
    req: Request<Incoming>,
) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let (fail, drain) = (state.fail_status.load(Ordering::SeqCst), state.signal_drain.load(Ordering::SeqCst));
    let ok = |body: String| {
        let mut resp = Response::builder().header("x-served-by", me.to_string());
        if fail != 0 {
            resp = resp.status(fail);
        }
        if drain {
            resp = resp.header("vigil-health", "drain");
        }
        Ok(resp.body(Full::new(Bytes::from(body)).boxed()).unwrap())
    };
    match path.as_str() {
        "/healthz" => {
            state.checks.fetch_add(1, Ordering::SeqCst);
            let status = match state.health.load(Ordering::SeqCst) {
                0 => 200,
                s => s,
            };
            Ok(Response::builder().status(status).body(Full::new(Bytes::from_static(b"OK")).boxed()).unwrap())
        }
        "/slow" => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let ms: u64 = query.strip_prefix("ms=").and_then(|v| v.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ok(format!("slow {me}"))
        }
        "/headers" => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            ok(out)
        }
        "/stream" => {
            // Three pieces, no length known up front: chunked on the wire.
            state.requests.fetch_add(1, Ordering::SeqCst);
            let pieces = [&b"piece1"[..], b"piece2", b"piece3"].map(Bytes::from_static).into_iter().collect();
            Ok(Response::new(Pieces(pieces).boxed()))
        }
        "/late" => {
            // A known length; the first piece at once, the rest when the
            // test says so.
            state.requests.fetch_add(1, Ordering::SeqCst);
            let rest = async move {
                state.release.notified().await;
                Bytes::from_static(b"second")
            };
            Ok(Response::new(
                Late { first: Some(Bytes::from_static(b"first")), rest: Box::pin(rest) }.boxed(),
            ))
        }
        "/echo" => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            ok(format!("len={} sum={}", body.len(), checksum(&body)))
        }
        _ => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            ok(me.to_string())
        }
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A body of pieces whose total length is not known up front.
struct Pieces(std::collections::VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// `first` at once, then what `rest` gives; 11 bytes in all, said up front.
struct Late {
    first: Option<Bytes>,
    rest: std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send + Sync>>,
}

impl http_body::Body for Late {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(first))));
        }
        self.rest.as_mut().poll(cx).map(|rest| Some(Ok(http_body::Frame::data(rest))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(11)
    }
}

pub(crate) fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

/// The real binary, with its files in a folder of its own.
#[derive(Debug)]
pub(crate) struct Vigil {
    pub(crate) child: Child,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) dir: PathBuf,
}

/// A fresh folder for one test's files.
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Vigil {
    /// Writes `vigil.toml` (its `[proxy]` section made here; `rest` is
    /// everything after it) and `healthchecks.toml`, starts the binary and
    /// waits for its admin API.
    pub(crate) async fn start(name: &str, proxy_extra: &str, rest: &str, hc: &str) -> Vigil {
        Self::start_with(name, &[], proxy_extra, rest, hc).await
    }

    /// [`Vigil::start`] with `files` (name, contents) written beside the
    /// config first (certificates, keys).
    pub(crate) async fn start_with(
        name: &str,
        files: &[(&str, &[u8])],
        proxy_extra: &str,
        rest: &str,
        hc: &str,
    ) -> Vigil {
        let dir = test_dir(name);
        for (file, contents) in files {
            std::fs::write(dir.join(file), contents).unwrap();
        }
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
        let main = format!(
            "[proxy]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nthreads = 2\n{proxy_extra}\n{rest}"
        );
        std::fs::write(dir.join("vigil.toml"), main).unwrap();
        std::fs::write(dir.join("healthchecks.toml"), hc).unwrap();
        let v = Self::spawn(dir, listen, admin, false);
        let up = wait_until(Duration::from_secs(10), || async {
            get_raw(admin, "x", "/healthz").await.map(|r| r.0) == Some(StatusCode::OK)
        })
        .await;
        assert!(up, "vigil did not come up: {}", v.log());
        v
    }

    /// Starts `vigil run` on the `vigil.toml` already in `dir`, its log in
    /// `vigil.log` there; with `notify`, `NOTIFY_SOCKET` is `notify.sock`
    /// there (a socket the test binds). Does not wait for it to serve.
    pub(crate) fn spawn(dir: PathBuf, listen: SocketAddr, admin: SocketAddr, notify: bool) -> Vigil {
        let log = std::fs::File::create(dir.join("vigil.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args(["run", "--config"]).arg(dir.join("vigil.toml")).env("VIGIL_LOG", "debug");
        if notify {
            cmd.env("NOTIFY_SOCKET", dir.join("notify.sock"));
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Vigil { child, listen, admin, dir }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vigil.log")).unwrap_or_default()
    }

    /// `GET path` with `Host: host` on a new connection.
    pub(crate) async fn get(&self, host: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        get_raw(self.listen, host, path).await.unwrap_or_else(|| panic!("no answer for GET {host}{path}"))
    }

    /// The value of one metric series in `/metrics` (`name{labels}`), 0
    /// when absent.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let (_, _, text) = get_raw(self.admin, "admin", "/metrics").await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub(crate) async fn hosts(&self) -> serde_json::Value {
        let (s, _, body) = get_raw(self.admin, "admin", "/hosts").await.unwrap();
        assert_eq!(s, StatusCode::OK);
        serde_json::from_str(&body).unwrap()
    }

    /// One server's entry in `/hosts`.
    pub(crate) async fn server(&self, addr: SocketAddr) -> serde_json::Value {
        let hosts = self.hosts().await;
        for o in hosts["origins"].as_array().unwrap() {
            for s in o["servers"].as_array().unwrap() {
                if s["addr"] == addr.to_string() {
                    return s.clone();
                }
            }
        }
        panic!("{addr} not in /hosts: {hosts}");
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        self.post_with(path, auth.as_ref().map(|a| ("authorization", a.as_str())).as_slice(), body).await
    }

    /// `POST` with extra headers (a browser's `Origin`, say).
    pub(crate) async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, String) {
        let mut req = Request::post(path).header("host", "admin");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp =
            send(self.admin, req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
        (resp.0, resp.2)
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit (up to `within`).
    pub(crate) async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Vigil {
    // A failed test shows the proxy's log: that is what stderr is for here.
    #[allow(clippy::print_stderr)]
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("--- vigil log ({}) ---\n{}", self.dir.display(), self.log());
        }
    }
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub(crate) async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Option<(StatusCode, HeaderMap, String)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req)).await.ok()?.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned()))
}

pub(crate) async fn get_raw(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Option<(StatusCode, HeaderMap, String)> {
    send(addr, Request::get(path).header("host", host).body(Full::new(Bytes::new())).unwrap()).await
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub(crate) async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts one origin server on each of `ips`, all on the same port.
pub(crate) async fn origins(ips: &[&str]) -> Vec<Origin> {
    let port = free_port(ips);
    let mut out = Vec::new();
    for ip in ips {
        out.push(Origin::start(ip, port).await);
    }
    out
}

/// `servers = [...]` for `origins`.
pub(crate) fn server_list(origins: &[Origin]) -> String {
    let list: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    format!("[{}]", list.join(", "))
}

/// A `[[remap]]` of `host` to `origin` and the origin's `servers`, plus `extra` keys.
pub(crate) fn remap(host: &str, origin: &str, servers: &str, extra: &str) -> String {
    format!(
        "[[remap]]\nfrom = \"{host}\"\nto = \"http://{origin}\"\n\n[origins.\"{origin}\"]\nservers = {servers}\n{extra}\n"
    )
}

/// Sends raw bytes; returns everything read until the server closes.
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed: {}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

/// Fast enough for tests, with room for a loaded CI machine: one slow
/// check does not flip a server.
pub(crate) const FAST_CHECKS: &str = r#"[defaults]
interval = "150ms"
unhealthy_interval = "150ms"
timeout = "120ms"
healthy_threshold = 1
unhealthy_threshold = 2
[[check]]
origin = "app.test"
path = "/healthz"
"#;
