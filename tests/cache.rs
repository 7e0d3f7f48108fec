//! The per-route response cache through the real gateway: RFC 9111 shared-cache rules
//! (max-age, s-maxage, no-store, private, no-cache, Expires, Age, Vary, status codes, a
//! route's default TTL), identity safety (authenticated requests, per-identity keys with two
//! tokens, Set-Cookie, plugins still running before a hit), revalidation with ETag and
//! Last-Modified, a client's conditional request answered from the cache, one upstream
//! request for many concurrent misses, stale-while-revalidate, stale-if-error (5xx,
//! refused connection, timeout, open breaker), `Cache-Status`, metrics and the access log.
//! The origin behind it is an in-test server answering each path with the headers the case
//! needs and counting what reaches it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::json;

use common::*;

/// What the origin answers on one path.
#[derive(Clone, Default)]
struct Spec {
    status: u16,
    headers: Vec<(String, String)>,
    delay: Duration,
    /// Answer `304` (with `headers`) to a request whose `If-None-Match` is this.
    etag_304: Option<String>,
}

#[derive(Default)]
struct OriginState {
    specs: HashMap<String, Spec>,
    /// Requests per path, with their headers, in order.
    seen: HashMap<String, Vec<http::HeaderMap>>,
}

/// The origin: answers each path by its [`Spec`] with a body `"{path} #{n}"` (its n-th
/// request) and the caller's `Authorization` tail, and counts requests per path.
struct Origin {
    server: HttpServer,
    state: Arc<Mutex<OriginState>>,
}

impl Origin {
    async fn start() -> Origin {
        let state = Arc::new(Mutex::new(OriginState::default()));
        let shared = state.clone();
        let server = HttpServer::start(move |req: hyper::Request<hyper::body::Incoming>| {
            let state = shared.clone();
            async move {
                let path = req.uri().path().to_string();
                if path == "/healthz" {
                    return reply(200, "text/plain", "ok");
                }
                let (spec, n) = {
                    let mut s = state.lock().unwrap();
                    let seen = s.seen.entry(path.clone()).or_default();
                    seen.push(req.headers().clone());
                    let n = seen.len();
                    (s.specs.get(&path).cloned().unwrap_or_default(), n)
                };
                if !spec.delay.is_zero() {
                    tokio::time::sleep(spec.delay).await;
                }
                let caller = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v[v.len().saturating_sub(6)..].to_string())
                    .unwrap_or_default();
                let not_modified = spec.etag_304.as_deref().is_some_and(|etag| {
                    req.headers()
                        .get("if-none-match")
                        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
                });
                let status = if not_modified {
                    304
                } else if spec.status == 0 {
                    200
                } else {
                    spec.status
                };
                let mut resp = Response::builder().status(status);
                for (n, v) in &spec.headers {
                    resp = resp.header(n.as_str(), v.as_str());
                }
                let body = if not_modified {
                    Bytes::new()
                } else {
                    Bytes::from(format!("{path} #{n} {caller}"))
                };
                resp.body(Full::new(body)).expect("response")
            }
        })
        .await;
        Origin { server, state }
    }

    fn set(&self, path: &str, status: u16, headers: &[(&str, &str)]) {
        self.set_spec(
            path,
            Spec {
                status,
                headers: headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                ..Spec::default()
            },
        );
    }

    fn set_spec(&self, path: &str, spec: Spec) {
        self.state
            .lock()
            .unwrap()
            .specs
            .insert(path.to_string(), spec);
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .seen
            .get(path)
            .map_or(0, Vec::len)
    }

    fn last(&self, path: &str) -> http::HeaderMap {
        self.state.lock().unwrap().seen[path]
            .last()
            .unwrap()
            .clone()
    }
}

const SECRET: &str = "cache-test-secret-0123456789abcdef";
const ISS: &str = "https://auth.cache.test";
const AUD: &str = "orders";

fn jwt_plugin() -> String {
    route_plugin(
        "jwt",
        &format!(
            "realm = \"orders\"\n[[routes.plugins.issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"{SECRET}\"\n"
        ),
    )
}

