//! The JSON access log: one line per request, written by a dedicated thread so the proxy
//! never blocks on stdout or disk. Lines are handed over through a bounded channel; when
//! the writer falls behind, lines are dropped and counted rather than slowing requests.
//!
//! The writer thread starts with the first line, not when the log is opened: the config
//! is loaded before Pingora daemonizes, and a thread started before the fork would not
//! exist in the daemon.
//!
//! A process that exits drains every queue first ([`flush_all`]): the lines queued before
//! the call are written and flushed, so a graceful stop loses no access-log line.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::metrics::METRICS;

/// One access-log line. Fields borrow from the request context: nothing is copied to log.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    pub request_id: &'a str,
    pub traceparent: Option<&'a str>,
    /// Serialized as text (serde formats it on the stack).
    pub client: Option<std::net::IpAddr>,
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

/// What goes through a log's queue.
enum Msg {
    Line(Vec<u8>),
    /// Write everything queued before this, flush, then answer.
    Flush(SyncSender<()>),
}

/// The receiving end of the line queue and the output it goes to.
type PendingWriter = (Receiver<Msg>, Box<dyn Write + Send>);

struct Sink {
    sender: SyncSender<Msg>,
    /// Until the writer thread takes it.
    writer: Mutex<Option<PendingWriter>>,
    start: Once,
}

/// Every log opened in this process, for [`flush_all`].
static SINKS: Mutex<Vec<Weak<Sink>>> = Mutex::new(Vec::new());

/// Writes and flushes every access-log line queued so far, in every log of the process,
/// waiting at most `timeout` in all. Returns false when some log did not finish in time.
/// Called before the process exits.
pub fn flush_all(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let sinks: Vec<Arc<Sink>> = match SINKS.lock() {
        Ok(mut all) => {
            all.retain(|w| w.strong_count() > 0);
            all.iter().filter_map(Weak::upgrade).collect()
        }
        Err(_) => return false,
    };
    let mut complete = true;
    for sink in sinks {
        // No line yet means no writer thread and nothing to flush.
        if !sink.start.is_completed() {
            continue;
        }
        let (ack, acked) = sync_channel(1);
        let mut msg = Msg::Flush(ack);
        // The queue may be full; the writer is emptying it.
        loop {
            match sink.sender.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        complete &= acked.recv_timeout(left).is_ok();
    }
    complete
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
        let sink = Arc::new(Sink {
            sender,
            writer: Mutex::new(Some((receiver, out))),
            start: Once::new(),
        });
        if let Ok(mut all) = SINKS.lock() {
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&sink));
        }
        Ok(AccessLog {
            sink: Some(sink),
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
        match sink.sender.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.access_log_dropped.inc()
            }
        }
    }
}

/// How long the writer sleeps between drains of the queue.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// Drains the queue every [`DRAIN_INTERVAL`] and writes in batches. The writer polls
/// rather than blocking on the channel on purpose: a receiver parked on the channel must be
/// woken (a futex call, then a context switch onto the proxy's core) for every line, which
/// cost the logged proxy path about a third of its throughput in the load benchmark; a
/// sleeping one costs the sender nothing.
fn write_lines(receiver: Receiver<Msg>, out: Box<dyn Write + Send>) {
    use std::sync::mpsc::TryRecvError;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        loop {
            match receiver.try_recv() {
                Ok(Msg::Line(line)) => {
                    let _ = out.write_all(&line);
                }
                // Everything queued before it is written by now.
                Ok(Msg::Flush(ack)) => {
                    let _ = out.flush();
                    let _ = ack.try_send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
        std::thread::sleep(DRAIN_INTERVAL);
    }
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
