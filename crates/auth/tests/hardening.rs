//! The token service against hostile callers, over real HTTP on loopback (callers on other
//! source addresses bind 127.0.0.2 and up, which Linux routes to the loopback device): a
//! client id cannot be locked out from another address, back-off grows per failure, a
//! flood of random ids fills the limiter without switching it off, one address cannot
//! spend the hashing CPU, slow bodies get 408, `/metrics` is only on the admin listener,
//! introspection shows a token only to its own client or one with the `introspect` right
//! (on SQLite and PostgreSQL), and the SQLite files are owner-only from the start.

use std::net::IpAddr;
use std::time::Duration;

mod support;

use portico_auth::{clients, config, Running};
use serde_json::Value;
use support::postgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Light argon2 cost so the tests run in seconds in debug builds.
const FAST: &str = "[argon2]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n";

fn load(dir: &std::path::Path, top: &str, sections: &str) -> portico_auth::AuthConfig {
    let db = if top.contains("database_url") {
        String::new()
    } else {
        format!(
            "database_url = \"sqlite://{}\"\n",
            dir.join("auth.db").display()
        )
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{db}{top}\n{FAST}\n{sections}"
    );
    config::load_str("test.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn start(config: &portico_auth::AuthConfig) -> Running {
    tokio::time::timeout(Duration::from_secs(30), portico_auth::start(config))
        .await
        .expect("starts in time")
        .expect("token service starts")
}

async fn add(r: &Running, id: &str) -> String {
    clients::add(
        &r.service.store,
        id,
        "orders:read",
        "portico",
        &r.service.argon2,
    )
    .await
    .expect("client added")
}

/// A client whose connections come from `source` (127.0.0.x).
fn from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client_credentials request: status, Retry-After and JSON body.
async fn token_request(
    http: &reqwest::Client,
    r: &Running,
    id: &str,
    secret: &str,
) -> (u16, Option<u64>, Value) {
    let resp = http
        .post(format!("http://{}/oauth2/token", r.addr))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request answered");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

async fn admin_metrics(r: &Running) -> String {
    let admin = r.admin_addr.expect("admin listener");
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answered")
        .text()
        .await
        .unwrap()
}

/// The value of a metric line `name{labels}` (or `name` without labels), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_be_locked_out_from_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&load(
        dir.path(),
        "",
        "[failed_auth]\nmax_failures = 3\nbackoff = \"1s\"\nmax_backoff = \"1m\"\n",
    ))
    .await;
    let secret = add(&svc, "svc").await;
    let (attacker, owner) = (from("127.0.0.2"), from("127.0.0.1"));

    for _ in 0..2 {
        let (status, _, body) = token_request(&attacker, &svc, "svc", "wrong").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client"))
        );
    }
    // The third failure starts a back-off of `backoff` (1 s): the next attempt from the
    // attacker's address is refused before any check, even with the right secret.
    let (status, _, _) = token_request(&attacker, &svc, "svc", "wrong").await;
    assert_eq!(status, 401);
    let (status, retry, body) = token_request(&attacker, &svc, "svc", &secret).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(retry, Some(1));

    // The client itself, from its own address, is not affected at all.
    for _ in 0..3 {
        let (status, _, body) = token_request(&owner, &svc, "svc", &secret).await;
        assert_eq!(status, 200, "{body}");
    }

    // Each further failure doubles the back-off: after it ends, one more failure → 2 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = token_request(&attacker, &svc, "svc", "wrong").await;
    assert_eq!(status, 401);
    let (status, retry, _) = token_request(&attacker, &svc, "svc", "wrong").await;
    assert_eq!((status, retry), (429, Some(2)));

    let m = admin_metrics(&svc).await;
    assert!(
        metric(&m, r#"portico_auth_backoffs_total{scope="client_address"}"#) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"portico_auth_throttled_total{limit="client_backoff"}"#
        ) >= 2.0
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_spraying_client_ids_backs_off_and_unknown_ids_cost_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&load(
        dir.path(),
        "",
        "[failed_auth]\nmax_failures = 3\naddress_max_failures = 5\nbackoff = \"30s\"\n",
    ))
    .await;
    let secret = add(&svc, "svc").await;
    let sprayer = from("127.0.0.3");
    let before = metric(
        &admin_metrics(&svc).await,
        "portico_auth_dummy_checks_total",
    );
    for i in 0..5 {
        let (status, _, _) = token_request(&sprayer, &svc, &format!("guess-{i}"), "x").await;
        assert_eq!(status, 401);
    }
    // Unknown ids were checked against the dummy hash, like known ones against theirs.
    let m = admin_metrics(&svc).await;
    assert!(
        metric(&m, "portico_auth_dummy_checks_total") >= before + 5.0,
        "{m}"
    );
    // Now every id from that address waits, a new one too, and the known client as well
    // (from there): the address as a whole backs off.
    for id in ["guess-99", "svc"] {
        let (status, retry, body) = token_request(&sprayer, &svc, id, "x").await;
        assert_eq!(status, 429, "{body}");
        assert!(retry.is_some_and(|r| r >= 1));
    }
    let (status, _, _) = token_request(&from("127.0.0.1"), &svc, "svc", &secret).await;
    assert_eq!(status, 200);
    let m = admin_metrics(&svc).await;
    assert!(
        metric(
            &m,
            r#"portico_auth_throttled_total{limit="address_backoff"}"#
        ) >= 2.0
    );
    assert!(metric(&m, r#"portico_auth_backoffs_total{scope="address"}"#) >= 1.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_client_ids_does_not_switch_limiting_off() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest tables allowed (16 entries), so a flood overfills them many times.
    let svc = start(&load(
        dir.path(),
        "",
        "[failed_auth]\nmax_failures = 3\nbackoff = \"1m\"\nmax_tracked = 16\n",
    ))
    .await;
    let secret = add(&svc, "svc").await;
    let attacker = from("127.0.0.2");
    for _ in 0..3 {
        token_request(&attacker, &svc, "svc", "wrong").await;
    }
    let (status, _, _) = token_request(&attacker, &svc, "svc", "wrong").await;
    assert_eq!(status, 429);

    // 200 random ids from 50 addresses: far more entries than the tables hold.
    let mut flood = tokio::task::JoinSet::new();
    for a in 0..50u8 {
        let http = from(&format!("127.0.1.{}", a + 1));
        let addr = svc.addr;
        flood.spawn(async move {
            for i in 0..4 {
                let resp = http
                    .post(format!("http://{addr}/oauth2/token"))
                    .basic_auth(format!("random-{a}-{i}"), Some("x"))
                    .form(&[("grant_type", "client_credentials")])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 401);
            }
        });
    }
    while let Some(r) = flood.join_next().await {
        r.unwrap();
    }
    let m = admin_metrics(&svc).await;
    assert!(
        metric(&m, "portico_auth_limiter_evictions_total") > 0.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"portico_auth_limiter_entries{table="client_address"}"#
        ) <= 16.0
    );
    assert!(metric(&m, r#"portico_auth_limiter_entries{table="address"}"#) <= 16.0);

    // The attacker is still backing off: the flood evicted its own entries, not this one.
    let (status, _, _) = token_request(&attacker, &svc, "svc", &secret).await;
    assert_eq!(status, 429);
    // New failures are still counted and still back off.
    let other = from("127.0.0.4");
    for _ in 0..3 {
        let (status, _, _) = token_request(&other, &svc, "svc", "wrong").await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = token_request(&other, &svc, "svc", "wrong").await;
    assert_eq!(status, 429);
    // And the client itself is served.
    let (status, _, _) = token_request(&from("127.0.0.1"), &svc, "svc", &secret).await;
    assert_eq!(status, 200);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_spends_its_own_secret_checks_before_any_hash() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&load(
        dir.path(),
        "",
        "[failed_auth]\naddress_max_failures = 1000\nmax_failures = 1000\n\
         [secret_checks]\nper_address_rate = 0.5\nper_address_burst = 3\n",
    ))
    .await;
    let secret = add(&svc, "svc").await;
    let busy = from("127.0.0.5");
    // The burst is spent on checks (right or wrong), then the address waits.
    let (status, _, _) = token_request(&busy, &svc, "svc", &secret).await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let (status, _, _) = token_request(&busy, &svc, "nobody", "x").await;
        assert_eq!(status, 401);
    }
    let (status, retry, body) = token_request(&busy, &svc, "svc", &secret).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry, Some(2), "1 check per 2 s");
    // Another address has its own bucket.
    let (status, _, _) = token_request(&from("127.0.0.6"), &svc, "svc", &secret).await;
    assert_eq!(status, 200);
    let m = admin_metrics(&svc).await;
    assert!(metric(&m, r#"portico_auth_throttled_total{limit="address_rate"}"#) >= 1.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_gets_408_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&load(dir.path(), "body_read_timeout = \"300ms\"", "")).await;
    let mut conn = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
    conn.write_all(
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    // The server closes the connection after its answer; bounded in case it does not.
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("answered and closed within the deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("\"error\":\"invalid_request\""), "{text}");
    let m = admin_metrics(&svc).await;
    assert!(metric(&m, "portico_auth_body_timeouts_total") >= 1.0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_only_on_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&load(dir.path(), "", "")).await;
    let admin = svc.admin_addr.unwrap();
    assert_ne!(admin, svc.addr);
    let get = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (status, _) = get(format!("http://{}/metrics", svc.addr)).await;
    assert_eq!(status, 404);
    let (status, text) = get(format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.contains("portico_auth_published_keys"), "{text}");
    let (status, _) = get(format!("http://{admin}/healthz")).await;
    assert_eq!(status, 200);
    // The admin listener serves nothing else.
    for path in ["/oauth2/token", "/.well-known/jwks.json"] {
        let (status, _) = get(format!("http://{admin}{path}")).await;
        assert_eq!(status, 404, "{path}");
    }
    svc.stop().await;

    // `admin_listen = "off"`: no admin listener at all.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"off\"\ndatabase_url = \"sqlite://{}\"\n{FAST}",
        dir.path().join("auth.db").display()
    );
    let svc = start(&config::load_str("t.toml", &text).unwrap()).await;
    assert_eq!(svc.admin_addr, None);
    svc.stop().await;
}

