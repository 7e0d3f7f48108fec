//! The `headers` plugin: adds, replaces and removes headers on the request the upstream
//! receives and on the response the client receives. Names and values are checked and
//! parsed when the config is loaded, so a request only pays for the edits themselves.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "headers"
//! # Edits run in the order remove, set, add.
//! request.remove = ["X-Debug"]
//! request.set = { "X-Api-Version" = "2" }        # replaces any value the client sent
//! request.add = { "X-Tag" = ["a", "b"] }         # appends; a string or a list of strings
//! response.set = { "Cache-Control" = "no-store" }
//! response.remove = ["Server"]
//! ```
//!
//! The request edits apply in the `upstream_request` phase, on the header as it leaves for
//! the upstream, so they can also override or strip headers the proxy itself adds (for
//! instance `X-Forwarded-For`). Plugins earlier in the chain see the client's headers.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::build::{key_path, parse_config, BuildError};
use crate::{Hooks, Plugin, PluginCtx, RequestHeader, ResponseHeader};

/// The registry name.
pub const NAME: &str = "headers";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    request: EditsConfig,
    response: EditsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EditsConfig {
    add: BTreeMap<String, Values>,
    set: BTreeMap<String, String>,
    remove: Vec<String>,
}

/// One value or a list of them. A TOML table cannot repeat a key, so a list is the only way
/// to append a header twice (two `Set-Cookie`s, say).
#[derive(Debug)]
struct Values(Vec<String>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;

        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = Values;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Values, E> {
                Ok(Values(vec![v.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(Values(values))
            }
        }

        deserializer.deserialize_any(ValuesVisitor)
    }
}

/// The edits for one direction, ready to apply.
#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    /// The configured spelling of each name (kept for HTTP/1 peers that care about case)
    /// with its value; both clone by reference count.
    set: Vec<(Bytes, HeaderValue)>,
    add: Vec<(Bytes, HeaderValue)>,
}

impl Edits {
    fn from_config(config: EditsConfig, section: &str) -> Result<Self, BuildError> {
        let mut edits = Edits::default();

        for (index, name) in config.remove.iter().enumerate() {
            let field = format!("{section}.remove[{index}]");
            edits.remove.push(header_name(name, &field)?);
        }

        let mut seen = Vec::with_capacity(config.set.len());
        for (name, value) in config.set {
            let field = key_path(&format!("{section}.set"), &name);
            let parsed = header_name(&name, &field)?;
            // Keys differing only in case are the same header; which value wins would
            // depend on the map's order, so say so instead of guessing.
            if seen.contains(&parsed) {
                return Err(BuildError::invalid(
                    NAME,
                    field,
                    format!("`{name}` is set twice (header names are case-insensitive)"),
                ));
            }
            let value = header_value(&name, &value, &field)?;
            seen.push(parsed);
            edits.set.push((Bytes::from(name), value));
        }

        for (name, values) in config.add {
            let field = key_path(&format!("{section}.add"), &name);
            header_name(&name, &field)?;
            let parsed = values
                .0
                .iter()
                .map(|value| header_value(&name, value, &field))
                .collect::<Result<Vec<_>, _>>()?;
            let name = Bytes::from(name);
            edits
                .add
                .extend(parsed.into_iter().map(|value| (name.clone(), value)));
        }

        Ok(edits)
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the edits: remove, then set, then add, so `remove` + `add` of one name
    /// replaces whatever was there with the added values.
    fn apply(&self, target: &mut impl HeaderTarget) {
        for name in &self.remove {
            target.remove(name);
        }
        for (name, value) in &self.set {
            if !target.insert(name.clone(), value.clone()) {
                log::warn!("headers: cannot set {}", String::from_utf8_lossy(name));
            }
        }
        for (name, value) in &self.add {
            if !target.append(name.clone(), value.clone()) {
                log::warn!("headers: cannot add {}", String::from_utf8_lossy(name));
            }
        }
    }
}

/// The three operations, over both header types (pingora's request and response headers
/// have the same methods but no common trait).
trait HeaderTarget {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: Bytes, value: HeaderValue) -> bool;
    fn append(&mut self, name: Bytes, value: HeaderValue) -> bool;
}

