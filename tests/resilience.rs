//! Resilience against real, misbehaving upstreams on loopback: retries (which failures,
//! which methods, `X-Portico-Attempts`), the retry budget under a total outage, deadlines
//! and per-try timeouts, `Retry-After`, cluster and endpoint circuit breakers, bulkhead
//! isolation (fixed and adaptive), and an instance killed under steady load.
//!
//! Fault injection: an [`Upstream`] that is stopped (connections refused), answers 503 or
//! 500, answers slowly, or a raw TCP server that resets the connection before answering.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const PROBLEM_JSON: &str = "application/problem+json";

/// No passive ejection, so the retry and breaker paths are exercised on every request
/// instead of the failing endpoint quietly leaving the rotation.
const NO_OUTLIER: &str = "outlier = { consecutive_5xx = 0, consecutive_connect_failures = 0 }";

fn attempts(resp: &reqwest::Response) -> Option<u32> {
    header(resp, "x-portico-attempts").and_then(|v| v.parse().ok())
}

/// Checks a gateway-made problem response and returns its body.
async fn problem(resp: reqwest::Response, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(resp.status(), status, "{:?}", resp.headers());
    assert_eq!(header(&resp, "content-type").as_deref(), Some(PROBLEM_JSON));
    let body: serde_json::Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["type"],
        format!("urn:portico:problem:{kind}"),
        "{body}"
    );
    body
}

