//! The host database itself: the origin map, config apply, subscriptions.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::dns::{self, DnsPolicy, Resolve};
use crate::event::{Subscriber, Subscribers, SubscriptionId};
use crate::origin::{Origin, OriginSpec, ServerSource};
use crate::select::{Attempt, Pick};
use crate::server::Hub;
use crate::time::Epoch;
use crate::{ConfigError, L4Policy, OriginKey, SelectError};

/// Origins filed under their [`OriginKey::hash64`]: a lookup with a key
/// in hand hashes nothing and compares the text only on a hash match.
#[derive(Default)]
struct OriginMap {
    table: hashbrown::HashTable<Arc<Origin>>,
}

impl OriginMap {
    fn with_capacity(n: usize) -> Self {
        Self { table: hashbrown::HashTable::with_capacity(n) }
    }

    #[inline]
    fn get(&self, key: &OriginKey) -> Option<&Arc<Origin>> {
        self.table.find(key.hash64(), |o| o.key() == key)
    }

    fn get_str(&self, key: &str) -> Option<&Arc<Origin>> {
        let hash = OriginKey::hash_str(key);
        self.table.find(hash, |o| o.key().hash64() == hash && o.key().as_str() == key)
    }

    fn insert(&mut self, origin: Arc<Origin>) {
        self.table.insert_unique(origin.key().hash64(), origin, |o| o.key().hash64());
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Origin>> {
        self.table.iter()
    }
}

/// The whole desired state: L4 policy and every origin. Applied atomically by
/// [`HostDb::apply`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostDbConfig {
    /// The L4 fail function's settings, for every server.
    pub l4: L4Policy,
    /// The origins. Origins not listed are removed.
    pub origins: Vec<OriginSpec>,
}

/// What [`HostDb::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Origins that were new.
    pub added: Vec<crate::OriginKey>,
    /// Origins that were dropped.
    pub removed: Vec<crate::OriginKey>,
    /// Origins that stayed (their servers keep status where addresses stay).
    pub kept: usize,
}

/// Builds a [`HostDb`].
pub struct HostDbBuilder {
    resolver: Option<Arc<dyn Resolve>>,
    dns: DnsPolicy,
    runtime: Option<tokio::runtime::Handle>,
}

impl fmt::Debug for HostDbBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostDbBuilder")
            .field("resolver", &self.resolver.is_some())
            .field("dns", &self.dns)
            .finish()
    }
}

impl HostDbBuilder {
    /// The resolver for DNS origins. Without one, an origin with no static
    /// server list is a config error.
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Bounds on DNS refresh.
    pub fn dns_policy(mut self, policy: DnsPolicy) -> Self {
        self.dns = policy;
        self
    }

    /// The runtime DNS refresh tasks run on (default: the one `apply` is called in).
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Builds an empty HostDb. Its clock epoch is now (tokio's clock, so
    /// paused-time tests agree with it).
    ///
    /// # Errors
    /// When the DNS policy is out of range.
    pub fn build(self) -> Result<HostDb, ConfigError> {
        self.dns.validate()?;
        Ok(HostDb {
            inner: Arc::new(Inner {
                hub: Arc::new(Hub {
                    epoch: Epoch::now(),
                    l4: ArcSwap::from_pointee(L4Policy::default()),
                    subscribers: Subscribers::new(),
                }),
                origins: ArcSwap::from_pointee(OriginMap::default()),
                resolver: self.resolver,
                dns: self.dns,
                runtime: self.runtime,
                apply_lock: Mutex::new(()),
            }),
        })
    }
}

struct Inner {
    hub: Arc<Hub>,
    origins: ArcSwap<OriginMap>,
    resolver: Option<Arc<dyn Resolve>>,
    dns: DnsPolicy,
    runtime: Option<tokio::runtime::Handle>,
    apply_lock: Mutex<()>,
}

/// The host database: origins, their servers, and each server's health.
///
/// Cheap to clone (one `Arc`); every clone sees the same data. See the
/// [crate docs](crate) for an example and [`docs`](crate::docs) for
/// performance notes and limits.
#[derive(Clone)]
pub struct HostDb {
    inner: Arc<Inner>,
}

impl fmt::Debug for HostDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostDb").field("origins", &self.inner.origins.load().len()).finish()
    }
}

impl HostDb {
    /// A builder (resolver, DNS policy, runtime).
    pub fn builder() -> HostDbBuilder {
        HostDbBuilder { resolver: None, dns: DnsPolicy::default(), runtime: None }
    }

    /// An empty HostDb without DNS.
    pub fn new() -> Self {
        // The default DNS policy is valid, so this cannot fail.
        match Self::builder().build() {
            Ok(db) => db,
            Err(e) => unreachable!("default HostDb config rejected: {e}"),
        }
    }

