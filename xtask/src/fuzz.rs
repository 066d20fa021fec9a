//! `cargo xtask fuzz [--seconds N]`: the cargo-fuzz targets, each for a
//! bounded time with libFuzzer. Two fuzz crates, each its own workspace:
//! - `h1/fuzz`: the HTTP/1.1 codec (request heads, response heads, chunked
//!   bodies);
//! - `fuzz`: the rest of what comes from outside (both config files, the
//!   admin API's JSON bodies, the cluster's gossip records and datagrams).
//!
//! The gate runs a short smoke of the same ([`Run::Smoke`]): the targets
//! built unoptimized (`--dev`, a fraction of an optimized build's time; the
//! two crates share their common dependencies), each run for a few
//! seconds. `cargo xtask fuzz` builds them optimized, for long runs.
//!
//! Each run starts from the committed seeds (`<crate>/corpus/<target>`,
//! read only) and grows a scratch corpus under the target directory, so a
//! run never adds files to the tree: `fuzz/corpus/<target>` there, kept
//! from one `cargo xtask fuzz` to the next; the smoke's own, emptied first. A crash leaves its input under
//! `<target dir>/fuzz/artifacts/<target>/` and fails the step.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One fuzz target: the crate folder it is in, its name there, its
/// seconds in the gate's smoke run, and what libFuzzer is told beyond the
/// common options.
struct Target {
    dir: &'static str,
    name: &'static str,
    smoke_seconds: u64,
    options: &'static [&'static str],
}

const fn target(dir: &'static str, name: &'static str, smoke_seconds: u64) -> Target {
    Target { dir, name, smoke_seconds, options: &[] }
}

/// Every target, as the crates' `Cargo.toml` name them. The smoke gives
/// the codec, where a request's bytes arrive first, the most time; 30 s in
/// all, and the two unoptimized builds, keep the gate's step near 90 s on
/// two cores.
const TARGETS: &[Target] = &[
    target("h1/fuzz", "request_head", 5),
    target("h1/fuzz", "response_head", 5),
    target("h1/fuzz", "chunked", 5),
    target("fuzz", "main_config", 3),
    target("fuzz", "health_checks", 3),
    target("fuzz", "admin_json", 3),
    target("fuzz", "cluster_record", 3),
    Target {
        dir: "fuzz",
        name: "cluster_datagram",
        smoke_seconds: 3,
        // Any single allocation of 1 MiB or more fails the run: 256 times
        // the largest input, so only a length or a count read from the
        // input (or a decompression ratio) could ask for it.
        options: &["-malloc_limit_mb=1"],
    },
];

/// How the targets are built and for how long each runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Run {
    /// The gate's: unoptimized builds, each target its `smoke_seconds`.
    Smoke,
    /// Optimized builds, each target this many seconds.
    For(u64),
}

/// Runs every target as `run` says.
pub(crate) fn run(root: &Path, run: Run) -> Result<()> {
    let nightly = Command::new("cargo").args(["+nightly", "--version"]).output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!("fuzzing needs the nightly toolchain: rustup toolchain install nightly --profile minimal");
    }
    let fuzz = Command::new("cargo").args(["+nightly", "fuzz", "--version"]).output();
    if !fuzz.is_ok_and(|o| o.status.success()) {
        bail!("fuzzing needs cargo-fuzz: cargo install cargo-fuzz --locked");
    }
    let work = crate::target_dir()?.join("fuzz");
    for t in TARGETS {
        let (seconds, dev) = match run {
            Run::Smoke => (t.smoke_seconds, true),
            Run::For(seconds) => (seconds, false),
        };
        let fuzz_dir = root.join(t.dir);
        // The smoke starts from the seeds alone, every time: an unoptimized
        // build would take minutes to replay what long runs have grown
        // (and libFuzzer replays its corpus whatever -max_total_time says).
        let corpus = match run {
            Run::Smoke => {
                let fresh = work.join("smoke-corpus").join(t.name);
                if fresh.exists() {
                    std::fs::remove_dir_all(&fresh)?;
                }
                fresh
            }
            Run::For(_) => work.join("corpus").join(t.name),
        };
        let artifacts = work.join("artifacts").join(t.name);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = fuzz_dir.join("corpus").join(t.name);
        println!("fuzz {}/{}: {seconds} s, seeds from {}", t.dir, t.name, seeds.display());
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", t.name]);
        if dev {
            cmd.arg("--dev");
        }
        // One target folder for both crates: what they share is built once.
        // The first corpus directory is the one libFuzzer writes to.
        let status = cmd
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(work.join("target"))
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // The codec's properties run three parses per input, the
            // others parse whole files: keep inputs small.
            .arg("-max_len=4096")
            .args(t.options)
            .arg("-print_final_stats=1")
            .status()
            .with_context(|| format!("running cargo fuzz run {}", t.name))?;
        if !status.success() {
            bail!("fuzz target {} failed ({status}); the input is under {}", t.name, artifacts.display());
        }
    }
    println!("fuzz: {} targets, no failure", TARGETS.len());
    Ok(())
}
