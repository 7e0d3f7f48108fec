//! The admin HTTP API, served by Pingora on its own listener (loopback by default):
//! liveness, readiness, Prometheus metrics, cluster state, the effective config, reload,
//! the edge cache's state and purges (`/admin/cache`, `POST /admin/cache/purge`,
//! [`crate::cache::purge`]), and the console page ([`console`]) with the live data and
//! explain answers behind it.
//!
//! Everything but `/healthz`, `/readyz`, the console's static files (which hold no data)
//! and `/metrics` (unless `metrics_auth`) needs
//! `Authorization: Bearer <[admin] token>`: loopback alone lets in every local user and
//! any server-side request forgery through an upstream. The token is kept as a SHA-256
//! digest and compared in constant time, so neither its bytes nor its length leak through
//! response times. `/metrics` can also have a listener of its own ([`AdminApi::metrics_only`]).

pub mod console;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::observe::metrics::METRICS;
use crate::runtime::{self, State};
use crate::upstream::breaker::BreakerState;

/// The admin bearer token, as the SHA-256 digest of its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken {
            digest: digest(token),
        }
    }

    /// Whether `presented` is the token. Both sides are hashed first, so the comparison
    /// runs over 32 bytes whatever was sent, and it looks at all of them.
    pub fn matches(&self, presented: &str) -> bool {
        let other = digest(presented);
        let diff = self
            .digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn digest(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// Why a request was refused for its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unauthorized {
    /// No `Authorization: Bearer` header (or several).
    Missing,
    /// A token that is not the admin token.
    Invalid,
    /// The config sets no admin token, so nothing protected can be reached.
    NotConfigured,
}

impl Unauthorized {
    fn label(self) -> &'static str {
        match self {
            Unauthorized::Missing => "missing",
            Unauthorized::Invalid => "invalid",
            Unauthorized::NotConfigured => "not_configured",
        }
    }
}

/// `portico_admin_unauthorized_total{reason}`: admin requests refused with 401.
static UNAUTHORIZED: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    let counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "portico_admin_unauthorized_total",
            "Admin API requests refused with 401, by reason (missing, invalid, not_configured)",
        ),
        &["reason"],
    )
    .expect("valid metric");
    if let Err(e) = prometheus::default_registry().register(Box::new(counter.clone())) {
        log::error!("cannot register portico_admin_unauthorized_total: {e}");
    }
    counter
});

/// Unix seconds of the last refusal logged: a flood of bad tokens is counted, and
/// logged once per ten seconds.
static LAST_REFUSAL_LOGGED: AtomicU64 = AtomicU64::new(0);

/// The admin API application.
pub struct AdminApi {
    state: Arc<State>,
    /// The `[admin] metrics_address` listener: `/metrics` and nothing else.
    metrics_only: bool,
}

impl AdminApi {
    pub fn new(state: Arc<State>) -> AdminApi {
        // Registered now, so the series is on `/metrics` before the first refusal.
        LazyLock::force(&UNAUTHORIZED);
        AdminApi {
            state,
            metrics_only: false,
        }
    }

    /// The API for `[admin] metrics_address`: `/metrics` (behind the token when
    /// `metrics_auth`), 404 for everything else.
    pub fn metrics_only(state: Arc<State>) -> AdminApi {
        AdminApi {
            metrics_only: true,
            ..AdminApi::new(state)
        }
    }

    /// Whether `path` needs the token on this listener.
    fn protected(&self, path: &str) -> bool {
        match path {
            "/metrics" => self.state.snapshot().config.admin.metrics_auth,
            "/healthz" | "/readyz" => false,
            // The page and its script hold no data: they ask for the token themselves.
            p if console::asset(p).is_some() => false,
            // The metrics listener serves nothing else: its 404s say nothing.
            _ => !self.metrics_only,
        }
    }

