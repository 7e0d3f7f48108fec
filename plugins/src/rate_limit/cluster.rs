//! The cluster-wide limiter: the same GCRA as the local one, run by Redis in one atomic Lua
//! script so every gateway node sharing the Redis spends from the same buckets.
//!
//! The script reads the time from Redis (`TIME`), never from the calling node, so nodes whose
//! clocks disagree still agree on every bucket. The connection is made on the first request,
//! not when the plugin is built (`portico check` builds plugins with neither a runtime nor a
//! network), through a [`ConnectionManager`]: one multiplexed connection shared by all
//! requests that reconnects by itself after Redis restarts.
//!
//! Every call is bounded by the configured timeout. After [`BREAKER_FAILURES`] failures in a
//! row the limiter stops asking Redis for [`BREAKER_COOLDOWN`], so an outage costs each
//! request nothing instead of a timeout each; the first request after the cooldown tries
//! again.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::local::{Clock, Decision};

/// GCRA over a key holding the theoretical arrival time (TAT) in microseconds of Redis' clock.
/// ARGV: emission interval (µs), burst. Returns {allowed, remaining, retry_after_us,
/// reset_after_us}. The TAT is written with `%.0f` because Redis would turn a large Lua number
/// into a rounded float string, and the key expires when its bucket is full again.
const GCRA_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local span = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - span
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
  'PX', string.format('%.0f', math.ceil((new_tat - now) / 1000)))
return {1, math.floor((now + span - new_tat) / interval), 0, new_tat - now}
"#;

/// Failures in a row after which Redis is left alone for [`BREAKER_COOLDOWN`].
pub(crate) const BREAKER_FAILURES: u32 = 3;
/// How long Redis is left alone after [`BREAKER_FAILURES`] failures in a row.
pub(crate) const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// Why Redis gave no decision.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Redis did not answer within the timeout.
    Timeout,
    /// Redis failed repeatedly just now; not asked during the cooldown.
    CoolingDown,
    /// Connecting failed or Redis answered with an error.
    Redis(redis::RedisError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("Redis did not answer in time"),
            Failure::CoolingDown => f.write_str("Redis failed repeatedly, not asked for a moment"),
            Failure::Redis(e) => write!(f, "Redis error: {e}"),
        }
    }
}

/// A GCRA limiter backed by Redis.
pub(crate) struct RedisLimiter {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    interval_us: u64,
    burst: u64,
    failures: AtomicU32,
    /// Clock time before which Redis is not asked (0: ask).
    cooldown_until: AtomicU64,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the URL, which may carry a password.
        f.debug_struct("RedisLimiter")
            .field("timeout", &self.timeout)
            .field("interval_us", &self.interval_us)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Parses the URL and reads the CA file; connects nothing. The error names its field.
    pub(crate) fn new(
        url: &str,
        ca_file: Option<&str>,
        timeout: Duration,
        interval_us: u64,
        burst: u64,
    ) -> Result<Self, (&'static str, String)> {
        let bad_url = |e: redis::RedisError| {
            (
                "redis.url",
                format!(
                    "not a usable Redis URL ({e}); expected \
                     `redis://[user:password@]host[:port][/db]` or `rediss://…` for TLS"
                ),
            )
        };
        let tls = url.starts_with("rediss://");
        if tls {
            // The redis crate builds its rustls config with the process-wide provider.
            let _ = rustls::crypto::ring::default_provider().install_default();
            if url.contains('#') {
                return Err((
                    "redis.url",
                    "a `#` fragment (`#insecure`) is not accepted: the server's certificate \
                     is always checked; give its CA with `ca_file`"
                        .into(),
                ));
            }
        }
        let client = match ca_file {
            None => redis::Client::open(url).map_err(bad_url)?,
            Some(_) if !tls => {
                return Err((
                    "redis.ca_file",
                    "needs a `rediss://` URL (TLS); `redis://` is plaintext".into(),
                ))
            }
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| ("redis.ca_file", format!("cannot read `{path}`: {e}")))?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err((
                        "redis.ca_file",
                        format!("`{path}` holds no PEM certificate"),
                    ));
                }
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(|e| ("redis.ca_file", format!("`{path}`: {e}")))?
            }
        };
        Ok(RedisLimiter {
            client,
            conn: OnceCell::new(),
            script: redis::Script::new(GCRA_LUA),
            timeout,
            interval_us,
            burst,
            failures: AtomicU32::new(0),
            cooldown_until: AtomicU64::new(0),
        })
    }

    /// Decides one request for the Redis key `key`, within the timeout.
    pub(crate) async fn check(&self, key: &str, clock: &Clock) -> Result<Decision, Failure> {
        let until = self.cooldown_until.load(Ordering::Relaxed);
        if until != 0 && clock.now() < until {
            return Err(Failure::CoolingDown);
        }
        let result = match tokio::time::timeout(self.timeout, self.eval(key)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(Failure::Redis(e)),
            Err(_) => Err(Failure::Timeout),
        };
        match result {
            Ok((allowed, remaining, retry_us, reset_us)) => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                    self.cooldown_until.store(0, Ordering::Relaxed);
                }
                let micros = |v: i64| Duration::from_micros(v.max(0) as u64);
                Ok(Decision {
                    allowed: allowed == 1,
                    remaining: remaining.max(0) as u64,
                    retry_after: micros(retry_us),
                    reset_after: micros(reset_us),
                })
            }
            Err(failure) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= BREAKER_FAILURES {
                    let until = clock.now() + BREAKER_COOLDOWN.as_nanos() as u64;
                    self.cooldown_until.store(until.max(1), Ordering::Relaxed);
                }
                Err(failure)
            }
        }
    }

    async fn eval(&self, key: &str) -> redis::RedisResult<(i64, i64, i64, i64)> {
        let mut conn = self.connection().await?.clone();
        let mut call = self.script.prepare_invoke();
        call.key(key).arg(self.interval_us).arg(self.burst);
        call.invoke_async(&mut conn).await
    }

    /// The shared connection, made by the first request that needs it; concurrent first
    /// requests wait for the same attempt. A failed or timed-out attempt leaves the cell
    /// empty, so a later request tries again.
    pub(crate) async fn connection(&self) -> redis::RedisResult<&ConnectionManager> {
        self.conn
            .get_or_try_init(|| async {
                // Retries here would only outlast the request's timeout; the manager's own
                // reconnects after a lost connection use the same short schedule.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
    }
}
