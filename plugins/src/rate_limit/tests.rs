//! Tests of the `rate-limit` plugin through its hooks: local limits, keys, headers and config,
//! and the Redis mode against the machine's real Redis (`PORTICO_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), which they skip loudly when absent, except under `CI=true`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use crate::Identity;

fn plugin(src: &str) -> RateLimit {
    let table: toml::Value = toml::from_str(src).expect("test TOML parses");
    RateLimit::from_config(table).unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(src: &str) -> (String, Option<String>) {
    let table: toml::Value = toml::from_str(src).expect("test TOML parses");
    match RateLimit::from_config(table) {
        Err(BuildError::InvalidConfig { message, field, .. }) => (message, field),
        Err(other) => panic!("{other:?}"),
        Ok(p) => panic!("accepted: {p:?}"),
    }
}

fn ctx_from(ip: &str) -> PluginCtx {
    PluginCtx {
        route_id: "r1".into(),
        client_ip: Some(ip.parse().expect("test IP")),
        ..PluginCtx::default()
    }
}

fn with_identity(mut ctx: PluginCtx, subject: &str, client_id: Option<&str>) -> PluginCtx {
    ctx.identity = Some(std::sync::Arc::new(Identity {
        subject: subject.to_owned(),
        client_id: client_id.map(str::to_owned),
        scopes: Vec::new(),
    }));
    ctx
}

fn get(headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/orders/1", None).expect("request");
    for (name, value) in headers {
        req.append_header(name.to_string(), *value).expect("header");
    }
    req
}

/// Runs the request hook; `None` when the request may go on.
async fn call(
    p: &RateLimit,
    ctx: &mut PluginCtx,
    req: &mut RequestHeader,
) -> Option<PluginResponse> {
    match p.request(ctx, req).await {
        Flow::Continue => None,
        Flow::Respond(resp) => Some(resp),
    }
}

async fn passes(p: &RateLimit, ctx: &mut PluginCtx) -> bool {
    call(p, ctx, &mut get(&[])).await.is_none()
}

fn header<'a>(resp: &'a PluginResponse, name: &str) -> Option<&'a str> {
    let mut values = resp.headers.iter().filter(|(n, _)| n.as_str() == name);
    let value = values.next().map(|(_, v)| v.to_str().expect("ASCII value"));
    assert!(values.next().is_none(), "{name} twice");
    value
}

/// What the response hook makes of a 200 from the upstream.
async fn respond(p: &RateLimit, ctx: &mut PluginCtx, req: &RequestHeader) -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, None).expect("response");
    p.response(ctx, req, &mut resp).await;
    resp
}

fn resp_header<'a>(resp: &'a ResponseHeader, name: &str) -> Option<&'a str> {
    resp.headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII value"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_concurrency() {
    let p = Arc::new(plugin("rate = 50\nperiod = \"1m\"\nburst = 50"));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { passes(&p, &mut ctx_from("192.0.2.1")).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.expect("task"));
    }
    assert_eq!(allowed, 50);
    let stats = p.stats();
    assert_eq!((stats.allowed, stats.limited), (50, 150));
    assert_eq!(stats.errors, 0);

    // Many keys at once: each gets exactly its own burst.
    let p = Arc::new(plugin("rate = 10\nperiod = \"1m\""));
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let p = p.clone();
            let ip = format!("198.51.100.{}", i % 20);
            tokio::spawn(async move { (i % 20, passes(&p, &mut ctx_from(&ip)).await) })
        })
        .collect();
    let mut per_key = [0; 20];
    for task in tasks {
        let (key, ok) = task.await.expect("task");
        per_key[key] += usize::from(ok);
    }
    assert_eq!(per_key, [10; 20]);
}

