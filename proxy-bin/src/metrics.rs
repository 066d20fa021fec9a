//! `GET /metrics`: Prometheus text through prometheus-client.
//!
//! Counters are bumped where things happen (request path, pool observer,
//! checker hook, HostDB events); gauges that mirror HostDB state
//! (`vigil_server_routable`) and the pool's own totals are read at scrape
//! time by a collector, so they can never drift from what `/hosts` shows.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use vigil_hostdb::{Event, HostDb, OriginKey};
use vigil_session::tls::HandshakeFailure;
use vigil_session::{Observer, Pool, SessionError, TlsConnect};

use crate::listener::TlsListener;

/// A server address as a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Addr(pub(crate) SocketAddr);

impl EncodeLabelValue for Addr {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) origin: Arc<str>,
    pub(crate) code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServerResult {
    origin: Arc<str>,
    server: Addr,
    result: &'static str,
}

/// An origin's check kind: `http`, `grpc` or `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckKindLabels {
    origin: Arc<str>,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServerLabels {
    origin: Arc<str>,
    server: Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransitionLabels {
    origin: Arc<str>,
    server: Addr,
    to: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OriginLabel {
    origin: Arc<str>,
}

/// One route's `vigil_requests_total` counters by status code, found
/// without hashing the labels or locking the family (that cost about 260
/// instructions a request): a small open-addressed table whose slots are
/// each claimed once, by the first request with a new code. A route that
/// sees more codes than slots counts the rest through the family. The
/// counters are the family's own, so `/metrics` shows one series either way.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    slots: [std::sync::OnceLock<(u16, Counter)>; CODE_SLOTS],
}

const CODE_SLOTS: usize = 16;

impl RequestCounters {
    /// The counts so far by status code, of the codes that have a slot
    /// (read by the dashboard's stats, never on the request path).
    pub(crate) fn counts(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.slots.iter().filter_map(|s| s.get()).map(|(code, c)| (*code, c.get()))
    }

    /// The counter of `code`, claiming a slot with `make` the first time.
    fn get(&self, code: u16, make: impl Fn() -> Counter) -> Option<&Counter> {
        let start = usize::from(code) % CODE_SLOTS;
        for i in 0..CODE_SLOTS {
            let slot = &self.slots[(start + i) % CODE_SLOTS];
            let (c, counter) = match slot.get() {
                Some(claimed) => claimed,
                None => slot.get_or_init(|| (code, make())),
            };
            if *c == code {
                return Some(counter);
            }
        }
        None
    }
}

/// One open tunnel, in `vigil_tunnels_open`.
#[derive(Debug)]
pub(crate) struct TunnelOpen(Arc<AtomicU64>);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every counter the proxy keeps.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    connects: Family<ServerResult, Counter>,
    checks: Family<ServerResult, Counter>,
    transitions: Family<TransitionLabels, Counter>,
    /// Outlier ejections, by server.
    ejections: Family<ServerLabels, Counter>,
    /// Times an origin entered panic.
    panics: Family<OriginLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    /// Requests refused for ambiguous framing (see `framing`).
    pub(crate) framing_refused: Arc<AtomicU64>,
    /// Retries of a request on another server.
    pub(crate) retries: Counter,
    /// Requests and connections refused by a `[limits]` bound.
    limits: Family<LimitLabel, Counter>,
    /// Requests that waited for room at their origin, and those that got none.
    queued: Family<OriginLabel, Counter>,
    queue_timeouts: Family<OriginLabel, Counter>,
    /// Client connections open, against `limits.max_connections`.
    pub(crate) clients: Arc<crate::limits::ClientSlots>,
    /// Access log lines written and dropped.
    pub(crate) access_log: Arc<crate::accesslog::LogCounters>,
    /// Upgraded connections (WebSocket) open now, and since the start.
    tunnels_open: Arc<AtomicU64>,
    /// The event stream's clients and what it dropped.
    pub(crate) events: Arc<crate::events::EventCounters>,
    tunnels: Counter,
    /// Which origin a server belongs to, for the pool observer's labels.
    owners: Mutex<HashMap<SocketAddr, Arc<str>>>,
    registry: Mutex<Option<Registry>>,
}

impl Metrics {
    pub(crate) fn request(&self, origin: &Arc<str>, code: u16) {
        self.request_counter(origin, code).inc();
    }

