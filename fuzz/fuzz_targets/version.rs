//! Version selection: a path, a query and header lines (`Name: value`) read by every
//! version source, and a selector over versions `1` (retired), `2` and `3.1`.
//!
//! Properties: nothing panics; a version split from the URI is `<digits>[.<digits>…]` and
//! leaves a path that starts with `/` and is a suffix of the input; every version read is
//! a substring of the input; a selected version exists and is not retired.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico::router::version::{
    normalize_version, query_param, split_uri_version, version_from_media_type, Source,
    VersionError, VersionSelector,
};

const VERSIONS: [(&str, bool); 3] = [("1", true), ("v2", false), ("3.1", false)];

fn selectors() -> &'static [VersionSelector] {
    static SELECTORS: OnceLock<Vec<VersionSelector>> = OnceLock::new();
    SELECTORS.get_or_init(|| {
        let versions: Vec<(String, bool)> =
            VERSIONS.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        let all = vec![
            Source::Uri,
            Source::Header,
            Source::MediaType,
            Source::Query,
        ];
        let mut reversed = all.clone();
        reversed.reverse();
        [(all, Some("2")), (reversed, None)]
            .into_iter()
            .map(|(sources, default)| {
                VersionSelector::new(
                    sources,
                    HeaderName::from_static("accept-version"),
                    "version".to_string(),
                    default,
                    &versions,
                )
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }

    let uri_version = split_uri_version(path).map(|(version, rest)| {
        assert!(rest.starts_with('/'), "rest of the path: {rest:?}");
        assert!(path.ends_with(rest) || rest == "/");
        assert!(!version.is_empty());
        assert!(version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
        version
    });
    for value in headers.get_all(http::header::ACCEPT) {
        if let Ok(accept) = value.to_str() {
            if let Some(v) = version_from_media_type(accept) {
                assert!(accept.contains(v));
            }
        }
    }
    if let Some(q) = query {
        if let Some(v) = query_param(q, "version") {
            assert!(!v.is_empty() && q.contains(v));
        }
    }
    let _ = normalize_version(path);

    for selector in selectors() {
        match selector.select(uri_version, &headers, query) {
            Ok(i) => {
                let (name, retired) = VERSIONS[i];
                assert!(!retired, "retired version {name} selected");
            }
            Err(VersionError::Retired(name)) => {
                assert_eq!(normalize_version(&name), "1")
            }
            Err(VersionError::Unknown(name)) => {
                assert!(
                    !["1", "2", "3.1"].contains(&name.as_str()),
                    "{name} is known"
                )
            }
            Err(VersionError::Missing) => assert!(selector.default.is_none()),
        }
    }
});
