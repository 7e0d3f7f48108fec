//! The `request-id` plugin: gives every request an id that the upstream, the client and the
//! access log share. It accepts a well-formed id the client sent (or generates 128 random
//! bits as 32 hex chars), stores it in [`PluginCtx::request_id`], forwards it upstream and
//! echoes it on the response.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "request-id"
//! header = "X-Request-Id"   # default
//! trust_incoming = true     # default: keep a client id of 1..=128 chars [A-Za-z0-9._:-]
//! echo = true               # default: set it on the response
//! forward = true            # default: set it on the upstream request (false: strip it)
//! ```

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::build::{parse_config, BuildError};
use crate::{Flow, Hooks, Plugin, PluginCtx, RequestHeader, ResponseHeader};

/// The registry name.
pub const NAME: &str = "request-id";

/// The longest client-sent id accepted; longer ones are replaced so a client cannot make
/// every log line and upstream request carry kilobytes of its choosing.
const MAX_INCOMING_LEN: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    header: String,
    trust_incoming: bool,
    echo: bool,
    forward: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header: "X-Request-Id".to_owned(),
            trust_incoming: true,
            echo: true,
            forward: true,
        }
    }
}

/// The built `request-id` plugin.
#[derive(Debug)]
pub struct RequestId {
    header: HeaderName,
    /// The header name as configured, so HTTP/1 peers see `X-Request-Id` rather than the
    /// lower-case form [`HeaderName`] keeps; cloning `Bytes` is a reference count, not a copy.
    header_case: Bytes,
    trust_incoming: bool,
    echo: bool,
    forward: bool,
}

impl RequestId {
    /// Builds the plugin from its config table.
    pub fn from_config(config: toml::Value) -> Result<Self, BuildError> {
        let config: Config = parse_config(NAME, config)?;
        let header = HeaderName::from_bytes(config.header.as_bytes()).map_err(|_| {
            BuildError::invalid(
                NAME,
                "header",
                format!("`{}` is not a valid header name", config.header),
            )
        })?;
        Ok(RequestId {
            header,
            header_case: Bytes::from(config.header),
            trust_incoming: config.trust_incoming,
            echo: config.echo,
            forward: config.forward,
        })
    }

    /// The client's id, if trusted and well formed. Only the first value counts: a client
    /// that sends several gets one of its own choosing at most, never a list.
    fn incoming<'r>(&self, req: &'r RequestHeader) -> Option<(&'r str, &'r HeaderValue)> {
        if !self.trust_incoming {
            return None;
        }
        let value = req.headers.get(&self.header)?;
        let id = value.to_str().ok()?;
        is_valid_id(id).then_some((id, value))
    }
}

#[async_trait]
impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Stateless: ids are random, nothing is counted.
    fn shareable(&self) -> bool {
        true
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            response: self.echo,
            ..Hooks::default()
        }
    }

    async fn request(&self, ctx: &mut PluginCtx, req: &mut RequestHeader) -> Flow {
        // An id an earlier plugin settled on wins, so one request never has two ids.
        // `incoming` is the client's header value when its id is the one kept: reusing it
        // saves building a new value.
        let (id, incoming) = if let Some(id) = &ctx.request_id {
            (id.clone(), None)
        } else if let Some((id, value)) = self.incoming(req) {
            (id.to_owned(), Some(value.clone()))
        } else {
            (generate_id(), None)
        };

        if !self.forward {
            req.remove_header(&self.header);
        } else if let Some(value) = incoming.or_else(|| HeaderValue::from_str(&id).ok()) {
            // Skip the write when the request already carries exactly this one value.
            let mut present = req.headers.get_all(&self.header).iter();
            let unchanged = present.next() == Some(&value) && present.next().is_none();
            if !unchanged {
                if let Err(e) = req.insert_header(self.header_case.clone(), value) {
                    log::warn!("request-id: cannot set {}: {e}", self.header);
                }
            }
        } else {
            // An id from an earlier plugin that is no valid header value: better no header
            // upstream than the client's, which would disagree with our logs.
            req.remove_header(&self.header);
        }
        ctx.request_id = Some(id);
        Flow::Continue
    }

    async fn response(&self, ctx: &mut PluginCtx, _req: &RequestHeader, resp: &mut ResponseHeader) {
        // The id may also come from the proxy (when an earlier plugin answered before ours
        // ran), so it is read from the context rather than remembered from the request hook.
        let Some(id) = &ctx.request_id else { return };
        let Ok(value) = HeaderValue::from_str(id) else {
            return;
        };
        if let Err(e) = resp.insert_header(self.header_case.clone(), value) {
            log::warn!("request-id: cannot echo {}: {e}", self.header);
        }
    }
}