/// A bearer token for `subject`.
fn token(subject: &str) -> String {
    let mut claims = common::claims(ISS, AUD);
    claims["sub"] = json!(subject);
    claims["client_id"] = json!(subject);
    bearer(&hs256(SECRET, &claims))
}

async fn body(resp: reqwest::Response) -> String {
    resp.text().await.unwrap_or_default()
}

fn cache_status(resp: &reqwest::Response) -> String {
    header(resp, "cache-status").unwrap_or_default()
}

/// `GET path` (with `headers`): status, `Cache-Status`, `Age` and body.
async fn fetch(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<u64>, String) {
    let mut req = http_client().get(gw.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => panic!("GET {path}: {e}\n{}", gw.stderr()),
    };
    let status = resp.status().as_u16();
    let cs = cache_status(&resp);
    let age = header(&resp, "age").and_then(|a| a.parse().ok());
    (status, cs, age, body(resp).await)
}

async fn rfc_gateway(origin: &Origin) -> Gateway {
    let o = [origin.server.addr];
    Gateway::config()
        .route_with("rfc", "/rfc", "o", "[routes.cache]\n")
        .route_with(
            "ttl",
            "/ttl",
            "o",
            "[routes.cache]\ndefault_ttl = \"60s\"\n",
        )
        .route_with(
            "sorted",
            "/sorted",
            "o",
            "[routes.cache]\nquery = { ignore = [\"utm\"] }\n",
        )
        .route_with(
            "noc",
            "/noc",
            "o",
            "[routes.cache]\nclient_no_cache = \"revalidate\"\n",
        )
        .route_with(
            "short",
            "/short",
            "o",
            "[routes.cache]\nlock_timeout = \"200ms\"\n",
        )
        .route("plain", "/plain", "o")
        .cluster_at("o", &o, "")
        .start()
        .await
}

