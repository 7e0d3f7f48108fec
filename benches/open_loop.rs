//! An open-loop (constant-rate) HTTP/1.1 load generator: latency at a fixed request rate,
//! corrected for coordinated omission, for `benches/load/latency.sh` and, with a request mix
//! and per-window reports, for the soak of `benches/soak/soak.sh`.
//!
//! wrk keeps a fixed number of requests in flight and sends the next one only when an
//! answer comes back (a closed loop): a server that stalls for 50 ms is simply sent fewer
//! requests during the stall, and the stall shows up in one sample per connection instead
//! of in the 500 requests a real client at 10k req/s would have been kept waiting. Here
//! request `i` is *scheduled* at `start + i / rate` whatever the server does, and its latency
//! is measured from that scheduled instant: time spent waiting for a free connection, or
//! behind the generator's own timer, counts.
//!
//! ```text
//! cargo build --release --bench open_loop      # binary: target/release/deps/open_loop-*
//! open_loop --url http://127.0.0.1:PORT/path --rate 10000 --duration 10 --connections 64 \
//!     [--header 'Name: value']... [--warmup 2] [--per-second] [--json] [--timeout 10] \
//!     [--mix FILE] [--window SECONDS]
//! ```
//!
//! `--mix FILE` replaces the one request of `--url` and `--header` by several *classes* sent to
//! the same host in a fixed weighted interleaving, each with the statuses it must get (a JSON
//! array of `{"name", "weight", "path", "headers": [...], "expect": [401]}`; no `expect` means
//! any 2xx). `{seq}` in a header value becomes the request's sequence number (8 base64url
//! characters), so that such a request is never sent twice. An answer outside its class's
//! statuses counts as `unexpected`, and the first few per class and window are printed to
//! stderr with the head of the response. `--window SECONDS` adds per-window figures (latency,
//! statuses per class, errors) to the report and prints a progress line per window to
//! stderr. A request whose reused keep-alive connection turns out closed before any byte of
//! the answer (the server closed it while idle, as a draining server does) is sent again
//! once on a new connection, as HTTP clients do for idempotent requests; such resends are
//! counted as `stale_retries`, not as failures, and their latency still runs from the first
//! scheduled send.
//!
//! Run by `cargo bench` (which passes `--bench`) it only says what it is for and exits.
//!
//! One thread (tokio's current-thread runtime), so that the generator takes one core and
//! its cost is known; a timerfd paces the schedule with nanosecond expiry (tokio's own timer
//! has a 1 ms granularity, a whole 10 request slots at 10k req/s), and a small hand-written
//! HTTP/1.1 client speaks to a fixed pool of keep-alive connections.
//!
//! Exit status: 0 when the run kept the schedule; 3 when the achieved rate fell under 95 %
//! of the target (the report is printed, flagged `behind`: its latencies describe a run
//! that did not happen at the asked rate); 1 on bad arguments or when the pool cannot be
//! opened. The JSON fields are listed on `Report::to_json` and in benches/load/README.md.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const USAGE: &str =
    "usage: open_loop --url http://HOST:PORT/PATH --rate REQ_PER_S --duration SECONDS \
--connections N [--header 'Name: value']... [--warmup SECONDS (2)] [--per-second] [--json] \
[--timeout SECONDS (10)] [--mix FILE] [--window SECONDS]";

/// Share of the target rate under which the run is flagged as behind.
const BEHIND_RATIO: f64 = 0.95;
/// Histograms hold 1 µs .. 100 s at 3 significant digits (0.1 %).
const HIST_LOW_NS: u64 = 1_000;
const HIST_HIGH_NS: u64 = 100_000_000_000;
/// Unexpected answers and failures printed per class and window, at most.
const SAMPLES_PER_WINDOW: u64 = 5;
/// Bytes of an unexpected answer printed with its sample.
const SAMPLE_BYTES: usize = 400;
/// The placeholder of a header value that becomes the request's sequence number.
const SEQ: &str = "{seq}";

/// One kind of request: what is sent, and which answers are right for it.
struct Class {
    name: String,
    /// The request, split where its sequence number goes (one part when it has none).
    parts: Vec<Vec<u8>>,
    /// The statuses it must get; empty means any 2xx.
    expect: Vec<u16>,
}

impl Class {
    fn expects(&self, status: u16) -> bool {
        if self.expect.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect.contains(&status)
        }
    }

    /// The bytes of request `seq`: borrowed when the class has no placeholder.
    fn request(&self, seq: u64) -> std::borrow::Cow<'_, [u8]> {
        if self.parts.len() == 1 {
            return std::borrow::Cow::Borrowed(&self.parts[0]);
        }
        let digits = seq_digits(seq);
        let mut out = Vec::with_capacity(self.parts.iter().map(Vec::len).sum::<usize>() + 16);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(&digits);
            }
            out.extend_from_slice(part);
        }
        std::borrow::Cow::Owned(out)
    }
}

