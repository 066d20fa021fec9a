use std::time::Duration;

use vigil_hostdb::OriginKey;
use vigil_l7check::{CheckKind, Expect, HealthChecks, OriginPattern, StatusRange, TcpCheck, TcpStep};

/// SPEC's example file, verbatim.
const SPEC_EXAMPLE: &str = r#"[defaults]
interval = "2s"
unhealthy_interval = "2s"            # while unhealthy (a shorter one recovers faster)
timeout = "1s"
healthy_threshold = 2                # consecutive passes: unknown/unhealthy -> healthy
unhealthy_threshold = 3              # consecutive failures: unknown/healthy -> unhealthy
jitter = "10%"
idle_after = "5m"                    # stop checking an origin with no user request this long
fresh_connect_every = 0              # N > 0: every Nth check opens a fresh connection (catches
                                     # failures that reused sessions hide, e.g. conntrack limits)

[[check]]
origin = "app.internal"              # "host", "host:port" or "*.suffix"; most specific wins
method = "GET"                       # GET | HEAD
path = "/healthz"
host = "app.internal"                # Host header; default: the origin's host
headers = { "user-agent" = "vigil-health/1" }
expect_status = ["200-299", "304"]   # default ["200-399"]
expect_body = "OK"                   # optional substring of the first 64 KiB of the body
# every [defaults] key can be overridden per check
"#;

fn key(s: &str) -> OriginKey {
    s.parse().unwrap()
}

/// Parses `text` expecting an error; returns "line:column: message".
fn error(text: &str) -> String {
    let e = HealthChecks::parse(text, "hc.toml").unwrap_err();
    assert_eq!(e.file, "hc.toml");
    format!("{}:{}: {}", e.line, e.column, e.message)
}

#[test]
fn the_spec_example_parses_to_what_it_says() {
    let hc = HealthChecks::parse(SPEC_EXAMPLE, "healthchecks.toml").unwrap();
    let d = hc.defaults;
    assert_eq!(
        (d.interval, d.unhealthy_interval, d.timeout),
        (Duration::from_secs(2), Duration::from_secs(2), Duration::from_secs(1))
    );
    assert_eq!((d.policy.healthy_threshold, d.policy.unhealthy_threshold), (2, 3));
    assert_eq!((d.jitter, d.idle_after, d.fresh_connect_every), (0.10, Duration::from_secs(300), 0));
    let check = &hc.checks[0];
    assert_eq!(check.origin, OriginPattern::Host("app.internal".into()));
    assert_eq!((check.kind.name(), check.port), ("http", None));
    let c = check.http().unwrap();
    assert_eq!(
        (c.method.as_str(), c.path.as_str(), c.host.as_deref()),
        ("GET", "/healthz", Some("app.internal"))
    );
    assert_eq!(c.headers.len(), 1);
    assert_eq!((c.headers[0].0.as_str(), c.headers[0].1.to_str().unwrap()), ("user-agent", "vigil-health/1"));
    assert_eq!(c.expect_status, [StatusRange { lo: 200, hi: 299 }, StatusRange { lo: 304, hi: 304 }]);
    assert_eq!(c.expect_body.as_deref(), Some("OK"));
    assert_eq!(check.settings, d, "no overrides: the defaults");
    assert!(c.status_ok(204) && c.status_ok(304) && !c.status_ok(302) && !c.status_ok(503));
}

#[test]
fn an_empty_file_has_defaults_and_no_checks() {
    let hc = HealthChecks::parse("", "hc.toml").unwrap();
    assert!(hc.checks.is_empty());
    assert!(hc.matching(&key("app:80")).is_none());
}

#[test]
fn per_check_overrides_and_defaults_status() {
    let hc = HealthChecks::parse(
        "[defaults]\ninterval = \"10s\"\n[[check]]\norigin = \"a:8080\"\ninterval = \"500ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 1\nmethod = \"head\"\n",
        "hc.toml",
    )
    .unwrap();
    let check = hc.matching(&key("a:8080")).unwrap();
    assert_eq!(check.settings.interval, Duration::from_millis(500));
    assert_eq!(check.settings.timeout, Duration::from_millis(200));
    assert_eq!(check.settings.policy.healthy_threshold, 1);
    assert_eq!(check.settings.unhealthy_interval, Duration::from_secs(2), "not overridden: the default's");
    let c = check.http().unwrap();
    assert_eq!(c.method, http::Method::HEAD);
    assert_eq!(c.path, "/");
    assert_eq!(c.expect_status, [StatusRange { lo: 200, hi: 399 }]);
}

