//! Precedence and matching tests for the compiled route table.

use super::*;
use http::header::{HeaderValue, CONTENT_TYPE};

fn route(id: &str, path: &str, path_match: PathMatch) -> RouteSpec {
    RouteSpec {
        id: id.to_owned(),
        hosts: Vec::new(),
        path: path.to_owned(),
        path_match,
        methods: Vec::new(),
        headers: Vec::new(),
        on_mismatch: OnMismatch::FallThrough,
    }
}

fn strict(mut spec: RouteSpec, on_mismatch: OnMismatch) -> RouteSpec {
    spec.on_mismatch = on_mismatch;
    spec
}

fn exact(id: &str, path: &str) -> RouteSpec {
    route(id, path, PathMatch::Exact)
}

fn prefix(id: &str, path: &str) -> RouteSpec {
    route(id, path, PathMatch::Prefix)
}

fn hosts(mut spec: RouteSpec, hosts: &[&str]) -> RouteSpec {
    spec.hosts = hosts.iter().map(|h| h.to_string()).collect();
    spec
}

fn methods(mut spec: RouteSpec, methods: &[Method]) -> RouteSpec {
    spec.methods = methods.to_vec();
    spec
}

fn header(mut spec: RouteSpec, name: &'static str, value: Option<&str>) -> RouteSpec {
    spec.headers.push(HeaderMatch {
        name: HeaderName::from_static(name),
        value: value.map(str::to_owned),
    });
    spec
}

fn router(specs: Vec<RouteSpec>) -> Router<usize> {
    Router::new(specs.into_iter().enumerate().map(|(i, s)| (s, i)).collect())
}

/// The id of the route found, or a short description of the other outcomes.
fn find_in(
    r: &Router<usize>,
    host: Option<&str>,
    method: Method,
    path: &str,
    h: &HeaderMap,
) -> String {
    match r.find(host, &method, path, h) {
        RouteMatch::Found { spec, value } => {
            // The payload must belong to the spec it is returned with.
            assert_eq!(r.iter().nth(*value).map(|(s, _)| &s.id), Some(&spec.id));
            spec.id.clone()
        }
        RouteMatch::MethodNotAllowed { allowed } => {
            let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            format!("405 {}", names.join(","))
        }
        RouteMatch::NotFound => "404".to_owned(),
    }
}

fn get(r: &Router<usize>, path: &str) -> String {
    find_in(r, None, Method::GET, path, &HeaderMap::new())
}

fn get_host(r: &Router<usize>, host: &str, path: &str) -> String {
    find_in(r, Some(host), Method::GET, path, &HeaderMap::new())
}

#[test]
fn exact_beats_prefix() {
    let r = router(vec![prefix("p", "/users"), exact("e", "/users")]);
    assert_eq!(get(&r, "/users"), "e");
    assert_eq!(get(&r, "/users/1"), "p");
    assert_eq!(get(&r, "/users/"), "p", "exact `/users` is not `/users/`");
}

#[test]
fn deeper_prefix_wins() {
    let r = router(vec![
        prefix("root", "/"),
        prefix("api", "/api"),
        prefix("v1", "/api/v1"),
    ]);
    assert_eq!(get(&r, "/api/v1/orders"), "v1");
    assert_eq!(get(&r, "/api/v1"), "v1");
    assert_eq!(get(&r, "/api/v2"), "api");
    assert_eq!(get(&r, "/api"), "api");
    assert_eq!(get(&r, "/"), "root");
    assert_eq!(get(&r, "/other"), "root");
}

#[test]
fn prefix_matches_on_segment_boundaries() {
    let r = router(vec![prefix("v1", "/v1")]);
    assert_eq!(get(&r, "/v1"), "v1");
    assert_eq!(get(&r, "/v1/"), "v1");
    assert_eq!(get(&r, "/v1/x/y"), "v1");
    assert_eq!(get(&r, "/v10"), "404");
    assert_eq!(get(&r, "/v"), "404");
    assert_eq!(get(&r, "/"), "404");
    assert_eq!(
        get(&r, "/v1%2Fx"),
        "404",
        "an encoded slash is not a boundary"
    );
}

#[test]
fn configured_prefix_trailing_slash_is_ignored() {
    let r = router(vec![prefix("v1", "/v1/")]);
    assert_eq!(get(&r, "/v1"), "v1");
    assert_eq!(get(&r, "/v1/a"), "v1");
    assert_eq!(r.iter().next().map(|(s, _)| s.path.as_str()), Some("/v1"));
}

