//! The dashboard and the alert rules against a real Prometheus: the real gateway (with
//! in-test upstreams) and the token service take traffic, the `prometheus` server from
//! Debian's package scrapes both every second with `conf/prometheus/rules.yml` loaded, and
//! the test asks its HTTP API that the raw metrics, the recording rules and the alerts
//! have data, that every rule evaluates without error, and that every expression and
//! variable query of `conf/grafana/portico.json` is valid PromQL over real series.
//!
//! Without a `prometheus` binary on PATH the test says SKIP loudly and passes, except
//! under `CI=true`, where `.ci/run` installs it and its absence is a failure.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::token_service;
use common::*;
use serde_json::Value;

/// Where the dashboard and rules live.
fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The `prometheus` executable on PATH, if any.
fn find_prometheus() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

/// A Prometheus server in a temp dir, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` (job name, address) every second, with the
    /// repository's rule file, and waits until it is ready.
    async fn start(binary: &Path, targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {:?}\nscrape_configs:\n",
            repo_file("conf/prometheus/rules.yml").display().to_string()
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &config).expect("write prometheus.yml");
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client");
        let mut prometheus = Prometheus {
            child,
            addr,
            dir,
            http,
        };
        prometheus.wait_ready().await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = format!("http://{}/-/ready", self.addr);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("prometheus was not ready within 10 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET an API path with query parameters; returns the whole JSON answer, whatever
    /// its status (a bad query is a 400 with `status: error`).
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .query(params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("prometheus {path} {params:?}: {e}"));
        let text = resp.text().await.expect("prometheus body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("prometheus {path}: {e}: {text}"))
    }

    /// An instant query that must succeed; returns its result vector (or scalar).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self.api("/api/v1/query", &[("query", expr)]).await;
        assert_eq!(answer["status"], "success", "query {expr}: {answer}");
        match &answer["data"]["result"] {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        }
    }

    /// Polls `expr` until it returns at least one series; returns them.
    async fn wait_for(&self, expr: &str, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let result = self.query(expr).await;
            if !result.is_empty() {
                return result;
            }
            if start.elapsed() > timeout {
                panic!(
                    "no data for `{expr}` within {timeout:?}\nprometheus log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series of a vector result.
fn sample_value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {series}"))
}

/// Every panel of the dashboard, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Grafana's variables replaced the way Grafana would with "All" selected. Any `$` left
/// means the dashboard gained a variable this test does not know: it fails, to be taught.
fn substitute(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h")
        .replace("$route", ".*")
        .replace("$version", ".*")
        .replace("$cluster", ".*");
    assert!(!out.contains('$'), "unknown variable in `{expr}`");
    out
}

/// `label_values(selector, label)` → (selector, label).
fn parse_label_values(query: &str) -> (String, String) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query is not label_values(…): {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values without a label: {query}"));
    (selector.trim().to_string(), label.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_and_every_dashboard_query_and_rule_works() {
    let Some(binary) = find_prometheus() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no `prometheus` on PATH under CI=true (.ci/run installs Debian's package)");
        }
        eprintln!(
            "\n\n*** SKIP prometheus_scrapes_the_gateway…: no `prometheus` binary on PATH \
             (apt-get install -y prometheus) ***\n\n"
        );
        return;
    };
    bounded(async {
        // The token service, in this process, with one client that gets a token and one
        // refused attempt, so the portico_auth_* series exist.
        let auth_dir = tempfile::tempdir().expect("temp dir");
        let auth_cfg = token_service::config(auth_dir.path(), "", "");
        let auth = token_service::start(&auth_cfg).await;
        let secret = token_service::add_client(&auth, "service-a", "orders:read", "portico").await;
        let auth_base = token_service::base(&auth);
        let http = token_service::http();
        token_service::token(&http, &auth_base, "service-a", &secret, &[]).await;
        let (status, _, _) = token_service::post_basic(
            &http,
            &format!("{auth_base}/oauth2/token"),
            "service-a",
            "wrong-secret",
            &[("grant_type", "client_credentials")],
        )
        .await;
        assert_eq!(status, 401);

        // The gateway: a versioned route, a route whose upstream fails (its breaker opens
        // after 3 failures and stays open), a bulkhead and endpoint breakers for the gauges.
        let ok = Upstream::start("ok").await;
        let failing = Upstream::with_status("failing", 503).await;
        let gw = Gateway::config()
            .toml(
                r#"[[routes]]
id = "orders"
path = "/orders"
versioning = { default = "2" }
versions = [
  { name = "1", cluster = "orders-v1" },
  { name = "2", cluster = "orders-v2" },
]"#,
            )
            .route_with(
                "failing",
                "/failing",
                "failing",
                r#"retry = { attempts = 2, on = ["503"], backoff_base = "1ms", backoff_cap = "1ms" }"#,
            )
            .cluster("orders-v1", &[&ok])
            .cluster_with(
                "orders-v2",
                &[&ok],
                "bulkhead = { max_concurrent = 16 }\nendpoint_breaker = { consecutive_failures = 5 }",
            )
            .cluster_with(
                "failing",
                &[&failing],
                r#"outlier = { consecutive_5xx = 0 }
breaker = { consecutive_failures = 3, open_for = "60s", max_open = "60s" }"#,
            )
        .no_access_log()
        .start()
        .await;

        // Traffic for the whole test, so rates are above zero whenever Prometheus looks.
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = ["/v1/orders/1", "/orders/2", "/failing/3", "/nowhere"]
            .iter()
            .map(|p| gw.url(p))
            .collect();
        let traffic = {
            let stop = stop.clone();
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("http client");
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for url in &urls {
                        let _ = client.get(url).send().await;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };

        let prom = Prometheus::start(
            &binary,
            &[("portico", gw.admin), ("portico-auth", auth.admin_addr.expect("admin listener"))],
        )
        .await;
        let wait = Duration::from_secs(15);

        // Both targets are scraped successfully.
        let up = prom.wait_for("count(up == 1) == 2", wait).await;
        assert_eq!(sample_value(&up[0]), 2.0, "{up:?}");

        // Raw series with portico's labels, and the recording rules over them.
        let raw = prom
            .wait_for(
                r#"portico_requests_total{job="portico",route="orders",version="1",
                    cluster="orders-v1",method="GET",status_class="2xx"}"#,
                wait,
            )
            .await;
        assert!(sample_value(&raw[0]) > 0.0, "{raw:?}");
        prom.wait_for(r#"route:portico_requests:rate5m{route="orders"} > 0"#, wait)
            .await;
        prom.wait_for(
            r#"route_version:portico_requests:rate5m{route="orders",version="2"} > 0"#,
            wait,
        )
        .await;
        let ratio = prom
            .wait_for(
                r#"route:portico_requests_errors:ratio_rate5m{route="failing"}"#,
                wait,
            )
            .await;
        assert_eq!(
            sample_value(&ratio[0]),
            1.0,
            "every /failing request is a 5xx"
        );
        let ratio = prom
            .wait_for(
                r#"route:portico_requests_errors:ratio_rate5m{route="orders"}"#,
                wait,
            )
            .await;
        assert_eq!(sample_value(&ratio[0]), 0.0, "no /orders request fails");
        let p99 = prom
            .wait_for(
                r#"route:portico_request_duration_seconds:p99_5m{route="orders"} >= 0"#,
                wait,
            )
            .await;
        assert!(sample_value(&p99[0]) < 10.0, "{p99:?}");
        prom.wait_for(
            r#"portico_cluster_breaker_state{cluster="failing"} == 1"#,
            wait,
        )
        .await;
        prom.wait_for(
            r#"portico_auth_tokens_issued_total{job="portico-auth"} >= 1"#,
            wait,
        )
        .await;
        prom.wait_for(
            r#"portico_auth_token_failures_total{job="portico-auth",reason="invalid_client"} >= 1"#,
            wait,
        )
        .await;

        // The alerts match the real label sets: /failing's errors and its open breaker make
        // their alerts pending (their `for` keeps them from firing within the test).
        let start = Instant::now();
        let wanted = [
            ("PorticoHighErrorRate", "route", "failing"),
            ("PorticoErrorBudgetBurnFast", "route", "failing"),
            ("PorticoCircuitBreakerOpen", "cluster", "failing"),
        ];
        loop {
            let alerts = prom.api("/api/v1/alerts", &[]).await;
            let list = alerts["data"]["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(name, label, value)| {
                    !list
                        .iter()
                        .any(|a| a["labels"]["alertname"] == *name && a["labels"][*label] == *value)
                })
                .collect();
            if missing.is_empty() {
                let unexpected: Vec<_> = list
                    .iter()
                    .filter(|a| a["labels"]["alertname"] == "PorticoNoHealthyEndpoint")
                    .collect();
                assert!(
                    unexpected.is_empty(),
                    "every cluster has a healthy endpoint: {unexpected:?}"
                );
                break;
            }
            assert!(
                start.elapsed() < wait,
                "alerts {missing:?} not active within {wait:?}: {alerts}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Every rule has been evaluated, and without an error.
        let start = Instant::now();
        loop {
            let rules = prom.api("/api/v1/rules", &[]).await;
            let all: Vec<Value> = rules["data"]["groups"]
                .as_array()
                .expect("rule groups")
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            assert!(all.len() >= 20, "rules.yml not loaded: {rules}");
            for rule in &all {
                assert_ne!(rule["health"], "err", "rule failed to evaluate: {rule}");
            }
            if all.iter().all(|r| r["health"] == "ok") {
                break;
            }
            assert!(start.elapsed() < wait, "rules not all evaluated: {rules}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Every dashboard expression is accepted; the ones about what this test exercised
        // return data.
        let text = std::fs::read_to_string(repo_file("conf/grafana/portico.json"))
            .expect("read the dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
        let mut with_data = std::collections::BTreeSet::new();
        let mut checked = 0;
        for panel in all_panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel `{title}` has a target without expr: {target}")
                });
                let answer = prom
                    .api("/api/v1/query", &[("query", &substitute(expr))])
                    .await;
                assert_eq!(
                    answer["status"], "success",
                    "panel `{title}`: `{expr}` rejected: {answer}"
                );
                checked += 1;
                if answer["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
                {
                    with_data.insert(title.to_string());
                }
            }
        }
        assert!(checked >= 30, "only {checked} dashboard expressions found");
        let quiet: Vec<_> = all_panels(&dashboard)
            .iter()
            .filter(|p| p["targets"].is_array())
            .filter_map(|p| p["title"].as_str())
            .filter(|t| !with_data.contains(*t))
            .collect();
        eprintln!(
            "{checked} dashboard expressions accepted; panels without data in this test: {quiet:?}"
        );
        for title in [
            "Requests/s",
            "5xx share",
            "p99 latency",
            "Clusters without a healthy endpoint",
            "Breakers not closed",
            "Request rate by route and version",
            "Error rate (5xx share) by route",
            "p50 latency by route and version",
            "p99 latency by route and version",
            "Healthy endpoints by cluster",
            "Circuit breaker states",
            "Retries by cluster and reason",
            "Breaker rejections",
            "Bulkhead limit",
            "4xx responses by route (includes rate-limit 429s)",
            "Tokens issued and refused",
            "Published signing keys",
            "Config loads by result",
            "Process CPU by node",
            "Resident memory by node",
            "File descriptors used by node",
            "Last config load succeeded",
            "Age of the config in effect",
            "Builds running",
            "Responses by status code",
        ] {
            assert!(
                with_data.contains(title),
                "panel `{title}` shows no data (panels with data: {with_data:?})"
            );
        }

        // Every template variable resolves to the values this gateway exports.
        let mut variables = std::collections::BTreeMap::new();
        for var in dashboard["templating"]["list"]
            .as_array()
            .expect("templating")
        {
            if var["type"] != "query" {
                continue;
            }
            let name = var["name"].as_str().expect("variable name").to_string();
            let query = var["query"]["query"]
                .as_str()
                .or_else(|| var["query"].as_str())
                .expect("variable query");
            let (selector, label) = parse_label_values(query);
            let answer = prom
                .api(
                    &format!("/api/v1/label/{label}/values"),
                    &[("match[]", &substitute(&selector))],
                )
                .await;
            assert_eq!(answer["status"], "success", "variable {name}: {answer}");
            let values: Vec<String> = answer["data"]
                .as_array()
                .expect("label values")
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            variables.insert(name, values);
        }
        let has = |var: &str, value: &str| {
            variables
                .get(var)
                .is_some_and(|vs| vs.iter().any(|v| v == value))
        };
        for (var, value) in [
            ("route", "orders"),
            ("route", "failing"),
            ("version", "1"),
            ("version", "2"),
            ("cluster", "orders-v1"),
            ("cluster", "failing"),
        ] {
            assert!(
                has(var, value),
                "variable {var} lacks {value}: {variables:?}"
            );
        }

        stop.store(true, Ordering::Relaxed);
        let _ = traffic.await;
        drop(prom);
        auth.stop().await;
    })
    .await;
}
