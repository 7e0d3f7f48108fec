//! The token service end to end over real HTTP on loopback, with SQLite: the client
//! credentials grant (Basic and post), RFC 6749 error responses, scopes and audiences,
//! the JWT's header and claims checked against the JWKS, introspection, revocation,
//! failed-authentication limiting, metadata and metrics, and each signing algorithm.

mod common;

use common::get_json;
use common::token_service::{self, *};
use serde_json::Value;

const ISSUER: &str = "https://auth.portico.test";

async fn service(sections: &str) -> (tempfile::TempDir, portico::auth::Running) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("issuer = \"{ISSUER}\""), sections);
    let running = start(&cfg).await;
    (dir, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_basic_and_post_issue_rfc9068_tokens() {
    let (_dir, svc) = service("").await;
    let base = base(&svc);
    let secret = add_client(
        &svc,
        "service-a",
        "orders:read orders:write",
        "portico billing",
    )
    .await;
    let http = http();

    // client_secret_basic
    let (status, headers, body) = client_credentials(&http, &base, "service-a", &secret).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "orders:read orders:write");
    let token = body["access_token"].as_str().unwrap();

    let (header, claims) = verify(&http, &base, token, ISSUER, "portico")
        .await
        .unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert!(header.kid.is_some());
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "service-a");
    assert_eq!(claims["client_id"], "service-a");
    assert_eq!(claims["aud"], "portico");
    assert_eq!(claims["scope"], "orders:read orders:write");
    let (iat, nbf, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 600);
    assert_eq!(nbf, iat);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);

    // client_secret_post; each token has its own jti
    let (status, _, body) = post_form(
        &http,
        &format!("{base}/oauth2/token"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "service-a"),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, claims2) = verify(
        &http,
        &base,
        body["access_token"].as_str().unwrap(),
        ISSUER,
        "portico",
    )
    .await
    .unwrap();
    assert_ne!(claims["jti"], claims2["jti"]);

    // The JWKS entries carry kid, alg and use.
    let jwks: Value = get_json(&http, &format!("{base}/.well-known/jwks.json")).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"].as_str(), header.kid.as_deref());
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kty"], "EC");
    assert!(key.get("d").is_none(), "no private part is published");

    // RFC 8414 metadata
    let meta: Value = get_json(
        &http,
        &format!("{base}/.well-known/oauth-authorization-server"),
    )
    .await;
    assert_eq!(meta["issuer"], ISSUER);
    assert_eq!(meta["token_endpoint"], format!("{ISSUER}/oauth2/token"));
    assert_eq!(meta["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(meta["grant_types_supported"][0], "client_credentials");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authentication_errors_follow_rfc6749() {
    let (_dir, svc) = service("").await;
    let url = format!("{}/oauth2/token", base(&svc));
    let secret = add_client(&svc, "service-a", "a", "portico").await;
    let http = http();
    let grant = ("grant_type", "client_credentials");

    // Wrong secret, Basic: 401 invalid_client with a Basic challenge.
    let (status, headers, body) = post_basic(&http, &url, "service-a", "wrong", &[grant]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(headers["www-authenticate"], r#"Basic realm="portico""#);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));

    // Wrong secret by post, unknown client, and no credentials: the same answer.
    for form in [
        vec![
            grant,
            ("client_id", "service-a"),
            ("client_secret", "wrong"),
        ],
        vec![grant, ("client_id", "nobody"), ("client_secret", "x")],
        vec![grant],
    ] {
        let (status, headers, body) = post_form(&http, &url, &form).await;
        assert_eq!(status, 401, "{form:?}");
        assert_eq!(body["error"], "invalid_client");
        assert!(headers.contains_key("www-authenticate"));
    }

    // Two authentication methods at once.
    let (status, _, body) = post_basic(
        &http,
        &url,
        "service-a",
        &secret,
        &[grant, ("client_secret", &secret)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // Unsupported and missing grant types, repeated parameters, wrong content type.
    let (status, _, body) = post_basic(
        &http,
        &url,
        "service-a",
        &secret,
        &[("grant_type", "password")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, _, body) = post_basic(&http, &url, "service-a", &secret, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _, body) = post_basic(
        &http,
        &url,
        "service-a",
        &secret,
        &[grant, ("scope", "a"), ("scope", "a")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let resp = http
        .post(&url)
        .header("authorization", basic("service-a", &secret))
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );

    // Wrong method and unknown path.
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(
        http.get(format!("{}/nope", base(&svc)))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_narrow_and_unknown_scopes_are_refused() {
    let (_dir, svc) = service("").await;
    let base = base(&svc);
    let url = format!("{base}/oauth2/token");
    let secret = add_client(
        &svc,
        "svc",
        "orders:read orders:write inventory:read",
        "portico",
    )
    .await;
    let http = http();
    let grant = ("grant_type", "client_credentials");

    let (status, _, body) = post_basic(
        &http,
        &url,
        "svc",
        &secret,
        &[grant, ("scope", "orders:read")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["scope"], "orders:read");
    let (_, claims) = verify(
        &http,
        &base,
        body["access_token"].as_str().unwrap(),
        ISSUER,
        "portico",
    )
    .await
    .unwrap();
    assert_eq!(claims["scope"], "orders:read");

    let token = token(
        &http,
        &base,
        "svc",
        &secret,
        &[("scope", "inventory:read orders:read")],
    )
    .await;
    let (_, claims) = verify(&http, &base, &token, ISSUER, "portico")
        .await
        .unwrap();
    assert_eq!(claims["scope"], "inventory:read orders:read");

    for bad in ["orders:delete", "orders:read admin", "a\\b"] {
        let (status, headers, body) =
            post_basic(&http, &url, "svc", &secret, &[grant, ("scope", bad)]).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"], "invalid_scope");
        assert_eq!(headers["cache-control"], "no-store");
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_and_resource_select_among_allowed_audiences() {
    let (_dir, svc) = service("").await;
    let base = base(&svc);
    let secret = add_client(&svc, "svc", "x", "portico https://billing.example").await;
    let http = http();

    let t = token(&http, &base, "svc", &secret, &[]).await;
    assert_eq!(
        verify(&http, &base, &t, ISSUER, "portico").await.unwrap().1["aud"],
        "portico"
    );

    let t = token(
        &http,
        &base,
        "svc",
        &secret,
        &[("audience", "https://billing.example")],
    )
    .await;
    let (_, claims) = verify(&http, &base, &t, ISSUER, "https://billing.example")
        .await
        .unwrap();
    assert_eq!(claims["aud"], "https://billing.example");
    assert!(verify(&http, &base, &t, ISSUER, "portico").await.is_err());

    let t = token(
        &http,
        &base,
        "svc",
        &secret,
        &[("resource", "https://billing.example")],
    )
    .await;
    assert!(verify(&http, &base, &t, ISSUER, "https://billing.example")
        .await
        .is_ok());

    let t = token(
        &http,
        &base,
        "svc",
        &secret,
        &[
            ("resource", "portico"),
            ("resource", "https://billing.example"),
        ],
    )
    .await;
    let (_, claims) = verify(&http, &base, &t, ISSUER, "portico").await.unwrap();
    assert_eq!(
        claims["aud"],
        serde_json::json!(["portico", "https://billing.example"])
    );

    let (status, _, body) = post_basic(
        &http,
        &format!("{base}/oauth2/token"),
        "svc",
        &secret,
        &[
            ("grant_type", "client_credentials"),
            ("audience", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_target");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_and_revocation() {
    let (_dir, svc) = service("").await;
    let base = base(&svc);
    let a = add_client(&svc, "service-a", "orders:read", "portico").await;
    let gw = add_client(&svc, "gateway", "", "portico").await;
    grant_introspect(&svc, "gateway").await;
    let other = add_client(&svc, "service-b", "", "portico").await;
    let http = http();
    let introspect = format!("{base}/oauth2/introspect");
    let revoke = format!("{base}/oauth2/revoke");
    let token = token(&http, &base, "service-a", &a, &[]).await;

    // Unauthenticated and wrongly authenticated callers are refused.
    let (status, headers, body) = post_form(&http, &introspect, &[("token", &token)]).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, _) =
        post_basic(&http, &introspect, "gateway", "nope", &[("token", &token)]).await;
    assert_eq!(status, 401);

    // A client without the `introspect` right learns nothing of another client's token.
    let (status, _, body) = post_basic(
        &http,
        &introspect,
        "service-b",
        &other,
        &[("token", &token)],
    )
    .await;
    assert_eq!(
        (status, &body),
        (200, &serde_json::json!({ "active": false }))
    );

    // An authenticated resource server with the right sees the claims.
    let (status, headers, body) =
        post_basic(&http, &introspect, "gateway", &gw, &[("token", &token)]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["active"], true);
    assert_eq!(body["client_id"], "service-a");
    assert_eq!(body["scope"], "orders:read");
    assert_eq!(body["iss"], ISSUER);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["exp"].as_i64().is_some());

    // Garbage and tampered tokens are simply inactive.
    let mut tampered = token.clone();
    tampered.insert(tampered.len() - 5, 'A');
    tampered.truncate(token.len());
    for t in ["not-a-jwt", tampered.as_str()] {
        let (status, _, body) =
            post_basic(&http, &introspect, "gateway", &gw, &[("token", t)]).await;
        assert_eq!(
            (status, &body),
            (200, &serde_json::json!({ "active": false }))
        );
    }
    let (status, _, body) = post_basic(&http, &introspect, "gateway", &gw, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // Only the client the token was issued to may revoke it.
    let (status, _, body) =
        post_basic(&http, &revoke, "service-b", &other, &[("token", &token)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    let (status, _, _) = post_form(&http, &revoke, &[("token", &token)]).await;
    assert_eq!(status, 401);

    let (status, headers, _) = post_basic(
        &http,
        &revoke,
        "service-a",
        &a,
        &[("token", &token), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    let (_, _, body) = post_basic(&http, &introspect, "gateway", &gw, &[("token", &token)]).await;
    assert_eq!(body, serde_json::json!({ "active": false }));
    // Revoking again, or revoking garbage, is still 200 (RFC 7009 §2.2).
    let (status, _, _) = post_basic(&http, &revoke, "service-a", &a, &[("token", &token)]).await;
    assert_eq!(status, 200);
    let (status, _, _) = post_basic(&http, &revoke, "service-a", &a, &[("token", "garbage")]).await;
    assert_eq!(status, 200);

    // Removing a client makes its tokens inactive too.
    let t2 = token_service::token(&http, &base, "service-a", &a, &[]).await;
    assert!(svc.service.store.delete_client("service-a").await.unwrap());
    let (_, _, body) = post_basic(&http, &introspect, "gateway", &gw, &[("token", &t2)]).await;
    assert_eq!(body["active"], false);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_list_names_revoked_tokens_until_they_expire() {
    let (_dir, svc) = service("").await;
    let base = base(&svc);
    let a = add_client(&svc, "service-a", "orders:read", "portico").await;
    let gw = add_client(&svc, "gateway", "", "portico").await;
    let http = http();
    let list = format!("{base}/oauth2/revoked");
    let get = |auth: Option<String>| {
        let mut req = http.get(&list);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        async move {
            let resp = req.send().await.expect("request sent");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body: Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
            (status, headers, body)
        }
    };

    // Authenticated like introspection: no or wrong credentials get 401 invalid_client.
    for auth in [
        None,
        Some(basic("gateway", "nope")),
        Some(basic("nobody", "x")),
    ] {
        let (status, headers, body) = get(auth).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client"))
        );
        assert!(headers.contains_key("www-authenticate"));
    }
    let (status, headers, body) = get(Some(basic("gateway", &gw))).await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body, serde_json::json!({ "revoked": [] }));
    // It is a GET; a POST is 405.
    let (status, _, _) = post_basic(&http, &list, "gateway", &gw, &[]).await;
    assert_eq!(status, 405);

    let token = token(&http, &base, "service-a", &a, &[]).await;
    let (_, claims) = verify(&http, &base, &token, ISSUER, "portico")
        .await
        .unwrap();
    let (status, _, _) = post_basic(
        &http,
        &format!("{base}/oauth2/revoke"),
        "service-a",
        &a,
        &[("token", &token)],
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, body) = get(Some(basic("gateway", &gw))).await;
    assert_eq!(
        body,
        serde_json::json!({ "revoked": [{ "jti": claims["jti"], "exp": claims["exp"] }] })
    );

    // Revocations of tokens that have expired are not listed.
    svc.service
        .store
        .revoke("long-gone", portico::auth::unix_now() - 1)
        .await
        .unwrap();
    let (_, _, body) = get(Some(basic("service-a", &a))).await;
    assert_eq!(body["revoked"].as_array().unwrap().len(), 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_authentication_is_limited() {
    // `lockout`, the former name of `max_backoff`, is still understood.
    let (_dir, svc) = service(
        "[failed_auth]\nmax_failures = 3\nwindow = \"1m\"\nbackoff = \"2s\"\nlockout = \"2s\"\n",
    )
    .await;
    let url = format!("{}/oauth2/token", base(&svc));
    let secret = add_client(&svc, "svc", "", "portico").await;
    let other = add_client(&svc, "other", "", "portico").await;
    let http = http();
    let grant = [("grant_type", "client_credentials")];

    for _ in 0..3 {
        let (status, _, _) = post_basic(&http, &url, "svc", "wrong", &grant).await;
        assert_eq!(status, 401);
    }
    // Backing off: even the right secret is refused (from this address), with Retry-After.
    let (status, headers, body) = post_basic(&http, &url, "svc", &secret, &grant).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"], "invalid_client");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Other clients are not affected.
    let (status, _, _) = post_basic(&http, &url, "other", &other, &grant).await;
    assert_eq!(status, 200);

    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, _, _) = post_basic(&http, &url, "svc", &secret, &grant).await;
    assert_eq!(status, 200);

    let metrics = token_service::metrics(&http, &svc).await;
    assert!(
        metrics.contains("portico_auth_tokens_issued_total"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"portico_auth_token_failures_total{reason="rate_limited"}"#));
    assert!(metrics.contains(r#"portico_auth_token_failures_total{reason="invalid_client"}"#));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_and_rs256_tokens_verify_against_the_jwks() {
    for (alg, kty) in [("EdDSA", "OKP"), ("RS256", "RSA")] {
        let (_dir, svc) = service(&format!(
            "[tokens]\nalgorithm = \"{alg}\"\nlifetime = \"90s\"\n"
        ))
        .await;
        let base = base(&svc);
        let secret = add_client(&svc, "svc", "s", "portico").await;
        let http = http();
        let (status, _, body) = client_credentials(&http, &base, "svc", &secret).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["expires_in"], 90);
        let (header, _) = verify(
            &http,
            &base,
            body["access_token"].as_str().unwrap(),
            ISSUER,
            "portico",
        )
        .await
        .unwrap();
        assert_eq!(format!("{:?}", header.alg), alg);
        let jwks: Value = get_json(&http, &format!("{base}/.well-known/jwks.json")).await;
        assert_eq!(jwks["keys"][0]["kty"], kty);
        svc.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_entry_point_registers_service_a() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (addr, secret) = portico::auth::spawn_for_demo(dir.path()).unwrap();
    let base = format!("http://{addr}");
    let issuer = base.clone();
    let http = http();
    let t = token(
        &http,
        &base,
        "service-a",
        &secret,
        &[("scope", "orders:read")],
    )
    .await;
    let (_, claims) = verify(&http, &base, &t, &issuer, "portico").await.unwrap();
    assert_eq!(claims["scope"], "orders:read");
    let t = token(&http, &base, "service-a", &secret, &[]).await;
    let (_, claims) = verify(&http, &base, &t, &issuer, "portico").await.unwrap();
    assert_eq!(claims["scope"], "orders:read orders:write inventory:read");
    eprintln!(
        "demo token service and two tokens in {:?}",
        started.elapsed()
    );
}
