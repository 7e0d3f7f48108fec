//! The token service on PostgreSQL (`PORTICO_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), in a schema of its own that is dropped
//! afterwards: two replicas share clients, keys and revocations; a rotation made through
//! one is published and then used by both; the CLI works against the same database.
//! Without a server the test says SKIP loudly, except under `CI=true`, where it fails.

mod common;

use std::time::Duration;

use common::postgres::Schema;
use common::token_service::{self, *};

const ISSUER: &str = "https://auth.portico.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_clients_keys_and_revocations_on_postgres() {
    let Some(schema) = Schema::create("auth_test").await else {
        return;
    };
    let admin = &schema.client;
    let db_url = schema.url();

    let dir = tempfile::tempdir().unwrap();
    let top = format!("issuer = \"{ISSUER}\"\ndatabase_url = \"{db_url}\"");
    let sections = "[tokens]\nlifetime = \"5s\"\n\
                    [keys]\nrotate_every = \"off\"\npublish_ahead = \"1s\"\n\
                    refresh_interval = \"200ms\"\nretire_grace = \"0s\"\n";
    let cfg = config(dir.path(), &top, sections);
    let (a, b) = tokio::join!(start(&cfg), start(&cfg));
    let (base_a, base_b) = (base(&a), base(&b));
    let http = http();

    // The tables live in the test's schema, and both replicas use one first key.
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 3);
    let jwks = |base: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/.well-known/jwks.json"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jwks(base_a.clone()).await, jwks(base_b.clone()).await);
    assert_eq!(jwks(base_a.clone()).await.len(), 1);

    // A client added through replica A's store authenticates at replica B.
    let secret = add_client(&a, "service-a", "orders:read", "portico").await;
    let gw = add_client(&b, "gateway", "", "portico").await;
    grant_introspect(&b, "gateway").await;
    let token = token(
        &http,
        &base_b,
        "service-a",
        &secret,
        &[("scope", "orders:read")],
    )
    .await;
    verify(&http, &base_a, &token, ISSUER, "portico")
        .await
        .unwrap();

    // Introspection at A, revocation at B, introspection at A again.
    let (_, _, body) = post_basic(
        &http,
        &format!("{base_a}/oauth2/introspect"),
        "gateway",
        &gw,
        &[("token", &token)],
    )
    .await;
    assert_eq!(body["active"], true, "{body}");
    let (status, _, _) = post_basic(
        &http,
        &format!("{base_b}/oauth2/revoke"),
        "service-a",
        &secret,
        &[("token", &token)],
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, body) = post_basic(
        &http,
        &format!("{base_a}/oauth2/introspect"),
        "gateway",
        &gw,
        &[("token", &token)],
    )
    .await;
    assert_eq!(body["active"], false, "{body}");

    // The CLI against PostgreSQL: a rotation, seen by both replicas before it signs.
    let file = dir.path().join("auth.toml");
    std::fs::write(&file, format!("{top}\n{FAST}\n{sections}")).unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = portico(&["auth", "-c", file, "keys", "rotate"]);
    assert_eq!(code, 0, "{out}{err}");
    let new_kid = out.split_whitespace().nth(3).unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for base in [&base_a, &base_b] {
        assert!(jwks(base.to_string()).await.contains(&new_kid));
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for base in [&base_a, &base_b] {
        let t = token_service::token(&http, base, "service-a", &secret, &[]).await;
        assert_eq!(
            jsonwebtoken::decode_header(&t).unwrap().kid.unwrap(),
            new_kid
        );
        verify(&http, &base_a, &t, ISSUER, "portico").await.unwrap();
    }

    let (code, out, _) = portico(&[
        "auth",
        "-c",
        file,
        "clients",
        "add",
        "svc-c",
        "--audiences",
        "portico",
    ]);
    assert_eq!(code, 0);
    let c_secret = kv(&out)["client_secret"].clone();
    token_service::token(&http, &base_a, "svc-c", &c_secret, &[]).await;
    let (code, out, _) = portico(&["auth", "-c", file, "clients", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("service-a") && out.contains("svc-c") && out.contains("gateway"));
    let (code, _, _) = portico(&["auth", "-c", file, "clients", "remove", "svc-c"]);
    assert_eq!(code, 0);
    let (status, _, _) = post_basic(
        &http,
        &format!("{base_b}/oauth2/token"),
        "svc-c",
        &c_secret,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 401);

    a.stop().await;
    b.stop().await;
    drop(schema);
    let admin = common::postgres::connect(&common::postgres::base_url())
        .await
        .unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'portico_auth_test_' || $1 || '_%'",
            &[&std::process::id().to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "schema dropped");
}
