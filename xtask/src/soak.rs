//! `cargo xtask soak [--minutes N] [--seed S] [--rate R] [--hold-seconds H]`:
//! the real `vigil` (release) under minutes of load while its origins fail
//! in every way the schedule (seeded) picks, then an origin that never
//! answers with tens of thousands of requests in flight. The work is done
//! by `benches/src/bin/soak.rs` (origins, clients, schedule, sampler and
//! figures in one process beside the proxy); this builds both and runs it.
//! Not a gate: its figures are wall-clock ones.

use std::process::Command;

use anyhow::{Context, Result, bail};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let value = |name: &str| -> Result<Option<&String>> {
        match args.iter().position(|a| a == name) {
            Some(i) => args.get(i + 1).map(Some).with_context(|| format!("{name} takes a value")),
            None => Ok(None),
        }
    };
    let minutes: f64 =
        value("--minutes")?.map_or(Ok(5.0), |v| v.parse()).context("--minutes takes a number")?;
    if !(0.5..=1440.0).contains(&minutes) {
        bail!("--minutes takes 0.5 to 1440");
    }
    // No seed given: one from the clock, printed so that the run can be repeated.
    let seed: u64 = match value("--seed")? {
        Some(v) => v.parse().context("--seed takes a number")?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() % 1_000_000),
    };
    crate::cargo(
        &[
            "build",
            "--release",
            "-p",
            "vigil-proxy",
            "-p",
            "vigil-benches",
            "--bin",
            "vigil",
            "--bin",
            "soak",
        ],
        &[],
    )?;
    let release = crate::target_dir()?.join("release");
    let mut cmd = Command::new(release.join("soak"));
    cmd.arg("--vigil").arg(release.join("vigil"));
    cmd.args(["--minutes", &minutes.to_string(), "--seed", &seed.to_string()]);
    for name in ["--rate", "--hold-seconds"] {
        if let Some(v) = value(name)? {
            cmd.args([name, v]);
        }
    }
    println!("xtask soak: {minutes} min, seed {seed} (repeat with --seed {seed})");
    let status = cmd.status().context("running the soak harness")?;
    if !status.success() {
        bail!("soak failed ({status}); repeat with --seed {seed}");
    }
    Ok(())
}
