//! API version selection: reading the requested version from a URI segment (`/v2/…`), a
//! header (`Accept-Version: 2`), a media type (`Accept: application/json; version=2` or
//! `application/vnd.acme.v2+json`) or a query parameter, in a configured order, and
//! choosing among a route's versions.

use std::collections::HashMap;

/// Where a version may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Uri,
    Header,
    MediaType,
    Query,
}

/// `v2`, `V2` and `2` name the same version.
pub fn normalize_version(name: &str) -> &str {
    name.strip_prefix(['v', 'V']).unwrap_or(name)
}

/// Splits a leading version segment (`/v2/orders/1` → `("2", "/orders/1")`). Only
/// `v<digits>[.<digits>…]` counts, so `/videos` is never a version.
pub fn split_uri_version(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (segment, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some((version_token(segment)?, tail))
}

/// The number of a `v<digits>[.<digits>…]` token (`v2.1` → `2.1`).
fn version_token(token: &str) -> Option<&str> {
    let number = token.strip_prefix(['v', 'V'])?;
    let valid = !number.is_empty()
        && number
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    valid.then_some(number)
}

/// The version in an `Accept` header: a `version=` parameter or a `vnd.*.vN+…` subtype.
pub fn version_from_media_type(accept: &str) -> Option<&str> {
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        for param in parts {
            if let Some((name, value)) = param.split_once('=') {
                if name.trim().eq_ignore_ascii_case("version") {
                    let value = value.trim().trim_matches('"');
                    if !value.is_empty() {
                        return Some(normalize_version(value));
                    }
                }
            }
        }
        // application/vnd.acme.v2+json
        if let Some(subtype) = media.split('/').nth(1) {
            let subtype = subtype.split('+').next().unwrap_or(subtype);
            if subtype.starts_with("vnd.") {
                if let Some(v) = subtype.rsplit('.').next().and_then(version_token) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// The value of a query parameter.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| normalize_version(v))
        .filter(|v| !v.is_empty())
}

/// Why no version could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// The request named no version and the route has no default.
    Missing,
    /// The request named a version the route does not serve.
    Unknown(String),
    /// The request named a retired version.
    Retired(String),
}

/// A route's versions and how to read the requested one.
#[derive(Debug, Clone)]
pub struct VersionSelector {
    pub sources: Vec<Source>,
    pub header: http::HeaderName,
    pub query: String,
    pub default: Option<usize>,
    by_name: HashMap<String, usize>,
    retired: Vec<bool>,
    /// The versions a client may ask for, for error messages.
    pub supported: Vec<String>,
}

impl VersionSelector {
    /// `versions` are (name, retired) in config order; indexes refer to that order.
    pub fn new(
        sources: Vec<Source>,
        header: http::HeaderName,
        query: String,
        default: Option<&str>,
        versions: &[(String, bool)],
    ) -> VersionSelector {
        let by_name: HashMap<String, usize> = versions
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (normalize_version(name).to_string(), i))
            .collect();
        VersionSelector {
            default: default.and_then(|d| by_name.get(normalize_version(d)).copied()),
            supported: versions
                .iter()
                .filter(|(_, retired)| !retired)
                .map(|(name, _)| normalize_version(name).to_string())
                .collect(),
            retired: versions.iter().map(|(_, r)| *r).collect(),
            by_name,
            sources,
            header,
            query,
        }
    }

    pub fn accepts_uri(&self) -> bool {
        self.sources.contains(&Source::Uri)
    }

    /// Chooses the version: the first configured source that names one wins.
    pub fn select(
        &self,
        uri_version: Option<&str>,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<usize, VersionError> {
        let requested = self.sources.iter().find_map(|source| match source {
            Source::Uri => uri_version,
            Source::Header => headers
                .get(&self.header)
                .and_then(|v| v.to_str().ok())
                .map(|v| normalize_version(v.trim()))
                .filter(|v| !v.is_empty()),
            Source::MediaType => headers
                .get_all(http::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(version_from_media_type),
            Source::Query => query.and_then(|q| query_param(q, &self.query)),
        });
        match requested {
            None => self.default.ok_or(VersionError::Missing),
            Some(name) => match self.by_name.get(name) {
                Some(&i) if self.retired[i] => Err(VersionError::Retired(name.to_string())),
                Some(&i) => Ok(i),
                None => Err(VersionError::Unknown(name.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(default: Option<&str>) -> VersionSelector {
        VersionSelector::new(
            vec![
                Source::Uri,
                Source::Header,
                Source::MediaType,
                Source::Query,
            ],
            http::HeaderName::from_static("accept-version"),
            "version".into(),
            default,
            &[
                ("v1".into(), false),
                ("2".into(), false),
                ("0".into(), true),
            ],
        )
    }

    #[test]
    fn uri_segments() {
        assert_eq!(split_uri_version("/v2/orders/1"), Some(("2", "/orders/1")));
        assert_eq!(split_uri_version("/V1.2"), Some(("1.2", "/")));
        assert_eq!(split_uri_version("/videos/1"), None);
        assert_eq!(split_uri_version("/v/x"), None);
        assert_eq!(split_uri_version("/v1./x"), None);
    }

    #[test]
    fn media_types() {
        assert_eq!(
            version_from_media_type("application/json; version=2"),
            Some("2")
        );
        assert_eq!(
            version_from_media_type("application/json;Version=\"v3\""),
            Some("3")
        );
        assert_eq!(
            version_from_media_type("application/vnd.acme.v2+json"),
            Some("2")
        );
        assert_eq!(
            version_from_media_type("text/html, application/vnd.acme.v4"),
            Some("4")
        );
        assert_eq!(version_from_media_type("application/json"), None);
    }

    #[test]
    fn sources_in_order_default_unknown_retired() {
        let s = selector(Some("1"));
        let mut h = http::HeaderMap::new();
        assert_eq!(s.select(None, &h, None), Ok(0));
        h.insert("accept-version", "v2".parse().unwrap());
        assert_eq!(s.select(None, &h, None), Ok(1));
        assert_eq!(s.select(Some("1"), &h, None), Ok(0), "uri comes first");
        let h = http::HeaderMap::new();
        assert_eq!(s.select(None, &h, Some("a=b&version=2")), Ok(1));
        assert_eq!(
            s.select(Some("9"), &h, None),
            Err(VersionError::Unknown("9".into()))
        );
        assert_eq!(
            s.select(Some("0"), &h, None),
            Err(VersionError::Retired("0".into()))
        );
        assert_eq!(
            selector(None).select(None, &h, None),
            Err(VersionError::Missing)
        );
        assert_eq!(s.supported, vec!["1", "2"]);
    }
}
