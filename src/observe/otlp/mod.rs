//! Span export over OTLP/HTTP (protobuf, `POST /v1/traces`): head sampling, a per-request
//! span recorder the proxy fills in, and a batching exporter on its own thread.
//!
//! Each sampled request yields one SERVER span for the gateway hop and one CLIENT span per
//! upstream attempt, its child. The gateway span's ids are the request's
//! [`TraceContext`]: same trace id, its `span_id` as the span id and the caller's span as
//! parent. Each attempt span has a fresh span id, and that id is the parent the upstream
//! sees in `traceparent` for that attempt, so an upstream's own spans hang under the
//! attempt that reached it (a retry shows as a second attempt, not a second child of the
//! gateway). Requests that are not sampled keep the gateway span id in `traceparent` and
//! cost nothing here.
//!
//! Sampling is decided once, when the request arrives: a caller's `traceparent` decides
//! (sampled flag set → exported, unset → never), and without one the gateway starts the
//! trace and samples `sample_ratio` of them by trace id (OpenTelemetry's
//! `ParentBased(TraceIdRatioBased)`), writing its decision into the sampled flag it sends
//! upstream.
//!
//! The proxy never waits on export: finished spans go into a bounded queue and are dropped
//! (and counted) when it is full. Queuing wakes no thread: the exporter drains the queue
//! on its `flush_interval` timer, and is woken early only once a full batch waits. The
//! exporter thread starts with the first span, not when the tracer is built — the config
//! is loaded before Pingora daemonizes, and a thread started before the fork would not
//! exist in the daemon (as with the access log). It runs a single-threaded Tokio runtime
//! that POSTs batches with hyper, one request at a time, with a timeout; failures are
//! counted, not retried.

pub mod proto;
pub mod settings;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::{IntCounter, IntCounterVec, Opts};
use prost::Message;
use tokio::sync::{mpsc, Notify};

use super::metrics::METRICS;
use super::trace::TraceContext;
use crate::config;
use proto::{KeyValue, SpanKind, StatusCode};
use settings::{Compression, Settings};

/// The exporter's own metrics, registered in the process registry when the first tracer
/// is built (they do not exist while tracing is off).
pub struct OtlpMetrics {
    pub spans_exported: IntCounter,
    pub export_failures: IntCounter,
    /// Export requests sent again after a retryable failure.
    pub export_retries: IntCounter,
    /// `reason`: `queue_full`, `export_failed`, `rejected` (by the collector).
    pub spans_dropped: IntCounterVec,
    /// `spans_dropped{reason="queue_full"}`, resolved once: it counts on the request path.
    queue_full: IntCounter,
}

