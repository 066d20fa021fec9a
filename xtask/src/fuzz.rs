//! `cargo xtask fuzz [--seconds N]`: the cargo-fuzz targets of `h1/fuzz`
//! (request heads, response heads, chunked bodies), each for a bounded time
//! with libFuzzer. The gate runs a short smoke of the same (`SMOKE_SECONDS`).
//!
//! Each run starts from the committed seeds (`h1/fuzz/corpus/<target>`,
//! read only) and grows a scratch corpus under the target directory, so a
//! run never adds files to the tree. A crash leaves its input under
//! `<target dir>/fuzz/artifacts/<target>/` and fails the step.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The fuzz targets, as `h1/fuzz/Cargo.toml` names them.
const TARGETS: &[&str] = &["request_head", "response_head", "chunked"];

/// Seconds per target in the gate's smoke run.
pub(crate) const SMOKE_SECONDS: u64 = 10;

/// Runs every target for `seconds`.
pub(crate) fn run(root: &Path, seconds: u64) -> Result<()> {
    let nightly = Command::new("cargo").args(["+nightly", "--version"]).output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!("fuzzing needs the nightly toolchain: rustup toolchain install nightly --profile minimal");
    }
    let fuzz = Command::new("cargo").args(["+nightly", "fuzz", "--version"]).output();
    if !fuzz.is_ok_and(|o| o.status.success()) {
        bail!("fuzzing needs cargo-fuzz: cargo install cargo-fuzz --locked");
    }
    let fuzz_dir = root.join("h1/fuzz");
    let work = crate::target_dir()?.join("fuzz");
    for target in TARGETS {
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = fuzz_dir.join("corpus").join(target);
        println!("fuzz {target}: {seconds} s, seeds from {}", seeds.display());
        // The first corpus directory is the one libFuzzer writes to.
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg("--fuzz-dir")
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(work.join("target"))
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            // The properties run three parses per input: keep inputs small.
            .arg("-max_len=4096")
            .arg("-print_final_stats=1")
            .status()
            .with_context(|| format!("running cargo fuzz run {target}"))?;
        if !status.success() {
            bail!("fuzz target {target} failed ({status}); the input is under {}", artifacts.display());
        }
    }
    println!("fuzz: {} targets, {seconds} s each, no failure", TARGETS.len());
    Ok(())
}
