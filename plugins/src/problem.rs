//! The RFC 9457 problem+json answers plugins end a request with, shaped like the gateway's
//! own error bodies (`type`, `title`, `status`, `detail`, `instance`, `request_id`).
//! The jwt plugin writes its own: RFC 6750 wants its `WWW-Authenticate` beside them.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::{PluginCtx, PluginResponse, RequestHeader};

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    instance: &'a str,
    request_id: &'a str,
}

/// A problem+json answer of `status` (type `urn:portico:problem:<slug>`), with room for
/// `extra_headers` more headers. It ends the request phase, so a request id made here is
/// the one the proxy, the request-id plugin's echo and the access log use too.
pub fn problem_response(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: &str,
    req: &RequestHeader,
    ctx: &mut PluginCtx,
    extra_headers: usize,
) -> PluginResponse {
    let request_id = ctx
        .request_id
        .get_or_insert_with(|| format!("{:032x}", rand::random::<u128>()));
    let problem = Problem {
        kind: format!("urn:portico:problem:{slug}"),
        title,
        status: status.as_u16(),
        detail,
        instance: req.uri.path(),
        request_id,
    };
    let mut headers = Vec::with_capacity(2 + extra_headers);
    headers.push((
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    ));
    headers.push((CACHE_CONTROL, HeaderValue::from_static("no-store")));
    PluginResponse {
        status,
        headers,
        body: Bytes::from(serde_json::to_vec(&problem).unwrap_or_default()),
    }
}
