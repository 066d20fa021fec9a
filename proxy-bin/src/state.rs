//! The state file (`state_file`, HAProxy's `server-state-file`): what
//! HostDB knows of each server, written every `state_save_interval` and at
//! shutdown, loaded at start, so a restart neither sends traffic to a
//! server that was down nor forgets an operator's maintenance.
//!
//! Written atomically (a temporary file, synced, renamed over the old one).
//! Loaded only when it is ours (its `format`), younger than `state_max_age`,
//! and only for the origins and servers the config still has. A file that
//! is missing, corrupt, foreign or old is logged and ignored: never fatal.
//!
//! A binary upgrade hands the same document to the new process over the
//! upgrade socket ([`to_bytes`], [`apply_bytes`]) rather than through the
//! disk: the new process routes as the old one did from its first request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vigil_hostdb::{CheckResult, HostDb, L7State, L7Status, Source};

/// The `format` of our files (and the version of their shape).
const FORMAT: &str = "vigil-state/1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    /// When it was written (ms since the Unix epoch).
    written_unix_ms: u64,
    origins: Vec<OriginState>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginState {
    origin: String,
    servers: Vec<ServerState>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerState {
    addr: SocketAddr,
    maintenance: bool,
    /// A weight set with `POST /weight` (the configured one is the config's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
    /// L4 down time left when written (0: up).
    #[serde(default)]
    l4_down_ms: u64,
    /// The L7 verdict, when there was one (healthy or unhealthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l7: Option<L7Saved>,
    /// Outlier ejection time left when written (0: none), and ejections.
    #[serde(default)]
    ejected_ms: u64,
    #[serde(default)]
    ejections: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct L7Saved {
    healthy: bool,
    consecutive_passes: u32,
    consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The state of every server of `db` now, as the file holds it.
fn capture(db: &HostDb, now: std::time::Instant) -> StateFile {
    let mut origins: Vec<OriginState> = db
        .origins()
        .iter()
        .map(|o| OriginState {
            origin: o.key().as_str().to_owned(),
            servers: o
                .servers()
                .iter()
                .map(|s| {
                    let l7 = s.l7();
                    let (_, ejections, ejected) = s.outlier(now);
                    ServerState {
                        addr: s.addr(),
                        maintenance: s.maintenance(),
                        weight: o.weight_override(s.addr()),
                        l4_down_ms: s.l4_down_for(now).map_or(0, |d| d.as_millis() as u64),
                        l7: matches!(l7.state, L7State::Healthy | L7State::Unhealthy).then(|| L7Saved {
                            healthy: l7.state == L7State::Healthy,
                            consecutive_passes: l7.consecutive_passes,
                            consecutive_failures: l7.consecutive_failures,
                            detail: l7.last_result.as_ref().map(|r| r.detail.to_string()),
                        }),
                        ejected_ms: ejected.map_or(0, |d| d.as_millis() as u64),
                        ejections,
                    }
                })
                .collect(),
        })
        .collect();
    origins.sort_by(|a, b| a.origin.cmp(&b.origin));
    StateFile { format: FORMAT.to_owned(), written_unix_ms: unix_ms(SystemTime::now()), origins }
}

/// Writes the state of `db` to `path` atomically. Blocking file I/O: call
/// from a blocking thread.
pub(crate) fn save(db: &HostDb, path: &Path) -> Result<(), String> {
    use std::io::Write as _;
    let state = capture(db, tokio::time::Instant::now().into_std());
    let mut text = serde_json::to_vec_pretty(&state).map_err(|e| e.to_string())?;
    text.push(b'\n');
    // A name of its own per write: the periodic writer and the one at
    // shutdown may overlap, and neither may rename the other's half.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot write the state file: {e}", path.display())
    })
}

/// The state of every server of `db` now, as the state file would hold it
/// (a binary upgrade sends it to the new process).
pub(crate) fn to_bytes(db: &HostDb) -> Vec<u8> {
    let state = capture(db, tokio::time::Instant::now().into_std());
    // Plain data of our own types: serializing it cannot fail.
    serde_json::to_vec(&state).unwrap_or_default()
}

/// Applies `bytes` (made by [`to_bytes`] in the old process) to `db`, as a
/// state file without a maximum age: it was taken a moment ago.
///
/// # Errors
/// Bytes that are not a state document of this format; nothing is applied.
pub(crate) fn apply_bytes(db: &HostDb, bytes: &[u8]) -> Result<Loaded, String> {
    let state: StateFile =
        serde_json::from_slice(bytes).map_err(|e| format!("the old process's server state: {e}"))?;
    if state.format != FORMAT {
        return Err(format!("the old process's server state is {:?}, not {FORMAT:?}", state.format));
    }
    let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(state.written_unix_ms));
    Ok(apply(db, &state, age))
}

