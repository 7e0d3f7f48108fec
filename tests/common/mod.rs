//! The integration-test harness: the real `portico` binary started as a subprocess on free
//! loopback ports, in-test HTTP/1.1 upstreams whose behaviour the test controls, a raw
//! HTTP/1.1 client for request targets that `reqwest` would rewrite, and polling helpers.
//!
//! Every test file that needs it declares `mod common;` and uses the pieces it wants:
//!
//! ```ignore
//! let up = Upstream::start("a").await;
//! let gw = Gateway::start(&format!(r#"
//! [[routes]]
//! id = "all"
//! path = "/"
//! cluster = "c"
//! [clusters.c]
//! endpoints = [{{ address = "{}" }}]
//! "#, up.addr)).await;
//! let resp = gw.get("/x").await;
//! ```
//!
//! Nothing here sleeps for a fixed time to wait for a condition: [`eventually`] polls with
//! a deadline, and every network call has its own timeout, so a broken gateway makes a
//! test fail quickly with a message instead of hanging.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{JoinHandle, JoinSet};

/// Path of the portico binary built for this test run.
pub const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

/// Upper bound of a whole test body (see [`bounded`]).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(40);

/// Timeout of one HTTP exchange made by the helpers here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a test body with an overall deadline, so a hang fails the test instead of the suite.
pub async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {TEST_TIMEOUT:?}"))
}

/// A free loopback address: a port that binds now, released for the caller to bind.
///
/// The port is taken below the kernel's ephemeral range (`ip_local_port_range`), from a
/// per-process sequence: a port from `bind(0)` could be handed out again, between its
/// release here and the gateway binding it, to an in-test [`Upstream`] (which binds port
/// 0) or to a client socket of a test running in parallel. The gateway would then report
/// ready (something accepts on its address) while Pingora retries the bind, and the test
/// would talk to another test's upstream. Falls back to `bind(0)` when no such port is
/// free.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    const FIRST: usize = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > FIRST + 1_000 {
        let span = ephemeral_low - FIRST;
        // Start each test process at its own offset so parallel processes rarely overlap.
        let _ = NEXT.compare_exchange(
            usize::MAX,
            (std::process::id() as usize).wrapping_mul(7_919) % span,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        for _ in 0..span {
            let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % span;
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
                if let Ok(addr) = listener.local_addr() {
                    return addr;
                }
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after `timeout`.
/// Returns how long it took.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------------

/// One request as an [`Upstream`] received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target exactly as received (path and query, still percent-encoded).
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The first value of a header, as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// The controllable behaviour and the observations of an [`Upstream`].
pub struct UpstreamState {
    pub name: String,
    /// Status of every non-health request (default 200).
    pub status: AtomicU16,
    /// Delay before answering a non-health request, in milliseconds (default 0).
    pub delay_ms: AtomicU64,
    /// Status of `GET /healthz` (default 200).
    pub health_status: AtomicU16,
    /// Non-health requests received (counted on arrival, before any delay).
    pub hits: AtomicUsize,
    /// `/healthz` requests received.
    pub health_hits: AtomicUsize,
    /// Every non-health request received, in order.
    pub requests: Mutex<Vec<Recorded>>,
    /// Extra headers on every non-health response.
    pub response_headers: Mutex<Vec<(String, String)>>,
    /// Non-health requests being handled right now (from arrival until answered or dropped).
    pub in_flight: AtomicUsize,
    /// The highest `in_flight` seen since start.
    pub max_in_flight: AtomicUsize,
    /// When each non-health request arrived, in order.
    pub arrivals: Mutex<Vec<Instant>>,
}

/// The health endpoint every [`Upstream`] serves.
pub const HEALTH_PATH: &str = "/healthz";

/// An in-test HTTP/1.1 upstream on `127.0.0.1:0`.
///
/// Every non-health request is answered with the configured status, after the configured
/// delay, with the upstream's name as body and in an `X-Upstream` header, so a test can tell
/// which instance served a request. `GET /healthz` answers `health_status` with body `ok`.
/// Dropping it (or [`Upstream::stop`]) closes the listener and every open connection, so
/// new connections are refused.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    task: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream answering 200 at once.
    pub async fn start(name: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            health_status: AtomicU16::new(200),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            response_headers: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            arrivals: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the accept task also closes them.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = shared.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |req| handle(state.clone(), req));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Upstream {
            addr,
            state,
            task: Some(task),
        }
    }

    /// Starts an upstream answering every non-health request with `status`.
    pub async fn with_status(name: &str, status: u16) -> Upstream {
        let up = Upstream::start(name).await;
        up.set_status(status);
        up
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Adds a header to every later non-health response.
    pub fn add_response_header(&self, name: &str, value: &str) {
        self.state
            .response_headers
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    /// Non-health requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// The most non-health requests this upstream handled at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// When each non-health request arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.state.arrivals.lock().unwrap().clone()
    }

    /// A copy of every non-health request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The most recent non-health request; panics when there is none.
    pub fn last_request(&self) -> Recorded {
        self.requests()
            .pop()
            .unwrap_or_else(|| panic!("upstream {} received no request", self.state.name))
    }

    /// Closes the listener and all connections; returns once they are closed, so the next
    /// connection attempt is refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// `host:port` for a config file.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Counts one request in [`UpstreamState::in_flight`] while it lives.
struct InFlight<'a>(&'a UpstreamState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a UpstreamState) -> InFlight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    state: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == HEALTH_PATH {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        let status = state.health_status.load(Ordering::SeqCst);
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap());
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.arrivals.lock().unwrap().push(Instant::now());
    // Decremented on drop, so a request whose connection is aborted mid-delay counts too.
    let _in_flight = InFlight::enter(&state);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut resp = Response::builder()
        .status(state.status.load(Ordering::SeqCst))
        .header("x-upstream", state.name.as_str())
        .header("content-type", "text/plain");
    for (name, value) in state.response_headers.lock().unwrap().iter() {
        resp = resp.header(name.as_str(), value.as_str());
    }
    Ok(resp
        .body(Full::new(Bytes::from(state.name.clone())))
        .unwrap())
}