#[tokio::test]
async fn refills_one_request_per_interval() {
    // One request back every 200 ms, two at most.
    let p = plugin("rate = 5\nperiod = \"1s\"\nburst = 2");
    let mut ctx = ctx_from("192.0.2.1");
    let started = Instant::now();
    assert!(passes(&p, &mut ctx).await);
    assert!(passes(&p, &mut ctx).await);
    let resp = call(&p, &mut ctx, &mut get(&[])).await.expect("limited");
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    // 200 ms to wait and 400 ms to full, rounded up to whole seconds.
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    assert_eq!(header(&resp, "ratelimit-reset"), Some("1"));

    // At 260 ms one request is back, and the next comes at 400 ms.
    tokio::time::sleep(Duration::from_millis(260).saturating_sub(started.elapsed())).await;
    assert!(passes(&p, &mut ctx).await, "one request back after 200 ms");
    assert!(!passes(&p, &mut ctx).await, "and only one");
    // Full again at 600 ms.
    tokio::time::sleep(Duration::from_millis(710).saturating_sub(started.elapsed())).await;
    assert!(passes(&p, &mut ctx).await);
    assert!(passes(&p, &mut ctx).await);
    assert!(!passes(&p, &mut ctx).await, "never more than the burst");
}

#[tokio::test]
async fn keys_by_client_ip() {
    let p = plugin("rate = 1\nperiod = \"1m\"");
    assert!(passes(&p, &mut ctx_from("192.0.2.1")).await);
    assert!(!passes(&p, &mut ctx_from("192.0.2.1")).await);
    assert!(passes(&p, &mut ctx_from("192.0.2.2")).await);
    // An IPv4-mapped IPv6 address is the IPv4 client.
    assert!(!passes(&p, &mut ctx_from("::ffff:192.0.2.2")).await);
    // IPv6 clients share their /64.
    assert!(passes(&p, &mut ctx_from("2001:db8:1:2::1")).await);
    assert!(!passes(&p, &mut ctx_from("2001:db8:1:2:ffff::9")).await);
    assert!(passes(&p, &mut ctx_from("2001:db8:1:3::1")).await);
    // No address: one bucket shared by all such requests.
    assert!(passes(&p, &mut PluginCtx::default()).await);
    assert!(!passes(&p, &mut PluginCtx::default()).await);

    assert_eq!(
        p.key(&ctx_from("2001:db8:1:2:3:4:5:6"), &get(&[]), "r1"),
        "ip:2001:db8:1:2::/64"
    );
    assert_eq!(p.key(&PluginCtx::default(), &get(&[]), "r1"), "client_ip");
}

#[tokio::test]
async fn keys_by_subject_fall_back_to_the_client_ip() {
    let p = plugin("rate = 1\nperiod = \"1m\"\nby = \"subject\"");
    let alice = || with_identity(ctx_from("192.0.2.1"), "alice", Some("app-1"));
    let bob = || with_identity(ctx_from("192.0.2.1"), "bob", Some("app-1"));
    assert!(passes(&p, &mut alice()).await);
    assert!(!passes(&p, &mut alice()).await);
    // Same address and client, other subject.
    assert!(passes(&p, &mut bob()).await);
    // Without an identity the address is the key; the subjects' buckets are not touched.
    assert!(passes(&p, &mut ctx_from("192.0.2.1")).await);
    assert!(!passes(&p, &mut ctx_from("192.0.2.1")).await);
    assert!(passes(&p, &mut ctx_from("192.0.2.9")).await);
    // An empty subject is no key either.
    assert!(!passes(&p, &mut with_identity(ctx_from("192.0.2.9"), "", None)).await);
    // Neither identity nor address: the shared `subject` bucket.
    assert_eq!(p.key(&PluginCtx::default(), &get(&[]), ""), "subject");
    assert_eq!(p.key(&alice(), &get(&[]), ""), "sub:alice");
}

#[tokio::test]
async fn keys_by_client_id() {
    let p = plugin("rate = 1\nperiod = \"1m\"\nby = \"client_id\"");
    let caller =
        |sub: &str, client: Option<&str>| with_identity(ctx_from("192.0.2.1"), sub, client);
    assert!(passes(&p, &mut caller("alice", Some("app-1"))).await);
    // Another subject of the same client shares its bucket.
    assert!(!passes(&p, &mut caller("bob", Some("app-1"))).await);
    assert!(passes(&p, &mut caller("bob", Some("app-2"))).await);
    // An identity without a client id is keyed by address.
    assert!(passes(&p, &mut caller("carol", None)).await);
    assert!(!passes(&p, &mut ctx_from("192.0.2.1")).await);
    assert_eq!(
        p.key(&caller("x", Some("app-1")), &get(&[]), ""),
        "cid:app-1"
    );
}