// ---------------------------------------------------------------------------------------
// (a) idempotent requests ride over a dead or failing instance
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_succeeds_through_retries_while_one_instance_is_down() {
    bounded(async {
        let live = Upstream::start("live").await;
        let mut dead = Upstream::start("dead").await;
        let gw = Gateway::config()
            .route_with("r", "/", "c", "retry = { attempts = 3 }")
            .cluster_with("c", &[&live, &dead], NO_OUTLIER)
            .no_access_log()
            .start()
            .await;
        // Warm both instances' keepalive connections, then stop one: its pooled
        // connections break and new connections are refused.
        let warm = spread(&gw, "/warm", 4).await;
        assert_eq!(warm.get("dead"), Some(&2), "{warm:?}");
        dead.stop().await;

        let mut retried = 0;
        for i in 0..40 {
            let resp = gw.get(&format!("/item/{i}")).await;
            assert_eq!(
                resp.status(),
                200,
                "request {i} saw an error while one instance is down"
            );
            assert_eq!(header(&resp, "x-upstream").as_deref(), Some("live"));
            match attempts(&resp) {
                Some(1) => {}
                Some(2) => retried += 1,
                other => panic!("X-Portico-Attempts {other:?} (1 or 2 expected)"),
            }
        }
        assert!(
            retried >= 10,
            "round robin sends about half the first attempts to the dead instance; \
             {retried} of 40 were retried"
        );
        let metrics = gw.metrics().await;
        assert!(
            metric_sum(&metrics, "portico_retries_total", &[("cluster", "c")]) >= retried as f64,
            "{metrics}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_succeeds_through_retries_while_one_instance_answers_503() {
    bounded(async {
        let good = Upstream::start("good").await;
        let bad = Upstream::with_status("bad", 503).await;
        let gw = Gateway::config()
            .route_with("r", "/", "c", "retry = { attempts = 3 }")
            .cluster_with("c", &[&good, &bad], NO_OUTLIER)
            .start()
            .await;
        let mut retried = 0;
        for i in 0..40 {
            let resp = gw.get(&format!("/item/{i}")).await;
            assert_eq!(resp.status(), 200, "request {i}");
            assert_eq!(header(&resp, "x-upstream").as_deref(), Some("good"));
            if attempts(&resp) == Some(2) {
                retried += 1;
            }
        }
        assert!(retried >= 10, "{retried} of 40 retried");
        assert_eq!(bad.hits(), retried, "each retried request met `bad` once");
        assert_eq!(good.hits(), 40);
        // The access log records the attempts of each request.
        let lines = gw.wait_access_log(40).await;
        let logged_retried = lines.iter().filter(|l| l["attempts"] == 2).count();
        assert_eq!(logged_retried, retried, "attempts in the access log");
        assert!(lines.iter().all(|l| l["status"] == 200));
    })
    .await
}

// ---------------------------------------------------------------------------------------
// (b) which methods are retried
// ---------------------------------------------------------------------------------------

/// Two instances that both answer 503, behind `/strict` (idempotent methods only) and
/// `/any` (`non_idempotent = true`).
async fn both_503() -> (Upstream, Upstream, Gateway) {
    let a = Upstream::with_status("a", 503).await;
    let b = Upstream::with_status("b", 503).await;
    let gw = Gateway::config()
        .route_with(
            "strict",
            "/strict",
            "c",
            r#"retry = { attempts = 3, backoff_base = "1ms", backoff_cap = "5ms" }"#,
        )
        .route_with(
            "any",
            "/any",
            "c",
            r#"retry = { attempts = 3, non_idempotent = true, backoff_base = "1ms", backoff_cap = "5ms" }"#,
        )
        .cluster_with("c", &[&a, &b], NO_OUTLIER)
        .no_access_log()
        .start()
        .await;
    (a, b, gw)
}

fn bodies(ups: &[&Upstream]) -> Vec<String> {
    ups.iter()
        .flat_map(|u| u.requests())
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_answered_503_is_not_retried() {
    bounded(async {
        let (a, b, gw) = both_503().await;
        let resp = gw.post("/strict/orders", "order-1", &[]).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(attempts(&resp), Some(1));
        assert_eq!(
            a.hits() + b.hits(),
            1,
            "a POST must reach the upstream once"
        );
        // PATCH is not idempotent either; GET, PUT and DELETE are.
        let resp = gw
            .client
            .patch(gw.url("/strict/orders/1"))
            .body("x")
            .send()
            .await
            .expect("PATCH");
        assert_eq!(resp.status(), 503);
        assert_eq!(a.hits() + b.hits(), 2);
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let before = a.hits() + b.hits();
            let resp = gw
                .client
                .request(method.clone(), gw.url("/strict/orders/1"))
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 503);
            assert_eq!(attempts(&resp), Some(3), "{method}");
            assert_eq!(a.hits() + b.hits() - before, 3, "{method} is retried");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_idempotency_key_is_retried_with_its_body() {
    bounded(async {
        let (a, b, gw) = both_503().await;
        let resp = gw
            .post("/strict/orders", "order-2", &[("Idempotency-Key", "k-2")])
            .await;
        assert_eq!(resp.status(), 503);
        assert_eq!(attempts(&resp), Some(3));
        assert_eq!(a.hits() + b.hits(), 3);
        assert!(
            a.hits() >= 1 && b.hits() >= 1,
            "retries go to the other instance"
        );
        assert_eq!(
            bodies(&[&a, &b]),
            ["order-2"; 3],
            "the body is replayed intact"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_idempotent_route_retries_post() {
    bounded(async {
        let (a, b, gw) = both_503().await;
        let resp = gw.post("/any/orders", "order-3", &[]).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(attempts(&resp), Some(3));
        assert_eq!(bodies(&[&a, &b]), ["order-3"; 3]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_succeeds_on_retry_when_the_other_instance_is_healthy() {
    bounded(async {
        let good = Upstream::start("good").await;
        let bad = Upstream::with_status("bad", 503).await;
        let gw = Gateway::config()
            .route_with("r", "/", "c", "retry = { attempts = 2 }")
            .cluster_with("c", &[&bad, &good], NO_OUTLIER)
            .no_access_log()
            .start()
            .await;
        for i in 0..6 {
            let key = format!("key-{i}");
            let resp = gw
                .post("/orders", "payload", &[("Idempotency-Key", &key)])
                .await;
            assert_eq!(resp.status(), 200, "POST {i} with Idempotency-Key");
        }
        assert_eq!(good.hits(), 6);
        assert!(bad.requests().iter().all(|r| r.body == "payload"));
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Connection reset before a response
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_response_is_retried_for_get_but_not_for_post() {
    bounded(async {
        let resetter = Resetter::start().await;
        let good = Upstream::start("good").await;
        let gw = Gateway::config()
            .route_with("r", "/", "c", "retry = { attempts = 2 }")
            .cluster_at("c", &[resetter.addr, good.addr], NO_OUTLIER)
            .no_access_log()
            .start()
            .await;
        for i in 0..10 {
            let resp = gw.get(&format!("/g/{i}")).await;
            assert_eq!(resp.status(), 200, "GET {i}");
        }
        let reset_gets = resetter.seen();
        assert!(
            reset_gets >= 3,
            "round robin sent {reset_gets} GETs to the resetter"
        );

        let mut failed = 0;
        for i in 0..10 {
            let resp = gw.post(&format!("/p/{i}"), "body", &[]).await;
            match resp.status().as_u16() {
                200 => {}
                502 => failed += 1,
                s => panic!("POST {i}: unexpected {s}"),
            }
        }
        let reset_posts = resetter.seen() - reset_gets;
        assert!(reset_posts >= 3, "{reset_posts} POSTs met the resetter");
        assert_eq!(
            failed, reset_posts,
            "a POST whose connection was reset after sending is not retried"
        );
        assert_eq!(good.hits(), 10 + 10 - reset_posts);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// (c) the retry budget
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_under_a_total_outage() {
    bounded(async {
        let a = Upstream::with_status("a", 503).await;
        let b = Upstream::with_status("b", 503).await;
        let gw = Gateway::config()
            .route_with(
                "r",
                "/",
                "c",
                r#"retry = { attempts = 3, backoff_base = "1ms", backoff_cap = "2ms" }"#,
            )
            .cluster_with("c", &[&a, &b], &format!(r#"
retry_budget = {{ ratio = 0.1, min_per_second = 1 }}
{NO_OUTLIER}
"#))
            .no_access_log()
            .start()
            .await;
        let requests = 150;
        let start = Instant::now();
        let mut last_attempts = Vec::new();
        for i in 0..requests {
            let resp = gw.get(&format!("/x/{i}")).await;
            assert_eq!(resp.status(), 503);
            last_attempts.push(attempts(&resp).unwrap_or(0));
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_secs(9),
            "all within one budget window"
        );
        let hits = a.hits() + b.hits();
        // Retries ≤ ratio × requests + min_per_second × the 10 s window.
        let ceiling = requests + (requests as f64 * 0.1).ceil() as usize + 10;
        assert!(
            hits <= ceiling,
            "{hits} upstream hits for {requests} requests: the budget allows at most {ceiling}"
        );
        assert!(hits > requests, "some retries were allowed: {hits}");
        let metrics = gw.metrics().await;
        let retries = metric_sum(&metrics, "portico_retries_total", &[("cluster", "c")]);
        assert_eq!(retries as usize, hits - requests, "{metrics}");
        let exhausted = metric_value(
            &metrics,
            "portico_retry_budget_exhausted_total",
            &[("cluster", "c")],
        )
        .unwrap_or(0.0);
        assert!(exhausted >= 1.0, "{metrics}");
        // Once the floor is spent, only about one request in ten (the ratio) is retried.
        let late_retried = last_attempts[50..].iter().filter(|&&n| n > 1).count();
        assert!(
            late_retried <= 11,
            "{late_retried} of the last 100 requests were retried with a 0.1 ratio: {last_attempts:?}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------
// (d) deadlines and per-try timeouts
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_deadline_turns_a_slow_upstream_into_a_timely_504() {
    bounded(async {
        let slow1 = Upstream::start("slow1").await;
        let slow2 = Upstream::start("slow2").await;
        slow1.set_delay(Duration::from_secs(3));
        slow2.set_delay(Duration::from_secs(3));
        let gw = Gateway::config()
            .route_with("plain", "/plain", "one", r#"timeout = "300ms""#)
            .route_with(
                "retrying",
                "/retrying",
                "two",
                r#"
timeout = "300ms"
retry = { attempts = 3, backoff_base = "1ms", backoff_cap = "5ms" }
"#,
            )
            .cluster("one", &[&slow1])
            .cluster_with("two", &[&slow1, &slow2], NO_OUTLIER)
            .no_access_log()
            .start()
            .await;
        for path in ["/plain/1", "/retrying/1"] {
            let start = Instant::now();
            let resp = gw.get(path).await;
            let elapsed = start.elapsed();
            assert_eq!(resp.status(), 504, "{path}");
            assert_eq!(header(&resp, "content-type").as_deref(), Some(PROBLEM_JSON));
            assert!(
                elapsed >= Duration::from_millis(280) && elapsed < Duration::from_millis(900),
                "{path}: the 300 ms deadline answered after {elapsed:?}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_moves_a_slow_attempt_to_the_fast_instance() {
    bounded(async {
        let slow = Upstream::start("slow").await;
        let fast = Upstream::start("fast").await;
        slow.set_delay(Duration::from_secs(3));
        let gw = Gateway::config()
            .route_with(
                "r",
                "/",
                "c",
                r#"
timeout = "2s"
retry = { attempts = 2, per_try_timeout = "200ms", backoff_base = "1ms", backoff_cap = "5ms" }
"#,
            )
            .cluster_with("c", &[&slow, &fast], NO_OUTLIER)
            .no_access_log()
            .start()
            .await;
        let mut moved = 0;
        for i in 0..6 {
            let start = Instant::now();
            let resp = gw.get(&format!("/x/{i}")).await;
            let elapsed = start.elapsed();
            assert_eq!(resp.status(), 200, "request {i}");
            assert_eq!(header(&resp, "x-upstream").as_deref(), Some("fast"));
            if attempts(&resp) == Some(2) {
                moved += 1;
                assert!(
                    elapsed >= Duration::from_millis(190) && elapsed < Duration::from_millis(800),
                    "a retried request took {elapsed:?} (per-try timeout 200 ms)"
                );
            } else {
                assert!(elapsed < Duration::from_millis(200), "{elapsed:?}");
            }
        }
        assert!(moved >= 1, "no request met the slow instance first");
        assert_eq!(slow.hits(), moved);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// (e) Retry-After
// ---------------------------------------------------------------------------------------

/// One instance answering 503 with `Retry-After: retry_after`; a route retrying once with
/// the given backoff cap. Returns the gap between the two attempts' arrivals.
async fn retry_gap(retry_after: &str, backoff_cap: &str) -> Duration {
    let up = Upstream::with_status("busy", 503).await;
    up.add_response_header("Retry-After", retry_after);
    let gw = Gateway::config()
        .route_with(
            "r",
            "/",
            "c",
            &format!(
                r#"retry = {{ attempts = 2, backoff_base = "5ms", backoff_cap = "{backoff_cap}" }}"#
            ),
        )
        .cluster_with("c", &[&up], NO_OUTLIER)
        .no_access_log()
        .start()
        .await;
    let resp = gw.get("/x").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(attempts(&resp), Some(2));
    let arrivals = up.arrivals();
    assert_eq!(arrivals.len(), 2);
    arrivals[1] - arrivals[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_before_the_next_attempt() {
    bounded(async {
        let gap = retry_gap("1", "3s").await;
        assert!(
            gap >= Duration::from_secs(1) && gap < Duration::from_millis(1600),
            "Retry-After: 1 with a 3 s cap: second attempt {gap:?} after the first"
        );
        // The HTTP-date form, a minute ahead: the wait is the cap (800 ms), where an
        // unparsed date would leave only the 5 ms backoff.
        let at = std::time::SystemTime::now() + Duration::from_secs(60);
        let gap = retry_gap(&httpdate::fmt_http_date(at), "800ms").await;
        assert!(
            gap >= Duration::from_millis(800) && gap < Duration::from_millis(1400),
            "Retry-After as a date a minute ahead, cap 800 ms: second attempt {gap:?} after the first"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_by_backoff_cap() {
    bounded(async {
        let gap = retry_gap("10", "300ms").await;
        assert!(
            gap >= Duration::from_millis(300) && gap < Duration::from_millis(900),
            "Retry-After: 10 with a 300 ms cap: second attempt {gap:?} after the first"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------
// (f) circuit breakers
// ---------------------------------------------------------------------------------------

/// One instance behind a cluster breaker tripping on 3 consecutive failures.
async fn breaker_setup(open_for: &str) -> (Upstream, Gateway) {
    let up = Upstream::with_status("flaky", 500).await;
    let gw = Gateway::config()
        .route("r", "/", "c")
        .cluster_with("c", &[&up], &format!(r#"
{NO_OUTLIER}
breaker = {{ consecutive_failures = 3, min_requests = 1000, open_for = "{open_for}", max_open = "10s", half_open_probes = 2 }}
"#))
        .no_access_log()
        .start()
        .await;
    (up, gw)
}

/// Sends three failing requests, which trip the breaker; returns when the tripping answer
/// came, once the breaker reports open.
async fn trip(gw: &Gateway, up: &Upstream) -> Instant {
    for i in 0..3 {
        let resp = gw.get(&format!("/fail/{i}")).await;
        assert_eq!(resp.status(), 500, "failure {i} reaches the upstream");
    }
    let tripped = Instant::now();
    assert_eq!(up.hits(), 3);
    wait_breaker(gw, "open").await;
    tripped
}

async fn breaker_state(gw: &Gateway) -> String {
    gw.cluster_status("c").await["breaker"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// Waits for the cluster breaker to report `state`. Outcomes are recorded in the logging
/// phase, just after the client got its answer, so the state may trail it briefly.
async fn wait_breaker(gw: &Gateway, state: &str) {
    eventually(
        Duration::from_millis(500),
        &format!("cluster breaker {state}"),
        || async { breaker_state(gw).await == state },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_breaker_opens_fails_fast_half_opens_and_closes() {
    bounded(async {
        let (up, gw) = breaker_setup("400ms").await;
        assert_eq!(breaker_state(&gw).await, "closed");
        let tripped = trip(&gw, &up).await;

        // Open: fail fast with a problem and Retry-After, without touching the upstream.
        for i in 0..5 {
            let start = Instant::now();
            let resp = gw.get(&format!("/open/{i}")).await;
            assert!(start.elapsed() < Duration::from_millis(200));
            let retry_after = header(&resp, "retry-after");
            let body = problem(resp, 503, "circuit-open").await;
            let secs: u64 = retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("Retry-After {retry_after:?} on {body}"));
            assert_eq!(secs, 1, "Retry-After for a 400 ms open rounds up to 1 s");
        }
        assert_eq!(up.hits(), 3, "an open breaker sends nothing upstream");
        assert_eq!(breaker_state(&gw).await, "open");
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_cluster_breaker_state",
                &[("cluster", "c")]
            ),
            Some(1.0),
            "{metrics}"
        );
        assert!(
            metric_value(
                &metrics,
                "portico_breaker_rejections_total",
                &[("cluster", "c")]
            )
            .is_some_and(|n| n >= 5.0),
            "{metrics}"
        );

        // The upstream recovers; after open_for the probes go through and close it.
        up.set_status(200);
        eventually(Duration::from_secs(3), "a half-open probe", || async {
            gw.get("/probe").await.status() == 200
        })
        .await;
        let open_time = tripped.elapsed();
        assert!(
            open_time >= Duration::from_millis(350),
            "the breaker let a probe through after only {open_time:?} (open_for 400 ms)"
        );
        let resp = gw.get("/probe2").await;
        assert_eq!(resp.status(), 200, "the second probe");
        wait_breaker(&gw, "closed").await;
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_cluster_breaker_state",
                &[("cluster", "c")]
            ),
            Some(0.0),
            "{metrics}"
        );
        for i in 0..10 {
            assert_eq!(gw.get(&format!("/closed/{i}")).await.status(), 200);
        }
        assert_eq!(up.hits(), 3 + 2 + 10);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_probe_reopens_the_breaker_for_longer() {
    bounded(async {
        let (up, gw) = breaker_setup("300ms").await;
        let tripped = trip(&gw, &up).await;
        // Still failing: the first probe fails and re-opens the breaker.
        eventually(Duration::from_secs(3), "the first probe", || async {
            gw.get("/probe").await.status() == 500
        })
        .await;
        let failed_probe = Instant::now();
        let first_open = failed_probe - tripped;
        assert_eq!(up.hits(), 4, "one probe");
        wait_breaker(&gw, "open").await;
        let resp = gw.get("/after-probe").await;
        problem(resp, 503, "circuit-open").await;

        up.set_status(200);
        eventually(Duration::from_secs(5), "the next probe", || async {
            gw.get("/probe").await.status() == 200
        })
        .await;
        let second_open = failed_probe.elapsed();
        assert!(
            second_open >= Duration::from_millis(550) && second_open > first_open,
            "the re-opened breaker waited {second_open:?}; the first open lasted {first_open:?} \
             (open_for 300 ms, doubling)"
        );
        assert_eq!(up.hits(), 5);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_breaker_takes_one_endpoint_out_while_the_other_serves() {
    bounded(async {
        let good = Upstream::start("good").await;
        let bad = Upstream::with_status("bad", 500).await;
        let gw = Gateway::config()
            .route("r", "/", "c")
            .cluster_with(
                "c",
                &[&good, &bad],
                &format!(
                    r#"
{NO_OUTLIER}
endpoint_breaker = {{ consecutive_failures = 2, min_requests = 1000, open_for = "10s" }}
"#
                ),
            )
            .no_access_log()
            .start()
            .await;
        let mut errors = 0;
        for i in 0..30 {
            let resp = gw.get(&format!("/x/{i}")).await;
            match resp.status().as_u16() {
                200 => assert_eq!(header(&resp, "x-upstream").as_deref(), Some("good")),
                500 => errors += 1,
                s => panic!("request {i}: {s}"),
            }
        }
        assert_eq!(bad.hits(), 2, "two failures open the endpoint's breaker");
        assert_eq!(errors, 2);
        assert_eq!(good.hits(), 28);
        let bad_status = gw.endpoint_status("c", &bad.address()).await;
        assert_eq!(bad_status["breaker"], "open", "{bad_status}");
        let good_status = gw.endpoint_status("c", &good.address()).await;
        assert_eq!(good_status["breaker"], "closed", "{good_status}");
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_endpoint_breaker_state",
                &[("cluster", "c"), ("endpoint", &bad.address())]
            ),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            metric_value(
                &metrics,
                "portico_endpoint_breaker_state",
                &[("cluster", "c"), ("endpoint", &good.address())]
            ),
            Some(0.0),
            "{metrics}"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------
// (g, h) bulkheads
// ---------------------------------------------------------------------------------------

/// `n` sequential `GET url`, 5 ms apart; every answer must be 200. Returns the latencies.
async fn latencies(client: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let resp = client.get(url).send().await.expect("request");
        assert_eq!(resp.status(), 200, "{url}");
        let _ = resp.bytes().await;
        out.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkhead_isolates_a_saturated_cluster() {
    bounded(async {
        let slow = Upstream::slow("slow", Duration::from_millis(400)).await;
        let fast = Upstream::start("fast").await;
        let gw = Gateway::config()
            .route("slow", "/slow", "c")
            .route("fast", "/fast", "b")
            .cluster_with(
                "c",
                &[&slow],
                r#"bulkhead = { max_concurrent = 4, max_queue = 2, queue_timeout = "50ms" }"#,
            )
            .cluster("b", &[&fast])
            .threads(2)
            .no_access_log()
            .start()
            .await;
        let probe = http_client();
        let fast_url = gw.url("/fast/x");
        latencies(&probe, &fast_url, 10).await; // warm-up
        // 150 samples, so one scheduling hiccup on this shared machine is not the p99.
        let baseline = latencies(&probe, &fast_url, 150).await;

        // Flood the slow cluster from 30 concurrent clients for 2 s.
        let ok = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
        let mut flood = Vec::new();
        let clients: Vec<reqwest::Client> = (0..30).map(|_| http_client()).collect();
        let flood_until = Instant::now() + Duration::from_secs(2);
        for c in clients {
            let (url, ok, rejected) = (gw.url("/slow/x"), ok.clone(), rejected.clone());
            flood.push(tokio::spawn(async move {
                while Instant::now() < flood_until {
                    let start = Instant::now();
                    let resp = c.get(&url).send().await.expect("flood request");
                    let status = resp.status().as_u16();
                    let retry_after = resp.headers().contains_key("retry-after");
                    let body = resp.text().await.unwrap_or_default();
                    match status {
                        200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        503 => {
                            assert!(body.contains("urn:portico:problem:overloaded"), "{body}");
                            assert!(retry_after, "a bulkhead 503 carries Retry-After");
                            rejected.lock().unwrap().push(start.elapsed());
                            // Come back soon, but do not turn the test into a CPU
                            // benchmark of 503s on two shared cores.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        s => panic!("flood request: {s} {body}"),
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let during = latencies(&probe, &fast_url, 150).await;
        let admin = gw.cluster_status("c").await;
        for f in flood {
            f.await.expect("flood task");
        }

        let rejected = rejected.lock().unwrap().clone();
        assert!(!rejected.is_empty(), "30 clients on 4 slots + 2 queued: some must be refused");
        // Refused at once (queue full) or after queue_timeout (50 ms): never after waiting
        // for a slot, which takes up to the slow upstream's 400 ms.
        let (refused_p50, refused_p95) = (percentile(&rejected, 0.5), percentile(&rejected, 0.95));
        assert!(
            refused_p50 < Duration::from_millis(100) && refused_p95 < Duration::from_millis(350),
            "refusals must be quick (queue_timeout 50 ms): p50 {refused_p50:?}, p95 {refused_p95:?}"
        );
        assert!(ok.load(Ordering::SeqCst) >= 4, "the admitted requests are served");
        assert!(
            slow.max_in_flight() <= 4,
            "the slow upstream saw {} requests at once (max_concurrent 4)",
            slow.max_in_flight()
        );
        assert_eq!(admin["bulkhead"]["limit"], 4, "{admin}");
        assert!(
            admin["bulkhead"]["in_flight"].as_u64().is_some_and(|n| n <= 4),
            "{admin}"
        );
        let metrics = gw.metrics().await;
        let counted = metric_sum(
            &metrics,
            "portico_bulkhead_rejections_total",
            &[("cluster", "c")],
        );
        assert_eq!(counted as usize, rejected.len(), "{metrics}");

        let (base_p99, during_p99) = (percentile(&baseline, 0.99), percentile(&during, 0.99));
        assert!(
            during_p99 < base_p99 + Duration::from_millis(100),
            "cluster b's p99 went from {base_p99:?} to {during_p99:?} while c was flooded"
        );
        println!(
            "bulkhead isolation: b p50/p99 {:?}/{:?} before, {:?}/{:?} during; {} refused (p50 {:?}, p95 {:?}), {} served",
            percentile(&baseline, 0.5),
            base_p99,
            percentile(&during, 0.5),
            during_p99,
            rejected.len(),
            refused_p50,
            refused_p95,
            ok.load(Ordering::SeqCst)
        );
    })
    .await
}

/// Drives an adaptive bulkhead with a steady (10 ms) then a slow (80 ms) upstream; returns
/// the limit after each phase.
async fn adaptive_limits(extra_cluster_config: &str) -> (u64, u64) {
    let up = Upstream::start("adaptive").await;
    let gw = Gateway::config()
        .route("r", "/", "c")
        .cluster_with("c", &[&up], &format!(r#"
bulkhead = {{ max_concurrent = 32, max_queue = 256, queue_timeout = "3s", mode = "adaptive", min_concurrent = 2 }}
{extra_cluster_config}
"#))
        .threads(2)
        .no_access_log()
        .start()
        .await;
    let limit = |s: serde_json::Value| {
        s["bulkhead"]["limit"]
            .as_u64()
            .unwrap_or_else(|| panic!("no bulkhead.limit in {s}"))
    };
    assert_eq!(limit(gw.cluster_status("c").await), 32);

    // Steady phase: 10 ms per request, one at a time; the limiter learns the base latency
    // (a steady 10 ms rather than sub-millisecond loopback, whose relative jitter alone
    // would move a gradient limiter).
    up.set_delay(Duration::from_millis(10));
    let c = http_client();
    for i in 0..50 {
        let resp = c
            .get(gw.url(&format!("/steady/{i}")))
            .send()
            .await
            .expect("steady request");
        assert_eq!(resp.status(), 200);
    }
    let steady_limit = limit(gw.cluster_status("c").await);

    // Slow phase: 80 ms per request, 8 at a time.
    up.set_delay(Duration::from_millis(80));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in (0..8).map(|_| http_client()).collect::<Vec<_>>() {
        let (url, sent) = (gw.url("/slow"), sent.clone());
        tasks.push(tokio::spawn(async move {
            while sent.fetch_add(1, Ordering::SeqCst) < 160 {
                let resp = c.get(&url).send().await.expect("slow request");
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("slow task");
    }
    let slow_limit = limit(gw.cluster_status("c").await);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "portico_bulkhead_limit", &[("cluster", "c")]),
        Some(slow_limit as f64),
        "{metrics}"
    );
    println!("adaptive bulkhead limit: 32 at start, {steady_limit} at a steady 10 ms, {slow_limit} after the slowdown to 80 ms");
    (steady_limit, slow_limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_bulkhead_limit_falls_when_the_upstream_slows_down() {
    bounded(async {
        let (fast, slow) = adaptive_limits("").await;
        assert!(
            slow < fast && slow <= 16,
            "the adaptive limit went {fast} → {slow} when latency rose from 10 ms to 80 ms"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_bulkhead_limit_falls_alongside_a_cluster_breaker() {
    bounded(async {
        let (fast, slow) = adaptive_limits(r#"breaker = { consecutive_failures = 100 }"#).await;
        assert!(
            slow < fast && slow <= 16,
            "the adaptive limit went {fast} → {slow} when latency rose from 10 ms to 80 ms"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------
// (i) an instance killed under steady load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_killed_under_steady_load_causes_no_failed_requests() {
    bounded(async {
        let a = Upstream::start("a").await;
        let mut b = Upstream::start("b").await;
        // A little service time, so requests are in flight on `b` when it dies.
        a.set_delay(Duration::from_millis(5));
        b.set_delay(Duration::from_millis(5));
        let gw = Gateway::config()
            .route_with(
                "r",
                "/",
                "c",
                r#"retry = { attempts = 3, backoff_base = "5ms", backoff_cap = "50ms" }"#,
            )
            .cluster("c", &[&a, &b])
            .threads(2)
            .no_access_log()
            .start()
            .await;
        let total = 400;
        let tasks = 8;
        let per_task = total / tasks;
        let clients: Vec<reqwest::Client> = (0..tasks).map(|_| http_client()).collect();
        let start = Instant::now();
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut workers = Vec::new();
        for (t, c) in clients.into_iter().enumerate() {
            let (url, failures) = (gw.url("/load"), failures.clone());
            workers.push(tokio::spawn(async move {
                // 50 requests over 2 s per task: 200 requests/s in all.
                let mut tick = tokio::time::interval(Duration::from_millis(40));
                for i in 0..per_task {
                    tick.tick().await;
                    match c.get(&url).send().await {
                        Ok(resp) if resp.status() == 200 => {}
                        Ok(resp) => failures.lock().unwrap().push(format!(
                            "task {t} #{i}: {} attempts {:?}",
                            resp.status(),
                            header(&resp, "x-portico-attempts")
                        )),
                        Err(e) => failures.lock().unwrap().push(format!("task {t} #{i}: {e}")),
                    }
                }
            }));
        }
        tokio::time::sleep_until((start + Duration::from_secs(1)).into()).await;
        let b_before = b.hits();
        b.stop().await;
        for w in workers {
            w.await.expect("load task");
        }
        let failures = failures.lock().unwrap().clone();
        assert!(
            b_before >= 10,
            "b served its share before the kill: {b_before}"
        );
        assert!(
            failures.is_empty(),
            "{} of {total} requests failed after killing one of two instances: {failures:?}",
            failures.len()
        );
        // Requests that met the dying instance were answered by the other one.
        assert!(a.hits() + b.hits() >= total);
        assert!(a.hits() >= total - b_before, "a served the rest");
    })
    .await
}
