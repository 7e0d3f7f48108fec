//! The token service's Prometheus metrics, registered once into the process-wide default
//! registry, which the gateway's metrics share: in a process running both, either
//! `/metrics` shows them all.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

pub struct AuthMetrics {
    pub tokens_issued: IntCounter,
    /// By reason: the OAuth error code, or `rate_limited`.
    pub token_failures: IntCounterVec,
    /// By result: `active`, `inactive`.
    pub introspections: IntCounterVec,
    pub revocations: IntCounter,
    pub published_keys: IntGauge,
    /// Failures that started or lengthened a back-off, by `scope`: `client_address`
    /// (one client id from one source address) or `address` (one source address).
    pub backoffs: IntCounterVec,
    /// Authentication attempts refused before any secret was checked, by `limit`:
    /// `client_backoff`, `address_backoff`, `address_rate`, `busy` (the hashing queue).
    pub throttled: IntCounterVec,
    /// Secret checks against the dummy hash (unknown client ids), which cost the same as
    /// real ones so that response times do not tell which ids exist.
    pub dummy_checks: IntCounter,
    /// Introspection by a client that neither owns the token nor holds the `introspect`
    /// right, answered `{"active": false}`.
    pub introspection_refusals: IntCounter,
    /// Requests whose body did not arrive within `body_read_timeout` (408).
    pub body_timeouts: IntCounter,
    /// Entries of the limiter's tables, by `table` (`client_address`, `address`,
    /// `bucket`), set at scrape time.
    pub limiter_entries: IntGaugeVec,
    /// Entries the limiter dropped to stay within `failed_auth.max_tracked`.
    pub limiter_evictions: IntCounter,
    /// PostgreSQL pool connections open now.
    pub db_pool_open: IntGauge,
    /// PostgreSQL connection attempts, by `result` (`ok`, `error`), pool and dedicated.
    pub db_connects: IntCounterVec,
}

/// Created, and registered, on first use.
pub static AUTH_METRICS: LazyLock<AuthMetrics> = LazyLock::new(|| {
    let tokens_issued = IntCounter::new(
        "portico_auth_tokens_issued_total",
        "Access tokens issued by the token service",
    )
    .expect("valid metric");
    let token_failures = IntCounterVec::new(
        Opts::new(
            "portico_auth_token_failures_total",
            "Token, introspection and revocation requests refused, by reason",
        ),
        &["reason"],
    )
    .expect("valid metric");
    let introspections = IntCounterVec::new(
        Opts::new(
            "portico_auth_introspections_total",
            "Introspection answers, by result (active, inactive)",
        ),
        &["result"],
    )
    .expect("valid metric");
    let revocations = IntCounter::new(
        "portico_auth_revocations_total",
        "Tokens revoked through the revocation endpoint",
    )
    .expect("valid metric");
    let published_keys = IntGauge::new(
        "portico_auth_published_keys",
        "Signing keys currently published in the JWKS",
    )
    .expect("valid metric");
    let backoffs = IntCounterVec::new(
        Opts::new(
            "portico_auth_backoffs_total",
            "Failed authentications that started or lengthened a back-off, by scope (client_address, address)",
        ),
        &["scope"],
    )
    .expect("valid metric");
    let throttled = IntCounterVec::new(
        Opts::new(
            "portico_auth_throttled_total",
            "Authentication attempts refused before the secret check, by limit (client_backoff, address_backoff, address_rate, busy)",
        ),
        &["limit"],
    )
    .expect("valid metric");
    let dummy_checks = IntCounter::new(
        "portico_auth_dummy_checks_total",
        "Secret checks against the dummy hash for unknown client ids",
    )
    .expect("valid metric");
    let introspection_refusals = IntCounter::new(
        "portico_auth_introspection_refusals_total",
        "Introspections of another client's token by a client without the introspect right (answered inactive)",
    )
    .expect("valid metric");
    let body_timeouts = IntCounter::new(
        "portico_auth_body_timeouts_total",
        "Requests whose body did not arrive within body_read_timeout",
    )
    .expect("valid metric");
    let limiter_entries = IntGaugeVec::new(
        Opts::new(
            "portico_auth_limiter_entries",
            "Entries of the authentication limiter's tables, by table",
        ),
        &["table"],
    )
    .expect("valid metric");
    let limiter_evictions = IntCounter::new(
        "portico_auth_limiter_evictions_total",
        "Entries the authentication limiter dropped to stay within failed_auth.max_tracked",
    )
    .expect("valid metric");
    let db_pool_open = IntGauge::new(
        "portico_auth_db_pool_open",
        "PostgreSQL pool connections open (at most postgres.pool_size)",
    )
    .expect("valid metric");
    let db_connects = IntCounterVec::new(
        Opts::new(
            "portico_auth_db_connects_total",
            "PostgreSQL connection attempts, by result (ok, error)",
        ),
        &["result"],
    )
    .expect("valid metric");
    for c in [
        Box::new(tokens_issued.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(token_failures.clone()),
        Box::new(introspections.clone()),
        Box::new(revocations.clone()),
        Box::new(published_keys.clone()),
        Box::new(backoffs.clone()),
        Box::new(throttled.clone()),
        Box::new(dummy_checks.clone()),
        Box::new(introspection_refusals.clone()),
        Box::new(body_timeouts.clone()),
        Box::new(limiter_entries.clone()),
        Box::new(limiter_evictions.clone()),
        Box::new(db_pool_open.clone()),
        Box::new(db_connects.clone()),
    ] {
        if let Err(e) = prometheus::default_registry().register(c) {
            log::error!("cannot register a token service metric: {e}");
        }
    }
    AuthMetrics {
        tokens_issued,
        token_failures,
        introspections,
        revocations,
        published_keys,
        backoffs,
        throttled,
        dummy_checks,
        introspection_refusals,
        body_timeouts,
        limiter_entries,
        limiter_evictions,
        db_pool_open,
        db_connects,
    }
});

/// The text exposition of every metric in the process's default registry.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::with_capacity(4 * 1024);
    if let Err(e) = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    out
}
