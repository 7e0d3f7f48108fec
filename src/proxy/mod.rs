//! The Pingora `ProxyHttp` implementation. Each phase hook only calls into the modules
//! that own the work — `headers` for cleaning the client's request and the forwarding
//! headers, `router` for matching and version selection, `portico_plugins` for the plugin
//! chain, `upstream` for breakers, bulkheads, endpoint selection and outlier bookkeeping,
//! `retry` for retry decisions, `observe` for metrics, logs and spans — and keeps
//! per-request state in [`Ctx`], which holds the request's [`Snapshot`] from `new_ctx` to
//! `logging`. `docs/ARCHITECTURE.md` walks through the hooks in order.

pub mod compress;
pub mod connection;
pub mod error;
pub mod explain;
pub mod grpc;
pub mod handshake;
mod headers;
pub mod proxy_protocol;
mod response_buffer;
mod retry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use portico_plugins::{Flow, PluginCtx, PluginResponse};
use tokio::sync::OwnedSemaphorePermit;

use crate::observe::access_log::{Record, Timestamp};
use crate::observe::metrics::METRICS;
use crate::observe::otlp::{self, RequestInfo, RequestSpans};
use crate::observe::trace::TraceContext;
use crate::router::version::{split_uri_version, VersionError};
use crate::router::{inspect_path, normalize_path, rewrite_prefix, RouteMatch};
use crate::runtime::{Rewrite, Route, Snapshot, State, Target};
use crate::upstream::breaker::Admission;
use crate::upstream::{Endpoint, HashInput, Outcome};
pub use error::GatewayError;
pub use headers::clean_request;
use retry::{Failure, RETRYABLE_STATUS};

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
    /// The route's destination for this request (its version's, when versioned).
    target: Option<Arc<Target>>,
    plugin: PluginCtx,
    start: Instant,
    deadline: Option<Instant>,
    trace: Option<TraceContext>,
    /// Span timings and outcomes, only when tracing is on and this request is sampled.
    spans: Option<Box<RequestSpans>>,
    /// The path without its version segment, when the version came from the URI.
    unversioned_path: Option<String>,
    /// Endpoints this request has tried, in order.
    tried: Vec<Arc<Endpoint>>,
    /// The attempt in progress: its endpoint (which discovery may have removed from the
    /// cluster since) and whether it is a breaker probe.
    current: Option<(Arc<Endpoint>, bool)>,
    attempts: u32,
    /// `Retry-After` of the last retried response, honoured by the next backoff.
    retry_after: Option<Duration>,
    upstream_start: Option<Instant>,
    upstream_time: Option<Duration>,
    upstream_status: Option<u16>,
    /// The cluster breaker admitted this request (as a half-open probe when true).
    cluster_admission: Option<bool>,
    /// The bulkhead slot, released when the request context is dropped.
    _slot: Option<OwnedSemaphorePermit>,
    /// Set when the gateway answers itself with an error.
    error: Option<GatewayError>,
    body_bytes: u64,
    active: bool,
    /// The address of the connection's peer (the client, or a proxy in front).
    peer_ip: Option<std::net::IpAddr>,
    /// What the path holds that its route must allow.
    path_traits: crate::router::PathTraits,
    /// The largest request body this request may have (`[limits]`, or its route's own).
    max_body: u64,
    /// The upstream answered `101`: the connection is relayed as another protocol and
    /// counted in `portico_upgraded_connections` until the request ends.
    upgraded: bool,
    /// The response body is being compressed (its route has `compress`, and the response
    /// and the client's `Accept-Encoding` allow it).
    compression: Option<compress::Encoding>,
    /// The request is a gRPC call (HTTP/2, `application/grpc`).
    grpc: Option<grpc::Call>,
    /// What the route's cache did for this request; `None` on routes without one (and
    /// before the cache hooks run), so they pay no allocation for it.
    cache: Option<Box<crate::cache::status::RequestState>>,
    /// A cached route's upstream gate (breaker, bulkhead) refused the request; kept until
    /// `upstream_peer` so a stale entry may still answer (stale-if-error).
    refused: Option<Box<GatewayError>>,
}

impl Ctx {
    /// The cache's record of this request, created by the first cache hook that writes it
    /// (cache hooks run only on cached routes).
    fn cache_state(&mut self) -> &mut crate::cache::status::RequestState {
        self.cache.get_or_insert_with(Default::default)
    }

