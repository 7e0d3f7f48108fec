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

/// `(path, target)`: a request for `path` reaches the upstream as `target`.
async fn assert_targets(gw: &Gateway, up: &Upstream, cases: &[(&str, &str)]) {
    for &(path, target) in cases {
        let resp = gw.get(path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(up.last_request().uri, target, "{path}");
    }
}

/// The 1-based line and column of the first `needle` in `text`.
fn line_and_column(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("the needle is in the text");
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    (line, column)
}

/// What a reload keeps of an unchanged route (its compiled targets, rewrites, retry rules)
/// must never outlive a change to it: each step below changes what a stale route would
/// still do the old way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_recompiles_the_changed_route_keeps_the_others_and_refuses_an_invalid_change() {
    bounded(async {
        let one = Upstream::start("one").await;
        let two = Upstream::start("two").await;
        let ups = [&one, &two];
        let gw = Gateway::config()
            .route_with("a", "/a", "first", "rewrite_prefix = \"/one\"\n")
            .route_with("b", "/b", "first", "rewrite_prefix = \"/bee\"\n")
            .route("c", "/c", "second")
            .cluster("first", &[&one])
            .cluster("second", &[&two])
            .start()
            .await;
        let original = gw.config.clone();
        assert_targets(&gw, &one, &[("/a/x", "/one/x"), ("/b/x", "/bee/x")]).await;

        // `a`'s rewrite changed: `a` rewrites anew, `b` and `c` as before.
        let a_changed = original.replace("rewrite_prefix = \"/one\"", "rewrite_prefix = \"/two\"");
        assert_ne!(a_changed, original);
        reload(&gw, &a_changed).await;
        assert_targets(&gw, &one, &[("/a/x", "/two/x"), ("/b/x", "/bee/x")]).await;
        assert_served(&gw, &ups, &[("/c/x", "none", "two")]).await;

        // `a` moved to the other cluster: its target follows, `b` stays.
        let a_moved = a_changed.replace(
            "id = \"a\"\npath = \"/a\"\ncluster = \"first\"",
            "id = \"a\"\npath = \"/a\"\ncluster = \"second\"",
        );
        assert_ne!(a_moved, a_changed);
        reload(&gw, &a_moved).await;
        assert_targets(&gw, &two, &[("/a/x", "/two/x")]).await;
        assert_targets(&gw, &one, &[("/b/x", "/bee/x")]).await;

        // An invalid change to `b` is refused with the file, line, column and field, and
        // every route goes on as it was.
        let invalid = a_moved.replace(
            "id = \"b\"\npath = \"/b\"\ncluster = \"first\"",
            "id = \"b\"\npath = \"/b\"\ncluster = \"nope\"",
        );
        assert_ne!(invalid, a_moved);
        std::fs::write(&gw.config_path, &invalid).unwrap();
        let resp = gw.admin_post("/admin/reload").await;
        assert_eq!(resp.status(), 422);
        let body: serde_json::Value = resp.json().await.expect("reload answer");
        let (line, column) = line_and_column(&invalid, "\"nope\"");
        assert_eq!(
            body["error"].as_str(),
            Some(
                format!(
                    "{}:{line}:{column}: routes[1].cluster: unknown cluster `nope` (defined: first, second)",
                    gw.config_path.display()
                )
                .as_str()
            ),
            "{body}"
        );
        assert_targets(&gw, &two, &[("/a/x", "/two/x")]).await;
        assert_targets(&gw, &one, &[("/b/x", "/bee/x")]).await;

        // A valid change after the refused one applies against the running config.
        let b_changed = a_moved.replace("rewrite_prefix = \"/bee\"", "rewrite_prefix = \"/bea\"");
        reload(&gw, &b_changed).await;
        assert_targets(&gw, &one, &[("/b/x", "/bea/x")]).await;
        assert_targets(&gw, &two, &[("/a/x", "/two/x")]).await;
    })
    .await;
}
