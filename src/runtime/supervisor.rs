//! The background service that runs beside the listeners: starts active health checks,
//! declares the gateway ready once its listeners accept connections and every cluster had
//! its first health-check round (and tells systemd, see [`super::notify`]), reloads the
//! config on SIGHUP (and when the file changes, with `watch_config`), reopens the log files
//! on SIGUSR1 (log rotation), and ends the process once a graceful stop or upgrade has
//! drained.
//!
//! Pingora itself, after SIGTERM (or after handing the listening sockets to a new process on
//! SIGQUIT), stops accepting and then sleeps the whole grace period before it stops its
//! runtimes, however few requests are left. The supervisor instead watches the requests in
//! flight and exits as soon as they are done (bounded by `graceful_shutdown_timeout_seconds`
//! after SIGTERM, `grace_period_seconds` after an upgrade), after flushing the access log.
//! While draining, `/readyz` answers 503 and responses carry `Connection: close`, so
//! keep-alive clients move to the new process (or away) between requests instead of having
//! an idle connection closed under them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

use super::watch::ConfigWatch;
use super::State;
use crate::observe::metrics::METRICS;

/// Why the process is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// SIGTERM: stop.
    Terminate,
    /// SIGQUIT: the listening sockets went to a new process.
    Upgrade,
}

pub struct Supervisor {
    state: Arc<State>,
    /// Addresses that must accept connections before `/readyz` says ready.
    listeners: Vec<SocketAddr>,
    /// Pingora's lifecycle events (taken by `start`).
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

impl Supervisor {
    pub fn new(
        state: Arc<State>,
        listeners: Vec<SocketAddr>,
        phases: broadcast::Receiver<ExecutionPhase>,
    ) -> Supervisor {
        Supervisor {
            state,
            listeners,
            phases: Mutex::new(Some(phases)),
        }
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let ending = Arc::new(Mutex::new(Ending::Terminate));
        if let Some(phases) = self.phases.lock().ok().and_then(|mut p| p.take()) {
            tokio::spawn(watch_phases(phases, self.state.clone(), ending.clone()));
        }

        // Before anything slow: the process of a graceful upgrade takes the service over
        // from the old main process while that one still serves.
        super::notify::main_pid();
        // SIGUSR1 would end the process by default: take it over early.
        let mut reopen_logs = match signal(SignalKind::user_defined1()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot watch SIGUSR1, log files are not reopened on rotation: {e}");
                None
            }
        };

        // Endpoints start healthy: a starting process (a graceful upgrade's new one too)
        // serves at once; readiness waits for the first probe round (bounded by the
        // checks' timeouts), so a service manager learns the state of the upstreams too.
        let snapshot = self.state.snapshot();
        let first_rounds: Vec<_> = snapshot
            .clusters
            .values()
            .filter_map(|cluster| crate::upstream::spawn_health_checks(cluster, false))
            .collect();
        // Clusters with an endpoints file watch it from now on.
        for cluster in snapshot.clusters.values() {
            crate::upstream::spawn_discovery(cluster);
        }
        drop(snapshot);
        let listening_and_probed = async {
            wait_for_listeners(&self.listeners).await;
            futures::future::join_all(first_rounds.into_iter().map(|r| r.wait())).await;
        };
        tokio::select! {
            _ = listening_and_probed => {
                if !self.state.is_draining() {
                    self.state.set_ready(true);
                    super::notify::ready();
                    log::info!("portico is ready (pid {})", std::process::id());
                }
            }
            _ = shutdown.changed() => {}
        }

        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot watch SIGHUP, reload only through the admin API: {e}");
                None
            }
        };
        tokio::spawn(watch_file(self.state.clone()));
        // The admin console's last-minute numbers and "what changed" list.
        let state = self.state.clone();
        tokio::spawn(crate::observe::window::sample_forever(move || {
            state.snapshot()
        }));
        while !*shutdown.borrow() {
            tokio::select! {
                _ = shutdown.changed() => {}
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    log::info!("SIGHUP: reloading config");
                    let _ = super::reload(&self.state).await;
                }
                Some(()) = async { match reopen_logs.as_mut() { Some(s) => s.recv().await, None => None } } => {
                    log::info!("SIGUSR1: reopening the access log files");
                    crate::observe::access_log::reopen_all();
                }
            }
        }

        self.state.set_draining();
        let ending = *ending.lock().unwrap_or_else(|e| e.into_inner());
        drain_and_exit(&self.state, ending).await;
    }
}

