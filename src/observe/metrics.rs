//! The process's Prometheus metrics (`portico_*`).
//!
//! Label lookups (`with_label_values`) hash and lock, so the hot path never does them per
//! request: each route target resolves its metric handles on its first request and keeps
//! them ([`RouteMetrics`]), and the (method, status class) counters are resolved on first
//! use and kept in `OnceLock`s.

use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric portico exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub active_requests: IntGauge,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub upstream_attempts: IntCounterVec,
    /// gRPC calls by route and final `grpc-status` (17 codes and `none`).
    pub grpc_responses: IntCounterVec,
    pub endpoint_healthy: IntGaugeVec,
    pub endpoint_in_flight: IntGaugeVec,
    pub access_log_dropped: IntCounter,
    pub config_reloads: IntCounterVec,
    pub retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub breaker_rejections: IntCounterVec,
    /// Cluster and endpoint breakers are separate series: an alert or panel on one never
    /// has to filter the other out by an empty label.
    pub cluster_breaker_state: IntGaugeVec,
    pub endpoint_breaker_state: IntGaugeVec,
    pub bulkhead_rejections: IntCounterVec,
    pub bulkhead_limit: IntGaugeVec,
    /// Endpoint-set versions a cluster's discovery applied or rejected.
    pub discovery_updates: IntCounterVec,
    pub discovery_errors: IntCounterVec,
    /// DNS discovery's resolutions by cluster and result (ok, nxdomain, empty, error).
    pub dns_resolutions: IntCounterVec,
    pub client_connections: IntGauge,
    /// Connections switched to another protocol (WebSocket) and relayed now.
    pub upgraded_connections: IntGauge,
    pub connections_refused: IntCounterVec,
    pub client_timeouts: IntCounterVec,
    pub client_disconnects: IntCounterVec,
    pub pingora_events: IntCounterVec,
    pub jwt_checks: IntCounterVec,
    pub jwt_cache: IntCounterVec,
    pub jwks_fetches: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub rate_limit_decisions: IntCounterVec,
    pub rate_limit_redis_failures: IntCounterVec,
    /// Responses a route compressed, and their body bytes before and after, by route and
    /// coding (`src/proxy/compress.rs`).
    pub compressed_responses: IntCounterVec,
    pub compression_bytes_in: IntCounterVec,
    pub compression_bytes_out: IntCounterVec,
}

