//! `vigil status`: the admin API's `/hosts` as a table.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::cli::StatusArgs;

/// Home the cursor, then clear the screen: each refresh draws over the last.
const CLEAR: &str = "\x1b[H\x1b[2J";

pub(crate) fn main(args: &StatusArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil status: {e}");
            return ExitCode::from(1);
        }
    };
    if args.watch {
        return rt.block_on(watch(args.admin, Duration::from_secs(args.interval)));
    }
    match rt.block_on(table(args.admin)) {
        Ok(t) => {
            print!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigil status: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--watch`: a table every `interval` until Ctrl-C. On a terminal each
/// one replaces the last; otherwise (a pipe, a file) they follow one
/// another, a blank line apart. An admin API that cannot be reached (vigil
/// restarting, say) shows as an error line in place of the table, and the
/// next refresh tries again.
async fn watch(admin: SocketAddr, interval: Duration) -> ExitCode {
    let terminal = std::io::stdout().is_terminal();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut first = true;
    loop {
        let when = httpdate::fmt_http_date(SystemTime::now());
        let body = table(admin).await.unwrap_or_else(|e| format!("vigil status: {e}\n"));
        let every = interval.as_secs();
        let frame = format!("{admin} every {every} s, {when} (Ctrl-C to stop)\n{body}");
        let mut out = std::io::stdout().lock();
        let written = if terminal {
            write!(out, "{CLEAR}{frame}")
        } else if first {
            write!(out, "{frame}")
        } else {
            write!(out, "\n{frame}")
        };
        // stdout gone (a closed pipe): nobody is watching any more.
        if written.and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
        drop(out);
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut ctrl_c => return ExitCode::SUCCESS,
        }
    }
}

/// Fetches `/hosts` from `admin` and renders it; the error says what went wrong.
async fn table(admin: SocketAddr) -> Result<String, String> {
    match crate::client::fetch(admin, http::Method::GET, "/hosts", None).await {
        Ok((status, body)) if status.is_success() => match serde_json::from_str::<Value>(&body) {
            Ok(v) => Ok(render(&v)),
            Err(e) => Err(format!("{admin}/hosts is not JSON: {e}")),
        },
        Ok((status, body)) => Err(format!("{admin}/hosts answered {status}: {}", body.trim())),
        Err(e) => Err(format!("cannot reach the admin API at {e} (is vigil running? --admin ip:port)")),
    }
}

/// Renders a `/hosts` document as a table, one origin then its servers.
pub(crate) fn render(hosts: &Value) -> String {
    let mut out = String::new();
    let origins = hosts["origins"].as_array().map_or(&[][..], Vec::as_slice);
    let _ = writeln!(out, "node {} · {} origin(s)", hosts["node"].as_str().unwrap_or("?"), origins.len());
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<11} {:<10} {:<5} {:<28} {:>8} {:>9}",
        "SERVER", "ROUTABLE", "L4", "L7", "MAINT", "LAST CHECK", "LATENCY", "IDLE/USE"
    );
    for o in origins {
        let kind = match (o["check"]["kind"].as_str(), o["check"]["port"].as_u64()) {
            (Some(kind), Some(port)) => format!("{kind} checks on port {port}"),
            (Some(kind), None) => format!("{kind} checks"),
            (None, _) => "checks".to_owned(),
        };
        let checking = if o["checking"].as_bool() == Some(true) { "running" } else { "idle" };
        let checking = format!("{kind} {checking}");
        let last = match o["last_request_ms_ago"].as_u64() {
            Some(ms) => format!("last request {} ago", human_ms(ms)),
            None => "no request yet".to_owned(),
        };
        let _ = writeln!(
            out,
            "{}  ({}, {}, {})",
            o["origin"].as_str().unwrap_or("?"),
            o["lb"].as_str().unwrap_or("?"),
            checking,
            last
        );
        if o["panic"].as_bool() == Some(true) {
            let _ = writeln!(
                out,
                "  PANIC: too few routable servers; every server not in maintenance gets requests"
            );
        }
        if let Some(err) = o["dns"]["error"].as_str() {
            let _ = writeln!(out, "  DNS failing: {err}");
        }
        for s in o["servers"].as_array().map_or(&[][..], Vec::as_slice) {
            let l4 = s["l4"]["state"].as_str().unwrap_or("?");
            let l4 = match s["l4"]["down_for_ms"].as_u64() {
                Some(ms) if ms > 0 && l4 == "down" => format!("down {}", human_ms(ms)),
                _ => l4.to_owned(),
            };
            let l7 = &s["l7"];
            let check = match (l7["last_result"].as_str(), l7["last_check_ms_ago"].as_u64()) {
                (Some(r), Some(ago)) => {
                    format!("{r} {} ({} ago)", l7["last_detail"].as_str().unwrap_or(""), human_ms(ago))
                }
                _ => "-".to_owned(),
            };
            let latency = l7["last_latency_ms"].as_f64().map_or("-".to_owned(), |ms| format!("{ms:.1} ms"));
            let source = match l7["source"].as_str() {
                Some("local") | None => String::new(),
                Some(other) => format!(" [{other}]"),
            };
            let _ = writeln!(
                out,
                "  {:<22} {:<8} {:<11} {:<10} {:<5} {:<28} {:>8} {:>9}{}",
                s["addr"].as_str().unwrap_or("?"),
                if s["routable"].as_bool() == Some(true) { "yes" } else { "NO" },
                l4,
                l7["state"].as_str().unwrap_or("?"),
                if s["maintenance"].as_bool() == Some(true) { "on" } else { "-" },
                truncate(&check, 28),
                latency,
                format!(
                    "{}/{}",
                    s["pool"]["idle"].as_u64().unwrap_or(0),
                    s["pool"]["in_use"].as_u64().unwrap_or(0)
                ),
                source
            );
            if let Some(err) = s["l4"]["last_error"].as_str() {
                let _ = writeln!(out, "    last L4 failure: {err}");
            }
            // Traffic policy, when it says something: a weight other than
            // 1, a slow start under way, an ejection.
            let mut policy = Vec::new();
            match s["weight"].as_u64() {
                Some(0) => policy.push("weight 0 (drained)".to_owned()),
                Some(w) if w != 1 => policy.push(format!("weight {w}")),
                _ => {}
            }
            if let Some(p) = s["slow_start"]["progress"].as_f64() {
                policy.push(format!("slow start {:.0}%", p * 100.0));
            }
            if s["outlier"]["ejected"].as_bool() == Some(true) {
                let left = human_ms(s["outlier"]["until_ms"].as_u64().unwrap_or(0));
                let n = s["outlier"]["ejections"].as_u64().unwrap_or(0);
                policy.push(format!("EJECTED for {left} (ejection {n})"));
            }
            if !policy.is_empty() {
                let _ = writeln!(out, "    {}", policy.join(", "));
            }
        }
    }
    out
}

fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min", ms / 60_000),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_owned() } else { s.chars().take(max - 1).chain(['…']).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_server_with_its_states() {
        let v = serde_json::json!({"node": "edge-1", "origins": [{"origin": "app:8080", "checking": true,
            "last_request_ms_ago": 120, "lb": "round_robin", "check": {"kind": "grpc", "port": 9000}, "panic": true, "servers": [
            {"addr": "127.0.0.2:8080", "routable": true, "maintenance": false, "weight": 3,
             "slow_start": {"progress": 0.5},
             "l4": {"state": "up", "consecutive_failures": 0, "down_for_ms": 0},
             "l7": {"state": "healthy", "last_check_ms_ago": 800, "last_result": "pass", "last_detail": "200",
                    "last_latency_ms": 1.25, "source": "local"}, "pool": {"idle": 3, "in_use": 1}},
            {"addr": "127.0.0.3:8080", "routable": false, "maintenance": true, "weight": 1,
             "outlier": {"ejected": true, "until_ms": 30000, "ejections": 2, "consecutive_failures": 0},
             "l4": {"state": "down", "consecutive_failures": 1, "down_for_ms": 4200, "last_error": "tls: certificate expired"},
             "l7": {"state": "unhealthy", "source": "cluster:edge-2"}, "pool": {"idle": 0, "in_use": 0}}]}]});
        let t = render(&v);
        assert!(t.starts_with("node edge-1 · 1 origin(s)\n"), "{t}");
        assert!(
            t.contains("app:8080  (round_robin, grpc checks on port 9000 running, last request 120 ms ago)"),
            "{t}"
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[3].starts_with("  PANIC: "), "{t}");
        assert!(
            lines[4].contains("127.0.0.2:8080") && lines[4].contains("healthy") && lines[4].contains("3/1")
        );
        assert!(lines[4].contains("pass 200 (800 ms ago)") && lines[4].contains("1.2 ms"), "{}", lines[4]);
        assert_eq!(lines[5], "    weight 3, slow start 50%");
        assert!(
            lines[6].contains("NO")
                && lines[6].contains("down 4.2 s")
                && lines[6].contains("[cluster:edge-2]")
        );
        assert_eq!(lines[7], "    last L4 failure: tls: certificate expired");
        assert_eq!(lines[8], "    EJECTED for 30.0 s (ejection 2)");
    }
}
