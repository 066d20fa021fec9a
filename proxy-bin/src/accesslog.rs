//! The access log: one line per request, kept off the request path.
//!
//! A request formats its line straight into one pending buffer, under its
//! lock (no copy through a scratch buffer); a writer thread of its own
//! takes the whole buffer every `flush_interval` (sooner when a quarter
//! megabyte is pending, and at shutdown) and writes it in one call. A
//! request makes no system call for the log but the rare wake of that
//! thread (once per quarter megabyte). A disk that is slow or
//! full never blocks a request: past [`MAX_PENDING`] bytes waiting, lines
//! are dropped and counted (`vigil_access_log_dropped_total`), as are the
//! lines of a write that failed. `SIGUSR1` reopens the file (after
//! logrotate moved it).

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use parking_lot::{Condvar, Mutex};

use crate::config::{AccessLogConfig, AccessLogFormat};

/// Bytes waiting for the writer past which new lines are dropped.
pub(crate) const MAX_PENDING: usize = 8 << 20;
/// Bytes pending that wake the writer before its interval.
const WAKE_AT: usize = 256 << 10;
/// How long shutdown waits for the writer's last write.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Lines written and dropped, kept across log reopenings and reloads.
#[derive(Debug, Default)]
pub(crate) struct LogCounters {
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// A running access log. Dropped, it flushes what is pending and its
/// writer ends; [`AccessLog::close`] also waits for that.
#[derive(Debug)]
pub(crate) struct AccessLog {
    shared: Arc<Shared>,
    pub(crate) config: AccessLogConfig,
    /// Hears (or sees closed) when the writer thread has ended.
    writer: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    counters: Arc<LogCounters>,
}

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    lines: u64,
    woken: bool,
    reopen: bool,
    closing: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    /// Queued, and enough is pending to wake the writer early.
    Wake,
    /// The writer is [`MAX_PENDING`] behind: the line is dropped.
    Dropped,
}

impl Pending {
    /// Appends the line `write` writes (its newline included), unless the
    /// writer is [`MAX_PENDING`] behind.
    #[inline]
    fn append(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Pushed {
        let before = self.buf.len();
        if before >= MAX_PENDING {
            return Pushed::Dropped;
        }
        write(&mut self.buf);
        if self.buf.len() > MAX_PENDING {
            self.buf.truncate(before);
            return Pushed::Dropped;
        }
        self.lines += 1;
        if self.buf.len() >= WAKE_AT && !self.woken {
            self.woken = true;
            return Pushed::Wake;
        }
        Pushed::Queued
    }

    #[cfg(test)]
    fn push(&mut self, line: &[u8]) -> Pushed {
        self.append(|buf| buf.extend_from_slice(line))
    }
}

impl AccessLog {
    /// Opens the file (appending; created if missing) and starts the writer.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub(crate) fn start(config: AccessLogConfig, counters: Arc<LogCounters>) -> io::Result<Self> {
        let out = Out::open(config.path.as_ref())?;
        let shared = Arc::new(Shared { pending: Mutex::default(), wake: Condvar::new(), counters });
        let (ended, done) = std::sync::mpsc::channel();
        {
            let shared = Arc::clone(&shared);
            let (path, interval) = (config.path.clone(), config.flush_interval);
            std::thread::Builder::new().name("vigil-access-log".into()).spawn(move || {
                write_loop(&shared, out, path, interval);
                let _ = ended.send(());
            })?;
        }
        Ok(Self { shared, config, writer: Mutex::new(Some(done)) })
    }

    /// Asks the writer to reopen the file before its next write.
    pub(crate) fn reopen(&self) {
        let mut p = self.shared.pending.lock();
        p.reopen = true;
        self.shared.wake.notify_one();
    }

    /// Flushes what is pending and stops the writer, waiting for it up to
    /// [`CLOSE_WAIT`] (a writer stuck on a hung disk or a blocked stdout
    /// must not keep the process from exiting). At shutdown: lines logged
    /// after this are not written.
    pub(crate) fn close(&self) {
        self.stop();
        let Some(done) = self.writer.lock().take() else { return };
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(CLOSE_WAIT) {
            tracing::warn!("the access log's writer is stuck; exiting without its last lines");
        }
    }