// ---------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------

/// Options for starting a [`Gateway`]; see [`Gateway::builder`].
pub struct GatewayBuilder {
    body: String,
    env: Vec<(String, String)>,
    threads: usize,
    access_log: bool,
    success_sample_ratio: Option<f64>,
    limits: Option<String>,
    server: String,
    admin_extra: String,
}

impl GatewayBuilder {
    /// Sets an environment variable of the gateway process (for `${NAME}` in the config).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Worker threads of the proxy (default 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// `access_log = "off"` instead of a file in the temp dir.
    pub fn no_access_log(mut self) -> Self {
        self.access_log = false;
        self
    }

    pub fn success_sample_ratio(mut self, ratio: f64) -> Self {
        self.success_sample_ratio = Some(ratio);
        self
    }

    /// Extra lines of the `[server]` table, e.g. `trusted_proxies = ["127.0.0.1"]`.
    pub fn server(mut self, lines: &str) -> Self {
        self.server.push_str(lines);
        self.server.push('\n');
        self
    }

    /// The body of a `[limits]` table, e.g. `max_uri_bytes = 64`.
    pub fn limits(mut self, limits: &str) -> Self {
        self.limits = Some(limits.to_string());
        self
    }

    /// Extra lines of the `[admin]` table, e.g. `allowed_hosts = ["admin.internal"]`.
    pub fn admin(mut self, lines: &str) -> Self {
        self.admin_extra = lines.to_string();
        self
    }

    /// Writes the config, starts the gateway and waits until `/readyz` answers 200.
    pub async fn start(self) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen = free_addr();
        let admin = free_addr();
        let access_log = dir.path().join("access.log");
        let mut config = format!(
            r#"[server]
threads = {threads}
pid_file = "{dir}/portico.pid"
upgrade_sock = "{dir}/upgrade.sock"
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 0
{server}
[[listeners]]
address = "{listen}"

[admin]
address = "{admin}"
{admin_extra}

[logging]
access_log = "{log}"
"#,
            threads = self.threads,
            server = self.server,
            dir = dir.path().display(),
            admin_extra = self.admin_extra,
            log = if self.access_log {
                access_log.display().to_string()
            } else {
                "off".to_string()
            },
        );
        if let Some(ratio) = self.success_sample_ratio {
            config.push_str(&format!("success_sample_ratio = {ratio:?}\n"));
        }
        if let Some(limits) = &self.limits {
            config.push_str(&format!("\n[limits]\n{limits}\n"));
        }
        config.push('\n');
        config.push_str(&self.body);
        let config_path = dir.path().join("portico.toml");
        std::fs::write(&config_path, &config).expect("write config");

        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let mut command = Command::new(PORTICO);
        command
            .arg("serve")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start portico");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client");
        let mut gateway = Gateway {
            child,
            listen,
            admin,
            config_path,
            access_log,
            config,
            client,
            dir,
        };
        gateway.wait_ready().await;
        gateway
    }
}

