//! RFC 7662 token introspection for opaque tokens: the gateway asks the authorization server
//! whether a token is active, authenticating with `client_secret_basic`. Answers are cached
//! by the plugin (active ones until `cache_ttl` or the token's `exp`, whichever is first;
//! inactive ones for `cache_ttl`), so a revoked token is refused at most `cache_ttl` late.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

use super::cache::TokenCache;
use super::fetch;

/// The largest introspection answer accepted.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub(crate) struct Introspection {
    url: String,
    /// `Basic …`, built once.
    authorization: String,
    pub(crate) cache_ttl: u64,
    timeout: Duration,
    /// When not empty, the answer's `aud` must name one of these.
    pub(crate) audiences: Vec<String>,
    /// When set, the answer's `iss` must be this.
    pub(crate) issuer: Option<String>,
    client: OnceLock<Result<reqwest::Client, String>>,
    /// Tokens the server called inactive, so a replayed dead token does not cost a call each.
    pub(crate) inactive: TokenCache<()>,
    calls: AtomicU64,
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
}

impl Introspection {
    pub(crate) fn new(s: Settings) -> Self {
        // RFC 6749 §2.3.1: both parts are form-encoded before they are joined and encoded.
        let mut credentials = String::new();
        form_encode(&mut credentials, &s.client_id);
        credentials.push(':');
        form_encode(&mut credentials, &s.client_secret);
        Introspection {
            url: s.url,
            authorization: format!("Basic {}", STANDARD.encode(credentials)),
            cache_ttl: s.cache_ttl.as_secs().max(1),
            timeout: s.timeout,
            audiences: s.audiences,
            issuer: s.issuer,
            client: OnceLock::new(),
            inactive: TokenCache::new(s.cache_size),
            calls: AtomicU64::new(0),
        }
    }

    /// How many introspection requests were sent (tests and metrics).
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
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
