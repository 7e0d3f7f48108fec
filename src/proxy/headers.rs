//! Proxy header hygiene: hop-by-hop headers (RFC 9110 §7.6.1) never cross the gateway,
//! and the upstream learns the original client through `X-Forwarded-*`.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that describe one connection, not the message (besides `Connection` itself and
/// `Upgrade`, which the callers treat on their own).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TE
        || name == header::TRAILER
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Whether any header needs removing: one pass over the (usually few) header names, no
/// hashing, so the common request with nothing to strip costs almost nothing.
fn needs_stripping(headers: &http::HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name == header::CONNECTION || name == header::UPGRADE || is_hop_by_hop(name))
}

/// The names to remove from a message: those listed in `Connection` (hop-by-hop too,
/// RFC 9110 §7.6.1; `HeaderName` lowercases them), then the fixed set.
fn hop_by_hop_present(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| n.as_str() != "close" && n != header::UPGRADE && n != KEEP_ALIVE)
        .collect();
    names.extend(headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    names
}

/// Removes hop-by-hop headers from the request going upstream. `Upgrade` and
/// `Connection: upgrade` are kept for protocol upgrades (WebSocket), which Pingora relays.
pub fn strip_hop_by_hop_request(req: &mut RequestHeader, upgrade: bool) {
    if !needs_stripping(&req.headers) {
        return;
    }
    for name in hop_by_hop_present(&req.headers) {
        req.remove_header(&name);
    }
    if !upgrade {
        req.remove_header(&header::CONNECTION);
        req.remove_header(&header::UPGRADE);
    }
}

/// Removes hop-by-hop headers from the response going to the client. `Connection` itself
/// is Pingora's to manage on the client connection.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    if !needs_stripping(&resp.headers) {
        return;
    }
    for name in hop_by_hop_present(&resp.headers) {
        resp.remove_header(&name);
    }
}

/// Appends the client to `X-Forwarded-For` and records the original scheme and host.
pub fn add_forwarded(req: &mut RequestHeader, client: Option<IpAddr>, tls: bool) {
    if let Some(ip) = client {
        // Written straight into the one buffer the header value keeps (the longest IPv6
        // text is 45 bytes), with no intermediate String.
        let prior = req
            .headers
            .get(&X_FORWARDED_FOR)
            .map(|v| v.as_bytes())
            .filter(|v| !v.trim_ascii().is_empty());
        let mut buf = Vec::with_capacity(prior.map_or(0, |p| p.len() + 2) + 45);
        if let Some(p) = prior {
            buf.extend_from_slice(p);
            buf.extend_from_slice(b", ");
        }
        crate::observe::write_ip(&mut buf, ip);
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(buf)) {
            let _ = req.insert_header("x-forwarded-for", value);
        }
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let _ = req.insert_header("x-forwarded-proto", proto);
    let host = req
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| req.uri.authority().and_then(|a| a.as_str().parse().ok()));
    if let Some(host) = host {
        let _ = req.insert_header("x-forwarded-host", host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("connection", "keep-alive, x-secret")
            .unwrap();
        req.insert_header("x-secret", "1").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("te", "trailers").unwrap();
        req.insert_header("x-keep", "1").unwrap();
        strip_hop_by_hop_request(&mut req, false);
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!req.headers.contains_key(gone), "{gone}");
        }
        assert!(req.headers.contains_key("x-keep"));
    }

    #[test]
    fn keeps_upgrade_headers_for_upgrades_only() {
        let build = || {
            let mut req = RequestHeader::build("GET", b"/ws", None).unwrap();
            req.insert_header("connection", "Upgrade").unwrap();
            req.insert_header("upgrade", "websocket").unwrap();
            req.insert_header("proxy-connection", "keep-alive").unwrap();
            req
        };
        let mut upgrade = build();
        strip_hop_by_hop_request(&mut upgrade, true);
        assert_eq!(upgrade.headers["upgrade"], "websocket");
        assert_eq!(upgrade.headers["connection"], "Upgrade");
        assert!(!upgrade.headers.contains_key("proxy-connection"));
        let mut plain = build();
        strip_hop_by_hop_request(&mut plain, false);
        for gone in ["connection", "upgrade", "proxy-connection"] {
            assert!(!plain.headers.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn response_keeps_end_to_end_headers() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/json")
            .unwrap();
        resp.insert_header("connection", "x-internal").unwrap();
        resp.insert_header("x-internal", "1").unwrap();
        resp.insert_header("trailer", "x-checksum").unwrap();
        strip_hop_by_hop_response(&mut resp);
        assert!(!resp.headers.contains_key("x-internal"));
        assert!(!resp.headers.contains_key("trailer"));
        assert_eq!(resp.headers["content-type"], "application/json");
    }

    #[test]
    fn forwarded_for_handles_ipv6_and_long_chains() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        add_forwarded(&mut req, Some("2001:db8::1".parse().unwrap()), true);
        assert_eq!(req.headers["x-forwarded-for"], "2001:db8::1");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        let chain = (1..=40)
            .map(|i| format!("10.0.0.{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        req.insert_header("x-forwarded-for", chain.as_str())
            .unwrap();
        add_forwarded(&mut req, Some("127.0.0.1".parse().unwrap()), false);
        assert_eq!(
            req.headers["x-forwarded-for"].to_str().unwrap(),
            format!("{chain}, 127.0.0.1")
        );
    }

    #[test]
    fn appends_to_forwarded_for() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "api.example.com").unwrap();
        req.insert_header("x-forwarded-for", "10.0.0.1").unwrap();
        add_forwarded(&mut req, Some("127.0.0.1".parse().unwrap()), false);
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "api.example.com");
    }
}
