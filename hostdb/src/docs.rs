//! Performance notes and limits.
//!
//! # Performance
//!
//! The request path, [`HostDb::select`](crate::HostDb::select), costs:
//! one `arc-swap` load of the origin map, a hash-table probe with the hash
//! the [`OriginKey`](crate::OriginKey) carries (xxh3, computed once when the
//! key was parsed; the key text is compared only on a hash match, and not at
//! all when the caller's key shares the config's `Arc`), one `arc-swap` load
//! of the origin's state, then per server considered two atomic loads
//! (flags, packed L4 word). Round robin advances its counter with a plain
//! load and store; the pick adds one `fetch_add` on the server's in-flight
//! counter and an `Arc` clone (both undone when the pick drops). There is no
//! lock, no allocation, and no clock read unless a server is L4-down.
//!
//! In time, the atomic read-modify-writes dominate (two per `arc-swap` load,
//! four for the pick): about 45-58 ns per lookup+select+release median on the
//! 2-core development VM whatever the origin count, when the origin is warm in
//! cache. Walking many origins (4 096 keys over 100 000 origins) costs
//! 150-330 ns, bounded by about five dependent cache misses (table, origin,
//! state, server list, server). A `RwLock<HashMap>` with no writer is no
//! faster hot; with one writer storming updates it falls to about 15 us per
//! lookup (15-21 us measured), while HostDB stays within 2x of its quiet figure.
//!
//! Writers never block readers: an L4 report is one compare-and-swap (and a
//! success on a clean server is one load, no store); an L7 result publishes a
//! new immutable record; a config apply or DNS answer builds the new state
//! aside and publishes it with one swap.
//!
//! Measured figures (criterion, this repository's `benches/`) are in the
//! header of `benches/benches/hostdb.rs`; the instruction counts the CI gate
//! holds the code to are in `benches/perf-baseline.json`.
//!
//! # Limits
//!
//! - **Atomicity is per origin.** A config apply swaps the origin map once,
//!   and each origin's server list, ring and policies once; a request sees
//!   each origin either wholly before or wholly after, but two origins may be
//!   seen from different sides of an apply. Keeping DNS refreshes per origin
//!   (not copying a 100 000-origin map per answer) is worth that.
//! - **Selection is linear in unroutable servers.** Round robin and least
//!   requests skip unroutable servers one by one from their starting point;
//!   a consistent-hash walk visits at most 400 ring points, then scans the
//!   server list from the key's home server. So a request costs O(servers)
//!   when most are out. Origins have tens of servers, not thousands.
//! - **Skipping biases the split.** A server after a run of unroutable ones
//!   inherits their share in round robin (as nginx's does).
//! - **Millisecond resolution** for L4 times, and the packed counter
//!   saturates at 4 194 303 consecutive failures.
//! - **A lost retry probe** (the request was cancelled and never reported)
//!   lapses after `down_time`; then another request may probe.
//! - **Events run on the writer's thread.** A slow [`Subscriber`](crate::Subscriber)
//!   slows whoever reported the change (a request or a check): hand work off.
