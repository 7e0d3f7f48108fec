//! The `rate-limit` plugin: a token bucket per key (client IP, the authenticated subject or
//! client id, a request header, or the route), kept in process memory by default or shared by
//! every gateway node through Redis. Requests over the limit get `429` with `Retry-After` and
//! the IETF draft `RateLimit-*` fields; allowed ones get the `RateLimit-*` fields too.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "rate-limit"
//! rate = 100             # requests per `period` (default 100)
//! period = "1s"          # humantime: "500ms", "1s", "1m", "1h" (default "1s")
//! burst = 100            # bucket capacity: requests allowed at once (default: rate)
//! by = "client_ip"       # client_ip | subject | client_id | header | route (default client_ip)
//! # header = "X-Api-Key" # the header to key on, only with by = "header"
//! headers = true         # RateLimit-* on allowed responses too (default true)
//! max_keys = 100000      # buckets kept in memory at most (default)
//! # Cluster-wide instead of per process (omit for local limits):
//! redis = { url = "redis://127.0.0.1:6379", timeout = "50ms", failure = "open", prefix = "portico:rl:" }
//! # TLS: `rediss://`, the certificate checked against the system's roots or `ca_file` (PEM)
//! # redis = { url = "rediss://redis.internal:6380", ca_file = "/etc/portico/redis-ca.pem" }
//! ```
//!
//! **Keys.** `client_ip` keys on the client address the gateway derived
//! ([`PluginCtx::client_ip`]: a PROXY header's source, the client a trusted proxy names, else
//! the TCP peer); IPv6 clients by their /64 network,
//! since one host usually owns a whole /64 and could otherwise pick a fresh bucket per
//! request. `subject` and `client_id` read [`PluginCtx::identity`], so the plugin must come
//! after the authentication plugin in the chain; requests without an identity (or without a
//! client id) fall back to the client IP. `header` keys on the first value of the header.
//! `route` gives the whole route one bucket; in the global `[[plugins]]` chain the route is
//! not known yet (global plugins run before routing), so there all requests share one bucket.
//! A request with no usable key — no client address, no such header, a value over 256 bytes —
//! spends from one shared bucket named after the kind (`header`, `client_ip`, …).
//!
//! **Algorithm.** GCRA, an exact token bucket stored as one timestamp per key: a full
//! bucket allows `burst` requests at once and refills one request every `period / rate`.
//! Local buckets live in sharded maps; buckets that are full again are dropped every few
//! seconds and at most `max_keys` are kept (when all are in use, the half closest to full are
//! dropped). Local buckets belong to the plugin instance, so they start full again after a
//! config reload; Redis buckets outlive reloads and restarts.
//!
//! **Redis.** One Lua script per request decides atomically in Redis, with Redis' own clock,
//! under keys `{prefix}{route or *}:{rate}/{period}/b{burst}:{key}` (header values only as a
//! SHA-256 digest: they are often API keys), so gateways sharing the Redis and the config
//! share the limit. The connection is made on the first request; `timeout` bounds each
//! decision, and after three failures in a row Redis is left alone for a second. Without an
//! answer, `failure = "open"` (default) lets the request through and `failure = "closed"`
//! answers `503` with `Retry-After: 1`: the client did not exceed its limit, so `429` would
//! mislead it. One Redis server (or a primary behind one address); Redis Cluster is not
//! supported. `rediss://` is TLS over rustls (ring), always verified: against `ca_file`
//! when given, else the system's roots; `#insecure` is refused.
//!
//! **Headers.** `RateLimit-Limit` is the burst (the most `RateLimit-Remaining` can be),
//! `RateLimit-Reset` the seconds until the bucket is full again, `RateLimit-Policy`
//! `{rate};w={seconds}` (plus `;burst=` when it differs), and `Retry-After` on `429` the
//! seconds until the next request is allowed, rounded up. On allowed responses the fields show
//! the bucket when the response leaves (in Redis mode, as Redis last reported it to this node);
//! a response that already carries `RateLimit-Limit` or `RateLimit-Policy` (the plugin's own
//! answers, an upstream's own limits, another `rate-limit` whose response hook ran first:
//! route plugins run before global ones) is left alone.

mod cluster;
mod local;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use self::cluster::{Failure, RedisLimiter, BREAKER_COOLDOWN};
use self::local::{Clock, Decision, Gcra, LocalStore};
use crate::build::{parse_config, BuildError};
use crate::{
    problem_response, Flow, Hooks, Plugin, PluginCtx, PluginResponse, RequestHeader, ResponseHeader,
};

/// The registry name.
pub const NAME: &str = "rate-limit";

