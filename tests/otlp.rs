//! OTLP span export against real parts: the `portico` binary, in-test upstreams, and an
//! in-test OTLP/HTTP receiver that decodes every `POST /v1/traces` body with the same
//! protobuf types the gateway encodes with.
//!
//! Absence ("this request was not exported") is shown without sleeping: the request that
//! must not be exported is logged first (its access-log line is written after its spans
//! would have been queued), then a sampled marker request follows, and once the marker's
//! spans arrive every span queued before them has arrived too (one FIFO queue, one export
//! at a time).

mod common;
mod ops_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use portico::observe::hex;
use portico::observe::otlp::proto::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, Span, SpanKind, StatusCode,
};
use prost::Message;

/// One export request as the receiver got it.
#[derive(Debug, Clone)]
struct Export {
    path: String,
    content_type: Option<String>,
    content_encoding: Option<String>,
    authorization: Option<String>,
    body: ExportTraceServiceRequest,
}

/// An OTLP/HTTP receiver on `127.0.0.1:0` keeping every decoded export.
struct Receiver {
    addr: SocketAddr,
    exports: Arc<Mutex<Vec<Export>>>,
    _server: HttpServer,
}

impl Receiver {
    async fn start() -> Receiver {
        let exports = Arc::new(Mutex::new(Vec::new()));
        let shared = exports.clone();
        let server = HttpServer::start(move |req| receive(shared.clone(), req)).await;
        Receiver {
            addr: server.addr,
            exports,
            _server: server,
        }
    }

    fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Span> {
        self.exports()
            .into_iter()
            .flat_map(|e| e.body.resource_spans)
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    /// The spans of one trace.
    fn trace(&self, trace_id: &[u8]) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until the trace has a gateway span and `attempts` attempt spans; returns the
    /// gateway span and the attempt spans in start order.
    async fn wait_trace(&self, trace_id: &[u8], attempts: usize) -> (Span, Vec<Span>) {
        eventually(
            Duration::from_secs(10),
            &format!("a gateway span and {attempts} attempt spans"),
            || async { self.trace(trace_id).len() > attempts },
        )
        .await;
        let spans = self.trace(trace_id);
        assert_eq!(spans.len(), attempts + 1, "spans of the trace: {spans:#?}");
        let gateway = spans
            .iter()
            .find(|s| s.kind == SpanKind::Server as i32)
            .cloned()
            .expect("a server span");
        let mut children: Vec<Span> = spans
            .into_iter()
            .filter(|s| s.kind == SpanKind::Client as i32)
            .collect();
        children.sort_by_key(|s| s.start_time_unix_nano);
        (gateway, children)
    }
}

async fn receive(
    exports: Arc<Mutex<Vec<Export>>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (path, content_type, authorization) = (
        req.uri().path().to_string(),
        header("content-type"),
        header("authorization"),
    );
    let content_encoding = header("content-encoding");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body = match content_encoding.as_deref() {
        Some("gzip") => {
            use std::io::Read;
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .expect("a gzip body");
            Bytes::from(plain)
        }
        None => body,
        Some(other) => panic!("unexpected content-encoding {other}"),
    };
    let body =
        ExportTraceServiceRequest::decode(body).expect("a protobuf ExportTraceServiceRequest");
    exports.lock().unwrap().push(Export {
        path,
        content_type,
        content_encoding,
        authorization,
        body,
    });
    reply(
        200,
        "application/x-protobuf",
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// A fresh client trace: (trace id, the client's span id).
fn client_trace() -> ([u8; 16], [u8; 8]) {
    (rand::random(), rand::random())
}

fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: &str) -> String {
    format!("00-{}-{}-{flags}", hex(trace_id), hex(span_id))
}

/// (trace id hex, parent span id hex, flags) of a `traceparent` value.
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The `traceparent` an upstream received for a trace.
fn upstream_traceparent(up: &Upstream, trace_id: &[u8; 16]) -> Vec<(String, String, String)> {
    let trace_hex = hex(trace_id);
    up.requests()
        .iter()
        .filter_map(|r| r.header("traceparent").map(parse_traceparent))
        .filter(|(t, _, _)| *t == trace_hex)
        .collect()
}

fn tracing_section(receiver: &Receiver, ratio: f64) -> String {
    format!(
        r#"[tracing]
otlp_endpoint = "http://{}/v1/traces"
sample_ratio = {ratio:?}
service_name = "portico-test"
flush_interval = "20ms"
headers = {{ authorization = "Bearer test-token" }}
resource = {{ "deployment.environment.name" = "test" }}
"#,
        receiver.addr
    )
}

/// Route `orders` (`/orders`) to `cluster` of these upstreams.
fn one_route(cluster: &str, upstreams: &[&Upstream]) -> Routes {
    Routes::new()
        .route("orders", "/orders", cluster)
        .cluster(cluster, upstreams)
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&gw.metrics().await, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn a_sampled_request_exports_the_gateway_span_and_its_attempt() {
    bounded(async {
        let receiver = Receiver::start().await;
        let up = Upstream::start("orders-1").await;
        let gw =
            Gateway::builder(one_route("orders", &[&up]).toml(&tracing_section(&receiver, 1.0)))
                .start()
                .await;

        let (trace_id, client_span) = client_trace();
        let resp = gw
            .get_with(
                "/orders/7",
                &[("traceparent", &traceparent(&trace_id, &client_span, "01"))],
            )
            .await;
        assert_eq!(resp.status(), 200);

        let (gateway, attempts) = receiver.wait_trace(&trace_id, 1).await;
        assert_eq!(gateway.parent_span_id, client_span.to_vec());
        assert_eq!(gateway.name, "GET orders");
        assert_eq!(gateway.str_attribute("portico.route"), Some("orders"));
        assert_eq!(gateway.str_attribute("portico.cluster"), Some("orders"));
        assert_eq!(
            gateway.int_attribute("http.response.status_code"),
            Some(200)
        );
        assert_eq!(gateway.int_attribute("portico.attempts"), Some(1));
        assert_eq!(gateway.str_attribute("http.request.method"), Some("GET"));
        assert_eq!(gateway.str_attribute("url.path"), Some("/orders/7"));
        assert_eq!(gateway.flags & 0x3ff, 0x301, "sampled, remote parent");
        assert!(gateway.end_time_unix_nano > gateway.start_time_unix_nano);
        let log = gw.wait_access_log(1).await;
        assert_eq!(
            gateway.str_attribute("portico.request_id"),
            log[0]["request_id"].as_str()
        );

        let attempt = &attempts[0];
        assert_eq!(attempt.parent_span_id, gateway.span_id);
        assert_eq!(attempt.str_attribute("portico.outcome"), Some("response"));
        assert_eq!(
            attempt.int_attribute("http.response.status_code"),
            Some(200)
        );
        assert_eq!(
            attempt.str_attribute("portico.endpoint"),
            Some(up.address().as_str())
        );
        assert_eq!(
            attempt.status.as_ref().map(|s| s.code),
            Some(StatusCode::Unset as i32)
        );
        // The upstream's parent is the attempt span, in the caller's trace, sampled.
        let seen = upstream_traceparent(&up, &trace_id);
        assert_eq!(seen.len(), 1, "{:?}", up.requests());
        assert_eq!(seen[0].1, hex(&attempt.span_id));
        assert_eq!(seen[0].2, "01");
        assert_ne!(attempt.span_id, gateway.span_id);

        // Resource, scope and the export request itself.
        let export = receiver.exports().remove(0);
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(
            export.content_type.as_deref(),
            Some("application/x-protobuf")
        );
        assert_eq!(export.authorization.as_deref(), Some("Bearer test-token"));
        let resource = export.body.resource_spans[0].resource.clone().unwrap();
        let resource_attr = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        use portico::observe::otlp::proto::any_value::Value;
        assert_eq!(
            resource_attr("service.name"),
            Some(Value::StringValue("portico-test".into()))
        );
        assert_eq!(
            resource_attr("deployment.environment.name"),
            Some(Value::StringValue("test".into()))
        );

        eventually(
            Duration::from_secs(5),
            "2 spans counted as exported",
            || async { metric(&gw, "portico_otlp_spans_exported_total", &[]).await == 2.0 },
        )
        .await;
        let config = gw.admin_json("/admin/config").await;
        assert_eq!(
            config["config"]["tracing"]["headers"]["authorization"],
            "<redacted>"
        );
    })
    .await;
}

#[tokio::test]
async fn a_caller_that_did_not_sample_is_not_exported() {
    bounded(async {
        let receiver = Receiver::start().await;
        let up = Upstream::start("orders-1").await;
        let gw =
            Gateway::builder(one_route("orders", &[&up]).toml(&tracing_section(&receiver, 1.0)))
                .start()
                .await;

        let (unsampled, client_span) = client_trace();
        let resp = gw
            .get_with(
                "/orders/1",
                &[("traceparent", &traceparent(&unsampled, &client_span, "00"))],
            )
            .await;
        assert_eq!(resp.status(), 200);
        gw.wait_access_log(1).await;
        // The decision travels on: the upstream is told the trace is not sampled.
        let seen = upstream_traceparent(&up, &unsampled);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].2, "00");

        let (marker, marker_span) = client_trace();
        gw.get_with(
            "/orders/2",
            &[("traceparent", &traceparent(&marker, &marker_span, "01"))],
        )
        .await;
        receiver.wait_trace(&marker, 1).await;
        assert!(
            receiver.trace(&unsampled).is_empty(),
            "an unsampled caller's trace was exported"
        );
        assert_eq!(receiver.spans().len(), 2, "only the marker's spans");
    })
    .await;
}

#[tokio::test]
async fn sample_ratio_zero_exports_no_trace_the_gateway_starts() {
    bounded(async {
        let receiver = Receiver::start().await;
        let up = Upstream::start("orders-1").await;
        let gw =
            Gateway::builder(one_route("orders", &[&up]).toml(&tracing_section(&receiver, 0.0)))
                .start()
                .await;

        for _ in 0..5 {
            assert_eq!(gw.get("/orders/1").await.status(), 200);
        }
        gw.wait_access_log(5).await;
        // The gateway started these traces and decided not to sample them, and says so.
        for r in up.requests() {
            let (_, _, flags) = parse_traceparent(r.header("traceparent").unwrap());
            assert_eq!(flags, "00");
        }

        // A caller's sampled flag still wins over the ratio.
        let (marker, marker_span) = client_trace();
        gw.get_with(
            "/orders/2",
            &[("traceparent", &traceparent(&marker, &marker_span, "01"))],
        )
        .await;
        receiver.wait_trace(&marker, 1).await;
        assert_eq!(receiver.spans().len(), 2, "only the marker's spans");
    })
    .await;
}

#[tokio::test]
async fn a_retried_request_has_one_attempt_span_per_try() {
    bounded(async {
        let receiver = Receiver::start().await;
        let live = Upstream::start("live").await;
        let mut dead = Upstream::start("dead").await;
        let dead_address = dead.address();
        dead.stop().await;
        // Without a `retry` section failed connects are retried on another endpoint.
        let gw = Gateway::builder(
            one_route("orders", &[&dead, &live]).toml(&tracing_section(&receiver, 1.0)),
        )
        .start()
        .await;

        // Round robin over two endpoints: of two requests, one tries the dead one first.
        let mut traces = Vec::new();
        for _ in 0..2 {
            let (trace_id, span) = client_trace();
            let resp = gw
                .get_with(
                    "/orders/1",
                    &[("traceparent", &traceparent(&trace_id, &span, "01"))],
                )
                .await;
            assert_eq!(resp.status(), 200);
            traces.push(trace_id);
        }
        eventually(Duration::from_secs(10), "both gateway spans", || async {
            traces.iter().all(|t| {
                receiver
                    .trace(t)
                    .iter()
                    .any(|s| s.kind == SpanKind::Server as i32)
            })
        })
        .await;
        let trace_id = *traces
            .iter()
            .find(|t| {
                receiver.trace(&t[..]).iter().any(|s| {
                    s.kind == SpanKind::Server as i32
                        && s.int_attribute("portico.attempts") == Some(2)
                })
            })
            .expect("one request was retried");
        let (gateway, attempts) = receiver.wait_trace(&trace_id, 2).await;

        let (first, second) = (&attempts[0], &attempts[1]);
        for a in &attempts {
            assert_eq!(a.parent_span_id, gateway.span_id);
        }
        assert_ne!(first.span_id, second.span_id);
        assert_eq!(
            first.str_attribute("portico.outcome"),
            Some("connect_error")
        );
        assert_eq!(
            first.str_attribute("portico.endpoint"),
            Some(dead_address.as_str())
        );
        assert_eq!(first.int_attribute("http.response.status_code"), None);
        assert_eq!(
            first.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
        assert_eq!(first.int_attribute("portico.attempt"), Some(1));
        assert_eq!(second.str_attribute("portico.outcome"), Some("response"));
        assert_eq!(
            second.str_attribute("portico.endpoint"),
            Some(live.address().as_str())
        );
        assert_eq!(second.int_attribute("portico.attempt"), Some(2));
        assert!(first.end_time_unix_nano <= second.start_time_unix_nano);
        // The live upstream's parent is the second attempt.
        let seen = upstream_traceparent(&live, &trace_id);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].1, hex(&second.span_id));
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_collector_is_counted_and_does_not_hurt_requests() {
    bounded(async {
        let up = Upstream::start("orders-1").await;
        let nowhere = free_addr();
        let gw = Gateway::config()
            .toml(&format!(
                r#"
[tracing]
otlp_endpoint = "http://{nowhere}"
flush_interval = "10ms"
timeout = "500ms"
{}
"#,
                one_route("orders", &[&up])
            ))
            .start()
            .await;
        for _ in 0..3 {
            assert_eq!(gw.get("/orders/1").await.status(), 200);
        }
        eventually(
            Duration::from_secs(10),
            "an export failure counted",
            || async { metric(&gw, "portico_otlp_export_failures_total", &[]).await >= 1.0 },
        )
        .await;
        let text = gw.metrics().await;
        assert!(
            metric_value(
                &text,
                "portico_otlp_spans_dropped_total",
                &[("reason", "export_failed")]
            )
            .unwrap_or(0.0)
                >= 2.0,
            "{text}"
        );
        assert_eq!(
            metric_value(&text, "portico_otlp_spans_exported_total", &[]),
            Some(0.0)
        );
        assert!(gw.stderr().contains("OTLP export to"), "{}", gw.stderr());
    })
    .await;
}

#[test]
fn tracing_config_problems_are_located() {
    let text = r#"
[[listeners]]
address = "127.0.0.1:8080"

[tracing]
otlp_endpoint = "ftp://collector:4318"
sample_ratio = 1.5
batch_size = 0
flush_interval = "0s"
headers = { "bad header" = "x" }
"#;
    let errors = portico::config::load_str("portico.toml", text)
        .expect_err("invalid tracing section")
        .to_string();
    for expected in [
        "portico.toml:6:17: tracing.otlp_endpoint: `ftp://collector:4318` must start with http:// or https://",
        "portico.toml:7:16: tracing.sample_ratio: 1.5 is outside 0.0–1.0",
        "tracing.batch_size: must be between 1 and 65536",
        "tracing.flush_interval: must be greater than 0",
        "tracing.headers.bad header: `bad header` is not a valid header name",
    ] {
        assert!(errors.contains(expected), "missing `{expected}` in:\n{errors}");
    }

    let unknown = portico::config::load_str(
        "portico.toml",
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nratio = 0.5\n",
    )
    .expect_err("unknown field")
    .to_string();
    assert!(unknown.contains("tracing.ratio"), "{unknown}");
}

#[tokio::test]
async fn a_reload_that_changes_tracing_takes_effect() {
    bounded(async {
        let receiver = Receiver::start().await;
        let up = Upstream::start("orders-1").await;
        let gw =
            Gateway::builder(one_route("orders", &[&up]).toml(&tracing_section(&receiver, 0.0)))
                .start()
                .await;
        assert_eq!(gw.get("/orders/1").await.status(), 200);

        let config = gw
            .config
            .replace("sample_ratio = 0.0", "sample_ratio = 1.0");
        assert_ne!(config, gw.config);
        std::fs::write(&gw.config_path, config).unwrap();
        let reloaded = gw.admin_post("/admin/reload").await;
        assert_eq!(reloaded.status(), 200, "{:?}", reloaded.text().await);

        // A trace the gateway starts is now sampled, and is the only one exported.
        assert_eq!(gw.get("/orders/2").await.status(), 200);
        let tp = up.last_request().header("traceparent").unwrap().to_string();
        let (trace_hex, _, flags) = parse_traceparent(&tp);
        assert_eq!(flags, "01");
        eventually(
            Duration::from_secs(10),
            "the new trace exported",
            || async { receiver.spans().len() >= 2 },
        )
        .await;
        let spans = receiver.spans();
        assert_eq!(spans.len(), 2, "{spans:#?}");
        assert!(spans.iter().all(|s| hex(&s.trace_id) == trace_hex));
    })
    .await;
}

/// An OTLP/HTTP receiver over TLS with a certificate from `ca` for `localhost`, answering the
/// first `busy` export requests 503 with `Retry-After: 0` and keeping the rest.
async fn tls_receiver(
    ca: &ops_support::TestCa,
    dir: &std::path::Path,
    busy: usize,
) -> (SocketAddr, Arc<Mutex<Vec<Export>>>, Arc<Mutex<usize>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let issued = ca.server(dir, "collector", &["localhost"]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&issued.cert).unwrap()],
            PrivateKeyDer::from_pem_file(&issued.key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exports = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let (shared, refusals) = (exports.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, shared, refusals) = (acceptor.clone(), shared.clone(), refusals.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (shared, refusals) = (shared.clone(), refusals.clone());
                    async move {
                        let turn_away = {
                            let mut n = refusals.lock().unwrap();
                            *n += 1;
                            *n <= busy
                        };
                        let answer = if turn_away {
                            let _ = req.into_body().collect().await;
                            let mut r = reply(503, "text/plain", "busy");
                            r.headers_mut().insert(
                                "retry-after",
                                hyper::header::HeaderValue::from_static("0"),
                            );
                            r
                        } else {
                            receive(shared, req).await
                        };
                        Ok::<_, std::convert::Infallible>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, exports, refused)
}

#[tokio::test]
async fn an_https_collector_gets_gzip_bodies_and_a_busy_answer_is_retried() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ops_support::TestCa::new("otlp-test-ca");
        let ca_file = ca.write(dir.path());
        let (addr, exports, answered) = tls_receiver(&ca, dir.path(), 1).await;
        let up = Upstream::start("orders-1").await;
        let gw = Gateway::builder(one_route("orders", &[&up]).toml(&format!(
            r#"[tracing]
otlp_endpoint = "https://localhost:{port}/v1/traces"
ca_file = "{ca}"
compression = "gzip"
flush_interval = "20ms"
"#,
            port = addr.port(),
            ca = ca_file.display()
        )))
        .start()
        .await;

        let (trace_id, client_span) = client_trace();
        let resp = gw
            .get_with(
                "/orders/1",
                &[("traceparent", &traceparent(&trace_id, &client_span, "01"))],
            )
            .await;
        assert_eq!(resp.status(), 200);
        eventually(
            Duration::from_secs(10),
            "the export, retried once",
            || async { !exports.lock().unwrap().is_empty() },
        )
        .await;
        let export = exports.lock().unwrap()[0].clone();
        assert_eq!(export.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(export.path, "/v1/traces");
        let spans: Vec<Span> = export
            .body
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect();
        assert!(
            spans.iter().any(|s| s.trace_id == trace_id),
            "the request's trace in the retried export: {spans:#?}"
        );
        assert_eq!(*answered.lock().unwrap(), 2, "one 503, then the export");
        assert_eq!(
            metric(&gw, "portico_otlp_export_retries_total", &[]).await,
            1.0
        );
        assert_eq!(
            metric(&gw, "portico_otlp_export_failures_total", &[]).await,
            0.0
        );
    })
    .await;
}

#[tokio::test]
async fn an_https_collector_with_a_certificate_from_another_ca_is_refused() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other) = (
            ops_support::TestCa::new("otlp-real-ca"),
            ops_support::TestCa::new("otlp-other-ca"),
        );
        let other_file = other.write(dir.path());
        let (addr, exports, _) = tls_receiver(&ca, dir.path(), 0).await;
        let up = Upstream::start("orders-1").await;
        let gw = Gateway::builder(one_route("orders", &[&up]).toml(&format!(
            r#"[tracing]
otlp_endpoint = "https://localhost:{port}"
ca_file = "{ca}"
flush_interval = "20ms"
timeout = "1s"
max_retries = 0
"#,
            port = addr.port(),
            ca = other_file.display()
        )))
        .start()
        .await;
        assert_eq!(gw.get("/orders/1").await.status(), 200);
        eventually(
            Duration::from_secs(10),
            "an export failure counted",
            || async { metric(&gw, "portico_otlp_export_failures_total", &[]).await >= 1.0 },
        )
        .await;
        assert!(exports.lock().unwrap().is_empty());
        assert!(gw.stderr().contains("certificate"), "{}", gw.stderr());
    })
    .await;
}