/// Whether a client-sent id is acceptable: 1..=128 chars of `[A-Za-z0-9._:-]`, which covers
/// UUIDs, W3C trace ids and ULIDs but nothing that needs escaping in a log or a header.
fn is_valid_id(id: &str) -> bool {
    (1..=MAX_INCOMING_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// 128 random bits as 32 lower-case hex chars, built straight into the one `String`.
/// `rand::random` uses the thread-local generator, so there is no lock and no syscall.
fn generate_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random();
    let mut id = String::with_capacity(32);
    for shift in (0..32).rev() {
        id.push(HEX[((bits >> (shift * 4)) & 0xf) as usize] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn plugin(src: &str) -> Arc<dyn Plugin> {
        Arc::new(
            RequestId::from_config(toml::from_str(src).expect("test TOML parses"))
                .expect("config builds"),
        )
    }

    fn request(id: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        if let Some(id) = id {
            req.insert_header("X-Request-Id", id).unwrap();
        }
        req
    }

    fn is_generated(id: &str) -> bool {
        id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    async fn run(p: &Arc<dyn Plugin>, req: &mut RequestHeader) -> (PluginCtx, ResponseHeader) {
        let mut ctx = PluginCtx::default();
        assert!(matches!(p.request(&mut ctx, req).await, Flow::Continue));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        if p.hooks().response {
            p.response(&mut ctx, req, &mut resp).await;
        }
        (ctx, resp)
    }

    #[tokio::test]
    async fn defaults_generate_forward_and_echo() {
        let p = plugin("");
        assert_eq!(
            p.hooks(),
            Hooks {
                request: true,
                response: true,
                ..Hooks::default()
            }
        );
        let mut req = request(None);
        let (ctx, resp) = run(&p, &mut req).await;
        let id = ctx.request_id.expect("id set");
        assert!(is_generated(&id), "{id}");
        assert_eq!(req.headers["x-request-id"], id.as_str());
        assert_eq!(resp.headers["x-request-id"], id.as_str());
    }

    #[tokio::test]
    async fn generated_ids_differ() {
        let a = generate_id();
        let b = generate_id();
        assert!(is_generated(&a) && is_generated(&b));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_valid_incoming_id_is_kept() {
        let p = plugin("");
        let incoming = "0af7651916cd43dd8448eb211c80319c:span-1.a_b";
        let mut req = request(Some(incoming));
        let (ctx, resp) = run(&p, &mut req).await;
        assert_eq!(ctx.request_id.as_deref(), Some(incoming));
        assert_eq!(req.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(req.headers["x-request-id"], incoming);
        assert_eq!(resp.headers["x-request-id"], incoming);
    }

    #[tokio::test]
    async fn a_malformed_incoming_id_is_replaced() {
        let p = plugin("");
        let too_long = "a".repeat(129);
        for bad in ["has space", "semi;colon", "x/y", too_long.as_str(), "é"] {
            let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
            req.insert_header("X-Request-Id", bad.as_bytes()).unwrap();
            let (ctx, resp) = run(&p, &mut req).await;
            let id = ctx.request_id.expect("id set");
            assert!(is_generated(&id), "{bad:?} gave {id}");
            assert_eq!(req.headers["x-request-id"], id.as_str());
            assert_eq!(resp.headers["x-request-id"], id.as_str());
        }
        // Exactly 128 chars is still fine.
        let mut req = request(Some("a".repeat(128).as_str()));
        let (ctx, _) = run(&p, &mut req).await;
        assert_eq!(ctx.request_id.map(|id| id.len()), Some(128));
    }

    #[tokio::test]
    async fn an_empty_incoming_id_is_replaced() {
        let p = plugin("");
        let mut req = request(Some(""));
        let (ctx, _) = run(&p, &mut req).await;
        assert!(is_generated(ctx.request_id.as_deref().unwrap()));
    }

    #[tokio::test]
    async fn duplicate_incoming_ids_collapse_to_one() {
        let p = plugin("");
        let mut req = request(Some("first"));
        req.append_header("X-Request-Id", "second").unwrap();
        let (ctx, _) = run(&p, &mut req).await;
        assert_eq!(ctx.request_id.as_deref(), Some("first"));
        let upstream: Vec<_> = req.headers.get_all("x-request-id").iter().collect();
        assert_eq!(upstream, ["first"]);
    }

    #[tokio::test]
    async fn untrusted_incoming_ids_are_replaced() {
        let p = plugin("trust_incoming = false");
        let mut req = request(Some("client-chosen"));
        let (ctx, resp) = run(&p, &mut req).await;
        let id = ctx.request_id.expect("id set");
        assert!(is_generated(&id));
        assert_eq!(req.headers["x-request-id"], id.as_str());
        assert_eq!(resp.headers["x-request-id"], id.as_str());
    }

    #[tokio::test]
    async fn forward_false_strips_the_header_upstream() {
        let p = plugin("forward = false");
        let mut req = request(Some("client-id"));
        let (ctx, resp) = run(&p, &mut req).await;
        assert_eq!(ctx.request_id.as_deref(), Some("client-id"));
        assert!(req.headers.get("x-request-id").is_none());
        assert_eq!(resp.headers["x-request-id"], "client-id");
    }

    #[tokio::test]
    async fn echo_false_declares_no_response_hook() {
        let p = plugin("echo = false");
        assert!(!p.hooks().response);
        let mut req = request(None);
        let (ctx, resp) = run(&p, &mut req).await;
        assert!(ctx.request_id.is_some());
        assert!(resp.headers.get("x-request-id").is_none());
    }

    #[tokio::test]
    async fn a_custom_header_keeps_its_case_on_the_wire() {
        let p = plugin("header = \"X-Correlation-ID\"");
        let mut req = request(None);
        let (ctx, resp) = run(&p, &mut req).await;
        let id = ctx.request_id.unwrap();
        assert_eq!(req.headers["x-correlation-id"], id.as_str());
        assert!(req.headers.get("x-request-id").is_none());
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains(&format!("X-Correlation-ID: {id}")), "{wire}");
    }

    #[tokio::test]
    async fn an_id_already_in_the_context_wins() {
        let p = plugin("");
        let mut ctx = PluginCtx {
            request_id: Some("from-earlier-plugin".into()),
            ..PluginCtx::default()
        };
        let mut req = request(Some("from-client"));
        p.request(&mut ctx, &mut req).await;
        assert_eq!(ctx.request_id.as_deref(), Some("from-earlier-plugin"));
        assert_eq!(req.headers["x-request-id"], "from-earlier-plugin");
    }

    #[tokio::test]
    async fn the_response_echoes_a_proxy_generated_id() {
        // When an earlier plugin answered, our request hook never ran but the proxy still
        // generated an id: it must be echoed all the same.
        let p = plugin("");
        let mut ctx = PluginCtx {
            request_id: Some("proxy-made".into()),
            ..PluginCtx::default()
        };
        let req = request(None);
        let mut resp = ResponseHeader::build(401, None).unwrap();
        resp.insert_header("X-Request-Id", "upstream-made").unwrap();
        p.response(&mut ctx, &req, &mut resp).await;
        let echoed: Vec<_> = resp.headers.get_all("x-request-id").iter().collect();
        assert_eq!(echoed, ["proxy-made"]);
    }

    #[test]
    fn bad_header_name_is_invalid_config() {
        let err = RequestId::from_config(toml::from_str("header = \"X Request\"").unwrap())
            .expect_err("bad header fails");
        match err {
            BuildError::InvalidConfig {
                plugin,
                message,
                field,
            } => {
                assert_eq!(plugin, NAME);
                assert_eq!(field.as_deref(), Some("header"));
                assert!(message.contains("`X Request`"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
