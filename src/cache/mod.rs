//! The per-route response cache on the request path, built on pingora-cache's state
//! machine: the `ProxyHttp` cache hooks of `proxy::Gateway` call into this module, which
//! decides whether a request may use the cache ([`CachePolicy::admit`]), builds its key
//! (`key`), judges a response by RFC 9111's shared-cache rules (`policy`), names the
//! outcome (`status`: the `Cache-Status` header, the access-log field, the metric label)
//! and counts it (`metrics`). The storage behind it is one process-wide object reached
//! through [`storage`], so entries outlive config reloads: the byte-bounded in-memory
//! store (`store`); purges by URL, host, prefix or key are `purge`.

pub mod key;
pub mod metrics;
pub mod policy;
pub mod purge;
pub mod status;
pub mod store;

use std::sync::LazyLock;
use std::time::Duration;

use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::{CacheablePredictor, Predictor};
use pingora_cache::storage::Storage;
use pingora_cache::CacheOptionOverrides;
use pingora_http::RequestHeader;
use portico_plugins::PluginCtx;

use crate::config::{self, CacheIdentity, CacheQuery, ClientNoCache};

/// The cache storage every cached route shares. Process-wide, so a reload keeps what is
/// stored; a route whose cache settings change stops finding its old entries because the
/// settings are part of the key ([`CachePolicy::generation`]).
pub fn storage() -> &'static (dyn Storage + Sync) {
    store::storage()
}

/// Collapses concurrent misses of one key into one upstream request. A writer holding a
/// lock longer than this is presumed gone and the waiting requests compete again; how
/// long a request waits at most is its route's `lock_timeout`.
fn lock() -> &'static CacheKeyLockImpl {
    static LOCK: LazyLock<CacheLock> = LazyLock::new(|| CacheLock::new(Duration::from_secs(30)));
    &*LOCK
}

/// Remembers keys whose last response could not be stored, so their next requests go
/// straight upstream instead of queueing behind a cache lock that will not help them.
fn predictor() -> &'static (dyn CacheablePredictor + Sync) {
    static PREDICTOR: LazyLock<Predictor<16>> = LazyLock::new(|| Predictor::new(1024, None));
    &*PREDICTOR
}

/// How many times a request waiting for another's revalidation of a stale entry may wait
/// again after that revalidation failed, on a route with `stale_if_error` (each failure
/// answers one request from the stale entry and frees the lock for the next attempt).
const STALE_IF_ERROR_LOCK_RETRIES: usize = 1024;

/// A route's `[routes.cache]`, compiled for the request path.
#[derive(Debug)]
pub struct CachePolicy {
    pub get: bool,
    pub head: bool,
    /// Freshness of responses without their own, for heuristically cacheable statuses.
    pub default_ttl: Option<Duration>,
    pub query: QueryKey,
    pub per_identity: Option<CacheIdentity>,
    pub store_set_cookie: bool,
    pub client_no_cache: ClientNoCache,
    /// Seconds, as pingora-cache's metadata keeps them.
    pub stale_if_error: u32,
    pub stale_while_revalidate: u32,
    pub lock_timeout: Duration,
    /// A digest of the settings, part of every key: entries stored under other settings
    /// are never served under these.
    pub generation: String,
    /// The settings as configured, for `portico routes`.
    pub summary: String,
    pub metrics: metrics::CacheMetrics,
}

/// How the query string joins the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKey {
    All,
    Sorted,
    /// Sorted, without these parameter names.
    Ignore(Vec<String>),
}

/// Why a request does not use its route's cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Its method is not one the route caches.
    Method,
    /// The route caches per identity and the request has none.
    NoIdentity,
}

impl CachePolicy {
    pub fn new(route: &str, cache: &config::RouteCache) -> CachePolicy {
        let secs = |d: Option<Duration>| d.map_or(0, |d| d.as_secs().min(i32::MAX as u64) as u32);
        // The serialised settings are stable across reloads of the same text.
        let settings = serde_json::to_string(cache).unwrap_or_default();
        let digest = pingora_cache::key::hash_key(settings.as_bytes());
        CachePolicy {
            get: cache.methods.iter().any(|m| m == "GET"),
            head: cache.methods.iter().any(|m| m == "HEAD"),
            default_ttl: cache.default_ttl,
            query: match &cache.query {
                CacheQuery::All => QueryKey::All,
                CacheQuery::Sorted => QueryKey::Sorted,
                CacheQuery::Ignore(names) => QueryKey::Ignore(names.clone()),
            },
            per_identity: cache.per_identity,
            store_set_cookie: cache.store_set_cookie,
            client_no_cache: cache.client_no_cache,
            stale_if_error: secs(cache.stale_if_error),
            stale_while_revalidate: secs(cache.stale_while_revalidate),
            lock_timeout: cache.lock_timeout,
            generation: digest[..4].iter().map(|b| format!("{b:02x}")).collect(),
            summary: cache.summary(),
            metrics: metrics::CacheMetrics::new(route),
        }
    }

