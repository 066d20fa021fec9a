//! Bounds on what clients hold and on what one origin is sent: the
//! process's open-file limit, the client connection slots
//! (`limits.max_connections`) and each origin's queue (`max_connections`
//! and `queue_timeout` per origin, a circuit breaker as HAProxy's
//! `maxconn` and `timeout queue` make one).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Raises the soft open-file limit to the hard one (as nginx's
/// `worker_rlimit_nofile` and Go's runtime do): a proxy holds two
/// descriptors per client, and the usual soft default of 1 024 is far too
/// low. Returns the limit in force afterwards.
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// `limits.max_connections` when the config leaves it out: half the
/// open-file limit (each proxied connection holds a client and an upstream
/// descriptor), less some for listeners, logs and checks.
pub(crate) fn auto_max_connections(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(64) / 2).unwrap_or(usize::MAX).max(64)
}

/// Client connections open on the proxy listeners, against
/// `limits.max_connections`.
#[derive(Debug, Default)]
pub(crate) struct ClientSlots {
    open: AtomicUsize,
}

impl ClientSlots {
    /// A slot for one more connection, or `None` when `max` are open.
    pub(crate) fn take(self: &Arc<Self>, max: usize) -> Option<ClientSlot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ClientSlot(Arc::clone(self)))
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One open client connection; the slot frees when it drops.
#[derive(Debug)]
pub(crate) struct ClientSlot(Arc<ClientSlots>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One origin's bound on requests in flight to it (for HTTP/1.1, its
/// connections in use): past it, requests wait in a queue, first come
/// first served, up to `queue_timeout`, then get 503.
#[derive(Debug)]
pub(crate) struct OriginQueue {
    room: Arc<Semaphore>,
    pub(crate) max: u32,
    pub(crate) timeout: Duration,
}

/// Why a request got no room at its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueTimeout;

impl OriginQueue {
    pub(crate) fn new(max: u32, timeout: Duration) -> Self {
        Self { room: Arc::new(Semaphore::new(max as usize)), max, timeout }
    }

    /// Room for one request: at once when there is some, else after
    /// waiting in line. `queued` runs when the request has to wait.
    pub(crate) async fn enter(&self, queued: impl FnOnce()) -> Result<OwnedSemaphorePermit, QueueTimeout> {
        if let Ok(permit) = Arc::clone(&self.room).try_acquire_owned() {
            return Ok(permit);
        }
        queued();
        // The semaphore is fair: waiters are let in in arrival order.
        match tokio::time::timeout(self.timeout, Arc::clone(&self.room).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Closed (never happens: nothing closes it) or out of time.
            _ => Err(QueueTimeout),
        }
    }

    /// Requests in flight now (permits out).
    pub(crate) fn in_flight(&self) -> u32 {
        self.max.saturating_sub(self.room.available_permits() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_slots_stop_at_the_limit_and_free_on_drop() {
        let slots = Arc::new(ClientSlots::default());
        let a = slots.take(2);
        let b = slots.take(2);
        assert!(a.is_some() && b.is_some());
        assert!(slots.take(2).is_none());
        assert_eq!(slots.open(), 2);
        drop(a);
        assert!(slots.take(2).is_some(), "a freed slot is taken again");
        assert_eq!(slots.open(), 1, "the one taken above dropped at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_origin_queues_then_times_out() {
        let q = OriginQueue::new(1, Duration::from_secs(2));
        let first = q.enter(|| panic!("room at once")).await.expect("room");
        assert_eq!(q.in_flight(), 1);
        let mut waited = false;
        let started = tokio::time::Instant::now();
        assert_eq!(q.enter(|| waited = true).await.err(), Some(QueueTimeout));
        assert!(waited);
        assert_eq!(started.elapsed(), Duration::from_secs(2), "it waited the queue timeout");
        // A request that waits gets the room the first one gives back.
        let handoff = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(first);
        };
        let (got, ()) = tokio::join!(q.enter(|| {}), handoff);
        assert!(got.is_ok());
    }
}
