//! DNS: the [`Resolve`] trait, the background refresh that honours TTLs, and
//! (feature `hickory`, on by default) [`HickoryResolver`].
//!
//! Each DNS origin has one refresh task. It installs every good answer
//! (servers that stay keep their status), sleeps for the answer's TTL clamped
//! to [`DnsPolicy`]'s bounds, and on failure keeps the last answer, logs once
//! per run of failures, records the error for the admin view, and retries
//! with capped exponential backoff.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::DnsError;
use crate::event::Event;
use crate::origin::{DnsStatus, Origin};

/// One DNS answer: the addresses and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The A and AAAA addresses, in the resolver's order.
    pub addrs: Vec<IpAddr>,
    /// Time to live of the answer.
    pub ttl: Duration,
}

/// The boxed future a [`Resolve`] returns.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = Result<DnsAnswer, DnsError>> + Send + 'a>>;

/// Something that turns a host name into addresses with a TTL.
///
/// [`HickoryResolver`] is the production one; [`StaticResolver`] answers from
/// a fixed table (tests, or a hosts-file style setup).
pub trait Resolve: Send + Sync + 'static {
    /// Looks `host` up.
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a>;
}

/// Bounds on the refresh schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsPolicy {
    /// Shortest time between lookups of one name, whatever the TTL (a TTL of
    /// 0 must not turn into a query storm).
    pub min_ttl: Duration,
    /// Longest time an answer is used before it is looked up again.
    pub max_ttl: Duration,
    /// First retry delay after a failure; doubles per failure.
    pub retry_min: Duration,
    /// Retry delay cap.
    pub retry_max: Duration,
}

impl Default for DnsPolicy {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

impl DnsPolicy {
    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        let bad = |field, reason| Err(crate::ConfigError::Invalid { field, reason });
        if self.min_ttl.is_zero() || self.min_ttl > self.max_ttl {
            return bad("dns.min_ttl", "must be more than 0 and at most max_ttl");
        }
        if self.retry_min.is_zero() || self.retry_min > self.retry_max {
            return bad("dns.retry_min", "must be more than 0 and at most retry_max");
        }
        Ok(())
    }

    fn refresh_after(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl)
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.retry_min.saturating_mul(factor).min(self.retry_max)
    }
}

/// Starts the refresh task of a DNS origin. The task holds the origin weakly
/// and ends when the origin is dropped or reconfigured to a static list.
pub(crate) fn spawn_refresh(
    origin: &Arc<Origin>,
    resolver: Arc<dyn Resolve>,
    policy: DnsPolicy,
    runtime: &tokio::runtime::Handle,
) {
    let weak = Arc::downgrade(origin);
    let task = runtime.spawn(refresh_loop(weak, resolver, policy));
    if let Some(old) = origin.dns_task.lock().replace(task.abort_handle()) {
        old.abort();
    }
}

async fn refresh_loop(origin: Weak<Origin>, resolver: Arc<dyn Resolve>, policy: DnsPolicy) {
    let mut failures = 0u32;
    loop {
        let Some(o) = origin.upgrade() else { return };
        if !o.uses_dns() {
            return;
        }
        let host = o.key().host().to_owned();
        let port = o.key().port();
        drop(o); // hold no strong reference across the lookup
        let result = resolver.resolve(&host).await;
        let Some(o) = origin.upgrade() else { return };
        let now = tokio::time::Instant::now();
        let prev = o.dns.load_full();
        let wait = match result {
            Ok(answer) if !answer.addrs.is_empty() => {
                let addrs: Vec<SocketAddr> =
                    answer.addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
                o.set_resolved(&addrs);
                if failures > 0 && prev.as_ref().is_some_and(|p| p.error.is_some()) {
                    o.hub_emit(Event::Dns { origin: o.key().clone(), error: None });
                }
                failures = 0;
                let wait = policy.refresh_after(answer.ttl);
                o.dns.store(Some(Arc::new(DnsStatus {
                    resolved_at: Some(now.into_std()),
                    ttl: Some(answer.ttl),
                    error: None,
                    failing_since: None,
                    next_refresh: Some((now + wait).into_std()),
                })));
                wait
            }
            other => {
                let message = match other {
                    Ok(_) => format!("DNS lookup of {host} returned no addresses"),
                    Err(e) => e.to_string(),
                };
                failures += 1;
                let wait = policy.backoff(failures);
                let prev = prev.as_deref();
                if prev.is_none_or(|p| p.error.is_none()) {
                    // Logged (and emitted) once per run of failures.
                    o.hub_emit(Event::Dns { origin: o.key().clone(), error: Some(message.clone()) });
                }
                o.dns.store(Some(Arc::new(DnsStatus {
                    resolved_at: prev.and_then(|p| p.resolved_at),
                    ttl: prev.and_then(|p| p.ttl),
                    error: Some(message),
                    failing_since: prev.and_then(|p| p.failing_since).or(Some(now.into_std())),
                    next_refresh: Some((now + wait).into_std()),
                })));
                wait
            }
        };
        o.ready.send_replace(true);
        drop(o);
        tokio::time::sleep(wait).await;
    }
}

