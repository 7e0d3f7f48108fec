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

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ListenFds;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::Service;
use pingora_runtime::RuntimeOpts;

use super::State;

/// Sends `message` (newline-separated `KEY=value` assignments) to the service manager.
/// Returns whether it was sent; false without `$NOTIFY_SOCKET`. A failure is logged, never
/// fatal: the gateway serves whether or not systemd hears about it.
pub fn notify(message: &str) -> bool {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match send(&target, message) {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "cannot notify the service manager at {}: {e}",
                target.to_string_lossy()
            );
            false
        }
    }
}

fn send(target: &OsStr, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &address)?;
    } else if bytes.starts_with(b"/") {
        socket.send_to(message.as_bytes(), target)?;
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an @abstract name",
        ));
    }
    Ok(())
}

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

/// The watchdog timeout systemd enforces on this process (`WatchdogSec=`), if any.
/// `$WATCHDOG_PID`, when present, must name this process: a variable inherited by another
/// process is not its watchdog. (`portico-upgrade` hands `WATCHDOG_USEC` to the process of a
/// graceful upgrade, without a pid, since that process announces itself as the main one.)
pub fn watchdog_timeout() -> Option<Duration> {
    watchdog_timeout_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_timeout_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_belongs_to_the_pid_it_names() {
        assert_eq!(
            watchdog_timeout_from(Some("2000000"), None, 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_timeout_from(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog_timeout_from(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout_from(None, None, 7), None);
    }

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("portico-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        send(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        assert!(send(OsStr::new("relative"), "READY=1").is_err());
    }
}
