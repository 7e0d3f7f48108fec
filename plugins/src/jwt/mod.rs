//! The `jwt` plugin: admits a request only with a valid OAuth2 bearer token (RFC 6750) — a
//! JWT verified against its issuer's keys, or an opaque token checked by RFC 7662
//! introspection — authorizes it by scopes and claims, and forwards the caller's identity
//! upstream as headers and in [`PluginCtx::identity`]. Rejected requests never reach the
//! upstream.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "jwt"
//! realm = "orders"                      # WWW-Authenticate realm; default "portico"
//! scopes_all = ["orders:read"]          # every one required (default: none)
//! scopes_any = []                       # at least one required, when not empty
//! claims = { tenant = "acme" }          # exact claim matchers (default: none)
//! subject_header = "X-Portico-Subject"      # default; "" = not forwarded
//! client_id_header = "X-Portico-Client-Id"  # default; "" = not forwarded
//! scopes_header = "X-Portico-Scopes"        # default; "" = not forwarded
//! strip_authorization = false           # default: the upstream still sees the token
//! allow_query_token = false             # default: `?access_token=` is refused with 400
//! max_token_bytes = 8192                # default
//! cache_size = 10000                    # verified tokens kept; 0 disables the cache
//!
//! [[routes.plugins.issuers]]
//! issuer = "https://auth.example.com"   # exact `iss`
//! audiences = ["orders"]                # `aud` must name one
//! algorithms = ["ES256", "RS256", "EdDSA"]  # default; never "none"
//! jwks_url = "https://auth.example.com/.well-known/jwks.json"  # or: keys = ["/etc/…/key.pem"]
//! jwks_refresh = "5m"                   # default
//! jwks_min_refresh = "10s"              # default: floor between fetches for unknown kids
//! jwks_timeout = "5s"                   # default
//! leeway = "30s"                        # default, for exp and nbf; at most "5m"
//! required_claims = ["sub"]             # default
//! typ = "at+jwt"                        # default: header `typ` must be at+jwt (RFC 9068);
//!                                       # "" accepts any typ, for issuers of plain JWTs
//! # hmac_secret = "${JWT_SECRET}"       # only with HS256/HS384/HS512 in `algorithms`
//! # Optional revocation list (see below); tokens must then carry a `jti`:
//! revocation_url = "https://auth.example.com/oauth2/revoked"
//! revocation_refresh = "30s"            # default; at least "1s"
//! revocation_timeout = "5s"             # default
//! revocation_max_age = "5m"             # default: older than this, the list is stale
//! revocation_fail_open = false          # default: a stale list answers 503
//! revocation_client_id = "gateway"      # optional client_secret_basic credentials
//! revocation_client_secret = "${REVOCATION_SECRET}"
//!
//! # Optional, for opaque (non-JWT) tokens:
//! [routes.plugins.introspection]
//! url = "https://auth.example.com/oauth2/introspect"
//! client_id = "gateway"
//! client_secret = "${INTROSPECTION_SECRET}"
//! audiences = ["orders"]                # required: the answer's `aud` must name one
//! # issuer = "https://auth.example.com" # optional: the answer's `iss` must be this
//! cache_ttl = "30s"                     # default; refusals are cached as long
//! timeout = "5s"                        # default
//! max_concurrent = 16                   # default: calls in flight at once, 1..=1024
//! queue_timeout = "1s"                  # default: wait for a slot, then 503 + Retry-After
//! ```
//!
//! Verification, in order: the token's size is bounded; its header and payload are decoded
//! by portico itself (strict base64url and JSON, duplicate members refused); `alg: none` in
//! any spelling is refused; `crit` is refused; the unverified `iss` picks the issuer, whose
//! allow-list must hold `alg` exactly; `typ`, `exp`, `nbf`, `aud` and the required claims are
//! checked before any signature work; the key is chosen by `kid` among keys of the
//! algorithm's own type (never from `jku`, `x5u`, `jwk` or `x5c`); aws-lc then checks the
//! signature with that key, parsed once when its key set was loaded. A verified token is
//! cached by the SHA-256 of the whole token until its `exp`, so a repeated token costs no
//! signature check.
//!
//! Token lifetimes against revocation. A JWT is checked locally, so on its own a revoked
//! token would be taken until its `exp`. An issuer with `revocation_url` closes that gap:
//! the list of revoked `jti`s (`{"revoked": [{"jti": "…", "exp": …}]}`, as portico's token
//! service serves it at `GET /oauth2/revoked`) is polled in the background every
//! `revocation_refresh`, and every use of a token — from the cache too — is checked against
//! it, so a revoked token is refused (401 `invalid_token`) by every gateway within
//! `revocation_refresh` plus one fetch (`revocation_timeout`). Such an issuer's tokens must
//! carry a `jti`; one without is refused. A failed poll keeps the last good list (logged at
//! warn, counted in [`JwtStats::revocation_failures`]). Once the last good list is older than
//! `revocation_max_age` (or before any list was fetched) the issuer's tokens get 503 with
//! `Retry-After` (fail closed: the list was configured to bound how long a revoked token
//! lives, and silently dropping that bound is worse than a visible outage), unless
//! `revocation_fail_open = true`, which keeps admitting them against the last good list.
//! So the bound is `revocation_refresh` + `revocation_timeout` while the list can be
//! fetched, and `revocation_max_age` + `revocation_timeout` through an outage (failing
//! closed).
//!
//! Opaque tokens are introspected (RFC 7662) only by an endpoint the route trusts, and since
//! any client can send any bearer, the load on it is bounded: `audiences` is required and
//! checked against the answer; concurrent requests with the same unknown token share one
//! call; at most `max_concurrent` calls run at once, a request waiting at most
//! `queue_timeout` for a slot before 503 with `Retry-After: 1`; refusals are cached for
//! `cache_ttl` like answers, so a repeated random bearer costs one call per `cache_ttl`.

mod cache;
mod config;
mod fetch;
#[doc(hidden)]
pub mod fuzzing;
mod introspect;
mod keys;
mod revocation;
mod stats;
mod token;

pub use self::keys::{key_sets, KeySetStatus};
pub use self::stats::{token_stats, TokenStats};

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use self::cache::{TokenCache, TokenHash};
use self::config::{Config, IntrospectionConfig, IssuerConfig};
use self::introspect::{Answer, FlightGuard, Introspection};
use self::keys::{Algorithm, KeyKind, KeySet, RemoteKeys, VerifyKey};
use self::revocation::{Revocation, RevocationList};
use self::token::*;
use crate::build::{parse_config, BuildError};
use crate::{Flow, Hooks, Identity, Plugin, PluginCtx, PluginResponse, RequestHeader};

/// The registry name.
pub const NAME: &str = "jwt";