#[test]
fn configured_paths_are_normalised() {
    let r = router(vec![
        exact("e", "/a/%7euser//x/../y"),
        prefix("p", "/b/./%41"),
    ]);
    assert_eq!(get(&r, "/a/~user/y"), "e");
    assert_eq!(get(&r, "/b/A/c"), "p");
    let bad = router(vec![
        exact("bad", "no-slash"),
        prefix("bad-prefix", "v1"),
        prefix("bad-escape", "/x%zz"),
        prefix("root", "/"),
    ]);
    assert_eq!(bad.len(), 4);
    assert_eq!(get(&bad, "/no-slash"), "root");
    assert_eq!(get(&bad, "/v1/a"), "root");
}

#[test]
fn method_restricted_routes_come_first() {
    // Config order puts the catch-all first; the method-restricted one still wins for POST.
    let r = router(vec![
        prefix("any", "/orders"),
        methods(prefix("post", "/orders"), &[Method::POST]),
    ]);
    assert_eq!(
        find_in(&r, None, Method::POST, "/orders", &HeaderMap::new()),
        "post"
    );
    assert_eq!(get(&r, "/orders"), "any");
}

#[test]
fn more_header_matchers_come_first() {
    let r = router(vec![
        prefix("plain", "/x"),
        header(prefix("one", "/x"), "x-tenant", None),
        header(
            header(prefix("two", "/x"), "x-tenant", Some("blue")),
            "x-canary",
            None,
        ),
    ]);
    let mut h = HeaderMap::new();
    assert_eq!(find_in(&r, None, Method::GET, "/x", &h), "plain");
    h.insert("x-tenant", HeaderValue::from_static("green"));
    assert_eq!(find_in(&r, None, Method::GET, "/x", &h), "one");
    h.insert("x-canary", HeaderValue::from_static("1"));
    assert_eq!(
        find_in(&r, None, Method::GET, "/x", &h),
        "one",
        "tenant is not blue"
    );
    h.insert("x-tenant", HeaderValue::from_static("blue"));
    assert_eq!(find_in(&r, None, Method::GET, "/x", &h), "two");
    h.insert("x-tenant", HeaderValue::from_static("Blue"));
    assert_eq!(
        find_in(&r, None, Method::GET, "/x", &h),
        "one",
        "header values are case-sensitive"
    );
}

