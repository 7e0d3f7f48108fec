//! The `cors` plugin: answers CORS preflights itself and adds the CORS response headers to
//! actual cross-origin requests, for browser clients calling the API from other origins.
//! The gateway's policy is the only one the browser sees: CORS headers the upstream sets on
//! a cross-origin response are replaced (or removed when the origin is not allowed).
//!
//! ```toml
//! [[routes.plugins]]
//! name = "cors"
//! allow_origins = ["https://app.example.com", "https://*.example.com"]  # default: none
//! allow_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]     # default
//! allow_headers = ["authorization", "content-type", "x-request-id"]     # default
//! expose_headers = ["x-request-id"]                                     # default: none
//! allow_credentials = false                                             # default
//! max_age = 600                                                         # seconds, default
//! ```
//!
//! `allow_origins` entries are `scheme://host[:port]` as browsers send them in `Origin`,
//! compared case-insensitively with default ports ignored; `*.example.com` as the host
//! allows every subdomain (not `example.com` itself); `"*"` allows every origin but cannot be
//! combined with `allow_credentials = true`. Methods are matched case-sensitively, as the
//! Fetch standard does. Put `cors` before authentication plugins in a route's chain:
//! browsers send preflights without credentials.

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_TYPE, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;

use crate::build::{parse_config, BuildError};
use crate::{Flow, Hooks, Plugin, PluginCtx, PluginResponse, RequestHeader, ResponseHeader};

/// The registry name.
pub const NAME: &str = "cors";

/// What a preflight response varies on, so caches never serve one origin's answer to another.
const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    allow_origins: Vec<String>,
    allow_methods: Vec<String>,
    allow_headers: Vec<String>,
    expose_headers: Vec<String>,
    allow_credentials: bool,
    max_age: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // Nothing is allowed until the operator says which origins may call the API.
            allow_origins: Vec::new(),
            allow_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            allow_headers: ["authorization", "content-type", "x-request-id"]
                .map(String::from)
                .to_vec(),
            expose_headers: Vec::new(),
            allow_credentials: false,
            max_age: 600,
        }
    }
}

/// An origin split into its parts, borrowed from the string it was parsed from. The port is
/// `None` when absent or the scheme's default, so `https://a` and `https://a:443` are equal.
#[derive(Debug, PartialEq, Eq)]
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

/// Parses `scheme://host[:port]`, the serialisation browsers put in `Origin` (no userinfo,
/// path, query or trailing slash). `wildcard` lets the host contain `*`, for config entries.
/// Written by hand because URL parsers accept and normalise far more (paths, IDNA, percent
/// escapes) than an origin may contain, and this runs on every cross-origin request.
fn parse_origin(s: &str, wildcard: bool) -> Option<Origin<'_>> {
    let (scheme, authority) = s.split_once("://")?;
    let scheme_ok = scheme.as_bytes().first()?.is_ascii_alphabetic()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }

    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip_ok = !ip.is_empty()
            && ip
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !ip_ok {
            return None;
        }
        (&authority[..ip.len() + 2], after)
    } else {
        let end = authority.find(':').unwrap_or(authority.len());
        let host = &authority[..end];
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || (wildcard && b == b'*')
            });
        if !host_ok {
            return None;
        }
        (host, &authority[end..])
    };

    let port = if port.is_empty() {
        None
    } else {
        let digits = port.strip_prefix(':')?;
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port: u16 = digits.parse().ok()?;
        (Some(port) != default_port(scheme)).then_some(port)
    };

    Some(Origin { scheme, host, port })
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

/// One allowed origin from the config, lower-cased.
#[derive(Debug)]
struct OriginRule {
    scheme: String,
    host: HostRule,
    port: Option<u16>,
}

#[derive(Debug)]
enum HostRule {
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Subdomain(String),
}

