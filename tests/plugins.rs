//! The built-in plugins end to end through the real gateway: `request-id`, `headers`
//! (both directions) and `cors`, as route plugins and as global plugins (which also cover
//! requests no route matches).

mod common;

use common::*;

fn is_generated_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_accepted_or_generated_then_echoed_and_forwarded() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .global_plugin("request-id", "")
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .start()
            .await;

        // A well-formed client id is kept.
        let client_id = "req-42.a:b_c";
        let resp = gw.get_with("/x", &[("X-Request-Id", client_id)]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-request-id").as_deref(), Some(client_id));
        assert_eq!(up.last_request().header_all("x-request-id"), [client_id]);

        // None sent: one is generated, and the client and the upstream get the same.
        let mut generated = Vec::new();
        for _ in 0..2 {
            let resp = gw.get("/x").await;
            let id = header(&resp, "x-request-id").expect("an echoed id");
            assert!(is_generated_id(&id), "{id}");
            assert_eq!(
                up.last_request().header_all("x-request-id"),
                vec![id.as_str()]
            );
            generated.push(id);
        }
        assert_ne!(generated[0], generated[1], "ids are unique");

        // Malformed or oversized client ids are replaced, upstream too.
        let too_long = "a".repeat(129);
        for bad in ["has spaces in it", "semi;colon", too_long.as_str()] {
            let resp = gw.get_with("/x", &[("X-Request-Id", bad)]).await;
            let id = header(&resp, "x-request-id").expect("an echoed id");
            assert!(
                is_generated_id(&id),
                "`{bad}` should be replaced, got `{id}`"
            );
            assert_eq!(up.last_request().header_all("x-request-id"), [id]);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_with_a_custom_header_and_no_forwarding() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .route_with(
                "all",
                "/",
                "c",
                r#"
[[routes.plugins]]
name = "request-id"
header = "X-Correlation-Id"
forward = false
"#,
            )
            .cluster("c", &[&up])
            .start()
            .await;
        let resp = gw.get_with("/x", &[("X-Correlation-Id", "corr-1")]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-correlation-id").as_deref(), Some("corr-1"));
        assert_eq!(up.last_request().header("x-correlation-id"), None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_plugin_adds_sets_and_removes_in_both_directions() {
    bounded(async {
        let up = Upstream::start("a").await;
        up.add_response_header("X-Upstream-Secret", "internal");
        up.add_response_header("X-Resp-Set", "from-upstream");
        let gw = Gateway::config()
            .route_with("all", "/", "c", r#"
[[routes.plugins]]
name = "headers"
request = { add = { "X-Added" = ["one", "two"] }, set = { "X-Set" = "gateway" }, remove = ["X-Remove", "X-Forwarded-Host"] }
response = { add = { "X-Resp-Added" = "yes" }, set = { "X-Resp-Set" = "gateway" }, remove = ["X-Upstream-Secret"] }
"#)
            .cluster("c", &[&up])
            .start()
            .await;
        let resp = gw
            .get_with(
                "/x",
                &[
                    ("X-Set", "client"),
                    ("X-Remove", "client"),
                    ("X-Added", "client"),
                    ("X-Untouched", "client"),
                ],
            )
            .await;
        assert_eq!(resp.status(), 200);
        let seen = up.last_request();
        assert_eq!(seen.header_all("x-added"), ["client", "one", "two"]);
        assert_eq!(seen.header_all("x-set"), ["gateway"]);
        assert!(seen.header_all("x-remove").is_empty());
        assert_eq!(seen.header_all("x-untouched"), ["client"]);
        // Request edits apply after the proxy's own headers, so they can remove those too.
        assert!(seen.header_all("x-forwarded-host").is_empty());

        assert_eq!(header(&resp, "x-resp-added").as_deref(), Some("yes"));
        let set: Vec<_> = resp.headers().get_all("x-resp-set").iter().collect();
        assert_eq!(set, ["gateway"]);
        assert_eq!(header(&resp, "x-upstream-secret"), None);
        assert_eq!(header(&resp, "x-upstream").as_deref(), Some("a"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_plugins_run_before_route_plugins_and_after_them_on_the_response() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .global_plugin(
                "headers",
                r#"request = { set = { "X-Order" = "global" } }
response = { set = { "X-Order" = "global" } }"#,
            )
            .route_with(
                "all",
                "/",
                "c",
                r#"
[[routes.plugins]]
name = "headers"
request = { set = { "X-Order" = "route" } }
response = { set = { "X-Order" = "route" } }
"#,
            )
            .cluster("c", &[&up])
            .start()
            .await;
        let resp = gw.get("/x").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            up.last_request().header_all("x-order"),
            ["route"],
            "on the request the route plugin runs last"
        );
        assert_eq!(
            header(&resp, "x-order").as_deref(),
            Some("global"),
            "on the response the global plugin runs last"
        );
    })
    .await
}

const APP: &str = "https://app.example.com";

fn cors_config(up: &Upstream) -> String {
    format!(
        r#"[[plugins]]
name = "request-id"

[[plugins]]
name = "cors"
allow_origins = ["{APP}"]
allow_methods = ["GET", "POST"]
max_age = 600

[[routes]]
id = "api"
path = "/api"
cluster = "c"

[clusters.c]
endpoints = {}
"#,
        endpoints(&[up])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_is_answered_and_disallowed_origins_get_403() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::start(cors_config(&up)).await;
        let preflight = |origin: &str, method: &str| {
            gw.client
                .request(reqwest::Method::OPTIONS, gw.url("/api/items"))
                .header("Origin", origin)
                .header("Access-Control-Request-Method", method)
                .header("Access-Control-Request-Headers", "content-type")
                .send()
        };

        let resp = preflight(APP, "POST").await.unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        let methods = header(&resp, "access-control-allow-methods").unwrap_or_default();
        assert!(methods.contains("POST"), "{methods}");
        assert!(header(&resp, "access-control-allow-headers")
            .unwrap_or_default()
            .contains("content-type"));
        assert_eq!(
            header(&resp, "access-control-max-age").as_deref(),
            Some("600")
        );
        assert!(header(&resp, "vary").unwrap_or_default().contains("Origin"));
        assert!(
            header(&resp, "x-request-id").is_some(),
            "global request-id runs too"
        );

        let resp = preflight("https://evil.example.org", "POST").await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_eq!(header(&resp, "access-control-allow-origin"), None);

        let resp = preflight(APP, "DELETE").await.unwrap();
        assert_eq!(resp.status(), 403, "method not in allow_methods");

        assert_eq!(up.hits(), 0, "preflights never reach the upstream");

        // Actual cross-origin requests are proxied; only allowed origins get CORS headers.
        let resp = gw.get_with("/api/items", &[("Origin", APP)]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        let resp = gw
            .get_with("/api/items", &[("Origin", "https://evil.example.org")])
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "access-control-allow-origin"), None);
        assert_eq!(up.hits(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_plugins_also_apply_to_a_404() {
    bounded(async {
        let up = Upstream::start("a").await;
        let mut body = cors_config(&up);
        body = body.replacen(
            "[[routes]]",
            "[[plugins]]\nname = \"headers\"\nresponse = { set = { \"X-Gateway\" = \"portico\" } }\n\n[[routes]]",
            1,
        );
        let gw = Gateway::start(&body).await;
        let resp = gw
            .get_with(
                "/nowhere",
                &[("Origin", APP), ("X-Request-Id", "lost-request-1")],
            )
            .await;
        assert_eq!(resp.status(), 404);
        assert_eq!(
            header(&resp, "x-request-id").as_deref(),
            Some("lost-request-1")
        );
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(APP)
        );
        assert_eq!(header(&resp, "x-gateway").as_deref(), Some("portico"));
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["request_id"], "lost-request-1");

        // A preflight for a path no route matches is still answered by the global cors.
        let resp = gw
            .client
            .request(reqwest::Method::OPTIONS, gw.url("/nowhere"))
            .header("Origin", APP)
            .header("Access-Control-Request-Method", "GET")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(up.hits(), 0);
    })
    .await
}
