//! `vigil.toml`: parsing and validation. Every error names `file:line:column`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use vigil_hostdb::conf::{FileError, error_at, parse_duration};
use vigil_hostdb::policy::MAX_WEIGHT;
use vigil_hostdb::{L4Policy, LbPolicy, OriginKey, OriginPolicy, OutlierPolicy};
use vigil_session::{IdleLimit, PoolConfig};

/// The whole main config, validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) listen: SocketAddr,
    /// The TLS listener (`listen_tls`), serving the `[[tls]]` certificates.
    pub(crate) listen_tls: Option<SocketAddr>,
    /// `[[tls]]`: the listener's certificates, the default one first.
    pub(crate) certificates: Vec<ListenerCert>,
    pub(crate) threads: usize,
    pub(crate) admin: SocketAddr,
    pub(crate) health_checks: PathBuf,
    pub(crate) origin_timeout: Duration,
    pub(crate) client_header_timeout: Duration,
    pub(crate) admin_token: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) fail_threshold: u32,
    pub(crate) down_time: Duration,
    pub(crate) connect_attempts: u32,
    pub(crate) max_idle_per_server: IdleLimit,
    pub(crate) idle_timeout: Duration,
    pub(crate) remaps: Vec<Remap>,
    pub(crate) origins: BTreeMap<String, OriginSettings>,
    pub(crate) cluster: Option<Cluster>,
    /// `[limits]`: what a client may send and hold.
    pub(crate) limits: Limits,
    /// `[access_log]`, when there is one.
    pub(crate) access_log: Option<AccessLogConfig>,
    /// `request_id`: an `X-Request-Id` for every request.
    pub(crate) request_id: bool,
    /// `trust_forwarded`: keep the client's `X-Forwarded-*` (appending to
    /// `X-Forwarded-For`) instead of replacing them.
    pub(crate) trust_forwarded: bool,
    /// `state_file` and its timing: server state kept across restarts.
    pub(crate) state: Option<StateConfig>,
    /// `upgrade_socket`: the Unix socket a new process (`vigil run
    /// --upgrade`) takes the listeners and the server state from.
    pub(crate) upgrade_socket: Option<PathBuf>,
    /// Things worth a word that are not errors (an admin listener off loopback).
    pub(crate) warnings: Vec<String>,
}

/// The longest `upgrade_socket` path: a Unix socket's address holds 107
/// bytes, and the socket is first bound under the path plus `.new`.
pub(crate) const MAX_UPGRADE_SOCKET_PATH: usize = 100;

/// `state_file`, `state_save_interval`, `state_max_age` (in `[proxy]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StateConfig {
    /// Relative to the config file.
    pub(crate) path: PathBuf,
    /// Written this often while running, and at shutdown.
    pub(crate) save_interval: Duration,
    /// An older file is not loaded at start.
    pub(crate) max_age: Duration,
}

/// `[limits]`: bounds on what clients send and hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    /// A whole request head (431).
    pub(crate) max_request_head: usize,
    /// A request target (414).
    pub(crate) max_uri: usize,
    /// Header fields of a request (431).
    pub(crate) max_headers: usize,
    /// A request body (413); `None`: unbounded.
    pub(crate) max_request_body: Option<u64>,
    /// Client connections open at once, all proxy listeners together
    /// (`None`: from the open-file limit, see `limits::auto_max_connections`).
    pub(crate) max_connections: Option<usize>,
    /// A keep-alive connection's wait for the next request's first byte.
    pub(crate) keepalive_timeout: Duration,
    /// The longest pause between two reads of a request body (408).
    pub(crate) body_timeout: Duration,
    /// How long an upgraded connection (WebSocket) may carry nothing either way.
    pub(crate) tunnel_idle_timeout: Duration,
    /// How long a client may take nothing of a response being written.
    pub(crate) send_timeout: Duration,
}

impl Limits {
    /// Most fields a head may have: what the codec's parser holds.
    pub(crate) const MAX_HEADERS: usize = vigil_h1::MAX_HEADERS;

    /// The codec's view of these limits.
    pub(crate) fn head(&self) -> vigil_h1::RequestLimits {
        vigil_h1::RequestLimits {
            max_head: self.max_request_head,
            max_headers: self.max_headers,
            max_uri: self.max_uri,
        }
    }
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessLogConfig {
    /// A file (appended to), or `None` for stdout (`path = "-"`).
    pub(crate) path: Option<PathBuf>,
    pub(crate) format: AccessLogFormat,
    /// How often buffered lines are written out.
    pub(crate) flush_interval: Duration,
}

/// The access log's line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessLogFormat {
    /// One JSON object a line.
    Json,
    /// The Apache/nginx "combined" format.
    Combined,
}

