//! The event stream (`GET /events`) and what the dashboard reads besides
//! `/hosts`: HostDB's changes as server-sent events, each check result for
//! the clients that ask, per-origin request counts every second, and a
//! small ring of recent check results per server (`GET /checks`).
//!
//! HostDB calls its subscribers on the thread that made the change (a
//! request's, on an L4 failure), and the checker calls its hook on a
//! check's: both only stamp the time and `try_send` into the hub's bounded
//! inbox. One hub task turns what arrives into frames (JSON, with the
//! server's state after the change), keeps the last [`RECENT`] transitions
//! and the check history, and hands each frame to every client through a
//! `broadcast` ring. Each client has a task that moves frames from the
//! rings into its own queue of at most [`BEHIND`] frames, which its
//! response body drains as fast as the socket takes them. A slow reader
//! (its socket full, so hyper stops polling the body) fills its queue and
//! is dropped at once, counted in `vigil_events_clients_dropped_total`:
//! whatever a client does, it holds at most [`BEHIND`] frames (shared
//! `Bytes`, the JSON written once for all clients).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::Frame as BodyFrame;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use vigil_hostdb::{CheckResult, Event, HostDb, OriginKey};

use crate::app::Shared;

/// Transitions kept for a client that connects later (`?since=`,
/// `Last-Event-ID`) and for the dashboard's timeline.
pub(crate) const RECENT: usize = 256;
/// Check results kept per server for `GET /checks`.
pub(crate) const HISTORY: usize = 30;
/// Frames a client may fall behind by before it is dropped; also the
/// depth of the broadcast rings (a task that could not keep up with them
/// is behind too).
pub(crate) const BEHIND: usize = 1024;
/// Event streams open at once; past it a new one gets 503.
pub(crate) const MAX_CLIENTS: u64 = 64;
/// What the hub's inbox holds; past it, producers drop what they have
/// (counted in `vigil_events_lost_total`) rather than wait.
const INBOX: usize = 8192;
/// How often a client gets a `stats` frame (which also finds a client gone).
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often the check history forgets servers HostDB no longer has.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The counters of `/metrics` (`vigil_events_*`).
#[derive(Debug, Default)]
pub(crate) struct EventCounters {
    /// Event streams open now.
    pub(crate) clients: AtomicU64,
    /// Streams ended because their client fell too far behind.
    pub(crate) dropped_clients: AtomicU64,
    /// Events and check results dropped before the hub: its inbox was full.
    pub(crate) lost: AtomicU64,
}

/// What a producer hands the hub.
enum Input {
    Event { ts_ms: u64, event: Event },
    Check { ts_ms: u64, origin: OriginKey, server: SocketAddr, result: CheckResult },
}

/// One frame as sent, with the transition id it carries (0 for others).
#[derive(Debug, Clone)]
struct Frame {
    id: u64,
    bytes: Bytes,
}

/// One remembered check result.
#[derive(Debug, Clone, Copy)]
struct Point {
    ts_ms: u64,
    passed: bool,
    latency_ms: f64,
}

#[derive(Debug)]
struct Inner {
    transitions: broadcast::Sender<Frame>,
    checks: broadcast::Sender<Frame>,
    recent: Mutex<VecDeque<Frame>>,
    history: Mutex<HashMap<(OriginKey, SocketAddr), VecDeque<Point>>>,
    next_id: AtomicU64,
    /// Process start (unix ms): a client that sees it change knows ids
    /// started over.
    boot_ms: u64,
    stop: watch::Sender<bool>,
    counters: Arc<EventCounters>,
}

/// The hub: producers' side and the clients' side.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    inbox: mpsc::Sender<Input>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

