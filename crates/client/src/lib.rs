//! The client library for services calling through portico ("service A"): it does the
//! caller's half of the gateway's contract, so a service gets it right by using it.
//!
//! - **Tokens.** Fetches access tokens from portico's token service by the OAuth2 client
//!   credentials grant (`client_secret_basic`, optional `scope` and `audience`), caches them
//!   and renews them before they expire. Fetching is single flight: a thousand concurrent
//!   calls with an empty cache make one token request. When the gateway answers 401 with
//!   `invalid_token` (a revoked key, a token the cache still trusted), the client fetches
//!   a new token once and replays the call once.
//! - **Timeouts and retries.** Connect and request timeouts on every attempt. Calls safe to
//!   repeat (GET, HEAD, PUT, DELETE, OPTIONS, or any call with an `Idempotency-Key`) are
//!   retried on timeouts, broken connections, 429, 502, 503 and 504, and every call on a
//!   failed connect; with full-jitter exponential backoff, honouring `Retry-After` (seconds
//!   or an HTTP date) up to a cap, for a bounded number of attempts. See [`RetryPolicy`].
//! - **Circuit breaker.** One per origin: consecutive failures open it, calls then fail fast
//!   with [`Error::CircuitOpen`], a probe after `open_for` closes it again. See
//!   [`BreakerConfig`].
//! - **Tracing.** Each call carries a W3C `traceparent` continuing the context the caller
//!   gives ([`RequestBuilder::traceparent`]) or starting a new trace, with a new span id per
//!   attempt, and an `X-Request-Id` (the caller's, or a generated one) that stays the same
//!   across retries, so the gateway's access log shows the attempts as one request.
//! - **Versions.** Names the API version in a header (`Accept-Version: 2`) or as a URI
//!   prefix (`/v2/orders`), per [`Versioning`].
//! - **Errors.** [`Error`] says what failed; an error status carries the gateway's
//!   `application/problem+json` body parsed into [`Problem`].
//!
//! ```no_run
//! use std::time::Duration;
//! use portico_client::{Client, Error, Versioning};
//!
//! # async fn service_a() -> Result<(), Error> {
//! let secret = std::env::var("SERVICE_A_SECRET").unwrap_or_default();
//! let client = Client::builder("http://127.0.0.1:8080")
//!     .client_credentials("http://127.0.0.1:9100/oauth2/token", "service-a", secret)
//!     .scope("orders:read orders:write")
//!     .api_version("2")
//!     .versioning(Versioning::UriPrefix) // GET /v2/orders/42
//!     .request_timeout(Duration::from_secs(5))
//!     .build()?;
//!
//! // Retried on 503 and friends, with a token, a traceparent and a request id.
//! let order: serde_json::Value = client.get("/orders/42").send().await?.json().await?;
//! println!("order {order}");
//!
//! // POSTs are retried only with an Idempotency-Key.
//! let created = client
//!     .post("/orders")
//!     .idempotency_key("order-7781")
//!     .json(&serde_json::json!({ "sku": "A1", "quantity": 2 }))
//!     .send()
//!     .await;
//! match created {
//!     Ok(resp) => println!("created; request id {}", resp.request_id()),
//!     Err(Error::Status(e)) => eprintln!(
//!         "refused: {} {}",
//!         e.status,
//!         e.problem.as_ref().and_then(|p| p.detail.as_deref()).unwrap_or("")
//!     ),
//!     Err(Error::CircuitOpen { retry_in, .. }) => eprintln!("gateway failing; back in {retry_in:?}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```

mod breaker;
mod error;
mod retry;
mod token;
mod version;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use reqwest::Url;

use portico_common::trace::TraceContext;

pub use breaker::{BreakerConfig, BreakerState};
pub use error::{Error, Problem, StatusError, TokenError};
pub use retry::{is_idempotent_method, is_retryable_status, retry_after, RetryPolicy};
pub use token::RefreshPolicy;
pub use version::Versioning;

use breaker::{Breaker, Verdict};
use token::{Credentials, TokenSource};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A client for calls through the gateway. Cheap to clone (one `Arc`); clones share the
/// connection pool, the token cache and the circuit breakers, so build one per process.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Url,
    tokens: Option<TokenSource>,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    version: Option<String>,
    versioning: Versioning,
    request_id_header: HeaderName,
    request_timeout: Duration,
}

