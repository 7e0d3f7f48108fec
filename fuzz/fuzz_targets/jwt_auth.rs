//! The Authorization header and JWT parsing and validation: the first line is the value
//! of `Authorization` (any bytes), an optional second line the request target (for the
//! `access_token` query parameter). The jwt plugin's request hook runs on it, with one
//! HMAC issuer; the token parser also runs on the line as a bare token.
//!
//! Properties: nothing panics; the plugin lets a request through only with a token whose
//! HMAC the fuzz target itself verifies under the issuer's secret, and refuses everything
//! else with a 4xx.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use portico_plugins::jwt::{fuzzing, Jwt};
use portico_plugins::{Flow, Plugin, PluginCtx};

const SECRET: &str = "fuzzing-secret-fuzzing-secret-fuzzing-secret-fuzzing-0123456789abcdef";

fn plugin() -> &'static Jwt {
    static PLUGIN: OnceLock<Jwt> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let config = format!(
            r#"
realm = "fuzz"
allow_query_token = true
scopes_any = ["orders:read", "orders:write"]
claims = {{ tenant = "acme" }}

[[issuers]]
issuer = "https://issuer.example"
audiences = ["orders"]
algorithms = ["HS256", "HS384", "HS512"]
hmac_secret = "{SECRET}"
"#
        );
        Jwt::from_config(toml::from_str(&config).expect("TOML")).expect("the plugin builds")
    })
}

/// Whether `token` carries a valid HMAC of the issuer's secret, checked here.
fn genuine(token: &str) -> bool {
    let Some((message, signature)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    [hmac::HMAC_SHA256, hmac::HMAC_SHA384, hmac::HMAC_SHA512]
        .into_iter()
        .any(|alg| {
            let key = hmac::Key::new(alg, SECRET.as_bytes());
            hmac::verify(&key, message.as_bytes(), &signature).is_ok()
        })
}

fn percent_decoded(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if bytes.len() >= i + 3 => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => out.push(b),
                    None => out.push(b'%'),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let (authorization, target) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };

    // The parser alone, on the line as a bare token.
    if let Ok(token) = std::str::from_utf8(authorization) {
        if let Ok(parsed) = fuzzing::parse_token(token) {
            fuzzing::check_claims(&parsed.claims, &["orders".to_string()]);
        }
    }

    let target = target
        .and_then(|t| std::str::from_utf8(t).ok())
        .filter(|t| t.starts_with('/'))
        .unwrap_or("/orders");
    let Ok(mut req) = RequestHeader::build("GET", target.as_bytes(), None) else {
        return;
    };
    if !authorization.is_empty() {
        let Ok(value) = http::HeaderValue::from_bytes(authorization) else {
            return;
        };
        req.append_header(http::header::AUTHORIZATION, value)
            .expect("append");
    }
    let mut ctx = PluginCtx::default();
    let flow = futures::executor::block_on(plugin().request(&mut ctx, &mut req));
    match flow {
        Flow::Continue => {
            let mut candidates = Vec::new();
            if let Ok(text) = std::str::from_utf8(authorization) {
                if let Some(rest) = text.get(7..) {
                    candidates.push(rest.trim_start_matches(' ').to_string());
                }
            }
            if let Some((_, query)) = target.split_once('?') {
                for pair in query.split('&') {
                    if let Some(value) = pair.strip_prefix("access_token=") {
                        candidates.push(percent_decoded(value));
                    }
                }
            }
            assert!(
                candidates.iter().any(|t| genuine(t)),
                "admitted without a genuine token: {authorization:?} {target:?}"
            );
            assert!(ctx.identity.is_some(), "admitted without an identity");
        }
        Flow::Respond(response) => {
            let status = response.status.as_u16();
            assert!(
                (400..500).contains(&status),
                "a refused credential is the client's fault: {status}"
            );
        }
    }
});
