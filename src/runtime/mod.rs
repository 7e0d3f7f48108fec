//! The running gateway's state: the current [`Snapshot`] of runtime objects behind an
//! `ArcSwap` (one pointer load per request, one pointer swap per reload), readiness,
//! building a snapshot from a validated config, and [`reload`], which builds the next one
//! beside the running one and swaps it in.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

pub mod dirs;
pub mod notify;
pub mod serve;
pub mod supervisor;
pub mod tls;
pub mod watch;

use arc_swap::ArcSwap;
use portico_plugins::{Hooks, Plugin};

use crate::config::{self, Config, PathMatchKind};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::RouteMetrics;
use crate::observe::otlp::Tracer;
use crate::router::version::{Source, VersionSelector};
use crate::router::{self, HeaderMatch, OnMismatch, PathMatch, RouteSpec, Router};
use crate::upstream::Cluster;

/// A route ready to serve: its plugin chain, built anew by every snapshot build, and the
/// rest, compiled from the route's config and its clusters (see [`CompiledRoute`], which
/// the fields are read through).
pub struct Route {
    pub plugins: PluginChain,
    pub compiled: Arc<CompiledRoute>,
}

impl std::ops::Deref for Route {
    type Target = CompiledRoute;

    fn deref(&self) -> &CompiledRoute {
        &self.compiled
    }
}

/// What a route compiles to besides its plugins. It depends on nothing but the route's own
/// config and the clusters it sends to, so a reload that keeps both (the same shared
/// `config::Route`, the same `Arc<Cluster>`s) keeps it too, with the metrics series its
/// targets resolved on their first requests. Plugins are not in it: every build makes its
/// own instances, so a reload reads plugin key files again and starts rate-limit state
/// afresh for every route, changed or not, as it always did.
pub struct CompiledRoute {
    pub id: Arc<str>,
    /// Where requests go: one target, or one per API version (config order).
    pub targets: Vec<Arc<Target>>,
    /// How the version is chosen among `targets`; `None` for unversioned routes.
    pub versioning: Option<VersionSelector>,
    pub retry: RetryRules,
    /// Overall deadline of a request.
    pub deadline: Option<Duration>,
    /// `;` path parameters are forwarded instead of refused.
    pub allow_path_params: bool,
    /// Escaped `/` and `\` are forwarded instead of refused.
    pub allow_escaped_slashes: bool,
    /// Protocols a client may `Upgrade` to, lowercase.
    pub upgrades: Vec<Box<str>>,
    /// The route's own limits and timeouts (`None`: `[limits]` and the cluster's).
    pub limits: Option<Box<config::RouteLimits>>,
    /// Response compression (`routes.compress`); `None`, the default, costs a response one
    /// branch.
    pub compress: Option<Box<crate::proxy::compress::Policy>>,
    /// The route's response cache (`None`: the cache hooks do nothing for it).
    pub cache: Option<Box<crate::cache::CachePolicy>>,
    /// The config this was compiled from: the next build reuses this when its config holds
    /// the same `Arc` (the route's text did not change) and the clusters are the same.
    source: Arc<config::Route>,
}

impl CompiledRoute {
    /// Whether this compiles `route` against `clusters` as they are: the same shared config
    /// route (an unchanged text, see `config::by_route`) and, target by target, the very
    /// cluster objects it holds (a cluster a reload kept, not one it rebuilt).
    fn still_compiles(
        &self,
        route: &Arc<config::Route>,
        clusters: &BTreeMap<String, Arc<Cluster>>,
    ) -> bool {
        if !Arc::ptr_eq(&self.source, route) {
            return false;
        }
        let same = |target: &Target, name: &str| {
            clusters
                .get(name)
                .is_some_and(|c| Arc::ptr_eq(c, &target.cluster))
        };
        if route.versions.is_empty() {
            self.targets.len() == 1
                && same(
                    &self.targets[0],
                    route.cluster.as_deref().unwrap_or_default(),
                )
        } else {
            self.targets.len() == route.versions.len()
                && self
                    .targets
                    .iter()
                    .zip(&route.versions)
                    .all(|(t, v)| same(t, &v.cluster))
        }
    }
}

/// What compiled routes share: one string per cluster and per version name among their
/// metric labels, and the retry rules of a route without a `retry` section.
struct Commons<'a> {
    clusters: HashMap<&'a str, Arc<str>>,
    versions: HashMap<&'a str, Arc<str>>,
    no_version: Arc<str>,
    no_retry: RetryRules,
}

/// Compiles route `r` (everything but its plugins) against the snapshot's `clusters`.
fn compile_route<'a>(
    r: &'a Arc<config::Route>,
    clusters: &BTreeMap<String, Arc<Cluster>>,
    commons: &mut Commons<'a>,
) -> Result<Arc<CompiledRoute>, String> {
    let id: Arc<str> = Arc::from(r.id.as_str());
    let rewrite_of = |prefix_override: Option<&String>| {
        if let Some(with) = prefix_override {
            Rewrite::Prefix {
                prefix: r.path.clone(),
                with: with.clone(),
            }
        } else if r.strip_prefix {
            Rewrite::Prefix {
                prefix: r.path.clone(),
                with: String::new(),
            }
        } else if let Some(with) = &r.rewrite_prefix {
            Rewrite::Prefix {
                prefix: r.path.clone(),
                with: with.clone(),
            }
        } else {
            Rewrite::None
        }
    };
    let cluster_of = |name: &str| {
        let cluster = clusters.get(name).cloned();
        let label = commons.clusters.get(name).cloned();
        cluster
            .zip(label)
            .ok_or_else(|| format!("route {}: unknown cluster {name}", r.id))
    };
    let mut targets = Vec::with_capacity(r.versions.len().max(1));
    let versioning = if r.versions.is_empty() {
        let (cluster, label) = cluster_of(r.cluster.as_deref().unwrap_or_default())?;
        targets.push(Arc::new(Target {
            version: None,
            cluster,
            rewrite: rewrite_of(None),
            metrics: RouteMetrics::new(id.clone(), label, commons.no_version.clone()),
            deprecation: Vec::new(),
        }));
        None
    } else {
        for v in &r.versions {
            let name = router::version::normalize_version(&v.name);
            let name = commons
                .versions
                .entry(name)
                .or_insert_with(|| Arc::from(name))
                .clone();
            let (cluster, label) = cluster_of(&v.cluster)?;
            targets.push(Arc::new(Target {
                version: Some(name.clone()),
                cluster,
                rewrite: rewrite_of(v.rewrite_prefix.as_ref()),
                metrics: RouteMetrics::new(id.clone(), label, name),
                deprecation: deprecation_headers(r, v),
            }));
        }
        let v = r.versioning.clone().unwrap_or_default();
        Some(VersionSelector::new(
            v.sources
                .iter()
                .map(|s| match s {
                    config::VersionSource::Uri => Source::Uri,
                    config::VersionSource::Header => Source::Header,
                    config::VersionSource::MediaType => Source::MediaType,
                    config::VersionSource::Query => Source::Query,
                })
                .collect(),
            http::HeaderName::from_bytes(v.header.as_bytes())
                .map_err(|e| format!("route {}: versioning.header: {e}", r.id))?,
            v.query,
            v.default.as_deref(),
            &r.versions
                .iter()
                .map(|v| (v.name.clone(), v.retired))
                .collect::<Vec<_>>(),
        ))
    };
    Ok(Arc::new(CompiledRoute {
        id,
        targets,
        versioning,
        retry: match &r.retry {
            Some(policy) => RetryRules::from_config(Some(policy)),
            None => commons.no_retry.clone(),
        },
        deadline: r.timeout,
        allow_path_params: r.allow_path_params,
        allow_escaped_slashes: r.allow_escaped_slashes,
        upgrades: r
            .upgrades
            .iter()
            .map(|u| u.to_ascii_lowercase().into_boxed_str())
            .collect(),
        limits: r
            .limits
            .clone()
            .filter(|l| *l != config::RouteLimits::default())
            .map(Box::new),
        compress: r
            .compress
            .as_ref()
            .map(|c| Box::new(crate::proxy::compress::Policy::new(r.id.as_str().into(), c))),
        cache: r
            .cache
            .as_ref()
            .map(|c| Box::new(crate::cache::CachePolicy::new(&r.id, c))),
        source: r.clone(),
    }))
}

