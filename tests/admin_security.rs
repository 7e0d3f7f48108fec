//! The admin API against a browser, through a real `portico serve`: it answers only
//! requests naming an IP literal, `localhost` or a configured host (DNS rebinding sends the
//! attacker's name).

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
        let gw = Gateway::builder(&format!(
            "[[routes]]\nid = \"all\"\npath = \"/\"\ncluster = \"c\"\n\n[clusters.c]\nendpoints = {}\n",
            endpoints(&[&up])
        ))
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