/// Freshness from max-age, s-maxage, Expires and a route's default TTL; what is never
/// stored (no-store, private, no freshness without a default TTL, Set-Cookie, Vary: *, a
/// status without heuristic freshness); Age on hits, counting the origin's own Age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_9111_freshness_and_what_is_never_stored() {
    bounded(async {
        let origin = Origin::start().await;
        let gw = rfc_gateway(&origin).await;
        let date = httpdate::fmt_http_date(SystemTime::now());
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        origin.set("/rfc/max-age", 200, &[("cache-control", "max-age=60")]);
        origin.set(
            "/rfc/s-maxage",
            200,
            &[("cache-control", "max-age=0, s-maxage=60")],
        );
        origin.set(
            "/rfc/expires",
            200,
            &[("date", &date), ("expires", &expires)],
        );
        origin.set(
            "/rfc/aged",
            200,
            &[("cache-control", "max-age=600"), ("age", "100")],
        );
        origin.set("/rfc/not-found", 404, &[("cache-control", "max-age=60")]);
        origin.set("/ttl/bare", 200, &[]);
        origin.set("/ttl/public", 200, &[("cache-control", "public")]);
        for stored in [
            "/rfc/max-age",
            "/rfc/s-maxage",
            "/rfc/expires",
            "/rfc/aged",
            "/rfc/not-found",
            "/ttl/bare",
            "/ttl/public",
        ] {
            let (s1, cs1, _, b1) = fetch(&gw, stored, &[]).await;
            assert_eq!(cs1, "portico; fwd=miss; stored", "{stored}");
            let (s2, cs2, age, b2) = fetch(&gw, stored, &[]).await;
            assert_eq!(
                (s1, &b1),
                (s2, &b2),
                "{stored}: the hit is the stored response"
            );
            assert!(cs2.starts_with("portico; hit; ttl="), "{stored}: {cs2}");
            assert!(age.is_some(), "{stored}: Age on every hit");
            assert_eq!(origin.hits(stored), 1, "{stored}");
        }
        let (_, cs, age, _) = fetch(&gw, "/rfc/aged", &[]).await;
        assert!(age.unwrap() >= 100, "the origin's Age counts: {age:?}");
        let ttl: i64 = cs.rsplit("ttl=").next().unwrap().parse().unwrap();
        assert!((495..=500).contains(&ttl), "{cs}");

        origin.set(
            "/rfc/no-store",
            200,
            &[("cache-control", "no-store, max-age=60")],
        );
        origin.set(
            "/rfc/private",
            200,
            &[("cache-control", "private, max-age=60")],
        );
        origin.set("/rfc/bare", 200, &[]);
        origin.set(
            "/rfc/cookie",
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "s=1")],
        );
        origin.set(
            "/rfc/vary-star",
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
        );
        origin.set("/ttl/error", 500, &[]);
        origin.set("/rfc/partial", 206, &[("cache-control", "max-age=60")]);
        for (passed, detail) in [
            ("/rfc/no-store", "origin-not-cacheable"),
            ("/rfc/private", "origin-not-cacheable"),
            ("/rfc/bare", "no-freshness"),
            ("/rfc/cookie", "set-cookie"),
            ("/rfc/vary-star", "vary-star"),
            ("/ttl/error", "no-freshness"),
            ("/rfc/partial", "status"),
        ] {
            for _ in 0..2 {
                let (_, cs, age, _) = fetch(&gw, passed, &[]).await;
                assert_eq!(
                    cs,
                    format!("portico; fwd=miss; detail={detail}"),
                    "{passed}"
                );
                assert_eq!(age, None, "{passed}");
            }
            assert_eq!(origin.hits(passed), 2, "{passed} is never stored");
        }

        // A route without a cache is as before: no Cache-Status, every request upstream.
        for _ in 0..2 {
            let resp = gw.get("/plain/x").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(header(&resp, "cache-status"), None);
        }
        assert_eq!(origin.hits("/plain/x"), 2);

        // HEAD is answered from the entry a GET stored.
        let resp = http_client()
            .head(gw.url("/rfc/max-age"))
            .send()
            .await
            .unwrap();
        assert!(cache_status(&resp).starts_with("portico; hit"), "{resp:?}");
        assert_eq!(origin.hits("/rfc/max-age"), 1);
        // POST is not cached, and says so; its 200 invalidates the stored response
        // (RFC 9111 §4.4), so the next GET goes upstream.
        let resp = gw.post("/rfc/max-age", "x", &[]).await;
        assert_eq!(cache_status(&resp), "portico; fwd=method");
        assert_eq!(origin.hits("/rfc/max-age"), 2);
        let (_, cs, _, b) = fetch(&gw, "/rfc/max-age", &[]).await;
        assert_eq!(
            (cs.as_str(), b.as_str()),
            ("portico; fwd=miss; stored", "/rfc/max-age #3 ")
        );
    })
    .await;
}

