//! Proxy header hygiene: hop-by-hop headers (RFC 9110 §7.6.1) never cross the gateway,
//! and the upstream learns the original client through `X-Forwarded-*`.

use std::net::IpAddr;

use pingora_http::{RequestHeader, ResponseHeader};

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
];

/// Names listed in `Connection` are hop-by-hop too (RFC 9110 §7.6.1).
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive" && t != "upgrade")
        .collect()
}

/// Removes hop-by-hop headers from the request going upstream. `Upgrade` and
/// `Connection: upgrade` are kept for protocol upgrades (WebSocket), which Pingora relays.
pub fn strip_hop_by_hop_request(req: &mut RequestHeader, upgrade: bool) {
    if req.headers.contains_key(http::header::CONNECTION) {
        for name in connection_listed(&req.headers) {
            req.remove_header(name.as_str());
        }
        if !upgrade {
            req.remove_header(&http::header::CONNECTION);
        }
    }
    for name in HOP_BY_HOP {
        if req.headers.contains_key(name) {
            req.remove_header(name);
        }
    }
    if !upgrade && req.headers.contains_key(http::header::UPGRADE) {
        req.remove_header(&http::header::UPGRADE);
    }
}

/// Removes hop-by-hop headers from the response going to the client. `Connection` itself
/// is Pingora's to manage on the client connection.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    if resp.headers.contains_key(http::header::CONNECTION) {
        for name in connection_listed(&resp.headers) {
            resp.remove_header(name.as_str());
        }
    }
    for name in HOP_BY_HOP {
        if resp.headers.contains_key(name) {
            resp.remove_header(name);
        }
    }
}

/// Appends the client to `X-Forwarded-For` and records the original scheme and host.
pub fn add_forwarded(req: &mut RequestHeader, client: Option<IpAddr>, tls: bool) {
    if let Some(ip) = client {
        let value = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
            _ => ip.to_string(),
        };
        let _ = req.insert_header("x-forwarded-for", value);
    }
    let _ = req.insert_header("x-forwarded-proto", if tls { "https" } else { "http" });
    let host = req
        .headers
        .get(http::header::HOST)
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
