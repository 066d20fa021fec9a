//! One proxy's membership in the cluster: chitchat over the sealed
//! transport, and a sync task that, once per gossip interval,
//! - advertises the origins this node has traffic for (`o:<origin hash>`,
//!   present while the origin's checks run, removed when they stop after
//!   `idle_after`),
//! - works out who checks each server (rendezvous over the live nodes with
//!   traffic for its origin, [`owner_in`]),
//! - publishes the records of the servers this node checks
//!   (`s:<server hash>`, [`ServerRecord`]), and
//! - adopts the records of the servers another node checks into HostDB
//!   with `source = cluster:<node_id>`.
//!
//! The checker asks [`Cluster::checks_here`] before each check. Adoption
//! skips a record that says another state than this node's view and is
//! older than that view's last change (see `older_than_seen`): after a
//! partition heals, this node's copy of a revived owner's records can date
//! from before the partition until chitchat's delta brings the new ones.
//! Adoption writes the L7 record, and takes the owner's L4-down mark only for a
//! server with no L4 history here: a server this node saw fail at L4 stays
//! down here whatever the cluster says, because routability needs both.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use vigil_hostdb::{Event, HostDb, L4State, L7State, L7Status, OriginKey, Server, Source, SubscriptionId};

use crate::ownership::owner_in;
use crate::record::{
    INTEREST, RECORD, ServerRecord, gossip_key, interest_key, parse_interest_key, server_key,
};
use crate::seal::{ClusterKey, Keyring};
use crate::transport::{SealedTransport, TransportStats};

/// Maps keyed by server keys, which are hashes already: used as they are.
type ByKey<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a node needs to join (the `[cluster]` section).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// UDP address to gossip on; peers reach this node there.
    pub listen: SocketAddr,
    /// Nodes to contact first.
    pub seeds: Vec<SocketAddr>,
    /// Only nodes with the same id (and key) talk to each other.
    pub cluster_id: String,
    /// How often a node gossips and syncs HostDB with the cluster.
    pub gossip_interval: Duration,
    /// The cluster key: every datagram is sealed with it.
    pub key: ClusterKey,
    /// Keys that still open datagrams (a rotation in progress: peers that
    /// have not switched yet seal with one of them). Usually empty.
    pub previous_keys: Vec<ClusterKey>,
}

/// The cluster's counters.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    transport: Arc<TransportStats>,
    ownership_changes: AtomicU64,
    adopted: AtomicU64,
    published: AtomicU64,
    state_bytes: AtomicU64,
}

impl ClusterMetrics {
    /// The transport's datagram and byte counts.
    pub fn transport(&self) -> &TransportStats {
        &self.transport
    }
    /// Times a server of this node's HostDB changed checking node.
    pub fn ownership_changes(&self) -> u64 {
        self.ownership_changes.load(Ordering::Relaxed)
    }
    /// Remote results written into HostDB.
    pub fn adopted(&self) -> u64 {
        self.adopted.load(Ordering::Relaxed)
    }
    /// Records this node published for the servers it checks.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    /// Bytes of keys and values this node holds out to the cluster (its
    /// interest and records, before chitchat's framing and compression).
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes.load(Ordering::Relaxed)
    }
}

/// Who checks what, as of the last sync.
#[derive(Debug, Default)]
struct View {
    /// Origin hash -> the other live nodes with traffic for it.
    interest: HashMap<u64, Vec<Arc<str>>>,
    /// The other live nodes.
    live: Vec<Arc<str>>,
}

struct Inner {
    node_id: Arc<str>,
    db: HostDb,
    /// The transport's keys, swapped by [`Cluster::set_keys`].
    keys: Arc<Keyring>,
    interval: Duration,
    handle: parking_lot::Mutex<Option<ChitchatHandle>>,
    view: ArcSwap<View>,
    metrics: ClusterMetrics,
    stop: tokio::sync::watch::Sender<bool>,
    /// Rings when something worth a round happened between ticks: a local
    /// flip to publish, or a record or interest from another node.
    wake: Arc<tokio::sync::Notify>,
    /// The HostDB subscription and chitchat listeners behind `wake`.
    listening: parking_lot::Mutex<Option<(SubscriptionId, Vec<chitchat::ListenerHandle>)>>,
}

