//! Process-wide counts of the `jwt` plugin's token checks, for `/metrics` and the admin
//! console: tokens verified, refused by reason, and verified-token cache hits and misses.
//!
//! A check costs one relaxed atomic add. Refusals are counted by their reason, a
//! `&'static str` from the plugin's fixed set, in a small table whose slots are claimed
//! once (`OnceLock`) and then only read: no lock and no allocation per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::AuthError;

static VERIFIED: AtomicU64 = AtomicU64::new(0);
static CACHE_HITS: AtomicU64 = AtomicU64::new(0);
static CACHE_MISSES: AtomicU64 = AtomicU64::new(0);

/// More than the plugin has reasons; a reason that finds no free slot is counted as
/// `other`, so the table can never grow.
const SLOTS: usize = 64;

struct Slot {
    /// (result, reason), set once.
    key: OnceLock<(&'static str, &'static str)>,
    count: AtomicU64,
}

static FAILED: [Slot; SLOTS] = [const {
    Slot {
        key: OnceLock::new(),
        count: AtomicU64::new(0),
    }
}; SLOTS];
static FAILED_OTHER: AtomicU64 = AtomicU64::new(0);

/// The counts so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStats {
    pub verified: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// (result, reason, count): result is the RFC 6750 error code, `missing_token` or
    /// `unavailable`; reason is the `error_description` sent.
    pub failed: Vec<(&'static str, &'static str, u64)>,
}

/// The counts so far.
pub fn token_stats() -> TokenStats {
    let mut failed: Vec<_> = FAILED
        .iter()
        .filter_map(|s| {
            let (result, reason) = *s.key.get()?;
            Some((result, reason, s.count.load(Ordering::Relaxed)))
        })
        .collect();
    let other = FAILED_OTHER.load(Ordering::Relaxed);
    if other > 0 {
        failed.push(("other", "other", other));
    }
    TokenStats {
        verified: VERIFIED.load(Ordering::Relaxed),
        cache_hits: CACHE_HITS.load(Ordering::Relaxed),
        cache_misses: CACHE_MISSES.load(Ordering::Relaxed),
        failed,
    }
}

pub(super) fn count_verified() {
    VERIFIED.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn count_cache(hit: bool) {
    let counter = if hit { &CACHE_HITS } else { &CACHE_MISSES };
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn count_failure(err: &AuthError) {
    let result = match err {
        AuthError::MissingToken => "missing_token",
        AuthError::Unavailable(_) => "unavailable",
        other => other.code().unwrap_or("other"),
    };
    let key = (result, err.description());
    for slot in &FAILED {
        let taken = *slot.key.get_or_init(|| key);
        if taken == key {
            slot.count.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    FAILED_OTHER.fetch_add(1, Ordering::Relaxed);
}
