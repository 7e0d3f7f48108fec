//! Signing keys: generation (P-256, Ed25519, RSA, all in-process with RustCrypto), the
//! publication schedule that makes rotation safe, and the in-memory key set each request
//! reads through one `ArcSwap` load.
//!
//! A key's life: created and published in the JWKS at `created_at`; signs from
//! `activates_at` (= created + `publish_ahead`) until the next key activates; stays
//! published until every token it signed has expired (plus the refresh interval, for a
//! replica that noticed the new key late, and `retire_grace`), then is deleted. Every
//! replica derives the same schedule from the database, so they agree without talking.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::json;

use super::config::{Algorithm, AuthConfig};
use super::store::{KeyGuard, KeyRecord, Store};
use super::unix_now;

/// The rotation settings, in seconds.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    pub algorithm: Algorithm,
    pub rsa_bits: usize,
    pub token_lifetime: i64,
    pub publish_ahead: i64,
    pub rotate_every: Option<i64>,
    pub refresh_interval: Duration,
    pub retire_grace: i64,
}

impl KeyPolicy {
    pub fn from_config(c: &AuthConfig) -> KeyPolicy {
        let secs = |d: Duration| d.as_secs_f64().ceil() as i64;
        KeyPolicy {
            algorithm: c.tokens.algorithm,
            rsa_bits: c.tokens.rsa_bits,
            token_lifetime: secs(c.tokens.lifetime),
            publish_ahead: secs(c.keys.publish_ahead),
            rotate_every: c.keys.rotate_every.map(secs),
            refresh_interval: c.keys.refresh_interval,
            retire_grace: secs(c.keys.retire_grace),
        }
    }

    /// How long a key stays published after its successor started signing.
    fn retention(&self) -> i64 {
        self.token_lifetime + self.refresh_interval.as_secs_f64().ceil() as i64 + self.retire_grace
    }
}

/// A key that signs, or will.
pub struct Signer {
    pub kid: String,
    pub alg: jsonwebtoken::Algorithm,
    pub key: EncodingKey,
    pub activates_at: i64,
}

/// The keys as of the last refresh.
pub struct KeySet {
    /// Oldest activation first.
    signers: Vec<Signer>,
    /// Published keys by kid, for introspection and revocation.
    verifiers: HashMap<String, (jsonwebtoken::Algorithm, DecodingKey)>,
    /// The rendered JWKS document.
    pub jwks: bytes::Bytes,
}

impl KeySet {
    /// The key that signs at `now`: the one activated last.
    pub fn signer(&self, now: i64) -> Option<&Signer> {
        self.signers.iter().rev().find(|k| k.activates_at <= now)
    }

    pub fn verifier(&self, kid: &str) -> Option<&(jsonwebtoken::Algorithm, DecodingKey)> {
        self.verifiers.get(kid)
    }

    pub fn kids(&self) -> Vec<String> {
        self.verifiers.keys().cloned().collect()
    }

    fn build(records: &[&KeyRecord]) -> Result<KeySet, String> {
        let mut signers = Vec::new();
        let mut verifiers = HashMap::new();
        let mut jwks = Vec::new();
        for r in records {
            let alg = Algorithm::parse(&r.alg)
                .ok_or_else(|| format!("key {} has unknown algorithm {}", r.kid, r.alg))?;
            let der = STANDARD
                .decode(&r.private_key)
                .map_err(|e| format!("key {}: bad private key encoding: {e}", r.kid))?;
            let key = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_der(&der),
                Algorithm::EdDSA => EncodingKey::from_ed_der(&der),
                Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
            };
            let jwk_value: serde_json::Value = serde_json::from_str(&r.public_jwk)
                .map_err(|e| format!("key {}: bad public JWK: {e}", r.kid))?;
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk_value.clone())
                .map_err(|e| format!("key {}: bad public JWK: {e}", r.kid))?;
            let decoding = DecodingKey::from_jwk(&jwk)
                .map_err(|e| format!("key {}: bad public JWK: {e}", r.kid))?;
            signers.push(Signer {
                kid: r.kid.clone(),
                alg: alg.jwt(),
                key,
                activates_at: r.activates_at,
            });
            verifiers.insert(r.kid.clone(), (alg.jwt(), decoding));
            jwks.push(jwk_value);
        }
        let body = serde_json::to_vec(&json!({ "keys": jwks })).map_err(|e| e.to_string())?;
        Ok(KeySet {
            signers,
            verifiers,
            jwks: body.into(),
        })
    }
}