pub static OTLP_METRICS: LazyLock<OtlpMetrics> = LazyLock::new(|| {
    let spans_exported = IntCounter::new(
        "portico_otlp_spans_exported_total",
        "Spans the OTLP collector accepted",
    )
    .expect("valid metric");
    let export_failures = IntCounter::new(
        "portico_otlp_export_failures_total",
        "OTLP export requests that failed (connect error, timeout or non-2xx answer)",
    )
    .expect("valid metric");
    let export_retries = IntCounter::new(
        "portico_otlp_export_retries_total",
        "OTLP export requests sent again after a 429, 502, 503 or 504 answer, a failed connect or a timeout",
    )
    .expect("valid metric");
    let spans_dropped = IntCounterVec::new(
        Opts::new(
            "portico_otlp_spans_dropped_total",
            "Spans not exported, by reason (queue_full, export_failed, rejected)",
        ),
        &["reason"],
    )
    .expect("valid metric");
    for metric in [
        Box::new(spans_exported.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(export_failures.clone()),
        Box::new(export_retries.clone()),
        Box::new(spans_dropped.clone()),
    ] {
        if let Err(e) = METRICS.registry.register(metric) {
            log::warn!("cannot register an OTLP metric: {e}");
        }
    }
    OtlpMetrics {
        queue_full: spans_dropped.with_label_values(&["queue_full"]),
        spans_exported,
        export_failures,
        export_retries,
        spans_dropped,
    }
});

/// The head sampler and the queue to the exporter; one per tracing config, kept across
/// reloads that leave `[tracing]` unchanged.
pub struct Tracer {
    /// Trace ids whose low 63 bits are below this are sampled (see [`Tracer::sample`]).
    ratio_bound: u64,
    sender: mpsc::Sender<FinishedTrace>,
    signal: Arc<Signal>,
    batch_size: usize,
    /// Until the exporter thread takes them.
    pending: Mutex<Option<(mpsc::Receiver<FinishedTrace>, Settings)>>,
    start: Once,
}

/// Wakes the exporter before its timer when a full batch is waiting. A wake-up costs the
/// request thread a syscall, so it happens once per batch, not once per span.
#[derive(Default)]
struct Signal {
    queued_spans: AtomicUsize,
    batch_ready: Notify,
}

impl Tracer {
    /// Builds a tracer from a validated `[tracing]` section. No thread starts here.
    pub fn new(config: &config::Tracing) -> Result<Tracer, String> {
        LazyLock::force(&OTLP_METRICS);
        let settings = settings::resolve(config).map_err(|problems| {
            let text: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            text.join("; ")
        })?;
        let (sender, receiver) = mpsc::channel(config.queue_size.max(1));
        Ok(Tracer {
            ratio_bound: ratio_bound(config.sample_ratio),
            sender,
            signal: Arc::default(),
            batch_size: settings.batch_size,
            pending: Mutex::new(Some((receiver, settings))),
            start: Once::new(),
        })
    }

    /// The head sampling decision for a request. A caller's sampled flag decides when it
    /// sent a `traceparent`; otherwise the trace id decides (`sample_ratio` of them), and
    /// the decision is written into `trace.flags` so the upstream sees it.
    pub fn sample(&self, trace: &mut TraceContext) -> bool {
        if trace.parent_id.is_some() {
            return trace.flags & 0x01 == 0x01;
        }
        let sampled = trace_id_draw(&trace.trace_id) < self.ratio_bound;
        trace.flags = (trace.flags & !0x01) | u8::from(sampled);
        sampled
    }

    /// Hands a sampled request's spans to the exporter; never waits. When the queue is
    /// full the spans are dropped and counted.
    pub fn export(&self, spans: Box<RequestSpans>, trace: &TraceContext, info: RequestInfo<'_>) {
        self.start.call_once(|| self.start_exporter());
        let finished = spans.finish(trace, info);
        let n = finished.span_count();
        // Counted before sending, so the exporter never takes away more than was added.
        let before = self.signal.queued_spans.fetch_add(n, Ordering::Relaxed);
        if self.sender.try_send(finished).is_err() {
            self.signal.queued_spans.fetch_sub(n, Ordering::Relaxed);
            OTLP_METRICS.queue_full.inc_by(n as u64);
        } else if before < self.batch_size && before + n >= self.batch_size {
            self.signal.batch_ready.notify_one();
        }
    }

    fn start_exporter(&self) {
        let taken = self.pending.lock().ok().and_then(|mut p| p.take());
        let Some((receiver, settings)) = taken else {
            return;
        };
        let signal = self.signal.clone();
        let spawned = std::thread::Builder::new()
            .name("portico-otlp".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(export_loop(receiver, signal, settings)),
                    Err(e) => log::error!("cannot start the OTLP exporter runtime: {e}"),
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the OTLP exporter thread: {e}");
        }
    }
}

/// `ratio × 2^63`, compared with the trace id's low 63 bits as OpenTelemetry's
/// `TraceIdRatioBased` sampler does, so every hop that samples by ratio agrees.
fn ratio_bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio > 0.0 {
        (ratio * (1u64 << 63) as f64) as u64
    } else {
        0
    }
}

fn trace_id_draw(trace_id: &[u8; 16]) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    u64::from_be_bytes(low) >> 1
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The `traceparent` an upstream sees for an attempt: the request's trace, the attempt's
/// span as parent.
pub fn attempt_traceparent(
    trace: &TraceContext,
    attempt_span: [u8; 8],
) -> [u8; crate::observe::trace::TRACEPARENT_LEN] {
    TraceContext {
        span_id: attempt_span,
        parent_id: None,
        ..*trace
    }
    .header_bytes()
}

/// Timings and outcomes of a sampled request, kept in the proxy's context. Only sampled
/// requests have one.
pub struct RequestSpans {
    start: Instant,
    start_unix_nanos: u64,
    attempts: Vec<Attempt>,
}

struct Attempt {
    span_id: [u8; 8],
    start: Instant,
    end: Option<Instant>,
    endpoint: String,
    addr: SocketAddr,
    outcome: &'static str,
    status: Option<u16>,
}

