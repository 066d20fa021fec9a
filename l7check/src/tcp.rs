//! The TCP check: a connection of its own (a line protocol such as Redis
//! or SMTP is no HTTP session to share), then `send` and `expect` steps in
//! order, all within the check's timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::config::{Expect, TcpCheck, TcpStep};

/// Most of an answer a check keeps while it waits for an expectation.
const MAX_ANSWER: usize = 64 * 1024;

/// What a TCP check saw: pass or fail with the detail, and whether the
/// failure was at L4: the connection refused, or reset before the server
/// sent anything (as an HTTP check counts a reset before the response head).
/// A timeout, connecting or waiting, is the check's failure only, as for
/// HTTP.
pub(crate) struct Seen {
    pub(crate) passed: bool,
    pub(crate) detail: String,
    pub(crate) l4_failure: bool,
}

impl Seen {
    fn fail(detail: String, l4_failure: bool) -> Self {
        Self { passed: false, detail, l4_failure }
    }
}

/// Where a dialogue is, so a timeout can say what it was waiting for.
#[derive(Default)]
struct Dialogue {
    connected: bool,
    /// The expectation being waited for.
    waiting: Option<String>,
    /// The answer read so far, from the end of the last match.
    answer: Vec<u8>,
    /// Whether the server sent anything yet.
    heard: bool,
}

pub(crate) async fn check(addr: SocketAddr, check: &TcpCheck, timeout: Duration) -> Seen {
    let mut dialogue = Dialogue::default();
    match tokio::time::timeout(timeout, dialogue.run(addr, check)).await {
        Ok(seen) => seen,
        Err(_) if !dialogue.connected => Seen::fail("tcp: connect timeout".into(), false),
        Err(_) => match &dialogue.waiting {
            Some(want) => {
                Seen::fail(format!("tcp: expected {want}, got {} (timeout)", shown(&dialogue.answer)), false)
            }
            None => Seen::fail("tcp: timeout sending".into(), false),
        },
    }
}

impl Dialogue {
    async fn run(&mut self, addr: SocketAddr, check: &TcpCheck) -> Seen {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => return Seen::fail(format!("tcp: connect {}", io_reason(&e)), true),
        };
        self.connected = true;
        let _ = stream.set_nodelay(true);
        let mut read = vec![0u8; 4096];
        for step in &check.steps {
            match step {
                TcpStep::Send(bytes) => {
                    if let Err(e) = stream.write_all(bytes).await {
                        return Seen::fail(
                            format!("tcp: send {}", io_reason(&e)),
                            is_reset(&e) && !self.heard,
                        );
                    }
                }
                TcpStep::Expect(expect) => {
                    self.waiting = Some(wanted(expect));
                    loop {
                        if let Some(end) = found(expect, &self.answer) {
                            self.answer.drain(..end);
                            break;
                        }
                        let want = self.waiting.as_deref().unwrap_or("");
                        if self.answer.len() >= MAX_ANSWER {
                            return Seen::fail(
                                format!(
                                    "tcp: expected {want}, got {} (64 KiB without it)",
                                    shown(&self.answer)
                                ),
                                false,
                            );
                        }
                        let room = (MAX_ANSWER - self.answer.len()).min(read.len());
                        match stream.read(&mut read[..room]).await {
                            Ok(0) => {
                                let got = shown(&self.answer);
                                return Seen::fail(
                                    format!("tcp: expected {want}, got {got} (closed)"),
                                    false,
                                );
                            }
                            Ok(n) => {
                                self.heard = true;
                                self.answer.extend_from_slice(&read[..n]);
                            }
                            Err(e) => {
                                let got = shown(&self.answer);
                                let why = io_reason(&e);
                                return Seen::fail(
                                    format!("tcp: expected {want}, got {got} ({why})"),
                                    is_reset(&e) && !self.heard,
                                );
                            }
                        }
                    }
                    self.waiting = None;
                }
            }
        }
        let detail = if check.steps.is_empty() { "tcp: connected" } else { "tcp: ok" };
        Seen { passed: true, detail: detail.into(), l4_failure: false }
    }
}

/// The end of the first match of `expect` in `answer`.
fn found(expect: &Expect, answer: &[u8]) -> Option<usize> {
    match expect {
        Expect::Contains(needle) if needle.is_empty() => Some(0),
        Expect::Contains(needle) => {
            answer.windows(needle.len()).position(|w| w == needle.as_slice()).map(|at| at + needle.len())
        }
        Expect::Regex(re) => re.find(answer).map(|m| m.end),
    }
}

fn wanted(expect: &Expect) -> String {
    match expect {
        Expect::Contains(needle) => shown(needle),
        Expect::Regex(re) => format!("/{}/", re.as_str()),
    }
}

/// Bytes as a quoted, escaped string of at most 64 bytes.
fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(64)];
    let more = if bytes.len() > cut.len() { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_ascii())
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused".into(),
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => e.to_string(),
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pattern;

    #[test]
    fn matches_end_where_the_next_expectation_starts() {
        let answer = b"+PONG\r\n$5\r\nhello\r\n";
        assert_eq!(found(&Expect::Contains(b"+PONG".to_vec()), answer), Some(5));
        assert_eq!(found(&Expect::Regex(Pattern::new(r"\$\d+").unwrap()), answer), Some(9));
        assert_eq!(found(&Expect::Contains(b"-ERR".to_vec()), answer), None);
    }

    #[test]
    fn details_show_bytes_escaped_and_cut() {
        assert_eq!(shown(b"-ERR x\r\n"), r#""-ERR x\r\n""#);
        assert_eq!(shown(&[b'a'; 100]).len(), 64 + 2 + "…".len());
        assert_eq!(wanted(&Expect::Regex(Pattern::new("^\\+OK").unwrap())), "/^\\+OK/");
    }
}
