//! `cargo xtask`: the project's automation. `cargo xtask ci` is the one gate.
//!
//! ```text
//! cargo xtask ci            fmt, clippy, tests, a fuzz smoke run, docs, packaging, layering, perf
//!                           (in that order; stops at the first failure)
//! cargo xtask fmt|clippy|test|fuzz-smoke|doc|package|layering|perf   one step
//! cargo xtask perf --bless  re-measure and write benches/perf-baseline.json
//! cargo xtask fuzz [--seconds N]
//!                           every fuzz target (the codec's, the config files', the admin
//!                           API's, the cluster's), optimized, N s each (default 60; not a gate)
//! cargo xtask bench [ARGS]  the criterion suite (wall-clock figures; not a gate)
//! cargo xtask loadtest [--rounds N] [--seconds S] [--connections C]
//!                           vigil vs nginx vs HAProxy under wrk, syscalls per request (not a gate)
//! cargo xtask soak [--minutes N] [--seed S] [--rate R] [--hold-seconds H]
//!                           release vigil under load for N min (default 5) while origins are
//!                           killed, drained, slowed and cut off and the config reloaded, then an
//!                           origin that never answers; figures and assertions (not a gate)
//! ```
//!
//! Cargo's target directory is asked of cargo (`CARGO_TARGET_DIR` and
//! config files are honoured).

// A command-line tool: printing is its job, and it times real steps on the wall clock.
#![allow(clippy::print_stdout, clippy::disallowed_methods)]

mod fuzz;
mod layering;
mod loadtest;
mod perf;
mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    let (cmd, rest) = args.split_first().map(|(c, r)| (c.as_str(), r)).unwrap_or(("help", &[]));
    match cmd {
        "ci" => {
            let start = Instant::now();
            for (name, step) in STEPS {
                timed(name, || step(&root))?;
            }
            println!("xtask ci: all steps passed in {:.0?}", start.elapsed());
            // The closing line CI reads: the test totals of the whole workspace.
            let (passed, failed) = *TEST_TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            println!("tests: {passed} passed, {failed} failed");
            Ok(())
        }
        "perf" => perf::run(&root, rest.iter().any(|a| a == "--bless")),
        "fuzz" => {
            let seconds = match rest.iter().position(|a| a == "--seconds") {
                Some(i) => {
                    rest.get(i + 1).and_then(|v| v.parse().ok()).context("--seconds takes a number")?
                }
                None => 60,
            };
            fuzz::run(&root, fuzz::Run::For(seconds))
        }
        "loadtest" => loadtest::run(rest),
        "soak" => soak::run(rest),
        "bench" => {
            let mut args = vec!["bench", "-p", "vigil-benches"];
            args.extend(rest.iter().map(String::as_str));
            cargo(&args, &[])
        }
        "help" | "-h" | "--help" => {
            println!("{}", HELP);
            Ok(())
        }
        other => match STEPS.iter().find(|(n, _)| *n == other) {
            Some((name, step)) => timed(name, || step(&root)),
            None => bail!("unknown task {other:?}\n{HELP}"),
        },
    }
}

const HELP: &str = "usage: cargo xtask <ci | fmt | clippy | test | fuzz-smoke | doc | package | layering | perf [--bless] | fuzz [--seconds N] | bench [ARGS] | loadtest [--rounds N] [--seconds S] [--connections C] [--idle N] | soak [--minutes N] [--seed S] [--rate R] [--hold-seconds H]>";

type Step = fn(&Path) -> Result<()>;

const STEPS: &[(&str, Step)] = &[
    ("fmt", |_| cargo(&["fmt", "--all", "--", "--check"], &[])),
    ("clippy", |_| cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])),
    ("test", |_| run_tests()),
    ("fuzz-smoke", |root| fuzz::run(root, fuzz::Run::Smoke)),
    ("doc", |_| cargo(&["doc", "--workspace", "--no-deps"], &[("RUSTDOCFLAGS", "-D warnings")])),
    // Every crate packages and builds from what it would publish (the
    // library crates are meant to be taken one by one).
    ("package", |_| {
        forget_packaged_sources()?;
        cargo(&["package", "--workspace", "--locked", "--allow-dirty"], &[])
    }),
    ("layering", layering::check),
    ("perf", |root| perf::run(root, false)),
];