/// Unix time in milliseconds (wall clock: these are timestamps for people).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Events {
    /// Starts the hub task (inside the runtime). It reads server states
    /// from `db`.
    pub(crate) fn start(db: HostDb, counters: Arc<EventCounters>) -> Self {
        let (inbox, rx) = mpsc::channel(INBOX);
        let inner = Arc::new(Inner {
            transitions: broadcast::channel(BEHIND).0,
            checks: broadcast::channel(BEHIND).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            history: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            boot_ms: unix_ms(),
            stop: watch::channel(false).0,
            counters,
        });
        tokio::spawn(hub(Arc::clone(&inner), db, rx));
        Self { inbox, inner }
    }

    /// HostDB's subscriber: stamps and queues (never waits).
    pub(crate) fn on_event(&self, event: &Event) {
        self.push(Input::Event { ts_ms: unix_ms(), event: event.clone() });
    }

    /// The checker's hook: stamps and queues (never waits).
    pub(crate) fn on_check(&self, origin: &OriginKey, server: SocketAddr, result: &CheckResult) {
        self.push(Input::Check { ts_ms: unix_ms(), origin: origin.clone(), server, result: result.clone() });
    }

    fn push(&self, input: Input) {
        if self.inbox.try_send(input).is_err() {
            self.inner.counters.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Streams open now.
    pub(crate) fn clients(&self) -> u64 {
        self.inner.counters.clients.load(Ordering::Relaxed)
    }

    /// Ends every stream (at shutdown: an open stream must not hold the
    /// drain for its whole grace period).
    pub(crate) fn close(&self) {
        self.inner.stop.send_replace(true);
    }

    /// `GET /checks`: the recent check results of every server, oldest
    /// first, as `[unix_ms, 1|0, latency_ms]`.
    pub(crate) fn checks_doc(&self) -> Value {
        let history = self.inner.history.lock();
        let mut servers: Vec<Value> = history
            .iter()
            .map(|((origin, server), points)| {
                let results: Vec<Value> = points
                    .iter()
                    .map(|p| json!([p.ts_ms, u8::from(p.passed), (p.latency_ms * 100.0).round() / 100.0]))
                    .collect();
                json!({"origin": origin.as_str(), "server": server.to_string(), "results": results})
            })
            .collect();
        drop(history);
        servers.sort_by(|a, b| {
            (a["origin"].as_str(), a["server"].as_str()).cmp(&(b["origin"].as_str(), b["server"].as_str()))
        });
        json!({"keep": HISTORY, "servers": servers})
    }

    /// A new client's stream: first a `hello`, then the recent transitions
    /// after `since` (when given), then live frames, `stats` every second
    /// and, with `checks`, each check result.
    pub(crate) fn subscribe(&self, node: &str, stats: Stats, since: Option<u64>, checks: bool) -> EventBody {
        let live = self.inner.transitions.subscribe();
        let check_rx = checks.then(|| self.inner.checks.subscribe());
        let replay: Vec<Frame> = match since {
            Some(since) => self.inner.recent.lock().iter().filter(|f| f.id > since).cloned().collect(),
            None => Vec::new(),
        };
        let (tx, rx) = mpsc::channel(BEHIND);
        let client = Client {
            node: node.to_owned(),
            stats,
            inner: Arc::clone(&self.inner),
            live,
            checks: check_rx,
            stop: self.inner.stop.subscribe(),
            tx,
        };
        self.inner.counters.clients.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(client.run(replay));
        EventBody { rx }
    }
}

/// The hub task: frames, the recent ring, the history.
async fn hub(inner: Arc<Inner>, db: HostDb, mut rx: mpsc::Receiver<Input>) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let input = tokio::select! {
            input = rx.recv() => match input {
                Some(i) => i,
                None => return,
            },
            _ = sweep.tick() => {
                inner.history.lock().retain(|(origin, server), _| {
                    db.origin_by_key(origin).is_some_and(|o| o.server(*server).is_some())
                });
                continue;
            }
        };
        match input {
            Input::Event { ts_ms, event } => {
                let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                let Some(mut doc) = transition_json(&event) else { continue };
                doc["id"] = id.into();
                doc["ts_ms"] = ts_ms.into();
                if let (Some(origin), Some(server)) = (event_origin(&event), event_server(&event)) {
                    let now = tokio::time::Instant::now().into_std();
                    if let Some(view) = db.server_view(origin, server, now) {
                        let mut state = serde_json::to_value(&view).unwrap_or(Value::Null);
                        if let Value::Object(m) = &mut state {
                            // HostDB knows nothing of the pool: its zeros would mislead.
                            m.remove("pool");
                        }
                        doc["state"] = state;
                    }
                }
                if let Event::Servers { origin, removed, .. } = &event {
                    let mut history = inner.history.lock();
                    for s in removed {
                        history.remove(&(origin.clone(), *s));
                    }
                }
                let frame = Frame { id, bytes: Bytes::from(format!("id: {id}\ndata: {doc}\n\n")) };
                let mut recent = inner.recent.lock();
                if recent.len() == RECENT {
                    recent.pop_front();
                }
                recent.push_back(frame.clone());
                drop(recent);
                let _ = inner.transitions.send(frame);
            }
            Input::Check { ts_ms, origin, server, result } => {
                let latency_ms = result.latency.as_secs_f64() * 1000.0;
                {
                    let mut history = inner.history.lock();
                    let ring = history.entry((origin.clone(), server)).or_default();
                    if ring.len() == HISTORY {
                        ring.pop_front();
                    }
                    ring.push_back(Point { ts_ms, passed: result.passed, latency_ms });
                }
                if inner.checks.receiver_count() > 0 {
                    let doc = json!({
                        "ts_ms": ts_ms, "origin": origin.as_str(), "server": server.to_string(),
                        "pass": result.passed, "latency_ms": (latency_ms * 100.0).round() / 100.0,
                        "detail": &*result.detail,
                    });
                    let bytes = Bytes::from(format!("event: check\ndata: {doc}\n\n"));
                    let _ = inner.checks.send(Frame { id: 0, bytes });
                }
            }
        }
    }
}

