//! What the span exporter is configured with: the `[tracing]` section, with OpenTelemetry's
//! standard `OTEL_*` environment variables filling in what the section leaves unset.
//!
//! The file wins over the environment (as an SDK's own settings win over its environment),
//! and a trace-specific variable (`OTEL_EXPORTER_OTLP_TRACES_*`) over the generic one
//! (`OTEL_EXPORTER_OTLP_*`), so an empty `[tracing]` section can take everything from a
//! systemd unit's `Environment=` lines. The variables are read where the config is
//! validated and built, so `portico check` reports a bad one with the field it stands for.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::config;

/// How export request bodies are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// The resolved exporter settings.
#[derive(Debug)]
pub struct Settings {
    pub endpoint: Uri,
    pub headers: HeaderMap,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub timeout: Duration,
    pub compression: Compression,
    /// The CA bundle that alone is trusted for an `https` collector; `None`: the system's.
    pub ca_file: Option<String>,
    pub max_retries: u32,
}

/// A problem with one `[tracing]` field (or the variable standing in for it).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub field: &'static str,
    /// The entry of a table field (a header's name) the problem is about.
    pub key: Option<String>,
    pub message: String,
}

/// The default `timeout` of one export request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SERVICE_NAME: &str = "portico";

/// Resolves `[tracing]` against the process environment.
pub fn resolve(t: &config::Tracing) -> Result<Settings, Vec<Problem>> {
    resolve_with(t, &|name| std::env::var(name).ok())
}

/// Resolves `[tracing]` against `env` (a lookup, so tests need not touch the process's).
pub fn resolve_with(
    t: &config::Tracing,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut fail = |field: &'static str, message: String| {
        problems.push(Problem {
            field,
            key: None,
            message,
        });
    };
    let var = |suffix: &str| -> Option<(String, String)> {
        [
            format!("OTEL_EXPORTER_OTLP_TRACES_{suffix}"),
            format!("OTEL_EXPORTER_OTLP_{suffix}"),
        ]
        .into_iter()
        .find_map(|name| {
            env(&name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        })
    };

    if let Some(protocol) = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .filter(|p| !p.trim().is_empty() && p.trim() != "http/protobuf")
    {
        fail(
            "otlp_endpoint",
            format!("OTEL_EXPORTER_OTLP_PROTOCOL is `{protocol}`; portico exports over http/protobuf only"),
        );
    }

    let endpoint = match (t.otlp_endpoint.as_deref(), env_endpoint(env)) {
        (Some(text), _) => endpoint_uri(text),
        (None, Some((name, text))) => endpoint_uri(&text).map_err(|e| format!("{name}: {e}")),
        (None, None) => Err(
            "missing: set it, or OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) in the environment"
                .to_string(),
        ),
    }
    .map_err(|e| fail("otlp_endpoint", e))
    .ok();

    // Generic, then trace-specific, then the file's own: later ones win per name.
    let mut headers = HeaderMap::new();
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if let Some(text) = env(name) {
            let parsed = key_value_list(&text).and_then(|pairs| header_map(&pairs));
            match parsed {
                Ok(map) => headers.extend(map),
                Err(e) => fail("headers", format!("{name}: {e}")),
            }
        }
    }
    let mut file_header_problems = Vec::new();
    for (name, value) in &t.headers {
        match header_map(&[(name.clone(), value.clone())]) {
            Ok(map) => headers.extend(map),
            Err(message) => file_header_problems.push(Problem {
                field: "headers",
                key: Some(name.clone()),
                message,
            }),
        }
    }

    let service_name = t
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    if service_name.trim().is_empty() {
        fail("service_name", "must not be empty".into());
    }

    let mut resource: BTreeMap<String, String> = BTreeMap::new();
    if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
        match key_value_list(&text) {
            Ok(pairs) => resource.extend(pairs),
            Err(e) => fail("resource", format!("OTEL_RESOURCE_ATTRIBUTES: {e}")),
        }
    }
    resource.extend(t.resource.iter().map(|(k, v)| (k.clone(), v.clone())));

    let timeout = match (t.timeout, var("TIMEOUT")) {
        (Some(d), _) => d,
        (None, Some((name, ms))) => match ms.trim().parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                fail(
                    "timeout",
                    format!("{name}: `{ms}` is not a number of milliseconds"),
                );
                DEFAULT_TIMEOUT
            }
        },
        (None, None) => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        fail("timeout", "must be greater than 0".into());
    }

    let compression = match (t.compression.as_deref(), var("COMPRESSION")) {
        (Some(text), _) => compression(text).map_err(|e| fail("compression", e)).ok(),
        (None, Some((name, text))) => compression(&text)
            .map_err(|e| fail("compression", format!("{name}: {e}")))
            .ok(),
        (None, None) => Some(Compression::None),
    }
    .unwrap_or(Compression::None);

    let ca_file = t
        .ca_file
        .clone()
        .or_else(|| var("CERTIFICATE").map(|(_, path)| path));
    if let Some(path) = &ca_file {
        if let Err(e) = crate::runtime::tls::read_roots(path) {
            fail("ca_file", e);
        }
    }
    if let (Some(uri), Some(_)) = (&endpoint, &ca_file) {
        if uri.scheme_str() != Some("https") {
            fail(
                "ca_file",
                "only used for an https endpoint; this one is http".into(),
            );
        }
    }

    problems.extend(file_header_problems);
    match (endpoint, problems.is_empty()) {
        (Some(endpoint), true) => Ok(Settings {
            endpoint,
            headers,
            service_name,
            resource: resource.into_iter().collect(),
            batch_size: t.batch_size.max(1),
            flush_interval: t.flush_interval,
            timeout,
            compression,
            ca_file,
            max_retries: t.max_retries,
        }),
        _ => Err(problems),
    }
}

