//! The dashboard in a real browser: `tests/browser/dashboard.test.mjs`
//! (playwright-core driving Debian's Chromium) against the real `vigil`
//! with real loopback origins. Skipped, saying why on stderr, when node,
//! Chromium or playwright-core is missing (`.ci/run` installs all three).

use std::convert::Infallible;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::harness::*;

/// Servers on the page of the render-time run.
const BIG: usize = 1000;

/// Says something the test runner would otherwise swallow: straight to the
/// process's stderr, not libtest's captured `eprintln!`.
fn tell(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What the browser test needs, or why it cannot run here.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok {
        return Err("node is not installed".into());
    }
    let chromium =
        std::env::var_os("VIGIL_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(format!("no Chromium at {} (apt-get install chromium)", chromium.display()));
    }
    if !dir.join("node_modules/playwright-core/package.json").exists() {
        return Err(format!("playwright-core is not installed (cd {} && npm ci)", dir.display()));
    }
    Ok((dir, chromium))
}

/// An origin whose health check answers 200 with a header the check does
/// not accept, carrying markup: the check's detail quotes it.
async fn evil_origin(ip: &str) -> SocketAddr {
    let addr: SocketAddr = format!("{ip}:{}", free_port(&[ip])).parse().unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = service_fn(|_req| async {
                let resp = http::Response::builder()
                    .header("x-note", "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>")
                    .body(Full::new(Bytes::from_static(b"OK")))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let (dir, chromium) = match tools() {
        Ok(t) => t,
        Err(why) => {
            tell(&format!("browser test SKIPPED: {why}"));
            return;
        }
    };
    let o = origins(&["127.0.0.50", "127.0.0.51"]).await;
    let port = o[0].addr.port();
    let origin = format!("app.test:{port}");
    let evil = evil_origin("127.0.0.52").await;
    let evil_key = format!("evil.test:{}", evil.port());
    let rest = format!(
        "{}{}",
        remap("app.test", &origin, &server_list(&o), ""),
        remap("evil.test", &evil_key, &format!("[\"{evil}\"]"), "")
    );
    let hc = "[defaults]\ninterval = \"200ms\"\nunhealthy_interval = \"200ms\"\ntimeout = \"150ms\"\n\
              healthy_threshold = 1\nunhealthy_threshold = 1\n\n\
              [[check]]\norigin = \"app.test\"\npath = \"/healthz\"\n\n\
              [[check]]\norigin = \"evil.test\"\npath = \"/healthz\"\nexpect_header = { name = \"x-note\", value = \"fine\" }\n";
    let v = Vigil::start("browser", "admin_token = \"sesame\"", &rest, hc).await;
    // Traffic starts the checks, and gives the origin a request rate.
    let _ = v.get("evil.test", "/").await;
    let traffic = {
        let listen = v.listen;
        tokio::spawn(async move {
            loop {
                let _ = get_raw(listen, "app.test", "/").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // 1 000 servers, 100 per origin, nothing listening and no traffic: all
    // `unknown`, which is routable, and never checked.
    let mut big_rest = String::new();
    for i in 0..BIG / 100 {
        let list: Vec<String> = (0..100).map(|j| format!("\"127.0.{}.{}:9\"", 100 + i, j + 1)).collect();
        big_rest.push_str(&remap(
            &format!("big{i}.test"),
            &format!("big{i}.test:9"),
            &format!("[{}]", list.join(", ")),
            "",
        ));
    }
    let big = Vigil::start("browser-big", "", &big_rest, "").await;

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let profile = test_dir("browser-profile");
    let mut child = Command::new("node")
        .arg(dir.join("dashboard.test.mjs"))
        .current_dir(&dir)
        .env("CHROMIUM", &chromium)
        .env("USER_DATA_DIR", &profile)
        .env("VIGIL_ADMIN", v.admin.to_string())
        .env("TOKEN", "sesame")
        .env("ORIGIN", &origin)
        .env("SERVER_A", o[0].addr.to_string())
        .env("SERVER_B", o[1].addr.to_string())
        .env("EVIL_ORIGIN", &evil_key)
        .env("EVIL_SERVER", evil.to_string())
        .env("BIG_ADMIN", big.admin.to_string())
        .env("BIG_SERVERS", BIG.to_string())
        .env("BIG_TARGET", "big3.test:9|127.0.103.50:9")
        .env("SCREENSHOT", &screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // The script's requests, read on a thread of their own.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut result = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let line = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(_) => {
                let _ = child.kill();
                panic!("the browser test took over 90 s");
            }
        };
        if line == "KILL" {
            o[1].kill();
            writeln!(stdin, "KILLED").unwrap();
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<serde_json::Value>(json).unwrap());
        }
    }
    let status = child.wait().unwrap();
    traffic.abort();
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "the browser test failed ({status}); its output is above");
    let result = result.expect("the script reported its result");
    assert!(result["maintenance_row_ms"].as_u64().unwrap() <= 1000, "{result}");
    assert!(screenshot.exists());
    tell(&format!(
        "dashboard with {BIG} servers: page ready in {} ms, first render {} ms, one event applied in {} ms; \
         maintenance shown {} ms after the click; screenshot {}",
        result["big_load_ms"],
        result["big_render_ms"],
        result["big_update_ms"],
        result["maintenance_row_ms"],
        screenshot.display()
    ));
}
