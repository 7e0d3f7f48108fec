//! Managing registered clients (used by the CLI and the demo): validation of ids, scopes
//! and audiences, and secret generation. A new secret is returned to the caller once and
//! only its argon2 hash is stored.

use super::config::Argon2Cost;
use super::secrets;
use super::store::{ClientRecord, Store};
use super::unix_now;

/// Client ids are kept to a conservative alphabet so they are safe in logs, metrics
/// labels and Basic credentials.
pub fn check_client_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "client id `{id}` must be 1–128 characters of A–Z, a–z, 0–9, `.`, `_`, `-`, `~`"
        ))
    }
}

/// Splits a space-separated list, checking each word.
pub fn words(list: &str, what: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for w in list.split_whitespace() {
        // RFC 6749 §3.3 scope-token characters; audiences use the same rule.
        let ok = w
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(format!("{what} `{w}` contains a character not allowed"));
        }
        if !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    Ok(out)
}

/// Registers a client and returns its new secret.
pub async fn add(
    store: &Store,
    client_id: &str,
    scopes: &str,
    audiences: &str,
    cost: &Argon2Cost,
) -> Result<String, String> {
    check_client_id(client_id)?;
    let scopes = words(scopes, "scope")?;
    let audiences = words(audiences, "audience")?;
    if audiences.is_empty() {
        return Err("at least one audience is required (the first is the default)".into());
    }
    let secret = secrets::generate_secret();
    let hash = hash_blocking(&secret, cost).await?;
    let now = unix_now();
    let rec = ClientRecord {
        client_id: client_id.to_string(),
        secret_hash: hash,
        scopes,
        audiences,
        introspect: false,
        created_at: now,
        updated_at: now,
    };
    if store.insert_client(&rec).await? {
        Ok(secret)
    } else {
        Err(format!("client `{client_id}` already exists"))
    }
}

/// Gives a client a new secret (the old one stops working at once) and returns it.
pub async fn rotate_secret(
    store: &Store,
    client_id: &str,
    cost: &Argon2Cost,
) -> Result<String, String> {
    let secret = secrets::generate_secret();
    let hash = hash_blocking(&secret, cost).await?;
    if store.update_secret(client_id, &hash, unix_now()).await? {
        Ok(secret)
    } else {
        Err(format!("no client `{client_id}`"))
    }
}

/// Grants (or withdraws) the right to introspect tokens issued to other clients, which a
/// gateway validating opaque tokens needs; every client may introspect its own.
pub async fn set_introspect(store: &Store, client_id: &str, allowed: bool) -> Result<(), String> {
    if store.set_introspect(client_id, allowed, unix_now()).await? {
        Ok(())
    } else {
        Err(format!("no client `{client_id}`"))
    }
}

async fn hash_blocking(secret: &str, cost: &Argon2Cost) -> Result<String, String> {
    let (secret, cost) = (secret.to_string(), cost.clone());
    tokio::task::spawn_blocking(move || secrets::hash_secret(&secret, &cost))
        .await
        .map_err(|e| e.to_string())?
}
