//! The running gateway's state: the current [`Snapshot`] of runtime objects behind an
//! `ArcSwap` (one pointer load per request, one pointer swap per reload), readiness, and
//! building a snapshot from a validated config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub mod serve;
pub mod supervisor;

use arc_swap::ArcSwap;
use portico_plugins::{Hooks, Plugin};

use crate::config::{self, Config, PathMatchKind};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::RouteMetrics;
use crate::router::{self, HeaderMatch, PathMatch, RouteSpec, Router};
use crate::upstream::Cluster;

/// A route ready to serve.
pub struct Route {
    pub id: Arc<str>,
    pub cluster: Arc<Cluster>,
    pub plugins: PluginChain,
    pub rewrite: Rewrite,
    pub metrics: RouteMetrics,
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

/// A route's plugins (globals first), split by hook so each phase walks only the plugins
/// that take part in it.
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

/// Everything one config load produced. Immutable; replaced whole on reload.
pub struct Snapshot {
    pub router: Router<Arc<Route>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Plugins for requests that match no route (so e.g. request ids and CORS still apply
    /// to a 404).
    pub global_plugins: PluginChain,
    pub limits: config::Limits,
    pub access_log: AccessLog,
    pub config: Config,
    /// Metrics for requests that matched no route.
    pub unrouted_metrics: RouteMetrics,
    pub loaded_at: SystemTime,
    /// A hash of the effective config, to tell versions apart.
    pub version: String,
}

impl Snapshot {
    /// Builds runtime objects from a validated config. Clusters whose definition is the
    /// same as in `previous` are reused with their live state (health, ejections,
    /// in-flight counts).
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        let mut clusters = BTreeMap::new();
        for (name, def) in &config.clusters {
            let reused = previous
                .and_then(|p| p.clusters.get(name))
                .filter(|c| same(&c.definition, def))
                .cloned();
            let cluster = match reused {
                Some(c) => c,
                None => {
                    Arc::new(Cluster::build(name, def).map_err(|e| format!("cluster {name}: {e}"))?)
                }
            };
            clusters.insert(name.clone(), cluster);
        }

        let build_plugins = |refs: &[config::PluginRef], chain: &mut PluginChain| {
            for r in refs {
                let plugin = portico_plugins::build(&r.name, toml::Value::Table(r.config.clone()))
                    .map_err(|e| format!("plugin {}: {e}", r.name))?;
                chain.push(plugin);
            }
            Ok::<_, String>(())
        };
        let mut global_plugins = PluginChain::default();
        build_plugins(&config.plugins, &mut global_plugins)?;

        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let cluster = clusters
                .get(&r.cluster)
                .cloned()
                .ok_or_else(|| format!("route {}: unknown cluster {}", r.id, r.cluster))?;
            // Global plugins are not repeated here: the proxy runs them for every request.
            let mut plugins = PluginChain::default();
            build_plugins(&r.plugins, &mut plugins)?;
            let rewrite = if r.strip_prefix {
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
            };
            let route = Route {
                id: Arc::from(r.id.as_str()),
                metrics: RouteMetrics::new(&r.id, &r.cluster),
                cluster,
                plugins,
                rewrite,
            };
            routes.push((spec, Arc::new(route)));
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

        let version = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(&config)
                .unwrap_or_default()
                .hash(&mut h);
            format!("{:016x}", h.finish())
        };
        Ok(Snapshot {
            router: Router::new(routes),
            clusters,
            global_plugins,
            limits: config.limits.clone(),
            access_log,
            unrouted_metrics: RouteMetrics::new("", ""),
            config,
            loaded_at: SystemTime::now(),
            version,
        })
    }

    /// The effective config as JSON with secrets replaced by `"<redacted>"`.
    pub fn redacted_config(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.config).unwrap_or_default();
        redact(&mut value, &self.config.secrets, false);
        value
    }
}

fn same(a: &config::Cluster, b: &config::Cluster) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Field names whose values are secrets whatever they contain.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "token",
        "credential",
        "private",
        "api_key",
        "apikey",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn redact(value: &mut serde_json::Value, secrets: &[String], secret_key: bool) {
    use serde_json::Value;
    match value {
        Value::String(s)
            if secret_key || secrets.iter().any(|secret| s.contains(secret.as_str())) =>
        {
            *s = "<redacted>".to_string();
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| redact(v, secrets, secret_key)),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact(v, secrets, secret_key || is_secret_key(k));
            }
        }
        _ => {}
    }
}

/// The gateway's shared state: the current snapshot and what the admin API reports.
pub struct State {
    current: ArcSwap<Snapshot>,
    /// Where the config came from, for reloads.
    pub config_path: Option<PathBuf>,
    ready: AtomicBool,
    /// Why the last reload failed, if it did.
    last_error: Mutex<Option<String>>,
}

impl State {
    pub fn new(snapshot: Snapshot, config_path: Option<PathBuf>) -> Arc<State> {
        crate::observe::metrics::METRICS
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        Arc::new(State {
            current: ArcSwap::from_pointee(snapshot),
            config_path,
            ready: AtomicBool::new(false),
            last_error: Mutex::new(None),
        })
    }

    /// The snapshot a request uses from start to end.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot atomically.
    pub fn swap(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// Reloads the config file: parse and validate it in full, build the new snapshot
/// (keeping unchanged clusters and their state), start health checks of new clusters, then
/// swap. On any error the running snapshot stays and the error is kept for `/readyz`.
/// Returns the new config version.
pub fn reload(state: &State) -> Result<String, String> {
    let result = (|| {
        let path = state
            .config_path
            .as_ref()
            .ok_or("this gateway was not started from a config file")?;
        let config = config::load_file(path).map_err(|e| e.to_string())?;
        let previous = state.snapshot();
        if config.listeners.iter().map(|l| &l.address).ne(previous
            .config
            .listeners
            .iter()
            .map(|l| &l.address))
            || config.admin.address != previous.config.admin.address
        {
            log::warn!(
                "listener changes take effect only with a graceful upgrade (portico serve -u)"
            );
        }
        let snapshot = Snapshot::build(config, Some(&previous))?;
        for (name, cluster) in &snapshot.clusters {
            let reused = previous
                .clusters
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(old, cluster));
            if !reused {
                crate::upstream::spawn_health_checks(cluster);
            }
        }
        let version = snapshot.version.clone();
        state.swap(snapshot);
        Ok::<_, String>(version)
    })();
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
    result
}
