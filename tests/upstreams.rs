//! Upstream clusters with real instances: how each load-balancing algorithm spreads
//! traffic, active health checks taking an instance out and bringing it back, and passive
//! outlier ejection on 5xx answers and connect failures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// One route `/` to cluster `c` with the given cluster body.
fn one_cluster(cluster_body: &str) -> Routes {
    Routes::new()
        .route("all", "/", "c")
        .cluster_body("c", cluster_body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    bounded(async {
        let heavy = Upstream::start("heavy").await;
        let light = Upstream::start("light").await;
        let gw = Gateway::builder(one_cluster(&format!(
            "lb = \"round_robin\"\nendpoints = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}]",
            heavy.addr, light.addr
        )))
        .no_access_log()
        .start()
        .await;
        let n = 400;
        let seen = spread(&gw, "/rr", n).await;
        let heavy_share = seen.get("heavy").copied().unwrap_or(0) as f64 / n as f64;
        assert!(
            (heavy_share - 0.75).abs() <= 0.03,
            "3:1 weights should give ~75% to the heavy instance: {seen:?}"
        );
        assert_eq!(heavy.hits() + light.hits(), n);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_a_slow_instance() {
    bounded(async {
        let fast = Upstream::start("fast").await;
        let slow = Upstream::slow("slow", Duration::from_millis(200)).await;
        let gw = Gateway::builder(one_cluster(&format!(
            "lb = \"least_request\"\nendpoints = {}",
            endpoints(&[&fast, &slow])
        )))
        .threads(2)
        .no_access_log()
        .start()
        .await;
        let total = 120;
        let sent = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
        let mut workers = Vec::new();
        for _ in 0..8 {
            let (client, url) = (gw.client.clone(), gw.url("/lr"));
            let (sent, seen) = (sent.clone(), seen.clone());
            workers.push(tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::SeqCst) < total {
                    let resp = client.get(&url).send().await.expect("request");
                    assert_eq!(resp.status(), 200);
                    *seen.lock().unwrap().entry(upstream_of(&resp)).or_insert(0) += 1;
                }
            }));
        }
        for w in workers {
            w.await.expect("worker");
        }
        let seen = seen.lock().unwrap().clone();
        let slow_n = seen.get("slow").copied().unwrap_or(0);
        let fast_n = seen.get("fast").copied().unwrap_or(0);
        assert_eq!(slow_n + fast_n, total, "{seen:?}");
        assert!(
            slow_n * 4 < total,
            "the slow instance should get well under a quarter of the traffic: {seen:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_header_is_sticky_and_spreads_keys() {
    bounded(async {
        let ups = [
            Upstream::start("u0").await,
            Upstream::start("u1").await,
            Upstream::start("u2").await,
        ];
        let gw = Gateway::builder(one_cluster(&format!(
            "lb = \"consistent_hash\"\nhash = {{ by = \"header\", name = \"X-User\" }}\nendpoints = {}",
            endpoints(&[&ups[0], &ups[1], &ups[2]])
        )))
        .no_access_log()
        .start()
        .await;
        let mut owners = BTreeSet::new();
        for key in 0..24 {
            let user = format!("user-{key}");
            let mut seen = BTreeSet::new();
            for _ in 0..4 {
                let resp = gw.get_with("/ch", &[("X-User", &user)]).await;
                assert_eq!(resp.status(), 200);
                seen.insert(upstream_of(&resp));
            }
            assert_eq!(seen.len(), 1, "{user} moved between instances: {seen:?}");
            owners.extend(seen);
        }
        assert!(
            owners.len() >= 2,
            "24 keys should land on more than one of 3 instances: {owners:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_cookie_is_sticky_and_spreads_keys() {
    bounded(async {
        let ups = [
            Upstream::start("u0").await,
            Upstream::start("u1").await,
            Upstream::start("u2").await,
        ];
        let gw = Gateway::builder(one_cluster(&format!(
            "lb = \"consistent_hash\"\nhash = {{ by = \"cookie\", name = \"sid\" }}\nendpoints = {}",
            endpoints(&[&ups[0], &ups[1], &ups[2]])
        )))
        .no_access_log()
        .start()
        .await;
        let mut owners = BTreeSet::new();
        for key in 0..24 {
            let mut seen = BTreeSet::new();
            // Other cookies around it and their order do not matter.
            for cookie in [
                format!("sid=session-{key}"),
                format!("theme=dark; sid=session-{key}"),
                format!("sid=session-{key}; lang=en-{}", key * 7),
            ] {
                let resp = gw.get_with("/ch", &[("Cookie", &cookie)]).await;
                assert_eq!(resp.status(), 200);
                seen.insert(upstream_of(&resp));
            }
            assert_eq!(seen.len(), 1, "session-{key} moved between instances: {seen:?}");
            owners.extend(seen);
        }
        assert!(
            owners.len() >= 2,
            "24 sessions should land on more than one of 3 instances: {owners:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_check_takes_an_instance_out_and_brings_it_back() {
    bounded(async {
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let gw = Gateway::builder(one_cluster(&format!(
            "endpoints = {}\nhealth_check = {{ path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}",
            endpoints(&[&a, &b])
        )))
        .no_access_log()
        .start()
        .await;
        let b_addr = b.address();
        eventually(Duration::from_secs(3), "health checks probe b", || async {
            b.health_hits() >= 1
        })
        .await;
        let seen = spread(&gw, "/hc", 10).await;
        assert_eq!(seen.get("b"), Some(&5), "both instances serve at first: {seen:?}");

        b.set_health(503);
        let took = eventually(
            Duration::from_secs(5),
            "b is reported unhealthy by /admin/clusters",
            || async { gw.endpoint_status("c", &b_addr).await["healthy"] == false },
        )
        .await;
        // Two failed probes 200 ms apart, plus one interval of phase and some slack.
        assert!(
            took < Duration::from_millis(1500),
            "b should be out within interval × threshold, took {took:?}"
        );
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_endpoint_healthy",
                &[("cluster", "c"), ("endpoint", &b_addr)]
            ),
            Some(0.0),
            "{metrics}"
        );
        let before = b.hits();
        let seen = spread(&gw, "/hc", 20).await;
        assert_eq!(seen.get("a"), Some(&20), "no traffic to an unhealthy instance: {seen:?}");
        assert_eq!(b.hits(), before);

        b.set_health(200);
        eventually(
            Duration::from_secs(5),
            "b is reported healthy again",
            || async { gw.endpoint_status("c", &b_addr).await["healthy"] == true },
        )
        .await;
        let seen = spread(&gw, "/hc", 10).await;
        assert!(
            seen.get("b").copied().unwrap_or(0) >= 4,
            "b gets traffic again: {seen:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_instance_for_the_ejection_period() {
    bounded(async {
        let a = Upstream::start("a").await;
        let b = Upstream::with_status("b", 500).await;
        let gw = Gateway::builder(one_cluster(&format!(
            "endpoints = {}\noutlier = {{ consecutive_5xx = 3, consecutive_connect_failures = 3, base_ejection = \"1500ms\", max_ejection = \"10s\", min_healthy = 1 }}",
            endpoints(&[&a, &b])
        )))
        .no_access_log()
        .start()
        .await;
        let b_addr = b.address();
        // Round robin alternates, so b answers its third 500 within six requests.
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(gw.get("/x").await.status().as_u16());
        }
        // The ejection starts when that request is logged, just after this point.
        let third_500 = Instant::now();
        assert_eq!(b.hits(), 3, "statuses {statuses:?}");
        assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 3, "{statuses:?}");
        eventually(Duration::from_secs(1), "b is ejected", || async {
            gw.endpoint_status("c", &b_addr).await["ejected"] == true
        })
        .await;
        let status = gw.endpoint_status("c", &b_addr).await;
        assert!(status["ejected_for_ms"].as_u64().unwrap_or(0) > 0, "{status}");

        // During the ejection every request goes to a and succeeds.
        let mut n = 0;
        while third_500.elapsed() < Duration::from_millis(1300) {
            let resp = gw.get("/x").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(upstream_of(&resp), "a");
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(n >= 5, "sent only {n} requests during the ejection");
        assert_eq!(b.hits(), 3, "b got traffic while ejected");

        // After the ejection b is tried again.
        b.set_status(200);
        eventually(Duration::from_secs(4), "b gets traffic after the ejection", || async {
            gw.get("/x").await;
            b.hits() > 3
        })
        .await;
        assert!(
            third_500.elapsed() >= Duration::from_millis(1450),
            "b came back after {:?}, before the 1.5 s ejection ended",
            third_500.elapsed()
        );
        let status = gw.endpoint_status("c", &b_addr).await;
        assert_eq!(status["ejected"], false, "{status}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_never_goes_below_min_healthy() {
    bounded(async {
        let a = Upstream::with_status("a", 500).await;
        let b = Upstream::with_status("b", 500).await;
        let gw = Gateway::builder(one_cluster(&format!(
            "endpoints = {}\noutlier = {{ consecutive_5xx = 2, base_ejection = \"10s\", max_ejection = \"30s\", min_healthy = 1 }}",
            endpoints(&[&a, &b])
        )))
        .no_access_log()
        .start()
        .await;
        let counts = send_and_count(&gw, "/x", 30).await;
        assert_eq!(
            counts.status(500),
            30,
            "the upstream's 500 passes through, never a 503 for lack of endpoints: {counts:?}"
        );
        assert_eq!(
            counts.by_upstream.values().sum::<usize>(),
            30,
            "every answer came from an upstream: {counts:?}"
        );
        assert_eq!(a.hits() + b.hits(), 30);
        let clusters = gw.admin_json("/admin/clusters").await;
        let c = &clusters["clusters"][0];
        assert_eq!(c["available"], 1, "{clusters}");
        let ejected = c["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ejected"] == true)
            .count();
        assert_eq!(ejected, 1, "exactly one of the two is ejected: {clusters}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_elsewhere_and_eject() {
    bounded(async {
        let a = Upstream::start("a").await;
        let mut b = Upstream::start("b").await;
        let b_addr = b.address();
        b.stop().await;
        let gw = Gateway::builder(one_cluster(&format!(
            "endpoints = {}\noutlier = {{ consecutive_connect_failures = 2, base_ejection = \"10s\", max_ejection = \"30s\", min_healthy = 1 }}",
            endpoints(&[&a, &b])
        )))
        .no_access_log()
        .start()
        .await;
        let counts = send_and_count(&gw, "/x/1", 20).await;
        assert_eq!(counts.status(200), 20, "every request is retried on a: {counts:?}");
        assert_eq!(counts.upstream("a"), 20, "{counts:?}");
        assert_eq!(a.hits(), 20);
        let status = gw.endpoint_status("c", &b_addr).await;
        assert_eq!(status["ejected"], true, "{status}");
        let metrics = gw.metrics().await;
        assert!(
            metric_value(
                &metrics,
                "portico_upstream_attempts_total",
                &[("cluster", "c"), ("result", "connect_error")]
            )
            .is_some_and(|n| n >= 2.0),
            "{metrics}"
        );
        assert_eq!(
            metric_value(
                &metrics,
                "portico_endpoint_healthy",
                &[("cluster", "c"), ("endpoint", &b_addr)]
            ),
            Some(0.0)
        );
    })
    .await
}
