//! Limits on client authentication, checked before any secret is hashed: exponential
//! back-off after failures, keyed by client id *and* source address (so nobody can lock a
//! client out from somewhere else) and by source address alone (so one place cannot spray
//! many ids), plus a token bucket of secret checks per source address (so a flood of
//! requests, failing or not yet failed, costs its own address the waiting, not everyone).
//!
//! In memory, per process. Every table is bounded; a full table first forgets entries
//! that carry no state any more, then those that matter least: failures that started no
//! back-off, oldest first, before any entry that is backing off; the fullest buckets
//! before emptier ones. New failures are always recorded. So filling a table with random
//! ids evicts the flood's own one-failure entries rather than the back-off of an address
//! that was guessing, and the per-address tables still hold the flooding address back,
//! whatever ids it invents.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::{FailedAuth, SecretChecks};

/// Why an attempt was refused before its secret was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// This client id from this address is backing off after failures.
    ClientBackoff,
    /// This address is backing off after failures, whatever the client id.
    AddressBackoff,
    /// This address has spent its secret checks for now.
    AddressRate,
}

impl Limit {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ClientBackoff => "client_backoff",
            Limit::AddressBackoff => "address_backoff",
            Limit::AddressRate => "address_rate",
        }
    }
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after: Duration,
}

/// What a recorded failure did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureOutcome {
    /// The client id and address now back off for this long.
    pub client_backoff: Option<Duration>,
    /// The address now backs off for this long.
    pub address_backoff: Option<Duration>,
}

/// The address a limit counts: IPv4 as is, IPv6 by its /64, the smallest block one
/// subscriber usually gets (a host with a /64 has 2^64 addresses to rotate through).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Consecutive failures and the back-off they caused.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    last: Instant,
    blocked_until: Instant,
}

impl Backoff {
    fn new(now: Instant) -> Backoff {
        Backoff {
            failures: 0,
            last: now,
            blocked_until: now,
        }
    }

    /// The failure count at `now`: halved for every quiet `window` since the last failure
    /// or the end of the back-off, whichever is later.
    fn decayed(&self, now: Instant, window: Duration) -> u32 {
        let since = self.last.max(self.blocked_until);
        let quiet = now.saturating_duration_since(since);
        let halvings = (quiet.as_nanos() / window.as_nanos().max(1)).min(32) as u32;
        self.failures.checked_shr(halvings).unwrap_or(0)
    }

    fn blocked(&self, now: Instant) -> Option<Duration> {
        (self.blocked_until > now).then(|| self.blocked_until - now)
    }

    /// Counts a failure; returns the back-off it starts, if it reached `threshold`.
    fn fail(&mut self, now: Instant, threshold: u32, c: &FailedAuth) -> Option<Duration> {
        self.failures = self.decayed(now, c.window).saturating_add(1);
        self.last = now;
        if self.failures < threshold {
            return None;
        }
        let doublings = (self.failures - threshold).min(30);
        let delay = c
            .backoff
            .checked_mul(1u32 << doublings)
            .unwrap_or(c.max_backoff)
            .min(c.max_backoff);
        self.blocked_until = self.blocked_until.max(now + delay);
        Some(delay)
    }

    /// Nothing left to remember: not blocked, and every failure forgotten.
    fn forgotten(&self, now: Instant, window: Duration) -> bool {
        self.blocked_until <= now && self.decayed(now, window) == 0
    }
}

/// A token bucket of secret checks.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, c: &SecretChecks) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * c.per_address_rate).min(c.per_address_burst as f64);
        self.last = now;
    }

    /// A full bucket is the same as none.
    fn full(&self, now: Instant, c: &SecretChecks) -> bool {
        let mut b = *self;
        b.refill(now, c);
        b.tokens >= c.per_address_burst as f64
    }
}

/// A bounded map whose entries know when they were last touched.
struct Table<K, V> {
    map: HashMap<K, V>,
    max: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Copy, V> Table<K, V> {
    fn new(max: usize) -> Self {
        Table {
            map: HashMap::new(),
            max,
            evicted: 0,
        }
    }

    /// The entry for `key`, made room for when the table is full: entries `stale` says
    /// carry nothing are dropped first, then the eighth ranked lowest by `rank`. Ranking
    /// an eighth of the table once per eighth of its size in inserts keeps the cost per
    /// insert logarithmic.
    fn entry<R: Ord>(
        &mut self,
        key: K,
        fresh: impl FnOnce() -> V,
        stale: impl Fn(&V) -> bool,
        rank: impl Fn(&V) -> R,
    ) -> &mut V {
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            let before = self.map.len();
            self.map.retain(|_, v| !stale(v));
            if self.map.len() >= self.max {
                let mut ranked: Vec<(R, K)> = self.map.iter().map(|(k, v)| (rank(v), *k)).collect();
                let drop = (self.max / 8).max(1).min(ranked.len());
                ranked.select_nth_unstable_by(drop - 1, |a, b| a.0.cmp(&b.0));
                for (_, k) in &ranked[..drop] {
                    self.map.remove(k);
                }
            }
            let dropped = (before - self.map.len()) as u64;
            self.evicted += dropped;
            super::metrics::AUTH_METRICS
                .limiter_evictions
                .inc_by(dropped);
        }
        self.map.entry(key).or_insert_with(fresh)
    }
}