    /// A stale entry answered for a failed upstream.
    fn stale_on_error(&self) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|c| c.stale_on_error.is_some())
    }

    fn request_id(&mut self) -> &str {
        self.plugin
            .request_id
            .get_or_insert_with(crate::observe::random_hex_128)
    }

    /// Counts a finished upstream attempt under the request's route metrics.
    fn count_attempt(&self, result: &'static str) {
        if let Some(target) = &self.target {
            target.metrics.count_attempt(result);
        }
    }

    fn cluster_name(&self) -> &str {
        self.target.as_ref().map_or("", |t| t.cluster.name.as_str())
    }

    /// Ends the attempt in progress, if any, with its outcome.
    fn finish_attempt(&mut self, outcome: Outcome) {
        let label = match outcome {
            Outcome::Response(_) => "response",
            Outcome::ConnectFailure => "connect_error",
            Outcome::Failure => "error",
            Outcome::Abandoned => "abandoned",
        };
        self.finish_attempt_as(outcome, label);
    }

    /// [`Ctx::finish_attempt`], naming the outcome for the attempt's span (`timeout` is
    /// a `Failure` the span tells apart).
    fn finish_attempt_as(&mut self, outcome: Outcome, label: &'static str) {
        if let (Some(target), Some((endpoint, probe))) = (&self.target, self.current.take()) {
            target.cluster.finish(&endpoint, probe, outcome);
            if let Some(spans) = &mut self.spans {
                let status = match outcome {
                    Outcome::Response(s) => Some(s),
                    _ => None,
                };
                spans.end_attempt(label, status);
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        let snapshot = self.state.snapshot();
        Ctx {
            max_body: snapshot.limits.max_body_bytes,
            upgraded: false,
            compression: None,
            snapshot,
            route: None,
            target: None,
            plugin: PluginCtx::default(),
            start: Instant::now(),
            deadline: None,
            trace: None,
            spans: None,
            unversioned_path: None,
            tried: Vec::new(),
            current: None,
            attempts: 0,
            retry_after: None,
            upstream_start: None,
            upstream_time: None,
            upstream_status: None,
            cluster_admission: None,
            _slot: None,
            error: None,
            body_bytes: 0,
            active: false,
            peer_ip: None,
            path_traits: Default::default(),
            grpc: None,
            cache: None,
            refused: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        METRICS.active_requests.inc();
        ctx.active = true;
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.plugin.client_ip = ctx.peer_ip;
        ctx.plugin.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // Before cleaning, which drops the `TE: trailers` a gRPC call carries.
        ctx.grpc = grpc::Call::of(session);
        let mut trace = TraceContext::from_header(
            session
                .req_header()
                .headers
                .get("traceparent")
                .map(|v| v.as_bytes()),
        );
        // The head sampling decision; with tracing off or unsampled, no span work at all.
        if let Some(tracer) = &ctx.snapshot.tracer {
            if tracer.sample(&mut trace) {
                ctx.spans = Some(RequestSpans::new(ctx.start));
            }
        }
        ctx.trace = Some(trace);

        let limits = &ctx.snapshot.limits;
        if let Some(err) = check_limits(session.req_header(), limits, ctx.snapshot.body_cap) {
            return self.answer_error(session, ctx, err).await;
        }

        // Before routing and before any plugin: what is left is what the upstream sees.
        let snapshot = ctx.snapshot.clone();
        let trusted_peer = ctx.peer_ip.is_some_and(|ip| snapshot.is_trusted_proxy(ip));
        let req = session.req_header_mut();
        if let Err(err) = headers::clean_request(req, &snapshot.identity_headers, trusted_peer)
            .and_then(|()| headers::to_origin_form(req))
        {
            return self.answer_error(session, ctx, err).await;
        }
        if !snapshot.config.server.preserve_header_case {
            headers::forget_request_case(req);
        }
        if let (Some(peer), true) = (ctx.peer_ip, trusted_peer) {
            let client = headers::forwarded_client(req, peer, |ip| snapshot.is_trusted_proxy(ip));
            ctx.plugin.client_ip = Some(client);
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
        ctx.path_traits = match inspect_path(session.req_header().uri.path()) {
            Ok(traits) => traits,
            Err(e) => {
                return self
                    .answer_error(session, ctx, GatewayError::BadPath(e.to_string()))
                    .await
            }
        };

        // Global plugins run before routing so they also cover requests no route matches.
        if let Some(resp) =
            run_request_hooks(&snapshot.global_plugins.request, &mut ctx.plugin, session).await
        {
            return self.answer(session, ctx, resp).await;
        }

        let Resolved {
            route,
            target,
            unversioned_path,
        } = match resolve(&snapshot, session.req_header()) {
            Ok(found) => found,
            Err(e) => return self.answer_error(session, ctx, e).await,
        };
        if let Err(e) = check_route_policy(&route, ctx.path_traits, session.req_header()) {
            return self.answer_error(session, ctx, e).await;
        }
        if let Some(limits) = route.limits.as_deref() {
            apply_route_limits(session, limits);
        }
        // The declared length was checked against the largest limit of any route; a route
        // with a smaller one (its own, or `[limits]`) checks it again.
        ctx.max_body = route
            .limits
            .as_deref()
            .and_then(|l| l.max_body_bytes)
            .unwrap_or(snapshot.limits.max_body_bytes);
        if ctx.max_body < snapshot.body_cap {
            if let Err(e) = check_body_length(session.req_header(), ctx.max_body) {
                return self.answer_error(session, ctx, e).await;
            }
        }
        ctx.plugin.route_id = route.id.clone();
        ctx.route = Some(route.clone());
        ctx.target = Some(target.clone());
        ctx.unversioned_path = unversioned_path;

        if let Some(resp) =
            run_request_hooks(&route.plugins.request, &mut ctx.plugin, session).await
        {
            return self.answer(session, ctx, resp).await;
        }
        ctx.request_id();

        // A cached route passes its upstream gates only when the cache cannot answer
        // (`proxy_upstream_filter`): a hit needs no upstream, and a stale entry may answer
        // when a gate refuses.
        if route.cache.is_none() {
            if let Err(err) = admit_upstream(ctx, &target).await {
                return self.answer_error(session, ctx, err).await;
            }
        }
        ctx.deadline = route.deadline.map(|d| ctx.start + d);
        // A gRPC call's own deadline shortens the route's, never lengthens it.
        if let Some(t) = ctx.grpc.and_then(|c| c.timeout) {
            let own = ctx.start + t;
            ctx.deadline = Some(ctx.deadline.map_or(own, |d| d.min(own)));
        }
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
            let limit = ctx.max_body;
            if ctx.body_bytes > limit {
                ctx.error = Some(GatewayError::BodyTooLarge(limit));
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        Ok(())
    }

    // The cache hooks below run after `request_filter`, so every plugin (authentication,
    // rate limits, filters) has passed the request before a lookup can answer it. On a
    // route without a cache each is one branch on `Route::cache`.

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_deref()) else {
            return Ok(());
        };
        let req = session.req_header();
        if let Err(bypass) = policy.admit(req, &ctx.plugin) {
            ctx.cache_state().bypass = Some(bypass);
            return Ok(());
        }
        let authorized =
            ctx.plugin.identity.is_some() || req.headers.contains_key(http::header::AUTHORIZATION);
        let per_identity = policy.per_identity.is_some();
        policy.enable(&mut session.cache);
        let state = ctx.cache_state();
        state.authorized = authorized;
        state.per_identity = per_identity;
        Ok(())
    }

    fn cache_key_callback(
        &self,
        session: &Session,
        ctx: &mut Ctx,
    ) -> Result<pingora_cache::CacheKey> {
        let (Some(route), Some(target)) = (&ctx.route, &ctx.target) else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a route");
        };
        let Some(policy) = route.cache.as_deref() else {
            return Error::e_explain(ErrorType::InternalError, "cache key without a policy");
        };
        Ok(crate::cache::key::primary(
            policy,
            &route.id,
            target.version.as_deref(),
            session.req_header(),
            policy.identity(&ctx.plugin),
        ))
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Ctx) {
        ctx.cache_state().missed = true;
        session.cache.cache_miss();
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &pingora_cache::CacheMeta,
        _hit_handler: &mut pingora_cache::storage::HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<pingora_cache::ForcedFreshness>> {
        ctx.cache_state().found = Some(is_fresh);
        let revalidate = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_deref())
            .is_some_and(|p| p.client_no_cache == crate::config::ClientNoCache::Revalidate);
        if is_fresh
            && revalidate
            && crate::cache::policy::client_wants_validation(session.req_header())
        {
            ctx.cache_state().found = Some(false);
            return Ok(Some(pingora_cache::ForcedFreshness::ForceExpired));
        }
        Ok(None)
    }

    async fn proxy_upstream_filter(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx.route.as_ref().is_none_or(|r| r.cache.is_none()) {
            return Ok(true);
        }
        if let Some(target) = ctx.target.clone() {
            if let Err(err) = admit_upstream(ctx, &target).await {
                ctx.refused = Some(Box::new(err));
            }
        }
        Ok(true)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<pingora_cache::RespCacheable> {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_deref()) else {
            return Ok(pingora_cache::RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::NeverEnabled,
            ));
        };
        Ok(crate::cache::policy::response_cacheable(
            policy,
            session.req_header(),
            resp,
            ctx.cache.as_ref().is_some_and(|c| c.authorized),
            ctx.cache.as_ref().is_some_and(|c| c.per_identity),
        ))
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora_cache::CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<pingora_cache::key::HashBinary> {
        crate::cache::key::variance(meta, req)
    }

    /// Stale-while-revalidate (no error) is decided by the entry's window alone; on an
    /// error, a stale entry answers whatever the upstream did wrong — a 5xx, no connection,
    /// a timeout, an open breaker or a full bulkhead — but not when the client is gone.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        let Some(e) = error else {
            return true;
        };
        if client_gone(e) {
            return false;
        }
        let status = match e.etype() {
            ErrorType::HTTPStatus(s) if e.esource() == &ErrorSource::Upstream => Some(*s),
            _ => None,
        };
        ctx.cache_state().stale_on_error = Some(status);
        true
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(state) = &mut ctx.cache {
            if state.missed || state.found == Some(false) {
                if let (Some(b), true) = (body, session.cache.enabled()) {
                    state.stored_bytes += b.len() as u64;
                }
            }
        }
        Ok(None)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(target)) = (ctx.route.clone(), ctx.target.clone()) else {
            ctx.error = Some(GatewayError::Internal);
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        if let Some(err) = ctx.refused.take() {
            let status = err.status();
            ctx.error = Some(*err);
            return Error::e_explain(ErrorType::HTTPStatus(status), "refused by an upstream gate");
        }
        ctx.finish_attempt(Outcome::Abandoned);
        let cluster = &target.cluster;

        if ctx.attempts > 0 {
            let wait = route.retry.backoff(ctx.attempts, ctx.retry_after.take());
            if ctx.deadline.is_some_and(|d| Instant::now() + wait >= d) {
                ctx.error = Some(GatewayError::DeadlineExceeded(cluster.name.clone()));
                return Error::e_explain(ErrorType::HTTPStatus(504), "deadline before retry");
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let remaining = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            ctx.error = Some(GatewayError::DeadlineExceeded(cluster.name.clone()));
            return Error::e_explain(ErrorType::HTTPStatus(504), "deadline exceeded");
        }

        let input = HashInput {
            client_ip: ctx.plugin.client_ip,
            headers: &session.req_header().headers,
        };
        // An endpoint whose breaker turns a request away is skipped like a tried one.
        let mut skipped = Vec::new();
        let attempt = loop {
            let exclude: Vec<Arc<Endpoint>> = ctx.tried.iter().chain(&skipped).cloned().collect();
            match cluster.select(&input, &exclude) {
                Ok(endpoint) => match cluster.start(&endpoint) {
                    Some(attempt) => break attempt,
                    None if skipped.len() < cluster.endpoint_count() => skipped.push(endpoint),
                    None => break_no_endpoint(ctx, &cluster.name)?,
                },
                Err(_) => break_no_endpoint(ctx, &cluster.name)?,
            }
        };
        ctx.tried.push(attempt.endpoint.clone());
        ctx.current = Some((attempt.endpoint.clone(), attempt.probe));
        ctx.attempts += 1;
        ctx.upstream_start = Some(Instant::now());
        ctx.upstream_status = None;
        if let Some(spans) = &mut ctx.spans {
            spans.start_attempt(&attempt.endpoint.name, attempt.endpoint.addr);
        }
        let mut peer = attempt.peer;
        // Pingora forwards only WebSocket upgrades by default; another protocol got here
        // because the route lists it, and `headers::clean_request` already reduced the
        // request to `Upgrade` plus `Connection: upgrade`.
        let upgrade = session.req_header().headers.get(http::header::UPGRADE);
        let is_upgrade = upgrade.is_some();
        let other_upgrade =
            upgrade.is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if other_upgrade {
            peer.options.http_upstream_request_policy.h1_upgrade =
                pingora_core::upstreams::peer::H1UpgradePolicy::Preserve;
        }
        let route_limits = route.limits.as_deref();
        if let Some(t) = route_limits.and_then(|l| l.response_header_timeout) {
            peer.options.read_timeout = Some(t);
        }
        // Each attempt gets at most its per-try timeout and never more than the deadline.
        let cap = match (route.retry.per_try_timeout, remaining) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(cap) = cap {
            let o = &mut peer.options;
            for t in [
                &mut o.connection_timeout,
                &mut o.total_connection_timeout,
                &mut o.read_timeout,
                &mut o.write_timeout,
            ] {
                *t = Some(t.map_or(cap, |t| t.min(cap)));
            }
        }
        // An upgrade's upstream read timeout is its idle time once it is relayed; the
        // deadline, meant for a request and its response, bounds only its connect.
        if is_upgrade {
            peer.options.read_timeout = Some(upgrade_idle_timeout(&ctx.snapshot, &route));
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.finish_attempt(Outcome::ConnectFailure);
        ctx.count_attempt("connect_error");
        // Nothing was sent, so a failed connect may be retried for any method.
        e.set_retry(retry::decide(ctx, session, Failure::Connect));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let failure = match e.etype() {
            ErrorType::Custom(RETRYABLE_STATUS) => None,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Failure::Timeout),
            _ if e.esource() == &ErrorSource::Upstream => Some(Failure::Reset),
            // The client's side broke: nothing to retry, nothing against the upstream.
            _ => {
                ctx.finish_attempt(Outcome::Abandoned);
                e.set_retry(false);
                return e;
            }
        };
        let Some(failure) = failure else {
            // The retry of a retryable status was decided (and the attempt finished) in
            // `upstream_response_filter`.
            e.set_retry(true);
            return e;
        };
        let result = if failure == Failure::Timeout {
            "timeout"
        } else {
            "error"
        };
        ctx.finish_attempt_as(Outcome::Failure, result);
        ctx.count_attempt(result);
        e.set_retry(retry::decide(ctx, session, failure));
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::add_forwarded(upstream, ctx.peer_ip, ctx.plugin.tls);
        if let Some(call) = ctx.grpc {
            if call.te_trailers {
                upstream.insert_header(http::header::TE, "trailers")?;
            }
            // The upstream learns what is left of the deadline, as the client told the
            // gateway what it had (the route's deadline counts too).
            if let Some(deadline) = ctx.deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                upstream.insert_header("grpc-timeout", grpc::format_timeout(left))?;
            }
        }
        if let Some(trace) = &ctx.trace {
            // A sampled request's upstream sees this attempt's span as its parent; others
            // see the gateway's span.
            let value = match ctx.spans.as_ref().and_then(|s| s.open_attempt()) {
                Some(attempt) => otlp::attempt_traceparent(trace, attempt),
                None => trace.header_bytes(),
            };
            let value = http::HeaderValue::from_bytes(&value)
                .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
            upstream.insert_header("traceparent", value)?;
        }
        if let Some(target) = ctx.target.clone() {
            let base = ctx
                .unversioned_path
                .as_deref()
                .unwrap_or(upstream.uri.path());
            let path = match &target.rewrite {
                Rewrite::Prefix { prefix, with } => Some(rewrite_prefix(base, prefix, with)),
                Rewrite::None => ctx.unversioned_path.clone(),
            };
            if let Some(path) = path {
                set_path(upstream, &path).map_err(|e| {
                    Error::explain(ErrorType::InternalError, format!("rewrite failed: {e}"))
                })?;
            }
        }
        let snapshot = ctx.snapshot.clone();
        for p in &snapshot.global_plugins.upstream_request {
            p.upstream_request(&mut ctx.plugin, upstream).await;
        }
        if let Some(route) = ctx.route.clone() {
            for p in &route.plugins.upstream_request {
                p.upstream_request(&mut ctx.plugin, upstream).await;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !ctx.snapshot.config.server.preserve_header_case {
            headers::forget_response_case(upstream_response);
        }
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if let Some(start) = ctx.upstream_start {
            ctx.upstream_time = Some(start.elapsed());
        }
        if let Some(call) = &mut ctx.grpc {
            // A `grpc-status` in the response header makes it a trailers-only answer:
            // nothing of it has reached the client, so a listed status may be retried.
            call.status = grpc::status_of(&upstream_response.headers);
            if let Some(code) = call.status {
                if retry::decide(ctx, session, Failure::GrpcStatus(code)) {
                    ctx.finish_attempt(Outcome::Response(grpc::http_equivalent(code)));
                    ctx.count_attempt("response");
                    let mut e = Error::explain(
                        ErrorType::Custom(RETRYABLE_STATUS),
                        format!("upstream answered grpc-status {code}, retrying"),
                    );
                    e.set_retry(true);
                    return Err(e);
                }
            }
        }
        let retryable = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.retry.statuses.contains(&status));
        if retryable && retry::decide(ctx, session, Failure::Status(status)) {
            ctx.retry_after = crate::client::retry_after(
                &upstream_response.headers,
                std::time::SystemTime::now(),
            );
            ctx.finish_attempt(Outcome::Response(status));
            ctx.count_attempt("response");
            let mut e = Error::explain(
                ErrorType::Custom(RETRYABLE_STATUS),
                format!("upstream answered {status}, retrying"),
            );
            e.set_retry(true);
            return Err(e);
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
        finish_response_headers(ctx, resp);
        cache_status(session, ctx, resp);
        invalidate_on_change(session, ctx, resp).await;
        if ctx.stale_on_error() {
            // Pingora does not reuse a client connection after a failed upstream attempt,
            // even when a stale entry answered for it: say so rather than close unannounced.
            session.set_keepalive(None);
        }
        run_response_hooks(ctx, session.req_header(), resp).await;
        // Last, on the header as the client will get it (plugins may have changed it).
        if let Some(policy) = ctx.route.as_ref().and_then(|r| r.compress.as_deref()) {
            ctx.compression = policy.start(session.req_header(), resp);
        }
        self.close_if_draining(session);
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && !ctx.upgraded {
            if let Some(route) = &ctx.route {
                // From here on a read of the client waits for the next frame, not a body.
                let idle = upgrade_idle_timeout(&ctx.snapshot, route);
                session.set_read_timeout(Some(idle));
                ctx.upgraded = true;
                METRICS.upgraded_connections.inc();
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(encoding) = &mut ctx.compression {
            encoding.filter(body, end_of_stream)?;
        }
        Ok(None)
    }

    /// Trailers end a body without an end-of-stream chunk: a compressed body's encoder
    /// is finished here, or its stream would be cut short. (Pingora then sends these
    /// bytes as the body's end instead of the trailers; trailers come with gRPC, which no
    /// compressible media type covers.)
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        _trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<Bytes>> {
        match &mut ctx.compression {
            Some(encoding) => encoding.finish(),
            None => Ok(None),
        }
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(call) = &mut ctx.grpc {
            call.status = grpc::status_of(trailers);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if client_gone(e) {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let downstream = e.esource() == &ErrorSource::Downstream;
        let err = match (&ctx.error, e.etype()) {
            (Some(err), _) => err.clone(),
            (None, ErrorType::ReadTimedout) if downstream => {
                METRICS.client_timeouts.with_label_values(&["body"]).inc();
                GatewayError::RequestTimeout
            }
            (None, ErrorType::HTTPStatus(400)) if downstream => {
                GatewayError::BadRequest("the request could not be read".into())
            }
            // The client's own bytes were wrong (a badly framed body: a bad chunk size, a
            // chunk without its CRLF, a body cut short of its framing): 400, not a 502 that
            // blames the upstream and counts against it.
            (None, _) if downstream => {
                GatewayError::BadRequest("the request body is not correctly framed".into())
            }
            (None, _) => GatewayError::from_pingora(e, ctx.cluster_name()),
        };
        let status = err.status();
        // Pingora closes the client connection after a failed proxy attempt whatever this
        // hook answers, so the error response must say so rather than promise keep-alive.
        session.set_keepalive(None);
        if session.response_written().is_none() {
            if let Err(write_error) = self.write_error(session, ctx, &err).await {
                log::debug!("cannot send error response: {write_error}");
            }
        } else if let Some(call) = &mut ctx.grpc {
            // The call's header went out, so its status can only be in trailers: the
            // client reads the failure as a status rather than a reset stream.
            if call.status.is_none() {
                let code = err.grpc_code();
                call.status = Some(code);
                let trailers = grpc::status_trailers(code, &err.public_detail());
                if let Err(write_error) = session.write_response_trailers(trailers).await {
                    log::debug!("cannot send gRPC status trailers: {write_error}");
                }
            }
        }
        ctx.error = Some(err);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// A client that hangs up is not the gateway's error: counted, logged at debug, and
    /// kept out of the error log, where Pingora would put a line per hang-up.
    fn suppress_error_log(&self, session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        if !client_gone(e) {
            return false;
        }
        let phase = if session.response_written().is_some() {
            "during_response"
        } else {
            "before_response"
        };
        METRICS.client_disconnects.with_label_values(&[phase]).inc();
        log::debug!("client went away {phase}: {e}");
        true
    }

    /// None of Pingora's default downstream modules: its response compression module,
    /// installed disabled, would still be called on every request and response.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or_else(|| ctx.error.as_ref().map(|e| e.status()))
            .unwrap_or(0);
        // A gRPC call is answered with 200 whatever its status: breakers, outlier ejection
        // and log sampling judge it by the HTTP status its gRPC status stands for.
        let grpc_status = ctx.grpc.and_then(|c| c.status);
        let judged = |s: u16| match grpc_status {
            Some(code) if s == 200 => grpc::http_equivalent(code),
            _ => s,
        };
        let outcome = match (ctx.upstream_status, e) {
            (Some(s), _) => Outcome::Response(judged(s)),
            (None, Some(_)) => Outcome::Failure,
            (None, None) => Outcome::Abandoned,
        };
        if ctx.current.is_some() && ctx.upstream_status.is_some() {
            ctx.count_attempt("response");
        }
        ctx.finish_attempt(outcome);
        let target = ctx.target.clone();
        if let (Some(target), Some(probe)) = (&target, ctx.cluster_admission) {
            if let Some(breaker) = &target.cluster.breaker {
                // The cluster breaker judges the request as a whole: did it get a good
                // answer in the end? Requests that never reached the upstream say nothing,
                // and a stale entry answering for a failed upstream hides a failure.
                match (ctx.attempts, judged(status)) {
                    (0, _) => breaker.cancel(probe),
                    (_, s) => {
                        let good = s != 0 && s < 500 && !ctx.stale_on_error();
                        breaker.record(good, probe)
                    }
                }
            }
        }
        // The adaptive bulkhead learns from every answered request, breaker or not.
        if let (Some(target), Some(up)) = (&target, ctx.upstream_time) {
            if let Some(bulkhead) = &target.cluster.bulkhead {
                bulkhead.observe(up);
            }
        }
        if ctx.active {
            METRICS.active_requests.dec();
        }
        if ctx.upgraded {
            METRICS.upgraded_connections.dec();
        }
        if let (Some(encoding), Some(policy)) = (
            &ctx.compression,
            ctx.route.as_ref().and_then(|r| r.compress.as_deref()),
        ) {
            policy.record(encoding);
        }
        let elapsed = ctx.start.elapsed();
        let metrics = target
            .as_ref()
            .map_or(&ctx.snapshot.unrouted_metrics, |t| &t.metrics);
        let req = session.req_header();
        let (read, sent) = (session.body_bytes_read(), session.body_bytes_sent());
        metrics.finish(
            &req.method,
            status,
            elapsed,
            ctx.upstream_time,
            (read as u64, sent as u64),
        );
        if let Some(call) = ctx.grpc {
            metrics.count_grpc(call.status);
        }

        if let (Some(spans), Some(tracer), Some(trace)) =
            (ctx.spans.take(), &ctx.snapshot.tracer, &ctx.trace)
        {
            let req = session.req_header();
            let info = RequestInfo {
                method: &req.method,
                path: req.uri.path(),
                route: ctx.route.as_ref().map(|r| r.id.clone()),
                version: target.as_ref().and_then(|t| t.version.clone()),
                cluster: target.as_ref().map(|t| t.cluster.name.as_str()),
                status,
                attempts: ctx.attempts,
                request_id: ctx.plugin.request_id.as_deref().unwrap_or(""),
                client: ctx.plugin.client_ip,
                error: ctx
                    .error
                    .as_ref()
                    .map(|e| e.slug())
                    .or(e.map(|e| e.etype().as_str())),
            };
            tracer.export(spans, trace, info);
        }

        let cache = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_deref())
            .map(|policy| {
                use crate::cache::status::Outcome;
                let state = ctx.cache.as_deref().unwrap_or(&NO_STATE);
                let outcome = state
                    .outcome
                    .unwrap_or_else(|| Outcome::of(&session.cache, state));
                let stored = session.cache.enabled()
                    && matches!(
                        session.cache.phase(),
                        pingora_cache::CachePhase::Miss | pingora_cache::CachePhase::Expired
                    );
                policy.metrics.record(
                    outcome,
                    state.stale_on_error.is_some(),
                    session.cache.lock_duration().is_some(),
                    stored.then_some(state.stored_bytes),
                );
                outcome.as_str()
            });

        if ctx.snapshot.access_log.wants(judged(status)) {
            let req = session.req_header();
            let upstream = ctx.tried.last().map(|e| e.label.as_str());
            let error = ctx
                .error
                .as_ref()
                .map(|e| e.slug())
                .or(e.map(|e| e.etype().as_str()));
            let traceparent = ctx.trace.as_ref().map(TraceContext::header_bytes);
            let record = Record {
                timestamp: Timestamp::now(),
                request_id: ctx.plugin.request_id.as_deref().unwrap_or(""),
                traceparent: traceparent
                    .as_ref()
                    .and_then(|t| std::str::from_utf8(t).ok()),
                client: ctx.plugin.client_ip,
                method: req.method.as_str(),
                path: req.uri.path(),
                host: req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok()),
                route: ctx.route.as_ref().map(|r| &*r.id),
                version: target.as_ref().and_then(|t| t.version.as_deref()),
                cluster: target.as_ref().map(|t| t.cluster.name.as_str()),
                upstream,
                status,
                request_bytes: read,
                response_bytes: sent,
                total: elapsed,
                upstream_time: ctx.upstream_time,
                attempts: ctx.attempts,
                error,
                compression: ctx.compression.as_ref().map(|c| c.algorithm.token()),
                grpc_status,
                cache,
            };
            ctx.snapshot.access_log.write(&record);
        }

        for p in &ctx.snapshot.global_plugins.log {
            p.log(&ctx.plugin, status).await;
        }
        if let Some(route) = &ctx.route {
            for p in &route.plugins.log {
                p.log(&ctx.plugin, status).await;
            }
        }
    }
}

/// The resilience gates in front of a cluster, cheapest first; none of them touches the
/// network: the cluster breaker, a bulkhead slot (kept in `ctx` until the request ends),
/// and the retry budget's request count.
async fn admit_upstream(ctx: &mut Ctx, target: &Target) -> Result<(), GatewayError> {
    let cluster = &target.cluster;
    if let Some(breaker) = &cluster.breaker {
        match breaker.admit() {
            Admission::Allowed { probe } => ctx.cluster_admission = Some(probe),
            Admission::Rejected { retry_after } => {
                METRICS
                    .breaker_rejections
                    .with_label_values(&[cluster.name.as_str()])
                    .inc();
                return Err(GatewayError::CircuitOpen {
                    cluster: cluster.name.clone(),
                    retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
    }
    if let Some(bulkhead) = &cluster.bulkhead {
        match bulkhead.acquire().await {
            Ok(slot) => ctx._slot = Some(slot),
            Err(rejection) => {
                METRICS
                    .bulkhead_rejections
                    .with_label_values(&[cluster.name.as_str(), rejection.as_str()])
                    .inc();
                return Err(GatewayError::Overloaded(cluster.name.clone()));
            }
        }
    }
    cluster.retry_budget.record_request();
    Ok(())
}

/// Records that no endpoint can take the request (for `upstream_peer`'s selection loop).
fn break_no_endpoint<T>(ctx: &mut Ctx, cluster: &str) -> Result<T> {
    ctx.error = Some(GatewayError::NoHealthyEndpoint(cluster.to_string()));
    Error::e_explain(ErrorType::HTTPStatus(503), "no healthy endpoint")
}

/// Where a request goes.
pub struct Resolved {
    pub route: Arc<Route>,
    pub target: Arc<Target>,
    /// The path without its version segment, when the version came from the URI.
    pub unversioned_path: Option<String>,
}

/// Finds the route and target (API version) of a request. A leading version segment
/// (`/v2/orders`) is tried first against routes that read versions from the URI;
/// otherwise the whole path is matched. `portico routes` explains requests with this
/// same function.
pub fn resolve(snapshot: &Snapshot, req: &RequestHeader) -> Result<Resolved, GatewayError> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host());
    // Routed by the path without `;` parameters, as servlet containers read it; whether
    // parameters may reach the upstream at all is the route's call (`check_route_policy`).
    let path = crate::router::without_params(req.uri.path());
    let path = &*path;
    let mut found = None;
    if let Some((version, rest)) = split_uri_version(path) {
        if let RouteMatch::Found { value, .. } =
            snapshot.router.find(host, &req.method, rest, &req.headers)
        {
            if value.versioning.as_ref().is_some_and(|v| v.accepts_uri()) {
                found = Some((value.clone(), Some((version, rest))));
            }
        }
    }
    let (route, uri_version) = match found {
        Some(found) => found,
        None => match snapshot.router.find(host, &req.method, path, &req.headers) {
            RouteMatch::Found { value, .. } => (value.clone(), None),
            RouteMatch::MethodNotAllowed { allowed } => {
                return Err(GatewayError::MethodNotAllowed(allowed))
            }
            RouteMatch::NotFound => return Err(GatewayError::NotFound),
        },
    };
    let target = match &route.versioning {
        None => route.targets[0].clone(),
        Some(selector) => {
            let uri_v = uri_version.map(|(v, _)| v);
            match selector.select(uri_v, &req.headers, req.uri.query()) {
                Ok(i) => route.targets[i].clone(),
                Err(VersionError::Missing) => {
                    return Err(GatewayError::VersionRequired(selector.supported.clone()))
                }
                Err(VersionError::Unknown(requested)) | Err(VersionError::Retired(requested)) => {
                    let retired = route
                        .targets
                        .iter()
                        .any(|t| t.version.as_deref() == Some(requested.as_str()));
                    return Err(GatewayError::UnknownVersion {
                        in_uri: uri_v == Some(requested.as_str()),
                        retired,
                        requested,
                        supported: selector.supported.clone(),
                    });
                }
            }
        }
    };
    Ok(Resolved {
        route,
        target,
        unversioned_path: uri_version.map(|(_, rest)| rest.to_string()),
    })
}

/// What a route must allow explicitly: `;` path parameters, escaped slashes and the
/// protocol of an `Upgrade` (a client's `Upgrade` survives [`headers::clean_request`] only
/// with `Connection: upgrade`). `portico routes` applies the same rules.
pub fn check_route_policy(
    route: &Route,
    traits: crate::router::PathTraits,
    req: &RequestHeader,
) -> Result<(), GatewayError> {
    if traits.params && !route.allow_path_params {
        return Err(GatewayError::BadPath(
            "`;` path parameters are not accepted on this route".into(),
        ));
    }
    if traits.escaped_slash && !route.allow_escaped_slashes {
        return Err(GatewayError::BadPath(
            "escaped `/` or `\\` (%2F, %5C) is not accepted on this route".into(),
        ));
    }
    for (protocol, name) in headers::upgrade_protocols(req) {
        let allowed = route.upgrades.iter().any(|u| {
            u.as_bytes().eq_ignore_ascii_case(name) || u.as_bytes().eq_ignore_ascii_case(protocol)
        });
        if !allowed && !protocol.is_empty() {
            return Err(GatewayError::BadRequest(format!(
                "upgrading to `{}` is not allowed on this route",
                String::from_utf8_lossy(protocol)
            )));
        }
    }
    Ok(())
}

impl Gateway {
    /// While the process drains (graceful stop or upgrade), responses ask the client to
    /// close the connection, so no idle keep-alive connection is cut under a new request
    /// (see `runtime::supervisor`).
    fn close_if_draining(&self, session: &mut Session) {
        if self.state.is_draining() {
            session.set_keepalive(None);
        }
    }

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
        // The client's body has a generic detail for upstream failures; the full one
        // (cluster, breaker or bulkhead state) is logged under the same request id.
        let level = if err.status() >= 500 {
            log::Level::Warn
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "request {}: {} {}: {}",
            ctx.request_id(),
            err.status(),
            err.slug(),
            err.detail()
        );
        if ctx.grpc.is_some() {
            let code = err.grpc_code();
            let message = format!("{} (request_id {})", err.public_detail(), ctx.request_id());
            if let Some(call) = &mut ctx.grpc {
                call.status = Some(code);
            }
            let mut resp = grpc::trailers_only(code, &message)?;
            for (name, value) in err.headers() {
                resp.insert_header(name, value)?;
            }
            return self.send(session, ctx, resp, Bytes::new()).await;
        }
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
        if ctx.grpc.is_some() {
            return self.answer_grpc(session, ctx, answer).await;
        }
        let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 1))?;
        for (name, value) in answer.headers {
            resp.append_header(name, value)?;
        }
        resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
        self.send(session, ctx, resp, answer.body).await?;
        Ok(true)
    }

    /// A plugin's answer to a gRPC call, as the status a gRPC client reads: the HTTP status
    /// mapped (401 → UNAUTHENTICATED, 429 → RESOURCE_EXHAUSTED, ...), the problem's detail
    /// as the message, and the plugin's other headers (`WWW-Authenticate`, `Retry-After`).
    async fn answer_grpc(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        answer: PluginResponse,
    ) -> Result<bool> {
        let code = grpc::code_for_http(answer.status.as_u16());
        let detail = grpc::problem_detail(&answer.body);
        let message = detail
            .as_deref()
            .or(answer.status.canonical_reason())
            .unwrap_or("refused by the gateway");
        let mut resp = grpc::trailers_only(code, message)?;
        for (name, value) in answer.headers {
            if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
                resp.append_header(name, value)?;
            }
        }
        if let Some(call) = &mut ctx.grpc {
            call.status = Some(code);
        }
        self.send(session, ctx, resp, Bytes::new()).await?;
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
        finish_response_headers(ctx, &mut resp);
        cache_status(session, ctx, &mut resp);
        run_response_hooks(ctx, session.req_header(), &mut resp).await;
        self.close_if_draining(session);
        let head_only = session.req_header().method == http::Method::HEAD;
        let empty = body.is_empty() || head_only;
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

/// Headers the gateway itself puts on every response: the version's deprecation signals
/// and the attempt count.
fn finish_response_headers(ctx: &Ctx, resp: &mut ResponseHeader) {
    if let Some(target) = &ctx.target {
        for (name, value) in &target.deprecation {
            let _ = resp.append_header(name.clone(), value.clone());
        }
    }
    if ctx.attempts > 0 && ctx.route.as_ref().is_some_and(|r| r.retry.attempts_header) {
        let _ = resp.insert_header("X-Portico-Attempts", attempts_value(ctx.attempts));
    }
}

/// The cache's record of a request no cache hook has seen.
static NO_STATE: crate::cache::status::RequestState = crate::cache::status::RequestState::EMPTY;

/// On a cached route: fixes how the cache answered and says so in `Cache-Status`.
fn cache_status(session: &Session, ctx: &mut Ctx, resp: &mut ResponseHeader) {
    if ctx.route.as_ref().is_none_or(|r| r.cache.is_none()) {
        return;
    }
    use crate::cache::status::{header_value, Outcome};
    let state = ctx.cache_state();
    let outcome = Outcome::of(&session.cache, state);
    state.outcome = Some(outcome);
    let value = header_value(&session.cache, state, outcome);
    let _ = resp.insert_header("Cache-Status", value);
}

/// RFC 9111 §4.4 on a cached route: the upstream's non-error answer to an unsafe request
/// invalidates what is stored for its URI, before the client sees the answer, so the
/// client's next read cannot get the old one.
async fn invalidate_on_change(session: &Session, ctx: &Ctx, resp: &ResponseHeader) {
    let req = session.req_header();
    if req.method.is_safe() || ctx.upstream_status.is_none() || resp.status.as_u16() >= 400 {
        return;
    }
    let (Some(route), Some(target)) = (&ctx.route, &ctx.target) else {
        return;
    };
    if let Some(policy) = route.cache.as_deref() {
        let identity = policy.identity(&ctx.plugin);
        let version = target.version.as_deref();
        let key = crate::cache::key::primary(policy, &route.id, version, req, identity);
        policy.invalidate(&key).await;
    }
}

/// The `X-Portico-Attempts` value: a shared constant for the counts retry policies use, so
/// the common answer formats and allocates nothing.
fn attempts_value(attempts: u32) -> http::HeaderValue {
    static SMALL: [http::HeaderValue; 10] = [
        http::HeaderValue::from_static("0"),
        http::HeaderValue::from_static("1"),
        http::HeaderValue::from_static("2"),
        http::HeaderValue::from_static("3"),
        http::HeaderValue::from_static("4"),
        http::HeaderValue::from_static("5"),
        http::HeaderValue::from_static("6"),
        http::HeaderValue::from_static("7"),
        http::HeaderValue::from_static("8"),
        http::HeaderValue::from_static("9"),
    ];
    match SMALL.get(attempts as usize) {
        Some(value) => value.clone(),
        None => http::HeaderValue::from(attempts),
    }
}

/// Whether `e` is the client closing or breaking its connection.
fn client_gone(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        )
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

/// The idle timeout of an upgraded connection on `route`.
fn upgrade_idle_timeout(snapshot: &Snapshot, route: &Route) -> Duration {
    route
        .limits
        .as_deref()
        .and_then(|l| l.upgrade_idle_timeout)
        .unwrap_or(snapshot.limits.upgrade_idle_timeout)
}

/// A route's own client timeouts, for the rest of this request (the connection sets the
/// global ones again before its next request).
fn apply_route_limits(session: &mut Session, limits: &crate::config::RouteLimits) {
    if let Some(t) = limits.body_timeout {
        session.set_read_timeout(Some(t));
    }
    if let Some(t) = limits.send_timeout {
        session.set_write_timeout(Some(t));
    }
}

/// A declared `Content-Length` over `limit` (the values were found valid before routing).
fn check_body_length(req: &RequestHeader, limit: u64) -> Result<(), GatewayError> {
    let over = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .filter_map(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .any(|n| n > limit);
    if over {
        return Err(GatewayError::BodyTooLarge(limit));
    }
    Ok(())
}

/// The first size limit a request breaks, if any; `body_cap` is the largest body any
/// route accepts.
fn check_limits(
    req: &RequestHeader,
    limits: &crate::config::Limits,
    body_cap: u64,
) -> Option<GatewayError> {
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
            Some(n) if n > body_cap => return Some(GatewayError::BodyTooLarge(body_cap)),
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
