//! Signing keys encrypted at rest, on SQLite and PostgreSQL: a database written without a
//! key-encryption key is encrypted in place when one is configured (the same keys keep
//! signing, tokens issued before still verify), the stored private keys are then not the
//! DER, and a wrong or missing key refuses to start with an error naming the setting.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use portico_auth::{clients, config, store::Store, Running};
use serde_json::Value;

mod support;
use support::postgres;

const FAST: &str = "[argon2]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n";

fn load(database_url: &str, keys: &str) -> Result<portico_auth::AuthConfig, String> {
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"off\"\nissuer = \"http://auth.test\"\ndatabase_url = \"{database_url}\"\n\
         {FAST}[keys]\n{keys}\n"
    );
    config::load_str("at_rest.toml", &text).map_err(|e| e.to_string())
}

async fn start(config: &portico_auth::AuthConfig) -> Result<Running, String> {
    tokio::time::timeout(Duration::from_secs(60), portico_auth::start(config))
        .await
        .expect("starts or fails in time")
}

/// A token for `id`, then whether the service calls it active (signature checked).
async fn token(r: &Running, id: &str, secret: &str) -> String {
    let body: Value = reqwest::Client::new()
        .post(format!("http://{}/oauth2/token", r.addr))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {body}"))
        .to_string()
}

