//! The edge cache's operator side in the real gateway: `POST /admin/cache/purge` behind the
//! admin token (answers, refusals with problem+json), `GET /admin/cache`, the store's series
//! on `/metrics`, `[cache]` bounds applied at start and on reload, and `portico cache purge`
//! talking to the admin API. The store's own behaviour (streaming, the byte bound, purges of
//! stored entries by URL, prefix, host and key) is unit-tested in `src/cache/store.rs`
//! through pingora-cache's `Storage` trait.

mod common;

use std::process::Output;

use common::{ConfigText, Gateway, Routes, Upstream};

fn body(upstream: &Upstream, cache: &str) -> Routes {
    Routes::new()
        .route("api", "/v1", "svc")
        .cluster("svc", &[upstream])
        .toml(cache)
}

async fn purge(gw: &Gateway, json: &str, token: Option<&str>) -> (u16, String, serde_json::Value) {
    let mut req = gw
        .client
        .post(gw.admin_url("/admin/cache/purge"))
        .header("content-type", "application/json")
        .body(json.to_string());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("purge request");
    let status = resp.status().as_u16();
    let content_type = common::header(&resp, "content-type").unwrap_or_default();
    let text = resp.text().await.expect("purge answer");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, content_type, value)
}

fn cli(gw: &Gateway, args: &[&str]) -> Output {
    let mut command = gw.portico_command();
    command
        .args(["cache", "purge", "--config"])
        .arg(&gw.config_path)
        .args(args)
        .env("RUST_LOG", "warn");
    command.output().expect("run portico cache purge")
}

