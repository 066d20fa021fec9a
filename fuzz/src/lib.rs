//! The properties the fuzz targets check, for the code that has no
//! `fuzzing` feature of its own to hold them: the binary's config parser and
//! admin bodies (compiled here from `proxy-bin/src`, a binary crate no other
//! crate can depend on) and the health-check file parser (`vigil-l7check`'s
//! public API). The cluster's checks live in `vigil-cluster` (its `check`
//! module), as the codec's live in `vigil-h1`.
//!
//! Each function panics when a property does not hold; that is what a fuzz
//! target reports.

use std::path::Path;

use vigil_hostdb::OriginKey;
use vigil_hostdb::conf::FileError;

/// `proxy-bin/src/config.rs` as it is: it uses no other module of the
/// binary, so it compiles here alone (if it ever does, this stops
/// building, and the fuzz smoke of the gate says so).
#[path = "../../proxy-bin/src/config.rs"]
#[allow(dead_code)]
mod config;

/// `proxy-bin/src/admin/body.rs`, the same way.
#[path = "../../proxy-bin/src/admin/body.rs"]
#[allow(dead_code)]
mod admin_body;

/// The name the config targets give their text, as the binary gives a path.
pub const MAIN_CONFIG: &str = "vigil.toml";
/// The same for the health-check file.
pub const HEALTH_CHECKS: &str = "healthchecks.toml";

/// An error of a config file names the file, a line and a column inside
/// `text` (a column may be one past a line's last character: an error at
/// its end), and a message of one line: what `vigil check-config` prints
/// as `file:line:column: message`.
pub fn assert_positioned(e: &FileError, file: &str, text: &str) {
    let shown = e.to_string();
    assert_eq!(e.file, file, "{shown}");
    assert!(shown.starts_with(&format!("{file}:{}:{}: ", e.line, e.column)), "{shown}");
    let lines: Vec<&str> = text.split('\n').collect();
    assert!((1..=lines.len()).contains(&e.line), "line {} of {}: {shown}", e.line, lines.len());
    let width = lines[e.line - 1].chars().count();
    assert!((1..=width + 1).contains(&e.column), "column {} of a line of {width}: {shown}", e.column);
    assert!(!e.message.trim().is_empty(), "no message: {shown}");
    assert!(!e.message.contains('\n'), "a message of more than one line: {shown:?}");
}

/// `vigil.toml`'s parser on `data`: no panic; an error is positioned
/// ([`assert_positioned`]); a warning names the file.
///
/// Some errors have no position, all from outside the parser: a file that
/// cannot be read, or is not UTF-8, is refused by its name alone
/// (`vigil.toml: cannot read: stream did not contain valid UTF-8`), be it
/// vigil.toml or the health-check file it names. So bytes that are not
/// UTF-8 are skipped here. The other files it names (keys, certificates)
/// are read after the parser, and their errors carry the position of the
/// key that names them (`Located`).
pub fn main_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match config::Config::parse(text, Path::new(MAIN_CONFIG)) {
        Ok(c) => {
            for w in &c.warnings {
                assert!(w.starts_with(&format!("{MAIN_CONFIG}: ")), "a warning without the file: {w}");
            }
        }
        Err(e) => assert_positioned(&e, MAIN_CONFIG, text),
    }
}

/// The health-check file's parser on `data`: no panic; an error is
/// positioned. Bytes that are not UTF-8 are refused before it, as for
/// [`main_config`].
pub fn health_checks(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = vigil_l7check::HealthChecks::parse(text, HEALTH_CHECKS) {
        assert_positioned(&e, HEALTH_CHECKS, text);
    }
}

/// A body of `POST /maintenance` (`data[0]` even) or `POST /weight` (odd),
/// decoded as the admin API does: no panic; an error says what is wrong
/// in one line (no control character), starting with what was expected, or
/// with the origin or the server it could not take, and repeats little of
/// the body however long; what is accepted names an origin whose key,
/// as answers show it, parses to the same key, and a server whose address
/// does too.
pub fn admin_json(data: &[u8]) {
    use admin_body::{MaintenanceBody, ServerBody, WeightBody, decode};
    fn check<B: ServerBody>(body: &[u8]) {
        match decode::<B>(body) {
            Ok((_, origin, server)) => {
                assert_eq!(origin.as_str().parse::<OriginKey>().as_ref(), Ok(&origin), "origin {origin}");
                let shown = server.to_string();
                assert_eq!(vigil_hostdb::parse_server_addr(&shown), Ok(server), "server {shown}");
            }
            Err(msg) => {
                let prefix = format!("expected {}: ", B::SHAPE);
                assert!(
                    msg.starts_with(&prefix) || msg.starts_with("origin \"") || msg.starts_with("server \""),
                    "{msg}"
                );
                assert!(!msg.chars().any(char::is_control), "{msg:?}");
                assert!(
                    msg.chars().count() <= B::SHAPE.len() + 500,
                    "{} characters: {msg}",
                    msg.chars().count()
                );
            }
        }
    }
    let Some((&which, body)) = data.split_first() else { return };
    if which & 1 == 0 {
        check::<MaintenanceBody>(body);
    } else {
        check::<WeightBody>(body);
    }
}