#[tokio::test]
async fn keys_by_header() {
    let p = plugin("rate = 1\nperiod = \"1m\"\nby = \"header\"\nheader = \"X-Api-Key\"");
    let mut ctx = ctx_from("192.0.2.1");
    let with_key = |key: &str| get(&[("x-api-key", key)]);
    assert!(call(&p, &mut ctx, &mut with_key("k1")).await.is_none());
    assert!(call(&p, &mut ctx, &mut with_key("k1")).await.is_some());
    assert!(call(&p, &mut ctx, &mut with_key("k2")).await.is_none());
    // Missing, empty or oversized values share the one `header` bucket, whatever the address.
    assert!(call(&p, &mut ctx_from("192.0.2.7"), &mut get(&[]))
        .await
        .is_none());
    assert!(call(&p, &mut ctx_from("192.0.2.8"), &mut get(&[]))
        .await
        .is_some());
    assert!(call(&p, &mut ctx, &mut with_key("")).await.is_some());
    let huge = "k".repeat(MAX_KEY_LEN + 1);
    assert!(call(&p, &mut ctx, &mut with_key(&huge)).await.is_some());
    assert_eq!(p.key(&ctx, &get(&[]), "r1"), "header");
    // Only the first value counts.
    let req = get(&[("X-API-KEY", "k3"), ("x-api-key", "k4")]);
    assert_eq!(p.key(&ctx, &req, "r1"), "hdr:k3");
}

#[tokio::test]
async fn keys_by_route() {
    let p = plugin("rate = 1\nperiod = \"1m\"\nby = \"route\"");
    let on = |route: &str, ip: &str| {
        let mut ctx = ctx_from(ip);
        ctx.route_id = route.into();
        ctx
    };
    assert!(passes(&p, &mut on("orders", "192.0.2.1")).await);
    // Every client of the route shares its bucket.
    assert!(!passes(&p, &mut on("orders", "192.0.2.2")).await);
    assert!(passes(&p, &mut on("stock", "192.0.2.1")).await);

    // In the global chain the route is not known yet: one bucket, and the response hook,
    // which runs after routing, reports that same bucket.
    let global = plugin("rate = 3\nperiod = \"1m\"\nby = \"route\"");
    let mut ctx = on("", "192.0.2.1");
    assert!(passes(&global, &mut ctx).await);
    ctx.route_id = "orders".into();
    let resp = respond(&global, &mut ctx, &get(&[])).await;
    assert_eq!(resp_header(&resp, "ratelimit-remaining"), Some("2"));
}

#[tokio::test]
async fn limited_requests_get_429_with_rate_limit_fields() {
    let p = plugin("rate = 2\nperiod = \"1m\"");
    let mut ctx = ctx_from("192.0.2.1");
    assert!(passes(&p, &mut ctx).await);
    assert!(passes(&p, &mut ctx).await);
    let resp = call(&p, &mut ctx, &mut get(&[])).await.expect("limited");
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&resp, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(header(&resp, "cache-control"), Some("no-store"));
    // One request back every 30 s; full again after 60 s.
    assert_eq!(header(&resp, "retry-after"), Some("30"));
    assert_eq!(header(&resp, "ratelimit-limit"), Some("2"));
    assert_eq!(header(&resp, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&resp, "ratelimit-reset"), Some("60"));
    assert_eq!(header(&resp, "ratelimit-policy"), Some("2;w=60"));

    let body: serde_json::Value = serde_json::from_slice(&resp.body).expect("JSON body");
    assert_eq!(body["status"], 429);
    assert_eq!(body["type"], "urn:portico:problem:rate-limited");
    assert_eq!(body["instance"], "/orders/1");
    let id = ctx.request_id.clone().expect("an id for the answer");
    assert_eq!(body["request_id"], id.as_str());
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("2 requests per 1m"),
        "{body}"
    );
    assert!(resp.body.len() < 400);

    // An id an earlier plugin chose is the one used.
    let mut ctx = ctx_from("192.0.2.1");
    ctx.request_id = Some("req-7".into());
    let resp = call(&p, &mut ctx, &mut get(&[])).await.expect("limited");
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["request_id"], "req-7");

    // The response hook leaves the plugin's own answer as it is.
    let mut head = ResponseHeader::build(429, None).unwrap();
    for (name, value) in &resp.headers {
        head.append_header(name.clone(), value.clone()).unwrap();
    }
    let before = head.headers.clone();
    p.response(&mut ctx, &get(&[]), &mut head).await;
    assert_eq!(head.headers, before);
    assert_eq!(p.stats().limited, 2);
}