/// Vary: one entry per value of the listed request headers; query modes; a client's
/// no-cache is ignored by default and forces a revalidation where the route says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_query_keys_and_client_no_cache() {
    bounded(async {
        let origin = Origin::start().await;
        let gw = rfc_gateway(&origin).await;
        origin.set(
            "/rfc/vary",
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept")],
        );
        let json = [("accept", "application/json")];
        let text = [("accept", "text/plain")];
        let (_, _, _, j1) = fetch(&gw, "/rfc/vary", &json).await;
        let (_, _, _, t1) = fetch(&gw, "/rfc/vary", &text).await;
        let (_, cs, _, j2) = fetch(&gw, "/rfc/vary", &json).await;
        let (_, _, _, t2) = fetch(&gw, "/rfc/vary", &text).await;
        assert_eq!(
            (j1.as_str(), t1.as_str()),
            ("/rfc/vary #1 ", "/rfc/vary #2 ")
        );
        assert_eq!((j2, t2), (j1, t1));
        assert!(cs.contains("hit"), "{cs}");
        assert_eq!(origin.hits("/rfc/vary"), 2);

        // `all`: the query as sent; `ignore`: sorted, without the named parameters.
        origin.set("/rfc/q", 200, &[("cache-control", "max-age=60")]);
        fetch(&gw, "/rfc/q?a=1&b=2", &[]).await;
        fetch(&gw, "/rfc/q?b=2&a=1", &[]).await;
        assert_eq!(origin.hits("/rfc/q"), 2);
        origin.set("/sorted/q", 200, &[("cache-control", "max-age=60")]);
        fetch(&gw, "/sorted/q?a=1&b=2", &[]).await;
        let (_, cs, _, _) = fetch(&gw, "/sorted/q?b=2&utm=x&a=1", &[]).await;
        assert!(cs.contains("hit"), "{cs}");
        fetch(&gw, "/sorted/q?a=2&b=2", &[]).await;
        assert_eq!(origin.hits("/sorted/q"), 2);

        // `portico routes` shows the policy.
        let config = gw.dir().join("portico.toml");
        let out = gw
            .portico_command()
            .args(["routes", "-c", config.to_str().unwrap(), "GET", "/sorted/q"])
            .output()
            .expect("portico routes");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(
                "cache:      GET/HEAD, no default ttl, query sorted ignoring utm, lock_timeout 5s"
            ),
            "{text}"
        );
        let out = gw
            .portico_command()
            .args(["routes", "-c", config.to_str().unwrap(), "GET", "/plain/q"])
            .output()
            .expect("portico routes");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("cache:"));

        // client_no_cache: "ignore" (default) answers from the cache, "revalidate" asks.
        let no_cache = [("cache-control", "no-cache")];
        fetch(&gw, "/rfc/q?a=1&b=2", &no_cache).await;
        assert_eq!(origin.hits("/rfc/q"), 2);
        origin.set("/noc/x", 200, &[("cache-control", "max-age=60")]);
        fetch(&gw, "/noc/x", &[]).await;
        let (_, cs, _, _) = fetch(&gw, "/noc/x", &[]).await;
        assert!(cs.contains("hit"), "{cs}");
        let (_, cs, _, b) = fetch(&gw, "/noc/x", &no_cache).await;
        assert_eq!(origin.hits("/noc/x"), 2, "{cs}");
        assert_eq!(b, "/noc/x #2 ");
    })
    .await;
}

/// A stale entry is revalidated with If-None-Match and If-Modified-Since; the origin's
/// 304 refreshes it (one more upstream request, the stored body); a client's own
/// conditional request is answered 304 from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_refreshes_on_304_and_client_conditionals_are_answered() {
    bounded(async {
        let origin = Origin::start().await;
        let gw = rfc_gateway(&origin).await;
        let modified = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
        origin.set_spec(
            "/rfc/etag",
            Spec {
                headers: vec![
                    ("cache-control".into(), "max-age=1".into()),
                    ("etag".into(), "\"v1\"".into()),
                    ("last-modified".into(), modified.clone()),
                ],
                etag_304: Some("\"v1\"".into()),
                ..Spec::default()
            },
        );
        let (_, _, _, first) = fetch(&gw, "/rfc/etag", &[]).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let (status, cs, _, again) = fetch(&gw, "/rfc/etag", &[]).await;
        assert_eq!(status, 200);
        assert_eq!(again, first, "the 304 refreshed the stored response");
        assert!(cs.starts_with("portico; fwd=stale; fwd-status=304"), "{cs}");
        assert_eq!(origin.hits("/rfc/etag"), 2);
        let asked = origin.last("/rfc/etag");
        assert_eq!(asked.get("if-none-match").unwrap(), "\"v1\"");
        assert_eq!(
            asked.get("if-modified-since").unwrap().to_str().unwrap(),
            modified
        );
        let (_, cs, _, _) = fetch(&gw, "/rfc/etag", &[]).await;
        assert!(cs.starts_with("portico; hit"), "fresh again: {cs}");

        let resp = gw
            .get_with("/rfc/etag", &[("if-none-match", "\"v1\"")])
            .await;
        assert_eq!(resp.status(), 304);
        assert!(cache_status(&resp).starts_with("portico; hit"));
        let resp = gw
            .get_with("/rfc/etag", &[("if-none-match", "\"v0\"")])
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(origin.hits("/rfc/etag"), 2, "both answered from the cache");

        // no-cache: stored, but revalidated before every use.
        origin.set_spec(
            "/rfc/no-cache",
            Spec {
                headers: vec![
                    ("cache-control".into(), "no-cache".into()),
                    ("etag".into(), "\"n\"".into()),
                ],
                etag_304: Some("\"n\"".into()),
                ..Spec::default()
            },
        );
        let (_, _, _, first) = fetch(&gw, "/rfc/no-cache", &[]).await;
        let (_, cs, _, again) = fetch(&gw, "/rfc/no-cache", &[]).await;
        assert_eq!(again, first);
        assert!(cs.contains("fwd-status=304"), "{cs}");
        assert_eq!(origin.hits("/rfc/no-cache"), 2);
    })
    .await;
}