    /// Counts a request of a route, through the route's own counters.
    pub(crate) fn route_request(&self, counters: &RequestCounters, origin: &Arc<str>, code: u16) {
        if let Some(c) = counters.get(code, || self.request_counter(origin, code)) {
            c.inc();
        } else {
            self.request(origin, code);
        }
    }

    fn request_counter(&self, origin: &Arc<str>, code: u16) -> Counter {
        // Cloning the Arc for the lookup key is one atomic increment; the
        // family is a read-locked map, so concurrent requests do not contend.
        self.requests.get_or_create(&RequestLabels { origin: Arc::clone(origin), code }).clone()
    }

    pub(crate) fn check(&self, origin: &OriginKey, server: SocketAddr, passed: bool) {
        let result = if passed { "pass" } else { "fail" };
        self.checks
            .get_or_create(&ServerResult { origin: origin_label(origin), server: Addr(server), result })
            .inc();
    }

    /// Counts a request or connection refused by `limit` (`head`, `uri`,
    /// `headers`, `body`, `body_timeout`, `connections`).
    pub(crate) fn limit(&self, limit: &'static str) {
        self.limits.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Counts a tunnel opened, and open until the guard drops.
    pub(crate) fn tunnel_opened(&self) -> TunnelOpen {
        self.tunnels.inc();
        self.tunnels_open.fetch_add(1, Ordering::Relaxed);
        TunnelOpen(Arc::clone(&self.tunnels_open))
    }

    pub(crate) fn queued(&self, origin: &Arc<str>) {
        self.queued.get_or_create(&OriginLabel { origin: Arc::clone(origin) }).inc();
    }

    pub(crate) fn queue_timeout(&self, origin: &Arc<str>) {
        self.queue_timeouts.get_or_create(&OriginLabel { origin: Arc::clone(origin) }).inc();
    }

    pub(crate) fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Counts L7 transitions, ejections and panics (HostDB events).
    pub(crate) fn on_event(&self, event: &Event) {
        match event {
            Event::L7 { origin, server, to, .. } => {
                self.transitions
                    .get_or_create(&TransitionLabels {
                        origin: origin_label(origin),
                        server: Addr(*server),
                        to: to.as_str(),
                    })
                    .inc();
            }
            Event::Outlier { origin, server, ejected: true } => {
                self.ejections
                    .get_or_create(&ServerLabels { origin: origin_label(origin), server: Addr(*server) })
                    .inc();
            }
            Event::Panic { origin, on: true, .. } => {
                self.panics.get_or_create(&OriginLabel { origin: origin_label(origin) }).inc();
            }
            _ => {}
        }
    }

    /// Forgets the server → origin map (after a reload or a DNS change).
    pub(crate) fn forget_owners(&self) {
        self.owners.lock().clear();
    }

    fn owner(&self, db: &HostDb, addr: SocketAddr) -> Arc<str> {
        let mut owners = self.owners.lock();
        if let Some(o) = owners.get(&addr) {
            return Arc::clone(o);
        }
        // A miss happens once per server (and after reloads): scan HostDB.
        let origin = db
            .origins()
            .iter()
            .filter(|o| o.servers().iter().any(|s| s.addr() == addr))
            .map(|o| o.key().as_str().to_owned())
            .min()
            .map_or_else(|| Arc::from(""), Arc::from);
        owners.insert(addr, Arc::clone(&origin));
        origin
    }

    /// Builds the registry once HostDB and the pool exist.
    pub(crate) fn register(
        self: &Arc<Self>,
        db: HostDb,
        pool: Pool,
        cluster: Arc<std::sync::OnceLock<vigil_cluster::Cluster>>,
        tls: Arc<TlsConnect>,
        listener: Option<Arc<TlsListener>>,
        checker: vigil_l7check::Checker,
    ) {
        let mut r = Registry::default();
        r.register(
            "vigil_requests",
            "Client requests answered, by origin and status code",
            self.requests.clone(),
        );
        r.register(
            "vigil_upstream_connects",
            "TCP connects to servers by the session pool (requests, HTTP and gRPC checks), by result",
            self.connects.clone(),
        );
        r.register(
            "vigil_health_checks",
            "L7 health checks, by server and result (the kind: vigil_health_check_info)",
            self.checks.clone(),
        );
        r.register(
            "vigil_health_transitions",
            "L7 state changes, by server and new state",
            self.transitions.clone(),
        );
        r.register(
            "vigil_outlier_ejections",
            "Servers ejected by outlier detection (failing user requests in a row)",
            self.ejections.clone(),
        );
        r.register("vigil_origin_panics", "Times the origin entered panic", self.panics.clone());
        r.register("vigil_reloads", "Config reloads, by result", self.reloads.clone());
        r.register("vigil_retries", "Requests retried on another server", self.retries.clone());
        r.register(
            "vigil_limit_refusals",
            "Client requests and connections refused by a [limits] bound, by limit",
            self.limits.clone(),
        );
        r.register(
            "vigil_tunnels",
            "Upgraded connections (WebSocket and other Upgrades) tunnelled to origins",
            self.tunnels.clone(),
        );
        r.register(
            "vigil_origin_queued",
            "Requests that waited for room at an origin at its max_connections",
            self.queued.clone(),
        );
        r.register(
            "vigil_origin_queue_timeouts",
            "Requests answered 503 after queue_timeout without room at their origin",
            self.queue_timeouts.clone(),
        );
        r.register_collector(Box::new(Live {
            db,
            pool,
            cluster,
            framing_refused: Arc::clone(&self.framing_refused),
            tls,
            listener,
            clients: Arc::clone(&self.clients),
            access_log: Arc::clone(&self.access_log),
            tunnels_open: Arc::clone(&self.tunnels_open),
            events: Arc::clone(&self.events),
            checker,
        }));
        *self.registry.lock() = Some(r);
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Some(r) = &*self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, r);
        }
        out
    }
}