/// A running `portico serve` process on free loopback ports, killed on drop.
///
/// The config it runs is a fixed header (`[server]` with pid file and upgrade socket in a
/// temp dir, one listener, the admin API, the access log in the temp dir) followed by the
/// test's body (`[[plugins]]`, `[[routes]]`, `[clusters.*]`).
pub struct Gateway {
    child: Child,
    /// The client-facing listener.
    pub listen: SocketAddr,
    /// The admin API listener.
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub access_log: PathBuf,
    /// The full config text the gateway runs.
    pub config: String,
    /// A plain HTTP client (no proxy, 5 s timeout).
    pub client: reqwest::Client,
    // Last, so the directory outlives the process that writes into it.
    dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway with default options running `body`.
    pub async fn start(body: &str) -> Gateway {
        Gateway::builder(body).start().await
    }

    pub fn builder(body: &str) -> GatewayBuilder {
        GatewayBuilder {
            body: body.to_string(),
            env: Vec::new(),
            threads: 1,
            access_log: true,
            success_sample_ratio: None,
            limits: None,
            server: String::new(),
            admin_extra: String::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the process wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = self.admin_url("/readyz");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "portico exited with {status} before becoming ready\nconfig:\n{}\nstderr:\n{}",
                    self.config,
                    self.stderr()
                );
            }
            let ready =
                tokio::time::timeout(Duration::from_millis(500), self.client.get(&url).send())
                    .await;
            if let Ok(Ok(resp)) = ready {
                if resp.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "portico was not ready within 10 s\nconfig:\n{}\nstderr:\n{}",
                    self.config,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://listen{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    /// `http://admin{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// `GET path` through the gateway.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} through the gateway failed: {e}"))
    }

