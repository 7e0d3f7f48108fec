//! The JSON access log: one line per request, written by a dedicated thread so the proxy
//! never blocks on stdout or disk. Lines are handed over through a bounded channel; when
//! the writer falls behind, lines are dropped and counted rather than slowing requests.
//!
//! The writer thread starts with the first line, not when the log is opened: the config
//! is loaded before Pingora daemonizes, and a thread started before the fork would not
//! exist in the daemon.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Once};

use serde::Serialize;

use super::metrics::METRICS;

/// One access-log line. Fields borrow from the request context: nothing is copied to log.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    pub request_id: &'a str,
    pub traceparent: Option<String>,
    pub client: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub route: Option<&'a str>,
    pub version: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub status: u16,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub total_ms: f64,
    pub upstream_ms: Option<f64>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// Where lines go.
#[derive(Clone)]
pub struct AccessLog {
    sink: Option<Arc<Sink>>,
    success_sample_ratio: f64,
}

/// The receiving end of the line queue and the output it goes to.
type PendingWriter = (Receiver<Vec<u8>>, Box<dyn Write + Send>);

struct Sink {
    sender: SyncSender<Vec<u8>>,
    /// Until the writer thread takes it.
    writer: Mutex<Option<PendingWriter>>,
    start: Once,
}

impl Sink {
    fn ensure_writer(&self) {
        self.start.call_once(|| {
            let taken = self.writer.lock().ok().and_then(|mut w| w.take());
            if let Some((receiver, out)) = taken {
                let spawned = std::thread::Builder::new()
                    .name("portico-access-log".into())
                    .spawn(move || write_lines(receiver, out));
                if let Err(e) = spawned {
                    log::error!("cannot start the access log writer: {e}");
                }
            }
        });
    }
}

/// Lines buffered between the proxy and the writer thread.
const QUEUE_LINES: usize = 64 * 1024;

impl AccessLog {
    /// `target` is `stdout`, `off`, or a file path opened for appending.
    pub fn open(target: &str, success_sample_ratio: f64) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            "off" => return Ok(AccessLog::off()),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        Ok(AccessLog {
            sink: Some(Arc::new(Sink {
                sender,
                writer: Mutex::new(Some((receiver, out))),
                start: Once::new(),
            })),
            success_sample_ratio,
        })
    }

    /// A log that drops everything.
    pub fn off() -> AccessLog {
        AccessLog {
            sink: None,
            success_sample_ratio: 0.0,
        }
    }

    /// Whether a request with this status is logged: errors always, the rest sampled.
    pub fn wants(&self, status: u16) -> bool {
        if self.sink.is_none() {
            return false;
        }
        if status >= 400 || status == 0 || self.success_sample_ratio >= 1.0 {
            return true;
        }
        self.success_sample_ratio > 0.0 && rand::random::<f64>() < self.success_sample_ratio
    }

    pub fn write(&self, record: &Record<'_>) {
        let Some(sink) = &self.sink else { return };
        sink.ensure_writer();
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        match sink.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.access_log_dropped.inc()
            }
        }
    }
}

/// Writes lines as they come, flushing whenever the queue runs empty so lines show up
/// promptly at low traffic and in batches at high traffic.
fn write_lines(receiver: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = receiver.recv() {
        let _ = out.write_all(&line);
        while let Ok(more) = receiver.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
