//! sd_notify end to end: the real binary, `NOTIFY_SOCKET` pointing at a
//! datagram socket of the test's own, as systemd would set it up.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::net::UnixDatagram;

use crate::harness::{Vigil, free_port, get_raw, remap, test_dir};

/// The next notification, as its `KEY=value` lines (5 s bound).
async fn next(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n =
        tokio::time::timeout(within, sock.recv(&mut buf)).await.expect("no notification in time").unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap().lines().map(str::to_owned).collect()
}

fn has(msg: &[String], line: &str) -> bool {
    msg.iter().any(|l| l == line)
}

fn value<'m>(msg: &'m [String], key: &str) -> &'m str {
    msg.iter()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {msg:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reloading_and_stopping_reach_the_notify_socket() {
    let dir = test_dir("sd-notify");
    let sock = UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port(&["127.0.0.1"])).parse().unwrap();
    // The origin need not be up: readiness is about our own listeners.
    let origin = format!("app.test:{}", free_port(&["127.0.0.1"]));
    let main = format!(
        "[proxy]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nthreads = 2\n\n{}",
        remap("www.app.test", &origin, "[\"127.0.0.1:1\"]", "")
    );
    std::fs::write(dir.join("vigil.toml"), &main).unwrap();
    std::fs::write(dir.join("healthchecks.toml"), "").unwrap();
    // Kills the child and shows its log if an assertion fails.
    let mut v = Vigil::spawn(dir.clone(), listen, admin, true);

    // The first word is READY=1, and when it comes both ports serve: one
    // request each, no retries.
    let ready = next(&sock, Duration::from_secs(10)).await;
    assert!(has(&ready, "READY=1"), "{ready:?}");
    let proxied = get_raw(listen, "unknown.test", "/").await;
    assert!(proxied.is_some(), "READY=1 came before the proxy port served");
    assert_eq!(get_raw(admin, "admin", "/healthz").await.map(|r| r.0), Some(StatusCode::OK));
    let status = value(&ready, "STATUS");
    assert!(status.contains(&listen.to_string()) && status.contains(&admin.to_string()), "{status}");

    // SIGHUP: RELOADING=1 with the time it began, then READY=1.
    v.signal("HUP");
    let reloading = next(&sock, Duration::from_secs(5)).await;
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    let usec: u64 = value(&reloading, "MONOTONIC_USEC").parse().unwrap();
    assert!(usec > 0);
    let ready = next(&sock, Duration::from_secs(5)).await;
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert!(value(&ready, "STATUS").contains("reloaded"), "{ready:?}");

    // A broken file is refused, and READY=1 comes all the same: the running
    // config keeps serving.
    std::fs::write(dir.join("vigil.toml"), format!("{main}\n[proxy\n")).unwrap();
    v.signal("HUP");
    let reloading = next(&sock, Duration::from_secs(5)).await;
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    let ready = next(&sock, Duration::from_secs(5)).await;
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert!(value(&ready, "STATUS").contains("reload refused"), "{ready:?}");
    assert!(get_raw(listen, "unknown.test", "/").await.is_some());

    // SIGTERM: STOPPING=1 as the shutdown begins, then a clean exit.
    v.signal("TERM");
    let stopping = next(&sock, Duration::from_secs(5)).await;
    assert!(has(&stopping, "STOPPING=1"), "{stopping:?}");
    assert_eq!(v.exit_code(Duration::from_secs(10)).await, Some(0));
}
