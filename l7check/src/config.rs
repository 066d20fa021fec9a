//! The dedicated health-check file (`healthchecks.toml`): parsing,
//! validation, and matching checks to origins.
//!
//! Parsing is two steps: serde with every unknown key refused (a typo must
//! not pass silently), then [`validate`](HealthChecks::parse) on the values,
//! each kept with its span so an error names `file:line:column`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use vigil_hostdb::conf::{FileError, error_at, parse_duration};
use vigil_hostdb::{L7Policy, OriginKey};

/// Timing and hysteresis of a check (`[defaults]`, overridable per check).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Time between checks of a server.
    pub interval: Duration,
    /// Time between checks while the server is unhealthy.
    pub unhealthy_interval: Duration,
    /// Bound on one check: connect, response and body.
    pub timeout: Duration,
    /// Rise and fall thresholds.
    pub policy: L7Policy,
    /// Each wait is the interval times a random factor in `1 ± jitter`.
    pub jitter: f64,
    /// Checks of an origin stop after this long without a user request.
    pub idle_after: Duration,
    /// N > 0: every Nth check of a server opens a fresh connection.
    pub fresh_connect_every: u32,
}

impl Default for Settings {
    /// SPEC's `[defaults]`.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            unhealthy_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            policy: L7Policy::default(),
            jitter: 0.10,
            idle_after: Duration::from_secs(300),
            fresh_connect_every: 0,
        }
    }
}

/// Which origins a check applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `host:port`: exactly that origin.
    HostPort(OriginKey),
    /// `host`: that host on any port.
    Host(String),
    /// `*.suffix`: any host under the suffix (not the suffix itself).
    Suffix(String),
}

impl OriginPattern {
    fn parse(s: &str) -> Result<Self, String> {
        if let Some(suffix) = s.strip_prefix("*.") {
            let key = OriginKey::new(suffix, 80)
                .map_err(|e| format!("invalid wildcard origin {s:?}: {}", e.reason()))?;
            return Ok(Self::Suffix(format!(".{}", key.host())));
        }
        if s.contains('*') {
            return Err(format!("invalid origin {s:?}: a wildcard is only allowed as a leading \"*.\""));
        }
        let has_port = s.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit())
        });
        let key: OriginKey = s
            .parse()
            .map_err(|e: vigil_hostdb::AddrError| format!("invalid origin {s:?}: {}", e.reason()))?;
        Ok(if has_port || s.starts_with('[') && s.contains("]:") {
            Self::HostPort(key)
        } else {
            Self::Host(key.host().to_owned())
        })
    }

    /// Match strength: `host:port` 3, `host` 2, `*.suffix` 1 + suffix length share.
    fn rank(&self, origin: &OriginKey) -> Option<(u8, usize)> {
        match self {
            Self::HostPort(k) => (k == origin).then_some((3, 0)),
            Self::Host(h) => (h == origin.host()).then_some((2, 0)),
            Self::Suffix(sfx) => origin.host().ends_with(sfx.as_str()).then_some((1, sfx.len())),
        }
    }
}

/// An allowed status range (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest accepted.
    pub lo: u16,
    /// Highest accepted.
    pub hi: u16,
}

/// One `[[check]]`, merged with `[defaults]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Which origins it applies to.
    pub origin: OriginPattern,
    /// What is sent and how the answer is judged.
    pub kind: CheckKind,
    /// `port`: check this port of each server's address instead of the
    /// service port. Its failures are check failures, never L4 failures of
    /// the service port, and its passes do not clear the service port's
    /// L4-down (see `docs/configuration.md`).
    pub port: Option<u16>,
    /// `tls = false` (with `port` only): the check on that port is plain
    /// (HTTP/1.1, or h2c for gRPC) even when the origin is reached over TLS,
    /// as admin ports often are.
    pub plain: bool,
    /// Timing and hysteresis.
    pub settings: Settings,
    /// Where the check's `kind` is written (or the check itself, when
    /// `kind` is left to its default): for errors that need the main config
    /// too (a gRPC check on an origin that speaks HTTP/1.1).
    pub at: Position,
}

impl Check {
    /// The HTTP check, if this is one.
    pub fn http(&self) -> Option<&HttpCheck> {
        match &self.kind {
            CheckKind::Http(h) => Some(h),
            _ => None,
        }
    }