const KEYS_UNAVAILABLE: &str = "signing keys are unavailable";
const INTROSPECTION_UNAVAILABLE: &str = "token introspection is unavailable";
const INTROSPECTION_BUSY: &str = "too many token introspections in progress";
const REVOCATION_UNAVAILABLE: &str = "the token revocation list is unavailable";

/// The longest `leeway` accepted: clock skew between well-run hosts is seconds, and every
/// second of leeway is a second an expired token is still taken.
const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// The shortest `revocation_refresh` accepted, so a typo cannot poll the list in a loop.
const MIN_REVOCATION_REFRESH: Duration = Duration::from_secs(1);
/// The most concurrent introspection calls `max_concurrent` may allow.
const MAX_INTROSPECTION_CONCURRENCY: usize = 1024;
const DUPLICATE_AUTHORIZATION: &str = "more than one Authorization header";
const EMPTY_TOKEN: &str = "empty bearer token";
const MALFORMED_CREDENTIALS: &str = "malformed bearer credentials";
const QUERY_NOT_ALLOWED: &str = "access tokens in the query string are not accepted here";
const REPEATED_QUERY_TOKEN: &str = "access_token given more than once";
const TWO_METHODS: &str = "access token sent in more than one way";

/// Why a request was not admitted. Each maps to one status and RFC 6750 challenge; the
/// `&'static str` is the short `error_description`, never an echo of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer token at all (or another authentication scheme): 401 without error code.
    MissingToken,
    /// A malformed request (two Authorization headers, a token in the query where not
    /// allowed, …): 400 `invalid_request`.
    InvalidRequest(&'static str),
    /// A token that is not acceptable: 401 `invalid_token`.
    InvalidToken(&'static str),
    /// A valid token without the route's scopes or claims: 403 `insufficient_scope`.
    InsufficientScope(Requirement),
    /// The keys or the introspection endpoint could not be reached: 503, so clients retry
    /// rather than throw their token away.
    Unavailable(&'static str),
}

/// Which authorization rule a token failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    ScopesAll,
    ScopesAny,
    Claims,
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken | AuthError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            AuthError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The RFC 6750 error code, when there is one.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            AuthError::MissingToken | AuthError::Unavailable(_) => None,
            AuthError::InvalidRequest(_) => Some("invalid_request"),
            AuthError::InvalidToken(_) => Some("invalid_token"),
            AuthError::InsufficientScope(_) => Some("insufficient_scope"),
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "this route requires a bearer token",
            AuthError::InvalidRequest(d) | AuthError::InvalidToken(d) => d,
            AuthError::InsufficientScope(Requirement::ScopesAll) => {
                "token lacks a scope this route requires"
            }
            AuthError::InsufficientScope(Requirement::ScopesAny) => {
                "token has none of the scopes this route accepts"
            }
            AuthError::InsufficientScope(Requirement::Claims) => {
                "token claims do not permit this route"
            }
            AuthError::Unavailable(d) => d,
        }
    }

    /// Seconds for the `Retry-After` of a 503: soon when only the introspection slots were
    /// full, a little later when the authorization server itself could not be used.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AuthError::Unavailable(INTROSPECTION_BUSY) => Some(1),
            AuthError::Unavailable(_) => Some(5),
            _ => None,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{code}: {}", self.description()),
            None => f.write_str(self.description()),
        }
    }
}

impl std::error::Error for AuthError {}

fn invalid(description: &'static str) -> AuthError {
    AuthError::InvalidToken(description)
}

/// What verifying a token established, cached and shared by every request that presents it.
/// The identity headers are rendered once, here, so a cached token forwards them by cloning.
pub struct VerifiedToken {
    claims: Map<String, Value>,
    expires_at: u64,
    identity: Arc<Identity>,
    subject_value: Option<HeaderValue>,
    client_id_value: Option<HeaderValue>,
    scopes_value: Option<HeaderValue>,
    /// The issuer's revocation list and the token's `jti`, checked on every use (the
    /// verified-token cache included).
    revocable: Option<(Arc<Revocation>, String)>,
}

impl VerifiedToken {
    /// All claims of the token (or members of the introspection answer).
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// `exp`, in unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Subject, client id (`client_id`, else `azp`) and scopes (`scope`, else `scp`).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("identity", &self.identity)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Counters of a [`Jwt`] plugin's expensive work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwtStats {
    /// Signature checks run (each key tried counts once).
    pub signature_checks: u64,
    /// Entries in the verified-token cache, expired ones not yet swept included.
    pub cached_tokens: usize,
    /// JWKS fetches started by this plugin's issuers. A key set is shared by every plugin
    /// naming the same URL, so its fetches show in each of them.
    pub jwks_fetches: u64,
    /// Introspection requests sent.
    pub introspections: u64,
    /// Requests answered 503 because every introspection slot stayed busy.
    pub introspections_busy: u64,
    /// Revocation list polls started, and how many of them failed.
    pub revocation_fetches: u64,
    pub revocation_failures: u64,
    /// Revoked token ids in the current lists.
    pub revoked_ids: usize,
}

/// One configured issuer, ready for requests.
struct Issuer {
    iss: String,
    audiences: Vec<String>,
    /// The allow-list: a token's `alg` must be one of these exactly.
    algorithms: Vec<Algorithm>,
    leeway: u64,
    required_claims: Vec<String>,
    /// Lower-case, without `application/`; `None` when the issuer opted out (`typ = ""`).
    typ: Option<String>,
    hmac: Option<VerifyKey>,
    local: Option<KeySet>,
    remote: Option<Arc<RemoteKeys>>,
    revocation: Option<Arc<Revocation>>,
}

/// A header the identity is forwarded in: the name for lookups and removal, and the spelling
/// as configured for HTTP/1 peers.
struct IdentityHeader {
    name: HeaderName,
    case: Bytes,
}

/// The built `jwt` plugin.
pub struct Jwt {
    issuers: Vec<Issuer>,
    introspection: Option<Introspection>,
    cache: TokenCache<Arc<VerifiedToken>>,
    scopes_all: Vec<String>,
    scopes_any: Vec<String>,
    /// Claim name and the values it may have (any of them).
    claims: Vec<(String, Vec<Value>)>,
    subject_header: Option<IdentityHeader>,
    client_id_header: Option<IdentityHeader>,
    scopes_header: Option<IdentityHeader>,
    strip_authorization: bool,
    allow_query_token: bool,
    max_token_bytes: usize,
    realm: String,
    challenge_missing: HeaderValue,
    challenge_scopes_all: HeaderValue,
    challenge_scopes_any: HeaderValue,
    challenge_claims: HeaderValue,
    signature_checks: AtomicU64,
}

impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &i.iss).collect::<Vec<_>>(),
            )
            .field("introspection", &self.introspection.is_some())
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// Builds the plugin from its config table. Local key files are read here; JWKS URLs are
    /// not fetched until a request needs a key, so building needs no runtime and no network.
    pub fn from_config(config: toml::Value) -> Result<Self, BuildError> {
        let config: Config = parse_config(NAME, config)?;
        if config.issuers.is_empty() && config.introspection.is_none() {
            return Err(BuildError::InvalidConfig {
                plugin: NAME,
                message: "configure at least one `issuers` entry (or `introspection`): \
                          without one no token can be accepted"
                    .to_owned(),
                field: None,
            });
        }

        let mut issuers: Vec<Issuer> = Vec::with_capacity(config.issuers.len());
        for (i, issuer) in config.issuers.into_iter().enumerate() {
            let issuer = build_issuer(i, issuer)?;
            if issuers.iter().any(|other| other.iss == issuer.iss) {
                return Err(BuildError::invalid(
                    NAME,
                    format!("issuers[{i}].issuer"),
                    format!("`{}` is configured twice", issuer.iss),
                ));
            }
            issuers.push(issuer);
        }
        let introspection = config
            .introspection
            .map(|c| build_introspection(c, config.cache_size))
            .transpose()?;

        let realm_ok = !config.realm.is_empty()
            && config
                .realm
                .bytes()
                .all(|b| (0x20..=0x7E).contains(&b) && b != b'"' && b != b'\\');
        if !realm_ok {
            return Err(BuildError::invalid(
                NAME,
                "realm",
                "must be non-empty printable ASCII without `\"` or `\\`",
            ));
        }
        for (field, scopes) in [
            ("scopes_all", &config.scopes_all),
            ("scopes_any", &config.scopes_any),
        ] {
            for (i, scope) in scopes.iter().enumerate() {
                if !is_scope_token(scope) {
                    return Err(BuildError::invalid(
                        NAME,
                        format!("{field}[{i}]"),
                        format!("`{scope}` is not a scope (printable ASCII without spaces, `\"` or `\\`)"),
                    ));
                }
            }
        }
        let mut claims = Vec::with_capacity(config.claims.len());
        for (name, value) in &config.claims {
            let field = crate::build::key_path("claims", name);
            let values = match value {
                toml::Value::Array(items) if !items.is_empty() => items.iter().collect(),
                toml::Value::Array(_) => {
                    return Err(BuildError::invalid(NAME, field, "list at least one value"))
                }
                other => vec![other],
            };
            let mut allowed = Vec::with_capacity(values.len());
            for value in values {
                allowed.push(claim_value(value).ok_or_else(|| {
                    BuildError::invalid(
                        NAME,
                        field.clone(),
                        "a claim matcher is a string, number or boolean, or a list of them",
                    )
                })?);
            }
            claims.push((name.clone(), allowed));
        }

        let subject_header = identity_header("subject_header", &config.subject_header)?;
        let client_id_header = identity_header("client_id_header", &config.client_id_header)?;
        let scopes_header = identity_header("scopes_header", &config.scopes_header)?;
        let names: Vec<&HeaderName> = [&subject_header, &client_id_header, &scopes_header]
            .into_iter()
            .flatten()
            .map(|h| &h.name)
            .collect();
        if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
            return Err(BuildError::invalid(
                NAME,
                "scopes_header",
                "the subject, client id and scopes headers must be different headers",
            ));
        }
        if !(256..=65_536).contains(&config.max_token_bytes) {
            return Err(BuildError::invalid(
                NAME,
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }

        let realm = config.realm;
        let challenge = |error: &str, description: &str, scope: Option<&[String]>| {
            render_challenge(&realm, Some((error, description)), scope)
        };
        Ok(Jwt {
            challenge_missing: render_challenge(&realm, None, None),
            challenge_scopes_all: challenge(
                "insufficient_scope",
                AuthError::InsufficientScope(Requirement::ScopesAll).description(),
                Some(&config.scopes_all),
            ),
            challenge_scopes_any: challenge(
                "insufficient_scope",
                AuthError::InsufficientScope(Requirement::ScopesAny).description(),
                Some(&config.scopes_any),
            ),
            challenge_claims: challenge(
                "insufficient_scope",
                AuthError::InsufficientScope(Requirement::Claims).description(),
                None,
            ),
            realm,
            issuers,
            introspection,
            cache: TokenCache::new(config.cache_size),
            scopes_all: config.scopes_all,
            scopes_any: config.scopes_any,
            claims,
            subject_header,
            client_id_header,
            scopes_header,
            strip_authorization: config.strip_authorization,
            allow_query_token: config.allow_query_token,
            max_token_bytes: config.max_token_bytes,
            signature_checks: AtomicU64::new(0),
        })
    }

    /// Verifies `token` (a JWT, or an opaque token when introspection is configured),
    /// answering from the verified-token cache when it can. Authorization (scopes, claims)
    /// is not part of it: that is per route, in the request hook.
    pub async fn verify_token(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        self.verify_raw(token.as_bytes()).await
    }

    /// [`Jwt::verify_token`] on a credential's raw bytes. The cache is asked first, so a
    /// cached token (which passed every check before) is hashed and nothing else: its
    /// characters are only scanned on a miss.
    async fn verify_raw(&self, raw: &[u8]) -> Result<Arc<VerifiedToken>, AuthError> {
        if raw.len() > self.max_token_bytes {
            return Err(invalid(TOO_LARGE));
        }
        let hash: TokenHash = Sha256::digest(raw).into();
        let now = unix_now();
        if let Some(hit) = self.cache.get(&hash, now) {
            stats::count_cache(true);
            not_revoked(&hit).await?;
            return Ok(hit);
        }
        stats::count_cache(false);
        let token = checked_token(raw)?;
        if let Some(introspection) = self.introspection_for(token) {
            return self
                .introspect_shared(introspection, token, &hash, now)
                .await;
        }
        let verified = Arc::new(self.verify_jwt(token, now).await?);
        // Cached even when revoked: every use of a cached token asks the list again, so a
        // replayed revoked token costs a lookup rather than a signature check.
        self.cache
            .insert(hash, Arc::clone(&verified), verified.expires_at, now);
        not_revoked(&verified).await?;
        Ok(verified)
    }

    /// The introspection endpoint, when it is the one to ask about `token`: always without
    /// issuers, otherwise only for tokens that are not JWT-shaped.
    fn introspection_for(&self, token: &str) -> Option<&Introspection> {
        let jwt_shaped = token.bytes().filter(|&b| b == b'.').count() == 2;
        self.introspection
            .as_ref()
            .filter(|_| self.issuers.is_empty() || !jwt_shaped)
    }

    /// [`Jwt::verify_token`] without the verified-token cache: every call checks the
    /// signature (or asks the introspection endpoint). For benchmarks of the cold path.
    pub async fn verify_token_uncached(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(invalid(TOO_LARGE));
        }
        let now = unix_now();
        let verified = match self.introspection_for(token) {
            Some(introspection) => self.introspect_call(introspection, token, now).await?.0,
            None => self.verify_jwt(token, now).await?,
        };
        not_revoked(&verified).await?;
        Ok(verified)
    }

    /// How many signature checks were run since the plugin was built (each key tried
    /// counts once).
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Counters of the plugin's expensive work, for metrics, benchmarks and tests.
    pub fn stats(&self) -> JwtStats {
        JwtStats {
            signature_checks: self.signature_checks(),
            cached_tokens: self.cache.len(),
            jwks_fetches: self
                .issuers
                .iter()
                .filter_map(|i| i.remote.as_ref())
                .map(|r| r.fetches())
                .sum(),
            introspections: self.introspection.as_ref().map_or(0, |i| i.calls()),
            introspections_busy: self.introspection.as_ref().map_or(0, |i| i.busy()),
            revocation_fetches: self.revocation_lists().map(|l| l.fetches()).sum(),
            revocation_failures: self.revocation_lists().map(|l| l.failures()).sum(),
            revoked_ids: self.revocation_lists().map(|l| l.len()).sum(),
        }
    }

    fn revocation_lists(&self) -> impl Iterator<Item = &RevocationList> {
        self.issuers
            .iter()
            .filter_map(|i| i.revocation.as_deref())
            .map(|r| &*r.list)
    }

    async fn verify_jwt(&self, token: &str, now: u64) -> Result<VerifiedToken, AuthError> {
        let Unverified {
            alg,
            kid,
            typ,
            claims,
        } = token::parse(token).map_err(invalid)?;
        // The unverified `iss` only chooses whose keys and rules apply; it is trusted once the
        // signature of that issuer's key holds.
        let iss = token::string(&claims, "iss")
            .map_err(invalid)?
            .ok_or(invalid(UNKNOWN_ISSUER))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.iss == iss)
            .ok_or(invalid(UNKNOWN_ISSUER))?;
        if !issuer.algorithms.contains(&alg) {
            return Err(invalid(ALG_NOT_ALLOWED));
        }
        if let Some(expected) = &issuer.typ {
            if !typ_matches(typ.as_deref(), expected) {
                return Err(invalid(BAD_TYP));
            }
        }

        // Cheap checks first, so an expired or misaddressed token costs no signature work.
        let exp = numeric(&claims, "exp")
            .map_err(invalid)?
            .ok_or(invalid(MISSING_CLAIM))?;
        if exp.saturating_add(issuer.leeway) < now {
            return Err(invalid(EXPIRED));
        }
        if let Some(nbf) = numeric(&claims, "nbf").map_err(invalid)? {
            if nbf > now.saturating_add(issuer.leeway) {
                return Err(invalid(NOT_YET_VALID));
            }
        }
        if !audience_ok(&claims, &issuer.audiences).map_err(invalid)? {
            return Err(invalid(AUDIENCE));
        }
        if issuer
            .required_claims
            .iter()
            .any(|name| matches!(claims.get(name), None | Some(Value::Null)))
        {
            return Err(invalid(MISSING_CLAIM));
        }
        // With a revocation list, a token must be nameable on it.
        let revocable = match &issuer.revocation {
            Some(revocation) => {
                let jti = token::string(&claims, "jti")
                    .map_err(invalid)?
                    .filter(|jti| !jti.is_empty())
                    .ok_or(invalid(MISSING_JTI))?;
                Some((Arc::clone(revocation), jti.to_owned()))
            }
            None => None,
        };

        self.check_signature(issuer, token, alg, kid.as_deref())
            .await?;
        let mut verified = self.verified(claims, exp)?;
        verified.revocable = revocable;
        Ok(verified)
    }

    async fn check_signature(
        &self,
        issuer: &Issuer,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<(), AuthError> {
        if KeyKind::of(alg) == KeyKind::Hmac {
            // The issuer's secret is the only HMAC key there is; `kid` cannot pick another.
            return self.try_keys(token, alg, issuer.hmac.iter());
        }
        if let Some(local) = &issuer.local {
            return self.try_keys(token, alg, local.candidates(alg, kid));
        }
        let Some(remote) = &issuer.remote else {
            return Err(invalid(UNKNOWN_KEY));
        };
        let Some(mut set) = remote.keys().await else {
            return Err(AuthError::Unavailable(KEYS_UNAVAILABLE));
        };
        if let Some(kid) = kid {
            if !set.knows_kid(kid) {
                // Maybe the issuer rotated; the floor keeps random kids from hammering it.
                if let Some(newer) = remote.refresh_for_unknown_kid().await {
                    set = newer;
                }
            }
        }
        self.try_keys(token, alg, set.candidates(alg, kid))
    }

    /// Checks the signature of `token` (already parsed, so well formed up to its signature)
    /// under `alg` with each key in turn.
    fn try_keys<'k>(
        &self,
        token: &str,
        alg: Algorithm,
        keys: impl Iterator<Item = &'k VerifyKey>,
    ) -> Result<(), AuthError> {
        let mut keys = keys.peekable();
        if keys.peek().is_none() {
            return Err(invalid(UNKNOWN_KEY));
        }
        let Some((message, signature)) = token.rsplit_once('.') else {
            return Err(invalid(MALFORMED));
        };
        let signature = decode_signature(signature).ok_or(invalid(MALFORMED))?;
        for key in keys {
            self.signature_checks.fetch_add(1, Ordering::Relaxed);
            if key.verify(alg, message.as_bytes(), &signature) {
                return Ok(());
            }
        }
        Err(invalid(BAD_SIGNATURE))
    }

    /// Introspects `token` through the caches and the single flight: a cached answer is
    /// used; a call already in flight for the same token is waited for; otherwise this
    /// request makes the call, caches its outcome (refusals too) and hands it to everyone
    /// who waited.
    async fn introspect_shared(
        &self,
        introspection: &Introspection,
        token: &str,
        hash: &TokenHash,
        now: u64,
    ) -> Result<Arc<VerifiedToken>, AuthError> {
        enum Role {
            Follow(introspect::Flight),
            Lead(tokio::sync::watch::Sender<introspect::Outcome>),
        }
        loop {
            let role = {
                let mut flights = introspection
                    .flights
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                // Asked under the lock: a call caches its outcome before it leaves the map,
                // so one that just ended is seen here rather than repeated.
                if let Some(description) = introspection.refused.get(hash, now) {
                    return Err(invalid(description));
                }
                if let Some(hit) = self.cache.get(hash, now) {
                    return Ok(hit);
                }
                match flights.get(hash) {
                    Some(flight) => Role::Follow(flight.clone()),
                    None => {
                        let (tx, rx) = tokio::sync::watch::channel(None);
                        flights.insert(*hash, rx);
                        Role::Lead(tx)
                    }
                }
            };
            match role {
                Role::Lead(tx) => {
                    let in_flight = FlightGuard {
                        flights: &introspection.flights,
                        hash: *hash,
                    };
                    let outcome = match self.introspect_call(introspection, token, now).await {
                        Ok((verified, until)) => {
                            let verified = Arc::new(verified);
                            self.cache.insert(*hash, Arc::clone(&verified), until, now);
                            Ok(verified)
                        }
                        Err(AuthError::InvalidToken(description)) => {
                            introspection.refused.insert(
                                *hash,
                                description,
                                now + introspection.cache_ttl,
                                now,
                            );
                            Err(invalid(description))
                        }
                        // Not cached: the next request asks again.
                        Err(other) => Err(other),
                    };
                    drop(in_flight);
                    tx.send_replace(Some(outcome.clone()));
                    return outcome;
                }
                Role::Follow(mut flight) => {
                    // Closed without a value when the leader went away; a value sent just
                    // before closing is still read.
                    let waited = flight.wait_for(Option::is_some).await.map(|v| v.clone());
                    let outcome = match waited {
                        Ok(outcome) => outcome,
                        Err(_) => flight.borrow().clone(),
                    };
                    if let Some(outcome) = outcome {
                        return outcome;
                    }
                    // The request making the call went away before it ended: try again.
                }
            }
        }
    }

    /// One call to the introspection endpoint, in one of its slots, and what the answer means
    /// for the token: the verified token and until when it may be cached, or why not.
    async fn introspect_call(
        &self,
        introspection: &Introspection,
        token: &str,
        now: u64,
    ) -> Result<(VerifiedToken, u64), AuthError> {
        let Some(slot) = introspection.slot().await else {
            log::warn!(
                "jwt: all {} introspection slots stayed busy; answering 503",
                introspection.max_concurrent
            );
            return Err(AuthError::Unavailable(INTROSPECTION_BUSY));
        };
        let answer = introspection.introspect(token).await;
        drop(slot);
        let claims = match answer {
            Ok(Answer::Active(claims)) => claims,
            Ok(Answer::Inactive) => return Err(invalid(INACTIVE)),
            Err(e) => {
                log::warn!("jwt: token introspection failed: {e}");
                return Err(AuthError::Unavailable(INTROSPECTION_UNAVAILABLE));
            }
        };
        let exp = numeric(&claims, "exp").map_err(invalid)?;
        if exp.is_some_and(|exp| exp <= now) {
            return Err(invalid(INACTIVE));
        }
        if !audience_ok(&claims, &introspection.audiences).map_err(invalid)? {
            return Err(invalid(AUDIENCE));
        }
        if let Some(expected) = &introspection.issuer {
            if token::string(&claims, "iss").map_err(invalid)? != Some(expected.as_str()) {
                return Err(invalid(UNKNOWN_ISSUER));
            }
        }
        let until = now + introspection.cache_ttl;
        let until = exp.map_or(until, |exp| exp.min(until));
        let verified = self.verified(claims, exp.unwrap_or(until))?;
        Ok((verified, until))
    }

    /// Reads the identity out of verified claims and renders the headers it is forwarded in.
    fn verified(
        &self,
        claims: Map<String, Value>,
        expires_at: u64,
    ) -> Result<VerifiedToken, AuthError> {
        let subject = token::string(&claims, "sub").map_err(invalid)?;
        let client_id = match token::string(&claims, "client_id").map_err(invalid)? {
            Some(id) => Some(id),
            None => token::string(&claims, "azp").map_err(invalid)?,
        };
        let scopes = token::scopes(&claims).map_err(invalid)?;
        let value = |header: &Option<IdentityHeader>, text: Option<&str>| match (header, text) {
            (Some(_), Some(text)) if !text.is_empty() => HeaderValue::from_str(text)
                .map(Some)
                .map_err(|_| invalid(UNFORWARDABLE)),
            _ => Ok(None),
        };
        let subject_value = value(&self.subject_header, subject)?;
        let client_id_value = value(&self.client_id_header, client_id)?;
        let scopes_value = value(&self.scopes_header, Some(&scopes.join(" ")))?;
        let identity = Arc::new(Identity {
            subject: subject.unwrap_or_default().to_owned(),
            client_id: client_id.map(str::to_owned),
            scopes,
        });
        Ok(VerifiedToken {
            claims,
            expires_at,
            identity,
            subject_value,
            client_id_value,
            scopes_value,
            revocable: None,
        })
    }

    fn authorize(&self, token: &VerifiedToken) -> Result<(), AuthError> {
        let has = |scope: &String| token.identity.scopes.iter().any(|s| s == scope);
        if !self.scopes_all.iter().all(has) {
            return Err(AuthError::InsufficientScope(Requirement::ScopesAll));
        }
        if !self.scopes_any.is_empty() && !self.scopes_any.iter().any(has) {
            return Err(AuthError::InsufficientScope(Requirement::ScopesAny));
        }
        let claims_ok = self
            .claims
            .iter()
            .all(|(name, allowed)| claim_matches(token.claims.get(name), allowed));
        if !claims_ok {
            return Err(AuthError::InsufficientScope(Requirement::Claims));
        }
        Ok(())
    }

    /// The bearer token of the request, from `Authorization` or (where allowed) the
    /// `access_token` query parameter.
    fn credential<'r>(&self, req: &'r RequestHeader) -> Result<Credential<'r>, AuthError> {
        let mut values = req.headers.get_all(AUTHORIZATION).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(AuthError::InvalidRequest(DUPLICATE_AUTHORIZATION));
        }
        let from_header = match first {
            Some(value) => self.bearer(value.as_bytes())?,
            None => None,
        };
        let from_query = self.query_token(req)?;
        match (from_header, from_query) {
            (Some(_), Some(_)) => Err(AuthError::InvalidRequest(TWO_METHODS)),
            (Some(token), None) => Ok(Credential::Header(token)),
            (None, Some(token)) => Ok(Credential::Query(token)),
            (None, None) => Ok(Credential::Absent),
        }
    }

    /// The token of `Bearer <token>`; `None` for another scheme, which RFC 6750 §3.1 treats
    /// as no credentials at all.
    fn bearer<'r>(&self, value: &'r [u8]) -> Result<Option<&'r [u8]>, AuthError> {
        let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
            Some(i) => value.split_at(i),
            None => (value, &b""[..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Ok(None);
        }
        let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
        self.sized(&rest[start..]).map(Some)
    }

    /// The size checks every credential gets before anything else looks at it.
    fn sized<'t>(&self, token: &'t [u8]) -> Result<&'t [u8], AuthError> {
        if token.is_empty() {
            return Err(AuthError::InvalidRequest(EMPTY_TOKEN));
        }
        if token.len() > self.max_token_bytes {
            return Err(invalid(TOO_LARGE));
        }
        Ok(token)
    }

    fn query_token<'r>(&self, req: &'r RequestHeader) -> Result<Option<Cow<'r, str>>, AuthError> {
        let Some(query) = req.uri.query() else {
            return Ok(None);
        };
        let mut found = None;
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if name != QUERY_PARAM {
                continue;
            }
            if !self.allow_query_token {
                return Err(AuthError::InvalidRequest(QUERY_NOT_ALLOWED));
            }
            if found.replace(value).is_some() {
                return Err(AuthError::InvalidRequest(REPEATED_QUERY_TOKEN));
            }
        }
        let Some(raw) = found else {
            return Ok(None);
        };
        if raw.len() > self.max_token_bytes.saturating_mul(3) {
            return Err(invalid(TOO_LARGE));
        }
        let token = percent_decode(raw).ok_or(AuthError::InvalidRequest(MALFORMED_CREDENTIALS))?;
        self.sized(token.as_bytes())?;
        Ok(Some(token))
    }

    async fn authenticate(
        &self,
        req: &RequestHeader,
    ) -> Result<(Arc<VerifiedToken>, bool), AuthError> {
        match self.credential(req)? {
            Credential::Absent => Err(AuthError::MissingToken),
            Credential::Header(token) => Ok((self.verify_raw(token).await?, false)),
            Credential::Query(token) => Ok((self.verify_raw(token.as_bytes()).await?, true)),
        }
    }

    /// The answer to a refused request: status, `WWW-Authenticate`, `Cache-Control: no-store`
    /// and a small `application/problem+json` body, like the gateway's own errors.
    fn reject(&self, err: AuthError, ctx: &PluginCtx, req: &RequestHeader) -> PluginResponse {
        let challenge = match err {
            AuthError::MissingToken => Some(self.challenge_missing.clone()),
            AuthError::InvalidRequest(d) => Some(render_challenge(
                &self.realm,
                Some(("invalid_request", d)),
                None,
            )),
            AuthError::InvalidToken(d) => Some(render_challenge(
                &self.realm,
                Some(("invalid_token", d)),
                None,
            )),
            AuthError::InsufficientScope(Requirement::ScopesAll) => {
                Some(self.challenge_scopes_all.clone())
            }
            AuthError::InsufficientScope(Requirement::ScopesAny) => {
                Some(self.challenge_scopes_any.clone())
            }
            AuthError::InsufficientScope(Requirement::Claims) => {
                Some(self.challenge_claims.clone())
            }
            AuthError::Unavailable(_) => None,
        };
        log::debug!(
            "jwt: route {}: refused with {}: {err}",
            ctx.route_id,
            err.status().as_u16()
        );
        let (slug, title) = match err {
            AuthError::MissingToken => ("missing_token", "Authentication required"),
            AuthError::InvalidRequest(_) => ("invalid_request", "Invalid authentication request"),
            AuthError::InvalidToken(_) => ("invalid_token", "Invalid access token"),
            AuthError::InsufficientScope(_) => ("insufficient_scope", "Insufficient scope"),
            AuthError::Unavailable(_) => ("auth_unavailable", "Authentication unavailable"),
        };
        let kind = format!("urn:portico:problem:{slug}");
        let body = serde_json::to_vec(&Problem {
            kind: &kind,
            title,
            status: err.status().as_u16(),
            detail: err.description(),
            instance: req.uri.path(),
            request_id: ctx.request_id.as_deref(),
        })
        .unwrap_or_default();

        let mut resp = PluginResponse {
            status: err.status(),
            headers: Vec::with_capacity(4),
            body: Bytes::from(body),
        };
        if let Some(challenge) = challenge {
            resp.headers.push((WWW_AUTHENTICATE, challenge));
        }
        if let Some(seconds) = err.retry_after() {
            resp.headers.push((RETRY_AFTER, HeaderValue::from(seconds)));
        }
        resp.headers
            .push((CACHE_CONTROL, HeaderValue::from_static("no-store")));
        resp.headers.push((
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        resp
    }
}

const QUERY_PARAM: &str = "access_token";

enum Credential<'r> {
    Absent,
    Header(&'r [u8]),
    Query(Cow<'r, str>),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    instance: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

#[async_trait]
impl Plugin for Jwt {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Identical tables verify identically, so their routes can share one instance and
    /// its verified-token cache (of `cache_size` tokens for all of them). Not with
    /// `introspection`: its `max_concurrent` bounds the calls of each instance.
    fn shareable(&self) -> bool {
        self.introspection.is_none()
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            ..Hooks::default()
        }
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        [
            &self.subject_header,
            &self.client_id_header,
            &self.scopes_header,
        ]
        .into_iter()
        .flatten()
        .map(|h| h.name.clone())
        .collect()
    }

    async fn request(&self, ctx: &mut PluginCtx, req: &mut RequestHeader) -> Flow {
        let (token, from_query) = match self.authenticate(req).await {
            Ok(found) => found,
            Err(err) => {
                stats::count_failure(&err);
                return Flow::Respond(self.reject(err, ctx, req));
            }
        };
        if let Err(err) = self.authorize(&token) {
            stats::count_failure(&err);
            return Flow::Respond(self.reject(err, ctx, req));
        }
        stats::count_verified();

        // Identity headers are the gateway's to set: whatever the client sent under these
        // names goes. An insert replaces every value the client sent, so only a header this
        // token has no value for needs removing. A refused request reaches no upstream, so
        // it needs neither.
        for (header, value) in [
            (&self.subject_header, &token.subject_value),
            (&self.client_id_header, &token.client_id_value),
            (&self.scopes_header, &token.scopes_value),
        ] {
            let Some(header) = header else { continue };
            match value {
                Some(value) => {
                    if let Err(e) = req.insert_header(header.case.clone(), value.clone()) {
                        // Unreachable (the name was checked at build time); never forward
                        // what the client sent under it.
                        log::warn!("jwt: cannot set {}: {e}", header.name);
                        req.remove_header(&header.name);
                    }
                }
                None => {
                    req.remove_header(&header.name);
                }
            }
        }
        if self.strip_authorization {
            if from_query {
                if let Some(uri) = without_query_token(&req.uri) {
                    req.set_uri(uri);
                }
            } else {
                req.remove_header(&AUTHORIZATION);
            }
        }
        ctx.identity = Some(token.identity.clone());
        Flow::Continue
    }
}

fn build_issuer(i: usize, c: IssuerConfig) -> Result<Issuer, BuildError> {
    let field = |name: &str| format!("issuers[{i}].{name}");
    let err = |name: &str, message: String| BuildError::invalid(NAME, field(name), message);

    if c.issuer.is_empty() {
        return Err(err("issuer", "must not be empty".to_owned()));
    }
    if c.audiences.is_empty() || c.audiences.iter().any(String::is_empty) {
        return Err(err(
            "audiences",
            "list the audiences (`aud`) this route accepts; tokens for other audiences are refused"
                .to_owned(),
        ));
    }
    if c.algorithms.is_empty() {
        return Err(err("algorithms", "list at least one algorithm".to_owned()));
    }

    let mut algorithms = Vec::with_capacity(c.algorithms.len());
    for (j, name) in c.algorithms.iter().enumerate() {
        let at = format!("algorithms[{j}]");
        if name.eq_ignore_ascii_case("none") {
            return Err(err(
                &at,
                "`none` means unsigned tokens, which are never accepted".to_owned(),
            ));
        }
        let alg = keys::parse_alg(name).ok_or_else(|| {
            err(
                &at,
                format!(
                    "unknown algorithm `{name}` (supported, spelled exactly: ES256, ES384, \
                     RS256, RS384, RS512, PS256, PS384, PS512, EdDSA; HS256, HS384, HS512 \
                     with `hmac_secret`)"
                ),
            )
        })?;
        if KeyKind::of(alg) == KeyKind::Hmac {
            let Some(secret) = &c.hmac_secret else {
                return Err(err(
                    &at,
                    format!(
                        "{name} needs this issuer's `hmac_secret`: an HMAC key is never taken \
                         from a key set or a PEM file"
                    ),
                ));
            };
            let needed = match alg {
                Algorithm::HS384 => 48,
                Algorithm::HS512 => 64,
                _ => 32,
            };
            if secret.len() < needed {
                return Err(err(
                    "hmac_secret",
                    format!("{name} needs a secret of at least {needed} bytes (RFC 7518 §3.2)"),
                ));
            }
        }
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    let hmac = match &c.hmac_secret {
        Some(_) if !algorithms.iter().any(|a| KeyKind::of(*a) == KeyKind::Hmac) => {
            return Err(err(
                "hmac_secret",
                "is set, but `algorithms` allows no HS256, HS384 or HS512".to_owned(),
            ))
        }
        Some(secret) => Some(VerifyKey::hmac(secret.as_bytes())),
        None => None,
    };
    let asymmetric: Vec<Algorithm> = algorithms
        .iter()
        .copied()
        .filter(|a| KeyKind::of(*a) != KeyKind::Hmac)
        .collect();

    let has_keys = c.jwks_url.is_some() || !c.keys.is_empty();
    if c.jwks_url.is_some() && !c.keys.is_empty() {
        return Err(err(
            "keys",
            "give either `jwks_url` or `keys`, not both".to_owned(),
        ));
    }
    if !asymmetric.is_empty() && !has_keys {
        return Err(err(
            "jwks_url",
            format!(
                "{} need the issuer's public keys: set `jwks_url` or `keys`",
                asymmetric
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if asymmetric.is_empty() && has_keys {
        return Err(err(
            if c.jwks_url.is_some() {
                "jwks_url"
            } else {
                "keys"
            },
            "`algorithms` allows no public-key algorithm, so these keys would never be used"
                .to_owned(),
        ));
    }

    let mut local = None;
    if !c.keys.is_empty() {
        let mut all = Vec::new();
        for (j, path) in c.keys.iter().enumerate() {
            let at = format!("keys[{j}]");
            let loaded = keys::load_file(path).map_err(|e| err(&at, e))?;
            if let Some(key) = loaded
                .iter()
                .find(|k| !asymmetric.iter().any(|a| KeyKind::of(*a) == k.kind()))
            {
                return Err(err(
                    &at,
                    format!(
                        "`{path}` holds a {:?} key, which none of `algorithms` uses",
                        key.kind()
                    ),
                ));
            }
            all.extend(loaded);
        }
        local = Some(KeySet::new(all));
    }

    let mut remote = None;
    if let Some(url) = &c.jwks_url {
        check_url(url).map_err(|e| err("jwks_url", e))?;
        if c.jwks_min_refresh < Duration::from_secs(1) {
            return Err(err("jwks_min_refresh", "must be at least 1s".to_owned()));
        }
        if c.jwks_refresh < c.jwks_min_refresh {
            return Err(err(
                "jwks_refresh",
                "must not be shorter than `jwks_min_refresh`".to_owned(),
            ));
        }
        check_timeout(c.jwks_timeout).map_err(|e| err("jwks_timeout", e))?;
        remote = Some(RemoteKeys::shared(
            url,
            c.jwks_refresh,
            c.jwks_min_refresh,
            c.jwks_timeout,
        ));
    }

    for (j, name) in c.required_claims.iter().enumerate() {
        if name.is_empty() {
            return Err(err(
                &format!("required_claims[{j}]"),
                "must not be empty".to_owned(),
            ));
        }
    }
    // `typ = ""` is the explicit opt-out, for issuers that mint plain JWTs.
    let typ = if c.typ.is_empty() {
        None
    } else {
        let bare = match c.typ.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &c.typ[12..],
            _ => c.typ.as_str(),
        };
        if bare.is_empty() {
            return Err(err(
                "typ",
                "must name a media type, e.g. \"at+jwt\" (the default), or be \"\" to \
                 accept tokens of any type"
                    .to_owned(),
            ));
        }
        Some(bare.to_ascii_lowercase())
    };

    if c.leeway > MAX_LEEWAY {
        return Err(err(
            "leeway",
            format!(
                "must be at most {}s: a leeway keeps expired tokens valid that much longer",
                MAX_LEEWAY.as_secs()
            ),
        ));
    }
    let leeway = c.leeway.as_secs();
    let revocation = build_revocation(&c, &err)?;

    Ok(Issuer {
        iss: c.issuer,
        audiences: c.audiences,
        algorithms,
        leeway,
        required_claims: c.required_claims,
        typ,
        hmac,
        local,
        remote,
        revocation,
    })
}

/// The issuer's revocation list, when it names one.
fn build_revocation(
    c: &IssuerConfig,
    err: &dyn Fn(&str, String) -> BuildError,
) -> Result<Option<Arc<Revocation>>, BuildError> {
    let Some(url) = &c.revocation_url else {
        for (name, set) in [
            ("revocation_client_id", c.revocation_client_id.is_some()),
            (
                "revocation_client_secret",
                c.revocation_client_secret.is_some(),
            ),
            ("revocation_fail_open", c.revocation_fail_open),
        ] {
            if set {
                return Err(err(name, "is set, but `revocation_url` is not".to_owned()));
            }
        }
        return Ok(None);
    };
    check_url(url).map_err(|e| err("revocation_url", e))?;
    if c.revocation_refresh < MIN_REVOCATION_REFRESH {
        return Err(err(
            "revocation_refresh",
            format!("must be at least {}s", MIN_REVOCATION_REFRESH.as_secs()),
        ));
    }
    check_timeout(c.revocation_timeout).map_err(|e| err("revocation_timeout", e))?;
    if c.revocation_max_age < c.revocation_refresh {
        return Err(err(
            "revocation_max_age",
            "must not be shorter than `revocation_refresh`".to_owned(),
        ));
    }
    let authorization = match (&c.revocation_client_id, &c.revocation_client_secret) {
        (None, None) => None,
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            Some(introspect::basic_authorization(id, secret))
        }
        (Some(id), _) if id.is_empty() => {
            return Err(err("revocation_client_id", "must not be empty".to_owned()))
        }
        (Some(_), Some(_)) => {
            return Err(err(
                "revocation_client_secret",
                "must not be empty".to_owned(),
            ))
        }
        (Some(_), None) => {
            return Err(err(
                "revocation_client_secret",
                "is required with `revocation_client_id`".to_owned(),
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "revocation_client_id",
                "is required with `revocation_client_secret`".to_owned(),
            ))
        }
    };
    Ok(Some(Arc::new(Revocation {
        list: RevocationList::shared(
            url,
            c.revocation_refresh,
            c.revocation_timeout,
            authorization,
        ),
        max_age: c.revocation_max_age,
        fail_open: c.revocation_fail_open,
    })))
}

fn build_introspection(
    c: IntrospectionConfig,
    cache_size: usize,
) -> Result<Introspection, BuildError> {
    let err = |name: &str, message: String| {
        BuildError::invalid(NAME, format!("introspection.{name}"), message)
    };
    check_url(&c.url).map_err(|e| err("url", e))?;
    if c.client_id.is_empty() {
        return Err(err("client_id", "must not be empty".to_owned()));
    }
    if c.client_secret.is_empty() {
        return Err(err("client_secret", "must not be empty".to_owned()));
    }
    if c.cache_ttl < Duration::from_secs(1) {
        return Err(err("cache_ttl", "must be at least 1s".to_owned()));
    }
    check_timeout(c.timeout).map_err(|e| err("timeout", e))?;
    if c.audiences.is_empty() || c.audiences.iter().any(String::is_empty) {
        return Err(err(
            "audiences",
            "list the audiences (`aud`) this route accepts: an active token for another \
             service must not open this one"
                .to_owned(),
        ));
    }
    if !(1..=MAX_INTROSPECTION_CONCURRENCY).contains(&c.max_concurrent) {
        return Err(err(
            "max_concurrent",
            format!("must be between 1 and {MAX_INTROSPECTION_CONCURRENCY}"),
        ));
    }
    if c.queue_timeout > Duration::from_secs(60) {
        return Err(err("queue_timeout", "must be at most 60s".to_owned()));
    }
    Ok(Introspection::new(introspect::Settings {
        url: c.url,
        client_id: c.client_id,
        client_secret: c.client_secret,
        cache_ttl: c.cache_ttl,
        timeout: c.timeout,
        audiences: c.audiences,
        issuer: c.issuer,
        cache_size,
        max_concurrent: c.max_concurrent,
        queue_timeout: c.queue_timeout,
    }))
}

/// Keys and introspection answers decide who gets in, so they must come over TLS; plain
/// HTTP is accepted only to the loopback interface (a local token service or sidecar).
fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = parsed.host_str().is_some_and(|host| {
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "`{url}`: plain http is only accepted to a loopback address; use https"
                ))
            }
        }
        other => Err(format!("`{url}`: the scheme must be https, not `{other}`")),
    }
}

fn check_timeout(timeout: Duration) -> Result<(), String> {
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err("must be between 1ms and 60s".to_owned());
    }
    Ok(())
}

