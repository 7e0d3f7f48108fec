//! What the upstream sees of the caller's token behind the `jwt` plugin, through a real
//! `portico serve`: by default the `Authorization` header goes on (upstreams that verify
//! the token again, or read claims the gateway does not forward, keep working);
//! `strip_authorization = true` removes it, and the verified identity headers remain.

mod common;

use common::*;

const SECRET: &str = "strip-test-secret-0123456789abcdef";
const ISS: &str = TEST_ISSUER;

/// The `jwt` plugin of a route, HS256 with [`SECRET`], then `extra` plugin keys.
fn jwt(extra: &str) -> String {
    format!(
        r#"
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

/// An access token of the test issuer for `orders`, signed with the routes' secret.
fn token() -> String {
    hs256(SECRET, &claims(ISS, "orders"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_reaches_the_upstream_unless_strip_authorization_is_set() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .route_with("kept", "/kept", "c", &jwt(""))
            .route_with(
                "stripped",
                "/stripped",
                "c",
                &jwt("strip_authorization = true"),
            )
            .cluster("c", &[&up])
            .start()
            .await;
        let auth = bearer(&token());

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