/// A running cluster member, cheap to clone. Stop it with
/// [`Cluster::leave`] (orderly); [`Cluster::abort`], or dropping the last
/// clone, stops it as a crash would.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_id", &self.inner.node_id).finish_non_exhaustive()
    }
}

/// Why a node could not join the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The gossip socket could not be bound: the address is taken, or it
    /// is not one of this host's.
    #[error("cluster: cannot bind the gossip socket {listen}/udp: {error}")]
    Bind {
        /// The gossip address tried ([`ClusterConfig::listen`]).
        listen: SocketAddr,
        /// What the system said.
        error: std::io::Error,
    },
    /// chitchat would not start gossip for another reason (its error is
    /// kept as text: chitchat reports `anyhow` errors, which stay out of
    /// this crate's API).
    #[error("cluster: gossip did not start on {listen}: {reason}")]
    Start {
        /// The gossip address tried ([`ClusterConfig::listen`]).
        listen: SocketAddr,
        /// chitchat's error and its causes.
        reason: String,
    },
}

impl ClusterError {
    /// The gossip address the node tried.
    pub fn listen(&self) -> SocketAddr {
        match self {
            Self::Bind { listen, .. } | Self::Start { listen, .. } => *listen,
        }
    }

    /// chitchat's error, sorted: the bind failure our transport reports
    /// (with its context) is the one chitchat's start can have today.
    fn of_chitchat(listen: SocketAddr, error: anyhow::Error) -> Self {
        match error.downcast::<std::io::Error>() {
            Ok(error) => Self::Bind { listen, error },
            Err(other) => Self::Start { listen, reason: format!("{other:#}") },
        }
    }
}