    /// Where the check is sent for `server`: its address, on `port` when set.
    pub fn addr_for(&self, server: std::net::SocketAddr) -> std::net::SocketAddr {
        match self.port {
            Some(port) => std::net::SocketAddr::new(server.ip(), port),
            None => server,
        }
    }
}

/// A line and column in the health-check file (1-based, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// What a check sends and how it judges the answer (`kind`).
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// `"http"` (the default): a GET or HEAD over the pooled sessions.
    Http(HttpCheck),
    /// `"grpc"`: `grpc.health.v1.Health/Check` over the pooled h2 sessions.
    Grpc(GrpcCheck),
    /// `"tcp"`: a connection of its own, then send and expect steps.
    Tcp(TcpCheck),
}

impl CheckKind {
    /// `"http"`, `"grpc"` or `"tcp"`: the name the file, `/hosts` and the
    /// metrics use.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Grpc(_) => "grpc",
            Self::Tcp(_) => "tcp",
        }
    }
}

/// An HTTP check.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    /// `GET` or `HEAD`.
    pub method: http::Method,
    /// Request path (with query, if any).
    pub path: String,
    /// Host header; `None`: the origin's host.
    pub host: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Accepted statuses.
    pub expect_status: Vec<StatusRange>,
    /// Required substring of the first 64 KiB of the body.
    pub expect_body: Option<String>,
    /// A header the response must carry.
    pub expect_header: Option<HeaderExpect>,
}

impl HttpCheck {
    /// Whether `status` is accepted.
    pub fn status_ok(&self, status: u16) -> bool {
        self.expect_status.iter().any(|r| (r.lo..=r.hi).contains(&status))
    }
}

/// `expect_header`: a response header field the check requires.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderExpect {
    /// The field's name.
    pub name: http::HeaderName,
    /// What its value must be; one matching field is enough.
    pub value: HeaderValueMatch,
}

/// How an expected header's value is judged.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValueMatch {
    /// Only `name`: the field must be present.
    Present,
    /// `value`: exactly this value.
    Equals(http::HeaderValue),
    /// `regex`: a value the pattern matches (unanchored unless it says so).
    Regex(Pattern),
}

impl HeaderExpect {
    /// Whether `headers` satisfy this expectation.
    pub fn satisfied_by(&self, headers: &http::HeaderMap) -> bool {
        headers.get_all(&self.name).iter().any(|v| match &self.value {
            HeaderValueMatch::Present => true,
            HeaderValueMatch::Equals(want) => v == want,
            HeaderValueMatch::Regex(re) => re.is_match(v.as_bytes()),
        })
    }
}

/// A gRPC health check (`grpc.health.v1.Health/Check`).
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcCheck {
    /// `service`: the service asked about; empty: the server as a whole.
    pub service: String,
    /// `host`: the request's authority; `None`: the origin's host.
    pub host: Option<String>,
    /// `headers`: extra request metadata.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A TCP check: connect, then each step in order; no steps: connect only.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TcpCheck {
    /// The dialogue.
    pub steps: Vec<TcpStep>,
}

/// One step of a TCP check.
#[derive(Debug, Clone, PartialEq)]
pub enum TcpStep {
    /// `send` / `send_hex`: write these bytes.
    Send(Vec<u8>),
    /// `expect` / `expect_hex` / `expect_regex`: read until the answer
    /// (since the previous expectation's match) holds this.
    Expect(Expect),
}

/// What a TCP check's `expect` step waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// `expect` / `expect_hex`: these bytes, anywhere.
    Contains(Vec<u8>),
    /// `expect_regex`: a match of the pattern.
    Regex(Pattern),
}

/// A compiled regular expression over bytes (the `regex` crate: linear
/// time whatever the input, so an origin cannot make a check slow).
#[derive(Debug, Clone)]
pub struct Pattern(regex::bytes::Regex);