/// Settings of a [`Client`]; start with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base_url: String,
    credentials: Option<(String, String, String)>,
    scope: Option<String>,
    audience: Option<String>,
    refresh: RefreshPolicy,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    token_retry: Option<RetryPolicy>,
    breaker: BreakerConfig,
    version: Option<String>,
    versioning: Versioning,
    request_id_header: String,
    user_agent: String,
    system_proxy: bool,
}

impl Client {
    /// Settings for a client calling the gateway at `base_url` (`http://host:port`,
    /// optionally with a path prefix that every request path is appended to).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            credentials: None,
            scope: None,
            audience: None,
            refresh: RefreshPolicy::default(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            token_retry: None,
            breaker: BreakerConfig::default(),
            version: None,
            versioning: Versioning::default(),
            request_id_header: "x-request-id".into(),
            user_agent: concat!("portico-client/", env!("CARGO_PKG_VERSION")).into(),
            system_proxy: false,
        }
    }

    /// A request to `target`: a path (with an optional query) relative to the base URL, or
    /// an absolute `http(s)://` URL.
    pub fn request(&self, method: Method, target: &str) -> RequestBuilder {
        RequestBuilder {
            client: self.clone(),
            method,
            target: target.to_string(),
            headers: HeaderMap::new(),
            query: Vec::new(),
            body: None,
            version: VersionChoice::Default,
            traceparent: None,
            timeout: None,
            max_attempts: None,
            auth: true,
            error: None,
        }
    }

    pub fn get(&self, target: &str) -> RequestBuilder {
        self.request(Method::GET, target)
    }

    pub fn head(&self, target: &str) -> RequestBuilder {
        self.request(Method::HEAD, target)
    }

    pub fn post(&self, target: &str) -> RequestBuilder {
        self.request(Method::POST, target)
    }

    pub fn put(&self, target: &str) -> RequestBuilder {
        self.request(Method::PUT, target)
    }

    pub fn patch(&self, target: &str) -> RequestBuilder {
        self.request(Method::PATCH, target)
    }

    pub fn delete(&self, target: &str) -> RequestBuilder {
        self.request(Method::DELETE, target)
    }

    /// The breaker state for the base URL's origin.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner
            .breaker_for(&self.inner.base.origin().ascii_serialization())
            .state()
    }

    /// The breaker state for the origin of an absolute URL (closed when never called).
    pub fn breaker_state_for(&self, url: &str) -> Result<BreakerState, Error> {
        let url = Url::parse(url).map_err(|e| Error::InvalidRequest(format!("`{url}`: {e}")))?;
        Ok(self
            .inner
            .breaker_for(&url.origin().ascii_serialization())
            .state())
    }

    /// Tokens obtained from the token service since the client was built.
    pub fn token_fetches(&self) -> u64 {
        self.inner.tokens.as_ref().map_or(0, TokenSource::fetches)
    }
}

impl ClientBuilder {
    /// Authenticate with tokens from the token endpoint `token_url`
    /// (`http://auth:9100/oauth2/token`) by the client credentials grant.
    pub fn client_credentials(
        mut self,
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        self.credentials = Some((token_url.into(), client_id.into(), client_secret.into()));
        self
    }

    /// The `scope` to ask for (space-separated); default: all the client's scopes.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The `audience` to ask for; default: the client's first audience.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// When cached tokens are renewed (default: with 20 % of the lifetime or 30 s left).
    pub fn token_refresh(mut self, refresh: RefreshPolicy) -> Self {
        self.refresh = refresh;
        self
    }

    /// Retries of token requests (default: the same policy as calls).
    pub fn token_retry(mut self, retry: RetryPolicy) -> Self {
        self.token_retry = Some(retry);
        self
    }

    /// Timeout of establishing a connection (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout of one attempt, from sending to the end of the response body (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// The API version every call asks for, unless it names its own (`"2"` or `"v2"`).
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// How the version is sent (default: the `Accept-Version` header).
    pub fn versioning(mut self, versioning: Versioning) -> Self {
        self.versioning = versioning;
        self
    }

