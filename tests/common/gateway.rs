//! The gateway under test: a real `portico serve` process on free loopback ports
//! ([`Gateway`], started by a [`GatewayBuilder`]), and the [`ConfigText`] builder that
//! writes its routes and clusters (`route id → path, cluster, extra TOML`, `cluster name →
//! upstreams, extra TOML`) for it or for any other config file a test writes ([`Routes`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, free_addr, raw_get_request, raw_request, RawResponse, Upstream};
use super::{PORTICO, REQUEST_TIMEOUT};

/// Appends `[[routes]]` and `[clusters.*]` tables (and any other TOML) to a config body.
///
/// Extra text is written as given, right after the keys the method writes, so it may hold
/// more keys of the same table (`retry = { attempts = 3 }`) and then sub-tables
/// (`[[routes.plugins]]`).
pub trait ConfigText: Sized {
    /// The config body written so far, to append to.
    fn body_mut(&mut self) -> &mut String;

    /// Any TOML, as given (global `[[plugins]]`, `[tracing]`, hand-written tables).
    fn toml(mut self, text: &str) -> Self {
        let body = self.body_mut();
        body.push('\n');
        body.push_str(text);
        body.push('\n');
        self
    }

    /// A global `[[plugins]]` entry: `name`, then `extra` keys.
    fn global_plugin(self, name: &str, extra: &str) -> Self {
        self.toml(&format!("[[plugins]]\nname = \"{name}\"\n{extra}"))
    }

    /// `[[routes]]` with `id`, `path` and `cluster`.
    fn route(self, id: &str, path: &str, cluster: &str) -> Self {
        self.route_with(id, path, cluster, "")
    }

    /// `[[routes]]` with `id`, `path`, `cluster`, then `extra`.
    fn route_with(self, id: &str, path: &str, cluster: &str, extra: &str) -> Self {
        self.toml(&format!(
            "[[routes]]\nid = \"{id}\"\npath = \"{path}\"\ncluster = \"{cluster}\"\n{extra}"
        ))
    }

    /// `[clusters.name]` with the upstreams as `endpoints`.
    fn cluster(self, name: &str, upstreams: &[&Upstream]) -> Self {
        self.cluster_with(name, upstreams, "")
    }

    /// `[clusters.name]` with the upstreams as `endpoints`, then `extra`.
    fn cluster_with(self, name: &str, upstreams: &[&Upstream], extra: &str) -> Self {
        let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
        self.cluster_at(name, &addrs, extra)
    }

    /// `[clusters.name]` with these addresses as `endpoints` (for servers that are not an
    /// [`Upstream`]), then `extra`.
    fn cluster_at(self, name: &str, addrs: &[SocketAddr], extra: &str) -> Self {
        self.toml(&format!(
            "[clusters.{name}]\nendpoints = {}\n{extra}",
            endpoints_at(addrs)
        ))
    }

    /// `[clusters.name]` with a hand-written body (weights, endpoint options).
    fn cluster_body(self, name: &str, body: &str) -> Self {
        self.toml(&format!("[clusters.{name}]\n{body}"))
    }
}

/// A `[[routes.plugins]]` entry (`name`, then `extra` keys), for the extra text of
/// [`ConfigText::route_with`].
pub fn route_plugin(name: &str, extra: &str) -> String {
    format!("\n[[routes.plugins]]\nname = \"{name}\"\n{extra}")
}

/// A config body on its own, for tests that write the config file themselves.
#[derive(Default, Clone)]
pub struct Routes {
    body: String,
}

impl Routes {
    pub fn new() -> Routes {
        Routes::default()
    }
}

impl ConfigText for Routes {
    fn body_mut(&mut self) -> &mut String {
        &mut self.body
    }
}

impl std::fmt::Display for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.body)
    }
}

/// `[{ address = "a" }, { address = "b" }]` for a cluster's `endpoints`.
pub fn endpoints(upstreams: &[&Upstream]) -> String {
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    endpoints_at(&addrs)
}

/// [`endpoints`] of plain addresses.
pub fn endpoints_at(addrs: &[SocketAddr]) -> String {
    let mut list = String::new();
    for (i, addr) in addrs.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(list, "{sep}{{ address = \"{addr}\" }}");
    }
    format!("[{list}]")
}

impl ConfigText for GatewayBuilder {
    fn body_mut(&mut self) -> &mut String {
        &mut self.body
    }
}

/// Options for starting a [`Gateway`]; see [`Gateway::builder`].
pub struct GatewayBuilder {
    body: String,
    env: Vec<(String, String)>,
    threads: usize,
    access_log: bool,
    success_sample_ratio: Option<f64>,
    limits: Option<String>,
    /// `graceful_shutdown_timeout_seconds` (default 0).
    graceful_seconds: u64,
    server: String,
    /// Extra keys of the client-facing `[[listeners]]` entry.
    listener: String,
    admin_extra: String,
    /// The admin token, given to the process as `${PORTICO_TEST_ADMIN_TOKEN}`; `None`
    /// writes no token at all.
    admin_token: Option<String>,
    ready_within: Duration,
}

/// The environment variable the harness passes the admin token in.
pub const ADMIN_TOKEN_ENV: &str = "PORTICO_TEST_ADMIN_TOKEN";