fn event_origin(e: &Event) -> Option<&OriginKey> {
    match e {
        Event::L4 { origin, .. }
        | Event::L7 { origin, .. }
        | Event::Maintenance { origin, .. }
        | Event::Servers { origin, .. }
        | Event::Outlier { origin, .. }
        | Event::Panic { origin, .. }
        | Event::Dns { origin, .. } => Some(origin),
        _ => None,
    }
}

fn event_server(e: &Event) -> Option<SocketAddr> {
    match e {
        Event::L4 { server, .. }
        | Event::L7 { server, .. }
        | Event::Maintenance { server, .. }
        | Event::Outlier { server, .. } => Some(*server),
        _ => None,
    }
}

/// An event as JSON (without `id`, `ts_ms`, `state`), or `None` for a kind
/// this version does not know.
fn transition_json(e: &Event) -> Option<Value> {
    Some(match e {
        Event::L4 { origin, server, from, to, consecutive_failures } => json!({
            "type": "l4", "origin": origin.as_str(), "server": server.to_string(),
            "from": from.as_str(), "to": to.as_str(), "consecutive_failures": consecutive_failures,
        }),
        Event::L7 { origin, server, from, to, reason, source } => json!({
            "type": "l7", "origin": origin.as_str(), "server": server.to_string(),
            "from": from.as_str(), "to": to.as_str(), "reason": &**reason, "source": source.to_string(),
        }),
        Event::Maintenance { origin, server, on } => json!({
            "type": "maintenance", "origin": origin.as_str(), "server": server.to_string(), "on": on,
        }),
        Event::Outlier { origin, server, ejected } => json!({
            "type": "outlier", "origin": origin.as_str(), "server": server.to_string(), "ejected": ejected,
        }),
        Event::Panic { origin, on, routable, total } => json!({
            "type": "panic", "origin": origin.as_str(), "on": on, "routable": routable, "total": total,
        }),
        Event::Servers { origin, added, removed } => json!({
            "type": "servers", "origin": origin.as_str(),
            "added": added.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "removed": removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Event::Dns { origin, error } => json!({"type": "dns", "origin": origin.as_str(), "error": error}),
        _ => return None,
    })
}

/// Makes a `stats` frame.
pub(crate) type Stats = Arc<dyn Fn() -> Bytes + Send + Sync>;

/// One client's task: moves frames from the rings to its body.
struct Client {
    node: String,
    stats: Stats,
    inner: Arc<Inner>,
    live: broadcast::Receiver<Frame>,
    checks: Option<broadcast::Receiver<Frame>>,
    stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Bytes>,
}

/// Why a client's stream ended.
enum End {
    /// The client went, or the proxy stops.
    Gone,
    /// It fell [`BEHIND`] frames back.
    Behind,
}

impl Client {
    async fn run(mut self, replay: Vec<Frame>) {
        let end = self.serve(replay).await;
        let counters = &self.inner.counters;
        counters.clients.fetch_sub(1, Ordering::Relaxed);
        if matches!(end, End::Behind) {
            counters.dropped_clients.fetch_add(1, Ordering::Relaxed);
            tracing::info!("event stream client dropped: it fell {BEHIND} frames behind");
        }
    }

    async fn serve(&mut self, replay: Vec<Frame>) -> End {
        let hello = json!({
            "node": self.node, "boot_ms": self.inner.boot_ms,
            "next_id": self.inner.next_id.load(Ordering::Relaxed), "keep": RECENT,
        });
        let mut last = 0;
        let first = std::iter::once(Bytes::from(format!("retry: 2000\nevent: hello\ndata: {hello}\n\n")));
        for bytes in first.chain(replay.into_iter().map(|f| {
            last = f.id;
            f.bytes
        })) {
            if let Err(end) = self.send(bytes) {
                return end;
            }
        }
        let mut tick = tokio::time::interval(STATS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.stop.borrow() {
                return End::Gone;
            }
            let bytes = tokio::select! {
                biased;
                _ = self.stop.changed() => return End::Gone,
                _ = self.tx.closed() => return End::Gone,
                r = self.live.recv() => match r {
                    // Already sent in the replay.
                    Ok(f) if f.id <= last => continue,
                    Ok(f) => f.bytes,
                    Err(RecvError::Lagged(_)) => return End::Behind,
                    Err(RecvError::Closed) => return End::Gone,
                },
                r = recv_checks(&mut self.checks) => match r {
                    Ok(f) => f.bytes,
                    Err(RecvError::Lagged(_)) => return End::Behind,
                    Err(RecvError::Closed) => return End::Gone,
                },
                _ = tick.tick() => (self.stats)(),
            };
            if let Err(end) = self.send(bytes) {
                return end;
            }
        }
    }

    /// Queues a frame for the body, never waiting: a full queue means the
    /// client is [`BEHIND`].
    fn send(&self, bytes: Bytes) -> Result<(), End> {
        self.tx.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => End::Behind,
            mpsc::error::TrySendError::Closed(_) => End::Gone,
        })
    }
}

