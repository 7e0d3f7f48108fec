//! The admin console: one page, compiled into the binary, that shows an on-call engineer
//! what the gateway is doing — routes with their last minute of traffic, clusters with
//! every endpoint's state and what changed, the config and its reloads, token checks — and
//! explains how a request would be routed.
//!
//! The page (`/`, `/console`), its script and its style sheet carry no data and are served
//! without the token; everything they show comes from `GET /admin/console` and
//! `GET /admin/explain`, behind the admin token like the rest of the API. The script
//! builds the DOM with `textContent` only, and the Content-Security-Policy allows no inline
//! script, so nothing a client typed (a path or host in the explain form, an upstream's
//! address) can run as code. Values from the config are redacted as in `/admin/config`.

use std::sync::Arc;

use http::StatusCode;
use serde_json::{json, Value};

use crate::observe::window;
use crate::proxy::explain;
use crate::router::PathMatch;
use crate::runtime::State;

/// Routes listed in one answer: the page is for looking, and 100,000 rows would be neither
/// quick to send nor to read. The busiest come first.
const ROUTES_SHOWN: usize = 500;

/// The policy of every admin answer: nothing but same-origin script, style, images and
/// `fetch`; no inline script or style, no framing, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's static files: (content type, bytes), for a path.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/console" | "/console/" => Some((
            "text/html; charset=utf-8",
            include_bytes!("console/index.html"),
        )),
        "/console/console.js" => Some((
            "text/javascript; charset=utf-8",
            include_bytes!("console/console.js"),
        )),
        "/console/console.css" => Some((
            "text/css; charset=utf-8",
            include_bytes!("console/console.css"),
        )),
        _ => None,
    }
}

/// `GET /admin/console`: everything the page shows, from the process itself.
pub fn live(state: &Arc<State>) -> Value {
    let snapshot = state.snapshot();
    // Numbers for every route first, JSON only for the routes shown.
    let mut routes: Vec<_> = snapshot
        .router
        .iter()
        .map(|(spec, route)| {
            let last: Vec<window::LastMinute> = route
                .targets
                .iter()
                .map(|t| window::last_minute(&route.id, t.version.as_ref(), &t.metrics))
                .collect();
            let busy: f64 = last.iter().map(|l| l.requests_per_second).sum();
            (busy, spec, route, last)
        })
        .collect();
    let routes_total = routes.len();
    // Stable: equally busy routes stay in config order.
    routes.sort_by(|a, b| b.0.total_cmp(&a.0));
    routes.truncate(ROUTES_SHOWN);
    let routes: Vec<Value> = routes
        .into_iter()
        .map(|(_, spec, route, last)| {
            let targets: Vec<Value> = route
                .targets
                .iter()
                .zip(last)
                .map(|(t, last)| {
                    json!({
                        "version": t.version.as_deref(),
                        "cluster": t.cluster.name,
                        "deprecation": t.deprecation.iter()
                            .map(|(n, v)| json!([n.as_str(), v.to_str().unwrap_or("")]))
                            .collect::<Vec<_>>(),
                        "last_minute": last,
                    })
                })
                .collect();
            json!({
                "id": &*route.id,
                "hosts": spec.hosts,
                "path": spec.path,
                "prefix": spec.path_match == PathMatch::Prefix,
                "methods": spec.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "plugins": route.plugins.names,
                "targets": targets,
            })
        })
        .collect();
    let clusters: Vec<Value> = snapshot
        .clusters
        .values()
        .map(|c| {
            let mut status = serde_json::to_value(c.status()).unwrap_or_default();
            status["health_check_interval_ms"] = json!(c
                .definition
                .health_check
                .as_ref()
                .map(|h| h.interval.as_millis() as u64));
            status
        })
        .collect();
    let mut live = json!({
        "pid": std::process::id(),
        "now": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "ready": state.is_ready(),
        "draining": state.is_draining(),
        "global_plugins": snapshot.global_plugins.names,
        "config": {
            "version": snapshot.version,
            "loaded_at": humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
            "source": state.config_path.as_ref().map(|p| p.display().to_string()),
            "upgrade_required": state.upgrade_required(),
            "last_reload_error": state.last_error(),
            "reloads": state.recent_reloads(),
        },
        "routes": routes,
        "routes_total": routes_total,
        "window_seconds": window::WINDOW.as_secs(),
        "clusters": clusters,
        "changes": window::recent_changes(),
        "tokens": crate::observe::metrics::token_checks(),
    });
    snapshot.redact_strings(&mut live);
    live
}

/// `GET /admin/explain?method=GET&path=/orders/1&host=api.example.com`: what
/// `portico routes` would say about the request, for the running config.
pub fn explain(state: &Arc<State>, query: Option<&str>) -> (StatusCode, Value) {
    let mut method = String::from("GET");
    let mut path = None;
    let mut headers = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*name {
            "method" if !value.is_empty() => method = value.into_owned(),
            "path" => path = Some(value.into_owned()),
            "host" if !value.is_empty() => headers.push(("Host".to_string(), value.into_owned())),
            _ => {}
        }
    }
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            json!({ "error": "give the request as ?method=GET&path=/some/path (&host=…)" }),
        );
    };
    let question = explain::Question {
        method: &method,
        target: &path,
        headers: &headers,
    };
    let snapshot = state.snapshot();
    match explain::explain(&snapshot, &question) {
        Ok(answer) => {
            let mut body = json!({ "answer": answer, "text": answer.to_string() });
            snapshot.redact_strings(&mut body);
            (StatusCode::OK, body)
        }
        Err(explain::NotARequest(e)) => (StatusCode::BAD_REQUEST, json!({ "error": e })),
    }
}