/// Introspection on a running service with clients `a` (owner), `b` (another client) and
/// `gw` (with the introspect right).
async fn introspection_is_limited(svc: &Running) {
    let a = add(svc, "a").await;
    let b = add(svc, "b").await;
    let gw = add(svc, "gw").await;
    clients::set_introspect(&svc.service.store, "gw", true)
        .await
        .unwrap();
    assert!(
        svc.service
            .store
            .get_client("gw")
            .await
            .unwrap()
            .unwrap()
            .introspect
    );
    assert!(
        !svc.service
            .store
            .get_client("b")
            .await
            .unwrap()
            .unwrap()
            .introspect
    );
    let http = from("127.0.0.1");
    let (_, _, body) = token_request(&http, svc, "a", &a).await;
    let token = body["access_token"].as_str().unwrap().to_string();
    let introspect = |id: &'static str, secret: String| {
        let (http, token) = (http.clone(), token.clone());
        let url = format!("http://{}/oauth2/introspect", svc.addr);
        async move {
            let resp = http
                .post(url)
                .basic_auth(id, Some(secret))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    // Another client learns nothing, not even that the token exists.
    assert_eq!(
        introspect("b", b).await,
        serde_json::json!({ "active": false })
    );
    // The token's own client, and a client granted the right, see the claims.
    let own = introspect("a", a).await;
    assert_eq!(
        (own["active"].as_bool(), own["client_id"].as_str()),
        (Some(true), Some("a"))
    );
    let by_gw = introspect("gw", gw.clone()).await;
    assert_eq!(by_gw["active"], true);
    assert_eq!(by_gw["scope"], "orders:read");
    // Withdrawn, the right is gone at once.
    clients::set_introspect(&svc.service.store, "gw", false)
        .await
        .unwrap();
    assert_eq!(introspect("gw", gw).await["active"], false);
    let m = admin_metrics(svc).await;
    assert!(
        metric(&m, "portico_auth_introspection_refusals_total") >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_needs_the_token_or_the_right_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&load(dir.path(), "", "")).await;
    introspection_is_limited(&svc).await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_needs_the_token_or_the_right_on_postgres() {
    let Some(pg) = postgres::Schema::create("hardening").await else {
        return;
    };
    // A database made by the previous release has no `introspect` column: opening it
    // adds one, with every existing client without the right.
    pg.client
        .batch_execute(&format!(
            "CREATE TABLE {0}.auth_clients (client_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, \
             scopes TEXT NOT NULL, audiences TEXT NOT NULL, created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL); \
             INSERT INTO {0}.auth_clients VALUES ('old', 'x', '', 'portico', 0, 0);",
            pg.name
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&load(
        dir.path(),
        &format!("database_url = \"{}\"", pg.url()),
        "",
    ))
    .await;
    let old = svc.service.store.get_client("old").await.unwrap().unwrap();
    assert!(!old.introspect);
    introspection_is_limited(&svc).await;
    svc.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_database_and_its_wal_and_shm_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    // In a directory the service creates itself (0700).
    let db = dir.path().join("state").join("auth.db");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"off\"\ndatabase_url = \"sqlite://{}\"\n{FAST}",
        db.display()
    );
    let svc = start(&config::load_str("t.toml", &text).unwrap()).await;
    add(&svc, "svc").await;
    let files = ["auth.db", "auth.db-wal", "auth.db-shm"].map(|f| dir.path().join("state").join(f));
    for f in &files {
        assert!(f.exists(), "{} exists while the service runs", f.display());
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    svc.stop().await;

    // A database left world-readable by an older release is made owner-only, with its
    // -wal and -shm, before anything is read from it.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("auth.db");
    for f in ["auth.db", "auth.db-wal"] {
        let p = dir.path().join(f);
        std::fs::write(&p, b"").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"off\"\ndatabase_url = \"sqlite://{}\"\n{FAST}",
        db.display()
    );
    let svc = start(&config::load_str("t.toml", &text).unwrap()).await;
    add(&svc, "svc").await;
    for f in ["auth.db", "auth.db-wal", "auth.db-shm"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_sqlite_database_gets_the_introspect_column() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("auth.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE auth_clients (client_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, \
             scopes TEXT NOT NULL, audiences TEXT NOT NULL, created_at BIGINT NOT NULL, \
             updated_at BIGINT NOT NULL); \
             INSERT INTO auth_clients VALUES ('old', 'x', '', 'portico', 0, 0);",
        )
        .unwrap();
    }
    let svc = start(&load(dir.path(), "", "")).await;
    let old = svc.service.store.get_client("old").await.unwrap().unwrap();
    assert!(!old.introspect);
    introspection_is_limited(&svc).await;
    svc.stop().await;
}
