//! Path normalisation and routing: a request (method line, target line, then header lines
//! `Name: value`) explained against `fixtures/gateway.toml` with the proxy's own functions
//! (`clean_request`, `normalize_path`, `inspect_path`, `resolve`, `check_route_policy`).
//!
//! Properties: nothing panics; normalisation is idempotent and leaves no empty, `.` or `..`
//! segment; a routed request goes upstream in origin-form on a normal path; a route's
//! method and header matchers hold for every request routed to it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portico::proxy::explain::{explain, Outcome, Question};
use portico::router::{inspect_path, normalize_path};
use portico::runtime::Snapshot;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let config =
            portico::config::load_str("gateway.toml", include_str!("../fixtures/gateway.toml"))
                .expect("the fixture config is valid");
        Snapshot::build(config, None).expect("the fixture config builds")
    })
}

fn check_normal(path: &str) {
    let normal = normalize_path(path).expect("a normalised path normalises");
    assert_eq!(normal, path, "normalisation is idempotent");
    assert!(path.starts_with('/'));
    for seg in path
        .split('/')
        .skip(1)
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .skip(1)
    {
        assert!(!seg.is_empty(), "empty segment in {path:?}");
    }
    for seg in path.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "dot segment in {path:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or("GET").trim();
    let target = lines.next().unwrap_or("/");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();

    let raw_path = target.split_once('?').map_or(target, |(p, _)| p);
    if let Ok(normal) = normalize_path(raw_path) {
        check_normal(&normal);
        let _ = inspect_path(&normal);
    }

    let question = Question {
        method,
        target,
        headers: &headers,
    };
    let Ok(answer) = explain(snapshot(), &question) else {
        return;
    };
    if let Some(normal) = &answer.normalised {
        check_normal(normal);
    }
    match &answer.outcome {
        Outcome::Routed(routed) => {
            let (up_method, up_target) = routed
                .upstream
                .split_once(' ')
                .expect("the upstream line has a method and a target");
            assert_eq!(up_method, answer.method);
            assert!(
                up_target.starts_with('/'),
                "origin-form upstream: {up_target:?}"
            );
            let up_path = up_target.split_once('?').map_or(up_target, |(p, _)| p);
            check_normal(up_path);
            let header = |name: &str| {
                headers
                    .iter()
                    .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim())
                    .collect::<Vec<_>>()
            };
            match routed.route.as_str() {
                "admin" => assert!(
                    matches!(answer.method.as_str(), "GET" | "HEAD"),
                    "admin is GET only: {}",
                    answer.method
                ),
                "tenant" => {
                    assert!(matches!(answer.method.as_str(), "GET" | "HEAD"));
                    assert!(
                        header("x-tenant").contains(&"acme"),
                        "tenant needs X-Tenant: acme"
                    );
                    assert!(!header("x-debug").is_empty(), "tenant needs X-Debug");
                }
                "exact" => {
                    let routed_path = answer.normalised.as_deref().unwrap_or(raw_path);
                    let without_params: Vec<&str> = routed_path
                        .split('/')
                        .map(|seg| seg.split(';').next().unwrap_or(seg))
                        .collect();
                    assert_eq!(without_params.join("/"), "/exact/one");
                }
                _ => {}
            }
        }
        Outcome::Refused { status, .. } => {
            assert!(
                (400..500).contains(status),
                "a refusal is the client's fault: {status}"
            );
        }
    }
});