    /// Checks `Authorization: Bearer <token>` against the running config's token.
    fn authorize(&self, req: &pingora_http::RequestHeader) -> Result<(), Unauthorized> {
        let Some(token) = self.state.snapshot().admin_token.clone() else {
            return Err(Unauthorized::NotConfigured);
        };
        let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Unauthorized::Missing);
        };
        let text = value.to_str().map_err(|_| Unauthorized::Invalid)?.trim();
        let Some((scheme, presented)) = text.split_once(' ') else {
            return Err(Unauthorized::Missing);
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Unauthorized::Missing);
        }
        if token.matches(presented.trim()) {
            Ok(())
        } else {
            Err(Unauthorized::Invalid)
        }
    }

    fn route(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
    ) -> (StatusCode, &'static str, Vec<u8>) {
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
                METRICS.sync_plugin_series();
                (
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            ("GET", "/admin/console") => json_body(StatusCode::OK, console::live(&self.state)),
            ("GET", "/admin/explain") => {
                let (status, body) = console::explain(&self.state, query);
                json_body(status, body)
            }
            ("GET", p) if console::asset(p).is_some() => {
                let (content_type, bytes) = console::asset(p).unwrap_or_default();
                (StatusCode::OK, content_type, bytes.to_vec())
            }
            ("GET", "/admin/clusters") => {
                let snapshot = self.state.snapshot();
                let clusters: Vec<_> = snapshot.clusters.values().map(|c| c.status()).collect();
                json_body(StatusCode::OK, json!({ "clusters": clusters }))
            }
            ("GET", "/admin/cache") => json_body(
                StatusCode::OK,
                json!({ "cache": crate::cache::store::store().stats() }),
            ),
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
                | "/admin/reload" | "/admin/console" | "/admin/explain" | "/admin/cache"
                | "/admin/cache/purge",
            ) => json_body(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": format!("{method} is not allowed on {path}") }),
            ),
            _ => json_body(
                StatusCode::NOT_FOUND,
                json!({
                    "error": "not found",
                    "endpoints": ["/", "/healthz", "/readyz", "/metrics", "/admin/clusters", "/admin/config", "POST /admin/reload", "/admin/console", "/admin/explain", "/admin/cache", "POST /admin/cache/purge"],
                }),
            ),
        }
    }

    /// The metrics listener: `GET /metrics`, 405 for other methods on it, 404 elsewhere.
    fn metrics_route(
        &self,
        method: &http::Method,
        path: &str,
    ) -> (StatusCode, &'static str, Vec<u8>) {
        match (method.as_str(), path) {
            ("GET", "/metrics") => self.route(method, path, None),
            (_, "/metrics") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                serde_json::to_vec_pretty(
                    &json!({ "error": format!("{method} is not allowed on {path}") }),
                )
                .unwrap_or_default(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "application/json",
                serde_json::to_vec_pretty(
                    &json!({ "error": "not found", "endpoints": ["/metrics"] }),
                )
                .unwrap_or_default(),
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
        crate::observe::process_metrics::tls_certificates(
            self.state.tls_listeners().iter().flat_map(|listener| {
                listener
                    .certificate_expiries()
                    .into_iter()
                    .map(|(name, expiry)| (listener.address.clone(), name, expiry))
            }),
        );
        let snapshot = self.state.snapshot();
        METRICS.endpoint_healthy.reset();
        METRICS.endpoint_in_flight.reset();
        METRICS.cluster_breaker_state.reset();
        METRICS.endpoint_breaker_state.reset();
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
                    .cluster_breaker_state
                    .with_label_values(&[cluster.name.as_str()])
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
                        .endpoint_breaker_state
                        .with_label_values(&[cluster.name.as_str(), e.label.as_str()])
                        .set(state_value(s));
                }
                let labels = [cluster.name.as_str(), e.label.as_str()];
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

enum BodyError {
    TooLarge,
    Read(String),
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Read(e.to_string())),
        }
    }
}

/// The 401 answer (RFC 6750 §3: `WWW-Authenticate: Bearer`, with `error="invalid_token"`
/// when a wrong token was sent).
fn unauthorized(why: Unauthorized) -> (StatusCode, &'static str, Vec<u8>) {
    let detail = match why {
        Unauthorized::Missing => "send Authorization: Bearer <the [admin] token>",
        Unauthorized::Invalid => "the bearer token is not the admin token",
        Unauthorized::NotConfigured => {
            "no admin token is configured: set [admin] token_file or token"
        }
    };
    let body = json!({
        "type": "urn:portico:problem:admin-unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": detail,
    });
    (
        StatusCode::UNAUTHORIZED,
        "application/problem+json",
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
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
        let denied = if hosts_ok && self.protected(&path) {
            self.authorize(req).err()
        } else {
            None
        };
        let (status, content_type, body) = if !hosts_ok {
            log::warn!(
                "admin API: refused {method} {path} for Host {:?}",
                host.as_deref().unwrap_or("")
            );
            misdirected()
        } else if let Some(why) = denied {
            UNAUTHORIZED.with_label_values(&[why.label()]).inc();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = LAST_REFUSAL_LOGGED.load(Ordering::Relaxed);
            if now >= last + 10
                && LAST_REFUSAL_LOGGED
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                log::warn!(
                    "admin API: refused {method} {path} from {}: {} credentials (further refusals in the next 10 s are only counted in portico_admin_unauthorized_total)",
                    session
                        .client_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    why.label()
                );
            }
            unauthorized(why)
        } else if self.metrics_only {
            self.metrics_route(&method, &path)
        } else if method == http::Method::POST && path == "/admin/reload" {
            self.reload().await
        } else if method == http::Method::POST && path == "/admin/cache/purge" {
            match read_body(session, crate::cache::purge::MAX_REQUEST_BYTES).await {
                Ok(body) => crate::cache::purge::answer(&body),
                Err(BodyError::TooLarge) => crate::cache::purge::too_large(),
                Err(BodyError::Read(e)) => {
                    crate::cache::purge::bad_request(&format!("cannot read the body: {e}"))
                }
            }
        } else {
            let query = session.req_header().uri.query().map(str::to_string);
            self.route(&method, &path, query.as_deref())
        };
        let mut response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::CACHE_CONTROL, "no-store")
            // Every answer, not only the console's: a JSON body opened in a browser must
            // not be sniffed into HTML or framed.
            .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(
                http::header::CONTENT_SECURITY_POLICY,
                console::CONTENT_SECURITY_POLICY,
            )
            .header(http::header::REFERRER_POLICY, "no-referrer");
        match denied {
            Some(Unauthorized::Invalid) => {
                response = response.header(
                    http::header::WWW_AUTHENTICATE,
                    r#"Bearer realm="portico-admin", error="invalid_token""#,
                )
            }
            Some(_) => {
                response = response.header(
                    http::header::WWW_AUTHENTICATE,
                    r#"Bearer realm="portico-admin""#,
                )
            }
            None => {}
        }
        response.body(body).unwrap_or_default()
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