#[test]
fn any_of_repeated_header_values_matches() {
    let r = router(vec![header(
        exact("json", "/x"),
        "content-type",
        Some("application/json"),
    )]);
    let mut h = HeaderMap::new();
    h.append(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    h.append(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    assert_eq!(find_in(&r, None, Method::GET, "/x", &h), "json");
}

#[test]
fn config_order_breaks_ties() {
    let r = router(vec![prefix("first", "/a"), prefix("second", "/a")]);
    assert_eq!(get(&r, "/a/b"), "first");
    let r = router(vec![
        methods(prefix("first", "/a"), &[Method::GET]),
        methods(prefix("second", "/a"), &[Method::GET, Method::POST]),
    ]);
    assert_eq!(get(&r, "/a"), "first");
}

#[test]
fn falls_back_to_shallower_prefix_when_deepest_candidates_fail() {
    let r = router(vec![
        prefix("api", "/api"),
        header(prefix("v1-internal", "/api/v1"), "x-internal", None),
        header(exact("exact-internal", "/api/v1/x"), "x-internal", None),
    ]);
    assert_eq!(get(&r, "/api/v1/x"), "api");
    let mut h = HeaderMap::new();
    h.insert("x-internal", HeaderValue::from_static("1"));
    assert_eq!(
        find_in(&r, None, Method::GET, "/api/v1/x", &h),
        "exact-internal"
    );
    assert_eq!(
        find_in(&r, None, Method::GET, "/api/v1/y", &h),
        "v1-internal"
    );
}

#[test]
fn host_exact_then_wildcard_longest_first_then_any() {
    let r = router(vec![
        prefix("any", "/"),
        hosts(prefix("wild-short", "/"), &["*.example.com"]),
        hosts(prefix("wild-long", "/"), &["*.eu.example.com"]),
        hosts(prefix("exact", "/"), &["api.eu.example.com"]),
    ]);
    assert_eq!(get_host(&r, "api.eu.example.com", "/"), "exact");
    assert_eq!(get_host(&r, "API.EU.Example.Com:8443", "/"), "exact");
    assert_eq!(get_host(&r, "api.eu.example.com.", "/"), "exact");
    assert_eq!(get_host(&r, "web.eu.example.com", "/"), "wild-long");
    assert_eq!(get_host(&r, "a.b.eu.example.com", "/"), "wild-long");
    assert_eq!(get_host(&r, "eu.example.com", "/"), "wild-short");
    assert_eq!(get_host(&r, "a.example.com", "/"), "wild-short");
    assert_eq!(
        get_host(&r, "example.com", "/"),
        "any",
        "wildcard needs a label"
    );
    assert_eq!(get_host(&r, "other.org", "/"), "any");
    assert_eq!(get(&r, "/"), "any");
}

#[test]
fn host_table_falls_through_when_it_has_no_matching_route() {
    let r = router(vec![
        hosts(exact("exact-host", "/only"), &["api.example.com"]),
        hosts(prefix("wild", "/w"), &["*.example.com"]),
        prefix("any", "/"),
    ]);
    assert_eq!(get_host(&r, "api.example.com", "/only"), "exact-host");
    assert_eq!(get_host(&r, "api.example.com", "/w/1"), "wild");
    assert_eq!(get_host(&r, "api.example.com", "/else"), "any");
    // A more specific host with a shallower path still wins over a deeper any-host path.
    let r = router(vec![
        prefix("any-deep", "/a/b"),
        hosts(prefix("host-root", "/"), &["api.example.com"]),
    ]);
    assert_eq!(get_host(&r, "api.example.com", "/a/b"), "host-root");
}

#[test]
fn host_restricted_routes_do_not_match_other_hosts() {
    let r = router(vec![hosts(
        prefix("h", "/"),
        &["api.example.com", "*.internal"],
    )]);
    assert_eq!(get_host(&r, "api.example.com", "/"), "h");
    assert_eq!(get_host(&r, "svc.internal", "/"), "h");
    assert_eq!(get_host(&r, "web.example.com", "/"), "404");
    assert_eq!(get(&r, "/"), "404", "no host at all");
    assert_eq!(get_host(&r, "", "/"), "404");
}

#[test]
fn star_host_means_any_host() {
    let r = router(vec![hosts(prefix("star", "/"), &["*"])]);
    assert_eq!(get_host(&r, "whatever.test", "/x"), "star");
    assert_eq!(get(&r, "/x"), "star");
}

#[test]
fn method_not_allowed_lists_union_of_methods() {
    let r = router(vec![
        methods(exact("get", "/orders"), &[Method::GET, Method::HEAD]),
        methods(prefix("post", "/orders"), &[Method::POST, Method::GET]),
        header(
            methods(prefix("put", "/orders"), &[Method::PUT]),
            "x-admin",
            None,
        ),
        methods(prefix("other", "/other"), &[Method::DELETE]),
    ]);
    let h = HeaderMap::new();
    assert_eq!(
        find_in(&r, None, Method::PATCH, "/orders", &h),
        "405 GET,HEAD,POST",
        "the header-gated PUT route did not match and is not offered"
    );
    let mut admin = HeaderMap::new();
    admin.insert("x-admin", HeaderValue::from_static("1"));
    assert_eq!(
        find_in(&r, None, Method::PATCH, "/orders/1", &admin),
        "405 GET,POST,PUT"
    );
    assert_eq!(find_in(&r, None, Method::PATCH, "/nothing", &h), "404");
}

#[test]
fn method_not_allowed_yields_to_a_match_in_a_less_specific_host_table() {
    let r = router(vec![
        hosts(
            methods(prefix("host-get", "/"), &[Method::GET]),
            &["api.example.com"],
        ),
        prefix("any", "/"),
    ]);
    assert_eq!(
        find_in(
            &r,
            Some("api.example.com"),
            Method::POST,
            "/x",
            &HeaderMap::new()
        ),
        "any"
    );
    let r = router(vec![
        hosts(
            methods(prefix("host-get", "/"), &[Method::GET]),
            &["api.example.com"],
        ),
        methods(prefix("any-put", "/"), &[Method::PUT]),
    ]);
    assert_eq!(
        find_in(
            &r,
            Some("api.example.com"),
            Method::POST,
            "/x",
            &HeaderMap::new()
        ),
        "405 GET,PUT"
    );
}

#[test]
fn found_returns_spec_and_payload() {
    let r = Router::new(vec![
        (exact("a", "/a"), "payload-a"),
        (exact("b", "/b"), "payload-b"),
    ]);
    assert_eq!(r.len(), 2);
    assert!(!r.is_empty());
    match r.find(None, &Method::GET, "/b", &HeaderMap::new()) {
        RouteMatch::Found { spec, value } => {
            assert_eq!(spec.id, "b");
            assert_eq!(*value, "payload-b");
        }
        other => panic!("unexpected {other:?}"),
    }
    let empty: Router<()> = Router::new(Vec::new());
    assert!(empty.is_empty());
    assert_eq!(
        empty.find(None, &Method::GET, "/", &HeaderMap::new()),
        RouteMatch::NotFound
    );
}

#[test]
fn duplicate_hosts_do_not_duplicate_candidates() {
    let r = router(vec![hosts(
        methods(exact("e", "/x"), &[Method::GET]),
        &["a.test", "A.test", "a.test."],
    )]);
    assert_eq!(
        find_in(&r, Some("a.test"), Method::POST, "/x", &HeaderMap::new()),
        "405 GET"
    );
}

#[test]
fn unnormalised_or_odd_lookup_input_does_not_panic() {
    let r = router(vec![prefix("root", "/"), hosts(exact("h", "/a"), &["*.x"])]);
    for path in ["", "a", "//", "/a//b", "/\u{e9}\u{e9}/", "*"] {
        for host in [
            None,
            Some(""),
            Some("."),
            Some("..x"),
            Some("[::1"),
            Some("\u{e9}.x:1"),
        ] {
            let _ = r.find(host, &Method::GET, path, &HeaderMap::new());
        }
    }
}

#[test]
fn spec_validation() {
    let ok = hosts(prefix("ok", "/v1/"), &["api.example.com", "*.example.com"]);
    assert_eq!(ok.validate(), Ok(()));
    let bad_path = exact("p", "v1");
    assert!(matches!(
        bad_path.validate(),
        Err(RouteSpecError::InvalidPath {
            source: PathError::NotAbsolute,
            ..
        })
    ));
    let bad_host = hosts(exact("h", "/"), &["a.*.com"]);
    let err = bad_host.validate().unwrap_err();
    assert!(err.to_string().contains("a.*.com"), "{err}");
}

#[test]
fn many_routes_resolve_correctly() {
    let mut specs = Vec::new();
    for i in 0..2000 {
        specs.push(exact(&format!("e{i}"), &format!("/svc{}/item{i}", i % 50)));
        specs.push(prefix(
            &format!("p{i}"),
            &format!("/svc{}/group{i}", i % 50),
        ));
    }
    let r = router(specs);
    assert_eq!(r.len(), 4000);
    assert_eq!(get(&r, "/svc7/item1957"), "e1957");
    assert_eq!(get(&r, "/svc7/group1957/deep/er"), "p1957");
    assert_eq!(get(&r, "/svc7/group19570"), "404");
}

#[test]
fn strict_route_stops_method_and_header_fall_through() {
    let admin = methods(prefix("admin", "/admin"), &[Method::GET]);
    let tenant = header(prefix("tenant", "/t"), "x-tenant", None);
    // Today's default: a weaker route catches what the protected one refused.
    let loose = router(vec![prefix("root", "/"), admin.clone(), tenant.clone()]);
    let del = |r: &Router<usize>| find_in(r, None, Method::DELETE, "/admin/x", &HeaderMap::new());
    assert_eq!(del(&loose), "root");
    assert_eq!(get(&loose, "/t/1"), "root");

    let r = router(vec![
        prefix("root", "/"),
        strict(admin.clone(), OnMismatch::MethodNotAllowed),
        strict(tenant.clone(), OnMismatch::MethodNotAllowed),
    ]);
    assert_eq!(del(&r), "405 GET");
    assert_eq!(get(&r, "/admin/x"), "admin");
    // A header mismatch is never a 405: the method was fine.
    assert_eq!(get(&r, "/t/1"), "404");
    let mut h = HeaderMap::new();
    h.insert("x-tenant", HeaderValue::from_static("a"));
    assert_eq!(find_in(&r, None, Method::GET, "/t/1", &h), "tenant");
    // Paths the strict route does not cover still reach the weaker one.
    assert_eq!(get(&r, "/other"), "root");

    let r = router(vec![
        prefix("root", "/"),
        strict(admin, OnMismatch::NotFound),
    ]);
    assert_eq!(del(&r), "404");
}

#[test]
fn strict_route_lets_siblings_on_its_path_match() {
    // DELETE has its own route on the same path: the strict GET route must not hide it.
    let r = router(vec![
        prefix("root", "/"),
        strict(
            methods(prefix("read", "/admin"), &[Method::GET]),
            OnMismatch::MethodNotAllowed,
        ),
        methods(prefix("delete", "/admin"), &[Method::DELETE]),
    ]);
    assert_eq!(
        find_in(&r, None, Method::DELETE, "/admin", &HeaderMap::new()),
        "delete"
    );
    assert_eq!(
        find_in(&r, None, Method::PUT, "/admin", &HeaderMap::new()),
        "405 DELETE,GET"
    );
}

#[test]
fn strict_route_in_a_host_table_stops_any_host_fall_back() {
    let r = router(vec![
        prefix("any", "/"),
        strict(
            methods(
                hosts(prefix("api", "/"), &["api.example.com"]),
                &[Method::GET],
            ),
            OnMismatch::NotFound,
        ),
    ]);
    let post = |host| find_in(&r, Some(host), Method::POST, "/x", &HeaderMap::new());
    assert_eq!(post("api.example.com"), "404");
    assert_eq!(post("other.example.com"), "any");
}
