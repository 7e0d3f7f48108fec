//! Purging the edge cache: the request `POST /admin/cache/purge` takes and answers
//! ([`answer`]), and its client, `portico cache purge` ([`send`]).
//!
//! A purge names one of:
//!
//! - `{"url": "https://api.example/v1/orders/7?full=1"}`: every variant stored for that host
//!   and exact path with query;
//! - `{"host": "api.example", "prefix": "/v1/orders"}`: every entry of the host whose path
//!   starts with the prefix (a plain string prefix; no `prefix` = the whole host);
//! - `{"key": "<32 hex digits>"}`: the entry stored under that cache key hash (primary and
//!   variance combined, as pingora-cache spells it).
//!
//! Hosts are compared without case, port or trailing dot ([`super::store::normalize_host`]).
//! Writes in flight that match are not stored when they finish, so a purge is never undone
//! by a response that was already on its way.

use http::StatusCode;
use pingora_cache::key::{str2hex, HashBinary};
use serde::Deserialize;
use serde_json::json;

use super::store::{normalize_host, Origin, Store};

/// The largest purge request body read: a purge names one URL, host or key.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// What to purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// The entries of this host and exact path (with query).
    Url { host: String, path: String },
    /// The entries of this host whose path starts with `prefix` (empty: all of them).
    Prefix { host: String, prefix: String },
    /// The entry under this combined key hash.
    Key(HashBinary),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    url: Option<String>,
    host: Option<String>,
    prefix: Option<String>,
    key: Option<String>,
}

impl Purge {
    /// Reads a purge request body, or says precisely what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<Purge, String> {
        let body: Body = serde_json::from_slice(body).map_err(|e| {
            format!(
                "the body must be a JSON object with `url`, `host` (and `prefix`) or `key`: {e}"
            )
        })?;
        match body {
            Body {
                url: Some(url),
                host: None,
                prefix: None,
                key: None,
            } => Purge::url(&url),
            Body {
                url: None,
                host: Some(host),
                prefix,
                key: None,
            } => Purge::prefix(&host, prefix.as_deref().unwrap_or("")),
            Body {
                url: None,
                host: None,
                prefix: None,
                key: Some(key),
            } => Purge::key(&key),
            Body {
                prefix: Some(_),
                host: None,
                ..
            } => Err("`prefix` needs `host`".into()),
            _ => {
                Err("give exactly one of `url`, `host` (with an optional `prefix`) or `key`".into())
            }
        }
    }

    /// `https://api.example:8443/v1/orders?x=1` → host `api.example`, path `/v1/orders?x=1`.
    pub fn url(url: &str) -> Result<Purge, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`url` {url:?} is not a URL: {e}"))?;
        let (Some(_), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!(
                "`url` {url:?} must be absolute: scheme, host and path (https://api.example/v1/…)"
            ));
        };
        let host = valid_host(authority.as_str())?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Purge::Url {
            host,
            path: if path.is_empty() { "/" } else { path }.to_string(),
        })
    }

    pub fn prefix(host: &str, prefix: &str) -> Result<Purge, String> {
        let host = valid_host(host)?;
        if !(prefix.is_empty() || prefix.starts_with('/')) {
            return Err(format!("`prefix` {prefix:?} must start with /"));
        }
        Ok(Purge::Prefix {
            host,
            prefix: prefix.to_string(),
        })
    }

    pub fn key(key: &str) -> Result<Purge, String> {
        str2hex(&key.to_ascii_lowercase())
            .map(Purge::Key)
            .ok_or_else(|| format!("`key` {key:?} is not a cache key hash (32 hex digits)"))
    }

    /// The JSON body that asks for this purge.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Purge::Url { host, path } => json!({ "url": format!("http://{host}{path}") }),
            Purge::Prefix { host, prefix } => json!({ "host": host, "prefix": prefix }),
            Purge::Key(hash) => json!({ "key": hex(hash) }),
        }
    }

    /// Purges the store; returns how many entries (and writes in flight) went.
    pub fn run<const N: usize>(&self, store: &Store<N>) -> usize {
        match self {
            Purge::Url { host, path } => {
                store.purge_matching(|o: &Origin| o.host() == host && o.path() == path)
            }
            Purge::Prefix { host, prefix } => {
                store.purge_matching(|o: &Origin| o.host() == host && o.path().starts_with(prefix))
            }
            Purge::Key(hash) => store.purge_hash(hash),
        }
    }
}

fn valid_host(host: &str) -> Result<String, String> {
    let normalized = normalize_host(host);
    if normalized.is_empty()
        || normalized
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"/?#@".contains(&b))
    {
        return Err(format!("`host` {host:?} is not a host name"));
    }
    Ok(normalized)
}