/// A value and where the config said it, for errors found after parsing
/// (a file it names that cannot be read) to name `file:line:column` too.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Located<T> {
    pub(crate) value: T,
    at: FileError,
}

impl<T> Located<T> {
    /// An error about this value, at its place in the config.
    pub(crate) fn error(&self, message: impl Into<String>) -> FileError {
        FileError { message: message.into(), ..self.at.clone() }
    }
}

/// One `[[tls]]`: a certificate of the TLS listener.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerCert {
    /// PEM chain, leaf first.
    pub(crate) cert: Located<PathBuf>,
    /// PEM private key.
    pub(crate) key: Located<PathBuf>,
}

/// One `[[remap]]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Remap {
    /// Exact host, or `.suffix` for `*.suffix`.
    pub(crate) from: HostMatch,
    pub(crate) to: OriginKey,
    /// `to = "https://..."`.
    pub(crate) https: bool,
    pub(crate) preserve_host: bool,
}

/// How a remap matches the client's Host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    Exact(String),
    Suffix(String),
}

/// `[origins."host:port"]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OriginSettings {
    /// `None`: resolve through DNS.
    pub(crate) servers: Option<Vec<SocketAddr>>,
    pub(crate) lb: LbPolicy,
    /// `protocol`: `http1`, `h2c`, and for https also `h2` and `auto`.
    pub(crate) protocol: OriginProtocol,
    /// The TLS keys (only an https origin may have them).
    pub(crate) tls: OriginTls,
    /// `max_connections`: requests in flight to the origin at once (for
    /// HTTP/1.1, its connections in use); more wait in a queue.
    pub(crate) max_connections: Option<u32>,
    /// `queue_timeout`: how long a request waits for room, then 503.
    pub(crate) queue_timeout: Option<Duration>,
    /// Weights (in `servers`), `slow_start`, `panic_threshold`, `outlier`.
    pub(crate) policy: OriginPolicy,
}

/// What an origin is spoken to with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginProtocol {
    /// `http1` (the default over plain TCP).
    Http1,
    /// `h2c` (plain) or `h2` (TLS): HTTP/2 with prior knowledge or by ALPN.
    H2,
    /// `auto` (the default over TLS): ALPN offers both and the server picks.
    Auto,
}

/// An https origin's TLS settings (`[origins."host:port"]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct OriginTls {
    /// `sni`: the name sent and checked (default: the origin's host).
    pub(crate) sni: Option<Located<String>>,
    /// `ca_file`: PEM roots instead of the system's.
    pub(crate) ca_file: Option<Located<PathBuf>>,
    /// `client_cert` and `client_key`: mutual TLS.
    pub(crate) client_cert: Option<Located<PathBuf>>,
    pub(crate) client_key: Option<Located<PathBuf>>,
    /// `insecure_skip_verify`: accept any certificate.
    pub(crate) insecure_skip_verify: bool,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cluster {
    pub(crate) node_id: String,
    pub(crate) listen: SocketAddr,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) cluster_id: String,
    pub(crate) gossip_interval: Duration,
    /// `key_file`: the key this node seals with (and opens with first).
    pub(crate) key_file: Located<PathBuf>,
    /// `previous_key_files`: keys that still open (a rotation in progress).
    pub(crate) previous_key_files: Vec<Located<PathBuf>>,
}

impl Cluster {
    /// Most `previous_key_files`: a rotation needs one, and a datagram that
    /// opens under no key costs a tag check per key.
    pub(crate) const MAX_PREVIOUS_KEYS: usize = 4;

    /// Whether going from `self` to `new` needs a restart: any change but
    /// the key files, which a reload applies live.
    pub(crate) fn needs_restart(&self, new: &Cluster) -> bool {
        // Spelled out whole: a new field must say which side it is on.
        let Cluster {
            node_id,
            listen,
            seeds,
            cluster_id,
            gossip_interval,
            key_file: _,
            previous_key_files: _,
        } = self;
        (node_id, listen, seeds, cluster_id, gossip_interval)
            != (&new.node_id, &new.listen, &new.seeds, &new.cluster_id, &new.gossip_interval)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    proxy: Spanned<RawProxy>,
    #[serde(default)]
    l4: RawL4,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    remap: Vec<Spanned<RawRemap>>,
    #[serde(default)]
    origins: BTreeMap<Spanned<String>, Spanned<RawOrigin>>,
    cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    tls: Vec<Spanned<RawTls>>,
    #[serde(default)]
    limits: RawLimits,
    access_log: Option<Spanned<RawAccessLog>>,
}

/// `max_idle_per_server`: a number, or `"auto"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawIdle {
    Count(i64),
    Auto(String),
}

