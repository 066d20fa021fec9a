//! `vigil`: the reverse proxy binary. The only crate that reads files, the
//! environment and the command line; it wires `vigil-hostdb`,
//! `vigil-session`, `vigil-l7check` and `vigil-cluster` together.
//!
//! Built so far: `vigil check-config` (both config files validated, errors
//! at `file:line:column`, exit 1 on error). The request path, admin API,
//! `status` and `demo` land with the rest of the proxy issue; until then
//! those commands say so and exit with status 2.

#![allow(clippy::print_stderr, clippy::print_stdout)]

mod config;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: vigil [run] --config vigil.toml | vigil check-config --config vigil.toml | vigil status [--admin 127.0.0.1:9090] | vigil demo";

#[derive(Debug, PartialEq)]
enum Cmd {
    Run(PathBuf),
    CheckConfig(PathBuf),
    Status,
    Demo,
}

fn parse_cli(args: &[String]) -> Result<Cmd, String> {
    let (cmd, rest) = match args.first().map(String::as_str) {
        Some("run") => ("run", &args[1..]),
        Some("check-config") => ("check-config", &args[1..]),
        Some("status") => return Ok(Cmd::Status),
        Some("demo") => return Ok(Cmd::Demo),
        Some("-h" | "--help") | None => return Err(USAGE.to_owned()),
        Some(_) => ("run", args),
    };
    let config = match rest {
        [flag, path] if flag == "--config" || flag == "-c" => PathBuf::from(path),
        _ => return Err(format!("vigil {cmd}: expected --config FILE\n{USAGE}")),
    };
    Ok(if cmd == "run" { Cmd::Run(config) } else { Cmd::CheckConfig(config) })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_cli(&args) {
        Ok(Cmd::CheckConfig(path)) => match check_config(&path) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Ok(cmd) => {
            eprintln!(
                "vigil {}: {cmd:?} is not built yet (see README.md); `vigil check-config` is",
                env!("CARGO_PKG_VERSION")
            );
            ExitCode::from(2)
        }
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Validates `vigil.toml` and the health-check file it names; warnings go
/// to stderr, the summary is returned.
fn check_config(path: &Path) -> Result<String, String> {
    let config = config::Config::parse(&read(path)?, path).map_err(|e| e.to_string())?;
    let hc_text = read(&config.health_checks)?;
    let hc = vigil_l7check::HealthChecks::parse(&hc_text, &config.health_checks.display().to_string())
        .map_err(|e| e.to_string())?;
    if let Some(cluster) = &config.cluster {
        let key = std::fs::read(&cluster.key_file)
            .map_err(|e| format!("{}: cannot read the cluster key: {e}", cluster.key_file.display()))?;
        if key.len() != 32 {
            return Err(format!(
                "{}: the cluster key must be exactly 32 random bytes, not {}",
                cluster.key_file.display(),
                key.len()
            ));
        }
    }
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(format!(
        "{}: ok ({} remaps, {} origins with settings, {} health checks in {})",
        path.display(),
        config.remaps.len(),
        config.origins.len(),
        hc.checks.len(),
        config.health_checks.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_line_forms() {
        assert_eq!(parse_cli(&args("--config v.toml")), Ok(Cmd::Run("v.toml".into())));
        assert_eq!(parse_cli(&args("run --config v.toml")), Ok(Cmd::Run("v.toml".into())));
        assert_eq!(parse_cli(&args("check-config --config v.toml")), Ok(Cmd::CheckConfig("v.toml".into())));
        assert_eq!(parse_cli(&args("status --admin 127.0.0.1:9090")), Ok(Cmd::Status));
        assert!(parse_cli(&args("check-config")).unwrap_err().contains("--config FILE"));
        assert!(parse_cli(&args("")).unwrap_err().starts_with("usage:"));
    }
}