#[tokio::test]
async fn allowed_responses_show_the_bucket() {
    let p = plugin("rate = 5\nperiod = \"1m\"\nburst = 10");
    assert_eq!(
        p.hooks(),
        Hooks {
            request: true,
            response: true,
            ..Hooks::default()
        }
    );
    let mut ctx = ctx_from("192.0.2.1");
    for _ in 0..3 {
        assert!(passes(&p, &mut ctx).await);
    }
    let resp = respond(&p, &mut ctx, &get(&[])).await;
    assert_eq!(resp_header(&resp, "ratelimit-limit"), Some("10"));
    assert_eq!(resp_header(&resp, "ratelimit-remaining"), Some("7"));
    // Three requests take 3 × 12 s to come back.
    assert_eq!(resp_header(&resp, "ratelimit-reset"), Some("36"));
    assert_eq!(
        resp_header(&resp, "ratelimit-policy"),
        Some("5;w=60;burst=10")
    );

    // A fresh key shows a full bucket.
    let resp = respond(&p, &mut ctx_from("192.0.2.99"), &get(&[])).await;
    assert_eq!(resp_header(&resp, "ratelimit-remaining"), Some("10"));
    assert_eq!(resp_header(&resp, "ratelimit-reset"), Some("0"));

    // An upstream's own limit fields are kept.
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("RateLimit-Limit", "1000").unwrap();
    p.response(&mut ctx, &get(&[]), &mut resp).await;
    assert_eq!(resp_header(&resp, "ratelimit-limit"), Some("1000"));
    assert!(resp.headers.get("ratelimit-remaining").is_none());
}

