//! Configuration: the TOML schema (plain serde structs with `deny_unknown_fields`), loading
//! with `${ENV}` interpolation, and validation that reports every problem with its file,
//! line, column and field path.
//!
//! These types are what an operator writes, not what the proxy runs on: the gateway builds
//! its runtime objects (compiled route table, live clusters) from a validated [`Config`].

mod by_route;
mod effective;
mod field_path;
mod lint;
mod load;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use by_route::json_hash;
pub use effective::{effective_value, value_as_line};
pub use lint::{lint, Warning};
pub use load::{load_file, load_str, load_str_reusing, ConfigError, ConfigErrors, Location};
pub use validate::{resolve_address, split_host_port};

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
    /// Shared, not owned: a reload takes every route whose text did not change from the
    /// running config as it is (see `by_route`), so two snapshots hold one copy of it, the
    /// reload clones a pointer instead of the route, and retiring the old snapshot frees
    /// only what changed.
    #[serde(default, with = "shared_routes")]
    pub routes: Vec<std::sync::Arc<Route>>,
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
    /// The edge cache's store: its byte budget and largest object.
    #[serde(default)]
    pub cache: CacheSection,
    /// Span export over OTLP/HTTP; off without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Values substituted from `${ENV}` references: secrets, redacted from `/admin/config`.
    #[serde(skip)]
    pub secrets: Vec<String>,
    /// One per route when the text was parsed route by route (empty otherwise): what lets a
    /// reload reuse the routes whose text did not change, and hash the config version
    /// without serializing them again.
    #[serde(skip)]
    pub(crate) route_sources: Vec<by_route::RouteSource>,
}

/// (De)serializes `Config::routes` as a plain array of tables: serde's own `Arc` support
/// would need its `rc` feature for the whole build.
mod shared_routes {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Route;