impl Pattern {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// What the regex crate says is wrong with it.
    pub fn new(pattern: &str) -> Result<Self, String> {
        regex::bytes::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Whether it matches somewhere in `haystack`.
    pub fn is_match(&self, haystack: &[u8]) -> bool {
        self.0.is_match(haystack)
    }

    /// Where it first matches in `haystack`.
    pub fn find(&self, haystack: &[u8]) -> Option<Range<usize>> {
        self.0.find(haystack).map(|m| m.range())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HealthChecks {
    /// The file's name, as given to [`HealthChecks::parse`].
    pub file: String,
    /// `[defaults]`.
    pub defaults: Settings,
    /// The `[[check]]`s, in file order.
    pub checks: Vec<Check>,
}

impl HealthChecks {
    /// Parses and validates the file's `text`; `file` names it in errors.
    ///
    /// ```
    /// let text = r#"
    /// [defaults]
    /// interval = "5s"
    ///
    /// [[check]]
    /// origin = "*.internal"
    /// path = "/healthz"
    /// "#;
    /// let hc = vigil_l7check::HealthChecks::parse(text, "healthchecks.toml")?;
    /// let check = hc.matching(&"app.internal:8080".parse()?).unwrap();
    /// let http = check.http().unwrap();
    /// assert_eq!(http.path, "/healthz");
    /// assert_eq!(check.settings.interval, std::time::Duration::from_secs(5));
    /// assert!(http.status_ok(302) && !http.status_ok(503));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The first problem found, at its `file:line:column`.
    pub fn parse(text: &str, file: &str) -> Result<Self, FileError> {
        let raw: RawFile =
            toml::from_str(text).map_err(|e| error_at(file, text, e.span(), e.message().trim()))?;
        let err = |span: Range<usize>, msg: String| error_at(file, text, Some(span), msg);
        let defaults = raw.defaults.resolve(&Settings::default(), &err)?;
        let mut checks: Vec<Check> = Vec::with_capacity(raw.check.len());
        for raw in raw.check {
            let table = raw.span();
            let raw = raw.into_inner();
            let (origin_text, origin_span) = (raw.origin.get_ref().clone(), raw.origin.span());
            let at_span = raw.kind.as_ref().map_or(table, Spanned::span);
            let at = error_at(file, text, Some(at_span), "");
            let at = Position { line: at.line, column: at.column };
            let check = raw.resolve(&defaults, at, &err)?;
            // Two checks for the same pattern: the second would never apply.
            if checks.iter().any(|c| c.origin == check.origin) {
                return Err(err(origin_span, format!("origin {origin_text:?} has two [[check]]s")));
            }
            checks.push(check);
        }
        Ok(Self { file: file.to_owned(), defaults, checks })
    }

    /// An error at `at` in this file (for what only the main config shows,
    /// such as a gRPC check on an origin that cannot speak h2).
    pub fn error_at(&self, at: Position, message: impl Into<String>) -> FileError {
        FileError { file: self.file.clone(), line: at.line, column: at.column, message: message.into() }
    }

    /// The check for `origin`: `host:port` beats `host` beats `*.suffix`
    /// (the longest suffix among those). `None`: the origin is unchecked.
    pub fn matching(&self, origin: &OriginKey) -> Option<&Check> {
        self.checks
            .iter()
            .filter_map(|c| c.origin.rank(origin).map(|r| (r, c)))
            .max_by_key(|(r, _)| *r)
            .map(|(_, c)| c)
    }
}

// ---- raw serde layer -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawSettings,
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    interval: Option<Spanned<String>>,
    unhealthy_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_threshold: Option<Spanned<i64>>,
    unhealthy_threshold: Option<Spanned<i64>>,
    jitter: Option<Spanned<String>>,
    idle_after: Option<Spanned<String>>,
    fresh_connect_every: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StatusEntry {
    Code(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    origin: Spanned<String>,
    kind: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    tls: Option<Spanned<bool>>,
    // http
    method: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    expect_status: Option<Spanned<Vec<Spanned<StatusEntry>>>>,
    expect_body: Option<Spanned<String>>,
    expect_header: Option<Spanned<RawHeaderExpect>>,
    // grpc
    service: Option<Spanned<String>>,
    // tcp
    steps: Option<Spanned<Vec<Spanned<RawStep>>>>,
    // [defaults] keys, overridable per check (serde's flatten cannot be
    // combined with deny_unknown_fields, so they are listed again).
    interval: Option<Spanned<String>>,
    unhealthy_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_threshold: Option<Spanned<i64>>,
    unhealthy_threshold: Option<Spanned<i64>>,
    jitter: Option<Spanned<String>>,
    idle_after: Option<Spanned<String>>,
    fresh_connect_every: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderExpect {
    name: Spanned<String>,
    value: Option<Spanned<String>>,
    regex: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    send: Option<Spanned<String>>,
    send_hex: Option<Spanned<String>>,
    expect: Option<Spanned<String>>,
    expect_hex: Option<Spanned<String>>,
    expect_regex: Option<Spanned<String>>,
}

type ErrFn<'a> = dyn Fn(Range<usize>, String) -> FileError + 'a;

impl RawSettings {
    fn resolve(&self, base: &Settings, err: &ErrFn<'_>) -> Result<Settings, FileError> {
        resolve_settings(
            base,
            [&self.interval, &self.unhealthy_interval, &self.timeout, &self.idle_after],
            [&self.healthy_threshold, &self.unhealthy_threshold, &self.fresh_connect_every],
            &self.jitter,
            err,
        )
    }
}

type Durs<'a> = [&'a Option<Spanned<String>>; 4];
type Ints<'a> = [&'a Option<Spanned<i64>>; 3];

fn resolve_settings(
    base: &Settings,
    [interval, unhealthy, timeout, idle]: Durs<'_>,
    [healthy_t, unhealthy_t, fresh]: Ints<'_>,
    jitter: &Option<Spanned<String>>,
    err: &ErrFn<'_>,
) -> Result<Settings, FileError> {
    let dur =
        |v: &Option<Spanned<String>>, default: Duration| -> Result<(Duration, Range<usize>), FileError> {
            match v {
                Some(s) => parse_duration(s.get_ref()).map(|d| (d, s.span())).map_err(|m| err(s.span(), m)),
                None => Ok((default, 0..0)),
            }
        };
    let int = |v: &Option<Spanned<i64>>, default: u32, min: i64, name: &str| -> Result<u32, FileError> {
        match v {
            Some(s) if *s.get_ref() < min || *s.get_ref() > 1_000_000 => {
                Err(err(s.span(), format!("{name} must be between {min} and 1000000, not {}", s.get_ref())))
            }
            Some(s) => Ok(*s.get_ref() as u32),
            None => Ok(default),
        }
    };
    let (interval, interval_span) = dur(interval, base.interval)?;
    let (unhealthy_interval, unhealthy_span) = dur(unhealthy, base.unhealthy_interval)?;
    let (timeout, timeout_span) = dur(timeout, base.timeout)?;
    let (idle_after, idle_span) = dur(idle, base.idle_after)?;
    let policy = L7Policy {
        healthy_threshold: int(healthy_t, base.policy.healthy_threshold, 1, "healthy_threshold")?,
        unhealthy_threshold: int(unhealthy_t, base.policy.unhealthy_threshold, 1, "unhealthy_threshold")?,
    };
    let fresh_connect_every = int(fresh, base.fresh_connect_every, 0, "fresh_connect_every")?;
    let jitter = match jitter {
        Some(j) => {
            let text = j.get_ref().trim();
            let pct: f64 = text
                .strip_suffix('%')
                .and_then(|n| n.trim().parse().ok())
                .filter(|p: &f64| (0.0..=50.0).contains(p))
                .ok_or_else(|| {
                    err(
                        j.span(),
                        format!(
                            "invalid jitter {text:?}: expected a percentage from 0% to 50%, like \"10%\""
                        ),
                    )
                })?;
            pct / 100.0
        }
        None => base.jitter,
    };
    for (d, span, name) in [
        (interval, &interval_span, "interval"),
        (unhealthy_interval, &unhealthy_span, "unhealthy_interval"),
        (idle_after, &idle_span, "idle_after"),
    ] {
        if d < Duration::from_millis(10) {
            return Err(err(span.clone(), format!("{name} must be at least 10ms")));
        }
    }
    if timeout.is_zero() {
        return Err(err(timeout_span, "timeout must be more than 0".into()));
    }
    if timeout >= interval.min(unhealthy_interval) {
        let span = if timeout_span.is_empty() {
            interval_span.start.max(unhealthy_span.start)..0
        } else {
            timeout_span
        };
        return Err(err(
            span,
            format!(
                "timeout ({timeout:?}) must be below interval ({interval:?}) and unhealthy_interval ({unhealthy_interval:?})"
            ),
        ));
    }
    Ok(Settings { interval, unhealthy_interval, timeout, policy, jitter, idle_after, fresh_connect_every })
}

/// A kind-specific key: its name, where it is written, the kinds it belongs to.
type KindKey<'a> = (&'a str, Option<Range<usize>>, &'a [&'a str]);

/// Most bytes a TCP check's `send` or `expect` may hold, and most steps.
const MAX_STEP_BYTES: usize = 64 * 1024;
const MAX_STEPS: usize = 64;

impl RawCheck {
    fn resolve(self, defaults: &Settings, at: Position, err: &ErrFn<'_>) -> Result<Check, FileError> {
        let origin = OriginPattern::parse(self.origin.get_ref()).map_err(|m| err(self.origin.span(), m))?;
        let kind = match &self.kind {
            None => "http",
            Some(k) => match k.get_ref().as_str() {
                kind @ ("http" | "grpc" | "tcp") => kind,
                other => {
                    return Err(err(
                        k.span(),
                        format!("kind must be \"http\", \"grpc\" or \"tcp\", not {other:?}"),
                    ));
                }
            },
        };
        // Keys that belong to another kind are refused, never ignored.
        let span = |v: &Option<Spanned<String>>| v.as_ref().map(Spanned::span);
        let keys: [KindKey<'_>; 10] = [
            ("method", span(&self.method), &["http"]),
            ("path", span(&self.path), &["http"]),
            ("host", span(&self.host), &["http", "grpc"]),
            ("headers", self.headers.as_ref().map(Spanned::span), &["http", "grpc"]),
            ("expect_status", self.expect_status.as_ref().map(Spanned::span), &["http"]),
            ("expect_body", span(&self.expect_body), &["http"]),
            ("expect_header", self.expect_header.as_ref().map(Spanned::span), &["http"]),
            ("service", span(&self.service), &["grpc"]),
            ("steps", self.steps.as_ref().map(Spanned::span), &["tcp"]),
            ("fresh_connect_every", self.fresh_connect_every.as_ref().map(Spanned::span), &["http", "grpc"]),
        ];
        for (key, at, kinds) in keys {
            if let Some(at) = at.filter(|_| !kinds.contains(&kind)) {
                let why = if key == "fresh_connect_every" {
                    " (a tcp check opens a connection of its own every time)"
                } else {
                    ""
                };
                return Err(err(at, format!("`{key}` does not apply to a {kind} check{why}")));
            }
        }
        let port = match &self.port {
            None => None,
            Some(p) => match u16::try_from(*p.get_ref()) {
                Ok(port) if port > 0 => Some(port),
                _ => return Err(err(p.span(), format!("port must be from 1 to 65535, not {}", p.get_ref()))),
            },
        };
        let plain = match &self.tls {
            None => false,
            Some(t) if port.is_none() => {
                return Err(err(
                    t.span(),
                    "`tls` goes with `port`: a check on the service port speaks as its origin does".into(),
                ));
            }
            Some(t) if *t.get_ref() => {
                return Err(err(
                    t.span(),
                    "only `tls = false` is offered: a check on another port of a TLS origin uses TLS already"
                        .into(),
                ));
            }
            Some(_) => true,
        };
        let host = match &self.host {
            None => None,
            Some(h) => {
                // A host[:port] and nothing else: over h2 it becomes the
                // request's authority, where a `/`, `?` or `#` would move the
                // path.
                let text = h.get_ref();
                text.parse::<http::uri::Authority>()
                    .ok()
                    .filter(|a| !text.is_empty() && !a.as_str().contains('@'))
                    .ok_or_else(|| {
                        err(
                            h.span(),
                            format!("host {text:?} must be a host name or address, with a port if wanted"),
                        )
                    })?;
                Some(text.clone())
            }
        };
        let headers = match &self.headers {
            None => Vec::new(),
            Some(map) => request_headers(map, kind, err)?,
        };
        let kind = match kind {
            "grpc" => {
                let service = self.service.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default();
                if service.len() > 1024 {
                    let at = self.service.as_ref().map_or(0..0, Spanned::span);
                    return Err(err(at, "service names longer than 1 KiB are not supported".into()));
                }
                CheckKind::Grpc(GrpcCheck { service, host, headers })
            }
            "tcp" => {
                let steps = match &self.steps {
                    None => Vec::new(),
                    Some(list) if list.get_ref().len() > MAX_STEPS => {
                        return Err(err(list.span(), format!("a tcp check has at most {MAX_STEPS} steps")));
                    }
                    Some(list) => {
                        list.get_ref().iter().map(|step| step_of(step, err)).collect::<Result<_, _>>()?
                    }
                };
                CheckKind::Tcp(TcpCheck { steps })
            }
            _ => CheckKind::Http(self.http(host, headers, err)?),
        };
        let settings = resolve_settings(
            defaults,
            [&self.interval, &self.unhealthy_interval, &self.timeout, &self.idle_after],
            [&self.healthy_threshold, &self.unhealthy_threshold, &self.fresh_connect_every],
            &self.jitter,
            err,
        )?;
        Ok(Check { origin, kind, port, plain, settings, at })
    }

