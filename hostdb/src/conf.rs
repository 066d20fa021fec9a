//! Config-file text shared by every file of the project (the proxy's own,
//! the health-check file): where an error is (`file:line:column`), and how
//! a duration is written. The files themselves are parsed by their owners
//! (`vigil-l7check`'s `HealthChecks`, the binary's config); nothing here
//! reads a file.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// An error in a config file: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file name given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

impl std::error::Error for FileError {}

/// Turns a byte span of `text` (the contents of `file`) into a
/// [`FileError`] at its line and column (in characters); no span points at
/// the start of the file.
///
/// ```
/// use vigil_hostdb::conf::error_at;
///
/// let text = "[proxy]\nlisten = \"nope\"\n";
/// let e = error_at("vigil.toml", text, Some(17..23), "not an ip:port address");
/// assert_eq!(e.to_string(), "vigil.toml:2:10: not an ip:port address");
/// ```
pub fn error_at(file: &str, text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> FileError {
    let offset = span.map_or(0, |s| s.start).min(text.len());
    let boundary = (0..=offset).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let before = &text[..boundary];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    FileError { file: file.to_owned(), line, column, message: message.into() }
}

/// A duration as config files write it: a number and a unit (`ms`, `s`,
/// `m`, `h`), like `2s`, `500ms`, `1.5s`, `5m`, `1h`; at most a year.
///
/// # Errors
/// A message naming the text and what is expected.
///
/// ```
/// use std::time::Duration;
/// use vigil_hostdb::conf::parse_duration;
///
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("5").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {s:?}: expected a number and a unit (ms, s, m, h), like \"2s\" or \"500ms\""
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("invalid duration {s:?}: more than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, ms) in [
            ("2s", 2000),
            ("500ms", 500),
            ("1.5s", 1500),
            ("5m", 300_000),
            ("1h", 3_600_000),
            (" 2 s ", 2000),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "5", "s", "2 seconds", "-1s", "1e3s", "2d", "9999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let text = "a = 1\n# é\nb = \"x\"";
        let at = text.find('"').unwrap_or(0);
        let e = error_at("f.toml", text, Some(at..at + 1), "bad");
        assert_eq!((e.line, e.column), (3, 5));
        assert_eq!(error_at("f.toml", text, None, "x").to_string(), "f.toml:1:1: x");
        // A span past the end, or inside a character, still names a place.
        let e = error_at("f.toml", text, Some(999..1000), "x");
        assert_eq!(e.line, 3);
        let e = error_at("f.toml", "é", Some(1..2), "x");
        assert_eq!((e.line, e.column), (1, 1));
    }
}