/// Forgets what an earlier `cargo package` made of our own crates from its
/// temporary registry: their unpacked sources and their builds. Cargo takes
/// a registry's `name-version` to be immutable: it unpacks it once per
/// registry path and never rebuilds it, so with the version unchanged a
/// second run would build one crate against another's stale copy and fail
/// on an API that changed since (a fresh CI machine never sees this).
fn forget_packaged_sources() -> Result<()> {
    forget_packaged_builds(&target_dir()?.join("debug"))?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let Ok(registries) = std::fs::read_dir(home.join("registry").join("src")) else { return Ok(()) };
    for registry in registries.flatten() {
        // Temporary registries have no name: their folders are `-<hash>`.
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for krate in std::fs::read_dir(registry.path())?.flatten() {
            let name = krate.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("vigil-") || name.starts_with("xtask-") {
                std::fs::remove_dir_all(krate.path())
                    .with_context(|| format!("removing {}", krate.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Removes the fingerprints of our crates built from a temporary registry
/// (their dep-info names sources under `registry/src/-<hash>/`), so that
/// cargo builds them again from the sources packaged now.
fn forget_packaged_builds(profile: &Path) -> Result<()> {
    let Ok(deps) = std::fs::read_dir(profile.join("deps")) else { return Ok(()) };
    for entry in deps.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".d").filter(|s| s.starts_with("vigil_")) else { continue };
        let from_registry = std::fs::read_to_string(entry.path())
            .is_ok_and(|d| d.contains("/registry/src/-") || d.contains("\\registry\\src\\-"));
        let Some((krate, hash)) = stem.rsplit_once('-') else { continue };
        if from_registry {
            let fingerprint =
                profile.join(".fingerprint").join(format!("{}-{hash}", krate.replace('_', "-")));
            if fingerprint.exists() {
                std::fs::remove_dir_all(&fingerprint)
                    .with_context(|| format!("removing {}", fingerprint.display()))?;
            }
        }
    }
    Ok(())
}

/// Passed and failed tests of the last `test` step, summed over every binary.
// A std Mutex in a static needs no dependency here; xtask never contends it.
#[allow(clippy::disallowed_types)]
static TEST_TOTALS: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));

/// `cargo test --workspace`, echoing its output and summing its result lines.
fn run_tests() -> Result<()> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["test", "--workspace"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some((p, f)) = parse_result_line(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let status = child.wait()?;
    *TEST_TOTALS.lock().unwrap_or_else(|e| e.into_inner()) = (passed, failed);
    println!("cargo test: {passed} passed, {failed} failed in all");
    if !status.success() {
        bail!("`cargo test --workspace` failed ({status})");
    }
    if passed == 0 {
        bail!("`cargo test --workspace` ran no test");
    }
    Ok(())
}

/// `test result: ok. 21 passed; 0 failed; ...` -> (21, 0).
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse().ok())
    };
    Some((num("passed")?, num("failed")?))
}

fn timed(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("==> xtask {name}");
    let start = Instant::now();
    f().with_context(|| format!("step `{name}` failed"))?;
    println!("==> xtask {name}: ok ({:.1?})", start.elapsed());
    Ok(())
}

/// Runs cargo with `args` and extra environment; fails if it fails.
pub(crate) fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where cargo puts what it builds: `target/` unless `CARGO_TARGET_DIR`, a
/// config file or the environment says otherwise, so it is asked (once).
pub(crate) fn target_dir() -> Result<&'static Path> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir);
    }
    let meta: serde_json::Value =
        serde_json::from_str(&cargo_output(&["metadata", "--format-version", "1", "--no-deps"])?)
            .context("parsing cargo metadata")?;
    let dir = meta["target_directory"].as_str().context("cargo metadata names no target_directory")?;
    Ok(DIR.get_or_init(|| PathBuf::from(dir)))
}

/// Output of a cargo command that must succeed.
pub(crate) fn cargo_output(args: &[&str]) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(args)
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("`cargo {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn project_root() -> PathBuf {
    let dir =
        std::env::var("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("xtask"));
    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cargo_test_result_lines() {
        let line =
            "test result: ok. 21 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.12s";
        assert_eq!(super::parse_result_line(line), Some((21, 0)));
        let line = "test result: FAILED. 20 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(super::parse_result_line(line), Some((20, 1)));
        assert_eq!(super::parse_result_line("running 3 tests"), None);
    }
}
