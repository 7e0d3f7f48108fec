//! The JSON access log: one line per request, written by a dedicated thread so the proxy
//! never blocks on stdout or disk. Lines are handed over through a bounded channel; when
//! the writer falls behind, lines are dropped and counted rather than slowing requests.
//!
//! The writer thread starts with the first line, not when the log is opened: the config
//! is loaded before Pingora daemonizes, and a thread started before the fork would not
//! exist in the daemon.
//!
//! Log rotation: [`reopen_all`] (SIGUSR1) makes each writer reopen its file by path, so
//! logrotate can rename the file and signal instead of copying and truncating it (which
//! loses the lines written in between).
//!
//! A process that exits drains every queue first ([`flush_all`]): the lines queued before
//! the call are written and flushed, so a graceful stop loses no access-log line.

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::metrics::METRICS;

/// One access-log line. Fields borrow from the request context: nothing is copied to log.
#[derive(Debug)]
pub struct Record<'a> {
    pub timestamp: Timestamp,
    pub request_id: &'a str,
    pub traceparent: Option<&'a str>,
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
    /// Written in milliseconds with three decimals (microsecond resolution).
    pub total: Duration,
    pub upstream_time: Option<Duration>,
    pub attempts: u32,
    /// Omitted from the line when `None`.
    pub error: Option<&'a str>,
    /// The coding the gateway compressed the response body with (`response_bytes` counts
    /// the compressed bytes); omitted when it did not.
    pub compression: Option<&'static str>,
    /// The `grpc-status` of a gRPC call; omitted for other requests (and for a call that
    /// ended without one).
    pub grpc_status: Option<u8>,
    /// How the route's cache answered (`hit`, `miss`, `stale`, …); omitted on routes
    /// without a cache.
    pub cache: Option<&'a str>,
}

impl Record<'_> {
    /// The record as one JSON object (no newline). Written by hand rather than through
    /// serde: the member names are constants, so only values are escaped, and the line
    /// costs about half of what serde_json's generic path did on the logged request path.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(self.timestamp.as_str().as_bytes());
        out.extend_from_slice(b"\",\"request_id\":");
        json::string(out, self.request_id);
        out.extend_from_slice(b",\"traceparent\":");
        json::opt_string(out, self.traceparent);
        out.extend_from_slice(b",\"client\":");
        match self.client {
            Some(ip) => {
                // An address has no character JSON escapes.
                out.push(b'"');
                super::write_ip(out, ip);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        json::string(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json::string(out, self.path);
        for (name, value) in [
            (&b",\"host\":"[..], self.host),
            (b",\"route\":", self.route),
            (b",\"version\":", self.version),
            (b",\"cluster\":", self.cluster),
            (b",\"upstream\":", self.upstream),
        ] {
            out.extend_from_slice(name);
            json::opt_string(out, value);
        }
        for (name, value) in [
            (&b",\"status\":"[..], u64::from(self.status)),
            (b",\"request_bytes\":", self.request_bytes as u64),
            (b",\"response_bytes\":", self.response_bytes as u64),
        ] {
            out.extend_from_slice(name);
            json::uint(out, value);
        }
        out.extend_from_slice(b",\"total_ms\":");
        json::millis(out, self.total);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_time {
            Some(d) => json::millis(out, d),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"attempts\":");
        json::uint(out, u64::from(self.attempts));
        if let Some(cache) = self.cache {
            out.extend_from_slice(b",\"cache\":");
            json::string(out, cache);
        }
        if let Some(error) = self.error {
            out.extend_from_slice(b",\"error\":");
            json::string(out, error);
        }
        if let Some(coding) = self.compression {
            out.extend_from_slice(b",\"compression\":");
            json::string(out, coding);
        }
        if let Some(code) = self.grpc_status {
            out.extend_from_slice(b",\"grpc_status\":");
            json::uint(out, u64::from(code));
        }
        out.push(b'}');
    }
}

/// The few JSON value writers an access-log line needs.
mod json {
    use std::time::Duration;

    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        let mut rest = s.as_bytes();
        loop {
            let clean = clean_prefix(rest);
            out.extend_from_slice(&rest[..clean]);
            let Some((&b, tail)) = rest[clean..].split_first() else {
                break;
            };
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                _ => {
                    let mut hex = [0u8; 2];
                    crate::observe::write_hex(&mut hex, &[b]);
                    out.extend_from_slice(b"\\u00");
                    out.extend_from_slice(&hex);
                }
            }
            rest = tail;
        }
        out.push(b'"');
    }

    /// How many leading bytes need no escaping: eight at a time while none of them is a
    /// control character, a quote or a backslash, then one by one.
    fn clean_prefix(bytes: &[u8]) -> usize {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        // Whether some byte of `x` is below `n` (n <= 0x80); a zero byte is one below 1.
        let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS != 0;
        let mut i = 0;
        while let Some(chunk) = bytes.get(i..i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if below(x, 0x20) || below(x ^ (ONES * 0x22), 1) || below(x ^ (ONES * 0x5c), 1) {
                break;
            }
            i += 8;
        }
        while i < bytes.len() && !matches!(bytes[i], 0..=0x1f | b'"' | b'\\') {
            i += 1;
        }
        i
    }

    pub fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => string(out, s),
            None => out.extend_from_slice(b"null"),
        }
    }

    pub fn uint(out: &mut Vec<u8>, n: u64) {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    /// `d` in milliseconds with three decimals, e.g. `12.034`.
    pub fn millis(out: &mut Vec<u8>, d: Duration) {
        let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
        uint(out, micros / 1000);
        out.push(b'.');
        out.extend_from_slice(&three_digits((micros % 1000) as u16));
    }

    /// `n` (below 1000) as exactly three decimal digits, e.g. `034`.
    pub fn three_digits(n: u16) -> [u8; 3] {
        [
            b'0' + (n / 100 % 10) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ]
    }
}

