//! The token service on its own: this crate has no proxy in it, and a service built from
//! it alone issues tokens and publishes its keys over real HTTP.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_service_runs_without_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}\"\n[argon2]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n",
        dir.path().join("auth.db").display()
    );
    let config = portico_auth::config::load_str("standalone.toml", &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let running = tokio::time::timeout(Duration::from_secs(30), portico_auth::start(&config))
        .await
        .expect("starts in time")
        .expect("token service starts");
    let secret = portico_auth::clients::add(
        &running.service.store,
        "svc-a",
        "orders:read",
        "orders",
        &running.service.argon2,
    )
    .await
    .expect("client added");

    let http = reqwest::Client::new();
    let base = format!("http://{}", running.addr);
    let jwks: serde_json::Value = http
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks answered")
        .json()
        .await
        .expect("jwks is JSON");
    assert!(
        jwks["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{jwks}"
    );
    let token: serde_json::Value = http
        .post(format!("{base}/oauth2/token"))
        .basic_auth("svc-a", Some(&secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "orders:read"),
        ])
        .send()
        .await
        .expect("token answered")
        .json()
        .await
        .expect("token is JSON");
    assert_eq!(token["token_type"], "Bearer", "{token}");
    assert!(token["access_token"]
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));
}