    /// `GET path` through the gateway with extra headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.get(self.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} through the gateway failed: {e}"))
    }

    /// `GET path` through the gateway; returns the status and the body.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.get(path).await;
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// Sends raw request bytes to the gateway listener (see [`raw_request`]).
    pub async fn raw(&self, request: &str) -> RawResponse {
        raw_request(self.listen, request.as_bytes()).await
    }

    /// `GET target` with the raw client: the target is sent byte for byte. `Host: gateway`
    /// is added unless `headers` has a Host.
    pub async fn raw_get(&self, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        raw_request(self.listen, raw_get_request(target, headers).as_bytes()).await
    }

    /// `GET path` on the admin API.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin GET {path} failed: {e}"))
    }

    /// `GET path` on the admin API, parsed as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let resp = self.admin_get(path).await;
        let text = resp.text().await.expect("admin body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("admin {path}: {e}: {text}"))
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics")
            .await
            .text()
            .await
            .expect("metrics body")
    }

    /// `/admin/clusters`' entry for one endpoint of one cluster.
    pub async fn endpoint_status(&self, cluster: &str, address: &str) -> serde_json::Value {
        let all = self.admin_json("/admin/clusters").await;
        all["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == cluster))
            .and_then(|c| c["endpoints"].as_array())
            .and_then(|es| es.iter().find(|e| e["address"] == address))
            .cloned()
            .unwrap_or_else(|| panic!("no endpoint {address} of cluster {cluster} in {all}"))
    }

    /// Every complete line of the access log so far, parsed as JSON.
    pub fn access_log_lines(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| {
                serde_json::from_str(l.trim_end())
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits until the access log has at least `n` lines and returns them all.
    pub async fn wait_access_log(&self, n: usize) -> Vec<serde_json::Value> {
        eventually(
            Duration::from_secs(5),
            &format!("{n} access log lines"),
            || async { self.access_log_lines().len() >= n },
        )
        .await;
        self.access_log_lines()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first sample of `name` whose labels include every `labels` pair, in
/// Prometheus text format.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------

/// A response read by [`raw_request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// `GET target HTTP/1.1` with `headers`; adds `Host: gateway` unless given.
pub fn raw_get_request(target: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!("GET {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str("Host: gateway\r\n");
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Sends `request` byte for byte on a new connection and reads one response, framed by its
/// `Content-Length`, chunked encoding, or the connection closing. Use it for request targets
/// that an HTTP client library would normalise (`/a/../b`, `%2e%2e`, `//x`).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    tokio::time::timeout(REQUEST_TIMEOUT, raw_exchange(addr, request))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete response within {REQUEST_TIMEOUT:?} to {:?}",
                String::from_utf8_lossy(request)
            )
        })
}

async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.send(request).await;
    conn.read_response().await.unwrap_or_else(|| {
        panic!(
            "connection closed before a complete response to {:?}",
            String::from_utf8_lossy(request)
        )
    })
}

/// A client connection kept open over several raw requests, to observe keep-alive.
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        RawConn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes bytes; a failure (the peer closed) is ignored here and shows as no response.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads the next response (see [`raw_request`] for framing). `None` when the
    /// connection closes before a complete response; panics after [`REQUEST_TIMEOUT`].
    pub async fn read_response(&mut self) -> Option<RawResponse> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.read_inner())
            .await
            .unwrap_or_else(|_| panic!("no complete response within {REQUEST_TIMEOUT:?}"))
    }

    async fn read_inner(&mut self) -> Option<RawResponse> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((resp, used)) = parse_response(&self.buf, self.eof) {
                self.buf.drain(..used);
                return Some(resp);
            }
            if self.eof {
                return None;
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A reset after the response arrived still leaves a usable response.
                Err(_) => self.eof = true,
            }
        }
    }

    /// Whether the peer has closed the connection (waits up to `wait` for it).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        if self.eof {
            return true;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                true
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(_) => false,
        }
    }
}

/// A complete response at the start of `buf`, if there is one, and how many bytes it took.
fn parse_response(buf: &[u8], eof: bool) -> Option<(RawResponse, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[head_end + 4..];
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let (body, body_len) = if status == 204 || status == 304 || (100..200).contains(&status) {
        (Vec::new(), 0)
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if rest.len() < len {
            return None;
        }
        (rest[..len].to_vec(), len)
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        decode_chunked(rest)?
    } else if eof {
        (rest.to_vec(), rest.len())
    } else {
        return None;
    };
    let response = RawResponse {
        status,
        headers,
        body,
    };
    Some((response, head_end + 4 + body_len))
}

/// The decoded body and the number of bytes the chunked encoding took.
fn decode_chunked(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + data[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[at..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers: one empty line; with trailers: they end with an empty line.
            let end = if data[at..].starts_with(b"\r\n") {
                at + 2
            } else {
                at + data[at..].windows(4).position(|w| w == b"\r\n\r\n")? + 4
            };
            return Some((out, end));
        }
        if data.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&data[at..at + size]);
        at += size + 2;
    }
}

// ---------------------------------------------------------------------------------------
// Config snippets
// ---------------------------------------------------------------------------------------

/// `[{ address = "a" }, { address = "b" }]` for a cluster's `endpoints`.
pub fn endpoints(upstreams: &[&Upstream]) -> String {
    let list: Vec<String> = upstreams
        .iter()
        .map(|u| format!("{{ address = \"{}\" }}", u.addr))
        .collect();
    format!("[{}]", list.join(", "))
}

/// Counts which upstream (by the `X-Upstream` response header) served each of `n`
/// sequential `GET path` requests; every response must be 200.
pub async fn spread(
    gw: &Gateway,
    path: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let resp = gw.get(path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        let name = resp
            .headers()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        *seen.entry(name).or_insert(0) += 1;
    }
    seen
}

/// The `p`-th percentile (0.0–1.0, nearest rank) of `samples`; zero when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
