//! The client's errors: one enum whose variants say what failed (configuration, token,
//! connect, timeout, transport, the client's own breaker, or an error status from the
//! gateway or the service), with the gateway's RFC 9457 `application/problem+json` body
//! parsed into [`Problem`] when the answer carried one.
//!
//! Written by hand rather than with `thiserror`: a dozen lines of `Display` do not justify a
//! proc-macro dependency in every service that links the client.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Everything a call through [`super::Client`] can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given an unusable setting (bad URL, missing credentials, …).
    Config(String),
    /// The request could not be built: a bad path, header, query or JSON body.
    InvalidRequest(String),
    /// No connection could be made (refused, unreachable, DNS, TLS handshake, or the
    /// connect timeout). Nothing was sent, so such calls are retried whatever the method.
    Connect {
        url: String,
        attempts: u32,
        source: reqwest::Error,
    },
    /// The request timeout passed before the whole answer arrived.
    Timeout {
        url: String,
        attempts: u32,
        source: reqwest::Error,
    },
    /// The connection broke after the request was (perhaps) sent, or the body could not
    /// be read.
    Transport {
        url: String,
        attempts: u32,
        source: reqwest::Error,
    },
    /// The client's own circuit breaker for `origin` is open: the call failed fast without
    /// touching the network. `retry_in` is when the breaker lets a probe through (zero
    /// while a probe is already in flight).
    CircuitOpen { origin: String, retry_in: Duration },
    /// The gateway or the service answered with a 4xx or 5xx status (after retries).
    Status(Box<StatusError>),
    /// No access token could be obtained from the token service.
    Token(TokenError),
    /// A response body was not the JSON the caller asked for.
    Decode(serde_json::Error),
}

impl Error {
    /// The HTTP status of an error answer, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Status(e) => Some(e.status),
            Error::Token(TokenError::Rejected { status, .. }) => Some(*status),
            Error::Token(TokenError::Unavailable { status, .. }) => *status,
            _ => None,
        }
    }

    /// The gateway's problem details, when the error answer carried them.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Status(e) => e.problem.as_ref(),
            _ => None,
        }
    }

    /// Requests sent before giving up (0 when none was sent).
    pub fn attempts(&self) -> u32 {
        match self {
            Error::Connect { attempts, .. }
            | Error::Timeout { attempts, .. }
            | Error::Transport { attempts, .. } => *attempts,
            Error::Status(e) => e.attempts,
            _ => 0,
        }
    }

    /// The `X-Request-Id` the failed call carried (the same on every attempt).
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Error::Status(e) => Some(&e.request_id),
            _ => None,
        }
    }

    /// Whether the failure is likely to go away by itself (a later call may succeed).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::Timeout { .. }
            | Error::Transport { .. }
            | Error::CircuitOpen { .. } => true,
            Error::Status(e) => matches!(e.status.as_u16(), 429 | 502 | 503 | 504),
            Error::Token(TokenError::Unavailable { .. }) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "client configuration: {m}"),
            Error::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            Error::Connect {
                url,
                attempts,
                source,
            } => write!(
                f,
                "cannot connect for {url} ({attempts} attempt(s)): {source}"
            ),
            Error::Timeout { url, attempts, .. } => {
                write!(f, "{url} timed out ({attempts} attempt(s))")
            }
            Error::Transport {
                url,
                attempts,
                source,
            } => write!(f, "{url} failed ({attempts} attempt(s)): {source}"),
            Error::CircuitOpen { origin, retry_in } => write!(
                f,
                "circuit open for {origin}: failing fast (next probe in {retry_in:?})"
            ),
            Error::Status(e) => fmt::Display::fmt(e, f),
            Error::Token(e) => write!(f, "access token: {e}"),
            Error::Decode(e) => write!(f, "response body: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. }
            | Error::Timeout { source, .. }
            | Error::Transport { source, .. } => Some(source),
            Error::Token(e) => Some(e),
            Error::Decode(e) => Some(e),
            _ => None,
        }
    }
}

/// An error answer: status, headers, the raw body and, when it was
/// `application/problem+json` (or JSON with a `type` or `title`), the parsed problem.
#[derive(Debug, Clone)]
pub struct StatusError {
    pub status: StatusCode,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub problem: Option<Problem>,
    /// The `X-Request-Id` the call carried; quote it when reporting the failure.
    pub request_id: String,
    /// Requests sent, the first included (a token replay after a 401 counts too).
    pub attempts: u32,
}

