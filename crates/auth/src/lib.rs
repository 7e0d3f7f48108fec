//! The OAuth2 token service (`portico auth`): an authorization server for machine clients
//! that issues RFC 9068 JWT access tokens by the client credentials grant, publishes its
//! keys as a JWKS with rotation that never fails a request, and answers introspection and
//! revocation. Clients, keys and revocations live in SQLite or PostgreSQL, so replicas
//! share them.
//!
//! `config` is the file format, `store` the database, `keys` signing keys and rotation,
//! `oauth` the endpoints, `limiter` the limits on client authentication, `server` the
//! HTTP listeners (public and admin), `cli` the subcommands.

pub mod at_rest;
pub mod cli;
pub mod clients;
pub mod config;
pub mod keys;
pub mod limiter;
pub mod metrics;
pub mod oauth;
pub mod pg_tls;
pub mod secrets;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;

pub use config::AuthConfig;
pub use server::{start, Running};

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Starts a token service for `portico demo` on 127.0.0.1 (ephemeral port) with SQLite in
/// `dir`, in a background thread with its own runtime, and registers client `service-a`
/// (scopes `orders:read orders:write inventory:read`, audience `portico`) with a fresh
/// secret. Returns the address and that secret. It has no admin listener of its own: its
/// metrics are in the process's registry, on the gateway's admin `/metrics`.
pub fn spawn_for_demo(dir: &Path) -> Result<(SocketAddr, String), String> {
    let config = AuthConfig {
        listen: "127.0.0.1:0".into(),
        admin_listen: "off".into(),
        database_url: format!("sqlite://{}", dir.join("auth.db").display()),
        ..AuthConfig::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("portico-demo-auth".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the token service: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = async {
                    let running = start(&config).await?;
                    let store = &running.service.store;
                    let secret = match store.get_client("service-a").await? {
                        Some(_) => {
                            clients::rotate_secret(store, "service-a", &config.argon2).await?
                        }
                        None => {
                            clients::add(
                                store,
                                "service-a",
                                "orders:read orders:write inventory:read",
                                "portico",
                                &config.argon2,
                            )
                            .await?
                        }
                    };
                    Ok::<_, String>((running, secret))
                }
                .await;
                match started {
                    Ok((running, secret)) => {
                        let _ = tx.send(Ok((running.addr, secret)));
                        // Serve for as long as the process lives.
                        std::future::pending::<()>().await;
                        drop(running);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| format!("cannot start the token service: {e}"))?;
    rx.recv().map_err(|e| format!("token service: {e}"))?
}