/// The endpoint the environment gives: the trace-specific URL as it is, or the generic
/// base URL with `v1/traces` appended to its path (the OTLP exporter specification's rule).
fn env_endpoint(env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let specific = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    if let Some(url) = env(specific).filter(|v| !v.trim().is_empty()) {
        return Some((specific.into(), url.trim().to_string()));
    }
    let generic = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let base = env(generic).filter(|v| !v.trim().is_empty())?;
    let base = base.trim();
    let url = format!("{}/v1/traces", base.trim_end_matches('/'));
    Some((generic.into(), url))
}

/// The URI spans are POSTed to: an `http://` or `https://` URL, with `/v1/traces` added
/// when it has no path.
pub fn endpoint_uri(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("`{text}` must start with http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    if uri.path().is_empty() || uri.path() == "/" {
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
        return Uri::from_parts(parts).map_err(|e| format!("`{text}`: {e}"));
    }
    Ok(uri)
}

fn compression(text: &str) -> Result<Compression, String> {
    match text.trim() {
        "gzip" => Ok(Compression::Gzip),
        "none" => Ok(Compression::None),
        other => Err(format!("`{other}` is not `gzip` or `none`")),
    }
}

/// Builds the export request's extra headers (e.g. `authorization`); values are marked
/// sensitive so they never show in debug output.
pub fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// OpenTelemetry's `key1=value1,key2=value2` lists (headers, resource attributes): keys and
/// values trimmed, values percent-decoded (`%20` for a space, `%2C` for a comma).
fn key_value_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for item in text.split(',').filter(|i| !i.trim().is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("`{}` is not key=value", item.trim()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("`{}` has an empty key", item.trim()));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("the value of `{key}` is not valid percent-encoded UTF-8"))?;
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> config::Tracing {
        toml::from_str(text).expect("a [tracing] section")
    }

    fn with_env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn an_empty_section_takes_everything_from_the_environment() {
        let env = with_env(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector.internal:4318/",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20abc, x-tenant = t1",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "edge-gw"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=prod,host.name=n1",
            ),
        ]);
        let s = resolve_with(&section(""), &env).expect("resolves");
        assert_eq!(s.endpoint, "https://collector.internal:4318/v1/traces");
        assert_eq!(s.headers["authorization"], "Bearer abc");
        assert_eq!(s.headers["x-tenant"], "t1");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.compression, Compression::Gzip);
        assert_eq!(s.service_name, "edge-gw");
        assert!(s
            .resource
            .contains(&("deployment.environment.name".into(), "prod".into())));
    }

    #[test]
    fn the_file_wins_and_the_trace_specific_variable_beats_the_generic_one() {
        let env = with_env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://specific:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=generic,b=generic"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=specific"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ]);
        let s = resolve_with(&section(""), &env).unwrap();
        assert_eq!(s.endpoint, "http://specific:4318/custom");
        assert_eq!(s.headers["a"], "specific");
        assert_eq!(s.headers["b"], "generic");
        let s = resolve_with(
            &section(
                "otlp_endpoint = \"http://file:4318\"\nservice_name = \"from-file\"\ncompression = \"none\"\nheaders = { b = \"file\" }",
            ),
            &env,
        )
        .unwrap();
        assert_eq!(s.endpoint, "http://file:4318/v1/traces");
        assert_eq!(s.service_name, "from-file");
        assert_eq!(s.compression, Compression::None);
        assert_eq!(s.headers["b"], "file");
    }

    #[test]
    fn bad_values_name_their_field_and_variable() {
        let problems = resolve_with(
            &section(""),
            &with_env(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "lz4"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]),
        )
        .unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "otlp_endpoint",
                "otlp_endpoint",
                "headers",
                "timeout",
                "compression"
            ],
            "{problems:?}"
        );
        assert!(problems[3].message.contains("OTEL_EXPORTER_OTLP_TIMEOUT"));
        assert!(problems[1].message.contains("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let problems = resolve_with(
            &section("otlp_endpoint = \"ftp://x\"\nca_file = \"/nonexistent.pem\""),
            &with_env(&[]),
        )
        .unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, ["otlp_endpoint", "ca_file"], "{problems:?}");
    }

    #[test]
    fn endpoints_get_the_default_path_and_need_a_host() {
        assert_eq!(
            endpoint_uri("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            endpoint_uri("https://c:4318/otlp/v1/traces").unwrap(),
            "https://c:4318/otlp/v1/traces"
        );
        assert!(endpoint_uri("collector:4318").is_err());
        assert!(endpoint_uri("http://").is_err());
    }

    #[test]
    fn key_value_lists_decode_percent_escapes() {
        assert_eq!(
            key_value_list("k=a%2Cb%3Dc , x=%E2%9C%93").unwrap(),
            [
                ("k".to_string(), "a,b=c".to_string()),
                ("x".into(), "✓".into())
            ]
        );
        assert!(key_value_list("k=%zz").is_err());
        assert!(key_value_list("=v").is_err());
    }
}
