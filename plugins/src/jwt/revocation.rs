//! Revocation lists: an issuer's list of revoked token ids (`jti`), polled in the background
//! every `revocation_refresh`, so a revoked JWT is refused by every gateway within that
//! interval (plus one fetch) instead of living on until its `exp`.
//!
//! The list is a JSON document, `{"revoked": [{"jti": "…", "exp": 1767225600}, …]}`, listing
//! the revoked tokens that have not expired yet (portico's token service serves it at
//! `GET /oauth2/revoked`). Entries already past their `exp` are dropped on arrival: such a
//! token is refused for its `exp` anyway.
//!
//! A list is shared by every plugin in the process naming the same URL, timings and
//! credentials, so several routes (and an old config still draining after a reload) poll it
//! once. Polling starts with the first request that needs the list — building the plugin
//! needs neither a runtime nor the network — and stops when the last plugin using the list
//! is dropped. A failed poll keeps the last good list, is logged and counted; what a request
//! gets when the list is older than `revocation_max_age` is the issuer's choice
//! (`revocation_fail_open`, default closed: 503).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde::Deserialize;
use tokio::sync::Notify;

use super::fetch;

/// The largest revocation list accepted: about 150 000 entries of portico's token service.
const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// One fetched list.
struct Snapshot {
    /// `jti` → `exp` (unix seconds).
    revoked: HashMap<String, u64>,
    fetched_at: Instant,
}

/// A revocation list URL, polled while any plugin uses it.
pub(crate) struct RevocationList {
    url: String,
    refresh: Duration,
    timeout: Duration,
    /// `Basic …` when the list needs client authentication.
    authorization: Option<String>,
    current: ArcSwapOption<Snapshot>,
    /// Whether a polling task is alive.
    polling: AtomicBool,
    /// Whether a poll has ended at least once, successfully or not.
    attempted: AtomicBool,
    /// Woken when a poll ends.
    done: Notify,
    client: OnceLock<Result<reqwest::Client, String>>,
    fetches: AtomicU64,
    failures: AtomicU64,
}

/// What the list says about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Not on the list (or, failing open, no usable list).
    Allowed,
    Revoked,
    /// No list fresh enough, and the issuer fails closed.
    Unavailable,
}

/// An issuer's use of a list: the list and what to do when it is stale.
pub(crate) struct Revocation {
    pub(crate) list: Arc<RevocationList>,
    /// A list older than this (since its last successful fetch) is stale.
    pub(crate) max_age: Duration,
    /// Whether a stale or missing list lets tokens through (checked against the last good
    /// list, if any) rather than answering 503.
    pub(crate) fail_open: bool,
}

impl Revocation {
    pub(crate) async fn status(&self, jti: &str) -> Status {
        self.list.status(jti, self.max_age, self.fail_open).await
    }
}

type RegistryKey = (String, Duration, Duration, Option<String>);

static SHARED: LazyLock<Mutex<HashMap<RegistryKey, Weak<RevocationList>>>> =
    LazyLock::new(Mutex::default);

#[derive(Deserialize)]
struct Document {
    revoked: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    jti: String,
    exp: u64,
}

