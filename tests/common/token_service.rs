//! Portico's own token service for the tests that need one: a real service on
//! 127.0.0.1:0 with its own database, clients registered through the library, token
//! requests over real HTTP, JWT verification against the published JWKS, and the
//! `portico auth` command line.

use std::collections::HashMap;
use std::path::Path;

use portico::auth::{self, AuthConfig, Running};
use serde_json::Value;

/// Light argon2 cost and short timings so tests run in seconds in debug builds.
pub const FAST: &str = r#"
[argon2]
memory_kib = 64
iterations = 1
parallelism = 1
"#;

/// A config for a test service: loopback, ephemeral ports (the admin listener's too),
/// SQLite in `dir` unless `extra` sets `database_url` itself (it is TOML appended at the
/// top level first).
pub fn config(dir: &Path, top: &str, sections: &str) -> AuthConfig {
    let db = if top.contains("database_url") {
        String::new()
    } else {
        format!(
            "database_url = \"sqlite://{}\"\n",
            dir.join("auth.db").display()
        )
    };
    let admin = if top.contains("admin_listen") {
        ""
    } else {
        "admin_listen = \"127.0.0.1:0\"\n"
    };
    let text = format!("listen = \"127.0.0.1:0\"\n{admin}{db}{top}\n{FAST}\n{sections}");
    auth::config::load_str("test.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

pub async fn start(config: &AuthConfig) -> Running {
    auth::start(config).await.expect("token service starts")
}

pub fn base(r: &Running) -> String {
    format!("http://{}", r.addr)
}

pub async fn add_client(r: &Running, id: &str, scopes: &str, audiences: &str) -> String {
    auth::clients::add(&r.service.store, id, scopes, audiences, &r.service.argon2)
        .await
        .expect("client added")
}

/// Grants a client the right to introspect other clients' tokens (a gateway's own
/// client needs it for opaque-token introspection).
pub async fn grant_introspect(r: &Running, id: &str) {
    auth::clients::set_introspect(&r.service.store, id, true)
        .await
        .expect("introspect right granted");
}

/// The token service's `/metrics`, from its admin listener.
pub async fn metrics(http: &reqwest::Client, r: &Running) -> String {
    let admin = r
        .admin_addr
        .expect("the test service has an admin listener");
    http.get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics body")
}

pub use super::tokens::basic;

/// POSTs a form with Basic credentials; returns status, headers and JSON body (or Null).
pub async fn post_basic(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = http
        .post(url)
        .header("authorization", basic(id, secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(form))
        .send()
        .await
        .expect("request sent");
    split(resp).await
}

/// POSTs a form as is (credentials, if any, inside it).
pub async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(form))
        .send()
        .await
        .expect("request sent");
    split(resp).await
}

pub fn encode(form: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

async fn split(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body read");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

/// Gets a token by client_secret_basic, asserting success.
pub async fn token(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> String {
    let mut all = vec![("grant_type", "client_credentials")];
    all.extend_from_slice(form);
    let (status, _, body) =
        post_basic(http, &format!("{base}/oauth2/token"), id, secret, &all).await;
    assert_eq!(status, 200, "token request failed: {body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// Verifies a token against a freshly fetched JWKS the way a resource server would:
/// the kid must be published, with an alg matching the header. Returns header and claims.
pub async fn verify(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<(jsonwebtoken::Header, Value), String> {
    let jwks: jsonwebtoken::jwk::JwkSet = http
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    verify_with(&jwks, token, issuer, audience)
}

pub fn verify_with(
    jwks: &jsonwebtoken::jwk::JwkSet,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<(jsonwebtoken::Header, Value), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.clone().ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or(format!("kid {kid} not in the JWKS"))?;
    let alg = match &jwk.common.key_algorithm {
        Some(a) => format!("{a:?}"),
        None => return Err("JWK without alg".into()),
    };
    let expected: jsonwebtoken::Algorithm = alg.parse().map_err(|_| format!("alg {alg}"))?;
    if header.alg != expected {
        return Err(format!("header alg {:?} but JWK alg {alg}", header.alg));
    }
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(expected);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "sub", "aud", "jti"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| e.to_string())?;
    Ok((data.header, data.claims))
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .expect("client")
}

/// Runs the real binary, returning (exit code, stdout, stderr).
pub fn portico(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(super::PORTICO)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("portico runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `key=value` lines of CLI output.
pub fn kv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A `client_credentials` token request by client_secret_basic to `{base}/oauth2/token`:
/// status, headers and JSON body, whatever the answer.
pub async fn client_credentials(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    post_basic(
        http,
        &format!("{base}/oauth2/token"),
        id,
        secret,
        &[("grant_type", "client_credentials")],
    )
    .await
}
