use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use vigil_session::{ErrorKind, Freshness, NoopObserver, Pool, PoolConfig, RetryPolicy, Target};

use crate::{Origin, Recorder, concurrent, counted, get, h2_origin, listen, read_all};

#[tokio::test]
async fn h2_multiplexes_concurrent_requests_on_one_connection() {
    let origin = h2_origin(100).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::h2c(origin.addr);
    let bodies = concurrent(&pool, t, 20, "/slow").await;
    assert!(bodies.iter().all(|b| b == "slow"));
    assert_eq!((origin.conns(), origin.requests()), (1, 20), "one connect, never a burst");
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts { idle: 1, in_use: 0 });
}

#[tokio::test]
async fn a_second_h2_connection_opens_only_when_the_first_is_full() {
    let origin = h2_origin(4).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::h2c(origin.addr);
    // Learn the server's limit (it arrives in SETTINGS after the handshake).
    read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await;
    let bodies = concurrent(&pool, t, 12, "/slow").await;
    assert!(bodies.iter().all(|b| b == "slow"));
    // 12 concurrent streams at 4 per connection: exactly 3 connections.
    assert_eq!(origin.conns(), 3);
    assert_eq!(origin.requests(), 13);
}

/// An h2c origin on the h2 crate itself, to send what hyper's server never
/// does: the first `refuse` streams it gets are refused (`REFUSED_STREAM`),
/// the rest answered `ok`. `requests` counts the answered ones.
async fn refusing_origin(refuse: usize) -> Origin {
    refusing_origin_over(refuse, |s| async move { Some(s) }).await
}

/// [`refusing_origin`] over what `wrap` makes of each connection (TLS, say).
/// A request with a body is answered with its body; a refused stream's body
/// is not read.
pub(crate) async fn refusing_origin_over<S, F>(
    refuse: usize,
    wrap: impl Fn(tokio::net::TcpStream) -> F + Send + Sync + 'static,
) -> Origin
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = Option<S>> + Send + 'static,
{
    let (l, _) = listen().await;
    let seen = Arc::new(AtomicUsize::new(0));
    counted(l, move |s, answered| {
        let seen = Arc::clone(&seen);
        let io = wrap(s);
        tokio::spawn(async move {
            let Some(io) = io.await else { return };
            let Ok(mut conn) = h2::server::handshake(io).await else { return };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                answered.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut echo = Vec::new();
                    while let Some(Ok(data)) = body.data().await {
                        let _ = body.flow_control().release_capacity(data.len());
                        echo.extend_from_slice(&data);
                    }
                    let answer = if echo.is_empty() { Bytes::from_static(b"ok") } else { Bytes::from(echo) };
                    if let Ok(mut out) = respond.send_response(http::Response::new(()), false) {
                        let _ = out.send_data(answer, true);
                    }
                });
            }
        });
    })
}

fn post() -> http::Request<vigil_session::RequestBody> {
    http::Request::post("/do").header("host", "origin.test").body(vigil_session::empty_body()).unwrap()
}