/// Longest key value used as is; longer ones count as no key (a client could otherwise fill
/// memory with a few huge header values).
const MAX_KEY_LEN: usize = 256;

/// Longest bucket span (`burst * period / rate`) accepted, so every time sum fits the
/// limiters' integer nanoseconds and Redis' exact (53-bit) microseconds.
const MAX_SPAN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How often a Redis failure is logged as a warning; the rest go to debug.
const WARN_EVERY: u64 = 10_000_000_000;

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    rate: u64,
    period: String,
    burst: Option<u64>,
    by: By,
    header: Option<String>,
    headers: bool,
    max_keys: usize,
    redis: Option<RedisConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rate: 100,
            period: "1s".to_owned(),
            burst: None,
            by: By::ClientIp,
            header: None,
            headers: true,
            max_keys: 100_000,
            redis: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisConfig {
    url: String,
    #[serde(default = "default_redis_timeout")]
    timeout: String,
    #[serde(default)]
    failure: FailureMode,
    #[serde(default = "default_redis_prefix")]
    prefix: String,
    /// PEM file of the CA(s) that a `rediss://` server's certificate must chain to,
    /// instead of the system's roots. The certificate and host name are always checked.
    #[serde(default)]
    ca_file: Option<String>,
}

fn default_redis_timeout() -> String {
    "50ms".to_owned()
}

fn default_redis_prefix() -> String {
    "portico:rl:".to_owned()
}

/// What a request is keyed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum By {
    #[default]
    ClientIp,
    Subject,
    ClientId,
    Header,
    Route,
}

impl By {
    /// The config spelling, also the name of the shared bucket of requests without a key.
    fn as_str(self) -> &'static str {
        match self {
            By::ClientIp => "client_ip",
            By::Subject => "subject",
            By::ClientId => "client_id",
            By::Header => "header",
            By::Route => "route",
        }
    }
}

/// What happens to a request when Redis gives no answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FailureMode {
    /// Let it through (availability over protection).
    #[default]
    Open,
    /// Answer 503.
    Closed,
}

/// The plugin's counters since it was built, for metrics. `allowed`, `limited`,
/// `failed_open` and `failed_closed` are disjoint and add up to the requests seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitStats {
    /// Let through by the limit.
    pub allowed: u64,
    /// Answered 429.
    pub limited: u64,
    /// Let through without a decision because Redis failed (`failure = "open"`).
    pub failed_open: u64,
    /// Answered 503 because Redis failed (`failure = "closed"`).
    pub failed_closed: u64,
    /// Redis failures of any kind (`failed_open + failed_closed`).
    pub errors: u64,
    /// The part of `errors` that were timeouts.
    pub timeouts: u64,
    /// Buckets still in use dropped to stay within `max_keys`.
    pub evicted: u64,
    /// Buckets held in memory now (in Redis mode: the last states Redis reported, kept for
    /// the response headers).
    pub keys: usize,
}

#[derive(Debug, Default)]
struct Counters {
    allowed: AtomicU64,
    limited: AtomicU64,
    failed_open: AtomicU64,
    failed_closed: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    evicted: AtomicU64,
}