/// Latency buckets from 0.5 ms to 10 s: service-to-service calls live mostly under 200 ms.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide metrics, created on first use.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        // The default registry, shared with the token service's metrics (portico-auth).
        let registry = prometheus::default_registry().clone();
        let requests = IntCounterVec::new(
            Opts::new(
                "portico_requests_total",
                "Requests answered, by route, API version, cluster, method, status (the code, from a fixed list, else `other`) and status class",
            ),
            &["route", "version", "cluster", "method", "status", "status_class"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portico_request_duration_seconds",
                "Time from request received to response finished, by route and API version",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "version"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "portico_upstream_duration_seconds",
                "Time from upstream selection to the response header, by cluster",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cluster"],
        )
        .expect("valid metric");
        let active_requests =
            IntGauge::new("portico_active_requests", "Requests in progress").expect("valid metric");
        let request_bytes = IntCounterVec::new(
            Opts::new(
                "portico_request_body_bytes_total",
                "Request body bytes received, by route",
            ),
            &["route"],
        )
        .expect("valid metric");
        let response_bytes = IntCounterVec::new(
            Opts::new(
                "portico_response_body_bytes_total",
                "Response body bytes sent, by route",
            ),
            &["route"],
        )
        .expect("valid metric");
        let upstream_attempts = IntCounterVec::new(
            Opts::new(
                "portico_upstream_attempts_total",
                "Upstream attempts by cluster and result (response, connect_error, timeout, error)",
            ),
            &["cluster", "result"],
        )
        .expect("valid metric");
        let grpc_responses = IntCounterVec::new(
            Opts::new(
                "portico_grpc_responses_total",
                "gRPC calls answered, by route and grpc_status (the code's name in snake_case, `none` when the call ended without one)",
            ),
            &["route", "grpc_status"],
        )
        .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "portico_endpoint_healthy",
                "1 when an endpoint gets traffic (healthy and not ejected), else 0",
            ),
            &["cluster", "endpoint"],
        )
        .expect("valid metric");
        let endpoint_in_flight = IntGaugeVec::new(
            Opts::new(
                "portico_endpoint_in_flight",
                "Requests in flight to an endpoint",
            ),
            &["cluster", "endpoint"],
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "portico_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "portico_config_reloads_total",
                "Config loads by result (success, failure)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let retries = counter(
            "portico_retries_total",
            "Retries sent, by cluster and reason (connect_failure, reset, timeout, status)",
            &["cluster", "reason"],
        );
        let retry_budget_exhausted = counter(
            "portico_retry_budget_exhausted_total",
            "Retries refused because the cluster's retry budget was spent",
            &["cluster"],
        );
        let breaker_rejections = counter(
            "portico_breaker_rejections_total",
            "Requests failed fast by an open cluster circuit breaker",
            &["cluster"],
        );
        let cluster_breaker_state = gauge(
            "portico_cluster_breaker_state",
            "Cluster circuit breaker state: 0 closed, 1 open, 2 half-open",
            &["cluster"],
        );
        let endpoint_breaker_state = gauge(
            "portico_endpoint_breaker_state",
            "Endpoint circuit breaker state: 0 closed, 1 open, 2 half-open",
            &["cluster", "endpoint"],
        );
        let bulkhead_rejections = counter(
            "portico_bulkhead_rejections_total",
            "Requests refused by a cluster's bulkhead, by reason (queue_full, queue_timeout)",
            &["cluster", "reason"],
        );
        let discovery_updates = counter(
            "portico_discovery_updates_total",
            "Endpoint sets a cluster's discovery applied without a config reload, by cluster",
            &["cluster"],
        );
        let discovery_errors = counter(
            "portico_discovery_errors_total",
            "Endpoint sets a cluster's discovery rejected (the last good set stays), by cluster",
            &["cluster"],
        );
        let dns_resolutions = counter(
            "portico_dns_resolutions_total",
            "DNS discovery resolutions by cluster and result (ok, nxdomain, empty, error)",
            &["cluster", "result"],
        );
        let bulkhead_limit = gauge(
            "portico_bulkhead_limit",
            "Current concurrency limit of a cluster's bulkhead",
            &["cluster"],
        );
        let client_connections = IntGauge::new(
            "portico_client_connections",
            "Client connections open (HTTP/1 and HTTP/2, all listeners)",
        )
        .expect("valid metric");
        let upgraded_connections = IntGauge::new(
            "portico_upgraded_connections",
            "Client connections upgraded to another protocol (WebSocket) and relayed now",
        )
        .expect("valid metric");
        let connections_refused = counter(
            "portico_connections_refused_total",
            "Client connections closed as soon as accepted, by reason (listener_limit, \
             client_limit, proxy_protocol)",
            &["reason"],
        );
        let client_timeouts = counter(
            "portico_client_timeouts_total",
            "Client connections closed for being too slow, by phase (first_byte, header, body)",
            &["phase"],
        );
        let pingora_events = counter(
            "portico_pingora_events_total",
            "Errors Pingora logs that are not the gateway's (upstream_reuse_race, downstream_handshake_failed): logged at debug, counted here",
            &["event"],
        );
        let client_disconnects = counter(
            "portico_client_disconnects_total",
            "Requests the client abandoned by closing its connection, by phase (before_response, during_response)",
            &["phase"],
        );
        let jwt_checks = counter(
            "portico_jwt_checks_total",
            "Bearer tokens checked by the jwt plugin, by result (verified, invalid_token, invalid_request, insufficient_scope, missing_token, unavailable) and reason",
            &["result", "reason"],
        );
        let jwt_cache = counter(
            "portico_jwt_cache_lookups_total",
            "Verified-token cache lookups of the jwt plugin, by result (hit, miss)",
            &["result"],
        );
        let jwks_fetches = counter(
            "portico_jwks_fetches_total",
            "JWKS fetches, by key set URL and result (success, failure)",
            &["key_set", "result"],
        );
        let jwks_keys = gauge(
            "portico_jwks_keys",
            "Keys in the last good JWKS of a key set URL (0 before the first good fetch)",
            &["key_set"],
        );
        let rate_limit_decisions = counter(
            "portico_rate_limit_decisions_total",
            "Requests the rate-limit plugin decided, by decision (allowed, limited: 429, failed_open: let through because Redis failed, failed_closed: 503 because Redis failed)",
            &["decision"],
        );
        let rate_limit_redis_failures = counter(
            "portico_rate_limit_redis_failures_total",
            "Redis calls of the rate-limit plugin that failed, by kind (timeout, error)",
            &["kind"],
        );
        let compressed_responses = counter(
            "portico_compressed_responses_total",
            "Responses sent compressed, by route and coding (zstd, br, gzip)",
            &["route", "algorithm"],
        );
        let compression_bytes_in = counter(
            "portico_compression_input_bytes_total",
            "Body bytes of compressed responses before compression, by route and coding",
            &["route", "algorithm"],
        );
        let compression_bytes_out = counter(
            "portico_compression_output_bytes_total",
            "Body bytes of compressed responses as sent, by route and coding (saved: input minus output)",
            &["route", "algorithm"],
        );
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(compressed_responses.clone()),
            Box::new(compression_bytes_in.clone()),
            Box::new(compression_bytes_out.clone()),
            Box::new(rate_limit_decisions.clone()),
            Box::new(rate_limit_redis_failures.clone()),
            Box::new(jwt_checks.clone()),
            Box::new(jwt_cache.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(client_connections.clone()),
            Box::new(upgraded_connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(client_timeouts.clone()),
            Box::new(client_disconnects.clone()),
            Box::new(pingora_events.clone()),
            Box::new(retries.clone()),
            Box::new(retry_budget_exhausted.clone()),
            Box::new(breaker_rejections.clone()),
            Box::new(cluster_breaker_state.clone()),
            Box::new(endpoint_breaker_state.clone()),
            Box::new(bulkhead_rejections.clone()),
            Box::new(bulkhead_limit.clone()),
            Box::new(discovery_updates.clone()),
            Box::new(discovery_errors.clone()),
            Box::new(dns_resolutions.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(active_requests.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
            Box::new(upstream_attempts.clone()),
            Box::new(grpc_responses.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(endpoint_in_flight.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(config_reloads.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Build, process and config-state series (a block of their own).
        super::process_metrics::register(&registry);
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            active_requests,
            request_bytes,
            response_bytes,
            upstream_attempts,
            grpc_responses,
            endpoint_healthy,
            endpoint_in_flight,
            access_log_dropped,
            config_reloads,
            retries,
            retry_budget_exhausted,
            breaker_rejections,
            cluster_breaker_state,
            endpoint_breaker_state,
            bulkhead_rejections,
            bulkhead_limit,
            discovery_updates,
            discovery_errors,
            dns_resolutions,
            client_connections,
            upgraded_connections,
            connections_refused,
            client_timeouts,
            client_disconnects,
            pingora_events,
            jwt_checks,
            jwt_cache,
            jwks_fetches,
            jwks_keys,
            rate_limit_decisions,
            rate_limit_redis_failures,
            compressed_responses,
            compression_bytes_in,
            compression_bytes_out,
        }
    }

    /// Brings the plugin series up to the jwt and rate-limit plugins' own counts, which
    /// they keep as plain atomics (see [`portico_plugins::jwt::token_stats`] and
    /// [`portico_plugins::rate_limit::totals`]) so a request never looks up a label; called
    /// before each scrape.
    pub fn sync_plugin_series(&self) {
        // Two scrapes at once must not both add the same difference.
        static SYNC: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SYNC.lock();
        let catch_up = |c: IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        let stats = portico_plugins::jwt::token_stats();
        if stats.verified > 0 {
            catch_up(
                self.jwt_checks.with_label_values(&["verified", ""]),
                stats.verified,
            );
        }
        for (result, reason, count) in &stats.failed {
            catch_up(self.jwt_checks.with_label_values(&[result, reason]), *count);
        }
        if stats.cache_hits + stats.cache_misses > 0 {
            catch_up(self.jwt_cache.with_label_values(&["hit"]), stats.cache_hits);
            catch_up(
                self.jwt_cache.with_label_values(&["miss"]),
                stats.cache_misses,
            );
        }
        self.jwks_keys.reset();
        for set in portico_plugins::jwt::key_sets() {
            let succeeded = set.fetches.saturating_sub(set.failures);
            catch_up(
                self.jwks_fetches.with_label_values(&[&set.url, "success"]),
                succeeded,
            );
            catch_up(
                self.jwks_fetches.with_label_values(&[&set.url, "failure"]),
                set.failures,
            );
            self.jwks_keys
                .with_label_values(&[&set.url])
                .set(set.keys.unwrap_or(0) as i64);
        }
        let limits = portico_plugins::rate_limit::totals();
        if limits.allowed + limits.limited + limits.failed_open + limits.failed_closed > 0 {
            for (decision, total) in [
                ("allowed", limits.allowed),
                ("limited", limits.limited),
                ("failed_open", limits.failed_open),
                ("failed_closed", limits.failed_closed),
            ] {
                catch_up(
                    self.rate_limit_decisions.with_label_values(&[decision]),
                    total,
                );
            }
        }
        if limits.errors > 0 {
            catch_up(
                self.rate_limit_redis_failures
                    .with_label_values(&["timeout"]),
                limits.timeouts,
            );
            catch_up(
                self.rate_limit_redis_failures.with_label_values(&["error"]),
                limits.errors.saturating_sub(limits.timeouts),
            );
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}

/// The token checks for the admin console, from the same counts as the token series.
pub fn token_checks() -> serde_json::Value {
    let stats = portico_plugins::jwt::token_stats();
    let lookups = stats.cache_hits + stats.cache_misses;
    let mut failed: Vec<_> = stats
        .failed
        .iter()
        .map(|(result, reason, count)| {
            serde_json::json!({ "result": result, "reason": reason, "count": count })
        })
        .collect();
    failed.sort_by_key(|f| std::cmp::Reverse(f["count"].as_u64()));
    serde_json::json!({
        "verified": stats.verified,
        "failed_total": stats.failed.iter().map(|f| f.2).sum::<u64>(),
        "failed": failed,
        "cache_hits": stats.cache_hits,
        "cache_misses": stats.cache_misses,
        "cache_hit_ratio": (lookups > 0).then(|| stats.cache_hits as f64 / lookups as f64),
        "jwks": portico_plugins::jwt::key_sets().into_iter().map(|k| serde_json::json!({
            "url": k.url,
            "keys": k.keys,
            "fetches": k.fetches,
            "failures": k.failures,
            "last_success_seconds_ago": k.last_success_age.map(|a| a.as_secs_f64()),
            "last_error": k.last_error,
        })).collect::<Vec<_>>(),
    })
}

/// Methods that get their own label value; anything else is counted as `OTHER` so a
/// client cannot blow up the label cardinality.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Status codes that get their own `status` label value: the ones a gateway and its
/// upstreams answer in practice. Anything else is `other` (its `status_class` still says
/// which class), so an upstream inventing codes cannot blow up the cardinality.
const STATUSES: [u16; 31] = [
    100, 101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 408,
    409, 410, 413, 415, 421, 422, 429, 500, 501, 502, 503, 504,
];
/// The `status` label values, in the order of [`STATUSES`].
const STATUS_LABELS: [&str; 31] = [
    "100", "101", "200", "201", "202", "204", "206", "301", "302", "303", "304", "307", "308",
    "400", "401", "403", "404", "405", "408", "409", "410", "413", "415", "421", "422", "429",
    "500", "501", "502", "503", "504",
];

/// A route's request counters per method: one slot per listed status, then one `other`
/// slot per status class (an unlisted 418 and an unlisted 507 are different series).
const STATUS_SLOTS: usize = STATUSES.len() + CLASSES.len();

fn status_slot(status: u16) -> usize {
    STATUSES
        .binary_search(&status)
        .unwrap_or_else(|_| STATUSES.len() + class_index(status))
}

/// The `status` and `status_class` label values of a slot.
fn slot_labels(slot: usize) -> (&'static str, &'static str) {
    match STATUSES.get(slot) {
        Some(&code) => (STATUS_LABELS[slot], CLASSES[class_index(code)]),
        None => ("other", CLASSES[slot - STATUSES.len()]),
    }
}

fn method_index(method: &http::Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len())
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

type StatusCounters = [OnceLock<IntCounter>; STATUS_SLOTS];

/// One route target's metrics: its label values, and the handles of its series, resolved
/// on its first request (not when the config is loaded) and then kept for the life of the
/// snapshot. A route that gets no traffic costs its three shared label strings and one
/// pointer, and adds no series to `/metrics`: at 100,000 routes, creating every route's
/// series at load took most of a reload, 1 KiB and more per route, and a scrape of
/// millions of all-zero lines.
pub struct RouteMetrics {
    route: Arc<str>,
    version: Arc<str>,
    cluster: Arc<str>,
    handles: OnceLock<Arc<Handles>>,
}

/// Every route target that has had a request, for the console's sampler
/// (`observe::window`): registered by its first request, gone once its snapshots are. The
/// sampler used to find them by walking every route of the snapshot once a second, which at
/// 100,000 routes was 3–4 ms on the supervisor's thread (at the proxy's priority, and often
/// on its core) every second, and twice that on the tick after a reload — the stall behind
/// the per-second p99 of a gateway at rest. Now it reads this list: the busy targets only.
static ACTIVE: Mutex<Vec<Weak<Handles>>> = Mutex::new(Vec::new());

/// A target with traffic, as [`active_targets`] lists it.
pub struct ActiveTarget(Arc<Handles>);

impl ActiveTarget {
    /// The target's route id and version (`None`: an unversioned route).
    pub fn key(&self) -> (Arc<str>, Option<Arc<str>>) {
        let version = (!self.0.version.is_empty()).then(|| self.0.version.clone());
        (self.0.route.clone(), version)
    }

    /// The counts behind the target's series.
    pub fn totals(&self) -> Totals {
        self.0.totals()
    }
}

/// The route targets that have had a request and still belong to a snapshot. Targets of a
/// replaced snapshot stay listed until it is freed; their series are the ones the targets
/// that replaced them use (same labels), so their counts agree.
pub fn active_targets() -> Vec<ActiveTarget> {
    let Ok(mut active) = ACTIVE.lock() else {
        return Vec::new();
    };
    active.retain(|w| w.strong_count() > 0);
    active
        .iter()
        .filter_map(Weak::upgrade)
        .map(ActiveTarget)
        .collect()
}

/// The series of one route target, created together on its first request.
struct Handles {
    /// By method, then status; a method's row and each counter created on first use, so
    /// a route answered only to GET holds one row.
    counters: [OnceLock<Box<StatusCounters>>; 10],
    attempts: [OnceLock<IntCounter>; 4],
    /// By `grpc-status` (the last slot: none), made on the target's first gRPC call.
    grpc: OnceLock<Box<[OnceLock<IntCounter>; 18]>>,
    /// The target's labels, for [`active_targets`].
    route: Arc<str>,
    version: Arc<str>,
    duration: prometheus::Histogram,
    upstream_duration: prometheus::Histogram,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
}

impl RouteMetrics {
    /// The labels are shared with the route (its id) and the cluster (its name).
    pub fn new(route: Arc<str>, cluster: Arc<str>, version: Arc<str>) -> RouteMetrics {
        RouteMetrics {
            route,
            version,
            cluster,
            handles: OnceLock::new(),
        }
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let m = &*METRICS;
            let (route, version, cluster) = (&*self.route, &*self.version, &*self.cluster);
            let handles = Arc::new(Handles {
                counters: Default::default(),
                attempts: Default::default(),
                grpc: OnceLock::new(),
                route: self.route.clone(),
                version: self.version.clone(),
                duration: m.request_duration.with_label_values(&[route, version]),
                upstream_duration: m.upstream_duration.with_label_values(&[cluster]),
                request_bytes: m.request_bytes.with_label_values(&[route]),
                response_bytes: m.response_bytes.with_label_values(&[route]),
            });
            if let Ok(mut active) = ACTIVE.lock() {
                active.push(Arc::downgrade(&handles));
            }
            handles
        })
    }

    /// Counts one finished request: its method and status, how long it took (and its
    /// upstream part, when it reached one), and its body bytes both ways.
    pub fn finish(
        &self,
        method: &http::Method,
        status: u16,
        elapsed: std::time::Duration,
        upstream: Option<std::time::Duration>,
        body_bytes: (u64, u64),
    ) {
        let h = self.handles();
        let (mi, slot) = (method_index(method), status_slot(status));
        h.counters[mi].get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())))[slot]
            .get_or_init(|| {
                let (status, class) = slot_labels(slot);
                METRICS.requests.with_label_values(&[
                    &*self.route,
                    &*self.version,
                    &*self.cluster,
                    METHODS.get(mi).copied().unwrap_or("OTHER"),
                    status,
                    class,
                ])
            })
            .inc();
        h.duration.observe(elapsed.as_secs_f64());
        if let Some(up) = upstream {
            h.upstream_duration.observe(up.as_secs_f64());
        }
        h.request_bytes.inc_by(body_bytes.0);
        h.response_bytes.inc_by(body_bytes.1);
    }

    /// Counts one finished gRPC call by its `grpc-status` (`None`: the call ended without).
    pub fn count_grpc(&self, status: Option<u8>) {
        let i = status.map_or(17, |c| usize::from(c.min(16)));
        self.handles().grpc.get_or_init(Default::default)[i]
            .get_or_init(|| {
                let name = crate::config::GRPC_CODE_NAMES
                    .get(i)
                    .copied()
                    .unwrap_or("none");
                METRICS
                    .grpc_responses
                    .with_label_values(&[&*self.route, name])
            })
            .inc();
    }

    /// Counts one finished upstream attempt of this route's cluster by its result
    /// (`response`, `connect_error`, `error` or `timeout`), without a label lookup per call.
    pub fn count_attempt(&self, result: &'static str) {
        let i = ATTEMPT_RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(ATTEMPT_RESULTS.len() - 1);
        self.handles().attempts[i]
            .get_or_init(|| {
                METRICS
                    .upstream_attempts
                    .with_label_values(&[&*self.cluster, ATTEMPT_RESULTS[i]])
            })
            .inc();
    }
}

/// One route target's cumulative counts since its series were created, read by the
/// console's once-a-second sampler ([`crate::observe::window`]), never per request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    /// Cumulative count at each upper bound of [`LATENCY_BUCKETS`] (`+Inf` is `requests`).
    pub buckets: Vec<u64>,
}