#[tokio::test]
async fn headers_false_keeps_allowed_responses_clean() {
    let p = plugin("rate = 1\nperiod = \"1m\"\nheaders = false");
    assert_eq!(
        p.hooks(),
        Hooks {
            request: true,
            ..Hooks::default()
        }
    );
    let mut ctx = ctx_from("192.0.2.1");
    assert!(passes(&p, &mut ctx).await);
    // A 429 still says why and when.
    let resp = call(&p, &mut ctx, &mut get(&[])).await.expect("limited");
    assert_eq!(header(&resp, "retry-after"), Some("60"));
    assert_eq!(header(&resp, "ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn memory_stays_bounded_through_the_plugin() {
    let p = plugin("rate = 1\nperiod = \"1h\"\nmax_keys = 64");
    for i in 0..5_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        assert!(passes(&p, &mut ctx_from(&ip)).await);
    }
    let stats = p.stats();
    assert!(stats.keys <= p.store.capacity(), "{stats:?}");
    assert!(p.store.capacity() < 64 + 32);
    assert!(stats.evicted >= 5_000 - 96, "{stats:?}");
    assert_eq!(stats.allowed, 5_000);
}

#[test]
fn redis_keys_name_route_policy_and_key_but_never_a_header_value() {
    let url = "redis = { url = \"redis://127.0.0.1:1\", prefix = \"p:\" }";
    let p = plugin(&format!("rate = 5\nperiod = \"1m\"\n{url}"));
    assert_eq!(
        p.redis_key("p:", "orders", "ip:192.0.2.1"),
        "p:orders:5/1m/b5:ip:192.0.2.1"
    );
    // Global chain: no route yet.
    assert_eq!(p.redis_key("p:", "", "client_ip"), "p:*:5/1m/b5:client_ip");

    let p = plugin(&format!(
        "rate = 5\nperiod = \"1m\"\nburst = 9\nby = \"header\"\nheader = \"X-Api-Key\"\n{url}"
    ));
    let key = p.redis_key("p:", "orders", "hdr:secret-key-1");
    assert!(!key.contains("secret"), "{key}");
    assert!(key.starts_with("p:orders:5/1m/b9:hdr#"), "{key}");
    assert_eq!(key.len(), "p:orders:5/1m/b9:hdr#".len() + 32);
    assert_ne!(key, p.redis_key("p:", "orders", "hdr:secret-key-2"));
    // Same value, same key: every node must agree.
    assert_eq!(key, p.redis_key("p:", "orders", "hdr:secret-key-1"));
    // The shared bucket of requests without the header is named, not hashed.
    assert_eq!(
        p.redis_key("p:", "orders", "header"),
        "p:orders:5/1m/b9:header"
    );
}

#[test]
fn policies_are_rendered_in_whole_seconds() {
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    assert_eq!(policy(100, s(1), 100), "100;w=1");
    assert_eq!(policy(1000, s(3600), 1000), "1000;w=3600");
    assert_eq!(policy(10, ms(500), 10), "20;w=1");
    assert_eq!(policy(1, ms(1500), 1), "1;w=2");
    assert_eq!(policy(5, s(60), 20), "5;w=60;burst=20");
    assert_eq!(ceil_secs(ms(1)), 1);
    assert_eq!(ceil_secs(s(2)), 2);
    assert_eq!(ceil_secs(Duration::ZERO), 0);
}

#[test]
fn builds_with_defaults_without_runtime_or_network() {
    // Plain #[test]: no Tokio runtime. Nothing listens on port 1; building must not care.
    let p = plugin("");
    assert_eq!(p.name(), NAME);
    assert_eq!(p.policy_value, "100;w=1");
    assert_eq!(p.by, By::ClientIp);
    let p = plugin("redis = { url = \"redis://127.0.0.1:1\" }");
    let redis = p.redis.as_ref().expect("redis mode");
    assert_eq!(redis.failure, FailureMode::Open);
    assert_eq!(redis.prefix, "portico:rl:");
    assert_eq!(p.stats(), RateLimitStats::default());
    assert_eq!(p.policy_tag, "100/1s/b100");
}

#[test]
fn bad_configs_name_the_field() {
    for (src, field, hint) in [
        ("rate = 0", "rate", "at least 1"),
        ("rate = -1", "rate", "invalid value"),
        ("period = \"soon\"", "period", "not a duration"),
        ("period = \"0s\"", "period", "longer than 0"),
        ("burst = 0", "burst", "at least 1"),
        ("rate = 2000000\nperiod = \"1s\"", "rate", "microsecond"),
        (
            "rate = 1\nperiod = \"1000d\"\nburst = 10",
            "burst",
            "10 years",
        ),
        ("by = \"header\"", "by", "needs `header`"),
        (
            "by = \"header\"\nheader = \"X Bad\"",
            "header",
            "not a valid header name",
        ),
        ("header = \"X-Api-Key\"", "header", "only used with"),
        ("by = \"cookie\"", "by", "unknown variant"),
        ("max_keys = 0", "max_keys", "at least 1"),
        (
            "redis = { url = \"http://x\" }",
            "redis.url",
            "not a usable Redis URL",
        ),
        (
            "redis = { url = \"redis://x\", timeout = \"fast\" }",
            "redis.timeout",
            "not a duration",
        ),
        (
            "redis = { url = \"redis://x\", failure = \"maybe\" }",
            "redis.failure",
            "unknown variant",
        ),
        (
            "redis = { url = \"redis://x\", pool = 3 }",
            "redis.pool",
            "unknown field",
        ),
        (
            "redis = { timeout = \"1s\" }",
            "redis",
            "missing field `url`",
        ),
    ] {
        let (message, got) = config_error(src);
        assert_eq!(got.as_deref(), Some(field), "{src}: {message}");
        assert!(message.contains(hint), "{src}: {message}");
    }
}

// ---- Redis mode, against the real server ----

/// The test Redis URL, or `None` after a loud SKIP when no Redis answers (a failure under
/// `CI=true`, where the server must be there).
async fn redis_url(test: &str) -> Option<String> {
    let url = std::env::var("PORTICO_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let probe = async {
        let client = ::redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        ::redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    let why = match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 2 s".to_owned(),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: Redis is required under CI=true but {url} is unusable: {why}");
    }
    eprintln!(
        "\n!!!!!!!! SKIP {test}: no Redis at {url} ({why}). Start redis-server or set \
         PORTICO_TEST_REDIS_URL; under CI=true this test fails instead. !!!!!!!!\n"
    );
    None
}

