//! Bulkheads: a cap on the requests in flight to one cluster, with a short bounded wait
//! queue, so one slow upstream cannot hold every worker and starve the others.
//!
//! The adaptive mode moves the cap with measured latency, in the spirit of gradient
//! concurrency limiters: while latency stays near the lowest seen, the limit grows; as
//! latency rises (a queue is forming upstream), it shrinks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{self, BulkheadMode};

/// Why a request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The queue was full.
    QueueFull,
    /// It waited `queue_timeout` without a slot.
    QueueTimeout,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
        }
    }
}

pub struct Bulkhead {
    cfg: config::Bulkhead,
    semaphore: Arc<Semaphore>,
    /// The current limit (permits handed out plus available).
    limit: AtomicUsize,
    queued: AtomicUsize,
    gradient: Option<Mutex<Gradient>>,
}

/// Latency statistics of the adaptive mode.
struct Gradient {
    /// Lowest latency seen recently, decaying slowly upward so it can follow a change.
    min_rtt: f64,
    /// Smoothed recent latency.
    rtt: f64,
    samples: usize,
}

impl Bulkhead {
    pub fn new(cfg: &config::Bulkhead) -> Bulkhead {
        Bulkhead {
            cfg: cfg.clone(),
            semaphore: Arc::new(Semaphore::new(cfg.max_concurrent)),
            limit: AtomicUsize::new(cfg.max_concurrent),
            queued: AtomicUsize::new(0),
            gradient: (cfg.mode == BulkheadMode::Adaptive).then(|| {
                Mutex::new(Gradient {
                    min_rtt: f64::MAX,
                    rtt: 0.0,
                    samples: 0,
                })
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.limit()
            .saturating_sub(self.semaphore.available_permits())
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Takes a slot, waiting up to `queue_timeout` in a queue of at most `max_queue`.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Rejection> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Rejection::QueueFull);
        }
        let waited = tokio::time::timeout(
            self.cfg.queue_timeout,
            self.semaphore.clone().acquire_owned(),
        )
        .await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Rejection::QueueTimeout),
        }
    }

    /// Feeds one request's upstream latency to the adaptive limit (no-op when fixed).
    pub fn observe(&self, latency: Duration) {
        let Some(gradient) = &self.gradient else {
            return;
        };
        // Skip rather than wait: losing a sample under contention is harmless.
        let Ok(mut g) = gradient.try_lock() else {
            return;
        };
        let sample = latency.as_secs_f64().max(1e-6);
        if sample < g.min_rtt {
            g.min_rtt = sample;
        } else {
            // Let the floor drift slowly upward so it can follow an upstream that became
            // slower for good (a new deploy), instead of throttling it forever.
            g.min_rtt *= 1.0005;
        }
        g.rtt = if g.rtt == 0.0 {
            sample
        } else {
            g.rtt * 0.9 + sample * 0.1
        };
        g.samples += 1;
        let limit = self.limit();
        if g.samples < limit.max(10) {
            return;
        }
        g.samples = 0;
        let gradient = (g.min_rtt / g.rtt).clamp(0.5, 1.0);
        let headroom = (limit as f64).sqrt();
        let target = (limit as f64 * gradient + headroom).round() as usize;
        let target = target.clamp(self.cfg.min_concurrent, self.cfg.max_concurrent);
        drop(g);
        self.resize(target);
    }

    fn resize(&self, target: usize) {
        let current = self.limit();
        if target > current {
            self.semaphore.add_permits(target - current);
            self.limit.store(target, Ordering::Relaxed);
        } else if target < current {
            // Only free permits can be withdrawn; the rest go on the next adjustment.
            let removed = self.semaphore.forget_permits(current - target);
            self.limit.store(current - removed, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulkhead(max: usize, queue: usize, mode: BulkheadMode) -> Bulkhead {
        Bulkhead::new(&config::Bulkhead {
            max_concurrent: max,
            max_queue: queue,
            queue_timeout: Duration::from_millis(50),
            mode,
            min_concurrent: 1,
        })
    }

    #[tokio::test]
    async fn rejects_beyond_limit_and_queue() {
        let b = bulkhead(2, 1, BulkheadMode::Fixed);
        let _a = b.acquire().await.unwrap();
        let _b = b.acquire().await.unwrap();
        assert_eq!(b.in_flight(), 2);
        let (queued, full) = tokio::join!(b.acquire(), async {
            tokio::task::yield_now().await;
            b.acquire().await
        });
        assert_eq!(queued.unwrap_err(), Rejection::QueueTimeout);
        assert_eq!(full.unwrap_err(), Rejection::QueueFull);
    }

    #[tokio::test]
    async fn queued_request_gets_a_released_slot() {
        let b = Arc::new(bulkhead(1, 1, BulkheadMode::Fixed));
        let first = b.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn adaptive_limit_shrinks_when_latency_rises_and_grows_back() {
        let b = bulkhead(100, 0, BulkheadMode::Adaptive);
        for _ in 0..200 {
            b.observe(Duration::from_millis(10));
        }
        let at_floor = b.limit();
        for _ in 0..2000 {
            b.observe(Duration::from_millis(80));
        }
        let slowed = b.limit();
        assert!(
            slowed < at_floor / 2,
            "limit {at_floor} → {slowed} as latency rose 8×"
        );
        for _ in 0..5000 {
            b.observe(Duration::from_millis(10));
        }
        assert!(b.limit() > slowed, "limit recovers when latency falls");
    }
}
