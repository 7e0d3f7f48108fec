//! The console's recent history: each route target's last minute (requests/s, 5xx share,
//! p50/p99) and the list of what changed in the clusters (health, ejection, breakers).
//!
//! Requests pay nothing for it: a background task ([`sample_forever`]) reads, once a
//! second, the cumulative counts the proxy already keeps for `/metrics` of the targets that
//! have had a request (`metrics::active_targets`, not every route of the snapshot) and the
//! clusters' state. A target's counts are kept from its first tick with traffic, then every
//! [`ROUTE_STEP`], in a ring that spans a minute; the console subtracts the oldest sample
//! from the counts of the moment.
//!
//! A reload keeps the targets of routes it did not change; a target it builds anew has its
//! handles created on its first request, and the series behind them are the same (same
//! labels), so the counts go on. Until then the replaced target, listed until its snapshot
//! is freed, stands for its counts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::observe::metrics::{latency_buckets, RouteMetrics, Totals};
use crate::runtime::Snapshot;

/// How far back the console's per-route numbers look.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How often route counts are sampled (the window's start moves in these steps).
const ROUTE_STEP: Duration = Duration::from_secs(5);
/// How often cluster state is compared with the last look.
const TICK: Duration = Duration::from_secs(1);
/// Changes kept for "what changed".
const EVENTS_KEPT: usize = 100;

/// A route target: its route id and version.
type TargetKey = (Arc<str>, Option<Arc<str>>);

/// One target's samples, oldest first.
type Ring = VecDeque<(Instant, Totals)>;

#[derive(Default)]
struct History {
    /// Only targets with traffic since they were built; a target that gets no new sample
    /// for a [`WINDOW`] (gone with a reload, or idle since one) drops out, and its last
    /// minute is empty, as it should be.
    routes: HashMap<TargetKey, Ring>,
    /// The last state seen of each cluster breaker and endpoint, by (cluster, endpoint).
    seen: HashMap<(String, String), String>,
    events: VecDeque<Change>,
}

static HISTORY: LazyLock<Mutex<History>> = LazyLock::new(Mutex::default);

/// One change in a cluster's state, as the sampler saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// RFC 3339, seconds.
    pub at: String,
    pub cluster: String,
    /// Empty for the cluster's own breaker.
    pub endpoint: String,
    pub from: String,
    pub to: String,
}

/// A route target's last minute.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LastMinute {
    /// The span the numbers cover (shorter than a minute just after start or a reload).
    pub seconds: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    /// 5xx answers over all answers; `None` without requests.
    pub error_share: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Samples `snapshot()` every [`TICK`] for as long as the process runs.
pub async fn sample_forever(snapshot: impl Fn() -> Arc<Snapshot>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Held until the next tick, so that this task never drops a snapshot's last reference.
    let mut last: Option<Arc<Snapshot>> = None;
    loop {
        tick.tick().await;
        let current = snapshot();
        if let Some(replaced) = last.take().filter(|l| !Arc::ptr_eq(l, &current)) {
            // Freed where snapshots are freed, not on this thread.
            crate::runtime::retire(replaced);
        }
        sample(&current, Instant::now());
        last = Some(current);
    }
}

/// Takes the busy targets' counts (every [`ROUTE_STEP`]) and compares the clusters' state
/// with the last look. The targets come from `metrics::active_targets`, not from the
/// snapshot's routes: at 100,000 routes walking them all took milliseconds a second.
fn sample(snapshot: &Snapshot, now: Instant) {
    let statuses: Vec<_> = snapshot.clusters.values().map(|c| c.status()).collect();
    let Ok(mut guard) = HISTORY.lock() else {
        return;
    };
    let history = &mut *guard;
    for target in crate::observe::metrics::active_targets() {
        let ring = history.routes.entry(target.key()).or_default();
        // A target and the one a reload replaced it with share their series: whichever
        // comes first in a step stands for both.
        if ring.back().is_none_or(|(at, _)| now - *at >= ROUTE_STEP) {
            ring.push_back((now, target.totals()));
        }
    }
    history.routes.retain(|_, ring| {
        while ring.front().is_some_and(|(at, _)| now - *at > WINDOW) {
            ring.pop_front();
        }
        !ring.is_empty()
    });
    let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    for cluster in &statuses {
        let mut states: Vec<(String, String)> = Vec::with_capacity(cluster.endpoints.len() + 1);
        if let Some(b) = cluster.breaker {
            states.push((String::new(), format!("breaker {}", breaker_word(b))));
        }
        for e in &cluster.endpoints {
            let mut state = String::from(if e.ejected {
                "ejected"
            } else if e.healthy {
                "healthy"
            } else {
                "unhealthy"
            });
            if let Some(b) = e.breaker {
                state.push_str(", breaker ");
                state.push_str(breaker_word(b));
            }
            states.push((e.label.clone(), state));
        }
        for (endpoint, state) in states {
            let key = (cluster.name.clone(), endpoint);
            match history.seen.get(&key) {
                Some(before) if *before == state => {}
                Some(before) => {
                    let change = Change {
                        at: at.clone(),
                        cluster: key.0.clone(),
                        endpoint: key.1.clone(),
                        from: before.clone(),
                        to: state.clone(),
                    };
                    if history.events.len() == EVENTS_KEPT {
                        history.events.pop_front();
                    }
                    history.events.push_back(change);
                    history.seen.insert(key, state);
                }
                None => {
                    history.seen.insert(key, state);
                }
            }
        }
    }
}