    fn stop(&self) {
        let mut p = self.shared.pending.lock();
        p.closing = true;
        self.shared.wake.notify_one();
    }

    /// Appends one request's line: formatted straight into the pending
    /// buffer, under its lock (a line is a few hundred instructions; a
    /// scratch buffer would cost a copy of every line).
    pub(crate) fn log(&self, entry: &Entry, status: u16, bytes: u64, now: Instant) {
        let format = self.config.format;
        let pushed = self.shared.pending.lock().append(|out| {
            match format {
                AccessLogFormat::Json => entry.json(out, status, bytes, now),
                AccessLogFormat::Combined => entry.combined(out, status, bytes),
            }
            out.push(b'\n');
        });
        match pushed {
            Pushed::Dropped => {
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Wake => {
                self.shared.wake.notify_one();
            }
            Pushed::Queued => {}
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // A log replaced by a reload: its writer flushes and ends on its own.
        self.stop();
    }
}

/// Where lines go.
enum Out {
    File(LogFile),
    Stdout,
}

/// Bytes written between two passes that drop the log from the page cache.
const DROP_EVERY: u64 = 4 << 20;

/// The log file, and how much of it the page cache may still hold.
///
/// Nothing ever reads the log back through this process, yet every line
/// written stays cached until memory runs short: a busy log grows the page
/// cache by gigabytes a day, evicting what the machine does read, and each
/// new page costs the writer more than the copy into it. So every
/// [`DROP_EVERY`] bytes the writer asks the kernel (`posix_fadvise`
/// `DONTNEED`, which on Linux also starts writeback of what is dirty) to
/// drop what it wrote up to the pass before, by then on disk, and to start
/// writing the rest. The cache holds a few MiB of the log, recycled, as a
/// database does with its write-ahead log.
struct LogFile {
    file: File,
    /// Where the next write lands (the file's length: it is opened to append).
    end: u64,
    /// Up to where the last pass started writeback.
    advised: u64,
    /// Up to where the last pass dropped (what came before is gone).
    dropped: u64,
    /// False once the file refused the advice (a FIFO, some file systems).
    advise: bool,
}

impl LogFile {
    fn open(path: &PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let end = file.metadata()?.len();
        Ok(Self { file, end, advised: end, dropped: end, advise: true })
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.end += buf.len() as u64;
        if self.advise && self.end - self.advised >= DROP_EVERY {
            self.drop_written();
        }
        Ok(())
    }

    /// Drops `[dropped, advised)` (written back since the last pass) and
    /// starts writeback of `[advised, end)`, in one call.
    fn drop_written(&mut self) {
        let len = std::num::NonZeroU64::new(self.end.saturating_sub(self.dropped));
        match rustix::fs::fadvise(&self.file, self.dropped, len, rustix::fs::Advice::DontNeed) {
            Ok(()) => {
                self.dropped = self.advised;
                self.advised = self.end;
            }
            Err(e) => {
                tracing::debug!(error = %e, "the access log's file takes no page-cache advice");
                self.advise = false;
            }
        }
    }
}

impl Out {
    fn open(path: Option<&PathBuf>) -> io::Result<Self> {
        match path {
            None => Ok(Self::Stdout),
            Some(p) => LogFile::open(p)
                .map(Self::File)
                .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", p.display()))),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::File(f) => f.write_all(buf),
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
        }
    }
}

fn write_loop(shared: &Shared, mut out: Out, path: Option<PathBuf>, interval: Duration) {
    let mut spare = Vec::new();
    let mut failing = false;
    loop {
        let (lines, reopen, closing) = {
            let mut p = shared.pending.lock();
            if !p.closing && !p.reopen && p.buf.len() < WAKE_AT {
                shared.wake.wait_for(&mut p, interval);
            }
            std::mem::swap(&mut p.buf, &mut spare);
            p.woken = false;
            let taken = (std::mem::take(&mut p.lines), std::mem::take(&mut p.reopen), p.closing);
            // A burst that grew the buffer far beyond the usual does not
            // keep its memory.
            if p.buf.capacity() > 4 * WAKE_AT {
                // Room for the usual, allocated here: requests then append
                // under the lock without growing it.
                p.buf = Vec::with_capacity(WAKE_AT);
            }
            taken
        };
        if !spare.is_empty() {
            match out.write_all(&spare) {
                Ok(()) => {
                    shared.counters.written.fetch_add(lines, Ordering::Relaxed);
                    failing = false;
                }
                Err(e) => {
                    shared.counters.dropped.fetch_add(lines, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(error = %e, lines, "access log write failed; lines dropped until it works again");
                        failing = true;
                    }
                }
            }
            spare.clear();
        }
        if reopen {
            match Out::open(path.as_ref()) {
                Ok(o) => {
                    out = o;
                    tracing::info!("access log reopened");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "access log not reopened; still writing to the old file")
                }
            }
        }
        if closing {
            return;
        }
    }
}

/// The wall-clock time at `at`, from the monotonic clock: a thread's
/// anchor (both clocks read together) is taken again once a second, so a
/// request reads no second clock for its line's time, and a step of the
/// system clock shows within a second.
pub(crate) fn wall_time(at: Instant) -> SystemTime {
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, SystemTime)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        if let Some((mono, wall)) = anchor.get()
            && let Some(since) = at.checked_duration_since(mono)
            && since < Duration::from_secs(1)
        {
            return wall + since;
        }
        let wall = SystemTime::now();
        anchor.set(Some((at, wall)));
        wall
    })
}