async fn active(r: &Running, id: &str, secret: &str, token: &str) -> bool {
    let body: Value = reqwest::Client::new()
        .post(format!("http://{}/oauth2/introspect", r.addr))
        .basic_auth(id, Some(secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["active"] == Value::Bool(true)
}

/// Whether a stored private key is the plain base64 DER of a key.
fn is_plain_der(stored: &str) -> bool {
    STANDARD
        .decode(stored)
        .is_ok_and(|der| der.first() == Some(&0x30))
}

fn write_key_file(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = mode;
}

/// The whole life on one database: plain rows, then encrypted in place by a start with
/// `keys` set, tokens across it, then a wrong key and no key refused.
async fn encrypts_in_place(url: &str, keys: &str, wrong_keys: &str) {
    let db = load(url, "").unwrap().database().unwrap();
    // The rows as stored, through a store without a key (which neither decrypts nor
    // encrypts anything by itself).
    let raw = || async {
        Store::open(&db, None)
            .await
            .unwrap()
            .raw_keys()
            .await
            .unwrap()
    };
    // Before encryption: rows are the DER, as every earlier release wrote them.
    let plain = start(&load(url, "").unwrap()).await.expect("starts");
    let secret = clients::add(
        &plain.service.store,
        "svc",
        "",
        "portico",
        &plain.service.argon2,
    )
    .await
    .unwrap();
    let before = token(&plain, "svc", &secret).await;
    let rows = plain.service.store.raw_keys().await.unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| is_plain_der(&r.private_key)));
    let kids: Vec<String> = rows.iter().map(|r| r.kid.clone()).collect();
    plain.stop().await;

    // With a key: the same keys, now encrypted; the old token still verifies and new
    // tokens sign.
    let config = load(url, keys).unwrap();
    let svc = start(&config).await.expect("starts with the key");
    let rows = raw().await;
    assert_eq!(rows.iter().map(|r| r.kid.clone()).collect::<Vec<_>>(), kids);
    for r in &rows {
        assert!(r.private_key.starts_with("enc1:"), "{}", r.kid);
        assert!(!is_plain_der(&r.private_key));
        let sealed = STANDARD
            .decode(r.private_key.rsplit(':').next().unwrap())
            .unwrap();
        let der = STANDARD
            .decode(&svc.service.store.list_keys().await.unwrap()[0].private_key)
            .unwrap();
        assert!(!sealed.windows(der.len()).any(|w| w == der.as_slice()));
    }
    assert!(active(&svc, "svc", &secret, &before).await, "old token");
    let after = token(&svc, "svc", &secret).await;
    assert!(active(&svc, "svc", &secret, &after).await, "new token");
    // A rotation under the key is stored encrypted too.
    portico_auth::keys::rotate(
        &svc.service.store,
        &portico_auth::keys::KeyPolicy::from_config(&config),
        None,
        portico_auth::store::KeyGuard::Always,
    )
    .await
    .unwrap()
    .unwrap();
    let rows = raw().await;
    assert_eq!(rows.len(), kids.len() + 1);
    assert!(rows.iter().all(|r| r.private_key.starts_with("enc1:")));
    svc.stop().await;

    // The wrong key, and no key: refused at start, naming the setting.
    let err = start(&load(url, wrong_keys).unwrap())
        .await
        .err()
        .expect("a wrong key refuses to start");
    assert!(err.contains("keys.key_encryption_key"), "{err}");
    let err = start(&load(url, "").unwrap())
        .await
        .err()
        .expect("no key refuses to start");
    assert!(err.contains("keys.key_encryption_key_file"), "{err}");
    assert!(err.contains("encrypted at rest"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keys_are_encrypted_with_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("auth.db");
    let url = format!("sqlite://{}", db.display());
    let (good, wrong) = (dir.path().join("kek"), dir.path().join("other"));
    write_key_file(&good, &format!("{}\n", "ab".repeat(32)), 0o600);
    write_key_file(&wrong, &"cd".repeat(32), 0o640);
    encrypts_in_place(
        &url,
        &format!("key_encryption_key_file = \"{}\"", good.display()),
        &format!("key_encryption_key_file = \"{}\"", wrong.display()),
    )
    .await;
    // Straight from the file: no row holds the DER.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<String> = conn
        .prepare("SELECT private_key FROM auth_signing_keys")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!rows.is_empty());
    for stored in rows {
        assert!(stored.starts_with("enc1:") && !is_plain_der(&stored));
    }
}

#[cfg(unix)]
#[test]
fn a_readable_or_bad_key_file_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("auth.db").display());
    let kek = dir.path().join("kek");
    write_key_file(&kek, &"ab".repeat(32), 0o644);
    let err = load(
        &url,
        &format!("key_encryption_key_file = \"{}\"", kek.display()),
    )
    .unwrap_err();
    assert!(err.contains("at_rest.toml"), "{err}");
    assert!(err.contains("keys.key_encryption_key_file"), "{err}");
    assert!(err.contains("readable by every user"), "{err}");
    assert!(err.contains("at_rest.toml:10:"), "line 10: {err}");
    write_key_file(&kek, "too short", 0o600);
    let err = load(
        &url,
        &format!("key_encryption_key_file = \"{}\"", kek.display()),
    )
    .unwrap_err();
    assert!(err.contains("32"), "{err}");
    let err = load(&url, "key_encryption_key = \"${PORTICO_TEST_NO_SUCH_KEK}\"").unwrap_err();
    assert!(err.contains("keys.key_encryption_key"), "{err}");
    assert!(err.contains("PORTICO_TEST_NO_SUCH_KEK"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keys_are_encrypted_with_a_key_from_the_environment() {
    let Some(pg) = postgres::Schema::create("at_rest").await else {
        return;
    };
    let var = format!("PORTICO_TEST_KEK_{}", std::process::id());
    std::env::set_var(&var, STANDARD.encode([42u8; 32]));
    let wrong = format!("PORTICO_TEST_WRONG_KEK_{}", std::process::id());
    std::env::set_var(&wrong, "01".repeat(32));
    let url = pg.url();
    encrypts_in_place(
        &url,
        &format!("key_encryption_key = \"${{{var}}}\""),
        &format!("key_encryption_key = \"${{{wrong}}}\""),
    )
    .await;
    // Straight from the table: no row holds the DER.
    let rows = pg
        .client
        .query(
            &format!("SELECT private_key FROM {}.auth_signing_keys", pg.name),
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        let stored: String = r.get(0);
        assert!(stored.starts_with("enc1:") && !is_plain_der(&stored));
    }
}