/// A byte count: a number, or a string with a unit (`"64KiB"`, `"10m"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(i64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_request_head: Option<Spanned<RawSize>>,
    max_uri: Option<Spanned<RawSize>>,
    max_headers: Option<Spanned<i64>>,
    max_request_body: Option<Spanned<RawSize>>,
    max_connections: Option<Spanned<i64>>,
    keepalive_timeout: Option<Spanned<String>>,
    body_timeout: Option<Spanned<String>>,
    tunnel_idle_timeout: Option<Spanned<String>>,
    send_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    path: Spanned<String>,
    format: Option<Spanned<String>>,
    flush_interval: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    #[serde(default)]
    default: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Spanned<String>,
    listen_tls: Option<Spanned<String>>,
    threads: Option<Spanned<i64>>,
    admin: Option<Spanned<String>>,
    health_checks: Option<Spanned<String>>,
    origin_timeout: Option<Spanned<String>>,
    client_header_timeout: Option<Spanned<String>>,
    admin_token: Option<Spanned<String>>,
    request_id: Option<Spanned<bool>>,
    trust_forwarded: Option<Spanned<bool>>,
    state_file: Option<Spanned<String>>,
    state_save_interval: Option<Spanned<String>>,
    state_max_age: Option<Spanned<String>>,
    upgrade_socket: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawL4 {
    connect_timeout: Option<Spanned<String>>,
    fail_threshold: Option<Spanned<i64>>,
    down_time: Option<Spanned<String>>,
    connect_attempts: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPool {
    max_idle_per_server: Option<Spanned<RawIdle>>,
    idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemap {
    from: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    preserve_host: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrigin {
    servers: Option<Vec<Spanned<toml::Value>>>,
    slow_start: Option<Spanned<String>>,
    panic_threshold: Option<Spanned<String>>,
    outlier: Option<Spanned<RawOutlier>>,
    lb: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    sni: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_cert: Option<Spanned<String>>,
    client_key: Option<Spanned<String>>,
    insecure_skip_verify: Option<Spanned<bool>>,
    max_connections: Option<Spanned<i64>>,
    queue_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    consecutive: Option<Spanned<i64>>,
    errors: Option<Spanned<String>>,
    base_ejection: Option<Spanned<String>>,
    max_ejection: Option<Spanned<String>>,
    max_ejected: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    node_id: Spanned<String>,
    listen: Spanned<String>,
    #[serde(default)]
    seeds: Vec<Spanned<String>>,
    cluster_id: Option<Spanned<String>>,
    gossip_interval: Option<Spanned<String>>,
    key_file: Spanned<String>,
    #[serde(default)]
    previous_key_files: Vec<Spanned<String>>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> FileError {
        error_at(self.file, self.text, Some(span), message)
    }

    fn located<T>(&self, span: Range<usize>, value: T) -> Located<T> {
        Located { value, at: self.err(span, "") }
    }

    /// A path relative to the config file's folder, with its place.
    fn path(&self, dir: &Path, v: &Spanned<String>) -> Result<Located<PathBuf>, FileError> {
        if v.get_ref().trim().is_empty() {
            return Err(self.err(v.span(), "a file name must not be empty"));
        }
        Ok(self.located(v.span(), dir.join(v.get_ref())))
    }

    fn addr(&self, v: &Spanned<String>, what: &str) -> Result<SocketAddr, FileError> {
        v.get_ref()
            .parse()
            .map_err(|_| self.err(v.span(), format!("{what} {:?} is not an ip:port address", v.get_ref())))
    }

    fn dur(&self, v: &Option<Spanned<String>>, default: Duration) -> Result<Duration, FileError> {
        match v {
            None => Ok(default),
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(self.err(s.span(), "a duration here must be more than 0")),
                Err(m) => Err(self.err(s.span(), m)),
            },
        }
    }

    /// A byte count in `min..=max`.
    fn size(
        &self,
        v: &Option<Spanned<RawSize>>,
        default: u64,
        min: u64,
        max: u64,
        name: &str,
    ) -> Result<u64, FileError> {
        let Some(v) = v else { return Ok(default) };
        let n = match v.get_ref() {
            RawSize::Int(n) => u64::try_from(*n).map_err(|_| format!("{name} must not be negative")),
            RawSize::Text(t) => parse_size(t),
        }
        .map_err(|m| self.err(v.span(), m))?;
        if !(min..=max).contains(&n) {
            return Err(self.err(v.span(), format!("{name} must be between {min} and {max} bytes, not {n}")));
        }
        Ok(n)
    }

    /// One `servers` entry: `"ip:port"`, or `{ addr = "ip:port", weight = N }`.
    fn server(&self, v: &Spanned<toml::Value>) -> Result<(SocketAddr, Option<u32>), FileError> {
        let shape = "a server is \"ip:port\" or { addr = \"ip:port\", weight = 0 to 256 }";
        let addr_of = |text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|_| self.err(v.span(), format!("server {text:?} is not an ip:port address")))
        };
        match v.get_ref() {
            toml::Value::String(text) => Ok((addr_of(text)?, None)),
            toml::Value::Table(t) => {
                if let Some(key) = t.keys().find(|k| !matches!(k.as_str(), "addr" | "weight")) {
                    return Err(self.err(v.span(), format!("unknown key {key:?} in a server: {shape}")));
                }
                let addr = match t.get("addr") {
                    Some(toml::Value::String(text)) => addr_of(text)?,
                    _ => return Err(self.err(v.span(), format!("a server needs addr: {shape}"))),
                };
                let weight = match t.get("weight") {
                    None => None,
                    Some(toml::Value::Integer(w)) if (0..=i64::from(MAX_WEIGHT)).contains(w) => {
                        Some(*w as u32)
                    }
                    Some(other) => {
                        let shown = match other {
                            toml::Value::Integer(i) => i.to_string(),
                            toml::Value::Float(f) => f.to_string(),
                            toml::Value::String(t) => format!("{t:?}"),
                            other => format!("a {}", other.type_str()),
                        };
                        return Err(self.err(
                            v.span(),
                            format!("weight must be a whole number from 0 to {MAX_WEIGHT}, not {shown}"),
                        ));
                    }
                };
                Ok((addr, weight))
            }
            _ => Err(self.err(v.span(), shape)),
        }
    }

    /// `"50%"`: a whole percentage from 0 to 100.
    fn percent(&self, v: &Spanned<String>, name: &str) -> Result<u8, FileError> {
        let text = v.get_ref().trim();
        text.strip_suffix('%').and_then(|n| n.trim().parse::<u8>().ok()).filter(|n| *n <= 100).ok_or_else(
            || {
                self.err(
                    v.span(),
                    format!("{name} must be a percentage from 0% to 100%, like \"50%\", not {text:?}"),
                )
            },
        )
    }

    /// `outlier = { ... }`: on, with Envoy's defaults for what is not given.
    fn outlier(&self, raw: &Spanned<RawOutlier>) -> Result<OutlierPolicy, FileError> {
        let o = raw.get_ref();
        let d = OutlierPolicy::default();
        let consecutive = self.int(&o.consecutive, i64::from(d.consecutive), 1, 1000, "consecutive")? as u32;
        let gateway_only = match &o.errors {
            None => d.gateway_only,
            Some(e) => {
                match e.get_ref().as_str() {
                    "5xx" => false,
                    "gateway" => true,
                    other => {
                        return Err(self.err(
                        e.span(),
                        format!("errors must be \"5xx\" (any 5xx) or \"gateway\" (502, 503, 504), not {other:?}"),
                    ));
                    }
                }
            }
        };
        let base = self.dur(&o.base_ejection, d.base)?;
        let max = self.dur(&o.max_ejection, d.max.max(base))?;
        if max < base {
            let at = o.max_ejection.as_ref().map_or(raw.span(), Spanned::span);
            return Err(
                self.err(at, format!("max_ejection ({max:?}) must not be below base_ejection ({base:?})"))
            );
        }
        let max_percent = match &o.max_ejected {
            None => d.max_percent,
            Some(p) => match self.percent(p, "max_ejected")? {
                0 => {
                    return Err(self.err(
                        p.span(),
                        "max_ejected must be more than 0% (leave outlier out to turn it off)",
                    ));
                }
                n => n,
            },
        };
        Ok(OutlierPolicy { consecutive, gateway_only, base, max, max_percent })
    }

    fn int(
        &self,
        v: &Option<Spanned<i64>>,
        default: i64,
        min: i64,
        max: i64,
        name: &str,
    ) -> Result<i64, FileError> {
        match v {
            None => Ok(default),
            Some(n) if (min..=max).contains(n.get_ref()) => Ok(*n.get_ref()),
            Some(n) => {
                Err(self
                    .err(n.span(), format!("{name} must be between {min} and {max}, not {}", n.get_ref())))
            }
        }
    }
}

