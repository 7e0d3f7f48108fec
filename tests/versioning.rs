//! API versioning against real upstreams: every version source (URI segment, header, both
//! media-type forms, query parameter), their order, the default version, missing, unknown
//! and retired versions (400/404 problems listing the supported versions), deprecation
//! headers, per-version clusters and prefix rewrites, the `version` metric label and
//! access-log field, and `portico routes` explaining a versioned request.

mod common;

use std::time::Duration;

use common::*;

const PROBLEM_JSON: &str = "application/problem+json";

/// `Deprecation` of version 2: 2026-06-01T00:00:00Z as Unix seconds.
const V2_DEPRECATED_AT: &str = "@1780272000";
/// `Sunset` of version 2: 2027-01-01T00:00:00Z as an HTTP-date.
const V2_SUNSET: &str = "Fri, 01 Jan 2027 00:00:00 GMT";

/// One upstream per version of `/orders`, plus one for an unversioned route.
struct Versions {
    v1: Upstream,
    v2: Upstream,
    v3: Upstream,
    plain: Upstream,
    gw: Gateway,
}

/// Routes:
/// - `orders` (`/orders`): the default sources in the default order, default version 2;
///   version 1 retired, 2 deprecated (successor 3, docs link), 3 rewritten to `/api/orders`.
/// - `strict` (`/strict`): versions 2 and 3, no default.
/// - `custom` (`/custom`): sources `query` then `header`, header `API-Version`, query
///   `api`, default 2 — the URI segment is not a source here.
/// - `legacy` (`/v1/legacy`): an unversioned route whose path starts like a version.
async fn start() -> Versions {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let v3 = Upstream::start("v3").await;
    let plain = Upstream::start("plain").await;
    let gw = Gateway::config()
        .toml(r#"
[[routes]]
id = "orders"
path = "/orders"
versioning = { default = "2" }
versions = [
  { name = "1", cluster = "orders-v1", retired = true },
  { name = "2", cluster = "orders-v2", deprecated = { since = "2026-06-01T00:00:00Z", sunset = "2027-01-01T00:00:00Z", successor = "3", link = "https://docs.example.com/orders/v3" } },
  { name = "v3", cluster = "orders-v3", rewrite_prefix = "/api/orders" },
]
"#)
        .toml(r#"
[[routes]]
id = "strict"
path = "/strict"
versioning = { sources = ["uri", "header", "media_type", "query"] }
versions = [
  { name = "2", cluster = "orders-v2" },
  { name = "3", cluster = "orders-v3" },
]
"#)
        .toml(r#"
[[routes]]
id = "custom"
path = "/custom"
versioning = { sources = ["query", "header"], header = "API-Version", query = "api", default = "2" }
versions = [
  { name = "2", cluster = "orders-v2" },
  { name = "3", cluster = "orders-v3" },
]
"#)
        .route("legacy", "/v1/legacy", "plain")
        .cluster("orders-v1", &[&v1])
        .cluster("orders-v2", &[&v2])
        .cluster("orders-v3", &[&v3])
        .cluster("plain", &[&plain])
        .start()
        .await;
    Versions {
        v1,
        v2,
        v3,
        plain,
        gw,
    }
}

/// Sends `GET path` with `headers`, expects 200 from the upstream `expected`, and returns
/// the response.
async fn served_by(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    expected: &str,
) -> reqwest::Response {
    let resp = gw.get_with(path, headers).await;
    assert_eq!(
        resp.status(),
        200,
        "GET {path} {headers:?}: {:?}",
        resp.headers()
    );
    assert_eq!(
        header(&resp, "x-upstream").as_deref(),
        Some(expected),
        "GET {path} {headers:?} went to the wrong version's cluster"
    );
    resp
}

/// Checks a version problem (status, problem+json, `supported_versions`) and returns it.
async fn version_problem(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status(), status);
    assert_eq!(header(&resp, "content-type").as_deref(), Some(PROBLEM_JSON));
    let body: serde_json::Value = resp.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:portico:problem:")),
        "{body}"
    );
    body
}

fn supported(body: &serde_json::Value) -> Vec<String> {
    body["supported_versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no supported_versions in {body}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_segment_selects_the_version_and_is_removed_upstream() {
    bounded(async {
        let s = start().await;
        served_by(&s.gw, "/v2/orders/7?x=1", &[], "v2").await;
        assert_eq!(s.v2.last_request().uri, "/orders/7?x=1");
        served_by(&s.gw, "/v2/orders", &[], "v2").await;
        assert_eq!(s.v2.last_request().uri, "/orders");
        // `V3` and `v3` are the same version; version 3 rewrites its prefix.
        served_by(&s.gw, "/V3/orders/7", &[], "v3").await;
        assert_eq!(s.v3.last_request().uri, "/api/orders/7");
        assert_eq!(s.v1.hits(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_selects_the_version_with_a_configurable_name() {
    bounded(async {
        let s = start().await;
        served_by(&s.gw, "/orders/7", &[("Accept-Version", "3")], "v3").await;
        assert_eq!(s.v3.last_request().uri, "/api/orders/7");
        served_by(&s.gw, "/orders/7", &[("Accept-Version", "v3")], "v3").await;
        served_by(&s.gw, "/orders/8", &[("accept-version", " 2 ")], "v2").await;
        assert_eq!(s.v2.last_request().uri, "/orders/8");
        // The route `custom` reads `API-Version`, not `Accept-Version`.
        served_by(&s.gw, "/custom/1", &[("API-Version", "3")], "v3").await;
        served_by(&s.gw, "/custom/1", &[("Accept-Version", "3")], "v2").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_type_selects_the_version_in_both_forms() {
    bounded(async {
        let s = start().await;
        served_by(
            &s.gw,
            "/orders/7",
            &[("Accept", "application/json; version=3")],
            "v3",
        )
        .await;
        served_by(
            &s.gw,
            "/orders/7",
            &[("Accept", "application/vnd.acme.v3+json")],
            "v3",
        )
        .await;
        served_by(
            &s.gw,
            "/orders/7",
            &[("Accept", "text/html, application/vnd.acme.v2+json;q=0.9")],
            "v2",
        )
        .await;
        // A plain media type names no version: the default applies.
        served_by(&s.gw, "/orders/7", &[("Accept", "application/json")], "v2").await;
        // The Accept header itself still reaches the upstream.
        served_by(
            &s.gw,
            "/orders/9",
            &[("Accept", "application/vnd.acme.v3+json")],
            "v3",
        )
        .await;
        assert_eq!(
            s.v3.last_request().header("accept"),
            Some("application/vnd.acme.v3+json")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameter_selects_the_version() {
    bounded(async {
        let s = start().await;
        served_by(&s.gw, "/orders/7?version=3", &[], "v3").await;
        assert!(
            s.v3.last_request().uri.starts_with("/api/orders/7"),
            "{}",
            s.v3.last_request().uri
        );
        served_by(&s.gw, "/orders/7?a=b&version=v3&c=d", &[], "v3").await;
        // `custom` reads `api`, not `version`.
        served_by(&s.gw, "/custom/7?api=3", &[], "v3").await;
        served_by(&s.gw, "/custom/7?version=3", &[], "v2").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_tried_in_the_configured_order() {
    bounded(async {
        let s = start().await;
        // Default order: uri, header, media_type, query.
        served_by(&s.gw, "/v3/orders/1", &[("Accept-Version", "2")], "v3").await;
        served_by(&s.gw, "/v2/orders/1?version=3", &[], "v2").await;
        served_by(
            &s.gw,
            "/orders/1",
            &[
                ("Accept-Version", "3"),
                ("Accept", "application/vnd.acme.v2+json"),
            ],
            "v3",
        )
        .await;
        served_by(
            &s.gw,
            "/orders/1?version=3",
            &[("Accept", "application/json; version=2")],
            "v2",
        )
        .await;
        served_by(
            &s.gw,
            "/orders/1?version=2",
            &[("Accept-Version", "3")],
            "v3",
        )
        .await;
        // `custom`: query before header.
        served_by(&s.gw, "/custom/1?api=3", &[("API-Version", "2")], "v3").await;
        served_by(&s.gw, "/custom/1?api=2", &[("API-Version", "3")], "v2").await;
        // `custom` does not read the URI: `/v3/custom` is just a path no route matches.
        let resp = s.gw.get("/v3/custom/1").await;
        assert_eq!(resp.status(), 404);
        let body: serde_json::Value = resp.json().await.expect("JSON");
        assert_eq!(body["type"], "urn:portico:problem:no-route", "{body}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_version_applies_when_none_is_named() {
    bounded(async {
        let s = start().await;
        let resp = served_by(&s.gw, "/orders/5", &[], "v2").await;
        assert_eq!(s.v2.last_request().uri, "/orders/5");
        // The default is deprecated: its responses say so too.
        assert_eq!(
            header(&resp, "deprecation").as_deref(),
            Some(V2_DEPRECATED_AT)
        );
        served_by(&s.gw, "/custom/5", &[], "v2").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_version_without_default_is_a_400_listing_the_supported_ones() {
    bounded(async {
        let s = start().await;
        let resp = s.gw.get("/strict/1").await;
        let body = version_problem(resp, 400).await;
        assert_eq!(
            body["type"], "urn:portico:problem:version-required",
            "{body}"
        );
        assert_eq!(supported(&body), ["2", "3"], "{body}");
        assert_eq!(s.v2.hits() + s.v3.hits(), 0);
        // Named, the same route serves.
        served_by(&s.gw, "/strict/1", &[("Accept-Version", "3")], "v3").await;
        served_by(&s.gw, "/v2/strict/1", &[], "v2").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_version_is_400_or_404_in_the_uri() {
    bounded(async {
        let s = start().await;
        for (path, headers) in [
            ("/orders/1", vec![("Accept-Version", "9")]),
            (
                "/orders/1",
                vec![("Accept", "application/vnd.acme.v9+json")],
            ),
            ("/orders/1?version=9", vec![]),
        ] {
            let resp = s.gw.get_with(path, &headers).await;
            let body = version_problem(resp, 400).await;
            assert_eq!(
                body["type"], "urn:portico:problem:unknown-version",
                "{body}"
            );
            assert_eq!(supported(&body), ["2", "3"], "{path} {headers:?}: {body}");
        }
        let resp = s.gw.get("/v9/orders/1").await;
        let body = version_problem(resp, 404).await;
        assert_eq!(
            body["type"], "urn:portico:problem:unknown-version",
            "{body}"
        );
        assert_eq!(supported(&body), ["2", "3"], "{body}");
        assert_eq!(s.v1.hits() + s.v2.hits() + s.v3.hits(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_version_is_refused_without_reaching_its_cluster() {
    bounded(async {
        let s = start().await;
        let resp = s.gw.get_with("/orders/1", &[("Accept-Version", "1")]).await;
        let body = version_problem(resp, 400).await;
        assert_eq!(
            body["type"], "urn:portico:problem:version-retired",
            "{body}"
        );
        assert_eq!(
            supported(&body),
            ["2", "3"],
            "retired ones are not offered: {body}"
        );
        let resp = s.gw.get("/v1/orders/1").await;
        let body = version_problem(resp, 404).await;
        assert_eq!(
            body["type"], "urn:portico:problem:version-retired",
            "{body}"
        );
        assert_eq!(supported(&body), ["2", "3"], "{body}");
        let resp = s.gw.get("/orders/1?version=v1").await;
        version_problem(resp, 400).await;
        assert_eq!(s.v1.hits(), 0, "a retired version's cluster gets nothing");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecated_version_responses_carry_deprecation_sunset_and_links() {
    bounded(async {
        let s = start().await;
        let check = |resp: &reqwest::Response, what: &str| {
            assert_eq!(
                header(resp, "deprecation").as_deref(),
                Some(V2_DEPRECATED_AT),
                "{what}"
            );
            assert_eq!(header(resp, "sunset").as_deref(), Some(V2_SUNSET), "{what}");
            let links = header_all(resp, "link").join(", ");
            assert!(
                links.contains(r#"</v3/orders>; rel="successor-version""#),
                "{what}: Link {links:?}"
            );
            assert!(
                links.contains(r#"<https://docs.example.com/orders/v3>; rel="deprecation""#),
                "{what}: Link {links:?}"
            );
        };
        let resp = served_by(&s.gw, "/v2/orders/1", &[], "v2").await;
        check(&resp, "via the URI");
        let resp = served_by(&s.gw, "/orders/1", &[("Accept-Version", "2")], "v2").await;
        check(&resp, "via the header");
        // Every response of the version, not only successful ones.
        s.v2.set_status(404);
        let resp = s.gw.get("/v2/orders/404").await;
        assert_eq!(resp.status(), 404);
        check(&resp, "on an upstream 404");
        // A version that is not deprecated carries none of them.
        let resp = served_by(&s.gw, "/v3/orders/1", &[], "v3").await;
        for name in ["deprecation", "sunset", "link"] {
            assert_eq!(header(&resp, name), None, "version 3 has no {name}");
        }
        // Neither does an unversioned route.
        let resp = s.gw.get("/v1/legacy").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "deprecation"), None);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unversioned_route_whose_path_looks_versioned_is_matched_as_is() {
    bounded(async {
        let s = start().await;
        let resp = s.gw.get("/v1/legacy/x").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-upstream").as_deref(), Some("plain"));
        assert_eq!(s.plain.last_request().uri, "/v1/legacy/x");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_access_log_record_the_version_served() {
    bounded(async {
        let s = start().await;
        for _ in 0..3 {
            served_by(&s.gw, "/v2/orders/1", &[], "v2").await;
        }
        served_by(&s.gw, "/orders/1", &[("Accept-Version", "3")], "v3").await;
        served_by(&s.gw, "/v1/legacy", &[], "plain").await;
        let resp = s.gw.get("/v9/orders/1").await;
        assert_eq!(resp.status(), 404);

        let metrics = s.gw.metrics().await;
        let v2 = metric_value(
            &metrics,
            "portico_requests_total",
            &[
                ("route", "orders"),
                ("version", "2"),
                ("cluster", "orders-v2"),
                ("method", "GET"),
                ("status_class", "2xx"),
            ],
        );
        assert_eq!(v2, Some(3.0), "{metrics}");
        let v3 = metric_value(
            &metrics,
            "portico_requests_total",
            &[
                ("route", "orders"),
                ("version", "3"),
                ("cluster", "orders-v3"),
                ("status_class", "2xx"),
            ],
        );
        assert_eq!(v3, Some(1.0), "{metrics}");
        let plain = metric_value(
            &metrics,
            "portico_requests_total",
            &[
                ("route", "legacy"),
                ("version", ""),
                ("status_class", "2xx"),
            ],
        );
        assert_eq!(plain, Some(1.0), "{metrics}");
        assert!(
            metric_value(
                &metrics,
                "portico_request_duration_seconds_count",
                &[("route", "orders"), ("version", "2")]
            )
            .is_some_and(|n| n >= 3.0),
            "{metrics}"
        );

        let lines = s.gw.wait_access_log(6).await;
        let versions: Vec<(String, serde_json::Value)> = lines
            .iter()
            .map(|l| {
                (
                    l["path"].as_str().unwrap_or("").to_string(),
                    l["version"].clone(),
                )
            })
            .collect();
        let of = |path: &str| {
            versions
                .iter()
                .filter(|(p, _)| p == path)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(of("/v2/orders/1").len(), 3, "{versions:?}");
        assert!(of("/v2/orders/1").iter().all(|v| v == "2"), "{versions:?}");
        assert_eq!(of("/orders/1"), [serde_json::json!("3")], "{versions:?}");
        assert_eq!(of("/v1/legacy"), [serde_json::Value::Null], "{versions:?}");
        let v2_line = lines
            .iter()
            .find(|l| l["path"] == "/v2/orders/1")
            .expect("a v2 line");
        assert_eq!(v2_line["cluster"], "orders-v2", "{v2_line}");
        assert_eq!(v2_line["route"], "orders", "{v2_line}");
    })
    .await
}

/// Runs `portico routes -c <the gateway's config> args…`; returns (exit code, stdout).
fn routes(gw: &Gateway, args: &[&str]) -> (Option<i32>, String) {
    let out = gw
        .portico_command()
        .arg("routes")
        .arg("-c")
        .arg(&gw.config_path)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run portico routes");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_routes_explains_a_versioned_request() {
    bounded(async {
        let s = start().await;
        let (code, out) = routes(&s.gw, &["GET", "/v2/orders/7?x=1"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(line(&out, "route:").contains("orders"), "{out}");
        assert_eq!(
            line(&out, "version:").split_whitespace().nth(1),
            Some("2"),
            "{out}"
        );
        assert!(line(&out, "cluster:").contains("orders-v2"), "{out}");
        assert!(line(&out, "upstream:").contains("/orders/7?x=1"), "{out}");
        assert!(
            out.contains(V2_DEPRECATED_AT) && out.contains(V2_SUNSET),
            "deprecation headers are listed: {out}"
        );

        let (code, out) = routes(&s.gw, &["GET", "/orders/7", "-H", "Accept-Version: 3"]);
        assert_eq!(code, Some(0), "{out}");
        assert_eq!(
            line(&out, "version:").split_whitespace().nth(1),
            Some("3"),
            "{out}"
        );
        assert!(line(&out, "cluster:").contains("orders-v3"), "{out}");
        assert!(line(&out, "upstream:").contains("/api/orders/7"), "{out}");

        let (code, out) = routes(&s.gw, &["GET", "/strict/7"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("400"), "{out}");
        let (code, out) = routes(&s.gw, &["GET", "/v9/orders/7"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("404"), "{out}");
    })
    .await
}

/// A version's cluster is a real, separate deployment: when it is down, the others serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_reaches_its_own_cluster() {
    bounded(async {
        let mut s = start().await;
        served_by(&s.gw, "/v2/orders/1", &[], "v2").await;
        served_by(&s.gw, "/v3/orders/1", &[], "v3").await;
        s.v3.stop().await;
        let resp = s.gw.get("/v3/orders/1").await;
        assert_eq!(resp.status(), 502, "version 3's only instance is down");
        served_by(&s.gw, "/v2/orders/1", &[], "v2").await;
        assert_eq!(s.v2.hits(), 2);
        eventually(Duration::from_secs(2), "v2 still serves", || async {
            s.gw.get("/v2/orders/2").await.status() == 200
        })
        .await;
    })
    .await
}