    /// Whether this request may use the cache: a method the route caches, and an identity
    /// when entries are kept per identity.
    pub fn admit(&self, req: &RequestHeader, plugin: &PluginCtx) -> Result<(), Bypass> {
        let method_ok = match req.method {
            http::Method::GET => self.get,
            http::Method::HEAD => self.head,
            _ => false,
        };
        if !method_ok {
            return Err(Bypass::Method);
        }
        if self.per_identity.is_some() && self.identity(plugin).is_none() {
            return Err(Bypass::NoIdentity);
        }
        Ok(())
    }

    /// The caller's identity that joins the key, when the route caches per identity.
    pub fn identity<'a>(&self, plugin: &'a PluginCtx) -> Option<&'a str> {
        let identity = plugin.identity.as_deref()?;
        match self.per_identity? {
            CacheIdentity::Sub => Some(identity.subject.as_str()).filter(|s| !s.is_empty()),
            CacheIdentity::ClientId => identity.client_id.as_deref().filter(|s| !s.is_empty()),
        }
    }

    /// RFC 9111 §4.4: a non-error answer to an unsafe request (`POST`, `PUT`, `DELETE`, …)
    /// invalidates what is stored for its URI, so the next read sees the change.
    pub async fn invalidate(&self, key: &pingora_cache::CacheKey) {
        let span = pingora_cache::trace::Span::inactive();
        let compact = key.to_compact();
        let target = pingora_cache::PurgeTarget::Active(&compact);
        let purged = storage()
            .purge(
                target,
                pingora_cache::PurgeType::Invalidation,
                &span.handle(),
            )
            .await;
        if let Err(e) = purged {
            log::debug!("cache invalidation failed: {e}");
        }
    }

    /// Turns the cache on for this request in Pingora's state machine.
    pub fn enable(&self, cache: &mut pingora_cache::HttpCache) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_timeout);
        // While the upstream is down, each revalidation of a stale entry fails and serves
        // it stale, and the requests waiting on that lock compete again for the next
        // attempt. Pingora lets a waiter do that twice, then sends it upstream with the
        // cache off, where no stale entry can answer for it: with 50 clients on one key,
        // one request in ten got the 502 that stale-if-error promises to hide
        // (benches/cache/run.sh, failure). A route that serves stale on errors lets its
        // waiters compete as long as its lock wait allows instead.
        if self.stale_if_error > 0 {
            overrides.max_lock_retries = Some(STALE_IF_ERROR_LOCK_RETRIES);
        }
        // The store evicts by itself as writes commit: no eviction manager here.
        cache.enable(
            storage(),
            None,
            Some(predictor()),
            Some(lock()),
            Some(overrides),
        );
        // A response whose Content-Length is over [cache] max_object_size bypasses the
        // cache before it reaches the store; one without is cut off by the store itself.
        cache.set_max_file_size_bytes(store::store().limits().max_object_size);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, ConfigError};

    /// The problems `portico check` reports for a route with `cache` (and `plugins`).
    fn problems(cache: &str, plugins: &str) -> Vec<ConfigError> {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n\n[clusters.c]\nendpoints = [{{ address = \"127.0.0.1:2\" }}]\n\n[[routes]]\nid = \"r\"\npath = \"/\"\ncluster = \"c\"\nmethods = [\"GET\", \"POST\"]\n{plugins}\n[routes.cache]\n{cache}\n"
        );
        match load_str("portico.toml", &text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn impossible_settings_are_refused_with_their_place() {
        let ok = problems("default_ttl = \"30s\"", "");
        assert!(ok.is_empty(), "{ok:?}");
        for (cache, field, line, says) in [
            (
                "methods = [\"POST\"]",
                "routes[0].cache.methods[0]",
                14,
                "only GET and HEAD",
            ),
            (
                "methods = [\"HEAD\"]",
                "routes[0].cache.methods",
                14,
                "none of these methods",
            ),
            (
                "methods = []",
                "routes[0].cache.methods",
                14,
                "must name GET",
            ),
            (
                "default_ttl = \"0s\"",
                "routes[0].cache.default_ttl",
                14,
                "longer than 0s",
            ),
            (
                "lock_timeout = \"5m\"",
                "routes[0].cache.lock_timeout",
                14,
                "at most 60s",
            ),
            (
                "query = { ignore = [] }",
                "routes[0].cache.query",
                14,
                "at least one",
            ),
            (
                "per_identity = \"sub\"",
                "routes[0].cache.per_identity",
                14,
                "needs a `jwt` plugin",
            ),
            (
                "query = \"shuffled\"",
                "routes[0].cache.query",
                14,
                "unknown variant",
            ),
            (
                "per_identity = \"email\"",
                "routes[0].cache.per_identity",
                14,
                "unknown variant",
            ),
            ("ttl = \"1s\"", "routes[0].cache.ttl", 14, "unknown field"),
        ] {
            let found = problems(cache, "");
            let p = found
                .iter()
                .find(|p| p.field == field)
                .unwrap_or_else(|| panic!("{cache}: no problem at {field}: {found:?}"));
            assert!(p.message.contains(says), "{cache}: {p:?}");
            assert_eq!(
                p.location.as_ref().map(|l| l.line),
                Some(line),
                "{cache}: {p:?}"
            );
            assert_eq!(p.file, "portico.toml");
        }
    }
}
