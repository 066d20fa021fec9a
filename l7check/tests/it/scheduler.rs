//! The scheduler on paused time, with a probe that answers from a table
//! (no network: what is tested here is when checks run, not how).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use vigil_hostdb::{CheckResult, HostDb, HostDbConfig, L7State, OriginSpec, ServerSource};
use vigil_l7check::{Checker, CheckerOptions, HealthChecks, Probe, ProbeFuture, ProbeOutcome, ProbeRequest};

#[derive(Default)]
struct TableProbe {
    calls: Mutex<Vec<(SocketAddr, Instant, bool)>>,
    fail: Mutex<HashMap<SocketAddr, bool>>,
    /// When set, each probe waits for a permit (to hold checks in flight).
    gate: Option<Arc<Semaphore>>,
}

impl Probe for TableProbe {
    fn probe<'a>(&'a self, req: ProbeRequest<'a>) -> ProbeFuture<'a> {
        Box::pin(async move {
            self.calls.lock().push((req.server, Instant::now(), req.fresh));
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            let failed = self.fail.lock().get(&req.server).copied().unwrap_or(false);
            let result = if failed {
                CheckResult::fail("503", Duration::from_millis(1))
            } else {
                CheckResult::pass("200", Duration::from_millis(1))
            };
            ProbeOutcome { result, l4_failure: false, signalled: false }
        })
    }
}

impl TableProbe {
    fn times(&self, server: SocketAddr, t0: Instant) -> Vec<u64> {
        self.calls
            .lock()
            .iter()
            .filter(|c| c.0 == server)
            .map(|c| c.1.duration_since(t0).as_millis() as u64)
            .collect()
    }
}

const A: &str = "127.0.0.2:80";
const B: &str = "127.0.0.3:80";

fn setup(
    file: &str,
    probe: Arc<TableProbe>,
    options: CheckerOptions,
) -> (HostDb, Checker, Arc<vigil_hostdb::Origin>) {
    let hc = HealthChecks::parse(file, "hc.toml").unwrap();
    let key: vigil_hostdb::OriginKey = "app:80".parse().unwrap();
    let policy = hc.matching(&key).map(|c| c.settings.policy);
    let db = HostDb::new();
    let servers = vec![A.parse().unwrap(), B.parse().unwrap()];
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec {
            key: key.clone(),
            servers: ServerSource::Static(servers),
            lb: Default::default(),
            check: policy,
            policy: Default::default(),
        }],
        ..Default::default()
    })
    .unwrap();
    let checker = Checker::new(db.clone(), probe, hc, options);
    let origin = db.origin("app:80").unwrap();
    (db, checker, origin)
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

const STEADY: &str =
    "[defaults]\ninterval = \"2s\"\njitter = \"0%\"\nidle_after = \"60s\"\n[[check]]\norigin = \"app\"\n";

#[tokio::test(start_paused = true)]
async fn nothing_is_checked_before_the_first_touch_then_every_interval() {
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(STEADY, probe.clone(), CheckerOptions::default());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(probe.calls.lock().is_empty(), "a check before any request");
    assert!(!origin.is_checking());

    let t1 = Instant::now();
    checker.touch(&origin, now());
    assert!(origin.is_checking());
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert_eq!(probe.times(A.parse().unwrap(), t1), [0, 2000, 4000, 6000]);
    // The second of two servers starts half an interval in (staggered).
    assert_eq!(probe.times(B.parse().unwrap(), t1), [1000, 3000, 5000]);
    // Touching again while running starts nothing new.
    checker.touch(&origin, now());
    assert_eq!(checker.metrics().origins_started(), 1);
    assert_eq!(checker.metrics().passed(), 7);
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_each_wait_within_its_bounds() {
    let file =
        "[defaults]\ninterval = \"2s\"\njitter = \"10%\"\nidle_after = \"1h\"\n[[check]]\norigin = \"app\"\n";
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(file, probe.clone(), CheckerOptions::default());
    let t0 = Instant::now();
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_secs(400)).await;
    let times = probe.times(A.parse().unwrap(), t0);
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() > 150, "{}", gaps.len());
    assert!(gaps.iter().all(|g| (1800..=2200).contains(g)), "{gaps:?}");
    assert!(gaps.iter().any(|g| *g < 1950) && gaps.iter().any(|g| *g > 2050), "jitter spreads the waits");
}