/// One destination of a route: a cluster, with the version it serves.
pub struct Target {
    pub version: Option<Arc<str>>,
    pub cluster: Arc<Cluster>,
    pub rewrite: Rewrite,
    pub metrics: RouteMetrics,
    /// `Deprecation`, `Sunset` and `Link` headers for every response of this version.
    pub deprecation: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// A route's retry policy, compiled for the hot path.
#[derive(Debug, Clone)]
pub struct RetryRules {
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub statuses: Vec<u16>,
    /// The gRPC status codes retried, one bit per code (`1 << code`).
    pub grpc_codes: u32,
    pub non_idempotent: bool,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub per_try_timeout: Option<Duration>,
    pub attempts_header: bool,
}

impl RetryRules {
    /// Without a `retry` section a route retries only failed connects (nothing was sent,
    /// so it is safe for every method) on other endpoints.
    fn from_config(policy: Option<&config::RetryPolicy>) -> RetryRules {
        let default_connect_only;
        let p = match policy {
            Some(p) => p,
            None => {
                default_connect_only = config::RetryPolicy {
                    on: vec!["connect_failure".into()],
                    attempts_header: false,
                    ..config::RetryPolicy::default()
                };
                &default_connect_only
            }
        };
        RetryRules {
            attempts: p.attempts.max(1),
            on_connect_failure: p.on.iter().any(|o| o == "connect_failure"),
            on_reset: p.on.iter().any(|o| o == "reset"),
            on_timeout: p.on.iter().any(|o| o == "timeout"),
            statuses: p.on.iter().filter_map(|o| o.parse().ok()).collect(),
            grpc_codes: p
                .on
                .iter()
                .filter_map(|o| config::grpc_code(o))
                .fold(0, |bits, code| bits | 1 << code),
            non_idempotent: p.non_idempotent,
            backoff_base: p.backoff_base,
            backoff_cap: p.backoff_cap,
            per_try_timeout: p.per_try_timeout,
            attempts_header: p.attempts_header,
        }
    }

    /// Full-jitter exponential backoff before retry number `retry` (1 = first retry):
    /// a uniform wait in [0, min(cap, base × 2^(retry-1))], at least `retry_after`
    /// (from the upstream's `Retry-After`) but never above the cap.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(16))
            .min(self.backoff_cap);
        let jitter = exp.mul_f64(rand::random::<f64>());
        jitter
            .max(retry_after.unwrap_or_default())
            .min(self.backoff_cap)
    }
}

/// How a route changes the upstream path.
pub enum Rewrite {
    None,
    /// Replace the matched `prefix` with `with` ("" strips it).
    Prefix {
        prefix: String,
        with: String,
    },
}

/// One chain of plugins in config order — a route's own, or the global `[[plugins]]`
/// (kept apart in [`Snapshot::global_plugins`], which the proxy runs for every request) —
/// split by hook so each phase walks only the plugins that take part in it.
#[derive(Default)]
pub struct PluginChain {
    pub names: Vec<&'static str>,
    pub request: Vec<Arc<dyn Plugin>>,
    pub upstream_request: Vec<Arc<dyn Plugin>>,
    pub response: Vec<Arc<dyn Plugin>>,
    pub log: Vec<Arc<dyn Plugin>>,
}

impl PluginChain {
    fn push(&mut self, plugin: Arc<dyn Plugin>) {
        let Hooks {
            request,
            upstream_request,
            response,
            log,
        } = plugin.hooks();
        self.names.push(plugin.name());
        if request {
            self.request.push(plugin.clone());
        }
        if upstream_request {
            self.upstream_request.push(plugin.clone());
        }
        if response {
            self.response.push(plugin.clone());
        }
        if log {
            self.log.push(plugin);
        }
    }
}

/// The admin API's address and the metrics listener's (`[admin] metrics_address`).
pub type AdminAddresses = (String, Option<String>);

