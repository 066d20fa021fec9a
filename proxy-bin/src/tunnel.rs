//! An upgraded connection's two directions, carried until either side is
//! done or the whole tunnel idles past its timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

/// Bytes one direction reads at a time.
const CHUNK: usize = 16 * 1024;

/// Carries bytes between a client (its two halves, and `early`: what it
/// sent after the upgrade request before the answer) and the origin's
/// connection. A side that closes has its close passed on (the other side
/// may still answer, as a WebSocket close handshake does); an error on
/// either side, `idle` without a byte either way, or `stop` ends both.
/// Returns the bytes sent to the client and to the origin.
pub(crate) async fn run<R, W, U>(
    client_r: R,
    early: Bytes,
    client_w: W,
    upstream: U,
    idle: Duration,
    stop: impl Future<Output = ()>,
) -> (u64, u64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let (to_client, to_origin) = (AtomicU64::new(0), AtomicU64::new(0));
    let (origin_r, origin_w) = tokio::io::split(upstream);
    let up = pump(client_r, origin_w, early, &to_origin, &last, epoch);
    let down = pump(origin_r, client_w, Bytes::new(), &to_client, &last, epoch);
    let idle_out = async {
        loop {
            let deadline = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        done = async { tokio::try_join!(up, down) } => {
            if let Err(e) = done {
                tracing::debug!(error = %e, "tunnel ended by an error");
            }
        }
        () = idle_out => tracing::debug!(?idle, "tunnel idle past tunnel_idle_timeout; closing"),
        () = stop => tracing::debug!("the server stops: tunnel closed"),
    }
    (to_client.load(Ordering::Relaxed), to_origin.load(Ordering::Relaxed))
}

/// One direction: `first`, then everything `r` gives, into `w`; at `r`'s
/// end, `w` is shut down (a half close, passed on).
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    first: Bytes,
    count: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> std::io::Result<()> {
    if !first.is_empty() {
        w.write_all(&first).await?;
        count.fetch_add(first.len() as u64, Ordering::Relaxed);
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_closes_after_its_idle_timeout_and_a_busy_one_does_not() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (origin, mut origin_peer) = tokio::io::duplex(1024);
        let (cr, cw) = tokio::io::split(client);
        let started = Instant::now();
        let tunnel = tokio::spawn(run(
            cr,
            Bytes::from_static(b"early"),
            cw,
            origin,
            Duration::from_secs(10),
            pending(),
        ));
        let mut got = [0u8; 5];
        origin_peer.read_exact(&mut got).await.unwrap_or_default();
        assert_eq!(&got, b"early", "what the client sent before the 101 goes first");
        // Traffic every 6 s keeps it open past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"ping").await.unwrap_or_default();
            let mut ping = [0u8; 4];
            origin_peer.read_exact(&mut ping).await.unwrap_or_default();
            assert_eq!(&ping, b"ping");
        }
        origin_peer.write_all(b"pong").await.unwrap_or_default();
        let mut pong = [0u8; 4];
        client_peer.read_exact(&mut pong).await.unwrap_or_default();
        assert_eq!(&pong, b"pong");
        let (to_client, to_origin) = tunnel.await.unwrap_or_default();
        assert_eq!((to_client, to_origin), (4, 5 + 12));
        let lived = started.elapsed();
        assert!(lived >= Duration::from_secs(28) && lived < Duration::from_secs(29), "{lived:?}");
    }

    #[tokio::test]
    async fn a_close_is_passed_on_and_the_other_way_still_finishes() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (origin, mut origin_peer) = tokio::io::duplex(1024);
        let (cr, cw) = tokio::io::split(client);
        let tunnel = tokio::spawn(run(cr, Bytes::new(), cw, origin, Duration::from_secs(60), pending()));
        client_peer.write_all(b"bye").await.unwrap_or_default();
        client_peer.shutdown().await.unwrap_or_default();
        let mut seen = Vec::new();
        origin_peer.read_to_end(&mut seen).await.unwrap_or_default();
        assert_eq!(seen, b"bye", "the client's close reached the origin after its bytes");
        origin_peer.write_all(b"ok").await.unwrap_or_default();
        drop(origin_peer);
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap_or_default();
        assert_eq!(back, b"ok");
        assert_eq!(tunnel.await.unwrap_or_default(), (2, 3));
    }
}

#[cfg(test)]
mod stop_tests {
    use super::*;

    #[tokio::test]
    async fn the_server_stopping_closes_a_tunnel() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (origin, _origin_peer) = tokio::io::duplex(64);
        let (cr, cw) = tokio::io::split(client);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let tunnel = tokio::spawn(run(cr, Bytes::new(), cw, origin, Duration::from_secs(3600), async {
            let _ = rx.await;
        }));
        let _ = tx.send(());
        let ended = tokio::time::timeout(Duration::from_secs(5), tunnel).await;
        assert!(matches!(ended, Ok(Ok((0, 0)))), "{ended:?}");
    }
}
