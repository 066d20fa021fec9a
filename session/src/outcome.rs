//! What a failure means: the one place that decides whether it counts
//! against the server (L4), and whether the request may go again on a
//! fresh session or to another server. The pool's own retry, the proxy's
//! request path and the health check all ask here, so a garbage answer, a
//! reset or a timeout means the same to each of them.

use http::Method;

use crate::error::{ErrorKind, SessionError};

/// What a caller's request allows on a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The request may be repeated after it left (RFC 9110 section 9.2.2:
    /// GET, HEAD and OPTIONS here; the others change state or may).
    idempotent: bool,
    /// A health check: any failure on a reused session earns one try on a
    /// fresh one (a reused session can hide a dead path, or have died idle),
    /// and a check never moves to another server.
    check: bool,
}

impl RetryPolicy {
    /// A proxied request with `method`.
    pub fn request(method: &Method) -> Self {
        Self { idempotent: matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS), check: false }
    }

    /// A health check (SPEC: "a failure on a reused session is retried once
    /// on a fresh one before it counts").
    pub const CHECK: Self = Self { idempotent: true, check: true };

    /// Whether the request may be repeated after it left.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

impl SessionError {
    /// Whether the failure counts against the server at L4 (what HostDB's
    /// fail function counts): a failed connect, a reset or EOF before the
    /// response head, or an answer that is not HTTP (garbage, ambiguous
    /// framing, an oversized head, a malformed chunked body). SPEC: "an
    /// origin's garbage answer is 502 for the client and an L4 failure for
    /// the server", for a check as for a request.
    ///
    /// Not L4: a response that did not come within the caller's timeout (a
    /// slow endpoint is not a dead server), a body cut short after a good
    /// head, an upgrade the session's protocol cannot carry, or an HTTP/2
    /// stream the server refused or reset while the connection stayed up
    /// (one request's failure, not the server's: a gRPC origin resets
    /// streams in its normal course). A failed HTTP/2 connection is still
    /// [`ErrorKind::ClosedBeforeHead`] or [`ErrorKind::Protocol`].
    pub fn is_l4_failure(&self) -> bool {
        self.is_connect()
            || matches!(
                self.kind(),
                ErrorKind::ClosedBeforeHead | ErrorKind::Protocol | ErrorKind::ResponseTooLarge
            )
    }

    /// Whether the request may go once more to the same server on a fresh
    /// connection. Only after a failure on a reused session: a request that
    /// never left, or one whose reused session was found closed before any
    /// answer (the classic keep-alive race: the server closed it idle as we
    /// wrote; pingora's `RetryType::ReusedOnly`). A health check retries any
    /// failure on a reused session. Never an upgrade refused over HTTP/2:
    /// a fresh session speaks the same protocol. Always a refused HTTP/2
    /// stream, reused session or not: nothing of it was processed, and a
    /// new connection starts with room for streams.
    ///
    /// A caller can resend only a request it still has whole.
    pub fn may_retry_on_fresh(&self, policy: RetryPolicy) -> bool {
        self.kind() == ErrorKind::Refused
            || (self.is_reused()
                && self.kind() != ErrorKind::UpgradeOverH2
                && (policy.check || !self.is_sent() || self.kind() == ErrorKind::ClosedBeforeHead))
    }

