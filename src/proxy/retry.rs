//! Retry decisions: whether a failed attempt is tried again, by the route's policy (what
//! failed — a connect, a reset, a timeout, a listed HTTP status, a listed gRPC status of a
//! trailers-only answer —, how many attempts, which methods), the request's state (body still replayable,
//! nothing sent to the client yet) and the cluster's retry budget.

use pingora_proxy::Session;

use super::Ctx;
use crate::observe::metrics::METRICS;

/// The error type that carries "the upstream answered a retryable status".
pub const RETRYABLE_STATUS: &str = "retryable upstream status";

/// What went wrong with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Reset,
    Timeout,
    Status(u16),
    /// A gRPC call's trailers-only answer with this `grpc-status`.
    GrpcStatus(u8),
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect_failure",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "status",
            Failure::GrpcStatus(_) => "grpc_status",
        }
    }
}

/// Decides whether to retry, and takes the retry from the cluster's budget if so.
pub fn decide(ctx: &Ctx, session: &Session, failure: Failure) -> bool {
    let (Some(route), Some(target)) = (&ctx.route, &ctx.target) else {
        return false;
    };
    let rules = &route.retry;
    // For a gRPC call, a failure is also the status its client would read: a failed connect
    // or a broken upstream UNAVAILABLE, a timeout DEADLINE_EXCEEDED. A status the route
    // lists is retried whatever failed, as a gRPC client's own retry policy would.
    let grpc_code = match failure {
        Failure::GrpcStatus(code) => Some(code),
        _ if ctx.grpc.is_none() => None,
        Failure::Connect | Failure::Reset => Some(super::grpc::code::UNAVAILABLE),
        Failure::Timeout => Some(super::grpc::code::DEADLINE_EXCEEDED),
        Failure::Status(_) => None,
    };
    let by_grpc_code = grpc_code.is_some_and(|code| rules.grpc_codes & 1 << code != 0);
    let wanted = by_grpc_code
        || match failure {
            Failure::Connect => rules.on_connect_failure,
            Failure::Reset => rules.on_reset,
            Failure::Timeout => rules.on_timeout,
            Failure::Status(s) => rules.statuses.contains(&s),
            Failure::GrpcStatus(_) => false,
        };
    if !wanted || ctx.attempts >= rules.attempts {
        return false;
    }
    // Once a request was sent, only a request that is safe to repeat is repeated. A gRPC
    // status the route lists is the operator's word that the call may be repeated (gRPC's
    // own retry policy names status codes, not methods), but its body must still be whole
    // in the retry buffer; and, below, nothing of the answer may have reached the client.
    if by_grpc_code {
        if failure != Failure::Connect && session.as_ref().retry_buffer_truncated() {
            return false;
        }
    } else if failure != Failure::Connect {
        let req = session.req_header();
        let safe = req.method.is_idempotent()
            || rules.non_idempotent
            || req.headers.contains_key("idempotency-key");
        if !safe || session.as_ref().retry_buffer_truncated() {
            return false;
        }
    }
    if session.response_written().is_some() {
        return false;
    }
    if ctx.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
        return false;
    }
    let cluster = &target.cluster;
    if !cluster.retry_budget.try_retry() {
        METRICS
            .retry_budget_exhausted
            .with_label_values(&[cluster.name.as_str()])
            .inc();
        return false;
    }
    METRICS
        .retries
        .with_label_values(&[cluster.name.as_str(), failure.reason()])
        .inc();
    true
}
