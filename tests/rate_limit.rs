//! The `rate-limit` plugin end to end: two real gateway processes share one cluster-wide
//! limit through the machine's real Redis (`PORTICO_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`; skipped loudly when absent, a failure under `CI=true`), in front
//! of a real HTTP upstream on loopback. Requests alternate between the two gateways and exactly
//! the limit gets through.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// The Redis URL, or `None` after a loud SKIP (a panic under `CI=true`).
async fn redis_url() -> Option<String> {
    let url = std::env::var("PORTICO_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    // A TCP probe: the gateways themselves tell whether Redis really answers (the route
    // fails closed, so a broken Redis shows up as 503s, never as a silent pass).
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&addr),
    );
    let why = match probe.await {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 2 s".to_owned(),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("Redis is required under CI=true but {url} is unreachable: {why}");
    }
    eprintln!(
        "\n!!!!!!!! SKIP two_gateways_share_one_redis_limit: no Redis at {url} ({why}). Start \
         redis-server or set PORTICO_TEST_REDIS_URL; under CI=true this test fails instead. \
         !!!!!!!!\n"
    );
    None
}

/// Route `/limited` through the rate-limit plugin on `redis` under `prefix`, and `/free`
/// without it, both to `up`.
fn routes(up: &Upstream, redis: &str, prefix: &str) -> Routes {
    Routes::new()
        .route_with(
            "limited",
            "/limited",
            "up",
            &format!(
                r#"
[[routes.plugins]]
name = "rate-limit"
rate = 5
period = "1m"
by = "client_ip"
redis = {{ url = "{redis}", prefix = "{prefix}", timeout = "1s", failure = "closed" }}"#
            ),
        )
        .route("free", "/free", "up")
        .cluster("up", &[up])
}

fn value<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_redis_limit() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("portico:test:{}:{nanos}:e2e:", std::process::id());
    // The upstream's body is its name.
    let up = Upstream::start("ok").await;
    let routes = routes(&up, &redis, &prefix);
    let gateways = [
        Gateway::builder(&routes).no_access_log().start().await,
        Gateway::builder(&routes).no_access_log().start().await,
    ];

    let mut passed = 0;
    let mut limited = 0;
    for i in 0..12 {
        let gateway = &gateways[i % 2];
        let resp = gateway.get(&format!("/limited/{i}")).await;
        match resp.status().as_u16() {
            200 => {
                // The node that served it reports the bucket as Redis left it.
                assert_eq!(value(&resp, "ratelimit-limit"), Some("5"), "request {i}");
                let remaining = (4 - passed).to_string();
                assert_eq!(
                    value(&resp, "ratelimit-remaining"),
                    Some(remaining.as_str())
                );
                assert_eq!(value(&resp, "ratelimit-policy"), Some("5;w=60"));
                assert_eq!(resp.text().await.unwrap(), "ok");
                passed += 1;
            }
            429 => {
                assert_eq!(value(&resp, "ratelimit-limit"), Some("5"));
                assert_eq!(value(&resp, "ratelimit-remaining"), Some("0"));
                assert_eq!(value(&resp, "ratelimit-policy"), Some("5;w=60"));
                // One request back every 12 s; the bucket is full again a minute after.
                let retry: u64 = value(&resp, "retry-after").unwrap().parse().unwrap();
                assert!((11..=12).contains(&retry), "Retry-After {retry}");
                let reset: u64 = value(&resp, "ratelimit-reset").unwrap().parse().unwrap();
                assert!((55..=60).contains(&reset), "RateLimit-Reset {reset}");
                assert_eq!(
                    value(&resp, "content-type"),
                    Some("application/problem+json")
                );
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["status"], 429);
                assert_eq!(body["instance"], format!("/limited/{i}"));
                limited += 1;
            }
            other => panic!(
                "request {i} via gateway {}: status {other}: {}\n{}",
                i % 2 + 1,
                resp.text().await.unwrap_or_default(),
                gateway.stderr()
            ),
        }
    }
    assert_eq!((passed, limited), (5, 7));
    // The decisions reach /metrics, summed over the two gateways.
    let mut decided = (0.0, 0.0);
    for gateway in &gateways {
        let text = gateway.metrics().await;
        let count = |decision| {
            metric_value(
                &text,
                "portico_rate_limit_decisions_total",
                &[("decision", decision)],
            )
            .unwrap_or(0.0)
        };
        decided.0 += count("allowed");
        decided.1 += count("limited");
    }
    assert_eq!(decided, (5.0, 7.0));
    assert_eq!(up.hits(), 5, "limited requests never reach the upstream");

    // A route without the plugin is not limited and carries no limit fields.
    for gateway in &gateways {
        let resp = gateway.get("/free").await;
        assert_eq!(resp.status(), 200);
        assert!(value(&resp, "ratelimit-limit").is_none());
    }
    assert_eq!(up.hits(), 7);
}

#[tokio::test]
async fn redis_failures_are_counted_and_fail_open_lets_requests_through() {
    bounded(async {
        let up = Upstream::start("ok").await;
        // Nothing listens there: every Redis call fails at once.
        let nowhere = free_addr();
        let routes = Routes::new()
            .route_with(
                "open",
                "/open",
                "up",
                &format!(
                    "\n[[routes.plugins]]\nname = \"rate-limit\"\nrate = 5\nperiod = \"1m\"\n\
                     redis = {{ url = \"redis://{nowhere}\", timeout = \"200ms\", failure = \"open\" }}"
                ),
            )
            .route_with(
                "closed",
                "/closed",
                "up",
                &format!(
                    "\n[[routes.plugins]]\nname = \"rate-limit\"\nrate = 5\nperiod = \"1m\"\n\
                     redis = {{ url = \"redis://{nowhere}\", timeout = \"200ms\", failure = \"closed\" }}"
                ),
            )
            .cluster("up", &[&up]);
        let gw = Gateway::builder(&routes).start().await;
        for i in 0..3 {
            assert_eq!(gw.get(&format!("/open/{i}")).await.status(), 200);
        }
        let resp = gw.get("/closed/1").await;
        assert_eq!(resp.status(), 503);
        let text = gw.metrics().await;
        let decision = |d| {
            metric_value(&text, "portico_rate_limit_decisions_total", &[("decision", d)])
                .unwrap_or(0.0)
        };
        assert_eq!(decision("failed_open"), 3.0, "{text}");
        assert_eq!(decision("failed_closed"), 1.0, "{text}");
        let failures = metric_value(
            &text,
            "portico_rate_limit_redis_failures_total",
            &[("kind", "error")],
        )
        .unwrap_or(0.0)
            + metric_value(
                &text,
                "portico_rate_limit_redis_failures_total",
                &[("kind", "timeout")],
            )
            .unwrap_or(0.0);
        assert_eq!(failures, 4.0, "{text}");
    })
    .await;
}