#[tokio::test]
async fn an_empty_tracing_section_takes_the_collector_from_otel_variables() {
    bounded(async {
        let receiver = Receiver::start().await;
        let up = Upstream::start("orders-1").await;
        let gw = Gateway::builder(
            one_route("orders", &[&up]).toml("[tracing]\nflush_interval = \"20ms\"\n"),
        )
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://{}/", receiver.addr),
        )
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20from-env",
        )
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .env("OTEL_SERVICE_NAME", "edge-from-env")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=ci")
        .start()
        .await;

        let (trace_id, client_span) = client_trace();
        gw.get_with(
            "/orders/2",
            &[("traceparent", &traceparent(&trace_id, &client_span, "01"))],
        )
        .await;
        receiver.wait_trace(&trace_id, 1).await;
        let export = receiver.exports()[0].clone();
        assert_eq!(export.path, "/v1/traces");
        assert_eq!(export.authorization.as_deref(), Some("Bearer from-env"));
        assert_eq!(export.content_encoding.as_deref(), Some("gzip"));
        let resource = export.body.resource_spans[0].resource.clone().unwrap();
        let attribute = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
                .map(|v| format!("{v:?}"))
                .unwrap_or_default()
        };
        assert!(
            attribute("service.name").contains("edge-from-env"),
            "{resource:?}"
        );
        assert!(
            attribute("deployment.environment.name").contains("ci"),
            "{resource:?}"
        );
    })
    .await;
}
