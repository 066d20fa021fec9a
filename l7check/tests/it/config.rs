use std::time::Duration;

use vigil_hostdb::OriginKey;
use vigil_l7check::{HealthChecks, OriginPattern, StatusRange};

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
    let c = &hc.checks[0];
    assert_eq!(c.origin, OriginPattern::Host("app.internal".into()));
    assert_eq!(
        (c.method.as_str(), c.path.as_str(), c.host.as_deref()),
        ("GET", "/healthz", Some("app.internal"))
    );
    assert_eq!(c.headers.len(), 1);
    assert_eq!((c.headers[0].0.as_str(), c.headers[0].1.to_str().unwrap()), ("user-agent", "vigil-health/1"));
    assert_eq!(c.expect_status, [StatusRange { lo: 200, hi: 299 }, StatusRange { lo: 304, hi: 304 }]);
    assert_eq!(c.expect_body.as_deref(), Some("OK"));
    assert_eq!(c.settings, d, "no overrides: the defaults");
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
    let c = hc.matching(&key("a:8080")).unwrap();
    assert_eq!(c.settings.interval, Duration::from_millis(500));
    assert_eq!(c.settings.timeout, Duration::from_millis(200));
    assert_eq!(c.settings.policy.healthy_threshold, 1);
    assert_eq!(c.settings.unhealthy_interval, Duration::from_secs(2), "not overridden: the default's");
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
    let path = |o: &str| hc.matching(&key(o)).map(|c| c.path.as_str());
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
        ("[[check]]\norigin = \"a\"\nheaders = { \"host\" = \"x\" }\n", "3:11", "set by the checker"),
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