/// 200 concurrent misses of one key: one upstream request, every client gets its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_send_one_upstream_request() {
    bounded(async {
        let origin = Origin::start().await;
        let gw = rfc_gateway(&origin).await;
        origin.set_spec(
            "/rfc/slow",
            Spec {
                headers: vec![("cache-control".into(), "max-age=60".into())],
                delay: Duration::from_millis(500),
                ..Spec::default()
            },
        );
        let client = http_client();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (client, url) = (client.clone(), gw.url("/rfc/slow"));
                tokio::spawn(async move {
                    let resp = client.get(url).send().await.expect("answer");
                    (
                        resp.status().as_u16(),
                        resp.text().await.unwrap_or_default(),
                    )
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), (200, "/rfc/slow #1 ".to_string()));
        }
        assert_eq!(origin.hits("/rfc/slow"), 1);
        eventually(Duration::from_secs(2), "lock waits counted", || async {
            let metrics = gw.metrics().await;
            let waits = metric_value(
                &metrics,
                "portico_cache_lock_waits_total",
                &[("route", "rfc")],
            );
            waits.unwrap_or(0.0) >= 1.0
        })
        .await;
    })
    .await;
}

/// Entries outlive a reload that leaves the route's cache settings alone; after one that
/// changes them, the route no longer finds what was stored under the old settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_entries_unless_the_cache_settings_change() {
    bounded(async {
        let origin = Origin::start().await;
        let gw = rfc_gateway(&origin).await;
        origin.set("/rfc/kept", 200, &[("cache-control", "max-age=60")]);
        fetch(&gw, "/rfc/kept", &[]).await;
        let path = gw.dir().join("portico.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        let reload = |text: String| {
            std::fs::write(&path, text).unwrap();
            async { assert_eq!(gw.admin_post("/admin/reload").await.status(), 200) }
        };

        // Another route added: the cached route's settings are the same.
        let more =
            format!("{config}\n[[routes]]\nid = \"extra\"\npath = \"/extra\"\ncluster = \"o\"\n");
        reload(more.clone()).await;
        let (_, cs, _, b) = fetch(&gw, "/rfc/kept", &[]).await;
        assert!(cs.starts_with("portico; hit"), "{cs}");
        assert_eq!(b, "/rfc/kept #1 ");

        // Its cache settings changed: the old entry is not served under the new ones.
        let rfc = "id = \"rfc\"\npath = \"/rfc\"\ncluster = \"o\"\n[routes.cache]\n";
        assert!(more.contains(rfc), "{more}");
        reload(more.replace(rfc, &format!("{rfc}default_ttl = \"5s\"\n"))).await;
        let (_, cs, _, b) = fetch(&gw, "/rfc/kept", &[]).await;
        assert_eq!(
            (cs.as_str(), b.as_str()),
            ("portico; fwd=miss; stored", "/rfc/kept #2 ")
        );
    })
    .await;
}

/// The wait behind another request's fill is bounded by the route's `lock_timeout`: past
/// it, the waiting requests go upstream themselves (uncached) instead of holding their
/// clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_a_fill_is_bounded_by_lock_timeout() {
    bounded(async {
        let origin = Origin::start().await;
        let gw = rfc_gateway(&origin).await;
        origin.set_spec(
            "/short/slow",
            Spec {
                headers: vec![("cache-control".into(), "max-age=60".into())],
                delay: Duration::from_millis(1000),
                ..Spec::default()
            },
        );
        let client = http_client();
        let first = {
            let (client, url) = (client.clone(), gw.url("/short/slow"));
            tokio::spawn(async move { client.get(url).send().await.expect("answer") })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (client, url) = (client.clone(), gw.url("/short/slow"));
                tokio::spawn(async move {
                    let resp = client.get(url).send().await.expect("answer");
                    (resp.status().as_u16(), cache_status(&resp))
                })
            })
            .collect();
        for waiter in waiters {
            let (status, cs) = waiter.await.unwrap();
            assert_eq!(
                (status, cs.as_str()),
                (200, "portico; fwd=miss; detail=lock-timeout")
            );
        }
        assert_eq!(first.await.unwrap().status(), 200);
        assert_eq!(
            origin.hits("/short/slow"),
            5,
            "the waiters went upstream themselves"
        );
        let (_, cs, _, _) = fetch(&gw, "/short/slow", &[]).await;
        assert!(
            cs.starts_with("portico; hit"),
            "the first one stored it: {cs}"
        );
    })
    .await;
}