struct Tables {
    /// (hash of the client id, address) → back-off. The id is kept as a keyed 64-bit
    /// hash: fixed size whatever the caller sends, and a collision only makes two ids
    /// share a back-off.
    pairs: Table<(u64, IpAddr), Backoff>,
    addresses: Table<IpAddr, Backoff>,
    buckets: Table<IpAddr, Bucket>,
}

/// Table sizes and evictions so far, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub pairs: usize,
    pub addresses: usize,
    pub buckets: usize,
    pub evicted: u64,
}

pub struct AuthLimiter {
    failures: FailedAuth,
    checks: SecretChecks,
    ids: RandomState,
    tables: Mutex<Tables>,
}

impl AuthLimiter {
    pub fn new(failures: FailedAuth, checks: SecretChecks) -> AuthLimiter {
        let max = failures.max_tracked;
        AuthLimiter {
            failures,
            checks,
            ids: RandomState::new(),
            tables: Mutex::new(Tables {
                pairs: Table::new(max),
                addresses: Table::new(max),
                buckets: Table::new(max),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pair(&self, client_id: &str, ip: IpAddr) -> (u64, IpAddr) {
        (self.ids.hash_one(client_id), address_key(ip))
    }

    /// Whether an attempt by `client_id` from `ip` may have its secret checked now; if
    /// so, it has spent one of the address's checks.
    pub fn admit(&self, client_id: &str, ip: IpAddr) -> Result<(), Refusal> {
        self.admit_at(client_id, ip, Instant::now())
    }

    fn admit_at(&self, client_id: &str, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let pair = self.pair(client_id, ip);
        let addr = pair.1;
        let mut t = self.lock();
        if let Some(wait) = t.pairs.map.get(&pair).and_then(|b| b.blocked(now)) {
            return Err(Refusal {
                limit: Limit::ClientBackoff,
                retry_after: wait,
            });
        }
        if let Some(wait) = t.addresses.map.get(&addr).and_then(|b| b.blocked(now)) {
            return Err(Refusal {
                limit: Limit::AddressBackoff,
                retry_after: wait,
            });
        }
        let c = &self.checks;
        let burst = c.per_address_burst as f64;
        let bucket = t.buckets.entry(
            addr,
            || Bucket {
                tokens: burst,
                last: now,
            },
            |b| b.full(now, c),
            // The fullest buckets go first: dropping one changes least.
            |b| {
                let mut b = *b;
                b.refill(now, c);
                std::cmp::Reverse((b.tokens * 1000.0) as u64)
            },
        );
        bucket.refill(now, c);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / c.per_address_rate;
            Err(Refusal {
                limit: Limit::AddressRate,
                retry_after: Duration::from_secs_f64(wait.max(0.001)),
            })
        }
    }

    /// Counts a failed authentication of `client_id` (known or not) from `ip`.
    pub fn failed(&self, client_id: &str, ip: IpAddr) -> FailureOutcome {
        self.failed_at(client_id, ip, Instant::now())
    }

    fn failed_at(&self, client_id: &str, ip: IpAddr, now: Instant) -> FailureOutcome {
        let pair = self.pair(client_id, ip);
        let c = &self.failures;
        let mut t = self.lock();
        let stale = |b: &Backoff| b.forgotten(now, c.window);
        // Entries backing off are kept longest, the one ending last longest of all; below
        // them, the oldest failures go first.
        let rank = |b: &Backoff| (b.blocked_until > now, b.last.max(b.blocked_until));
        let client_backoff =
            t.pairs
                .entry(pair, || Backoff::new(now), stale, rank)
                .fail(now, c.max_failures, c);
        let address_backoff = t
            .addresses
            .entry(pair.1, || Backoff::new(now), stale, rank)
            .fail(now, c.address_max_failures, c);
        FailureOutcome {
            client_backoff,
            address_backoff,
        }
    }

    /// A successful authentication forgets the failures of this client id from this
    /// address (not those of the address: other ids may be failing there).
    pub fn succeeded(&self, client_id: &str, ip: IpAddr) {
        let pair = self.pair(client_id, ip);
        self.lock().pairs.map.remove(&pair);
    }

    pub fn occupancy(&self) -> Occupancy {
        let t = self.lock();
        Occupancy {
            pairs: t.pairs.map.len(),
            addresses: t.addresses.map.len(),
            buckets: t.buckets.map.len(),
            evicted: t.pairs.evicted + t.addresses.evicted + t.buckets.evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_tracked: usize) -> AuthLimiter {
        AuthLimiter::new(
            FailedAuth {
                max_failures: 3,
                address_max_failures: 10,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
                window: Duration::from_secs(60),
                max_tracked,
            },
            SecretChecks {
                per_address_rate: 1.0,
                per_address_burst: 1000,
                max_queued: 8,
            },
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn backoff_grows_per_client_and_address_and_stays_there() {
        let l = limiter(1000);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let t0 = Instant::now();
        assert_eq!(l.failed_at("svc", a, t0), FailureOutcome::default());
        assert_eq!(l.failed_at("svc", a, t0), FailureOutcome::default());
        assert!(l.admit_at("svc", a, t0).is_ok());
        // The third failure starts a 1 s back-off; the next ones double it.
        let out = l.failed_at("svc", a, t0);
        assert_eq!(out.client_backoff, Some(Duration::from_secs(1)));
        let refused = l.admit_at("svc", a, t0).unwrap_err();
        assert_eq!(refused.limit, Limit::ClientBackoff);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.admit_at("svc", a, t1).is_ok());
        assert_eq!(
            l.failed_at("svc", a, t1).client_backoff,
            Some(Duration::from_secs(2))
        );
        let t3 = t1 + Duration::from_secs(2);
        assert_eq!(
            l.failed_at("svc", a, t3).client_backoff,
            Some(Duration::from_secs(4))
        );
        // The same client id from elsewhere, and another id from here, are not held back.
        assert!(l.admit_at("svc", b, t3).is_ok());
        assert!(l.admit_at("other", a, t3).is_ok());
        // A success from the attacked place forgets that pair's failures.
        l.succeeded("svc", a);
        assert!(l.admit_at("svc", a, t3).is_ok());
    }

    #[test]
    fn the_cap_is_max_backoff_and_quiet_windows_forget() {
        let l = limiter(1000);
        let a = ip("10.0.0.1");
        let mut now = Instant::now();
        let mut last = None;
        for _ in 0..12 {
            last = l.failed_at("svc", a, now).client_backoff;
            now += last.unwrap_or_default();
        }
        assert_eq!(last, Some(Duration::from_secs(60)));
        // Two quiet windows after the back-off: 12 failures → 3, one more still backs off
        // (the count only halves), and ten quiet windows forget everything.
        let later = now + Duration::from_secs(120);
        assert!(l.failed_at("svc", a, later).client_backoff.is_some());
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(l.failed_at("svc", a, much_later).client_backoff, None);
    }

    #[test]
    fn one_address_spraying_ids_backs_off_as_a_whole() {
        let l = limiter(1000);
        let a = ip("10.0.0.1");
        let now = Instant::now();
        for i in 0..9 {
            assert_eq!(
                l.failed_at(&format!("id-{i}"), a, now).address_backoff,
                None
            );
        }
        assert!(l.failed_at("id-9", a, now).address_backoff.is_some());
        let refused = l.admit_at("never-seen", a, now).unwrap_err();
        assert_eq!(refused.limit, Limit::AddressBackoff);
        assert!(l.admit_at("never-seen", ip("10.0.0.2"), now).is_ok());
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn a_flood_of_random_ids_does_not_switch_limiting_off() {
        let l = limiter(64);
        let victim_attacker = ip("10.9.9.9");
        let now = Instant::now();
        // An attacker from one address works on `svc` and is backing off.
        for _ in 0..3 {
            l.failed_at("svc", victim_attacker, now);
        }
        assert!(l.admit_at("svc", victim_attacker, now).is_err());
        // A flood of random ids from many addresses fills every table many times over.
        for i in 0..10_000u32 {
            let addr = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            l.failed_at(&format!("random-{i}"), addr, now);
        }
        let o = l.occupancy();
        assert!(o.pairs <= 64 && o.addresses <= 64, "{o:?}");
        assert!(o.evicted > 0);
        // The flood evicted its own entries, not the attacker's back-off.
        assert_eq!(
            l.admit_at("svc", victim_attacker, now).unwrap_err().limit,
            Limit::ClientBackoff
        );
        // New failures are still counted and still back off: limiting is not off.
        let later = now + Duration::from_secs(1);
        for _ in 0..3 {
            l.failed_at("svc", ip("10.8.8.8"), later);
        }
        assert_eq!(
            l.admit_at("svc", ip("10.8.8.8"), later).unwrap_err().limit,
            Limit::ClientBackoff
        );
        // And an address spraying ids is held back whatever the flood did.
        for i in 0..10 {
            l.failed_at(&format!("spray-{i}"), ip("10.7.7.7"), later);
        }
        assert_eq!(
            l.admit_at("anything", ip("10.7.7.7"), later)
                .unwrap_err()
                .limit,
            Limit::AddressBackoff
        );
    }

    #[test]
    fn the_bucket_bounds_checks_per_address() {
        let l = AuthLimiter::new(
            FailedAuth::default(),
            SecretChecks {
                per_address_rate: 2.0,
                per_address_burst: 3,
                max_queued: 8,
            },
        );
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let now = Instant::now();
        for _ in 0..3 {
            assert!(l.admit_at("svc", a, now).is_ok());
        }
        let refused = l.admit_at("svc", a, now).unwrap_err();
        assert_eq!(refused.limit, Limit::AddressRate);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert!(l.admit_at("svc", b, now).is_ok());
        assert!(l
            .admit_at("svc", a, now + Duration::from_millis(500))
            .is_ok());
    }
}
