//! The admin API (SPEC): `GET /healthz`, `GET /hosts`, `POST /maintenance`,
//! `POST /weight`, `POST /reload`, `GET /metrics`; the dashboard `GET /`,
//! its event stream `GET /events` and the recent check results `GET
//! /checks`. Writes need `Authorization: Bearer <admin_token>` when a token
//! is set; reads, the page and the stream never do (they change nothing).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::Incoming;
use vigil_hostdb::{OriginKey, PoolView};

use self::body::{MaintenanceBody, ServerBody, WeightBody};
use crate::app::Shared;
use crate::events::EventBody;

mod body;

const MAX_BODY: usize = 64 * 1024;

/// The dashboard: one self-contained page (inline CSS and JS, nothing from
/// elsewhere), built into the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the admin API answers with: a whole body, or the event stream.
pub(crate) type AdminBody = Either<Full<Bytes>, EventBody>;

/// hyper's service entry point.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<AdminBody>, Infallible> {
    if req.uri().path() == "/events" && req.method() == Method::GET {
        return Ok(match events(&shared, &req) {
            Ok(resp) => resp,
            Err(answer) => answer.map(Either::Left),
        });
    }
    Ok(handle(&shared, req).await.map(Either::Left))
}

/// `GET /events`: server-sent events. Query: `since=<id>` replays the
/// recent transitions after that id first (`Last-Event-ID`, which a
/// reconnecting `EventSource` sends, wins over it); `checks=1` adds every
/// check result (`event: check`).
#[allow(clippy::result_large_err, reason = "the error is the answer to send, made once per stream")]
fn events(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
) -> Result<Response<AdminBody>, Response<Full<Bytes>>> {
    let (mut since, mut checks) = (None, false);
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => {
                since =
                    Some(v.parse::<u64>().map_err(|_| {
                        bad(format!("since={v:?}: expected the id of an event (a whole number)"))
                    })?)
            }
            "checks" => {
                checks = match v {
                    "1" | "true" | "" => true,
                    "0" | "false" => false,
                    _ => return Err(bad(format!("checks={v:?}: expected 1 or 0"))),
                }
            }
            _ => return Err(bad(format!("unknown parameter {k:?} (known: since, checks)"))),
        }
    }
    if let Some(last) = req.headers().get("last-event-id") {
        let last = last.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok());
        since = Some(last.ok_or_else(|| bad("Last-Event-ID: expected the id of an event".to_owned()))?);
    }
    if shared.events.clients() >= crate::events::MAX_CLIENTS {
        return Err(json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ok": false, "error": format!("{} event streams open already", crate::events::MAX_CLIENTS)}),
        ));
    }
    let s = Arc::clone(shared);
    let stats = Arc::new(move || crate::events::stats_frame(&s));
    let body = shared.events.subscribe(&shared.node, stats, since, checks);
    let mut resp = Response::new(Either::Right(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx in front would otherwise hold the frames back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// `GET /`: the page, with headers that keep it from being framed or from
/// loading anything from elsewhere.
fn dashboard() -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::OK, DASHBOARD);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match (path.as_str(), method) {
        ("/", Method::GET | Method::HEAD) => dashboard(),
        ("/healthz", Method::GET | Method::HEAD) => text(StatusCode::OK, "ok\n"),
        ("/checks", Method::GET | Method::HEAD) => json(StatusCode::OK, &shared.events.checks_doc()),
        ("/hosts", Method::GET | Method::HEAD) => json(StatusCode::OK, &hosts(shared)),
        ("/metrics", Method::GET | Method::HEAD) => {
            let mut resp = text(StatusCode::OK, shared.metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            resp
        }
        ("/maintenance" | "/reload" | "/weight", Method::POST) => {
            if let Some(denied) = cross_site(&req).or_else(|| authorize(shared, &req)) {
                return denied;
            }
            if path == "/reload" {
                // Reading two small files and swapping: quick, but it is file
                // I/O, so off the async workers.
                let s = Arc::clone(shared);
                return match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(Ok(summary)) => {
                        json(StatusCode::OK, &serde_json::json!({"ok": true, "message": summary}))
                    }
                    Ok(Err(e)) => {
                        json(StatusCode::BAD_REQUEST, &serde_json::json!({"ok": false, "error": e}))
                    }
                    Err(e) => json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({"ok": false, "error": e.to_string()}),
                    ),
                };
            }
            if path == "/weight" {
                return weight(shared, req).await;
            }
            maintenance(shared, req).await
        }
        ("/" | "/healthz" | "/hosts" | "/metrics" | "/checks", _) => {
            allow(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"), "GET, HEAD")
        }
        ("/events", _) => allow(text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"), "GET"),
        ("/maintenance" | "/reload" | "/weight", _) => {
            allow(text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"), "POST")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: / /healthz /hosts /metrics /events /checks /maintenance /weight /reload\n",
        ),
    }
}

/// The `/hosts` document: HostDB's snapshot, this node's id, pool counts.
pub(crate) fn hosts(shared: &Shared) -> serde_json::Value {
    let mut view = shared.db.snapshot(tokio::time::Instant::now().into_std());
    view.node = shared.node.clone();
    let routes = shared.routes.load();
    view.fill_pool(|origin, addr| {
        let c = shared.pool.counts_of(&[routes.upstream(origin).upstream.target(addr)]);
        PoolView { idle: c.idle, in_use: c.in_use }
    });
    let mut doc = serde_json::to_value(&view).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
    if let Some(origins) = doc.get_mut("origins").and_then(serde_json::Value::as_array_mut) {
        // The check that applies: its kind, and the port it goes to when not the service's.
        let checks = shared.checker.config();
        for o in origins.iter_mut() {
            let key = o["origin"].as_str().and_then(|k| k.parse::<vigil_hostdb::OriginKey>().ok());
            let check = key.as_ref().and_then(|k| checks.matching(k));
            if let (Some(check), serde_json::Value::Object(o)) = (check, o) {
                let mut c = serde_json::json!({"kind": check.kind.name()});
                if let Some(port) = check.port {
                    c["port"] = port.into();
                }
                o.insert("check".into(), c);
            }
        }
        // An origin with `max_connections`: its bound and what is in flight against it.
        for (key, q) in routes.queues() {
            let at = origins.iter_mut().find(|o| o["origin"] == key.as_str());
            if let Some(serde_json::Value::Object(o)) = at {
                o.insert(
                    "queue".into(),
                    serde_json::json!({"max_connections": q.max, "in_flight": q.in_flight()}),
                );
            }
        }
        // In a cluster: which node checks each server, as this node sees it.
        if let Some(cluster) = shared.cluster.get() {
            for o in origins.iter_mut() {
                let Some(key) = o["origin"].as_str().and_then(|k| k.parse::<OriginKey>().ok()) else {
                    continue;
                };
                for s in o["servers"].as_array_mut().into_iter().flatten() {
                    let addr = s["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                    if let (Some(addr), serde_json::Value::Object(s)) = (addr, s) {
                        let owner = cluster.owner(&key, addr).map(|n| n.to_string());
                        s.insert("checked_by".into(), owner.into());
                    }
                }
            }
        }
    }
    if let (Some(cluster), serde_json::Value::Object(d)) = (shared.cluster.get(), &mut doc) {
        let live: Vec<String> = cluster.live_nodes().iter().map(ToString::to_string).collect();
        d.insert("cluster".into(), serde_json::json!({"node": cluster.node_id(), "live_nodes": live}));
    }
    doc
}

/// Refuses a write a browser sends on behalf of another site's page: its
/// `Origin` names a host other than the one it addressed (or
/// `Sec-Fetch-Site` says cross-site). Without a token a page elsewhere
/// could otherwise post a form here; the admin page itself is same-origin,
/// and command-line clients send no `Origin`.
fn cross_site(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let h = req.headers();
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = h.get(header::ORIGIN).map(|v| {
        let o = v.to_str().unwrap_or("");
        o.split_once("://").map_or(o, |(_, rest)| rest).to_owned()
    });
    let foreign = match origin_host {
        Some(o) => host.is_none_or(|h| !h.eq_ignore_ascii_case(&o)),
        None => h.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site"),
    };
    foreign.then(|| {
        json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"ok": false, "error": "admin writes from another site's page are refused"}),
        )
    })
}

