//! Host handling: the canonical form of a request's Host/`:authority` and of configured host
//! patterns, so both sides are compared the same way.

use std::borrow::Cow;

/// A configured host entry, in canonical (lowercase, no port, no trailing dot) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Any,
    Exact(Box<str>),
    /// The part after `*.`.
    Wildcard(Box<str>),
}

pub(super) fn parse_pattern(raw: &str) -> HostPattern {
    let host = canonical_request_host(raw).unwrap_or_default();
    if host == "*" {
        return HostPattern::Any;
    }
    match host.strip_prefix("*.") {
        Some(suffix) => HostPattern::Wildcard(suffix.into()),
        None => HostPattern::Exact(host.as_ref().into()),
    }
}

/// Rejects host patterns that can never match a request host.
pub(super) fn validate_pattern(raw: &str) -> Result<(), &'static str> {
    if raw.is_empty() {
        return Err("empty host; leave `hosts` empty to match any host");
    }
    if raw == "*" {
        return Ok(());
    }
    if strip_port(raw).len() != raw.len() {
        return Err("a port is ignored when matching hosts; remove it");
    }
    let name = raw.strip_prefix("*.").unwrap_or(raw);
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("wildcard without a domain");
    }
    if name.contains('*') {
        return Err("`*` is only allowed as a whole leading label (`*.example.com`)");
    }
    if name.starts_with('.') || name.contains("..") {
        return Err("empty label");
    }
    if name
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"/?#@".contains(&b))
    {
        return Err("not a host name");
    }
    Ok(())
}

/// The lookup key for a request host: without `:port` and trailing dot, lowercase. Borrows
/// when nothing needs to change, which is the common case. `None` when nothing is left.
pub(super) fn canonical_request_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = strip_port(raw);
    // `example.com.` is the same name as `example.com` (fully qualified form).
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

fn strip_port(raw: &str) -> &str {
    if raw.starts_with('[') {
        // IPv6 literal: a port can only follow the closing bracket.
        return match raw.find(']') {
            Some(end) => raw.get(..=end).unwrap_or(raw),
            None => raw,
        };
    }
    match raw.rsplit_once(':') {
        // More than one colon without brackets is not host:port; leave it alone.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_host_canonical_form() {
        let cases: &[(&str, Option<&str>)] = &[
            ("api.example.com", Some("api.example.com")),
            ("API.Example.COM", Some("api.example.com")),
            ("api.example.com:8443", Some("api.example.com")),
            ("api.example.com.", Some("api.example.com")),
            ("api.example.com.:80", Some("api.example.com")),
            ("api.example.com:", Some("api.example.com")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("[::1", Some("[::1")),
            ("::1", Some("::1")),
            ("host:notaport", Some("host:notaport")),
            (":8080", None),
            ("", None),
            (".", None),
            ("ÄPI.example.com:1", Some("Äpi.example.com")),
        ];
        for (raw, want) in cases {
            assert_eq!(
                canonical_request_host(raw).as_deref(),
                *want,
                "input {raw:?}"
            );
        }
    }

    #[test]
    fn lowercase_host_is_borrowed() {
        assert!(matches!(
            canonical_request_host("api.example.com:443"),
            Some(Cow::Borrowed("api.example.com"))
        ));
    }

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("*"), HostPattern::Any);
        assert_eq!(
            parse_pattern("*.Example.com"),
            HostPattern::Wildcard("example.com".into())
        );
        assert_eq!(
            parse_pattern("API.example.com."),
            HostPattern::Exact("api.example.com".into())
        );
    }

    #[test]
    fn pattern_validation() {
        for ok in [
            "api.example.com",
            "*.example.com",
            "*",
            "example.com.",
            "[::1]",
        ] {
            assert_eq!(validate_pattern(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "*.",
            "a.*.com",
            "*example.com",
            "api.example.com:80",
            "a..b",
            ".a",
            "a b",
            "a/b",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad:?}");
        }
    }
}
