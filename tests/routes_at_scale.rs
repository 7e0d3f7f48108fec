//! Config at scale: the generated 100,000-route config of `benches/support/scale_config.rs`
//! (hosts × paths × versions: prefix and exact paths, versions in the URI, in a header and
//! through portico's versioning, jwt / rate-limit / headers plugins) loads, lints clean,
//! builds a snapshot whose every kind of route answers the requests meant for it, and is
//! served and reloaded by the real gateway. Correctness only: the timings are the business
//! of `benches/config_scale.rs` and `benches/config_scale.sh`.

mod common;
#[path = "../benches/support/scale_config.rs"]
mod scale_config;

use std::time::Duration;

use common::{bounded_by, Gateway, Upstream};
use portico::proxy::{resolve, GatewayError};
use scale_config::{probe, Probe, Spec};

const ROUTES: usize = 100_000;

fn request(p: &Probe) -> pingora_http::RequestHeader {
    let method = http::Method::from_bytes(p.method.as_bytes()).expect("method");
    let mut req = pingora_http::RequestHeader::build(method, p.path.as_bytes(), None).unwrap();
    req.insert_header("host", p.host.as_str()).unwrap();
    for (name, value) in &p.headers {
        req.insert_header(*name, value.as_str()).unwrap();
    }
    req
}

/// Probes of every route kind, on the first, a middle, a wildcard, a two-name and the last
/// host, at the first and the last version.
fn probes(spec: &Spec) -> Vec<Probe> {
    let hosts = [0, spec.hosts / 2, 48, 59, spec.hosts - 1];
    let mut all = Vec::new();
    for h in hosts {
        for p in [0, 11, 22, 33, 44, 55, 66, 77, 88, 99, 240, 245, 249] {
            for k in [1, spec.versions] {
                all.push(probe(h, p, k));
            }
        }
    }
    all
}