fn breaker_word(state: crate::upstream::breaker::BreakerState) -> &'static str {
    use crate::upstream::breaker::BreakerState;
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    }
}

/// The changes seen, newest first.
pub fn recent_changes() -> Vec<Change> {
    HISTORY
        .lock()
        .map(|h| h.events.iter().rev().cloned().collect())
        .unwrap_or_default()
}

/// `route`/`version`'s last minute: its counts now against the oldest sample kept.
pub fn last_minute(
    route: &Arc<str>,
    version: Option<&Arc<str>>,
    metrics: &RouteMetrics,
) -> LastMinute {
    let key: TargetKey = (route.clone(), version.cloned());
    let (oldest, newest) = HISTORY
        .lock()
        .ok()
        .and_then(|h| {
            let ring = h.routes.get(&key)?;
            Some((ring.front().cloned(), ring.back().map(|(_, t)| t.clone())))
        })
        .unwrap_or_default();
    // No sample yet (the first seconds of a target): nothing to subtract from.
    let Some((since, before)) = oldest else {
        return LastMinute::default();
    };
    match metrics.totals().or(newest) {
        Some(now) => window_between(&before, &now, since.elapsed()),
        None => LastMinute::default(),
    }
}

/// The numbers between two samples `elapsed` apart.
fn window_between(before: &Totals, now: &Totals, elapsed: Duration) -> LastMinute {
    let requests = now.requests.saturating_sub(before.requests);
    let errors = now.errors.saturating_sub(before.errors);
    let seconds = elapsed.as_secs_f64();
    let buckets: Vec<u64> = now
        .buckets
        .iter()
        .zip(before.buckets.iter().chain(std::iter::repeat(&0)))
        .map(|(n, b)| n.saturating_sub(*b))
        .collect();
    LastMinute {
        seconds,
        requests,
        requests_per_second: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        error_share: (requests > 0).then(|| errors as f64 / requests as f64),
        p50_ms: quantile(0.5, &buckets, requests).map(|s| s * 1000.0),
        p99_ms: quantile(0.99, &buckets, requests).map(|s| s * 1000.0),
    }
}

/// The `q` quantile (seconds) of `count` observations with these cumulative bucket counts,
/// interpolated linearly inside its bucket as PromQL's `histogram_quantile` does; past the
/// last bound it is that bound.
fn quantile(q: f64, cumulative: &[u64], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let bounds = latency_buckets();
    let rank = q * count as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (&upper, &c) in bounds.iter().zip(cumulative) {
        if c as f64 >= rank {
            let in_bucket = (c - below) as f64;
            let fraction = if in_bucket > 0.0 {
                (rank - below as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * fraction);
        }
        below = c;
        lower = upper;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, errors: u64, buckets: &[u64]) -> Totals {
        let mut all = buckets.to_vec();
        all.resize(latency_buckets().len(), requests);
        Totals {
            requests,
            errors,
            buckets: all,
        }
    }

    #[test]
    fn the_window_is_the_difference_of_two_samples() {
        // 0.5 ms, 1 ms, 2.5 ms, … : before, 10 requests all under 0.5 ms; then 100 more,
        // 50 under 1 ms and 50 between 1 and 2.5 ms, 10 of them 5xx.
        let before = totals(10, 1, &[10, 10, 10]);
        let now = totals(110, 11, &[10, 60, 110]);
        let w = window_between(&before, &now, Duration::from_secs(50));
        assert_eq!(w.requests, 100);
        assert!((w.requests_per_second - 2.0).abs() < 1e-9);
        assert_eq!(w.error_share, Some(0.1));
        let p50 = w.p50_ms.unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p99 = w.p99_ms.unwrap();
        assert!(p99 > 2.4 && p99 <= 2.5, "{p99}");
    }

    #[test]
    fn no_traffic_has_no_percentiles() {
        let t = totals(5, 0, &[5]);
        let w = window_between(&t, &t, Duration::from_secs(60));
        assert_eq!(w.requests, 0);
        assert_eq!((w.error_share, w.p50_ms, w.p99_ms), (None, None, None));
    }

    #[test]
    fn beyond_the_last_bucket_is_the_last_bound() {
        let mut all = vec![0; latency_buckets().len()];
        all[0] = 0;
        assert_eq!(quantile(0.99, &all, 3), latency_buckets().last().copied());
    }
}