fn authorize(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let config = shared.config.load();
    let token = config.admin_token.as_deref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return None;
    }
    let mut resp = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"ok": false, "error": "admin writes need Authorization: Bearer <admin_token>"}),
    );
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 400 with `msg`.
fn bad(msg: String) -> Response<Full<Bytes>> {
    json(StatusCode::BAD_REQUEST, &serde_json::json!({"ok": false, "error": msg}))
}

/// Reads and checks a write naming a server: the body, its origin and
/// server, and the origin, which must have that server. The answer to send
/// instead when anything is wrong (400, or 404 for a server not there).
async fn server_write<B: ServerBody>(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<(B, Arc<vigil_hostdb::Origin>, SocketAddr), Response<Full<Bytes>>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(bad(format!("cannot read the body: {e}"))),
    };
    let (b, origin, server) = body::decode::<B>(&bytes).map_err(bad)?;
    match shared.db.origin_by_key(&origin).filter(|o| o.server(server).is_some()) {
        Some(o) => Ok((b, o, server)),
        None => Err(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"ok": false, "error": format!("no server {server} in origin {origin}")}),
        )),
    }
}

async fn maintenance(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (m, origin, server) = match server_write::<MaintenanceBody>(shared, req).await {
        Ok(w) => w,
        Err(answer) => return answer,
    };
    let Some(record) = origin.server(server) else {
        return bad(format!("{server} left {} meanwhile", origin.key()));
    };
    let changed = record.set_maintenance(m.on);
    json(
        StatusCode::OK,
        &serde_json::json!({"ok": true, "origin": origin.key().as_str(), "server": server.to_string(), "maintenance": m.on, "changed": changed}),
    )
}

/// `POST /weight`: a server's weight until the next reload (HAProxy's
/// `set server weight`); 0 drains it.
async fn weight(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (w, origin, server) = match server_write::<WeightBody>(shared, req).await {
        Ok(w) => w,
        Err(answer) => return answer,
    };
    match origin.set_weight(server, w.weight) {
        Ok(was) => {
            tracing::warn!(origin = %origin.key(), %server, weight = w.weight, was, "weight set by the admin API (until the next reload)");
            json(
                StatusCode::OK,
                &serde_json::json!({"ok": true, "origin": origin.key().as_str(), "server": server.to_string(), "weight": w.weight, "was": was}),
            )
        }
        Err(e) => bad(e),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn allow(mut resp: Response<Full<Bytes>>, methods: &'static str) -> Response<Full<Bytes>> {
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(methods));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