/// An RFC 3339 UTC time with milliseconds (`2026-11-25T18:33:15.123Z`), kept on the stack.
/// The part up to the second is rendered once per second per thread and reused.
#[derive(Clone, Copy)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::at(SystemTime::now())
    }

    pub fn at(time: SystemTime) -> Timestamp {
        thread_local! {
            /// The last second rendered, and its `YYYY-MM-DDTHH:MM:SS` text.
            static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
        }
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since.as_secs();
        let prefix = SECOND.with(|cached| {
            let (second, text) = cached.get();
            if second == seconds {
                return text;
            }
            let mut text = [0u8; 19];
            let rendered =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds));
            // `YYYY-MM-DDTHH:MM:SSZ`; the Z is written after the milliseconds instead.
            let _ = write!(&mut text[..], "{rendered}");
            cached.set((seconds, text));
            text
        });
        let mut out = [0u8; 24];
        out[..19].copy_from_slice(&prefix);
        out[19] = b'.';
        out[20..23].copy_from_slice(&json::three_digits(since.subsec_millis() as u16));
        out[23] = b'Z';
        Timestamp(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and punctuation are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// The receiving end of the line queue, the output it goes to, and the file behind it
/// (none for stdout) with the [`REOPEN_GENERATION`] it was opened in: a rotation before the
/// writer thread starts is noticed too.
type PendingWriter = (Receiver<Msg>, Box<dyn Write + Send>, Option<(PathBuf, u64)>);

/// Bumped by [`reopen_all`]; each writer thread reopens its file when it sees a new value.
static REOPEN_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Makes every access log of the process reopen its file by path (SIGUSR1, after logrotate
/// renamed it): lines queued until then go to the renamed file, the following ones to a new
/// file at the configured path, so a rotation loses none. Takes effect within a drain
/// interval of the writer threads.
pub fn reopen_all() {
    REOPEN_GENERATION.fetch_add(1, Ordering::SeqCst);
}

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
            if let Some((receiver, out, file)) = taken {
                let spawned = std::thread::Builder::new()
                    .name("portico-access-log".into())
                    .spawn(move || write_lines(receiver, out, file));
                if let Err(e) = spawned {
                    log::error!("cannot start the access log writer: {e}");
                }
            }
        });
    }
}

fn open_for_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Lines buffered between the proxy and the writer thread.
const QUEUE_LINES: usize = 64 * 1024;

