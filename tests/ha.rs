//! The HA shape (README, "Running several nodes"): three gateway processes and two
//! token-service processes sharing one PostgreSQL (a schema of the test's own) and one
//! Redis, all on loopback. A token from either token service is accepted by every gateway;
//! a revocation made at one token service is refused by every gateway within the documented
//! bound; the cluster-wide rate limit holds across the gateways; and killing one gateway and
//! one token service (SIGKILL) under load loses no request that the client, retrying on
//! another gateway or token service, does not get answered.
//!
//! Each gateway knows one token service (its JWKS and revocation list), as a node would
//! know its nearest one; what they share is only in PostgreSQL and Redis.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::Schema;
use common::token_service::{kv, portico, post_basic, FAST};
use common::*;

const ISSUER: &str = "https://auth.ha.portico.test";
const REVOCATION_REFRESH: Duration = Duration::from_secs(1);
const REVOCATION_TIMEOUT: Duration = Duration::from_secs(2);
/// The limited route's budget per client, shared by every gateway through Redis.
const LIMIT: usize = 30;

/// `portico auth serve` as a process of its own.
struct TokenService {
    child: Child,
    addr: SocketAddr,
}

impl TokenService {
    async fn start(dir: &Path, name: &str, database_url: &str) -> TokenService {
        let addr = free_addr();
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "issuer = \"{ISSUER}\"\nlisten = \"{addr}\"\nadmin_listen = \"off\"\n\
                 database_url = \"{database_url}\"\n{FAST}\n\
                 [tokens]\nlifetime = \"5m\"\n\
                 [keys]\nrotate_every = \"off\"\nrefresh_interval = \"500ms\"\n"
            ),
        )
        .unwrap();
        let child = Command::new(PORTICO)
            .args(["auth", "-c", file.to_str().unwrap(), "serve"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start portico auth serve");
        let service = TokenService { child, addr };
        let http = reqwest::Client::new();
        let jwks = format!("{}/.well-known/jwks.json", service.base());
        eventually(Duration::from_secs(20), "the token service answers", || {
            let (http, jwks) = (http.clone(), jwks.clone());
            async move {
                http.get(&jwks)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        service
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The config file the CLI manages clients with (any service's: they share the store).
    fn config(dir: &Path, name: &str) -> String {
        dir.join(format!("{name}.toml")).display().to_string()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.kill();
    }
}

fn add_client(config: &str, id: &str, scopes: &str) -> String {
    let (code, out, err) = portico(&[
        "auth",
        "-c",
        config,
        "clients",
        "add",
        id,
        "--scopes",
        scopes,
        "--audiences",
        "portico",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    kv(&out)["client_secret"].clone()
}

/// A token from the first of `services` that answers (a client failing over).
async fn token_from(http: &reqwest::Client, services: &[String], id: &str, secret: &str) -> String {
    for base in services {
        let answer = http
            .post(format!("{base}/oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        if let Ok(r) = answer {
            if r.status() == 200 {
                let body: serde_json::Value = r.json().await.unwrap();
                return body["access_token"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("no token service answered among {services:?}");
}

/// GET `path` at gateway `first`, then at the next ones while a gateway cannot be reached
/// or drops the connection: the client's own failover. The status, and how many gateways
/// it took.
async fn get_failing_over(
    http: &reqwest::Client,
    gateways: &[String],
    first: usize,
    path: &str,
    token: &str,
) -> (u16, usize) {
    for tries in 1..=gateways.len() {
        let base = &gateways[(first + tries - 1) % gateways.len()];
        let answer = http
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        if let Ok(r) = answer {
            return (r.status().as_u16(), tries);
        }
    }
    (0, gateways.len())
}

fn redis_is_there() -> bool {
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_ok();
    if !up {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Redis at 127.0.0.1:6379 is required under CI=true"
        );
        eprintln!("SKIP ha: no Redis at 127.0.0.1:6379");
    }
    up
}

fn gateway_config(
    up: &Upstream,
    token_service: &str,
    gateway_secret: &str,
    prefix: &str,
) -> String {
    let issuer = format!(
        r#"
[[routes.plugins.issuers]]
issuer = "{ISSUER}"
audiences = ["portico"]
algorithms = ["ES256"]
jwks_url = "{token_service}/.well-known/jwks.json"
revocation_url = "{token_service}/oauth2/revoked"
revocation_refresh = "{}s"
revocation_timeout = "{}s"
revocation_client_id = "gateway"
revocation_client_secret = "{gateway_secret}"
"#,
        REVOCATION_REFRESH.as_secs(),
        REVOCATION_TIMEOUT.as_secs()
    );
    Routes::new()
        .route_with(
            "orders",
            "/orders",
            "orders",
            &format!("{}{issuer}", route_plugin("jwt", "")),
        )
        .route_with(
            "limited",
            "/limited",
            "orders",
            &format!(
                "{}{issuer}{}",
                route_plugin("jwt", ""),
                route_plugin(
                    "rate-limit",
                    &format!(
                        "rate = {LIMIT}\nperiod = \"10m\"\nby = \"client_id\"\n\
                         redis = {{ url = \"redis://127.0.0.1:6379\", timeout = \"500ms\", failure = \"closed\", prefix = \"{prefix}\" }}"
                    )
                )
            ),
        )
        .cluster("orders", &[up])
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_and_two_token_services_share_one_database_and_one_redis() {
    if !redis_is_there() {
        return;
    }
    let Some(schema) = Schema::create("ha").await else {
        return;
    };
    bounded_by(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let db = schema.url();
        let mut services = vec![TokenService::start(dir.path(), "auth-a", &db).await];
        services.push(TokenService::start(dir.path(), "auth-b", &db).await);
        let bases: Vec<String> = services.iter().map(TokenService::base).collect();
        let cli = TokenService::config(dir.path(), "auth-a");
        let gateway_secret = add_client(&cli, "gateway", "");
        let secret = add_client(&cli, "service-a", "orders:read");
        let limited_secret = add_client(&cli, "greedy", "orders:read");

        let up = Upstream::start("orders-1").await;
        let prefix = format!(
            "portico:ha:{}:{}:",
            std::process::id(),
            rand::random::<u32>()
        );
        // Gateways 0 and 1 know token service A, gateway 2 knows B.
        let mut gateways = Vec::new();
        for base in [&bases[0], &bases[0], &bases[1]] {
            gateways.push(
                Gateway::builder(gateway_config(&up, base, &gateway_secret, &prefix))
                    .threads(1)
                    .start()
                    .await,
            );
        }
        let urls: Vec<String> = gateways.iter().map(|g| g.url("")).collect();
        let http = reqwest::Client::new();

        // A token from either token service is accepted by every gateway.
        let from_a = token_from(&http, &bases[..1], "service-a", &secret).await;
        let from_b = token_from(&http, &bases[1..], "service-a", &secret).await;
        for (i, url) in urls.iter().enumerate() {
            for (which, token) in [("A", &from_a), ("B", &from_b)] {
                let (status, _) =
                    get_failing_over(&http, std::slice::from_ref(url), 0, "/orders/1", token).await;
                assert_eq!(status, 200, "gateway {i}, token from service {which}");
            }
        }

        // A revocation at B is refused by every gateway within revocation_refresh +
        // revocation_timeout (README, "Token lifetimes against revocation").
        let (status, _, body) = post_basic(
            &http,
            &format!("{}/oauth2/revoke", bases[1]),
            "service-a",
            &secret,
            &[("token", &from_a)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let revoked_at = Instant::now();
        let bound = REVOCATION_REFRESH + REVOCATION_TIMEOUT;
        for (i, url) in urls.iter().enumerate() {
            let waited = eventually(
                bound + Duration::from_secs(2),
                &format!("gateway {i} refuses the revoked token"),
                || {
                    let (http, url, token) = (http.clone(), url.clone(), from_a.clone());
                    async move {
                        get_failing_over(&http, &[url], 0, "/orders/1", &token)
                            .await
                            .0
                            == 401
                    }
                },
            )
            .await;
            eprintln!("gateway {i}: revoked token refused {waited:?} after the check began");
        }
        eprintln!(
            "every gateway refused the revoked token {:?} after the revocation (bound {bound:?})",
            revoked_at.elapsed()
        );
        for url in &urls {
            let (status, _) =
                get_failing_over(&http, std::slice::from_ref(url), 0, "/orders/2", &from_b).await;
            assert_eq!(status, 200, "the other token still works at {url}");
        }

        // The rate limit is one budget across the gateways.
        let greedy = token_from(&http, &bases, "greedy", &limited_secret).await;
        let mut statuses = Vec::new();
        for n in 0..LIMIT + 15 {
            statuses.push(
                get_failing_over(&http, &urls, n % urls.len(), "/limited/x", &greedy)
                    .await
                    .0,
            );
        }
        let allowed = statuses.iter().filter(|s| **s == 200).count();
        let limited = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!(
            (allowed, limited),
            (LIMIT, 15),
            "one budget of {LIMIT} over three gateways: {statuses:?}"
        );

        // Under load, gateway 1 and token service B die. A client that fails over to the
        // next gateway (and token service) gets every request answered.
        let load = {
            let (http, urls, bases, secret) =
                (http.clone(), urls.clone(), bases.clone(), secret.clone());
            tokio::spawn(async move {
                let mut token = token_from(&http, &bases[1..], "service-a", &secret).await;
                let (mut answered, mut failovers, mut failed) = (0usize, 0usize, Vec::new());
                let start = Instant::now();
                for n in 0..400usize {
                    // A new token every 40 requests, from B first: after B dies, from A.
                    if n % 40 == 39 {
                        let order = [bases[1].clone(), bases[0].clone()];
                        token = token_from(&http, &order, "service-a", &secret).await;
                    }
                    let (status, tries) =
                        get_failing_over(&http, &urls, n % urls.len(), "/orders/3", &token).await;
                    failovers += tries - 1;
                    if status == 200 {
                        answered += 1;
                    } else {
                        failed.push((n, status));
                    }
                    // About 200 requests a second, on a fixed schedule.
                    let next = start + Duration::from_millis(5 * (n as u64 + 1));
                    tokio::time::sleep_until(next.into()).await;
                }
                (answered, failovers, failed)
            })
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        gateways[1].kill();
        services[1].kill();
        let (answered, failovers, failed) = load.await.unwrap();
        eprintln!("under load: {answered} answered, {failovers} failed over, failed: {failed:?}");
        assert!(failed.is_empty(), "requests lost: {failed:?}");
        assert_eq!(answered, 400);
        assert!(failovers > 0, "the killed gateway was in the rotation");

        // Gateway 2 knew only token service B, now gone: it keeps its keys and its last
        // revocation list, and still serves a token from A.
        let fresh = token_from(&http, &bases[..1], "service-a", &secret).await;
        let (status, _) = get_failing_over(&http, &urls[2..], 0, "/orders/4", &fresh).await;
        assert_eq!(status, 200);
        let (status, _) = get_failing_over(&http, &urls[2..], 0, "/orders/4", &from_a).await;
        assert_eq!(
            status, 401,
            "the revoked token stays refused without its token service"
        );
    })
    .await;
}