impl Counters {
    const fn new() -> Counters {
        Counters {
            allowed: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            failed_open: AtomicU64::new(0),
            failed_closed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn read(&self, keys: usize) -> RateLimitStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RateLimitStats {
            allowed: get(&self.allowed),
            limited: get(&self.limited),
            failed_open: get(&self.failed_open),
            failed_closed: get(&self.failed_closed),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            evicted: get(&self.evicted),
            keys,
        }
    }
}

/// Every instance's counts together, replaced ones included: the gateway's metrics read
/// these, since an instance's own start again when a reload rebuilds it.
static TOTALS: Counters = Counters::new();

/// The counts of every rate-limit instance of this process since it started (`keys` is 0).
pub fn totals() -> RateLimitStats {
    TOTALS.read(0)
}

#[derive(Debug)]
struct RedisMode {
    limiter: RedisLimiter,
    failure: FailureMode,
    prefix: String,
}

/// The built `rate-limit` plugin.
pub struct RateLimit {
    by: By,
    header: Option<HeaderName>,
    headers: bool,
    rate: u64,
    period: Duration,
    clock: Clock,
    /// The buckets in local mode; in Redis mode the last state Redis reported per key, for
    /// the response headers.
    store: LocalStore,
    redis: Option<RedisMode>,
    limit_value: HeaderValue,
    policy_value: HeaderValue,
    /// The policy part of Redis keys, so plugins with different limits never share a bucket.
    policy_tag: String,
    /// Set once a request reached this instance before routing: it is in the global chain, so
    /// the response hook must key `by = "route"` as the request hook did, without the route.
    before_routing: AtomicBool,
    counters: Counters,
    /// Clock time (+1) of the last Redis warning logged.
    last_warn: AtomicU64,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("by", &self.by)
            .field("rate", &self.rate)
            .field("period", &self.period)
            .field("policy", &self.policy_value)
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// Builds the plugin from its config table. Connects nothing and needs no runtime: Redis
    /// is reached on the first request.
    pub fn from_config(config: toml::Value) -> Result<Self, BuildError> {
        let config: Config = parse_config(NAME, config)?;
        if config.rate == 0 {
            return Err(BuildError::invalid(
                NAME,
                "rate",
                "must be at least 1 request per period",
            ));
        }
        let period = parse_duration(&config.period, "period")?;
        let burst = config.burst.unwrap_or(config.rate);
        if burst == 0 {
            return Err(BuildError::invalid(
                NAME,
                "burst",
                "must be at least 1: a bucket of 0 refuses everything",
            ));
        }
        let interval = period.as_nanos() / u128::from(config.rate);
        if interval < 1_000 {
            return Err(BuildError::invalid(
                NAME,
                "rate",
                format!(
                    "{} per {} is more than one request per microsecond, the finest step the \
                     limiter counts in",
                    config.rate, config.period
                ),
            ));
        }
        if interval * u128::from(burst) > MAX_SPAN.as_nanos() {
            return Err(BuildError::invalid(
                NAME,
                "burst",
                "burst × period / rate (the time an empty bucket takes to refill) must be at \
                 most 10 years",
            ));
        }
        // Both fit: interval * burst <= MAX_SPAN in nanoseconds.
        let gcra = Gcra {
            interval: interval as u64,
            burst,
        };

        let header = match (config.by, &config.header) {
            (By::Header, None) => {
                return Err(BuildError::invalid(
                    NAME,
                    "by",
                    "by = \"header\" needs `header`, the name of the header to key on",
                ))
            }
            (By::Header, Some(name)) => {
                Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    BuildError::invalid(
                        NAME,
                        "header",
                        format!("`{name}` is not a valid header name"),
                    )
                })?)
            }
            (_, Some(_)) => {
                return Err(BuildError::invalid(
                    NAME,
                    "header",
                    "only used with by = \"header\"",
                ))
            }
            (_, None) => None,
        };
        if config.max_keys == 0 {
            return Err(BuildError::invalid(NAME, "max_keys", "must be at least 1"));
        }

        let redis = match config.redis {
            None => None,
            Some(redis) => {
                let timeout = parse_duration(&redis.timeout, "redis.timeout")?;
                let interval_us = (period.as_micros() / u128::from(config.rate)) as u64;
                let limiter = RedisLimiter::new(
                    &redis.url,
                    redis.ca_file.as_deref(),
                    timeout,
                    interval_us,
                    burst,
                )
                .map_err(|(field, msg)| BuildError::invalid(NAME, field, msg))?;
                Some(RedisMode {
                    limiter,
                    failure: redis.failure,
                    prefix: redis.prefix,
                })
            }
        };

        let policy = policy(config.rate, period, burst);
        let period_text = humantime::format_duration(period)
            .to_string()
            .replace(' ', "");
        Ok(RateLimit {
            by: config.by,
            header,
            headers: config.headers,
            rate: config.rate,
            period,
            clock: Clock::new(),
            store: LocalStore::new(gcra, config.max_keys),
            redis,
            limit_value: HeaderValue::from(burst),
            // Digits, `;`, `=` and ASCII letters only.
            policy_value: HeaderValue::from_str(&policy).expect("policy is a valid header value"),
            policy_tag: format!("{}/{period_text}/b{burst}", config.rate),
            before_routing: AtomicBool::new(false),
            counters: Counters::default(),
            last_warn: AtomicU64::new(0),
        })
    }

    /// The counters since the plugin was built.
    pub fn stats(&self) -> RateLimitStats {
        self.counters.read(self.store.len())
    }

    /// Adds `n` to one of this instance's counters and to the process's totals.
    fn count(&self, counter: fn(&Counters) -> &AtomicU64, n: u64) {
        counter(&self.counters).fetch_add(n, Ordering::Relaxed);
        counter(&TOTALS).fetch_add(n, Ordering::Relaxed);
    }

    /// The bucket key of a request; `route` is the route id as the request hook saw it.
    fn key(&self, ctx: &PluginCtx, req: &RequestHeader, route: &str) -> String {
        let usable = |v: &&str| !v.is_empty() && v.len() <= MAX_KEY_LEN;
        let found = match self.by {
            By::ClientIp => ip_key(ctx.client_ip),
            By::Subject => ctx
                .identity
                .as_ref()
                .map(|id| id.subject.as_str())
                .filter(usable)
                .map(|s| tagged("sub:", s))
                .or_else(|| ip_key(ctx.client_ip)),
            By::ClientId => ctx
                .identity
                .as_ref()
                .and_then(|id| id.client_id.as_deref())
                .filter(usable)
                .map(|c| tagged("cid:", c))
                .or_else(|| ip_key(ctx.client_ip)),
            By::Header => self
                .header
                .as_ref()
                .and_then(|name| req.headers.get(name))
                .map(|value| value.as_bytes())
                .filter(|v| !v.is_empty() && v.len() <= MAX_KEY_LEN)
                .map(|v| tagged("hdr:", &String::from_utf8_lossy(v))),
            By::Route => Some(route).filter(usable).map(|r| tagged("route:", r)),
        };
        // Found keys contain `:` and the kind names do not, so the two never meet.
        found.unwrap_or_else(|| self.by.as_str().to_owned())
    }

    /// The Redis key of a bucket: `{prefix}{route or *}:{policy}:{key}`, so plugins on other
    /// routes or with other limits never share a bucket while every node with the same config
    /// does. Header values are often credentials (API keys), so Redis — its key listings,
    /// `MONITOR`, its replicas — sees only 128 bits of their SHA-256.
    fn redis_key(&self, prefix: &str, route: &str, key: &str) -> String {
        let scope = if route.is_empty() { "*" } else { route };
        let mut redis_key = format!("{prefix}{scope}:{}:", self.policy_tag);
        match key.strip_prefix("hdr:") {
            Some(value) if self.by == By::Header => {
                redis_key.push_str("hdr#");
                for byte in &Sha256::digest(value.as_bytes())[..16] {
                    let _ = write!(redis_key, "{byte:02x}");
                }
            }
            _ => redis_key.push_str(key),
        }
        redis_key
    }

    /// The 429 answer.
    fn too_many(
        &self,
        ctx: &mut PluginCtx,
        req: &RequestHeader,
        decision: &Decision,
    ) -> PluginResponse {
        let retry_after = ceil_secs(decision.retry_after).max(1);
        let detail = format!(
            "the limit of {} requests per {} is used up; retry in {retry_after} s",
            self.rate,
            humantime::format_duration(self.period)
        );
        let mut resp = problem_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            &detail,
            req,
            ctx,
            5,
        );
        resp.headers.extend([
            (RETRY_AFTER, HeaderValue::from(retry_after)),
            (RATELIMIT_LIMIT, self.limit_value.clone()),
            (RATELIMIT_REMAINING, HeaderValue::from(decision.remaining)),
            (
                RATELIMIT_RESET,
                HeaderValue::from(ceil_secs(decision.reset_after)),
            ),
            (RATELIMIT_POLICY, self.policy_value.clone()),
        ]);
        resp
    }

    /// Counts and logs a Redis failure and applies the failure mode.
    fn redis_failed(
        &self,
        mode: FailureMode,
        failure: Failure,
        ctx: &mut PluginCtx,
        req: &RequestHeader,
    ) -> Flow {
        self.count(|c| &c.errors, 1);
        if matches!(failure, Failure::Timeout) {
            self.count(|c| &c.timeouts, 1);
        }
        self.log_failure(&failure, mode);
        match mode {
            FailureMode::Open => {
                self.count(|c| &c.failed_open, 1);
                Flow::Continue
            }
            FailureMode::Closed => {
                self.count(|c| &c.failed_closed, 1);
                let mut resp = problem_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate-limiter-unavailable",
                    "Rate limiter unavailable",
                    "the shared rate limit store cannot be reached; retry shortly",
                    req,
                    ctx,
                    2,
                );
                resp.headers.extend([
                    (RETRY_AFTER, HeaderValue::from(BREAKER_COOLDOWN.as_secs())),
                    // Marks the answer as the limiter's, so no response hook adds counts.
                    (RATELIMIT_POLICY, self.policy_value.clone()),
                ]);
                Flow::Respond(resp)
            }
        }
    }

    /// A warning at most every [`WARN_EVERY`], so an outage does not flood the log.
    fn log_failure(&self, failure: &Failure, mode: FailureMode) {
        let now = self.clock.now() + 1;
        let last = self.last_warn.load(Ordering::Relaxed);
        let action = match mode {
            FailureMode::Open => "letting requests through",
            FailureMode::Closed => "answering 503",
        };
        if (last == 0 || now.saturating_sub(last) >= WARN_EVERY)
            && self
                .last_warn
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!("{NAME}: {failure}; {action} (further failures for 10 s logged at debug)");
        } else {
            log::debug!("{NAME}: {failure}; {action}");
        }
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: self.headers,
            ..Hooks::default()
        }
    }

    async fn request(&self, ctx: &mut PluginCtx, req: &mut RequestHeader) -> Flow {
        // A refcount, so `ctx` stays free for the answer below.
        let route: Arc<str> = ctx.route_id.clone();
        if route.is_empty() && !self.before_routing.load(Ordering::Relaxed) {
            self.before_routing.store(true, Ordering::Relaxed);
        }
        let key = self.key(ctx, req, &route);
        let decision = match &self.redis {
            None => {
                let (decision, evicted) = self.store.check(&key, self.clock.now());
                if evicted > 0 {
                    self.count(|c| &c.evicted, evicted);
                }
                decision
            }
            Some(redis) => {
                let redis_key = self.redis_key(&redis.prefix, &route, &key);
                match redis.limiter.check(&redis_key, &self.clock).await {
                    Ok(decision) => {
                        if self.headers {
                            let evicted =
                                self.store
                                    .observe(&key, self.clock.now(), decision.reset_after);
                            if evicted > 0 {
                                self.count(|c| &c.evicted, evicted);
                            }
                        }
                        decision
                    }
                    Err(failure) => return self.redis_failed(redis.failure, failure, ctx, req),
                }
            }
        };
        if decision.allowed {
            self.count(|c| &c.allowed, 1);
            Flow::Continue
        } else {
            self.count(|c| &c.limited, 1);
            Flow::Respond(self.too_many(ctx, req, &decision))
        }
    }

    async fn response(&self, ctx: &mut PluginCtx, req: &RequestHeader, resp: &mut ResponseHeader) {
        let present = |name: &HeaderName| resp.headers.contains_key(name);
        if present(&RATELIMIT_LIMIT) || present(&RATELIMIT_POLICY) {
            return;
        }
        let route = if self.before_routing.load(Ordering::Relaxed) {
            ""
        } else {
            &ctx.route_id
        };
        let key = self.key(ctx, req, route);
        let (remaining, reset_after) = self.store.peek(&key, self.clock.now());
        for (name, value) in [
            ("RateLimit-Limit", self.limit_value.clone()),
            ("RateLimit-Remaining", HeaderValue::from(remaining)),
            ("RateLimit-Reset", HeaderValue::from(ceil_secs(reset_after))),
            ("RateLimit-Policy", self.policy_value.clone()),
        ] {
            if let Err(e) = resp.insert_header(name, value) {
                log::warn!("{NAME}: cannot set {name}: {e}");
            }
        }
    }
}

