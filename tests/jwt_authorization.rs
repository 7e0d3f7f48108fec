//! What the upstream sees of the caller's token behind the `jwt` plugin, through a real
//! `portico serve`: by default the `Authorization` header goes on (upstreams that verify
//! the token again, or read claims the gateway does not forward, keep working);
//! `strip_authorization = true` removes it, and the verified identity headers remain.

mod common;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use common::*;

const SECRET: &str = "strip-test-secret-0123456789abcdef";
const ISS: &str = "https://auth.portico.test";

fn route(id: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
id = "{id}"
path = "/{id}"
cluster = "c"

[[routes.plugins]]
name = "jwt"
{extra}

[[routes.plugins.issuers]]
issuer = "{ISS}"
audiences = ["orders"]
algorithms = ["HS256"]
hmac_secret = "{SECRET}"
"#
    )
}

fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISS, "aud": "orders", "sub": "service-a", "iat": now, "nbf": now, "exp": now + 300,
    });
    // An access token as RFC 9068 types it, which the plugin requires by default.
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_reaches_the_upstream_unless_strip_authorization_is_set() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::start(&format!(
            "{}{}\n[clusters.c]\nendpoints = {}\n",
            route("kept", ""),
            route("stripped", "strip_authorization = true"),
            endpoints(&[&up])
        ))
        .await;
        let auth = format!("Bearer {}", token());

        let resp = gw.get_with("/kept/1", &[("Authorization", &auth)]).await;
        assert_eq!(resp.status(), 200);
        let seen = up.last_request();
        assert_eq!(seen.uri, "/kept/1");
        assert_eq!(seen.header_all("authorization"), [auth.as_str()]);
        assert_eq!(seen.header("x-portico-subject"), Some("service-a"));

        let resp = gw
            .get_with("/stripped/1", &[("Authorization", &auth)])
            .await;
        assert_eq!(resp.status(), 200);
        let seen = up.last_request();
        assert_eq!(seen.uri, "/stripped/1");
        assert!(seen.header_all("authorization").is_empty(), "{seen:?}");
        assert_eq!(seen.header("x-portico-subject"), Some("service-a"));

        // Without a token neither route lets anything through.
        for path in ["/kept/2", "/stripped/2"] {
            assert_eq!(gw.get(path).await.status(), 401);
        }
        assert_eq!(up.hits(), 2);
    })
    .await
}
