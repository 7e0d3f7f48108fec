//! The admin API against a browser and against prying eyes, through a real `portico serve`:
//! it answers only requests naming an IP literal, `localhost` or a configured host (DNS
//! rebinding sends the attacker's name), and `/admin/config` shows no header secrets and no
//! passwords in URLs while the upstream still receives the real values.

mod common;

use common::*;

fn raw_admin(method: &str, path: &str, host: Option<&str>) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if let Some(host) = host {
        req.push_str(&format!("Host: {host}\r\n"));
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

        for path in ["/admin/config", "/metrics", "/readyz", "/admin/clusters"] {
            for host in ["evil.example", &format!("evil.example:{port}"), "localhost.evil.example"] {
                let resp = raw_request(gw.admin, raw_admin("GET", path, Some(host)).as_bytes()).await;
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
            raw_admin("POST", "/admin/reload", Some("evil.example")).as_bytes(),
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
            let resp =
                raw_request(gw.admin, raw_admin("GET", "/admin/config", Some(&host)).as_bytes())
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
            raw_admin("POST", "/admin/reload", Some("localhost")).as_bytes(),
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
