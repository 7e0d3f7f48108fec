//! Configuration: the TOML schema (plain serde structs with `deny_unknown_fields`), loading
//! with `${ENV}` interpolation, and validation that reports every problem with its file,
//! line, column and field path.
//!
//! These types are what an operator writes, not what the proxy runs on: the gateway builds
//! its runtime objects (compiled route table, live clusters) from a validated [`Config`].

mod effective;
mod field_path;
mod lint;
mod load;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use effective::{effective_value, value_as_line};
pub use lint::{lint, Warning};
pub use load::{load_file, load_str, ConfigError, ConfigErrors, Location};
pub use validate::resolve_address;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub logging: Logging,
    #[serde(default)]
    pub limits: Limits,
    /// Plugins applied to every route, before the route's own plugins.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    /// Span export over OTLP/HTTP; off without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Values substituted from `${ENV}` references: secrets, redacted from `/admin/config`.
    #[serde(skip)]
    pub secrets: Vec<String>,
}

/// Process-level settings handed to Pingora's server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads per listener service.
    pub threads: usize,
    /// Let idle worker threads steal tasks from busy ones. Off by default: one tokio
    /// runtime per thread, each connection staying on the thread it was handed to, is
    /// 7–9 % more requests/s per core (benches/load/RESULTS.md, 2026-11-25 16:3x).
    pub work_stealing: bool,
    /// Default `portico.pid` in the runtime directory ([`crate::runtime::dirs`]).
    pub pid_file: String,
    /// Default `upgrade.sock` in the runtime directory: whoever listens here receives the
    /// listening sockets at an upgrade, so its directory must be private.
    pub upgrade_sock: String,
    pub user: Option<String>,
    pub group: Option<String>,
    /// How long an old process keeps serving after handing its sockets to a new one.
    pub grace_period_seconds: u64,
    /// How long in-flight requests may take to finish during a graceful shutdown.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Idle upstream connections kept for reuse, shared by all clusters.
    pub upstream_keepalive_pool_size: usize,
    /// Reload the config by itself when the file's content changes (polled every second,
    /// applied once it has been stable for 500 ms).
    pub watch_config: bool,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-*`, `Forwarded` and `X-Real-IP`
    /// headers are believed, e.g. the load balancer in front of portico. From anyone else
    /// those headers are removed, and the client is the connection's peer.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        let run = crate::runtime::dirs::default_runtime_dir();
        ServerSection {
            threads: 1,
            work_stealing: false,
            pid_file: run.join("portico.pid").display().to_string(),
            upgrade_sock: run.join("upgrade.sock").display().to_string(),
            user: None,
            group: None,
            grace_period_seconds: 30,
            graceful_shutdown_timeout_seconds: 10,
            upstream_keepalive_pool_size: 1024,
            watch_config: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A client-facing listening socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: String,
    pub tls: Option<ListenerTls>,
    /// This listener's cap on client connections, instead of `[limits] max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from the load
    /// balancer in front, whose source address becomes the client's; a connection without
    /// a valid one within `[limits] proxy_header_timeout` is closed. On a TLS listener the
    /// header comes before the ClientHello.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