    /// Replaces the configuration as one batch: the L4 policy, then the origin
    /// map in a single swap. Origins that stay keep their object, and servers
    /// whose address stays keep their status; DNS origins keep their last
    /// answer until the next one. On error nothing changes.
    ///
    /// # Errors
    /// [`ConfigError`] for duplicate origins, out-of-range policies, or a DNS
    /// origin without a resolver or a runtime.
    pub fn apply(&self, config: &HostDbConfig) -> Result<ApplyReport, ConfigError> {
        config.l4.validate()?;
        let mut keys = HashSet::with_capacity(config.origins.len());
        for spec in &config.origins {
            if !keys.insert(spec.key.as_str()) {
                return Err(ConfigError::DuplicateOrigin(spec.key.to_string()));
            }
            if let Some(check) = &spec.check {
                check.validate()?;
            }
        }
        let first_dns = config.origins.iter().find(|s| s.servers == ServerSource::Dns);
        let runtime = match (first_dns, &self.inner.resolver) {
            (None, _) => None,
            (Some(spec), None) => return Err(ConfigError::NoResolver(spec.key.to_string())),
            (Some(spec), Some(_)) => {
                match self.inner.runtime.clone().or_else(|| tokio::runtime::Handle::try_current().ok()) {
                    Some(rt) => Some(rt),
                    None => return Err(ConfigError::NoRuntime(spec.key.to_string())),
                }
            }
        };

        let _apply = self.inner.apply_lock.lock();
        self.inner.hub.l4.store(Arc::new(config.l4));
        let old = self.inner.origins.load_full();
        let mut map = OriginMap::with_capacity(config.origins.len());
        let mut report = ApplyReport::default();
        let mut start_dns = Vec::new();
        for spec in &config.origins {
            let origin = match old.get(&spec.key) {
                Some(o) => {
                    let was_dns = o.uses_dns();
                    o.reconfigure(spec);
                    report.kept += 1;
                    if spec.servers == ServerSource::Dns && !was_dns {
                        start_dns.push(Arc::clone(o));
                    }
                    if spec.servers != ServerSource::Dns {
                        stop_dns(o);
                    }
                    Arc::clone(o)
                }
                None => {
                    let o = Arc::new(Origin::new(spec, Arc::clone(&self.inner.hub)));
                    report.added.push(spec.key.clone());
                    if spec.servers == ServerSource::Dns {
                        start_dns.push(Arc::clone(&o));
                    }
                    o
                }
            };
            map.insert(origin);
        }
        for o in old.iter() {
            if map.get(o.key()).is_none() {
                stop_dns(o);
                report.removed.push(o.key().clone());
            }
        }
        self.inner.origins.store(Arc::new(map));
        if let (Some(rt), Some(resolver)) = (runtime, &self.inner.resolver) {
            for o in start_dns {
                dns::spawn_refresh(&o, Arc::clone(resolver), self.inner.dns, &rt);
            }
        }
        Ok(report)
    }

    /// The current L4 policy.
    pub fn l4_policy(&self) -> L4Policy {
        **self.inner.hub.l4.load()
    }

    /// The origin under `key`, the canonical `host:port` text (see [`OriginKey`]).
    pub fn origin(&self, key: &str) -> Option<Arc<Origin>> {
        self.inner.origins.load().get_str(key).cloned()
    }

    /// The origin under `key`.
    pub fn origin_by_key(&self, key: &OriginKey) -> Option<Arc<Origin>> {
        self.inner.origins.load().get(key).cloned()
    }

    /// The server `addr` of origin `key` (canonical `host:port` text): what
    /// an admin request naming both resolves to.
    pub fn server(&self, key: &str, addr: std::net::SocketAddr) -> Option<Arc<crate::Server>> {
        self.inner.origins.load().get_str(key)?.server(addr)
    }

    /// Every origin, in no particular order.
    pub fn origins(&self) -> Vec<Arc<Origin>> {
        self.inner.origins.load().iter().cloned().collect()
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.inner.origins.load().len()
    }

    /// Whether there are no origins.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request path: looks `origin` up and picks a routable server for
    /// one request at `now`, never one that `attempt` already tried. The key
    /// carries its hash, so this is a table probe, two arc-swap loads and an
    /// atomic load or two per server considered: no lock, no allocation, and
    /// no clock read unless a server is L4-down.
    ///
    /// # Errors
    /// [`SelectError`] says which answer the client should get.
    #[inline]
    pub fn select(
        &self,
        origin: &OriginKey,
        attempt: &mut Attempt,
        now: Instant,
    ) -> Result<Pick, SelectError> {
        let map = self.inner.origins.load();
        match map.get(origin) {
            Some(o) => o.select(attempt, now),
            None => Err(SelectError::UnknownOrigin),
        }
    }

    /// Registers a subscriber for every [`Event`](crate::Event).
    pub fn subscribe(&self, subscriber: Arc<dyn Subscriber>) -> SubscriptionId {
        let subs = &self.inner.hub.subscribers;
        let id = SubscriptionId(subs.next.fetch_add(1, Ordering::Relaxed));
        subs.list.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push((id, Arc::clone(&subscriber)));
            list
        });
        id
    }

    /// Removes a subscriber. Returns whether it was registered.
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let subs = &self.inner.hub.subscribers;
        let prev = subs.list.rcu(|list| list.iter().filter(|(i, _)| *i != id).cloned().collect::<Vec<_>>());
        prev.iter().any(|(i, _)| *i == id)
    }

    /// A point-in-time view of every origin and server, for the admin API.
    pub fn snapshot(&self, now: Instant) -> crate::HostsView {
        crate::snapshot::build(&self.origins(), now)
    }

    /// The view of one server, as [`HostDb::snapshot`] shows it (pool
    /// counts at zero): what a subscriber sends along with an [`Event`](crate::Event)
    /// to say where the server stands after it. `None` when the origin or
    /// the server is not there (any more).
    pub fn server_view(
        &self,
        origin: &OriginKey,
        server: std::net::SocketAddr,
        now: Instant,
    ) -> Option<crate::ServerView> {
        crate::snapshot::one_server(&*self.origin_by_key(origin)?, server, now)
    }
}

impl Default for HostDb {
    fn default() -> Self {
        Self::new()
    }
}

fn stop_dns(origin: &Origin) {
    if let Some(task) = origin.dns_task.lock().take() {
        task.abort();
    }
}
