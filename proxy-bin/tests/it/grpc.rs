//! gRPC through the real binary: a real gRPC client and server (tonic's
//! core over hyper, prost messages derived by hand), h2c on both sides,
//! and a call over the TLS listener (ALPN h2).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::harness::*;

/// The one message both ways.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

fn msg(text: &str, n: u32) -> Msg {
    Msg { text: text.to_owned(), n }
}

fn path(method: &str) -> PathAndQuery {
    format!("/vigil.Test/{method}").parse().unwrap()
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

/// A tower service from a closure: what tonic's handlers are.
#[derive(Clone)]
struct Handler<F>(F);

impl<F, Fut, Req, Resp> tower_service::Service<Request<Req>> for Handler<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    type Response = Response<Resp>;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Req>) -> Fut {
        (self.0)(req)
    }
}

/// `grpc.health.v1.HealthCheckRequest`, derived by hand as `Msg` is.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (its enum is an int32 on the wire).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// What the gRPC origin saw.
#[derive(Debug)]
struct Seen {
    calls: AtomicU64,
    /// Connections accepted.
    conns: AtomicU64,
    /// `Health/Check` calls, and what they answer (a `ServingStatus`).
    health_checks: AtomicU64,
    health: std::sync::atomic::AtomicI32,
    /// Calls that came without `te: trailers` (refused, as real servers do).
    without_te: AtomicU64,
    /// A `Forever` stream found its client gone.
    cancelled: AtomicBool,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            conns: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            health: SERVING.into(),
            without_te: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
        }
    }
}

/// A gRPC origin on `ip:port` (h2c, hyper's server, tonic's call handling):
/// `Unary` echoes (`missing`: NOT_FOUND, a trailers-only answer); `Count`
/// streams `n` messages, then OK (`fail`: NOT_FOUND in the trailers);
/// `Sum` adds up a client stream; `Forever` streams until the client goes;
/// `Reset` resets the stream before any answer. `grpc.health.v1.Health/Check`
/// answers as the standard health service does: the `health` status for
/// the server (`""`) or `vigil.Test`, NOT_FOUND for any other service.
async fn grpc_origin(ip: &str, port: u16) -> (SocketAddr, Arc<Seen>) {
    grpc_origin_with(ip, port, None).await
}

/// [`grpc_origin`], over TLS when given an acceptor (ALPN h2).
async fn grpc_origin_with(
    ip: &str,
    port: u16,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Arc<Seen>) {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let listener = TcpListener::bind(addr).await.unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            s.conns.fetch_add(1, Ordering::SeqCst);
            let (s, tls) = (Arc::clone(&s), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| call(Arc::clone(&s), req));
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => h2.serve_connection(TokioIo::new(stream), svc).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => h2.serve_connection(TokioIo::new(tls), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    (addr, seen)
}

async fn call(
    seen: Arc<Seen>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, std::io::Error> {
    if req.uri().path() == "/grpc.health.v1.Health/Check" {
        return Ok(health(seen, req).await);
    }
    seen.calls.fetch_add(1, Ordering::SeqCst);
    if req.headers().get(http::header::TE).is_none_or(|v| v != "trailers") {
        // What grpc-go and others answer to a call that lost its TE.
        seen.without_te.fetch_add(1, Ordering::SeqCst);
        return Ok(Status::internal("Missing :te header").into_http());
    }
    let mut grpc = tonic::server::Grpc::new(codec());
    let resp = match req.uri().path() {
        "/vigil.Test/Unary" => {
            let unary = Handler(|req: Request<Msg>| async move {
                let m = req.into_inner();
                if m.text == "missing" {
                    return Err(Status::not_found("no such thing"));
                }
                Ok(Response::new(msg(&format!("echo {}", m.text), m.n + 1)))
            });
            grpc.unary(unary, req).await
        }
        "/vigil.Test/Count" => {
            let count = Handler(|req: Request<Msg>| async move {
                let m = req.into_inner();
                let mut out: Vec<Result<Msg, Status>> = (0..m.n).map(|i| Ok(msg("item", i))).collect();
                if m.text == "fail" {
                    out.push(Err(Status::not_found("ran out")));
                }
                Ok(Response::new(futures_util::stream::iter(out)))
            });
            grpc.server_streaming(count, req).await
        }
        "/vigil.Test/Sum" => {
            let sum = Handler(|req: Request<Streaming<Msg>>| async move {
                let mut stream = req.into_inner();
                let mut total = msg("", 0);
                while let Some(m) = stream.message().await? {
                    total.text.push_str(&m.text);
                    total.n += m.n;
                }
                Ok(Response::new(total))
            });
            grpc.client_streaming(sum, req).await
        }
        "/vigil.Test/Forever" => {
            let forever =
                Handler(move |_: Request<Msg>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Msg, Status>>(1);
                        tokio::spawn(async move {
                            for i in 0.. {
                                if tx.send(Ok(msg("tick", i))).await.is_err() {
                                    seen.cancelled.store(true, Ordering::SeqCst);
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        });
                        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|m| (m, rx))
                        });
                        Ok(Response::new(stream))
                    }
                });
            grpc.server_streaming(forever, req).await
        }
        // hyper's server answers a failed service with RST_STREAM.
        "/vigil.Test/Reset" => return Err(std::io::Error::other("reset")),
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(resp)
}