impl OriginRule {
    fn parse(entry: &str) -> Result<Self, String> {
        if entry.eq_ignore_ascii_case("null") {
            return Err(
                "the `null` origin cannot be allowed: sandboxed documents, `file:` pages \
                 and redirects all send it, so allowing it allows anyone"
                    .to_owned(),
            );
        }
        let origin = parse_origin(entry, true).ok_or_else(|| {
            format!(
                "`{entry}` is not an origin: expected `scheme://host[:port]` as browsers send \
                 it, without path or trailing `/` (e.g. `https://app.example.com`)"
            )
        })?;
        let host = match origin.host.strip_prefix('*') {
            Some(suffix)
                if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
            {
                HostRule::Subdomain(suffix.to_ascii_lowercase())
            }
            _ if origin.host.contains('*') => {
                return Err(format!(
                    "`{entry}`: a wildcard is only allowed as the whole first label of the host, \
                     as in `https://*.example.com`"
                ))
            }
            _ => HostRule::Exact(origin.host.to_ascii_lowercase()),
        };
        Ok(OriginRule {
            scheme: origin.scheme.to_ascii_lowercase(),
            host,
            port: origin.port,
        })
    }

    fn matches(&self, origin: &Origin<'_>) -> bool {
        self.port == origin.port
            && self.scheme.eq_ignore_ascii_case(origin.scheme)
            && match &self.host {
                HostRule::Exact(host) => host.eq_ignore_ascii_case(origin.host),
                HostRule::Subdomain(suffix) => {
                    let host = origin.host.as_bytes();
                    host.len() > suffix.len()
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                }
            }
    }
}

/// The built `cors` plugin. Every header value it sends, except the echoed origin, is
/// rendered at build time.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<OriginRule>,
    methods: Vec<Method>,
    /// Lower-cased, as [`HeaderName`] spells them.
    allow_headers: Vec<String>,
    allow_methods_value: Option<HeaderValue>,
    allow_headers_value: Option<HeaderValue>,
    expose_headers_value: Option<HeaderValue>,
    credentials: bool,
    max_age_value: HeaderValue,
}

impl Cors {
    /// Builds the plugin from its config table.
    pub fn from_config(config: toml::Value) -> Result<Self, BuildError> {
        let config: Config = parse_config(NAME, config)?;

        let mut any_origin = false;
        let mut origins = Vec::with_capacity(config.allow_origins.len());
        for (i, entry) in config.allow_origins.iter().enumerate() {
            let field = || format!("allow_origins[{i}]");
            if entry == "*" {
                if config.allow_credentials {
                    return Err(BuildError::invalid(
                        NAME,
                        field(),
                        "`*` cannot be combined with allow_credentials = true: browsers refuse \
                         `Access-Control-Allow-Origin: *` on credentialed requests (Fetch \
                         standard); list the allowed origins instead",
                    ));
                }
                any_origin = true;
            } else {
                origins.push(
                    OriginRule::parse(entry)
                        .map_err(|msg| BuildError::invalid(NAME, field(), msg))?,
                );
            }
        }

        let mut methods = Vec::with_capacity(config.allow_methods.len());
        for (i, name) in config.allow_methods.iter().enumerate() {
            let method = match Method::from_bytes(name.as_bytes()) {
                Ok(method) if name != "*" => method,
                _ => {
                    return Err(BuildError::invalid(
                        NAME,
                        format!("allow_methods[{i}]"),
                        format!("`{name}` is not an HTTP method; list the methods explicitly"),
                    ))
                }
            };
            methods.push(method);
        }

        let allow_headers = header_names(&config.allow_headers, "allow_headers", false)?;
        let expose_headers = header_names(
            &config.expose_headers,
            "expose_headers",
            !config.allow_credentials,
        )?;

        Ok(Cors {
            any_origin,
            origins,
            allow_methods_value: joined(methods.iter().map(|m| m.as_str())),
            methods,
            allow_headers_value: joined(allow_headers.iter().map(|h| h.as_str())),
            allow_headers,
            expose_headers_value: joined(expose_headers.iter().map(|h| h.as_str())),
            credentials: config.allow_credentials,
            max_age_value: HeaderValue::from(config.max_age),
        })
    }

