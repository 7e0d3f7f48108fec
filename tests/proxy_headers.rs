//! What the upstream sees of the client: `X-Forwarded-*` headers, W3C `traceparent`
//! continuing the client's trace (or starting one), and no hop-by-hop headers in either
//! direction.

mod common;

use common::*;

async fn gateway(up: &Upstream) -> Gateway {
    Gateway::config()
        .route("all", "/", "c")
        .cluster("c", &[up])
        .no_access_log()
        .start()
        .await
}

/// `(trace id, parent id, flags)` of a well-formed version-00 traceparent.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && lower_hex(parts[1], 32)
            && lower_hex(parts[2], 16)
            && parts[3].len() == 2,
        "not a valid traceparent: {value}"
    );
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_forwarded_for_proto_and_host() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up).await;

        let resp = gw
            .raw_get(
                "/x",
                &[
                    ("Host", "api.example.com:8443"),
                    ("X-Forwarded-For", "10.0.0.1, 10.0.0.2"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "spoofed.example.org"),
                ],
            )
            .await;
        assert_eq!(resp.status, 200);
        let seen = up.last_request();
        assert_eq!(
            seen.header_all("x-forwarded-for"),
            ["127.0.0.1"],
            "an untrusted client's chain is replaced by its own address"
        );
        assert_eq!(
            seen.header_all("x-forwarded-proto"),
            ["http"],
            "the scheme the gateway saw, not the client's claim"
        );
        assert_eq!(
            seen.header_all("x-forwarded-host"),
            ["api.example.com:8443"]
        );

        let resp = gw.raw_get("/y", &[("Host", "plain.example.com")]).await;
        assert_eq!(resp.status, 200);
        let seen = up.last_request();
        assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
        assert_eq!(seen.header_all("x-forwarded-host"), ["plain.example.com"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continues_the_client_trace_or_starts_one() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up).await;
        let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let client_span = "00f067aa0ba902b7";

        for flags in ["01", "00"] {
            let sent = format!("00-{client_trace}-{client_span}-{flags}");
            let resp = gw.get_with("/x", &[("traceparent", &sent)]).await;
            assert_eq!(resp.status(), 200);
            let seen = up.last_request().header_all("traceparent");
            assert_eq!(seen.len(), 1, "{seen:?}");
            let (trace, span, seen_flags) = parse_traceparent(&seen[0]);
            assert_eq!(trace, client_trace, "same trace");
            assert_ne!(span, client_span, "the gateway hop is a new span");
            assert_eq!(seen_flags, flags, "the sampling decision is kept");
        }

        // No traceparent, or an invalid one: a fresh sampled trace per request.
        let mut traces = Vec::new();
        for sent in [
            None,
            None,
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("garbage"),
        ] {
            let resp = match sent {
                Some(v) => gw.get_with("/x", &[("traceparent", v)]).await,
                None => gw.get("/x").await,
            };
            assert_eq!(resp.status(), 200);
            let seen = up.last_request().header_all("traceparent");
            assert_eq!(seen.len(), 1, "{sent:?} → {seen:?}");
            let (trace, _, flags) = parse_traceparent(&seen[0]);
            assert_eq!(flags, "01");
            assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
            traces.push(trace);
        }
        traces.sort();
        traces.dedup();
        assert_eq!(traces.len(), 5, "every new trace has its own id");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_do_not_reach_the_upstream() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up).await;
        let resp = gw
            .raw_get(
                "/x",
                &[
                    ("Connection", "X-Foo, X-Bar"),
                    ("X-Foo", "secret"),
                    ("X-Bar", "secret"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("Proxy-Connection", "keep-alive"),
                    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                    ("X-Keep", "1"),
                ],
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = up.last_request();
        for gone in [
            "x-foo",
            "x-bar",
            "keep-alive",
            "te",
            "proxy-connection",
            "proxy-authorization",
        ] {
            assert!(
                seen.header_all(gone).is_empty(),
                "`{gone}` reached the upstream: {:?}",
                seen.headers
            );
        }
        let connection = seen.header_all("connection").join(",").to_ascii_lowercase();
        assert!(
            !connection.contains("x-foo") && !connection.contains("x-bar"),
            "the client's Connection list reached the upstream: {connection}"
        );
        assert_eq!(seen.header_all("x-keep"), ["1"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_do_not_reach_the_client() {
    bounded(async {
        let up = Upstream::start("a").await;
        up.add_response_header("Connection", "X-Up-Hop");
        up.add_response_header("X-Up-Hop", "secret");
        up.add_response_header("Keep-Alive", "timeout=99");
        up.add_response_header("X-Up-Keep", "1");
        let gw = gateway(&up).await;
        let resp = gw.raw_get("/x", &[]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-up-hop"), None, "{:?}", resp.headers);
        assert!(
            resp.header("keep-alive").is_none_or(|v| !v.contains("99")),
            "the upstream's Keep-Alive reached the client: {:?}",
            resp.headers
        );
        assert_eq!(resp.header("x-up-keep"), Some("1"));
    })
    .await
}

/// An upstream that keeps the raw bytes of each request header it gets and answers with a
/// header whose name is in mixed case: header-name case is invisible through hyper.
async fn raw_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = read_head(&mut conn, &mut buf).await {
                    kept.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let answer = b"HTTP/1.1 200 OK\r\nX-Upstream-Thing: yes\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
                    if conn.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// One request with mixed-case header names: the raw response the client got and the raw
/// request header the upstream got.
async fn exchange(gw: &Gateway, seen: &std::sync::Mutex<Vec<String>>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    conn.write_all(
        b"GET /case HTTP/1.1\r\nHost: gateway\r\nX-Client-Thing: 1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let upstream = seen
        .lock()
        .unwrap()
        .pop()
        .expect("the upstream got the request");
    (text, upstream)
}

/// Lines of a header block whose name is `name`, compared without case, as sent.
fn lines_named<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_go_out_in_canonical_case_unless_preserved() {
    bounded(async {
        let (addr, seen) = raw_upstream().await;
        let config = |server: &str| {
            Gateway::config()
                .route("all", "/", "c")
                .server(server)
                .no_access_log()
                .cluster_at("c", &[addr], "")
        };

        // Default: standard names in their usual capitals, others in lower case, both ways.
        let gw = config("").start().await;
        let (client_side, upstream_side) = exchange(&gw, &seen).await;
        assert_eq!(
            lines_named(&upstream_side, "x-client-thing"),
            ["x-client-thing: 1"]
        );
        assert_eq!(lines_named(&upstream_side, "host"), ["Host: gateway"]);
        assert_eq!(
            lines_named(&client_side, "x-upstream-thing"),
            ["x-upstream-thing: yes"]
        );
        assert_eq!(
            lines_named(&client_side, "content-type"),
            ["Content-Type: text/plain"]
        );
        drop(gw);

        // preserve_header_case: each side's names exactly as the other sent them.
        let gw = config("preserve_header_case = true").start().await;
        let (client_side, upstream_side) = exchange(&gw, &seen).await;
        assert_eq!(
            lines_named(&upstream_side, "x-client-thing"),
            ["X-Client-Thing: 1"]
        );
        assert_eq!(
            lines_named(&client_side, "x-upstream-thing"),
            ["X-Upstream-Thing: yes"]
        );
    })
    .await;
}
