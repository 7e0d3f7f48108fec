//! Whether a response may be stored, and for how long: RFC 9111's rules for a shared
//! cache, on pingora-cache's `Cache-Control` parser and stale-window arithmetic, with what
//! pingora-cache's own `filters::resp_cacheable` leaves out filled in here — the status
//! codes (no `206`, no interim responses, heuristic freshness only for the codes RFC 9110
//! §15.1 names and only when the route sets a `default_ttl`), `Vary: *`, `Set-Cookie`,
//! a request's `no-store`, `Expires` measured against `Date`, the upstream's `Age`, and no
//! stale serving of a `no-cache` response.

use std::time::{Duration, SystemTime};

use pingora_cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora_cache::filters::calculate_serve_stale_durations;
use pingora_cache::{CacheMeta, CacheMetaDefaults, NoCacheReason, RespCacheable};
use pingora_http::{RequestHeader, ResponseHeader};

use super::CachePolicy;

/// Status codes a cache may give heuristic freshness (RFC 9110 §15.1): here, the route's
/// `default_ttl`.
const HEURISTIC: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Why a response was passed rather than stored, beyond pingora's own reasons.
pub const STATUS: NoCacheReason = NoCacheReason::Custom("status");
pub const VARY_STAR: NoCacheReason = NoCacheReason::Custom("vary-star");
pub const SET_COOKIE: NoCacheReason = NoCacheReason::Custom("set-cookie");
pub const AUTHORIZATION: NoCacheReason = NoCacheReason::Custom("authorization");
pub const REQUEST_NO_STORE: NoCacheReason = NoCacheReason::Custom("request-no-store");
pub const NO_FRESHNESS: NoCacheReason = NoCacheReason::Custom("no-freshness");

/// Judges `resp`, the answer to `req`. `authorized`: the request carried credentials
/// (an `Authorization` header, or an identity a plugin verified); `per_identity`: the key
/// holds that identity, which lifts RFC 9111 §3.5's restriction.
pub fn response_cacheable(
    policy: &CachePolicy,
    req: &RequestHeader,
    resp: &ResponseHeader,
    authorized: bool,
    per_identity: bool,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    // A 304 reaching here on revalidation has been merged into the stored header already;
    // a 206 holds part of a body and the cache always fetches whole ones.
    if status < 200 || status == 206 || status == 304 {
        return Uncacheable(STATUS);
    }
    if CacheControl::from_req_headers(req).is_some_and(|cc| cc.no_store()) {
        return Uncacheable(REQUEST_NO_STORE);
    }
    let vary_star = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|n| n.trim() == "*"))
    });
    if vary_star {
        return Uncacheable(VARY_STAR);
    }
    if !policy.store_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(SET_COOKIE);
    }
    let cc = CacheControl::from_resp_headers(resp);
    if cc
        .as_ref()
        .is_some_and(|cc| cc.is_cacheable() == Cacheable::No)
    {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
    // RFC 9111 §3.5: only `public`, `s-maxage` or `must-revalidate` let a shared cache
    // store the answer to an authenticated request, unless each caller has entries of its own.
    if authorized
        && !per_identity
        && !cc
            .as_ref()
            .is_some_and(|cc| cc.allow_caching_authorized_req())
    {
        return Uncacheable(AUTHORIZATION);
    }

    let now = SystemTime::now();
    let public = cc.as_ref().is_some_and(|cc| cc.public());
    let lifetime = cc
        .as_ref()
        .and_then(|cc| cc.fresh_duration())
        .or_else(|| expires_lifetime(resp, now))
        .or_else(|| {
            policy
                .default_ttl
                .filter(|_| public || HEURISTIC.contains(&status))
        });
    let Some(lifetime) = lifetime else {
        return Uncacheable(NO_FRESHNESS);
    };

    // The upstream's `Age` (a cache in front of it) counts against the lifetime.
    let age = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let created = now.checked_sub(age).unwrap_or(now);
    let fresh_until = if lifetime.is_zero() {
        // Stale from the start: `no-cache`, `max-age=0`, or an `Expires` in the past.
        created
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(created)
    } else {
        created.checked_add(lifetime).unwrap_or(created)
    };

    let defaults = CacheMetaDefaults::new(
        |_| None,
        policy.stale_while_revalidate,
        policy.stale_if_error,
    );
    let (swr, sie) = if cc.as_ref().is_some_and(|cc| cc.no_cache()) {
        // `no-cache`: never used without a successful validation, not even on error.
        (0, 0)
    } else {
        calculate_serve_stale_durations(cc.as_ref(), &defaults)
    };

    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    // Hits get a fresh `Age` from the stored time, which already counts this one.
    header.remove_header(&http::header::AGE);
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, created, swr, sie, header))
}

