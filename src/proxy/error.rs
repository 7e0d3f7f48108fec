//! Request-time failures as values: each knows its HTTP status and renders itself as an
//! RFC 9457 `application/problem+json` body carrying the request id.

use bytes::Bytes;
use pingora_error::{Error, ErrorType};
use serde::Serialize;

/// Everything that can go wrong with a request that the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    BadPath(String),
    NotFound,
    MethodNotAllowed(Vec<http::Method>),
    UriTooLong,
    HeadersTooLarge,
    BodyTooLarge(u64),
    /// The client took longer than `[limits]` allows to send its request header or body.
    RequestTimeout,
    BadRequest(String),
    NoHealthyEndpoint(String),
    UpstreamConnect(String),
    UpstreamTimeout(String),
    UpstreamBroken(String),
    /// The cluster's circuit breaker is open.
    CircuitOpen {
        cluster: String,
        retry_after_secs: u64,
    },
    /// The cluster's bulkhead has no free slot.
    Overloaded(String),
    /// The request's deadline passed before an answer.
    DeadlineExceeded(String),
    /// The request named no version and the route has no default.
    VersionRequired(Vec<String>),
    /// The request named a version the route does not serve (or a retired one);
    /// `in_uri` makes it a 404, as the URI names a resource that does not exist.
    UnknownVersion {
        requested: String,
        supported: Vec<String>,
        in_uri: bool,
        retired: bool,
    },
    Internal,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    instance: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    supported_versions: Option<Vec<&'a str>>,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadPath(_) | GatewayError::BadRequest(_) => 400,
            GatewayError::VersionRequired(_) => 400,
            GatewayError::UnknownVersion { in_uri: true, .. } => 404,
            GatewayError::UnknownVersion { .. } => 400,
            GatewayError::CircuitOpen { .. } | GatewayError::Overloaded(_) => 503,
            GatewayError::DeadlineExceeded(_) => 504,
            GatewayError::NotFound => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::BodyTooLarge(_) => 413,
            GatewayError::UriTooLong => 414,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::RequestTimeout => 408,
            GatewayError::Internal => 500,
            GatewayError::UpstreamConnect(_) | GatewayError::UpstreamBroken(_) => 502,
            GatewayError::NoHealthyEndpoint(_) => 503,
            GatewayError::UpstreamTimeout(_) => 504,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            GatewayError::BadPath(_) => "Invalid request path",
            GatewayError::BadRequest(_) => "Bad request",
            GatewayError::VersionRequired(_) => "API version required",
            GatewayError::UnknownVersion { retired: true, .. } => "API version retired",
            GatewayError::UnknownVersion { .. } => "Unknown API version",
            GatewayError::CircuitOpen { .. } => "Circuit open",
            GatewayError::Overloaded(_) => "Upstream at capacity",
            GatewayError::DeadlineExceeded(_) => "Deadline exceeded",
            GatewayError::NotFound => "No route matches the request",
            GatewayError::MethodNotAllowed(_) => "Method not allowed",
            GatewayError::BodyTooLarge(_) => "Request body too large",
            GatewayError::UriTooLong => "Request URI too long",
            GatewayError::HeadersTooLarge => "Request headers too large",
            GatewayError::RequestTimeout => "Request timeout",
            GatewayError::Internal => "Internal gateway error",
            GatewayError::UpstreamConnect(_) => "Upstream connection failed",
            GatewayError::UpstreamBroken(_) => "Upstream failed",
            GatewayError::NoHealthyEndpoint(_) => "No healthy upstream",
            GatewayError::UpstreamTimeout(_) => "Upstream timed out",
        }
    }

    /// A short name of the error kind, for logs and the problem type.
    pub fn slug(&self) -> &'static str {
        match self {
            GatewayError::BadPath(_) => "bad-path",
            GatewayError::BadRequest(_) => "bad-request",
            GatewayError::VersionRequired(_) => "version-required",
            GatewayError::UnknownVersion { retired: true, .. } => "version-retired",
            GatewayError::UnknownVersion { .. } => "unknown-version",
            GatewayError::CircuitOpen { .. } => "circuit-open",
            GatewayError::Overloaded(_) => "overloaded",
            GatewayError::DeadlineExceeded(_) => "deadline-exceeded",
            GatewayError::NotFound => "no-route",
            GatewayError::MethodNotAllowed(_) => "method-not-allowed",
            GatewayError::BodyTooLarge(_) => "body-too-large",
            GatewayError::UriTooLong => "uri-too-long",
            GatewayError::HeadersTooLarge => "headers-too-large",
            GatewayError::RequestTimeout => "request-timeout",
            GatewayError::Internal => "internal",
            GatewayError::UpstreamConnect(_) => "upstream-connect",
            GatewayError::UpstreamBroken(_) => "upstream-error",
            GatewayError::NoHealthyEndpoint(_) => "no-healthy-upstream",
            GatewayError::UpstreamTimeout(_) => "upstream-timeout",
        }
    }

    /// Whether the full [`detail`](Self::detail) may go to the client: true for errors
    /// about the client's own request (its path, version, method, size), false for errors
    /// about the gateway's upstreams, whose detail names clusters and breaker or bulkhead
    /// state.
    fn detail_is_public(&self) -> bool {
        !matches!(
            self,
            GatewayError::NoHealthyEndpoint(_)
                | GatewayError::UpstreamConnect(_)
                | GatewayError::UpstreamTimeout(_)
                | GatewayError::UpstreamBroken(_)
                | GatewayError::CircuitOpen { .. }
                | GatewayError::Overloaded(_)
                | GatewayError::DeadlineExceeded(_)
                | GatewayError::Internal
        )
    }

    /// The detail the client gets: the full one for errors in its own request, otherwise a
    /// sentence that depends only on the status (no cluster, endpoint, breaker or limit).
    /// The full detail goes to the gateway's log under the same request id.
    pub fn public_detail(&self) -> String {
        if self.detail_is_public() {
            return self.detail();
        }
        match self.status() {
            502 => "the upstream service failed to answer; quote the request_id when reporting this",
            503 => "the service is temporarily unavailable; retry later and quote the request_id when reporting this",
            504 => "the upstream service did not answer in time; quote the request_id when reporting this",
            _ => "the gateway could not process the request; quote the request_id when reporting this",
        }
        .into()
    }

    /// A sentence on what went wrong, for operators: the gateway's log and `portico
    /// routes`. Clients get [`public_detail`](Self::public_detail).
    pub fn detail(&self) -> String {
        match self {
            GatewayError::BadPath(why) | GatewayError::BadRequest(why) => why.clone(),
            GatewayError::NotFound => {
                "no route is configured for this host, path and method".into()
            }
            GatewayError::VersionRequired(supported) => {
                format!("name an API version; supported: {}", supported.join(", "))
            }
            GatewayError::UnknownVersion {
                requested,
                supported,
                retired,
                ..
            } => format!(
                "version `{requested}` is {}; supported: {}",
                if *retired { "retired" } else { "not served" },
                supported.join(", ")
            ),
            GatewayError::CircuitOpen { cluster, .. } => {
                format!("`{cluster}` is failing; requests fail fast until it recovers")
            }
            GatewayError::Overloaded(cluster) => {
                format!("`{cluster}` has reached its concurrency limit")
            }
            GatewayError::DeadlineExceeded(cluster) => {
                format!("no answer from `{cluster}` within the route's deadline")
            }
            GatewayError::MethodNotAllowed(allowed) => format!(
                "this route allows {}",
                allowed
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            GatewayError::BodyTooLarge(limit) => {
                format!("the body exceeds the limit of {limit} bytes")
            }
            GatewayError::UriTooLong => "the request target exceeds the configured limit".into(),
            GatewayError::HeadersTooLarge => {
                "the request headers exceed the configured limit".into()
            }
            GatewayError::RequestTimeout => {
                "the request was not received within the configured time".into()
            }
            GatewayError::Internal => "the gateway could not process the request".into(),
            GatewayError::UpstreamConnect(cluster) => {
                format!("could not connect to an instance of `{cluster}`")
            }
            GatewayError::UpstreamBroken(cluster) => {
                format!("`{cluster}` closed or broke the connection before a complete response")
            }
            GatewayError::NoHealthyEndpoint(cluster) => {
                format!("every instance of `{cluster}` is unhealthy or ejected")
            }
            GatewayError::UpstreamTimeout(cluster) => format!("`{cluster}` did not answer in time"),
        }
    }

    /// The problem+json body.
    pub fn body(&self, path: &str, request_id: &str) -> Bytes {
        let allowed = match self {
            GatewayError::MethodNotAllowed(m) => Some(m.iter().map(|m| m.as_str()).collect()),
            _ => None,
        };
        let supported_versions = match self {
            GatewayError::VersionRequired(s)
            | GatewayError::UnknownVersion { supported: s, .. } => {
                Some(s.iter().map(String::as_str).collect())
            }
            _ => None,
        };
        let kind = format!("urn:portico:problem:{}", self.slug());
        let problem = Problem {
            kind: &kind,
            title: self.title(),
            status: self.status(),
            detail: self.public_detail(),
            instance: path,
            request_id,
            allowed,
            supported_versions,
        };
        Bytes::from(serde_json::to_vec(&problem).unwrap_or_default())
    }

    /// The `grpc-status` of this error when the request is a gRPC call: by its HTTP status
    /// (`grpc::code_for_http`; a version unknown in the URI, a 404, is still a bad argument
    /// and not an unknown method).
    pub fn grpc_code(&self) -> u8 {
        match self {
            GatewayError::UnknownVersion { .. } => super::grpc::code::INVALID_ARGUMENT,
            e => super::grpc::code_for_http(e.status()),
        }
    }

    /// Extra headers the status calls for.
    pub fn headers(&self) -> Vec<(http::HeaderName, String)> {
        match self {
            GatewayError::MethodNotAllowed(m) => vec![(
                http::header::ALLOW,
                m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
            )],
            GatewayError::NoHealthyEndpoint(_) | GatewayError::Overloaded(_) => {
                vec![(http::header::RETRY_AFTER, "1".into())]
            }
            GatewayError::CircuitOpen {
                retry_after_secs, ..
            } => {
                vec![(http::header::RETRY_AFTER, retry_after_secs.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// Classifies a Pingora error from talking to `cluster`.
    pub fn from_pingora(e: &Error, cluster: &str) -> GatewayError {
        use ErrorType::*;
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                GatewayError::UpstreamTimeout(cluster.to_string())
            }
            ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
            | HandshakeError | SocketError | BindError | ConnectProxyFailure => {
                GatewayError::UpstreamConnect(cluster.to_string())
            }
            HTTPStatus(400) => GatewayError::BadRequest("the request is malformed".into()),
            HTTPStatus(503) => GatewayError::NoHealthyEndpoint(cluster.to_string()),
            HTTPStatus(_) | InternalError => GatewayError::Internal,
            _ => GatewayError::UpstreamBroken(cluster.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &GatewayError) -> serde_json::Value {
        serde_json::from_slice(&e.body("/orders/1", "abc")).unwrap()
    }

    #[test]
    fn problem_body_carries_status_and_request_id() {
        let body = body(&GatewayError::NoHealthyEndpoint("orders-cluster".into()));
        assert_eq!(body["status"], 503);
        assert_eq!(body["request_id"], "abc");
        assert_eq!(body["instance"], "/orders/1");
        assert!(body["detail"].as_str().unwrap().contains("request_id"));
    }

    /// Upstream-side errors: the client's body names no cluster and no breaker or limit
    /// state; the operator's detail keeps them.
    #[test]
    fn upstream_errors_keep_clusters_and_state_out_of_the_body() {
        let c = || "orders-cluster".to_string();
        let errors = [
            GatewayError::NoHealthyEndpoint(c()),
            GatewayError::UpstreamConnect(c()),
            GatewayError::UpstreamTimeout(c()),
            GatewayError::UpstreamBroken(c()),
            GatewayError::CircuitOpen {
                cluster: c(),
                retry_after_secs: 7,
            },
            GatewayError::Overloaded(c()),
            GatewayError::DeadlineExceeded(c()),
        ];
        for e in errors {
            assert!(e.detail().contains("orders-cluster"), "{e:?}");
            let text = String::from_utf8(e.body("/orders/1", "abc").to_vec()).unwrap();
            for leak in [
                "orders-cluster",
                "failing",
                "concurrency",
                "limit",
                "instance of",
            ] {
                assert!(!text.contains(leak), "{e:?} leaks `{leak}`: {text}");
            }
            assert_eq!(body(&e)["status"], e.status());
        }
        let open = GatewayError::CircuitOpen {
            cluster: c(),
            retry_after_secs: 7,
        };
        assert_eq!(
            open.headers(),
            [(http::header::RETRY_AFTER, "7".to_string())]
        );
    }

    /// Errors about the client's own request keep their helpful detail.
    #[test]
    fn client_errors_keep_their_detail() {
        let e = GatewayError::UnknownVersion {
            requested: "9".into(),
            supported: vec!["1".into(), "2".into()],
            in_uri: false,
            retired: false,
        };
        assert_eq!(body(&e)["detail"], e.detail());
        assert!(e.detail().contains("supported: 1, 2"));
        let e = GatewayError::MethodNotAllowed(vec![http::Method::GET]);
        assert_eq!(body(&e)["detail"], "this route allows GET");
        let e = GatewayError::BadPath("invalid percent-encoding".into());
        assert_eq!(body(&e)["detail"], "invalid percent-encoding");
    }
}
