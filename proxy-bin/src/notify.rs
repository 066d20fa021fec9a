//! systemd's readiness protocol (sd_notify(3)), for `Type=notify` and
//! `Type=notify-reload` units: one datagram to `$NOTIFY_SOCKET` per change
//! of state. Without `NOTIFY_SOCKET` (not under systemd) every call does
//! nothing.
//!
//! A notification that cannot be sent is logged, never fatal: the proxy
//! serves all the same, and systemd's own timeouts say what went wrong.

use sd_notify::NotifyState;

/// The listeners are bound and serving (at start and after a reload);
/// `status` is what `systemctl status` shows.
pub(crate) fn ready(status: &str) {
    // One line: the protocol is newline-separated `KEY=value` pairs, and a
    // reload error can span lines.
    let status = status.split_whitespace().collect::<Vec<_>>().join(" ");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload begins. `MONOTONIC_USEC` is the time it began: systemd 253+
/// needs it with `Type=notify-reload` to tell this reload from an older one.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading")]),
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: cannot read the monotonic clock");
            send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
        }
    }
}

/// The shutdown begins: listeners close, requests in flight finish.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing requests in flight")]);
}

/// A binary upgrade: `pid`, the new process, serves and is the service's
/// main process from now on (this one drains and exits). systemd takes it
/// from the main process, which this one still is, when `pid` is in the
/// service (its child: SIGUSR2 starts it so); `status` is the STATUS line.
pub(crate) fn main_pid(pid: u32, status: &str) {
    send(&[NotifyState::MainPid(pid), NotifyState::Status(status)]);
}

fn send(states: &[NotifyState<'_>]) {
    // `notify` returns Ok at once when NOTIFY_SOCKET is unset.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify: cannot notify systemd");
    }
}
