//! Proxy header hygiene. A client's request is cleaned before routing and before any
//! plugin, so the gateway, its plugins and the upstream all read the same request: one
//! well-formed Host, no hop-by-hop header (RFC 9110 §7.6.1) and nothing `Connection` names,
//! no identity or forwarding header the gateway owns, and `Upgrade` only with
//! `Connection: upgrade`. The upstream then learns the original client through
//! `X-Forwarded-*`, and the client gets no hop-by-hop header back.

use std::net::IpAddr;

use http::header::{self, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};

use super::GatewayError;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The prefix of the headers portico itself sets for upstreams (`X-Portico-Subject`, …).
const GATEWAY_PREFIX: &str = "x-portico-";

/// Headers that describe one connection, not the message (besides `Connection` itself and
/// `Upgrade`, which are treated on their own).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TE
        || name == header::TRAILER
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == HTTP2_SETTINGS
}

/// Headers through which a proxy in front tells who the client is and what it asked for;
/// believed only from a trusted proxy.
fn is_forwarding(name: &HeaderName) -> bool {
    name == header::FORWARDED
        || matches!(
            name.as_str(),
            "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-port"
                | "x-forwarded-prefix"
                | "x-forwarded-proto"
                | "x-real-ip"
        )
}

/// Headers that make IIS and Symfony serve another path than the request line names: the
/// gateway routed by the request line, so these never reach an upstream.
fn overrides_path(name: &HeaderName) -> bool {
    matches!(name.as_str(), "x-original-url" | "x-rewrite-url")
}

/// Headers whose value the gateway alone sets for the upstream: everything under
/// `X-Portico-` and every identity header a plugin is configured to write.
fn is_gateway_owned(name: &HeaderName, identity: &[HeaderName]) -> bool {
    name.as_str().starts_with(GATEWAY_PREFIX) || identity.contains(name)
}

/// Headers whose removal by a `Connection` option would change how the request is framed
/// or routed.
fn is_protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING
}

