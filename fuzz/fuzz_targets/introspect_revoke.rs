//! Introspection and revocation bodies: the first byte picks the endpoint, the first line
//! is `Authorization` (empty for none), the rest the form body (`token=…`, credentials).
//! The token is also split on its own, as the endpoints split it.
//!
//! Properties: nothing panics; a refusal is a 4xx with an error code; a token read is
//! three segments whose header was a JSON object.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico_auth::oauth::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let path = if selector & 1 == 0 {
        "/oauth2/introspect"
    } else {
        "/oauth2/revoke"
    };
    let (authorization, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(token) = std::str::from_utf8(body) {
        if let Some(parts) = fuzzing::split_token(token) {
            assert_eq!(token.split('.').count(), 3);
            let header = token.split('.').next().unwrap_or("");
            assert!(!header.is_empty(), "{parts:?} read from an empty header");
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    if !authorization.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(authorization) {
            headers.insert(http::header::AUTHORIZATION, v);
        }
    }
    match fuzzing::token_body(path, headers, body) {
        Ok(_) => {}
        Err(e) => {
            assert!(e.status.is_client_error(), "{e:?}");
            assert!(!e.code.is_empty() && !e.description.is_empty());
        }
    }
});