/// `"64KiB"`, `"10m"`, `"1 GiB"`, `"512"`: binary units (`k` and `KiB`
/// are both 1024), case aside.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?} is not a size: a number and a unit (B, KiB, MiB, GiB)")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size: it needs a number first"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text:?} is too large"))
}

/// `host[:port]`, with `default_port` when it names none.
fn origin_key(text: &str, default_port: u16) -> Result<OriginKey, vigil_hostdb::AddrError> {
    let has_port = match text.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").is_some(),
        None => text.rsplit_once(':').is_some_and(|(h, p)| !h.contains(':') && !p.is_empty()),
    };
    if has_port {
        text.parse()
    } else {
        text.parse::<OriginKey>().and_then(|k| OriginKey::new(k.host(), default_port))
    }
}

impl Config {
    /// Parses `text`, the contents of `path` (relative paths inside it are
    /// resolved against the file's folder).
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Self, FileError> {
        let file = path.display().to_string();
        let cx = Ctx { file: &file, text };
        let raw: Raw =
            toml::from_str(text).map_err(|e| error_at(&file, text, e.span(), e.message().trim()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut warnings = Vec::new();

        let p = raw.proxy.get_ref();
        let listen = cx.addr(&p.listen, "listen")?;
        let listen_tls = p.listen_tls.as_ref().map(|l| cx.addr(l, "listen_tls")).transpose()?;
        let mut certificates = Vec::new();
        for t in &raw.tls {
            let cert =
                ListenerCert { cert: cx.path(dir, &t.get_ref().cert)?, key: cx.path(dir, &t.get_ref().key)? };
            if t.get_ref().default {
                if raw.tls.iter().filter(|t| t.get_ref().default).count() > 1 {
                    return Err(cx.err(t.span(), "only one [[tls]] certificate can be the default"));
                }
                certificates.insert(0, cert);
            } else {
                certificates.push(cert);
            }
        }
        match (&p.listen_tls, certificates.is_empty()) {
            (Some(l), true) => {
                return Err(cx.err(l.span(), "listen_tls needs at least one [[tls]] certificate"));
            }
            (None, false) => warnings
                .push(format!("{file}: [[tls]] certificates are configured but no listen_tls serves them")),
            _ => {}
        }
        let admin = match &p.admin {
            Some(a) => cx.addr(a, "admin")?,
            None => SocketAddr::from(([127, 0, 0, 1], 9090)),
        };
        if !admin.ip().is_loopback() {
            warnings.push(format!("{file}: the admin API listens on {admin}, off loopback; keep it on loopback or set admin_token"));
        }
        let health_checks =
            dir.join(p.health_checks.as_ref().map_or("healthchecks.toml", |h| h.get_ref().as_str()));
        let admin_token = match &p.admin_token {
            Some(t) if t.get_ref().trim().is_empty() => {
                return Err(cx.err(t.span(), "admin_token must not be empty"));
            }
            other => other.as_ref().map(|t| t.get_ref().clone()),
        };

        let l4 = &raw.l4;
        let pool = &raw.pool;
        let mut remaps = Vec::new();
        for r in &raw.remap {
            let r = r.get_ref();
            let from_text = r.from.get_ref().to_ascii_lowercase();
            let from = match from_text.strip_prefix("*.") {
                Some(sfx) => OriginKey::new(sfx, 80).map(|k| HostMatch::Suffix(format!(".{}", k.host()))),
                None => OriginKey::new(&from_text, 80).map(|k| HostMatch::Exact(k.host().to_owned())),
            }
            .map_err(|e| {
                cx.err(r.from.span(), format!("remap from {:?}: {}", r.from.get_ref(), e.reason()))
            })?;
            let to_text = r.to.get_ref();
            let (https, rest) = match (to_text.strip_prefix("http://"), to_text.strip_prefix("https://")) {
                (Some(rest), _) => (false, rest),
                (_, Some(rest)) => (true, rest),
                _ => {
                    let why = "expected http://host[:port] or https://host[:port]";
                    return Err(cx.err(r.to.span(), format!("remap to {to_text:?}: {why}")));
                }
            };
            let to = origin_key(rest.trim_end_matches('/'), if https { 443 } else { 80 }).map_err(
                |e: vigil_hostdb::AddrError| {
                    cx.err(r.to.span(), format!("remap to {to_text:?}: {}", e.reason()))
                },
            )?;
            if remaps.iter().any(|x: &Remap| x.from == from) {
                return Err(cx.err(r.from.span(), format!("remap from {:?} appears twice", r.from.get_ref())));
            }
            if let Some(other) = remaps.iter().find(|x: &&Remap| x.to == to && x.https != https) {
                let (this, that) = if https { ("https", "http") } else { ("http", "https") };
                return Err(cx.err(
                    r.to.span(),
                    format!("origin {to} is reached over {this} here and over {that} by another remap ({:?}): one origin, one scheme", other.from),
                ));
            }
            remaps.push(Remap { from, to, https, preserve_host: r.preserve_host });
        }

        let mut origins = BTreeMap::new();
        for (key, o) in &raw.origins {
            let k: OriginKey = key.get_ref().parse().map_err(|e: vigil_hostdb::AddrError| {
                cx.err(key.span(), format!("origin {:?}: {}", key.get_ref(), e.reason()))
            })?;
            let o = o.get_ref();
            let mut policy = OriginPolicy::default();
            let servers = match &o.servers {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(
                        cx.err(key.span(), "servers must list at least one ip:port (or be left out for DNS)")
                    );
                }
                Some(list) => {
                    let mut addrs = Vec::with_capacity(list.len());
                    for entry in list {
                        let (addr, weight) = cx.server(entry)?;
                        if addrs.contains(&addr) {
                            return Err(cx.err(entry.span(), format!("server {addr} is listed twice")));
                        }
                        if let Some(w) = weight {
                            policy.weights.insert(addr, w);
                        }
                        addrs.push(addr);
                    }
                    Some(addrs)
                }
            };
            policy.slow_start =
                o.slow_start.is_some().then(|| cx.dur(&o.slow_start, Duration::ZERO)).transpose()?;
            policy.panic_threshold = match &o.panic_threshold {
                None => None,
                Some(p) => match cx.percent(p, "panic_threshold")? {
                    0 => None,
                    n => Some(n),
                },
            };
            policy.outlier = o.outlier.as_ref().map(|raw| cx.outlier(raw)).transpose()?;
            let lb = match &o.lb {
                None => LbPolicy::RoundRobin,
                Some(l) => l.get_ref().parse().map_err(|m: String| cx.err(l.span(), m))?,
            };
            let https = remaps.iter().any(|r| r.to == k && r.https);
            let protocol = match (o.protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span())), https) {
                (None, false) | (Some(("http1", _)), _) => OriginProtocol::Http1,
                (None, true) | (Some(("auto", _)), true) => OriginProtocol::Auto,
                (Some(("h2c", _)), false) | (Some(("h2", _)), true) => OriginProtocol::H2,
                (Some((other, span)), false) => {
                    return Err(cx.err(
                        span,
                        format!("protocol of an http origin must be http1 or h2c, not {other:?}"),
                    ));
                }
                (Some((other, span)), true) => {
                    return Err(cx.err(
                        span,
                        format!("protocol of an https origin must be auto, h2 or http1, not {other:?}"),
                    ));
                }
            };
            let tls = OriginTls {
                sni: o.sni.as_ref().map(|v| cx.located(v.span(), v.get_ref().clone())),
                ca_file: o.ca_file.as_ref().map(|v| cx.path(dir, v)).transpose()?,
                client_cert: o.client_cert.as_ref().map(|v| cx.path(dir, v)).transpose()?,
                client_key: o.client_key.as_ref().map(|v| cx.path(dir, v)).transpose()?,
                insecure_skip_verify: o.insecure_skip_verify.as_ref().is_some_and(|v| *v.get_ref()),
            };
            let tls_keys = [
                ("sni", o.sni.as_ref().map(Spanned::span)),
                ("ca_file", o.ca_file.as_ref().map(Spanned::span)),
                ("client_cert", o.client_cert.as_ref().map(Spanned::span)),
                ("client_key", o.client_key.as_ref().map(Spanned::span)),
                ("insecure_skip_verify", o.insecure_skip_verify.as_ref().map(Spanned::span)),
            ];
            if let Some((name, Some(span))) = tls_keys.iter().find(|(_, span)| span.is_some()).cloned()
                && !https
                && remaps.iter().any(|r| r.to == k)
            {
                return Err(
                    cx.err(span, format!("{name} applies to https origins only; {k} is reached over http"))
                );
            }
            match (&o.client_cert, &o.client_key) {
                (Some(c), None) => return Err(cx.err(c.span(), "client_cert needs client_key")),
                (None, Some(k)) => return Err(cx.err(k.span(), "client_key needs client_cert")),
                _ => {}
            }
            if tls.insecure_skip_verify && tls.ca_file.is_some() {
                let span = o.ca_file.as_ref().map(Spanned::span).unwrap_or_default();
                return Err(cx.err(span, "ca_file means nothing with insecure_skip_verify = true"));
            }
            if tls.insecure_skip_verify {
                warnings.push(format!(
                    "{file}: origin {k}: insecure_skip_verify = true: its certificates are not verified, anyone on the path can impersonate it"
                ));
            }
            if !remaps.iter().any(|r| r.to == k) {
                warnings.push(format!("{file}: origin {k} has settings but no remap sends traffic to it"));
            }
            let max_connections = o
                .max_connections
                .is_some()
                .then(|| cx.int(&o.max_connections, 0, 1, 1_000_000, "max_connections"))
                .transpose()?
                .map(|m| m as u32);
            let queue_timeout =
                o.queue_timeout.is_some().then(|| cx.dur(&o.queue_timeout, Duration::ZERO)).transpose()?;
            if let (Some(q), None) = (&o.queue_timeout, max_connections) {
                return Err(cx.err(q.span(), "queue_timeout needs max_connections"));
            }
            let settings =
                OriginSettings { servers, lb, protocol, tls, max_connections, queue_timeout, policy };
            if origins.insert(k.as_str().to_owned(), settings).is_some() {
                return Err(cx.err(key.span(), format!("origin {k} is configured twice")));
            }
        }

