//! The OAuth2 endpoints, independent of the HTTP server: the client credentials grant
//! (RFC 6749 §4.4) issuing RFC 9068 JWT access tokens, introspection (RFC 7662),
//! revocation (RFC 7009), the JWKS and the authorization server metadata (RFC 8414).
//!
//! Errors follow RFC 6749 §5.2 exactly (JSON `error`/`error_description`, 401 with
//! `WWW-Authenticate: Basic` for `invalid_client`). Log lines are JSON objects naming the
//! client and the token id, never a secret or a token.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use super::config::{Argon2Cost, AuthConfig};
use super::keys::KeyManager;
use super::limiter::{AuthLimiter, Refusal};
use super::metrics::AUTH_METRICS;
use super::secrets;
use super::store::{ClientRecord, Store};
use super::unix_now;

/// Longest client id or secret accepted before any lookup.
const MAX_CREDENTIAL: usize = 512;
/// Longest token accepted by introspection and revocation.
const MAX_TOKEN: usize = 16 * 1024;

/// An HTTP request as the endpoints see it.
pub struct Request {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
    /// The source address the limits count by: the peer, or the client a trusted proxy
    /// names in `X-Forwarded-For` (see `server::client_address`).
    pub client: IpAddr,
}

/// An HTTP response to send.
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl Reply {
    fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: serde_json::to_vec(value).unwrap_or_default().into(),
        }
    }

    /// Token-endpoint style: never cached (RFC 6749 §5.1).
    fn no_store(mut self) -> Reply {
        self.headers
            .push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        self.headers
            .push((header::PRAGMA, HeaderValue::from_static("no-cache")));
        self
    }
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: String,
    pub retry_after: Option<u64>,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status,
            code,
            description: description.into(),
            retry_after: None,
        }
    }
    fn invalid_request(d: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", d)
    }
    fn invalid_client(d: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", d)
    }
    /// 429 before any secret check, with `Retry-After` in whole seconds (at least 1).
    fn throttled(refusal: Refusal) -> Self {
        use super::limiter::Limit;
        let description = match refusal.limit {
            Limit::ClientBackoff => {
                "too many failed authentication attempts for this client from this address; retry later"
            }
            Limit::AddressBackoff => {
                "too many failed authentication attempts from this address; retry later"
            }
            Limit::AddressRate => "too many authentication attempts from this address; retry later",
        };
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "invalid_client", description);
        e.retry_after = Some((refusal.retry_after.as_secs_f64().ceil() as u64).max(1));
        e
    }
    fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the token service could not complete the request",
        )
    }

    /// The metric label: the error code, or `rate_limited`.
    fn reason(&self) -> &'static str {
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limited"
        } else {
            self.code
        }
    }

    fn reply(&self) -> Reply {
        let mut r = Reply::json(
            self.status,
            &json!({ "error": self.code, "error_description": self.description }),
        )
        .no_store();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers.push((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="portico""#),
            ));
        }
        if let Some(secs) = self.retry_after {
            r.headers
                .push((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        r
    }
}

/// The RFC 9068 claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// `aud` is a string for one audience and an array for several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The JOSE header members introspection and revocation read.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// A token as introspection and revocation read it before any key is chosen: split into
/// its segments, the JOSE header decoded.
struct Unverified<'t> {
    header: JoseHeader,
    /// The signed input: the first two segments, as sent.
    signed: &'t str,
    payload: &'t str,
    signature: &'t str,
}

impl<'t> Unverified<'t> {
    /// `None` for anything that is not three segments with a JOSE header that is a JSON
    /// object in UTF-8 (serde reads a struct from an array too, and checks UTF-8 only in
    /// the strings it reads, not in the members it skips).
    fn split(token: &'t str) -> Option<Unverified<'t>> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let signed = &token[..header.len() + 1 + payload.len()];
        let header = URL_SAFE_NO_PAD.decode(header).ok()?;
        let header = std::str::from_utf8(&header).ok()?;
        if !header.trim_start().starts_with('{') {
            return None;
        }
        let header = serde_json::from_str::<JoseHeader>(header).ok()?;
        Some(Unverified {
            header,
            signed,
            payload,
            signature,
        })
    }
}