impl RevocationList {
    /// The shared list of `url`. Only bookkeeping: nothing is fetched until a request needs
    /// the list.
    pub(crate) fn shared(
        url: &str,
        refresh: Duration,
        timeout: Duration,
        authorization: Option<String>,
    ) -> Arc<Self> {
        let key = (url.to_owned(), refresh, timeout, authorization.clone());
        fetch::shared(&SHARED, key, || RevocationList {
            url: url.to_owned(),
            refresh,
            timeout,
            authorization,
            current: ArcSwapOption::empty(),
            polling: AtomicBool::new(false),
            attempted: AtomicBool::new(false),
            done: Notify::new(),
            client: OnceLock::new(),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Polls started (tests and metrics).
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Polls that failed (tests and metrics).
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Revoked ids in the current list.
    pub(crate) fn len(&self) -> usize {
        self.current.load().as_ref().map_or(0, |s| s.revoked.len())
    }

    async fn status(self: &Arc<Self>, jti: &str, max_age: Duration, fail_open: bool) -> Status {
        let mut snapshot = self.current.load_full();
        if snapshot.is_none() {
            // Registered before the flag is read, so a poll ending in between still wakes us.
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.ensure_polling();
            if !self.attempted.load(Ordering::Acquire) {
                // Only the very first requests wait, for the very first poll; the poll has
                // its own deadline and this one only guards against a lost wakeup.
                let _ = tokio::time::timeout(self.timeout + Duration::from_secs(1), notified).await;
            }
            snapshot = self.current.load_full();
        } else {
            self.ensure_polling();
        }
        let Some(snapshot) = snapshot else {
            return if fail_open {
                Status::Allowed
            } else {
                Status::Unavailable
            };
        };
        if snapshot.revoked.contains_key(jti) {
            return Status::Revoked;
        }
        if !fail_open && snapshot.fetched_at.elapsed() > max_age {
            return Status::Unavailable;
        }
        Status::Allowed
    }

    /// Starts the polling task unless one is alive. Without a runtime (plugin built and used
    /// outside one) nothing starts and the list stays empty.
    fn ensure_polling(self: &Arc<Self>) {
        if self.polling.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(poll(Arc::downgrade(self)));
    }

    /// One poll: fetch, then store the list or count the failure, and wake the waiters.
    async fn poll_once(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok(revoked) => {
                log::debug!("jwt: {} revoked token ids from {}", revoked.len(), self.url);
                self.current.store(Some(Arc::new(Snapshot {
                    revoked,
                    fetched_at: Instant::now(),
                })));
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                match self.current.load().as_ref() {
                    Some(last) => log::warn!(
                        "jwt: fetching the revocation list from {} failed: {e}; keeping the \
                         list fetched {}s ago",
                        self.url,
                        last.fetched_at.elapsed().as_secs()
                    ),
                    None => log::warn!(
                        "jwt: fetching the revocation list from {} failed: {e}; no list yet",
                        self.url
                    ),
                }
            }
        }
        self.attempted.store(true, Ordering::Release);
        self.done.notify_waiters();
    }

    async fn fetch(&self) -> Result<HashMap<String, u64>, String> {
        let client = self
            .client
            .get_or_init(|| fetch::client(self.timeout))
            .as_ref()
            .map_err(Clone::clone)?;
        let mut request = client
            .get(&self.url)
            .header(http::header::ACCEPT, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let body = fetch::send(request, self.timeout, MAX_LIST_BYTES).await?;
        parse(&body, super::unix_now())
    }
}

/// The revoked ids of a list document that are not expired at `now`.
fn parse(body: &[u8], now: u64) -> Result<HashMap<String, u64>, String> {
    let doc: Document = serde_json::from_slice(body).map_err(|e| {
        format!("not a revocation list ({{\"revoked\": [{{\"jti\", \"exp\"}}]}}): {e}")
    })?;
    Ok(doc
        .revoked
        .into_iter()
        .filter(|e| e.exp >= now)
        .map(|e| (e.jti, e.exp))
        .collect())
}

/// The polling task: one poll every `refresh` (measured from the start of each, so the
/// bound does not drift by the fetch time), for as long as a plugin holds the list.
async fn poll(list: Weak<RevocationList>) {
    /// Marks the task gone even if it is dropped with its runtime, so the next request
    /// starts a new one; wakes anyone waiting for a first poll.
    struct Stopped(Weak<RevocationList>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            if let Some(list) = self.0.upgrade() {
                list.polling.store(false, Ordering::Release);
                list.done.notify_waiters();
            }
        }
    }
    let _stopped = Stopped(list.clone());
    let Some(refresh) = list.upgrade().map(|l| l.refresh) else {
        return;
    };
    let mut ticks = tokio::time::interval(refresh);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(strong) = list.upgrade() else {
            return;
        };
        strong.poll_once().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_are_dropped_and_bad_documents_refused() {
        let list = parse(
            br#"{"revoked": [{"jti": "a", "exp": 100}, {"jti": "b", "exp": 99}], "extra": 1}"#,
            100,
        )
        .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list.get("a"), Some(&100));
        for bad in [
            &b"[]"[..],
            br#"{"revoked": [{"jti": 1, "exp": 5}]}"#,
            br#"{"revoked": [{"jti": "a"}]}"#,
            br#"{"revoked": [{"jti": "a", "exp": -1}]}"#,
            br#"{}"#,
            b"not json",
        ] {
            assert!(parse(bad, 0).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
