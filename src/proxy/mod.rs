//! The Pingora `ProxyHttp` implementation. Each phase hook only calls into the modules
//! that own the work — `router` for matching, `portico_plugins` for the plugin chain,
//! `upstream` for endpoint selection and outlier bookkeeping, `observe` for metrics and
//! logs — and keeps the per-request state in [`Ctx`].

pub mod error;
mod headers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use portico_plugins::{Flow, PluginCtx, PluginResponse};

use crate::observe::access_log::{now_rfc3339, Record};
use crate::observe::metrics::METRICS;
use crate::observe::trace::TraceContext;
use crate::router::{normalize_path, rewrite_prefix, RouteMatch};
use crate::runtime::{Rewrite, Route, Snapshot, State};
use crate::upstream::{HashInput, Outcome};
pub use error::GatewayError;

/// How many endpoints one request may try when connecting fails. A failed connect sent
/// nothing, so trying the next endpoint is safe for every method.
const MAX_CONNECT_ATTEMPTS: u32 = 3;

/// The gateway's proxy logic, shared by all requests.
pub struct Gateway {
    state: Arc<State>,
}

impl Gateway {
    pub fn new(state: Arc<State>) -> Gateway {
        Gateway { state }
    }
}

/// Per-request state, created by `new_ctx` and dropped after `logging`.
pub struct Ctx {
    snapshot: Arc<Snapshot>,
    route: Option<Arc<Route>>,
    plugin: PluginCtx,
    start: Instant,
    trace: Option<TraceContext>,
    /// Endpoints this request has tried, in order.
    tried: Vec<usize>,
    /// The endpoint of the attempt in progress, until its outcome is recorded.
    current: Option<usize>,
    attempts: u32,
    upstream_start: Option<Instant>,
    upstream_time: Option<Duration>,
    upstream_status: Option<u16>,
    /// Set when the gateway answers itself with an error.
    error: Option<GatewayError>,
    body_bytes: u64,
    active: bool,
}

impl Ctx {
    fn request_id(&mut self) -> &str {
        self.plugin
            .request_id
            .get_or_insert_with(crate::observe::random_hex_128)
    }

