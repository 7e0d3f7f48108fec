//! RFC 7662 token introspection for opaque tokens: the gateway asks the authorization server
//! whether a token is active, authenticating with `client_secret_basic`. Answers are cached
//! by the plugin (active ones until `cache_ttl` or the token's `exp`, whichever is first;
//! refusals — inactive, or active for another audience or issuer — for `cache_ttl`), so a
//! revoked token is refused at most `cache_ttl` late.
//!
//! Since any client can send any bearer, the load a gateway puts on the token service is
//! bounded here: concurrent requests presenting the same unknown token share one call
//! (single flight), and at most `max_concurrent` calls are in flight at once; a request
//! that finds no free slot within `queue_timeout` is answered 503 with `Retry-After`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use super::cache::{TokenCache, TokenHash};
use super::fetch;
use super::{AuthError, VerifiedToken};

/// The largest introspection answer accepted.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub(crate) struct Introspection {
    url: String,
    /// `Basic …`, built once.
    authorization: String,
    pub(crate) cache_ttl: u64,
    timeout: Duration,
    /// The answer's `aud` must name one of these (never empty).
    pub(crate) audiences: Vec<String>,
    /// When set, the answer's `iss` must be this.
    pub(crate) issuer: Option<String>,
    client: OnceLock<Result<reqwest::Client, String>>,
    /// Tokens refused after an answer (inactive, or for another audience or issuer), with
    /// the `error_description`, so a replayed dead or random token does not cost a call each.
    pub(crate) refused: TokenCache<&'static str>,
    /// The calls in flight, by token hash; requests for a token already being asked about
    /// wait for that call's outcome instead of sending their own.
    pub(crate) flights: Mutex<HashMap<TokenHash, Flight>>,
    /// Slots for concurrent calls.
    pub(crate) slots: tokio::sync::Semaphore,
    pub(crate) max_concurrent: usize,
    pub(crate) queue_timeout: Duration,
    calls: AtomicU64,
    busy: AtomicU64,
}

/// The outcome of one call as every request sharing it sees it; `None` until it is known.
pub(crate) type Outcome = Option<Result<Arc<VerifiedToken>, AuthError>>;
pub(crate) type Flight = tokio::sync::watch::Receiver<Outcome>;

/// Removes a call from the in-flight map when its leader finishes or is dropped (the client
/// went away), so the requests waiting on it try again rather than wait forever.
pub(crate) struct FlightGuard<'a> {
    pub(crate) flights: &'a Mutex<HashMap<TokenHash, Flight>>,
    pub(crate) hash: TokenHash,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.hash);
    }
}

/// What the server said.
pub(crate) enum Answer {
    /// The token is active; the answer's members (`sub`, `scope`, `client_id`, `exp`, …).
    Active(Map<String, Value>),
    Inactive,
}

pub(crate) struct Settings {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    pub cache_ttl: Duration,
    pub timeout: Duration,
    pub audiences: Vec<String>,
    pub issuer: Option<String>,
    pub cache_size: usize,
    pub max_concurrent: usize,
    pub queue_timeout: Duration,
}

impl Introspection {
    pub(crate) fn new(s: Settings) -> Self {
        Introspection {
            authorization: basic_authorization(&s.client_id, &s.client_secret),
            url: s.url,
            cache_ttl: s.cache_ttl.as_secs().max(1),
            timeout: s.timeout,
            audiences: s.audiences,
            issuer: s.issuer,
            client: OnceLock::new(),
            refused: TokenCache::new(s.cache_size),
            flights: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(s.max_concurrent),
            max_concurrent: s.max_concurrent,
            queue_timeout: s.queue_timeout,
            calls: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// How many introspection requests were sent (tests and metrics).
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// How many requests found no free slot within `queue_timeout` (tests and metrics).
    pub(crate) fn busy(&self) -> u64 {
        self.busy.load(Ordering::Relaxed)
    }

    /// A slot for one call, waiting at most `queue_timeout`; `None` when none came free.
    pub(crate) async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let permit = match self.slots.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) if self.queue_timeout.is_zero() => None,
            Err(_) => tokio::time::timeout(self.queue_timeout, self.slots.acquire())
                .await
                .ok()
                .and_then(Result::ok),
        };
        if permit.is_none() {
            self.busy.fetch_add(1, Ordering::Relaxed);
        }
        permit
    }

    /// Asks the server about `token`. An error means no usable answer (unreachable, not 200,
    /// not JSON): the caller answers 503 and caches nothing.
    pub(crate) async fn introspect(&self, token: &str) -> Result<Answer, String> {
        let client = self
            .client
            .get_or_init(|| fetch::client(self.timeout))
            .as_ref()
            .map_err(Clone::clone)?;
        let mut body = String::with_capacity(token.len() + 40);
        body.push_str("token=");
        form_encode(&mut body, token);
        body.push_str("&token_type_hint=access_token");
        let request = client
            .post(&self.url)
            .header(http::header::AUTHORIZATION, &self.authorization)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(body);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let answer = fetch::send(request, self.timeout, MAX_ANSWER_BYTES).await?;
        let answer: Map<String, Value> = serde_json::from_slice(&answer)
            .map_err(|e| format!("the answer is not a JSON object: {e}"))?;
        Ok(if answer.get("active") == Some(&Value::Bool(true)) {
            Answer::Active(answer)
        } else {
            Answer::Inactive
        })
    }
}

/// The `Authorization` value of `client_secret_basic`. RFC 6749 §2.3.1: both parts are
/// form-encoded before they are joined and encoded.
pub(crate) fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let mut credentials = String::new();
    form_encode(&mut credentials, client_id);
    credentials.push(':');
    form_encode(&mut credentials, client_secret);
    format!("Basic {}", STANDARD.encode(credentials))
}

/// `application/x-www-form-urlencoded` as the WHATWG URL standard serialises it.
fn form_encode(out: &mut String, value: &str) {
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_what_it_must() {
        let mut out = String::new();
        form_encode(&mut out, "a-b.c_d*e f+g/h=i:j%");
        assert_eq!(out, "a-b.c_d*e+f%2Bg%2Fh%3Di%3Aj%25");
    }
}