/// `prefix` followed by `value`, as one key string.
fn tagged(prefix: &str, value: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + value.len());
    key.push_str(prefix);
    key.push_str(value);
    key
}

/// `ip:192.0.2.1`, or `ip:2001:db8:1:2::/64` for IPv6 (IPv4-mapped addresses count as IPv4).
fn ip_key(ip: Option<IpAddr>) -> Option<String> {
    let mut key = String::with_capacity(48);
    key.push_str("ip:");
    // Writing to a String cannot fail.
    let _ = match ip?.to_canonical() {
        IpAddr::V4(v4) => write!(key, "{v4}"),
        IpAddr::V6(v6) => {
            let network = Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)));
            write!(key, "{network}/64")
        }
    };
    Some(key)
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `RateLimit-Policy` value: `{quota};w={seconds}`, scaled to whole seconds when the
/// period is not (`10` per `500ms` → `20;w=1`), plus `;burst=` when the burst is not the rate.
fn policy(rate: u64, period: Duration, burst: u64) -> String {
    const SEC: u128 = 1_000_000_000;
    let nanos = period.as_nanos();
    let (quota, window) = if nanos.is_multiple_of(SEC) {
        (u128::from(rate), nanos / SEC)
    } else {
        let window = nanos.div_ceil(SEC);
        (u128::from(rate) * window * SEC / nanos, window)
    };
    let mut policy = format!("{quota};w={window}");
    if burst != rate {
        let _ = write!(policy, ";burst={burst}");
    }
    policy
}

fn parse_duration(text: &str, field: &str) -> Result<Duration, BuildError> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(BuildError::invalid(NAME, field, "must be longer than 0")),
        Err(e) => Err(BuildError::invalid(
            NAME,
            field,
            format!("`{text}` is not a duration ({e}); write e.g. \"50ms\", \"1s\", \"1m\""),
        )),
    }
}