impl RouteMetrics {
    /// The counts behind this target's series; `None` before its first request.
    pub fn totals(&self) -> Option<Totals> {
        Some(self.handles.get()?.totals())
    }
}

impl Handles {
    fn totals(&self) -> Totals {
        let errors = self
            .counters
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|by_status| by_status.iter().enumerate())
            .filter(|(slot, _)| slot_labels(*slot).1 == "5xx")
            .filter_map(|(_, counter)| counter.get())
            .map(IntCounter::get)
            .sum();
        // The histogram's own counts, so the window agrees with what Prometheus scrapes.
        let metric = prometheus::core::Metric::metric(&self.duration);
        let histogram = metric.get_histogram();
        Totals {
            requests: histogram.get_sample_count(),
            errors,
            buckets: histogram
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .collect(),
        }
    }
}

/// The upper bounds (seconds) of the latency histograms' buckets.
pub fn latency_buckets() -> &'static [f64] {
    LATENCY_BUCKETS
}

/// The results `portico_upstream_attempts_total` counts (anything else counts as `error`).
const ATTEMPT_RESULTS: [&str; 4] = ["response", "connect_error", "timeout", "error"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_status_has_its_label_and_the_rest_their_class() {
        assert!(
            STATUSES.windows(2).all(|w| w[0] < w[1]),
            "sorted for the search"
        );
        for (i, code) in STATUSES.iter().enumerate() {
            assert_eq!(STATUS_LABELS[i], code.to_string());
            assert_eq!(status_slot(*code), i);
        }
        assert_eq!(slot_labels(status_slot(418)), ("other", "4xx"));
        assert_eq!(slot_labels(status_slot(507)), ("other", "5xx"));
        assert_eq!(slot_labels(status_slot(0)), ("other", "other"));
        assert_ne!(status_slot(418), status_slot(507));
    }

    #[test]
    fn counts_land_under_bounded_labels() {
        let rm = RouteMetrics::new("metrics-test-route".into(), "c".into(), "2".into());
        let text = String::from_utf8(METRICS.render()).unwrap();
        assert!(
            !text.contains("metrics-test-route"),
            "no series before the first request"
        );
        let ms = std::time::Duration::from_millis(1);
        rm.finish(&http::Method::GET, 204, ms, Some(ms), (0, 10));
        rm.finish(
            &http::Method::from_bytes(b"BREW").unwrap(),
            418,
            ms,
            None,
            (3, 0),
        );
        let text = String::from_utf8(METRICS.render()).unwrap();
        assert!(text.contains(
            r#"portico_request_duration_seconds_count{route="metrics-test-route",version="2"} 2"#
        ));
        assert!(
            text.contains(r#"portico_response_body_bytes_total{route="metrics-test-route"} 10"#)
        );
        assert!(text.contains(
            r#"portico_requests_total{cluster="c",method="GET",route="metrics-test-route",status="204",status_class="2xx",version="2"} 1"#
        ));
        // An unlisted code: `other`, in its class.
        assert!(text.contains(
            r#"portico_requests_total{cluster="c",method="OTHER",route="metrics-test-route",status="other",status_class="4xx",version="2"} 1"#
        ));
    }
}
