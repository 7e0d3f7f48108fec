//! Access tokens from the token service by the OAuth2 client credentials grant
//! (RFC 6749 §4.4) with `client_secret_basic`, cached and refreshed before they expire.
//!
//! Single flight: one `tokio::sync::Mutex` guards fetching, and the cached token sits in an
//! `ArcSwapOption` read without a lock. However many calls find the cache empty or expired
//! at once, one of them fetches while the others wait on the mutex and then take the token
//! it stored. A token that is due for refresh but still valid is refreshed by whichever
//! call gets the mutex first; the others keep using the valid token meanwhile, so a
//! refresh never stalls traffic. A forced refresh after the gateway refused a token is
//! single flight too: callers refused with the same token share one new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;

use super::error::{Error, TokenError};
use super::retry::{is_retryable_status, RetryPolicy};

/// When a cached token is renewed: once less than `max(ratio × lifetime, margin)` of its
/// lifetime remains, the margin being capped at half the lifetime so a short-lived token
/// is still used for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    pub ratio: f64,
    pub margin: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            ratio: 0.2,
            margin: Duration::from_secs(30),
        }
    }
}

impl RefreshPolicy {
    /// How long before expiry a token of `lifetime` is renewed.
    pub fn early_by(&self, lifetime: Duration) -> Duration {
        let by_ratio = lifetime.mul_f64(self.ratio.clamp(0.0, 1.0));
        by_ratio.max(self.margin.min(lifetime / 2)).min(lifetime)
    }
}

/// The settings of the client credentials grant.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: String,
    pub scope: Option<String>,
    pub audience: Option<String>,
}

// Hand-written so the secret never reaches a log.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .finish()
    }
}

/// A token and when it stops being usable.
#[derive(Debug)]
pub(crate) struct Token {
    /// `Bearer <token>`, marked sensitive so HTTP stacks do not log it.
    pub header: HeaderValue,
    pub refresh_at: Instant,
    pub expires_at: Instant,
}