/// A key prefix no other test run shares.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("portico:test:{}:{nanos}:{test}:", std::process::id())
}

fn redis_plugin(url: &str, prefix: &str, limits: &str, extra: &str) -> RateLimit {
    plugin(&format!(
        "{limits}\nredis = {{ url = \"{url}\", prefix = \"{prefix}\"{extra} }}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_nodes_share_one_limit_exactly() {
    let Some(url) = redis_url("redis_two_nodes_share_one_limit_exactly").await else {
        return;
    };
    let prefix = unique_prefix("two-nodes");
    let limits = "rate = 50\nperiod = \"1m\"\nburst = 50";
    // Two plugin instances sharing one Redis: two gateway nodes with the same config.
    let nodes = [
        Arc::new(redis_plugin(&url, &prefix, limits, ", timeout = \"2s\"")),
        Arc::new(redis_plugin(&url, &prefix, limits, ", timeout = \"2s\"")),
    ];
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let node = nodes[i % 2].clone();
            tokio::spawn(async move {
                let mut ctx = ctx_from("192.0.2.1");
                call(&node, &mut ctx, &mut get(&[])).await
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        match task.await.expect("task") {
            None => allowed += 1,
            Some(resp) => {
                assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
                assert_eq!(header(&resp, "ratelimit-remaining"), Some("0"));
                assert_eq!(header(&resp, "ratelimit-limit"), Some("50"));
                // One request back every 1.2 s.
                assert_eq!(header(&resp, "retry-after"), Some("2"));
            }
        }
    }
    assert_eq!(allowed, 50);
    let (a, b) = (nodes[0].stats(), nodes[1].stats());
    assert_eq!(a.allowed + b.allowed, 50);
    assert_eq!(a.limited + b.limited, 150);
    assert_eq!(a.errors + b.errors, 0);

    // In turn, one request each: the nodes spend from one bucket, so the 51st request of
    // another client is refused by whichever node gets it.
    let mut turns = Vec::new();
    for i in 0..52 {
        let mut ctx = ctx_from("192.0.2.2");
        turns.push(passes(&nodes[i % 2], &mut ctx).await);
    }
    assert!(turns[..50].iter().all(|ok| *ok), "{turns:?}");
    assert_eq!(turns[50..], [false, false]);

    // Another route on the same Redis and prefix has its own buckets.
    let mut other = ctx_from("192.0.2.1");
    other.route_id = "r2".into();
    assert!(call(&nodes[0], &mut other, &mut get(&[])).await.is_none());
}

#[tokio::test]
async fn redis_refills_on_redis_time_and_reports_headers() {
    let Some(url) = redis_url("redis_refills_on_redis_time_and_reports_headers").await else {
        return;
    };
    let prefix = unique_prefix("refill");
    // One request back every 200 ms, two at most.
    let p = redis_plugin(&url, &prefix, "rate = 5\nperiod = \"1s\"\nburst = 2", "");
    let mut ctx = ctx_from("192.0.2.1");
    let started = Instant::now();
    assert!(passes(&p, &mut ctx).await);
    let resp = respond(&p, &mut ctx, &get(&[])).await;
    assert_eq!(resp_header(&resp, "ratelimit-limit"), Some("2"));
    assert_eq!(resp_header(&resp, "ratelimit-remaining"), Some("1"));
    assert_eq!(resp_header(&resp, "ratelimit-reset"), Some("1"));
    assert_eq!(
        resp_header(&resp, "ratelimit-policy"),
        Some("5;w=1;burst=2")
    );
    assert!(passes(&p, &mut ctx).await);
    let limited = call(&p, &mut ctx, &mut get(&[])).await.expect("limited");
    assert_eq!(header(&limited, "retry-after"), Some("1"));
    tokio::time::sleep(Duration::from_millis(260).saturating_sub(started.elapsed())).await;
    assert!(passes(&p, &mut ctx).await, "one request back after 200 ms");
    assert!(!passes(&p, &mut ctx).await, "and only one until 400 ms");
    let stats = p.stats();
    assert_eq!((stats.allowed, stats.limited, stats.errors), (3, 2, 0));

    // The keys carry route, policy and key, and expire once the bucket is full again.
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}r1:5/1s/b2:ip:192.0.2.1");
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=400).contains(&ttl), "{key}: PTTL {ttl}");
}