    pub fn serialize<S: Serializer>(routes: &[Arc<Route>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(routes.iter().map(|r| &**r))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<Route>>, D::Error> {
        Ok(Vec::<Route>::deserialize(d)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
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
    /// Send HTTP/1 header names with the letter case they arrived in (the client's to the
    /// upstream, the upstream's to the client). Off by default: names are case-insensitive
    /// (RFC 9110 §5.1), so they go out as HTTP/2 and Envoy send them — standard names in
    /// their usual capitals, others in lower case — and each header a request or response
    /// gains costs Pingora one header map instead of two. On for peers that wrongly
    /// compare names with their case.
    pub preserve_header_case: bool,
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
            preserve_header_case: false,
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
    /// Accept HTTP/2 in the clear with prior knowledge (`h2c`, as gRPC clients speak it)
    /// beside HTTP/1 on this plaintext listener. TLS listeners offer HTTP/2 by ALPN instead
    /// (`tls.http2`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub h2c: bool,
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

/// `[cache]`: the bounds of the edge cache's in-memory store (`cache::store`). The store
/// is process-wide: a reload applies new bounds (a smaller `max_bytes` evicts at once) and
/// keeps the entries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Bytes the store may hold in all: bodies, metas and a fixed overhead per entry. The
    /// least recently used entries are evicted to stay within it.
    pub max_bytes: u64,
    /// The largest response body stored; a longer one is not cached (its write is abandoned
    /// as it passes this).
    pub max_object_size: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            max_bytes: crate::cache::store::DEFAULT_MAX_BYTES,
            max_object_size: crate::cache::store::DEFAULT_MAX_OBJECT_SIZE,
        }
    }
}

impl CacheSection {
    /// The store's limits. Validation keeps both within `usize`.
    pub fn limits(&self) -> crate::cache::store::Limits {
        crate::cache::store::Limits {
            max_bytes: usize::try_from(self.max_bytes).unwrap_or(usize::MAX),
            max_object_size: usize::try_from(self.max_object_size).unwrap_or(usize::MAX),
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
    /// [`PluginRef::key`], written once: validation and the snapshot build both key every
    /// reference, and a route a reload reuses (see `by_route`) brings its keys along.
    /// Validation shares one key among equal tables (see [`PluginRef::shared_key`]), so
    /// 60,000 routes with the same `jwt` table hold one key between them. Loading is the only
    /// writer of `name` and `config`, so it cannot go stale.
    #[serde(skip)]
    key: std::sync::OnceLock<std::sync::Arc<PluginKey>>,
}

impl PluginRef {
    /// Two references with the same key build the same plugin: its name and its table.
    ///
    /// The table is written in a compact canonical form of its own rather than as TOML:
    /// `toml`'s serializer builds an editable document per call, which at 100,000 routes
    /// was a large share of a reload (every plugin reference is keyed twice, in validation
    /// and in the snapshot build).
    pub fn key(&self) -> &PluginKey {
        self.shared_key(|_| None)
    }

    /// [`PluginRef::key`], written the first time as the key `known` finds equal to it when
    /// there is one, so that equal tables share one key.
    pub(crate) fn shared_key(
        &self,
        known: impl FnOnce(&PluginKey) -> Option<std::sync::Arc<PluginKey>>,
    ) -> &std::sync::Arc<PluginKey> {
        self.key.get_or_init(|| {
            let mut canonical = String::with_capacity(64);
            write_canonical_table(&self.config, &mut canonical);
            let key = (self.name.clone(), canonical);
            known(&key).unwrap_or_else(|| std::sync::Arc::new(key))
        })
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
    /// Response compression (`[routes.compress]`); off without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<Compress>,
    /// A shared response cache for this route (`[routes.cache]`): on when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<RouteCache>,
    /// What validation worked out about this route alone. A reload shares an unchanged
    /// route with the running config (see `by_route`), so it brings this along and
    /// validation does not work it out again.
    #[serde(skip)]
    pub(crate) checked: RouteChecks,
}

/// See [`Route::checked`]: facts about one route that depend on nothing else (or on the
/// context they name), so they hold for as long as the route is shared.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteChecks {
    /// A 128-bit hash of what the route matches on (hosts, path, methods, headers), for
    /// the check that no two routes match the same requests.
    pub(crate) matchers: std::sync::OnceLock<u128>,
    /// The context (see `validate::route_context`) in which the route's own checks found
    /// nothing wrong; set once, by the first validation that passes them.
    pub(crate) valid_in: std::sync::OnceLock<u64>,
}

/// A route's response compression: which codings it offers, in its order of preference,
/// and which responses are worth compressing. An empty table turns it on with the defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compress {
    /// Content codings offered, most preferred first: `zstd`, `br`, `gzip`. The client's
    /// q-values decide; this order breaks ties.
    pub algorithms: Vec<String>,
    /// Responses whose `Content-Length` is below this many bytes are sent as they are
    /// (a response without one, streamed, is compressed).
    pub min_size: u64,
    /// Media types compressed: `type/subtype`, `type/*`, or `type/*+suffix`
    /// (`application/*+json`). Parameters (`; charset=…`) are ignored when matching.
    pub content_types: Vec<String>,
    /// Level per coding: gzip 1–9, br 0–11, zstd 1–19.
    pub levels: CompressLevels,
}

/// See [`Compress::levels`]. The defaults favour speed, as on-the-fly compression should:
/// `benches/compression.rs` measures their cost and ratio on a 10 KiB JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressLevels {
    pub gzip: u32,
    pub br: u32,
    pub zstd: u32,
}

impl Default for CompressLevels {
    fn default() -> Self {
        CompressLevels {
            gzip: 6,
            br: 4,
            zstd: 3,
        }
    }
}

impl Default for Compress {
    fn default() -> Self {
        Compress {
            algorithms: ["zstd", "br", "gzip"].map(String::from).to_vec(),
            min_size: 1024,
            content_types: [
                "application/json",
                "application/*+json",
                "application/x-ndjson",
                "application/xml",
                "application/*+xml",
                "application/javascript",
                "application/x-www-form-urlencoded",
                "text/*",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            levels: CompressLevels::default(),
        }
    }
}

impl Compress {
    /// A one-line summary for `portico routes`.
    pub fn summary(&self) -> String {
        let levels = self
            .algorithms
            .iter()
            .map(|a| {
                let level = match a.as_str() {
                    "gzip" => self.levels.gzip,
                    "br" => self.levels.br,
                    _ => self.levels.zstd,
                };
                format!("{a} {level}")
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{levels}; from {} bytes; {}",
            self.min_size,
            self.content_types.join(" ")
        )
    }
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

/// A route's response cache (`[routes.cache]`): RFC 9111 shared-cache semantics on
/// pingora-cache; `crate::cache` compiles it into the proxy's `CachePolicy`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    /// Methods answered from the cache: `GET` and `HEAD` (a `HEAD` is filled by a `GET`).
    #[serde(default = "default_cache_methods")]
    pub methods: Vec<String>,
    /// Freshness given to a response without `Cache-Control` freshness or `Expires`, for the
    /// status codes RFC 9110 calls heuristically cacheable. Unset: such responses are not
    /// stored (no heuristic freshness for APIs).
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_ttl: Option<Duration>,
    /// How the query string joins the key.
    #[serde(default)]
    pub query: CacheQuery,
    /// Cache responses to authenticated requests per caller: the verified token's subject
    /// (`"sub"`) or client id (`"client_id"`) joins the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_identity: Option<CacheIdentity>,
    /// Store responses that set cookies (off: a `Set-Cookie` response is passed, not stored).
    #[serde(default)]
    pub store_set_cookie: bool,
    /// What a client's `Cache-Control: no-cache` (or `max-age=0`) does.
    #[serde(default)]
    pub client_no_cache: ClientNoCache,
    /// How long past its freshness a stored response may answer when the upstream fails
    /// (5xx, unreachable, timed out, breaker open), unless the response says otherwise.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_if_error: Option<Duration>,
    /// How long past its freshness a stored response may answer while one request
    /// refreshes it in the background, unless the response says otherwise.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_while_revalidate: Option<Duration>,
    /// How long concurrent misses of one key wait for the request fetching it before they
    /// go upstream themselves.
    #[serde(default = "default_lock_timeout", with = "humantime_serde")]
    pub lock_timeout: Duration,
}

fn default_cache_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(5)
}

/// See [`RouteCache::query`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheQuery {
    /// The query string as sent: `?a=1&b=2` and `?b=2&a=1` are two entries.
    #[default]
    All,
    /// Parameters sorted by name, so their order does not matter.
    Sorted,
    /// Sorted, without the named parameters (tracking tags, cache busters).
    Ignore(Vec<String>),
}

/// See [`RouteCache::per_identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheIdentity {
    Sub,
    ClientId,
}

/// See [`RouteCache::client_no_cache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientNoCache {
    /// A stored response answers anyway: a client cannot make the gateway send its
    /// traffic to the upstream (as Cloudflare, Fastly and nginx do by default).
    #[default]
    Ignore,
    /// The stored response is revalidated with the upstream before it answers.
    Revalidate,
}

