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
    /// Timing and hysteresis.
    pub settings: Settings,
}

impl Check {
    /// Whether `status` is accepted.
    pub fn status_ok(&self, status: u16) -> bool {
        self.expect_status.iter().any(|r| (r.lo..=r.hi).contains(&status))
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HealthChecks {
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
    /// assert_eq!(check.path, "/healthz");
    /// assert_eq!(check.settings.interval, std::time::Duration::from_secs(5));
    /// assert!(check.status_ok(302) && !check.status_ok(503));
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
            let raw = raw.into_inner();
            let (origin_text, origin_span) = (raw.origin.get_ref().clone(), raw.origin.span());
            let check = raw.resolve(&defaults, &err)?;
            // Two checks for the same pattern: the second would never apply.
            if checks.iter().any(|c| c.origin == check.origin) {
                return Err(err(origin_span, format!("origin {origin_text:?} has two [[check]]s")));
            }
            checks.push(check);
        }
        Ok(Self { defaults, checks })
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
    method: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    host: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    expect_status: Option<Spanned<Vec<Spanned<StatusEntry>>>>,
    expect_body: Option<Spanned<String>>,
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

impl RawCheck {
    fn resolve(self, defaults: &Settings, err: &ErrFn<'_>) -> Result<Check, FileError> {
        let origin = OriginPattern::parse(self.origin.get_ref()).map_err(|m| err(self.origin.span(), m))?;
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
        let host = match &self.host {
            None => None,
            Some(h) => {
                let text = h.get_ref();
                http::HeaderValue::from_str(text)
                    .ok()
                    .filter(|_| !text.is_empty() && !text.contains(char::is_whitespace))
                    .ok_or_else(|| {
                        err(h.span(), format!("host {text:?} is not a valid Host header value"))
                    })?;
                Some(text.clone())
            }
        };
        let mut headers = Vec::new();
        if let Some(map) = &self.headers {
            for (name, value) in map.get_ref() {
                let n = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| err(map.span(), format!("invalid header name {name:?}")))?;
                if n == http::header::HOST
                    || n == http::header::CONTENT_LENGTH
                    || n == http::header::TRANSFER_ENCODING
                {
                    return Err(err(
                        map.span(),
                        format!("header {name:?} is set by the checker (use `host` for Host)"),
                    ));
                }
                let v = http::HeaderValue::from_str(value.get_ref())
                    .map_err(|_| err(value.span(), format!("invalid value for header {name:?}")))?;
                headers.push((n, v));
            }
        }
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
        let settings = resolve_settings(
            defaults,
            [&self.interval, &self.unhealthy_interval, &self.timeout, &self.idle_after],
            [&self.healthy_threshold, &self.unhealthy_threshold, &self.fresh_connect_every],
            &self.jitter,
            err,
        )?;
        Ok(Check { origin, method, path, host, headers, expect_status, expect_body, settings })
    }
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
