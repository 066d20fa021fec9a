//! A minimal HTTP/1.1 client for `vigil status` and the demo's admin calls.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// Sends one request to `addr` and reads the whole answer (5 s bound).
pub(crate) async fn fetch(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<String>,
) -> Result<(http::StatusCode, String), String> {
    let go = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let resp = tx.send_request(req).await.map_err(|e| format!("{addr}: {e}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| format!("{addr}: {e}"))?.to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .map_err(|_| format!("{addr}: no answer within 5 s"))?
}