    /// The HTTP kind's keys.
    fn http(
        &self,
        host: Option<String>,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        err: &ErrFn<'_>,
    ) -> Result<HttpCheck, FileError> {
        let method = match &self.method {
            None => http::Method::GET,
            Some(m) => match m.get_ref().to_ascii_uppercase().as_str() {
                "GET" => http::Method::GET,
                "HEAD" => http::Method::HEAD,
                other => return Err(err(m.span(), format!("method must be GET or HEAD, not {other:?}"))),
            },
        };
        let path = match &self.path {
            None => "/".to_owned(),
            Some(p) => {
                let text = p.get_ref();
                if !text.starts_with('/') || text.parse::<http::uri::PathAndQuery>().is_err() {
                    return Err(err(
                        p.span(),
                        format!("path {text:?} must be an absolute path like \"/healthz\""),
                    ));
                }
                text.clone()
            }
        };
        let expect_status = match &self.expect_status {
            None => vec![StatusRange { lo: 200, hi: 399 }],
            Some(list) if list.get_ref().is_empty() => {
                return Err(err(list.span(), "expect_status must list at least one status or range".into()));
            }
            Some(list) => list.get_ref().iter().map(|e| parse_status(e, err)).collect::<Result<_, _>>()?,
        };
        let expect_body = match &self.expect_body {
            Some(b) if b.get_ref().is_empty() => {
                return Err(err(b.span(), "expect_body must not be empty".into()));
            }
            Some(b) if b.get_ref().len() > 64 * 1024 => {
                return Err(err(
                    b.span(),
                    "expect_body is longer than the 64 KiB of body a check reads".into(),
                ));
            }
            other => other.as_ref().map(|b| b.get_ref().clone()),
        };
        let expect_header = self.expect_header.as_ref().map(|h| header_expect(h, err)).transpose()?;
        Ok(HttpCheck { method, path, host, headers, expect_status, expect_body, expect_header })
    }
}

/// `headers`: names and values the http crate takes, none of those the
/// checker sets itself.
fn request_headers(
    map: &Spanned<BTreeMap<Spanned<String>, Spanned<String>>>,
    kind: &str,
    err: &ErrFn<'_>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, FileError> {
    let mut headers = Vec::new();
    for (name, value) in map.get_ref() {
        let (at, name) = (name.span(), name.get_ref());
        let n = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| err(at.clone(), format!("invalid header name {name:?}")))?;
        let grpc_owned = kind == "grpc"
            && (n == http::header::CONTENT_TYPE || n == http::header::TE || n.as_str() == "grpc-timeout");
        if n == http::header::HOST
            || n == http::header::CONTENT_LENGTH
            || n == http::header::TRANSFER_ENCODING
            || grpc_owned
        {
            return Err(err(at, format!("header {name:?} is set by the checker (use `host` for Host)")));
        }
        let v = http::HeaderValue::from_str(value.get_ref())
            .map_err(|_| err(value.span(), format!("invalid value for header {name:?}")))?;
        headers.push((n, v));
    }
    Ok(headers)
}