impl RouteCache {
    /// A one-line summary for `portico routes`.
    pub fn summary(&self) -> String {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let mut parts = vec![self.methods.join("/")];
        parts.push(match self.default_ttl {
            Some(t) => format!("default_ttl {}", d(t)),
            None => "no default ttl".into(),
        });
        parts.push(match &self.query {
            CacheQuery::All => "query all".into(),
            CacheQuery::Sorted => "query sorted".into(),
            CacheQuery::Ignore(names) => format!("query sorted ignoring {}", names.join(",")),
        });
        match self.per_identity {
            Some(CacheIdentity::Sub) => parts.push("per identity (sub)".into()),
            Some(CacheIdentity::ClientId) => parts.push("per identity (client_id)".into()),
            None => {}
        }
        if self.store_set_cookie {
            parts.push("stores Set-Cookie".into());
        }
        if self.client_no_cache == ClientNoCache::Revalidate {
            parts.push("client no-cache revalidates".into());
        }
        if let Some(t) = self.stale_while_revalidate {
            parts.push(format!("stale_while_revalidate {}", d(t)));
        }
        if let Some(t) = self.stale_if_error {
            parts.push(format!("stale_if_error {}", d(t)));
        }
        parts.push(format!("lock_timeout {}", d(self.lock_timeout)));
        parts.join(", ")
    }
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
    /// What is retried: `connect_failure`, `reset`, `timeout`, a status code such as `503`,
    /// or a gRPC status name such as `unavailable` (for gRPC calls, before any response
    /// byte reached the client).
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
    /// A DNS SRV name (`_service._proto.domain`) whose records give the endpoints:
    /// targets, ports, priorities and weights; re-resolved in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    /// How hostname endpoints and `srv` are resolved: servers and TTL bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub lb: LbKind,
    /// The HTTP version spoken to the endpoints: `http1`, `h2` (over TLS, chosen by ALPN)
    /// or `h2c` (HTTP/2 in the clear with prior knowledge).
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_default")]
    pub protocol: UpstreamProtocol,
    /// With `h2`/`h2c`: concurrent streams (requests) one pooled connection carries
    /// before another connection is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_h2_streams: Option<usize>,
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

/// The HTTP version a cluster speaks to its endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN (`tls = true` required).
    H2,
    /// HTTP/2 in the clear with prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    fn is_default(&self) -> bool {
        *self == UpstreamProtocol::Http1
    }

    pub fn is_h2(self) -> bool {
        self != UpstreamProtocol::Http1
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// The gRPC status codes by their names in config (`retry.on`), the index being the code.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// The gRPC status code a `retry.on` name stands for (`ok` is not a failure).
pub fn grpc_code(name: &str) -> Option<u8> {
    GRPC_CODE_NAMES
        .iter()
        .position(|n| *n == name)
        .filter(|&c| c > 0)
        .map(|c| c as u8)
}

/// Streams per pooled HTTP/2 upstream connection unless `max_h2_streams` says otherwise
/// (gRPC servers commonly allow 100 or more).
pub const DEFAULT_MAX_H2_STREAMS: usize = 100;

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

/// DNS discovery settings of a cluster (`dns = { ... }`): a cluster whose endpoints are
/// host names, or that has `srv`, re-resolves them in the background.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Name servers (`ip:port`, or `ip` for port 53) asked instead of the system's
    /// (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Shortest time between two resolutions, whatever the records' TTL says (and the
    /// first retry after a failure).
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Longest time between two resolutions (and the longest retry backoff).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
        }
    }
}