fn origin_label(origin: &OriginKey) -> Arc<str> {
    Arc::from(origin.as_str())
}

/// Feeds `vigil_upstream_connects_total`. It does not feed HostDB: the
/// request path and the checker hold the exact `Server` record and report
/// L4 outcomes on it themselves (see ARCHITECTURE.md), so a failure counts
/// once.
#[derive(Debug)]
pub(crate) struct ConnectObserver {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) db: HostDb,
}

impl Observer for ConnectObserver {
    fn on_connect(&self, addr: SocketAddr, result: Result<(), &SessionError>) {
        let result = match result {
            Ok(()) => "ok",
            Err(e) => e.kind().as_str(),
        };
        let origin = self.metrics.owner(&self.db, addr);
        self.metrics.connects.get_or_create(&ServerResult { origin, server: Addr(addr), result }).inc();
    }

    fn on_io_error(&self, _: SocketAddr, _: &SessionError) {}
}

/// Values read at scrape time.
#[derive(Debug)]
struct Live {
    db: HostDb,
    pool: Pool,
    /// Set once the node joined (after a binary upgrade, a moment after start).
    cluster: Arc<std::sync::OnceLock<vigil_cluster::Cluster>>,
    framing_refused: Arc<AtomicU64>,
    tls: Arc<TlsConnect>,
    listener: Option<Arc<TlsListener>>,
    clients: Arc<crate::limits::ClientSlots>,
    access_log: Arc<crate::accesslog::LogCounters>,
    tunnels_open: Arc<AtomicU64>,
    events: Arc<crate::events::EventCounters>,
    checker: vigil_l7check::Checker,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    /// `origin`: ours to a server; `client`: a client's to our listener.
    side: &'static str,
    resumed: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeFailureLabels {
    side: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CertLabels {
    cert: String,
}

impl Live {
    /// TLS handshakes both ways, failures by reason, and the listener's
    /// certificates' time to expiry.
    fn encode_tls(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::MetricType;
        let origin = self.tls.metrics();
        let mut done: Vec<(HandshakeLabels, u64)> = vec![
            (HandshakeLabels { side: "origin", resumed: "false" }, origin.full_handshakes()),
            (HandshakeLabels { side: "origin", resumed: "true" }, origin.resumed_handshakes()),
        ];
        let mut failed: Vec<(HandshakeFailureLabels, u64)> = HandshakeFailure::ALL
            .iter()
            .map(|k| (HandshakeFailureLabels { side: "origin", reason: k.as_str() }, origin.failures(*k)))
            .collect();
        if let Some(l) = &self.listener {
            let m = &l.metrics;
            done.push((HandshakeLabels { side: "client", resumed: "false" }, m.full.load(Ordering::Relaxed)));
            done.push((
                HandshakeLabels { side: "client", resumed: "true" },
                m.resumed.load(Ordering::Relaxed),
            ));
            failed.extend(
                HandshakeFailure::ALL
                    .iter()
                    .map(|k| (HandshakeFailureLabels { side: "client", reason: k.as_str() }, m.failures(*k))),
            );
            failed.push((
                HandshakeFailureLabels { side: "client", reason: "timeout" },
                m.timeouts.load(Ordering::Relaxed),
            ));
        }
        let mut family = encoder.encode_descriptor(
            "vigil_tls_handshakes",
            "TLS handshakes completed, to origins and from clients, full or resumed",
            None,
            MetricType::Counter,
        )?;
        for (labels, v) in done {
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "vigil_tls_handshake_failures",
            "TLS handshakes that failed, to origins and from clients, by reason",
            None,
            MetricType::Counter,
        )?;
        for (labels, v) in failed {
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
        if let Some(l) = &self.listener {
            let mut family = encoder.encode_descriptor(
                "vigil_tls_certificate_expiry_seconds",
                "Seconds until each listener certificate expires (negative: expired)",
                None,
                MetricType::Gauge,
            )?;
            for (cert, secs) in l.certificates().expiry() {
                ConstGauge::new(secs).encode(family.encode_family(&CertLabels { cert })?)?;
            }
        }
        Ok(())
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = self.pool.metrics();
        let mut counters = vec![
            ("vigil_pool_reused", "Checkouts served by an idle keep-alive session", m.reused()),
            ("vigil_pool_evicted", "Idle sessions closed by the pool", m.evicted()),
            (
                "vigil_requests_refused_framing",
                "Requests refused for ambiguous framing (Content-Length with Transfer-Encoding, duplicate Content-Length)",
                self.framing_refused.load(Ordering::Relaxed),
            ),
            (
                "vigil_access_log_lines",
                "Access log lines written",
                self.access_log.written.load(Ordering::Relaxed),
            ),
            (
                "vigil_access_log_dropped",
                "Access log lines dropped: the writer was too far behind, or a write failed",
                self.access_log.dropped.load(Ordering::Relaxed),
            ),
            (
                "vigil_events_clients_dropped",
                "Event streams (GET /events) ended because the client fell too far behind",
                self.events.dropped_clients.load(Ordering::Relaxed),
            ),
            (
                "vigil_events_lost",
                "Events and check results the event stream lost: its hub's inbox was full",
                self.events.lost.load(Ordering::Relaxed),
            ),
        ];
        let streams = ConstGauge::new(self.events.clients.load(Ordering::Relaxed) as i64);
        streams.encode(encoder.encode_descriptor(
            "vigil_events_clients",
            "Event streams (GET /events) open now",
            None,
            streams.metric_type(),
        )?)?;
        let tunnels = ConstGauge::new(self.tunnels_open.load(Ordering::Relaxed) as i64);
        tunnels.encode(encoder.encode_descriptor(
            "vigil_tunnels_open",
            "Upgraded connections open now",
            None,
            tunnels.metric_type(),
        )?)?;
        let open = ConstGauge::new(self.clients.open() as i64);
        open.encode(encoder.encode_descriptor(
            "vigil_client_connections",
            "Client connections open on the proxy listeners",
            None,
            open.metric_type(),
        )?)?;
        if let Some(cluster) = self.cluster.get() {
            let (c, t) = (cluster.metrics(), cluster.metrics().transport());
            counters.extend([
                (
                    "vigil_cluster_datagrams_in",
                    "Gossip datagrams received, rejected ones included",
                    t.datagrams_in(),
                ),
                ("vigil_cluster_datagrams_out", "Gossip datagrams sent", t.datagrams_out()),
                (
                    "vigil_cluster_datagrams_rejected",
                    "Gossip datagrams dropped: not sealed with one of this node's cluster keys and its cluster id, tampered or replayed; or, from a key holder, undecodable or inflating past 16 times their size",
                    t.rejected(),
                ),
                (
                    "vigil_cluster_datagrams_previous_key",
                    "Gossip datagrams opened with one of previous_key_files: a peer still seals with it (flat on every node: the key can be dropped)",
                    t.previous_key(),
                ),
                (
                    "vigil_cluster_datagrams_compact",
                    "Gossip datagrams sent in the compact format (to peers that read it: nodes of this release)",
                    t.compact_out(),
                ),
                (
                    "vigil_cluster_id_resets",
                    "Gossip messages that named a node by a hash this node did not hold (after it restarted), answered by asking the sender for full ids",
                    t.resets_sent(),
                ),
                ("vigil_cluster_gossip_bytes_in", "Gossip bytes received (UDP payload)", t.bytes_in()),
                ("vigil_cluster_gossip_bytes_out", "Gossip bytes sent (UDP payload)", t.bytes_out()),
                (
                    "vigil_cluster_ownership_changes",
                    "Servers that changed checking node",
                    c.ownership_changes(),
                ),
                ("vigil_cluster_adopted", "Check results adopted from the checking node", c.adopted()),
                ("vigil_cluster_published", "Server records this node published", c.published()),
            ]);
            let live = ConstGauge::new(cluster.live_nodes().len() as i64);
            live.encode(encoder.encode_descriptor(
                "vigil_cluster_live_nodes",
                "Other cluster nodes seen alive",
                None,
                live.metric_type(),
            )?)?;
        }
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        self.encode_tls(&mut encoder)?;
        let now = tokio::time::Instant::now().into_std();
        let origins = self.db.origins();
        type Read = fn(&vigil_hostdb::Server, std::time::Instant) -> i64;
        let gauges: [(&str, &str, Read); 2] = [
            (
                "vigil_server_routable",
                "1 when the server gets new requests (not in maintenance, L4-down or L7-unhealthy)",
                |s, now| i64::from(s.is_routable(now)),
            ),
            ("vigil_server_in_flight", "Requests in flight to the server", |s, _| i64::from(s.in_flight())),
        ];
        let checks = self.checker.config();
        let mut info = encoder.encode_descriptor(
            "vigil_health_check_info",
            "1 for each checked origin, labelled with its check's kind (http, grpc, tcp)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for o in &origins {
            if let Some(check) = checks.matching(o.key()) {
                let labels = CheckKindLabels { origin: origin_label(o.key()), kind: check.kind.name() };
                ConstGauge::new(1).encode(info.encode_family(&labels)?)?;
            }
        }
        let mut panic = encoder.encode_descriptor(
            "vigil_origin_panic",
            "1 while the origin is in panic (too few routable servers: every server not in maintenance gets requests)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for o in &origins {
            ConstGauge::new(i64::from(o.panicking()))
                .encode(panic.encode_family(&OriginLabel { origin: origin_label(o.key()) })?)?;
        }
        let mut weight = encoder.encode_descriptor(
            "vigil_server_weight",
            "The server's weight in force (configured, or set with POST /weight; 0: drained)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for o in &origins {
            let label = origin_label(o.key());
            for (addr, w) in o.weights() {
                let labels = ServerLabels { origin: Arc::clone(&label), server: Addr(addr) };
                ConstGauge::new(i64::from(w)).encode(weight.encode_family(&labels)?)?;
            }
        }
        for (name, help, read) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for o in &origins {
                let label = origin_label(o.key());
                for s in o.servers().iter() {
                    let labels = ServerLabels { origin: Arc::clone(&label), server: Addr(s.addr()) };
                    ConstGauge::new(read(s, now)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, origin: &Arc<str>, code: u16) -> u64 {
        m.requests.get_or_create(&RequestLabels { origin: Arc::clone(origin), code }).get()
    }

    #[test]
    fn a_routes_counters_are_the_familys_series() {
        let m = Metrics::default();
        let (route, other) = (RequestCounters::default(), RequestCounters::default());
        let origin: Arc<str> = Arc::from("app.internal:8080");
        for _ in 0..3 {
            m.route_request(&route, &origin, 200);
        }
        m.route_request(&route, &origin, 502);
        // Another route to the same origin (or the table after a reload)
        // continues the same series.
        m.route_request(&other, &origin, 200);
        m.request(&origin, 200);
        assert_eq!(count(&m, &origin, 200), 5);
        assert_eq!(count(&m, &origin, 502), 1);
    }

    #[test]
    fn codes_past_the_slots_still_count() {
        let m = Metrics::default();
        let route = RequestCounters::default();
        let origin: Arc<str> = Arc::from("o:80");
        // 16 slots; codes that collide modulo 16 probe onwards.
        let codes: Vec<u16> = (0..40).map(|i| 200 + i * 16).collect();
        for &code in &codes {
            m.route_request(&route, &origin, code);
            m.route_request(&route, &origin, code);
        }
        for &code in &codes {
            assert_eq!(count(&m, &origin, code), 2, "code {code}");
        }
        assert!(route.get(codes[0], Counter::default).is_some());
        assert!(route.get(codes[39], Counter::default).is_none(), "the table is full");
    }
}
