//! The machine's PostgreSQL for the tests that need one (`PORTICO_TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`): a schema of the test's own, dropped
//! when the test ends, pass or fail. The token service's tests use it from here, the
//! gateway's through `tests/common/postgres.rs`, which includes this file. Without a server a test says SKIP loudly, except
//! under `CI=true`, where it fails.

use std::time::Duration;

pub fn base_url() -> String {
    std::env::var("PORTICO_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let attempt = async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok::<_, tokio_postgres::Error>(client)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A schema of the test's own on the machine's PostgreSQL; `None` (after a loud SKIP) when
/// there is no server, outside CI.
pub struct Schema {
    pub name: String,
    pub client: tokio_postgres::Client,
}

impl Schema {
    pub async fn create(test: &str) -> Option<Schema> {
        let url = base_url();
        let client = match connect(&url).await {
            Ok(c) => c,
            Err(why) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("PostgreSQL at {url} is required under CI=true: {why}");
                }
                eprintln!(
                    "\n====================================================================="
                );
                eprintln!("SKIP {test}: no PostgreSQL at {url}: {why}");
                eprintln!("set PORTICO_TEST_POSTGRES_URL or start PostgreSQL to run this test");
                eprintln!(
                    "=====================================================================\n"
                );
                return None;
            }
        };
        let name = format!(
            "portico_{test}_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create the test's schema");
        Some(Schema { name, client })
    }

    /// The database URL with this schema as the search path.
    pub fn url(&self) -> String {
        let url = base_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-c%20search_path%3D{}", self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (base_url(), self.name.clone());
        // Drop runs inside the test's runtime: clean up from a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = connect(&url).await {
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}
