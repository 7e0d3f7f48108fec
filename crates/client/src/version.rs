//! API version selection: the client names the version it was written against, and says it
//! either in a header (`Accept-Version: 2`, the gateway's default header source) or as a
//! URI prefix (`/v2/orders`), matching the route's `versioning.sources`.

use http::{HeaderName, HeaderValue};

/// How the client tells the gateway which API version it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versioning {
    /// In this request header, as the bare version (`Accept-Version: 2`).
    Header(HeaderName),
    /// As the first path segment after the base URL's path (`/v2/orders/7`).
    UriPrefix,
}

impl Default for Versioning {
    fn default() -> Self {
        Versioning::Header(HeaderName::from_static("accept-version"))
    }
}

/// A version name as the gateway compares it: `v2`, `V2` and `2` are the same version.
pub(crate) fn normalize(version: &str) -> Result<String, String> {
    let v = version.trim();
    let bare = v
        .strip_prefix('v')
        .or_else(|| v.strip_prefix('V'))
        .unwrap_or(v);
    if bare.is_empty()
        || !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "API version `{version}` must be letters, digits, `.`, `-` or `_`"
        ));
    }
    Ok(bare.to_string())
}

/// The header to send for `version` (already normalized).
pub(crate) fn header_value(version: &str) -> HeaderValue {
    // `normalize` allows only visible ASCII, so this cannot fail.
    HeaderValue::from_str(version).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `/v{version}`, the URI prefix for `version` (already normalized).
pub(crate) fn uri_prefix(version: &str) -> String {
    format!("/v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_prefixed_and_bare_versions_are_the_same() {
        assert_eq!(normalize("2").unwrap(), "2");
        assert_eq!(normalize("v2").unwrap(), "2");
        assert_eq!(normalize(" V2024-06 ").unwrap(), "2024-06");
        assert!(normalize("v").is_err());
        assert!(normalize("2/../admin").is_err());
        assert_eq!(uri_prefix("2"), "/v2");
    }
}
