//! The `jwt` plugin's config table as serde reads it. Nothing here is used at request time:
//! [`super::Jwt::from_config`] validates it and builds the runtime types.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The algorithms an issuer allows when its table does not say.
pub(super) const DEFAULT_ALGORITHMS: [&str; 3] = ["ES256", "RS256", "EdDSA"];

// No `Debug`: the tables hold secrets (`hmac_secret`, `client_secret`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct Config {
    pub issuers: Vec<IssuerConfig>,
    pub introspection: Option<IntrospectionConfig>,
    pub scopes_all: Vec<String>,
    pub scopes_any: Vec<String>,
    pub claims: BTreeMap<String, toml::Value>,
    pub realm: String,
    pub subject_header: String,
    pub client_id_header: String,
    pub scopes_header: String,
    pub strip_authorization: bool,
    pub allow_query_token: bool,
    pub max_token_bytes: usize,
    pub cache_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            issuers: Vec::new(),
            introspection: None,
            scopes_all: Vec::new(),
            scopes_any: Vec::new(),
            claims: BTreeMap::new(),
            realm: "portico".to_owned(),
            subject_header: "X-Portico-Subject".to_owned(),
            client_id_header: "X-Portico-Client-Id".to_owned(),
            scopes_header: "X-Portico-Scopes".to_owned(),
            strip_authorization: false,
            allow_query_token: false,
            max_token_bytes: 8192,
            cache_size: 10_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh", deserialize_with = "duration")]
    pub jwks_refresh: Duration,
    #[serde(default = "default_jwks_min_refresh", deserialize_with = "duration")]
    pub jwks_min_refresh: Duration,
    #[serde(default = "default_fetch_timeout", deserialize_with = "duration")]
    pub jwks_timeout: Duration,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub hmac_secret: Option<String>,
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<String>,
    #[serde(default = "default_typ")]
    pub typ: String,
    #[serde(default)]
    pub revocation_url: Option<String>,
    #[serde(default = "default_revocation_refresh", deserialize_with = "duration")]
    pub revocation_refresh: Duration,
    #[serde(default = "default_fetch_timeout", deserialize_with = "duration")]
    pub revocation_timeout: Duration,
    #[serde(default = "default_revocation_max_age", deserialize_with = "duration")]
    pub revocation_max_age: Duration,
    #[serde(default)]
    pub revocation_fail_open: bool,
    #[serde(default)]
    pub revocation_client_id: Option<String>,
    #[serde(default)]
    pub revocation_client_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IntrospectionConfig {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default = "default_cache_ttl", deserialize_with = "duration")]
    pub cache_ttl: Duration,
    #[serde(default = "default_fetch_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    #[serde(default = "default_queue_timeout", deserialize_with = "duration")]
    pub queue_timeout: Duration,
}

fn default_algorithms() -> Vec<String> {
    DEFAULT_ALGORITHMS.map(String::from).to_vec()
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(10)
}

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// RFC 9068 §2.1: JWT access tokens are typed `at+jwt`, so an ID token or any other JWT of
/// the same issuer and audience is not taken for one.
fn default_typ() -> String {
    "at+jwt".to_owned()
}

fn default_revocation_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_revocation_max_age() -> Duration {
    Duration::from_secs(300)
}

fn default_max_concurrent() -> usize {
    16
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_required_claims() -> Vec<String> {
    vec!["sub".to_owned()]
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(30)
}

/// A duration written as humantime text (`"30s"`, `"5m"`, `"250ms"`), as the gateway's own
/// config writes them.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        D::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"30s\" or \"5m\""
        ))
    })
}