/// A sequence number as 8 base64url characters (48 bits, least significant first).
fn seq_digits(mut seq: u64) -> [u8; 8] {
    const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = [0u8; 8];
    for d in &mut out {
        *d = B64URL[(seq % 64) as usize];
        seq /= 64;
    }
    out
}

/// A class as a `--mix` file describes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassSpec {
    name: String,
    #[serde(default = "one")]
    weight: u32,
    path: String,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expect: Vec<u16>,
}

fn one() -> u32 {
    1
}

/// `GET path` to `authority` with these headers, split at each `{seq}`.
fn build_request(authority: &str, path: &str, headers: &[String]) -> Result<Vec<Vec<u8>>, String> {
    if !path.starts_with('/') || path.contains([' ', '\r', '\n']) {
        return Err(format!(
            "path '{path}' must start with / and hold no space or line break"
        ));
    }
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n");
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header '{h}' is not 'Name: value'"))?;
        if name.trim().is_empty() || h.contains(['\r', '\n']) {
            return Err(format!("header '{h}' is not 'Name: value'"));
        }
        request.push_str(&format!("{}: {}\r\n", name.trim(), value.trim()));
    }
    request.push_str("\r\n");
    Ok(request.split(SEQ).map(|p| p.as_bytes().to_vec()).collect())
}

/// Class indices in a smooth weighted round robin: each class as evenly spread over the
/// cycle as its weight allows, so every second of the schedule carries the same mix.
fn interleave(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..weights.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .expect("at least one class");
            current[best] -= total;
            best
        })
        .collect()
}

