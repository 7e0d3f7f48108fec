//! Limiting repeated failed client authentication: after `max_failures` failures for one
//! client id within `window`, that id is refused for `lockout` without checking its secret
//! (so guessing costs no argon2 time either). In memory, per process.
//!
//! Keyed by the presented client id, known or not, so probing unknown ids is limited the
//! same way; the table is bounded so a flood of random ids cannot grow it without end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::FailedAuth;

/// Tracked ids at most; past it, stale entries are dropped and then new ids go untracked.
const MAX_TRACKED: usize = 100_000;

struct Entry {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

pub struct FailureLimiter {
    config: FailedAuth,
    entries: Mutex<HashMap<String, Entry>>,
}

impl FailureLimiter {
    pub fn new(config: FailedAuth) -> FailureLimiter {
        FailureLimiter {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(retry after)` while the id is locked out.
    pub fn locked(&self, client_id: &str) -> Option<Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let until = entries.get(client_id)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failure; returns `Some(retry after)` when it locked the id out.
    pub fn failed(&self, client_id: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_TRACKED && !entries.contains_key(client_id) {
            let window = self.config.window;
            entries.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now) || now - e.window_start < window
            });
            if entries.len() >= MAX_TRACKED {
                return None;
            }
        }
        let entry = entries.entry(client_id.to_string()).or_insert(Entry {
            window_start: now,
            failures: 0,
            locked_until: None,
        });
        if now - entry.window_start >= self.config.window {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures >= self.config.max_failures {
            entry.failures = 0;
            entry.window_start = now;
            entry.locked_until = Some(now + self.config.lockout);
            return Some(self.config.lockout);
        }
        None
    }

    /// A successful authentication clears the id's record.
    pub fn succeeded(&self, client_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(client_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures() {
        let l = FailureLimiter::new(FailedAuth {
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(30),
        });
        assert!(l.failed("a").is_none());
        assert!(l.failed("a").is_none());
        assert!(l.locked("a").is_none());
        assert!(l.failed("a").is_some());
        assert!(l.locked("a").unwrap() <= Duration::from_secs(30));
        assert!(l.locked("b").is_none());
        l.succeeded("a");
        assert!(l.locked("a").is_none());
    }
}