#[tokio::test]
async fn purge_endpoint_answers_behind_the_admin_token() {
    let upstream = Upstream::start("svc").await;
    let gw = Gateway::start(body(&upstream, "")).await;
    let token = gw.admin_token.clone().expect("token");

    let (status, content_type, answer) =
        purge(&gw, r#"{"host": "api.example", "prefix": "/v1"}"#, None).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(content_type, "application/problem+json");
    let (status, _, _) = purge(&gw, r#"{"host": "api.example"}"#, Some("wrong")).await;
    assert_eq!(status, 401);

    let (status, content_type, answer) = purge(
        &gw,
        r#"{"host": "API.example:443", "prefix": "/v1/orders"}"#,
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(content_type, "application/json");
    assert_eq!(answer["purged"], 0);
    assert_eq!(answer["request"]["host"], "api.example");
    assert_eq!(answer["request"]["prefix"], "/v1/orders");
    assert_eq!(answer["cache"]["objects"], 0);

    for (json, expected) in [
        ("{}", "exactly one of"),
        ("not json", "JSON object"),
        (r#"{"host": "a", "prefix": "v1"}"#, "must start with /"),
        (r#"{"url": "/relative"}"#, "must be absolute"),
        (r#"{"key": "xyz"}"#, "32 hex digits"),
        (r#"{"host": "a", "extra": 1}"#, "unknown field"),
    ] {
        let (status, content_type, answer) = purge(&gw, json, Some(&token)).await;
        assert_eq!(status, 400, "{json}: {answer}");
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(answer["status"], 400);
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(expected), "{json}: {detail}");
    }

    let big = format!(r#"{{"host": "{}"}}"#, "a".repeat(20 * 1024));
    let (status, content_type, _) = purge(&gw, &big, Some(&token)).await;
    assert_eq!(status, 413);
    assert_eq!(content_type, "application/problem+json");

    let resp = gw.admin_get("/admin/cache/purge").await;
    assert_eq!(resp.status().as_u16(), 405);

    let metrics = gw.metrics().await;
    for series in [
        "portico_cache_bytes 0",
        "portico_cache_objects 0",
        "portico_cache_evictions_total 0",
        "portico_cache_purged_total 0",
        "portico_cache_too_large_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn cache_bounds_apply_at_start_and_on_reload() {
    let upstream = Upstream::start("svc").await;
    let gw = Gateway::start(body(
        &upstream,
        "[cache]\nmax_bytes = 1048576\nmax_object_size = 65536\n",
    ))
    .await;
    let state = gw.admin_json("/admin/cache").await;
    assert_eq!(state["cache"]["max_bytes"], 1_048_576, "{state}");
    assert_eq!(state["cache"]["max_object_size"], 65_536, "{state}");
    assert_eq!(state["cache"]["objects"], 0, "{state}");

    let changed = gw
        .config
        .replace("max_bytes = 1048576", "max_bytes = 2097152");
    std::fs::write(&gw.config_path, &changed).expect("rewrite config");
    let resp = gw.admin_post("/admin/reload").await;
    assert_eq!(resp.status().as_u16(), 200);
    let state = gw.admin_json("/admin/cache").await;
    assert_eq!(state["cache"]["max_bytes"], 2_097_152, "{state}");

    // A bound the validation refuses leaves the running one, with a located error.
    let bad = changed.replace("max_object_size = 65536", "max_object_size = 4194304");
    std::fs::write(&gw.config_path, &bad).expect("rewrite config");
    let resp = gw.admin_post("/admin/reload").await;
    assert_eq!(resp.status().as_u16(), 422);
    let text = resp.text().await.unwrap_or_default();
    assert!(
        text.contains("cache.max_object_size") && text.contains("larger than max_bytes"),
        "{text}"
    );
    let state = gw.admin_json("/admin/cache").await;
    assert_eq!(state["cache"]["max_object_size"], 65_536, "{state}");
}

#[tokio::test]
async fn the_cli_sends_purges_to_the_admin_api() {
    let upstream = Upstream::start("svc").await;
    let gw = Gateway::start(body(&upstream, "")).await;

    for args in [
        &["--host", "api.example", "--prefix", "/v1/orders"][..],
        &["--url", "https://api.example/v1/orders/7?full=1"],
        &["--key", "ac10f2aef117729f8dad056b3059eb7e"],
    ] {
        let out = cli(&gw, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: serde_json::Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(answer["purged"], 0, "{answer}");
    }
    let out = cli(&gw, &["--url", "https://API.example:8443/v1/x?y=1"]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["request"]["url"], "http://api.example/v1/x?y=1");

    // A request the CLI can tell is wrong: exit 2, nothing sent.
    let out = cli(&gw, &["--host", "api.example", "--prefix", "v1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with /"));
    let out = cli(&gw, &[]);
    assert_eq!(out.status.code(), Some(2), "one of --url, --host, --key");

    // The gateway refusing it: exit 1 with its reason.
    let out = gw
        .portico_command()
        .args(["cache", "purge", "--config"])
        .arg(&gw.config_path)
        .args(["--host", "api.example"])
        .env(common::ADMIN_TOKEN_ENV, common::new_admin_token())
        .output()
        .expect("run portico cache purge");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");

    // Nothing listening: exit 1.
    let free = common::free_addr().to_string();
    let out = cli(&gw, &["--admin", &free, "--host", "api.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
}

#[test]
fn check_locates_bad_cache_bounds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("portico.toml");
    std::fs::write(
        &path,
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[cache]\nmax_bytes = 1000\nmax_object_size = 0\n",
    )
    .expect("write config");
    let out = std::process::Command::new(common::PORTICO)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run portico check");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("portico.toml:6:19: cache.max_object_size: must be greater than 0"),
        "{stderr}"
    );
}

/// An origin answering every path with `Cache-Control: max-age=60` and a body of the size
/// the path's last segment names (`/v1/big/20000`), counting the requests of each path.
struct SizedOrigin {
    server: common::HttpServer,
    hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl SizedOrigin {
    async fn start() -> SizedOrigin {
        let hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
            Default::default();
        let counted = hits.clone();
        let server = common::HttpServer::start(move |req: hyper::Request<_>| {
            let counted = counted.clone();
            async move {
                let path = req.uri().path().to_string();
                *counted.lock().unwrap().entry(path.clone()).or_default() += 1;
                let size: usize = path
                    .rsplit('/')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(16);
                let mut resp = common::reply(200, "text/plain", vec![b'x'; size]);
                resp.headers_mut()
                    .insert("cache-control", "max-age=60".parse().unwrap());
                resp
            }
        })
        .await;
        SizedOrigin { server, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

fn cached_route(origin: &SizedOrigin, route_cache: &str, cache: &str) -> Routes {
    Routes::new()
        .route_with(
            "api",
            "/v1",
            "svc",
            &format!("[routes.cache]\n{route_cache}"),
        )
        .toml(&format!(
            "[clusters.svc]\nendpoints = [{{ address = \"{}\" }}]\n",
            origin.server.addr
        ))
        .toml(cache)
}

async fn body_len(gw: &Gateway, path: &str) -> usize {
    let resp = gw.get(path).await;
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.bytes().await.expect("body").len()
}

/// Through the real gateway: responses the proxy stored are purged by prefix (admin API)
/// and by URL (CLI), kept across a reload that leaves the route's cache settings alone and
/// left behind by one that changes them.
#[tokio::test]
async fn stored_responses_are_purged_and_survive_reloads() {
    let origin = SizedOrigin::start().await;
    let gw = Gateway::start(cached_route(&origin, "", "")).await;
    let token = gw.admin_token.clone().expect("token");

    for path in [
        "/v1/orders/10",
        "/v1/orders/10",
        "/v1/orders/20?x=1",
        "/v1/other/30",
        "/v1/other/30",
    ] {
        body_len(&gw, path).await;
    }
    assert_eq!(origin.total(), 3, "the repeats were hits");
    let state = gw.admin_json("/admin/cache").await;
    assert_eq!(state["cache"]["objects"], 3, "{state}");

    let (status, _, answer) = purge(
        &gw,
        r#"{"host": "127.0.0.1", "prefix": "/v1/orders"}"#,
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["purged"], 2, "{answer}");
    assert_eq!(body_len(&gw, "/v1/orders/10").await, 10);
    assert_eq!(origin.hits("/v1/orders/10"), 2, "purged: fetched again");
    body_len(&gw, "/v1/other/30").await;
    assert_eq!(origin.hits("/v1/other/30"), 1, "another prefix stays");

    let out = cli(
        &gw,
        &["--url", &format!("http://{}/v1/other/30", gw.listen)],
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["purged"], 1, "{answer}");
    body_len(&gw, "/v1/other/30").await;
    assert_eq!(origin.hits("/v1/other/30"), 2);

    // A reload that leaves the route's cache settings alone keeps its entries...
    std::fs::write(&gw.config_path, format!("{}\n# touched\n", gw.config)).expect("rewrite");
    assert_eq!(gw.admin_post("/admin/reload").await.status().as_u16(), 200);
    body_len(&gw, "/v1/other/30").await;
    assert_eq!(origin.hits("/v1/other/30"), 2, "kept across the reload");
    // ...one that changes them leaves them behind.
    let changed = gw.config.replace(
        "[routes.cache]\n",
        "[routes.cache]\ndefault_ttl = \"30s\"\n",
    );
    assert_ne!(changed, gw.config);
    std::fs::write(&gw.config_path, changed).expect("rewrite");
    assert_eq!(gw.admin_post("/admin/reload").await.status().as_u16(), 200);
    body_len(&gw, "/v1/other/30").await;
    assert_eq!(origin.hits("/v1/other/30"), 3, "new settings, new key");

    let metrics = gw.metrics().await;
    assert!(
        metrics.lines().any(|l| l == "portico_cache_purged_total 3"),
        "{metrics}"
    );
}

/// Through the real gateway: the store stays within `max_bytes` by evicting, and a response
/// over `max_object_size` is passed whole to the client without being stored.
#[tokio::test]
async fn the_store_is_bounded_in_bytes_and_object_size() {
    let origin = SizedOrigin::start().await;
    let gw = Gateway::start(cached_route(
        &origin,
        "",
        "[cache]\nmax_bytes = 16384\nmax_object_size = 8192\n",
    ))
    .await;

    for _ in 0..2 {
        assert_eq!(body_len(&gw, "/v1/big/20000").await, 20000);
    }
    assert_eq!(origin.hits("/v1/big/20000"), 2, "too large to store");
    for _ in 0..2 {
        assert_eq!(body_len(&gw, "/v1/fits/8000").await, 8000);
    }
    assert_eq!(origin.hits("/v1/fits/8000"), 1, "at the limit: stored");

    for i in 0..40 {
        body_len(&gw, &format!("/v1/small/{i}/200")).await;
    }
    let state = gw.admin_json("/admin/cache").await;
    let cache = &state["cache"];
    assert!(cache["bytes"].as_u64().unwrap() <= 16384, "{state}");
    assert!(cache["evictions"].as_u64().unwrap() > 0, "{state}");
    assert!(cache["objects"].as_u64().unwrap() < 41, "{state}");
    let metrics = gw.metrics().await;
    let evictions = common::metric_value(&metrics, "portico_cache_evictions_total", &[]);
    assert!(evictions.unwrap_or(0.0) > 0.0, "{metrics}");
}