/// What a load did, for its one log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Loaded {
    /// Servers whose state was applied.
    pub(crate) servers: usize,
    /// Servers in the file the config no longer has.
    pub(crate) skipped: usize,
}

/// Loads `path` into `db` if it is ours and younger than `max_age`.
/// `Ok(None)`: nothing to load (no file, or too old, said in the log).
///
/// # Errors
/// A file that cannot be read or is not a Vigil state file; the caller
/// logs it and goes on.
pub(crate) fn load(db: &HostDb, path: &Path, max_age: Duration) -> Result<Option<Loaded>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read the state file: {e}", path.display())),
    };
    let state: StateFile = serde_json::from_slice(&text)
        .map_err(|e| format!("{}: not a Vigil state file ({e}); ignored", path.display()))?;
    if state.format != FORMAT {
        return Err(format!("{}: format {:?}, not {FORMAT:?}; ignored", path.display(), state.format));
    }
    let age = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(state.written_unix_ms));
    if age > max_age {
        tracing::info!(file = %path.display(), ?age, ?max_age, "state file older than state_max_age; not loaded");
        return Ok(None);
    }
    Ok(Some(apply(db, &state, age)))
}

/// Applies what still matches: the same server under the same origin. Time
/// left (L4 down, an ejection) is counted from when the file was written.
fn apply(db: &HostDb, state: &StateFile, age: Duration) -> Loaded {
    let now = tokio::time::Instant::now().into_std();
    let left = |ms: u64| Duration::from_millis(ms).checked_sub(age).filter(|d| !d.is_zero());
    let mut out = Loaded::default();
    for o in &state.origins {
        let origin = db.origin(&o.origin);
        for saved in &o.servers {
            let Some((origin, server)) =
                origin.as_ref().and_then(|org| org.server(saved.addr).map(|s| (org, s)))
            else {
                out.skipped += 1;
                continue;
            };
            out.servers += 1;
            if saved.maintenance {
                server.set_maintenance(true);
            }
            if let Some(w) = saved.weight
                && let Err(e) = origin.set_weight(saved.addr, w)
            {
                tracing::warn!(origin = %origin.key(), server = %saved.addr, "state file weight not applied: {e}");
            }
            if let Some(d) = left(saved.l4_down_ms) {
                server.adopt_l4_down(now + d, now);
            }
            if let (Some(l7), Some(_)) = (&saved.l7, origin.check_policy()) {
                let state = if l7.healthy { L7State::Healthy } else { L7State::Unhealthy };
                let detail: Arc<str> = l7.detail.as_deref().unwrap_or("").into();
                let result = CheckResult { passed: l7.healthy, detail, latency: Duration::ZERO };
                server.set_l7(L7Status {
                    state,
                    consecutive_passes: l7.consecutive_passes,
                    consecutive_failures: l7.consecutive_failures,
                    last_check: None,
                    last_result: Some(result),
                    source: Source::Local,
                });
            }
            if saved.ejections > 0 {
                let until = left(saved.ejected_ms).map_or(now, |d| now + d);
                server.restore_ejection(until, saved.ejections, now);
            }
        }
    }
    out
}

/// Writes the state every `interval` until the process ends.
pub(crate) fn spawn_saver(db: HostDb, path: std::path::PathBuf, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is now: the state was just loaded
        loop {
            tick.tick().await;
            let (db, path) = (db.clone(), path.clone());
            match tokio::task::spawn_blocking(move || save(&db, &path)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("{e}"),
                Err(e) => tracing::warn!("state file writer failed: {e}"),
            }
        }
    });
}