/// Everything one config load produced. Immutable; replaced whole on reload.
pub struct Snapshot {
    pub router: Router<Arc<Route>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Plugins for requests that match no route (so e.g. request ids and CORS still apply
    /// to a 404).
    pub global_plugins: PluginChain,
    pub limits: config::Limits,
    pub access_log: AccessLog,
    /// Span export, when `[tracing]` is configured.
    pub tracer: Option<Arc<Tracer>>,
    pub config: Config,
    /// Metrics for requests that matched no route.
    pub unrouted_metrics: RouteMetrics,
    pub loaded_at: SystemTime,
    /// A hash of the effective config, to tell versions apart.
    pub version: String,
    /// Every identity header a plugin writes, on any route: the proxy removes them from
    /// every client request.
    pub identity_headers: Vec<http::HeaderName>,
    /// Peers whose forwarding headers are believed (`[server] trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The largest request body any route accepts (`[limits]` or a route's own): a
    /// declared length over it is refused before routing.
    pub body_cap: u64,
    /// The admin API's bearer token (`[admin] token`/`token_file`, read when this snapshot
    /// was built), kept only as a digest: see [`crate::admin::AdminToken`].
    pub admin_token: Option<crate::admin::AdminToken>,
}

impl Snapshot {
    /// Whether `ip` is one of the configured trusted proxies.
    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Builds runtime objects from a validated config. Clusters whose definition is the
    /// same as in `previous` are reused with their live state (health, ejections,
    /// in-flight counts).
    pub fn build(mut config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        for warning in crate::config::lint(&config) {
            log::warn!("config: {warning}");
        }
        let mut clusters = BTreeMap::new();
        for (name, def) in &config.clusters {
            // Same definition and same TLS files (a rotated CA or client certificate
            // builds the cluster anew).
            let reused = previous
                .and_then(|p| p.clusters.get(name))
                .filter(|c| {
                    same(&c.definition, def)
                        && c.tls.fingerprint == crate::upstream::tls_fingerprint(def)
                })
                .cloned();
            let cluster = match reused {
                Some(c) => c,
                None => {
                    let cluster =
                        Cluster::build(name, def).map_err(|e| format!("cluster {name}: {e}"))?;
                    if let Some(old) = previous.and_then(|p| p.clusters.get(name)) {
                        cluster.inherit_health(old);
                    }
                    Arc::new(cluster)
                }
            };
            clusters.insert(name.clone(), cluster);
        }

        // One instance per distinct table of a shareable plugin (see `Plugin::shareable`);
        // the others get one per route.
        let mut shared: HashMap<config::PluginKey, Arc<dyn Plugin>> = HashMap::new();
        // Every identity header a plugin writes, on any route: noted as each instance is
        // built (a shared instance once), not by walking every route's chain afterwards.
        let mut identity_headers: Vec<http::HeaderName> = Vec::new();
        let mut build_plugins = |refs: &[config::PluginRef], chain: &mut PluginChain| {
            for r in refs {
                let key = r.key();
                let plugin = match shared.get(key) {
                    Some(plugin) => plugin.clone(),
                    None => {
                        let plugin =
                            portico_plugins::build(&r.name, toml::Value::Table(r.config.clone()))
                                .map_err(|e| format!("plugin {}: {e}", r.name))?;
                        if plugin.shareable() {
                            shared.insert(key.clone(), plugin.clone());
                        }
                        let hooks = plugin.hooks();
                        if hooks.request || hooks.upstream_request {
                            for name in plugin.identity_headers() {
                                // The proxy removes everything under `X-Portico-` by prefix
                                // already.
                                if !name.as_str().starts_with("x-portico-")
                                    && !identity_headers.contains(&name)
                                {
                                    identity_headers.push(name);
                                }
                            }
                        }
                        plugin
                    }
                };
                chain.push(plugin);
            }
            Ok::<_, String>(())
        };
        let mut global_plugins = PluginChain::default();
        build_plugins(&config.plugins, &mut global_plugins)?;
        let mut commons = Commons {
            clusters: config
                .clusters
                .keys()
                .map(|name| (name.as_str(), Arc::from(name.as_str())))
                .collect(),
            versions: HashMap::new(),
            no_version: Arc::from(""),
            // Most routes have no `retry` section: their rules are made once.
            no_retry: RetryRules::from_config(None),
        };
        // The previous snapshot's compiled routes by the config route they came from.
        let previous_compiled: HashMap<*const config::Route, &Arc<CompiledRoute>> = previous
            .map(|p| {
                p.router
                    .iter()
                    .map(|(_, route)| (Arc::as_ptr(&route.compiled.source), &route.compiled))
                    .collect()
            })
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        // The largest request body any route accepts, worked out in the same pass: at
        // 100,000 routes each pass over them is tens of milliseconds of cache misses.
        let mut body_cap = config.limits.max_body_bytes;
        for r in &config.routes {
            if let Some(max) = r.limits.as_ref().and_then(|l| l.max_body_bytes) {
                body_cap = body_cap.max(max);
            }
            // Global plugins are not repeated here: the proxy runs them for every request.
            let mut plugins = PluginChain::default();
            build_plugins(&r.plugins, &mut plugins)?;
            // An unchanged route whose clusters a reload kept compiles to what it did.
            let reusable = previous_compiled
                .get(&Arc::as_ptr(r))
                .filter(|c| c.still_compiles(r, &clusters));
            let compiled = match reusable {
                Some(compiled) => Arc::clone(compiled),
                None => compile_route(r, &clusters, &mut commons)?,
            };
            let spec = RouteSpec {
                id: r.id.clone(),
                hosts: r.hosts.clone(),
                path: router::normalize_path(&r.path)
                    .map(|p| p.into_owned())
                    .unwrap_or_else(|_| r.path.clone()),
                path_match: match r.path_match {
                    PathMatchKind::Exact => PathMatch::Exact,
                    PathMatchKind::Prefix => PathMatch::Prefix,
                },
                methods: r
                    .methods
                    .iter()
                    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                headers: r
                    .headers
                    .iter()
                    .filter_map(|h| {
                        Some(HeaderMatch {
                            name: http::HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                            value: h.value.clone(),
                        })
                    })
                    .collect(),
                on_mismatch: match r.on_mismatch {
                    config::OnMismatchKind::FallThrough => OnMismatch::FallThrough,
                    config::OnMismatchKind::MethodNotAllowed => OnMismatch::MethodNotAllowed,
                    config::OnMismatchKind::NotFound => OnMismatch::NotFound,
                },
            };
            routes.push((spec, Arc::new(Route { plugins, compiled })));
        }

        let access_log = match previous {
            Some(p)
                if p.config.logging.access_log == config.logging.access_log
                    && p.config.logging.success_sample_ratio
                        == config.logging.success_sample_ratio =>
            {
                p.access_log.clone()
            }
            _ => AccessLog::open(
                &config.logging.access_log,
                config.logging.success_sample_ratio,
            )
            .map_err(|e| format!("access log {}: {e}", config.logging.access_log))?,
        };

        // Like the access log, an unchanged `[tracing]` keeps its exporter (and its queue).
        let tracer = match (&config.tracing, previous) {
            (None, _) => None,
            (Some(t), Some(p)) if p.config.tracing.as_ref() == Some(t) => p.tracer.clone(),
            (Some(t), _) => Some(Arc::new(
                Tracer::new(t).map_err(|e| format!("tracing: {e}"))?,
            )),
        };

        // The rest of `commons` borrows `config`, which the version hash takes for a moment.
        let no_version = commons.no_version;
        let version = config_version(&mut config);
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .map(|t| portico_common::ip_network(t))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("server.trusted_proxies: {e}"))?;
        // Read again on every reload, so replacing the file and reloading rotates it.
        let admin_token = config
            .admin
            .read_token()
            .map_err(|(field, e)| format!("admin.{field}: {e}"))?
            .map(|t| crate::admin::AdminToken::new(&t));
        Ok(Snapshot {
            body_cap,
            admin_token,
            identity_headers,
            trusted_proxies,
            router: Router::new(routes),
            clusters,
            global_plugins,
            limits: config.limits.clone(),
            access_log,
            tracer,
            unrouted_metrics: RouteMetrics::new(no_version.clone(), no_version.clone(), no_version),
            config,
            loaded_at: SystemTime::now(),
            version,
        })
    }