/// The freshness an `Expires` header gives: its distance from the response's `Date` (or
/// from now, without one). An unreadable or repeated `Expires` means already expired.
fn expires_lifetime(resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let mut values = resp.headers.get_all(http::header::EXPIRES).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Duration::ZERO);
    }
    let date = |v: &http::HeaderValue| -> Option<SystemTime> {
        httpdate::parse_http_date(v.to_str().ok()?).ok()
    };
    let Some(expires) = date(first) else {
        return Some(Duration::ZERO);
    };
    let base = resp
        .headers
        .get(http::header::DATE)
        .and_then(date)
        .unwrap_or(now);
    Some(expires.duration_since(base).unwrap_or(Duration::ZERO))
}

/// The request asks for a response validated with the upstream: `Cache-Control: no-cache`
/// or `max-age=0`, or, without `Cache-Control`, `Pragma: no-cache`.
pub fn client_wants_validation(req: &RequestHeader) -> bool {
    match CacheControl::from_req_headers(req) {
        Some(cc) => cc.no_cache() || matches!(cc.max_age(), Ok(Some(0))),
        None => req
            .headers
            .get_all(http::header::PRAGMA)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::RespCacheable::{Cacheable as Stored, Uncacheable};

    fn policy(default_ttl: Option<u64>) -> CachePolicy {
        let cache = crate::config::RouteCache {
            methods: vec!["GET".into()],
            default_ttl: default_ttl.map(Duration::from_secs),
            query: crate::config::CacheQuery::All,
            per_identity: None,
            store_set_cookie: false,
            client_no_cache: Default::default(),
            stale_if_error: Some(Duration::from_secs(60)),
            stale_while_revalidate: None,
            lock_timeout: Duration::from_secs(1),
        };
        CachePolicy::new("r", &cache)
    }

    fn judge(p: &CachePolicy, status: u16, headers: &[(&str, &str)], auth: bool) -> RespCacheable {
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            resp.append_header(n.to_string(), *v).unwrap();
        }
        response_cacheable(p, &req, &resp, auth, false)
    }

    fn fresh_secs(r: RespCacheable) -> Option<u64> {
        match r {
            Stored(meta) => Some(
                meta.fresh_until()
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_secs() + 1),
            ),
            Uncacheable(_) => None,
        }
    }

    #[test]
    fn freshness_sources() {
        let p = policy(None);
        assert_eq!(
            fresh_secs(judge(&p, 200, &[("cache-control", "max-age=60")], false)),
            Some(60)
        );
        assert_eq!(
            fresh_secs(judge(
                &p,
                200,
                &[("cache-control", "max-age=60, s-maxage=10")],
                false
            )),
            Some(10)
        );
        assert_eq!(
            fresh_secs(judge(&p, 200, &[], false)),
            None,
            "no heuristic by default"
        );
        assert_eq!(
            fresh_secs(judge(&policy(Some(30)), 200, &[], false)),
            Some(30)
        );
        assert_eq!(fresh_secs(judge(&policy(Some(30)), 500, &[], false)), None);
        let date = httpdate::fmt_http_date(SystemTime::now());
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let got = fresh_secs(judge(
            &p,
            200,
            &[("date", &date), ("expires", &expires)],
            false,
        ));
        assert!(matches!(got, Some(119..=121)), "{got:?}");
        let aged = judge(
            &p,
            200,
            &[("cache-control", "max-age=60"), ("age", "50")],
            false,
        );
        assert!(matches!(fresh_secs(aged), Some(9..=11)));
    }

    #[test]
    fn refusals() {
        let p = policy(Some(30));
        for headers in [
            &[("cache-control", "no-store, max-age=60")][..],
            &[("cache-control", "private, max-age=60")],
            &[("cache-control", "max-age=60"), ("vary", "accept, *")],
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
        ] {
            assert!(
                fresh_secs(judge(&p, 200, headers, false)).is_none(),
                "{headers:?}"
            );
        }
        assert!(fresh_secs(judge(&p, 206, &[("cache-control", "max-age=60")], false)).is_none());
        // Authorization: only public, s-maxage or must-revalidate.
        assert!(fresh_secs(judge(&p, 200, &[("cache-control", "max-age=60")], true)).is_none());
        for allowed in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            let r = judge(&p, 200, &[("cache-control", allowed)], true);
            assert!(fresh_secs(r).is_some(), "{allowed}");
        }
    }

    #[test]
    fn stale_windows() {
        let p = policy(None);
        let Stored(meta) = judge(&p, 200, &[("cache-control", "max-age=1")], false) else {
            panic!("stored")
        };
        assert_eq!(meta.stale_if_error_sec(), 60, "the route's default");
        let Stored(meta) = judge(
            &p,
            200,
            &[("cache-control", "max-age=1, must-revalidate")],
            false,
        ) else {
            panic!("stored")
        };
        assert_eq!(
            meta.stale_if_error_sec(),
            0,
            "must-revalidate forbids stale"
        );
        let Stored(meta) = judge(&p, 200, &[("cache-control", "no-cache")], false) else {
            panic!("stored for revalidation")
        };
        assert!(!meta.is_fresh(SystemTime::now()));
        assert_eq!(meta.stale_if_error_sec(), 0);
    }
}
