//! gRPC on the wire, as far as a gateway has to understand it: which requests are gRPC
//! calls, their `grpc-timeout`, the `grpc-status` of an answer (in the response header of a
//! trailers-only response, or in the trailers), and the trailers-only answers the gateway
//! makes itself, so a gRPC client reads a gateway error as a status it knows.
//!
//! A call is a request over HTTP/2 whose content type is `application/grpc` (or
//! `application/grpc+proto`, `;…`); gRPC-Web is not, as it carries its trailers in the body
//! and works as plain HTTP. Other requests pay one `is_http2` branch for all of this.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// `grpc-status` codes the gateway writes itself.
pub mod code {
    pub const UNKNOWN: u8 = 2;
    pub const INVALID_ARGUMENT: u8 = 3;
    pub const DEADLINE_EXCEEDED: u8 = 4;
    pub const PERMISSION_DENIED: u8 = 7;
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    pub const UNIMPLEMENTED: u8 = 12;
    pub const INTERNAL: u8 = 13;
    pub const UNAVAILABLE: u8 = 14;
    pub const UNAUTHENTICATED: u8 = 16;
}

/// What the gateway knows of a gRPC call (kept in the request's context; `None` for every
/// other request).
#[derive(Debug, Clone, Copy, Default)]
pub struct Call {
    /// The client sent `TE: trailers`, which is hop-by-hop but part of the gRPC protocol:
    /// it is sent on upstream.
    pub te_trailers: bool,
    /// The client's `grpc-timeout`.
    pub timeout: Option<Duration>,
    /// The answer's `grpc-status`, once seen (response header or trailers).
    pub status: Option<u8>,
}