    /// The effective config as JSON with secrets replaced by `"<redacted>"`: values of
    /// secret-looking keys and header names, every value of a table of headers, every
    /// `${ENV}` value, and the password of any `user:password@` URL.
    pub fn redacted_config(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.config).unwrap_or_default();
        redact(&mut value, &self.config.secrets, Context::Plain);
        value
    }

    /// Every string of `value` redacted as values are in [`Snapshot::redacted_config`]:
    /// `${ENV}` values and URL passwords. For documents built from the config's values
    /// (the console's routes, clusters and explain answers).
    pub fn redact_strings(&self, value: &mut serde_json::Value) {
        redact_strings(value, &self.config.secrets);
    }
}

/// RFC 9745 `Deprecation: @<unix seconds>`, RFC 8594 `Sunset: <HTTP-date>`, and `Link`s
/// to the successor version and to migration docs. Dates were validated at load.
fn deprecation_headers(
    route: &config::Route,
    version: &config::Version,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    let Some(d) = &version.deprecated else {
        return Vec::new();
    };
    let mut headers = Vec::new();
    let mut push = |name: &'static str, value: String| {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.push((http::HeaderName::from_static(name), value));
        }
    };
    if let Ok(since) = humantime::parse_rfc3339_weak(&d.since) {
        let secs = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        push("deprecation", format!("@{secs}"));
    }
    if let Some(Ok(sunset)) = d.sunset.as_deref().map(humantime::parse_rfc3339_weak) {
        push("sunset", httpdate::fmt_http_date(sunset));
    }
    if let Some(successor) = &d.successor {
        let successor = router::version::normalize_version(successor);
        let path = route.path.trim_end_matches('/');
        push(
            "link",
            format!("</v{successor}{path}>; rel=\"successor-version\""),
        );
    }
    if let Some(link) = &d.link {
        push(
            "link",
            format!("<{link}>; rel=\"deprecation\"; type=\"text/html\""),
        );
    }
    headers
}

/// A hash of the effective config, to tell versions apart: of its JSON form without the
/// routes, then of each route's JSON form in order. A route parsed from the same text as in
/// the running config has its hash already (see `config::by_route`), so a reload serializes
/// only the routes that changed — at 100,000 routes serializing them all was a third of
/// building a snapshot.
fn config_version(config: &mut Config) -> String {
    use std::hash::Hasher;
    let routes = std::mem::take(&mut config.routes);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write_u64(config::json_hash(&*config));
    config.routes = routes;
    hasher.write_usize(config.routes.len());
    if config.route_sources.len() == config.routes.len() {
        for source in &config.route_sources {
            hasher.write_u64(source.json);
        }
    } else {
        for route in &config.routes {
            hasher.write_u64(config::json_hash(&**route));
        }
    }
    format!("{:016x}", hasher.finish())
}

fn same(a: &config::Cluster, b: &config::Cluster) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

const REDACTED: &str = "<redacted>";

/// Field and header names whose values are secrets whatever they contain.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('_', "-");
    const EXACT: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    const CONTAINS: [&str; 8] = [
        "secret",
        "password",
        "passwd",
        "token",
        "credential",
        "private",
        "api-key",
        "apikey",
    ];
    const ENDS: [&str; 1] = ["-key"];
    EXACT.contains(&k.as_str())
        || CONTAINS.iter().any(|s| k.contains(s))
        || ENDS.iter().any(|s| k.ends_with(s))
}

/// Where a value sits, for [`redact`].
#[derive(Clone, Copy, PartialEq)]
enum Context {
    Plain,
    /// Under a secret-looking key, or a value in a table of headers: always redacted.
    Secret,
    /// A `request` or `response` table, whose `set` and `add` are tables of headers (the
    /// `headers` plugin).
    HeaderEdits,
}

/// Tables whose entries are header name → value(s): OTLP `headers`, and the `set` and
/// `add` edits of a `request` or `response` table. Their values are redacted whatever
/// the header is called: the name of a header carrying a shared secret is free-form.
fn is_header_table(key: &str, parent: Context) -> bool {
    key == "headers" || (parent == Context::HeaderEdits && (key == "set" || key == "add"))
}

fn redact(value: &mut serde_json::Value, secrets: &[String], context: Context) {
    use serde_json::Value;
    match value {
        Value::String(s) if context == Context::Secret => *s = REDACTED.to_string(),
        Value::String(s) => redact_string(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, secrets, context)),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let inner = if context == Context::Secret
                    || is_secret_key(k)
                    || is_header_table(k, context)
                {
                    Context::Secret
                } else if k == "request" || k == "response" {
                    Context::HeaderEdits
                } else {
                    Context::Plain
                };
                redact(v, secrets, inner);
            }
        }
        _ => {}
    }
}

/// The string rules of [`redact`]: a string holding a secret value goes whole, a URL keeps
/// everything but its password.
fn redact_string(s: &mut String, secrets: &[String]) {
    if secrets
        .iter()
        .any(|secret| !secret.is_empty() && s.contains(secret.as_str()))
    {
        *s = REDACTED.to_string();
    } else if let Some(clean) = redact_url_password(s) {
        *s = clean;
    }
}