/// stale-while-revalidate: a stale entry answers at once while one background request
/// refreshes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_and_refreshes_in_the_background() {
    bounded(async {
        let origin = Origin::start().await;
        let gw = Gateway::config()
            .route_with(
                "swr",
                "/swr",
                "o",
                "[routes.cache]\nstale_while_revalidate = \"30s\"\n",
            )
            .cluster_at("o", &[origin.server.addr], "")
            .start()
            .await;
        origin.set("/swr/x", 200, &[("cache-control", "max-age=1")]);
        fetch(&gw, "/swr/x", &[]).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        origin.set_spec(
            "/swr/x",
            Spec {
                headers: vec![("cache-control".into(), "max-age=60".into())],
                delay: Duration::from_millis(300),
                ..Spec::default()
            },
        );
        let started = std::time::Instant::now();
        let (_, cs, _, b) = fetch(&gw, "/swr/x", &[]).await;
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "not held up by the refresh"
        );
        assert_eq!(b, "/swr/x #1 ");
        assert!(
            cs.contains("detail=stale-while-revalidate") && cs.contains("ttl=-"),
            "{cs}"
        );
        eventually(Duration::from_secs(3), "background refresh", || async {
            fetch(&gw, "/swr/x", &[]).await.3 == "/swr/x #2 "
        })
        .await;
        assert_eq!(origin.hits("/swr/x"), 2);
        let metrics = gw.metrics().await;
        let stale = metric_value(
            &metrics,
            "portico_cache_stale_served_total",
            &[("route", "swr"), ("cause", "while_revalidate")],
        );
        assert!(stale.unwrap_or(0.0) >= 1.0);
    })
    .await;
}

