//! When and how long the client waits before trying a call again: which calls are safe to
//! repeat, which answers are worth repeating, full-jitter exponential backoff, and
//! `Retry-After` (delta seconds or an HTTP date) honoured up to a cap.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};

/// How a call is retried. Attempts count the first one; `1` disables retries.
///
/// A call is retried when it is safe to repeat — an idempotent method (GET, HEAD, PUT,
/// DELETE, OPTIONS, TRACE) or any request carrying an `Idempotency-Key` — and it failed
/// with a timeout, a broken connection, or 429, 502, 503 or 504. A failed connect is
/// retried for every method: nothing was sent.
///
/// The wait before retry `n` (1-based) is a random duration in
/// `[0, min(max_delay, base_delay × 2^(n-1))]` ("full jitter"), so many clients that failed
/// together do not come back together. A `Retry-After` on the answer replaces it when
/// longer; one longer than `max_retry_after` is not waited for: the call fails at once with
/// that answer, rather than hammering a service that asked for a pause.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The ceiling of the random wait before retry `retry` (1-based).
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// A full-jitter wait before retry `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry);
        if ceiling.is_zero() {
            return ceiling;
        }
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// The wait before retry `retry` after an answer with these headers, or `None` when
    /// the answer's `Retry-After` asks for longer than `max_retry_after`.
    pub fn delay_after(&self, retry: u32, headers: &HeaderMap) -> Option<Duration> {
        let backoff = self.backoff(retry);
        match retry_after(headers, SystemTime::now()) {
            Some(asked) if asked > self.max_retry_after => None,
            Some(asked) => Some(asked.max(backoff)),
            None => Some(backoff),
        }
    }
}

/// Methods RFC 9110 §9.2.2 calls idempotent.
pub fn is_idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Whether a call may be sent again after it may have reached the server.
pub fn is_replayable(method: &Method, headers: &HeaderMap) -> bool {
    is_idempotent_method(method) || headers.contains_key("idempotency-key")
}

/// Answers that say "try again": too many requests, and the gateway's bad gateway,
/// unavailable (no healthy upstream, its breaker, its bulkhead) and timeout.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// The `Retry-After` of an answer (RFC 9110 §10.2.3): delay seconds, or an HTTP date
/// relative to `now` (a date in the past means "now").
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_retry_after(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&with_retry_after("3"), now),
            Some(Duration::from_secs(3))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let d = retry_after(&with_retry_after(&later), now).unwrap();
        assert!(
            d > Duration::from_secs(118) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(60));
        assert_eq!(
            retry_after(&with_retry_after(&past), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&with_retry_after("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(1),
        };
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(200));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(400));
        assert_eq!(p.backoff_ceiling(4), Duration::from_millis(500));
        assert_eq!(p.backoff_ceiling(100), Duration::from_millis(500));
        let waits: Vec<Duration> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(400)));
        assert!(waits.windows(2).any(|w| w[0] != w[1]), "jittered");
    }

    #[test]
    fn retry_after_beyond_the_cap_is_not_waited_for() {
        let p = RetryPolicy {
            max_retry_after: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.delay_after(1, &with_retry_after("1")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p.delay_after(1, &with_retry_after("3")), None);
        assert!(p.delay_after(1, &HeaderMap::new()).unwrap() <= p.base_delay);
    }

    #[test]
    fn replayable_calls() {
        let none = HeaderMap::new();
        assert!(is_replayable(&Method::GET, &none));
        assert!(is_replayable(&Method::DELETE, &none));
        assert!(!is_replayable(&Method::POST, &none));
        assert!(!is_replayable(&Method::PATCH, &none));
        let mut keyed = HeaderMap::new();
        keyed.insert("idempotency-key", HeaderValue::from_static("k1"));
        assert!(is_replayable(&Method::POST, &keyed));
        assert!(is_retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_retryable_status(StatusCode::INTERNAL_SERVER_ERROR));
    }
}
