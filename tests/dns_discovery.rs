//! DNS service discovery against a real DNS server on loopback: an authoritative
//! responder started by the test on a random UDP port (hickory-proto's message types),
//! whose records the test changes while the real gateway serves traffic to real
//! upstreams. An A record moving from one upstream to another under traffic (no failed
//! request), several A records spread over, SRV priorities and weights with fail-over,
//! failures (SERVFAIL, an empty answer, NXDOMAIN, a silent server) keeping the last good
//! set, TTL, floor and ceiling, a name that does not resolve at start-up, and `portico
//! check` / `portico routes` on DNS clusters.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// How the test DNS server answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// From its records (NXDOMAIN for an unknown name, no answer for a missing type).
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// NOERROR with no records to everything.
    Empty,
    /// NXDOMAIN to everything.
    NxDomain,
    /// No answer at all (the resolver times out).
    Silent,
}

struct Zone {
    mode: Mode,
    ttl: HashMap<String, u32>,
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Queries seen, by (name, type).
    queries: HashMap<(String, RecordType), usize>,
}

/// An authoritative DNS server on `127.0.0.1:<random>` over UDP, answering from records
/// the test sets.
struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    async fn start() -> DnsServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS server");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            mode: Mode::Answer,
            ttl: HashMap::new(),
            records: HashMap::new(),
            queries: HashMap::new(),
        }));
        let shared = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(answer) = answer(&shared, &query) else {
                    continue;
                };
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        DnsServer { addr, zone, task }
    }

    fn set(&self, name: &str, ttl: u32, kind: RecordType, data: Vec<RData>) {
        let mut z = self.zone.lock().unwrap();
        z.ttl.insert(key(name), ttl);
        z.records.insert((key(name), kind), data);
    }

    /// The A records of `name`.
    fn set_a(&self, name: &str, ttl: u32, ips: &[&str]) {
        let data = ips
            .iter()
            .map(|ip| RData::A(A(ip.parse().unwrap())))
            .collect();
        self.set(name, ttl, RecordType::A, data);
    }

    /// The AAAA records of `name`.
    fn set_aaaa(&self, name: &str, ttl: u32, ips: &[&str]) {
        let data = ips
            .iter()
            .map(|ip| RData::AAAA(AAAA(ip.parse().unwrap())))
            .collect();
        self.set(name, ttl, RecordType::AAAA, data);
    }

    /// The SRV records of `name`: (priority, weight, port, target).
    fn set_srv(&self, name: &str, ttl: u32, records: &[(u16, u16, u16, &str)]) {
        let data = records
            .iter()
            .map(|(p, w, port, target)| {
                RData::SRV(SRV::new(*p, *w, *port, Name::from_ascii(target).unwrap()))
            })
            .collect();
        self.set(name, ttl, RecordType::SRV, data);
    }

    fn mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = mode;
    }

    fn queries(&self, name: &str, kind: RecordType) -> usize {
        let z = self.zone.lock().unwrap();
        z.queries.get(&(key(name), kind)).copied().unwrap_or(0)
    }

    /// `ip:port` for the config's `dns.servers`.
    fn server(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(zone: &Mutex<Zone>, query: &Message) -> Option<Message> {
    let mut z = zone.lock().unwrap();
    let q = query.queries.first()?.clone();
    let name = key(&q.name.to_ascii());
    *z.queries.entry((name.clone(), q.query_type)).or_insert(0) += 1;
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata.message_type = MessageType::Response;
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.add_query(q.clone());
    match z.mode {
        Mode::Silent => return None,
        Mode::ServFail => m.metadata.response_code = ResponseCode::ServFail,
        Mode::NxDomain => m.metadata.response_code = ResponseCode::NXDomain,
        Mode::Empty => {}
        Mode::Answer => {
            let known = z.records.keys().any(|(n, _)| *n == name);
            if !known {
                m.metadata.response_code = ResponseCode::NXDomain;
            }
            let ttl = z.ttl.get(&name).copied().unwrap_or(1);
            if let Some(data) = z.records.get(&(name, q.query_type)) {
                for d in data {
                    m.add_answer(Record::from_rdata(q.name.clone(), ttl, d.clone()));
                }
            }
        }
    }
    Some(m)
}

/// `dns = { ... }` pointing at `dns`, with `extra` settings.
fn dns_table(dns: &DnsServer, extra: &str) -> String {
    format!("dns = {{ servers = [\"{}\"]{extra} }}", dns.server())
}

const FAST_CHECKS: &str =
    "health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\", unhealthy_threshold = 1 }";

async fn gateway(cluster_body: &str) -> Gateway {
    Gateway::builder(
        Routes::new()
            .route("all", "/", "c")
            .cluster_body("c", cluster_body),
    )
    .threads(2)
    .no_access_log()
    .start()
    .await
}

/// The socket addresses `/admin/clusters` lists for cluster `c`, sorted.
async fn resolved(gw: &Gateway) -> Vec<String> {
    let c = gw.cluster_status("c").await;
    let mut out: Vec<String> = c["endpoints"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| e["addr"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn wait_resolved(gw: &Gateway, want: &[SocketAddr]) -> Duration {
    let mut want: Vec<String> = want.iter().map(|a| a.to_string()).collect();
    want.sort();
    let start = Instant::now();
    for _ in 0..250 {
        if resolved(gw).await == want {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "cluster c never resolved to {want:?}: {:?}",
        resolved(gw).await
    );
}

fn on(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_a_record_moves_under_traffic_without_a_failed_request() {
    bounded_by(Duration::from_secs(60), async {
        let one = Upstream::start_on("one", on("127.0.0.1", 0)).await;
        let port = one.addr.port();
        let two = Upstream::start_on("two", on("127.0.0.2", port)).await;
        // Listening, but its health check fails: it must never take traffic.
        let sick = Upstream::start_on("sick", on("127.0.0.3", port)).await;
        sick.set_health(503);
        let dns = DnsServer::start().await;
        dns.set_a("orders.test", 1, &["127.0.0.1"]);
        let gw = gateway(&format!(
            "endpoints = [{{ address = \"orders.test:{port}\" }}]\n{}\n{FAST_CHECKS}",
            dns_table(&dns, ", min_ttl = \"100ms\"")
        ))
        .await;
        wait_resolved(&gw, &[one.addr]).await;
        let traffic = Traffic::start(&gw, "/orders", 4);
        tokio::time::sleep(Duration::from_millis(400)).await;

        dns.set_a("orders.test", 1, &["127.0.0.2", "127.0.0.3"]);
        let took = wait_resolved(&gw, &[two.addr, sick.addr]).await;
        let one_then = one.hits();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (sent, failed) = traffic.stop().await;

        assert_eq!(
            failed, 0,
            "{failed} of {sent} requests failed across the change"
        );
        assert!(sent > 50, "too little traffic to tell: {sent}");
        assert!(two.hits() > 0, "the new address never took traffic");
        assert!(two.health_hits() > 0, "the new address was not probed");
        assert!(sick.health_hits() > 0, "the failing address was not probed");
        assert_eq!(sick.hits(), 0, "an address whose probe failed took traffic");
        eprintln!("measured: {sent} requests, {failed} failed; change picked up after {took:?}");
        // The old address gets no new requests (one in flight may still land).
        assert!(
            one.hits() <= one_then + 4,
            "{} > {one_then} + 4",
            one.hits()
        );
        // A 1 s TTL: the change is seen after about a second, not the 300 s ceiling.
        assert!(took < Duration::from_secs(3), "picked up after {took:?}");

        let status = gw.cluster_status("c").await;
        let d = &status["discovery"];
        assert_eq!(d["source"], "dns", "{status}");
        assert_eq!(d["names"][0], format!("orders.test:{port}"), "{status}");
        assert_eq!(d["servers"][0], dns.server(), "{status}");
        assert_eq!(d["updates"], 2, "{status}");
        assert_eq!(d["last_error"], serde_json::Value::Null, "{status}");
        assert_eq!(d["ttl_secs"], 1.0, "{status}");
        assert!(d["next_refresh"].is_string(), "{status}");
        // The endpoint keeps the name it was configured by; `addr` is what it resolved to.
        assert_eq!(
            status["endpoints"][0]["address"],
            format!("orders.test:{port}")
        );
        let metrics = gw.metrics().await;
        // Each address is its own series, named `host:port@address`.
        for (up, healthy) in [(&two, 1.0), (&sick, 0.0)] {
            let label = format!("orders.test:{port}@{}", up.addr);
            assert_eq!(
                metric_value(
                    &metrics,
                    "portico_endpoint_healthy",
                    &[("cluster", "c"), ("endpoint", label.as_str())]
                ),
                Some(healthy),
                "{metrics}"
            );
        }
        assert!(
            metric_value(
                &metrics,
                "portico_dns_resolutions_total",
                &[("cluster", "c"), ("result", "ok")]
            )
            .unwrap_or(0.0)
                >= 2.0,
            "{metrics}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_a_and_aaaa_record_is_an_endpoint_with_the_configured_weight() {
    bounded(async {
        let a = Upstream::start_on("a", on("127.0.0.1", 0)).await;
        let port = a.addr.port();
        let b = Upstream::start_on("b", on("127.0.0.2", port)).await;
        let c = Upstream::start_on("c", on("127.0.0.3", port)).await;
        let v6 = Upstream::start_on("v6", on("::1", port)).await;
        // An IP literal beside the host name stays a fixed endpoint.
        let fixed = Upstream::start("fixed").await;
        let dns = DnsServer::start().await;
        dns.set_a(
            "orders.test",
            30,
            &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        );
        dns.set_aaaa("orders.test", 30, &["::1"]);
        let gw = gateway(&format!(
            "endpoints = [{{ address = \"orders.test:{port}\", weight = 2 }}, {{ address = \"{}\" }}]\n{}",
            fixed.addr,
            dns_table(&dns, "")
        ))
        .await;
        wait_resolved(&gw, &[a.addr, b.addr, c.addr, v6.addr, fixed.addr]).await;
        let seen = spread(&gw, "/orders", 90).await;
        for (name, want) in [("a", 20), ("b", 20), ("c", 20), ("v6", 20), ("fixed", 10)] {
            assert_eq!(seen.get(name).copied(), Some(want), "{seen:?}");
        }
        let status = gw.cluster_status("c").await;
        let weights: Vec<u64> = status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["weight"].as_u64().unwrap())
            .collect();
        assert_eq!(weights.iter().filter(|w| **w == 2).count(), 4, "{status}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_priorities_and_weights_and_fail_over() {
    bounded(async {
        let mut a = Upstream::start("a").await;
        let mut b = Upstream::start("b").await;
        let c = Upstream::start("c").await;
        let dns = DnsServer::start().await;
        for host in ["a.test", "b.test", "c.test"] {
            dns.set_a(host, 30, &["127.0.0.1"]);
        }
        dns.set_srv(
            "_orders._tcp.test",
            30,
            &[
                (10, 3, a.addr.port(), "a.test."),
                (10, 1, b.addr.port(), "b.test."),
                (20, 5, c.addr.port(), "c.test."),
            ],
        );
        let gw = gateway(&format!(
            "srv = \"_orders._tcp.test\"\n{}\n{FAST_CHECKS}",
            dns_table(&dns, "")
        ))
        .await;
        wait_resolved(&gw, &[a.addr, b.addr, c.addr]).await;

        // The lower priority takes everything, by its weights; the higher one nothing.
        let seen = spread(&gw, "/orders", 80).await;
        assert_eq!(seen.get("a").copied(), Some(60), "{seen:?}");
        assert_eq!(seen.get("b").copied(), Some(20), "{seen:?}");
        assert_eq!(seen.get("c"), None, "{seen:?}");
        let status = gw.cluster_status("c").await;
        assert_eq!(status["discovery"]["source"], "srv", "{status}");
        let c_status = status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["addr"] == c.addr.to_string())
            .cloned()
            .unwrap();
        assert_eq!(c_status["priority"], 20, "{status}");
        assert_eq!(c_status["address"], format!("c.test:{}", c.addr.port()));

        // Every endpoint of priority 10 down: priority 20 takes over.
        a.stop().await;
        b.stop().await;
        eventually(Duration::from_secs(5), "a and b found down", || async {
            let s = gw.cluster_status("c").await;
            s["available"] == 1
        })
        .await;
        let seen = spread(&gw, "/orders", 20).await;
        assert_eq!(seen.get("c").copied(), Some(20), "{seen:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_resolver_keeps_the_last_good_set() {
    bounded_by(Duration::from_secs(60), async {
        let one = Upstream::start("one").await;
        let port = one.addr.port();
        let dns = DnsServer::start().await;
        dns.set_a("orders.test", 1, &["127.0.0.1"]);
        let gw = gateway(&format!(
            "endpoints = [{{ address = \"orders.test:{port}\" }}]\n{}",
            dns_table(&dns, ", min_ttl = \"100ms\", max_ttl = \"400ms\"")
        ))
        .await;
        wait_resolved(&gw, &[one.addr]).await;

        let result_count = |metrics: &str, result: &str| {
            metric_value(
                metrics,
                "portico_dns_resolutions_total",
                &[("cluster", "c"), ("result", result)],
            )
            .unwrap_or(0.0)
        };
        // Each state for several tries (a silent server's try takes seconds: one).
        for (mode, result, says, tries) in [
            (Mode::ServFail, "error", "Server Failure", 3.0),
            (Mode::Empty, "empty", "no records", 3.0),
            (Mode::NxDomain, "nxdomain", "NXDOMAIN", 3.0),
            (Mode::Silent, "error", "", 1.0),
        ] {
            let before = result_count(&gw.metrics().await, result);
            dns.mode(mode);
            eventually(
                Duration::from_secs(15),
                &format!("{tries} {result} resolutions in {mode:?}"),
                || async { result_count(&gw.metrics().await, result) >= before + tries },
            )
            .await;
            let status = gw.cluster_status("c").await;
            let error = status["discovery"]["last_error"].as_str().unwrap_or("");
            assert!(error.contains(says), "{mode:?}: {status}");
            // The last good set still serves.
            assert_eq!(resolved(&gw).await, [one.addr.to_string()]);
            let counts = send_and_count(&gw, "/orders", 10).await;
            assert_eq!(counts.status(200), 10, "{mode:?}");
        }
        let metrics = gw.metrics().await;
        let errors = metric_value(
            &metrics,
            "portico_discovery_errors_total",
            &[("cluster", "c")],
        )
        .unwrap_or(0.0);
        assert!(errors >= 10.0, "{metrics}");

        // Back, on a new address: applied, and the error cleared.
        let two = Upstream::start_on("two", on("127.0.0.2", port)).await;
        dns.set_a("orders.test", 1, &["127.0.0.2"]);
        dns.mode(Mode::Answer);
        wait_resolved(&gw, &[two.addr]).await;
        let status = gw.cluster_status("c").await;
        assert_eq!(
            status["discovery"]["last_error"],
            serde_json::Value::Null,
            "{status}"
        );
        assert!(
            status["discovery"]["errors"].as_u64().unwrap() >= 10,
            "{status}"
        );
        let seen = spread(&gw, "/orders", 5).await;
        assert_eq!(seen.get("two").copied(), Some(5), "{seen:?}");

        // Logged once per change of state, not once per try.
        let log = gw.stderr();
        let warned = log
            .lines()
            .filter(|l| l.contains("DNS discovery of") && l.contains("failed"))
            .count();
        assert!(
            warned == 4,
            "{warned} warnings for {errors} failures:\n{log}"
        );
        assert!(log.contains("resolves again"), "{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_paces_resolutions_within_floor_and_ceiling() {
    bounded(async {
        let up = Upstream::start("up").await;
        let port = up.addr.port();
        let dns = DnsServer::start().await;
        // TTL 0 under a 1 s floor; TTL 1 h under a 1 s ceiling; TTL 1 s as it is.
        dns.set_a("floor.test", 0, &["127.0.0.1"]);
        dns.set_a("ceiling.test", 3600, &["127.0.0.1"]);
        dns.set_a("ttl.test", 1, &["127.0.0.1"]);
        let body = |host: &str, extra: &str| {
            format!(
                "endpoints = [{{ address = \"{host}:{port}\" }}]\n{}",
                dns_table(&dns, extra)
            )
        };
        let gw = Gateway::builder(
            Routes::new()
                .route("all", "/", "c")
                .route("f", "/floor", "floor")
                .route("x", "/ceiling", "ceiling")
                .cluster_body("c", &body("ttl.test", ", min_ttl = \"50ms\""))
                .cluster_body("floor", &body("floor.test", ", min_ttl = \"1s\""))
                .cluster_body(
                    "ceiling",
                    &body("ceiling.test", ", min_ttl = \"50ms\", max_ttl = \"1s\""),
                ),
        )
        .threads(2)
        .no_access_log()
        .start()
        .await;
        let counts = || {
            [
                dns.queries("floor.test", RecordType::A),
                dns.queries("ceiling.test", RecordType::A),
                dns.queries("ttl.test", RecordType::A),
            ]
        };
        let before = counts();
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let after = counts();
        for (i, name) in ["floor", "ceiling", "ttl"].iter().enumerate() {
            let n = after[i] - before[i];
            // About one a second: never the 70 a 50 ms floor would allow.
            assert!((2..=5).contains(&n), "{name}: {n} resolutions in 3.5 s");
        }
        let floor = gw.cluster_status("floor").await;
        assert_eq!(floor["discovery"]["ttl_secs"], 1.0, "{floor}");
        let ceiling = gw.cluster_status("ceiling").await;
        assert_eq!(ceiling["discovery"]["ttl_secs"], 1.0, "{ceiling}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_at_start_answers_503_until_it_does() {
    bounded(async {
        let up = Upstream::start("up").await;
        let dns = DnsServer::start().await;
        dns.set_a("other.test", 1, &["127.0.0.1"]);
        let gw = gateway(&format!(
            "endpoints = [{{ address = \"late.test:{}\" }}]\n{}",
            up.addr.port(),
            dns_table(&dns, ", min_ttl = \"100ms\", max_ttl = \"500ms\"")
        ))
        .await;
        let resp = gw.get("/orders").await;
        assert_eq!(resp.status(), 503);
        let status = gw.cluster_status("c").await;
        assert_eq!(
            status["endpoints"].as_array().map(Vec::len),
            Some(0),
            "{status}"
        );
        let error = status["discovery"]["last_error"].as_str().unwrap_or("");
        assert!(
            error.contains("late.test") && error.contains("NXDOMAIN"),
            "{status}"
        );

        dns.set_a("late.test", 1, &["127.0.0.1"]);
        wait_resolved(&gw, &[up.addr]).await;
        assert_eq!(gw.get("/orders").await.status(), 200);
    })
    .await
}

fn check(dir: &std::path::Path, body: &str) -> (Option<i32>, String) {
    let path = dir.join("portico.toml");
    let admin = free_addr();
    let listen = free_addr();
    let text = format!(
        "[[listeners]]\naddress = \"{listen}\"\n\n[admin]\naddress = \"{admin}\"\n\n[[routes]]\nid = \"all\"\npath = \"/\"\ncluster = \"c\"\n\n[clusters.c]\n{body}\n"
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(PORTICO)
        .args(["check", "-c", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_check_and_routes_on_dns_clusters() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("portico.toml");
        let at = |line: usize| format!("{}:{line}:", config.display());

        let (code, out) = check(dir.path(), "srv = \"orders.example.internal\"");
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains(&at(13)) && out.contains("srv"), "{out}");
        assert!(out.contains("_service._proto.domain"), "{out}");

        let (code, out) = check(
            dir.path(),
            "endpoints = [{ address = \"orders.internal:80\" }]\ndns = { min_ttl = \"10s\", max_ttl = \"1s\" }",
        );
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains(&at(14)) && out.contains("min_ttl"), "{out}");
        assert!(out.contains("more than max_ttl"), "{out}");

        let (code, out) = check(
            dir.path(),
            "endpoints = [{ address = \"127.0.0.1:80\" }]\nsrv = \"_orders._tcp.example.internal\"",
        );
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains(&at(14)) && out.contains("one of `endpoints`"), "{out}");

        let (code, out) = check(
            dir.path(),
            "endpoints = [{ address = \"127.0.0.1:80\" }]\ndns = { servers = [\"127.0.0.1:53\"] }",
        );
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains("only used by a cluster with `srv`"), "{out}");

        let (code, out) = check(
            dir.path(),
            "endpoints = [{ address = \"bad_host!:80\" }]",
        );
        assert_ne!(code, Some(0), "{out}");
        assert!(out.contains("is not a host name"), "{out}");

        // A name that does not resolve now is a warning, not an error.
        let dns = DnsServer::start().await;
        let (code, out) = check(
            dir.path(),
            &format!(
                "endpoints = [{{ address = \"missing.test:80\" }}]\n{}",
                dns_table(&dns, "")
            ),
        );
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("warning") && out.contains("does not resolve now"), "{out}");

        // `portico routes` resolves and shows where the endpoints come from.
        dns.set_a("orders.test", 5, &["127.0.0.1", "127.0.0.2"]);
        let (code, out) = check(
            dir.path(),
            &format!(
                "endpoints = [{{ address = \"orders.test:8080\" }}]\n{}",
                dns_table(&dns, "")
            ),
        );
        assert_eq!(code, Some(0), "{out}");
        let out = std::process::Command::new(PORTICO)
            .args(["routes", "-c", config.to_str().unwrap(), "GET", "/orders"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("discovery dns orders.test:8080 via"), "{text}");
        assert!(text.contains("orders.test:8080 (127.0.0.1:8080)"), "{text}");
        assert!(text.contains("orders.test:8080 (127.0.0.2:8080)"), "{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_an_unchanged_dns_cluster_and_resolves_a_changed_one() {
    bounded_by(Duration::from_secs(60), async {
        let one = Upstream::start_on("one", on("127.0.0.1", 0)).await;
        let port = one.addr.port();
        let two = Upstream::start_on("two", on("127.0.0.2", port)).await;
        let dns = DnsServer::start().await;
        dns.set_a("orders.test", 1, &["127.0.0.1"]);
        let gw = gateway(&format!(
            "endpoints = [{{ address = \"orders.test:{port}\" }}]\n{}",
            dns_table(&dns, ", min_ttl = \"100ms\"")
        ))
        .await;
        wait_resolved(&gw, &[one.addr]).await;
        dns.set_a("orders.test", 1, &["127.0.0.1", "127.0.0.2"]);
        wait_resolved(&gw, &[one.addr, two.addr]).await;
        let reload = |text: String| {
            std::fs::write(&gw.config_path, text).unwrap();
            gw.admin_post("/admin/reload")
        };

        // Another route: the cluster is kept, with its set, counters and refresh task.
        let more = format!(
            "{}\n[[routes]]\nid = \"more\"\npath = \"/more\"\ncluster = \"c\"\n",
            gw.config
        );
        assert_eq!(reload(more.clone()).await.status(), 200);
        let status = gw.cluster_status("c").await;
        assert_eq!(status["discovery"]["updates"], 2, "{status}");
        dns.set_a("orders.test", 1, &["127.0.0.2"]);
        wait_resolved(&gw, &[two.addr]).await;

        // A changed cluster resolves anew before it serves.
        let changed = more.replace("min_ttl = \"100ms\"", "min_ttl = \"150ms\"");
        assert_ne!(changed, more);
        assert_eq!(reload(changed).await.status(), 200);
        let status = gw.cluster_status("c").await;
        assert_eq!(status["discovery"]["updates"], 1, "{status}");
        assert_eq!(resolved(&gw).await, [two.addr.to_string()]);
        let seen = spread(&gw, "/more", 4).await;
        assert_eq!(seen.get("two").copied(), Some(4), "{seen:?}");
        // Its own task keeps resolving.
        dns.set_a("orders.test", 1, &["127.0.0.1"]);
        wait_resolved(&gw, &[one.addr]).await;
    })
    .await
}