fn header_expect(raw: &Spanned<RawHeaderExpect>, err: &ErrFn<'_>) -> Result<HeaderExpect, FileError> {
    let h = raw.get_ref();
    let name = http::HeaderName::from_bytes(h.name.get_ref().as_bytes())
        .map_err(|_| err(h.name.span(), format!("invalid header name {:?}", h.name.get_ref())))?;
    let value = match (&h.value, &h.regex) {
        (Some(_), Some(r)) => {
            return Err(err(r.span(), "expect_header takes `value` or `regex`, not both".into()));
        }
        (Some(v), None) => HeaderValueMatch::Equals(
            http::HeaderValue::from_str(v.get_ref())
                .map_err(|_| err(v.span(), format!("invalid header value {:?}", v.get_ref())))?,
        ),
        (None, Some(r)) => HeaderValueMatch::Regex(regex_at(r, err)?),
        (None, None) => HeaderValueMatch::Present,
    };
    Ok(HeaderExpect { name, value })
}

fn regex_at(r: &Spanned<String>, err: &ErrFn<'_>) -> Result<Pattern, FileError> {
    Pattern::new(r.get_ref()).map_err(|e| {
        // The regex crate's message spans lines (the pattern, a caret, the
        // reason): keep it on one.
        let why = e.lines().last().unwrap_or("").trim().trim_start_matches("error: ");
        err(r.span(), format!("invalid regex {:?}: {why}", r.get_ref()))
    })
}