    /// Whether the request may go to another server of the origin: one that
    /// never left, or an idempotent one, unless the failure was a timeout
    /// (the origin answers 504 rather than wait again elsewhere), the
    /// client's own body failing, or an upgrade refused over HTTP/2 (the
    /// request's, not the server's: the origin's other servers speak the
    /// same). A refused HTTP/2 stream counts as never having left (RFC 9113
    /// section 8.7: nothing was processed), so any method may move. A
    /// health check never moves.
    pub fn may_retry_elsewhere(&self, policy: RetryPolicy) -> bool {
        !policy.check
            && !matches!(self.kind(), ErrorKind::ResponseTimeout | ErrorKind::Body | ErrorKind::UpgradeOverH2)
            && (!self.is_sent() || policy.idempotent || self.kind() == ErrorKind::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind, sent: bool, reused: bool) -> SessionError {
        SessionError::new(kind, "127.0.0.1:1".parse().unwrap_or(([127, 0, 0, 1], 1).into()))
            .sent(sent)
            .reused(reused)
    }

    #[test]
    fn what_counts_against_the_server() {
        use ErrorKind::*;
        for kind in [ConnectRefused, ConnectTimeout, Connect, ClosedBeforeHead, Protocol, ResponseTooLarge] {
            assert!(err(kind, true, false).is_l4_failure(), "{kind:?}");
        }
        for kind in [ResponseTimeout, Body, UpgradeOverH2, Refused, StreamReset] {
            assert!(!err(kind, true, false).is_l4_failure(), "{kind:?}");
        }
    }

    #[test]
    fn an_upgrade_refused_over_h2_is_never_retried() {
        let get = RetryPolicy::request(&Method::GET);
        let e = err(ErrorKind::UpgradeOverH2, false, true);
        assert!(!e.is_l4_failure());
        assert!(!e.may_retry_on_fresh(get), "a fresh session speaks h2 too");
        assert!(!e.may_retry_on_fresh(RetryPolicy::CHECK));
        assert!(!e.may_retry_elsewhere(get), "the request's fault, not the server's");
        assert!(e.to_string().contains("HTTP/2"), "{e}");
    }

    #[test]
    fn a_refused_stream_goes_again_anywhere_whatever_the_method() {
        let post = RetryPolicy::request(&Method::POST);
        let e = err(ErrorKind::Refused, true, false);
        assert!(!e.is_l4_failure());
        assert!(e.may_retry_on_fresh(post), "a fresh session, even after a fresh one");
        assert!(e.may_retry_elsewhere(post), "nothing was processed");
        assert!(!e.may_retry_elsewhere(RetryPolicy::CHECK), "a check never moves");
        let reset = err(ErrorKind::StreamReset, true, true);
        assert!(!reset.is_l4_failure());
        assert!(
            !reset.may_retry_on_fresh(post) && !reset.may_retry_elsewhere(post),
            "it may have been processed"
        );
        assert!(reset.may_retry_elsewhere(RetryPolicy::request(&Method::GET)));
    }

    #[test]
    fn fresh_retries_only_after_a_reused_session() {
        let get = RetryPolicy::request(&Method::GET);
        let post = RetryPolicy::request(&Method::POST);
        assert!(err(ErrorKind::ClosedBeforeHead, true, true).may_retry_on_fresh(post));
        assert!(err(ErrorKind::Protocol, false, true).may_retry_on_fresh(post), "never left");
        assert!(!err(ErrorKind::Protocol, true, true).may_retry_on_fresh(get), "the server answered garbage");
        assert!(
            !err(ErrorKind::ClosedBeforeHead, true, false).may_retry_on_fresh(get),
            "fresh: the server's"
        );
        assert!(err(ErrorKind::ResponseTimeout, true, true).may_retry_on_fresh(RetryPolicy::CHECK));
        assert!(err(ErrorKind::Protocol, true, true).may_retry_on_fresh(RetryPolicy::CHECK));
        assert!(!err(ErrorKind::Protocol, true, false).may_retry_on_fresh(RetryPolicy::CHECK));
    }

    #[test]
    fn another_server_for_unsent_or_idempotent_requests() {
        let get = RetryPolicy::request(&Method::GET);
        let post = RetryPolicy::request(&Method::POST);
        assert!(err(ErrorKind::ConnectRefused, false, false).may_retry_elsewhere(post));
        assert!(err(ErrorKind::ClosedBeforeHead, true, false).may_retry_elsewhere(get));
        assert!(!err(ErrorKind::ClosedBeforeHead, true, false).may_retry_elsewhere(post));
        assert!(!err(ErrorKind::ResponseTimeout, true, false).may_retry_elsewhere(get));
        assert!(!err(ErrorKind::Body, true, false).may_retry_elsewhere(get));
        assert!(!err(ErrorKind::ConnectRefused, false, false).may_retry_elsewhere(RetryPolicy::CHECK));
    }
}