/// [`redact_string`] on every string of a document the gateway wrote itself (the console's
/// answers), whose keys are its own and say nothing about secrets.
fn redact_strings(value: &mut serde_json::Value, secrets: &[String]) {
    use serde_json::Value;
    match value {
        Value::String(s) => redact_string(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_strings(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_strings(v, secrets)),
        _ => {}
    }
}

/// `scheme://user:password@host…` with the password replaced by `<redacted>`; `None` when
/// the value holds no URL with a password.
fn redact_url_password(value: &str) -> Option<String> {
    let scheme_end = value.find("://")? + 3;
    let rest = &value[scheme_end..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let at = authority.rfind('@')?;
    let userinfo = &authority[..at];
    let colon = userinfo.find(':')?;
    if colon + 1 == userinfo.len() {
        return None;
    }
    let password_start = scheme_end + colon + 1;
    let password_end = scheme_end + at;
    Some(format!(
        "{}{REDACTED}{}",
        &value[..password_start],
        &value[password_end..]
    ))
}

/// The gateway's shared state: the current snapshot and what the admin API reports.
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Where the config came from, for reloads.
    pub config_path: Option<PathBuf>,
    ready: AtomicBool,
    /// Set once a graceful stop or upgrade began: `/readyz` says no and responses ask
    /// clients to close their connections.
    draining: AtomicBool,
    /// Why the last reload failed, if it did.
    last_error: Mutex<Option<String>>,
    /// The last [`RELOADS_KEPT`] reloads, oldest first, for the admin console.
    reloads: Mutex<std::collections::VecDeque<ReloadRecord>>,
    /// One reload at a time (SIGHUP, admin API, file watch), each building on the last.
    reload_lock: tokio::sync::Mutex<()>,
    /// The listeners and admin address this process serves: fixed when it starts.
    bound: OnceLock<(Vec<config::Listener>, AdminAddresses)>,
    /// The live TLS state of each TLS listener, updated by reloads.
    tls: OnceLock<Vec<Arc<tls::ListenerTlsState>>>,
    /// Hash of the config file content last loaded (or tried), for the file watch.
    file_hash: Mutex<Option<u64>>,
}

impl State {
    pub fn new(snapshot: Snapshot, config_path: Option<PathBuf>) -> Arc<State> {
        crate::observe::metrics::METRICS
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        crate::observe::process_metrics::config_loaded(true);
        Arc::new(State {
            current: ArcSwap::from_pointee(snapshot),
            config_path,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            last_error: Mutex::new(None),
            reloads: Mutex::default(),
            reload_lock: tokio::sync::Mutex::new(()),
            bound: OnceLock::new(),
            tls: OnceLock::new(),
            file_hash: Mutex::new(None),
        })
    }

    /// The snapshot a request uses from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot atomically. The old one is freed on the retiring thread once
    /// the last request using it is done (see [`retire`]), never on a proxy thread.
    pub fn swap(&self, snapshot: Snapshot) {
        retire(self.current.swap(Arc::new(snapshot)));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The live TLS state of each TLS listener (empty before the server is built).
    pub fn tls_listeners(&self) -> &[Arc<tls::ListenerTlsState>] {
        self.tls.get().map(Vec::as_slice).unwrap_or_default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether this process is stopping or handing over to a new one.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.ready.store(false, Ordering::Release);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The last reloads, newest first.
    pub fn recent_reloads(&self) -> Vec<ReloadRecord> {
        self.reloads
            .lock()
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Records the listeners and admin addresses (API, metrics) this process serves, and
    /// the listeners' TLS state (once, at start).
    pub fn set_listeners(
        &self,
        listeners: Vec<config::Listener>,
        admin: AdminAddresses,
        tls: Vec<Arc<tls::ListenerTlsState>>,
    ) {
        let _ = self.bound.set((listeners, admin));
        let _ = self.tls.set(tls);
    }

    /// Why the running config cannot take full effect without a graceful upgrade
    /// (`portico serve -u`): listeners added, removed, or changed in a way a reload cannot
    /// apply. `None` when the loaded config is fully in effect.
    pub fn upgrade_required(&self) -> Option<String> {
        let (bound, admin) = self.bound.get()?;
        let snapshot = self.snapshot();
        let shape = |ls: &[config::Listener]| -> Vec<(String, Option<bool>, bool)> {
            ls.iter()
                .map(|l| {
                    (
                        l.address.clone(),
                        l.tls.as_ref().map(|t| t.http2),
                        l.proxy_protocol,
                    )
                })
                .collect()
        };
        let mut reasons = Vec::new();
        if shape(bound) != shape(&snapshot.config.listeners) {
            reasons.push("listeners changed");
        }
        if snapshot.config.admin.address != admin.0 {
            reasons.push("admin address changed");
        }
        if snapshot.config.admin.metrics_address != admin.1 {
            reasons.push("metrics address changed");
        }
        (!reasons.is_empty()).then(|| reasons.join(", "))
    }

    /// The content hash of the config file as last loaded (or tried).
    pub fn file_hash(&self) -> Option<u64> {
        self.file_hash.lock().ok().and_then(|h| *h)
    }

    pub fn set_file_hash(&self, hash: Option<u64>) {
        if let Ok(mut h) = self.file_hash.lock() {
            *h = hash;
        }
    }
}

/// How many reloads [`State::recent_reloads`] remembers.
const RELOADS_KEPT: usize = 10;

/// One reload attempt and its result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    /// RFC 3339, seconds.
    pub at: String,
    /// The config version now in effect, when it succeeded.
    pub version: Option<String>,
    /// Why it was refused, when it failed.
    pub error: Option<String>,
}

/// A stable hash of a config file's bytes. xxh3 rather than the standard library's SipHash:
/// a reload hashes the whole file, 26 MiB at 100,000 routes, and nothing here needs a keyed
/// hash (the value only tells one content from another, for the file watch).
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The nice value of the threads that build and free snapshots: at 100,000 routes a
/// build takes a core for most of a second, and when it shares a core with a proxy thread
/// the scheduler should let the proxy thread run first whenever it has requests.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority to [`BACKGROUND_NICE`]. Linux gives each
/// thread its own nice value; elsewhere this does nothing.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        lower_priority_of(tid);
    }
}

/// [`lower_priority`] for the thread `tid` of this process.
#[cfg(target_os = "linux")]
fn lower_priority_of(tid: libc::id_t) {
    // SAFETY: setpriority only reads its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE) };
    if rc != 0 {
        log::debug!(
            "cannot lower the priority of a background thread: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Gives jemalloc's purging thread (`jemalloc_bg_thd`, see `allocator`) the priority of
/// the reload and retiring threads. After a reload it returns the replaced snapshot's pages
/// to the kernel in `madvise` calls of up to 5 ms each, and at the proxy's own priority
/// those landed on a proxy thread sharing its core. Nothing waits for it: a purge that
/// runs later only keeps the memory a little longer. Linux only; a thread that does not
/// exist (another allocator) is simply not found.
pub fn lower_allocator_priority() {
    #[cfg(target_os = "linux")]
    {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
            if let (true, Some(tid)) = (comm.trim_end() == "jemalloc_bg_thd", tid) {
                lower_priority_of(tid);
            }
        }
    }
}

/// Runs `work` on a thread of its own at a lower priority and waits for it without blocking
/// the caller's runtime. A reload reads, validates and builds the whole config there: off
/// the proxy's threads and off the runtime of whoever asked for it (the admin API, the
/// supervisor), whose blocking pools are not meant for work this long.
async fn off_the_request_path<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portico-reload".into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })
        .map_err(|e| format!("cannot start the reload thread: {e}"))?;
    rx.await
        .map_err(|_| "the reload thread stopped without an answer".to_string())
}

/// Frees a replaced snapshot on the retiring thread once nothing else holds it.
///
/// Requests keep the snapshot they started with, so the last reference to an old one is
/// usually dropped by a proxy thread, at the end of a request. At 100,000 routes freeing a
/// snapshot takes tens of milliseconds that would land on that request's neighbours. The
/// retiring thread keeps one reference to each old snapshot, frees it when its own is the
/// last, and runs at a lower priority.
///
/// A snapshot may be retired more than once (the reload that replaced it and the console's
/// sampler both hand theirs in): the thread keeps one reference per snapshot, so a second
/// one is dropped on arrival. Keeping both once meant two references that each saw the
/// other, and no replaced snapshot was ever freed (the 30-minute soak's RSS grew ~1.2 MiB a
/// reload).
pub fn retire(old: Arc<Snapshot>) {
    static RETIRING: OnceLock<std::sync::mpsc::Sender<Arc<Snapshot>>> = OnceLock::new();
    let sender = RETIRING.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Snapshot>>();
        let started = std::thread::Builder::new()
            .name("portico-retire".into())
            .spawn(move || {
                lower_priority();
                let mut waiting: Vec<Arc<Snapshot>> = Vec::new();
                loop {
                    let timeout = if waiting.is_empty() {
                        Duration::from_secs(3600)
                    } else {
                        Duration::from_millis(100)
                    };
                    match rx.recv_timeout(timeout) {
                        Ok(old) => {
                            if !waiting.iter().any(|w| Arc::ptr_eq(w, &old)) {
                                waiting.push(old);
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // Nothing can take a new reference to a snapshot that is out of the
                    // `ArcSwap`, so a count of one stays one: it is ours to free.
                    waiting.retain(|s| Arc::strong_count(s) > 1);
                }
            });
        if let Err(e) = started {
            log::warn!("cannot start the snapshot retiring thread: {e}");
        }
        tx
    });
    // Without the thread the snapshot is dropped here, as it would have been anyway.
    let _ = sender.send(old);
}

/// What a reload loaded and built, before anything is swapped in.
struct Built {
    snapshot: Snapshot,
    tls: Vec<(Arc<tls::ListenerTlsState>, tls::Prepared)>,
}

/// The most bytes read from the config file in one `read` call (see [`read_in_steps`]).
const READ_STEP: usize = 256 * 1024;

/// The whole file, read at most [`READ_STEP`] bytes at a time.
///
/// One `read` of a 26 MiB file (100,000 routes) spends 15–20 ms in the kernel copying it
/// and faulting in the fresh pages it lands in, and the kernel did not preempt the reload
/// thread for that long, nice 10 or not: the proxy thread sharing its core answered nothing
/// meanwhile, a 20 ms stall at the start of every reload (benches/RESULTS.md, "Traffic
/// during reloads", 2026-12-08). Between two short reads the thread is back in user space,
/// where a woken proxy thread takes the core at once.
fn read_in_steps(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    // One byte more than the size, so the read that finds the end needs no growth.
    let mut bytes = Vec::with_capacity(size.saturating_add(1));
    // `take` caps each `read` at a step; `read_to_end` retries interrupted ones.
    while (&mut file).take(READ_STEP as u64).read_to_end(&mut bytes)? > 0 {}
    Ok(bytes)
}

/// Reads, validates and builds everything a reload needs, off the async threads (host names
/// resolve and files are read here). Returns the file's content hash whatever happens.
fn build_reload(
    path: &std::path::Path,
    previous: &Snapshot,
    listeners: &[Arc<tls::ListenerTlsState>],
) -> (Option<u64>, Result<Built, String>) {
    let bytes = match read_in_steps(path) {
        Ok(b) => b,
        Err(e) => {
            return (
                None,
                Err(format!("{}: cannot read config file: {e}", path.display())),
            )
        }
    };
    let hash = content_hash(&bytes);
    let result = (|| {
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{}: the config file is not UTF-8", path.display()))?;
        let config =
            config::load_str_reusing(&path.display().to_string(), &text, Some(&previous.config))
                .map_err(|e| e.to_string())?;
        let mut prepared = Vec::new();
        for state in listeners {
            let tls_conf = config
                .listeners
                .iter()
                .find(|l| l.address == state.address)
                .and_then(|l| l.tls.as_ref());
            if let Some(tls_conf) = tls_conf {
                let loaded = tls::Prepared::load(tls_conf)
                    .map_err(|e| format!("listener {}: {e}", state.address))?;
                prepared.push((state.clone(), loaded));
            }
        }
        let snapshot = Snapshot::build(config, Some(previous))?;
        Ok(Built {
            snapshot,
            tls: prepared,
        })
    })();
    (Some(hash), result)
}

/// Reloads the config file: parse and validate it in full and build the new snapshot
/// (keeping unchanged clusters and their state) and listener certificates; start health
/// checks of new clusters and wait for their first probe round, so they take traffic only
/// once probed; then swap. On any error the running snapshot stays and the error is kept for
/// `/readyz`. Returns the new config version.
pub async fn reload(state: &Arc<State>) -> Result<String, String> {
    let _one_at_a_time = state.reload_lock.lock().await;
    notify::reloading();
    let result = reload_locked(state).await;
    notify::reloaded(&result);
    crate::observe::process_metrics::config_loaded(result.is_ok());
    let label = if result.is_ok() { "success" } else { "failure" };
    crate::observe::metrics::METRICS
        .config_reloads
        .with_label_values(&[label])
        .inc();
    match &result {
        Ok(version) => log::info!("config reloaded, version {version}"),
        Err(e) => log::error!("config reload rejected, keeping the running config: {e}"),
    }
    if let Ok(mut last) = state.last_error.lock() {
        *last = result.as_ref().err().cloned();
    }
    if let Ok(mut reloads) = state.reloads.lock() {
        if reloads.len() == RELOADS_KEPT {
            reloads.pop_front();
        }
        reloads.push_back(ReloadRecord {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            version: result.as_ref().ok().cloned(),
            error: result.as_ref().err().cloned(),
        });
    }
    result
}

async fn reload_locked(state: &Arc<State>) -> Result<String, String> {
    let path = state
        .config_path
        .clone()
        .ok_or("this gateway was not started from a config file")?;
    let previous = state.snapshot();
    let listeners = state.tls.get().cloned().unwrap_or_default();
    let prev = previous.clone();
    let (hash, built) = off_the_request_path(move || build_reload(&path, &prev, &listeners))
        .await
        .map_err(|e| format!("the reload task failed: {e}"))?;
    if hash.is_some() {
        state.set_file_hash(hash);
    }
    let Built { snapshot, tls } = built?;

    let mut first_rounds = Vec::new();
    for (name, cluster) in &snapshot.clusters {
        let reused = previous
            .clusters
            .get(name)
            .is_some_and(|old| Arc::ptr_eq(old, cluster));
        if !reused {
            crate::upstream::spawn_discovery(cluster);
            if let Some(round) = crate::upstream::spawn_health_checks(cluster, true) {
                first_rounds.push((name.clone(), round));
            }
        }
    }
    if !first_rounds.is_empty() {
        let names: Vec<&str> = first_rounds.iter().map(|(n, _)| n.as_str()).collect();
        log::info!(
            "probing new clusters before they take traffic: {}",
            names.join(", ")
        );
        let waits = first_rounds.into_iter().map(|(name, round)| async move {
            if !round.wait().await {
                log::warn!("cluster {name}: first health-check round did not finish in time");
            }
        });
        futures::future::join_all(waits).await;
    }

    let version = snapshot.version.clone();
    // The edge cache outlives snapshots: new bounds apply to the entries it has.
    crate::cache::store::configure(snapshot.config.cache.limits());
    state.swap(snapshot);
    for (listener, prepared) in tls {
        listener.apply(prepared);
    }
    if let Some(why) = state.upgrade_required() {
        log::warn!(
            "{why}: this takes effect only with a graceful upgrade (portico serve -u, or systemctl reload portico)"
        );
    }
    Ok(version)
}

#[cfg(test)]
mod redaction_tests {
    use super::{redact, redact_url_password, Context};
    use serde_json::json;

    fn redacted(mut v: serde_json::Value, secrets: &[&str]) -> serde_json::Value {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        redact(&mut v, &secrets, Context::Plain);
        v
    }

    #[test]
    fn header_like_keys_are_redacted_anywhere() {
        let v = redacted(
            json!({
                "plugins": [{
                    "name": "custom",
                    "Authorization": "Bearer a",
                    "proxy-authorization": "Basic b",
                    "Cookie": "s=c",
                    "set_cookie": "s=d",
                    "X-Api-Key": "e",
                    "upstream-token": "f",
                    "signing_key": "g",
                    "client_secret": "h",
                    "db_password": ["i"],
                    "header": "X-Api-Key",
                    "max_token_bytes": 8192,
                    "path": "/visible",
                }],
            }),
            &[],
        );
        let p = &v["plugins"][0];
        for k in [
            "Authorization",
            "proxy-authorization",
            "Cookie",
            "set_cookie",
            "X-Api-Key",
            "upstream-token",
            "signing_key",
            "client_secret",
        ] {
            assert_eq!(p[k], "<redacted>", "{k}: {v}");
        }
        assert_eq!(p["db_password"][0], "<redacted>");
        // A header *name* under an ordinary key, numbers and plain values stay.
        assert_eq!(p["header"], "X-Api-Key");
        assert_eq!(p["max_token_bytes"], 8192);
        assert_eq!(p["path"], "/visible");
        assert_eq!(p["name"], "custom");
    }

    #[test]
    fn every_value_of_a_header_table_is_redacted() {
        let v = redacted(
            json!({
                "tracing": { "headers": { "x-tenant": "t1" }, "service_name": "portico" },
                "routes": [{ "plugins": [{
                    "name": "headers",
                    "request": {
                        "set": { "X-Internal-Auth": "s3cret", "X-Version": "2" },
                        "add": { "X-Tag": ["a", "b"] },
                        "remove": ["X-Debug"],
                    },
                    "response": { "set": { "Set-Cookie": "id=1" } },
                }]}],
            }),
            &[],
        );
        assert_eq!(v["tracing"]["headers"]["x-tenant"], "<redacted>");
        assert_eq!(v["tracing"]["service_name"], "portico");
        let p = &v["routes"][0]["plugins"][0];
        assert_eq!(p["request"]["set"]["X-Internal-Auth"], "<redacted>");
        assert_eq!(p["request"]["set"]["X-Version"], "<redacted>");
        assert_eq!(
            p["request"]["add"]["X-Tag"],
            json!(["<redacted>", "<redacted>"])
        );
        assert_eq!(p["response"]["set"]["Set-Cookie"], "<redacted>");
        // Header names to remove are not values.
        assert_eq!(p["request"]["remove"], json!(["X-Debug"]));
    }

    #[test]
    fn url_passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url_password("https://bob:pa55@hooks.example:8443/x?y=1").as_deref(),
            Some("https://bob:<redacted>@hooks.example:8443/x?y=1")
        );
        assert_eq!(
            redact_url_password("postgres://u:p@ss:w@db/app").as_deref(),
            Some("postgres://u:<redacted>@db/app")
        );
        for plain in [
            "https://hooks.example/x",
            "https://bob@hooks.example/x",
            "https://bob:@hooks.example/x",
            "https://hooks.example/a:b@c",
            "no url at all",
            "",
            "://",
            "x://@",
        ] {
            assert_eq!(redact_url_password(plain), None, "{plain}");
        }
        let v = redacted(
            json!({ "tracing": { "otlp_endpoint": "http://otel:hunter2@collector:4318" } }),
            &[],
        );
        assert_eq!(
            v["tracing"]["otlp_endpoint"],
            "http://otel:<redacted>@collector:4318"
        );
    }

    #[test]
    fn environment_secrets_are_redacted_wherever_they_appear() {
        let v = redacted(
            json!({ "a": "prefix-SECRETVALUE", "b": "ok" }),
            &["SECRETVALUE", ""],
        );
        assert_eq!(v["a"], "<redacted>");
        assert_eq!(v["b"], "ok");
    }
}

/// The snapshot of a minimal config (one listener, one cluster, no route), for unit tests.
#[cfg(test)]
pub(crate) fn minimal_snapshot() -> Snapshot {
    let config = crate::config::load_str(
        "t.toml",
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[clusters.api]\nendpoints = [{ address = \"127.0.0.1:2\" }]\n",
    )
    .expect("config loads");
    Snapshot::build(config, None).expect("snapshot builds")
}

#[cfg(test)]
mod retire_tests {
    use super::{minimal_snapshot, retire, Snapshot};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn snapshot() -> Arc<Snapshot> {
        Arc::new(minimal_snapshot())
    }

    fn freed_within(weak: &std::sync::Weak<Snapshot>, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if weak.strong_count() == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_snapshot_retired_twice_is_still_freed_once_unused() {
        let old = snapshot();
        let weak = Arc::downgrade(&old);
        // A request still holds it: the retiring thread must wait.
        let in_flight = old.clone();
        retire(old.clone());
        retire(old);
        std::thread::sleep(Duration::from_millis(300));
        assert!(weak.strong_count() > 0, "freed while a request held it");
        drop(in_flight);
        assert!(
            freed_within(&weak, Duration::from_secs(5)),
            "a twice-retired snapshot was never freed ({} references left)",
            weak.strong_count()
        );
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::{CompiledRoute, Snapshot};
    use std::sync::Arc;

    const TEXT: &str = r#"
[[listeners]]
address = "127.0.0.1:1"

[[routes]]
id = "a"
path = "/a"
cluster = "one"
rewrite_prefix = "/first"
[[routes.plugins]]
name = "rate-limit"
rate = 5
period = "1s"

[[routes]]
id = "b"
path = "/b"
cluster = "two"

[[routes]]
id = "v"
path = "/v"
versioning = { sources = ["header"], header = "x-v", default = "1" }
[[routes.versions]]
name = "1"
cluster = "one"
[[routes.versions]]
name = "2"
cluster = "two"

[clusters.one]
endpoints = [{ address = "127.0.0.1:2" }]

[clusters.two]
endpoints = [{ address = "127.0.0.1:3" }]
"#;

    fn first() -> Snapshot {
        let config = crate::config::load_str("t.toml", TEXT).expect("config loads");
        Snapshot::build(config, None).expect("snapshot builds")
    }

    fn reload(text: &str, running: &Snapshot) -> Snapshot {
        let config = crate::config::load_str_reusing("t.toml", text, Some(&running.config))
            .expect("config loads");
        Snapshot::build(config, Some(running)).expect("snapshot builds")
    }

    fn compiled<'a>(snapshot: &'a Snapshot, id: &str) -> &'a Arc<CompiledRoute> {
        let (_, route) = snapshot
            .router
            .iter()
            .find(|(_, r)| &*r.id == id)
            .expect("the route is there");
        &route.compiled
    }

    fn rewrite_of(snapshot: &Snapshot, id: &str) -> String {
        match &compiled(snapshot, id).targets[0].rewrite {
            super::Rewrite::Prefix { with, .. } => with.clone(),
            super::Rewrite::None => String::new(),
        }
    }

    #[test]
    fn unchanged_routes_keep_their_compiled_route_and_get_fresh_plugins() {
        let running = first();
        let next = reload(TEXT, &running);
        for id in ["a", "b", "v"] {
            assert!(
                Arc::ptr_eq(compiled(&running, id), compiled(&next, id)),
                "route {id} was compiled again"
            );
        }
        let plugin = |s: &Snapshot| {
            let (_, a) = s.router.iter().find(|(_, r)| &*r.id == "a").unwrap();
            a.plugins.request[0].clone()
        };
        // Plugins are built by every build, as before compiled routes were kept.
        assert!(!Arc::ptr_eq(&plugin(&running), &plugin(&next)));
    }

    #[test]
    fn a_changed_route_is_compiled_anew_and_the_others_are_kept() {
        let running = first();
        let text = TEXT.replace(
            "rewrite_prefix = \"/first\"",
            "rewrite_prefix = \"/second\"",
        );
        assert_ne!(text, TEXT);
        let next = reload(&text, &running);
        assert!(!Arc::ptr_eq(compiled(&running, "a"), compiled(&next, "a")));
        assert_eq!(rewrite_of(&running, "a"), "/first");
        assert_eq!(rewrite_of(&next, "a"), "/second");
        assert!(Arc::ptr_eq(compiled(&running, "b"), compiled(&next, "b")));
        assert!(Arc::ptr_eq(compiled(&running, "v"), compiled(&next, "v")));
    }

    #[test]
    fn a_route_whose_cluster_was_rebuilt_is_compiled_anew_against_it() {
        let running = first();
        let text = TEXT.replace("127.0.0.1:3", "127.0.0.1:4");
        let next = reload(&text, &running);
        // `b` and `v` send to `two`, which the reload rebuilt; `a` sends to `one` alone.
        for id in ["b", "v"] {
            let (old, new) = (compiled(&running, id), compiled(&next, id));
            assert!(!Arc::ptr_eq(old, new), "route {id} kept a stale cluster");
            let two = next.clusters.get("two").unwrap();
            assert!(
                new.targets.iter().any(|t| Arc::ptr_eq(&t.cluster, two)),
                "route {id} does not send to the new `two`"
            );
        }
        assert!(Arc::ptr_eq(compiled(&running, "a"), compiled(&next, "a")));
    }

    #[test]
    fn a_route_moved_to_another_cluster_is_compiled_anew() {
        let running = first();
        let text = TEXT.replace(
            "id = \"b\"\npath = \"/b\"\ncluster = \"two\"",
            "id = \"b\"\npath = \"/b\"\ncluster = \"one\"",
        );
        assert_ne!(text, TEXT);
        let next = reload(&text, &running);
        let b = compiled(&next, "b");
        assert!(Arc::ptr_eq(
            &b.targets[0].cluster,
            next.clusters.get("one").unwrap()
        ));
    }
}

#[cfg(test)]
mod read_tests {
    #[test]
    fn a_file_read_in_steps_is_the_whole_file() {
        let path = std::env::temp_dir().join(format!("portico-read-{}", std::process::id()));
        for len in [0, 1, super::READ_STEP, 3 * super::READ_STEP + 17] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            assert!(super::read_in_steps(&path).unwrap() == bytes, "{len} bytes");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(
            super::read_in_steps(&path).is_err(),
            "a missing file is an error"
        );
    }
}
