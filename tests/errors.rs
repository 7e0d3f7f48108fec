//! Responses the gateway makes itself when it cannot proxy: every one is an RFC 9457
//! `application/problem+json` body with status, title, detail and the request id, with the
//! right status for the cause (503 no healthy endpoint, 502 connect failure, 504 upstream
//! timeout, 413/414/431 size limits).

mod common;

use std::time::{Duration, Instant};

use common::*;

const PROBLEM_JSON: &str = "application/problem+json";

/// One route `/` to cluster `c`, with the request-id plugin on every request.
fn config(cluster_body: &str) -> Routes {
    Routes::new()
        .global_plugin("request-id", "")
        .route("all", "/", "c")
        .cluster_body("c", cluster_body)
}

/// Checks the problem body of a gateway error and returns it.
async fn problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some(PROBLEM_JSON));
    let echoed_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    for field in ["type", "title", "detail", "request_id"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "`{field}` missing in {body}"
        );
    }
    assert_eq!(
        body["request_id"].as_str(),
        echoed_id.as_deref(),
        "the body's request_id is the echoed X-Request-Id"
    );
    body
}

fn raw_problem(resp: &RawResponse, status: u16) -> serde_json::Value {
    assert_eq!(resp.status, status, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some(PROBLEM_JSON));
    let body = resp.json();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["request_id"].as_str(), resp.header("x-request-id"));
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_endpoint_is_a_503_problem_with_retry_after() {
    bounded(async {
        let up = Upstream::start("a").await;
        up.set_health(503);
        let gw = Gateway::start(config(&format!(
            "endpoints = {}\nhealth_check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 1 }}",
            endpoints(&[&up])
        )))
        .await;
        let addr = up.address();
        eventually(Duration::from_secs(3), "the only endpoint is unhealthy", || async {
            gw.endpoint_status("c", &addr).await["healthy"] == false
        })
        .await;

        let resp = gw.get("/orders/1").await;
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(
            retry_after
                .as_deref()
                .is_some_and(|v| v.parse::<u32>().is_ok()),
            "Retry-After in seconds: {retry_after:?}"
        );
        let body = problem(resp, 503).await;
        assert_eq!(body["instance"], "/orders/1");
        // The client learns neither the cluster nor its state; the log has both, under
        // the request id the client was given.
        let detail = body["detail"].as_str().unwrap();
        assert_eq!(
            detail,
            "the service is temporarily unavailable; retry later and quote the request_id when reporting this"
        );
        let text = body.to_string();
        assert!(!text.contains("`c`"), "the body names the cluster: {body}");
        assert!(!text.contains(&addr), "the body names the endpoint: {body}");
        let generated = body["request_id"].as_str().unwrap();
        assert_eq!(generated.len(), 32, "a generated id is 128 bits of hex");
        eventually(Duration::from_secs(3), "the full detail in the log", || async {
            gw.stderr().lines().any(|l| {
                l.contains(&format!("request {generated}: 503 no-healthy-upstream"))
                    && l.contains("every instance of `c` is unhealthy or ejected")
            })
        })
        .await;

        let resp = gw
            .get_with("/orders/2", &[("X-Request-Id", "client-id-42")])
            .await;
        let body = problem(resp, 503).await;
        assert_eq!(body["request_id"], "client-id-42");
        assert_eq!(up.hits(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_everywhere_is_a_502_problem() {
    bounded(async {
        let mut a = Upstream::start("a").await;
        let mut b = Upstream::start("b").await;
        let body = config(&format!("endpoints = {}", endpoints(&[&a, &b])));
        a.stop().await;
        b.stop().await;
        let gw = Gateway::start(&body).await;
        for path in ["/x", "/y", "/z"] {
            let resp = gw.get(path).await;
            let body = problem(resp, 502).await;
            assert_eq!(body["instance"], path);
            assert_eq!(
                body["detail"],
                "the upstream service failed to answer; quote the request_id when reporting this"
            );
            assert!(!body.to_string().contains("`c`"), "{body}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slower_than_the_read_timeout_is_a_504_problem() {
    bounded(async {
        let up = Upstream::slow("slow", Duration::from_secs(3)).await;
        let gw = Gateway::start(config(&format!(
            "endpoints = {}\ntimeouts = {{ connect = \"1s\", read = \"300ms\" }}",
            endpoints(&[&up])
        )))
        .await;
        let start = Instant::now();
        let resp = gw.get("/slow").await;
        let took = start.elapsed();
        let body = problem(resp, 504).await;
        assert_eq!(
            body["detail"],
            "the upstream service did not answer in time; quote the request_id when reporting this"
        );
        assert!(!body.to_string().contains("`c`"), "{body}");
        assert!(
            took < Duration::from_millis(2000),
            "answered after {took:?}, the read timeout is 300 ms"
        );
        assert!(
            took >= Duration::from_millis(250),
            "answered after {took:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_answer_413_414_and_431() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::builder(config(&format!("endpoints = {}", endpoints(&[&up]))))
            .limits("max_uri_bytes = 64\nmax_header_bytes = 2048\nmax_body_bytes = 1024")
            .start()
            .await;

        // Declared Content-Length over the limit: refused before anything is read or sent.
        let resp = gw
            .raw("POST /upload HTTP/1.1\r\nHost: gateway\r\nContent-Length: 4096\r\n\r\n")
            .await;
        raw_problem(&resp, 413);
        // At the limit is fine.
        let body = "x".repeat(1024);
        let resp = gw
            .client
            .post(gw.url("/upload"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(up.last_request().body.len(), 1024);

        // A request target over the limit.
        let long = format!("/search?q={}", "a".repeat(80));
        let resp = gw.raw_get(&long, &[]).await;
        raw_problem(&resp, 414);
        let fits = format!("/s?q={}", "a".repeat(64 - 5));
        assert_eq!(fits.len(), 64);
        assert_eq!(gw.raw_get(&fits, &[]).await.status, 200);

        // Headers over the limit.
        let big = "v".repeat(3000);
        let resp = gw.raw_get("/h", &[("X-Big", &big)]).await;
        raw_problem(&resp, 431);

        assert_eq!(
            up.hits(),
            2,
            "only the requests within the limits reach the upstream"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_is_413() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::builder(config(&format!("endpoints = {}", endpoints(&[&up]))))
            .limits("max_body_bytes = 1024")
            .start()
            .await;
        let mut request = String::from(
            "POST /upload HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        for _ in 0..3 {
            request.push_str(&format!("3e8\r\n{}\r\n", "y".repeat(1000)));
        }
        request.push_str("0\r\n\r\n");
        let resp = gw.raw(&request).await;
        raw_problem(&resp, 413);
        assert!(
            up.requests().iter().all(|r| r.body.len() <= 1024),
            "the upstream never receives more than the limit"
        );
    })
    .await
}

/// After an error the gateway answers itself, the client connection is either still usable
/// or the response says `Connection: close`. A pooling client (every HTTP library) must not
/// be told `keep-alive` on a connection the gateway then closes: its next request on that
/// connection would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_responses_never_advertise_keep_alive_on_a_closing_connection() {
    bounded(async {
        let mut refused = Upstream::start("refused").await;
        let down = Upstream::start("down").await;
        down.set_health(503);
        let slow = Upstream::slow("slow", Duration::from_secs(3)).await;
        let body = format!(
            r#"[[routes]]
id = "refused"
path = "/refused"
cluster = "refused"

[[routes]]
id = "down"
path = "/down"
cluster = "down"

[[routes]]
id = "slow"
path = "/slow"
cluster = "slow"

[clusters.refused]
endpoints = {refused}

[clusters.down]
endpoints = {down}
health_check = {{ path = "/healthz", interval = "100ms", timeout = "100ms", unhealthy_threshold = 1 }}

[clusters.slow]
endpoints = {slow}
timeouts = {{ read = "200ms" }}
"#,
            refused = endpoints(&[&refused]),
            down = endpoints(&[&down]),
            slow = endpoints(&[&slow]),
        );
        refused.stop().await;
        let gw = Gateway::start(&body).await;
        let down_addr = down.address();
        eventually(Duration::from_secs(3), "`down` is unhealthy", || async {
            gw.endpoint_status("down", &down_addr).await["healthy"] == false
        })
        .await;

        let mut failures = Vec::new();
        for (path, status) in [
            ("/nowhere", 404),
            ("/refused", 502),
            ("/down", 503),
            ("/slow", 504),
        ] {
            let request = raw_get_request(path, &[]);
            let mut conn = RawConn::connect(gw.listen).await;
            conn.send(request.as_bytes()).await;
            let first = conn.read_response().await.expect("a first response");
            assert_eq!(first.status, status, "GET {path}: {}", first.text());
            let says_close = first
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if says_close {
                if !conn.closed_within(Duration::from_secs(2)).await {
                    failures.push(format!("GET {path}: `Connection: close` but left open"));
                }
                continue;
            }
            conn.send(request.as_bytes()).await;
            match conn.read_response().await {
                Some(second) if second.status == status => {}
                Some(second) => failures.push(format!(
                    "GET {path}: second request on the connection got {}",
                    second.status
                )),
                None => failures.push(format!(
                    "GET {path}: answered {status} with `Connection: {}`, then closed the connection",
                    first.header("connection").unwrap_or("(none)")
                )),
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    })
    .await
}

/// Upstream failures tell the client nothing about the gateway's insides: not the
/// cluster's name, not its endpoint, not that a breaker is open or a bulkhead full. The
/// gateway's log has the full detail under the request id the client was given, and the
/// open breaker's 503 keeps its `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_name_no_cluster_and_no_state_to_the_client() {
    bounded(async {
        let flaky = Upstream::with_status("flaky", 500).await;
        let slow = Upstream::slow("slow", Duration::from_millis(1500)).await;
        let gw = Gateway::config()
            .global_plugin("request-id", "")
            .route("flaky", "/flaky", "payments-internal")
            .route("slow", "/slow", "ledger-internal")
            .cluster_with(
                "payments-internal",
                &[&flaky],
                "outlier = { consecutive_5xx = 0, consecutive_connect_failures = 0 }\n\
                 breaker = { consecutive_failures = 2, min_requests = 1000, open_for = \"10s\" }",
            )
            .cluster_with(
                "ledger-internal",
                &[&slow],
                r#"bulkhead = { max_concurrent = 1, max_queue = 0, queue_timeout = "10ms" }"#,
            )
            .start()
            .await;

        // Trip the breaker, then get its fast 503.
        for i in 0..2 {
            assert_eq!(gw.get(&format!("/flaky/{i}")).await.status(), 500);
        }
        eventually(Duration::from_secs(2), "the breaker opens", || async {
            gw.admin_json("/admin/clusters").await["clusters"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["name"] == "payments-internal" && c["breaker"] == "open")
                })
        })
        .await;
        let resp = gw.get("/flaky/open").await;
        assert!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|s| s >= 1),
            "Retry-After stays on an open breaker's 503"
        );
        let open = problem(resp, 503).await;
        assert_eq!(
            open["detail"],
            "the service is temporarily unavailable; retry later and quote the request_id when reporting this"
        );

        // Fill the bulkhead with one slow request, then get its 503.
        let held = {
            let (client, url) = (gw.client.clone(), gw.url("/slow/held"));
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        };
        eventually(Duration::from_secs(2), "the slow request is upstream", || async {
            slow.hits() == 1
        })
        .await;
        let full = problem(gw.get("/slow/rejected").await, 503).await;
        assert_eq!(full["detail"], open["detail"]);
        assert_eq!(held.await.unwrap().unwrap(), 200);

        for body in [&open, &full] {
            let text = body.to_string();
            for leak in [
                "payments-internal",
                "ledger-internal",
                "failing",
                "concurrency",
                &flaky.address(),
                &slow.address(),
            ] {
                assert!(!text.contains(leak), "`{leak}` in {text}");
            }
        }
        // The operator's log keeps the full story under each request id.
        for (body, want) in [
            (&open, "`payments-internal` is failing"),
            (&full, "`ledger-internal` has reached its concurrency limit"),
        ] {
            let id = body["request_id"].as_str().unwrap().to_string();
            eventually(Duration::from_secs(3), want, || async {
                gw.stderr()
                    .lines()
                    .any(|l| l.contains(&format!("request {id}: 503")) && l.contains(want))
            })
            .await;
        }
    })
    .await
}