/// One `steps` entry: a table with exactly one of the step keys.
fn step_of(raw: &Spanned<RawStep>, err: &ErrFn<'_>) -> Result<TcpStep, FileError> {
    let s = raw.get_ref();
    let given = [&s.send, &s.send_hex, &s.expect, &s.expect_hex, &s.expect_regex];
    if given.iter().filter(|v| v.is_some()).count() != 1 {
        return Err(err(
            raw.span(),
            "each step is one of { send = \"…\" }, { send_hex = \"…\" }, { expect = \"…\" }, { expect_hex = \"…\" } or { expect_regex = \"…\" }".into(),
        ));
    }
    let sized = |v: &Spanned<String>, bytes: Vec<u8>| -> Result<Vec<u8>, FileError> {
        match bytes.len() {
            0 => Err(err(v.span(), "a step's bytes must not be empty".into())),
            n if n > MAX_STEP_BYTES => Err(err(v.span(), "a step's bytes are limited to 64 KiB".into())),
            _ => Ok(bytes),
        }
    };
    let hex = |v: &Spanned<String>| -> Result<Vec<u8>, FileError> {
        sized(v, parse_hex(v.get_ref()).map_err(|m| err(v.span(), m))?)
    };
    Ok(if let Some(v) = &s.send {
        TcpStep::Send(sized(v, v.get_ref().as_bytes().to_vec())?)
    } else if let Some(v) = &s.send_hex {
        TcpStep::Send(hex(v)?)
    } else if let Some(v) = &s.expect {
        TcpStep::Expect(Expect::Contains(sized(v, v.get_ref().as_bytes().to_vec())?))
    } else if let Some(v) = &s.expect_hex {
        TcpStep::Expect(Expect::Contains(hex(v)?))
    } else if let Some(v) = &s.expect_regex {
        sized(v, v.get_ref().as_bytes().to_vec())?;
        let re = regex_at(v, err)?;
        if re.is_match(b"") {
            // It would pass before a byte arrived.
            return Err(err(
                v.span(),
                format!(
                    "expect_regex {:?} matches nothing at all; it must need at least one byte",
                    v.get_ref()
                ),
            ));
        }
        TcpStep::Expect(Expect::Regex(re))
    } else {
        unreachable!("exactly one key was counted above")
    })
}

