//! The cache's series by route: lookups by outcome, lock waits, stale answers by cause,
//! and what was stored. Like `observe::metrics::RouteMetrics`, a route resolves its label
//! handles on its first cached request and keeps them, so counting is an atomic add. The
//! store's own gauges (bytes, objects, evictions) live with the store.

use std::sync::{LazyLock, OnceLock};

use prometheus::{IntCounter, IntCounterVec, Opts};

use super::status::Outcome;

struct Families {
    lookups: IntCounterVec,
    lock_waits: IntCounterVec,
    stale: IntCounterVec,
    stored_objects: IntCounterVec,
    stored_bytes: IntCounterVec,
}

/// Registered in the registry `/metrics` renders, on the first cached route's first request.
static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        if let Err(e) = prometheus::default_registry().register(Box::new(c.clone())) {
            log::error!("cannot register {name}: {e}");
        }
        c
    };
    Families {
        lookups: counter(
            "portico_cache_lookups_total",
            "Requests on cached routes by route and result (hit, miss, stale, revalidated, expired, bypass)",
            &["route", "result"],
        ),
        lock_waits: counter(
            "portico_cache_lock_waits_total",
            "Requests that waited for another request to fill the same cache entry, by route",
            &["route"],
        ),
        stale: counter(
            "portico_cache_stale_served_total",
            "Stale cache entries served, by route and cause (while_revalidate, if_error)",
            &["route", "cause"],
        ),
        stored_objects: counter(
            "portico_cache_stored_objects_total",
            "Responses written into the cache, by route",
            &["route"],
        ),
        stored_bytes: counter(
            "portico_cache_stored_bytes_total",
            "Response body bytes written into the cache, by route",
            &["route"],
        ),
    }
});

/// One route's cache series.
#[derive(Debug)]
pub struct CacheMetrics {
    route: Box<str>,
    handles: OnceLock<Box<Handles>>,
}

#[derive(Debug)]
struct Handles {
    lookups: [IntCounter; 6],
    lock_waits: IntCounter,
    stale_revalidate: IntCounter,
    stale_error: IntCounter,
    stored_objects: IntCounter,
    stored_bytes: IntCounter,
}

impl CacheMetrics {
    pub fn new(route: &str) -> CacheMetrics {
        CacheMetrics {
            route: route.into(),
            handles: OnceLock::new(),
        }
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let f = &*FAMILIES;
            let r = &*self.route;
            Box::new(Handles {
                lookups: Outcome::ALL.map(|o| f.lookups.with_label_values(&[r, o.as_str()])),
                lock_waits: f.lock_waits.with_label_values(&[r]),
                stale_revalidate: f.stale.with_label_values(&[r, "while_revalidate"]),
                stale_error: f.stale.with_label_values(&[r, "if_error"]),
                stored_objects: f.stored_objects.with_label_values(&[r]),
                stored_bytes: f.stored_bytes.with_label_values(&[r]),
            })
        })
    }

    /// Counts one finished request on the route.
    pub fn record(
        &self,
        outcome: Outcome,
        stale_on_error: bool,
        waited: bool,
        stored: Option<u64>,
    ) {
        let h = self.handles();
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        h.lookups[i].inc();
        if waited {
            h.lock_waits.inc();
        }
        if outcome == Outcome::Stale {
            if stale_on_error {
                h.stale_error.inc();
            } else {
                h.stale_revalidate.inc();
            }
        }
        if let Some(bytes) = stored {
            h.stored_objects.inc();
            h.stored_bytes.inc_by(bytes);
        }
    }
}