/// TLS termination for a listener (rustls, TLS 1.2 and 1.3). Certificates, keys and the
/// client CA are read again on every config reload.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// The single-certificate form: a PEM chain (leaf first) and its key.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Several certificates on one listener, chosen by the client's SNI among the DNS
    /// names of each certificate; the first one (or `cert`/`key`) answers clients whose
    /// SNI matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateFiles>,
    /// PEM bundle of the CAs that sign client certificates: turns on mTLS.
    pub client_ca: Option<String>,
    /// With `client_ca`: `required` (the default) refuses clients without a valid
    /// certificate, `optional` verifies one only when the client sends it.
    pub client_auth: Option<ClientAuth>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`); default true.
    #[serde(default = "yes")]
    pub http2: bool,
}

impl ListenerTls {
    /// Every certificate of the listener, the default one first.
    pub fn all_certificates(&self) -> Vec<CertificateFiles> {
        let mut all = Vec::with_capacity(self.certificates.len() + 1);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            all.push(CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        all.extend(self.certificates.iter().cloned());
        all
    }
}

/// A certificate chain file and its private key file (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: String,
    pub key: String,
}

/// Whether a listener with `client_ca` insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    Required,
    Optional,
}

fn yes() -> bool {
    true
}

/// The admin API listener: health, readiness, metrics, cluster state, effective config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Loopback by default so the admin API is never exposed by accident.
    pub address: String,
    /// Host names the admin API answers to besides IP literals and `localhost`. Any other
    /// `Host` gets 421: a web page whose name was rebound to the admin address (DNS
    /// rebinding) sends its own name, and must not read or reload anything.
    pub allowed_hosts: Vec<String>,
    /// A file holding the bearer token every admin request but `/healthz` and `/readyz`
    /// must send (`Authorization: Bearer …`); read again on every reload. Not readable by
    /// every user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// The token itself, normally `"${PORTICO_ADMIN_TOKEN}"` (from the environment);
    /// exclusive with `token_file`. Without either, the protected endpoints answer 401.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Whether `/metrics` needs the token too. Off by default: metrics carry no secret
    /// and no power, and every Prometheus would otherwise need the token that can reload
    /// the gateway.
    pub metrics_auth: bool,
    /// A listener of its own for `/metrics` alone (e.g. on an interface Prometheus
    /// reaches, while the admin API stays on loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: "127.0.0.1:9090".into(),
            allowed_hosts: Vec::new(),
            token_file: None,
            token: None,
            metrics_auth: false,
            metrics_address: None,
        }
    }
}

/// Shortest admin token accepted: 128 bits as hex.
pub const MIN_ADMIN_TOKEN: usize = 32;

impl Admin {
    /// The admin token from `token` or `token_file` (read now), or `None` when neither is
    /// set. Errors name the field at fault.
    pub fn read_token(&self) -> Result<Option<String>, (&'static str, String)> {
        let (field, token) = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err((
                    "token",
                    "set either token or token_file, not both".to_string(),
                ))
            }
            (Some(t), None) => ("token", t.clone()),
            (None, Some(path)) => (
                "token_file",
                read_token_file(path).map_err(|e| ("token_file", e))?,
            ),
            (None, None) => return Ok(None),
        };
        let token = token.trim();
        if token.is_empty() {
            return Err((field, "the admin token is empty".to_string()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                field,
                "the admin token must be printable ASCII without spaces (it is sent in a header)"
                    .to_string(),
            ));
        }
        if token.len() < MIN_ADMIN_TOKEN {
            return Err((
                field,
                format!(
                    "the admin token has {} characters; at least {MIN_ADMIN_TOKEN} (e.g. `openssl rand -hex 32`)",
                    token.len()
                ),
            ));
        }
        Ok(Some(token.to_string()))
    }
}

/// The content of a token file, which must not be readable by every user.
fn read_token_file(path: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            return Err(format!(
                "`{path}` is readable by every user (mode {mode:04o}); `chmod o-r {path}`"
            ));
        }
    }
    if !meta.is_file() {
        return Err(format!("`{path}` is not a file"));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read `{path}`: {e}"))
}

/// Where access logs go and how many successful requests are logged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// `stdout`, `off`, or a file path.
    pub access_log: String,
    /// Share of 1xx–3xx responses logged (0.0–1.0); 4xx and 5xx are always logged.
    pub success_sample_ratio: f64,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            access_log: "stdout".into(),
            success_sample_ratio: 1.0,
        }
    }
}

/// Span export to an OpenTelemetry collector over OTLP/HTTP (protobuf). What the section
/// leaves unset comes from OpenTelemetry's standard `OTEL_EXPORTER_OTLP_*`,
/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` variables where they are set
/// (`observe::otlp::settings`), so an empty `[tracing]` turns export on from the environment.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// `http(s)://host:port/v1/traces`; a URL without a path gets `/v1/traces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces exported (0.0–1.0). A caller's `traceparent` decides instead:
    /// sampled-flag traces are always exported, the others never.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the exported resource (default `portico`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Spans per export request (about: a request's spans are never split).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest a span waits before its batch is sent.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Timeout of one export request, connect included (default 5 s).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Requests' span sets waiting for export at most; beyond that they are dropped.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Extra request headers, e.g. `authorization = "Bearer ${OTLP_TOKEN}"`; their values
    /// are redacted from `/admin/config`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra resource attributes, e.g. `"deployment.environment.name" = "prod"`.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// `gzip` or `none` (default): how export bodies are encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// A PEM CA bundle trusted (alone) for an `https` collector; default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Retries of an export the collector answered 429, 502, 503 or 504, or that failed to
    /// connect or timed out, with exponential backoff (from 500 ms, at most 8 s) or the
    /// collector's `Retry-After` (at most 30 s).
    #[serde(default = "default_export_retries")]
    pub max_retries: u32,
}