#[test]
fn most_specific_match_wins() {
    let hc = HealthChecks::parse(
        r#"
[[check]]
origin = "*.internal"
path = "/suffix"
[[check]]
origin = "*.app.internal"
path = "/longer-suffix"
[[check]]
origin = "app.internal"
path = "/host"
[[check]]
origin = "app.internal:8080"
path = "/host-port"
"#,
        "hc.toml",
    )
    .unwrap();
    let path = |o: &str| hc.matching(&key(o)).map(|c| c.http().unwrap().path.as_str());
    assert_eq!(path("app.internal:8080"), Some("/host-port"));
    assert_eq!(path("app.internal:9090"), Some("/host"));
    assert_eq!(path("api.app.internal:80"), Some("/longer-suffix"));
    assert_eq!(path("db.internal:5432"), Some("/suffix"));
    assert_eq!(path("internal:80"), None, "*.internal does not match internal itself");
    assert_eq!(path("example.com:80"), None);
    assert_eq!(path("APP.Internal:8080"), Some("/host-port"), "case-insensitive through OriginKey");
}

#[test]
fn unknown_keys_are_refused_where_they_stand() {
    assert_eq!(
        error("[defaults]\ninterval = \"2s\"\nintreval = \"3s\"\n").split(':').take(2).collect::<Vec<_>>(),
        ["3", "1"]
    );
    let e = error("[[check]]\norigin = \"a\"\n  expect_stauts = [\"200\"]\n");
    assert!(e.starts_with("3:3: "), "{e}");
    assert!(e.contains("expect_stauts"), "{e}");
    assert!(error("[default]\n").starts_with("1:"), "a misspelt table");
}

#[test]
fn bad_values_name_their_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        ("[defaults]\ninterval = \"2 sec\"\n", "2:12", "invalid duration"),
        ("[defaults]\ninterval = \"1s\"\ntimeout = \"1s\"\n", "3:11", "timeout"),
        ("[defaults]\njitter = \"60%\"\n", "2:10", "jitter"),
        ("[defaults]\njitter = \"10\"\n", "2:10", "jitter"),
        ("[defaults]\nhealthy_threshold = 0\n", "2:21", "healthy_threshold"),
        ("[defaults]\nidle_after = \"0s\"\n", "2:14", "idle_after"),
        ("[[check]]\norigin = \"a\"\nmethod = \"POST\"\n", "3:10", "GET or HEAD"),
        ("[[check]]\norigin = \"a\"\npath = \"healthz\"\n", "3:8", "absolute path"),
        ("[[check]]\norigin = \"bad host\"\n", "2:10", "invalid origin"),
        ("[[check]]\norigin = \"a*b\"\n", "2:10", "wildcard"),
        ("[[check]]\norigin = \"a\"\nexpect_status = [\"300-200\"]\n", "3:18", "invalid status"),
        ("[[check]]\norigin = \"a\"\nexpect_status = [\"2xx\"]\n", "3:18", "invalid status"),
        ("[[check]]\norigin = \"a\"\nexpect_status = [600]\n", "3:18", "invalid status"),
        ("[[check]]\norigin = \"a\"\nexpect_status = []\n", "3:17", "at least one"),
        ("[[check]]\norigin = \"a\"\nexpect_body = \"\"\n", "3:15", "empty"),
        ("[[check]]\norigin = \"a\"\nheaders = { \"host\" = \"x\" }\n", "3:13", "set by the checker"),
        ("[[check]]\norigin = \"a\"\nheaders = { \"bad name\" = \"x\" }\n", "3:13", "invalid header name"),
        ("[[check]]\norigin = \"a\"\nhost = \"svc/x\"\n", "3:8", "must be a host name"),
        ("[[check]]\norigin = \"a\"\nhost = \"a?b\"\n", "3:8", "must be a host name"),
        ("[[check]]\norigin = \"a\"\nheaders = { \"x\" = \"bad\\u0001\" }\n", "3:19", "invalid value"),
        ("[[check]]\norigin = \"a\"\ninterval = \"1s\"\ntimeout = \"2s\"\n", "4:11", "below interval"),
        ("[[check]]\norigin = \"a\"\n[[check]]\norigin = \"A\"\n", "4:10", "two [[check]]s"),
        ("[[check]]\npath = \"/\"\n", "1:1", "origin"),
        ("[defaults]\ninterval = 2\n", "2:12", "string"),
    ];
    for (text, at, what) in cases {
        let e = error(text);
        assert!(e.starts_with(&format!("{at}: ")), "{text:?}: expected at {at}, got {e}");
        assert!(e.to_lowercase().contains(&what.to_lowercase()), "{text:?}: expected {what:?} in {e}");
    }
}