impl HeaderTarget for RequestHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: Bytes, value: HeaderValue) -> bool {
        self.insert_header(name, value).is_ok()
    }
    fn append(&mut self, name: Bytes, value: HeaderValue) -> bool {
        self.append_header(name, value).is_ok()
    }
}

impl HeaderTarget for ResponseHeader {
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn insert(&mut self, name: Bytes, value: HeaderValue) -> bool {
        self.insert_header(name, value).is_ok()
    }
    fn append(&mut self, name: Bytes, value: HeaderValue) -> bool {
        self.append_header(name, value).is_ok()
    }
}

/// Parses a configured header name, refusing the ones that frame the message body: the
/// proxy computes those, and a wrong one desynchronises the connection.
fn header_name(name: &str, field: &str) -> Result<HeaderName, BuildError> {
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        BuildError::invalid(NAME, field, format!("`{name}` is not a valid header name"))
    })?;
    if parsed == CONTENT_LENGTH || parsed == TRANSFER_ENCODING {
        return Err(BuildError::invalid(
            NAME,
            field,
            format!("`{name}` frames the message body and is managed by the proxy"),
        ));
    }
    Ok(parsed)
}

fn header_value(name: &str, value: &str, field: &str) -> Result<HeaderValue, BuildError> {
    HeaderValue::from_str(value).map_err(|_| {
        BuildError::invalid(
            NAME,
            field,
            format!("the value for `{name}` is not a valid header value (no control characters such as newlines)"),
        )
    })
}

/// The built `headers` plugin.
#[derive(Debug)]
pub struct Headers {
    request: Edits,
    response: Edits,
}

impl Headers {
    /// Builds the plugin from its config table.
    pub fn from_config(config: toml::Value) -> Result<Self, BuildError> {
        let config: Config = parse_config(NAME, config)?;
        Ok(Headers {
            request: Edits::from_config(config.request, "request")?,
            response: Edits::from_config(config.response, "response")?,
        })
    }
}