    /// The request id header (default `X-Request-Id`, what the gateway's `request-id`
    /// plugin reads).
    pub fn request_id_header(mut self, name: impl Into<String>) -> Self {
        self.request_id_header = name.into();
        self
    }

    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// Use the `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` environment (default: connect
    /// directly; a service normally reaches its gateway without a forward proxy).
    pub fn system_proxy(mut self, enabled: bool) -> Self {
        self.system_proxy = enabled;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let config = |m: String| Error::Config(m);
        let base = parse_http_url("base URL", &self.base_url).map_err(config)?;
        if self.retry.max_attempts == 0 {
            return Err(config("retry.max_attempts must be at least 1".into()));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(config("timeouts must be longer than zero".into()));
        }
        let version = self
            .version
            .as_deref()
            .map(version::normalize)
            .transpose()
            .map_err(config)?;
        let request_id_header = HeaderName::try_from(self.request_id_header.as_str())
            .map_err(|e| config(format!("request id header: {e}")))?;

        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .user_agent(self.user_agent);
        if !self.system_proxy {
            http = http.no_proxy();
        }
        let http = http
            .build()
            .map_err(|e| config(format!("HTTP client: {e}")))?;

        let tokens = match self.credentials {
            None => None,
            Some((token_url, client_id, client_secret)) => {
                let token_url = parse_http_url("token URL", &token_url).map_err(config)?;
                if client_id.is_empty() {
                    return Err(config("client id is empty".into()));
                }
                let token_retry = self.token_retry.unwrap_or_else(|| self.retry.clone());
                if token_retry.max_attempts == 0 {
                    return Err(config("token_retry.max_attempts must be at least 1".into()));
                }
                Some(TokenSource::new(
                    http.clone(),
                    Credentials {
                        token_url,
                        client_id,
                        client_secret,
                        scope: self.scope,
                        audience: self.audience,
                    },
                    self.refresh,
                    token_retry,
                ))
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                tokens,
                retry: self.retry,
                breaker: self.breaker,
                breakers: Mutex::new(HashMap::new()),
                version,
                versioning: self.versioning,
                request_id_header,
                request_timeout: self.request_timeout,
            }),
        })
    }
}

fn parse_http_url(what: &str, text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{what} `{text}`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{what} `{text}` must be an http:// or https:// URL"
        ));
    }
    Ok(url)
}

impl Inner {
    fn breaker_for(&self, origin: &str) -> Arc<Breaker> {
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(origin.to_string())
            .or_insert_with(|| Breaker::new(self.breaker.clone()))
            .clone()
    }
}

#[derive(Debug, Clone)]
enum VersionChoice {
    Default,
    Named(String),
    Unversioned,
}

/// One call being put together; [`RequestBuilder::send`] sends it.
#[derive(Debug)]
#[must_use = "a request does nothing until `send` is awaited"]
pub struct RequestBuilder {
    client: Client,
    method: Method,
    target: String,
    headers: HeaderMap,
    query: Vec<(String, String)>,
    body: Option<Bytes>,
    version: VersionChoice,
    traceparent: Option<String>,
    timeout: Option<Duration>,
    max_attempts: Option<u32>,
    auth: bool,
    /// The first problem found while building, reported by `send`.
    error: Option<String>,
}

