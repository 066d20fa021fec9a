//! HostDB integration tests: one binary, a module per area.

// Helpers outside #[test] fns are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod apply;
mod concurrency;
mod dns;
mod policy;
mod select;
mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use vigil_hostdb::{Event, HostDb, HostDbConfig, L4Policy, L7Policy, LbPolicy, OriginSpec, ServerSource};

/// `n` loopback servers 127.0.0.2.. on `port`.
pub(crate) fn addrs(n: u8, port: u16) -> Vec<SocketAddr> {
    (0..n).map(|i| SocketAddr::from(([127, 0, 0, 2 + i], port))).collect()
}

pub(crate) fn spec(key: &str, servers: Vec<SocketAddr>, lb: LbPolicy) -> OriginSpec {
    OriginSpec {
        key: key.parse().unwrap(),
        servers: ServerSource::Static(servers),
        lb,
        check: Some(L7Policy::default()),
        policy: Default::default(),
    }
}

/// A HostDb with one origin `app:80`.
pub(crate) fn db_with(servers: Vec<SocketAddr>, lb: LbPolicy, l4: L4Policy) -> HostDb {
    let db = HostDb::new();
    db.apply(&HostDbConfig { l4, origins: vec![spec("app:80", servers, lb)] }).unwrap();
    db
}

/// The paused-aware clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Records every event.
#[derive(Default)]
pub(crate) struct Recorder(pub(crate) Mutex<Vec<Event>>);

impl Recorder {
    pub(crate) fn attach(db: &HostDb) -> Arc<Self> {
        let r = Arc::new(Self::default());
        let r2 = Arc::clone(&r);
        db.subscribe(Arc::new(move |e: &Event| r2.0.lock().push(e.clone())));
        r
    }
    pub(crate) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// An origin key from text.
pub(crate) fn k(s: &str) -> vigil_hostdb::OriginKey {
    s.parse().unwrap()
}
