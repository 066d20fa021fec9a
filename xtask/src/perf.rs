//! The performance gate: instruction counts under callgrind against the
//! committed `benches/perf-baseline.json`.
//!
//! Wall-clock time on a shared 2-core machine moves by ±20% run to run;
//! instruction counts of the same binary on the same input do not. Each
//! scenario of `vigil-perf` runs under `valgrind --tool=callgrind` with
//! collection switched on only inside its measured loop, and the count per
//! iteration is compared with the baseline: more than `tolerance_pct` above
//! fails; more than that below asks for `--bless` so the gain is locked in.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

const BASELINE: &str = "benches/perf-baseline.json";
const DEFAULT_TOLERANCE_PCT: f64 = 2.0;

pub(crate) fn run(root: &Path, bless: bool) -> Result<()> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        bail!(
            "valgrind is not installed (Debian: apt-get install -y valgrind); the perf gate counts instructions with it"
        );
    }
    crate::cargo(
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "vigil-benches",
            "-p",
            "vigil-proxy",
            "--bin",
            "vigil-perf",
            "--bin",
            "load-origin",
            "--bin",
            "vigil",
        ],
        &[],
    )?;
    let release = crate::target_dir()?.join("release");
    let bin = release.join("vigil-perf");
    let list = Command::new(&bin).arg("list").output().context("listing scenarios")?;
    let list = String::from_utf8(list.stdout)?;
    let tmp = std::env::temp_dir().join(format!("vigil-perf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;

    let mut measured = BTreeMap::new();
    for line in list.lines() {
        let mut cols = line.split('\t');
        let (Some(name), Some(iters)) = (cols.next(), cols.next()) else { continue };
        let iters: f64 = iters.parse().with_context(|| format!("iterations of {name}"))?;
        let out = tmp.join(format!("{name}.callgrind"));
        let status = Command::new("valgrind")
            .args(["--tool=callgrind", "--toggle-collect=*perf_measured_region*"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&bin)
            .arg(name)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .context("running valgrind")?;
        if !status.success() {
            bail!("vigil-perf {name} failed under valgrind ({status})");
        }
        let total = totals(&std::fs::read_to_string(&out)?)
            .with_context(|| format!("no totals in {}", out.display()))?;
        measured.insert(name.to_string(), (total as f64 / iters * 10.0).round() / 10.0);
    }
    let proxied = proxy_request(&release, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    measured.insert("proxy_request".to_string(), (proxied? * 10.0).round() / 10.0);

    let path = root.join(BASELINE);
    let old: Value =
        std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(json!({}));
    let tolerance = old["tolerance_pct"].as_f64().unwrap_or(DEFAULT_TOLERANCE_PCT);
    if bless {
        let doc = json!({
            "about": "Instructions per iteration of each vigil-perf scenario under callgrind. Written by `cargo xtask perf --bless`; checked by `cargo xtask ci`.",
            "tolerance_pct": tolerance,
            "instructions": measured,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")?;
        println!("perf: wrote {BASELINE}");
    }

    let mut failures = Vec::new();
    let mut improved = Vec::new();
    println!("{:<26} {:>12} {:>12} {:>8}", "scenario", "baseline", "now", "change");
    for (name, now) in &measured {
        let base = old["instructions"][name].as_f64();
        let change = base.map(|b| (now - b) / b * 100.0);
        println!(
            "{name:<26} {:>12} {now:>12.1} {:>8}",
            base.map_or("-".into(), |b| format!("{b:.1}")),
            change.map_or("new".into(), |c| format!("{c:+.1}%"))
        );
        match change {
            None if !bless => failures.push(format!("{name}: no baseline (run `cargo xtask perf --bless`)")),
            Some(c) if c > tolerance && !bless => failures.push(format!("{name}: {c:+.1}% instructions")),
            Some(c) if c < -tolerance && !bless => improved.push(name.as_str()),
            _ => {}
        }
    }
    if !improved.is_empty() {
        println!(
            "perf: faster than the baseline: {}; lock it in with `cargo xtask perf --bless`",
            improved.join(", ")
        );
    }
    if !failures.is_empty() {
        bail!("performance regressed beyond {tolerance}%:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Requests in the measured window of `proxy_request`.
const PROXY_REQUESTS: u32 = 2000;

/// The whole request path, end to end: the real `vigil` binary under
/// callgrind in front of `load-origin`, one keep-alive client connection,
/// sequential GETs. Counting is zeroed after a warm-up (pool filled, caches
/// hot) and dumped after exactly `PROXY_REQUESTS`; returns user-space
/// instructions per proxied request (the kernel is outside callgrind).
fn proxy_request(release: &Path, tmp: &Path) -> Result<f64> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Child, Stdio};

    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let port = || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (origin, listen, admin) = (port()?, port()?, port()?);
    let config = tmp.join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{listen}\"\nadmin = \"127.0.0.1:{admin}\"\nthreads = 1\n\n\
             [[remap]]\nfrom = \"perf.test\"\nto = \"http://perf.origin:{origin}\"\n\n\
             [origins.\"perf.origin:{origin}\"]\nservers = [\"127.0.0.1:{origin}\"]\n"
        ),
    )?;
    std::fs::write(tmp.join("healthchecks.toml"), "")?;
    let _origin = Kill(
        Command::new(release.join("load-origin"))
            .arg(format!("127.0.0.1:{origin}"))
            .stderr(Stdio::null())
            .spawn()
            .context("starting load-origin")?,
    );
    let out = tmp.join("proxy.callgrind");
    let proxy = Kill(
        Command::new("valgrind")
            .args(["--tool=callgrind", "-q"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(release.join("vigil"))
            .arg("--config")
            .arg(&config)
            .env("VIGIL_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting vigil under valgrind")?,
    );
    let started = std::time::Instant::now();
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", listen)) {
            Ok(c) => break c,
            Err(_) if started.elapsed() < std::time::Duration::from_secs(120) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => bail!("vigil under valgrind did not listen on {listen}: {e}"),
        }
    };
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut get = || -> Result<()> {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: perf.test\r\n\r\n")?;
        let (mut status, mut length, mut line) = (String::new(), 0usize, String::new());
        reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("the proxy answered {status:?}");
        }
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        Ok(())
    };
    for _ in 0..300 {
        get()?;
    }
    let pid = proxy.0.id().to_string();
    let control = |flag: &str| -> Result<()> {
        let ok = Command::new("callgrind_control")
            .args([flag, &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("callgrind_control (part of valgrind)")?;
        if !ok.success() {
            bail!("callgrind_control {flag} failed");
        }
        Ok(())
    };
    control("-z")?;
    for _ in 0..PROXY_REQUESTS {
        get()?;
    }
    control("-d")?;
    // The dump is written by the running process: wait for its totals line.
    let mut total = 0;
    let asked = std::time::Instant::now();
    while total == 0 && asked.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        for entry in std::fs::read_dir(tmp)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("proxy.callgrind.") {
                total += std::fs::read_to_string(&path).ok().and_then(|t| totals(&t)).unwrap_or(0);
            }
        }
    }
    drop(proxy);
    if total == 0 {
        bail!("no callgrind dump from the proxy");
    }
    Ok(total as f64 / f64::from(PROXY_REQUESTS))
}

/// The `totals:` (or `summary:`) line of a callgrind output file.
fn totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_callgrind_totals() {
        assert_eq!(super::totals("events: Ir\nfl=x\ntotals: 8740011\n"), Some(8_740_011));
        assert_eq!(super::totals("summary: 12\n"), Some(12));
        assert_eq!(super::totals("events: Ir\n"), None);
    }
}
