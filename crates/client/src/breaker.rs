//! The client's own circuit breaker, one per origin (scheme, host, port): after a run of
//! consecutive failures it opens and calls fail fast with [`super::Error::CircuitOpen`]
//! without touching the network; after `open_for` it lets one probe through (half-open);
//! the probe's success closes it, its failure opens it again.
//!
//! It complements the gateway's breakers rather than duplicating them: the gateway protects
//! upstreams from all callers, this one protects the caller (its threads, its latency) from
//! a gateway or route that keeps failing, including when the gateway itself is unreachable.
//!
//! The state sits behind a `std::sync::Mutex` held for a few instructions, never across an
//! await.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When the breaker trips and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failed attempts in a row (connect errors, timeouts, broken connections, 5xx) that
    /// open the breaker; 0 disables the breaker.
    pub consecutive_failures: u32,
    /// How long it stays open before letting a probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

impl BreakerConfig {
    /// A breaker that never opens.
    pub fn disabled() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 0,
            ..BreakerConfig::default()
        }
    }
}

/// The state of one origin's breaker, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `probing`: a probe is in flight; everyone else fails fast until it ends.
    HalfOpen {
        probing: bool,
    },
}

/// How an attempt ended, as the breaker judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Says nothing about the origin's health (a 429, a 401 before a token replay, or an
    /// attempt abandoned by its caller).
    Neutral,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Arc<Breaker> {
        Arc::new(Breaker {
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
        })
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a valid state: keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks to send one attempt: a permit, or how long until a probe may go.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Duration> {
        if self.config.consecutive_failures == 0 {
            return Ok(Permit::new(self, false));
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(Permit::new(self, false)),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                *state = State::HalfOpen { probing: true };
                Ok(Permit::new(self, true))
            }
            State::HalfOpen { probing: true } => Err(Duration::ZERO),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(Permit::new(self, true))
            }
        }
    }

    fn record(&self, probe: bool, verdict: Verdict) {
        if self.config.consecutive_failures == 0 {
            return;
        }
        let mut state = self.lock();
        let open = || State::Open {
            until: Instant::now() + self.config.open_for,
        };
        match (&mut *state, verdict) {
            (State::HalfOpen { .. }, Verdict::Success) if probe => {
                *state = State::Closed { failures: 0 };
            }
            (State::HalfOpen { .. }, Verdict::Failure) if probe => *state = open(),
            (State::HalfOpen { probing }, Verdict::Neutral) if probe => *probing = false,
            (State::Closed { failures }, Verdict::Success) => *failures = 0,
            (State::Closed { failures }, Verdict::Failure) => {
                *failures += 1;
                if *failures >= self.config.consecutive_failures {
                    log::warn!(
                        "portico client: circuit opened after {failures} consecutive failures"
                    );
                    *state = open();
                }
            }
            // Attempts admitted before the breaker changed state say nothing about the
            // state it is in now.
            _ => {}
        }
    }
}

/// Leave to send one attempt. Report how it went with [`Permit::finish`]; a permit dropped
/// without a verdict (the caller gave up) counts as [`Verdict::Neutral`], so an abandoned
/// probe never leaves the breaker stuck half-open.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl Permit {
    fn new(breaker: &Arc<Breaker>, probe: bool) -> Permit {
        Permit {
            breaker: breaker.clone(),
            probe,
            done: false,
        }
    }

    pub fn finish(mut self, verdict: Verdict) {
        self.done = true;
        self.breaker.record(self.probe, verdict);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.probe, Verdict::Neutral);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(n: u32, open_for: Duration) -> Arc<Breaker> {
        Breaker::new(BreakerConfig {
            consecutive_failures: n,
            open_for,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_probe() {
        let b = breaker(3, Duration::from_millis(30));
        for _ in 0..2 {
            b.admit().unwrap().finish(Verdict::Failure);
        }
        b.admit().unwrap().finish(Verdict::Success);
        for _ in 0..3 {
            b.admit().unwrap().finish(Verdict::Failure);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.admit().unwrap_err(),
            Duration::ZERO,
            "one probe at a time"
        );
        probe.finish(Verdict::Success);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_one_frees_the_slot() {
        let b = breaker(1, Duration::from_millis(20));
        b.admit().unwrap().finish(Verdict::Failure);
        std::thread::sleep(Duration::from_millis(30));
        drop(b.admit().unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.admit().unwrap().finish(Verdict::Failure);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
    }

    #[test]
    fn disabled_never_opens() {
        let b = breaker(0, Duration::from_secs(1));
        for _ in 0..100 {
            b.admit().unwrap().finish(Verdict::Failure);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
