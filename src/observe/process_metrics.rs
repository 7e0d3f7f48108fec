//! Metrics about the process rather than its traffic: what is running
//! (`portico_build_info`), what it uses (the standard `process_*` series, read from /proc at
//! scrape time), whether the config it serves is the one on disk
//! (`portico_config_last_reload_success` and the time of the last successful load), and
//! when the listener certificates it serves expire.
//!
//! Registered beside the traffic metrics by [`register`]; nothing here is on the request
//! path.

use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, IntGaugeVec, Opts, Registry};

struct ConfigState {
    last_success: IntGauge,
    last_success_timestamp: Gauge,
    certificate_expiry: IntGaugeVec,
}

static CONFIG_STATE: LazyLock<ConfigState> = LazyLock::new(|| ConfigState {
    last_success: IntGauge::new(
        "portico_config_last_reload_success",
        "Whether the last config load or reload succeeded (1) or was refused (0)",
    )
    .expect("valid metric"),
    last_success_timestamp: Gauge::new(
        "portico_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful config load (the start) or reload",
    )
    .expect("valid metric"),
    certificate_expiry: IntGaugeVec::new(
        Opts::new(
            "portico_tls_certificate_expiry_seconds",
            "Unix time at which a certificate a TLS listener serves expires",
        ),
        &["listener", "certificate"],
    )
    .expect("valid metric"),
});

/// Sets the certificate expiry series to the certificates served now: `(listener address,
/// certificate name, expiry as Unix time)`. Called at scrape time, so certificates a
/// reload replaced disappear.
pub fn tls_certificates(certificates: impl IntoIterator<Item = (String, String, i64)>) {
    let gauge = &CONFIG_STATE.certificate_expiry;
    gauge.reset();
    for (listener, name, expiry) in certificates {
        gauge.with_label_values(&[&listener, &name]).set(expiry);
    }
}

/// Records the outcome of a config load or reload.
pub fn config_loaded(success: bool) {
    CONFIG_STATE.last_success.set(i64::from(success));
    if success {
        CONFIG_STATE.last_success_timestamp.set(unix_now());
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Adds the build, process and config-state series to `registry`.
pub fn register(registry: &Registry) {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "portico_build_info",
            "Always 1: the version and git commit of the running binary",
        ),
        &["version", "commit"],
    )
    .expect("valid metric");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("PORTICO_COMMIT")])
        .set(1);
    let collectors: Vec<Box<dyn Collector>> = vec![
        Box::new(build_info),
        Box::new(CONFIG_STATE.last_success.clone()),
        Box::new(CONFIG_STATE.last_success_timestamp.clone()),
        Box::new(CONFIG_STATE.certificate_expiry.clone()),
        Box::new(ProcessCollector::new()),
    ];
    for c in collectors {
        registry.register(c).expect("metric names are unique");
    }
}

/// The `process_*` series Prometheus client libraries export, refreshed on each scrape.
struct ProcessCollector {
    cpu_seconds: Counter,
    /// The CPU time already added to `cpu_seconds` (a counter only goes up by deltas).
    cpu_counted: Mutex<f64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time: Gauge,
}

impl ProcessCollector {
    fn new() -> ProcessCollector {
        let gauge = |name: &str, help: &str| Gauge::new(name, help).expect("valid metric");
        ProcessCollector {
            cpu_seconds: Counter::new(
                "process_cpu_seconds_total",
                "User and system CPU time spent, in seconds",
            )
            .expect("valid metric"),
            cpu_counted: Mutex::new(0.0),
            resident_bytes: gauge("process_resident_memory_bytes", "Resident memory, in bytes"),
            virtual_bytes: gauge("process_virtual_memory_bytes", "Virtual memory, in bytes"),
            open_fds: gauge("process_open_fds", "Open file descriptors"),
            max_fds: gauge(
                "process_max_fds",
                "The limit on open file descriptors (RLIMIT_NOFILE)",
            ),
            threads: gauge("process_threads", "OS threads of the process"),
            start_time: gauge(
                "process_start_time_seconds",
                "Start time of the process, in seconds since the Unix epoch",
            ),
        }
    }

    fn refresh(&self) {
        if let Some(stat) = read_stat() {
            if let Ok(mut counted) = self.cpu_counted.lock() {
                if stat.cpu_seconds > *counted {
                    self.cpu_seconds.inc_by(stat.cpu_seconds - *counted);
                    *counted = stat.cpu_seconds;
                }
            }
            self.resident_bytes.set(stat.resident_bytes);
            self.virtual_bytes.set(stat.virtual_bytes);
            self.threads.set(stat.threads);
            if let Some(start) = stat.start_time {
                self.start_time.set(start);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as f64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds.set(limit.rlim_cur as f64);
        }
    }

    fn parts(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu_seconds,
            &self.resident_bytes,
            &self.virtual_bytes,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ]
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// What /proc/self/stat says.
struct Stat {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    threads: f64,
    start_time: Option<f64>,
}

fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&text, ticks_per_second(), page_size(), boot_time())
}

/// proc(5): after the command name in parentheses come the fields from `state` (3) on;
/// utime 14, stime 15, num_threads 20, starttime 22 (ticks after boot), vsize 23 (bytes),
/// rss 24 (pages).
fn parse_stat(text: &str, ticks: f64, page: f64, boot: Option<f64>) -> Option<Stat> {
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        threads: field(20)?,
        start_time: boot.zip(field(22)).map(|(b, t)| b + t / ticks),
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
    })
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

fn page_size() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as f64,
        _ => 4096.0,
    }
}

/// The boot time, Unix seconds (`btime` in /proc/stat), read once.
fn boot_time() -> Option<f64> {
    static BOOT: LazyLock<Option<f64>> = LazyLock::new(|| {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    });
    *BOOT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_command_name_with_spaces() {
        // pid (comm) state ppid … as proc(5) numbers them, comm with a space and a paren.
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[14 - 3] = "250".into(); // utime
        fields[15 - 3] = "150".into(); // stime
        fields[20 - 3] = "7".into(); // threads
        fields[22 - 3] = "1000".into(); // starttime
        fields[23 - 3] = "8192".into(); // vsize
        fields[24 - 3] = "3".into(); // rss pages
        let text = format!("42 (port ico)) {}", fields.join(" "));
        let stat = parse_stat(&text, 100.0, 4096.0, Some(1_000_000.0)).unwrap();
        assert_eq!(stat.cpu_seconds, 4.0);
        assert_eq!(stat.threads, 7.0);
        assert_eq!(stat.start_time, Some(1_000_010.0));
        assert_eq!(stat.virtual_bytes, 8192.0);
        assert_eq!(stat.resident_bytes, 3.0 * 4096.0);
    }

    #[test]
    fn the_series_render() {
        let registry = Registry::new();
        register(&registry);
        config_loaded(true);
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        for name in [
            "portico_build_info{commit=",
            "portico_config_last_reload_success 1",
            "portico_config_last_reload_success_timestamp_seconds ",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
