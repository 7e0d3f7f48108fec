//! Shared parts of the operations tests (`ops_reload`, `ops_upgrade`, `ops_tls`): a
//! `portico serve` process whose `[server]` section the test controls (foreground or
//! daemonized, killed with everything it spawned on drop), a steady-rate load generator that
//! counts every failure and connection reset and keeps each latency, and a test CA.
//!
//! Upstreams, free ports, polling and percentiles come from `tests/common`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::common::percentile;
use crate::common::{bounded_by, free_addr, PORTICO};

/// Upper bound of one operations test.
pub const OPS_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a test body with the operations tests' deadline.
pub async fn bounded<T>(body: impl std::future::Future<Output = T>) -> T {
    bounded_by(OPS_TIMEOUT, body).await
}

/// Load tests in one test binary take turns, so their latencies are not each other's.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------

/// Where a test gateway lives: a temp dir with its config, pid file, upgrade socket, logs.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub watch_config: bool,
    /// Extra `[[listeners]]` tables (TLS ones), written after the plain listener.
    pub extra_listeners: String,
    /// Whether the plain listener on `listen` is written.
    pub plain_listener: bool,
    /// Whether `pid_file` and `upgrade_sock` are written (false: the defaults apply).
    pub runtime_paths: bool,
    /// Environment variables of every process started here.
    pub env: Vec<(String, String)>,
    /// The admin token, in `admin.token` (mode 0600) named by `[admin] token_file`, as an
    /// operator would keep it.
    pub admin_token: String,
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin_token = crate::common::new_admin_token();
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{admin_token}\n")).expect("write token");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod token");
        }
        Site {
            admin_token,
            dir,
            listen: free_addr(),
            admin: free_addr(),
            grace_period_seconds: 20,
            graceful_shutdown_timeout_seconds: 10,
            watch_config: false,
            extra_listeners: String::new(),
            plain_listener: true,
            runtime_paths: true,
            env: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("portico.toml")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.path("portico.pid")
    }

    pub fn upgrade_sock(&self) -> PathBuf {
        self.path("upgrade.sock")
    }

    pub fn access_log(&self) -> PathBuf {
        self.path("access.log")
    }

    /// The full config: this site's `[server]`, listeners, admin and log, then `body`.
    pub fn config(&self, body: &str) -> String {
        let mut text = format!(
            r#"[server]
threads = 2
{paths}grace_period_seconds = {grace}
graceful_shutdown_timeout_seconds = {stop}
watch_config = {watch}

[admin]
address = "{admin}"
token_file = "{token_file}"

[logging]
access_log = "{log}"
"#,
            paths = if self.runtime_paths {
                format!(
                    "pid_file = \"{}\"\nupgrade_sock = \"{}\"\n",
                    self.pid_file().display(),
                    self.upgrade_sock().display()
                )
            } else {
                String::new()
            },
            grace = self.grace_period_seconds,
            stop = self.graceful_shutdown_timeout_seconds,
            watch = self.watch_config,
            admin = self.admin,
            token_file = self.path("admin.token").display(),
            log = self.access_log().display(),
        );
        if self.plain_listener {
            text.push_str(&format!("\n[[listeners]]\naddress = \"{}\"\n", self.listen));
        }
        text.push_str(&self.extra_listeners);
        text.push('\n');
        text.push_str(body);
        text
    }

    /// Writes the config file (atomically: a new file renamed over the old one).
    pub fn write_config(&self, body: &str) {
        let tmp = self.path("portico.toml.new");
        std::fs::write(&tmp, self.config(body)).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    /// A log file in the site dir for a process's stdout and stderr.
    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .expect("log file")
    }

    pub fn command(&self, bin: &Path, args: &[&str], log: &str) -> Command {
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(args)
            .arg("-c")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(self.log_file(log))
            .stderr(self.log_file(log));
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Starts `portico serve` in the foreground (its own child process).
    pub fn spawn(&self, args: &[&str], log: &str) -> Proc {
        self.spawn_bin(Path::new(PORTICO), args, log)
    }

    pub fn spawn_bin(&self, bin: &Path, args: &[&str], log: &str) -> Proc {
        let child = self.command(bin, args, log).spawn().expect("start portico");
        Proc {
            pid: child.id(),
            child: Some(child),
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// The pid in the pid file, if any.
    pub fn pid_in_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }
}

/// A running portico process, killed (SIGKILL) on drop if still alive.
pub struct Proc {
    pub pid: u32,
    child: Option<Child>,
}

impl Proc {
    /// A process this test did not start itself (a daemon), known by its pid.
    pub fn adopt(pid: u32) -> Proc {
        Proc { pid, child: None }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Whether the process exists and has not exited (a zombie has).
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists() && !is_zombie(self.pid)
    }

    /// Waits for our child to exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
            } else if !self.alive() {
                return None;
            }
            if start.elapsed() > limit {
                panic!("pid {} did not exit within {limit:?}", self.pid);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for Proc {
    fn drop(&mut self) {
        match self.child.as_mut() {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A plain HTTP client for the admin API and single requests (no proxy, 10 s timeout).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A client for the admin API that sends the site's admin token.
pub fn admin_client(site: &Site) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", site.admin_token)
            .parse()
            .expect("header value"),
    );
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// `GET /readyz` as JSON, if the admin API answers.
pub async fn readyz(site: &Site) -> Option<(u16, serde_json::Value)> {
    let resp = client().get(site.admin_url("/readyz")).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.ok()?))
}

/// Waits until `/readyz` answers 200 from the process `pid` (during an upgrade both
/// processes answer on the admin port).
pub async fn wait_ready(site: &Site, pid: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some((200, body)) = readyz(site).await {
            if body["pid"].as_u64() == Some(pid as u64) {
                return start.elapsed();
            }
        }
        if start.elapsed() > limit {
            panic!(
                "pid {pid} was not ready within {limit:?}\n{}",
                site.log("portico.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /admin/reload`: status and JSON body.
pub async fn admin_reload(site: &Site) -> (u16, serde_json::Value) {
    let resp = admin_client(site)
        .post(site.admin_url("/admin/reload"))
        .send()
        .await
        .expect("POST /admin/reload");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("reload JSON"))
}

/// The value of `portico_config_reloads_total{result}`.
pub async fn reloads(site: &Site, result: &str) -> f64 {
    let text = client()
        .get(site.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    crate::common::metric_value(&text, "portico_config_reloads_total", &[("result", result)])
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// One request of a load run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub start: Instant,
    pub latency: Duration,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An HTTP answer other than 200.
    Status(u16),
    /// The connection was reset or closed before the response.
    Reset(String),
    /// Any other client error (timeout, refused).
    Error(String),
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub samples: Vec<Sample>,
    /// Ticks at which no request could start because `max_in_flight` were in flight.
    pub skipped: usize,
}

impl Report {
    pub fn sent(&self) -> usize {
        self.samples.len()
    }

    pub fn failed(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| s.outcome != Outcome::Ok)
            .count()
    }

    pub fn resets(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Reset(_)))
            .count()
    }

    /// The distinct failures, for messages.
    pub fn failures(&self) -> Vec<String> {
        let mut seen: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.outcome != Outcome::Ok)
            .map(|s| format!("{:?}", s.outcome))
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }

    /// Latencies of the requests started inside (or outside) the windows.
    pub fn latencies(&self, windows: &[(Instant, Instant)], inside: bool) -> Vec<Duration> {
        self.samples
            .iter()
            .filter(|s| windows.iter().any(|(a, b)| s.start >= *a && s.start <= *b) == inside)
            .map(|s| s.latency)
            .collect()
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A steady-rate HTTP client: `rate` requests a second (open loop: a slow answer does not
/// slow the schedule) over a pool of keep-alive connections, at most `max_in_flight` at
/// once, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Report>,
}

impl Load {
    pub fn start(url: String, rate: u32, max_in_flight: usize) -> Load {
        Load::start_with(
            url,
            rate,
            max_in_flight,
            client_builder().build().expect("client"),
        )
    }

    pub fn start_with(
        url: String,
        rate: u32,
        max_in_flight: usize,
        client: reqwest::Client,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let samples = Arc::new(Mutex::new(Vec::new()));
            let in_flight = Arc::new(AtomicUsize::new(0));
            let mut skipped = 0;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut requests = tokio::task::JoinSet::new();
            while !stopping.load(Ordering::SeqCst) {
                tick.tick().await;
                if in_flight.load(Ordering::SeqCst) >= max_in_flight {
                    skipped += 1;
                    continue;
                }
                in_flight.fetch_add(1, Ordering::SeqCst);
                let (client, url, samples, in_flight) = (
                    client.clone(),
                    url.clone(),
                    samples.clone(),
                    in_flight.clone(),
                );
                requests.spawn(async move {
                    let start = Instant::now();
                    let outcome = match client.get(&url).send().await {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            match resp.bytes().await {
                                Ok(_) if status == 200 => Outcome::Ok,
                                Ok(_) => Outcome::Status(status),
                                Err(e) => classify(&e),
                            }
                        }
                        Err(e) => classify(&e),
                    };
                    samples.lock().unwrap().push(Sample {
                        start,
                        latency: start.elapsed(),
                        outcome,
                    });
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
                while requests.try_join_next().is_some() {}
            }
            while requests.join_next().await.is_some() {}
            let mut samples = std::mem::take(&mut *samples.lock().unwrap());
            samples.sort_by_key(|s| s.start);
            Report { samples, skipped }
        });
        Load { stop, task }
    }

    /// Stops sending and waits for the answers still due.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task")
    }
}

pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
}

/// A reset is an I/O reset/abort/broken pipe anywhere in the error's causes, or hyper's
/// "connection closed before message completed".
fn classify(e: &reqwest::Error) -> Outcome {
    let text = format!("{e:?}");
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) {
                return Outcome::Reset(text);
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return Outcome::Reset(text);
            }
        }
        source = err.source();
    }
    Outcome::Error(text)
}

