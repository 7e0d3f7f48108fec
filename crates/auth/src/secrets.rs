//! Client secrets: generation (256 random bits), argon2id hashing with the configured cost,
//! and verification. Hashing is deliberately slow, so callers run it on the blocking pool
//! and bound how many run at once.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use base64::Engine;

use super::config::Argon2Cost;

/// A new client secret: 32 random bytes, base64url without padding (43 characters).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hasher(cost: &Argon2Cost) -> Result<Argon2<'static>, String> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .map_err(|e| format!("invalid argon2 cost: {e}"))?;
    Ok(Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// The PHC string (`$argon2id$v=19$m=…`) of a secret; it carries its own cost, so
/// changing the configured cost affects only hashes made afterwards.
pub fn hash_secret(secret: &str, cost: &Argon2Cost) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    hasher(cost)?
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash secret: {e}"))
}

/// Whether `secret` matches the PHC string (in constant time, by argon2).
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        log::error!("a stored secret hash is not a valid PHC string");
        return false;
    };
    Argon2::default()
        .verify_password(secret.as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let cost = Argon2Cost {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let secret = generate_secret();
        assert_eq!(secret.len(), 43);
        let phc = hash_secret(&secret, &cost).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(verify_secret(&secret, &phc));
        assert!(!verify_secret("wrong", &phc));
        assert!(!verify_secret(&secret, "not a hash"));
    }
}
