//! The token service's database: registered clients (argon2 hashes of their secrets, never
//! the secrets), signing keys with their publication schedule, and revoked token ids.
//!
//! SQLite (one file, embedded, zero set-up) or PostgreSQL, so several replicas share
//! clients, keys and revocations. SQLite calls are blocking and run on tokio's blocking
//! pool behind one connection; PostgreSQL uses a pool of `postgres.pool_size` pipelining
//! tokio-postgres connections, each replaced when it breaks, plus a short-lived one for
//! each locked key insertion, all over TLS as `sslmode` says (`pg_tls`).
//! Private signing keys are sealed and opened here when a key-encryption key is
//! configured (`at_rest`), so nothing else handles the envelope.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::at_rest::{self, Kek};
use super::config::Database;
use super::metrics::AUTH_METRICS;
use super::pg_tls::{MakeRustls, PgSettings};

/// A registered machine client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub client_id: String,
    /// PHC string of the argon2id hash.
    pub secret_hash: String,
    pub scopes: Vec<String>,
    /// The first one is the default audience.
    pub audiences: Vec<String>,
    /// May introspect tokens issued to other clients (a gateway); without it a client
    /// introspects only its own.
    pub introspect: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A signing key. The private half is base64 DER (PKCS#8 for EC and Ed25519, PKCS#1 for
/// RSA), stored as such or, with a key-encryption key configured, in an AES-256-GCM
/// envelope (`at_rest`); `Debug` leaves it out.
#[derive(Clone)]
pub struct KeyRecord {
    pub kid: String,
    pub alg: String,
    pub private_key: String,
    /// The public JWK as JSON, exactly as published.
    pub public_jwk: String,
    pub created_at: i64,
    /// Unix time from which this key signs; published from `created_at`.
    pub activates_at: i64,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

/// When a key insertion may happen, checked under a database lock so that replicas
/// running the same schedule add one key, not one each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyGuard {
    Always,
    /// Only if the newest key (by `created_at`) is still this one (`None`: no key yet).
    NewestIs(Option<String>),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS auth_clients (
    client_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    audiences TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    private_key TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activates_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
";

/// Columns added after the first release, each applied once to older databases.
/// (`auth_clients.introspect`: the right to introspect other clients' tokens.)
const SQLITE_INTROSPECT: &str =
    "ALTER TABLE auth_clients ADD COLUMN introspect BOOLEAN NOT NULL DEFAULT FALSE";
const PG_MIGRATIONS: &str =
    "ALTER TABLE auth_clients ADD COLUMN IF NOT EXISTS introspect BOOLEAN NOT NULL DEFAULT FALSE;";

const CLIENT_COLUMNS: &str =
    "client_id, secret_hash, scopes, audiences, introspect, created_at, updated_at";

/// Any key; the advisory lock that serialises schema creation and key insertion on
/// PostgreSQL ("portico" in ASCII).
const PG_LOCK: i64 = 0x0070_6f72_7469_636f;

/// The open database, and the key that encrypts signing keys in it (if configured).
#[derive(Clone)]
pub struct Store {
    db: Db,
    kek: Option<Arc<Kek>>,
}

#[derive(Clone)]
enum Db {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(Arc<Pg>),
}

/// A pool of PostgreSQL connections, each pipelining the queries given to it, taken in
/// turn; a broken one is replaced when its turn comes.
pub struct Pg {
    settings: PgSettings,
    tls: MakeRustls,
    slots: Vec<tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>>,
    next: AtomicUsize,
}

fn db_err(e: impl std::fmt::Display) -> String {
    format!("database: {e}")
}

fn split(words: &str) -> Vec<String> {
    words.split_whitespace().map(str::to_string).collect()
}

impl Store {
    /// Opens (creating when needed) the database and its tables. With `kek`, signing keys
    /// are encrypted at rest: rows written without encryption are encrypted in place here
    /// (each by a compare-and-set, so replicas starting together do not clash).
    pub async fn open(db: &Database, kek: Option<Kek>) -> Result<Store, String> {
        let db = match db {
            Database::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || open_sqlite(&path))
                    .await
                    .map_err(db_err)??
            }
            Database::Postgres { url, pool_size } => {
                let settings = PgSettings::parse(url).map_err(|e| format!("database_url: {e}"))?;
                let tls = settings
                    .connector()
                    .map_err(|e| format!("database_url: {e}"))?;
                let pg = Pg {
                    settings,
                    tls,
                    slots: (0..(*pool_size).max(1))
                        .map(|_| tokio::sync::Mutex::new(None))
                        .collect(),
                    next: AtomicUsize::new(0),
                };
                // Replicas starting together would race on CREATE TABLE IF NOT EXISTS.
                let (mut client, _task) = pg.dedicated().await?;
                let tx = client.transaction().await.map_err(db_err)?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_LOCK])
                    .await
                    .map_err(db_err)?;
                tx.batch_execute(SCHEMA).await.map_err(db_err)?;
                tx.batch_execute(PG_MIGRATIONS).await.map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Db::Postgres(Arc::new(pg))
            }
        };
        let store = Store {
            db,
            kek: kek.map(Arc::new),
        };
        if store.kek.is_some() {
            store.encrypt_plain_keys().await?;
        }
        Ok(store)
    }

    /// The PostgreSQL pool, if this is PostgreSQL.
    pub fn postgres(&self) -> Option<&Pg> {
        match &self.db {
            Db::Postgres(pg) => Some(pg),
            Db::Sqlite(_) => None,
        }
    }

    /// The id of the configured key-encryption key, if any.
    pub fn key_encryption_key_id(&self) -> Option<&str> {
        self.kek.as_deref().map(Kek::id)
    }

    /// Encrypts the private keys stored before a key-encryption key was configured; the
    /// number encrypted. A row another replica changed meanwhile is left to it.
    pub async fn encrypt_plain_keys(&self) -> Result<usize, String> {
        let Some(kek) = self.kek.clone() else {
            return Ok(0);
        };
        let plain: Vec<(String, String)> = self
            .raw_keys()
            .await?
            .into_iter()
            .filter(|r| !at_rest::is_sealed(&r.private_key))
            .map(|r| (r.kid, r.private_key))
            .collect();
        let mut done = 0;
        for (kid, old) in plain {
            let new = kek.seal(&kid, &old)?;
            let n = match &self.db {
                Db::Sqlite(c) => {
                    Self::sqlite(c, move |c| {
                        c.execute(
                            "UPDATE auth_signing_keys SET private_key = ?1 \
                             WHERE kid = ?2 AND private_key = ?3",
                            rusqlite::params![new, kid, old],
                        )
                        .map(|n| n as u64)
                    })
                    .await?
                }
                Db::Postgres(pg) => pg
                    .client()
                    .await?
                    .execute(
                        "UPDATE auth_signing_keys SET private_key = $1 \
                         WHERE kid = $2 AND private_key = $3",
                        &[&new, &kid, &old],
                    )
                    .await
                    .map_err(db_err)?,
            };
            done += n as usize;
        }
        if done > 0 {
            log::info!(
                "{}",
                serde_json::json!({
                    "event": "signing_keys_encrypted_at_rest",
                    "count": done,
                    "key_id": kek.id(),
                })
            );
        }
        Ok(done)
    }

    async fn sqlite<T: Send + 'static>(
        conn: &Arc<Mutex<rusqlite::Connection>>,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard).map_err(db_err)
        })
        .await
        .map_err(db_err)?
    }

    pub async fn get_client(&self, client_id: &str) -> Result<Option<ClientRecord>, String> {
        let id = client_id.to_string();
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    use rusqlite::OptionalExtension;
                    c.query_row(
                        &format!("SELECT {CLIENT_COLUMNS} FROM auth_clients WHERE client_id = ?1"),
                        [&id],
                        client_from_sqlite,
                    )
                    .optional()
                })
                .await
            }
            Db::Postgres(pg) => {
                let row = pg
                    .client()
                    .await?
                    .query_opt(
                        &format!("SELECT {CLIENT_COLUMNS} FROM auth_clients WHERE client_id = $1"),
                        &[&id],
                    )
                    .await
                    .map_err(db_err)?;
                Ok(row.map(|r| client_from_pg(&r)))
            }
        }
    }

    pub async fn list_clients(&self) -> Result<Vec<ClientRecord>, String> {
        let q = format!("SELECT {CLIENT_COLUMNS} FROM auth_clients ORDER BY client_id");
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    let mut stmt = c.prepare(&q)?;
                    let rows = stmt.query_map([], client_from_sqlite)?;
                    rows.collect()
                })
                .await
            }
            Db::Postgres(pg) => {
                let rows = pg.client().await?.query(&q, &[]).await.map_err(db_err)?;
                Ok(rows.iter().map(client_from_pg).collect())
            }
        }
    }

    /// Adds a client; false when the id is taken.
    pub async fn insert_client(&self, rec: &ClientRecord) -> Result<bool, String> {
        let rec = rec.clone();
        let scopes = rec.scopes.join(" ");
        let audiences = rec.audiences.join(" ");
        let n = match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(
                        &format!(
                            "INSERT INTO auth_clients ({CLIENT_COLUMNS}) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING"
                        ),
                        rusqlite::params![
                            rec.client_id,
                            rec.secret_hash,
                            scopes,
                            audiences,
                            rec.introspect,
                            rec.created_at,
                            rec.updated_at
                        ],
                    )
                    .map(|n| n as u64)
                })
                .await?
            }
            Db::Postgres(pg) => pg
                .client()
                .await?
                .execute(
                    &format!(
                        "INSERT INTO auth_clients ({CLIENT_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
                    ),
                    &[
                        &rec.client_id,
                        &rec.secret_hash,
                        &scopes,
                        &audiences,
                        &rec.introspect,
                        &rec.created_at,
                        &rec.updated_at,
                    ],
                )
                .await
                .map_err(db_err)?,
        };
        Ok(n == 1)
    }

    /// Replaces a client's secret hash; false when there is no such client.
    pub async fn update_secret(
        &self,
        client_id: &str,
        hash: &str,
        now: i64,
    ) -> Result<bool, String> {
        let (id, hash) = (client_id.to_string(), hash.to_string());
        let n = match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(
                        "UPDATE auth_clients SET secret_hash = ?1, updated_at = ?2 WHERE client_id = ?3",
                        rusqlite::params![hash, now, id],
                    )
                    .map(|n| n as u64)
                })
                .await?
            }
            Db::Postgres(pg) => pg
                .client()
                .await?
                .execute(
                    "UPDATE auth_clients SET secret_hash = $1, updated_at = $2 WHERE client_id = $3",
                    &[&hash, &now, &id],
                )
                .await
                .map_err(db_err)?,
        };
        Ok(n == 1)
    }

    /// Grants or withdraws the `introspect` right; false when there is no such client.
    pub async fn set_introspect(
        &self,
        client_id: &str,
        introspect: bool,
        now: i64,
    ) -> Result<bool, String> {
        let id = client_id.to_string();
        let n = match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(
                        "UPDATE auth_clients SET introspect = ?1, updated_at = ?2 \
                         WHERE client_id = ?3",
                        rusqlite::params![introspect, now, id],
                    )
                    .map(|n| n as u64)
                })
                .await?
            }
            Db::Postgres(pg) => pg
                .client()
                .await?
                .execute(
                    "UPDATE auth_clients SET introspect = $1, updated_at = $2 \
                     WHERE client_id = $3",
                    &[&introspect, &now, &id],
                )
                .await
                .map_err(db_err)?,
        };
        Ok(n == 1)
    }

    /// Removes a client; false when there is no such client.
    pub async fn delete_client(&self, client_id: &str) -> Result<bool, String> {
        let id = client_id.to_string();
        let n = match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute("DELETE FROM auth_clients WHERE client_id = ?1", [&id])
                        .map(|n| n as u64)
                })
                .await?
            }
            Db::Postgres(pg) => pg
                .client()
                .await?
                .execute("DELETE FROM auth_clients WHERE client_id = $1", &[&id])
                .await
                .map_err(db_err)?,
        };
        Ok(n == 1)
    }

    /// Every signing key, oldest activation first, with its private key decrypted; an
    /// error (naming the setting) when one does not decrypt with the configured key.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, String> {
        let mut records = self.raw_keys().await?;
        for r in &mut records {
            r.private_key = at_rest::open(self.kek.as_deref(), &r.kid, &r.private_key)?;
        }
        Ok(records)
    }

    /// Every signing key as stored (private keys possibly encrypted).
    pub async fn raw_keys(&self) -> Result<Vec<KeyRecord>, String> {
        const Q: &str = "SELECT kid, alg, private_key, public_jwk, created_at, activates_at \
                         FROM auth_signing_keys ORDER BY activates_at, created_at, kid";
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, |c| {
                    let mut stmt = c.prepare(Q)?;
                    let rows = stmt.query_map([], |r| {
                        Ok(KeyRecord {
                            kid: r.get(0)?,
                            alg: r.get(1)?,
                            private_key: r.get(2)?,
                            public_jwk: r.get(3)?,
                            created_at: r.get(4)?,
                            activates_at: r.get(5)?,
                        })
                    })?;
                    rows.collect()
                })
                .await
            }
            Db::Postgres(pg) => {
                let rows = pg.client().await?.query(Q, &[]).await.map_err(db_err)?;
                Ok(rows
                    .iter()
                    .map(|r| KeyRecord {
                        kid: r.get(0),
                        alg: r.get(1),
                        private_key: r.get(2),
                        public_jwk: r.get(3),
                        created_at: r.get(4),
                        activates_at: r.get(5),
                    })
                    .collect())
            }
        }
    }

    /// Inserts a key if `guard` still holds, atomically; true when inserted.
    pub async fn insert_key(&self, rec: &KeyRecord, guard: KeyGuard) -> Result<bool, String> {
        const NEWEST_SQLITE: &str =
            "SELECT kid FROM auth_signing_keys ORDER BY created_at DESC, kid DESC LIMIT 1";
        let mut rec = rec.clone();
        if let Some(kek) = &self.kek {
            rec.private_key = kek.seal(&rec.kid, &rec.private_key)?;
        }
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    use rusqlite::OptionalExtension;
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    if let KeyGuard::NewestIs(expected) = &guard {
                        let newest: Option<String> =
                            tx.query_row(NEWEST_SQLITE, [], |r| r.get(0)).optional()?;
                        if &newest != expected {
                            return Ok(false);
                        }
                    }
                    tx.execute(
                        "INSERT INTO auth_signing_keys \
                         (kid, alg, private_key, public_jwk, created_at, activates_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        rusqlite::params![
                            rec.kid,
                            rec.alg,
                            rec.private_key,
                            rec.public_jwk,
                            rec.created_at,
                            rec.activates_at
                        ],
                    )?;
                    tx.commit()?;
                    Ok(true)
                })
                .await
            }
            Db::Postgres(pg) => {
                let (mut client, _task) = pg.dedicated().await?;
                let tx = client.transaction().await.map_err(db_err)?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PG_LOCK])
                    .await
                    .map_err(db_err)?;
                if let KeyGuard::NewestIs(expected) = &guard {
                    let newest: Option<String> = tx
                        .query_opt(NEWEST_SQLITE, &[])
                        .await
                        .map_err(db_err)?
                        .map(|r| r.get(0));
                    if &newest != expected {
                        return Ok(false);
                    }
                }
                tx.execute(
                    "INSERT INTO auth_signing_keys \
                     (kid, alg, private_key, public_jwk, created_at, activates_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &rec.kid,
                        &rec.alg,
                        &rec.private_key,
                        &rec.public_jwk,
                        &rec.created_at,
                        &rec.activates_at,
                    ],
                )
                .await
                .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                Ok(true)
            }
        }
    }

    /// Deletes retired keys.
    pub async fn delete_keys(&self, kids: &[String]) -> Result<(), String> {
        for kid in kids {
            let kid = kid.clone();
            match &self.db {
                Db::Sqlite(c) => {
                    Self::sqlite(c, move |c| {
                        c.execute("DELETE FROM auth_signing_keys WHERE kid = ?1", [&kid])
                    })
                    .await?;
                }
                Db::Postgres(pg) => {
                    pg.client()
                        .await?
                        .execute("DELETE FROM auth_signing_keys WHERE kid = $1", &[&kid])
                        .await
                        .map_err(db_err)?;
                }
            }
        }
        Ok(())
    }

    /// Records a revoked token id until the token would have expired anyway.
    pub async fn revoke(&self, jti: &str, expires_at: i64) -> Result<(), String> {
        let jti = jti.to_string();
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(
                        "INSERT INTO auth_revoked_tokens (jti, expires_at) VALUES (?1, ?2) \
                         ON CONFLICT DO NOTHING",
                        rusqlite::params![jti, expires_at],
                    )
                })
                .await?;
            }
            Db::Postgres(pg) => {
                pg.client()
                    .await?
                    .execute(
                        "INSERT INTO auth_revoked_tokens (jti, expires_at) VALUES ($1, $2) \
                         ON CONFLICT DO NOTHING",
                        &[&jti, &expires_at],
                    )
                    .await
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, String> {
        let jti = jti.to_string();
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM auth_revoked_tokens WHERE jti = ?1",
                        [&jti],
                        |r| r.get::<_, i64>(0),
                    )
                    .map(|n| n > 0)
                })
                .await
            }
            Db::Postgres(pg) => Ok(pg
                .client()
                .await?
                .query_opt("SELECT 1 FROM auth_revoked_tokens WHERE jti = $1", &[&jti])
                .await
                .map_err(db_err)?
                .is_some()),
        }
    }

    /// The revoked token ids whose tokens have not expired at `now`, with their `exp`,
    /// oldest expiry first.
    pub async fn list_revoked(&self, now: i64) -> Result<Vec<(String, i64)>, String> {
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    let mut stmt = c.prepare(
                        "SELECT jti, expires_at FROM auth_revoked_tokens \
                         WHERE expires_at >= ?1 ORDER BY expires_at, jti",
                    )?;
                    let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect()
                })
                .await
            }
            Db::Postgres(pg) => Ok(pg
                .client()
                .await?
                .query(
                    "SELECT jti, expires_at FROM auth_revoked_tokens \
                     WHERE expires_at >= $1 ORDER BY expires_at, jti",
                    &[&now],
                )
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()),
        }
    }

    /// Forgets revocations of tokens that expired before `before`.
    pub async fn purge_revoked(&self, before: i64) -> Result<u64, String> {
        match &self.db {
            Db::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(
                        "DELETE FROM auth_revoked_tokens WHERE expires_at < ?1",
                        [before],
                    )
                    .map(|n| n as u64)
                })
                .await
            }
            Db::Postgres(pg) => pg
                .client()
                .await?
                .execute(
                    "DELETE FROM auth_revoked_tokens WHERE expires_at < $1",
                    &[&before],
                )
                .await
                .map_err(db_err),
        }
    }
}

