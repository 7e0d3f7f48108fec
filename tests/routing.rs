//! Routing through the real gateway: precedence of exact, prefix, method, header and host
//! matchers, 404/405 problem responses, path normalisation before matching (and what the
//! upstream then sees), and prefix stripping and rewriting.
//!
//! Every route here has its own cluster with one upstream named after the route, so the
//! `X-Upstream` response header says which route served a request.

mod common;

use common::*;

/// A gateway with one route per `(id, matcher lines)`, each to its own upstream named `id`.
async fn gateway_with_routes(routes: &[(&str, &str)]) -> (Gateway, Vec<Upstream>) {
    let mut upstreams = Vec::new();
    let mut config = Gateway::config();
    for (id, matcher) in routes {
        config = config.toml(&format!(
            "[[routes]]\nid = \"{id}\"\ncluster = \"{id}\"\n{matcher}"
        ));
    }
    for (id, _) in routes {
        let up = Upstream::start(id).await;
        config = config.cluster(id, &[&up]);
        upstreams.push(up);
    }
    (config.start().await, upstreams)
}

/// The route (upstream name) that served a reqwest response, or `status:NNN` when the
/// gateway answered itself.
fn served_by(resp: &reqwest::Response) -> String {
    match resp.headers().get("x-upstream") {
        Some(v) => v.to_str().unwrap().to_string(),
        None => format!("status:{}", resp.status().as_u16()),
    }
}

fn raw_served_by(resp: &RawResponse) -> String {
    match resp.header("x-upstream") {
        Some(v) => v.to_string(),
        None => format!("status:{}", resp.status),
    }
}