fn default_sample_ratio() -> f64 {
    1.0
}
fn default_batch_size() -> usize {
    512
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_export_retries() -> u32 {
    3
}
fn default_queue_size() -> usize {
    4096
}

/// What a client may send and how long it may take, enforced before anything is proxied:
/// request sizes, the deadlines of a client connection (see `proxy::connection`) and how
/// many connections a listener and a client address may hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest request target (path and query) accepted; longer → 414.
    pub max_uri_bytes: usize,
    /// Total size of request header names and values; larger → 431.
    pub max_header_bytes: usize,
    /// Largest declared `Content-Length`; larger → 413.
    pub max_body_bytes: u64,
    /// A new connection's first byte must arrive within this, or the connection is closed
    /// without an answer (nothing was asked).
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// The whole request header, from its first byte to its empty line; later → 408 and
    /// the connection is closed. One deadline for the whole header, so a client trickling
    /// a byte at a time cannot hold a connection.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request; `0s` turns
    /// keep-alive off.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Longest pause between two reads of a request body; longer → 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest pause between two writes of a response to a client that stopped reading.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Client connections one listener holds at once (a listener's own `max_connections`
    /// overrides it); more are closed as soon as they are accepted. 0 = no cap.
    pub max_connections: usize,
    /// Client connections one client address holds at once, on all listeners together;
    /// 0 (the default) = no cap, as many clients can share an address behind NAT.
    pub max_connections_per_client: usize,
    /// On `proxy_protocol` listeners, the whole PROXY header must arrive within this after
    /// the connection is accepted, or the connection is closed.
    #[serde(with = "humantime_serde")]
    pub proxy_header_timeout: Duration,
    /// An upgraded connection (WebSocket) is closed when either side sends nothing for this
    /// long (pings count).
    #[serde(with = "humantime_serde")]
    pub upgrade_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            first_byte_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_client: 0,
            proxy_header_timeout: Duration::from_secs(5),
            upgrade_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// A plugin instance: its registry name and its own config table.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PluginRef {
    pub name: String,
    /// Everything else in the table is the plugin's own config, checked by the plugin.
    #[serde(flatten)]
    pub config: toml::Table,
}

impl PluginRef {
    /// Two references with the same key build the same plugin: its name and its table.
    ///
    /// The table is written in a compact canonical form of its own rather than as TOML:
    /// `toml`'s serializer builds an editable document per call, which at 100,000 routes
    /// was a large share of a reload (every plugin reference is keyed twice, in validation
    /// and in the snapshot build).
    pub fn key(&self) -> PluginKey {
        let mut canonical = String::with_capacity(64);
        write_canonical_table(&self.config, &mut canonical);
        (self.name.clone(), canonical)
    }
}

/// Writes `table` so that two tables are equal exactly when their writings are: keys come
/// sorted (a `toml::Table` is ordered), strings prefixed by their length, every value
/// tagged by its kind and followed by a comma, so the writing reads back one way only.
fn write_canonical_table(table: &toml::Table, out: &mut String) {
    out.push('{');
    for (key, value) in table {
        write_canonical_str(key, out);
        write_canonical(value, out);
        // Ends the value (an integer's digits and the next key's length would run together).
        out.push(',');
    }
    out.push('}');
}

fn write_canonical_str(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    let _ = write!(out, "{}:", s.len());
    out.push_str(s);
}

