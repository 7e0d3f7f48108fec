//! The in-process limiter: GCRA (the generic cell rate algorithm, a token bucket stored as one
//! number per key) over sharded maps of key → theoretical arrival time, with bounded memory.
//!
//! GCRA keeps, per key, the *theoretical arrival time* (TAT): the instant at which the bucket
//! would be full again. A request at `now` is allowed when `max(TAT, now) + interval - burst *
//! interval <= now`, and then moves the TAT on by one interval. One `u64` per key and no
//! timer make it cheap to store and exact: every decision for a key happens under its shard's
//! lock, a few arithmetic operations long, never across an await.
//!
//! A key whose TAT is in the past has a full bucket, which is the same as having no entry at
//! all, so such keys are dropped by a sweep that runs on a shard every few seconds of traffic,
//! and when a shard reaches its share of `max_keys`. Written by hand because the rate-limit
//! crates either count in fixed windows, need a clock abstraction of their own, or keep keys
//! forever.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Shards of the key map: enough that two cores rarely wait on the same lock.
const SHARDS: usize = 32;

/// How often, in nanoseconds of traffic on a shard, buckets that are full again are dropped.
const SWEEP_EVERY: u64 = 5_000_000_000;

/// Monotonic nanoseconds since the limiter was built: the local time base of every TAT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        // u64 nanoseconds last 584 years.
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// What the limiter decided for one request, and the bucket's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    /// Requests the key may still send right now.
    pub remaining: u64,
    /// Until the next request would be allowed (zero when this one was).
    pub retry_after: Duration,
    /// Until the bucket is full again.
    pub reset_after: Duration,
}

/// GCRA parameters in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Time one request's token takes to come back: `period / rate`.
    pub interval: u64,
    /// Bucket capacity: requests allowed at once from a full bucket.
    pub burst: u64,
}

impl Gcra {
    /// `burst * interval`; checked not to overflow when the config is validated.
    fn span(&self) -> u64 {
        self.interval * self.burst
    }

    /// Decides one request at `now` for a key whose stored TAT is `stored`; returns the
    /// decision and the TAT to store when the request is allowed.
    pub(crate) fn decide(&self, stored: Option<u64>, now: u64) -> (Decision, Option<u64>) {
        let tat = stored.map_or(now, |t| t.max(now));
        let new_tat = tat + self.interval;
        let allow_at = new_tat.saturating_sub(self.span());
        if now < allow_at {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_nanos(allow_at - now),
                reset_after: Duration::from_nanos(tat - now),
            };
            return (decision, None);
        }
        let decision = Decision {
            allowed: true,
            remaining: (now + self.span() - new_tat) / self.interval,
            retry_after: Duration::ZERO,
            reset_after: Duration::from_nanos(new_tat - now),
        };
        (decision, Some(new_tat))
    }

    /// Remaining requests and time until full, for a key whose stored TAT is `stored`.
    pub(crate) fn state(&self, stored: Option<u64>, now: u64) -> (u64, Duration) {
        let tat = stored.map_or(now, |t| t.max(now));
        let remaining = (now + self.span()).saturating_sub(tat) / self.interval;
        (remaining, Duration::from_nanos(tat - now))
    }
}

/// One shard: key → TAT, plus when to sweep it next.
#[derive(Debug, Default)]
struct Shard {
    tats: HashMap<Box<str>, u64>,
    next_sweep: u64,
}

impl Shard {
    /// Drops full buckets when a sweep is due.
    fn sweep_if_due(&mut self, now: u64) {
        if now >= self.next_sweep {
            self.tats.retain(|_, tat| *tat > now);
            self.next_sweep = now + SWEEP_EVERY;
        }
    }

