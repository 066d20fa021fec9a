use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use vigil_session::{Freshness, NoopObserver, Pool, PoolConfig, PoolCounts, Target, full_body};

use crate::{Pieces, get, h1_origin, raw_origin, read_all};

fn post(path: &str, body: vigil_session::RequestBody) -> http::Request<vigil_session::RequestBody> {
    http::Request::post(path).header("host", "origin.test").body(body).unwrap()
}

#[tokio::test]
async fn chunked_uploads_and_chunked_answers_stream_and_keep_the_session() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    for _ in 0..3 {
        // Unknown length out (chunked), unknown length back (hyper echoes chunked).
        let body = Pieces { left: 5, size: 1000 }.boxed();
        let resp = pool.request(t, Freshness::IdlePreferred, post("/echo", body)).await.unwrap();
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        assert_eq!(read_all(resp).await, vec![b'p'; 5000]);
        // A known length out, chunked back.
        let resp = pool
            .request(t, Freshness::IdlePreferred, post("/echo", full_body(Bytes::from_static(b"hello"))))
            .await
            .unwrap();
        assert_eq!(read_all(resp).await, "hello");
    }
    assert_eq!(origin.conns(), 1, "every exchange was read to its end and the session reused");
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 1, in_use: 0 });
}

#[tokio::test]
async fn an_upload_the_origin_echoes_as_it_reads_does_not_deadlock() {
    // 16 MiB each way is far more than loopback's socket buffers: a client
    // that wrote the whole body before reading would wait forever.
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let body = Pieces { left: 256, size: 64 * 1024 }.boxed();
    let exchange = async {
        let resp = pool.request(t, Freshness::IdlePreferred, post("/echo", body)).await.unwrap();
        read_all(resp).await.len()
    };
    let echoed = tokio::time::timeout(Duration::from_secs(30), exchange).await.expect("no deadlock");
    assert_eq!(echoed, 16 * 1024 * 1024);
    assert_eq!(pool.counts(origin.addr), PoolCounts { idle: 1, in_use: 0 });
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_is_delivered_and_the_session_closed() {
    // The origin answers after the head and reads no more of the body.
    const REPLY: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nnope";
    let origin = raw_origin(REPLY, false).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let body = Pieces { left: 256, size: 64 * 1024 }.boxed();
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        pool.request(t, Freshness::IdlePreferred, post("/", body)),
    )
    .await
    .expect("the answer is read while the upload is stuck")
    .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(read_all(resp).await, "nope");
    assert_eq!(pool.counts(origin.addr), PoolCounts::default(), "half an upload: never reused");
}

#[tokio::test]
async fn bodies_of_every_framing_from_a_raw_origin() {
    // Chunked with an extension and a trailer, then a body cut by close.
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n";
    let origin = raw_origin(CHUNKED, false).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let resp = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap();
    assert_eq!(read_all(resp).await, "abcde");
    assert_eq!(pool.counts(origin.addr).idle, 1, "a chunked body read to its end keeps the session");

    const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nall of it";
    let origin = raw_origin(UNTIL_CLOSE, true).await;
    let resp = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap();
    assert_eq!(read_all(resp).await, "all of it");
    assert_eq!(pool.counts(origin.addr), PoolCounts::default(), "a body ended by close ends the session");

    const BAD_CHUNK: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let origin = raw_origin(BAD_CHUNK, false).await;
    let resp = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("chunk size"), "{err}");
    assert_eq!(pool.counts(origin.addr), PoolCounts::default());

    const SMUGGLE: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let origin = raw_origin(SMUGGLE, false).await;
    let err = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap_err();
    assert_eq!(err.kind(), vigil_session::ErrorKind::Protocol);
}

#[tokio::test]
async fn sequential_requests_reuse_one_session() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let mut ids = Vec::new();
    for i in 0..20 {
        let s = pool.checkout(t, Freshness::IdlePreferred).await.unwrap();
        assert_eq!(s.is_reused(), i > 0);
        ids.push(s.connection_id());
        assert_eq!(read_all(s.send(get("/")).await.unwrap()).await, "ok");
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!((origin.conns(), origin.requests()), (1, 20));
    assert_eq!((pool.metrics().connects_ok(), pool.metrics().reused()), (1, 19));
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts { idle: 1, in_use: 0 });
}

#[tokio::test]
async fn a_session_returns_only_when_its_body_was_read_to_the_end() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    let resp = pool.request(t, Freshness::IdlePreferred, get("/big")).await.unwrap();
    assert_eq!(pool.counts(origin.addr).in_use, 1, "in use while the body is unread");
    drop(resp); // abandoned half-way: the session must not be reused
    assert_eq!(pool.counts(origin.addr).idle, 0);
    let resp = pool.request(t, Freshness::IdlePreferred, get("/big")).await.unwrap();
    assert_eq!(read_all(resp).await.len(), 256 * 1024);
    assert_eq!(pool.counts(origin.addr).idle, 1);
    assert_eq!(origin.conns(), 2, "the abandoned session was closed, not reused");
}

#[tokio::test]
async fn fresh_checkouts_open_new_connections_that_then_serve_requests() {
    let origin = h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    for _ in 0..3 {
        let resp = pool.request(t, Freshness::Fresh, get("/")).await.unwrap();
        read_all(resp).await;
    }
    assert_eq!(origin.conns(), 3);
    assert_eq!(pool.counts(origin.addr).idle, 3, "fresh sessions join the pool");
    let s = pool.checkout(t, Freshness::IdlePreferred).await.unwrap();
    assert!(s.is_reused());
    drop(s); // unused: goes straight back
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts { idle: 3, in_use: 0 });
}

#[tokio::test]
async fn the_server_closing_idle_sessions_never_fails_a_request() {
    // Answers keep-alive, then closes right after: every pooled session dies idle.
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let origin = raw_origin(REPLY, true).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    for _ in 0..50 {
        let resp = pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap();
        assert_eq!(read_all(resp).await, "ok");
    }
    assert_eq!(origin.requests(), 50);
}

#[tokio::test]
async fn stray_bytes_on_an_idle_session_close_it() {
    // A response, then junk while idle.
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokJUNK";
    let origin = raw_origin(REPLY, false).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(NoopObserver));
    let t = Target::http1(origin.addr);
    read_all(pool.request(t, Freshness::IdlePreferred, get("/")).await.unwrap()).await;
    // Whether the junk is seen on check-in, while idle or on the next send,
    // the session is never used for a second request.
    let second = pool.request(t, Freshness::IdlePreferred, get("/")).await;
    if let Ok(resp) = second {
        read_all(resp).await;
    }
    assert_eq!(origin.conns(), 2);
}