/// Polls the config file while `watch_config` is on (a reload can turn it on or off), until
/// the process drains.
async fn watch_file(state: Arc<State>) {
    let mut file_watch = ConfigWatch::default();
    let mut poll = tokio::time::interval(super::watch::POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        if state.is_draining() {
            return;
        }
        if state.snapshot().config.server.watch_config {
            file_watch.poll(&state).await;
        }
    }
}

/// Follows Pingora's execution phases: draining starts with SIGTERM, or with SIGQUIT when
/// the sockets are handed over (a few seconds before Pingora stops accepting).
async fn watch_phases(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    state: Arc<State>,
    ending: Arc<Mutex<Ending>>,
) {
    loop {
        let kind = match phases.recv().await {
            Ok(ExecutionPhase::GracefulTerminate) => Ending::Terminate,
            Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => Ending::Upgrade,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let Ok(mut e) = ending.lock() {
            *e = kind;
        }
        match kind {
            Ending::Terminate => super::notify::stopping(),
            // Not STOPPING=1: the service goes on in the new process.
            Ending::Upgrade => {
                super::notify::status("handing the listeners to a new process, then draining")
            }
        }
        if !state.is_draining() {
            log::info!("draining: {kind:?}; new requests are answered with Connection: close");
            state.set_draining();
        }
    }
}

/// Waits for the requests in flight to finish, flushes the access log and exits with 0.
/// A second SIGTERM shortens the wait to `graceful_shutdown_timeout_seconds`; SIGINT ends
/// it at once.
async fn drain_and_exit(state: &State, ending: Ending) -> ! {
    let server = &state.snapshot().config.server;
    let stop_timeout = Duration::from_secs(server.graceful_shutdown_timeout_seconds);
    let budget = match ending {
        Ending::Terminate => stop_timeout,
        Ending::Upgrade => Duration::from_secs(server.grace_period_seconds),
    };
    let started = Instant::now();
    let mut deadline = started + budget;
    log::info!(
        "graceful {}: waiting up to {budget:?} for {} request(s) in flight",
        match ending {
            Ending::Terminate => "stop",
            Ending::Upgrade => "upgrade",
        },
        METRICS.active_requests.get()
    );
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    // Two idle looks in a row: a request read just before the listeners stopped may not
    // have reached the proxy's first phase yet.
    let mut idle_looks = 0;
    loop {
        if METRICS.active_requests.get() <= 0 {
            idle_looks += 1;
            if idle_looks >= 2 {
                break;
            }
        } else {
            idle_looks = 0;
        }
        if Instant::now() >= deadline {
            log::warn!(
                "{} request(s) still in flight after {:?}; exiting anyway",
                METRICS.active_requests.get(),
                started.elapsed()
            );
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            Some(()) = async { match term.as_mut() { Some(s) => s.recv().await, None => None } } => {
                deadline = deadline.min(Instant::now() + stop_timeout);
                log::info!("SIGTERM while draining: exiting within {stop_timeout:?}");
            }
            Some(()) = async { match int.as_mut() { Some(s) => s.recv().await, None => None } } => {
                log::info!("SIGINT while draining: exiting now");
                break;
            }
        }
    }
    // The last responses' final bytes are written after the request is logged.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if !crate::observe::access_log::flush_all(Duration::from_secs(2)) {
        log::warn!("the access log could not be flushed completely");
    }
    log::info!("drained in {:?}; exiting", started.elapsed());
    std::process::exit(0)
}

/// Waits until every listener accepts a TCP connection (they are bound by Pingora's own
/// services, which start concurrently with this one).
async fn wait_for_listeners(addrs: &[SocketAddr]) {
    for addr in addrs {
        let target = match addr.ip() {
            ip if ip.is_unspecified() && addr.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => *addr,
        };
        loop {
            // Accepting is not enough: another process may hold the port while Pingora
            // retries its bind. The listening socket must be one of ours.
            if tokio::net::TcpStream::connect(target).await.is_ok() && listens_here(addr.port()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether this process owns a listening TCP socket on `port`: the socket inodes in
/// LISTEN state on that port (`/proc/net/tcp{,6}`) against this process's open file
/// descriptors. Off Linux, where /proc is missing, it trusts the connect check.
fn listens_here(port: u16) -> bool {
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is field 9.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let listening_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if !readable {
        return true;
    }
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return true;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}