    /// Makes room for one more key when the shard is at `cap`: first by dropping full
    /// buckets, then, if every bucket is still in use, by dropping the half closest to full
    /// (those keys start again from a full bucket: a bounded leak of allowance, the price of
    /// bounded memory). Halving at once keeps the cost amortised O(1) per insert even under a
    /// flood of new keys. Returns how many buckets in use were dropped.
    fn make_room(&mut self, now: u64, cap: usize) -> u64 {
        if self.tats.len() < cap {
            return 0;
        }
        self.tats.retain(|_, tat| *tat > now);
        self.next_sweep = now + SWEEP_EVERY;
        if self.tats.len() < cap {
            return 0;
        }
        let mut tats: Vec<u64> = self.tats.values().copied().collect();
        let middle = tats.len() / 2;
        let (_, pivot, _) = tats.select_nth_unstable(middle);
        let pivot = *pivot;
        let before = self.tats.len();
        self.tats.retain(|_, tat| *tat > pivot);
        (before - self.tats.len()) as u64
    }
}

/// Per-key GCRA buckets in process memory, at most about `max_keys` of them.
#[derive(Debug)]
pub(crate) struct LocalStore {
    gcra: Gcra,
    shard_cap: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl LocalStore {
    pub(crate) fn new(gcra: Gcra, max_keys: usize) -> Self {
        LocalStore {
            gcra,
            shard_cap: max_keys.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A panic under this lock cannot leave a half-written TAT: every write is one store.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides one request for `key` at `now`; also returns how many buckets in use were
    /// evicted to make room for a new key.
    pub(crate) fn check(&self, key: &str, now: u64) -> (Decision, u64) {
        let mut shard = self.shard(key);
        let mut evicted = 0;
        let decision = match shard.tats.get_mut(key) {
            Some(tat) => {
                let (decision, new_tat) = self.gcra.decide(Some(*tat), now);
                if let Some(new_tat) = new_tat {
                    *tat = new_tat;
                }
                decision
            }
            None => {
                let (decision, new_tat) = self.gcra.decide(None, now);
                if let Some(new_tat) = new_tat {
                    evicted = shard.make_room(now, self.shard_cap);
                    shard.tats.insert(key.into(), new_tat);
                }
                decision
            }
        };
        shard.sweep_if_due(now);
        (decision, evicted)
    }

    /// The state of `key`'s bucket at `now`, without spending anything.
    pub(crate) fn peek(&self, key: &str, now: u64) -> (u64, Duration) {
        let stored = self.shard(key).tats.get(key).copied();
        self.gcra.state(stored, now)
    }

    /// Records a bucket state decided elsewhere (by Redis): full again `reset_after` from
    /// `now`. Returns how many buckets in use were evicted to make room.
    pub(crate) fn observe(&self, key: &str, now: u64, reset_after: Duration) -> u64 {
        let tat = now.saturating_add(reset_after.as_nanos().min(u64::MAX as u128) as u64);
        let mut shard = self.shard(key);
        let mut evicted = 0;
        if let Some(stored) = shard.tats.get_mut(key) {
            *stored = tat;
        } else if tat > now {
            evicted = shard.make_room(now, self.shard_cap);
            shard.tats.insert(key.into(), tat);
        }
        shard.sweep_if_due(now);
        evicted
    }

    /// Keys currently held (buckets not known to be full again).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).tats.len())
            .sum()
    }

    /// The most keys this store holds.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shard_cap * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_allows_burst_then_refills_one_interval_at_a_time() {
        let store = LocalStore::new(
            Gcra {
                interval: 100 * MS,
                burst: 3,
            },
            100,
        );
        let t0 = 1_000 * MS;
        for remaining in [2, 1, 0] {
            let (d, _) = store.check("k", t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
            assert_eq!(d.retry_after, Duration::ZERO);
        }
        // Full again 300 ms after three requests at once.
        assert_eq!(store.peek("k", t0), (0, ms(300)));

        let (d, _) = store.check("k", t0);
        assert_eq!(
            d,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after: ms(100),
                reset_after: ms(300),
            }
        );
        // A refused request spends nothing.
        let (d, _) = store.check("k", t0 + 99 * MS);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, ms(1));

        // One token back after exactly one interval, and only one.
        let (d, _) = store.check("k", t0 + 100 * MS);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!store.check("k", t0 + 100 * MS).0.allowed);