#[test]
fn errors_display_as_file_line_column() {
    let e =
        HealthChecks::parse("[defaults]\n\ttimeout = \"x\"\n", "/etc/vigil/healthchecks.toml").unwrap_err();
    assert!(e.to_string().starts_with("/etc/vigil/healthchecks.toml:2:12: invalid duration"), "{e}");
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes: the column of the bad value must still be 10.
    let e = HealthChecks::parse("# café\n[defaults]\njitter = \"é\"\n", "hc.toml").unwrap_err();
    assert_eq!((e.line, e.column), (3, 10), "{e}");
}

#[test]
fn grpc_tcp_and_http_kinds_parse_with_their_keys() {
    let hc = HealthChecks::parse(
        r#"
[[check]]
origin = "api.internal"
kind = "grpc"
service = "orders.v1.Orders"
headers = { "x-token" = "t" }
port = 9001

[[check]]
origin = "redis.internal"
kind = "tcp"
steps = [{ send = "PING\r\n" }, { expect = "+PONG" }, { send_hex = "2a 31 0d 0a" }, { expect_regex = "^:\\d+" }, { expect_hex = "0D0a" }]

[[check]]
origin = "db.internal"
kind = "tcp"

[[check]]
origin = "web.internal"
expect_header = { name = "X-DB", regex = "^(ok|degraded)$" }

[[check]]
origin = "web2.internal"
expect_header = { name = "x-ready", value = "yes" }

[[check]]
origin = "web3.internal"
expect_header = { name = "x-ready" }
"#,
        "hc.toml",
    )
    .unwrap();
    let get = |o: &str| hc.matching(&key(o)).unwrap();
    let grpc = get("api.internal:50051");
    assert_eq!((grpc.kind.name(), grpc.port), ("grpc", Some(9001)));
    let CheckKind::Grpc(g) = &grpc.kind else { panic!("{grpc:?}") };
    assert_eq!((g.service.as_str(), g.headers.len()), ("orders.v1.Orders", 1));
    assert_eq!(grpc.addr_for("10.0.0.1:50051".parse().unwrap()), "10.0.0.1:9001".parse().unwrap());
    assert_eq!((grpc.at.line, grpc.at.column), (4, 8), "where its kind is written");

    let CheckKind::Tcp(tcp) = &get("redis.internal:6379").kind else { panic!() };
    assert_eq!(tcp.steps.len(), 5);
    assert_eq!(tcp.steps[0], TcpStep::Send(b"PING\r\n".to_vec()), "TOML's escapes");
    assert_eq!(tcp.steps[1], TcpStep::Expect(Expect::Contains(b"+PONG".to_vec())));
    assert_eq!(tcp.steps[2], TcpStep::Send(b"*1\r\n".to_vec()));
    assert!(matches!(&tcp.steps[3], TcpStep::Expect(Expect::Regex(re)) if re.is_match(b":12\r\n")));
    assert_eq!(tcp.steps[4], TcpStep::Expect(Expect::Contains(b"\r\n".to_vec())));
    let connect_only = get("db.internal:5432");
    assert_eq!(connect_only.kind, CheckKind::Tcp(TcpCheck::default()));
    assert_eq!((connect_only.at.line, connect_only.at.column), (16, 8));
    let web = get("web.internal:80");
    assert_eq!((web.kind.name(), web.at.line), ("http", 18), "no `kind`: where the check starts");

    let headers = |o: &str, h: &[(&str, &str)]| {
        let mut map = http::HeaderMap::new();
        for (k, v) in h {
            map.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        get(o).http().unwrap().expect_header.as_ref().unwrap().satisfied_by(&map)
    };
    assert!(headers("web.internal", &[("x-db", "degraded")]));
    assert!(!headers("web.internal", &[("x-db", "down")]));
    assert!(headers("web.internal", &[("x-db", "down"), ("x-db", "ok")]), "one matching field is enough");
    assert!(headers("web2.internal", &[("x-ready", "yes")]));
    assert!(!headers("web2.internal", &[("x-ready", "yes!")]), "value is exact");
    assert!(headers("web3.internal", &[("x-ready", "")]));
    assert!(!headers("web3.internal", &[]));
}

#[test]
fn kind_specific_mistakes_are_errors_where_they_stand() {
    let cases: &[(&str, &str, &str)] = &[
        ("kind = \"udp\"", "3:8", "kind must be"),
        ("kind = \"tcp\"\npath = \"/\"", "4:8", "`path` does not apply to a tcp check"),
        ("kind = \"grpc\"\nexpect_status = [200]", "4:17", "`expect_status` does not apply to a grpc check"),
        ("service = \"x\"", "3:11", "`service` does not apply to a http check"),
        ("steps = []", "3:9", "`steps` does not apply to a http check"),
        ("kind = \"tcp\"\nfresh_connect_every = 2", "4:23", "opens a connection of its own"),
        ("port = 0", "3:8", "port must be from 1 to 65535"),
        ("tls = false", "3:7", "`tls` goes with `port`"),
        ("port = 9000\ntls = true", "4:7", "only `tls = false`"),
        ("port = 70000", "3:8", "port must be from 1 to 65535"),
        ("kind = \"tcp\"\nsteps = [{ expect_regex = \"(unclosed\" }]", "4:27", "invalid regex"),
        ("kind = \"tcp\"\nsteps = [{ send = \"PING\\q\" }]", "4:25", "escape"),
        ("kind = \"tcp\"\nsteps = [{ send_hex = \"0g\" }]", "4:23", "invalid hex"),
        ("kind = \"tcp\"\nsteps = [{ send_hex = \"abc\" }]", "4:23", "invalid hex"),
        ("kind = \"tcp\"\nsteps = [{ send_hex = \"+a\" }]", "4:23", "invalid hex"),
        ("kind = \"tcp\"\nsteps = [{ send = \"\" }]", "4:19", "must not be empty"),
        ("kind = \"tcp\"\nsteps = [{ send = \"a\", expect = \"b\" }]", "4:10", "each step is one of"),
        ("kind = \"tcp\"\nsteps = [{ sned = \"a\" }]", "4:12", "unknown field"),
        ("expect_header = { name = \"bad name\" }", "3:26", "invalid header name"),
        ("expect_header = { name = \"x\", value = \"a\", regex = \"b\" }", "3:52", "not both"),
        ("expect_header = { name = \"x\", regex = \"[\" }", "3:39", "invalid regex"),
        ("kind = \"grpc\"\nheaders = { \"content-type\" = \"x\" }", "4:13", "set by the checker"),
        ("kind = \"grpc\"\nheaders = { \"grpc-timeout\" = \"1S\" }", "4:13", "set by the checker"),
        ("kind = \"grpc\"\nhost = \"a#b\"", "4:8", "must be a host name"),
        ("kind = \"tcp\"\nsteps = [{ expect_regex = \"X*\" }]", "4:27", "at least one byte"),
    ];
    for (body, at, what) in cases {
        let text = format!("[[check]]\norigin = \"a\"\n{body}\n");
        let e = error(&text);
        assert!(e.starts_with(at), "{text:?}: expected at {at}, got {e}");
        assert!(e.to_lowercase().contains(&what.to_lowercase()), "{text:?}: expected {what:?} in {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
