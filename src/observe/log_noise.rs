//! Errors Pingora logs that are not the gateway's: demoted to `debug` and counted
//! (`portico_pingora_events_total{event}`), so the error log holds what an operator must act
//! on and an attack or a Pingora race does not flood it.
//!
//! - `upstream_reuse_race`: with more than one worker thread, taking a pooled upstream
//!   connection sometimes loses a race with the pool's idle watcher (cloudflare/pingora#998);
//!   Pingora then opens a new connection and nothing fails, but it logs an error each time,
//!   tens a second under load.
//! - `downstream_handshake_failed`: a client's TLS handshake failed or was too slow (including
//!   the ClientHello deadline of `proxy::handshake`); one line per connection from any client
//!   on the internet, which nginx and HAProxy also log below their error level.

use log::{Level, Log, Metadata, Record};

use crate::observe::metrics::METRICS;

/// A logger that passes everything to `inner`, the known Pingora noise as `debug`.
pub struct Demoting<L> {
    inner: L,
}

impl<L: Log> Demoting<L> {
    pub fn new(inner: L) -> Demoting<L> {
        Demoting { inner }
    }
}

impl<L: Log> Log for Demoting<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        let Some(event) = noise(record) else {
            return self.inner.log(record);
        };
        METRICS.pingora_events.with_label_values(&[event]).inc();
        self.inner.log(
            &Record::builder()
                .args(*record.args())
                .level(Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Which known event `record` is, if it is one.
fn noise(record: &Record) -> Option<&'static str> {
    if record.level() != Level::Error {
        return None;
    }
    let target = record.target();
    if target.starts_with("pingora_core::connectors")
        && record.args().as_str() == Some("failed to acquire reusable stream")
    {
        return Some("upstream_reuse_race");
    }
    if target.starts_with("pingora_core::services::listening")
        && record
            .args()
            .to_string()
            .starts_with("Downstream handshake")
    {
        return Some("downstream_handshake_failed");
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what reaches it.
    #[derive(Default)]
    struct Seen(Mutex<Vec<(Level, String)>>);

    impl Log for Seen {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, record: &Record) {
            let line = (record.level(), record.args().to_string());
            self.0.lock().unwrap().push(line);
        }
        fn flush(&self) {}
    }

    fn send(logger: &Demoting<Seen>, level: Level, target: &str, args: std::fmt::Arguments) {
        logger.log(
            &Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build(),
        );
    }

    #[test]
    fn pingora_noise_is_debug_and_counted_the_rest_passes_unchanged() {
        let logger = Demoting::new(Seen::default());
        let races = || {
            METRICS
                .pingora_events
                .with_label_values(&["upstream_reuse_race"])
                .get()
        };
        let before = races();
        let addr = "192.0.2.7:4431";
        send(
            &logger,
            Level::Error,
            "pingora_core::connectors",
            format_args!("failed to acquire reusable stream"),
        );
        send(
            &logger,
            Level::Error,
            "pingora_core::services::listening",
            format_args!("Downstream handshake error from {addr}: ReadTimedout"),
        );
        send(
            &logger,
            Level::Error,
            "pingora_core::services::listening",
            format_args!("Accept() failed Too many open files"),
        );
        send(
            &logger,
            Level::Error,
            "portico::runtime",
            format_args!("failed to acquire reusable stream"),
        );
        let seen = logger.inner.0.lock().unwrap().clone();
        let levels: Vec<Level> = seen.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            levels,
            [Level::Debug, Level::Debug, Level::Error, Level::Error],
            "{seen:?}"
        );
        assert_eq!(
            seen[1].1,
            "Downstream handshake error from 192.0.2.7:4431: ReadTimedout"
        );
        assert!(races() > before);
    }
}
