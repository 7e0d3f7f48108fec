//! The `portico auth` subcommands: serve (the default), check, `keys rotate|list`, and
//! `clients add|list|set|remove|rotate-secret`. `src/main.rs` only hands the parsed arguments
//! here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};

use super::config::{self, AuthConfig};
use super::keys::{self, KeyPolicy};
use super::store::{KeyGuard, Store};
use super::{clients, unix_now};

/// `portico auth [-c FILE] [COMMAND]`.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// The token service's config file.
    #[arg(short, long, default_value = "conf/auth.toml", global = true)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<AuthCommand>,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Serve the token service until SIGTERM or Ctrl-C (the default).
    Serve,
    /// Validate the config file: exit 0 when valid, 2 with every problem when not.
    Check,
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Registered clients.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a new signing key: published now, signing after `keys.publish_ahead`.
    Rotate,
    /// List the keys with their schedule.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client; prints its secret once.
    Add {
        /// The client id.
        id: String,
        /// Allowed scopes, space-separated ("orders:read orders:write").
        #[arg(long, default_value = "")]
        scopes: String,
        /// Allowed audiences, space-separated; the first is the default.
        #[arg(long)]
        audiences: String,
        /// May introspect tokens issued to other clients (a gateway validating opaque
        /// tokens); without it a client introspects only its own.
        #[arg(long)]
        introspect: bool,
    },
    /// Change a client's rights: `--introspect true|false`.
    Set {
        id: String,
        /// Whether it may introspect tokens issued to other clients.
        #[arg(long, action = clap::ArgAction::Set)]
        introspect: Option<bool>,
    },
    /// List the registered clients (never their secrets).
    List,
    /// Remove a client; its tokens turn inactive for introspection.
    Remove { id: String },
    /// Give a client a new secret (printed once); the old one stops working at once.
    RotateSecret { id: String },
}

/// Runs a `portico auth` command.
pub fn run(args: AuthArgs) -> ExitCode {
    let config = match config::load_file(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{} problem(s) found", errors.0.len());
            return ExitCode::from(2);
        }
    };
    let command = args.command.unwrap_or(AuthCommand::Serve);
    let config = &config;
    let result = match command {
        AuthCommand::Serve => super::server::serve_until_signal(config),
        AuthCommand::Check => {
            println!("{}: ok", args.config.display());
            Ok(())
        }
        AuthCommand::Keys { command } => with_store(config, |store| async move {
            match command {
                KeysCommand::Rotate => rotate_keys(config, &store).await,
                KeysCommand::List => list_keys(config, &store).await,
            }
        }),
        AuthCommand::Clients { command } => with_store(config, |store| async move {
            manage_clients(config, &store, command).await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico auth: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs one database operation on a small runtime of its own.
fn with_store<F, Fut>(config: &AuthConfig, f: F) -> Result<(), String>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let store = Store::open(&config.database()?, config.key_encryption_key()?).await?;
        f(store).await
    })
}

fn time(unix: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64))
        .to_string()
}

async fn rotate_keys(config: &AuthConfig, store: &Store) -> Result<(), String> {
    let policy = KeyPolicy::from_config(config);
    let now = unix_now();
    // With no key signing yet no token exists, so there is nothing to publish ahead of.
    let first = !store
        .list_keys()
        .await?
        .iter()
        .any(|r| r.activates_at <= now);
    let rec = keys::rotate(store, &policy, first.then_some(now), KeyGuard::Always)
        .await?
        .ok_or("the key was not stored")?;
    println!(
        "new signing key {} ({}): published now, signs from {}{}",
        rec.kid,
        rec.alg,
        time(rec.activates_at),
        if first {
            " (the first key: at once)"
        } else {
            ""
        }
    );
    println!(
        "running services pick it up within keys.refresh_interval ({})",
        humantime::format_duration(config.keys.refresh_interval)
    );
    Ok(())
}

async fn list_keys(config: &AuthConfig, store: &Store) -> Result<(), String> {
    let policy = KeyPolicy::from_config(config);
    let records = store.list_keys().await?;
    let now = unix_now();
    let (published, _) = keys::schedule(&records, now, &policy);
    let signing = records
        .iter()
        .rev()
        .find(|r| r.activates_at <= now)
        .map(|r| r.kid.clone());
    println!(
        "{:<36} {:<6} {:<21} {:<21} STATE",
        "KID", "ALG", "CREATED", "SIGNS FROM"
    );
    for r in &records {
        let state = if Some(&r.kid) == signing.as_ref() {
            "signing"
        } else if r.activates_at > now {
            "published, not signing yet"
        } else if published.iter().any(|p| p.kid == r.kid) {
            "published until its tokens expire"
        } else {
            "retired"
        };
        println!(
            "{:<36} {:<6} {:<21} {:<21} {state}",
            r.kid,
            r.alg,
            time(r.created_at),
            time(r.activates_at)
        );
    }
    Ok(())
}

async fn manage_clients(
    config: &AuthConfig,
    store: &Store,
    command: ClientsCommand,
) -> Result<(), String> {
    match command {
        ClientsCommand::Add {
            id,
            scopes,
            audiences,
            introspect,
        } => {
            let secret = clients::add(store, &id, &scopes, &audiences, &config.argon2).await?;
            if introspect {
                clients::set_introspect(store, &id, true).await?;
            }
            print_secret(&id, &secret);
        }
        ClientsCommand::Set { id, introspect } => {
            let Some(introspect) = introspect else {
                return Err("nothing to change (use --introspect true|false)".into());
            };
            clients::set_introspect(store, &id, introspect).await?;
            println!(
                "client {id}: {} introspect other clients' tokens",
                if introspect { "may" } else { "may not" }
            );
        }
        ClientsCommand::List => {
            let all = store.list_clients().await?;
            println!(
                "{:<32} {:<21} {:<40} {:<30} RIGHTS",
                "CLIENT_ID", "CREATED", "SCOPES", "AUDIENCES"
            );
            for c in &all {
                println!(
                    "{:<32} {:<21} {:<40} {:<30} {}",
                    c.client_id,
                    time(c.created_at),
                    c.scopes.join(" "),
                    c.audiences.join(" "),
                    if c.introspect { "introspect" } else { "-" }
                );
            }
            eprintln!("{} client(s)", all.len());
        }
        ClientsCommand::Remove { id } => {
            if !store.delete_client(&id).await? {
                return Err(format!("no client `{id}`"));
            }
            println!("removed client {id}");
        }
        ClientsCommand::RotateSecret { id } => {
            let secret = clients::rotate_secret(store, &id, &config.argon2).await?;
            print_secret(&id, &secret);
        }
    }
    Ok(())
}

/// The secret goes to stdout in `key=value` lines a script can read; the warning to stderr.
fn print_secret(id: &str, secret: &str) {
    println!("client_id={id}");
    println!("client_secret={secret}");
    eprintln!("store this secret now: it is not shown again (only its argon2 hash is kept)");
}
