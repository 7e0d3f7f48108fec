//! The token service's Prometheus metrics, registered once into the process-wide default
//! registry, which the gateway's metrics share: in a process running both, either
//! `/metrics` shows them all.

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

pub struct AuthMetrics {
    pub tokens_issued: IntCounter,
    /// By reason: the OAuth error code, or `rate_limited`.
    pub token_failures: IntCounterVec,
    /// By result: `active`, `inactive`.
    pub introspections: IntCounterVec,
    pub revocations: IntCounter,
    pub published_keys: IntGauge,
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
    for c in [
        Box::new(tokens_issued.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(token_failures.clone()),
        Box::new(introspections.clone()),
        Box::new(revocations.clone()),
        Box::new(published_keys.clone()),
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