#[tokio::test(start_paused = true)]
async fn rise_and_fall_and_the_unhealthy_interval() {
    let file = "[defaults]\ninterval = \"2s\"\nunhealthy_interval = \"500ms\"\ntimeout = \"200ms\"\njitter = \"0%\"\nidle_after = \"1h\"\n[[check]]\norigin = \"app\"\n";
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(file, probe.clone(), CheckerOptions::default());
    let b: SocketAddr = A.parse().unwrap(); // the first server: no stagger
    let server_b = origin.server(b).unwrap();
    probe.fail.lock().insert(b, true);
    let t0 = Instant::now();
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    // Failures at 0, 2 and 4 s: unhealthy after the third (threshold 3).
    assert_eq!(server_b.l7_state(), L7State::Unhealthy);
    assert!(!server_b.is_routable(now()));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(probe.times(b, t0), [0, 2000, 4000, 4500, 5000], "unhealthy: every 500 ms");

    probe.fail.lock().insert(b, false);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(server_b.l7_state(), L7State::Healthy, "two passes (5.5 s, 6 s) bring it back");
    let a = origin.server(B.parse().unwrap()).unwrap();
    assert_eq!(a.l7_state(), L7State::Healthy);
}

#[tokio::test(start_paused = true)]
async fn idle_stops_the_checks_and_a_touch_restarts_them() {
    let file =
        "[defaults]\ninterval = \"2s\"\njitter = \"0%\"\nidle_after = \"10s\"\n[[check]]\norigin = \"app\"\n";
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(file, probe.clone(), CheckerOptions::default());
    let t0 = Instant::now();
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!origin.is_checking());
    assert_eq!(
        probe.times(A.parse().unwrap(), t0),
        [0, 2000, 4000, 6000, 8000],
        "nothing at or after idle_after"
    );

    tokio::time::sleep(Duration::from_secs(5)).await; // t = 35 s
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(origin.is_checking());
    assert_eq!(probe.times(A.parse().unwrap(), t0)[5..], [35_000, 37_000]);
    assert_eq!(checker.metrics().origins_started(), 2);
}

#[tokio::test(start_paused = true)]
async fn fresh_connect_every_marks_exactly_every_nth_check() {
    let file = "[defaults]\ninterval = \"1s\"\ntimeout = \"500ms\"\nunhealthy_interval = \"1s\"\njitter = \"0%\"\nidle_after = \"1h\"\nfresh_connect_every = 3\n[[check]]\norigin = \"app\"\n";
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(file, probe.clone(), CheckerOptions::default());
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_millis(8_500)).await;
    let a: SocketAddr = A.parse().unwrap();
    let fresh: Vec<bool> = probe.calls.lock().iter().filter(|c| c.0 == a).map(|c| c.2).collect();
    assert_eq!(fresh, [false, false, true, false, false, true, false, false, true]);
}

#[tokio::test(start_paused = true)]
async fn checks_in_flight_are_bounded() {
    let gate = Arc::new(Semaphore::new(0));
    let probe = Arc::new(TableProbe { gate: Some(gate.clone()), ..Default::default() });
    let (_db, checker, origin) = setup(STEADY, probe.clone(), CheckerOptions { max_in_flight: 1 });
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_millis(1_100)).await; // both checks due (B staggered to 1 s)
    assert_eq!(probe.calls.lock().len(), 1, "the second check waits for a turn");
    assert_eq!(checker.metrics().in_flight(), 1);
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(probe.calls.lock().len(), 2);
    gate.add_permits(10);
}