    /// Whether the response depends on `Origin`, so caches must key on it.
    fn varies(&self) -> bool {
        !self.any_origin && !self.origins.is_empty()
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        // A linear scan: allow-lists are a handful of entries, and matching must be
        // case-insensitive, which a hash lookup could only do after allocating a lower-cased
        // copy of the request's origin.
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let Some(origin) = parse_origin(origin, false) else {
            return false;
        };
        self.origins.iter().any(|rule| rule.matches(&origin))
    }

    /// Whether every header named in `Access-Control-Request-Headers` is allowed.
    fn request_headers_allowed(&self, req: &RequestHeader) -> bool {
        for value in req.headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(list) = value.to_str() else {
                return false;
            };
            for name in list.split(',') {
                let name = name.trim_matches([' ', '\t']);
                if !name.is_empty()
                    && !self
                        .allow_headers
                        .iter()
                        .any(|allowed| allowed.eq_ignore_ascii_case(name))
                {
                    return false;
                }
            }
        }
        true
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        // `*` is only ever configured without credentials (checked at build time).
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    fn preflight_response(&self, origin: &HeaderValue) -> PluginResponse {
        let mut resp = PluginResponse::empty(StatusCode::NO_CONTENT);
        resp.headers.reserve(6);
        resp.headers
            .push((ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin)));
        if self.credentials {
            resp.headers.push((
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(methods) = &self.allow_methods_value {
            resp.headers
                .push((ACCESS_CONTROL_ALLOW_METHODS, methods.clone()));
        }
        if let Some(headers) = &self.allow_headers_value {
            resp.headers
                .push((ACCESS_CONTROL_ALLOW_HEADERS, headers.clone()));
        }
        resp.headers
            .push((ACCESS_CONTROL_MAX_AGE, self.max_age_value.clone()));
        resp.headers
            .push((VARY, HeaderValue::from_static(PREFLIGHT_VARY)));
        resp
    }
}

/// Parses a list of header names into their lower-case spelling; `*` is accepted only
/// where `star` says so.
fn header_names(names: &[String], field: &str, star: bool) -> Result<Vec<String>, BuildError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if name == "*" {
                return if star {
                    Ok(name.clone())
                } else {
                    Err(BuildError::invalid(
                        NAME,
                        format!("{field}[{i}]"),
                        "`*` is not supported here; list the header names explicitly \
                         (and expose_headers = [\"*\"] only works without credentials)",
                    ))
                };
            }
            HeaderName::from_bytes(name.as_bytes())
                .map(|name| name.as_str().to_owned())
                .map_err(|_| {
                    BuildError::invalid(
                        NAME,
                        format!("{field}[{i}]"),
                        format!("`{name}` is not a valid header name"),
                    )
                })
        })
        .collect()
}

/// `a, b, c` as a header value, or `None` for an empty list (the header is then omitted).
fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let list = items.collect::<Vec<_>>().join(", ");
    if list.is_empty() {
        return None;
    }
    // Header names and method tokens joined by ", " always make a valid value.
    HeaderValue::from_str(&list).ok()
}

/// True for a CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(ORIGIN)
        && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// A refused preflight: 403 without CORS headers, so the browser fails the actual request.
/// The reason is for developers reading the network panel; it never echoes request data.
fn reject(reason: &'static str) -> Flow {
    log::debug!("cors: preflight rejected: {reason}");
    Flow::Respond(
        PluginResponse {
            status: StatusCode::FORBIDDEN,
            headers: Vec::with_capacity(1),
            body: Bytes::from_static(reason.as_bytes()),
        }
        .with_header(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ),
    )
}