impl StatusError {
    /// The body as text (lossy), for logs.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} answered {}", self.url, self.status)?;
        if let Some(p) = &self.problem {
            if let Some(title) = &p.title {
                write!(f, ": {title}")?;
            }
            if let Some(detail) = &p.detail {
                write!(f, " ({detail})")?;
            }
        }
        write!(
            f,
            " [request id {}, {} attempt(s)]",
            self.request_id, self.attempts
        )
    }
}

/// RFC 9457 problem details as the gateway renders them, with portico's extension members
/// (`request_id`, `supported_versions`, `allowed`) typed and any others kept in `extensions`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Problem {
    /// The problem type URI, e.g. `urn:portico:problem:no-healthy-upstream`.
    #[serde(rename = "type", default = "about_blank")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// With an unknown or missing API version: the versions the route serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_versions: Option<Vec<String>>,
    /// With 405: the methods the route accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// Any other members.
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

fn about_blank() -> String {
    "about:blank".to_string()
}

impl Problem {
    /// Parses a problem body: always for `application/problem+json`, and for plain JSON
    /// only when it looks like one (has `type` or `title`), so a service's own JSON error
    /// is not mistaken for it.
    pub fn from_response(content_type: Option<&str>, body: &[u8]) -> Option<Problem> {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase())?;
        match media.as_str() {
            "application/problem+json" => serde_json::from_slice(body).ok(),
            "application/json" => {
                let value: Value = serde_json::from_slice(body).ok()?;
                let obj = value.as_object()?;
                if obj.contains_key("type") || obj.contains_key("title") {
                    serde_json::from_value(value).ok()
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The last segment of a `urn:portico:problem:<slug>` type, e.g. `invalid_token`.
    pub fn slug(&self) -> Option<&str> {
        self.kind.strip_prefix("urn:portico:problem:")
    }
}

/// Why no access token could be obtained.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenError {
    /// The token service refused the request (RFC 6749 §5.2), e.g. `invalid_client` or
    /// `invalid_scope`. Retrying will not help until the configuration changes.
    Rejected {
        status: StatusCode,
        error: String,
        description: Option<String>,
    },
    /// The token service could not be reached or kept failing (5xx, 429) after retries.
    Unavailable {
        status: Option<StatusCode>,
        message: String,
    },
    /// A 200 answer that is not a usable bearer token response.
    InvalidResponse(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Rejected {
                status,
                error,
                description,
            } => {
                write!(f, "the token service refused ({status}): {error}")?;
                if let Some(d) = description {
                    write!(f, ": {d}")?;
                }
                Ok(())
            }
            TokenError::Unavailable { message, .. } => {
                write!(f, "the token service is unavailable: {message}")
            }
            TokenError::InvalidResponse(m) => {
                write!(f, "the token service answered something unusable: {m}")
            }
        }
    }
}

impl std::error::Error for TokenError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_gateways_problem_body() {
        let body = br#"{"type":"urn:portico:problem:unknown-version","title":"Unknown API version","status":404,"detail":"no version 9","instance":"/v9/orders","request_id":"abc","supported_versions":["1","2"],"extra":1}"#;
        let p = Problem::from_response(Some("application/problem+json"), body).unwrap();
        assert_eq!(p.slug(), Some("unknown-version"));
        assert_eq!(p.status, Some(404));
        assert_eq!(p.request_id.as_deref(), Some("abc"));
        assert_eq!(
            p.supported_versions,
            Some(vec!["1".to_string(), "2".to_string()])
        );
        assert_eq!(p.extensions["extra"], 1);
    }

    #[test]
    fn plain_json_is_a_problem_only_when_it_looks_like_one() {
        assert!(Problem::from_response(Some("application/json"), br#"{"id":1}"#).is_none());
        assert!(Problem::from_response(
            Some("application/json; charset=utf-8"),
            br#"{"title":"x"}"#
        )
        .is_some());
        assert!(Problem::from_response(Some("text/plain"), b"oops").is_none());
        assert!(Problem::from_response(None, b"{}").is_none());
        let p = Problem::from_response(Some("application/problem+json"), b"{}").unwrap();
        assert_eq!(p.kind, "about:blank");
    }
}