impl RequestSpans {
    /// Starts recording a request that arrived at `request_start`.
    pub fn new(request_start: Instant) -> Box<RequestSpans> {
        let since_start = request_start.elapsed();
        let now = unix_nanos(SystemTime::now());
        Box::new(RequestSpans {
            start: request_start,
            start_unix_nanos: now.saturating_sub(since_start.as_nanos() as u64),
            attempts: Vec::new(),
        })
    }

    /// Opens the span of an upstream attempt to `endpoint` (the configured address).
    pub fn start_attempt(&mut self, endpoint: &str, addr: SocketAddr) {
        self.attempts.push(Attempt {
            span_id: new_span_id(),
            start: Instant::now(),
            end: None,
            endpoint: endpoint.to_string(),
            addr,
            outcome: "abandoned",
            status: None,
        });
    }

    /// The span id of the attempt in progress, if any.
    pub fn open_attempt(&self) -> Option<[u8; 8]> {
        self.attempts
            .last()
            .filter(|a| a.end.is_none())
            .map(|a| a.span_id)
    }

    /// Ends the attempt in progress. `outcome` is `response`, `connect_error`, `timeout`,
    /// `error` or `abandoned` (the names of `portico_upstream_attempts_total`'s results).
    pub fn end_attempt(&mut self, outcome: &'static str, status: Option<u16>) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            a.end = Some(Instant::now());
            a.outcome = outcome;
            a.status = status;
        }
    }

    /// Moves the recording into what the exporter takes: nothing is copied but the few
    /// borrowed strings of `info`; timestamps are worked out on the exporter thread.
    fn finish(self: Box<Self>, trace: &TraceContext, info: RequestInfo<'_>) -> FinishedTrace {
        FinishedTrace {
            recorded: self,
            end: Instant::now(),
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            parent_id: trace.parent_id,
            flags: trace.flags,
            method: info.method.clone(),
            path: info.path.to_string(),
            route: info.route,
            version: info.version,
            cluster: info.cluster.map(str::to_string),
            status: info.status,
            attempts_made: info.attempts,
            request_id: info.request_id.to_string(),
            client: info.client,
            error: info.error,
        }
    }

    /// Unix time of an instant during the request.
    fn unix_nanos(&self, at: Instant) -> u64 {
        self.start_unix_nanos + at.saturating_duration_since(self.start).as_nanos() as u64
    }
}

/// What the proxy knows about a request when it ends, for the gateway span.
pub struct RequestInfo<'a> {
    pub method: &'a http::Method,
    /// The path as the client sent it (normalised), without the query.
    pub path: &'a str,
    pub route: Option<Arc<str>>,
    pub version: Option<Arc<str>>,
    pub cluster: Option<&'a str>,
    /// The status sent to the client; 0 when none was.
    pub status: u16,
    pub attempts: u32,
    pub request_id: &'a str,
    pub client: Option<IpAddr>,
    /// The gateway error's slug (or Pingora's error type) when the request failed.
    pub error: Option<&'static str>,
}

/// A request's spans as queued to the exporter: owned, and turned into protobuf off the
/// request path.
struct FinishedTrace {
    recorded: Box<RequestSpans>,
    end: Instant,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    flags: u8,
    method: http::Method,
    path: String,
    route: Option<Arc<str>>,
    version: Option<Arc<str>>,
    cluster: Option<String>,
    status: u16,
    attempts_made: u32,
    request_id: String,
    client: Option<IpAddr>,
    error: Option<&'static str>,
}

impl FinishedTrace {
    fn span_count(&self) -> usize {
        1 + self.recorded.attempts.len()
    }