/// An address where nothing listens.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("redis://{addr}")
}

#[tokio::test]
async fn redis_refused_fails_open() {
    let url = closed_port();
    let p = redis_plugin(
        &url,
        "t:",
        "rate = 1\nperiod = \"1m\"",
        ", timeout = \"200ms\"",
    );
    let mut ctx = ctx_from("192.0.2.1");
    for _ in 0..5 {
        let started = Instant::now();
        assert!(passes(&p, &mut ctx).await, "open: every request passes");
        assert!(started.elapsed() < Duration::from_millis(400));
    }
    let stats = p.stats();
    assert_eq!((stats.allowed, stats.failed_open, stats.errors), (0, 5, 5));
    assert_eq!(stats.failed_closed, 0);
}

#[tokio::test]
async fn redis_timeout_fails_closed_within_the_timeout() {
    // Accepts connections (the kernel's backlog does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let p = redis_plugin(
        &url,
        "t:",
        "rate = 1\nperiod = \"1m\"",
        ", timeout = \"100ms\", failure = \"closed\"",
    );
    let mut ctx = ctx_from("192.0.2.1");
    for attempt in 0..cluster::BREAKER_FAILURES {
        let started = Instant::now();
        let resp = call(&p, &mut ctx, &mut get(&[]))
            .await
            .expect("closed: refused");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(95) && took < Duration::from_millis(600),
            "attempt {attempt} took {took:?}"
        );
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&resp, "retry-after"), Some("1"));
        assert_eq!(header(&resp, "ratelimit-policy"), Some("1;w=60"));
        assert_eq!(
            header(&resp, "content-type"),
            Some("application/problem+json")
        );
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body["type"], "urn:portico:problem:rate-limiter-unavailable");
        assert_eq!(body["status"], 503);
    }
    // After repeated failures Redis is not asked for a moment: no more waiting.
    let started = Instant::now();
    let resp = call(&p, &mut ctx, &mut get(&[])).await.expect("refused");
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    let stats = p.stats();
    let n = u64::from(cluster::BREAKER_FAILURES) + 1;
    assert_eq!((stats.failed_closed, stats.errors), (n, n));
    assert_eq!(stats.timeouts, n - 1);
    assert_eq!(stats.allowed + stats.failed_open, 0);
}

#[tokio::test]
async fn redis_reconnects_after_the_connection_is_killed() {
    let Some(url) = redis_url("redis_reconnects_after_the_connection_is_killed").await else {
        return;
    };
    let prefix = unique_prefix("reconnect");
    let p = redis_plugin(
        &url,
        &prefix,
        "rate = 1000\nperiod = \"1s\"",
        ", timeout = \"1s\", failure = \"closed\"",
    );
    let mut ctx = ctx_from("192.0.2.1");
    assert!(passes(&p, &mut ctx).await);

    let limiter = &p.redis.as_ref().unwrap().limiter;
    let mut ours = limiter.connection().await.unwrap().clone();
    let id: i64 = ::redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut ours)
        .await
        .unwrap();
    let admin = ::redis::Client::open(url.as_str()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);

    // The request that finds the connection dead may fail; the manager reconnects.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut failures = 0;
    loop {
        if passes(&p, &mut ctx).await {
            break;
        }
        failures += 1;
        assert!(
            Instant::now() < deadline,
            "no reconnect after {failures} failures"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures <= 2, "{failures} failures before reconnecting");
    assert!(passes(&p, &mut ctx).await);
}