fn write_canonical(value: &toml::Value, out: &mut String) {
    use std::fmt::Write as _;
    match value {
        toml::Value::String(s) => {
            out.push('s');
            write_canonical_str(s, out);
        }
        toml::Value::Integer(i) => {
            let _ = write!(out, "i{i}");
        }
        // By bits: 0.0 and -0.0 differ, and a NaN equals itself.
        toml::Value::Float(f) => {
            let _ = write!(out, "f{:x}", f.to_bits());
        }
        toml::Value::Boolean(b) => out.push(if *b { 'T' } else { 'F' }),
        toml::Value::Datetime(d) => {
            let _ = write!(out, "d{d}");
        }
        toml::Value::Array(items) => {
            out.push('[');
            for item in items {
                write_canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        toml::Value::Table(table) => write_canonical_table(table, out),
    }
}

/// See [`PluginRef::key`].
pub type PluginKey = (String, String);

/// One route: what it matches and where it sends.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    /// Exact hosts or `*.suffix` wildcards; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path: String,
    #[serde(default)]
    pub path_match: PathMatchKind,
    /// Empty allows every method.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    /// The cluster of unversioned requests; required unless `versions` are given.
    pub cluster: Option<String>,
    /// How the API version is read from a request; needed when `versions` are given.
    pub versioning: Option<Versioning>,
    /// The API versions this route serves, each with its own cluster.
    #[serde(default)]
    pub versions: Vec<Version>,
    /// Retries of failed attempts; without it only failed connects are retried.
    pub retry: Option<RetryPolicy>,
    /// Overall deadline of a request, across all attempts and backoff.
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Remove the matched path prefix before proxying (`/orders/1` → `/1`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched path prefix with this one (`/orders/1` → `/api/orders/1`).
    pub rewrite_prefix: Option<String>,
    /// Whether a request this route matches by host and path, but not by method or
    /// headers, may fall through to a weaker route (`fallthrough`, the default), or is
    /// answered here (`"405"`, or `"404"`).
    #[serde(default)]
    pub on_mismatch: OnMismatchKind,
    /// Forward `;` path parameters (`/a;jsessionid=1`), routed by the path without them.
    /// Off by default: such paths are refused with 400.
    #[serde(default)]
    pub allow_path_params: bool,
    /// Forward escaped slashes and backslashes (`%2F`, `%5C`). Off by default: refused
    /// with 400, since some upstreams decode them into segment separators.
    #[serde(default)]
    pub allow_escaped_slashes: bool,
    /// Protocols a client may switch to with `Upgrade` (`h2c` is never allowed).
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    /// This route's own limits and timeouts, instead of `[limits]` and the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RouteLimits>,
}

/// A route's overrides of `[limits]` (and of its cluster's upstream read timeout); a key
/// left out keeps the global value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimits {
    /// Largest request body (declared or streamed); larger → 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Longest pause between two reads of the request body; longer → 408.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub body_timeout: Option<Duration>,
    /// Longest pause between two writes of the response to a client that stopped reading.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub send_timeout: Option<Duration>,
    /// Longest wait for the upstream's response header, instead of the cluster's
    /// `timeouts.read` (which Pingora also applies to each pause in the response body).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_header_timeout: Option<Duration>,
    /// Idle time of an upgraded (WebSocket) connection on this route.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub upgrade_idle_timeout: Option<Duration>,
}

impl RouteLimits {
    /// A one-line summary for `portico routes`: the keys that are set.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.max_body_bytes {
            parts.push(format!("max_body_bytes {n}"));
        }
        for (name, value) in [
            ("body_timeout", self.body_timeout),
            ("send_timeout", self.send_timeout),
            ("response_header_timeout", self.response_header_timeout),
            ("upgrade_idle_timeout", self.upgrade_idle_timeout),
        ] {
            if let Some(d) = value {
                parts.push(format!("{name} {}", humantime::format_duration(d)));
            }
        }
        parts.join(", ")
    }
}

fn default_upgrades() -> Vec<String> {
    vec!["websocket".into()]
}

/// See [`Route::on_mismatch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum OnMismatchKind {
    #[default]
    #[serde(rename = "fallthrough")]
    FallThrough,
    #[serde(rename = "405")]
    MethodNotAllowed,
    #[serde(rename = "404")]
    NotFound,
}

/// Where a route reads the requested API version from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Versioning {
    /// Sources tried in order; the first that names a version wins.
    #[serde(default = "default_version_sources")]
    pub sources: Vec<VersionSource>,
    /// The header of the `header` source.
    #[serde(default = "default_version_header")]
    pub header: String,
    /// The query parameter of the `query` source.
    #[serde(default = "default_version_query")]
    pub query: String,
    /// The version of requests that name none; without it they are refused with 400.
    pub default: Option<String>,
}

impl Default for Versioning {
    fn default() -> Self {
        Versioning {
            sources: default_version_sources(),
            header: default_version_header(),
            query: default_version_query(),
            default: None,
        }
    }
}