/// Hex digits, two per byte, spaces allowed between bytes (`"2a 31 0d 0a"`).
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bad = || format!("invalid hex {text:?}: expected pairs of hex digits, like \"2a 31 0d 0a\"");
    if !digits.len().is_multiple_of(2) {
        return Err(bad());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
                _ => Err(bad()),
            }
        })
        .collect()
}

fn parse_status(entry: &Spanned<StatusEntry>, err: &ErrFn<'_>) -> Result<StatusRange, FileError> {
    let bad = |what: String| {
        err(
            entry.span(),
            format!("invalid status {what}: expected a code or range from 100 to 599, like \"200-299\""),
        )
    };
    let code = |n: i64| (100..=599).contains(&n).then_some(n as u16);
    match entry.get_ref() {
        StatusEntry::Code(n) => {
            code(*n).map(|c| StatusRange { lo: c, hi: c }).ok_or_else(|| bad(n.to_string()))
        }
        StatusEntry::Text(t) => {
            let (lo, hi) = t.split_once('-').unwrap_or((t, t));
            let parse = |s: &str| s.trim().parse::<i64>().ok().and_then(code);
            match (parse(lo), parse(hi)) {
                (Some(lo), Some(hi)) if lo <= hi => Ok(StatusRange { lo, hi }),
                _ => Err(bad(format!("{t:?}"))),
            }
        }
    }
}