/// stale-if-error: a stale entry answers when the upstream answers 5xx, times out, cannot
/// be reached, or its cluster breaker is open; without an entry the failure goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_5xx_timeouts_refused_connections_and_open_breakers() {
    bounded(async {
        let origin = Origin::start().await;
        let broken = Origin::start().await;
        let gw = Gateway::config()
            .route_with("sie", "/sie", "o", "[routes.cache]\nstale_if_error = \"60s\"\n")
            .route_with("sieb", "/sieb", "b", "[routes.cache]\nstale_if_error = \"60s\"\n")
            .cluster_at(
                "o",
                &[origin.server.addr],
                "timeouts = { read = \"300ms\" }\noutlier = { consecutive_5xx = 0, consecutive_connect_failures = 0 }",
            )
            .cluster_at(
                "b",
                &[broken.server.addr],
                "outlier = { consecutive_5xx = 0, consecutive_connect_failures = 0 }\nbreaker = { consecutive_failures = 2, min_requests = 1000, open_for = \"10s\", max_open = \"10s\", half_open_probes = 1 }",
            )
            .start()
            .await;
        for path in ["/sie/5xx", "/sie/timeout", "/sieb/x"] {
            origin.set(path, 200, &[("cache-control", "max-age=1")]);
            broken.set(path, 200, &[("cache-control", "max-age=1")]);
            assert_eq!(fetch(&gw, path, &[]).await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(1300)).await;

        origin.set("/sie/5xx", 503, &[]);
        let (status, cs, _, b) = fetch(&gw, "/sie/5xx", &[]).await;
        assert_eq!((status, b.as_str()), (200, "/sie/5xx #1 "), "{cs}");
        assert!(cs.starts_with("portico; fwd=stale; fwd-status=503; ttl=-"), "{cs}");
        assert!(cs.ends_with("detail=stale-if-error"), "{cs}");
        // Pingora will not reuse this client connection, and the answer says so.
        let resp = http_client().get(gw.url("/sie/5xx")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "connection").as_deref(), Some("close"));
        // Nothing stored: the 503 goes through.
        origin.set("/sie/none", 503, &[]);
        assert_eq!(fetch(&gw, "/sie/none", &[]).await.0, 503);

        origin.set_spec(
            "/sie/timeout",
            Spec {
                delay: Duration::from_secs(2),
                ..Spec::default()
            },
        );
        let (status, cs, _, b) = fetch(&gw, "/sie/timeout", &[]).await;
        assert_eq!((status, b.as_str()), (200, "/sie/timeout #1 "), "{cs}");
        assert!(cs.contains("detail=stale-if-error"), "{cs}");

        // The breaker opens after two failures (served stale, counted as failures).
        broken.set("/sieb/x", 500, &[]);
        for _ in 0..2 {
            let (status, cs, _, _) = fetch(&gw, "/sieb/x", &[]).await;
            assert_eq!(status, 200, "{cs}");
        }
        eventually(Duration::from_secs(2), "breaker open", || async {
            gw.cluster_status("b").await["breaker"].as_str() == Some("open")
        })
        .await;
        let before = broken.hits("/sieb/x");
        let (status, cs, _, b) = fetch(&gw, "/sieb/x", &[]).await;
        assert_eq!((status, b.as_str()), (200, "/sieb/x #1 "), "{cs}");
        assert!(cs.contains("stale-if-error"), "{cs}");
        assert_eq!(broken.hits("/sieb/x"), before, "an open breaker sends nothing upstream");

        // The upstream gone: connections refused.
        let mut origin = origin;
        origin.server.stop().await;
        let (status, cs, _, b) = fetch(&gw, "/sie/5xx", &[]).await;
        assert_eq!((status, b.as_str()), (200, "/sie/5xx #1 "), "{cs}");
        assert!(cs.starts_with("portico; fwd=stale; ttl=-"), "{cs}");

        // Counted in the logging phase, just after the answer.
        eventually(Duration::from_secs(2), "four stale answers counted", || async {
            let metrics = gw.metrics().await;
            let stale = metric_value(
                &metrics,
                "portico_cache_stale_served_total",
                &[("route", "sie"), ("cause", "if_error")],
            );
            stale == Some(4.0)
        })
        .await;

        // Many clients on one stale key while the upstream is gone: the waiters of each
        // failed revalidation compete again rather than going upstream with the cache off
        // (Pingora's default gives up after two rounds, and those requests got 502).
        for wave in 0..4 {
            let mut clients = tokio::task::JoinSet::new();
            for _ in 0..50 {
                let (client, url) = (gw.client.clone(), gw.url("/sie/5xx"));
                clients.spawn(async move { client.get(url).send().await.map(|r| r.status()) });
            }
            while let Some(answer) = clients.join_next().await {
                let status = answer.unwrap().expect("an answer");
                assert_eq!(status, 200, "wave {wave}");
            }
        }
    })
    .await;
}