/// What a line says about a request, gathered along its way.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) start: Instant,
    pub(crate) time: SystemTime,
    /// The client's address as text (the connection's, made once).
    pub(crate) client_text: HeaderValue,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) referer: Option<HeaderValue>,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) upstream: Option<SocketAddr>,
    /// Request sent to response head read, of the attempt that answered.
    pub(crate) upstream_time: Option<Duration>,
    pub(crate) retries: u32,
}

impl Entry {
    /// `{"time":…,"client":…,…}`: field names as common log schemas have
    /// them; absent values are `null`.
    fn json(&self, out: &mut Vec<u8>, status: u16, bytes: u64, now: Instant) {
        // By hand, not through `write!`: formatting machinery per field
        // was most of what a line cost.
        out.extend_from_slice(b"{\"time\":\"");
        rfc3339(out, self.time);
        out.extend_from_slice(b"\",\"client\":\"");
        out.extend_from_slice(self.client_text.as_bytes());
        // A method is a token: no quote, backslash or control character.
        out.extend_from_slice(b"\",\"method\":\"");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"host\":");
        json_opt(out, self.host.as_ref());
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.uri.path_and_query().map_or(self.uri.path(), |p| p.as_str()).as_bytes());
        out.extend_from_slice(b",\"protocol\":\"");
        out.extend_from_slice(version(self.version).as_bytes());
        out.extend_from_slice(b"\",\"status\":");
        push_u64(out, u64::from(status));
        out.extend_from_slice(b",\"bytes\":");
        push_u64(out, bytes);
        out.extend_from_slice(b",\"duration_ms\":");
        push_ms(out, now.saturating_duration_since(self.start));
        match self.upstream {
            Some(a) => {
                out.extend_from_slice(b",\"upstream\":\"");
                push_addr(out, a);
                out.push(b'"');
            }
            None => out.extend_from_slice(b",\"upstream\":null"),
        }
        match self.upstream_time {
            Some(d) => {
                out.extend_from_slice(b",\"upstream_duration_ms\":");
                push_ms(out, d);
            }
            None => out.extend_from_slice(b",\"upstream_duration_ms\":null"),
        }
        out.extend_from_slice(b",\"retries\":");
        push_u64(out, u64::from(self.retries));
        out.extend_from_slice(b",\"request_id\":");
        match &self.request_id {
            // The client's, checked to be letters, digits and `-_.:+/=@`,
            // or ours (hex): nothing to escape.
            Some(id) => {
                out.push(b'"');
                out.extend_from_slice(id.as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"user_agent\":");
        json_opt(out, self.user_agent.as_ref());
        out.extend_from_slice(b",\"referer\":");
        json_opt(out, self.referer.as_ref());
        out.push(b'}');
    }

    /// The "combined" format: `client - - [time] "request" status bytes
    /// "referer" "user-agent"`, as Apache and nginx write it.
    fn combined(&self, out: &mut Vec<u8>, status: u16, bytes: u64) {
        use std::io::Write as _;
        out.extend_from_slice(self.client_text.as_bytes());
        out.extend_from_slice(b" - - [");
        clf_time(out, self.time);
        out.extend_from_slice(b"] \"");
        quoted(out, self.method.as_str().as_bytes());
        out.push(b' ');
        quoted(out, self.uri.to_string().as_bytes());
        let _ = write!(out, " {:?}\" {status} {bytes} \"", self.version);
        quoted(out, self.referer.as_ref().map_or(&b"-"[..], HeaderValue::as_bytes));
        out.extend_from_slice(b"\" \"");
        quoted(out, self.user_agent.as_ref().map_or(&b"-"[..], HeaderValue::as_bytes));
        out.push(b'"');
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `a.b.c.d:port` by hand; `[v6]:port` through `Display`. (`SocketAddr`'s
/// `Display` formats into a buffer of its own first, for padding: about
/// 2 000 instructions, more than the rest of a line.)
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(b':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(out, "{addr}");
        }
    }
}

/// Milliseconds with three decimals: `1.500`.
fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    push_u64(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn json_opt(out: &mut Vec<u8>, v: Option<&HeaderValue>) {
    match v {
        Some(v) => json_str(out, v.as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string; bytes that are not UTF-8 (a header may carry them) are
/// replaced, control characters escaped.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    // Printable ASCII without a quote or backslash (nearly every value)
    // goes as it is.
    if s.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                use std::io::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Inside a combined-format quoted field: `"` and `\` escaped, bytes
/// outside printable ASCII as `\xHH` (nginx's escaping), so a client
/// cannot forge a line.
fn quoted(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            0x20..=0x7e => out.push(b),
            b => {
                use std::io::Write as _;
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn split(t: SystemTime) -> (i64, u32, u32, u64, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil((secs / 86_400) as i64);
    (y, m, d, secs % 86_400, since.subsec_millis())
}

/// `2026-12-03T13:45:12.123Z`; the part up to the second is formatted
/// once a second per thread.
fn rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    use std::io::Write as _;
    thread_local! {
        static SECOND: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != since.as_secs() {
            let (y, m, d, s, _) = split(t);
            text.clear();
            let _ = write!(text, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.", s / 3600, s / 60 % 60, s % 60);
            *at = since.as_secs();
        }
        out.extend_from_slice(text);
    });
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

/// `03/Dec/2026:13:45:12 +0000`
fn clf_time(out: &mut Vec<u8>, t: SystemTime) {
    use std::io::Write as _;
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d, s, _) = split(t);
    let month = MONTHS[(m as usize).saturating_sub(1) % 12];
    let _ = write!(out, "{d:02}/{month}/{y:04}:{:02}:{:02}:{:02} +0000", s / 3600, s / 60 % 60, s % 60);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            start: tokio::time::Instant::now().into_std(),
            time: UNIX_EPOCH + Duration::from_millis(1_796_219_112_123),
            client_text: HeaderValue::from_static("10.0.0.9"),
            method: Method::GET,
            uri: Uri::from_static("/a?b=c%22"),
            version: Version::HTTP_11,
            host: Some(HeaderValue::from_static("www.example.com")),
            user_agent: Some(HeaderValue::from_bytes(b"curl/8 \"x\"\xff").expect("value")),
            referer: None,
            request_id: Some(HeaderValue::from_static("abc")),
            upstream: Some(SocketAddr::from(([127, 0, 0, 2], 8080))),
            upstream_time: Some(Duration::from_micros(1500)),
            retries: 1,
        }
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for a in ["127.0.0.2:8080", "0.0.0.0:0", "255.255.255.255:65535", "[::1]:443", "[fe80::1%2]:80"] {
            let addr: SocketAddr = a.parse().expect("address");
            let mut out = Vec::new();
            push_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).expect("utf-8"), addr.to_string());
        }
    }

    #[test]
    fn json_lines_parse_and_name_their_fields() {
        let e = entry();
        let mut out = Vec::new();
        e.json(&mut out, 200, 42, e.start + Duration::from_millis(3));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["time"], "2026-12-02T13:45:12.123Z");
        assert_eq!(v["client"], "10.0.0.9");
        assert_eq!(v["path"], "/a?b=c%22");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["duration_ms"], 3.0);
        assert_eq!(v["upstream"], "127.0.0.2:8080");
        assert_eq!(v["upstream_duration_ms"], 1.5);
        assert_eq!(v["retries"], 1);
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["user_agent"], "curl/8 \"x\"\u{fffd}");
        assert!(v["referer"].is_null());
    }

    #[test]
    fn combined_lines_escape_what_could_forge_a_line() {
        let e = entry();
        let mut out = Vec::new();
        e.combined(&mut out, 404, 7);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            r#"10.0.0.9 - - [02/Dec/2026:13:45:12 +0000] "GET /a?b=c%22 HTTP/1.1" 404 7 "-" "curl/8 \"x\"\xFF""#
        );
    }

    #[test]
    fn wall_time_follows_the_monotonic_clock_from_an_anchor_a_second_old_at_most() {
        let t0 = tokio::time::Instant::now().into_std() + Duration::from_secs(3600);
        let w0 = wall_time(t0);
        let w1 = wall_time(t0 + Duration::from_millis(250));
        assert_eq!(w1.duration_since(w0).expect("later"), Duration::from_millis(250), "from the anchor");
        let now = SystemTime::now();
        assert!(now.duration_since(w0).unwrap_or_default() < Duration::from_secs(1), "anchored now");
        // A second on, the anchor is read again: the wall clock, not w0 + 5 s.
        let w2 = wall_time(t0 + Duration::from_secs(5));
        let off = w2.duration_since(now).unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(1), "{off:?}");
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_790), (2026, 12, 3));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn a_writer_far_behind_means_dropped_lines_not_waiting() {
        let mut p = Pending::default();
        assert_eq!(p.push(b"a\n"), Pushed::Queued);
        p.buf.resize(WAKE_AT, b'x');
        assert_eq!(p.push(b"b\n"), Pushed::Wake, "a quarter megabyte pending wakes the writer");
        assert_eq!(p.push(b"c\n"), Pushed::Queued, "once");
        p.buf.resize(MAX_PENDING - 1, b'x');
        assert_eq!(p.push(b"d\n"), Pushed::Dropped);
        assert_eq!(p.lines, 3);
        assert_eq!(p.buf.len(), MAX_PENDING - 1, "nothing of the dropped line was kept");
    }

    #[test]
    fn lines_reach_the_file_and_close_flushes_them() {
        let dir = std::env::temp_dir().join(format!("vigil-accesslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let counters = Arc::new(LogCounters::default());
        let config = AccessLogConfig {
            path: Some(path.clone()),
            format: AccessLogFormat::Json,
            flush_interval: Duration::from_secs(3600),
        };
        let log = AccessLog::start(config, Arc::clone(&counters)).expect("opens");
        let e = entry();
        for status in [200, 201, 503] {
            log.log(&e, status, 1, e.start);
        }
        log.close();
        let text = std::fs::read_to_string(&path).expect("written");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "written at close, an hour before the interval: {text}");
        assert!(lines[2].contains("\"status\":503"), "{}", lines[2]);
        assert_eq!(counters.written.load(Ordering::Relaxed), 3);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