        // Two intervals later two more; after the whole span the bucket is full.
        assert_eq!(store.peek("k", t0 + 300 * MS), (2, ms(100)));
        assert_eq!(store.peek("k", t0 + 400 * MS), (3, Duration::ZERO));
        assert_eq!(store.peek("k", t0 + 10_000 * MS), (3, Duration::ZERO));
        // Idle time never saves up more than the burst.
        for _ in 0..3 {
            assert!(store.check("k", t0 + 10_000 * MS).0.allowed);
        }
        assert!(!store.check("k", t0 + 10_000 * MS).0.allowed);
    }

    #[test]
    fn a_steady_rate_at_the_limit_is_never_refused() {
        let gcra = Gcra {
            interval: 10 * MS,
            burst: 1,
        };
        let store = LocalStore::new(gcra, 10);
        for i in 0..1_000 {
            assert!(store.check("k", i * 10 * MS).0.allowed, "request {i}");
        }
        assert!(!store.check("k", 999 * 10 * MS + 5 * MS).0.allowed);
    }

    #[test]
    fn keys_are_independent() {
        let store = LocalStore::new(
            Gcra {
                interval: 1_000 * MS,
                burst: 1,
            },
            100,
        );
        assert!(store.check("a", 0).0.allowed);
        assert!(!store.check("a", 0).0.allowed);
        assert!(store.check("b", 0).0.allowed);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_new_keys() {
        let store = LocalStore::new(
            Gcra {
                interval: 60_000 * MS,
                burst: 5,
            },
            1_000,
        );
        let cap = store.capacity();
        assert!((1_000..1_000 + SHARDS).contains(&cap), "{cap}");
        let mut evicted = 0;
        for i in 0..50_000u64 {
            let (d, e) = store.check(&format!("key-{i}"), i);
            assert!(d.allowed);
            evicted += e;
            assert!(store.len() <= cap);
        }
        // Every bucket was in use, so making room evicted some.
        assert!(evicted >= 50_000 - cap as u64, "{evicted}");
        assert!(
            store.len() > cap / 4,
            "eviction keeps about half: {}",
            store.len()
        );
    }

    #[test]
    fn idle_keys_whose_bucket_is_full_again_are_swept() {
        let store = LocalStore::new(
            Gcra {
                interval: 10 * MS,
                burst: 2,
            },
            10_000,
        );
        for i in 0..1_000 {
            store.check(&format!("idle{i}"), 0);
        }
        assert_eq!(store.len(), 1_000);
        // Every bucket is full again after 20 ms; traffic on a shard after the sweep
        // interval drops its idle keys (1 000 keys touch all 32 shards).
        let later = SWEEP_EVERY + 1;
        for i in 0..1_000 {
            store.check(&format!("late{i}"), later);
        }
        assert_eq!(store.len(), 1_000, "only the late keys are left");
        // A swept key starts from a full bucket, exactly as if it had been kept.
        assert_eq!(store.peek("idle1", later), (2, Duration::ZERO));
    }

    #[test]
    fn sweeping_keeps_buckets_in_use() {
        let store = LocalStore::new(
            Gcra {
                interval: 2 * SWEEP_EVERY,
                burst: 1,
            },
            10_000,
        );
        assert!(store.check("busy", 0).0.allowed);
        let later = SWEEP_EVERY + 1;
        for i in 0..1_000 {
            store.check(&format!("other{i}"), later);
        }
        assert!(!store.check("busy", later).0.allowed);
    }

    #[test]
    fn observed_states_are_reported_back() {
        let store = LocalStore::new(
            Gcra {
                interval: 100 * MS,
                burst: 10,
            },
            100,
        );
        store.observe("k", 0, ms(350));
        assert_eq!(store.peek("k", 0), (6, ms(350)));
        assert_eq!(store.peek("k", 50 * MS), (7, ms(300)));
        // Redis is the authority: a later answer replaces the earlier one, even if lower.
        store.observe("k", 0, ms(100));
        assert_eq!(store.peek("k", 0), (9, ms(100)));
        // A full bucket needs no entry.
        store.observe("fresh", 0, Duration::ZERO);
        assert_eq!(store.len(), 1);
    }
}