impl AccessLog {
    /// `target` is `stdout`, `off`, or a file path opened for appending.
    pub fn open(target: &str, success_sample_ratio: f64) -> std::io::Result<AccessLog> {
        let generation = REOPEN_GENERATION.load(Ordering::SeqCst);
        let (out, file): (Box<dyn Write + Send>, _) = match target {
            "off" => return Ok(AccessLog::off()),
            "stdout" => (Box::new(std::io::stdout()), None),
            path => (
                Box::new(open_for_append(Path::new(path))?),
                Some((path.into(), generation)),
            ),
        };
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        let sink = Arc::new(Sink {
            sender,
            writer: Mutex::new(Some((receiver, out, file))),
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
        record.write_json(&mut line);
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
fn write_lines(receiver: Receiver<Msg>, out: Box<dyn Write + Send>, file: Option<(PathBuf, u64)>) {
    use std::sync::mpsc::TryRecvError;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let (path, mut generation) = match file {
        Some((path, generation)) => (Some(path), generation),
        None => (None, 0),
    };
    loop {
        let wanted = REOPEN_GENERATION.load(Ordering::SeqCst);
        if let (Some(path), true) = (&path, wanted != generation) {
            generation = wanted;
            // Everything written so far ends in the old (renamed) file.
            let _ = out.flush();
            match open_for_append(path) {
                Ok(file) => out = std::io::BufWriter::with_capacity(64 * 1024, Box::new(file)),
                // Keep writing to the old file rather than losing lines.
                Err(e) => log::error!(
                    "cannot reopen the access log {}: {e}; still writing to the old file",
                    path.display()
                ),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(path: &'a str, host: Option<&'a str>, error: Option<&'a str>) -> Record<'a> {
        Record {
            timestamp: Timestamp::at(UNIX_EPOCH + Duration::from_millis(1_764_095_595_007)),
            request_id: "abc-1",
            traceparent: None,
            client: Some("2001:db8::1".parse().unwrap()),
            method: "GET",
            path,
            host,
            route: Some("orders"),
            version: None,
            cluster: Some("orders-v1"),
            upstream: Some("127.0.0.1:8080"),
            status: 200,
            request_bytes: 0,
            response_bytes: 18_446,
            total: Duration::from_micros(12_034),
            upstream_time: Some(Duration::from_micros(999)),
            attempts: 1,
            error,
            compression: None,
            grpc_status: None,
            cache: None,
        }
    }

    #[test]
    fn grpc_status_is_written_only_for_grpc_calls() {
        let plain = parsed(&record("/a", None, None));
        assert!(plain.get("grpc_status").is_none());
        let mut call = record("/pkg.Svc/Get", None, None);
        call.grpc_status = Some(14);
        assert_eq!(parsed(&call)["grpc_status"], 14);
    }

    fn parsed(record: &Record<'_>) -> serde_json::Value {
        let mut line = Vec::new();
        record.write_json(&mut line);
        serde_json::from_slice(&line).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&line));
        })
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let v = parsed(&record("/orders/7", Some("api.example"), None));
        assert_eq!(
            v,
            serde_json::json!({
                "timestamp": "2025-11-25T18:33:15.007Z",
                "request_id": "abc-1",
                "traceparent": null,
                "client": "2001:db8::1",
                "method": "GET",
                "path": "/orders/7",
                "host": "api.example",
                "route": "orders",
                "version": null,
                "cluster": "orders-v1",
                "upstream": "127.0.0.1:8080",
                "status": 200,
                "request_bytes": 0,
                "response_bytes": 18446,
                "total_ms": 12.034,
                "upstream_ms": 0.999,
                "attempts": 1,
            })
        );
        let v = parsed(&record("/", None, Some("upstream_timeout")));
        assert_eq!(v["error"], "upstream_timeout");
        let v = parsed(&Record {
            compression: Some("br"),
            ..record("/", None, None)
        });
        assert_eq!(v["compression"], "br");
        assert_eq!(v["host"], serde_json::Value::Null);
    }

    #[test]
    fn strings_are_escaped() {
        let nasty = "a\"b\\c\nd\re\tf\u{1}g\u{1f}h é ✓ \u{7f}";
        let v = parsed(&record("/p", Some(nasty), None));
        assert_eq!(v["host"], nasty);
        // Each character that needs escaping at each place of an eight-byte chunk, and
        // long clean runs around it.
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
            for at in 0..20 {
                let mut s: String = "x".repeat(at);
                s.push(special);
                s.push_str("0123456789abcdefé!");
                let v = parsed(&record(&s, None, None));
                assert_eq!(v["path"], s.as_str());
            }
        }
        let clean = "/orders/0123456789/items?page=2";
        let mut out = Vec::new();
        json::string(&mut out, clean);
        assert_eq!(out, format!("\"{clean}\"").as_bytes());
    }

    fn lines_in(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_from_several_threads_are_all_written_by_a_flush_or_a_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open(path.to_str().unwrap(), 1.0).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let log = log.clone();
                scope.spawn(move || {
                    for i in 0..500 {
                        let id = format!("{t}-{i}");
                        let mut r = record("/p", None, None);
                        r.request_id = &id;
                        log.write(&r);
                    }
                });
            }
        });
        assert!(flush_all(Duration::from_secs(5)));
        let lines = lines_in(&path);
        assert_eq!(lines.len(), 2000);
        let mut ids: Vec<_> = lines.iter().map(|l| l["request_id"].to_string()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 2000, "every line once, none torn");

        // A replaced log (its last handle dropped) writes what it took, then its writer ends.
        log.write(&record("/last", None, None));
        drop(log);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines_in(&path).len() < 2001 {
            assert!(Instant::now() < deadline, "the last line was not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(lines_in(&path)[2000]["path"], "/last");
    }

    #[test]
    fn timestamps_match_rfc3339_with_milliseconds() {
        for millis in [0u64, 999, 1_000, 1_764_095_595_007, 4_102_444_799_999] {
            let at = UNIX_EPOCH + Duration::from_millis(millis);
            let expected = humantime::format_rfc3339_millis(at).to_string();
            // Twice: rendered, then from the per-thread cache of the second.
            assert_eq!(Timestamp::at(at).as_str(), expected);
            assert_eq!(Timestamp::at(at).as_str(), expected);
        }
    }
}
