//! The process log under systemd's journal: when stderr is the journal's stream, each line
//! starts with a syslog priority (`<3>` …), which journald strips and records, so
//! `journalctl -p err` lists the gateway's real errors.
//!
//! Errors the client caused (a connection dropped or garbled before a request was read,
//! which Pingora logs as `error` with a `Downstream` source) are an ordinary event for a
//! gateway on the internet: they go in as `notice`, below `warning`, so an alert on `err`
//! does not fire because a client hung up.

use std::os::unix::fs::MetadataExt;

/// Whether stderr is the journal's stream: systemd sets `$JOURNAL_STREAM` to its
/// `device:inode`, which is compared with stderr's own (a redirected stderr inherits the
/// variable but not the stream).
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// The syslog priority of a log record.
pub fn priority(level: log::Level, message: &str) -> u8 {
    match level {
        log::Level::Error if caused_by_client(message) => 5,
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Pingora's proxy errors name their source first: `Fail to proxy: Downstream …`.
fn caused_by_client(message: &str) -> bool {
    message.contains(": Downstream ")
}

/// Writes `text` as journal lines of `priority`: every line carries the prefix, or the
/// journal would record the continuation lines of a multi-line message as `info`.
pub fn write_prefixed(
    out: &mut impl std::io::Write,
    priority: u8,
    text: &str,
) -> std::io::Result<()> {
    for line in text.lines() {
        writeln!(out, "<{priority}>{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_err_unless_the_client_caused_them() {
        assert_eq!(priority(log::Level::Error, "config reload rejected"), 3);
        assert_eq!(
            priority(
                log::Level::Error,
                "Fail to proxy: Downstream ReadError context: …, status: 0"
            ),
            5
        );
        assert_eq!(priority(log::Level::Warn, "x"), 4);
        assert_eq!(priority(log::Level::Info, "x"), 6);
        assert_eq!(priority(log::Level::Debug, "x"), 7);
        let mut out = Vec::new();
        write_prefixed(&mut out, 3, "one\ntwo").unwrap();
        assert_eq!(out, b"<3>one\n<3>two\n");
    }
}