impl Cluster {
    /// Binds the gossip socket, joins through the seeds and starts syncing
    /// `db` with the cluster. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`ClusterError::Bind`] when the gossip socket cannot be bound,
    /// [`ClusterError::Start`] when chitchat fails otherwise.
    pub async fn start(config: ClusterConfig, db: HostDb) -> Result<Self, ClusterError> {
        let metrics = ClusterMetrics::default();
        let keys = Arc::new(Keyring::new(config.key, config.previous_keys));
        let transport = SealedTransport::new(&keys, &config.cluster_id, Arc::clone(&metrics.transport));
        let generation = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_id.as_str(), generation, config.listen),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: FailureDetectorConfig {
                initial_interval: config.gossip_interval,
                dead_node_grace_period: Duration::from_secs(3600),
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, Vec::new(), &transport)
            .await
            .map_err(|e| ClusterError::of_chitchat(config.listen, e))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let wake = Arc::new(tokio::sync::Notify::new());
        let listeners = {
            let chitchat = handle.chitchat();
            let cc = chitchat.lock().await;
            [RECORD, INTEREST]
                .into_iter()
                .map(|prefix| {
                    let w = Arc::clone(&wake);
                    cc.subscribe_event(prefix, move |_| w.notify_one())
                })
                .collect()
        };
        let w = Arc::clone(&wake);
        let subscription = db.subscribe(Arc::new(move |e: &Event| match e {
            Event::L7 { source: Source::Local, .. } | Event::L4 { to: L4State::Down, .. } => w.notify_one(),
            _ => {}
        }));
        let inner = Arc::new(Inner {
            node_id: config.node_id.as_str().into(),
            db,
            keys,
            interval: config.gossip_interval,
            handle: parking_lot::Mutex::new(Some(handle)),
            view: ArcSwap::default(),
            metrics,
            stop,
            wake,
            listening: parking_lot::Mutex::new(Some((subscription, listeners))),
        });
        tokio::spawn(sync_loop(Arc::downgrade(&inner), stopped));
        tracing::info!(node = %config.node_id, listen = %config.listen, "cluster: joined");
        Ok(Self { inner })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The counters.
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.inner.metrics
    }

    /// The other nodes this one sees alive, as of the last sync.
    pub fn live_nodes(&self) -> Vec<Arc<str>> {
        self.inner.view.load().live.clone()
    }

    /// Whether this node checks `server` of `origin` (the checker's hook):
    /// it does unless another live node with traffic for the origin wins
    /// the rendezvous. A few hashes, no lock.
    pub fn checks_here(&self, origin: &OriginKey, server: SocketAddr) -> bool {
        let view = self.inner.view.load();
        let Some(others) = view.interest.get(&origin.hash64()) else { return true };
        let me: &str = &self.inner.node_id;
        owner_in(server_key(origin, server), others.iter().map(|n| &**n).chain([me])) == Some(me)
    }

    /// The node that checks `server` of `origin`, as this node sees it
    /// (`None`: nobody, no node has traffic for the origin).
    pub fn owner(&self, origin: &OriginKey, server: SocketAddr) -> Option<Arc<str>> {
        let view = self.inner.view.load();
        let checking = self.inner.db.origin_by_key(origin).is_some_and(|o| o.is_checking());
        let others = view.interest.get(&origin.hash64()).map_or(&[][..], |v| v.as_slice());
        let me = checking.then_some(&self.inner.node_id);
        owner_in(server_key(origin, server), others.iter().chain(me).map(|n| &**n))
            .map(|o| if o == &*self.inner.node_id { Arc::clone(&self.inner.node_id) } else { o.into() })
    }

    /// Seals with `key` and opens with it and `previous` from the next
    /// datagram on, without restarting gossip: every peer's replay window
    /// stays. A key not given here opens nothing any more. Whether the keys
    /// changed.
    pub fn set_keys(&self, key: ClusterKey, previous: Vec<ClusterKey>) -> bool {
        let changed = self.inner.keys.set(key, previous);
        if changed {
            tracing::info!(node = %self.inner.node_id, previous = self.inner.keys.previous_keys(),
                "cluster: keys changed");
        }
        changed
    }

    /// Leaves in order: withdraws this node's interest and records, lets
    /// three gossip intervals carry that, then stops. Others take its
    /// servers over at once instead of after failure detection.
    pub async fn leave(&self) {
        self.inner.stop_syncing();
        let handle = self.inner.handle.lock().take();
        let Some(handle) = handle else { return };
        handle
            .with_chitchat(|cc| {
                let node = cc.self_node_state();
                let keys: Vec<String> = node
                    .key_values()
                    .filter(|(k, _)| k.starts_with(INTEREST) || k.starts_with(RECORD))
                    .map(|(k, _)| k.to_owned())
                    .collect();
                for k in keys {
                    node.delete(&k);
                }
            })
            .await;
        tokio::time::sleep(self.inner.interval * 3).await;
        let _ = handle.shutdown().await;
        tracing::info!(node = %self.inner.node_id, "cluster: left");
    }

    /// Stops at once, as a crash would: others notice by failure detection.
    pub fn abort(&self) {
        self.inner.stop_syncing();
        if let Some(handle) = self.inner.handle.lock().take() {
            handle.abort();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_syncing();
        if let Some(handle) = self.handle.get_mut().take() {
            handle.abort();
        }
    }
}

impl Inner {
    fn stop_syncing(&self) {
        let _ = self.stop.send(true);
        if let Some((subscription, _listeners)) = self.listening.lock().take() {
            self.db.unsubscribe(subscription);
        }
    }
}