struct Config {
    url: String,
    addr: SocketAddr,
    /// What is sent, each request written with one `write`.
    classes: Vec<Class>,
    /// The class of request `i` is `pattern[i % pattern.len()]`.
    pattern: Vec<usize>,
    /// Seconds per window of the per-window report (with --window).
    window: Option<f64>,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
    per_second: bool,
    json: bool,
    timeout: Duration,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut url = None;
    let mut rate = None;
    let mut duration = None;
    let mut connections = None;
    let mut headers: Vec<String> = Vec::new();
    let mut warmup = 2.0;
    let mut per_second = false;
    let mut json = false;
    let mut timeout = 10.0;
    let mut mix = None;
    let mut window = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("{name}: '{v}' is not a non-negative number"))
        };
        match arg.as_str() {
            "--url" => url = Some(value("--url")?),
            "--rate" => rate = Some(number("--rate", value("--rate")?)?),
            "--duration" => duration = Some(number("--duration", value("--duration")?)?),
            "--connections" => {
                let v = value("--connections")?;
                connections = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("--connections: '{v}' is not a count"))?,
                )
            }
            "--header" | "-H" => headers.push(value("--header")?),
            "--warmup" => warmup = number("--warmup", value("--warmup")?)?,
            "--timeout" => timeout = number("--timeout", value("--timeout")?)?,
            "--mix" => mix = Some(value("--mix")?),
            "--window" => window = Some(number("--window", value("--window")?)?),
            "--per-second" => per_second = true,
            "--json" => json = true,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rate = rate.ok_or("--rate is required")?;
    let duration = duration.ok_or("--duration is required")?;
    let connections = connections.ok_or("--connections is required")?;
    if rate <= 0.0 || duration <= 0.0 || connections == 0 || timeout <= 0.0 {
        return Err("--rate, --duration, --connections and --timeout must be above 0".into());
    }
    if window.is_some_and(|w| w < 1.0) {
        return Err("--window must be at least 1 second".into());
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must start with http:// (no TLS here)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| format!("cannot resolve '{authority}': {e}"))?
        .next()
        .ok_or_else(|| format!("'{authority}' resolves to no address"))?;
    let (classes, weights) = match mix {
        None => {
            let parts = build_request(authority, path, &headers).map_err(|e| format!("--{e}"))?;
            let default = Class {
                name: "default".into(),
                parts,
                expect: Vec::new(),
            };
            (vec![default], vec![1])
        }
        Some(file) => {
            if !headers.is_empty() {
                return Err(
                    "--header goes with --url, not with --mix (headers go in the file)".into(),
                );
            }
            let text = std::fs::read_to_string(&file).map_err(|e| format!("--mix {file}: {e}"))?;
            let specs: Vec<ClassSpec> =
                serde_json::from_str(&text).map_err(|e| format!("--mix {file}: {e}"))?;
            if specs.is_empty() {
                return Err(format!("--mix {file}: no classes"));
            }
            let mut classes = Vec::with_capacity(specs.len());
            let mut weights = Vec::with_capacity(specs.len());
            for spec in specs {
                if spec.weight == 0 || spec.weight > 10_000 {
                    return Err(format!(
                        "--mix {file}: class '{}': weight must be 1..=10000",
                        spec.name
                    ));
                }
                if let Some(bad) = spec.expect.iter().find(|s| !(100..=599).contains(*s)) {
                    return Err(format!(
                        "--mix {file}: class '{}': {bad} is not a status",
                        spec.name
                    ));
                }
                let parts = build_request(authority, &spec.path, &spec.headers)
                    .map_err(|e| format!("--mix {file}: class '{}': {e}", spec.name))?;
                weights.push(spec.weight);
                classes.push(Class {
                    name: spec.name,
                    parts,
                    expect: spec.expect,
                });
            }
            (classes, weights)
        }
    };
    Ok(Config {
        url,
        addr,
        classes,
        pattern: interleave(&weights),
        window,
        rate,
        duration,
        warmup,
        connections,
        per_second,
        json,
        timeout: Duration::from_secs_f64(timeout),
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the timerfd is armed on (std's `Instant` is the
/// same clock but does not expose its value).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) of this process in nanoseconds.
fn cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A one-shot timer with nanosecond expiry, registered with tokio's reactor.
struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd stays open, and the same descriptor, for as long as the
        // AsyncFd that owns it.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Timer { fd })
    }

    /// Returns at or after `at` (CLOCK_MONOTONIC ns).
    async fn sleep_until(&self, at: u64) -> io::Result<()> {
        if now_ns() >= at {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at / 1_000_000_000) as libc::time_t,
                tv_nsec: (at % 1_000_000_000) as libc::c_long,
            },
        };
        let raw = self.fd.get_ref().as_raw_fd();
        // SAFETY: valid descriptor and itimerspec; the old value is not wanted.
        let rc = unsafe {
            libc::timerfd_settime(raw, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer.
            let n = unsafe { libc::read(raw, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
            // Readiness left over from an earlier expiry that was already read.
            guard.clear_ready();
        }
    }
}

#[derive(Clone, Copy)]
struct Job {
    /// When the request should have been sent (CLOCK_MONOTONIC ns): its latency starts here.
    scheduled: u64,
    /// False during the warm-up: sent, answered, not recorded.
    measured: bool,
    /// Its place in the schedule: picks its class, and is its `{seq}`.
    seq: u64,
    class: usize,
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    Connect,
    Io,
    Closed,
    Parse,
    Timeout,
    /// The connection ended, or refused the request, before any byte of an answer: on a
    /// reused keep-alive connection, one the server had closed while it was idle.
    Stale,
}

/// The answers and failures of one class, over the run or over one window.
#[derive(Clone, Default)]
struct Tally {
    statuses: std::collections::BTreeMap<u16, u64>,
    unexpected: u64,
    errors: u64,
    /// Samples printed in the window `sample_window` (run tallies only).
    sampled: u64,
    sample_window: usize,
}

impl Tally {
    fn to_json(&self) -> serde_json::Value {
        let statuses: serde_json::Map<String, serde_json::Value> = self
            .statuses
            .iter()
            .map(|(status, n)| (status.to_string(), (*n).into()))
            .collect();
        serde_json::json!({
            "completed": self.statuses.values().sum::<u64>(),
            "unexpected": self.unexpected, "errors": self.errors, "statuses": statuses,
        })
    }
}

/// One window of scheduled time (with --window).
struct Window {
    latency: Histogram<u64>,
    classes: Vec<Tally>,
    stale_retries: u64,
}

struct Stats {
    /// Scheduled send time to the response's last byte.
    latency: Histogram<u64>,
    /// Actual write to the response's last byte (what a closed-loop tool like wrk reports).
    service: Histogram<u64>,
    /// Scheduled send time to the moment the pacer queued the request: the generator's own
    /// timer and CPU lateness, which the server has no part in.
    dispatch_lag: Histogram<u64>,
    /// Per second of scheduled time in the measured window (with --per-second).
    per_second: Vec<Histogram<u64>>,
    sent: u64,
    completed: u64,
    non_2xx: u64,
    connect_errors: u64,
    io_errors: u64,
    closed_errors: u64,
    parse_errors: u64,
    timeouts: u64,
    /// Measured requests finished (answered or failed) and when the last of them finished.
    finished: u64,
    last_finish: u64,
    /// Measured requests taken from the queue and not finished yet.
    in_flight: u64,
    /// Connections opened after the initial pool (after a close or an error).
    reconnects: u64,
    max_queue: usize,
    /// Answers outside their class's expected statuses.
    unexpected: u64,
    /// Requests sent again after a stale keep-alive connection.
    stale_retries: u64,
    /// Per class, over the measured run.
    classes: Vec<Tally>,
    /// Per window of scheduled time, with --window.
    windows: Vec<Window>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3).expect("valid histogram bounds")
}

struct Shared {
    queue: RefCell<VecDeque<Job>>,
    /// Wakes an idle connection for each queued request.
    ready: Notify,
    /// Set once the last request is queued: idle connections then exit.
    done: Cell<bool>,
    stats: RefCell<Stats>,
    measure_start: Cell<u64>,
}

impl Shared {
    /// The window a measured request scheduled at `scheduled` belongs to.
    fn window_of(&self, config: &Config, scheduled: u64) -> usize {
        let Some(w) = config.window else { return 0 };
        let since = scheduled.saturating_sub(self.measure_start.get());
        (since as f64 / (w * 1e9)) as usize
    }

    fn fail(&self, config: &Config, job: Job, failure: Failure) {
        if !job.measured {
            return;
        }
        let window = self.window_of(config, job.scheduled);
        let mut s = self.stats.borrow_mut();
        match failure {
            Failure::Connect => s.connect_errors += 1,
            Failure::Io => s.io_errors += 1,
            // A fresh connection that ends before answering is simply closed.
            Failure::Closed | Failure::Stale => s.closed_errors += 1,
            Failure::Parse => s.parse_errors += 1,
            Failure::Timeout => s.timeouts += 1,
        }
        if let Some(w) = s.windows.get_mut(window) {
            w.classes[job.class].errors += 1;
        }
        let class = &config.classes[job.class];
        if sample_due(&mut s.classes[job.class], window) {
            eprintln!(
                "open_loop: failure sample: class {} (window {window}): {failure:?}",
                class.name
            );
        }
        s.classes[job.class].errors += 1;
        s.finished += 1;
        s.in_flight -= 1;
        s.last_finish = now_ns();
    }
}

/// Whether another sample of this class may be printed in this window.
fn sample_due(tally: &mut Tally, window: usize) -> bool {
    if tally.sample_window != window {
        tally.sample_window = window;
        tally.sampled = 0;
    }
    tally.sampled += 1;
    tally.sampled <= SAMPLES_PER_WINDOW
}

/// A response read off the connection.
struct Response {
    status: u16,
    /// The server asked to close, or the body ran to the end of the stream.
    close: bool,
    /// Its first bytes, kept when the status is not one its class expects.
    sample: Option<String>,
}

/// Where a head ends (`\r\n\r\n`), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Status, body framing and whether the server will close, from a response head.
fn parse_head(head: &[u8]) -> Result<(u16, Framing, bool), Failure> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().ok_or(Failure::Parse)?;
    if status_line.len() < 12 || !status_line.starts_with(b"HTTP/1.") {
        return Err(Failure::Parse);
    }
    let http10 = status_line[7] == b'0';
    let status = std::str::from_utf8(&status_line[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(Failure::Parse)?;
    let mut length = None;
    let mut chunked = false;
    let mut close = http10;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(Failure::Parse)?;
            length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::UntilClose
    };
    Ok((status, framing, close))
}

enum Chunks {
    /// The body ends at this offset.
    Done(usize),
    /// Need more bytes; every chunk before this offset is complete.
    Partial(usize),
}

/// Walks a chunked body from `pos` (the start of a chunk-size line).
fn chunked_end(buf: &[u8], mut pos: usize) -> Result<Chunks, Failure> {
    loop {
        let Some(eol) = find_crlf(&buf[pos..]) else {
            return Ok(Chunks::Partial(pos));
        };
        let line = &buf[pos..pos + eol];
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or(line)
            .trim_ascii();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(Failure::Parse)?;
        let data = pos + eol + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            let mut at = data;
            loop {
                let Some(e) = find_crlf(&buf[at..]) else {
                    return Ok(Chunks::Partial(pos));
                };
                at += e + 2;
                if e == 0 {
                    return Ok(Chunks::Done(at));
                }
            }
        }
        let next = data.checked_add(size).ok_or(Failure::Parse)? + 2;
        if buf.len() < next {
            return Ok(Chunks::Partial(pos));
        }
        if &buf[next - 2..next] != b"\r\n" {
            return Err(Failure::Parse);
        }
        pos = next;
    }
}

/// Reads more bytes into `buf`; end of stream is an error unless `eof_ok`.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, eof_ok: bool) -> Result<bool, Failure> {
    buf.reserve(8192);
    match stream.read_buf(buf).await {
        Ok(0) if eof_ok => Ok(false),
        Ok(0) => Err(Failure::Closed),
        Ok(_) => Ok(true),
        Err(_) => Err(Failure::Io),
    }
}