#[tokio::test]
async fn a_refused_stream_is_not_l4_and_goes_again_on_a_fresh_connection() {
    let origin = refusing_origin(1).await;
    let rec = Arc::new(Recorder::default());
    let pool = Pool::new(PoolConfig::default(), rec.clone());
    let t = Target::h2c(origin.addr);

    // What it is: the server's refusal of one stream, any method may move.
    let refusing = refusing_origin(usize::MAX).await;
    let session = pool.checkout(Target::h2c(refusing.addr), Freshness::IdlePreferred).await.unwrap();
    let e = session.send(post()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(!e.is_l4_failure(), "one stream's fate, not the server's");
    let post_policy = RetryPolicy::request(&http::Method::POST);
    assert!(e.may_retry_elsewhere(post_policy) && e.may_retry_on_fresh(post_policy));
    assert_eq!(refusing.requests(), 0);

    // A POST refused on a new connection goes once more, on a fresh one.
    let resp = pool.request(t, Freshness::IdlePreferred, post()).await.unwrap();
    assert_eq!(read_all(resp).await, "ok");
    assert_eq!((origin.conns(), origin.requests()), (2, 1), "refused on the first, answered on the second");
    assert!(rec.io_errors.lock().is_empty(), "no L4 failure: {:?}", rec.io_errors.lock());
}

/// A body that comes in `parts`, one frame each, as a client streams it.
pub(crate) fn streamed(parts: &[&'static str]) -> vigil_session::RequestBody {
    let frames: Vec<Result<http_body::Frame<Bytes>, vigil_session::BoxError>> =
        parts.iter().map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes())))).collect();
    vigil_session::RequestBody::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn a_refused_stream_with_a_body_goes_again_whole() {
    let origin = refusing_origin(1).await;
    let rec = Arc::new(Recorder::default());
    let pool = Pool::new(PoolConfig::default(), rec.clone());
    let t = Target::h2c(origin.addr);
    let call = |parts| {
        http::Request::post("/pkg.Svc/Call")
            .header("host", "origin.test")
            .header("content-type", "application/grpc")
            .body(streamed(parts))
            .unwrap()
    };
    // What a gRPC client sends: a POST whose body streams in.
    let resp = pool.request(t, Freshness::IdlePreferred, call(&["head-", "and-", "tail"])).await.unwrap();
    assert_eq!(read_all(resp).await, "head-and-tail", "the retry sent the body whole, once");
    assert_eq!((origin.conns(), origin.requests()), (2, 1));
    assert!(rec.io_errors.lock().is_empty(), "{:?}", rec.io_errors.lock());

    // Refused by every server, the request comes back whole to go elsewhere.
    let refusing = refusing_origin(usize::MAX).await;
    let (e, back) = pool
        .try_request(Target::h2c(refusing.addr), Freshness::IdlePreferred, call(&["one-", "two"]), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let back = back.expect("a refused request with a small body is handed back");
    assert_eq!(back.uri().path(), "/pkg.Svc/Call");
    let resp = pool.request(t, Freshness::IdlePreferred, back).await.unwrap();
    assert_eq!(read_all(resp).await, "one-two", "sent elsewhere, the body is whole");
}

#[tokio::test]
async fn a_refused_stream_whose_body_outgrew_what_is_kept_fails_as_refused() {
    let refusing = refusing_origin(usize::MAX).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let big: &'static str = Box::leak("x".repeat(80 * 1024).into_boxed_str());
    let req = http::Request::post("/upload").header("host", "origin.test").body(streamed(&[big])).unwrap();
    let (e, back) =
        pool.try_request(Target::h2c(refusing.addr), Freshness::IdlePreferred, req, None).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Refused | ErrorKind::Body), "{e}");
    assert!(back.is_none(), "80 KiB were not kept: nothing to send again");
}

/// An h2c origin on the h2 crate whose first connection takes one stream,
/// then says GOAWAY (graceful) and answers that stream `held` only when
/// `release` is notified; later connections answer `ok` at once.
async fn draining_origin(goaway: Arc<tokio::sync::Notify>, release: Arc<tokio::sync::Notify>) -> Origin {
    let (l, _) = listen().await;
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    counted(l, move |s, answered| {
        let drain = first.swap(false, Ordering::SeqCst);
        let (goaway, release) = (Arc::clone(&goaway), Arc::clone(&release));
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(s).await else { return };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                answered.fetch_add(1, Ordering::SeqCst);
                if !drain {
                    if let Ok(mut body) = respond.send_response(http::Response::new(()), false) {
                        let _ = body.send_data(Bytes::from_static(b"ok"), true);
                    }
                    continue;
                }
                conn.graceful_shutdown();
                goaway.notify_one();
                let release = Arc::clone(&release);
                tokio::spawn(async move {
                    release.notified().await;
                    if let Ok(mut body) = respond.send_response(http::Response::new(()), false) {
                        let _ = body.send_data(Bytes::from_static(b"held"), true);
                    }
                });
            }
        });
    })
}

#[tokio::test]
async fn a_connection_that_got_goaway_is_not_handed_out_and_its_streams_finish() {
    let (goaway, release) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let origin = draining_origin(Arc::clone(&goaway), Arc::clone(&release)).await;
    let rec = Arc::new(Recorder::default());
    let pool = Pool::new(PoolConfig::default(), rec.clone());
    let t = Target::h2c(origin.addr);

    let held = pool.checkout(t, Freshness::IdlePreferred).await.unwrap();
    let drained_id = held.connection_id();
    let held = tokio::spawn(held.send(get("/held")));
    goaway.notified().await;

    // Once the GOAWAY is read, checkouts get a new connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let session = loop {
        let s = pool.checkout(t, Freshness::IdlePreferred).await.unwrap();
        if s.connection_id() != drained_id {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the drained connection is still handed out");
        drop(s);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(read_all(session.send(get("/")).await.unwrap()).await, "ok");
    for _ in 0..5 {
        let s = pool.checkout(t, Freshness::IdlePreferred).await.unwrap();
        assert_ne!(s.connection_id(), drained_id, "handed out again");
    }

    // The stream below the GOAWAY's last stream id completes.
    release.notify_one();
    let resp = tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap().unwrap();
    assert_eq!(read_all(resp).await, "held");
    assert_eq!(origin.conns(), 2);
    assert!(rec.io_errors.lock().is_empty(), "{:?}", rec.io_errors.lock());
}