/// Which stored keys to publish and which to delete at `now`. `records` is sorted by
/// activation.
pub fn schedule<'a>(
    records: &'a [KeyRecord],
    now: i64,
    policy: &KeyPolicy,
) -> (Vec<&'a KeyRecord>, Vec<String>) {
    let mut published = Vec::new();
    let mut retired = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let successor = records[i + 1..]
            .iter()
            .map(|s| s.activates_at)
            .find(|&a| a <= now);
        match successor {
            Some(s) if now >= s + policy.retention() => retired.push(r.kid.clone()),
            _ => published.push(r),
        }
    }
    (published, retired)
}

/// Makes a new key of `alg`, published now and signing from `activates_at`.
pub fn generate(
    alg: Algorithm,
    rsa_bits: usize,
    now: i64,
    activates_at: i64,
) -> Result<KeyRecord, String> {
    use rsa::rand_core::{OsRng, RngCore};
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .get(..10)
        .unwrap_or("key")
        .replace('-', "");
    let mut tag = [0u8; 9];
    OsRng.fill_bytes(&mut tag);
    let kid = format!(
        "{}-{date}-{}",
        alg.as_str().to_ascii_lowercase(),
        URL_SAFE_NO_PAD.encode(tag)
    );
    let (der, mut jwk) = match alg {
        Algorithm::ES256 => {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            use p256::pkcs8::EncodePrivateKey;
            let secret = p256::SecretKey::random(&mut OsRng);
            let der = secret
                .to_pkcs8_der()
                .map_err(|e| format!("cannot encode P-256 key: {e}"))?;
            let point = secret.public_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err("P-256 public key has no coordinates".into());
            };
            (
                der.as_bytes().to_vec(),
                json!({ "kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y) }),
            )
        }
        Algorithm::EdDSA => {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            let mut seed = [0u8; 32];
            OsRng.fill_bytes(&mut seed);
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let der = key
                .to_pkcs8_der()
                .map_err(|e| format!("cannot encode Ed25519 key: {e}"))?;
            (
                der.as_bytes().to_vec(),
                json!({ "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()) }),
            )
        }
        Algorithm::RS256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPrivateKey::new(&mut OsRng, rsa_bits)
                .map_err(|e| format!("cannot generate RSA key: {e}"))?;
            let der = key
                .to_pkcs1_der()
                .map_err(|e| format!("cannot encode RSA key: {e}"))?;
            (
                der.as_bytes().to_vec(),
                json!({ "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()) }),
            )
        }
    };
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.as_str());
    jwk["use"] = json!("sig");
    Ok(KeyRecord {
        kid,
        alg: alg.as_str().to_string(),
        private_key: STANDARD.encode(der),
        public_jwk: jwk.to_string(),
        created_at: now,
        activates_at,
    })
}

/// Generates a key off the async threads (RSA takes a while) and inserts it if `guard`
/// still holds. Returns the new key's kid, or `None` when the guard failed (another
/// replica rotated first).
pub async fn rotate(
    store: &Store,
    policy: &KeyPolicy,
    activates_at: Option<i64>,
    guard: KeyGuard,
) -> Result<Option<KeyRecord>, String> {
    let now = unix_now();
    // `now` is truncated to the second: one more keeps the full publish_ahead.
    let activates = activates_at.unwrap_or(now + policy.publish_ahead + 1);
    let (alg, bits) = (policy.algorithm, policy.rsa_bits);
    let rec = tokio::task::spawn_blocking(move || generate(alg, bits, now, activates))
        .await
        .map_err(|e| e.to_string())??;
    if store.insert_key(&rec, guard).await? {
        Ok(Some(rec))
    } else {
        Ok(None)
    }
}

/// The live key set and what keeps it fresh.
pub struct KeyManager {
    pub store: Store,
    pub policy: KeyPolicy,
    current: ArcSwap<KeySet>,
}

impl KeyManager {
    /// Loads the keys, creating the first one when the database has none.
    pub async fn start(store: Store, policy: KeyPolicy) -> Result<Arc<KeyManager>, String> {
        let empty = KeySet::build(&[])?;
        let manager = Arc::new(KeyManager {
            store,
            policy,
            current: ArcSwap::from_pointee(empty),
        });
        manager.refresh().await?;
        Ok(manager)
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// One maintenance pass: first key, scheduled rotation, algorithm change, deletion of
    /// retired keys, then a new in-memory key set.
    pub async fn refresh(&self) -> Result<(), String> {
        let mut records = self.store.list_keys().await?;
        let now = unix_now();
        let newest = records
            .iter()
            .max_by(|a, b| (a.created_at, &a.kid).cmp(&(b.created_at, &b.kid)))
            .cloned();
        let reason = match &newest {
            // Nothing can have been signed yet, so this key can sign at once.
            _ if !records.iter().any(|r| r.activates_at <= now) => Some(("first key", Some(now))),
            None => Some(("first key", Some(now))),
            Some(n) if n.alg != self.policy.algorithm.as_str() => Some(("algorithm changed", None)),
            Some(n) => match self.policy.rotate_every {
                Some(every) if n.created_at + every <= now => Some(("scheduled rotation", None)),
                _ => None,
            },
        };
        if let Some((why, activates_at)) = reason {
            let guard = KeyGuard::NewestIs(newest.as_ref().map(|n| n.kid.clone()));
            if let Some(rec) = rotate(&self.store, &self.policy, activates_at, guard).await? {
                log::info!(
                    "{}",
                    json!({
                        "event": "signing_key_created",
                        "reason": why,
                        "kid": rec.kid,
                        "alg": rec.alg,
                        "activates_at": rec.activates_at,
                    })
                );
            }
            records = self.store.list_keys().await?;
        }
        let (published, retired) = schedule(&records, now, &self.policy);
        if !retired.is_empty() {
            self.store.delete_keys(&retired).await?;
            log::info!(
                "{}",
                json!({ "event": "signing_keys_retired", "kids": retired })
            );
        }
        let set = KeySet::build(&published)?;
        self.current.store(Arc::new(set));
        super::metrics::AUTH_METRICS
            .published_keys
            .set(published.len() as i64);
        Ok(())
    }

    /// Refreshes every `refresh_interval` until the task is dropped; also forgets
    /// revocations of tokens that expired.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.policy.refresh_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                // The last good key set stays in use.
                log::warn!("{}", json!({ "event": "key_refresh_failed", "error": e }));
            }
            let before = unix_now() - self.policy.retire_grace;
            if let Err(e) = self.store.purge_revoked(before).await {
                log::warn!(
                    "{}",
                    json!({ "event": "revocation_purge_failed", "error": e })
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kid: &str, created: i64, activates: i64) -> KeyRecord {
        KeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            private_key: String::new(),
            public_jwk: String::new(),
            created_at: created,
            activates_at: activates,
        }
    }

    #[test]
    fn old_key_stays_until_its_tokens_expire() {
        let policy = KeyPolicy {
            algorithm: Algorithm::ES256,
            rsa_bits: 2048,
            token_lifetime: 100,
            publish_ahead: 10,
            rotate_every: None,
            refresh_interval: Duration::from_secs(5),
            retire_grace: 15,
        };
        let keys = vec![rec("a", 0, 0), rec("b", 1000, 1010)];
        // Before b activates: both published, a signs.
        let (p, r) = schedule(&keys, 1005, &policy);
        assert_eq!(p.len(), 2);
        assert!(r.is_empty());
        // a's last token expires at 1110; kept until 1010 + 100 + 5 + 15.
        let (p, _) = schedule(&keys, 1129, &policy);
        assert_eq!(p.len(), 2);
        let (p, r) = schedule(&keys, 1130, &policy);
        assert_eq!(p.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(r, ["a"]);
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let r = generate(alg, 2048, 0, 0).unwrap();
            let set = KeySet::build(&[&r]).unwrap();
            let signer = set.signer(0).unwrap();
            let header = jsonwebtoken::Header {
                kid: Some(signer.kid.clone()),
                ..jsonwebtoken::Header::new(signer.alg)
            };
            let token = jsonwebtoken::encode(&header, &json!({"sub": "x"}), &signer.key).unwrap();
            let (alg, key) = set.verifier(&signer.kid).unwrap();
            let mut v = jsonwebtoken::Validation::new(*alg);
            v.required_spec_claims.clear();
            v.validate_exp = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, key, &v).unwrap();
        }
    }
}