        let cluster = match &raw.cluster {
            None => None,
            Some(c) => {
                let c = c.get_ref();
                if c.node_id.get_ref().trim().is_empty() {
                    return Err(cx.err(c.node_id.span(), "node_id must not be empty"));
                }
                let listen = cx.addr(&c.listen, "cluster listen")?;
                if listen.ip().is_unspecified() {
                    // chitchat advertises the listen address to peers.
                    return Err(cx.err(
                        c.listen.span(),
                        "cluster listen must be the address peers reach this node at, not an unspecified one",
                    ));
                }
                let key_file = cx.path(dir, &c.key_file)?;
                let mut previous_key_files: Vec<Located<PathBuf>> = Vec::new();
                for (i, f) in c.previous_key_files.iter().enumerate() {
                    if i == Cluster::MAX_PREVIOUS_KEYS {
                        return Err(cx.err(
                            f.span(),
                            format!("at most {} previous_key_files", Cluster::MAX_PREVIOUS_KEYS),
                        ));
                    }
                    let file = cx.path(dir, f)?;
                    if file.value == key_file.value {
                        return Err(cx.err(f.span(), format!("{:?} is the key_file itself", f.get_ref())));
                    }
                    if previous_key_files.iter().any(|p| p.value == file.value) {
                        return Err(cx.err(f.span(), format!("{:?} is listed twice", f.get_ref())));
                    }
                    previous_key_files.push(file);
                }
                Some(Cluster {
                    node_id: c.node_id.get_ref().clone(),
                    listen,
                    seeds: c.seeds.iter().map(|s| cx.addr(s, "seed")).collect::<Result<_, _>>()?,
                    cluster_id: c
                        .cluster_id
                        .as_ref()
                        .map_or_else(|| "vigil".to_owned(), |i| i.get_ref().clone()),
                    gossip_interval: cx.dur(&c.gossip_interval, Duration::from_millis(200))?,
                    key_file,
                    previous_key_files,
                })
            }
        };