fn upstream<'a>(ups: &'a [Upstream], name: &str) -> &'a Upstream {
    ups.iter()
        .find(|u| u.state.name == name)
        .unwrap_or_else(|| panic!("no upstream {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_beats_prefix_and_deeper_prefix_beats_shorter() {
    bounded(async {
        let (gw, _ups) = gateway_with_routes(&[
            ("api", "path = \"/api\""),
            ("users-prefix", "path = \"/api/users\""),
            (
                "users-exact",
                "path = \"/api/users\"\npath_match = \"exact\"",
            ),
            ("v1", "path = \"/v1\""),
        ])
        .await;
        for (path, want) in [
            ("/api/users", "users-exact"),
            ("/api/users?page=2", "users-exact"),
            ("/api/users/", "users-prefix"),
            ("/api/users/42", "users-prefix"),
            ("/api/users/42/orders", "users-prefix"),
            ("/api/orders", "api"),
            ("/api", "api"),
            ("/api/", "api"),
            ("/apix", "status:404"),
            ("/api-users", "status:404"),
            ("/v1", "v1"),
            ("/v1/", "v1"),
            ("/v1/things", "v1"),
            ("/v10", "status:404"),
            ("/v10/things", "status:404"),
            ("/", "status:404"),
        ] {
            let resp = gw.get(path).await;
            assert_eq!(served_by(&resp), want, "GET {path}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_restricted_routes_and_405_with_allow() {
    bounded(async {
        let (gw, _ups) = gateway_with_routes(&[
            (
                "items-read",
                "path = \"/items\"\nmethods = [\"GET\", \"HEAD\"]",
            ),
            (
                "items-write",
                "path = \"/items\"\nmethods = [\"POST\", \"PUT\"]",
            ),
        ])
        .await;
        for (method, want) in [
            ("GET", "items-read"),
            ("HEAD", "items-read"),
            ("POST", "items-write"),
            ("PUT", "items-write"),
        ] {
            let resp = gw
                .client
                .request(method.parse().unwrap(), gw.url("/items/7"))
                .send()
                .await
                .unwrap();
            assert_eq!(served_by(&resp), want, "{method} /items/7");
        }

        let resp = gw.client.delete(gw.url("/items/7")).send().await.unwrap();
        assert_eq!(resp.status(), 405);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        assert_eq!(
            resp.headers()["allow"].to_str().unwrap(),
            "GET, HEAD, POST, PUT"
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["status"], 405);
        assert_eq!(body["instance"], "/items/7");
        assert_eq!(
            body["allowed"],
            serde_json::json!(["GET", "HEAD", "POST", "PUT"])
        );
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_matchers_are_more_specific_than_open_routes() {
    bounded(async {
        let (gw, _ups) = gateway_with_routes(&[
            ("svc", "path = \"/svc\""),
            (
                "svc-canary",
                "path = \"/svc\"\nheaders = [{ name = \"X-Canary\", value = \"1\" }]",
            ),
            (
                "svc-beta",
                "path = \"/svc\"\nheaders = [{ name = \"X-Beta\" }]",
            ),
        ])
        .await;
        for (headers, want) in [
            (vec![], "svc"),
            (vec![("X-Canary", "1")], "svc-canary"),
            (vec![("x-canary", "1")], "svc-canary"),
            (vec![("X-Canary", "2")], "svc"),
            (vec![("X-Beta", "anything")], "svc-beta"),
            (vec![("X-Beta", "")], "svc-beta"),
        ] {
            let resp = gw.get_with("/svc/x", &headers).await;
            assert_eq!(served_by(&resp), want, "headers {headers:?}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_wildcard_beats_any_host() {
    bounded(async {
        let (gw, _ups) = gateway_with_routes(&[
            ("host-any", "path = \"/h\""),
            ("host-wild", "hosts = [\"*.example.com\"]\npath = \"/h\""),
            ("host-exact", "hosts = [\"api.example.com\"]\npath = \"/h\""),
            (
                "admin-only",
                "hosts = [\"admin.example.com\"]\npath = \"/admin-only\"",
            ),
        ])
        .await;
        for (host, path, want) in [
            ("api.example.com", "/h", "host-exact"),
            ("API.Example.COM", "/h", "host-exact"),
            ("api.example.com:8080", "/h/x", "host-exact"),
            ("foo.example.com", "/h", "host-wild"),
            ("a.b.example.com", "/h", "host-wild"),
            ("example.com", "/h", "host-any"),
            ("other.org", "/h", "host-any"),
            ("admin.example.com", "/admin-only", "admin-only"),
            ("admin.example.com", "/h", "host-wild"),
            ("other.org", "/admin-only", "status:404"),
            ("api.example.com", "/admin-only", "status:404"),
        ] {
            let resp = gw.raw_get(path, &[("Host", host)]).await;
            assert_eq!(raw_served_by(&resp), want, "Host: {host} GET {path}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_problem() {
    bounded(async {
        let (gw, ups) = gateway_with_routes(&[("api", "path = \"/api\"")]).await;
        let resp = gw.get("/nowhere/at/all?x=1").await;
        assert_eq!(resp.status(), 404);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["status"], 404);
        assert_eq!(body["instance"], "/nowhere/at/all");
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(body["type"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(
            body["request_id"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert_eq!(upstream(&ups, "api").hits(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_double_slashes_are_normalised_before_routing() {
    bounded(async {
        // Escaped slashes are refused by default (tests/request_integrity.rs); allowed here
        // to show how they are normalised and that they never split a segment.
        let (gw, ups) = gateway_with_routes(&[
            ("admin", "path = \"/admin\"\nallow_escaped_slashes = true"),
            ("public", "path = \"/public\"\nallow_escaped_slashes = true"),
        ])
        .await;
        let admin = upstream(&ups, "admin");
        let public = upstream(&ups, "public");
        for (target, want_route, want_uri) in [
            ("/public/../admin/x", "admin", "/admin/x"),
            ("/public/%2e%2e/admin/x", "admin", "/admin/x"),
            ("/public/%2E%2E/admin/x", "admin", "/admin/x"),
            ("/public/.%2e/admin/x", "admin", "/admin/x"),
            ("//admin//x", "admin", "/admin/x"),
            (
                "/public/./../admin/x?q=1&r=%2F",
                "admin",
                "/admin/x?q=1&r=%2F",
            ),
            ("/public/../../../admin", "admin", "/admin"),
            ("/admin/a%2Fb", "admin", "/admin/a%2Fb"),
            ("/admin/a%2fb", "admin", "/admin/a%2Fb"),
            ("/public/..%2Fadmin/x", "public", "/public/..%2Fadmin/x"),
            ("/public/%7Euser", "public", "/public/~user"),
        ] {
            let resp = gw.raw_get(target, &[]).await;
            assert_eq!(
                raw_served_by(&resp),
                want_route,
                "GET {target}: {}",
                resp.text()
            );
            let up = if want_route == "admin" { admin } else { public };
            assert_eq!(up.last_request().uri, want_uri, "GET {target}");
        }
        let resp = gw.raw_get("/admin/%zz", &[]).await;
        assert_eq!(resp.status, 400, "bad escape: {}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_rewrite_prefix_keep_the_query() {
    bounded(async {
        let (gw, ups) = gateway_with_routes(&[
            ("strip", "path = \"/strip\"\nstrip_prefix = true"),
            ("rw", "path = \"/old\"\nrewrite_prefix = \"/new/api\""),
        ])
        .await;
        let strip = upstream(&ups, "strip");
        let rw = upstream(&ups, "rw");
        for (path, up, want_uri) in [
            ("/strip/a/b?x=1&y=two", strip, "/a/b?x=1&y=two"),
            ("/strip", strip, "/"),
            ("/strip?x=1", strip, "/?x=1"),
            ("/strip/", strip, "/"),
            ("/old/items?x=1", rw, "/new/api/items?x=1"),
            ("/old/items/7", rw, "/new/api/items/7"),
            ("/old", rw, "/new/api"),
        ] {
            let resp = gw.get(path).await;
            assert_eq!(resp.status(), 200, "GET {path}");
            assert_eq!(up.last_request().uri, want_uri, "GET {path}");
        }
        assert_eq!(gw.get("/oldx").await.status(), 404);
        // Normalisation happens first, then the rewrite.
        let resp = gw.raw_get("/strip/../old/z?k=v", &[]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(rw.last_request().uri, "/new/api/z?k=v");
    })
    .await
}
