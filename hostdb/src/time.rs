//! Time as an input. HostDB never reads a clock on its own: every call that
//! depends on time takes `now`, so tests drive it with paused tokio time and
//! the request path reads the clock once per request, in the caller.

use std::time::{Duration, Instant};

/// The instant every packed timestamp is counted from, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(Instant);

/// Milliseconds since the epoch fit in 40 bits (34 years) in the packed L4 word.
pub(crate) const MS_MAX: u64 = (1 << 40) - 1;

impl Epoch {
    /// Captures the epoch. Uses tokio's clock so a paused test runtime and
    /// HostDB agree on what "now" is.
    pub(crate) fn now() -> Self {
        Self(tokio::time::Instant::now().into_std())
    }

    pub(crate) fn ms(self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.0).as_millis() as u64).min(MS_MAX)
    }

    pub(crate) fn instant(self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

/// Duration to whole milliseconds, rounded up so a non-zero wait never becomes zero.
pub(crate) fn ceil_ms(d: Duration) -> u64 {
    let ms = d.as_millis() as u64;
    if Duration::from_millis(ms) < d { ms + 1 } else { ms }
}
