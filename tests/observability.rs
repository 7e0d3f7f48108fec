//! What operators see after real requests: Prometheus metrics on `/metrics`, the JSON access
//! log (one line per request, sampling of successes), and the admin API's JSON documents
//! (`/healthz`, `/readyz`, `/admin/clusters`, `/admin/config` with secrets redacted).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_method_and_status_class() {
    bounded(async {
        let ok = Upstream::start("ok").await;
        let failing = Upstream::with_status("failing", 500).await;
        let gw = Gateway::config()
            .route("obs", "/obs", "obs-c")
            .route("bad", "/bad", "bad-c")
            .cluster("obs-c", &[&ok])
            .cluster_with("bad-c", &[&failing], "outlier = { consecutive_5xx = 0 }")
            .no_access_log()
            .start()
            .await;

        for i in 0..5 {
            assert_eq!(gw.get(&format!("/obs/{i}")).await.status(), 200);
        }
        let resp = gw
            .client
            .post(gw.url("/obs"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        for _ in 0..2 {
            assert_eq!(gw.get("/nowhere").await.status(), 404);
            assert_eq!(gw.get("/bad").await.status(), 500);
        }

        let requests = |route: &'static str, method: &'static str, class: &'static str| {
            move |text: &str| {
                metric_value(
                    text,
                    "portico_requests_total",
                    &[
                        ("route", route),
                        ("method", method),
                        ("status_class", class),
                    ],
                )
            }
        };
        // Requests are counted when logged, just after the response went out.
        eventually(
            Duration::from_secs(3),
            "all 10 requests counted",
            || async {
                let text = gw.metrics().await;
                requests("obs", "GET", "2xx")(&text) == Some(5.0)
                    && requests("bad", "GET", "5xx")(&text) == Some(2.0)
                    && requests("", "GET", "4xx")(&text) == Some(2.0)
                    && requests("obs", "POST", "2xx")(&text) == Some(1.0)
            },
        )
        .await;

        let resp = gw.admin_get("/metrics").await;
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("# TYPE portico_requests_total counter"));
        assert_eq!(
            metric_value(
                &text,
                "portico_requests_total",
                &[
                    ("cluster", "obs-c"),
                    ("method", "GET"),
                    ("route", "obs"),
                    ("status_class", "2xx")
                ]
            ),
            Some(5.0),
            "{text}"
        );
        assert_eq!(requests("obs", "GET", "4xx")(&text), None);
        // The exact code beside the class.
        let by_code: [&[(&str, &str)]; 2] = [
            &[("route", "bad"), ("status", "500"), ("status_class", "5xx")],
            &[("route", ""), ("status", "404")],
        ];
        for labels in by_code {
            assert_eq!(
                metric_value(&text, "portico_requests_total", labels),
                Some(2.0),
                "{labels:?}: {text}"
            );
        }
        assert_eq!(
            metric_value(
                &text,
                "portico_requests_total",
                &[("route", "bad"), ("cluster", "bad-c")]
            ),
            Some(2.0)
        );

        assert!(text.contains("# TYPE portico_request_duration_seconds histogram"));
        assert_eq!(
            metric_value(
                &text,
                "portico_request_duration_seconds_count",
                &[("route", "obs")]
            ),
            Some(6.0)
        );
        assert_eq!(
            metric_value(
                &text,
                "portico_request_duration_seconds_bucket",
                &[("route", "obs"), ("le", "+Inf")]
            ),
            Some(6.0)
        );
        assert!(metric_value(
            &text,
            "portico_request_duration_seconds_sum",
            &[("route", "obs")]
        )
        .is_some_and(|s| s > 0.0));
        assert_eq!(
            metric_value(
                &text,
                "portico_upstream_duration_seconds_count",
                &[("cluster", "obs-c")]
            ),
            Some(6.0)
        );
        assert_eq!(
            metric_value(
                &text,
                "portico_endpoint_healthy",
                &[("cluster", "obs-c"), ("endpoint", &ok.address())]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric_value(
                &text,
                "portico_upstream_attempts_total",
                &[("cluster", "obs-c"), ("result", "response")]
            ),
            Some(6.0)
        );
        assert_eq!(
            metric_value(&text, "portico_active_requests", &[]),
            Some(0.0)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .global_plugin("request-id", "")
            .route("obs", "/obs", "obs-c")
            .cluster("obs-c", &[&up])
            .start()
            .await;
        let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let traceparent = format!("00-{client_trace}-00f067aa0ba902b7-01");
        let resp = gw
            .get_with(
                "/obs/1?q=1",
                &[("X-Request-Id", "log-req-1"), ("traceparent", &traceparent)],
            )
            .await;
        assert_eq!(resp.status(), 200);
        let upstream_traceparent = up.last_request().header("traceparent").unwrap().to_string();
        assert_eq!(gw.get("/nowhere").await.status(), 404);
        let resp = gw.get("/obs/2").await;
        assert_eq!(resp.status(), 200);
        let generated_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();

        gw.wait_access_log(3).await;
        // Nothing more arrives: exactly one line per request.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = gw.access_log_lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let by_id = |id: &str| {
            lines
                .iter()
                .find(|l| l["request_id"] == id)
                .unwrap_or_else(|| panic!("no line with request_id {id}: {lines:#?}"))
                .clone()
        };

        let first = by_id("log-req-1");
        assert!(
            first["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{first}"
        );
        assert_eq!(first["traceparent"], upstream_traceparent.as_str());
        assert!(upstream_traceparent.starts_with(&format!("00-{client_trace}-")));
        assert_eq!(first["client"], "127.0.0.1");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/obs/1");
        assert_eq!(first["route"], "obs");
        assert_eq!(first["cluster"], "obs-c");
        assert_eq!(first["upstream"], up.address().as_str());
        assert_eq!(first["status"], 200);
        assert_eq!(first["attempts"], 1);
        let total = first["total_ms"].as_f64().expect("total_ms is a number");
        let upstream_ms = first["upstream_ms"]
            .as_f64()
            .expect("upstream_ms is a number");
        assert!(
            total >= 0.0 && upstream_ms >= 0.0 && upstream_ms <= total,
            "{first}"
        );
        assert!(first.get("error").is_none_or(|e| e.is_null()), "{first}");

        let third = by_id(&generated_id);
        assert_eq!(third["path"], "/obs/2");
        assert_eq!(third["status"], 200);
        assert!(third["traceparent"].as_str().is_some_and(|t| t.len() == 55));

        let missing = lines
            .iter()
            .find(|l| l["status"] == 404)
            .expect("a line for the 404");
        assert_eq!(missing["path"], "/nowhere");
        assert!(missing["route"].is_null(), "{missing}");
        assert!(missing["upstream"].is_null(), "{missing}");
        assert_eq!(missing["attempts"], 0);
        assert!(missing["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_sample_ratio_zero_logs_only_errors() {
    bounded(async {
        let up = Upstream::start("a").await;
        let mut gone = Upstream::start("gone").await;
        let routes = Routes::new()
            .route("obs", "/obs", "obs-c")
            .route("gone", "/gone", "gone-c")
            .cluster("obs-c", &[&up])
            .cluster("gone-c", &[&gone]);
        gone.stop().await;
        let gw = Gateway::builder(routes)
            .success_sample_ratio(0.0)
            .start()
            .await;
        for _ in 0..3 {
            assert_eq!(gw.get("/obs").await.status(), 200);
        }
        assert_eq!(gw.raw_get("/nowhere", &[]).await.status, 404);
        assert_eq!(gw.raw_get("/gone", &[]).await.status, 502);
        for _ in 0..3 {
            assert_eq!(gw.get("/obs").await.status(), 200);
        }
        gw.wait_access_log(2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = gw.access_log_lines();
        let statuses: BTreeSet<u64> = lines.iter().filter_map(|l| l["status"].as_u64()).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert_eq!(statuses, BTreeSet::from([404, 502]));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_documents() {
    bounded(async {
        let secret = "s3cr3t-7f3a9c-token";
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let gw = Gateway::config()
            .route_with(
                "all",
                "/",
                "c",
                r#"
[[routes.plugins]]
name = "headers"
request = { set = { "X-Upstream-Auth" = "Bearer ${PORTICO_IT_UPSTREAM_TOKEN}" } }
"#,
            )
            .toml(&format!(
                r#"
[clusters.c]
endpoints = [{{ address = "{}", weight = 2 }}, {{ address = "{}" }}]
"#,
                a.addr, b.addr
            ))
            .env("PORTICO_IT_UPSTREAM_TOKEN", secret)
            .start()
            .await;

        // The secret is substituted where it is used...
        assert_eq!(gw.get("/x").await.status(), 200);
        assert_eq!(
            a.last_request().header("x-upstream-auth"),
            Some(format!("Bearer {secret}").as_str())
        );

        let resp = gw.admin_get("/healthz").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let health: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(health["status"], "ok");

        let ready = gw.admin_json("/readyz").await;
        assert_eq!(ready["ready"], true, "{ready}");
        assert!(ready["last_reload_error"].is_null(), "{ready}");
        let version = ready["config_version"]
            .as_str()
            .expect("config_version")
            .to_string();
        assert!(!version.is_empty());

        // In-flight counts drop when the request is logged, just after the response.
        eventually(Duration::from_secs(2), "no request in flight", || async {
            let clusters = gw.admin_json("/admin/clusters").await;
            clusters["clusters"][0]["endpoints"]
                .as_array()
                .is_some_and(|es| es.iter().all(|e| e["in_flight"] == 0))
        })
        .await;
        let clusters = gw.admin_json("/admin/clusters").await;
        let list = clusters["clusters"].as_array().expect("clusters array");
        assert_eq!(list.len(), 1, "{clusters}");
        let c = &list[0];
        assert_eq!(c["name"], "c");
        assert_eq!(c["lb"], "round_robin");
        assert_eq!(c["available"], 2);
        let eps = c["endpoints"].as_array().expect("endpoints array");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0]["address"], a.address().as_str());
        assert_eq!(eps[0]["weight"], 2);
        assert_eq!(eps[1]["address"], b.address().as_str());
        assert_eq!(eps[1]["weight"], 1);
        for e in eps {
            assert_eq!(e["healthy"], true, "{e}");
            assert_eq!(e["ejected"], false, "{e}");
            assert_eq!(e["ejected_for_ms"], 0, "{e}");
            assert_eq!(e["in_flight"], 0, "{e}");
        }

        // ...and redacted from the effective config.
        let resp = gw.admin_get("/admin/config").await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains(secret),
            "the secret leaks from /admin/config: {text}"
        );
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(config["version"], version.as_str());
        assert!(config["loaded_at"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(
            config["source"].as_str().map(std::path::PathBuf::from),
            Some(gw.config_path.clone())
        );
        let effective = &config["config"];
        assert_eq!(effective["routes"][0]["id"], "all");
        assert_eq!(effective["routes"][0]["plugins"][0]["name"], "headers");
        assert_eq!(
            effective["routes"][0]["plugins"][0]["request"]["set"]["X-Upstream-Auth"], "<redacted>",
            "{effective}"
        );
        assert_eq!(
            effective["clusters"]["c"]["endpoints"][0]["address"],
            a.address().as_str()
        );
        assert_eq!(
            effective["listeners"][0]["address"],
            gw.listen.to_string().as_str()
        );

        let resp = gw.admin_get("/no/such/thing").await;
        assert_eq!(resp.status(), 404);
        let resp = gw
            .client
            .post(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405);
    })
    .await
}