fn default_version_sources() -> Vec<VersionSource> {
    vec![
        VersionSource::Uri,
        VersionSource::Header,
        VersionSource::MediaType,
        VersionSource::Query,
    ]
}
fn default_version_header() -> String {
    "Accept-Version".into()
}
fn default_version_query() -> String {
    "version".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// A leading path segment: `/v2/orders`.
    Uri,
    /// A header such as `Accept-Version: 2`.
    Header,
    /// `Accept: application/json; version=2` or `application/vnd.acme.v2+json`.
    MediaType,
    /// A query parameter such as `?version=2`.
    Query,
}

/// One API version of a route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// `2` and `v2` are the same version.
    pub name: String,
    pub cluster: String,
    /// Replace the route's matched prefix with this one upstream.
    pub rewrite_prefix: Option<String>,
    /// Retired versions are refused, listing the supported ones.
    #[serde(default)]
    pub retired: bool,
    pub deprecated: Option<Deprecation>,
}

/// Deprecation signalling on every response of a version (RFC 9745, RFC 8594).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    /// When the version was deprecated, RFC 3339 (`Deprecation` header).
    pub since: String,
    /// When it stops working, RFC 3339 (`Sunset` header).
    pub sunset: Option<String>,
    /// The version that replaces it (`Link: <…>; rel="successor-version"`).
    pub successor: Option<String>,
    /// A link to migration docs (`Link: <…>; rel="deprecation"`).
    pub link: Option<String>,
}

/// When and how failed attempts are retried.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = never retry).
    pub attempts: u32,
    /// What is retried: `connect_failure`, `reset`, `timeout`, or a status code such as `503`.
    pub on: Vec<String>,
    /// Retry non-idempotent methods too (requests with `Idempotency-Key` always may be).
    pub non_idempotent: bool,
    /// Full-jitter exponential backoff: a random wait up to min(cap, base × 2^retry).
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Timeout of each attempt (connect and each read); the remaining deadline caps it.
    #[serde(default, with = "humantime_serde::option")]
    pub per_try_timeout: Option<Duration>,
    /// Send `X-Portico-Attempts` on the response.
    pub attempts_header: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            on: ["connect_failure", "reset", "timeout", "502", "503", "504"]
                .map(String::from)
                .to_vec(),
            non_idempotent: false,
            backoff_base: Duration::from_millis(25),
            backoff_cap: Duration::from_millis(250),
            per_try_timeout: None,
            attempts_header: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatchKind {
    #[default]
    Prefix,
    Exact,
}

/// A header condition: present (no `value`) or equal to `value`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    pub value: Option<String>,
}

/// A group of interchangeable upstream endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Fixed endpoints; empty when `endpoints_file` names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// A JSON or TOML file (by extension) listing the endpoints, which another tool
    /// writes: it is watched and each good version applied without a config reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints_file: Option<String>,
    #[serde(default)]
    pub lb: LbKind,
    /// What `consistent_hash` hashes on.
    pub hash: Option<HashOn>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Connect to the endpoints over TLS.
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name for upstream TLS; defaults to the endpoint host.
    pub sni: Option<String>,
    /// PEM bundle of the CAs trusted for the endpoints' certificates (a private CA);
    /// without it the system's trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Verify the endpoints' certificates and names (default true; false is for tests).
    #[serde(default = "yes")]
    pub verify: bool,
    /// Client certificate chain and key presented to the endpoints (upstream mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub outlier: Outlier,
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Circuit breaker of the whole cluster.
    pub breaker: Option<Breaker>,
    /// Circuit breaker of each endpoint.
    pub endpoint_breaker: Option<Breaker>,
    /// Concurrency limit (bulkhead) of the cluster.
    pub bulkhead: Option<Bulkhead>,
    /// Requests in flight to one endpoint at most; a full endpoint is skipped.
    pub max_requests_per_endpoint: Option<usize>,
}

/// Retries a cluster accepts: at most `ratio` of its requests plus `min_per_second`, over
/// a 10 s window, so retries never multiply the load on a failing upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 5,
        }
    }
}