/// What the sync task remembers between rounds.
#[derive(Default)]
struct SyncState {
    /// Origins this node advertises.
    interest: HashSet<u64>,
    /// Server key -> what this node published for it.
    published: ByKey<Published>,
    /// Origin hash -> its server list as last seen and the servers' keys.
    keys: ByKey<ServerKeys>,
    /// Sync rounds so far.
    round: u64,
    /// Each live node's state version at the last round.
    versions: HashMap<Arc<str>, u64>,
    /// Server key -> (node, record value) last adopted.
    adopted: ByKey<(Arc<str>, String)>,
    /// Server key -> its checking node at the last round.
    owners: ByKey<Arc<str>>,
    /// Server key -> this node's view of its L7 state (not `Unknown`) and
    /// since when (epoch ms): from its own checks (as of the round that
    /// saw the change) or from the adopted record's change time.
    seen: ByKey<(L7State, u64)>,
    /// Server key -> a record not adopted for being older than `seen`: its
    /// node, its value and since when it is refused.
    refused: ByKey<(Arc<str>, String, std::time::Instant)>,
    /// This node's record version counter.
    version: u64,
}

/// An origin's server list and its servers' keys, in the same order.
type ServerKeys = (Arc<[Arc<Server>]>, Arc<[u64]>);

/// A record this node published.
struct Published {
    /// As published, version 0.
    record: ServerRecord,
    /// The gossip value (with its version).
    text: String,
    /// The last round that still published it.
    round: u64,
}

async fn sync_loop(inner: std::sync::Weak<Inner>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut state = SyncState::default();
    let Some((interval, wake)) = inner.upgrade().map(|i| (i.interval, Arc::clone(&i.wake))) else { return };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Woken rounds come at most every quarter interval: a burst of flips
    // costs a few rounds, not one each.
    let spacing = interval / 4;
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = wake.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep_until(last + spacing) => {}
                    _ = stopped.changed() => return,
                }
            }
            _ = stopped.changed() => return,
        }
        last = tokio::time::Instant::now();
        let Some(inner) = inner.upgrade() else { return };
        if *stopped.borrow() {
            return;
        }
        let chitchat = match &*inner.handle.lock() {
            Some(h) => h.chitchat(),
            None => return,
        };
        let mut cc = chitchat.lock().await;
        sync_once(&inner, &mut cc, &mut state);
    }
}

