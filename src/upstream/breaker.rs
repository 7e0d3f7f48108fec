//! Circuit breakers, for a whole cluster and for single endpoints.
//!
//! Closed: requests flow and outcomes are counted in a sliding window of one-second
//! buckets; the breaker trips when the failure share exceeds the threshold with enough
//! volume, or after a run of consecutive failures. Open: requests fail fast, without
//! touching the network, until the open time ends. Half-open: a few probes go through;
//! if all succeed the breaker closes, if one fails it opens again for twice as long.
//!
//! The common case (closed) costs one atomic load per request; the state changes and the
//! counting take a short mutex that is never held across an await.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What a breaker says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `probe` is true when this request is a half-open probe.
    Allowed { probe: bool },
    /// Fail fast; retry after this long.
    Rejected { retry_after: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

pub struct CircuitBreaker {
    cfg: config::Breaker,
    state: AtomicU8,
    /// Milliseconds since `epoch` at which an open breaker may half-open.
    open_until_ms: AtomicU64,
    inner: Mutex<Inner>,
    epoch: Instant,
}

struct Inner {
    /// (second, requests, failures) per bucket of the window.
    buckets: Vec<(u64, u32, u32)>,
    consecutive_failures: u32,
    /// Trips in a row without a successful close; doubles the open time.
    trips: u32,
    probes_started: u32,
    probes_succeeded: u32,
}

impl CircuitBreaker {
    pub fn new(cfg: &config::Breaker) -> CircuitBreaker {
        let buckets = cfg.window.as_secs().max(1) as usize;
        CircuitBreaker {
            cfg: cfg.clone(),
            state: AtomicU8::new(CLOSED),
            open_until_ms: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                buckets: vec![(0, 0, 0); buckets],
                consecutive_failures: 0,
                trips: 0,
                probes_started: 0,
                probes_succeeded: 0,
            }),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a request could pass now, without reserving a probe (for choosing among
    /// endpoints).
    pub fn would_allow(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.now_ms() >= self.open_until_ms.load(Ordering::Acquire),
            _ => {
                let inner = self.lock();
                inner.probes_started < self.cfg.half_open_probes
            }
        }
    }

    /// Admits or rejects one request; an admitted half-open probe must be reported with
    /// [`CircuitBreaker::record`] and `probe = true`.
    pub fn admit(&self) -> Admission {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Admission::Allowed { probe: false };
        }
        let now = self.now_ms();
        let mut inner = self.lock();
        if self.state.load(Ordering::Acquire) == OPEN {
            let until = self.open_until_ms.load(Ordering::Acquire);
            if now < until {
                return Admission::Rejected {
                    retry_after: Duration::from_millis(until - now),
                };
            }
            self.state.store(HALF_OPEN, Ordering::Release);
            inner.probes_started = 0;
            inner.probes_succeeded = 0;
        }
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Allowed { probe: false },
            _ if inner.probes_started < self.cfg.half_open_probes => {
                inner.probes_started += 1;
                Admission::Allowed { probe: true }
            }
            _ => Admission::Rejected {
                retry_after: Duration::from_secs(1),
            },
        }
    }

    /// Records the outcome of an admitted request.
    pub fn record(&self, success: bool, probe: bool) {
        let now = self.now_ms();
        let mut inner = self.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED if !probe => {
                let second = now / 1000;
                let len = inner.buckets.len();
                let bucket = &mut inner.buckets[(second as usize) % len];
                if bucket.0 != second {
                    *bucket = (second, 0, 0);
                }
                bucket.1 += 1;
                if success {
                    inner.consecutive_failures = 0;
                    return;
                }
                bucket.2 += 1;
                inner.consecutive_failures += 1;
                let oldest = second.saturating_sub(len as u64 - 1);
                let (requests, failures) = inner
                    .buckets
                    .iter()
                    .filter(|b| b.0 >= oldest && b.0 <= second)
                    .fold((0u32, 0u32), |(r, f), b| (r + b.1, f + b.2));
                let by_rate = requests >= self.cfg.min_requests
                    && f64::from(failures) >= self.cfg.failure_rate * f64::from(requests);
                let by_run = self.cfg.consecutive_failures > 0
                    && inner.consecutive_failures >= self.cfg.consecutive_failures;
                if by_rate || by_run {
                    self.trip(&mut inner, now);
                }
            }
            HALF_OPEN if probe => {
                if success {
                    inner.probes_succeeded += 1;
                    if inner.probes_succeeded >= self.cfg.half_open_probes {
                        inner.trips = 0;
                        inner.consecutive_failures = 0;
                        for b in inner.buckets.iter_mut() {
                            *b = (0, 0, 0);
                        }
                        self.state.store(CLOSED, Ordering::Release);
                    }
                } else {
                    self.trip(&mut inner, now);
                }
            }
            // Outcomes of requests admitted before the state changed say nothing new.
            _ => {}
        }
    }

    /// Gives back a half-open probe slot whose request ended without telling anything
    /// about the upstream (e.g. the client left), so the breaker is not stuck half-open.
    pub fn cancel(&self, probe: bool) {
        if probe && self.state.load(Ordering::Acquire) == HALF_OPEN {
            let mut inner = self.lock();
            inner.probes_started = inner.probes_started.saturating_sub(1);
        }
    }

    fn trip(&self, inner: &mut Inner, now: u64) {
        let factor = 1u64 << inner.trips.min(16);
        let open = (self.cfg.open_for.as_millis() as u64)
            .saturating_mul(factor)
            .min(self.cfg.max_open.as_millis() as u64);
        inner.trips += 1;
        inner.consecutive_failures = 0;
        self.open_until_ms.store(now + open, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters unusable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(consecutive: u32) -> CircuitBreaker {
        CircuitBreaker::new(&config::Breaker {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            consecutive_failures: consecutive,
            open_for: Duration::from_millis(50),
            max_open: Duration::from_millis(400),
            half_open_probes: 2,
        })
    }

    #[test]
    fn trips_on_failure_rate_with_volume() {
        let b = breaker(0);
        b.record(false, false);
        b.record(false, false);
        b.record(true, false);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "3 requests are below the volume"
        );
        b.record(false, false);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(), Admission::Rejected { .. }));
    }

    #[test]
    fn half_opens_then_closes_or_reopens_for_longer() {
        let b = breaker(2);
        b.record(false, false);
        b.record(false, false);
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Allowed { probe: true });
        assert_eq!(b.admit(), Admission::Allowed { probe: true });
        assert!(
            matches!(b.admit(), Admission::Rejected { .. }),
            "only two probes"
        );
        b.record(false, true);
        assert_eq!(b.state(), BreakerState::Open);
        // The second trip opens for 100 ms, not 50.
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(b.admit(), Admission::Rejected { .. }));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Allowed { probe: true });
        assert_eq!(b.admit(), Admission::Allowed { probe: true });
        b.record(true, true);
        b.record(true, true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Allowed { probe: false });
    }
}
