//! Retry budgets: a cluster accepts retries only up to a share of its recent requests plus
//! a small floor per second, counted over a 10-second window, so retries can never
//! multiply the load on an upstream that is failing as a whole.

use std::sync::Mutex;
use std::time::Instant;

use crate::config;

const WINDOW_SECONDS: usize = 10;

pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    epoch: Instant,
    /// (second, requests, retries) per bucket. A tiny critical section: two counter
    /// updates, never across an await.
    buckets: Mutex<[(u64, u32, u32); WINDOW_SECONDS]>,
}

impl RetryBudget {
    pub fn new(cfg: &config::RetryBudget) -> RetryBudget {
        RetryBudget {
            ratio: cfg.ratio,
            min_per_second: cfg.min_per_second,
            epoch: Instant::now(),
            buckets: Mutex::new([(u64::MAX, 0, 0); WINDOW_SECONDS]),
        }
    }

    fn with_bucket<R>(
        &self,
        f: impl FnOnce(&mut [(u64, u32, u32); WINDOW_SECONDS], usize, u64) -> R,
    ) -> R {
        let second = self.epoch.elapsed().as_secs();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let index = (second as usize) % WINDOW_SECONDS;
        if buckets[index].0 != second {
            buckets[index] = (second, 0, 0);
        }
        f(&mut buckets, index, second)
    }

    /// Counts a request's first attempt.
    pub fn record_request(&self) {
        self.with_bucket(|b, i, _| b[i].1 += 1);
    }

    /// Takes one retry from the budget, or says there is none left.
    pub fn try_retry(&self) -> bool {
        self.with_bucket(|b, i, second| {
            let usage = self.usage_in(b, second);
            if (usage.retries as f64) < usage.allowed {
                b[i].2 += 1;
                true
            } else {
                false
            }
        })
    }

    /// The window's requests, retries and retries allowed, for the admin API.
    pub fn usage(&self) -> BudgetUsage {
        self.with_bucket(|b, _, second| self.usage_in(b, second))
    }

    fn usage_in(&self, b: &[(u64, u32, u32); WINDOW_SECONDS], second: u64) -> BudgetUsage {
        let oldest = second.saturating_sub(WINDOW_SECONDS as u64 - 1);
        let (requests, retries) = b
            .iter()
            .filter(|x| x.0 != u64::MAX && x.0 >= oldest)
            .fold((0u64, 0u64), |(r, t), x| (r + x.1 as u64, t + x.2 as u64));
        BudgetUsage {
            requests,
            retries,
            allowed: self.ratio * requests as f64
                + self.min_per_second as f64 * WINDOW_SECONDS as f64,
        }
    }
}

/// A retry budget's last 10 seconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BudgetUsage {
    pub requests: u64,
    pub retries: u64,
    /// Retries the budget grants over the window (ratio × requests + the floor).
    pub allowed: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_retries_at_ratio_plus_floor() {
        let budget = RetryBudget::new(&config::RetryBudget {
            ratio: 0.1,
            min_per_second: 1,
        });
        for _ in 0..100 {
            budget.record_request();
        }
        // 10% of 100 plus 1/s over 10 s = 20.
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 20);
    }
}
