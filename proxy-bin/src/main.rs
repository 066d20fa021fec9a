//! `vigil`: the reverse proxy binary. The only crate that reads files, the
//! environment and the command line; it wires `vigil-hostdb`,
//! `vigil-session`, `vigil-l7check` and `vigil-cluster` together.
//!
//! Not built yet: the request path, admin API and `vigil demo` land with the
//! proxy issue. Until then the binary says so and exits with status 2.

#![allow(clippy::print_stderr)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "vigil {}: the proxy is not built yet (the library crates are: see README.md). \
         `cargo xtask bench` shows what HostDB does today.",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