/// The token service's state, shared by every connection.
pub struct TokenService {
    pub issuer: String,
    pub lifetime: i64,
    pub store: Store,
    pub keys: Arc<KeyManager>,
    pub argon2: Argon2Cost,
    limiter: AuthLimiter,
    /// Bounds concurrent argon2 work (CPU and memory) however many requests arrive.
    hashing: Semaphore,
    /// Checks waiting for a `hashing` slot now, and at most.
    hash_waiting: AtomicUsize,
    max_queued: usize,
    /// Verified against when the client id is unknown, so unknown and known ids cost
    /// the same time: made once at start with the configured cost, the cost new secrets
    /// get.
    dummy_hash: String,
    jwks_max_age: u64,
    metadata: Bytes,
    metadata_paths: Vec<String>,
}

impl TokenService {
    pub fn new(
        config: &AuthConfig,
        issuer: String,
        store: Store,
        keys: Arc<KeyManager>,
    ) -> Result<TokenService, String> {
        let dummy_hash = secrets::hash_secret(&secrets::generate_secret(), &config.argon2)?;
        let metadata = json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/oauth2/token"),
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
            "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "access_token_signing_alg_values_supported": [config.tokens.algorithm.as_str()],
        });
        // RFC 8414 §3: an issuer with a path has its metadata under the well-known prefix
        // followed by that path.
        let issuer_path = issuer
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_default();
        let mut metadata_paths = vec!["/.well-known/oauth-authorization-server".to_string()];
        if !issuer_path.is_empty() {
            metadata_paths.push(format!(
                "/.well-known/oauth-authorization-server{issuer_path}"
            ));
        }
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(TokenService {
            issuer,
            lifetime: config.tokens.lifetime.as_secs().max(1) as i64,
            store,
            keys,
            argon2: config.argon2.clone(),
            limiter: AuthLimiter::new(config.failed_auth.clone(), config.secret_checks.clone()),
            hashing: Semaphore::new(workers * 2),
            hash_waiting: AtomicUsize::new(0),
            max_queued: config.secret_checks.max_queued,
            dummy_hash,
            jwks_max_age: config.keys.jwks_max_age.as_secs(),
            metadata: serde_json::to_vec(&metadata).unwrap_or_default().into(),
            metadata_paths,
        })
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request) -> Reply {
        let path = req.path.as_str();
        let endpoint = match path {
            "/oauth2/token" | "/oauth2/introspect" | "/oauth2/revoke" => Some("POST"),
            "/.well-known/jwks.json" | "/oauth2/revoked" | "/healthz" => Some("GET"),
            p if self.metadata_paths.iter().any(|m| m == p) => Some("GET"),
            _ => None,
        };
        let Some(allowed) = endpoint else {
            return Reply::json(StatusCode::NOT_FOUND, &json!({ "error": "not_found" }));
        };
        let method_ok =
            req.method.as_str() == allowed || (allowed == "GET" && req.method == Method::HEAD);
        if !method_ok {
            let mut r = Reply::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method_not_allowed" }),
            );
            r.headers.push((
                header::ALLOW,
                HeaderValue::from_static(if allowed == "GET" {
                    "GET, HEAD"
                } else {
                    "POST"
                }),
            ));
            return r;
        }
        match path {
            "/oauth2/token" => self.token(&req).await,
            "/oauth2/introspect" => self.introspect(&req).await,
            "/oauth2/revoke" => self.revoke(&req).await,
            "/oauth2/revoked" => self.revoked(&req).await,
            "/.well-known/jwks.json" => {
                let body = self.keys.current().jwks.clone();
                Reply {
                    status: StatusCode::OK,
                    headers: vec![
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/jwk-set+json"),
                        ),
                        (
                            header::CACHE_CONTROL,
                            HeaderValue::from_str(&format!(
                                "public, max-age={}",
                                self.jwks_max_age
                            ))
                            .unwrap_or(HeaderValue::from_static("no-cache")),
                        ),
                    ],
                    body,
                }
            }
            "/healthz" => Reply::json(StatusCode::OK, &json!({ "status": "ok" })),
            _ => Reply {
                status: StatusCode::OK,
                headers: vec![(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body: self.metadata.clone(),
            },
        }
    }

    async fn token(&self, req: &Request) -> Reply {
        match self.issue(req).await {
            Ok(r) => r,
            Err(e) => self.refused("token", req, None, e),
        }
    }

    /// Counts, logs and renders a refusal.
    fn refused(
        &self,
        endpoint: &str,
        req: &Request,
        client_id: Option<&str>,
        e: OAuthError,
    ) -> Reply {
        AUTH_METRICS
            .token_failures
            .with_label_values(&[e.reason()])
            .inc();
        log::info!(
            "{}",
            json!({
                "event": "request_refused",
                "endpoint": endpoint,
                "reason": e.reason(),
                "status": e.status.as_u16(),
                "client_id": client_id,
                "peer": req.peer.ip().to_string(),
            })
        );
        e.reply()
    }

    async fn issue(&self, req: &Request) -> Result<Reply, OAuthError> {
        let form = Form::parse(req)?;
        match form.single("grant_type")? {
            None => return Err(OAuthError::invalid_request("grant_type is required")),
            Some("client_credentials") => {}
            Some(_) => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "only the client_credentials grant is supported",
                ))
            }
        }
        let client = self.authenticate(req, &form).await?;

        let scopes: Vec<String> = match form.single("scope")? {
            None => client.scopes.clone(),
            Some(requested) => {
                let mut granted: Vec<String> = Vec::new();
                for s in requested.split(' ').filter(|s| !s.is_empty()) {
                    if !valid_scope_token(s) {
                        return Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_scope",
                            "the scope parameter is malformed",
                        ));
                    }
                    if !client.scopes.iter().any(|a| a == s) {
                        return Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_scope",
                            format!("scope `{s}` is not allowed for this client"),
                        ));
                    }
                    if !granted.iter().any(|g| g == s) {
                        granted.push(s.to_string());
                    }
                }
                granted
            }
        };

        // `audience` (common practice) and `resource` (RFC 8707) both select audiences.
        let mut audiences: Vec<String> = Vec::new();
        for a in form.all("audience").chain(form.all("resource")) {
            if !client.audiences.iter().any(|allowed| allowed == a) {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "the requested audience is not allowed for this client",
                ));
            }
            if !audiences.iter().any(|x| x == a) {
                audiences.push(a.to_string());
            }
        }
        if audiences.is_empty() {
            match client.audiences.first() {
                Some(a) => audiences.push(a.clone()),
                None => {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_target",
                        "this client has no audience configured",
                    ))
                }
            }
        }

        let now = unix_now();
        let jti = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            sub: client.client_id.clone(),
            aud: if audiences.len() == 1 {
                Audience::One(audiences[0].clone())
            } else {
                Audience::Many(audiences.clone())
            },
            exp: now + self.lifetime,
            iat: now,
            nbf: now,
            jti: jti.clone(),
            client_id: client.client_id.clone(),
            scope: scopes.join(" "),
        };
        let keys = self.keys.current();
        let Some(signer) = keys.signer(now) else {
            log::error!("{}", json!({ "event": "no_signing_key" }));
            return Err(OAuthError::server_error());
        };
        let token = signer.sign_token(&claims).map_err(|e| {
            log::error!(
                "{}",
                json!({ "event": "signing_failed", "kid": signer.kid, "error": e })
            );
            OAuthError::server_error()
        })?;
        AUTH_METRICS.tokens_issued.inc();
        log::info!(
            "{}",
            json!({
                "event": "token_issued",
                "client_id": client.client_id,
                "jti": jti,
                "kid": signer.kid,
                "scope": claims.scope,
                "aud": audiences,
                "exp": claims.exp,
                "peer": req.peer.ip().to_string(),
            })
        );
        let mut body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.lifetime,
        });
        if !claims.scope.is_empty() {
            body["scope"] = json!(claims.scope);
        }
        Ok(Reply::json(StatusCode::OK, &body).no_store())
    }

    async fn introspect(&self, req: &Request) -> Reply {
        let result = async {
            let form = Form::parse(req)?;
            let caller = self.authenticate(req, &form).await?;
            let token = form
                .single("token")?
                .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
            let claims = self.inspect(token, true).await?;
            // RFC 7662 §4: a resource server must not learn about tokens it has no business
            // with. A client may introspect its own tokens; another client's only with the
            // `introspect` right (a gateway). Everyone else hears "inactive", which says
            // nothing about whether the token exists.
            let claims = match claims {
                Some(c) if c.client_id != caller.client_id && !caller.introspect => {
                    AUTH_METRICS.introspection_refusals.inc();
                    log::info!(
                        "{}",
                        json!({ "event": "introspection_not_permitted", "caller": caller.client_id, "jti": c.jti })
                    );
                    None
                }
                other => other,
            };
            Ok::<_, OAuthError>((caller, claims))
        }
        .await;
        match result {
            Ok((caller, Some(claims))) => {
                AUTH_METRICS
                    .introspections
                    .with_label_values(&["active"])
                    .inc();
                log::info!(
                    "{}",
                    json!({ "event": "introspected", "caller": caller.client_id, "jti": claims.jti, "active": true })
                );
                let mut body = serde_json::to_value(&claims).unwrap_or_default();
                body["active"] = json!(true);
                body["token_type"] = json!("Bearer");
                Reply::json(StatusCode::OK, &body).no_store()
            }
            Ok((caller, None)) => {
                AUTH_METRICS
                    .introspections
                    .with_label_values(&["inactive"])
                    .inc();
                log::info!(
                    "{}",
                    json!({ "event": "introspected", "caller": caller.client_id, "active": false })
                );
                Reply::json(StatusCode::OK, &json!({ "active": false })).no_store()
            }
            Err(e) => self.refused("introspect", req, None, e),
        }
    }

    async fn revoke(&self, req: &Request) -> Reply {
        let result = async {
            let form = Form::parse(req)?;
            let caller = self.authenticate(req, &form).await?;
            let token = form
                .single("token")?
                .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
            // Expired, foreign or malformed tokens need no revocation: 200 (RFC 7009 §2.2).
            let Some(claims) = self.inspect(token, false).await? else {
                return Ok(None);
            };
            if claims.client_id != caller.client_id {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "the token was not issued to this client",
                ));
            }
            self.store
                .revoke(&claims.jti, claims.exp)
                .await
                .map_err(|e| {
                    log::error!("{}", json!({ "event": "revoke_failed", "error": e }));
                    OAuthError::server_error()
                })?;
            Ok(Some((caller, claims)))
        }
        .await;
        match result {
            Ok(revoked) => {
                if let Some((caller, claims)) = revoked {
                    AUTH_METRICS.revocations.inc();
                    log::info!(
                        "{}",
                        json!({ "event": "token_revoked", "client_id": caller.client_id, "jti": claims.jti })
                    );
                }
                Reply {
                    status: StatusCode::OK,
                    headers: vec![],
                    body: Bytes::new(),
                }
                .no_store()
            }
            Err(e) => self.refused("revoke", req, None, e),
        }
    }

    /// The revocation list gateways poll (`GET /oauth2/revoked`): the `jti` and `exp` of
    /// every revoked token that has not expired yet, so a gateway can refuse a revoked token
    /// from its cache without introspecting each one. Callers authenticate as for
    /// introspection (any registered client, `client_secret_basic`): the ids are random and
    /// useless without the tokens, but the list still tells when and how often tokens are
    /// revoked, which is nobody else's business.
    async fn revoked(&self, req: &Request) -> Reply {
        let result = async {
            // A GET has no form: Basic credentials only.
            let caller = self.authenticate(req, &Form { params: Vec::new() }).await?;
            let list = self.store.list_revoked(unix_now()).await.map_err(|e| {
                log::error!("{}", json!({ "event": "database_error", "error": e }));
                OAuthError::server_error()
            })?;
            Ok::<_, OAuthError>((caller, list))
        }
        .await;
        match result {
            Ok((caller, list)) => {
                log::debug!(
                    "{}",
                    json!({ "event": "revocation_list", "caller": caller.client_id, "entries": list.len() })
                );
                let revoked: Vec<serde_json::Value> = list
                    .into_iter()
                    .map(|(jti, exp)| json!({ "jti": jti, "exp": exp }))
                    .collect();
                Reply::json(StatusCode::OK, &json!({ "revoked": revoked })).no_store()
            }
            Err(e) => self.refused("revoked", req, None, e),
        }
    }

    /// The claims of a token this service issued and that is still good: our signature
    /// and issuer, `typ: at+jwt`, not revoked, its client still registered; with
    /// `check_time`, also within `nbf`..`exp`. `None` for anything else.
    async fn inspect(
        &self,
        token: &str,
        check_time: bool,
    ) -> Result<Option<AccessClaims>, OAuthError> {
        let Some(Unverified {
            header,
            signed,
            payload,
            signature,
        }) = Unverified::split(token)
        else {
            return Ok(None);
        };
        if header.typ.as_deref() != Some("at+jwt") {
            return Ok(None);
        }
        let Some(kid) = header.kid.as_deref() else {
            return Ok(None);
        };
        {
            let keys = self.keys.current();
            let Some(verifier) = keys.verifier(kid) else {
                return Ok(None);
            };
            if header.alg != verifier.alg.as_str() {
                return Ok(None);
            }
            let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
                return Ok(None);
            };
            if !verifier.verify(signed.as_bytes(), &signature) {
                return Ok(None);
            }
        }
        let Some(claims) = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|c| serde_json::from_slice::<AccessClaims>(&c).ok())
        else {
            return Ok(None);
        };
        if claims.iss != self.issuer {
            return Ok(None);
        }
        // No leeway: the service's own clock decides its own tokens.
        let now = unix_now();
        if check_time && (claims.exp < now || claims.nbf > now) {
            return Ok(None);
        }
        let store_error = |e: String| {
            log::error!("{}", json!({ "event": "database_error", "error": e }));
            OAuthError::server_error()
        };
        if self
            .store
            .is_revoked(&claims.jti)
            .await
            .map_err(store_error)?
        {
            return Ok(None);
        }
        if self
            .store
            .get_client(&claims.client_id)
            .await
            .map_err(store_error)?
            .is_none()
        {
            return Ok(None);
        }
        Ok(Some(claims))
    }

    /// Client authentication by `client_secret_basic` or `client_secret_post` (exactly
    /// one), with failure limiting.
    async fn authenticate(&self, req: &Request, form: &Form) -> Result<ClientRecord, OAuthError> {
        let (client_id, secret) = client_credentials(req, form)?;
        // Every limit is checked before the database and the hash: a refused attempt
        // costs a map lookup, not 19 MiB of argon2.
        if let Err(refusal) = self.limiter.admit(&client_id, req.client) {
            AUTH_METRICS
                .throttled
                .with_label_values(&[refusal.limit.label()])
                .inc();
            return Err(OAuthError::throttled(refusal));
        }
        let client = self.store.get_client(&client_id).await.map_err(|e| {
            log::error!("{}", json!({ "event": "database_error", "error": e }));
            OAuthError::server_error()
        })?;
        let known = client.is_some();
        if !known {
            AUTH_METRICS.dummy_checks.inc();
        }
        let hash = client
            .as_ref()
            .map_or(self.dummy_hash.clone(), |c| c.secret_hash.clone());
        let ok = self.check_secret(secret, hash).await?;
        match client {
            Some(c) if ok => {
                self.limiter.succeeded(&client_id, req.client);
                Ok(c)
            }
            _ => {
                let out = self.limiter.failed(&client_id, req.client);
                if out.client_backoff.is_some() {
                    AUTH_METRICS
                        .backoffs
                        .with_label_values(&["client_address"])
                        .inc();
                }
                if out.address_backoff.is_some() {
                    AUTH_METRICS.backoffs.with_label_values(&["address"]).inc();
                }
                let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
                log::warn!(
                    "{}",
                    json!({
                        "event": "client_authentication_failed",
                        "client_id": truncate(&client_id, 128),
                        "known_client": known,
                        "backoff_seconds": secs(out.client_backoff),
                        "address_backoff_seconds": secs(out.address_backoff),
                        "peer": req.peer.ip().to_string(),
                        "client_address": req.client.to_string(),
                    })
                );
                Err(OAuthError::invalid_client("client authentication failed"))
            }
        }
    }

    /// One argon2 verification on the blocking pool, at most two per core at once; when
    /// `secret_checks.max_queued` already wait for a slot, 503 at once instead.
    async fn check_secret(&self, secret: String, hash: String) -> Result<bool, OAuthError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let permit = match self.hashing.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                if self.hash_waiting.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
                    self.hash_waiting.fetch_sub(1, Ordering::Relaxed);
                    AUTH_METRICS.throttled.with_label_values(&["busy"]).inc();
                    let mut e = OAuthError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the token service is busy; retry shortly",
                    );
                    e.retry_after = Some(1);
                    return Err(e);
                }
                let _waiting = Waiting(&self.hash_waiting);
                self.hashing
                    .acquire()
                    .await
                    .map_err(|_| OAuthError::server_error())?
            }
        };
        let ok = tokio::task::spawn_blocking(move || secrets::verify_secret(&secret, &hash))
            .await
            .unwrap_or(false);
        drop(permit);
        Ok(ok)
    }

    /// Sets the limiter's gauges (called at scrape time).
    pub fn refresh_gauges(&self) {
        let o = self.limiter.occupancy();
        let m = &AUTH_METRICS.limiter_entries;
        m.with_label_values(&["client_address"]).set(o.pairs as i64);
        m.with_label_values(&["address"]).set(o.addresses as i64);
        m.with_label_values(&["bucket"]).set(o.buckets as i64);
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
fn valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The client id and secret a request authenticates with: `client_secret_basic` or
/// `client_secret_post`, exactly one, bounded in size; nothing is looked up yet.
fn client_credentials(req: &Request, form: &Form) -> Result<(String, String), OAuthError> {
    let mut auth_headers = req.headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (auth_headers.next(), auth_headers.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "more than one Authorization header",
            ))
        }
        (Some(v), None) => Some(parse_basic(v)?),
    };
    let post_id = form.single("client_id")?;
    let post_secret = form.single("client_secret")?;
    let (client_id, secret) = match (basic, post_id, post_secret) {
        (Some(_), _, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not both",
            ))
        }
        (Some((id, secret)), post_id, None) => {
            if post_id.is_some_and(|p| p != id) {
                return Err(OAuthError::invalid_request(
                    "client_id does not match the Authorization header",
                ));
            }
            (id, secret)
        }
        (None, Some(id), Some(secret)) => (id.to_string(), secret.to_string()),
        (None, _, _) => {
            return Err(OAuthError::invalid_client(
                "client authentication is required",
            ))
        }
    };
    if client_id.is_empty() || client_id.len() > MAX_CREDENTIAL || secret.len() > MAX_CREDENTIAL {
        return Err(OAuthError::invalid_client("client authentication failed"));
    }
    Ok((client_id, secret))
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &HeaderValue) -> Result<(String, String), OAuthError> {
    let bad = || OAuthError::invalid_client("malformed Basic credentials");
    let text = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, encoded) = text.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "client authentication must use the Basic scheme",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok((unescape(id), unescape(secret)))
}