impl Pg {
    /// The next pool connection, replacing it first if it broke.
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            *slot = None;
            AUTH_METRICS.db_pool_open.dec();
        }
        let (client, _task) = self.dedicated().await?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        AUTH_METRICS.db_pool_open.inc();
        Ok(client)
    }

    /// The `sslmode` in force (from the URL, or the loopback rule).
    pub fn sslmode(&self) -> &'static str {
        self.settings.mode.as_str()
    }

    /// Whether a pool connection is encrypted, as the server sees it (`pg_stat_ssl`).
    pub async fn backend_ssl(&self) -> Result<bool, String> {
        self.client()
            .await?
            .query_one(
                "SELECT COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .map_err(db_err)
    }

    /// How many pool connections are open now (a test and diagnostic aid).
    pub async fn open_connections(&self) -> usize {
        let mut n = 0;
        for slot in &self.slots {
            if slot.lock().await.as_ref().is_some_and(|c| !c.is_closed()) {
                n += 1;
            }
        }
        n
    }

    /// A new connection whose I/O task runs on the current runtime until it is dropped.
    async fn dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), String> {
        let connected = self.settings.config.connect(self.tls.clone()).await;
        AUTH_METRICS
            .db_connects
            .with_label_values(&[if connected.is_ok() { "ok" } else { "error" }])
            .inc();
        let (client, connection) = connected.map_err(|e| {
            let mut msg = format!(
                "cannot connect to PostgreSQL at {}: {e}",
                self.settings.describe()
            );
            if let Some(source) = std::error::Error::source(&e) {
                let source = source.to_string();
                if !msg.contains(&source) {
                    msg.push_str(&format!(": {source}"));
                }
                if source.contains("NotValidForName") || source.contains("not valid for name") {
                    msg.push_str(
                        " (the server's certificate does not name this host: connect by a \
                         name it carries, or use sslmode=verify-ca)",
                    );
                }
            }
            msg
        })?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::warn!("PostgreSQL connection closed: {e}");
            }
        });
        Ok((client, task))
    }
}

