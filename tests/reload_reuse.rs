//! Reloads that reuse the running config's unchanged routes (`src/config/by_route.rs`) through
//! the real gateway: a changed route's plugin table takes effect while its neighbours keep
//! serving, a reload of the same text changes nothing (not even the config version), a route
//! whose own text is unchanged follows its cluster to new endpoints, and a changed route file
//! whose routes were reordered still routes each path to its own route.

mod common;

use common::*;

/// Writes `text` as the gateway's config and reloads it; returns the new config version.
async fn reload(gw: &Gateway, text: &str) -> String {
    std::fs::write(&gw.config_path, text).unwrap();
    let resp = gw.admin_post("/admin/reload").await;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("reload answer");
    assert_eq!(status, 200, "{body}");
    body["version"].as_str().expect("version").to_string()
}

/// What the upstream saw of the last request, and who answered it.
async fn tag_and_upstream(gw: &Gateway, path: &str, upstreams: &[&Upstream]) -> (String, String) {
    let resp = gw.get(path).await;
    assert_eq!(resp.status(), 200, "{path}");
    let served = resp.headers()["x-upstream"].to_str().unwrap().to_string();
    let up = upstreams
        .iter()
        .find(|u| u.state.name == served)
        .expect("a known upstream");
    let tag = up
        .last_request()
        .header("x-tag")
        .unwrap_or("none")
        .to_string();
    (tag, served)
}

/// Each `(path, tag, upstream)`: a request for `path` reaches `upstream` with `X-Tag: tag`
/// (`none`: without one).
async fn assert_served(gw: &Gateway, ups: &[&Upstream], cases: &[(&str, &str, &str)]) {
    for &(path, tag, upstream) in cases {
        assert_eq!(
            tag_and_upstream(gw, path, ups).await,
            (tag.to_string(), upstream.to_string()),
            "{path}"
        );
    }
}

fn tagged(tag: &str) -> String {
    route_plugin(
        "headers",
        &format!("request = {{ set = {{ \"X-Tag\" = \"{tag}\" }} }}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_reuse_unchanged_routes_and_apply_every_change() {
    bounded(async {
        let one = Upstream::start("one").await;
        let two = Upstream::start("two").await;
        let ups = [&one, &two];
        let gw = Gateway::config()
            .route_with("a", "/a", "first", &tagged("a1"))
            .route_with("b", "/b", "first", &tagged("b1"))
            .route("c", "/c", "second")
            .cluster("first", &[&one])
            .cluster("second", &[&two])
            .start()
            .await;
        let original = gw.config.clone();
        assert_served(&gw, &ups, &[("/a/x", "a1", "one")]).await;
        let version = gw.admin_json("/readyz").await["config_version"]
            .as_str()
            .unwrap()
            .to_string();

        // The same text: nothing changes, the version included.
        assert_eq!(reload(&gw, &original).await, version);
        assert_served(&gw, &ups, &[("/a/x", "a1", "one"), ("/b/x", "b1", "one")]).await;

        // One route's plugin table changed: that route alone behaves anew.
        let a_changed = original.replace(&tagged("a1"), &tagged("a2"));
        assert_ne!(a_changed, original);
        let changed_version = reload(&gw, &a_changed).await;
        assert_ne!(changed_version, version);
        assert_served(&gw, &ups, &[("/a/x", "a2", "one"), ("/b/x", "b1", "one")]).await;

        // Back to the first text: the first version again.
        assert_eq!(reload(&gw, &original).await, version);
        assert_served(&gw, &ups, &[("/a/x", "a1", "one")]).await;

        // The routes' text unchanged, their cluster's endpoints changed: they follow it.
        let moved = original.replace(
            &format!("[clusters.first]\nendpoints = {}", endpoints(&[&one])),
            &format!("[clusters.first]\nendpoints = {}", endpoints(&[&two])),
        );
        assert_ne!(moved, original);
        assert_ne!(reload(&gw, &moved).await, version);
        assert_served(&gw, &ups, &[("/a/x", "a1", "two"), ("/b/x", "b1", "two")]).await;

        // The same routes in another order, one of them changed: each path keeps its route.
        let route_a = format!(
            "[[routes]]\nid = \"a\"\npath = \"/a\"\ncluster = \"first\"\n{}",
            tagged("a1")
        );
        assert!(moved.contains(&route_a), "{moved}");
        let reordered = format!(
            "{}\n{}",
            moved.replace(&route_a, ""),
            route_a.replace("\"/a\"", "\"/a2\"")
        );
        reload(&gw, &reordered).await;
        assert_served(
            &gw,
            &ups,
            &[
                ("/a2/x", "a1", "two"),
                ("/b/x", "b1", "two"),
                ("/c/x", "none", "two"),
            ],
        )
        .await;
        assert_eq!(gw.get("/a/x").await.status(), 404);
    })
    .await;
}
