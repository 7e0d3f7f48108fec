//! The admin API against a browser and against prying eyes, through a real `portico serve`:
//! everything but `/healthz` and `/readyz` (and `/metrics`, unless `metrics_auth`) needs
//! the admin bearer token (401 problem+json without it, or with a wrong one, or when none
//! is configured), the token file is read again on reload, `/metrics` can have a listener
//! of its own; the API answers only requests naming an IP literal, `localhost` or a
//! configured host (DNS rebinding sends the attacker's name); and `/admin/config` shows
//! no header secrets, no passwords in URLs and not the token, while the upstream still
//! receives the real values.

mod common;

use common::*;

/// A raw admin request with `Authorization: Bearer <token>` when a token is given.
fn raw_admin(method: &str, path: &str, host: Option<&str>, token: Option<&str>) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if let Some(host) = host {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    if let Some(token) = token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_hosts_it_does_not_serve() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .admin("allowed_hosts = [\"admin.internal\"]")
            .start()
            .await;
        let port = gw.admin.port();
        let version = gw.admin_json("/admin/config").await["version"].clone();
        let token = gw.admin_token.as_deref();

        for path in ["/admin/config", "/metrics", "/readyz", "/admin/clusters"] {
            for host in ["evil.example", &format!("evil.example:{port}"), "localhost.evil.example"] {
                // Even with the right token: a rebound page must not get it to work.
                let resp =
                    raw_request(gw.admin, raw_admin("GET", path, Some(host), token).as_bytes())
                        .await;
                assert_eq!(resp.status, 421, "GET {path} Host {host}: {}", resp.text());
                assert_eq!(resp.header("content-type"), Some("application/problem+json"));
                let body = resp.json();
                assert_eq!(body["status"], 421);
                assert_eq!(body["type"], "urn:portico:problem:admin-host-not-allowed");
                let text = resp.text();
                assert!(!text.contains("clusters") && !text.contains(&up.address()), "{text}");
            }
        }
        // A rebound page cannot reload either.
        let resp = raw_request(
            gw.admin,
            raw_admin("POST", "/admin/reload", Some("evil.example"), token).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 421);
        assert!(gw.stderr().contains("admin API: refused POST /admin/reload"));
        // Two Host headers, one of them fine, get no answer from the API either (Pingora
        // closes the connection; the API itself would answer 421).
        let mut conn = RawConn::connect(gw.admin).await;
        conn.send(
            b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        if let Some(resp) = conn.read_response().await {
            assert!([400, 421].contains(&resp.status), "{}", resp.text());
        }

        // What operators and tools send keeps working.
        for host in [
            format!("127.0.0.1:{port}"),
            "127.0.0.1".to_string(),
            format!("localhost:{port}"),
            "LocalHost".to_string(),
            format!("[::1]:{port}"),
            "admin.internal".to_string(),
            format!("Admin.Internal:{port}"),
        ] {
            let resp = raw_request(
                gw.admin,
                raw_admin("GET", "/admin/config", Some(&host), token).as_bytes(),
            )
            .await;
            assert_eq!(resp.status, 200, "Host {host}: {}", resp.text());
            assert_eq!(resp.json()["version"], version);
        }
        // An HTTP/1.0 health checker without Host (no browser sends none).
        let resp = raw_request(gw.admin, b"GET /healthz HTTP/1.0\r\n\r\n").await;
        assert_eq!(resp.status, 200);
        // Reload from an allowed name.
        let resp = raw_request(
            gw.admin,
            raw_admin("POST", "/admin/reload", Some("localhost"), token).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        // The proxy itself does not care about the admin rule.
        let resp = gw.raw_get("/x", &[("Host", "evil.example")]).await;
        assert_eq!(resp.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_hides_header_secrets_and_url_passwords() {
    bounded(async {
        let up = Upstream::start("a").await;
        let otlp_port = free_addr().port();
        let gw = Gateway::config()
            .toml(&format!(
                r#"[tracing]
otlp_endpoint = "http://otel:pw-s3cret@127.0.0.1:{otlp_port}/v1/traces"
sample_ratio = 0.0
service_name = "visible-service"
headers = {{ "x-tenant" = "tenant-s3cret" }}"#
            ))
            .route_with(
                "all",
                "/",
                "c",
                r#"
[[routes.plugins]]
name = "headers"
request.set = { "Authorization" = "Bearer auth-s3cret", "X-Api-Key" = "key-s3cret", "Cookie" = "session=cookie-s3cret", "X-Callback" = "https://hook:url-s3cret@hooks.example/cb", "X-Plain" = "plain-s3cret" }
response.set = { "X-Served-By" = "edge-1" }"#,
            )
            .cluster("c", &[&up])
            .start()
        .await;

        // The upstream gets the real values: nothing changes for proxied requests.
        let resp = gw.get("/x").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()),
            Some("edge-1")
        );
        let seen = up.last_request();
        assert_eq!(seen.header("authorization"), Some("Bearer auth-s3cret"));
        assert_eq!(seen.header("x-api-key"), Some("key-s3cret"));
        assert_eq!(seen.header("cookie"), Some("session=cookie-s3cret"));
        assert_eq!(
            seen.header("x-callback"),
            Some("https://hook:url-s3cret@hooks.example/cb")
        );

        let resp = gw.admin_get("/admin/config").await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(!text.contains("s3cret"), "a secret leaks from /admin/config: {text}");
        let token = gw.admin_token.as_deref().unwrap();
        assert!(!text.contains(token), "the admin token leaks from /admin/config: {text}");
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        let plugins = &config["config"]["routes"][0]["plugins"];
        let set = &plugins[0]["request"]["set"];
        for name in ["Authorization", "X-Api-Key", "Cookie", "X-Callback", "X-Plain"] {
            assert_eq!(set[name], "<redacted>", "{name}: {set}");
        }
        let tracing = &config["config"]["tracing"];
        assert!(
            tracing["otlp_endpoint"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://otel:<redacted>@127.0.0.1:")),
            "{tracing}"
        );
        assert_eq!(tracing["headers"]["x-tenant"], "<redacted>");
        assert_eq!(tracing["service_name"], "visible-service");
        assert_eq!(
            config["config"]["clusters"]["c"]["endpoints"][0]["address"],
            up.address().as_str(),
            "the rest of the config stays readable"
        );
    })
    .await
}

/// A 401 problem+json with `WWW-Authenticate: Bearer realm="portico-admin"[, error=…]`.
fn assert_unauthorized(resp: &RawResponse, what: &str, invalid_token: bool) {
    assert_eq!(resp.status, 401, "{what}: {}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer realm="portico-admin""#),
        "{what}: {challenge}"
    );
    assert_eq!(
        challenge.contains(r#"error="invalid_token""#),
        invalid_token,
        "{what}: {challenge}"
    );
    let body = resp.json();
    assert_eq!(body["status"], 401);
    assert_eq!(body["type"], "urn:portico:problem:admin-unauthorized");
    let text = resp.text();
    assert!(
        !text.contains("clusters") && !text.contains("\"config\""),
        "{what}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_except_for_health_and_readiness() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .start()
            .await;
        let token = gw.admin_token.clone().unwrap();
        let version = gw.admin_json("/admin/config").await["version"].clone();
        let wrong = format!("{}x", &token[..token.len() - 1]);
        let protected = [
            ("GET", "/admin/config"),
            ("GET", "/admin/clusters"),
            ("POST", "/admin/reload"),
            ("GET", "/no/such/endpoint"),
        ];
        for (method, path) in protected {
            let send = |extra: &str| {
                let req = format!(
                    "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                );
                async move { raw_request(gw.admin, req.as_bytes()).await }
            };
            let what = format!("{method} {path}");
            assert_unauthorized(&send("").await, &format!("{what} without a token"), false);
            for bad in [
                format!("Authorization: Bearer {wrong}\r\n"),
                format!("Authorization: Bearer {token}x\r\n"),
                format!("Authorization: Bearer {}\r\n", &token[..16]),
            ] {
                assert_unauthorized(&send(&bad).await, &format!("{what} with {bad:?}"), true);
            }
            // A scheme without a token presents no credentials (RFC 6750 §3.1: no error).
            let bare = "Authorization: Bearer \r\n";
            assert_unauthorized(&send(bare).await, &format!("{what} with {bare:?}"), false);
            for odd in [
                format!("Authorization: Basic {token}\r\n"),
                format!("Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n"),
            ] {
                let resp = send(&odd).await;
                // Pingora may refuse a doubled header itself (400); never a 2xx.
                assert!([400, 401].contains(&resp.status), "{what} with {odd:?}: {}", resp.text());
            }
            let resp = send(&format!("Authorization: bearer  {token}\r\n")).await;
            let expected = if path == "/no/such/endpoint" { 404 } else { 200 };
            assert_eq!(resp.status, expected, "{what} with the token: {}", resp.text());
        }
        // Health, readiness and (by default) metrics need nothing.
        for path in ["/healthz", "/readyz", "/metrics"] {
            let resp = raw_request(gw.admin, raw_admin("GET", path, Some("127.0.0.1"), None).as_bytes()).await;
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        }
        // Refusals are counted, and the refused reloads changed nothing.
        let metrics = gw.metrics().await;
        for reason in ["missing", "invalid"] {
            let n = metric_value(&metrics, "portico_admin_unauthorized_total", &[("reason", reason)])
                .unwrap_or(0.0);
            assert!(n >= 4.0, "{reason}: {n}\n{metrics}");
        }
        assert_eq!(gw.admin_json("/admin/config").await["version"], version);
        assert!(gw.stderr().contains("admin API: refused"), "{}", gw.stderr());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_nothing_protected_answers() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .no_admin_token()
            .start()
            .await;
        for path in ["/admin/config", "/admin/clusters"] {
            let resp = raw_request(
                gw.admin,
                raw_admin("GET", path, Some("127.0.0.1"), Some(&new_admin_token())).as_bytes(),
            )
            .await;
            assert_eq!(resp.status, 401, "{path}");
            assert!(resp.json()["detail"]
                .as_str()
                .unwrap()
                .contains("no admin token is configured"));
        }
        for path in ["/healthz", "/readyz", "/metrics"] {
            let resp = gw.admin_get(path).await;
            assert_eq!(resp.status(), 200, "{path}");
        }
        // The operator is told, at start and by `portico check`.
        assert!(
            gw.stderr().contains("admin: no token or token_file"),
            "{}",
            gw.stderr()
        );
        let out = gw
            .portico_command()
            .args(["check", "-c"])
            .arg(&gw.config_path)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{out:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_auth_and_a_metrics_listener_of_its_own() {
    bounded(async {
        let up = Upstream::start("a").await;
        let metrics_addr = free_addr();
        let gw = Gateway::config()
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .admin(&format!(
                "metrics_auth = true\nmetrics_address = \"{metrics_addr}\""
            ))
            .start()
            .await;
        let token = gw.admin_token.clone().unwrap();
        for addr in [gw.admin, metrics_addr] {
            let resp = raw_request(
                addr,
                raw_admin("GET", "/metrics", Some("127.0.0.1"), None).as_bytes(),
            )
            .await;
            assert_unauthorized(&resp, &format!("/metrics on {addr}"), false);
            let resp = raw_request(
                addr,
                raw_admin("GET", "/metrics", Some("127.0.0.1"), Some(&token)).as_bytes(),
            )
            .await;
            assert_eq!(resp.status, 200, "{addr}");
            assert!(
                resp.text().contains("portico_active_requests"),
                "{}",
                resp.text()
            );
        }
        // The metrics listener serves nothing else, token or not.
        for path in ["/admin/config", "/admin/reload", "/healthz"] {
            let resp = raw_request(
                metrics_addr,
                raw_admin("GET", path, Some("127.0.0.1"), Some(&token)).as_bytes(),
            )
            .await;
            assert_eq!(resp.status, 404, "{path}: {}", resp.text());
        }
        let resp = raw_request(
            metrics_addr,
            raw_admin("POST", "/admin/reload", Some("127.0.0.1"), Some(&token)).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 404);
        // /healthz and /readyz stay open on the admin listener.
        let resp = raw_request(
            gw.admin,
            raw_admin("GET", "/readyz", Some("127.0.0.1"), None).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200);

        // metrics_auth = false (the default): open on both listeners.
        let metrics_addr = free_addr();
        let gw = Gateway::config()
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .admin(&format!("metrics_address = \"{metrics_addr}\""))
            .start()
            .await;
        for addr in [gw.admin, metrics_addr] {
            let resp = raw_request(
                addr,
                raw_admin("GET", "/metrics", Some("127.0.0.1"), None).as_bytes(),
            )
            .await;
            assert_eq!(resp.status, 200, "{addr}");
        }
        // A moved metrics listener needs a new process: the reload says so.
        let moved = gw
            .config
            .replace(&metrics_addr.to_string(), &free_addr().to_string());
        std::fs::write(&gw.config_path, moved).unwrap();
        let reloaded = gw.admin_post("/admin/reload").await;
        assert_eq!(reloaded.status(), 200);
        let body: serde_json::Value = reloaded.json().await.unwrap();
        assert_eq!(
            body["upgrade_required"], "metrics address changed",
            "{body}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_read_again_on_reload() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let up = Upstream::start("a").await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        let (old, new) = (new_admin_token(), new_admin_token());
        let write = |token: &str| {
            let tmp = dir.path().join("admin.token.new");
            std::fs::write(&tmp, format!("{token}\n")).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        };
        write(&old);
        let gw = Gateway::config()
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .no_admin_token()
            .admin(&format!("token_file = \"{}\"", file.display()))
            .start()
            .await;
        let get = |token: &str| {
            let req = raw_admin("GET", "/admin/clusters", Some("127.0.0.1"), Some(token));
            async move { raw_request(gw.admin, req.as_bytes()).await.status }
        };
        assert_eq!(get(&old).await, 200);
        assert_eq!(get(&new).await, 401);
        // Rotate: write the new token, reload with the old one.
        write(&new);
        let resp = raw_request(
            gw.admin,
            raw_admin("POST", "/admin/reload", Some("127.0.0.1"), Some(&old)).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(get(&old).await, 401);
        assert_eq!(get(&new).await, 200);

        // A token file readable by everyone is refused at reload (and the running token
        // stays), with the field named.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let resp = raw_request(
            gw.admin,
            raw_admin("POST", "/admin/reload", Some("127.0.0.1"), Some(&new)).as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 422, "{}", resp.text());
        assert!(resp.text().contains("admin.token_file"), "{}", resp.text());
        assert_eq!(get(&new).await, 200);
        let out = gw
            .portico_command()
            .args(["check", "-c"])
            .arg(&gw.config_path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        let line = gw
            .config
            .lines()
            .position(|l| l.starts_with("token_file"))
            .unwrap()
            + 1;
        let place = format!("{}:{line}:14: admin.token_file: ", gw.config_path.display());
        assert!(
            err.contains(&place) && err.contains("readable by every user"),
            "{place}\n{err}"
        );
    })
    .await
}