/// Prints a load run's counts and latencies, steady state against the given windows.
pub fn print_report(what: &str, report: &Report, windows: &[(Instant, Instant)]) {
    let all: Vec<Duration> = report.samples.iter().map(|s| s.latency).collect();
    let inside = report.latencies(windows, true);
    let outside = report.latencies(windows, false);
    println!(
        "[{what}] sent {} failed {} resets {} skipped {} | p50 {} p99 {} max {} | \
         steady: n={} p99 {} | during: n={} p99 {} max {}",
        report.sent(),
        report.failed(),
        report.resets(),
        report.skipped,
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(percentile(&all, 1.0)),
        outside.len(),
        ms(percentile(&outside, 0.99)),
        inside.len(),
        ms(percentile(&inside, 0.99)),
        ms(percentile(&inside, 1.0)),
    );
}

// ---------------------------------------------------------------------------------------
// A test CA
// ---------------------------------------------------------------------------------------

/// A certificate authority made at test time.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
    pub name: String,
}

/// A certificate and its key as files.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert,
            key,
            name: name.to_string(),
        }
    }

    /// Writes the CA certificate as PEM.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.pem", self.name));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    pub fn der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for `names`, written as `<file>.pem` / `<file>.key`.
    pub fn server(&self, dir: &Path, file: &str, names: &[&str]) -> Issued {
        self.issue(dir, file, names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, dir: &Path, file: &str, name: &str) -> Issued {
        self.issue(
            dir,
            file,
            &[name],
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
            der: cert.der().clone(),
        };
        // New files renamed into place, as a certificate deployment would.
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, cert.pem()).unwrap();
        std::fs::rename(&tmp, &issued.cert).unwrap();
        std::fs::write(&tmp, key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, &issued.key).unwrap();
        issued
    }
}