fn open_sqlite(path: &Path) -> Result<Db, String> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            private_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    // The file holds private signing keys. It is made owner-only *before* SQLite opens
    // it, because SQLite creates the `-wal` and `-shm` files with the database file's
    // mode: a database made 0600 afterwards would leave them readable by everyone.
    private_files(path)?;
    let conn = rusqlite::Connection::open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // WAL lets the CLI write while the service reads; the busy timeout makes the
    // service and the CLI wait for each other's short transactions instead of failing.
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db_err)?;
    conn.execute_batch(SCHEMA).map_err(db_err)?;
    let has_introspect = conn
        .prepare("SELECT 1 FROM pragma_table_info('auth_clients') WHERE name = 'introspect'")
        .and_then(|mut s| s.exists([]))
        .map_err(db_err)?;
    if !has_introspect {
        conn.execute_batch(SQLITE_INTROSPECT).map_err(db_err)?;
    }
    Ok(Db::Sqlite(Arc::new(Mutex::new(conn))))
}

/// Creates a directory for the database, readable by its owner only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates the database file owner-only (0600) if it does not exist, and makes an
/// existing one, with its `-wal` and `-shm` files, owner-only too.
fn private_files(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let mut all = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            all.push(name.into());
        }
        for file in all {
            match std::fs::metadata(&file) {
                Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| format!("cannot make {} owner-only: {e}", file.display()))?;
                }
                _ => {}
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn client_from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRecord> {
    Ok(ClientRecord {
        client_id: r.get(0)?,
        secret_hash: r.get(1)?,
        scopes: split(&r.get::<_, String>(2)?),
        audiences: split(&r.get::<_, String>(3)?),
        introspect: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

fn client_from_pg(r: &tokio_postgres::Row) -> ClientRecord {
    ClientRecord {
        client_id: r.get(0),
        secret_hash: r.get(1),
        scopes: split(r.get::<_, &str>(2)),
        audiences: split(r.get::<_, &str>(3)),
        introspect: r.get(4),
        created_at: r.get(5),
        updated_at: r.get(6),
    }
}
