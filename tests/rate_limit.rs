//! The `rate-limit` plugin end to end: two real gateway processes share one cluster-wide
//! limit through the machine's real Redis (`PORTICO_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`; skipped loudly when absent, a failure under `CI=true`), in front
//! of a real HTTP upstream on loopback. Requests alternate between the two gateways and exactly
//! the limit gets through.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;

/// A gateway child process, killed when the test ends however it ends.
struct Gateway {
    child: Child,
    listen: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// An upstream that answers `200 ok` and counts the requests it got.
async fn upstream(hits: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The Redis URL, or `None` after a loud SKIP (a panic under `CI=true`).
async fn redis_url() -> Option<String> {
    let url = std::env::var("PORTICO_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    // A TCP probe: the gateways themselves tell whether Redis really answers (the route
    // fails closed, so a broken Redis shows up as 503s, never as a silent pass).
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&addr),
    );
    let why = match probe.await {
        Ok(Ok(_)) => return Some(url),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 2 s".to_owned(),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("Redis is required under CI=true but {url} is unreachable: {why}");
    }
    eprintln!(
        "\n!!!!!!!! SKIP two_gateways_share_one_redis_limit: no Redis at {url} ({why}). Start \
         redis-server or set PORTICO_TEST_REDIS_URL; under CI=true this test fails instead. \
         !!!!!!!!\n"
    );
    None
}

fn start_gateway(dir: &Path, n: usize, up: SocketAddr, redis: &str, prefix: &str) -> Gateway {
    let (listen, admin) = (free_port(), free_port());
    let dir_s = dir.display();
    let config = format!(
        r#"[server]
threads = 1
pid_file = "{dir_s}/g{n}.pid"
upgrade_sock = "{dir_s}/g{n}.sock"
grace_period_seconds = 1
graceful_shutdown_timeout_seconds = 1

[[listeners]]
address = "{listen}"

[admin]
address = "{admin}"

[logging]
access_log = "off"

[[routes]]
id = "limited"
path = "/limited"
cluster = "up"

[[routes.plugins]]
name = "rate-limit"
rate = 5
period = "1m"
by = "client_ip"
redis = {{ url = "{redis}", prefix = "{prefix}", timeout = "1s", failure = "closed" }}

[[routes]]
id = "free"
path = "/free"
cluster = "up"

[clusters.up]
endpoints = [{{ address = "{up}" }}]
"#
    );
    let config_path = dir.join(format!("g{n}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let log = dir.join(format!("g{n}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["serve", "-c"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut gateway = Gateway { child, listen, log };
    wait_ready(&mut gateway, admin);
    gateway
}

/// Waits for the admin API's `/readyz` to answer 200.
fn wait_ready(gateway: &mut Gateway, admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = gateway.child.try_wait() {
            panic!(
                "gateway exited with {status}: {}",
                std::fs::read_to_string(&gateway.log).unwrap_or_default()
            );
        }
        if readyz_status(admin) == Some(200) {
            return;
        }
        assert!(Instant::now() < deadline, "gateway not ready in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status of `GET /readyz`, over a plain blocking socket: this runs on a blocking
/// thread while the test's runtime serves the upstream.
fn readyz_status(admin: SocketAddr) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    // The admin API answers only hosts that are IP literals (or localhost, or listed).
    stream
        .write_all(
            format!("GET /readyz HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    // "HTTP/1.1 200 "
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn value<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_redis_limit() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let prefix = format!("portico:test:{}:{nanos}:e2e:", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let up = upstream(hits.clone()).await;

    let gateways = {
        let dir = dir.path().to_owned();
        let (redis, prefix) = (redis.clone(), prefix.clone());
        tokio::task::spawn_blocking(move || {
            [1, 2].map(|n| start_gateway(&dir, n, up, &redis, &prefix))
        })
        .await
        .unwrap()
    };

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut passed = 0;
    let mut limited = 0;
    for i in 0..12 {
        let gateway = &gateways[i % 2];
        let resp = client
            .get(format!("http://{}/limited/{i}", gateway.listen))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {
                // The node that served it reports the bucket as Redis left it.
                assert_eq!(value(&resp, "ratelimit-limit"), Some("5"), "request {i}");
                let remaining = (4 - passed).to_string();
                assert_eq!(
                    value(&resp, "ratelimit-remaining"),
                    Some(remaining.as_str())
                );
                assert_eq!(value(&resp, "ratelimit-policy"), Some("5;w=60"));
                assert_eq!(resp.text().await.unwrap(), "ok");
                passed += 1;
            }
            429 => {
                assert_eq!(value(&resp, "ratelimit-limit"), Some("5"));
                assert_eq!(value(&resp, "ratelimit-remaining"), Some("0"));
                assert_eq!(value(&resp, "ratelimit-policy"), Some("5;w=60"));
                // One request back every 12 s; the bucket is full again a minute after.
                let retry: u64 = value(&resp, "retry-after").unwrap().parse().unwrap();
                assert!((11..=12).contains(&retry), "Retry-After {retry}");
                let reset: u64 = value(&resp, "ratelimit-reset").unwrap().parse().unwrap();
                assert!((55..=60).contains(&reset), "RateLimit-Reset {reset}");
                assert_eq!(
                    value(&resp, "content-type"),
                    Some("application/problem+json")
                );
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["status"], 429);
                assert_eq!(body["instance"], format!("/limited/{i}"));
                limited += 1;
            }
            other => panic!(
                "request {i} via gateway {}: status {other}: {}\n{}",
                i % 2 + 1,
                resp.text().await.unwrap_or_default(),
                std::fs::read_to_string(&gateway.log).unwrap_or_default()
            ),
        }
    }
    assert_eq!((passed, limited), (5, 7));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5,
        "limited requests never reach the upstream"
    );

    // A route without the plugin is not limited and carries no limit fields.
    for gateway in &gateways {
        let resp = client
            .get(format!("http://{}/free", gateway.listen))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(value(&resp, "ratelimit-limit").is_none());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 7);
}
