//! systemd's notification protocol (`sd_notify`), shared by the gateway and the token
//! service: one datagram of `KEY=value` lines to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), and the watchdog
//! period systemd asks for. Without the variable every call does nothing, so the same
//! binary runs under any supervisor or none. What each service sends when is documented
//! where it sends it (the gateway's `runtime::notify`, the token service's server).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

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
