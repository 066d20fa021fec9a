//! DNS: refresh timing on paused time with scripted answers, and the real
//! hickory resolver against a DNS server started here on loopback.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use vigil_hostdb::{
    DnsAnswer, DnsError, DnsPolicy, Event, HostDb, HostDbConfig, OriginSpec, Resolve, ResolveFuture,
};

use crate::{Recorder, now};

/// Answers from a script (the last entry repeats) and records when it was asked.
struct Scripted {
    script: Mutex<VecDeque<Result<DnsAnswer, DnsError>>>,
    asked: Mutex<Vec<tokio::time::Instant>>,
}

impl Scripted {
    fn new(script: Vec<Result<DnsAnswer, DnsError>>) -> Arc<Self> {
        Arc::new(Self { script: Mutex::new(script.into()), asked: Mutex::default() })
    }
    /// Seconds (since `t0`) of every lookup so far.
    fn asked_at(&self, t0: tokio::time::Instant) -> Vec<u64> {
        self.asked.lock().iter().map(|t| t.duration_since(t0).as_secs()).collect()
    }
}

impl Resolve for Scripted {
    fn resolve<'a>(&'a self, host: &'a str) -> ResolveFuture<'a> {
        self.asked.lock().push(tokio::time::Instant::now());
        let mut script = self.script.lock();
        let next = if script.len() > 1 { script.pop_front() } else { script.front().cloned() };
        let answer =
            next.unwrap_or_else(|| Err(DnsError { host: host.into(), message: "empty script".into() }));
        Box::pin(std::future::ready(answer))
    }
}

fn ok(ips: &[[u8; 4]], ttl_s: u64) -> Result<DnsAnswer, DnsError> {
    Ok(DnsAnswer { addrs: ips.iter().map(|ip| IpAddr::from(*ip)).collect(), ttl: Duration::from_secs(ttl_s) })
}

fn servfail() -> Result<DnsAnswer, DnsError> {
    Err(DnsError { host: "svc.test".into(), message: "SERVFAIL".into() })
}

fn dns_db(resolver: Arc<dyn Resolve>) -> HostDb {
    let db = HostDb::builder().resolver(resolver).build().unwrap();
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec::with_dns("svc.test:8080".parse().unwrap())],
        ..Default::default()
    })
    .unwrap();
    db
}

fn servers(db: &HostDb) -> Vec<SocketAddr> {
    db.origin("svc.test:8080").unwrap().servers().iter().map(|s| s.addr()).collect()
}

#[tokio::test(start_paused = true)]
async fn refresh_honours_the_ttl_within_bounds() {
    let t0 = tokio::time::Instant::now();
    let r = Scripted::new(vec![ok(&[[10, 0, 0, 1]], 30), ok(&[[10, 0, 0, 1]], 30), ok(&[[10, 0, 0, 1]], 0)]);
    let db = dns_db(r.clone());
    db.origin("svc.test:8080").unwrap().ready().await;
    assert_eq!(servers(&db), ["10.0.0.1:8080".parse().unwrap()]);
    tokio::time::sleep(Duration::from_millis(62_500)).await;
    // 30 s TTL twice, then TTL 0 is clamped up to min_ttl (1 s).
    assert_eq!(r.asked_at(t0), [0, 30, 60, 61, 62]);
}

