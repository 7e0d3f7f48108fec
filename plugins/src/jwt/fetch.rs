//! The HTTP side of the `jwt` plugin: one small helper that sends a JWKS or introspection
//! request with a deadline and reads a bounded body. Clients are built lazily, on the first
//! fetch, so building the plugin needs neither a runtime nor the network. Fetched documents
//! (key sets, revocation lists) are shared by every route that names the same source.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// One instance per key, shared by every route (and every config version) that names it,
/// and dropped with its last user: `registry` holds only weak references, and entries whose
/// instance is gone are pruned whenever a new one is made.
pub(crate) fn shared<K: Eq + Hash, T>(
    registry: &Mutex<HashMap<K, Weak<T>>>,
    key: K,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut registry = registry.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(existing) = registry.get(&key).and_then(Weak::upgrade) {
        return existing;
    }
    registry.retain(|_, weak| weak.strong_count() > 0);
    let made = Arc::new(make());
    registry.insert(key, Arc::downgrade(&made));
    made
}

/// A client for the issuer's endpoints: no redirects (a key set or an introspection answer
/// comes from the configured URL or not at all), and the deadline on connect as well as on
/// the whole exchange.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("portico/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Sends `request` and returns the body of a 200 answer, refusing more than `limit` bytes, all
/// within `timeout`.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut resp = request.send().await.map_err(|e| describe(&e))?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        if resp.content_length().is_some_and(|len| len > limit as u64) {
            return Err(format!("answer is larger than {limit} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > limit {
                return Err(format!("answer is larger than {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    // reqwest's own timeout covers the exchange too; this one also bounds anything around it.
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// reqwest's error with its sources, which carry the useful part ("connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