fn hex(hash: &HashBinary) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /admin/cache/purge`: 200 with the count purged and what the cache holds now, or 400
/// (problem+json) saying what is wrong with the request.
pub fn answer(body: &[u8]) -> (StatusCode, &'static str, Vec<u8>) {
    let store = super::store::store();
    match Purge::parse(body) {
        Ok(purge) => {
            let purged = purge.run(store);
            let stats = store.stats();
            log::info!("edge cache purge {}: {purged} removed", purge.to_json());
            let body = json!({
                "purged": purged,
                "request": purge.to_json(),
                "cache": { "bytes": stats.bytes, "objects": stats.objects },
            });
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&body).unwrap_or_default(),
            )
        }
        Err(detail) => bad_request(&detail),
    }
}

/// The 400 answer to a purge request that cannot be read.
pub fn bad_request(detail: &str) -> (StatusCode, &'static str, Vec<u8>) {
    let body = json!({
        "type": "urn:portico:problem:cache-purge-invalid",
        "title": "Invalid purge request",
        "status": 400,
        "detail": detail,
    });
    (
        StatusCode::BAD_REQUEST,
        "application/problem+json",
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
}

/// The 413 answer to a purge request body over [`MAX_REQUEST_BYTES`].
pub fn too_large() -> (StatusCode, &'static str, Vec<u8>) {
    let body = json!({
        "type": "urn:portico:problem:cache-purge-too-large",
        "title": "Purge request too large",
        "status": 413,
        "detail": format!("a purge request body is at most {MAX_REQUEST_BYTES} bytes"),
    });
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        "application/problem+json",
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
}

/// `portico cache purge`: sends the purge to the admin API at `admin` (`host:port`, an
/// unspecified address meaning this host) with the admin token. Returns the answer's body on
/// 200, else the reason.
pub async fn send(
    admin: &str,
    token: Option<&str>,
    purge: &Purge,
) -> Result<serde_json::Value, String> {
    let address = match admin.parse::<std::net::SocketAddr>() {
        Ok(mut a) if a.ip().is_unspecified() => {
            a.set_ip(if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
            a.to_string()
        }
        _ => admin.to_string(),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut request = client
        .post(format!("http://{address}/admin/cache/purge"))
        .json(&purge.to_json());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach the admin API at {address}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("reading the admin API's answer: {e}"))?;
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if status.is_success() {
        Ok(body)
    } else {
        let detail = body
            .get("detail")
            .or_else(|| body.get("error"))
            .and_then(|d| d.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        Err(format!("the admin API answered {status}: {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_or_refused_precisely() {
        assert_eq!(
            Purge::parse(br#"{"url": "https://API.example:8443/v1/orders/7?full=1"}"#),
            Ok(Purge::Url {
                host: "api.example".into(),
                path: "/v1/orders/7?full=1".into()
            })
        );
        assert_eq!(
            Purge::parse(br#"{"url": "http://api.example"}"#),
            Ok(Purge::Url {
                host: "api.example".into(),
                path: "/".into()
            })
        );
        assert_eq!(
            Purge::parse(br#"{"host": "api.example", "prefix": "/v1/orders"}"#),
            Ok(Purge::Prefix {
                host: "api.example".into(),
                prefix: "/v1/orders".into()
            })
        );
        assert_eq!(
            Purge::parse(br#"{"host": "api.example"}"#),
            Ok(Purge::Prefix {
                host: "api.example".into(),
                prefix: String::new()
            })
        );
        let key = "AC10F2AEF117729F8DAD056B3059EB7E";
        assert!(matches!(
            Purge::parse(format!(r#"{{"key": "{key}"}}"#).as_bytes()),
            Ok(Purge::Key(_))
        ));
        for (body, expected) in [
            (&b"not json"[..], "JSON object"),
            (br#"{"hots": "x"}"#, "unknown field `hots`"),
            (br#"{}"#, "exactly one of"),
            (br#"{"url": "http://a/", "host": "a"}"#, "exactly one of"),
            (br#"{"prefix": "/v1"}"#, "`prefix` needs `host`"),
            (br#"{"host": "a", "prefix": "v1"}"#, "must start with /"),
            (br#"{"host": "a/b"}"#, "not a host name"),
            (br#"{"host": ""}"#, "not a host name"),
            (br#"{"url": "/v1/orders"}"#, "must be absolute"),
            (br#"{"url": "http://exa mple/"}"#, "not a URL"),
            (br#"{"key": "abc"}"#, "32 hex digits"),
        ] {
            let err = Purge::parse(body).unwrap_err();
            assert!(
                err.contains(expected),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_request_survives_its_round_trip_through_json() {
        for purge in [
            Purge::url("https://api.example/v1/orders?x=1").unwrap(),
            Purge::prefix("api.example", "/v1").unwrap(),
            Purge::key("ac10f2aef117729f8dad056b3059eb7e").unwrap(),
        ] {
            let body = serde_json::to_vec(&purge.to_json()).unwrap();
            assert_eq!(Purge::parse(&body), Ok(purge));
        }
    }

    #[tokio::test]
    async fn a_key_purge_takes_the_entry_stored_under_that_hash() {
        use pingora_cache::key::CacheHashKey;
        use pingora_cache::storage::Storage;
        use pingora_cache::trace::Span;
        use pingora_cache::{CacheKey, CacheMeta};

        let store: &'static Store = Box::leak(Box::new(Store::new(Default::default())));
        let key = CacheKey::new("api.example/v1/orders", "");
        let span = Span::inactive().handle();
        let now = std::time::SystemTime::now();
        let header = pingora_http::ResponseHeader::build(200, None).unwrap();
        let meta = CacheMeta::new(now + std::time::Duration::from_secs(60), now, 0, 0, header);
        let mut miss = store.get_miss_handler(&key, &meta, &span).await.unwrap();
        miss.write_body(bytes::Bytes::from_static(b"x"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();

        // Not tagged with its origin: only its key reaches it.
        assert_eq!(Purge::prefix("api.example", "").unwrap().run(store), 0);
        let purge = Purge::key(&key.combined().to_ascii_uppercase()).unwrap();
        assert_eq!(purge.run(store), 1);
        assert!(store.lookup(&key, &span).await.unwrap().is_none());
        assert_eq!(purge.run(store), 0);
    }

    #[test]
    fn a_bad_request_is_a_problem_document() {
        let (status, content_type, body) = answer(b"{}");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type, "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], 400);
        assert!(body["detail"].as_str().unwrap().contains("exactly one of"));
    }
}