/// Writes the request and reads one whole response. `buf` is empty on entry and on return.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    class: &Class,
) -> Result<Response, Failure> {
    stream
        .write_all(request)
        .await
        .map_err(|_| Failure::Stale)?;
    let mut answered = false;
    loop {
        let mut scanned = 0;
        let end = loop {
            if let Some(end) = head_end(buf, scanned) {
                break end;
            }
            scanned = buf.len();
            match fill(stream, buf, false).await {
                Ok(_) => {}
                Err(Failure::Closed | Failure::Io) if !answered && buf.is_empty() => {
                    return Err(Failure::Stale)
                }
                Err(failure) => return Err(failure),
            }
        };
        answered = true;
        let (status, framing, close) = parse_head(&buf[..end])?;
        let sample = (!(100..200).contains(&status) && !class.expects(status)).then(|| {
            String::from_utf8_lossy(&buf[..buf.len().min(SAMPLE_BYTES)]).replace("\r\n", " | ")
        });
        match framing {
            Framing::None => {
                buf.drain(..end);
            }
            Framing::Length(n) => {
                // Bodies are read and dropped as they come: only their length matters.
                let mut have = buf.len() - end;
                buf.clear();
                while have < n {
                    fill(stream, buf, false).await?;
                    have += buf.len();
                    buf.clear();
                }
                if have > n {
                    // Bytes after the response, which was not asked for: no pipelining here.
                    return Err(Failure::Parse);
                }
            }
            Framing::Chunked => {
                let mut resume = end;
                let done = loop {
                    match chunked_end(buf, resume)? {
                        Chunks::Done(at) => break at,
                        Chunks::Partial(at) => resume = at,
                    }
                    fill(stream, buf, false).await?;
                };
                if done != buf.len() {
                    return Err(Failure::Parse);
                }
                buf.clear();
            }
            Framing::UntilClose => {
                buf.clear();
                while fill(stream, buf, true).await? {
                    buf.clear();
                }
            }
        }
        if (100..200).contains(&status) && status != 101 {
            continue; // an interim response: the real one follows
        }
        if !buf.is_empty() {
            return Err(Failure::Parse);
        }
        return Ok(Response {
            status,
            close,
            sample,
        });
    }
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One keep-alive connection of the pool: takes queued requests one at a time until the
/// schedule is over and the queue empty.
async fn connection(shared: Rc<Shared>, config: Rc<Config>, mut stream: Option<TcpStream>) {
    let mut buf = Vec::with_capacity(16 * 1024);
    // Answers read on the current stream: a stale stream is only worth a resend once it has
    // served (a fresh one that closes at once is a failure of its own).
    let mut served = 0u64;
    loop {
        let job = loop {
            if let Some(job) = shared.queue.borrow_mut().pop_front() {
                break Some(job);
            }
            if shared.done.get() {
                break None;
            }
            shared.ready.notified().await;
        };
        let Some(job) = job else { return };
        if job.measured {
            let mut st = shared.stats.borrow_mut();
            st.in_flight += 1;
            st.sent += 1;
        }
        let class = &config.classes[job.class];
        let request = class.request(job.seq);
        let mut resent = false;
        let result = loop {
            if stream.is_none() {
                match connect(config.addr).await {
                    Ok(s) => {
                        stream = Some(s);
                        served = 0;
                        shared.stats.borrow_mut().reconnects += 1;
                    }
                    Err(_) => break Err(Failure::Connect),
                }
            }
            let s = stream.as_mut().expect("connected above");
            let sent_at = now_ns();
            buf.clear();
            let result =
                tokio::time::timeout(config.timeout, exchange(s, &request, &mut buf, class))
                    .await
                    .unwrap_or(Err(Failure::Timeout));
            match result {
                Ok(response) => break Ok((response, sent_at)),
                Err(Failure::Stale) if served > 0 && !resent => {
                    // The server closed this idle connection as the request went out: send it
                    // again on a new one, as HTTP clients do for idempotent requests.
                    stream = None;
                    resent = true;
                    if job.measured {
                        let window = shared.window_of(&config, job.scheduled);
                        let mut st = shared.stats.borrow_mut();
                        st.stale_retries += 1;
                        if let Some(w) = st.windows.get_mut(window) {
                            w.stale_retries += 1;
                        }
                    }
                }
                Err(failure) => {
                    stream = None;
                    break Err(failure);
                }
            }
        };
        let (response, sent_at) = match result {
            Ok(r) => r,
            Err(failure) => {
                shared.fail(&config, job, failure);
                continue;
            }
        };
        served += 1;
        if response.close {
            stream = None;
        }
        if !job.measured {
            continue;
        }
        let done = now_ns();
        let latency = done.saturating_sub(job.scheduled);
        let window = shared.window_of(&config, job.scheduled);
        let mut st = shared.stats.borrow_mut();
        st.latency.saturating_record(latency);
        st.service.saturating_record(done.saturating_sub(sent_at));
        if config.per_second {
            let second =
                (job.scheduled.saturating_sub(shared.measure_start.get()) / 1_000_000_000) as usize;
            if let Some(h) = st.per_second.get_mut(second) {
                h.saturating_record(latency);
            }
        }
        let expected = response.sample.is_none();
        if let Some(w) = st.windows.get_mut(window) {
            w.latency.saturating_record(latency);
            let tally = &mut w.classes[job.class];
            *tally.statuses.entry(response.status).or_default() += 1;
            tally.unexpected += u64::from(!expected);
        }
        let tally = &mut st.classes[job.class];
        *tally.statuses.entry(response.status).or_default() += 1;
        if let Some(sample) = response.sample {
            tally.unexpected += 1;
            if sample_due(tally, window) {
                eprintln!(
                    "open_loop: unexpected answer sample: class {} (window {window}) got {} (expects {}): {sample}",
                    class.name,
                    response.status,
                    expectation(class)
                );
            }
            st.unexpected += 1;
        }
        st.completed += 1;
        if !(200..300).contains(&response.status) {
            st.non_2xx += 1;
        }
        st.finished += 1;
        st.in_flight -= 1;
        st.last_finish = done;
    }
}

/// What a class expects, for people: "2xx" or "401" or "200/429".
fn expectation(class: &Class) -> String {
    if class.expect.is_empty() {
        "2xx".into()
    } else {
        class
            .expect
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Queues request `i` at `start + i / rate`, however the answers come back.
async fn pace(shared: Rc<Shared>, timer: Timer, start: u64, config: Rc<Config>) -> io::Result<u64> {
    let interval = 1e9 / config.rate;
    let warm = (config.warmup * config.rate).round() as u64;
    let total = warm + (config.duration * config.rate).round() as u64;
    let at = |i: u64| start + (i as f64 * interval) as u64;
    shared.measure_start.set(at(warm));
    let mut cpu_start = cpu_ns();
    let mut i = 0;
    while i < total {
        timer.sleep_until(at(i)).await?;
        let now = now_ns();
        let mut queued = 0;
        while i < total && at(i) <= now {
            let job = Job {
                scheduled: at(i),
                measured: i >= warm,
                seq: i,
                class: config.pattern[(i % config.pattern.len() as u64) as usize],
            };
            if i == warm {
                cpu_start = cpu_ns();
            }
            if job.measured {
                shared
                    .stats
                    .borrow_mut()
                    .dispatch_lag
                    .saturating_record(now - job.scheduled);
            }
            shared.queue.borrow_mut().push_back(job);
            queued += 1;
            i += 1;
        }
        for _ in 0..queued {
            shared.ready.notify_one();
        }
        let depth = shared.queue.borrow().len();
        let mut st = shared.stats.borrow_mut();
        st.max_queue = st.max_queue.max(depth);
    }
    shared.done.set(true);
    shared.ready.notify_waiters();
    Ok(cpu_start)
}

struct Report<'a> {
    config: &'a Config,
    stats: &'a Stats,
    scheduled: u64,
    unfinished: u64,
    achieved: f64,
    behind: bool,
    cpu_pct: f64,
    elapsed: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// p50, p90, p99, p99.9, max and mean in ms; None when nothing was recorded.
fn summary(h: &Histogram<u64>) -> Option<[f64; 6]> {
    if h.is_empty() {
        return None;
    }
    let q = |x: f64| ms(h.value_at_quantile(x));
    Some([
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        ms(h.max()),
        h.mean() / 1e6,
    ])
}

impl Report<'_> {
    fn errors(&self) -> u64 {
        let s = self.stats;
        s.connect_errors
            + s.io_errors
            + s.closed_errors
            + s.parse_errors
            + s.timeouts
            + self.unfinished
    }

    /// One JSON object. Times in ms (float, µs resolution). Fields:
    /// `url`, `rate` (target req/s), `duration_s`, `warmup_s`, `connections`;
    /// `scheduled` (measured requests the schedule held), `sent` (written to a connection),
    /// `completed` (whole response read, any status), `non_2xx`, `errors` (all failures) with
    /// `error_kinds` {connect, io, closed, parse, timeout, unfinished}; `achieved_rate`
    /// (measured requests finished ÷ seconds from the window's start to the later of its
    /// end and the last one finishing), `achieved_ratio` (÷ rate), `behind` (achieved_ratio
    /// < 0.95); `latency_ms` {p50, p90, p99, p99_9, max, mean} from the scheduled send
    /// time; `service_ms` (same keys) from the actual write; `dispatch_lag_ms` (same keys)
    /// how late the pacer queued requests; `max_queue` (most requests ever waiting for a
    /// connection); `reconnects`; `generator_cpu_pct` (this process's CPU over the measured
    /// window, 100 = one core); `elapsed_s`; with --per-second, `per_second`: [{second,
    /// count, p99_ms, max_ms}] by scheduled second. Also `unexpected` (answers outside their
    /// class's statuses; without --mix, the non-2xx), `stale_retries`, and `classes`: [{name,
    /// expect, completed, unexpected, errors, statuses: {"200": n, ...}}]; with --window,
    /// `windows`: [{window, start_s, completed, latency_ms {p50, p90, p99, p99_9, max, mean},
    /// unexpected, errors, stale_retries, classes: [{name, completed, unexpected, errors,
    /// statuses}]}] by scheduled time.
    fn to_json(&self) -> serde_json::Value {
        let s = self.stats;
        let lat = |h: &Histogram<u64>| match summary(h) {
            Some([p50, p90, p99, p999, max, mean]) => serde_json::json!({
                "p50": round3(p50), "p90": round3(p90), "p99": round3(p99),
                "p99_9": round3(p999), "max": round3(max), "mean": round3(mean),
            }),
            None => serde_json::Value::Null,
        };
        let mut v = serde_json::json!({
            "url": self.config.url,
            "rate": self.config.rate,
            "duration_s": self.config.duration,
            "warmup_s": self.config.warmup,
            "connections": self.config.connections,
            "scheduled": self.scheduled,
            "sent": s.sent,
            "completed": s.completed,
            "non_2xx": s.non_2xx,
            "errors": self.errors(),
            "error_kinds": {
                "connect": s.connect_errors, "io": s.io_errors, "closed": s.closed_errors,
                "parse": s.parse_errors, "timeout": s.timeouts, "unfinished": self.unfinished,
            },
            "achieved_rate": (self.achieved * 10.0).round() / 10.0,
            "achieved_ratio": (self.achieved / self.config.rate * 1e4).round() / 1e4,
            "behind": self.behind,
            "latency_ms": lat(&s.latency),
            "service_ms": lat(&s.service),
            "dispatch_lag_ms": lat(&s.dispatch_lag),
            "max_queue": s.max_queue,
            "reconnects": s.reconnects,
            "generator_cpu_pct": (self.cpu_pct * 10.0).round() / 10.0,
            "elapsed_s": (self.elapsed * 1e3).round() / 1e3,
            "unexpected": s.unexpected,
            "stale_retries": s.stale_retries,
            "classes": self.config.classes.iter().zip(&s.classes).map(|(class, tally)| {
                let mut v = tally.to_json();
                v["name"] = class.name.clone().into();
                v["expect"] = expectation(class).into();
                v
            }).collect::<Vec<_>>(),
        });
        if let Some(w) = self.config.window {
            v["windows"] = s
                .windows
                .iter()
                .enumerate()
                .map(|(i, window)| {
                    let classes: Vec<_> = self
                        .config
                        .classes
                        .iter()
                        .zip(&window.classes)
                        .map(|(class, tally)| {
                            let mut v = tally.to_json();
                            v["name"] = class.name.clone().into();
                            v
                        })
                        .collect();
                    serde_json::json!({
                        "window": i,
                        "start_s": i as f64 * w,
                        "completed": window.latency.len(),
                        "latency_ms": lat(&window.latency),
                        "unexpected": window.classes.iter().map(|t| t.unexpected).sum::<u64>(),
                        "errors": window.classes.iter().map(|t| t.errors).sum::<u64>(),
                        "stale_retries": window.stale_retries,
                        "classes": classes,
                    })
                })
                .collect();
        }
        if self.config.per_second {
            v["per_second"] = s
                .per_second
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    serde_json::json!({
                        "second": i,
                        "count": h.len(),
                        "p99_ms": if h.is_empty() { None } else { Some(round3(ms(h.value_at_quantile(0.99)))) },
                        "max_ms": if h.is_empty() { None } else { Some(round3(ms(h.max()))) },
                    })
                })
                .collect();
        }
        v
    }

    fn print_text(&self) {
        let c = self.config;
        let s = self.stats;
        println!(
            "open_loop {}: {} req/s for {} s (+{} s warm-up), {} connections, one thread",
            c.url, c.rate, c.duration, c.warmup, c.connections
        );
        println!(
            "  requests: {} scheduled, {} sent, {} completed, {} non-2xx, {} errors \
             (connect {}, io {}, closed {}, parse {}, timeout {}, unfinished {})",
            self.scheduled,
            s.sent,
            s.completed,
            s.non_2xx,
            self.errors(),
            s.connect_errors,
            s.io_errors,
            s.closed_errors,
            s.parse_errors,
            s.timeouts,
            self.unfinished
        );
        println!(
            "  achieved: {:.1} req/s ({:.1} % of target); generator CPU {:.1} %; most queued {}; reconnects {}; stale retries {}",
            self.achieved,
            self.achieved / c.rate * 100.0,
            self.cpu_pct,
            s.max_queue,
            s.reconnects,
            s.stale_retries
        );
        if c.classes.len() > 1 {
            for (class, tally) in c.classes.iter().zip(&s.classes) {
                let statuses: Vec<String> = tally
                    .statuses
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                println!(
                    "  class {:<16} expects {:<8} {} unexpected, {} errors; {}",
                    class.name,
                    expectation(class),
                    tally.unexpected,
                    tally.errors,
                    statuses.join(", ")
                );
            }
        }
        let line = |what: &str, h: &Histogram<u64>| {
            match summary(h) {
            Some([p50, p90, p99, p999, max, mean]) => println!(
                "  {what:<34} p50 {p50:.3}  p90 {p90:.3}  p99 {p99:.3}  p99.9 {p999:.3}  max {max:.3}  mean {mean:.3}"
            ),
            None => println!("  {what:<34} (nothing recorded)"),
        }
        };
        line("latency ms (from scheduled send)", &s.latency);
        line("service ms (from actual write)", &s.service);
        line("pacer lag ms (generator only)", &s.dispatch_lag);
        if c.per_second {
            println!("  second  count  p99 ms  max ms");
            for (i, h) in s.per_second.iter().enumerate() {
                if h.is_empty() {
                    println!("  {i:>6}  {:>5}  {:>6}  {:>6}", 0, "-", "-");
                } else {
                    println!(
                        "  {i:>6}  {:>5}  {:>6.3}  {:>6.3}",
                        h.len(),
                        ms(h.value_at_quantile(0.99)),
                        ms(h.max())
                    );
                }
            }
        }
    }
}