fn identity_header(field: &str, name: &str) -> Result<Option<IdentityHeader>, BuildError> {
    if name.is_empty() {
        return Ok(None);
    }
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        BuildError::invalid(NAME, field, format!("`{name}` is not a valid header name"))
    })?;
    if parsed == AUTHORIZATION || parsed == http::header::HOST {
        return Err(BuildError::invalid(
            NAME,
            field,
            format!("`{name}` cannot carry the identity"),
        ));
    }
    Ok(Some(IdentityHeader {
        name: parsed,
        case: Bytes::from(name.to_owned()),
    }))
}

/// A claim matcher value as JSON; `None` for TOML values a JSON claim cannot equal.
fn claim_value(value: &toml::Value) -> Option<Value> {
    match value {
        toml::Value::String(s) => Some(Value::String(s.clone())),
        toml::Value::Integer(n) => Some(Value::from(*n)),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number),
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

/// A credential's characters as RFC 6750 allows them (b64token), as text.
fn checked_token(token: &[u8]) -> Result<&str, AuthError> {
    if !is_b64token(token) {
        return Err(AuthError::InvalidRequest(MALFORMED_CREDENTIALS));
    }
    // b64token is ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| AuthError::InvalidRequest(MALFORMED_CREDENTIALS))
}

/// A claim passes when it equals one of `allowed`, or is an array holding one of them.
fn claim_matches(claim: Option<&Value>, allowed: &[Value]) -> bool {
    match claim {
        Some(Value::Array(items)) => items.iter().any(|item| allowed.contains(item)),
        Some(value) => allowed.contains(value),
        None => false,
    }
}

/// `Bearer realm="…"[, error="…", error_description="…"][, scope="…"]`. Every part was
/// checked to be quoted-string safe (the realm and scopes at build time, the descriptions
/// are constants), so this cannot fail in practice.
fn render_challenge(
    realm: &str,
    error: Option<(&str, &str)>,
    scope: Option<&[String]>,
) -> HeaderValue {
    let mut text = format!("Bearer realm=\"{realm}\"");
    if let Some((code, description)) = error {
        text.push_str(&format!(
            ", error=\"{code}\", error_description=\"{description}\""
        ));
    }
    if let Some(scope) = scope.filter(|s| !s.is_empty()) {
        text.push_str(&format!(", scope=\"{}\"", scope.join(" ")));
    }
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// A token's third segment as bytes: base64url without padding, canonical, as RFC 7515
/// §2 writes it. `None` for anything else.
fn decode_signature(segment: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    URL_SAFE_NO_PAD.decode(segment).ok()
}

/// Percent-decodes a query value (`+` is a space, as forms write it). `None` for a broken
/// escape or a result that is not UTF-8.
fn percent_decode(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The URI without its `access_token` parameters.
fn without_query_token(uri: &Uri) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(name, _)| name) != QUERY_PARAM)
        .collect();
    let mut path_and_query = uri.path().to_owned();
    if !kept.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Refuses a token its issuer's revocation list names (or, failing closed, any token of
/// that issuer while the list is unavailable).
async fn not_revoked(token: &VerifiedToken) -> Result<(), AuthError> {
    let Some((revocation, jti)) = &token.revocable else {
        return Ok(());
    };
    match revocation.status(jti).await {
        revocation::Status::Allowed => Ok(()),
        revocation::Status::Revoked => Err(invalid(REVOKED)),
        revocation::Status::Unavailable => Err(AuthError::Unavailable(REVOCATION_UNAVAILABLE)),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
