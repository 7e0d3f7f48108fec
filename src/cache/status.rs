//! How the cache answered one request, named once for all three places that report it:
//! the `Cache-Status` response header (RFC 9211), the access log's `cache` field and the
//! `result` label of `portico_cache_lookups_total`.

use std::time::SystemTime;

use pingora_cache::{CachePhase, HttpCache, NoCacheReason};

use super::Bypass;

/// The cache's part in one request, recorded by the proxy's cache hooks.
#[derive(Debug, Default)]
pub struct RequestState {
    /// The request did not use the cache at all, and why.
    pub bypass: Option<Bypass>,
    /// The request carried credentials (an `Authorization` header or a verified identity).
    pub authorized: bool,
    /// The key holds the caller's identity.
    pub per_identity: bool,
    /// What the lookup found: `Some(true)` fresh, `Some(false)` stale, `None` nothing (or
    /// no lookup).
    pub found: Option<bool>,
    /// The lookup found nothing and this request went upstream to fill the entry.
    pub missed: bool,
    /// A stale entry answers because the upstream failed; the upstream's status, if it
    /// answered at all.
    pub stale_on_error: Option<Option<u16>>,
    /// The outcome, fixed when the response header is written.
    pub outcome: Option<Outcome>,
    /// Body bytes written into the cache by this request.
    pub stored_bytes: u64,
}

impl RequestState {
    /// Nothing recorded yet.
    pub const EMPTY: RequestState = RequestState {
        bypass: None,
        authorized: false,
        per_identity: false,
        found: None,
        missed: false,
        stale_on_error: None,
        outcome: None,
        stored_bytes: 0,
    };
}

/// The outcome of a request on a cached route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh stored response answered.
    Hit,
    /// Nothing was stored; the upstream answered (and its answer may now be stored).
    Miss,
    /// A stale stored response answered: while it is refreshed, or because the upstream
    /// failed.
    Stale,
    /// A stale stored response was confirmed by the upstream (`304`) and answered.
    Revalidated,
    /// A stale stored response was replaced by the upstream's new one.
    Expired,
    /// The cache was not used.
    Bypass,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Stale,
        Outcome::Revalidated,
        Outcome::Expired,
        Outcome::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Revalidated => "revalidated",
            Outcome::Expired => "expired",
            Outcome::Bypass => "bypass",
        }
    }

    /// Reads the outcome off Pingora's cache phase and what the hooks recorded.
    pub fn of(cache: &HttpCache, state: &RequestState) -> Outcome {
        match cache.phase() {
            CachePhase::Hit => Outcome::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => Outcome::Stale,
            CachePhase::Miss => Outcome::Miss,
            CachePhase::Expired => Outcome::Expired,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Outcome::Revalidated,
            // Disabled after the lookup (not storable, lock timeout, upstream error): the
            // lookup's finding still says what happened.
            // The key's last response could not be stored, so no lookup was made: a miss.
            CachePhase::Bypass if state.bypass.is_none() => Outcome::Miss,
            CachePhase::Disabled(_) | CachePhase::Bypass => match state.found {
                _ if state.bypass.is_some() => Outcome::Bypass,
                Some(false) => Outcome::Expired,
                Some(true) => Outcome::Hit,
                None if state.missed
                    || waited_in_vain(cache)
                    || cache.predicted_uncacheable_reason().is_some() =>
                {
                    Outcome::Miss
                }
                None => Outcome::Bypass,
            },
            CachePhase::Uninit | CachePhase::CacheKey => Outcome::Bypass,
        }
    }
}

/// Whether the request missed, waited for another request's fill and then gave up on it.
fn waited_in_vain(cache: &HttpCache) -> bool {
    matches!(
        cache.phase(),
        CachePhase::Disabled(
            NoCacheReason::CacheLockTimeout
                | NoCacheReason::CacheLockGiveUp
                | NoCacheReason::CacheLockRetryLimit
        )
    )
}

/// The `Cache-Status` value (RFC 9211) for a response of a cached route.
pub fn header_value(cache: &HttpCache, state: &RequestState, outcome: Outcome) -> String {
    let mut v = String::from("portico; ");
    let ttl = || {
        cache.maybe_cache_meta().map(|meta| {
            let until = meta.fresh_until();
            let now = SystemTime::now();
            match until.duration_since(now) {
                Ok(left) => left.as_secs() as i64,
                // Stale by a fraction of a second is already stale: never `ttl=0`.
                Err(past) => -(past.duration().as_millis().div_ceil(1000) as i64),
            }
        })
    };
    let push_ttl = |v: &mut String| {
        if let Some(ttl) = ttl() {
            v.push_str(&format!("; ttl={ttl}"));
        }
    };
    let stored = cache.enabled()
        && matches!(cache.phase(), CachePhase::Miss | CachePhase::Expired)
        && cache.maybe_cache_meta().is_some();
    match outcome {
        Outcome::Hit => {
            v.push_str("hit");
            push_ttl(&mut v);
        }
        Outcome::Stale => match state.stale_on_error {
            Some(status) => {
                v.push_str("fwd=stale");
                if let Some(status) = status {
                    v.push_str(&format!("; fwd-status={status}"));
                }
                push_ttl(&mut v);
                v.push_str("; detail=stale-if-error");
            }
            None => {
                v.push_str("hit");
                push_ttl(&mut v);
                v.push_str("; detail=stale-while-revalidate");
            }
        },
        Outcome::Revalidated => {
            v.push_str("fwd=stale; fwd-status=304");
            push_ttl(&mut v);
        }
        Outcome::Miss | Outcome::Expired => {
            v.push_str(if outcome == Outcome::Miss {
                "fwd=miss"
            } else {
                "fwd=stale"
            });
            let not_stored = match cache.phase() {
                CachePhase::Disabled(reason) => Some(reason),
                CachePhase::Bypass => cache.predicted_uncacheable_reason(),
                _ => None,
            };
            if stored {
                v.push_str("; stored");
            } else if let Some(reason) = not_stored {
                v.push_str("; detail=");
                v.push_str(detail(reason));
            }
        }
        Outcome::Bypass => match state.bypass {
            Some(Bypass::Method) => v.push_str("fwd=method"),
            Some(Bypass::NoIdentity) => v.push_str("fwd=bypass; detail=no-identity"),
            None => v.push_str("fwd=bypass"),
        },
    }
    v
}

/// A reason a response was not stored, as a `detail` token.
fn detail(reason: NoCacheReason) -> &'static str {
    match reason {
        NoCacheReason::Custom(why) => why,
        NoCacheReason::OriginNotCache => "origin-not-cacheable",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::CacheLockGiveUp => "lock-gave-up",
        NoCacheReason::UpstreamError => "upstream-error",
        _ => "not-stored",
    }
}