/// A `redis-server` with TLS only on 127.0.0.1 (plaintext port off), its certificate for
/// `localhost` and 127.0.0.1 signed by a CA made for the test; killed when dropped.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// `None` after a loud SKIP when `redis-server` is missing (a failure under `CI=true`).
    async fn start(test: &str) -> Option<TlsRedis> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("server.pem"), cert.pem()).unwrap();
        std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spawned = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(path("server.pem"))
            .arg("--tls-key-file")
            .arg(path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(path("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{test}: redis-server is required under CI=true: {e}");
                }
                eprintln!("\n!!!!!!!! SKIP {test}: cannot run redis-server ({e}) !!!!!!!!\n");
                return None;
            }
        };
        let server = TlsRedis {
            child,
            port,
            ca_file: path("ca.pem"),
            _dir: dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{test}: redis-server did not listen on {port} with TLS");
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_file_limits_and_an_unknown_ca_is_refused() {
    let test = "rediss_with_a_ca_file_limits_and_an_unknown_ca_is_refused";
    let Some(server) = TlsRedis::start(test).await else {
        return;
    };
    let ca = format!(
        ", timeout = \"2s\", ca_file = \"{}\"",
        server.ca_file.display()
    );
    let limits = "rate = 2\nperiod = \"1m\"\nburst = 2";
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("rediss://{host}:{}", server.port);
        let p = redis_plugin(&url, &unique_prefix("tls"), limits, &ca);
        let mut ctx = ctx_from("192.0.2.1");
        assert!(passes(&p, &mut ctx).await);
        assert!(passes(&p, &mut ctx).await);
        assert!(
            !passes(&p, &mut ctx).await,
            "{host}: the third is limited by Redis"
        );
        let stats = p.stats();
        assert_eq!(
            (stats.allowed, stats.limited, stats.errors),
            (2, 1, 0),
            "{host}"
        );
    }

    // Verified by default: without the CA file the system's roots do not know this CA,
    // so Redis gives no decision (and the plugin fails open, as configured by default).
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let p = redis_plugin(
        &url,
        &unique_prefix("tls-noca"),
        limits,
        ", timeout = \"2s\"",
    );
    let mut ctx = ctx_from("192.0.2.1");
    for _ in 0..3 {
        assert!(passes(&p, &mut ctx).await);
    }
    let stats = p.stats();
    assert_eq!(
        (stats.allowed, stats.errors),
        (0, 3),
        "no decision without trust"
    );
    let redis = p.redis.as_ref().expect("redis mode");
    let Err(err) = redis.limiter.connection().await else {
        panic!("an unknown CA is refused");
    };
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // Plaintext to the TLS port gets nowhere either.
    let url = format!("redis://127.0.0.1:{}", server.port);
    let p = redis_plugin(
        &url,
        &unique_prefix("tls-plain"),
        limits,
        ", timeout = \"500ms\"",
    );
    assert!(passes(&p, &mut ctx).await);
    assert_eq!(p.stats().errors, 1);
}

#[test]
fn rediss_settings_are_checked_at_build() {
    let (msg, field) = config_error(
        "rate = 1\nredis = { url = \"redis://127.0.0.1:6379\", ca_file = \"/etc/ssl/certs/ca-certificates.crt\" }",
    );
    assert_eq!(field.as_deref(), Some("redis.ca_file"));
    assert!(msg.contains("rediss://"), "{msg}");
    let (msg, field) = config_error(
        "rate = 1\nredis = { url = \"rediss://127.0.0.1:6380\", ca_file = \"/nonexistent.pem\" }",
    );
    assert_eq!(field.as_deref(), Some("redis.ca_file"));
    assert!(msg.contains("/nonexistent.pem"), "{msg}");
    let (msg, field) =
        config_error("rate = 1\nredis = { url = \"rediss://127.0.0.1:6380/#insecure\" }");
    assert_eq!(field.as_deref(), Some("redis.url"));
    assert!(msg.contains("insecure"), "{msg}");
}
