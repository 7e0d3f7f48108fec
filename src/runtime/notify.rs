//! The service manager's notification protocol (systemd's `sd_notify`), so a `Type=notify`
//! unit knows when the gateway really serves, reloads and stops, which process is the main
//! one after a graceful upgrade, and whether the proxy still makes progress (watchdog).
//!
//! The protocol is one datagram of `KEY=value` lines sent to the unix socket named by
//! `$NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace. Without the variable
//! every call here does nothing, so the same binary runs under any supervisor or none.
//!
//! What is sent when:
//! - `MAINPID=<pid>` as soon as the supervisor starts: after a graceful upgrade the new
//!   process announces itself (the unit's `NotifyAccess=all` lets a process other than the
//!   main one do so), well before the old one exits, so systemd follows the new process
//!   instead of ending the service when the old main process goes;
//! - `READY=1` once every listener accepts connections and the first health-check round of
//!   every cluster is over (the moment `/readyz` turns 200);
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a config reload starts, `READY=1` when it is
//!   in effect or refused (`STATUS=` says which);
//! - `STOPPING=1` when a graceful stop (SIGTERM) begins to drain. Not on the hand-off of a
//!   graceful upgrade: systemd would take that for the whole service stopping;
//! - `WATCHDOG=1` every quarter of `$WATCHDOG_USEC`, from the proxy's runtime, see
//!   [`WatchdogFed`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ListenFds;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::Service;
use pingora_runtime::RuntimeOpts;

pub use portico_common::sd_notify::{notify, watchdog_timeout};

use super::State;

/// This process is (now) the service's main process.
pub fn main_pid() {
    notify(&format!(
        "MAINPID={}\nSTATUS=starting: waiting for the listeners and the first health checks",
        std::process::id()
    ));
}

/// The gateway serves: listeners accept, clusters were probed.
pub fn ready() {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving",
        std::process::id()
    ));
}

/// A config reload begins. systemd wants the monotonic clock with it, to tell this reload
/// from an earlier one.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
        monotonic_usec()
    ));
}

/// The reload is over, applied or refused: serving either way.
pub fn reloaded(result: &Result<String, String>) {
    let status = match result {
        Ok(version) => format!("serving config {version}"),
        Err(_) => "serving the previous config: the last reload was refused".to_string(),
    };
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// A graceful stop drains the requests in flight.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining the requests in flight");
}

/// Free text shown by `systemctl status`.
pub fn status(text: &str) {
    notify(&format!("STATUS={text}"));
}

fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// The proxy service, with the systemd watchdog fed from inside its runtime.
///
/// Why there: the proxy runs on its own worker threads (by default one single-threaded
/// runtime per thread, see `server.work_stealing`). A ping from the supervisor's runtime or
/// a plain thread would go on while every proxy worker is stuck (a blocking call, a busy
/// loop, a deadlock), and systemd would never restart the hung gateway. So the pinging task
/// runs on a proxy worker, and before each ping it sends an empty task to every one of the
/// proxy's worker runtimes and pings only when all of them ran it within the period: one
/// wedged worker, which still holds its own connections, is enough to stop the pings, and
/// after `WatchdogSec=` systemd kills and restarts the service. Pings stop too once the
/// process drains (after a graceful upgrade the new process feeds the watchdog).
pub struct WatchdogFed<S> {
    service: S,
    state: Arc<State>,
    /// The number of worker threads the service runs on (Pingora's `threads`).
    threads: usize,
}

impl<S> WatchdogFed<S> {
    pub fn new(service: S, state: Arc<State>, threads: usize) -> WatchdogFed<S> {
        WatchdogFed {
            service,
            state,
            threads,
        }
    }
}

#[async_trait]
impl<S: Service> Service for WatchdogFed<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(timeout) = watchdog_timeout() {
            let workers = worker_runtimes(self.threads);
            log::info!(
                "feeding the systemd watchdog ({timeout:?}) once all {} proxy worker runtime(s) answer",
                workers.len()
            );
            pingora_runtime::current_handle().spawn(feed_watchdog(
                workers,
                timeout,
                self.state.clone(),
            ));
        }
        self.service
            .start_service(fds, shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.service.name()
    }

    fn threads(&self) -> Option<usize> {
        self.service.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.service.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.service.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.service.listen_addresses()
    }
}

/// Every runtime of the current Pingora service: one per thread without work stealing,
/// else the one multi-threaded runtime. Pingora hands out a random one of its pool on each
/// `current_handle`, so ask until all `threads` were seen (or give up with what was found).
fn worker_runtimes(threads: usize) -> Vec<tokio::runtime::Handle> {
    let mut found: Vec<tokio::runtime::Handle> = Vec::new();
    for _ in 0..threads.max(1) * 256 {
        let handle = pingora_runtime::current_handle();
        if !found.iter().any(|h| h.id() == handle.id()) {
            found.push(handle);
            if found.len() >= threads.max(1) {
                break;
            }
        }
    }
    found
}

async fn feed_watchdog(workers: Vec<tokio::runtime::Handle>, timeout: Duration, state: Arc<State>) {
    // Four chances per timeout: one slow round does not cost a restart, a stuck worker does.
    let period = (timeout / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stuck_reported = false;
    loop {
        tick.tick().await;
        if state.is_draining() {
            return;
        }
        let probes = workers.iter().map(|w| w.spawn(async {}));
        let answered = tokio::time::timeout(period, futures::future::join_all(probes)).await;
        if answered.is_ok_and(|all| all.iter().all(Result::is_ok)) {
            notify("WATCHDOG=1");
            stuck_reported = false;
        } else if !stuck_reported {
            log::error!(
                "a proxy worker thread did not run a task within {period:?}: not feeding the systemd watchdog"
            );
            stuck_reported = true;
        }
    }
}