/// A circuit breaker: closed → open when failures exceed a rate over a window (with a
/// minimum volume) or a run of consecutive failures; open fails fast; half-open lets a
/// few probes through; each re-trip doubles the open time up to `max_open`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    /// Failure share (0.0–1.0) over `window` that trips the breaker.
    pub failure_rate: f64,
    /// Requests needed in the window before the rate counts.
    pub min_requests: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Consecutive failures that trip the breaker at once; 0 disables.
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    #[serde(with = "humantime_serde")]
    pub max_open: Duration,
    /// Probe requests let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            consecutive_failures: 0,
            open_for: Duration::from_secs(5),
            max_open: Duration::from_secs(60),
            half_open_probes: 3,
        }
    }
}

/// Caps the requests in flight to a cluster so a slow upstream cannot take every worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bulkhead {
    /// Requests in flight at most (`fixed`), or the starting and upper limit (`adaptive`).
    pub max_concurrent: usize,
    /// Requests that may wait for a slot; beyond that → 503 at once.
    #[serde(default)]
    pub max_queue: usize,
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    #[serde(default)]
    pub mode: BulkheadMode,
    /// Lowest limit the adaptive mode may set.
    #[serde(default = "default_min_concurrent")]
    pub min_concurrent: usize,
}

fn default_queue_timeout() -> Duration {
    Duration::from_millis(100)
}
fn default_min_concurrent() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkheadMode {
    #[default]
    Fixed,
    /// The limit follows measured latency (gradient: grows while latency stays near its
    /// minimum, shrinks as it rises).
    Adaptive,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port` or `host:port` (resolved once at load).
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbKind {
    #[default]
    RoundRobin,
    LeastRequest,
    ConsistentHash,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    pub by: HashBy,
    /// Header or cookie name (not used for `client_ip`).
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashBy {
    Header,
    Cookie,
    ClientIp,
}

/// Upstream timeouts, as humantime strings (`250ms`, `5s`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    #[serde(with = "humantime_serde")]
    pub read: Duration,
    #[serde(with = "humantime_serde")]
    pub write: Duration,
    /// How long an idle upstream connection stays in the keepalive pool.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// Active HTTP health checking of every endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    /// Host header of the probe; defaults to the endpoint address.
    pub host: Option<String>,
    #[serde(default = "default_expected_status")]
    pub expected_status: Vec<u16>,
    #[serde(default = "default_hc_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_hc_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy endpoint back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy endpoint out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

fn default_expected_status() -> Vec<u16> {
    vec![200]
}
fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive outlier ejection from real traffic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outlier {
    /// Consecutive 5xx responses that eject an endpoint; 0 disables.
    pub consecutive_5xx: u32,
    /// Consecutive connect failures that eject an endpoint; 0 disables.
    pub consecutive_connect_failures: u32,
    /// First ejection length; each further ejection of the same endpoint doubles it.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Never eject when it would leave fewer available endpoints than this.
    pub min_healthy: usize,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_5xx: 5,
            consecutive_connect_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            min_healthy: 1,
        }
    }
}

pub(crate) use portico_common::humantime_serde;

#[cfg(test)]
mod tests {
    use super::PluginRef;

    fn plugin(table: &str) -> PluginRef {
        PluginRef {
            name: "p".into(),
            config: toml::from_str(table).unwrap(),
        }
    }

    #[test]
    fn plugin_keys_are_equal_exactly_when_the_tables_are() {
        let equal = [
            ("a = 1\nb = \"x\"", "b = \"x\"\na = 1"),
            ("t = { x = [1, 2], y = 1.5 }", "[t]\ny = 1.5\nx = [1, 2]"),
        ];
        for (a, b) in equal {
            assert_eq!(plugin(a).key(), plugin(b).key(), "{a:?} vs {b:?}");
        }
        let different = [
            ("a = 1", "a = \"1\""),
            ("a = 1", "a = 1.0"),
            ("a = true", "a = \"true\""),
            ("a = \"b\\\",c=\"", "a = \"b\"\nc = \"\""),
            ("a = [[1], 2]", "a = [1, [2]]"),
            ("a = {}", "a = []"),
            ("x = 12\nyyy = 1", "x = 123\nyy = 1"),
            ("a = \"1,\"\nb = 2", "a = \"1\"\nb = 2"),
            ("a = 0.0", "a = -0.0"),
            ("a = 1979-05-27", "a = \"1979-05-27\""),
        ];
        for (a, b) in different {
            assert_ne!(plugin(a).key(), plugin(b).key(), "{a:?} vs {b:?}");
        }
    }
}
