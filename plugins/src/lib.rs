//! The `portico-plugins` crate: the [`Plugin`] trait every gateway plugin implements, the
//! narrow per-request context plugins see, the built-in plugins, and the registry that
//! builds them from their config tables.
//!
//! Plugins never see the gateway itself: the proxy hands each hook a [`PluginCtx`] and the
//! request or response header of that phase, and the hook answers with a [`Flow`]. That keeps
//! the call direction one way (proxy → plugins) and lets plugins be tested without a proxy.
//!
//! Inside the crate the imports also go one way: `registry` (names and constructors) uses
//! the plugin modules, and they and the registry use `build` (`BuildError`, typed config
//! parsing), which uses neither. `docs/ARCHITECTURE.md` has the recipe for a new plugin.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
pub use pingora_http::{RequestHeader, ResponseHeader};

mod build;
pub mod cors;
pub mod headers;
pub mod ip_filter;
pub mod jwt;
mod problem;
pub mod rate_limit;
pub mod registry;
pub mod request_id;

pub use build::BuildError;
pub use problem::problem_response;
pub use registry::{build, BUILTIN_NAMES};

/// What the proxy knows about one request that plugins may read or fill in.
///
/// It is created once per request by the proxy and handed to every hook of every plugin in
/// the route's chain, in order, so an earlier plugin can leave data for a later one (the
/// request-id plugin sets [`PluginCtx::request_id`], an auth plugin sets
/// [`PluginCtx::identity`]).
#[derive(Debug, Default)]
pub struct PluginCtx {
    /// The id of the matched route.
    pub route_id: Arc<str>,
    /// The client's address: the PROXY header's source on a `proxy_protocol` listener, else
    /// the TCP peer, or the client a trusted proxy names in `X-Forwarded-For`/`Forwarded`.
    pub client_ip: Option<IpAddr>,
    /// True when the client connection is TLS.
    pub tls: bool,
    /// The request id, once a plugin has accepted or generated one. The proxy generates one
    /// after the request phase if no plugin did, so logs and error bodies always have one.
    pub request_id: Option<String>,
    /// The authenticated caller, once an auth plugin has verified one. Shared with the
    /// auth plugin's verified-token cache, so a cached token's identity costs no copy.
    pub identity: Option<Arc<Identity>>,
}

/// The caller an authentication plugin verified.
#[derive(Debug, Default, Clone)]
pub struct Identity {
    pub subject: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
}

/// A complete response a plugin sends instead of proxying the request.
#[derive(Debug, Clone)]
pub struct PluginResponse {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

impl PluginResponse {
    /// A response with no body.
    pub fn empty(status: StatusCode) -> Self {
        PluginResponse {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// What a request hook decides.
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then the upstream.
    Continue,
    /// Stop here and send this response; the upstream never sees the request.
    Respond(PluginResponse),
}

/// The phases a plugin takes part in, so the proxy calls only the hooks a plugin really has
/// (each call of an `async_trait` hook costs an allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    pub request: bool,
    pub upstream_request: bool,
    pub response: bool,
    pub log: bool,
}

/// A gateway plugin. Built once per config load from its own config table and shared by all
/// requests, so it must be `Send + Sync`; per-request data lives in [`PluginCtx`].
///
/// Every hook has a no-op default; [`Plugin::hooks`] must list the ones a plugin overrides.
/// Hooks never panic on bad input: a bad request is answered with a [`Flow::Respond`].
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The registry name (`request-id`, `headers`, …).
    fn name(&self) -> &'static str;

    /// The hooks this plugin implements.
    fn hooks(&self) -> Hooks;

    /// Whether routes whose config tables for this plugin are identical may share one
    /// instance. Only for a plugin whose instance keeps nothing a route would notice being
    /// shared: a rate limit counts per instance, so each of its routes keeps its own. The
    /// gateway builds a shareable plugin once per distinct table, which at 100,000 routes
    /// is most of what plugins would otherwise cost in memory and load time.
    fn shareable(&self) -> bool {
        false
    }

    /// Request headers through which this plugin tells the upstream who the caller is.
    /// The gateway removes every one of them (on every route) from what clients send, so
    /// only the plugin that verified the caller can set them.
    fn identity_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    /// Called after routing, before anything is sent upstream. May change the request
    /// header (what the upstream will see, before proxy headers are added) or answer itself.
    async fn request(&self, _ctx: &mut PluginCtx, _req: &mut RequestHeader) -> Flow {
        Flow::Continue
    }

    /// Called on the header about to be sent upstream (after the proxy's own headers).
    async fn upstream_request(&self, _ctx: &mut PluginCtx, _upstream: &mut RequestHeader) {}

    /// Called on the response header before it goes to the client, including responses
    /// the gateway generated itself (errors, plugin answers).
    async fn response(
        &self,
        _ctx: &mut PluginCtx,
        _req: &RequestHeader,
        _resp: &mut ResponseHeader,
    ) {
    }

    /// Called once the request is done, whatever happened.
    async fn log(&self, _ctx: &PluginCtx, _status: u16) {}
}
