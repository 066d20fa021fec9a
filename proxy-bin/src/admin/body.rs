//! The JSON bodies of the admin writes that name a server (`POST
//! /maintenance`, `POST /weight`) and their decoding: no state, no I/O, so
//! the fuzz target `admin_json` (`fuzz/`) compiles this file as it is.

use std::net::SocketAddr;

use serde::Deserialize;
use vigil_hostdb::OriginKey;

/// An admin write naming one server of one origin.
pub(crate) trait ServerBody: serde::de::DeserializeOwned {
    /// The body's shape, for the error a bad one gets.
    const SHAPE: &'static str;
    fn origin(&self) -> &str;
    fn server(&self) -> &str;
}

/// `POST /maintenance`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MaintenanceBody {
    pub(crate) origin: String,
    pub(crate) server: String,
    pub(crate) on: bool,
}

impl ServerBody for MaintenanceBody {
    const SHAPE: &'static str = "{\"origin\": \"host:port\", \"server\": \"ip:port\", \"on\": true|false}";
    fn origin(&self) -> &str {
        &self.origin
    }
    fn server(&self) -> &str {
        &self.server
    }
}

/// `POST /weight`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightBody {
    pub(crate) origin: String,
    pub(crate) server: String,
    pub(crate) weight: u32,
}

// The shape below names the highest weight.
const _: () = assert!(vigil_hostdb::policy::MAX_WEIGHT == 256);

impl ServerBody for WeightBody {
    const SHAPE: &'static str = "{\"origin\": \"host:port\", \"server\": \"ip:port\", \"weight\": 0 to 256}";
    fn origin(&self) -> &str {
        &self.origin
    }
    fn server(&self) -> &str {
        &self.server
    }
}

/// Most characters of the client's own text an error repeats: enough to
/// recognise it, and a 64 KiB body does not come back whole.
const ECHO: usize = 120;

/// A body, its origin and its server, or the message a 400 carries: one
/// line, whatever the body holds.
pub(crate) fn decode<B: ServerBody>(body: &[u8]) -> Result<(B, OriginKey, SocketAddr), String> {
    // serde_json's message repeats an unknown field's name as it was sent
    // (a JSON escape can put a line break in it), and its position last.
    let b: B = serde_json::from_slice(body)
        .map_err(|e| format!("expected {}: {}", B::SHAPE, one_line(&e.to_string())))?;
    let origin: OriginKey = b
        .origin()
        .parse()
        .map_err(|e: vigil_hostdb::AddrError| format!("origin {}: {}", echo(b.origin()), e.reason()))?;
    let server = vigil_hostdb::parse_server_addr(b.server())
        .map_err(|e| format!("server {}: {}", echo(b.server()), e.reason()))?;
    Ok((b, origin, server))
}

/// `text` quoted and escaped as `{:?}` would, cut where the escaped text
/// passes [`ECHO`] characters (an escape is up to 10 of them: cutting the
/// text itself at `ECHO` would still let it grow tenfold).
fn echo(text: &str) -> String {
    let mut shown = String::new();
    for c in text.chars() {
        let escaped = c.escape_debug();
        if shown.len() + escaped.len() > ECHO {
            return format!("\"{shown}\"…");
        }
        shown.extend(escaped);
    }
    format!("\"{shown}\"")
}

/// `message` on one line (control characters escaped) and, when long, cut
/// in the middle: its start says what is wrong, its end where.
fn one_line(message: &str) -> String {
    let mut escaped = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    let n = escaped.chars().count();
    if n <= 3 * ECHO {
        return escaped;
    }
    let head: String = escaped.chars().take(2 * ECHO).collect();
    let tail: String = escaped.chars().skip(n - ECHO / 2).collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_body_decodes() {
        let (b, origin, server) =
            decode::<WeightBody>(br#"{"origin": "App.Internal", "server": "10.0.0.1:80", "weight": 3}"#)
                .unwrap();
        assert_eq!(
            (b.weight, origin.as_str(), server.to_string().as_str()),
            (3, "app.internal:80", "10.0.0.1:80")
        );
    }

    /// Found by the admin_json fuzz target: an unknown field whose name
    /// has a JSON-escaped line break came back in a two-line error.
    #[test]
    fn an_error_is_one_line_whatever_the_body_holds() {
        let e = decode::<MaintenanceBody>(br#"{"origi\nrv": 1}"#).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains(r"unknown field `origi\nrv`") && e.ends_with("at line 1 column 12"), "{e}");
        let e = decode::<MaintenanceBody>(br#"{"origin": "a\u0000b", "server": "1.2.3.4:5", "on": true}"#)
            .unwrap_err();
        assert!(e.starts_with(r#"origin "a\0b": "#), "{e}");
    }

    #[test]
    fn an_error_repeats_little_of_a_long_body() {
        let long = "x".repeat(60_000);
        let body = format!(r#"{{"{long}": 1}}"#);
        let e = decode::<WeightBody>(body.as_bytes()).unwrap_err();
        assert!(e.len() < WeightBody::SHAPE.len() + 4 * ECHO, "{} bytes", e.len());
        assert!(e.ends_with("at line 1 column 60003"), "{e}");
        let body = format!(r#"{{"origin": "{long}:80", "server": "1.2.3.4:5", "weight": 1}}"#);
        let e = decode::<WeightBody>(body.as_bytes()).unwrap_err();
        assert!(e.starts_with(&format!("origin \"{}\"…: ", "x".repeat(ECHO))), "{e}");
        let body = format!(r#"{{"origin": "a:80", "server": "{long}", "weight": 1}}"#);
        let e = decode::<WeightBody>(body.as_bytes()).unwrap_err();
        assert!(e.len() < 2 * ECHO, "{e}");
        // Found by the admin_json fuzz target: 120 characters that each
        // escape to six (`\u{7f}`) came back as 720.
        let body = format!(r#"{{"origin": "a{}", "server": "a:80", "weight": 1}}"#, r"\u007f".repeat(200));
        let e = decode::<WeightBody>(body.as_bytes()).unwrap_err();
        assert!(e.starts_with(r#"origin "a\u{7f}"#) && e.len() < 2 * ECHO, "{} bytes: {e}", e.len());
    }
}