/// One round: publish interest, compute ownership, publish own records,
/// adopt the owners' records.
fn sync_once(inner: &Inner, cc: &mut chitchat::Chitchat, state: &mut SyncState) {
    let now = tokio::time::Instant::now().into_std();
    let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let origins = inner.db.origins();

    // 1. This node's interest: the origins whose checks run here.
    let interest: HashSet<u64> =
        origins.iter().filter(|o| o.is_checking()).map(|o| o.key().hash64()).collect();
    for h in interest.difference(&state.interest) {
        cc.self_node_state().set(interest_key(*h), "");
    }
    for h in state.interest.difference(&interest) {
        cc.self_node_state().delete(&interest_key(*h));
    }
    state.interest = interest;

    // 2. The others' interest.
    let me = cc.self_chitchat_id().clone();
    let live: Vec<ChitchatId> = cc.live_nodes().filter(|id| **id != me).cloned().collect();
    let mut view = View::default();
    let mut ids: HashMap<Arc<str>, ChitchatId> = HashMap::new();
    // Each live node's state version, to skip reading an unchanged one.
    let mut versions: HashMap<Arc<str>, u64> = HashMap::new();
    for id in newest(&live) {
        let name: Arc<str> = Arc::clone(&id.node_id);
        if name == inner.node_id {
            continue; // a previous incarnation of this node
        }
        if let Some(node) = cc.node_state(id) {
            for (key, _) in node.iter_prefix(INTEREST) {
                if let Some(h) = parse_interest_key(key) {
                    view.interest.entry(h).or_default().push(Arc::clone(&name));
                }
            }
            versions.insert(Arc::clone(&name), node.max_version());
        }
        view.live.push(Arc::clone(&name));
        ids.insert(name, id.clone());
    }

    // 3. Per server: publish it or adopt it. Cheap per server when nothing
    // changed: no allocation, and the owner's state is read only when its
    // version moved (or this server's adopted status is not its own).
    state.round += 1;
    let round = state.round;
    let mut publish = Vec::new();
    for origin in &origins {
        let Some(policy) = origin.check_policy() else { continue };
        let cap = policy.healthy_threshold.max(policy.unhealthy_threshold);
        let h = origin.key().hash64();
        let others = view.interest.get(&h).map_or(&[][..], |v| v.as_slice());
        let me = state.interest.contains(&h).then_some(&inner.node_id);
        let servers = origin.servers();
        let keys = match state.keys.get(&h) {
            Some((list, keys)) if Arc::ptr_eq(list, &servers) => Arc::clone(keys),
            _ => {
                let keys: Arc<[u64]> = servers.iter().map(|s| server_key(origin.key(), s.addr())).collect();
                state.keys.insert(h, (Arc::clone(&servers), Arc::clone(&keys)));
                keys
            }
        };
        for (server, &key) in servers.iter().zip(keys.iter()) {
            let candidates = || others.iter().chain(me);
            let Some(owner) = owner_in(key, candidates().map(|n| &**n)) else {
                state.owners.remove(&key);
                continue;
            };
            // The candidate `owner` points into (no string compare).
            let Some(owner) = candidates().find(|n| std::ptr::eq(n.as_ptr(), owner.as_ptr())) else {
                continue;
            };
            let moved = match state.owners.get(&key) {
                Some(prev) if prev == owner => false,
                prev => {
                    if let Some(prev) = prev {
                        inner.metrics.ownership_changes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(origin = %origin.key(), server = %server.addr(), from = %prev, to = %owner,
                            "cluster: server changed checking node");
                    }
                    state.owners.insert(key, Arc::clone(owner));
                    true
                }
            };
            let current = server.l7().state;
            let since = match state.seen.get(&key) {
                Some((st, ms)) if *st == current => *ms,
                _ if current == L7State::Unknown => {
                    state.seen.remove(&key);
                    0
                }
                _ => {
                    state.seen.insert(key, (current, epoch_ms));
                    epoch_ms
                }
            };
            if *owner == inner.node_id {
                if let Some(record) = own_record(server, cap, now, epoch_ms, since) {
                    match state.published.get_mut(&key) {
                        Some(p) if p.record == record => p.round = round,
                        _ => publish.push((key, record)),
                    }
                }
            } else if let Some(id) = ids.get(owner) {
                let unchanged = !moved
                    && state.versions.get(owner) == versions.get(owner)
                    && matches!(&server.l7().source, Source::Cluster(n) if n == owner);
                if !unchanged {
                    adopt(inner, state, cc, id, owner, server, key, (now, epoch_ms));
                }
            }
        }
    }
    state.versions = versions;
    for (key, record) in publish {
        state.version += 1;
        let text = ServerRecord { version: state.version, ..record }.encode();
        cc.self_node_state().set(gossip_key(key), &text);
        state.published.insert(key, Published { record, text, round });
        inner.metrics.published.fetch_add(1, Ordering::Relaxed);
    }
    state.published.retain(|key, p| {
        let keep = p.round == round;
        if !keep {
            cc.self_node_state().delete(&gossip_key(*key));
        }
        keep
    });
    state.adopted.retain(|key, _| state.owners.contains_key(key));
    state.seen.retain(|key, _| state.owners.contains_key(key));
    state.refused.retain(|key, _| state.owners.contains_key(key));
    if state.keys.len() > origins.len() {
        let live: HashSet<u64> = origins.iter().map(|o| o.key().hash64()).collect();
        state.keys.retain(|h, _| live.contains(h));
    }
    let bytes = state.interest.len() * (INTEREST.len() + 16)
        + state.published.values().map(|p| RECORD.len() + 16 + p.text.len()).sum::<usize>();
    inner.metrics.state_bytes.store(bytes as u64, Ordering::Relaxed);
    let before = inner.view.load();
    for n in view.live.iter().filter(|n| !before.live.contains(n)) {
        tracing::info!(node = %n, live = view.live.len() + 1, "cluster: node joined");
    }
    for n in before.live.iter().filter(|n| !view.live.contains(n)) {
        tracing::warn!(node = %n, live = view.live.len() + 1, "cluster: node gone (left or failed); its servers move");
    }
    inner.view.store(Arc::new(view));
}