async fn health(
    seen: Arc<Seen>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    seen.health_checks.fetch_add(1, Ordering::SeqCst);
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default());
    let check = Handler(move |req: Request<HealthCheckRequest>| {
        let status = seen.health.load(Ordering::SeqCst);
        async move {
            match req.into_inner().service.as_str() {
                "" | "vigil.Test" => Ok(Response::new(HealthCheckResponse { status })),
                other => Err(Status::not_found(format!("unknown service {other}"))),
            }
        }
    });
    grpc.unary(check, req).await
}

/// tonic's client over one hyper HTTP/2 connection (what tonic's own
/// channel is, without its transport feature).
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type Sent = Pin<Box<dyn Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>> + Send>>;

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Sent;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Sent {
        Box::pin(self.0.send_request(req))
    }
}

/// A gRPC client over `io`, calling `origin` (`http://host`).
async fn client<T>(io: T, origin: &str) -> tonic::client::Grpc<H2>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    tonic::client::Grpc::with_origin(H2(tx), origin.parse().unwrap())
}

async fn unary(c: &mut tonic::client::Grpc<H2>, m: Msg) -> Result<Msg, Status> {
    c.ready().await.unwrap();
    c.unary(Request::new(m), path("Unary"), codec()).await.map(Response::into_inner)
}