/// A fresh random admin token (256 bits as hex).
pub fn new_admin_token() -> String {
    format!(
        "{}{}",
        portico_common::random_hex_128(),
        portico_common::random_hex_128()
    )
}

impl GatewayBuilder {
    /// How long the gateway may take to become ready (default 10 s; a config of 100,000
    /// routes takes longer in a debug build).
    pub fn ready_within(mut self, limit: Duration) -> Self {
        self.ready_within = limit;
        self
    }

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

    /// `graceful_shutdown_timeout_seconds`: how long a SIGTERM drain may take (default 0).
    pub fn graceful_shutdown(mut self, seconds: u64) -> Self {
        self.graceful_seconds = seconds;
        self
    }

    /// Extra keys of the client-facing listener, e.g. `proxy_protocol = true`.
    pub fn listener(mut self, lines: &str) -> Self {
        self.listener.push_str(lines);
        self.listener.push('\n');
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

    /// No `[admin] token`: every protected admin endpoint answers 401. (By default the
    /// harness sets a random token and [`Gateway::admin_get`] sends it.)
    pub fn no_admin_token(mut self) -> Self {
        self.admin_token = None;
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
grace_period_seconds = {grace}
graceful_shutdown_timeout_seconds = {graceful}
{server}
[[listeners]]
address = "{listen}"
{listener}
[admin]
address = "{admin}"
{token_line}{admin_extra}

[logging]
access_log = "{log}"
"#,
            threads = self.threads,
            server = self.server,
            graceful = self.graceful_seconds,
            // Pingora stops its runtimes (cutting what is left) after the grace period;
            // the drain ends the process first, at `graceful_shutdown_timeout_seconds`.
            grace = if self.graceful_seconds > 0 {
                self.graceful_seconds + 5
            } else {
                0
            },
            listener = self.listener,
            dir = dir.path().display(),
            admin_extra = self.admin_extra,
            token_line = if self.admin_token.is_some() {
                format!("token = \"${{{ADMIN_TOKEN_ENV}}}\"\n")
            } else {
                String::new()
            },
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
        let mut env = self.env.clone();
        if let Some(token) = &self.admin_token {
            env.push((ADMIN_TOKEN_ENV.to_string(), token.clone()));
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
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
            admin_token: self.admin_token.clone(),
            env,
            config_path,
            access_log,
            config,
            client,
            dir,
        };
        gateway.wait_ready(self.ready_within).await;
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
    /// The admin token the gateway was given (`None`: [`GatewayBuilder::no_admin_token`]).
    pub admin_token: Option<String>,
    /// The environment its config needs (`${NAME}` values, the admin token).
    env: Vec<(String, String)>,
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
    /// Starts a gateway with default options running `body` (a string or a [`Routes`]).
    pub async fn start(body: impl std::fmt::Display) -> Gateway {
        Gateway::builder(body).start().await
    }

    /// A builder with an empty body, for [`ConfigText`]'s routes and clusters.
    pub fn config() -> GatewayBuilder {
        Gateway::builder("")
    }

    /// A builder running `body` (a string or a [`Routes`]).
    pub fn builder(body: impl std::fmt::Display) -> GatewayBuilder {
        GatewayBuilder {
            body: body.to_string(),
            env: Vec::new(),
            threads: 1,
            access_log: true,
            success_sample_ratio: None,
            limits: None,
            graceful_seconds: 0,
            server: String::new(),
            listener: String::new(),
            admin_extra: String::new(),
            admin_token: Some(new_admin_token()),
            ready_within: Duration::from_secs(10),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `portico` command with the environment the gateway's config needs, for running
    /// `check` or `routes` on [`Gateway::config_path`].
    pub fn portico_command(&self) -> Command {
        let mut command = Command::new(PORTICO);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// What the process wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
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
                    "portico was not ready within {limit:?}\nconfig:\n{}\nstderr:\n{}",
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

    /// `GET path` on the admin API, with the admin token.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.admin_request(http::Method::GET, path).await
    }

    /// `POST path` on the admin API, with the admin token.
    pub async fn admin_post(&self, path: &str) -> reqwest::Response {
        self.admin_request(http::Method::POST, path).await
    }

    /// `METHOD path` on the admin API, with the admin token.
    pub async fn admin_request(&self, method: http::Method, path: &str) -> reqwest::Response {
        let mut req = self.client.request(method, self.admin_url(path));
        if let Some(token) = &self.admin_token {
            req = req.bearer_auth(token);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("admin {path} failed: {e}"))
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

impl Gateway {
    /// Sends SIGTERM (a graceful stop) to the gateway process.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Kills the gateway process at once (SIGKILL): a node lost, nothing drained.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `limit` for the process to exit; its exit status, or `None` if it still
    /// runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// `POST path` through the gateway with `body` and extra headers.
    pub async fn post(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).body(body.to_string());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} through the gateway failed: {e}"))
    }

    /// `/admin/clusters`' entry for one cluster.
    pub async fn cluster_status(&self, name: &str) -> serde_json::Value {
        let all = self.admin_json("/admin/clusters").await;
        all["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no cluster {name} in {all}"))
    }
}