/// The comma-separated items of every value of header `name` (RFC 9110 §5.6.1), trimmed:
/// `Connection` options, `Upgrade` protocols, `X-Forwarded-For` hops. Empty items are
/// kept, for callers that must treat a malformed list as such.
fn list_items(
    headers: &http::HeaderMap,
    name: impl http::header::AsHeaderName,
) -> impl DoubleEndedIterator<Item = &[u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Each protocol an `Upgrade` asks for, whole (`h2c/1`) and by name (`h2c`).
pub(super) fn upgrade_protocols(req: &RequestHeader) -> impl Iterator<Item = (&[u8], &[u8])> {
    list_items(&req.headers, header::UPGRADE).map(|protocol| {
        let name = protocol.split(|&b| b == b'/').next().unwrap_or_default();
        (protocol, name.trim_ascii())
    })
}

/// Cleans a client's request before routing (see the module comment). `identity` lists
/// the identity headers plugins write; `trusted_peer` says the connection comes from a
/// trusted proxy, whose forwarding headers stay. Refuses a request whose Host does not
/// parse, whose `Connection` names Host or the framing headers, or that asks to upgrade to
/// HTTP/2 in the clear (`h2c`), which would tunnel past routing and plugins.
pub fn clean_request(
    req: &mut RequestHeader,
    identity: &[HeaderName],
    trusted_peer: bool,
) -> Result<(), GatewayError> {
    check_host(req)?;
    // What never crosses from a client, whatever `Connection` says.
    let stays_out = |name: &HeaderName| {
        is_hop_by_hop(name)
            || is_gateway_owned(name, identity)
            || overrides_path(name)
            || (!trusted_peer && is_forwarding(name))
    };
    // One pass over the (usually few) names, no hashing: the common request has nothing
    // to remove and costs almost nothing more.
    let dirty = req
        .headers
        .keys()
        .any(|name| name == header::CONNECTION || name == header::UPGRADE || stays_out(name));
    if !dirty {
        return Ok(());
    }

    let mut upgrade_option = false;
    let mut remove: Vec<HeaderName> = Vec::new();
    for token in list_items(&req.headers, header::CONNECTION) {
        if token.eq_ignore_ascii_case(b"upgrade") {
            upgrade_option = true;
            continue;
        }
        if token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        // `HeaderName` lowercases; a token that is no header name names nothing to remove.
        let Ok(name) = HeaderName::from_bytes(token) else {
            continue;
        };
        if is_protected(&name) {
            return Err(GatewayError::BadRequest(format!(
                "`Connection` may not name `{name}`"
            )));
        }
        remove.push(name);
    }
    if upgrade_protocols(req).any(|(_, name)| name.eq_ignore_ascii_case(b"h2c")) {
        return Err(GatewayError::BadRequest(
            "upgrading to HTTP/2 in the clear (`h2c`) is not supported".into(),
        ));
    }
    remove.extend(req.headers.keys().filter(|name| stays_out(name)).cloned());
    for name in remove {
        req.remove_header(&name);
    }
    // `Upgrade` counts only with the `upgrade` option (RFC 9110 §7.8); then `Connection`
    // says exactly that and nothing else.
    if upgrade_option && req.headers.contains_key(header::UPGRADE) {
        let _ = req.insert_header(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        req.remove_header(&header::CONNECTION);
        req.remove_header(&header::UPGRADE);
    }
    Ok(())
}

/// Puts the request target in origin-form (`/path?query`), the form the gateway routes
/// and the upstream receives. An absolute-form target (`GET http://host/path`) becomes its
/// path and query, its authority the Host when the client sent none (`check_host` has
/// already refused one that differs), so routing, the plugins and the upstream read one
/// path and one host: Pingora keeps such a target's bytes and would otherwise forward them
/// whole. A target that is neither form, or not UTF-8 (its URI then holds a lossy copy,
/// and the upstream would get other bytes than were routed), is refused.
pub fn to_origin_form(req: &mut RequestHeader) -> Result<(), GatewayError> {
    let bad = |why: &str| Err(GatewayError::BadRequest(why.to_owned()));
    if !req.raw_path_is_utf8() {
        return bad("the request target is not UTF-8");
    }
    let raw = req.raw_path();
    let in_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
    if in_uri == Some(raw) {
        return Ok(());
    }
    let authority = match pingora_http::authority::raw_target_authority(raw).authority() {
        Some(authority) if raw.first() != Some(&b'/') => authority.to_vec(),
        _ => return bad("the request target is neither a path nor an absolute URI"),
    };
    if !req.headers.contains_key(header::HOST) {
        let Ok(host) = HeaderValue::from_bytes(&authority) else {
            return bad("the request target's authority is not a valid host[:port]");
        };
        let _ = req.insert_header(header::HOST, host);
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        req.uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    match http::Uri::from_parts(parts) {
        Ok(uri) => {
            req.set_uri(uri);
            Ok(())
        }
        Err(_) => bad("the request target has no valid path"),
    }
}

/// Refuses a request whose Host an upstream could read differently from the gateway: more
/// than one Host, a Host that is not `name[:port]`, `IPv4[:port]` or `[IPv6][:port]`, one
/// that disagrees with an absolute request target, or none at all on HTTP/1.1.
fn check_host(req: &RequestHeader) -> Result<(), GatewayError> {
    let bad = |why: &str| Err(GatewayError::BadRequest(why.to_owned()));
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    if let Some(host) = host {
        if !is_valid_authority(host.as_bytes()) {
            return bad("the Host header is not a valid host[:port]");
        }
    }
    // HTTP/2 carries the authority in the URI; an HTTP/1 absolute-form target keeps it in
    // the raw target only.
    let authority = req
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| pingora_http::authority::raw_target_authority(req.raw_path()).authority());
    match (host, authority) {
        (Some(host), Some(authority)) if !host.as_bytes().eq_ignore_ascii_case(authority) => {
            bad("the Host header differs from the request target's authority")
        }
        (None, Some(authority)) if !is_valid_authority(authority) => {
            bad("the request target's authority is not a valid host[:port]")
        }
        (None, None) if req.version == http::Version::HTTP_11 => {
            bad("an HTTP/1.1 request needs a Host header")
        }
        _ => Ok(()),
    }
}

/// `host[:port]` as a client may send it: a DNS name (letters, digits, `-`, `_`, `.`), an
/// IPv4 address or a bracketed IPv6 address, and an optional port of at most 65535.
fn is_valid_authority(raw: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = raw.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = rest.get(..end).unwrap_or_default();
        let literal = std::str::from_utf8(inner).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        match rest.get(end + 1..).unwrap_or_default() {
            [] => return true,
            [b':', port @ ..] => (None, port),
            _ => return false,
        }
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(colon) => (raw.get(..colon), raw.get(colon + 1..).unwrap_or_default()),
            None => (Some(raw), &[][..]),
        }
    };
    let name_ok = name.is_none_or(|n| {
        !n.is_empty()
            && n.iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    // An empty port is allowed by RFC 3986 (`host:`) and means the default.
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && (port.is_empty()
            || std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some());
    name_ok && port_ok
}

/// The client behind a trusted proxy: the last `X-Forwarded-For` address, from the right,
/// that is not itself a trusted proxy. An entry that does not parse ends the walk at the
/// address after it, since nothing further left can be believed.
pub fn forwarded_client(
    req: &RequestHeader,
    peer: IpAddr,
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    let mut client = peer;
    for entry in list_items(&req.headers, &X_FORWARDED_FOR).rev() {
        let Some(ip) = std::str::from_utf8(entry)
            .ok()
            .and_then(|e| e.parse::<IpAddr>().ok())
        else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// Removes hop-by-hop headers from the response going to the client: the fixed set and
/// those the upstream's `Connection` names. `Connection` itself is Pingora's to manage on
/// the client connection, and `Upgrade` belongs to a 101 it relays.
pub fn strip_hop_by_hop_response(resp: &mut ResponseHeader) {
    let present = |name: &HeaderName| name == header::CONNECTION || is_hop_by_hop(name);
    if !resp.headers.keys().any(present) {
        return;
    }
    let mut names: Vec<HeaderName> = list_items(&resp.headers, header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| n.as_str() != "close" && n != header::UPGRADE && n != KEEP_ALIVE)
        .collect();
    names.extend(resp.headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for name in names {
        resp.remove_header(&name);
    }
}

/// Appends the peer to `X-Forwarded-For` and records the original scheme and host. A
/// trusted proxy's `X-Forwarded-Proto` and `-Host` are kept; from anyone else they were
/// removed by [`clean_request`] and are set here.
pub fn add_forwarded(req: &mut RequestHeader, peer: Option<IpAddr>, tls: bool) {
    if let Some(ip) = peer {
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
    if !req.headers.contains_key("x-forwarded-proto") {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        let _ = req.insert_header("x-forwarded-proto", proto);
    }
    if !req.headers.contains_key("x-forwarded-host") {
        let host = req
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri.authority().and_then(|a| a.as_str().parse().ok()));
        if let Some(host) = host {
            let _ = req.insert_header("x-forwarded-host", host);
        }
    }
}

/// Headers a request may gain on its way through: `X-Forwarded-For`, `-Proto`, `-Host`,
/// `traceparent`, a request id and a token's identity headers.
const REQUEST_ADDITIONS: usize = 8;
/// And a response: a request id, `X-Portico-Attempts`, `Cache-Status`, a version's
/// deprecation headers.
const RESPONSE_ADDITIONS: usize = 4;

/// Drops the letter case Pingora keeps of a request's header names (`[server]
/// preserve_header_case = false`). Pingora keeps a second header map for it, and every
/// header added, removed or cloned afterwards — the forwarding and identity headers, the
/// copy made for each upstream attempt — is done in both maps; without it, once. A request
/// whose target the URI does not carry byte for byte (Pingora keeps those bytes beside it)
/// keeps its case: it is rare, and rebuilding it would lose them.
pub fn forget_request_case(req: &mut RequestHeader) {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if !req.has_case() || req.raw_path() != target.as_bytes() {
        return;
    }
    let end_stream = req.send_end_stream();
    // The parts (method, URI, the name-to-value map, extensions) move; only the map of
    // cased names is dropped. The stand-in allocates nothing.
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    // Room for what the gateway adds, in one step: Pingora sizes the map to the client's
    // headers exactly, so each of those additions would otherwise grow and rehash it (and
    // the copy for the upstream keeps the room).
    parts.headers.reserve(REQUEST_ADDITIONS);
    *req = RequestHeader::from(parts);
    if let Some(end) = end_stream {
        req.set_send_end_stream(end);
    }
}

/// As [`forget_request_case`], for an upstream's response; a custom reason phrase stays.
pub fn forget_response_case(resp: &mut ResponseHeader) {
    if !resp.has_case() {
        return;
    }
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    parts.headers.reserve(RESPONSE_ADDITIONS);
    *resp = ResponseHeader::from(parts);
    if let Some(reason) = reason {
        let _ = resp.set_reason_phrase(Some(&reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "gateway").unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    fn names(req: &RequestHeader) -> Vec<String> {
        let mut names: Vec<String> = req.headers.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut req = request(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("x-keep", "1"),
        ]);
        clean_request(&mut req, &[], false).unwrap();
        assert_eq!(names(&req), ["host", "x-keep"]);
    }

    #[test]
    fn keeps_upgrade_only_with_the_upgrade_option() {
        let mut upgrade = request(&[
            ("connection", "Upgrade, x-portico-subject, authorization"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer t"),
        ]);
        clean_request(&mut upgrade, &[], false).unwrap();
        assert_eq!(upgrade.headers["upgrade"], "websocket");
        assert_eq!(upgrade.headers["connection"], "upgrade");
        assert_eq!(names(&upgrade), ["connection", "host", "upgrade"]);

        let mut plain = request(&[("upgrade", "websocket")]);
        clean_request(&mut plain, &[], false).unwrap();
        assert_eq!(names(&plain), ["host"]);
    }

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        for named in ["host", "Content-Length", "transfer-encoding"] {
            let mut req = request(&[("connection", &format!("close, {named}"))]);
            let err = clean_request(&mut req, &[], false).unwrap_err();
            assert_eq!(err.status(), 400, "{named}");
        }
    }

    #[test]
    fn h2c_upgrade_is_refused() {
        for value in ["h2c", "H2C", "websocket, h2c", "h2c/1"] {
            let mut req = request(&[
                ("connection", "upgrade, http2-settings"),
                ("upgrade", value),
            ]);
            assert!(clean_request(&mut req, &[], false).is_err(), "{value}");
        }
    }

    #[test]
    fn gateway_owned_headers_are_removed_in_any_case() {
        let caller = HeaderName::from_static("x-caller");
        let mut req = request(&[
            ("X-Portico-Scopes", "admin:all"),
            ("x-portico-subject", "root"),
            ("X-PORTICO-ANYTHING", "1"),
            ("X-Caller", "root"),
            ("x-other", "1"),
        ]);
        clean_request(&mut req, std::slice::from_ref(&caller), false).unwrap();
        assert_eq!(names(&req), ["host", "x-other"]);
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_peers() {
        let sent = [
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "1.2.3.4"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
        ];
        let mut untrusted = request(&sent);
        clean_request(&mut untrusted, &[], false).unwrap();
        assert_eq!(names(&untrusted), ["host"]);
        let mut trusted = request(&sent);
        clean_request(&mut trusted, &[], true).unwrap();
        assert_eq!(
            names(&trusted),
            [
                "forwarded",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-forwarded-prefix",
                "x-forwarded-proto",
                "x-real-ip"
            ],
            "path overrides go even from a trusted proxy"
        );
    }

    #[test]
    fn host_must_be_one_valid_authority() {
        for good in [
            "api.example.com",
            "api.example.com:8443",
            "API.Example.com",
            "127.0.0.1:80",
            "[::1]:8080",
            "[2001:db8::1]",
            "svc_name.internal",
            "host:",
        ] {
            assert!(is_valid_authority(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "",
            "api.example.com:99999",
            "api.example.com:8o",
            "api.example.com:123456",
            "user@api.example.com",
            "caf\u{e9}.example.com",
            "a b",
            "[::1",
            "[not-ip]:80",
            "[::1]x",
            "a:b:c",
            ":80",
        ] {
            assert!(!is_valid_authority(bad.as_bytes()), "{bad:?}");
        }
        let mut twice = request(&[("host", "other")]);
        assert!(clean_request(&mut twice, &[], false).is_err());
        let mut none = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(
            clean_request(&mut none, &[], false).is_err(),
            "HTTP/1.1 without Host"
        );
        let mut absolute = RequestHeader::build("GET", b"http://a.example/x", None).unwrap();
        absolute.insert_header("host", "b.example").unwrap();
        assert!(clean_request(&mut absolute, &[], false).is_err());
        absolute.insert_header("host", "A.example").unwrap();
        assert!(clean_request(&mut absolute, &[], false).is_ok());
    }

    #[test]
    fn client_behind_trusted_proxies_is_the_rightmost_untrusted_address() {
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let find = |xff: &[&str]| {
            let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
            forwarded_client(&request(&headers), peer, trusted).to_string()
        };
        assert_eq!(find(&["1.1.1.1, 2.2.2.2, 10.0.0.1"]), "2.2.2.2");
        assert_eq!(find(&["1.1.1.1", "10.0.0.2, 10.0.0.1"]), "1.1.1.1");
        assert_eq!(find(&["10.0.0.3, 10.0.0.1"]), "10.0.0.3");
        assert_eq!(find(&["garbage, 10.0.0.1"]), "10.0.0.1");
        assert_eq!(find(&[]), "10.0.0.9");
        assert_eq!(find(&["2001:db8::7"]), "2001:db8::7");
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
    fn forwarded_headers_from_a_trusted_proxy_are_kept() {
        let mut req = request(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
        ]);
        add_forwarded(&mut req, Some("127.0.0.1".parse().unwrap()), false);
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "api.example.com");
        let mut plain = request(&[]);
        add_forwarded(&mut plain, Some("127.0.0.1".parse().unwrap()), false);
        assert_eq!(plain.headers["x-forwarded-proto"], "http");
        assert_eq!(plain.headers["x-forwarded-host"], "gateway");
    }
}