    /// The gateway span and its attempt spans, with HTTP semantic-convention attribute
    /// names where one exists and `portico.*` for the rest.
    fn to_spans(&self, out: &mut Vec<proto::Span>) {
        let trace_flags = u32::from(self.flags);
        let method = self.method.as_str();
        let recorded = &self.recorded;
        let mut attributes = vec![
            KeyValue::string("http.request.method", method),
            KeyValue::string("url.path", &self.path),
            KeyValue::int("portico.attempts", i64::from(self.attempts_made)),
            KeyValue::string("portico.request_id", &self.request_id),
        ];
        if self.status != 0 {
            attributes.push(KeyValue::int(
                "http.response.status_code",
                i64::from(self.status),
            ));
        }
        if let Some(route) = &self.route {
            attributes.push(KeyValue::string("portico.route", &**route));
        }
        if let Some(version) = &self.version {
            attributes.push(KeyValue::string("portico.api_version", &**version));
        }
        if let Some(cluster) = &self.cluster {
            attributes.push(KeyValue::string("portico.cluster", cluster));
        }
        if let Some(client) = self.client {
            attributes.push(KeyValue::string("client.address", client.to_string()));
        }
        if let Some(error) = self.error {
            attributes.push(KeyValue::string("error.type", error));
        }
        // A server span is an error when the gateway answered 5xx or nothing at all.
        let failed = self.status == 0 || self.status >= 500;
        let name = match &self.route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        };
        let remote_parent = if self.parent_id.is_some() {
            proto::SPAN_FLAGS_CONTEXT_IS_REMOTE
        } else {
            0
        };
        out.push(proto::Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            trace_state: String::new(),
            parent_span_id: self.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            flags: trace_flags | proto::SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | remote_parent,
            name,
            kind: SpanKind::Server as i32,
            start_time_unix_nano: recorded.start_unix_nanos,
            end_time_unix_nano: recorded.unix_nanos(self.end),
            attributes,
            status: Some(status(failed, self.error.unwrap_or(""))),
        });

        let cluster = self.cluster.as_deref().unwrap_or("");
        for (i, a) in recorded.attempts.iter().enumerate() {
            let mut attributes = vec![
                KeyValue::string("http.request.method", method),
                KeyValue::string("server.address", a.addr.ip().to_string()),
                KeyValue::int("server.port", i64::from(a.addr.port())),
                KeyValue::string("portico.endpoint", &a.endpoint),
                KeyValue::string("portico.cluster", cluster),
                KeyValue::int("portico.attempt", i as i64 + 1),
                KeyValue::string("portico.outcome", a.outcome),
            ];
            if let Some(s) = a.status {
                attributes.push(KeyValue::int("http.response.status_code", i64::from(s)));
            }
            let failed = a.outcome != "response" || a.status.is_some_and(|s| s >= 500);
            if a.outcome != "response" {
                attributes.push(KeyValue::string("error.type", a.outcome));
            }
            out.push(proto::Span {
                trace_id: self.trace_id.to_vec(),
                span_id: a.span_id.to_vec(),
                trace_state: String::new(),
                parent_span_id: self.span_id.to_vec(),
                flags: trace_flags | proto::SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE,
                name: format!("{method} {cluster}"),
                kind: SpanKind::Client as i32,
                start_time_unix_nano: recorded.unix_nanos(a.start),
                end_time_unix_nano: recorded.unix_nanos(a.end.unwrap_or(self.end)),
                attributes,
                status: Some(status(failed, if failed { a.outcome } else { "" })),
            });
        }
    }
}

fn status(failed: bool, message: &str) -> proto::Status {
    if failed {
        proto::Status {
            message: message.to_string(),
            code: StatusCode::Error as i32,
        }
    } else {
        proto::Status::default()
    }
}