    fn cluster_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.cluster.name.as_str())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snapshot: self.state.snapshot(),
            route: None,
            plugin: PluginCtx::default(),
            start: Instant::now(),
            trace: None,
            tried: Vec::new(),
            current: None,
            attempts: 0,
            upstream_start: None,
            upstream_time: None,
            upstream_status: None,
            error: None,
            body_bytes: 0,
            active: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        METRICS.active_requests.inc();
        ctx.active = true;
        ctx.plugin.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.plugin.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.trace = Some(TraceContext::from_header(
            session
                .req_header()
                .headers
                .get("traceparent")
                .map(|v| v.as_bytes()),
        ));

        if let Some(err) = check_limits(session.req_header(), &ctx.snapshot.limits) {
            return self.answer_error(session, ctx, err).await;
        }

        // Match and forward the normalised path, so `/public/../admin` is matched — and
        // seen upstream — as `/admin`, with `/admin`'s plugins.
        let normalized = match normalize_path(session.req_header().uri.path()) {
            Ok(std::borrow::Cow::Borrowed(_)) => None,
            Ok(std::borrow::Cow::Owned(p)) => Some(p),
            Err(e) => {
                return self
                    .answer_error(session, ctx, GatewayError::BadPath(e.to_string()))
                    .await
            }
        };
        if let Some(path) = normalized {
            if let Err(e) = set_path(session.req_header_mut(), &path) {
                return self
                    .answer_error(session, ctx, GatewayError::BadPath(e))
                    .await;
            }
        }

        // Global plugins run before routing so they also cover requests no route matches.
        let snapshot = ctx.snapshot.clone();
        if let Some(resp) =
            run_request_hooks(&snapshot.global_plugins.request, &mut ctx.plugin, session).await
        {
            return self.answer(session, ctx, resp).await;
        }

        let found = {
            let req = session.req_header();
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.host());
            match snapshot
                .router
                .find(host, &req.method, req.uri.path(), &req.headers)
            {
                RouteMatch::Found { value, .. } => Ok(value.clone()),
                RouteMatch::MethodNotAllowed { allowed } => {
                    Err(GatewayError::MethodNotAllowed(allowed))
                }
                RouteMatch::NotFound => Err(GatewayError::NotFound),
            }
        };
        let route = match found {
            Ok(route) => route,
            Err(e) => return self.answer_error(session, ctx, e).await,
        };
        ctx.plugin.route_id = route.id.clone();
        ctx.route = Some(route.clone());

        if let Some(resp) =
            run_request_hooks(&route.plugins.request, &mut ctx.plugin, session).await
        {
            return self.answer(session, ctx, resp).await;
        }
        ctx.request_id();
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Content-Length was checked up front; this catches chunked bodies.
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let limit = ctx.snapshot.limits.max_body_bytes;
            if ctx.body_bytes > limit {
                ctx.error = Some(GatewayError::BodyTooLarge(limit));
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            ctx.error = Some(GatewayError::Internal);
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        let cluster = &route.cluster;
        if let Some(previous) = ctx.current.take() {
            cluster.finish(previous, Outcome::Other);
        }
        let input = HashInput {
            client_ip: ctx.plugin.client_ip,
            headers: &session.req_header().headers,
        };
        match cluster.select(&input, &ctx.tried) {
            Ok((index, _)) => {
                ctx.tried.push(index);
                ctx.current = Some(index);
                ctx.attempts += 1;
                ctx.upstream_start = Some(Instant::now());
                Ok(cluster.start(index))
            }
            Err(_) => {
                ctx.error = Some(GatewayError::NoHealthyEndpoint(cluster.name.clone()));
                Error::e_explain(ErrorType::HTTPStatus(503), "no healthy endpoint")
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(index)) = (&ctx.route, ctx.current.take()) {
            route.cluster.finish(index, Outcome::ConnectFailure);
            METRICS
                .upstream_attempts
                .with_label_values(&[route.cluster.name.as_str(), "connect_error"])
                .inc();
            if ctx.attempts < MAX_CONNECT_ATTEMPTS
                && ctx.tried.len() < route.cluster.endpoints.len()
            {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if let (Some(route), Some(index)) = (&ctx.route, ctx.current.take()) {
            route.cluster.finish(index, Outcome::Other);
            let result = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                _ => "error",
            };
            METRICS
                .upstream_attempts
                .with_label_values(&[route.cluster.name.as_str(), result])
                .inc();
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        // Only idempotent requests whose body is still replayable go to another attempt,
        // and only when a reused (possibly stale) connection broke.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::strip_hop_by_hop_request(upstream, session.is_upgrade_req());
        headers::add_forwarded(upstream, ctx.plugin.client_ip, ctx.plugin.tls);
        if let Some(trace) = &ctx.trace {
            upstream.insert_header("traceparent", trace.header_value())?;
        }
        if let Some(route) = ctx.route.clone() {
            if let Rewrite::Prefix { prefix, with } = &route.rewrite {
                let path = rewrite_prefix(upstream.uri.path(), prefix, with);
                set_path(upstream, &path).map_err(|e| {
                    Error::explain(ErrorType::InternalError, format!("rewrite failed: {e}"))
                })?;
            }
            for p in &ctx.snapshot.global_plugins.upstream_request {
                p.upstream_request(&mut ctx.plugin, upstream).await;
            }
            for p in &route.plugins.upstream_request {
                p.upstream_request(&mut ctx.plugin, upstream).await;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        if let Some(start) = ctx.upstream_start {
            ctx.upstream_time = Some(start.elapsed());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::strip_hop_by_hop_response(resp);
        run_response_hooks(ctx, session.req_header(), resp).await;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let client_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        if client_gone {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let err = match (&ctx.error, e.etype()) {
            (Some(err), _) => err.clone(),
            (None, ErrorType::HTTPStatus(400)) if e.esource() == &ErrorSource::Downstream => {
                GatewayError::BadRequest("the request could not be read".into())
            }
            (None, _) => GatewayError::from_pingora(e, ctx.cluster_name()),
        };
        let status = err.status();
        if session.response_written().is_none() {
            if let Err(write_error) = self.write_error(session, ctx, &err).await {
                log::debug!("cannot send error response: {write_error}");
            }
        }
        ctx.error = Some(err);
        FailToProxy {
            error_code: status,
            // Nothing of the request is left unread when the gateway fails before the
            // upstream: the client connection can carry on.
            can_reuse_downstream: ctx.attempts == 0 && status != 400,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| ctx.error.as_ref().map(|e| e.status()))
            .unwrap_or(0);
        let route = ctx.route.clone();
        if let (Some(route), Some(index)) = (&route, ctx.current.take()) {
            let outcome = match (ctx.upstream_status, e) {
                (Some(s), _) => Outcome::Response(s),
                (None, _) => Outcome::Other,
            };
            route.cluster.finish(index, outcome);
            if ctx.upstream_status.is_some() {
                METRICS
                    .upstream_attempts
                    .with_label_values(&[route.cluster.name.as_str(), "response"])
                    .inc();
            }
        }
        if ctx.active {
            METRICS.active_requests.dec();
        }
        let elapsed = ctx.start.elapsed();
        let metrics = route
            .as_ref()
            .map_or(&ctx.snapshot.unrouted_metrics, |r| &r.metrics);
        let req = session.req_header();
        metrics.count(&req.method, status);
        metrics.duration.observe(elapsed.as_secs_f64());
        if let Some(up) = ctx.upstream_time {
            metrics.upstream_duration.observe(up.as_secs_f64());
        }
        let (read, sent) = (session.body_bytes_read(), session.body_bytes_sent());
        metrics.request_bytes.inc_by(read as u64);
        metrics.response_bytes.inc_by(sent as u64);

        if ctx.snapshot.access_log.wants(status) {
            let req = session.req_header();
            let upstream = match (&route, ctx.tried.last()) {
                (Some(r), Some(&i)) => r.cluster.endpoints.get(i).map(|e| e.name.as_str()),
                _ => None,
            };
            let error = ctx
                .error
                .as_ref()
                .map(|e| e.slug())
                .or(e.map(|e| e.etype().as_str()));
            let record = Record {
                timestamp: now_rfc3339(),
                request_id: ctx.plugin.request_id.as_deref().unwrap_or(""),
                traceparent: ctx.trace.as_ref().map(|t| t.header_value()),
                client: ctx.plugin.client_ip.map(|ip| ip.to_string()),
                method: req.method.as_str(),
                path: req.uri.path(),
                host: req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok()),
                route: route.as_ref().map(|r| &*r.id),
                cluster: route.as_ref().map(|r| r.cluster.name.as_str()),
                upstream,
                status,
                request_bytes: read,
                response_bytes: sent,
                total_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_ms: ctx.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
                attempts: ctx.attempts,
                error,
            };
            ctx.snapshot.access_log.write(&record);
        }

        for p in &ctx.snapshot.global_plugins.log {
            p.log(&ctx.plugin, status).await;
        }
        if let Some(route) = &route {
            for p in &route.plugins.log {
                p.log(&ctx.plugin, status).await;
            }
        }
    }
}

impl Gateway {
    /// Answers with a gateway error and stops the request (for `request_filter`).
    async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        err: GatewayError,
    ) -> Result<bool> {
        self.write_error(session, ctx, &err).await?;
        ctx.error = Some(err);
        Ok(true)
    }

    async fn write_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        err: &GatewayError,
    ) -> Result<()> {
        let body = err.body(session.req_header().uri.path(), ctx.request_id());
        let mut resp = ResponseHeader::build(err.status(), Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/problem+json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        for (name, value) in err.headers() {
            resp.insert_header(name, value)?;
        }
        self.send(session, ctx, resp, body).await
    }

    /// Sends a plugin's own response and stops the request.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        answer: PluginResponse,
    ) -> Result<bool> {
        let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 1))?;
        for (name, value) in answer.headers {
            resp.append_header(name, value)?;
        }
        resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
        self.send(session, ctx, resp, answer.body).await?;
        Ok(true)
    }

    /// Writes a gateway-made response after the response hooks, like a proxied one.
    async fn send(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut resp: ResponseHeader,
        body: Bytes,
    ) -> Result<()> {
        ctx.request_id();
        run_response_hooks(ctx, session.req_header(), &mut resp).await;
        let head_only = session.req_header().method == http::Method::HEAD;
        let empty = body.is_empty() || head_only;
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

async fn run_request_hooks(
    plugins: &[Arc<dyn portico_plugins::Plugin>],
    ctx: &mut PluginCtx,
    session: &mut Session,
) -> Option<PluginResponse> {
    for p in plugins {
        if let Flow::Respond(resp) = p.request(ctx, session.req_header_mut()).await {
            return Some(resp);
        }
    }
    None
}

/// Route plugins first, then global ones: the reverse of the request order.
async fn run_response_hooks(ctx: &mut Ctx, req: &RequestHeader, resp: &mut ResponseHeader) {
    if let Some(route) = ctx.route.clone() {
        for p in &route.plugins.response {
            p.response(&mut ctx.plugin, req, resp).await;
        }
    }
    let snapshot = ctx.snapshot.clone();
    for p in &snapshot.global_plugins.response {
        p.response(&mut ctx.plugin, req, resp).await;
    }
}

/// The first size limit a request breaks, if any.
fn check_limits(req: &RequestHeader, limits: &crate::config::Limits) -> Option<GatewayError> {
    if req.raw_path().len() > limits.max_uri_bytes {
        return Some(GatewayError::UriTooLong);
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Some(GatewayError::HeadersTooLarge);
    }
    let lengths = req.headers.get_all(http::header::CONTENT_LENGTH);
    for value in lengths.iter() {
        match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(n) if n > limits.max_body_bytes => {
                return Some(GatewayError::BodyTooLarge(limits.max_body_bytes))
            }
            Some(_) => {}
            None => return Some(GatewayError::BadRequest("invalid Content-Length".into())),
        }
    }
    None
}

/// Replaces the path of a request, keeping its query (and scheme and authority, which
/// HTTP/2 requests carry in the URI).
fn set_path(req: &mut RequestHeader, path: &str) -> std::result::Result<(), String> {
    let path_and_query = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|e| format!("{e}"))?);
    let uri = http::Uri::from_parts(parts).map_err(|e| format!("{e}"))?;
    req.set_uri(uri);
    Ok(())
}