        let lim = &raw.limits;
        let max_request_head =
            cx.size(&lim.max_request_head, 64 << 10, 1 << 10, 1 << 20, "max_request_head")?;
        let limits = Limits {
            max_request_head: max_request_head as usize,
            max_uri: cx.size(&lim.max_uri, 8 << 10, 64, max_request_head, "max_uri")? as usize,
            max_headers: cx.int(&lim.max_headers, 100, 1, Limits::MAX_HEADERS as i64, "max_headers")?
                as usize,
            max_request_body: lim
                .max_request_body
                .is_some()
                .then(|| cx.size(&lim.max_request_body, 0, 1, u64::MAX >> 1, "max_request_body"))
                .transpose()?,
            max_connections: match &lim.max_connections {
                None => None,
                some => Some(cx.int(some, 0, 1, 10_000_000, "max_connections")? as usize),
            },
            keepalive_timeout: cx.dur(&lim.keepalive_timeout, Duration::from_secs(75))?,
            body_timeout: cx.dur(&lim.body_timeout, Duration::from_secs(60))?,
            tunnel_idle_timeout: cx.dur(&lim.tunnel_idle_timeout, Duration::from_secs(3600))?,
            send_timeout: cx.dur(&lim.send_timeout, Duration::from_secs(60))?,
        };
        let access_log = match &raw.access_log {
            None => None,
            Some(a) => {
                let a = a.get_ref();
                let path = match a.path.get_ref().as_str() {
                    "-" => None,
                    _ => Some(cx.path(dir, &a.path)?.value),
                };
                let format = match a.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
                    None | Some(("json", _)) => AccessLogFormat::Json,
                    Some(("combined", _)) => AccessLogFormat::Combined,
                    Some((other, span)) => {
                        return Err(cx.err(
                            span,
                            format!("access log format must be json or combined, not {other:?}"),
                        ));
                    }
                };
                let flush_interval = cx.dur(&a.flush_interval, Duration::from_secs(1))?;
                Some(AccessLogConfig { path, format, flush_interval })
            }
        };

        let state = match &p.state_file {
            None => {
                for (v, key) in
                    [(&p.state_save_interval, "state_save_interval"), (&p.state_max_age, "state_max_age")]
                {
                    if let Some(v) = v {
                        return Err(cx.err(v.span(), format!("{key} needs state_file")));
                    }
                }
                None
            }
            Some(f) => Some(StateConfig {
                path: cx.path(dir, f)?.value,
                save_interval: cx.dur(&p.state_save_interval, Duration::from_secs(10))?,
                max_age: cx.dur(&p.state_max_age, Duration::from_secs(600))?,
            }),
        };

        let upgrade_socket = match &p.upgrade_socket {
            None => None,
            Some(f) => {
                let path = cx.path(dir, f)?.value;
                // A Unix socket's address holds 107 bytes; the socket is
                // bound under a temporary name a few bytes longer first.
                let len = path.as_os_str().len();
                if len > MAX_UPGRADE_SOCKET_PATH {
                    return Err(cx.err(
                        f.span(),
                        format!(
                            "upgrade_socket {}: {len} bytes long, more than a Unix socket's {MAX_UPGRADE_SOCKET_PATH} (choose a shorter path, e.g. /run/vigil/upgrade.sock)",
                            path.display()
                        ),
                    ));
                }
                Some(path)
            }
        };

        // Defaults are the library crates' own (SPEC's), written once.
        let (pool_defaults, l4_defaults) = (PoolConfig::default(), L4Policy::default());
        Ok(Self {
            listen,
            listen_tls,
            certificates,
            threads: cx.int(&p.threads, 0, 0, 1024, "threads")? as usize,
            admin,
            health_checks,
            origin_timeout: cx.dur(&p.origin_timeout, Duration::from_secs(30))?,
            client_header_timeout: cx.dur(&p.client_header_timeout, Duration::from_secs(30))?,
            admin_token,
            connect_timeout: cx.dur(&l4.connect_timeout, pool_defaults.connect_timeout)?,
            fail_threshold: cx.int(
                &l4.fail_threshold,
                i64::from(l4_defaults.fail_threshold),
                1,
                i64::from(L4Policy::MAX_FAIL_THRESHOLD),
                "fail_threshold",
            )? as u32,
            down_time: cx.dur(&l4.down_time, l4_defaults.down_time)?,
            connect_attempts: cx.int(&l4.connect_attempts, 3, 1, 100, "connect_attempts")? as u32,
            max_idle_per_server: match &pool.max_idle_per_server {
                None => pool_defaults.max_idle_per_server,
                Some(v) => match v.get_ref() {
                    RawIdle::Auto(t) if t == "auto" => IdleLimit::AUTO,
                    RawIdle::Count(n) if (0..=100_000).contains(n) => IdleLimit::Fixed(*n as usize),
                    _ => {
                        return Err(
                            cx.err(v.span(), "max_idle_per_server is \"auto\" or a number from 0 to 100000")
                        );
                    }
                },
            },
            idle_timeout: cx.dur(&pool.idle_timeout, pool_defaults.idle_timeout)?,
            remaps,
            origins,
            cluster,
            limits,
            access_log,
            request_id: p.request_id.as_ref().is_none_or(|v| *v.get_ref()),
            trust_forwarded: p.trust_forwarded.as_ref().is_some_and(|v| *v.get_ref()),
            state,
            upgrade_socket,
            warnings,
        })
    }
}
