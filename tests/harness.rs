//! The test harness itself (`tests/common`): the config its builder writes, what its
//! request-and-count loop counts, the upstream spawners the other tests rely on, and the
//! tokens it mints. A broken helper fails here, by name, rather than as a puzzling failure
//! in a test that uses it.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_config_builder_writes_routes_and_clusters_as_toml_tables() {
    let a: std::net::SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let b: std::net::SocketAddr = "127.0.0.1:9002".parse().unwrap();

    let text = Routes::new()
        .toml("[[plugins]]\nname = \"request-id\"")
        .route_with(
            "r",
            "/api",
            "c",
            "retry = { attempts = 2 }\n[[routes.plugins]]\nname = \"cors\"",
        )
        .route("s", "/", "d")
        .cluster_at("c", &[a, b], "lb = \"round_robin\"")
        .cluster_body(
            "d",
            "endpoints = [{ address = \"127.0.0.1:9003\", weight = 2 }]",
        )
        .to_string();

    let doc: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(doc["plugins"][0]["name"].as_str(), Some("request-id"));
    let routes = doc["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2, "{text}");
    assert_eq!(routes[0]["id"].as_str(), Some("r"));
    assert_eq!(routes[0]["path"].as_str(), Some("/api"));
    assert_eq!(routes[0]["cluster"].as_str(), Some("c"));
    assert_eq!(routes[0]["retry"]["attempts"].as_integer(), Some(2));
    assert_eq!(routes[0]["plugins"][0]["name"].as_str(), Some("cors"));
    assert_eq!(routes[1]["cluster"].as_str(), Some("d"));
    let c = &doc["clusters"]["c"];
    assert_eq!(c["lb"].as_str(), Some("round_robin"));
    let addresses: Vec<&str> = c["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert_eq!(addresses, ["127.0.0.1:9001", "127.0.0.1:9002"]);
    assert_eq!(
        doc["clusters"]["d"]["endpoints"][0]["weight"].as_integer(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_count_counts_statuses_and_serving_upstreams() {
    bounded(async {
        let good = Upstream::start("good").await;
        let bad = Upstream::with_status("bad", 503).await;
        let gw = Gateway::config()
            .route_with("r", "/", "c", "retry = { attempts = 1 }")
            .cluster_with(
                "c",
                &[&good, &bad],
                "outlier = { consecutive_5xx = 0, consecutive_connect_failures = 0 }",
            )
            .no_access_log()
            .start()
            .await;

        let counts = send_and_count(&gw, "/x", 10).await;

        assert_eq!(counts.status(200), good.hits(), "{counts:?}");
        assert_eq!(counts.status(503), bad.hits(), "{counts:?}");
        assert_eq!(counts.status(200) + counts.status(503), 10, "{counts:?}");
        assert_eq!(counts.upstream("good"), good.hits(), "{counts:?}");
        assert_eq!(counts.upstream("bad"), bad.hits(), "{counts:?}");
        assert!(
            good.hits() >= 1 && bad.hits() >= 1,
            "round robin uses both: {counts:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_and_resetting_upstreams_misbehave_as_named() {
    bounded(async {
        let slow = Upstream::slow("slow", Duration::from_millis(300)).await;
        let resetter = Resetter::start().await;
        let gw = Gateway::config()
            .route("slow", "/slow", "s")
            .route("reset", "/reset", "r")
            .cluster("s", &[&slow])
            .cluster_at("r", &[resetter.addr], "")
            .no_access_log()
            .start()
            .await;

        let start = Instant::now();
        let (status, body) = gw.get_text("/slow/1").await;
        let took = start.elapsed();
        let reset = gw.get("/reset/1").await;

        assert_eq!((status, body.as_str()), (200, "slow"));
        assert!(
            took >= Duration::from_millis(300),
            "answered after {took:?}"
        );
        assert_eq!(slow.hits(), 1);
        assert_eq!(reset.status(), 502);
        assert!(resetter.seen() >= 1, "the resetter saw the request");
    })
    .await
}

#[test]
fn minted_tokens_are_access_tokens_that_verify_with_their_key() {
    let secret = "harness-secret-0123456789abcdef0123";

    let token = hs256(secret, &claims(TEST_ISSUER, "orders"));

    let header = jsonwebtoken::decode_header(&token).expect("a JWT header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&[TEST_ISSUER]);
    validation.set_audience(&["orders"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("the token verifies with its secret");
    assert_eq!(data.claims["sub"], "service-a");
    assert_eq!(bearer("t"), "Bearer t");
    assert_eq!(basic("id", "pw"), "Basic aWQ6cHc=");
}