/// Drains the queue every `flush_interval`, or sooner when a full batch waits, and sends
/// what it took in batches of about `batch_size` spans; ends (after a last flush) once the
/// tracer is dropped by a reload.
async fn export_loop(
    mut receiver: mpsc::Receiver<FinishedTrace>,
    signal: Arc<Signal>,
    settings: Settings,
) {
    let mut exporter = Exporter::new(settings);
    let batch_size = exporter.settings.batch_size;
    let mut tick = tokio::time::interval(exporter.settings.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<FinishedTrace> = Vec::new();
    let mut spans = 0usize;
    loop {
        // Woken for a full batch only full batches go; on the timer everything does.
        let timer = tokio::select! {
            _ = tick.tick() => true,
            _ = signal.batch_ready.notified() => false,
        };
        let closed = loop {
            match receiver.try_recv() {
                Ok(trace) => {
                    let n = trace.span_count();
                    signal.queued_spans.fetch_sub(n, Ordering::Relaxed);
                    spans += n;
                    batch.push(trace);
                    if spans >= batch_size {
                        exporter.send(&batch, spans).await;
                        batch.clear();
                        spans = 0;
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        if timer || closed {
            exporter.send(&batch, spans).await;
            batch.clear();
            spans = 0;
        }
        if closed {
            return;
        }
    }
}

struct Exporter {
    settings: Settings,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    resource: proto::Resource,
    /// Whether the last export failed, to log a failure streak once.
    failing: bool,
}

/// Trust for an `https` collector: `Some(Some(file))` the CA bundle alone, `Some(None)` the
/// system's roots, `None` nothing (a connector that is never used for TLS).
fn tls_config(trust: Option<Option<&str>>) -> Result<rustls::ClientConfig, String> {
    let roots = match trust {
        Some(Some(path)) => crate::runtime::tls::read_roots(path)?,
        Some(None) => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!(
                    "no system CA certificates found ({} errors); set ca_file",
                    found.errors.len()
                ));
            }
            roots
        }
        None => rustls::RootCertStore::empty(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Exporter {
    fn new(settings: Settings) -> Exporter {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(settings.timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = if settings.endpoint.scheme_str() == Some("https") {
            tls_config(Some(settings.ca_file.as_deref())).unwrap_or_else(|e| {
                // Validation checked the CA file; the system's roots can still be missing.
                log::error!("OTLP export over https cannot verify the collector: {e}");
                tls_config(None).expect("an empty trust store")
            })
        } else {
            // Never used for http://, but the connector wants one.
            tls_config(None).expect("an empty trust store")
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build(connector);
        // Built in the exporter thread, so the pid is the daemon's, not the pre-fork one.
        let mut attributes = vec![
            KeyValue::string("service.name", &settings.service_name),
            KeyValue::string("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::int("process.pid", i64::from(std::process::id())),
        ];
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            attributes.push(KeyValue::string("host.name", host.trim()));
        }
        for (key, value) in &settings.resource {
            attributes.retain(|kv| kv.key != *key);
            attributes.push(KeyValue::string(key, value));
        }
        Exporter {
            settings,
            client,
            resource: proto::Resource { attributes },
            failing: false,
        }
    }

    /// Encodes `batch` as one `ExportTraceServiceRequest`.
    fn encode(&self, batch: &[FinishedTrace], spans: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(spans);
        for trace in batch {
            trace.to_spans(&mut out);
        }
        proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: "portico".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: out,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec()
    }

    async fn send(&mut self, batch: &[FinishedTrace], spans: usize) {
        if batch.is_empty() {
            return;
        }
        let body = self.encode(batch, spans);
        match self.post(body).await {
            Ok(rejected) => {
                let rejected = rejected.clamp(0, spans as i64) as usize;
                OTLP_METRICS
                    .spans_exported
                    .inc_by((spans - rejected) as u64);
                if rejected > 0 {
                    OTLP_METRICS
                        .spans_dropped
                        .with_label_values(&["rejected"])
                        .inc_by(rejected as u64);
                }
                if self.failing {
                    log::info!("OTLP export to {} works again", self.settings.endpoint);
                    self.failing = false;
                }
            }
            Err(e) => {
                OTLP_METRICS.export_failures.inc();
                OTLP_METRICS
                    .spans_dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(spans as u64);
                if self.failing {
                    log::debug!("OTLP export to {} failed: {e}", self.settings.endpoint);
                } else {
                    log::warn!(
                        "OTLP export to {} failed, {spans} spans dropped (further failures \
                         are counted in portico_otlp_export_failures_total): {e}",
                        self.settings.endpoint
                    );
                    self.failing = true;
                }
            }
        }
    }

    /// POSTs one export request, retrying what the OTLP specification calls retryable
    /// (429, 502, 503, 504, and failures to connect or answer in time) up to `max_retries`
    /// times; the number of spans the collector rejected.
    async fn post(&self, body: Vec<u8>) -> Result<i64, String> {
        let body = match self.settings.compression {
            Compression::None => Bytes::from(body),
            Compression::Gzip => Bytes::from(gzip(&body)),
        };
        let mut retry = 0;
        loop {
            let wait = match self.post_once(body.clone()).await {
                Ok(rejected) => return Ok(rejected),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retryable(e, _)) if retry >= self.settings.max_retries => {
                    return Err(e)
                }
                Err(Failure::Retryable(e, retry_after)) => {
                    let wait = retry_after
                        .map(|d| d.min(MAX_RETRY_AFTER))
                        .unwrap_or_else(|| backoff(retry));
                    log::debug!("OTLP export failed ({e}); retrying in {wait:?}");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
            retry += 1;
            OTLP_METRICS.export_retries.inc();
        }
    }

    async fn post_once(&self, body: Bytes) -> Result<i64, Failure> {
        let mut request = hyper::Request::post(self.settings.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                http::header::USER_AGENT,
                concat!("portico/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| Failure::Final(e.to_string()))?;
        if self.settings.compression == Compression::Gzip {
            request.headers_mut().insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
        }
        for (name, value) in &self.settings.headers {
            request.headers_mut().insert(name, value.clone());
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let why = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
                Failure::Retryable(why, None)
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Failure::Retryable(e.to_string(), None))?
                .to_bytes();
            Ok::<_, Failure>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.settings.timeout, exchange)
            .await
            .map_err(|_| {
                Failure::Retryable(
                    format!("no answer within {:?}", self.settings.timeout),
                    None,
                )
            })??;
        if !parts.status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            let why = format!("collector answered {}: {text}", parts.status);
            return Err(if portico_client::is_retryable_status(parts.status) {
                let after = portico_client::retry_after(&parts.headers, SystemTime::now());
                Failure::Retryable(why, after)
            } else {
                Failure::Final(why)
            });
        }
        let rejected = proto::ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| {
                if p.rejected_spans > 0 {
                    log::warn!(
                        "OTLP collector rejected {} spans: {}",
                        p.rejected_spans,
                        p.error_message
                    );
                }
                p.rejected_spans
            });
        Ok(rejected)
    }
}

/// Why one export request failed, and whether sending it again may help (with the
/// collector's `Retry-After`, if it gave one).
enum Failure {
    Retryable(String, Option<Duration>),
    Final(String),
}

/// The longest `Retry-After` honoured: the queue fills while the exporter waits.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// 500 ms, 1 s, 2 s, … at most 8 s, each less up to a quarter at random, so gateways that
/// failed together do not retry together.
fn backoff(retry: u32) -> Duration {
    let full = Duration::from_millis(500) * 2u32.saturating_pow(retry.min(4));
    let full = full.min(Duration::from_secs(8));
    full.mul_f64(1.0 - rand::random::<f64>() / 4.0)
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(traceparent: Option<&str>) -> TraceContext {
        TraceContext::from_header(traceparent.map(str::as_bytes))
    }

    fn tracer(ratio: f64) -> Tracer {
        let config: config::Tracing = toml::from_str(&format!(
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = {ratio:?}"
        ))
        .unwrap();
        Tracer::new(&config).unwrap()
    }

    #[test]
    fn the_callers_flag_decides_whatever_the_ratio() {
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(tracer(0.0).sample(&mut trace(Some(sampled))));
        assert!(!tracer(1.0).sample(&mut trace(Some(unsampled))));
        let mut t = trace(Some(unsampled));
        tracer(1.0).sample(&mut t);
        assert!(
            t.header_value().ends_with("-00"),
            "the caller's flag is kept"
        );
    }

    #[test]
    fn without_a_caller_the_ratio_decides_and_is_propagated() {
        let (always, never, half) = (tracer(1.0), tracer(0.0), tracer(0.5));
        let mut sampled = 0;
        for _ in 0..2000 {
            let mut t = trace(None);
            assert!(always.sample(&mut t.clone()));
            assert!(!never.sample(&mut t.clone()));
            if half.sample(&mut t) {
                sampled += 1;
                assert!(t.header_value().ends_with("-01"));
            } else {
                assert!(t.header_value().ends_with("-00"));
            }
        }
        assert!((800..1200).contains(&sampled), "{sampled} of 2000 at 0.5");
    }

    /// Request-thread cost of tracing, in an optimised build:
    /// `cargo test --release --lib otlp::tests::hot_path_cost -- --ignored --nocapture`.
    /// The exporter thread runs (against a closed port) but its work is not counted.
    #[test]
    #[ignore]
    fn hot_path_cost() {
        use std::hint::black_box;
        const N: u32 = 200_000;
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let per_op = |f: &mut dyn FnMut()| {
            for _ in 0..N / 10 {
                f();
            }
            let start = Instant::now();
            for _ in 0..N {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(N)
        };
        // What every request does anyway: the trace context and the upstream header.
        let base = per_op(&mut || {
            let t = TraceContext::from_header(Some(tp.as_bytes()));
            black_box(t.header_value());
        });
        let off = tracer(0.0);
        let unsampled = per_op(&mut || {
            let mut t = TraceContext::from_header(None);
            black_box(off.sample(&mut t));
            black_box(t.header_value());
        });
        let mut config: config::Tracing =
            toml::from_str("otlp_endpoint = \"http://127.0.0.1:9\"").unwrap();
        config.queue_size = 1 << 20;
        let on = Tracer::new(&config).unwrap();
        let sampled = per_op(&mut || {
            let start = Instant::now();
            let mut t = TraceContext::from_header(Some(tp.as_bytes()));
            assert!(on.sample(&mut t));
            let mut spans = RequestSpans::new(start);
            spans.start_attempt("127.0.0.1:9", addr);
            black_box(attempt_traceparent(&t, spans.open_attempt().unwrap()));
            spans.end_attempt("response", Some(200));
            on.export(
                spans,
                &t,
                RequestInfo {
                    method: &http::Method::GET,
                    path: "/orders/7",
                    route: Some(Arc::from("orders")),
                    version: None,
                    cluster: Some("orders"),
                    status: 200,
                    attempts: 1,
                    request_id: "0123456789abcdef0123456789abcdef",
                    client: None,
                    error: None,
                },
            );
        });
        let recorded = per_op(&mut || {
            let start = Instant::now();
            let mut t = TraceContext::from_header(Some(tp.as_bytes()));
            assert!(on.sample(&mut t));
            let mut spans = RequestSpans::new(start);
            spans.start_attempt("127.0.0.1:9", addr);
            black_box(attempt_traceparent(&t, spans.open_attempt().unwrap()));
            spans.end_attempt("response", Some(200));
            black_box(spans);
        });
        println!(
            "per request: trace context + header {base:.0} ns; tracing on, not sampled \
             {unsampled:.0} ns; sampled, recorded {recorded:.0} ns; sampled, recorded and \
             queued {sampled:.0} ns (+{:.0} ns)",
            sampled - base
        );
    }

    #[test]
    fn spans_link_the_caller_the_gateway_and_each_attempt() {
        let mut t = trace(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert!(tracer(1.0).sample(&mut t));
        let mut rec = RequestSpans::new(Instant::now());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        rec.start_attempt("127.0.0.1:9", addr);
        let first = rec.open_attempt().unwrap();
        let rendered = attempt_traceparent(&t, first);
        let rendered = std::str::from_utf8(&rendered).unwrap();
        assert!(rendered.contains(&crate::observe::hex(&first)));
        rec.end_attempt("connect_error", None);
        assert_eq!(rec.open_attempt(), None);
        rec.start_attempt("127.0.0.1:9", addr);
        rec.end_attempt("response", Some(200));
        let finished = rec.finish(
            &t,
            RequestInfo {
                method: &http::Method::GET,
                path: "/orders",
                route: Some(Arc::from("orders")),
                version: Some(Arc::from("2")),
                cluster: Some("orders-v2"),
                status: 200,
                attempts: 2,
                request_id: "abc",
                client: None,
                error: None,
            },
        );
        let mut spans = Vec::new();
        finished.to_spans(&mut spans);
        assert_eq!(spans.len(), 3);
        let gw = &spans[0];
        assert_eq!(gw.parent_span_id, t.parent_id.unwrap().to_vec());
        assert_eq!(gw.span_id, t.span_id.to_vec());
        assert_eq!(gw.flags, 0x301);
        assert_eq!(gw.name, "GET orders");
        assert_eq!(gw.int_attribute("portico.attempts"), Some(2));
        assert_eq!(gw.str_attribute("portico.api_version"), Some("2"));
        for (span, outcome) in spans[1..].iter().zip(["connect_error", "response"]) {
            assert_eq!(span.parent_span_id, t.span_id.to_vec());
            assert_eq!(span.trace_id, t.trace_id.to_vec());
            assert_eq!(span.flags, 0x101);
            assert_eq!(span.kind, SpanKind::Client as i32);
            assert_eq!(span.str_attribute("portico.outcome"), Some(outcome));
            assert!(span.start_time_unix_nano >= gw.start_time_unix_nano);
            assert!(span.end_time_unix_nano <= gw.end_time_unix_nano);
        }
        assert_ne!(spans[1].span_id, spans[2].span_id);
        assert_eq!(
            spans[1].status.as_ref().unwrap().code,
            StatusCode::Error as i32
        );
        assert_eq!(
            spans[2].status.as_ref().unwrap().code,
            StatusCode::Unset as i32
        );

        let body = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: None,
                scope_spans: vec![proto::ScopeSpans {
                    scope: None,
                    spans: spans.clone(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec();
        let decoded = proto::ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans, spans);
    }
}