async fn recv_checks(rx: &mut Option<broadcast::Receiver<Frame>>) -> Result<Frame, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `event: stats`: per origin, requests and 5xx answers since the start
/// (the client takes rates from two frames) and requests in flight.
pub(crate) fn stats_frame(shared: &Shared) -> Bytes {
    let totals = shared.routes.load().request_totals();
    let origins: Vec<Value> = shared
        .db
        .origins()
        .iter()
        .map(|o| {
            let (requests, errors) = totals.get(o.key().as_str()).copied().unwrap_or_default();
            let in_flight: u64 = o.servers().iter().map(|s| u64::from(s.in_flight())).sum();
            json!({"origin": o.key().as_str(), "requests": requests, "errors": errors, "in_flight": in_flight})
        })
        .collect();
    let doc = json!({"ts_ms": unix_ms(), "origins": origins});
    Bytes::from(format!("event: stats\ndata: {doc}\n\n"))
}

/// The response body of `GET /events`: frames as the client's task hands
/// them over; ends when the task ends.
#[derive(Debug)]
pub(crate) struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(BodyFrame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_event_names_its_server() {
        let origin: OriginKey = "a.internal:80".parse().unwrap();
        let server: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let e = Event::Maintenance { origin: origin.clone(), server, on: true };
        let doc = transition_json(&e).unwrap();
        assert_eq!(doc["type"], "maintenance");
        assert_eq!(doc["server"], "127.0.0.2:80");
        assert_eq!(event_server(&e), Some(server));
        assert_eq!(event_origin(&e), Some(&origin));
        let p = Event::Panic { origin, on: true, routable: 0, total: 2 };
        assert_eq!(event_server(&p), None);
        assert_eq!(transition_json(&p).unwrap()["total"], 2);
    }

    /// Lets the hub and the client tasks run until they are idle.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_holds_a_bounded_queue_then_is_dropped() {
        use http_body_util::BodyExt as _;
        let counters = Arc::new(EventCounters::default());
        let events = Events::start(HostDb::new(), Arc::clone(&counters));
        let stats: Stats = Arc::new(|| Bytes::from_static(b"event: stats\ndata: {}\n\n"));
        let mut body = events.subscribe("n1", stats, None, false);
        settle().await;
        assert_eq!(counters.clients.load(Ordering::Relaxed), 1);
        let origin: OriginKey = "a.internal:80".parse().unwrap();
        let server: SocketAddr = "127.0.0.2:80".parse().unwrap();
        // Fewer than BEHIND frames unread: still served.
        for i in 0..BEHIND / 2 {
            events.on_event(&Event::Maintenance { origin: origin.clone(), server, on: i % 2 == 0 });
        }
        settle().await;
        assert_eq!(counters.dropped_clients.load(Ordering::Relaxed), 0);
        // Past BEHIND: dropped, counted, and its body ends after what it held.
        for i in 0..BEHIND {
            events.on_event(&Event::Maintenance { origin: origin.clone(), server, on: i % 2 == 0 });
            if i % 256 == 0 {
                settle().await;
            }
        }
        settle().await;
        assert_eq!(counters.dropped_clients.load(Ordering::Relaxed), 1);
        assert_eq!(counters.clients.load(Ordering::Relaxed), 0);
        let mut frames = 0;
        while let Some(f) = body.frame().await {
            assert!(f.unwrap().into_data().is_ok());
            frames += 1;
        }
        assert_eq!(frames, BEHIND, "the queue held BEHIND frames, no more");
        // Transitions are remembered for later clients, RECENT at most.
        assert_eq!(events.inner.recent.lock().len(), RECENT);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_end_at_close_and_history_is_bounded_per_server() {
        use http_body_util::BodyExt as _;
        let counters = Arc::new(EventCounters::default());
        let origin: OriginKey = "a.internal:80".parse().unwrap();
        let server: SocketAddr = "127.0.0.2:80".parse().unwrap();
        // The server is in HostDB: the hub's sweep, which may run between
        // any two results, keeps its history.
        let db = HostDb::new();
        let spec = vigil_hostdb::OriginSpec::with_servers(origin.clone(), vec![server]);
        db.apply(&vigil_hostdb::HostDbConfig { origins: vec![spec], ..Default::default() }).unwrap();
        let events = Events::start(db, Arc::clone(&counters));
        let stats: Stats = Arc::new(|| Bytes::from_static(b"event: stats\ndata: {}\n\n"));
        let mut body = events.subscribe("n1", stats, Some(0), true);
        for i in 0..HISTORY + 5 {
            let r = CheckResult::pass("200", Duration::from_millis(i as u64));
            events.on_check(&origin, server, &r);
        }
        settle().await;
        let doc = events.checks_doc();
        let results = doc["servers"][0]["results"].as_array().unwrap();
        assert_eq!(results.len(), HISTORY);
        assert_eq!(results[HISTORY - 1][2], (HISTORY + 4) as f64, "newest last");
        events.close();
        settle().await;
        let mut text = String::new();
        while let Some(f) = body.frame().await {
            text.push_str(std::str::from_utf8(&f.unwrap().into_data().unwrap()).unwrap());
        }
        assert!(text.starts_with("retry: 2000\nevent: hello\n"), "{text}");
        assert_eq!(text.matches("event: check").count(), HISTORY + 5);
        assert_eq!(counters.clients.load(Ordering::Relaxed), 0);
        assert_eq!(counters.dropped_clients.load(Ordering::Relaxed), 0);
    }
}
