//! Route lookup cost on a 10,000-route table, and path normalisation on a clean and a dirty
//! path. Lookups should stay flat as the table grows: cost follows host labels and path
//! segments, not the number of routes. The `scale` group checks that on the route table of
//! real snapshots built from the generated configs of `benches/support/scale_config.rs`
//! (10,000 and 100,000 routes: hosts × paths × versions), through `proxy::resolve`, as a
//! request is routed (URI version split, header versions, the version selector).

#[path = "support/scale_config.rs"]
mod scale_config;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use portico::router::{normalize_path, HeaderMatch, PathMatch, RouteMatch, RouteSpec, Router};

const ROUTES: usize = 10_000;

fn spec(id: String, hosts: &[&str], path: String, path_match: PathMatch) -> RouteSpec {
    RouteSpec {
        id,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path,
        path_match,
        methods: Vec::new(),
        headers: Vec::new(),
        on_mismatch: Default::default(),
    }
}

/// A mix shaped like a large gateway config: per-service exact endpoints and prefixes, on a
/// few hosts and wildcards, some restricted by method or header.
fn build_router() -> Router<usize> {
    const HOSTS: &[&[&str]] = &[
        &[],
        &["api.example.com"],
        &["*.example.com"],
        &["*.internal.example.com"],
        &["partner.example.net", "*.partner.example.net"],
    ];
    let mut routes = Vec::with_capacity(ROUTES);
    for i in 0..ROUTES {
        let hosts = HOSTS[i % HOSTS.len()];
        let service = i % 100;
        let mut route = if i % 2 == 0 {
            spec(
                format!("exact-{i}"),
                hosts,
                format!("/svc{service}/v{}/resource{i}/items", i % 3),
                PathMatch::Exact,
            )
        } else {
            spec(
                format!("prefix-{i}"),
                hosts,
                format!("/svc{service}/v{}/group{i}", i % 3),
                PathMatch::Prefix,
            )
        };
        if i % 7 == 0 {
            route.methods = vec![Method::GET, Method::HEAD];
        }
        if i % 11 == 0 {
            route.headers.push(HeaderMatch {
                name: HeaderName::from_static("x-tenant"),
                value: Some(format!("t{}", i % 4)),
            });
        }
        routes.push((route, i));
    }
    Router::new(routes)
}

fn expect_found(m: RouteMatch<'_, usize>, want: usize) {
    match m {
        RouteMatch::Found { value, .. } if *value == want => {}
        other => panic!("expected route {want}, got {other:?}"),
    }
}

fn route_match(c: &mut Criterion) {
    let router = build_router();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("t3"));
    headers.insert("accept", HeaderValue::from_static("application/json"));

    // Route 9_998: exact path on the wildcard `*.internal.example.com`, the last config entry
    // of its kind; the host probes the exact-host table and two wildcard suffixes first.
    let deep_host = "billing.eu.internal.example.com:8443";
    let deep_path = "/svc98/v2/resource9998/items";
    expect_found(
        router.find(Some(deep_host), &Method::GET, deep_path, &headers),
        9_998,
    );
    // Route 9_999: prefix `/svc99/v0/group9999` on `partner.example.net`, gated on
    // `x-tenant: t3`.
    let prefix_path = "/svc99/v0/group9999/orders/12/lines";
    expect_found(
        router.find(
            Some("partner.example.net"),
            &Method::GET,
            prefix_path,
            &headers,
        ),
        9_999,
    );
    let miss_path = "/svc42/v1/nothing/here/at/all";
    assert!(matches!(
        router.find(Some("api.example.com"), &Method::GET, miss_path, &headers),
        RouteMatch::NotFound
    ));

    let mut g = c.benchmark_group("route_match");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("find_exact_deep_wildcard_host", |b| {
        b.iter(|| {
            router.find(
                black_box(Some(deep_host)),
                black_box(&Method::GET),
                black_box(deep_path),
                black_box(&headers),
            )
        })
    });
    g.bench_function("find_prefix_hit", |b| {
        b.iter(|| {
            router.find(
                black_box(Some("partner.example.net")),
                black_box(&Method::GET),
                black_box(prefix_path),
                black_box(&headers),
            )
        })
    });
    g.bench_function("find_miss", |b| {
        b.iter(|| {
            router.find(
                black_box(Some("api.example.com")),
                black_box(&Method::GET),
                black_box(miss_path),
                black_box(&headers),
            )
        })
    });
    g.bench_function("normalize_clean", |b| {
        b.iter(|| normalize_path(black_box("/svc12/v1/orders/12345/lines")).is_ok())
    });
    g.bench_function("normalize_dirty", |b| {
        b.iter(|| {
            normalize_path(black_box(
                "//svc12/./v1/%7eorders/x/../12345/%2e%2e/lines%2fa",
            ))
            .is_ok()
        })
    });
    g.finish();
}

/// A snapshot of the generated config with `routes` routes.
fn scale_snapshot(routes: usize) -> portico::runtime::Snapshot {
    let text = scale_config::generate(&scale_config::Spec::with_routes(routes));
    let config = portico::config::load_str("scale.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    portico::runtime::Snapshot::build(config, None).unwrap_or_else(|e| panic!("{e}"))
}

fn request(probe: &scale_config::Probe) -> pingora_http::RequestHeader {
    let method = Method::from_bytes(probe.method.as_bytes()).expect("method");
    let mut req =
        pingora_http::RequestHeader::build(method, probe.path.as_bytes(), None).expect("request");
    req.insert_header("host", probe.host.as_str())
        .expect("host");
    for (name, value) in &probe.headers {
        req.insert_header(*name, value.as_str()).expect("header");
    }
    req
}

fn scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match_scale");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for routes in [10_000, 100_000] {
        let snapshot = scale_snapshot(routes);
        let hosts = routes / 1_000;
        // The last host and path of each kind, so the tables are full when they are probed:
        // a prefix with the version in the path, an exact path, a header-chosen version and
        // portico's URI versioning (a first lookup without the version segment).
        for (name, p) in [
            ("prefix", 242),
            ("exact", 243),
            ("header_version", 245),
            ("uri_versioning", 246),
        ] {
            let probe = scale_config::probe(hosts - 1, p, 4);
            let req = request(&probe);
            let resolved = portico::proxy::resolve(&snapshot, &req)
                .unwrap_or_else(|e| panic!("{probe:?}: {e:?}"));
            assert_eq!(&*resolved.route.id, probe.route.as_str());
            g.bench_function(format!("{name}_{routes}"), |b| {
                b.iter(|| portico::proxy::resolve(black_box(&snapshot), black_box(&req)).is_ok())
            });
        }
        let mut miss = request(&scale_config::probe(hosts - 1, 242, 4));
        miss.set_uri("/v9/svc24/r242/orders".parse().expect("uri"));
        g.bench_function(format!("miss_{routes}"), |b| {
            b.iter(|| portico::proxy::resolve(black_box(&snapshot), black_box(&miss)).is_err())
        });
    }
    g.finish();
}

criterion_group!(benches, route_match, scale);
criterion_main!(benches);