impl Call {
    /// The gRPC call a request is, if it is one. Read before the request is cleaned (which
    /// drops `TE`).
    pub fn of(session: &Session) -> Option<Call> {
        if !session.is_http2() {
            return None;
        }
        let req = session.req_header();
        if !is_grpc_content_type(req) {
            return None;
        }
        let te_trailers = req
            .headers
            .get_all(http::header::TE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        let timeout = req
            .headers
            .get("grpc-timeout")
            .and_then(|v| parse_timeout(v.as_bytes()));
        Some(Call {
            te_trailers,
            timeout,
            status: None,
        })
    }
}

fn is_grpc_content_type(req: &RequestHeader) -> bool {
    let Some(ct) = req.headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    let prefix = b"application/grpc";
    ct.len() >= prefix.len()
        && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(ct.get(prefix.len()), None | Some(b'+' | b';'))
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` for `left`, in the finest unit whose count fits in 8 digits,
/// rounded down (an upstream should give up no later than the gateway does).
pub fn format_timeout(left: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = left.as_nanos();
    let (n, unit) = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ]
    .into_iter()
    .map(|(per, unit)| (nanos / per, unit))
    .find(|(n, _)| *n <= MAX)
    .unwrap_or((MAX, 'H'));
    HeaderValue::from_str(&format!("{n}{unit}")).expect("digits and a letter")
}

/// The `grpc-status` in a header map (a trailers-only response's header, or trailers).
pub fn status_of(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<u8>().ok().filter(|c| *c <= 16)
}

/// The gRPC status for an HTTP status the gateway (or a plugin) answers with: gRPC's
/// mapping of HTTP statuses, except that the gateway's refusal of a bad request is
/// `INVALID_ARGUMENT`, a rate limit `RESOURCE_EXHAUSTED`, a request too large for a limit
/// too, and a timeout `DEADLINE_EXCEEDED`.
pub fn code_for_http(status: u16) -> u8 {
    match status {
        400 => code::INVALID_ARGUMENT,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 | 405 => code::UNIMPLEMENTED,
        408 | 504 => code::DEADLINE_EXCEEDED,
        413 | 414 | 431 | 429 => code::RESOURCE_EXHAUSTED,
        502 | 503 => code::UNAVAILABLE,
        500 => code::INTERNAL,
        _ => code::UNKNOWN,
    }
}

/// The HTTP status a gRPC status stands for, to judge a call's outcome the way an HTTP
/// request's is judged (outlier ejection, breakers, access-log sampling): a gRPC answer is
/// HTTP 200 whatever its status, so `UNAVAILABLE` must count as the 503 it means.
pub fn http_equivalent(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// A trailers-only response: HTTP 200 with `grpc-status` and `grpc-message` in its only
/// header block (sent with the end of the stream).
pub fn trailers_only(code: u8, message: &str) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", code.to_string())?;
    resp.insert_header("grpc-message", encode_message(message))?;
    Ok(resp)
}

/// Trailers ending a response whose header already went out, for a failure in mid-stream.
pub fn status_trailers(code: u8, message: &str) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(2);
    map.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&encode_message(message)) {
        map.insert("grpc-message", v);
    }
    map
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%`.
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The detail of a plugin's problem+json answer, for its `grpc-message`.
pub fn problem_detail(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("detail")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_every_unit_and_refuse_the_rest() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            &b""[..],
            b"S",
            b"123456789m",
            b"1x",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeouts_format_in_the_finest_unit_that_fits() {
        assert_eq!(format_timeout(Duration::from_millis(25)), "25000000n");
        assert_eq!(format_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(format_timeout(Duration::from_secs(5)), "5000000u");
        assert_eq!(format_timeout(Duration::from_secs(3600)), "3600000m");
        assert_eq!(format_timeout(Duration::from_secs(1_000_000)), "1000000S");
        for d in [1, 999, 123_456_789, 86_400_000_000_000] {
            let d = Duration::from_nanos(d);
            let back = parse_timeout(format_timeout(d).as_bytes()).unwrap();
            assert!(
                back <= d && d - back < d / 10_000 + Duration::from_nanos(1),
                "{d:?}"
            );
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no route: 100%"), "no route: 100%25");
        assert_eq!(encode_message("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn grpc_content_types_and_not_grpc_web() {
        let req = |ct: &str| {
            let mut r = RequestHeader::build("POST", b"/a.B/C", None).unwrap();
            r.insert_header("content-type", ct).unwrap();
            r
        };
        assert!(is_grpc_content_type(&req("application/grpc")));
        assert!(is_grpc_content_type(&req("application/grpc+proto")));
        assert!(is_grpc_content_type(&req("Application/GRPC;charset=x")));
        assert!(!is_grpc_content_type(&req("application/grpc-web")));
        assert!(!is_grpc_content_type(&req("application/json")));
    }

    #[test]
    fn statuses_come_from_headers_and_map_from_http() {
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(status_of(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("17"));
        assert_eq!(status_of(&h), None);
        assert_eq!(code_for_http(401), code::UNAUTHENTICATED);
        assert_eq!(code_for_http(429), code::RESOURCE_EXHAUSTED);
        assert_eq!(code_for_http(504), code::DEADLINE_EXCEEDED);
        assert_eq!(code_for_http(404), code::UNIMPLEMENTED);
        assert_eq!(http_equivalent(0), 200);
        assert_eq!(http_equivalent(code::UNAVAILABLE), 503);
        assert_eq!(http_equivalent(code::DEADLINE_EXCEEDED), 504);
        assert_eq!(http_equivalent(code::INTERNAL), 500);
        assert_eq!(http_equivalent(code::INVALID_ARGUMENT), 400);
        // What the gateway answers maps back to a status of the same class, except no
        // route (404: UNIMPLEMENTED, 501) and a client too slow (408: DEADLINE_EXCEEDED, 504).
        for http in [400, 401, 403, 413, 414, 429, 431, 500, 502, 503, 504] {
            let back = http_equivalent(code_for_http(http));
            assert_eq!(back / 100, http / 100, "{http} → {back}");
        }
    }
}