#[tokio::test(start_paused = true)]
async fn an_origin_without_a_check_is_never_started() {
    let file = "[[check]]\norigin = \"other\"\n";
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(file, probe.clone(), CheckerOptions::default());
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(probe.calls.lock().is_empty());
    assert!(!origin.is_checking());
    assert_eq!(origin.servers()[0].l7_state(), L7State::Unchecked);
}

#[tokio::test(start_paused = true)]
async fn servers_joining_and_leaving_are_picked_up_while_checks_run() {
    let probe = Arc::new(TableProbe::default());
    let (db, checker, origin) = setup(STEADY, probe.clone(), CheckerOptions::default());
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // B leaves, C joins (as a DNS answer or a reload would do).
    let c: SocketAddr = "127.0.0.4:80".parse().unwrap();
    let key: vigil_hostdb::OriginKey = "app:80".parse().unwrap();
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec {
            key,
            servers: ServerSource::Static(vec![A.parse().unwrap(), c]),
            lb: Default::default(),
            check: origin.check_policy(),
            policy: Default::default(),
        }],
        ..Default::default()
    })
    .unwrap();
    let t_change = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after =
        |addr: SocketAddr| probe.calls.lock().iter().filter(|x| x.0 == addr && x.1 > t_change).count();
    assert_eq!(after(B.parse().unwrap()), 0, "a server that left is not checked");
    assert!((4..=6).contains(&after(c)), "the new server is checked every interval: {}", after(c));
    assert!((4..=6).contains(&after(A.parse().unwrap())), "the server that stayed keeps its schedule");
}

#[tokio::test(start_paused = true)]
async fn a_reload_changes_the_interval_and_a_lost_check_stops_the_origin() {
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(STEADY, probe.clone(), CheckerOptions::default());
    let a: SocketAddr = A.parse().unwrap();
    let t0 = Instant::now();
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_millis(2_500)).await; // checks at 0 and 2 s
    let faster = "[defaults]\ninterval = \"500ms\"\ntimeout = \"200ms\"\nunhealthy_interval = \"500ms\"\njitter = \"0%\"\nidle_after = \"60s\"\n[[check]]\norigin = \"app\"\n";
    checker.set_config(HealthChecks::parse(faster, "hc.toml").unwrap());
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    // The 4 s check was already scheduled under the old interval; after it, every 500 ms.
    assert_eq!(probe.times(a, t0), [0, 2000, 4000]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(probe.times(a, t0), [0, 2000, 4000, 4500, 5000]);

    checker.set_config(HealthChecks::parse("[[check]]\norigin = \"other\"\n", "hc.toml").unwrap());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!origin.is_checking(), "the origin lost its check: its checks stop");
    assert_eq!(probe.times(a, t0).len(), 5, "no check after the check was removed");
}

#[tokio::test(start_paused = true)]
async fn a_filter_leaves_servers_to_others_and_a_handover_checks_within_an_interval() {
    let probe = Arc::new(TableProbe::default());
    let (_db, checker, origin) = setup(STEADY, probe.clone(), CheckerOptions::default());
    // A is checked elsewhere until `mine` says otherwise.
    let mine = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a: SocketAddr = A.parse().unwrap();
    let m = Arc::clone(&mine);
    checker.set_filter(Some(Arc::new(move |_, server| {
        server != a || m.load(std::sync::atomic::Ordering::Relaxed)
    })));
    let t1 = Instant::now();
    checker.touch(&origin, now());
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert!(probe.times(a, t1).is_empty(), "a server left to another node was checked");
    assert_eq!(probe.times(B.parse().unwrap(), t1), [1000, 3000, 5000]);
    assert_eq!(checker.metrics().left_to_others(), 4);

    // Taken over at 6.5 s: checked at its next due time, within an interval.
    mine.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert_eq!(probe.times(a, t1), [8000, 10000]);
    assert_eq!(checker.metrics().left_to_others(), 4);
}