/// An `application/x-www-form-urlencoded` body. Empty values count as absent
/// (RFC 6749 §3.1).
struct Form {
    params: Vec<(String, String)>,
}

impl Form {
    fn parse(req: &Request) -> Result<Form, OAuthError> {
        let content_type = req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let params = form_urlencoded::parse(&req.body)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Form { params })
    }

    /// A parameter that may appear at most once (RFC 6749 §3.2).
    fn single(&self, name: &'static str) -> Result<Option<&str>, OAuthError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter `{name}` is repeated"
            )));
        }
        Ok(first)
    }

    fn all<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not an API): the parsing the endpoints do
/// before anything is looked up, reached without making the endpoints' internals public.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    fn request(path: &str, headers: HeaderMap, body: &[u8]) -> Request {
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        Request {
            method: Method::POST,
            path: path.to_string(),
            headers,
            body: Bytes::copy_from_slice(body),
            peer,
            client: peer.ip(),
        }
    }

    /// What the token endpoint reads from a request before any lookup.
    #[derive(Debug)]
    pub struct TokenRequest {
        pub client_id: String,
        pub secret: String,
        pub scopes: Option<Vec<String>>,
        pub audiences: Vec<String>,
    }

    /// The token endpoint's reading of a request: the form, `grant_type`, the client's
    /// credentials (Basic or form), the requested scope tokens and audiences. The error is
    /// the response the endpoint would send.
    pub fn token_request(headers: HeaderMap, body: &[u8]) -> Result<TokenRequest, OAuthError> {
        let req = request("/oauth2/token", headers, body);
        let form = Form::parse(&req)?;
        match form.single("grant_type")? {
            Some("client_credentials") => {}
            Some(_) => return Err(OAuthError::invalid_request("unsupported grant")),
            None => return Err(OAuthError::invalid_request("grant_type is required")),
        }
        let (client_id, secret) = client_credentials(&req, &form)?;
        let scopes = match form.single("scope")? {
            None => None,
            Some(requested) => {
                let mut scopes = Vec::new();
                for s in requested.split(' ').filter(|s| !s.is_empty()) {
                    if !valid_scope_token(s) {
                        return Err(OAuthError::invalid_request("bad scope"));
                    }
                    scopes.push(s.to_string());
                }
                Some(scopes)
            }
        };
        let audiences = form
            .all("audience")
            .chain(form.all("resource"))
            .map(str::to_string)
            .collect();
        Ok(TokenRequest {
            client_id,
            secret,
            scopes,
            audiences,
        })
    }

    /// What introspection and revocation read from a token before any key is chosen.
    #[derive(Debug)]
    pub struct TokenParts {
        pub alg: String,
        pub typ: Option<String>,
        pub kid: Option<String>,
        /// Whether the payload decodes into the claims of an access token.
        pub claims: bool,
    }

    /// The introspection (`/oauth2/introspect`) or revocation (`/oauth2/revoke`) body:
    /// the form, the caller's credentials, the `token` parameter, and the token split as
    /// the endpoint splits it (`None` for a token it would call inactive unread).
    pub fn token_body(
        path: &str,
        headers: HeaderMap,
        body: &[u8],
    ) -> Result<Option<TokenParts>, OAuthError> {
        let req = request(path, headers, body);
        let form = Form::parse(&req)?;
        client_credentials(&req, &form)?;
        let token = form
            .single("token")?
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        Ok(split_token(token))
    }

    /// A token split as introspection splits it.
    pub fn split_token(token: &str) -> Option<TokenParts> {
        let u = Unverified::split(token)?;
        let _ = URL_SAFE_NO_PAD.decode(u.signature);
        let claims = URL_SAFE_NO_PAD
            .decode(u.payload)
            .ok()
            .and_then(|c| serde_json::from_slice::<AccessClaims>(&c).ok())
            .is_some();
        let _ = u.signed.len();
        Some(TokenParts {
            alg: u.header.alg,
            typ: u.header.typ,
            kid: u.header.kid,
            claims,
        })
    }

    /// `Authorization: Basic …` as the endpoints read it.
    pub fn basic(value: &HeaderValue) -> Result<(String, String), OAuthError> {
        parse_basic(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode("svc%3Aa:p%2Bw+d")))
            .unwrap();
        assert_eq!(
            parse_basic(&v).unwrap(),
            ("svc:a".to_string(), "p+w d".to_string())
        );
        let v = HeaderValue::from_static("Bearer abc");
        assert_eq!(parse_basic(&v).unwrap_err().code, "invalid_client");
    }

    /// Introspection and revocation read a token's JOSE header only as a JSON object in
    /// UTF-8 (found by fuzzing: an array was read as the header's members by position, and
    /// a non-UTF-8 byte in a member serde skips passed).
    #[test]
    fn token_headers_must_be_json_objects_in_utf8() {
        let payload = URL_SAFE_NO_PAD.encode(b"{}");
        let token = |header: &[u8]| format!("{}.{payload}.c2ln", URL_SAFE_NO_PAD.encode(header));
        let good = token(br#"{"alg":"ES256","typ":"at+jwt","kid":"k1"}"#);
        let parsed = Unverified::split(&good).expect("an object header is read");
        assert_eq!(parsed.header.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.signature, "c2ln");
        for header in [
            &br#"["ES256","at+jwt","k1"]"#[..],
            br#" ["ES256","at+jwt","k1"]"#,
            b"{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"k1\",\"x\":\"\xff\"}",
            b"{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"k\xc0\xae\"}",
            b"\"ES256\"",
        ] {
            assert!(
                Unverified::split(&token(header)).is_none(),
                "{:?}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(Unverified::split("a.b").is_none());
        assert!(Unverified::split(&format!("{good}.x")).is_none());
    }

    #[test]
    fn scope_tokens() {
        assert!(valid_scope_token("orders:read"));
        assert!(!valid_scope_token("a\"b"));
        assert!(!valid_scope_token("a\\b"));
    }
}