/// One id per node: a restarted node is briefly seen twice (its old
/// incarnation until the failure detector drops it), and only its newest
/// generation counts.
fn newest(live: &[ChitchatId]) -> impl Iterator<Item = &ChitchatId> {
    let mut by_name: HashMap<&str, &ChitchatId> = HashMap::new();
    for id in live {
        let e = by_name.entry(&id.node_id).or_insert(id);
        if id.generation_id > e.generation_id {
            *e = id;
        }
    }
    by_name.into_values()
}

/// The record to publish for a server this node checks, with version 0
/// (set when published). `None` while its status is not this node's own.
fn own_record(
    server: &Server,
    cap: u32,
    now: std::time::Instant,
    epoch_ms: u64,
    changed_ms: u64,
) -> Option<ServerRecord> {
    let l7 = server.l7();
    if l7.source != Source::Local || l7.state == L7State::Unchecked {
        return None;
    }
    let l4_down_until_ms = server.l4_down_for(now).map_or(0, |d| epoch_ms + d.as_millis() as u64);
    Some(ServerRecord {
        state: l7.state,
        // Counts past the thresholds say nothing more; capping them keeps
        // a steady server's record (and the gossip) unchanged.
        passes: l7.consecutive_passes.min(cap),
        failures: l7.consecutive_failures.min(cap),
        version: 0,
        l4_down_until_ms,
        changed_ms,
    })
}

/// Gossip intervals a record older than this node's view is refused for
/// ([`older_than_seen`]) before it is taken all the same.
const STALE_GRACE: u32 = 10;

/// Whether `record` is older than this node's own view of the server
/// (`seen`: its state and since when, epoch ms) and says otherwise: then it
/// is not adopted. A record of the same state is (it only names the new
/// checking node), and so is one of unknown age (`changed_ms` 0, from a
/// node that predates the field). `slack` absorbs clock differences
/// between nodes: a record is older only by more than that.
pub(crate) fn older_than_seen(record: &ServerRecord, seen: Option<(L7State, u64)>, slack: Duration) -> bool {
    let Some((state, since)) = seen else { return false };
    record.state != state
        && record.changed_ms != 0
        && record.changed_ms.saturating_add(slack.as_millis() as u64) < since
}