/// Adds `Origin` to `Vary` unless it is already there (or `Vary: *` covers it), keeping the
/// upstream's own entries: a second `Vary` line is equivalent to a comma-joined one.
fn append_vary_origin(resp: &mut ResponseHeader) {
    let covered = resp.headers.get_all(VARY).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',').any(|token| {
                let token = token.trim_matches([' ', '\t']);
                token == "*" || token.eq_ignore_ascii_case("origin")
            })
        })
    });
    if !covered {
        if let Err(e) = resp.append_header(VARY, HeaderValue::from_static("Origin")) {
            log::warn!("cors: cannot add Vary: {e}");
        }
    }
}

#[async_trait]
impl Plugin for Cors {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Stateless: every answer follows from the table and the request.
    fn shareable(&self) -> bool {
        true
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: true,
            ..Hooks::default()
        }
    }

    async fn request(&self, _ctx: &mut PluginCtx, req: &mut RequestHeader) -> Flow {
        if !is_preflight(req) {
            return Flow::Continue;
        }
        let (Some(origin), Some(method)) = (
            req.headers.get(ORIGIN),
            req.headers.get(ACCESS_CONTROL_REQUEST_METHOD),
        ) else {
            return Flow::Continue;
        };
        if !self.origin_allowed(origin) {
            return reject("CORS preflight rejected: origin not allowed\n");
        }
        if !self
            .methods
            .iter()
            .any(|allowed| allowed.as_str().as_bytes() == method.as_bytes())
        {
            return reject("CORS preflight rejected: method not allowed\n");
        }
        if !self.request_headers_allowed(req) {
            return reject("CORS preflight rejected: request header not allowed\n");
        }
        Flow::Respond(self.preflight_response(origin))
    }

    async fn response(&self, _ctx: &mut PluginCtx, req: &RequestHeader, resp: &mut ResponseHeader) {
        // A preflight got its full answer (204 or 403) from the request hook, or an earlier
        // plugin answered it; either way there is nothing to add.
        if is_preflight(req) {
            return;
        }
        // Also on responses to requests without `Origin`: a shared cache that stored one of
        // those would otherwise serve it, without `Access-Control-Allow-Origin`, to a
        // cross-origin request (Fetch standard, "CORS protocol and HTTP caches").
        if self.varies() {
            append_vary_origin(resp);
        }
        let Some(origin) = req.headers.get(ORIGIN) else {
            return;
        };
        resp.remove_header(&ACCESS_CONTROL_ALLOW_ORIGIN);
        resp.remove_header(&ACCESS_CONTROL_ALLOW_CREDENTIALS);
        resp.remove_header(&ACCESS_CONTROL_EXPOSE_HEADERS);
        if !self.origin_allowed(origin) {
            return;
        }
        let mut set = |name: HeaderName, value: HeaderValue| {
            if let Err(e) = resp.insert_header(name, value) {
                log::warn!("cors: cannot set response header: {e}");
            }
        };
        set(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
        if self.credentials {
            set(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers_value {
            set(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const APP: &str = "https://app.example.com";

    fn plugin(src: &str) -> Arc<dyn Plugin> {
        Arc::new(
            Cors::from_config(toml::from_str(src).expect("test TOML parses"))
                .expect("config builds"),
        )
    }

    fn config_error(src: &str) -> (String, Option<String>) {
        match Cors::from_config(toml::from_str(src).expect("test TOML parses")) {
            Err(BuildError::InvalidConfig {
                plugin,
                message,
                field,
            }) => {
                assert_eq!(plugin, NAME);
                (message, field)
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("config `{src}` should fail"),
        }
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("OPTIONS", b"/x", None).unwrap();
        req.insert_header("Origin", origin).unwrap();
        req.insert_header("Access-Control-Request-Method", method)
            .unwrap();
        if let Some(headers) = headers {
            req.insert_header("Access-Control-Request-Headers", headers)
                .unwrap();
        }
        req
    }

    fn get(origin: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        if let Some(origin) = origin {
            req.insert_header("Origin", origin).unwrap();
        }
        req
    }

    async fn answer(p: &Arc<dyn Plugin>, req: &mut RequestHeader) -> Option<PluginResponse> {
        match p.request(&mut PluginCtx::default(), req).await {
            Flow::Continue => None,
            Flow::Respond(resp) => Some(resp),
        }
    }

    fn header<'a>(resp: &'a PluginResponse, name: &str) -> Option<&'a str> {
        resp.headers
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_str().unwrap())
    }

    fn assert_no_cors(resp: &PluginResponse) {
        assert!(
            resp.headers
                .iter()
                .all(|(n, _)| !n.as_str().starts_with("access-control-")),
            "{:?}",
            resp.headers
        );
    }

    /// Runs the response hook over a fresh 200 carrying `upstream` headers.
    async fn respond(
        p: &Arc<dyn Plugin>,
        req: &RequestHeader,
        upstream: &[(&'static str, &'static str)],
    ) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (name, value) in upstream {
            resp.append_header(*name, *value).unwrap();
        }
        p.response(&mut PluginCtx::default(), req, &mut resp).await;
        resp
    }

    fn values<'a>(resp: &'a ResponseHeader, name: &str) -> Vec<&'a str> {
        resp.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn an_allowed_preflight_gets_204_with_the_policy() {
        let p = plugin(&format!("allow_origins = [\"{APP}\"]"));
        let mut req = preflight(APP, "PUT", Some("content-type, X-Request-Id"));
        let resp = answer(&p, &mut req).await.expect("preflight answered");
        assert_eq!(resp.status, StatusCode::NO_CONTENT);
        assert!(resp.body.is_empty());
        assert_eq!(header(&resp, "access-control-allow-origin"), Some(APP));
        assert_eq!(
            header(&resp, "access-control-allow-methods"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE")
        );
        assert_eq!(
            header(&resp, "access-control-allow-headers"),
            Some("authorization, content-type, x-request-id")
        );
        assert_eq!(header(&resp, "access-control-max-age"), Some("600"));
        assert_eq!(header(&resp, "access-control-allow-credentials"), None);
        assert_eq!(header(&resp, "vary"), Some(PREFLIGHT_VARY));
    }

    #[tokio::test]
    async fn the_concrete_origin_is_echoed_as_sent() {
        let p = plugin("allow_origins = [\"https://App.Example.com:443\"]");
        for origin in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
        ] {
            let mut req = preflight(origin, "GET", None);
            let resp = answer(&p, &mut req).await.expect("answered");
            assert_eq!(resp.status, StatusCode::NO_CONTENT, "{origin}");
            assert_eq!(header(&resp, "access-control-allow-origin"), Some(origin));
        }
        for origin in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.io",
            "https://app.example.com/",
            "https://user@app.example.com",
            "null",
            "app.example.com",
        ] {
            let mut req = preflight(origin, "GET", None);
            let resp = answer(&p, &mut req).await.expect("answered");
            assert_eq!(resp.status, StatusCode::FORBIDDEN, "{origin}");
        }
    }

    #[tokio::test]
    async fn subdomain_wildcards_match_subdomains_only() {
        let p = plugin("allow_origins = [\"https://*.example.com\", \"http://[::1]:8080\"]");
        for origin in [
            "https://a.example.com",
            "https://a.b.Example.com",
            "http://[::1]:8080",
        ] {
            let mut req = preflight(origin, "GET", None);
            let resp = answer(&p, &mut req).await.unwrap();
            assert_eq!(resp.status, StatusCode::NO_CONTENT, "{origin}");
        }
        for origin in [
            "https://example.com",
            "https://evil-example.com",
            "https://.example.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.evil.io",
            "https://*.example.com",
            "http://[::1]",
        ] {
            let mut req = preflight(origin, "GET", None);
            let resp = answer(&p, &mut req).await.unwrap();
            assert_eq!(resp.status, StatusCode::FORBIDDEN, "{origin}");
        }
    }

    #[tokio::test]
    async fn disallowed_preflights_get_a_plain_403() {
        let p = plugin(&format!(
            "allow_origins = [\"{APP}\"]\nallow_methods = [\"GET\", \"POST\"]\nallow_headers = [\"content-type\"]"
        ));
        let cases = [
            (preflight("https://evil.example", "GET", None), "origin"),
            (preflight(APP, "DELETE", None), "method"),
            // Methods are case-sensitive, as browsers send them.
            (preflight(APP, "post", None), "method"),
            (
                preflight(APP, "POST", Some("content-type, x-secret")),
                "header",
            ),
        ];
        for (mut req, reason) in cases {
            let resp = answer(&p, &mut req).await.expect("answered");
            assert_eq!(resp.status, StatusCode::FORBIDDEN, "{reason}");
            assert_no_cors(&resp);
            assert_eq!(
                header(&resp, "content-type"),
                Some("text/plain; charset=utf-8")
            );
            let body = std::str::from_utf8(&resp.body).unwrap();
            assert!(body.contains(reason), "{body}");
            assert!(body.len() < 100);
        }
        // Requested headers are compared case-insensitively, blanks and empty items ignored.
        let mut req = preflight(APP, "POST", Some(" Content-Type ,, "));
        let resp = answer(&p, &mut req).await.unwrap();
        assert_eq!(resp.status, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn star_without_credentials_answers_star() {
        let p = plugin("allow_origins = [\"*\"]\nexpose_headers = [\"X-Request-Id\"]");
        let mut req = preflight("https://anyone.example", "PATCH", None);
        let resp = answer(&p, &mut req).await.unwrap();
        assert_eq!(resp.status, StatusCode::NO_CONTENT);
        assert_eq!(header(&resp, "access-control-allow-origin"), Some("*"));

        let req = get(Some("https://anyone.example"));
        let resp = respond(&p, &req, &[]).await;
        assert_eq!(values(&resp, "access-control-allow-origin"), ["*"]);
        assert_eq!(
            values(&resp, "access-control-expose-headers"),
            ["x-request-id"]
        );
        // The answer does not depend on the origin, so caches need not key on it.
        assert!(values(&resp, "vary").is_empty());
    }

    #[tokio::test]
    async fn credentials_are_announced_with_the_concrete_origin() {
        let p = plugin(&format!(
            "allow_origins = [\"{APP}\"]\nallow_credentials = true\nmax_age = 30"
        ));
        let mut req = preflight(APP, "GET", Some("authorization"));
        let resp = answer(&p, &mut req).await.unwrap();
        assert_eq!(header(&resp, "access-control-allow-origin"), Some(APP));
        assert_eq!(
            header(&resp, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&resp, "access-control-max-age"), Some("30"));

        let resp = respond(&p, &get(Some(APP)), &[]).await;
        assert_eq!(values(&resp, "access-control-allow-origin"), [APP]);
        assert_eq!(values(&resp, "access-control-allow-credentials"), ["true"]);
    }

    #[tokio::test]
    async fn actual_requests_pass_and_get_cors_headers() {
        let p = plugin(&format!(
            "allow_origins = [\"{APP}\"]\nexpose_headers = [\"X-Request-Id\", \"ETag\"]"
        ));
        let mut req = get(Some(APP));
        assert!(answer(&p, &mut req).await.is_none());
        let resp = respond(
            &p,
            &req,
            &[
                ("Vary", "Accept-Encoding"),
                // An upstream's own, wider policy is replaced by the gateway's.
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Allow-Credentials", "true"),
            ],
        )
        .await;
        assert_eq!(values(&resp, "access-control-allow-origin"), [APP]);
        assert!(values(&resp, "access-control-allow-credentials").is_empty());
        assert_eq!(
            values(&resp, "access-control-expose-headers"),
            ["x-request-id, etag"]
        );
        assert_eq!(values(&resp, "vary"), ["Accept-Encoding", "Origin"]);
    }

    #[tokio::test]
    async fn vary_is_not_repeated() {
        let p = plugin(&format!("allow_origins = [\"{APP}\"]"));
        let req = get(Some(APP));
        let resp = respond(&p, &req, &[("Vary", "accept-encoding, origin")]).await;
        assert_eq!(values(&resp, "vary"), ["accept-encoding, origin"]);
        let resp = respond(&p, &req, &[("Vary", "*")]).await;
        assert_eq!(values(&resp, "vary"), ["*"]);
    }

    #[tokio::test]
    async fn disallowed_actual_requests_get_no_cors_headers() {
        let p = plugin(&format!("allow_origins = [\"{APP}\"]"));
        let mut req = get(Some("https://evil.example"));
        assert!(answer(&p, &mut req).await.is_none());
        let resp = respond(&p, &req, &[("Access-Control-Allow-Origin", "*")]).await;
        assert!(values(&resp, "access-control-allow-origin").is_empty());
        assert_eq!(values(&resp, "vary"), ["Origin"]);
    }

    #[tokio::test]
    async fn requests_without_origin_pass_untouched() {
        let p = plugin(&format!("allow_origins = [\"{APP}\"]"));
        // Neither a plain GET nor an OPTIONS without Origin is a preflight.
        for method in ["GET", "OPTIONS"] {
            let mut req = RequestHeader::build(method, b"/x", None).unwrap();
            req.insert_header("Access-Control-Request-Method", "GET")
                .unwrap();
            let before = req.headers.clone();
            assert!(answer(&p, &mut req).await.is_none());
            assert_eq!(req.headers, before);
            let resp = respond(&p, &req, &[("Access-Control-Allow-Origin", "*")]).await;
            // Left as the upstream sent it; only `Vary` is added, for caches.
            assert_eq!(values(&resp, "access-control-allow-origin"), ["*"]);
            assert_eq!(values(&resp, "vary"), ["Origin"]);
        }
    }

    #[tokio::test]
    async fn options_without_request_method_is_an_actual_request() {
        let p = plugin(&format!("allow_origins = [\"{APP}\"]"));
        let mut req = RequestHeader::build("OPTIONS", b"/x", None).unwrap();
        req.insert_header("Origin", APP).unwrap();
        assert!(answer(&p, &mut req).await.is_none());
        let resp = respond(&p, &req, &[]).await;
        assert_eq!(values(&resp, "access-control-allow-origin"), [APP]);
    }

    #[tokio::test]
    async fn the_response_hook_leaves_preflight_answers_alone() {
        let p = plugin(&format!("allow_origins = [\"{APP}\"]"));
        let req = preflight(APP, "GET", None);
        let mut resp = ResponseHeader::build(204, None).unwrap();
        resp.insert_header("Access-Control-Allow-Origin", APP)
            .unwrap();
        resp.insert_header("Vary", PREFLIGHT_VARY).unwrap();
        let before = resp.headers.clone();
        p.response(&mut PluginCtx::default(), &req, &mut resp).await;
        assert_eq!(resp.headers, before);
    }

    #[tokio::test]
    async fn the_default_config_allows_no_origin() {
        let p = plugin("");
        assert_eq!(
            p.hooks(),
            Hooks {
                request: true,
                response: true,
                ..Hooks::default()
            }
        );
        let mut req = preflight(APP, "GET", None);
        let resp = answer(&p, &mut req).await.unwrap();
        assert_eq!(resp.status, StatusCode::FORBIDDEN);
        let resp = respond(&p, &get(Some(APP)), &[]).await;
        assert!(values(&resp, "access-control-allow-origin").is_empty());
        // With no origin allowed the answer never varies by origin.
        assert!(values(&resp, "vary").is_empty());
    }

    #[test]
    fn star_with_credentials_is_refused() {
        let (message, field) = config_error(
            "allow_origins = [\"https://a.example\", \"*\"]\nallow_credentials = true",
        );
        assert_eq!(field.as_deref(), Some("allow_origins[1]"));
        assert!(message.contains("allow_credentials"), "{message}");

        let (_, field) = config_error("expose_headers = [\"*\"]\nallow_credentials = true");
        assert_eq!(field.as_deref(), Some("expose_headers[0]"));
        plugin("expose_headers = [\"*\"]");
    }

    #[test]
    fn malformed_origins_are_refused() {
        for (entry, hint) in [
            ("https://app.example.com/", "not an origin"),
            ("https://app.example.com/api", "not an origin"),
            ("app.example.com", "not an origin"),
            ("https://", "not an origin"),
            ("https://a.example.com:99999", "not an origin"),
            ("https://a b.example.com", "not an origin"),
            ("null", "`null`"),
            ("https://a.*.example.com", "wildcard"),
            ("https://*example.com", "wildcard"),
            ("https://*", "wildcard"),
        ] {
            let (message, field) =
                config_error(&format!("allow_origins = [\"ok://x\", \"{entry}\"]"));
            assert_eq!(field.as_deref(), Some("allow_origins[1]"), "{entry}");
            assert!(message.contains(hint), "{entry}: {message}");
        }
    }

    #[test]
    fn bad_methods_and_headers_are_refused() {
        let (message, field) = config_error("allow_methods = [\"GET\", \"GE T\"]");
        assert_eq!(field.as_deref(), Some("allow_methods[1]"));
        assert!(message.contains("`GE T`"), "{message}");
        let (_, field) = config_error("allow_methods = [\"*\"]");
        assert_eq!(field.as_deref(), Some("allow_methods[0]"));
        let (_, field) = config_error("allow_headers = [\"*\"]");
        assert_eq!(field.as_deref(), Some("allow_headers[0]"));
        let (message, field) = config_error("expose_headers = [\"ok\", \"bad header\"]");
        assert_eq!(field.as_deref(), Some("expose_headers[1]"));
        assert!(message.contains("not a valid header name"), "{message}");
    }

    #[test]
    fn unknown_and_mistyped_fields_are_refused() {
        let (message, field) = config_error("allow_origin = [\"https://a.example\"]");
        assert!(
            message.contains("unknown field `allow_origin`"),
            "{message}"
        );
        assert_eq!(field.as_deref(), Some("allow_origin"));
        let (_, field) = config_error("max_age = -1");
        assert_eq!(field.as_deref(), Some("max_age"));
        let (_, field) = config_error("allow_origins = \"https://a.example\"");
        assert_eq!(field.as_deref(), Some("allow_origins"));
    }

    #[test]
    fn origins_parse_like_browsers_send_them() {
        let o = parse_origin("HTTPS://A.example.COM:443", false).unwrap();
        assert_eq!((o.scheme, o.host, o.port), ("HTTPS", "A.example.COM", None));
        let o = parse_origin("http://[2001:db8::1]:8080", false).unwrap();
        assert_eq!((o.host, o.port), ("[2001:db8::1]", Some(8080)));
        assert_eq!(parse_origin("custom://x:80", false).unwrap().port, Some(80));
        for bad in [
            "",
            "null",
            "://x",
            "1http://x",
            "http://",
            "http://x:",
            "http://x:+80",
            "http://x:65536",
            "http://[]",
            "http://[::1",
            "http://[::1]x",
            "http://*.x",
            "http://x?y",
            "http://x#y",
        ] {
            assert!(parse_origin(bad, false).is_none(), "{bad}");
        }
    }
}
