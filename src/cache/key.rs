//! The cache key of a request and the variant it selects.
//!
//! The primary key is text, one field per line — route id, settings generation, host,
//! path, query, API version, identity digest — so no field can run into the next (a host,
//! path or query never holds a line break) and the store can read host and path back for
//! purges by prefix. The path is the normalised one the route matched, the host is
//! lower-cased, and the caller's identity (per-identity routes only) is a digest, so no
//! subject or client id sits in the store in clear. `Vary` selects a variant within one
//! primary key: [`variance`] hashes the request's values of the headers the stored response
//! lists.

use pingora_cache::key::{hash_key, HashBinary};
use pingora_cache::{CacheKey, CacheMeta, VarianceBuilder};
use pingora_http::RequestHeader;

use super::{CachePolicy, QueryKey};

/// The key of `req` on the route `route_id` (API version `version`), for the caller
/// `identity` when the route keys by identity.
pub fn primary(
    policy: &CachePolicy,
    route_id: &str,
    version: Option<&str>,
    req: &RequestHeader,
    identity: Option<&str>,
) -> CacheKey {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    let query = req.uri.query().unwrap_or("");
    let mut key = String::with_capacity(
        route_id.len() + host.len() + req.uri.path().len() + query.len() + 64,
    );
    key.push_str(route_id);
    key.push('\n');
    key.push_str(&policy.generation);
    key.push('\n');
    key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    key.push('\n');
    key.push_str(req.uri.path());
    key.push('\n');
    push_query(&mut key, &policy.query, query);
    key.push('\n');
    key.push_str(version.unwrap_or(""));
    key.push('\n');
    if let Some(identity) = identity {
        for b in hash_key(identity.as_bytes()) {
            key.push_str(&format!("{b:02x}"));
        }
    }
    let mut cache_key = CacheKey::new(key, route_id);
    // Host and path (with the query as sent) go with the entry, for purges by URL or prefix.
    let path = req
        .uri
        .path_and_query()
        .map_or_else(|| req.uri.path(), |p| p.as_str());
    super::store::set_origin(&mut cache_key, host, path);
    cache_key
}

/// The query as it joins the key: as sent, or its parameters sorted by name (stable, so
/// repeated names keep their order) without the ignored names.
fn push_query(key: &mut String, mode: &QueryKey, query: &str) {
    let ignored: &[String] = match mode {
        QueryKey::All => {
            key.push_str(query);
            return;
        }
        QueryKey::Sorted => &[],
        QueryKey::Ignore(names) => names,
    };
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !ignored.iter().any(|i| i == name)
        })
        .collect();
    pairs.sort_by_key(|p| p.split_once('=').map_or(*p, |(n, _)| n));
    for (i, pair) in pairs.iter().enumerate() {
        if i > 0 {
            key.push('&');
        }
        key.push_str(pair);
    }
}

/// The variant of a stored response `req` selects: a hash of its values of the headers
/// the response's `Vary` lists (absent and empty are different values), or `None` when the
/// response does not vary.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for value in meta.headers().get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = name.to_ascii_lowercase();
            let mut values = req.headers.get_all(name.as_str()).iter().peekable();
            // A byte no header value holds marks "absent".
            let mut joined = if values.peek().is_none() {
                vec![0u8]
            } else {
                Vec::new()
            };
            for (i, v) in values.enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            builder.add_owned_name_value(name, joined);
        }
    }
    builder.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(query: QueryKey, uri: &str) -> String {
        let cache = crate::config::RouteCache {
            methods: vec!["GET".into()],
            default_ttl: None,
            query: crate::config::CacheQuery::All,
            per_identity: None,
            store_set_cookie: false,
            client_no_cache: Default::default(),
            stale_if_error: None,
            stale_while_revalidate: None,
            lock_timeout: std::time::Duration::from_secs(1),
        };
        let mut policy = CachePolicy::new("r", &cache);
        policy.query = query;
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        req.insert_header("Host", "API.example").unwrap();
        let k = primary(&policy, "r", Some("v2"), &req, None);
        k.primary_key_str().unwrap().to_string()
    }

    #[test]
    fn query_modes() {
        let all = key(QueryKey::All, "/a?b=2&a=1");
        assert!(all.ends_with("\napi.example\n/a\nb=2&a=1\nv2\n"), "{all}");
        let sorted = key(QueryKey::Sorted, "/a?b=2&a=1&a=0");
        assert!(sorted.contains("\na=1&a=0&b=2\n"), "{sorted}");
        let ignored = key(
            QueryKey::Ignore(vec!["utm".into()]),
            "/a?utm=x&b=2&&a=1&utm",
        );
        assert!(ignored.contains("\na=1&b=2\n"), "{ignored}");
    }

    #[test]
    fn variance_follows_listed_headers() {
        let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Vary", "Accept, accept-language")
            .unwrap();
        let now = std::time::SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, resp);
        let req = |accept: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            if let Some(a) = accept {
                r.insert_header("Accept", a).unwrap();
            }
            r
        };
        let json = variance(&meta, &req(Some("application/json")));
        assert!(json.is_some());
        assert_eq!(json, variance(&meta, &req(Some("application/json"))));
        assert_ne!(json, variance(&meta, &req(Some("text/plain"))));
        assert_ne!(variance(&meta, &req(None)), variance(&meta, &req(Some(""))));
    }
}