/// Authenticated requests: a response without public/s-maxage/must-revalidate is never
/// shared; per-identity routes key by the token's subject, so identity A's response is
/// never served to B; a hit still runs authentication and rate limits first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_safety_and_plugins_before_every_hit() {
    bounded(async {
        let origin = Origin::start().await;
        let o = [origin.server.addr];
        let gw = Gateway::config()
            .route_with(
                "auth",
                "/auth",
                "o",
                &format!("{}\n[routes.cache]\n", jwt_plugin()),
            )
            .route_with(
                "ident",
                "/ident",
                "o",
                &format!("{}\n[routes.cache]\nper_identity = \"sub\"\n", jwt_plugin()),
            )
            .route_with(
                "limited",
                "/limited",
                "o",
                &format!(
                    "{}{}\n[routes.cache]\n",
                    jwt_plugin(),
                    route_plugin("rate-limit", "rate = 3\nperiod = \"1m\"\nby = \"subject\"")
                ),
            )
            .cluster_at("o", &o, "")
            .start()
            .await;
        let (alice, bob) = (token("alice"), token("bob"));
        let a = [("authorization", alice.as_str())];
        let b = [("authorization", bob.as_str())];
        let tail = |t: &str| t[t.len() - 6..].to_string();

        // Personal data (max-age, no public): never shared on a route keyed by URL alone.
        origin.set("/auth/me", 200, &[("cache-control", "max-age=60")]);
        let (_, cs, _, body_a) = fetch(&gw, "/auth/me", &a).await;
        assert_eq!(cs, "portico; fwd=miss; detail=authorization");
        let (_, _, _, body_b) = fetch(&gw, "/auth/me", &b).await;
        assert!(body_a.ends_with(&tail(&alice)) && body_b.ends_with(&tail(&bob)));
        assert_eq!(origin.hits("/auth/me"), 2);
        // `public`: the origin allows sharing it.
        origin.set(
            "/auth/catalog",
            200,
            &[("cache-control", "public, max-age=60")],
        );
        let (_, _, _, first) = fetch(&gw, "/auth/catalog", &a).await;
        let (_, cs, _, shared) = fetch(&gw, "/auth/catalog", &b).await;
        assert_eq!(shared, first, "{cs}");
        assert_eq!(origin.hits("/auth/catalog"), 1);

        // Per identity: each subject has its own entry.
        origin.set("/ident/me", 200, &[("cache-control", "max-age=60")]);
        let (_, _, _, a1) = fetch(&gw, "/ident/me", &a).await;
        let (_, cs, _, a2) = fetch(&gw, "/ident/me", &a).await;
        assert_eq!(a2, a1);
        assert!(cs.starts_with("portico; hit"), "{cs}");
        let (_, cs, _, b1) = fetch(&gw, "/ident/me", &b).await;
        assert_eq!(cs, "portico; fwd=miss; stored");
        assert!(b1.ends_with(&tail(&bob)), "B gets B's answer: {b1}");
        let (_, _, _, b2) = fetch(&gw, "/ident/me", &b).await;
        let (_, _, _, a3) = fetch(&gw, "/ident/me", &a).await;
        assert_eq!((a3, b2), (a1, b1));
        assert_eq!(origin.hits("/ident/me"), 2);

        // A stored response is behind the plugins: no token or a bad one is still refused,
        // and the rate limit still counts hits.
        origin.set(
            "/limited/x",
            200,
            &[("cache-control", "public, max-age=60")],
        );
        assert_eq!(fetch(&gw, "/limited/x", &a).await.0, 200);
        assert_eq!(fetch(&gw, "/limited/x", &[]).await.0, 401);
        let forged = bearer(&hs256(
            "another-secret-0123456789abcdef0",
            &common::claims(ISS, AUD),
        ));
        assert_eq!(
            fetch(&gw, "/limited/x", &[("authorization", forged.as_str())])
                .await
                .0,
            401
        );
        let (status, cs, _, _) = fetch(&gw, "/limited/x", &a).await;
        assert_eq!(status, 200);
        assert!(cs.starts_with("portico; hit"), "{cs}");
        assert_eq!(fetch(&gw, "/limited/x", &a).await.0, 200);
        assert_eq!(
            fetch(&gw, "/limited/x", &a).await.0,
            429,
            "the fourth of three"
        );
        assert_eq!(origin.hits("/limited/x"), 1);

        // Metrics by route and result, and the access log's `cache` field.
        let metrics = gw.metrics().await;
        for (route, result) in [("ident", "hit"), ("ident", "miss"), ("auth", "miss")] {
            let n = metric_value(
                &metrics,
                "portico_cache_lookups_total",
                &[("route", route), ("result", result)],
            );
            assert!(n.unwrap_or(0.0) >= 1.0, "{route} {result}");
        }
        let stored = metric_value(
            &metrics,
            "portico_cache_stored_objects_total",
            &[("route", "ident")],
        );
        assert_eq!(stored, Some(2.0));
        let lines = gw.wait_access_log(12).await;
        let hit = lines
            .iter()
            .find(|l| l["path"] == "/ident/me" && l["cache"] == "hit");
        assert!(hit.is_some(), "{lines:?}");
    })
    .await;
}