/// Server and client streams (their statuses in the trailers), and a call
/// the client cancels mid-stream, which the origin must hear of: four calls.
async fn streams_and_a_cancel(c: &mut tonic::client::Grpc<H2>, seen: &Seen) {
    // Server streaming: the messages, then the status in the trailers.
    c.ready().await.unwrap();
    let mut s =
        c.server_streaming(Request::new(msg("", 3)), path("Count"), codec()).await.unwrap().into_inner();
    for i in 0..3 {
        assert_eq!(s.message().await.unwrap(), Some(msg("item", i)));
    }
    assert_eq!(s.message().await.unwrap(), None, "OK in the trailers");
    c.ready().await.unwrap();
    let mut s =
        c.server_streaming(Request::new(msg("fail", 2)), path("Count"), codec()).await.unwrap().into_inner();
    assert_eq!(s.message().await.unwrap(), Some(msg("item", 0)));
    assert_eq!(s.message().await.unwrap(), Some(msg("item", 1)));
    let e = s.message().await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "ran out"), "{e:?}");

    // Client streaming.
    c.ready().await.unwrap();
    let parts = futures_util::stream::iter([msg("a", 1), msg("b", 2), msg("c", 3)]);
    let sum = c.client_streaming(Request::new(parts), path("Sum"), codec()).await.unwrap().into_inner();
    assert_eq!(sum, msg("abc", 6));

    // A call the client cancels mid-stream: the origin hears of it.
    c.ready().await.unwrap();
    let mut s =
        c.server_streaming(Request::new(msg("", 0)), path("Forever"), codec()).await.unwrap().into_inner();
    assert_eq!(s.message().await.unwrap(), Some(msg("tick", 0)));
    assert_eq!(s.message().await.unwrap(), Some(msg("tick", 1)));
    drop(s);
    assert!(
        wait_until(Duration::from_secs(5), || async { seen.cancelled.load(Ordering::SeqCst) }).await,
        "the cancel did not reach the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_h2c_with_their_trailers() {
    let port = free_port(&["127.0.0.2"]);
    let (addr, seen) = grpc_origin("127.0.0.2", port).await;
    let rest =
        remap("grpc.test", &format!("grpc.test:{port}"), &format!("[\"{addr}\"]"), "protocol = \"h2c\"");
    let v = Vigil::start("grpc", "", &rest, "").await;
    let mut c = client(TcpStream::connect(v.listen).await.unwrap(), "http://grpc.test").await;

    // Unary calls, one client connection; OK arrives in the trailers.
    for i in 0..5 {
        let got = unary(&mut c, msg(&format!("call {i}"), i)).await;
        assert_eq!(got.unwrap(), msg(&format!("echo call {i}"), i + 1));
    }
    // A trailers-only answer: the status is all there is.
    let e = unary(&mut c, msg("missing", 0)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "no such thing"), "{e:?}");

    streams_and_a_cancel(&mut c, &seen).await;

    // The connection and the server took no harm.
    assert_eq!(unary(&mut c, msg("after", 1)).await.unwrap(), msg("echo after", 2));
    assert_eq!(seen.without_te.load(Ordering::SeqCst), 0, "a call lost its te: trailers");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 11);
    let server = v.server(addr).await;
    assert_eq!(server["routable"], true, "{server}");
    assert_eq!(server["l4"]["state"], "up", "{server}");
    assert_eq!(server["l4"]["consecutive_failures"], 0, "{server}");
    let metrics = get_raw(v.admin, "a", "/metrics").await.unwrap().2;
    assert!(!metrics.contains("code=\"502\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_origin_resets_fails_the_call_not_the_server() {
    let port = free_port(&["127.0.0.4"]);
    let (addr, seen) = grpc_origin("127.0.0.4", port).await;
    let rest =
        remap("grpc.test", &format!("grpc.test:{port}"), &format!("[\"{addr}\"]"), "protocol = \"h2c\"");
    let v = Vigil::start("grpcreset", "", &rest, "").await;
    let mut c = client(TcpStream::connect(v.listen).await.unwrap(), "http://grpc.test").await;
    for _ in 0..5 {
        c.ready().await.unwrap();
        let e = c.unary(Request::new(msg("", 0)), path("Reset"), codec()).await.unwrap_err();
        assert!(e.message().contains("502 Bad Gateway"), "{e:?}");
    }
    assert_eq!(seen.calls.load(Ordering::SeqCst), 5, "a POST whose stream was reset is not sent again");
    let server = v.server(addr).await;
    assert_eq!(server["l4"]["state"], "up", "{server}");
    assert_eq!(server["l4"]["consecutive_failures"], 0, "{server}");
    assert_eq!(unary(&mut c, msg("still", 0)).await.unwrap(), msg("echo still", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_over_the_tls_listener() {
    let pki = crate::tls::Pki::new();
    let leaf = pki.leaf(&["grpc.test"], false);
    let port = free_port(&["127.0.0.3"]);
    let (addr, seen) = grpc_origin("127.0.0.3", port).await;
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
    let files: &[(&str, &[u8])] = &[("g.pem", leaf.cert_pem.as_bytes()), ("g.key", leaf.key_pem.as_bytes())];
    let rest = format!(
        "{}\n[[tls]]\ncert = \"g.pem\"\nkey = \"g.key\"\n",
        remap("grpc.test", &format!("grpc.test:{port}"), &format!("[\"{addr}\"]"), "protocol = \"h2c\"")
    );
    let v = Vigil::start_with("grpctls", files, &format!("listen_tls = \"{tls_addr}\""), &rest, "").await;

    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let tls = crate::tls::client(pki.ca.der(), &[b"h2"])
        .connect(ServerName::try_from("grpc.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut c = client(tls, "https://grpc.test").await;
    assert_eq!(unary(&mut c, msg("over tls", 41)).await.unwrap(), msg("echo over tls", 42));
    let e = unary(&mut c, msg("missing", 0)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    streams_and_a_cancel(&mut c, &seen).await;
    assert_eq!(unary(&mut c, msg("after", 1)).await.unwrap(), msg("echo after", 2));
    assert_eq!(seen.without_te.load(Ordering::SeqCst), 0);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 7);
    let server = v.server(addr).await;
    assert_eq!(
        (&server["routable"], &server["l4"]["consecutive_failures"]),
        (&true.into(), &0.into()),
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_share_the_user_traffic_connection_and_follow_the_serving_status() {
    let port = free_port(&["127.0.0.5"]);
    let (addr, seen) = grpc_origin("127.0.0.5", port).await;
    let servers = format!("[\"{addr}\"]");
    let rest = format!(
        "{}{}",
        remap("grpc.test", &format!("grpc.test:{port}"), &servers, "protocol = \"h2c\""),
        remap("other.test", &format!("other.test:{port}"), &servers, "protocol = \"h2c\"")
    );
    let checks = steady_checks().replace(
        "origin = \"app.test\"\npath = \"/healthz\"",
        "origin = \"grpc.test\"\nkind = \"grpc\"\nservice = \"vigil.Test\"",
    );
    let hc = format!("{checks}[[check]]\norigin = \"other.test\"\nkind = \"grpc\"\nservice = \"nope\"\n");
    let v = Vigil::start("grpchealth", "", &rest, &hc).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(seen.health_checks.load(Ordering::SeqCst), 0, "lazy: no check before a request");

    let mut c = client(TcpStream::connect(v.listen).await.unwrap(), "http://grpc.test").await;
    assert_eq!(unary(&mut c, msg("hi", 1)).await.unwrap(), msg("echo hi", 2));
    let detail = |v: serde_json::Value| v["l7"]["last_detail"].as_str().unwrap_or("").to_owned();
    let grpc_test = format!("grpc.test:{port}");
    let server = || server_of(&v, &grpc_test);
    let served = wait_until(Duration::from_secs(5), || async {
        let s = server().await;
        s["l7"]["state"] == "healthy" && detail(s) == "grpc: SERVING"
    })
    .await;
    assert!(served, "{}", server().await);
    let hosts = v.hosts().await;
    let origin =
        hosts["origins"].as_array().unwrap().iter().find(|o| o["origin"] == format!("grpc.test:{port}"));
    assert_eq!(origin.unwrap()["check"], serde_json::json!({"kind": "grpc"}), "{hosts}");

    seen.health.store(NOT_SERVING, Ordering::SeqCst);
    let down = wait_until(Duration::from_secs(5), || async {
        let s = server().await;
        s["l7"]["state"] == "unhealthy" && detail(s) == "grpc: NOT_SERVING"
    })
    .await;
    assert!(down, "{}", server().await);
    assert_eq!(server().await["l4"]["state"], "up", "a NOT_SERVING answer is no L4 failure");
    seen.health.store(SERVING, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || async { server().await["l7"]["state"] == "healthy" }).await,
        "{}",
        server().await
    );

    // A status other than OK fails with the status and its message.
    let (status, _, _) = v.get("other.test", "/").await;
    assert_ne!(status, http::StatusCode::NOT_FOUND, "routed");
    let other_test = format!("other.test:{port}");
    let other = wait_until(Duration::from_secs(5), || async {
        detail(server_of(&v, &other_test).await) == "grpc: NOT_FOUND: unknown service nope"
    })
    .await;
    assert!(other, "{}", v.hosts().await);

    // Steady state: the checks rode the one h2 connection user calls use.
    let checks = seen.health_checks.load(Ordering::SeqCst);
    assert!(checks >= 4, "{checks}");
    assert_eq!(unary(&mut c, msg("after", 1)).await.unwrap(), msg("echo after", 2));
    assert_eq!(
        seen.conns.load(Ordering::SeqCst),
        1,
        "{checks} checks and the user's calls on one connection"
    );
    let series =
        format!("vigil_health_checks_total{{origin=\"grpc.test:{port}\",server=\"{addr}\",result=\"pass\"}}");
    assert!(v.metric(&series).await >= 2.0, "{series}");
    let info = format!("vigil_health_check_info{{origin=\"grpc.test:{port}\",kind=\"grpc\"}}");
    assert_eq!(v.metric(&info).await, 1.0, "{info}");
}

/// [`FAST_CHECKS`] with room for a loaded machine where a test counts
/// connections: a check that timed out is retried on a fresh connection
/// (as it should be), which would be a second one.
fn steady_checks() -> String {
    FAST_CHECKS
        .replace("interval = \"150ms\"", "interval = \"600ms\"")
        .replace("timeout = \"120ms\"", "timeout = \"500ms\"")
}

/// The one server of `origin` in `/hosts`.
async fn server_of(v: &Vigil, origin: &str) -> serde_json::Value {
    let hosts = v.hosts().await;
    let o = hosts["origins"].as_array().unwrap().iter().find(|o| o["origin"] == origin).cloned();
    o.map(|o| o["servers"][0].clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_over_tls_use_the_h2_session_alpn_settled() {
    let pki = crate::tls::Pki::new();
    let leaf = pki.leaf(&["grpc.test"], false);
    let acceptor = crate::tls::acceptor(&leaf, &[b"h2", b"http/1.1"]);
    let port = free_port(&["127.0.0.9"]);
    let (addr, seen) = grpc_origin_with("127.0.0.9", port, Some(acceptor)).await;
    let rest = format!(
        "[[remap]]\nfrom = \"grpc.test\"\nto = \"https://grpc.test:{port}\"\n\n[origins.\"grpc.test:{port}\"]\nservers = [\"{addr}\"]\nca_file = \"ca.pem\"\nprotocol = \"auto\"\n"
    );
    let checks = steady_checks()
        .replace("origin = \"app.test\"\npath = \"/healthz\"", "origin = \"grpc.test\"\nkind = \"grpc\"");
    let ca_pem = pki.ca_pem();
    let files: &[(&str, &[u8])] = &[("ca.pem", ca_pem.as_bytes())];
    let v = Vigil::start_with("grpchealthtls", files, "", &rest, &checks).await;

    let mut c = client(TcpStream::connect(v.listen).await.unwrap(), "http://grpc.test").await;
    assert_eq!(unary(&mut c, msg("tls", 1)).await.unwrap(), msg("echo tls", 2));
    let origin = format!("grpc.test:{port}");
    let served = wait_until(Duration::from_secs(5), || async {
        let s = server_of(&v, &origin).await;
        s["l7"]["last_detail"] == "grpc: SERVING" && seen.health_checks.load(Ordering::SeqCst) >= 4
    })
    .await;
    assert!(served, "{}", server_of(&v, &origin).await);
    assert_eq!(unary(&mut c, msg("again", 1)).await.unwrap(), msg("echo again", 2));
    assert_eq!(seen.conns.load(Ordering::SeqCst), 1, "checks and calls share one TLS h2 connection");
}

/// `vigil status` against `v`: its table.
fn status_table(v: &Vigil) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["status", "--admin", &v.admin.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_check_on_an_admin_port_judges_the_server_and_leaves_the_service_port_alone() {
    let ip = "127.0.0.10";
    let (port, admin_port) = (free_port(&[ip]), free_port(&[ip]));
    let (addr, service) = grpc_origin(ip, port).await;
    let (_, admin) = grpc_origin(ip, admin_port).await;
    let rest =
        remap("grpc.test", &format!("grpc.test:{port}"), &format!("[\"{addr}\"]"), "protocol = \"h2c\"");
    let checks = FAST_CHECKS.replace(
        "origin = \"app.test\"\npath = \"/healthz\"",
        &format!("origin = \"grpc.test\"\nkind = \"grpc\"\nport = {admin_port}"),
    );
    let v = Vigil::start("grpcadmin", "", &rest, &checks).await;
    let mut c = client(TcpStream::connect(v.listen).await.unwrap(), "http://grpc.test").await;
    assert_eq!(unary(&mut c, msg("hi", 1)).await.unwrap(), msg("echo hi", 2));

    let origin = format!("grpc.test:{port}");
    let detail = |s: &serde_json::Value| s["l7"]["last_detail"].as_str().unwrap_or("").to_owned();
    let served = wait_until(Duration::from_secs(5), || async {
        detail(&server_of(&v, &origin).await) == "grpc: SERVING"
    })
    .await;
    assert!(served, "{}", server_of(&v, &origin).await);
    assert!(admin.health_checks.load(Ordering::SeqCst) >= 1);
    assert_eq!(service.health_checks.load(Ordering::SeqCst), 0, "checks go to the admin port only");
    let hosts = v.hosts().await;
    let o = hosts["origins"].as_array().unwrap().iter().find(|o| o["origin"] == origin).cloned().unwrap();
    assert_eq!(o["check"], serde_json::json!({"kind": "grpc", "port": admin_port}), "{o}");
    let table = status_table(&v);
    assert!(table.contains(&format!("grpc checks on port {admin_port} running")), "{table}");

    // The admin port says NOT_SERVING: the server is out, its port is fine.
    admin.health.store(NOT_SERVING, Ordering::SeqCst);
    let out = wait_until(Duration::from_secs(5), || async {
        let s = server_of(&v, &origin).await;
        s["l7"]["state"] == "unhealthy" && detail(&s) == format!("port {admin_port}: grpc: NOT_SERVING")
    })
    .await;
    let s = server_of(&v, &origin).await;
    assert!(out, "{s}");
    assert_eq!((&s["l4"]["state"], &s["l4"]["consecutive_failures"]), (&"up".into(), &0.into()), "{s}");
    assert_eq!(s["routable"], false, "{s}");
    let calls = service.calls.load(Ordering::SeqCst);
    c.ready().await.unwrap();
    let e = c.unary(Request::new(msg("", 0)), path("Unary"), codec()).await.unwrap_err();
    assert!(e.message().contains("503"), "its only server is out: {e:?}");
    assert_eq!(service.calls.load(Ordering::SeqCst), calls, "no call reached the server that is out");

    admin.health.store(SERVING, Ordering::SeqCst);
    let back =
        wait_until(Duration::from_secs(5), || async { server_of(&v, &origin).await["routable"] == true })
            .await;
    assert!(back, "{}", server_of(&v, &origin).await);
    assert_eq!(unary(&mut c, msg("back", 1)).await.unwrap(), msg("echo back", 2));
}

/// An HTTP/1.1 origin on `addr` that answers each request (read whole,
/// chunked or with a length, into `got`) with a chunked `world` and an
/// `x-sum` trailer, then closes.
async fn trailing_origin(addr: SocketAddr, got: Arc<parking_lot::Mutex<String>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let got = Arc::clone(&got);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                let whole = |b: &[u8]| {
                    let text = String::from_utf8_lossy(b).to_ascii_lowercase();
                    let Some(head_end) = text.find("\r\n\r\n") else { return false };
                    if text.contains("content-length: 5") {
                        return b.len() >= head_end + 4 + 5;
                    }
                    text[head_end..]
                        .find("\r\n0\r\n")
                        .is_some_and(|at| text[head_end + at + 3..].contains("\r\n\r\n"))
                };
                while !whole(&buf) {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                *got.lock() = String::from_utf8_lossy(&buf).into_owned();
                let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nConnection: close\r\n\r\n\
                              5\r\nworld\r\n0\r\nx-sum: 99\r\n\r\n";
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_trailers_are_dropped_on_either_side_and_the_bodies_kept() {
    let ip = "127.0.0.11";
    let addr = SocketAddr::new(ip.parse().unwrap(), free_port(&[ip]));
    let got = Arc::new(parking_lot::Mutex::new(String::new()));
    trailing_origin(addr, Arc::clone(&got)).await;
    let origin = format!("trailers.test:{}", addr.port());
    let v =
        Vigil::start("h1trailers", "", &remap("trailers.test", &origin, &format!("[\"{addr}\"]"), ""), "")
            .await;
    let answer = raw(
        v.listen,
        b"POST /t HTTP/1.1\r\nHost: trailers.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body_and_after = &answer[answer.find("\r\n\r\n").unwrap()..];
    assert!(body_and_after.contains("world"), "the body is whole: {answer}");
    assert!(!answer.contains("x-sum: 99"), "the origin's trailer is dropped: {answer}");
    assert!(!answer.to_ascii_lowercase().contains("\r\ntrailer:"), "no trailer announced: {answer}");
    let sent = got.lock().clone();
    assert!(sent.contains("hello"), "the body is whole: {sent}");
    assert!(!sent.contains("x-sum: 42"), "the client's trailer is dropped: {sent}");
    assert_eq!(v.server(addr).await["l4"]["consecutive_failures"], 0);
}
