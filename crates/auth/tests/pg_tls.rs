//! The token service's PostgreSQL connections over TLS (rustls) against the machine's
//! server (`PORTICO_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`,
//! with `ssl = on`) and its certificate (`PORTICO_TEST_POSTGRES_CA`, default Debian's
//! snakeoil `/etc/ssl/certs/ssl-cert-snakeoil.pem`, self-signed, so it is its own CA):
//! `require` is encrypted as the server sees it (`pg_stat_ssl`), `verify-ca` accepts the
//! certificate, `verify-full` refuses it when connecting by an address it does not name,
//! and the pool opens `pool_size` connections and replaces the ones that break.

use std::time::Duration;

use portico_auth::config::Database;
use portico_auth::store::Store;

mod support;
use support::postgres;

fn ca() -> String {
    std::env::var("PORTICO_TEST_POSTGRES_CA")
        .unwrap_or_else(|_| "/etc/ssl/certs/ssl-cert-snakeoil.pem".into())
}

/// The schema's URL with more query parameters.
fn url(pg: &postgres::Schema, extra: &str) -> String {
    format!("{}&{extra}", pg.url())
}

async fn open(url: String, pool_size: usize) -> Result<Store, String> {
    tokio::time::timeout(
        Duration::from_secs(20),
        Store::open(&Database::Postgres { url, pool_size }, None),
    )
    .await
    .expect("opens or fails in time")
}

/// The server's certificate, when the test may read it.
fn ca_present() -> bool {
    let present = std::path::Path::new(&ca()).exists();
    if !present {
        eprintln!("SKIP: no CA file {} for the server's certificate", ca());
    }
    present
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_is_encrypted_as_the_server_sees_it() {
    let Some(pg) = postgres::Schema::create("tls_require").await else {
        return;
    };
    let store = open(url(&pg, "sslmode=require"), 2).await.unwrap();
    let pool = store.postgres().unwrap();
    assert!(pool.backend_ssl().await.unwrap(), "pg_stat_ssl says ssl");
    assert!(
        pool.backend_ssl().await.unwrap(),
        "and on the other connection"
    );
    // And the store works over it.
    assert!(store.list_clients().await.unwrap().is_empty());
    // `disable` is plaintext, which is how the check above can tell.
    let plain = open(url(&pg, "sslmode=disable"), 1).await.unwrap();
    assert!(!plain.postgres().unwrap().backend_ssl().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_the_servers_certificate_and_verify_full_checks_the_name() {
    let Some(pg) = postgres::Schema::create("tls_verify").await else {
        return;
    };
    if !ca_present() {
        return;
    }
    let root = format!("sslrootcert={}", ca());
    let store = open(url(&pg, &format!("sslmode=verify-ca&{root}")), 1)
        .await
        .unwrap();
    assert!(store.postgres().unwrap().backend_ssl().await.unwrap());

    // `require` with a CA file checks the chain too (libpq): a CA that did not sign the
    // server's certificate is refused.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, unrelated_ca()).unwrap();
    let err = open(
        url(
            &pg,
            &format!("sslmode=require&sslrootcert={}", other.display()),
        ),
        1,
    )
    .await
    .err()
    .expect("an unrelated CA is refused");
    assert!(err.contains("sslmode=require"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Connected by 127.0.0.1, which the certificate does not name.
    let err = open(url(&pg, &format!("sslmode=verify-full&{root}")), 1)
        .await
        .err()
        .expect("verify-full refuses a certificate without this address");
    assert!(err.contains("sslmode=verify-full"), "{err}");
    assert!(err.contains("does not name this host"), "{err}");
    eprintln!("verify-full by 127.0.0.1, refused as it should be: {err}");

    // By a name the certificate carries (read from it, not assumed), when that name is
    // this machine.
    match certificate_dns_name(&ca()) {
        Some(name) if resolves_to_loopback(&name) => {
            let by_name =
                url(&pg, &format!("sslmode=verify-full&{root}")).replacen("127.0.0.1", &name, 1);
            let store = open(by_name, 1).await.unwrap();
            assert!(store.postgres().unwrap().backend_ssl().await.unwrap());
        }
        other => eprintln!(
            "SKIP (only the verify-full success case): the certificate's name {other:?} \
             is not this machine's loopback, or openssl is missing"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_opens_pool_size_connections_and_replaces_broken_ones() {
    let Some(pg) = postgres::Schema::create("tls_pool").await else {
        return;
    };
    let app = format!("portico_pool_{}", std::process::id());
    let store = open(
        url(&pg, &format!("sslmode=prefer&application_name={app}")),
        3,
    )
    .await
    .unwrap();
    for _ in 0..6 {
        store.list_clients().await.unwrap();
    }
    let pool = store.postgres().unwrap();
    assert_eq!(pool.open_connections().await, 3);
    let count = pg
        .client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(count, 3, "three backends");

    // The server ends them all (a failover, a restart): every request after that still
    // succeeds, on new connections.
    pg.client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..6 {
        store
            .list_clients()
            .await
            .expect("a broken connection is replaced");
    }
    assert_eq!(pool.open_connections().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ca_file_is_a_clear_error() {
    let err = open(
        "postgres://postgres@127.0.0.1:5432/test?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
            .into(),
        1,
    )
    .await
    .err()
    .expect("refused");
    assert!(err.contains("sslrootcert"), "{err}");
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

/// A CA certificate that signed nothing the server has.
fn unrelated_ca() -> String {
    // Any certificate of the system's store: none of them signed the snakeoil one.
    let dir = std::path::Path::new("/etc/ssl/certs");
    std::fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "pem") && !p.ends_with("ssl-cert-snakeoil.pem")
        })
        .find_map(|p| std::fs::read_to_string(p).ok())
        .expect("a CA certificate in /etc/ssl/certs")
}

/// The first DNS name of a PEM certificate's subjectAltName, by `openssl x509`.
fn certificate_dns_name(pem: &str) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", pem])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split([',', '\n'])
        .find_map(|part| part.trim().strip_prefix("DNS:").map(str::to_string))
}

fn resolves_to_loopback(name: &str) -> bool {
    use std::net::ToSocketAddrs;
    (name, 5432)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.all(|a| a.ip().is_loopback()))
}

#[test]
fn bad_tls_or_pool_settings_name_file_line_and_field() {
    let err = portico_auth::config::load_str(
        "t.toml",
        "listen = \"127.0.0.1:0\"\ndatabase_url = \"postgres://u@db.internal/x?sslmode=verify-any\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("t.toml:2:"), "{err}");
    assert!(err.contains("database_url"), "{err}");
    assert!(err.contains("verify-any"), "{err}");
    let err = portico_auth::config::load_str("t.toml", "[postgres]\npool_size = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("t.toml:2:"), "{err}");
    assert!(err.contains("postgres.pool_size"), "{err}");
}
