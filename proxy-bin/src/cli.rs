//! The command line (clap's derive API). `main` turns it into a [`Command`]
//! with [`parse`]; usage errors exit 2 (clap's code), `--help` and
//! `--version` exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory as _, Parser, Subcommand};

/// What `vigil` was asked to do.
#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "A reverse proxy that keeps a live view of its origins' health.",
    long_about = "A reverse proxy that keeps a live view of its origins' health: \
        L4 failures from real traffic, L7 health checks over the same pooled sessions, \
        shared across a cluster.\n\n\
        `vigil --config FILE` is short for `vigil run --config FILE`.",
    after_help = "Examples:\n  \
        vigil check-config --config /etc/vigil/vigil.toml\n  \
        vigil --config /etc/vigil/vigil.toml\n  \
        vigil status --watch\n  \
        vigil demo --seconds 30",
    // Bare `vigil` prints the help (and exits 2): there is no default config path.
    arg_required_else_help = true,
    // `vigil --config FILE run` is not a form: the top-level --config stands alone.
    args_conflicts_with_subcommands = true,
    // The top-level --config is required only when no subcommand is given.
    subcommand_negates_reqs = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The main config file; runs the proxy (the same as `vigil run --config FILE`).
    #[arg(short, long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub(crate) enum Command {
    /// Serve: the proxy and its admin API, until SIGTERM or SIGINT.
    ///
    /// SIGHUP (or `POST /reload` on the admin API) re-reads both config
    /// files; a file with an error changes nothing. SIGTERM stops accepting
    /// and lets requests in flight finish (up to 30 s). Logs go to stderr;
    /// VIGIL_LOG (for example `debug` or `vigil_hostdb=debug,info`) sets the
    /// level. Under systemd (NOTIFY_SOCKET set) it reports READY=1,
    /// RELOADING=1 and STOPPING=1.
    ///
    /// With --upgrade it takes over from the vigil running with the same
    /// `proxy.upgrade_socket` (a binary upgrade): it takes that process's
    /// listening sockets and server state, starts serving, and the old
    /// process stops accepting and drains as on SIGTERM. If it fails before
    /// it serves, it exits 1 and the old process serves on untouched.
    /// SIGUSR2 makes a running vigil start this itself (under systemd: the
    /// new process stays in the service, which follows it as its main PID).
    Run(RunArgs),

    /// Validate the main config and the health-check file it names.
    ///
    /// Prints a one-line summary and exits 0, or prints the first error
    /// (at file:line:column) and exits 1. Warnings go to stderr. Nothing is
    /// started or bound.
    CheckConfig(ConfigArg),

    /// Print a table of origins and servers from a running vigil's admin API.
    ///
    /// One row per server: routable or not, L4 and L7 state, maintenance,
    /// the last health check, its latency and the pooled sessions (idle/in
    /// use). With --watch the table is refreshed until Ctrl-C.
    Status(StatusArgs),

    /// Run a self-contained show on loopback.
    ///
    /// Three origin servers on 127.0.0.2-4, the proxy in front, client
    /// traffic through it; one server goes into maintenance, one is killed,
    /// a live status table shows what the proxy sees, and a summary closes
    /// it (requests, errors, the split per server). Needs nothing but
    /// loopback.
    Demo(DemoArgs),

    /// Print a shell completion script to stdout.
    ///
    /// For bash: `vigil completions bash > /etc/bash_completion.d/vigil`;
    /// for zsh: `vigil completions zsh > "${fpath[1]}/_vigil"`; for fish:
    /// `vigil completions fish > ~/.config/fish/completions/vigil.fish`.
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `vigil run`'s options.
#[derive(Debug, Args, PartialEq, Eq)]
pub(crate) struct RunArgs {
    /// The main config file (vigil.toml); the health-check file is named in it.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: PathBuf,

    /// Take over from the vigil running with this config's
    /// `proxy.upgrade_socket`: its listeners, its server state, then it drains.
    #[arg(long)]
    pub(crate) upgrade: bool,
}

/// `--config FILE`, required.
#[derive(Debug, Args, PartialEq, Eq)]
pub(crate) struct ConfigArg {
    /// The main config file (vigil.toml); the health-check file is named in it.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: PathBuf,
}

/// `vigil status`'s options.
#[derive(Debug, Args, PartialEq, Eq)]
pub(crate) struct StatusArgs {
    /// The admin API's address (`proxy.admin` in vigil.toml).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9090")]
    pub(crate) admin: SocketAddr,

    /// Refresh the table until Ctrl-C, in place on a terminal; keeps going
    /// (showing the error) while the admin API cannot be reached.
    #[arg(short, long)]
    pub(crate) watch: bool,