#[test]
fn a_100k_route_config_loads_lints_clean_and_routes_every_kind() {
    let spec = Spec::with_routes(ROUTES);
    let text = scale_config::generate(&spec);
    let config = portico::config::load_str("scale.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.routes.len(), ROUTES);
    // The generated config has no admin token (a warning of its own); no route warns.
    let warnings = portico::config::lint(&config);
    assert!(warnings.iter().all(|w| w.field == "admin"), "{warnings:?}");
    let snapshot =
        portico::runtime::Snapshot::build(config, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.router.len(), ROUTES);

    for p in probes(&spec) {
        let resolved = resolve(&snapshot, &request(&p)).unwrap_or_else(|e| panic!("{p:?}: {e:?}"));
        assert_eq!(&*resolved.route.id, p.route, "{p:?}");
        assert_eq!(resolved.target.version.as_deref(), p.version, "{p:?}");
    }

    // What must not route: the routes' own limits hold at this size too.
    let refused = |p: Probe| match resolve(&snapshot, &request(&p)) {
        Ok(r) => panic!("{p:?} reached {}", r.route.id),
        Err(e) => e,
    };
    // The second name of a two-name host is served; a name of no route is not.
    let mut other = probe(59, 0, 1);
    other.host = "api59.example.org".into();
    assert_eq!(
        &*resolve(&snapshot, &request(&other)).unwrap().route.id,
        "h59-p0-v1"
    );
    other.host = "api59.example.net".into();
    assert!(matches!(refused(other), GatewayError::NotFound));
    // Exact paths are exact; a version that does not exist finds nothing.
    let mut deeper = probe(3, 13, 2);
    deeper.path.push_str("/more");
    assert!(matches!(refused(deeper), GatewayError::NotFound));
    let mut v9 = probe(3, 10, 2);
    v9.path = v9.path.replace("/v2/", "/v9/");
    assert!(matches!(refused(v9), GatewayError::NotFound));
    // `on_mismatch = "405"` answers a wrong method with the allowed ones.
    let mut post = probe(7, 14, 1);
    post.method = "POST";
    assert!(matches!(refused(post), GatewayError::MethodNotAllowed(_)));
    // `on_mismatch = "404"` stops a request without its header matcher.
    let mut no_tenant = probe(7, 19, 1);
    no_tenant.headers.clear();
    assert!(matches!(refused(no_tenant), GatewayError::NotFound));
    // A header-chosen version that no route has.
    let mut header_v = probe(7, 15, 1);
    header_v.headers = vec![("accept-version", "7".into())];
    assert!(matches!(refused(header_v), GatewayError::NotFound));
    // portico's versioning refuses an unknown version in the URI.
    let mut unknown = probe(7, 16, 1);
    unknown.path = unknown.path.replace("/v3/", "/v8/");
    assert!(matches!(
        refused(unknown),
        GatewayError::UnknownVersion { .. }
    ));
}

/// Sends `p` through the gateway; returns the status and the path the upstream saw.
async fn send(gw: &Gateway, up: &Upstream, p: &Probe) -> (u16, Option<String>) {
    let mut raw = format!("{} {} HTTP/1.1\r\nHost: {}\r\n", p.method, p.path, p.host);
    for (name, value) in &p.headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("content-length: 0\r\n\r\n");
    let before = up.hits();
    let resp = gw.raw(&raw).await;
    let seen = (up.hits() > before).then(|| up.last_request().uri);
    (resp.status, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_and_reloads_100k_routes() {
    bounded_by(Duration::from_secs(600), async {
        let up = Upstream::start("scale").await;
        let mut spec = Spec::with_routes(ROUTES);
        spec.upstream = up.addr.to_string();
        let gw = Gateway::builder(scale_config::body(&spec))
            .no_access_log()
            .ready_within(Duration::from_secs(300))
            .start()
            .await;

        // Routes with the jwt plugin (path kinds 4, 5 and 9) refuse a request without a
        // token before anything is fetched or proxied; the others proxy it.
        let protected = |p: &Probe| p.route.split('-').nth(1).is_some_and(|k| {
            let kind = k.trim_start_matches('p').parse::<usize>().unwrap() % 10;
            matches!(kind, 4 | 5 | 9)
        });
        let check = |p: Probe, (status, seen): (u16, Option<String>)| {
            if protected(&p) {
                assert_eq!((status, seen), (401, None), "{p:?}");
            } else {
                assert_eq!(status, 200, "{p:?}");
                assert!(seen.is_some(), "{p:?} did not reach the upstream");
            }
        };
        let sample = |all: Vec<Probe>| all.into_iter().step_by(3);
        for p in sample(probes(&spec)) {
            let answer = send(&gw, &up, &p).await;
            check(p, answer);
        }
        // Version 3 of a versioned route has its own upstream prefix.
        let (_, seen) = send(&gw, &up, &probe(5, 66, 2)).await;
        assert_eq!(seen.as_deref(), Some("/next/svc6/r66/list"));

        // Reload the same file, then one with a route more: both take effect, and the
        // routes that were there keep answering.
        let version = |v: serde_json::Value| v["config_version"].as_str().unwrap().to_string();
        let before = version(gw.admin_json("/readyz").await);
        let reload = || async {
            let mut req = gw
                .client
                .post(gw.admin_url("/admin/reload"))
                .timeout(Duration::from_secs(300));
            if let Some(token) = &gw.admin_token {
                req = req.bearer_auth(token);
            }
            let resp = req.send().await.expect("reload");
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.expect("reload body");
            assert_eq!(status, 200, "{body}");
            body["version"].as_str().unwrap().to_string()
        };
        assert_eq!(reload().await, before);
        let added = "\n[[routes]]\nid = \"added\"\nhosts = [\"new.example.com\"]\npath = \"/\"\ncluster = \"c0\"\n";
        std::fs::write(&gw.config_path, format!("{}{added}", gw.config)).unwrap();
        let after = reload().await;
        assert_ne!(after, before);
        let new_route = Probe {
            host: "new.example.com".into(),
            method: "GET",
            path: "/anything".into(),
            headers: Vec::new(),
            route: "added".into(),
            version: None,
        };
        assert_eq!(send(&gw, &up, &new_route).await.0, 200);
        for p in sample(probes(&spec)).take(20) {
            let answer = send(&gw, &up, &p).await;
            check(p, answer);
        }
    })
    .await;
}