#[tokio::test(start_paused = true)]
async fn failure_keeps_the_last_answer_logs_once_and_shows_in_the_snapshot() {
    let t0 = tokio::time::Instant::now();
    let r = Scripted::new(vec![
        ok(&[[10, 0, 0, 1], [10, 0, 0, 2]], 10),
        servfail(),
        servfail(),
        servfail(),
        ok(&[[10, 0, 0, 2], [10, 0, 0, 3]], 10),
    ]);
    let db = dns_db(r.clone());
    let events = Recorder::attach(&db);
    let origin = db.origin("svc.test:8080").unwrap();
    origin.ready().await;
    let kept: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    origin.server(kept).unwrap().set_maintenance(true);

    tokio::time::sleep(Duration::from_millis(10_500)).await; // first failure at 10 s
    assert_eq!(servers(&db).len(), 2, "last answer kept");
    let view = db.snapshot(now());
    let dns = view.origins[0].dns.as_ref().unwrap();
    assert_eq!(dns.error.as_deref(), Some("DNS lookup of svc.test failed: SERVFAIL"));
    assert_eq!(dns.failing_for_ms, Some(500));
    assert_eq!(dns.next_refresh_in_ms, Some(500), "first retry after retry_min");

    tokio::time::sleep(Duration::from_secs(7)).await; // retries at 11 s and 13 s, recovery at 17 s
    assert_eq!(r.asked_at(t0), [0, 10, 11, 13, 17]);
    assert_eq!(
        servers(&db),
        ["10.0.0.2:8080".parse::<SocketAddr>().unwrap(), "10.0.0.3:8080".parse().unwrap()]
    );
    assert!(origin.server(kept).unwrap().maintenance(), "a server that stays keeps its status");
    assert_eq!(db.snapshot(now()).origins[0].dns.as_ref().unwrap().error, None);

    let dns_events: Vec<Option<String>> = events
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::Dns { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(dns_events, [Some("DNS lookup of svc.test failed: SERVFAIL".to_owned()), None]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_first_answer_leaves_no_servers_and_a_removed_origin_stops_refreshing() {
    let t0 = tokio::time::Instant::now();
    let r = Scripted::new(vec![ok(&[], 5), ok(&[[10, 0, 0, 9]], 5)]);
    let db = dns_db(r.clone());
    let origin = db.origin("svc.test:8080").unwrap();
    origin.ready().await;
    assert!(servers(&db).is_empty());
    assert_eq!(
        db.select(&crate::k("svc.test:8080"), &mut vigil_hostdb::Attempt::new(), now()).unwrap_err(),
        vigil_hostdb::SelectError::NoServers
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(servers(&db).len(), 1);

    drop(origin);
    db.apply(&HostDbConfig::default()).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(r.asked_at(t0), [0, 1], "no lookups after the origin left");
}

#[tokio::test(start_paused = true)]
async fn static_to_dns_and_back() {
    let r = Scripted::new(vec![ok(&[[10, 0, 0, 7]], 5)]);
    let db = HostDb::builder().resolver(r.clone()).build().unwrap();
    let key: vigil_hostdb::OriginKey = "svc.test:8080".parse().unwrap();
    let fixed = vec!["10.0.0.1:8080".parse().unwrap()];
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec::with_servers(key.clone(), fixed.clone())],
        ..Default::default()
    })
    .unwrap();
    db.apply(&HostDbConfig { origins: vec![OriginSpec::with_dns(key.clone())], ..Default::default() })
        .unwrap();
    assert_eq!(servers(&db), fixed, "static servers stay until DNS answers");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(servers(&db), ["10.0.0.7:8080".parse::<SocketAddr>().unwrap()]);
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec::with_servers(key, fixed.clone())],
        ..Default::default()
    })
    .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(servers(&db), fixed, "a stopped refresh never overwrites a static list");
}

/// A minimal authoritative DNS server on loopback UDP: A records for
/// `svc.test.`, NXDOMAIN for everything else.
async fn start_dns_server() -> SocketAddr {
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::{RData, Record, RecordType};

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            resp.metadata.authoritative = true;
            resp.metadata.recursion_desired = query.metadata.recursion_desired;
            for q in &query.queries {
                resp.add_query(q.clone());
                if q.name().to_ascii().eq_ignore_ascii_case("svc.test.") {
                    if q.query_type() == RecordType::A {
                        for ip in [[127, 0, 0, 5], [127, 0, 0, 6]] {
                            let ip = std::net::Ipv4Addr::from(ip);
                            resp.add_answer(Record::from_rdata(q.name().clone(), 42, RData::from(ip)));
                        }
                    }
                } else {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

#[tokio::test]
async fn hickory_resolves_against_a_loopback_dns_server() {
    let server = start_dns_server().await;
    let resolver = vigil_hostdb::HickoryResolver::with_name_servers(&[server]).unwrap();
    let answer = resolver.resolve("svc.test").await.unwrap();
    let mut ips = answer.addrs.clone();
    ips.sort();
    assert_eq!(ips, [IpAddr::from([127, 0, 0, 5]), IpAddr::from([127, 0, 0, 6])]);
    assert!(
        answer.ttl <= Duration::from_secs(42) && answer.ttl > Duration::from_secs(40),
        "{:?}",
        answer.ttl
    );

    let err = resolver.resolve("missing.test").await.unwrap_err();
    assert_eq!(err.host, "missing.test");

    // And through HostDB end to end.
    let db = HostDb::builder().resolver(Arc::new(resolver)).dns_policy(DnsPolicy::default()).build().unwrap();
    db.apply(&HostDbConfig {
        origins: vec![OriginSpec::with_dns("svc.test:8080".parse().unwrap())],
        ..Default::default()
    })
    .unwrap();
    let origin = db.origin("svc.test:8080").unwrap();
    tokio::time::timeout(Duration::from_secs(10), origin.ready()).await.unwrap();
    let mut got = servers(&db);
    got.sort();
    assert_eq!(got, ["127.0.0.5:8080".parse::<SocketAddr>().unwrap(), "127.0.0.6:8080".parse().unwrap()]);
    assert_eq!(origin.dns_status().unwrap().ttl.map(|t| t.as_secs() >= 40), Some(true));
}