    /// Seconds between refreshes with --watch.
    #[arg(
        short,
        long,
        value_name = "SECS",
        default_value_t = 2,
        requires = "watch",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub(crate) interval: u64,
}

/// `vigil demo`'s options.
#[derive(Debug, Args, PartialEq, Eq)]
pub(crate) struct DemoArgs {
    /// How long the show runs, in seconds.
    #[arg(long, value_name = "N", default_value_t = 12, value_parser = clap::value_parser!(u64).range(4..=3600))]
    pub(crate) seconds: u64,
}

/// Parses `args` (the program name first) into what to do.
pub(crate) fn parse<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    match (cli.command, cli.config) {
        (Some(command), _) => Ok(command),
        (None, Some(config)) => Ok(Command::Run(RunArgs { config, upgrade: false })),
        // clap's `required` rules this out; say what is missing all the same.
        (None, None) => Err(Cli::command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "a subcommand or --config FILE is required",
        )),
    }
}

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> std::io::Result<()> {
    use std::io::Write as _;
    // Into a buffer first: clap_complete panics when its writer fails (a
    // closed pipe, as with `| head`), so the write to stdout is ours.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vigil", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse_str(s: &str) -> Result<Command, clap::Error> {
        parse(std::iter::once("vigil").chain(s.split_whitespace()))
    }

    fn run(path: &str) -> Command {
        Command::Run(RunArgs { config: path.into(), upgrade: false })
    }

    fn status(admin: &str, watch: bool, interval: u64) -> Command {
        Command::Status(StatusArgs { admin: admin.parse().unwrap(), watch, interval })
    }

    #[test]
    fn the_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_line_forms() {
        assert_eq!(parse_str("--config v.toml").unwrap(), run("v.toml"));
        assert_eq!(parse_str("-c v.toml").unwrap(), run("v.toml"));
        assert_eq!(parse_str("run --config v.toml").unwrap(), run("v.toml"));
        assert_eq!(parse_str("run -c v.toml").unwrap(), run("v.toml"));
        assert_eq!(
            parse_str("run --upgrade --config v.toml").unwrap(),
            Command::Run(RunArgs { config: "v.toml".into(), upgrade: true })
        );
        assert_eq!(
            parse_str("check-config --config v.toml").unwrap(),
            Command::CheckConfig(ConfigArg { config: "v.toml".into() })
        );
        assert_eq!(parse_str("status --admin 127.0.0.1:9191").unwrap(), status("127.0.0.1:9191", false, 2));
        assert_eq!(parse_str("status").unwrap(), status("127.0.0.1:9090", false, 2));
        assert_eq!(parse_str("status --watch").unwrap(), status("127.0.0.1:9090", true, 2));
        assert_eq!(parse_str("status -w --interval 5").unwrap(), status("127.0.0.1:9090", true, 5));
        assert_eq!(parse_str("demo").unwrap(), Command::Demo(DemoArgs { seconds: 12 }));
        assert_eq!(parse_str("demo --seconds 5").unwrap(), Command::Demo(DemoArgs { seconds: 5 }));
        assert_eq!(
            parse_str("completions bash").unwrap(),
            Command::Completions { shell: clap_complete::Shell::Bash }
        );
    }

    #[test]
    fn usage_errors() {
        let kind = |s: &str| parse_str(s).unwrap_err().kind();
        assert_eq!(kind("status --admin nope"), ErrorKind::ValueValidation);
        assert_eq!(kind("demo --seconds 1"), ErrorKind::ValueValidation);
        assert_eq!(kind("demo --seconds 3601"), ErrorKind::ValueValidation);
        assert_eq!(kind("status --interval 0 --watch"), ErrorKind::ValueValidation);
        // --interval means nothing without --watch.
        assert_eq!(kind("status --interval 5"), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind("check-config"), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind("run"), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind("run --upgrade"), ErrorKind::MissingRequiredArgument);
        // --upgrade belongs to `run`: the short form takes no flags but --config.
        assert_eq!(kind("--config v.toml --upgrade"), ErrorKind::UnknownArgument);
        assert_eq!(kind("--config v.toml run --config w.toml"), ErrorKind::ArgumentConflict);
        assert_eq!(kind("completions tcsh"), ErrorKind::InvalidValue);
        assert_eq!(kind("--confg v.toml"), ErrorKind::UnknownArgument);
        assert_eq!(kind(""), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
        assert!(parse_str("check-config").unwrap_err().to_string().contains("--config <FILE>"));
    }

    #[test]
    fn help_and_version_are_not_errors_to_the_shell() {
        assert_eq!(parse_str("--version").unwrap_err().kind(), ErrorKind::DisplayVersion);
        assert_eq!(parse_str("status --help").unwrap_err().kind(), ErrorKind::DisplayHelp);
        assert_eq!(parse_str("--version").unwrap_err().exit_code(), 0);
    }
}