/// Answers from a fixed table; a name not in it fails. Useful in tests and
/// for setups that pin names to addresses.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    table: std::collections::HashMap<String, DnsAnswer>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an answer for `host`.
    pub fn with(mut self, host: &str, addrs: Vec<IpAddr>, ttl: Duration) -> Self {
        self.table.insert(host.to_ascii_lowercase(), DnsAnswer { addrs, ttl });
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        let answer = self
            .table
            .get(host)
            .cloned()
            .ok_or_else(|| DnsError { host: host.to_owned(), message: "not in the static table".to_owned() });
        Box::pin(std::future::ready(answer))
    }
}

/// A resolver backed by hickory-resolver (A and AAAA, its own cache).
#[cfg(feature = "hickory")]
#[derive(Clone)]
pub struct HickoryResolver {
    inner: hickory_resolver::TokioResolver,
}

#[cfg(feature = "hickory")]
impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HickoryResolver")
    }
}

#[cfg(feature = "hickory")]
impl HickoryResolver {
    /// Uses the system configuration (`/etc/resolv.conf` on Unix).
    ///
    /// # Errors
    /// When the system configuration cannot be read.
    pub fn from_system_conf() -> Result<Self, DnsError> {
        let builder = hickory_resolver::Resolver::builder_tokio().map_err(|e| DnsError {
            host: String::new(),
            message: format!("reading the system resolver config: {e}"),
        })?;
        Self::build(builder)
    }

    /// Queries exactly these name servers (UDP, then TCP for truncated answers).
    ///
    /// # Errors
    /// When the resolver cannot be built.
    pub fn with_name_servers(servers: &[SocketAddr]) -> Result<Self, DnsError> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        let name_servers = servers
            .iter()
            .map(|sa| {
                let conns = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = sa.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(sa.ip(), true, conns)
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers);
        let provider = hickory_resolver::net::runtime::TokioRuntimeProvider::default();
        Self::build(hickory_resolver::Resolver::builder_with_config(config, provider))
    }

    fn build(
        mut builder: hickory_resolver::ResolverBuilder<hickory_resolver::net::runtime::TokioRuntimeProvider>,
    ) -> Result<Self, DnsError> {
        // Origins are looked up by their full name: no search-domain guessing.
        builder.options_mut().ndots = 0;
        let inner = builder
            .build()
            .map_err(|e| DnsError { host: String::new(), message: format!("building the resolver: {e}") })?;
        Ok(Self { inner })
    }
}

#[cfg(feature = "hickory")]
impl Resolve for HickoryResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            // A trailing dot makes the name fully qualified.
            let fqdn = format!("{}.", host.trim_end_matches('.'));
            let lookup = self
                .inner
                .lookup_ip(fqdn.as_str())
                .await
                .map_err(|e| DnsError { host: host.to_owned(), message: e.to_string() })?;
            // hickory reports validity as a std Instant on the real clock.
            #[allow(clippy::disallowed_methods)]
            let ttl = lookup.valid_until().saturating_duration_since(std::time::Instant::now());
            Ok(DnsAnswer { addrs: lookup.iter().collect(), ttl })
        })
    }
}
