//! The verified-token cache: a bounded map from the SHA-256 of a whole token to what verifying
//! it produced, so a token seen again costs a hash and a map lookup instead of a signature
//! check and two JSON parses. Entries carry their own expiry (the token's `exp`, or sooner)
//! and are never returned at or after it.
//!
//! It is split into shards, each a plain `Mutex<HashMap>`, so concurrent requests rarely
//! meet on one lock; a lock is only ever held for one lookup or insert, never across an
//! await. A full shard first drops its expired entries and otherwise the entry closest to
//! expiry, which would have left soon anyway.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, PoisonError};

/// The SHA-256 of a token.
pub(crate) type TokenHash = [u8; 32];

/// Shards at most; fewer for tiny caches, so the bound stays exact.
const MAX_SHARDS: usize = 16;

pub(crate) struct TokenCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
}

type Shard<V> = HashMap<Key, Entry<V>, BuildHasherDefault<PrefixHasher>>;

struct Entry<V> {
    value: V,
    /// Unix seconds; the entry is dead from this second on.
    expires_at: u64,
}

/// A token hash as a map key. Its bytes are already uniformly distributed by SHA-256, so the
/// map hashes it by taking eight of them instead of running SipHash over all 32.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(TokenHash);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[8..16]);
        state.write_u64(u64::from_le_bytes(word));
    }
}

#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; this keeps the hasher correct for anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl<V: Clone> TokenCache<V> {
    /// A cache of at most `capacity` entries; 0 disables it.
    pub(crate) fn new(capacity: usize) -> Self {
        let shards = capacity.clamp(1, MAX_SHARDS);
        TokenCache {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::default()))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            per_shard: capacity.div_ceil(shards),
        }
    }

    fn shard(&self, key: &TokenHash) -> &Mutex<Shard<V>> {
        &self.shards[usize::from(key[0]) % self.shards.len()]
    }

    /// The value stored for `key`, unless absent or expired at `now` (unix seconds).
    pub(crate) fn get(&self, key: &TokenHash, now: u64) -> Option<V> {
        if self.per_shard == 0 {
            return None;
        }
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get(&Key(*key)) {
            Some(entry) if now < entry.expires_at => Some(entry.value.clone()),
            _ => None,
        }
    }

    /// Stores `value` until `expires_at` (unix seconds); nothing is stored that is already
    /// dead at `now`.
    pub(crate) fn insert(&self, key: TokenHash, value: V, expires_at: u64, now: u64) {
        if self.per_shard == 0 || expires_at <= now {
            return;
        }
        let key = Key(key);
        let mut shard = self
            .shard(&key.0)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            // One pass drops the dead and finds the entry closest to expiry, in case none was.
            let mut soonest: Option<(Key, u64)> = None;
            shard.retain(|k, entry| {
                if entry.expires_at <= now {
                    return false;
                }
                if soonest.is_none_or(|(_, at)| entry.expires_at < at) {
                    soonest = Some((*k, entry.expires_at));
                }
                true
            });
            if shard.len() >= self.per_shard {
                if let Some((victim, _)) = soonest {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(key, Entry { value, expires_at });
    }

    /// Entries stored, dead ones included (tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> TokenHash {
        use sha2::{Digest, Sha256};
        Sha256::digest(n.to_le_bytes()).into()
    }

    #[test]
    fn entries_die_at_their_expiry() {
        let cache = TokenCache::new(8);
        cache.insert(key(1), "a", 100, 50);
        assert_eq!(cache.get(&key(1), 50), Some("a"));
        assert_eq!(cache.get(&key(1), 99), Some("a"));
        assert_eq!(cache.get(&key(1), 100), None);
        assert_eq!(cache.get(&key(2), 50), None);
        // Already dead: not stored at all.
        cache.insert(key(3), "c", 50, 50);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_bound_holds_and_the_dead_go_first() {
        let cache = TokenCache::new(4);
        for n in 0..100 {
            cache.insert(key(n), n, 1_000 + u64::from(n), 10);
            assert!(cache.len() <= 4, "{}", cache.len());
        }
        // The newest entry is always kept.
        assert_eq!(cache.get(&key(99), 10), Some(99));

        let cache = TokenCache::new(1);
        cache.insert(key(1), 1, 20, 10);
        // At 30 the first entry is dead and makes room.
        cache.insert(key(2), 2, 40, 30);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&key(2), 30), Some(2));
    }

    #[test]
    fn a_zero_capacity_disables_it() {
        let cache = TokenCache::new(0);
        cache.insert(key(1), 1, 100, 10);
        assert_eq!(cache.get(&key(1), 10), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_capacity_is_spread_over_shards() {
        let cache: TokenCache<u32> = TokenCache::new(10_000);
        assert_eq!(cache.shards.len(), MAX_SHARDS);
        assert_eq!(cache.per_shard, 625);
        let cache: TokenCache<u32> = TokenCache::new(3);
        assert_eq!((cache.shards.len(), cache.per_shard), (3, 1));
    }
}