impl Token {
    fn fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }

    fn valid(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct OAuthErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Lifetime assumed when the token service does not say (`expires_in` is only
/// RECOMMENDED by RFC 6749); short, so a wrong guess costs little.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct TokenSource {
    http: reqwest::Client,
    credentials: Credentials,
    refresh: RefreshPolicy,
    retry: RetryPolicy,
    current: ArcSwapOption<Token>,
    fetching: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl TokenSource {
    pub fn new(
        http: reqwest::Client,
        credentials: Credentials,
        refresh: RefreshPolicy,
        retry: RetryPolicy,
    ) -> TokenSource {
        TokenSource {
            http,
            credentials,
            refresh,
            retry,
            current: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// Token requests that got a token, since the client was built.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A usable token: the cached one, or a new one (single flight).
    pub async fn get(&self) -> Result<Arc<Token>, Error> {
        if let Some(token) = self.current.load_full() {
            let now = Instant::now();
            if token.fresh(now) {
                return Ok(token);
            }
            if token.valid(now) {
                // Due for renewal but still good: one caller renews, nobody waits.
                let Ok(_guard) = self.fetching.try_lock() else {
                    return Ok(token);
                };
                if let Some(newer) = self.current.load_full() {
                    if newer.fresh(Instant::now()) {
                        return Ok(newer);
                    }
                }
                return match self.fetch().await {
                    Ok(fresh) => Ok(fresh),
                    Err(e) => {
                        log::warn!("portico client: early token refresh failed ({e}); the current token is still valid");
                        Ok(token)
                    }
                };
            }
        }
        let _guard = self.fetching.lock().await;
        if let Some(token) = self.current.load_full() {
            if token.fresh(Instant::now()) {
                return Ok(token);
            }
        }
        self.fetch().await
    }

    /// A token other than `rejected`, which the gateway refused as invalid: callers refused
    /// with the same token share one fetch.
    pub async fn replace(&self, rejected: &Arc<Token>) -> Result<Arc<Token>, Error> {
        let _guard = self.fetching.lock().await;
        if let Some(token) = self.current.load_full() {
            if !Arc::ptr_eq(&token, rejected) && token.fresh(Instant::now()) {
                return Ok(token);
            }
        }
        self.current.store(None);
        self.fetch().await
    }

    /// One token request (with retries), stored as the current token. Call with the
    /// `fetching` mutex held.
    async fn fetch(&self) -> Result<Arc<Token>, Error> {
        let c = &self.credentials;
        // In a block: the serializer is not `Send`, and must not live across an await.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = &c.scope {
                form.append_pair("scope", scope);
            }
            if let Some(audience) = &c.audience {
                form.append_pair("audience", audience);
            }
            form.finish()
        };
        // RFC 6749 §2.3.1: id and secret are form-encoded before base64.
        let user = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            user(&c.client_id),
            user(&c.client_secret)
        ));
        let mut authorization = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| Error::Config("client credentials are not valid header text".into()))?;
        authorization.set_sensitive(true);

        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let sent = self
                .http
                .post(c.token_url.clone())
                .header(http::header::AUTHORIZATION, authorization.clone())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .header(http::header::ACCEPT, "application/json")
                .body(form.clone())
                .send()
                .await;
            let retryable = match sent {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    return self.store(resp, started).await;
                }
                Ok(resp)
                    if is_retryable_status(resp.status()) || resp.status().is_server_error() =>
                {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let _ = resp.bytes().await;
                    let unavailable = || {
                        Error::Token(TokenError::Unavailable {
                            status: Some(status),
                            message: format!("{} answered {status}", c.token_url),
                        })
                    };
                    if attempt >= self.retry.max_attempts {
                        return Err(unavailable());
                    }
                    match self.retry.delay_after(attempt, &headers) {
                        Some(wait) => (wait, unavailable()),
                        None => return Err(unavailable()),
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    let (error, description) = match serde_json::from_slice::<OAuthErrorBody>(&body)
                    {
                        Ok(e) => (e.error, e.error_description),
                        Err(_) => (format!("http_{}", status.as_u16()), None),
                    };
                    return Err(Error::Token(TokenError::Rejected {
                        status,
                        error,
                        description,
                    }));
                }
                Err(e) => {
                    let err = Error::Token(TokenError::Unavailable {
                        status: None,
                        message: format!("{}: {e}", c.token_url),
                    });
                    if attempt >= self.retry.max_attempts {
                        return Err(err);
                    }
                    (self.retry.backoff(attempt), err)
                }
            };
            let (wait, err) = retryable;
            log::debug!("portico client: token request failed ({err}); retrying in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    async fn store(&self, resp: reqwest::Response, started: Instant) -> Result<Arc<Token>, Error> {
        let invalid = |m: String| Error::Token(TokenError::InvalidResponse(m));
        let body = resp
            .bytes()
            .await
            .map_err(|e| invalid(format!("body: {e}")))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
        if !parsed.token_type.eq_ignore_ascii_case("bearer") {
            return Err(invalid(format!(
                "token_type `{}`, expected Bearer",
                parsed.token_type
            )));
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {}", parsed.access_token))
            .map_err(|_| invalid("access_token is not valid header text".into()))?;
        header.set_sensitive(true);
        let lifetime = parsed
            .expires_in
            .map_or(ASSUMED_LIFETIME, Duration::from_secs);
        // Counted from before the request went out, so the token service's clock and the
        // round trip can only make the client renew early, never late.
        let expires_at = started + lifetime;
        let token = Arc::new(Token {
            header,
            refresh_at: expires_at - self.refresh.early_by(lifetime),
            expires_at,
        });
        self.current.store(Some(token.clone()));
        self.fetches.fetch_add(1, Ordering::Relaxed);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_early_by_ratio_or_margin() {
        let p = RefreshPolicy::default();
        assert_eq!(
            p.early_by(Duration::from_secs(600)),
            Duration::from_secs(120)
        );
        assert_eq!(
            p.early_by(Duration::from_secs(100)),
            Duration::from_secs(30)
        );
        // A margin longer than the token would renew at once: capped at half the lifetime.
        assert_eq!(p.early_by(Duration::from_secs(2)), Duration::from_secs(1));
        let ratio_only = RefreshPolicy {
            ratio: 0.5,
            margin: Duration::ZERO,
        };
        assert_eq!(
            ratio_only.early_by(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(ratio_only.early_by(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_secret_stays_out_of_debug_output() {
        let c = Credentials {
            token_url: reqwest::Url::parse("http://auth/oauth2/token").unwrap(),
            client_id: "service-a".into(),
            client_secret: "hunter2".into(),
            scope: None,
            audience: None,
        };
        let text = format!("{c:?}");
        assert!(text.contains("service-a") && !text.contains("hunter2"));
    }
}
