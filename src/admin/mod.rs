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

/// Whether the admin API answers a request naming `host` (the `Host` header, or the
/// authority of an absolute request target): IP literals, `localhost`, and the configured
/// names, case-insensitively, with or without a port. A browser tricked by DNS rebinding
/// names the attacker's host, and is refused.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    // `[v6]:port` or `[v6]`; otherwise `name:port` or `name` (a bare v6 has several colons).
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || valid_port(tail) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') => {
                if !valid_port(&format!(":{port}")) {
                    return false;
                }
                name
            }
            Some(_) => return host.parse::<std::net::Ipv6Addr>().is_ok(),
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return false;
    }
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| {
            let a = a.strip_suffix('.').unwrap_or(a);
            a.eq_ignore_ascii_case(name)
        })
}

/// `:` followed by 1–5 digits.
fn valid_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The 421 answer to a request for a host the admin API does not serve.
fn misdirected() -> (StatusCode, &'static str, Vec<u8>) {
    let body = json!({
        "type": "urn:portico:problem:admin-host-not-allowed",
        "title": "Misdirected request",
        "status": 421,
        "detail": "the admin API answers only to IP addresses, localhost and [admin] allowed_hosts",
    });
    (
        StatusCode::MISDIRECTED_REQUEST,
        "application/problem+json",
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // Absolute-form targets name the host in the URI; otherwise the Host header does.
        // A request naming none (HTTP/1.0 health checkers) cannot come from a browser.
        let req = session.req_header();
        let host = match req.uri.authority() {
            Some(a) => Some(a.as_str().to_string()),
            None => req
                .headers
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        };
        let hosts_ok = match &host {
            None => req.headers.get_all(http::header::HOST).iter().count() == 0,
            Some(h) => {
                req.headers.get_all(http::header::HOST).iter().count() <= 1
                    && host_allowed(h, &self.state.snapshot().config.admin.allowed_hosts)
            }
        };
        let (status, content_type, body) = if !hosts_ok {
            log::warn!(
                "admin API: refused {method} {path} for Host {:?}",
                host.as_deref().unwrap_or("")
            );
            misdirected()
        } else if method == http::Method::POST && path == "/admin/reload" {
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

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn ip_literals_localhost_and_listed_names_are_answered() {
        let allowed = vec!["admin.internal".to_string(), "ops.example.".to_string()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "10.1.2.3:80",
            "[::1]:9090",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST:9090",
            "localhost.",
            "admin.internal",
            "Admin.Internal:9090",
            "ops.example",
        ] {
            assert!(host_allowed(host, &allowed), "{host}");
        }
    }

    #[test]
    fn other_names_and_malformed_hosts_are_refused() {
        let allowed = vec!["admin.internal".to_string()];
        for host in [
            "evil.example",
            "evil.example:9090",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "admin.internal.evil.example",
            "",
            ":9090",
            "[::1",
            "[evil]:80",
            "127.0.0.1:",
            "127.0.0.1:90x",
            "user@127.0.0.1",
            "1.2.3.4:123456",
        ] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
        assert!(!host_allowed("admin.internal", &[]));
    }
}