/// A line on stderr per window, a second after its scheduled end (requests of the window
/// still in flight then are not in it yet; the final report has them all).
async fn progress(shared: Rc<Shared>, measured_from: u64, window_s: f64, windows: usize) {
    for i in 0..windows {
        let end = measured_from + ((i + 1) as f64 * window_s * 1e9) as u64 + 1_000_000_000;
        tokio::time::sleep(Duration::from_nanos(end.saturating_sub(now_ns()))).await;
        let st = shared.stats.borrow();
        let w = &st.windows[i];
        let p99 = summary(&w.latency).map_or(f64::NAN, |s| s[2]);
        let max = summary(&w.latency).map_or(f64::NAN, |s| s[4]);
        eprintln!(
            "open_loop: window {i}: {} answered, p99 {p99:.3} ms, max {max:.3} ms, {} unexpected, {} errors, {} stale retries",
            w.latency.len(),
            w.classes.iter().map(|t| t.unexpected).sum::<u64>(),
            w.classes.iter().map(|t| t.errors).sum::<u64>(),
            w.stale_retries
        );
    }
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

async fn run(config: Rc<Config>) -> Result<ExitCode, String> {
    // The whole pool is opened before the schedule starts, as a steady client's would be.
    let mut streams = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let s = connect(config.addr)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", config.addr))?;
        streams.push(s);
    }
    let seconds = config.duration.ceil() as usize;
    let windows = config
        .window
        .map_or(0, |w| (config.duration / w).ceil() as usize);
    let tallies = vec![Tally::default(); config.classes.len()];
    let shared = Rc::new(Shared {
        queue: RefCell::new(VecDeque::with_capacity(1024)),
        ready: Notify::new(),
        done: Cell::new(false),
        stats: RefCell::new(Stats {
            latency: histogram(),
            service: histogram(),
            dispatch_lag: histogram(),
            per_second: if config.per_second {
                (0..seconds).map(|_| histogram()).collect()
            } else {
                Vec::new()
            },
            sent: 0,
            completed: 0,
            non_2xx: 0,
            connect_errors: 0,
            io_errors: 0,
            closed_errors: 0,
            parse_errors: 0,
            timeouts: 0,
            finished: 0,
            last_finish: 0,
            in_flight: 0,
            reconnects: 0,
            max_queue: 0,
            unexpected: 0,
            stale_retries: 0,
            classes: tallies.clone(),
            windows: (0..windows)
                .map(|_| Window {
                    latency: histogram(),
                    classes: tallies.clone(),
                    stale_retries: 0,
                })
                .collect(),
        }),
        measure_start: Cell::new(0),
    });
    let mut tasks = Vec::with_capacity(config.connections);
    for s in streams {
        tasks.push(tokio::task::spawn_local(connection(
            shared.clone(),
            config.clone(),
            Some(s),
        )));
    }
    let timer = Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    let start = now_ns() + 1_000_000;
    let progress_task = config.window.map(|w| {
        let measured_from = start + (config.warmup * 1e9) as u64;
        tokio::task::spawn_local(progress(shared.clone(), measured_from, w, windows))
    });
    let cpu_start = pace(shared.clone(), timer, start, config.clone())
        .await
        .map_err(|e| format!("pacing timer: {e}"))?;
    // Let the pool answer what is queued and in flight, within the request timeout; what is
    // still unanswered after that counts as unfinished.
    let drain = tokio::time::sleep(config.timeout + Duration::from_secs(1));
    tokio::pin!(drain);
    for task in &mut tasks {
        tokio::select! {
            _ = task => {}
            _ = &mut drain => break,
        }
    }
    for task in tasks.iter().chain(&progress_task) {
        task.abort();
    }
    let end = now_ns();
    let cpu = cpu_ns() - cpu_start;
    let measure_start = shared.measure_start.get();
    let stats = shared.stats.borrow();
    let queued_measured = shared.queue.borrow().iter().filter(|j| j.measured).count() as u64;
    let unfinished = stats.in_flight + queued_measured;
    let scheduled = (config.duration * config.rate).round() as u64;
    let window_end = measure_start + (config.duration * 1e9) as u64;
    let elapsed = (stats.last_finish.max(window_end) - measure_start) as f64 / 1e9;
    let achieved = stats.finished as f64 / elapsed;
    let behind = achieved < BEHIND_RATIO * config.rate;
    let report = Report {
        config: &config,
        stats: &stats,
        scheduled,
        unfinished,
        achieved,
        behind,
        cpu_pct: cpu as f64 / (end - measure_start) as f64 * 100.0,
        elapsed,
    };
    if config.json {
        println!("{}", report.to_json());
    } else {
        report.print_text();
    }
    if behind {
        eprintln!(
            "open_loop: BEHIND: achieved {:.0} req/s, under {:.0} % of the target {} req/s; the \
             generator (CPU {:.0} %) or the pool of {} connections (most queued {}) could not \
             keep the schedule, so these latencies are not those of a {} req/s load",
            achieved,
            BEHIND_RATIO * 100.0,
            config.rate,
            report.cpu_pct,
            config.connections,
            stats.max_queue,
            config.rate
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--bench") {
        println!("open_loop: the constant-rate load generator of benches/load/latency.sh; {USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let config = match parse_args(&args) {
        Ok(c) => Rc::new(c),
        Err(e) => {
            eprintln!("open_loop: {e}\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("open_loop: {e}");
            ExitCode::from(1)
        }
    }
}
