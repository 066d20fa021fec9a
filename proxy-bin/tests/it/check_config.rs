use std::path::PathBuf;
use std::process::Command;

/// A fresh folder for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `vigil check-config` on `main` (with `hc` as healthchecks.toml).
fn check(name: &str, main: &str, hc: Option<&str>) -> (i32, String, String) {
    let d = dir(name);
    std::fs::write(d.join("vigil.toml"), main).unwrap();
    if let Some(hc) = hc {
        std::fs::write(d.join("healthchecks.toml"), hc).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-config", "--config"])
        .arg(d.join("vigil.toml"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&d);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// SPEC's example main config (its cluster section left out: it needs a key file).
const SPEC_MAIN: &str = r#"[proxy]
listen = "127.0.0.1:8080"            # HTTP/1.1 and h2c (prior knowledge)
threads = 0                          # worker threads; 0 = one per core
admin = "127.0.0.1:9090"             # admin API; keep it on loopback
health_checks = "healthchecks.toml"  # dedicated L7 file, relative to this file
origin_timeout = "30s"               # request sent -> response head

[l4]
connect_timeout = "2s"
fail_threshold = 1                   # consecutive L4 failures that mark a server down
down_time = "10s"                    # then it is retried by the next request that picks it
connect_attempts = 3                 # distinct servers tried per request before 502

[pool]
max_idle_per_server = 64
idle_timeout = "60s"

[[remap]]
from = "www.example.com"             # client Host (its port ignored): exact, or "*.example.com"
to = "http://app.internal:8080"      # the origin
preserve_host = false                # false: Host is rewritten to the origin's host

[origins."app.internal:8080"]        # optional per-origin settings
servers = ["127.0.0.2:8080", "127.0.0.3:8080"]  # absent: DNS, TTL honoured, stale served on DNS failure
lb = "round_robin"                   # round_robin | least_requests | consistent_hash (on path)
protocol = "http1"                   # http1 | h2c
"#;

const HC: &str = "[[check]]\norigin = \"app.internal\"\npath = \"/healthz\"\n";

#[test]
fn specs_example_passes() {
    let (code, out, err) = check("spec", SPEC_MAIN, Some(HC));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok (1 remaps, 1 origins with settings, 1 health checks"), "{out}");
    assert!(err.is_empty(), "no warnings expected: {err}");
}

#[test]
fn a_bad_main_config_names_file_line_and_column() {
    let cases: &[(&str, &str, &str)] = &[
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\nlisten_port = 1\n", "3:1", "listen_port"),
        ("[proxy]\nlisten = \"localhost:8080\"\n", "2:10", "not an ip:port"),
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\norigin_timeout = \"soon\"\n", "3:18", "invalid duration"),
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\n[l4]\nfail_threshold = 0\n", "4:18", "fail_threshold"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[[remap]]\nfrom = \"a\"\nto = \"ftp://b\"\n",
            "5:6",
            "https://host",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[[remap]]\nfrom = \"a b\"\nto = \"http://b\"\n",
            "4:8",
            "remap from",
        ),
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nlb = \"random\"\n", "4:6", "unknown lb"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nprotocol = \"h3\"\n",
            "4:12",
            "http1 or h2c",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nservers = [\"10.0.0.1\"]\n",
            "4:12",
            "not an ip:port",
        ),
        ("[l4]\nfail_threshold = 1\n", "1:1", "proxy"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[limits]\nmax_headers = 500\n",
            "4:15",
            "max_headers must be",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[limits]\nmax_request_body = \"ten\"\n",
            "4:20",
            "not a size",
        ),
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\n[limits]\nmax_uri = 10\n", "4:11", "max_uri must be"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[pool]\nmax_idle_per_server = \"lots\"\n",
            "4:23",
            "max_idle_per_server is \"auto\" or a number from 0 to 100000",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[pool]\nmax_idle_per_server = -1\n",
            "4:23",
            "max_idle_per_server is \"auto\" or a number",
        ),
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\n[limits]\nkeepalive = \"1s\"\n", "4:1", "keepalive"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[access_log]\npath = \"a.log\"\nformat = \"clf\"\n",
            "5:10",
            "json or combined",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nqueue_timeout = \"1s\"\n",
            "4:17",
            "needs max_connections",
        ),
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\nrequest_id = \"yes\"\n", "3:14", "bool"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nservers = [{ addr = \"10.0.0.1:80\", weight = -1 }]\n",
            "4:12",
            "weight must be a whole number from 0 to 256, not -1",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nservers = [\"10.0.0.2:80\", { addr = \"10.0.0.1:80\", weight = 1.5 }]\n",
            "4:27",
            "not 1.5",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nservers = [{ addr = \"10.0.0.1:80\", wieght = 2 }]\n",
            "4:12",
            "unknown key \"wieght\"",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nservers = [8080]\n",
            "4:12",
            "a server is",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\npanic_threshold = \"150%\"\n",
            "4:19",
            "percentage from 0% to 100%",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nslow_start = \"fast\"\n",
            "4:14",
            "invalid duration",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\noutlier = { errors = \"4xx\" }\n",
            "4:22",
            "\"5xx\"",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\noutlier = { base_ejection = \"1m\", max_ejection = \"10s\" }\n",
            "4:50",
            "must not be below",
        ),
        ("[proxy]\nlisten = \"127.0.0.1:8080\"\nstate_max_age = \"1m\"\n", "3:17", "needs state_file"),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\nservers = [\"10.0.0.1:80\", { addr = \"10.0.0.1:80\", weight = 2 }]\n",
            "4:27",
            "listed twice",
        ),
        (
            "[proxy]\nlisten = \"127.0.0.1:8080\"\n[origins.\"b:80\"]\noutlier = { consecutive = 0 }\n",
            "4:27",
            "consecutive must be",
        ),
    ];
    for (i, (main, at, what)) in cases.iter().enumerate() {
        let (code, _, err) = check(&format!("bad{i}"), main, Some(""));
        assert_eq!(code, 1, "{main:?}: {err}");
        let expected = format!("vigil.toml:{at}: ");
        assert!(err.contains(&expected), "{main:?}: expected {expected:?} in {err}");
        assert!(err.to_lowercase().contains(&what.to_lowercase()), "{main:?}: expected {what:?} in {err}");
    }
}

#[test]
fn a_bad_health_check_file_names_its_own_file() {
    let (code, _, err) = check("badhc", SPEC_MAIN, Some("[defaults]\ninterval = \"2s\"\ntimeout = \"5s\"\n"));
    assert_eq!(code, 1);
    assert!(err.contains("healthchecks.toml:3:11: timeout"), "{err}");
    let (code, _, err) = check("nohc", SPEC_MAIN, None);
    assert_eq!(code, 1);
    assert!(err.contains("healthchecks.toml: cannot read"), "{err}");
}

#[test]
fn a_check_kind_the_origin_cannot_carry_is_an_error_at_the_kind() {
    // SPEC's origin speaks HTTP/1.1: no gRPC.
    let hc = "[[check]]\norigin = \"app.internal\"\nkind = \"grpc\"\n";
    let (code, _, err) = check("grpchttp1", SPEC_MAIN, Some(hc));
    assert_eq!(code, 1);
    assert!(err.contains("healthchecks.toml:3:8: a grpc check needs an origin that speaks h2"), "{err}");
    let h2c = SPEC_MAIN.replace("protocol = \"http1\"", "protocol = \"h2c\"");
    assert_eq!(check("grpch2c", &h2c, Some(hc)).0, 0, "h2c carries it");

    // Send and expect steps in plain TCP to a TLS port.
    let https = SPEC_MAIN
        .replace("to = \"http://app.internal:8080\"", "to = \"https://app.internal:8443\"")
        .replace("app.internal:8080\"]", "app.internal:8443\"]")
        .replace("protocol = \"http1\"", "protocol = \"auto\"");
    let steps = "[[check]]\norigin = \"app.internal\"\nkind = \"tcp\"\nsteps = [{ send = \"x\" }]\n";
    let (code, _, err) = check("tcptls", &https, Some(steps));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("healthchecks.toml:3:8: a tcp check's steps are plain TCP"), "{err}");
    let on_port = format!("{steps}port = 6379\n");
    assert_eq!(check("tcptlsport", &https, Some(&on_port)).0, 0, "another port may be plain TCP");

    // gRPC to an `auto` origin: fine where ALPN settles on h2, so a warning.
    let (code, out, err) = check("grpcauto", &https, Some(hc));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(
        err.contains(
            "healthchecks.toml:3:8: the grpc check of app.internal:8443 fails on every server that picks http/1.1 in ALPN"
        ),
        "{err}"
    );
    let h2 = https.replace("protocol = \"auto\"", "protocol = \"h2\"");
    let (code, _, err) = check("grpch2", &h2, Some(hc));
    assert_eq!((code, err.as_str()), (0, ""), "h2 over TLS is certain: no warning");
}

#[test]
fn a_slow_start_shorter_than_the_check_interval_is_a_warning() {
    let main = SPEC_MAIN.replace("protocol = \"http1\"", "protocol = \"http1\"\nslow_start = \"1s\"");
    let hc = "[[check]]\norigin = \"app.internal\"\ninterval = \"5s\"\n";
    let (code, _, err) = check("slowwarn", &main, Some(hc));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("slow_start (1s) is shorter than its check interval (5s)"), "{err}");
    let weighted = SPEC_MAIN.replace(
        "servers = [\"127.0.0.2:8080\", \"127.0.0.3:8080\"]",
        "servers = [\"127.0.0.2:8080\", { addr = \"127.0.0.3:8080\", weight = 3 }]\npanic_threshold = \"50%\"\noutlier = {}",
    );
    let (code, _, err) = check("weighted", &weighted, Some(""));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn warnings_for_an_off_loopback_admin_and_an_unused_origin() {
    let main = "[proxy]\nlisten = \"127.0.0.1:8080\"\nadmin = \"0.0.0.0:9090\"\n[origins.\"idle:80\"]\nservers = [\"127.0.0.2:80\"]\n";
    let (code, _, err) = check("warn", main, Some(""));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning:") && err.contains("off loopback"), "{err}");
    assert!(err.contains("origin idle:80 has settings but no remap"), "{err}");
}

#[test]
fn the_cluster_key_file_must_hold_32_bytes() {
    let d = dir("cluster");
    let main = format!(
        "{SPEC_MAIN}\n[cluster]\nnode_id = \"edge-1\"\nlisten = \"127.0.0.1:7946\"\nkey_file = \"cluster.key\"\n"
    );
    std::fs::write(d.join("vigil.toml"), &main).unwrap();
    std::fs::write(d.join("healthchecks.toml"), HC).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["check-config", "--config"])
            .arg(d.join("vigil.toml"))
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster.key: cannot read the cluster key"));
    std::fs::write(d.join("cluster.key"), b"short").unwrap();
    let out = run();
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly 32 random bytes, not 5"));
    std::fs::write(d.join("cluster.key"), [7u8; 32]).unwrap();
    assert_eq!(run().status.code(), Some(0));
    // Peers reach a node at its listen address: 0.0.0.0 cannot be advertised.
    std::fs::write(d.join("vigil.toml"), main.replace("127.0.0.1:7946", "0.0.0.0:7946")).unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("vigil.toml:") && err.contains("not an unspecified one"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn previous_key_files_are_read_like_key_file_and_never_name_a_key_twice() {
    let d = dir("cluster-previous");
    std::fs::write(d.join("healthchecks.toml"), HC).unwrap();
    std::fs::write(d.join("new.key"), [1u8; 32]).unwrap();
    std::fs::write(d.join("old.key"), [2u8; 32]).unwrap();
    std::fs::write(d.join("copy.key"), [1u8; 32]).unwrap();
    std::fs::write(d.join("short.key"), b"short").unwrap();
    let run = |previous: &str| {
        let main = format!(
            "{SPEC_MAIN}\n[cluster]\nnode_id = \"edge-1\"\nlisten = \"127.0.0.1:7946\"\nkey_file = \"new.key\"\nprevious_key_files = {previous}\n"
        );
        std::fs::write(d.join("vigil.toml"), &main).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["check-config", "--config"])
            .arg(d.join("vigil.toml"))
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(r#"["old.key"]"#);
    assert_eq!(code, Some(0), "{err}");
    // The line of previous_key_files, and the column of the entry at fault.
    let line = SPEC_MAIN.lines().count() + 6;
    for (previous, column, message) in [
        (r#"["old.key", "gone.key"]"#, 34, "gone.key: cannot read the cluster key"),
        (r#"["short.key"]"#, 23, "the cluster key must be exactly 32 random bytes, not 5"),
        (r#"["old.key", "./new.key"]"#, 34, "\"./new.key\" is the key_file itself"),
        (r#"["old.key", "old.key"]"#, 34, "\"old.key\" is listed twice"),
        (r#"["copy.key"]"#, 23, "holds the same key as"),
        (r#"["a", "b", "c", "d", "e"]"#, 43, "at most 4 previous_key_files"),
        (r#"["old.key", ""]"#, 34, "must not be empty"),
    ] {
        let (code, err) = run(previous);
        assert_eq!(code, Some(1), "{previous}: {err}");
        assert!(err.contains(&format!("vigil.toml:{line}:{column}: ")), "{previous}: {err}");
        assert!(err.contains(message), "{previous}: {err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_demo_runs_by_itself_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(["demo", "--seconds", "4"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("goes into maintenance") && text.contains("is killed"), "{text}");
    assert!(text.contains("L7 healthy -> unhealthy"), "the maintenance was seen by the checks: {text}");
    assert!(text.contains("client errors: 0"), "{text}");
    assert!(text.contains("dashboard: http://127.0.0.1:"), "it opens with the page's address: {text}");
    for ip in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert!(text.contains(ip), "{text}");
    }
}