#[allow(clippy::too_many_arguments)]
fn adopt(
    inner: &Inner,
    state: &mut SyncState,
    cc: &chitchat::Chitchat,
    id: &ChitchatId,
    owner: &Arc<str>,
    server: &Server,
    key: u64,
    (now, epoch_ms): (std::time::Instant, u64),
) {
    let Some(text) = cc.node_state(id).and_then(|n| n.get(&gossip_key(key))) else { return };
    // Already adopted, unless something here wrote the status since (a
    // check that was in flight when ownership moved, a reload's reset).
    if state.adopted.get(&key).is_some_and(|(n, v)| n == owner && v == text)
        && matches!(&server.l7().source, Source::Cluster(n) if n == owner)
    {
        return;
    }
    let record = match ServerRecord::decode(text) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(node = %owner, error = %e, "cluster: ignoring a record");
            return;
        }
    };
    if older_than_seen(&record, state.seen.get(&key).copied(), inner.interval) {
        // Refused for a while only: the owner's newer record normally
        // arrives within a few rounds; one it still stands by after
        // STALE_GRACE rounds is its real view (it saw no change where this
        // node did), and a node that does not check the server must not
        // keep its own old view for ever.
        let since = match state.refused.get(&key) {
            Some((n, v, at)) if n == owner && v == text => *at,
            _ => {
                tracing::debug!(node = %owner, server = %server.addr(), record = %text,
                    "cluster: not adopting a record older than this node's view");
                state.refused.insert(key, (Arc::clone(owner), text.to_owned(), now));
                now
            }
        };
        if now.duration_since(since) < inner.interval * STALE_GRACE {
            return;
        }
    }
    state.refused.remove(&key);
    server.set_l7(L7Status {
        state: record.state,
        consecutive_passes: record.passes,
        consecutive_failures: record.failures,
        last_check: Some(now),
        last_result: None,
        source: Source::Cluster(Arc::clone(owner)),
    });
    // The owner's L4-down mark, advisory: taken only by a server with no
    // L4 history here, and tried again by a request once it lapses.
    if record.l4_down_until_ms > epoch_ms {
        server.adopt_l4_down(now + Duration::from_millis(record.l4_down_until_ms - epoch_ms), now);
    }
    inner.metrics.adopted.fetch_add(1, Ordering::Relaxed);
    state.adopted.insert(key, (Arc::clone(owner), text.to_owned()));
    if record.state != L7State::Unknown {
        let since = if record.changed_ms != 0 { record.changed_ms } else { epoch_ms };
        state.seen.insert(key, (record.state, since));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_seen_in_two_incarnations_counts_once_as_its_newest() {
        let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let live = vec![
            ChitchatId::new("edge-1", 5, addr),
            ChitchatId::new("edge-2", 1, addr),
            ChitchatId::new("edge-1", 9, addr),
            ChitchatId::new("edge-1", 7, addr),
        ];
        let mut got: Vec<(String, u64)> =
            newest(&live).map(|id| (id.node_id.to_string(), id.generation_id)).collect();
        got.sort();
        assert_eq!(got, [("edge-1".to_owned(), 9), ("edge-2".to_owned(), 1)]);
    }

    #[test]
    fn a_record_older_than_what_a_node_saw_and_saying_otherwise_is_not_adopted() {
        let slack = Duration::from_millis(100);
        let healthy_before = ServerRecord {
            state: L7State::Healthy,
            passes: 2,
            failures: 0,
            version: 7,
            l4_down_until_ms: 0,
            changed_ms: 1_000_000,
        };
        // The other side's pre-partition record against this side's newer
        // change: refused.
        assert!(older_than_seen(&healthy_before, Some((L7State::Unhealthy, 1_005_000)), slack));
        // The same state, only a new checking node: taken.
        assert!(!older_than_seen(&healthy_before, Some((L7State::Healthy, 1_005_000)), slack));
        // Newer than the local view, or within the clock slack: taken.
        assert!(!older_than_seen(&healthy_before, Some((L7State::Unhealthy, 999_000)), slack));
        assert!(!older_than_seen(&healthy_before, Some((L7State::Unhealthy, 1_000_050)), slack));
        // Nothing seen here, or a record of unknown age (an older node's): taken.
        assert!(!older_than_seen(&healthy_before, None, slack));
        let ageless = ServerRecord { changed_ms: 0, ..healthy_before };
        assert!(!older_than_seen(&ageless, Some((L7State::Unhealthy, 1_005_000)), slack));
    }

    #[tokio::test]
    async fn a_taken_gossip_address_is_a_bind_error_with_the_system_s_reason() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap();
        let config = ClusterConfig {
            node_id: "edge-1".into(),
            listen,
            seeds: Vec::new(),
            cluster_id: "vigil-test".into(),
            gossip_interval: Duration::from_millis(100),
            key: crate::ClusterKey::from_bytes(&[7; 32]).unwrap(),
            previous_keys: Vec::new(),
        };
        let Err(err) = Cluster::start(config, HostDb::new()).await else { panic!("bound a taken address") };
        assert_eq!(err.listen(), listen);
        match &err {
            ClusterError::Bind { error, .. } => assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse),
            other => panic!("not a bind error: {other}"),
        }
        assert!(
            err.to_string().starts_with(&format!("cluster: cannot bind the gossip socket {listen}/udp: "))
        );
    }
}
