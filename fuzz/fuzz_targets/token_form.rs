//! The token endpoint's request: the first line is `Content-Type`, the second
//! `Authorization` (empty for none), the rest the form body.
//!
//! Properties: nothing panics; a refusal is a 4xx with an error code; accepted
//! credentials are non-empty and bounded, and come from exactly one method.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portico_auth::oauth::fuzzing;

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (content_type, rest) = split_line(data);
    let (authorization, body) = split_line(rest);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(content_type) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    if !authorization.is_empty() {
        if let Ok(v) = HeaderValue::from_bytes(authorization) {
            let _ = fuzzing::basic(&v);
            headers.insert(http::header::AUTHORIZATION, v);
        }
    }
    match fuzzing::token_request(headers, body) {
        Ok(request) => {
            assert!(!request.client_id.is_empty() && request.client_id.len() <= 512);
            assert!(request.secret.len() <= 512);
            for scope in request.scopes.iter().flatten() {
                assert!(!scope.is_empty() && !scope.contains(' '));
            }
        }
        Err(e) => {
            assert!(e.status.is_client_error(), "{e:?}");
            assert!(!e.code.is_empty() && !e.description.is_empty());
        }
    }
});