impl Cluster {
    /// Whether the cluster's endpoints come from DNS: an SRV name, or an endpoint given
    /// by host name (an IP literal is fixed).
    pub fn uses_dns(&self) -> bool {
        self.srv.is_some() || self.endpoints.iter().any(Endpoint::is_hostname)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port`, or `host:port`: a host name is re-resolved in the background (every
    /// A and AAAA address becomes an endpoint with this weight).
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
}

impl Endpoint {
    /// Whether the address names a host rather than an IP address.
    pub fn is_hostname(&self) -> bool {
        self.address.parse::<std::net::SocketAddr>().is_err()
    }
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
    /// `http` (a GET of `path`) or `grpc` (`grpc.health.v1.Health/Check`).
    #[serde(default, skip_serializing_if = "HealthCheckKind::is_default")]
    pub kind: HealthCheckKind,
    /// The path an `http` check requests.
    #[serde(default)]
    pub path: String,
    /// The service name a `grpc` check asks about; empty asks about the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
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

/// How a health check probes an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    #[default]
    Http,
    /// The gRPC health protocol over the cluster's HTTP/2 (`h2` or `h2c`); `SERVING` passes.
    Grpc,
}

impl HealthCheckKind {
    fn is_default(&self) -> bool {
        *self == HealthCheckKind::Http
    }
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
            key: Default::default(),
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
