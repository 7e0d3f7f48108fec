//! Shared by the token service's integration tests.

/// A PostgreSQL schema of its own for one test (`PORTICO_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`), dropped afterwards. Without a server the
/// test says SKIP loudly, except under `CI=true`, where it fails.
pub mod postgres {
    use std::time::Duration;

    pub struct Schema {
        pub name: String,
        pub client: tokio_postgres::Client,
    }

    fn base_url() -> String {
        std::env::var("PORTICO_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    impl Schema {
        pub async fn create(tag: &str) -> Option<Schema> {
            let url = base_url();
            let attempt = async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                Ok::<_, tokio_postgres::Error>(client)
            };
            let client = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(c)) => c,
                outcome => {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    if std::env::var("CI").as_deref() == Ok("true") {
                        panic!("PostgreSQL at {url} is required under CI=true: {why}");
                    }
                    eprintln!("SKIP: no PostgreSQL at {url}: {why}");
                    return None;
                }
            };
            let name = format!("portico_{tag}_{}", std::process::id());
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
                ))
                .await
                .expect("create schema");
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
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok((c, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = c
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                            .await;
                    }
                });
            })
            .join()
            .unwrap();
        }
    }
}
