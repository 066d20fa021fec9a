use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use vigil_session::{ErrorKind, Freshness, Pool, PoolConfig, Target};

use crate::{Recorder, get, raw_origin};

#[tokio::test]
async fn connect_refused_is_typed_and_observed() {
    // Bind, learn the port, close: nothing listens there any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let rec = Arc::new(Recorder::default());
    let pool = Pool::new(PoolConfig::default(), rec.clone());
    let err = pool.checkout(Target::http1(addr), Freshness::IdlePreferred).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectRefused);
    assert!(err.is_connect() && err.is_l4_failure() && !err.is_sent());
    assert_eq!(*rec.connects.lock(), [(addr, Err(ErrorKind::ConnectRefused))]);
    assert_eq!(pool.metrics().connects_failed(), 1);
    assert_eq!(pool.targets(), 0, "a failed connect leaves no entry behind");
}

#[tokio::test]
async fn connect_timeout_when_the_accept_queue_is_full() {
    // A listener that never accepts, with its queue filled: Linux drops further SYNs.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    let config = PoolConfig { connect_timeout: Duration::from_millis(300), ..Default::default() };
    let pool = Pool::new(config, Arc::new(Recorder::default()));
    let err = pool.checkout(Target::http1(addr), Freshness::IdlePreferred).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectTimeout, "{err}");
    drop(listener);
}

#[tokio::test]
async fn a_reset_before_the_head_is_typed_sent_and_observed() {
    let origin = raw_origin(b"", true).await; // reads the request, closes without a word
    let rec = Arc::new(Recorder::default());
    let pool = Pool::new(PoolConfig::default(), rec.clone());
    let s = pool.checkout(Target::http1(origin.addr), Freshness::IdlePreferred).await.unwrap();
    let err = s.send(get("/")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClosedBeforeHead, "{err}");
    assert!(err.is_sent() && !err.is_reused() && err.is_l4_failure());
    let get_policy = vigil_session::RetryPolicy::request(&http::Method::GET);
    assert!(!err.may_retry_on_fresh(get_policy), "a fresh session's failure is the server's");
    assert!(err.may_retry_elsewhere(get_policy), "a GET may go to another server");
    assert_eq!(*rec.io_errors.lock(), [(origin.addr, ErrorKind::ClosedBeforeHead)]);
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts::default());
}

#[tokio::test]
async fn a_server_dying_mid_response_fails_the_body_and_discards_the_session() {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part";
    let origin = raw_origin(REPLY, true).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(Recorder::default()));
    let resp = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(!err.to_string().is_empty());
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts::default(), "discarded, not pooled");
}

#[tokio::test]
async fn garbage_from_the_origin_is_a_protocol_error_and_the_session_is_discarded() {
    let origin = raw_origin(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", false).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(Recorder::default()));
    let err = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.is_sent() && err.is_l4_failure(), "SPEC: a garbage answer is an L4 failure");
    assert_eq!(pool.counts(origin.addr), vigil_session::PoolCounts::default());
}

#[tokio::test]
async fn an_oversized_response_head_is_response_too_large() {
    let mut reply = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    reply.extend(std::iter::repeat_n(b'a', 100_000));
    reply.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    let origin = raw_origin(reply.leak(), false).await;
    let config = PoolConfig { max_response_head_bytes: 16 * 1024, ..Default::default() };
    let pool = Pool::new(config, Arc::new(Recorder::default()));
    let err = pool.request(Target::http1(origin.addr), Freshness::IdlePreferred, get("/")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResponseTooLarge, "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_send_cancelled_or_timed_out_leaves_no_session_counted_in_use() {
    // The origin reads the request and never answers.
    let origin = raw_origin(b"", false).await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(vigil_session::NoopObserver));
    let target = Target::http1(origin.addr);
    let err = pool
        .try_request(target, Freshness::IdlePreferred, get("/"), Some(Duration::from_millis(300)))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.0.kind(), ErrorKind::ResponseTimeout);
    assert_eq!(pool.counts(origin.addr).in_use, 0, "the timed-out session is not counted in use");

    // A caller dropping the send (its client went away) is the same case.
    let send = pool.request(target, Freshness::IdlePreferred, get("/"));
    assert!(tokio::time::timeout(Duration::from_millis(300), send).await.is_err());
    assert_eq!(pool.counts(origin.addr).in_use, 0, "the dropped session is not counted in use");
    assert_eq!(pool.targets(), 0, "and leaves no entry behind");
}

#[tokio::test(start_paused = true)]
async fn a_sessions_response_timer_is_armed_anew_for_each_request() {
    // One timer per session, moved on per request (see `h1::Kept`): it must
    // count from each send, after firing idle, and end only its own send.
    let origin = crate::h1_origin().await;
    let pool = Pool::new(PoolConfig::default(), Arc::new(vigil_session::NoopObserver));
    let target = Target::http1(origin.addr);
    let timeout = Some(Duration::from_millis(300));
    let send = |path: &'static str, t: Option<Duration>| {
        let pool = pool.clone();
        async move {
            match pool.try_request(target, Freshness::IdlePreferred, get(path), t).await {
                Ok(resp) => Ok(resp.into_body().collect().await.unwrap().to_bytes()),
                Err((e, _)) => Err(e.kind()),
            }
        }
    };
    assert_eq!(send("/", timeout).await.unwrap(), "ok");
    // Idle past the first deadline: the session's timer fires unobserved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Reused: 200 ms of work within a 300 ms limit counted from this send.
    assert_eq!(send("/slow", timeout).await.unwrap(), "slow");
    assert_eq!(send("/slow", timeout).await.unwrap(), "slow");
    assert_eq!(origin.conns(), 1, "one session throughout");
    // Too slow for its limit: a timeout, and that session is closed.
    assert_eq!(send("/slow", Some(Duration::from_millis(100))).await, Err(ErrorKind::ResponseTimeout));
    assert_eq!(send("/", timeout).await.unwrap(), "ok");
    assert_eq!(origin.conns(), 2, "the timed-out session was not reused");
    assert_eq!(pool.counts(origin.addr).in_use, 0);
}
