//! The real client address: PROXY protocol v1 and v2 headers (built by hand, byte for byte)
//! on a `proxy_protocol` listener become the client's address for `X-Forwarded-For`, the
//! access log, rate-limit keys and the `ip-filter` plugin; missing, malformed and late
//! headers close the connection; a client's own `X-Forwarded-For` is believed only from a
//! trusted proxy.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A version 2 header: `command` 1 = PROXY, 0 = LOCAL; TCP over the source's family.
fn v2(command: u8, source: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match source {
        SocketAddr::V4(a) => {
            addresses.extend_from_slice(&a.ip().octets());
            addresses.extend_from_slice(&[127, 0, 0, 1]);
            0x11
        }
        SocketAddr::V6(a) => {
            addresses.extend_from_slice(&a.ip().octets());
            addresses.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&443u16.to_be_bytes());
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&addresses);
    h.extend_from_slice(tlvs);
    h
}

fn v1(source: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    let dst = if source.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!(
        "PROXY {family} {} {dst} {} 443\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    raw_get_request(path, headers).into_bytes()
}

/// Sends `prefix` then `request` (as separate writes when `split`) on a new connection and
/// reads one response; `None` when the gateway closes without one.
async fn exchange(gw: &Gateway, prefix: &[u8], request: &[u8], split: bool) -> Option<RawResponse> {
    let mut conn = RawConn::connect(gw.listen).await;
    if split {
        conn.send(prefix).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.send(request).await;
    } else {
        conn.send(&[prefix, request].concat()).await;
    }
    conn.read_response().await
}

async fn proxy_gateway(up: &Upstream, route_extra: &str) -> Gateway {
    Gateway::config()
        .listener("proxy_protocol = true")
        .limits("proxy_header_timeout = \"300ms\"")
        .route_with("all", "/", "c", route_extra)
        .cluster("c", &[up])
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_make_the_client_address() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = proxy_gateway(&up, "").await;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "v1 tcp4",
                v1("203.0.113.7:56324".parse().unwrap()),
                "203.0.113.7",
            ),
            (
                "v1 tcp6",
                v1("[2001:db8::7]:4000".parse().unwrap()),
                "2001:db8::7",
            ),
            ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
            (
                "v2 ipv4",
                v2(1, "198.51.100.9:1234".parse().unwrap(), &[]),
                "198.51.100.9",
            ),
            (
                "v2 ipv6",
                v2(1, "[2001:db8::9]:80".parse().unwrap(), &[]),
                "2001:db8::9",
            ),
            (
                "v2 with a TLV",
                v2(
                    1,
                    "198.51.100.10:1".parse().unwrap(),
                    &[0x04, 0, 3, b'a', b'b', b'c'],
                ),
                "198.51.100.10",
            ),
            (
                "v2 local",
                v2(0, "198.51.100.11:1".parse().unwrap(), &[]),
                "127.0.0.1",
            ),
        ];
        let mut logged = Vec::new();
        for (i, (name, header, client)) in cases.iter().enumerate() {
            // Spoofed forwarding headers from the balancer's client are not believed.
            let request = get(&format!("/{i}"), &[("X-Forwarded-For", "10.9.9.9")]);
            let resp = exchange(&gw, header, &request, i % 2 == 1)
                .await
                .unwrap_or_else(|| panic!("{name}: closed without a response"));
            assert_eq!(resp.status, 200, "{name}: {}", resp.text());
            assert_eq!(
                up.last_request().header_all("x-forwarded-for"),
                [*client],
                "{name}"
            );
            logged.push(*client);
        }
        let lines = gw.wait_access_log(cases.len()).await;
        let clients: Vec<&str> = lines
            .iter()
            .map(|l| l["client"].as_str().unwrap())
            .collect();
        assert_eq!(clients, logged, "the access log has the PROXY source");

        // Keep-alive: the header comes once, then any number of requests.
        let mut conn = RawConn::connect(gw.listen).await;
        conn.send(&v1("203.0.113.50:9".parse().unwrap())).await;
        for path in ["/k1", "/k2"] {
            conn.send(&get(path, &[])).await;
            assert_eq!(conn.read_response().await.expect(path).status, 200);
            assert_eq!(
                up.last_request().header_all("x-forwarded-for"),
                ["203.0.113.50"]
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_malformed_and_late_headers_close_the_connection() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = proxy_gateway(&up, "").await;
        let mut wrong_version = v2(1, "198.51.100.9:1".parse().unwrap(), &[]);
        wrong_version[12] = 0x31;
        let mut short_v2 = v2(1, "198.51.100.9:1".parse().unwrap(), &[]);
        short_v2[15] = 4; // shorter than two IPv4 addresses and ports
        let bad: Vec<(&str, Vec<u8>)> = vec![
            ("no header", Vec::new()),
            (
                "v1 bad family",
                b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            ),
            (
                "v1 bad address",
                b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n".to_vec(),
            ),
            (
                "v1 bad port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n".to_vec(),
            ),
            ("v1 bare LF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec()),
            ("v2 version 3", wrong_version),
            ("v2 too short", short_v2),
        ];
        for (name, header) in &bad {
            let resp = exchange(&gw, header, &get("/x", &[]), false).await;
            assert!(resp.is_none(), "{name}: answered {resp:?}");
        }
        // A v1 line with no end, and a silent client: closed at proxy_header_timeout.
        for (name, prefix) in [("trickled", &b"PROXY TCP4 1.2.3.4"[..]), ("silent", b"")] {
            let mut conn = RawConn::connect(gw.listen).await;
            conn.send(prefix).await;
            let start = Instant::now();
            assert!(conn.closed_within(Duration::from_secs(3)).await, "{name}");
            assert!(
                start.elapsed() >= Duration::from_millis(200),
                "{name}: {:?}",
                start.elapsed()
            );
        }
        assert_eq!(up.hits(), 0, "nothing reached the upstream");
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_connections_refused_total",
                &[("reason", "proxy_protocol")]
            ),
            Some((bad.len() + 2) as f64),
            "{metrics}"
        );
        // The gateway still serves a good client.
        let header = v1("203.0.113.7:1".parse().unwrap());
        let resp = exchange(&gw, &header, &get("/x", &[]), false).await;
        assert_eq!(resp.map(|r| r.status), Some(200));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_filter_and_rate_limit_see_the_proxy_source() {
    bounded(async {
        let up = Upstream::start("a").await;
        let plugins = format!(
            "{}{}",
            route_plugin(
                "ip-filter",
                "allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\ndeny = [\"10.0.13.0/24\"]"
            ),
            route_plugin("rate-limit", "rate = 1\nperiod = \"1h\"")
        );
        let gw = proxy_gateway(&up, &plugins).await;
        let send = |source: &str, xff: Option<&str>| {
            let header = v2(1, source.parse().unwrap(), &[]);
            let mut headers = Vec::new();
            if let Some(xff) = xff {
                headers.push(("X-Forwarded-For", xff));
            }
            let request = get("/x", &headers);
            let gw = &gw;
            async move {
                exchange(gw, &header, &request, false)
                    .await
                    .expect("a response")
            }
        };
        assert_eq!(send("10.1.2.3:1", None).await.status, 200);
        assert_eq!(send("[2001:db8::1]:1", None).await.status, 200);
        // The rate limit keys on the PROXY source: 10.1.2.3 spent its one request, 10.1.2.4
        // has its own.
        assert_eq!(send("10.1.2.3:2", None).await.status, 429);
        assert_eq!(send("10.1.2.4:1", None).await.status, 200);
        for (source, xff) in [
            ("203.0.113.7:1", None),
            ("10.0.13.5:1", None),
            // A spoofed X-Forwarded-For naming an allowed address changes nothing.
            ("203.0.113.7:2", Some("10.1.2.3")),
        ] {
            let resp = send(source, xff).await;
            assert_eq!(resp.status, 403, "{source} {xff:?}");
            assert_eq!(
                resp.header("content-type"),
                Some("application/problem+json")
            );
            let body = resp.json();
            assert_eq!(body["type"], "urn:portico:problem:address-forbidden");
            assert_eq!(body["status"], 403);
        }
        assert_eq!(up.hits(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    bounded(async {
        let up = Upstream::start("a").await;
        let filter = route_plugin("ip-filter", "allow = [\"10.0.0.0/8\"]");
        let untrusted = Gateway::config()
            .global_plugin("ip-filter", "deny = [\"192.0.2.0/24\"]")
            .route_with("all", "/", "c", &filter)
            .cluster("c", &[&up])
            .start()
            .await;
        let spoofed = untrusted
            .raw_get("/x", &[("X-Forwarded-For", "10.1.2.3")])
            .await;
        assert_eq!(
            spoofed.status, 403,
            "a client's own X-Forwarded-For is ignored"
        );

        let trusted = Gateway::config()
            .server("trusted_proxies = [\"127.0.0.1\"]")
            .global_plugin("ip-filter", "deny = [\"192.0.2.0/24\"]")
            .route_with("all", "/", "c", &filter)
            .cluster("c", &[&up])
            .start()
            .await;
        let resp = trusted
            .raw_get("/x", &[("X-Forwarded-For", "10.1.2.3")])
            .await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            up.last_request().header_all("x-forwarded-for"),
            ["10.1.2.3, 127.0.0.1"]
        );
        // The global filter runs before routing, on the same derived address.
        let resp = trusted
            .raw_get("/nowhere", &[("X-Forwarded-For", "192.0.2.1")])
            .await;
        assert_eq!(resp.status, 403);
        let lines = trusted.wait_access_log(2).await;
        assert_eq!(lines[0]["client"], "10.1.2.3");
        assert_eq!(lines[1]["client"], "192.0.2.1");
    })
    .await
}