impl RequestBuilder {
    /// Adds a header (appended to any earlier value of the same name).
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            (Err(e), _) => self.fail(format!("header name: {}", e.into())),
            (_, Err(e)) => self.fail(format!("header value: {}", e.into())),
        }
        self
    }

    /// Query parameters, appended to any in the target.
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        self.query
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// A JSON body (and `Content-Type: application/json` unless set).
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => {
                self.body = Some(Bytes::from(bytes));
                if !self.headers.contains_key(CONTENT_TYPE) {
                    self.headers
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
            }
            Err(e) => self.fail(format!("JSON body: {e}")),
        }
        self
    }

    /// A body, kept in memory so it can be sent again on a retry.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Marks the call safe to retry: the service deduplicates by this key.
    pub fn idempotency_key(self, key: &str) -> Self {
        self.header(IDEMPOTENCY_KEY, key)
    }

    /// Continue this W3C trace context (the incoming request's `traceparent`): the call
    /// keeps its trace id and flags, with a new span id per attempt. An invalid value
    /// starts a new trace instead.
    pub fn traceparent(mut self, traceparent: &str) -> Self {
        self.traceparent = Some(traceparent.to_string());
        self
    }

    /// The request id to send (default: a new random one); the same on every attempt.
    pub fn request_id(self, id: &str) -> Self {
        let name = self.client.inner.request_id_header.clone();
        let mut this = self;
        this.headers.remove(&name);
        this.header(name, id)
    }

    /// Ask for this API version instead of the client's default.
    pub fn api_version(mut self, version: &str) -> Self {
        match version::normalize(version) {
            Ok(v) => self.version = VersionChoice::Named(v),
            Err(e) => self.fail(e),
        }
        self
    }

    /// Name no API version on this call (the route's default applies).
    pub fn unversioned(mut self) -> Self {
        self.version = VersionChoice::Unversioned;
        self
    }

    /// This call's per-attempt timeout instead of the client's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// This call's attempt limit instead of the retry policy's (1 = no retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Send no access token on this call (for unprotected routes).
    pub fn without_token(mut self) -> Self {
        self.auth = false;
        self
    }

    fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }

    /// The URL to call: base path, version prefix, target path, queries.
    fn url(&self, version: Option<&str>) -> Result<Url, Error> {
        let inner = &self.client.inner;
        let prefix = match (version, &inner.versioning) {
            (Some(v), Versioning::UriPrefix) => version::uri_prefix(v),
            _ => String::new(),
        };
        let target = self.target.split('#').next().unwrap_or_default();
        let mut url = if target.starts_with("http://") || target.starts_with("https://") {
            let mut url = parse_http_url("URL", target).map_err(Error::InvalidRequest)?;
            let path = format!("{prefix}{}", url.path());
            url.set_path(&path);
            url
        } else {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            let mut url = inner.base.clone();
            let base_path = url.path().trim_end_matches('/').to_string();
            let slash = if path.starts_with('/') { "" } else { "/" };
            url.set_path(&format!("{base_path}{prefix}{slash}{path}"));
            url.set_query(query);
            url
        };
        if !self.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&self.query);
        }
        Ok(url)
    }

    /// Sends the call: token, headers, attempts with retries, breaker. `Ok` for 1xx–3xx
    /// answers; 4xx and 5xx (after retries) are [`Error::Status`].
    pub async fn send(mut self) -> Result<Response, Error> {
        if let Some(message) = self.error.take() {
            return Err(Error::InvalidRequest(message));
        }
        let inner = self.client.inner.clone();
        let version = match &self.version {
            VersionChoice::Default => inner.version.clone(),
            VersionChoice::Named(v) => Some(v.clone()),
            VersionChoice::Unversioned => None,
        };
        let url = self.url(version.as_deref())?;
        let origin = url.origin().ascii_serialization();
        let breaker = inner.breaker_for(&origin);

        let mut headers = std::mem::take(&mut self.headers);
        if let (Some(v), Versioning::Header(name)) = (&version, &inner.versioning) {
            headers.insert(name.clone(), version::header_value(v));
        }
        let request_id = match headers
            .get(&inner.request_id_header)
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                let id = portico_common::random_hex_128();
                headers.insert(
                    inner.request_id_header.clone(),
                    HeaderValue::from_str(&id).expect("hex is valid header text"),
                );
                id
            }
        };
        // The trace every attempt belongs to: the caller's (given here or as a header) when
        // valid, else a new sampled one.
        let given = self.traceparent.take().or_else(|| {
            headers
                .remove(TRACEPARENT)
                .and_then(|v| v.to_str().ok().map(str::to_string))
        });
        let trace = given
            .map(|tp| TraceContext::from_header(Some(tp.as_bytes())))
            .filter(|t| t.parent_id.is_some())
            .unwrap_or_else(|| TraceContext::from_header(None));
        let trace_base = trace.header_value();

        let replayable = retry::is_replayable(&self.method, &headers);
        let max_attempts = self.max_attempts.unwrap_or(inner.retry.max_attempts);
        let timeout = self.timeout.unwrap_or(inner.request_timeout);
        let tokens = inner.tokens.as_ref().filter(|_| self.auth);

        let mut sent = 0u32; // requests that went out
        let mut tries = 0u32; // attempts counted against max_attempts
        let mut token_replayed = false;
        let mut last: Option<Error> = None;
        loop {
            let permit = match breaker.admit() {
                Ok(p) => p,
                Err(retry_in) => {
                    return Err(last.take().unwrap_or(Error::CircuitOpen {
                        origin: origin.clone(),
                        retry_in,
                    }))
                }
            };
            let token = match tokens {
                Some(t) => Some(t.get().await?),
                None => None,
            };
            let attempt_trace = TraceContext::from_header(Some(trace_base.as_bytes()));
            let mut req = inner
                .http
                .request(self.method.clone(), url.clone())
                .headers(headers.clone())
                .header(TRACEPARENT, attempt_trace.header_value())
                .timeout(timeout);
            if let Some(t) = &token {
                req = req.header(AUTHORIZATION, t.header.clone());
            }
            if let Some(body) = &self.body {
                req = req.body(body.clone());
            }
            sent += 1;
            tries += 1;
            let may_retry = tries < max_attempts;
            match req.send().await {
                Ok(resp) if resp.status().as_u16() < 400 => {
                    permit.finish(Verdict::Success);
                    return Ok(Response {
                        inner: resp,
                        request_id,
                        attempts: sent,
                        trace_id: trace.trace_id_hex(),
                    });
                }
                Ok(resp) => {
                    let status = resp.status();
                    permit.finish(match status.as_u16() {
                        429 => Verdict::Neutral,
                        401 => Verdict::Neutral,
                        s if s >= 500 => Verdict::Failure,
                        _ => Verdict::Success,
                    });
                    let err = status_error(resp, &url, &request_id, sent).await;
                    if let (Some(tokens), Some(rejected)) = (tokens, &token) {
                        if status == StatusCode::UNAUTHORIZED
                            && !token_replayed
                            && is_invalid_token(&err)
                        {
                            // The gateway refused a token the cache trusted: one new token,
                            // one replay. Nothing reached the service, so any method may
                            // be replayed, and it does not use up a retry.
                            token_replayed = true;
                            tries -= 1;
                            tokens.replace(rejected).await?;
                            continue;
                        }
                    }
                    if !(retry::is_retryable_status(status) && replayable && may_retry) {
                        return Err(Error::Status(Box::new(err)));
                    }
                    let Some(wait) = inner.retry.delay_after(tries, &err.headers) else {
                        // Asked to wait longer than we are willing to: give the answer back.
                        return Err(Error::Status(Box::new(err)));
                    };
                    log::debug!(
                        "portico client: {} {url} answered {status}; retry in {wait:?} (request id {request_id})",
                        self.method
                    );
                    last = Some(Error::Status(Box::new(err)));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    permit.finish(Verdict::Failure);
                    let connect = e.is_connect();
                    let err = transport_error(e, &url, sent);
                    if !((connect || replayable) && may_retry) {
                        return Err(err);
                    }
                    let wait = inner.retry.backoff(tries);
                    log::debug!(
                        "portico client: {} {url} failed ({err}); retry in {wait:?} (request id {request_id})",
                        self.method
                    );
                    last = Some(err);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Reads an error answer into a [`StatusError`] (its body parsed as problem details when
/// it is one).
async fn status_error(
    resp: reqwest::Response,
    url: &Url,
    request_id: &str,
    attempts: u32,
) -> StatusError {
    let status = resp.status();
    let headers = resp.headers().clone();
    // An unreadable body still leaves the status and headers to report.
    let body = resp.bytes().await.unwrap_or_default();
    let problem = Problem::from_response(
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        &body,
    );
    StatusError {
        status,
        url: url.to_string(),
        headers,
        body,
        problem,
        request_id: request_id.to_string(),
        attempts,
    }
}

fn transport_error(e: reqwest::Error, url: &Url, attempts: u32) -> Error {
    let url = url.to_string();
    if e.is_connect() {
        Error::Connect {
            url,
            attempts,
            source: e,
        }
    } else if e.is_timeout() {
        Error::Timeout {
            url,
            attempts,
            source: e,
        }
    } else {
        Error::Transport {
            url,
            attempts,
            source: e,
        }
    }
}

/// RFC 6750 §3.1 `error="invalid_token"` in the challenge, or the gateway's
/// `invalid_token` problem type.
fn is_invalid_token(err: &StatusError) -> bool {
    let in_challenge = err.headers.get_all(WWW_AUTHENTICATE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("error=\"invalid_token\"") || v.contains("error=invalid_token")
        })
    });
    in_challenge
        || err
            .problem
            .as_ref()
            .and_then(Problem::slug)
            .is_some_and(|s| s == "invalid_token" || s == "invalid-token")
}

/// A successful (1xx–3xx) answer.
#[derive(Debug)]
pub struct Response {
    inner: reqwest::Response,
    request_id: String,
    attempts: u32,
    trace_id: String,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.inner.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Request-Id` the call carried.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The trace id (32 hex chars) of the call's `traceparent`.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// Requests sent, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub async fn bytes(self) -> Result<Bytes, Error> {
        let url = self.inner.url().clone();
        let attempts = self.attempts;
        self.inner
            .bytes()
            .await
            .map_err(|e| transport_error(e, &url, attempts))
    }

    pub async fn text(self) -> Result<String, Error> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(Error::Decode)
    }

    /// The underlying `reqwest` response, e.g. to stream a large body.
    pub fn into_inner(self) -> reqwest::Response {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str, versioning: Versioning) -> Client {
        Client::builder(base)
            .api_version("v2")
            .versioning(versioning)
            .build()
            .unwrap()
    }

    #[test]
    fn urls_join_base_path_version_prefix_target_and_query() {
        let c = client("http://gw:8080/api/", Versioning::UriPrefix);
        let url = |r: RequestBuilder| {
            let version = match &r.version {
                VersionChoice::Named(v) => Some(v.clone()),
                VersionChoice::Unversioned => None,
                VersionChoice::Default => c.inner.version.clone(),
            };
            r.url(version.as_deref()).unwrap().to_string()
        };
        assert_eq!(
            url(c.get("/orders/7?x=1").query(&[("y", "a b")])),
            "http://gw:8080/api/v2/orders/7?x=1&y=a+b"
        );
        assert_eq!(url(c.get("orders")), "http://gw:8080/api/v2/orders");
        assert_eq!(
            url(c.get("/orders").api_version("1")),
            "http://gw:8080/api/v1/orders"
        );
        assert_eq!(
            url(c.get("/orders").unversioned()),
            "http://gw:8080/api/orders"
        );
        assert_eq!(url(c.get("https://other:9/x")), "https://other:9/v2/x");
        let h = client("http://gw:8080", Versioning::default());
        assert_eq!(
            h.get("/orders").url(Some("2")).unwrap().to_string(),
            "http://gw:8080/orders"
        );
    }

    #[test]
    fn calls_can_be_spawned() {
        fn assert_send<T: Send + 'static>(_: &T) {}
        let c = Client::builder("http://gw")
            .client_credentials("http://auth/oauth2/token", "a", "b")
            .build()
            .unwrap();
        let call = c.get("/x").send();
        assert_send(&call);
        assert_send(&c);
    }

    #[test]
    fn builder_rejects_bad_settings() {
        assert!(matches!(
            Client::builder("gw:8080").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::builder("http://gw")
                .client_credentials("ftp://auth/token", "a", "b")
                .build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::builder("http://gw").api_version("v").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Client::builder("http://gw")
                .retry(RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                })
                .build(),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn invalid_token_is_recognised_by_challenge_or_problem_type() {
        let mut err = StatusError {
            status: StatusCode::UNAUTHORIZED,
            url: "http://gw/x".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            problem: None,
            request_id: "r".into(),
            attempts: 1,
        };
        assert!(!is_invalid_token(&err));
        err.headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="portico", error="invalid_token", error_description="expired""#,
            ),
        );
        assert!(is_invalid_token(&err));
        err.headers.clear();
        err.problem = Problem::from_response(
            Some("application/problem+json"),
            br#"{"type":"urn:portico:problem:invalid_token"}"#,
        );
        assert!(is_invalid_token(&err));
    }
}
