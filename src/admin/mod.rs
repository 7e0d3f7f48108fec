//! The admin HTTP API, served by Pingora on its own listener (loopback by default):
//! liveness, readiness, Prometheus metrics, cluster state, the effective config and reload.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::observe::metrics::METRICS;
use crate::runtime::{self, State};
use crate::upstream::breaker::BreakerState;

/// The admin API application.
pub struct AdminApi {
    state: Arc<State>,
}

impl AdminApi {
    pub fn new(state: Arc<State>) -> AdminApi {
        AdminApi { state }
    }

    fn route(&self, method: &http::Method, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
        let json_body = |status: StatusCode, v: serde_json::Value| {
            (
                status,
                "application/json",
                serde_json::to_vec_pretty(&v).unwrap_or_default(),
            )
        };
        match (method.as_str(), path) {
            ("GET", "/healthz") => json_body(StatusCode::OK, json!({ "status": "ok" })),
            ("GET", "/readyz") => {
                let ready = self.state.is_ready();
                let last_error = self.state.last_error();
                json_body(
                    if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    },
                    json!({
                        "ready": ready,
                        // During a graceful upgrade both processes answer on this port:
                        // the pid tells which one did.
                        "pid": std::process::id(),
                        "draining": self.state.is_draining(),
                        "config_version": self.state.snapshot().version,
                        "last_reload_error": last_error,
                        "upgrade_required": self.state.upgrade_required(),
                    }),
                )
            }
            ("GET", "/metrics") => {
                self.refresh_endpoint_gauges();
                (
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            ("GET", "/admin/clusters") => {
                let snapshot = self.state.snapshot();
                let clusters: Vec<_> = snapshot.clusters.values().map(|c| c.status()).collect();
                json_body(StatusCode::OK, json!({ "clusters": clusters }))
            }
            ("GET", "/admin/config") => {
                let snapshot = self.state.snapshot();
                json_body(
                    StatusCode::OK,
                    json!({
                        "version": snapshot.version,
                        "loaded_at": humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
                        "source": self.state.config_path.as_ref().map(|p| p.display().to_string()),
                        "config": snapshot.redacted_config(),
                    }),
                )
            }
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/admin/clusters" | "/admin/config"
                | "/admin/reload",
            ) => json_body(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": format!("{method} is not allowed on {path}") }),
            ),
            _ => json_body(
                StatusCode::NOT_FOUND,
                json!({
                    "error": "not found",
                    "endpoints": ["/healthz", "/readyz", "/metrics", "/admin/clusters", "/admin/config", "POST /admin/reload"],
                }),
            ),
        }
    }

    /// `POST /admin/reload`: answers once the new config is in effect (new clusters
    /// probed), or with 422 and the errors. `upgrade_required` says when part of the new
    /// config (listeners) needs a graceful upgrade to take effect.
    async fn reload(&self) -> (StatusCode, &'static str, Vec<u8>) {
        let (status, body) = match runtime::reload(&self.state).await {
            Ok(version) => (
                StatusCode::OK,
                json!({
                    "reloaded": true,
                    "version": version,
                    "upgrade_required": self.state.upgrade_required(),
                }),
            ),
            Err(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "reloaded": false, "error": e }),
            ),
        };
        (
            status,
            "application/json",
            serde_json::to_vec_pretty(&body).unwrap_or_default(),
        )
    }

    /// Endpoint gauges are set from the live cluster state at scrape time, and reset
    /// first so endpoints removed by a reload disappear.
    fn refresh_endpoint_gauges(&self) {
        let snapshot = self.state.snapshot();
        METRICS.endpoint_healthy.reset();
        METRICS.endpoint_in_flight.reset();
        METRICS.breaker_state.reset();
        METRICS.bulkhead_limit.reset();
        let state_value = |s: BreakerState| match s {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        for cluster in snapshot.clusters.values() {
            let status = cluster.status();
            if let Some(s) = status.breaker {
                METRICS
                    .breaker_state
                    .with_label_values(&[cluster.name.as_str(), ""])
                    .set(state_value(s));
            }
            if let Some(b) = &status.bulkhead {
                METRICS
                    .bulkhead_limit
                    .with_label_values(&[cluster.name.as_str()])
                    .set(b.limit as i64);
            }
            for e in status.endpoints {
                if let Some(s) = e.breaker {
                    METRICS
                        .breaker_state
                        .with_label_values(&[cluster.name.as_str(), e.address.as_str()])
                        .set(state_value(s));
                }
                let labels = [cluster.name.as_str(), e.address.as_str()];
                METRICS
                    .endpoint_healthy
                    .with_label_values(&labels)
                    .set(i64::from(e.healthy && !e.ejected));
                METRICS
                    .endpoint_in_flight
                    .with_label_values(&labels)
                    .set(e.in_flight as i64);
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) =
            if method == http::Method::POST && path == "/admin/reload" {
                self.reload().await
            } else {
                self.route(&method, &path)
            };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(body)
            .unwrap_or_default()
    }
}