// ---------------------------------------------------------------------------------------
// systemd's notify socket
// ---------------------------------------------------------------------------------------

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`: every message the gateway
/// sends, with when it arrived, read by a thread until dropped.
pub struct NotifySocket {
    /// The `NOTIFY_SOCKET` value: a path, or `@name` for the abstract namespace.
    pub address: String,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    pub fn at_path(path: &Path) -> NotifySocket {
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind notify socket");
        NotifySocket::reading(socket, path.display().to_string())
    }

    pub fn abstract_named(name: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let socket =
            std::os::unix::net::UnixDatagram::bind_addr(&address).expect("bind notify socket");
        NotifySocket::reading(socket, format!("@{name}"))
    }

    fn reading(socket: std::os::unix::net::UnixDatagram, address: String) -> NotifySocket {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (store, stopping) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stopping.load(Ordering::SeqCst) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    store.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        NotifySocket {
            address,
            messages,
            stop,
        }
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits for the first message from index `from` on that has every line of `lines`;
    /// returns its index and when it arrived.
    pub async fn wait_for(&self, from: usize, lines: &[&str], limit: Duration) -> (usize, Instant) {
        let start = Instant::now();
        loop {
            let found = self
                .messages()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| lines.iter().all(|l| m.lines().any(|have| have == *l)));
            if let Some((i, (at, _))) = found {
                return (i, at);
            }
            assert!(
                start.elapsed() < limit,
                "no notification with {lines:?} within {limit:?}; got {:?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