#[async_trait]
impl Plugin for Headers {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Stateless: the edits follow from the table alone.
    fn shareable(&self) -> bool {
        true
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            upstream_request: !self.request.is_empty(),
            response: !self.response.is_empty(),
            ..Hooks::default()
        }
    }

    async fn upstream_request(&self, _ctx: &mut PluginCtx, upstream: &mut RequestHeader) {
        self.request.apply(upstream);
    }

    async fn response(
        &self,
        _ctx: &mut PluginCtx,
        _req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) {
        self.response.apply(resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn plugin(src: &str) -> Arc<dyn Plugin> {
        Arc::new(
            Headers::from_config(toml::from_str(src).expect("test TOML parses"))
                .expect("config builds"),
        )
    }

    fn config_error(src: &str) -> (String, Option<String>) {
        match Headers::from_config(toml::from_str(src).expect("test TOML parses")) {
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

    fn values<'a>(map: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn an_empty_config_declares_no_hooks() {
        assert_eq!(plugin("").hooks(), Hooks::default());
        assert_eq!(
            plugin("request.remove = [\"x-a\"]").hooks(),
            Hooks {
                upstream_request: true,
                ..Hooks::default()
            }
        );
        assert_eq!(
            plugin("response.set = { x-a = \"1\" }").hooks(),
            Hooks {
                response: true,
                ..Hooks::default()
            }
        );
    }

    #[tokio::test]
    async fn request_edits_run_remove_set_add() {
        let p = plugin(
            r#"
            [request]
            remove = ["X-Debug", "X-Replace"]
            set = { "X-Api-Version" = "2" }
            add = { "X-Tag" = ["a", "b"], "X-Replace" = "new", "X-Api-Version" = "3" }
            "#,
        );
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("X-Debug", "1").unwrap();
        req.append_header("X-Replace", "old1").unwrap();
        req.append_header("X-Replace", "old2").unwrap();
        req.insert_header("X-Api-Version", "1").unwrap();
        req.insert_header("X-Tag", "client").unwrap();
        req.insert_header("Accept", "*/*").unwrap();

        p.upstream_request(&mut PluginCtx::default(), &mut req)
            .await;

        assert!(req.headers.get("x-debug").is_none());
        assert_eq!(values(&req.headers, "x-replace"), ["new"]);
        assert_eq!(values(&req.headers, "x-api-version"), ["2", "3"]);
        assert_eq!(values(&req.headers, "x-tag"), ["client", "a", "b"]);
        assert_eq!(values(&req.headers, "accept"), ["*/*"]);
    }

    #[tokio::test]
    async fn response_edits_apply_to_the_response_only() {
        let p = plugin(
            r#"
            response.set = { "Cache-Control" = "no-store" }
            response.remove = ["server"]
            response.add = { "Set-Cookie" = ["a=1", "b=2"] }
            "#,
        );
        assert!(!p.hooks().upstream_request);
        let req = RequestHeader::build("GET", b"/x", None).unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Server", "upstream/1.0").unwrap();
        resp.insert_header("Cache-Control", "max-age=60").unwrap();
        resp.insert_header("Set-Cookie", "u=0").unwrap();

        p.response(&mut PluginCtx::default(), &req, &mut resp).await;

        assert!(resp.headers.get("server").is_none());
        assert_eq!(values(&resp.headers, "cache-control"), ["no-store"]);
        assert_eq!(values(&resp.headers, "set-cookie"), ["u=0", "a=1", "b=2"]);
    }

    #[tokio::test]
    async fn configured_case_reaches_the_wire() {
        let p = plugin("response.set = { \"X-API-Version\" = \"2\" }");
        let req = RequestHeader::build("GET", b"/x", None).unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        p.response(&mut PluginCtx::default(), &req, &mut resp).await;
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("X-API-Version: 2\r\n"), "{wire:?}");
    }

    #[test]
    fn a_bad_header_name_names_its_field() {
        let (message, field) = config_error("request.add = { \"X Bad\" = \"1\" }");
        assert_eq!(field.as_deref(), Some("request.add.\"X Bad\""));
        assert!(
            message.contains("`X Bad` is not a valid header name"),
            "{message}"
        );

        let (_, field) = config_error("response.remove = [\"ok\", \"bad:name\"]");
        assert_eq!(field.as_deref(), Some("response.remove[1]"));

        let (_, field) = config_error("request.set = { \"\" = \"1\" }");
        assert_eq!(field.as_deref(), Some("request.set.\"\""));
    }

    #[test]
    fn a_bad_header_value_names_its_field() {
        let (message, field) = config_error("response.set = { X-A = \"one\\ntwo\" }");
        assert_eq!(field.as_deref(), Some("response.set.X-A"));
        assert!(message.contains("`X-A`"), "{message}");

        let (_, field) = config_error("request.add = { X-B = [\"ok\", \"bad\\r\"] }");
        assert_eq!(field.as_deref(), Some("request.add.X-B"));
    }

    #[test]
    fn framing_headers_are_refused() {
        let (message, field) = config_error("response.set = { Content-Length = \"0\" }");
        assert_eq!(field.as_deref(), Some("response.set.Content-Length"));
        assert!(message.contains("managed by the proxy"), "{message}");
        let (_, field) = config_error("request.remove = [\"transfer-encoding\"]");
        assert_eq!(field.as_deref(), Some("request.remove[0]"));
    }

    #[test]
    fn a_header_set_twice_is_refused() {
        let (message, field) = config_error("request.set = { X-A = \"1\", x-a = \"2\" }");
        assert!(message.contains("set twice"), "{message}");
        assert!(matches!(
            field.as_deref(),
            Some("request.set.X-A" | "request.set.x-a")
        ));
    }

    #[test]
    fn unknown_and_mistyped_fields_have_full_paths() {
        let (message, field) = config_error("request.append = { X-A = \"1\" }");
        assert!(message.contains("unknown field `append`"), "{message}");
        assert_eq!(field.as_deref(), Some("request.append"));

        let (message, field) = config_error("request.add = { X-A = 1 }");
        assert!(
            message.contains("a string or a list of strings"),
            "{message}"
        );
        assert_eq!(field.as_deref(), Some("request.add.X-A"));

        let (_, field) = config_error("request.add = { X-A = [\"ok\", 2] }");
        assert_eq!(field.as_deref(), Some("request.add.X-A[1]"));

        let (_, field) = config_error("response.remove = \"Server\"");
        assert_eq!(field.as_deref(), Some("response.remove"));
    }
}
