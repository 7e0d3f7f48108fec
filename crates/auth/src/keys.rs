//! Signing keys: generation (P-256, Ed25519, RSA, all in-process with aws-lc), the
//! publication schedule that makes rotation safe, and the in-memory key set each request
//! reads through one `ArcSwap` load.
//!
//! A key's life: created and published in the JWKS at `created_at`; signs from
//! `activates_at` (= created + `publish_ahead`) until the next key activates; stays
//! published until every token it signed has expired (plus the refresh interval, for a
//! replica that noticed the new key late, and `retire_grace`), then is deleted. Every
//! replica derives the same schedule from the database, so they agree without talking.
//!
//! Keys are stored as they always were (RSA as PKCS#1 DER, P-256 and Ed25519 as PKCS#8
//! DER, base64 in the database), so a replica of an older version sharing the database
//! reads the keys a newer one made, and the other way round. Each is parsed into aws-lc's
//! form once per key-set refresh, never per token signed or checked. With a
//! key-encryption key configured, the store seals that base64 DER in an AES-256-GCM
//! envelope on the way in and opens it on the way out (`at_rest`); this module only ever
//! sees the DER.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RsaPublicKeyComponents,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::Serialize;
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

/// A private key in aws-lc's parsed form.
enum PrivateKey {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl PrivateKey {
    /// Reads a stored key: PKCS#1 (or PKCS#8) for RSA, PKCS#8 v1 or v2 for the others.
    fn from_der(alg: Algorithm, der: &[u8]) -> Result<PrivateKey, String> {
        match alg {
            Algorithm::ES256 => {
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map(PrivateKey::Ec)
                    .map_err(|e| e.to_string())
            }
            Algorithm::EdDSA => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map(PrivateKey::Ed)
                .map_err(|e| e.to_string()),
            Algorithm::RS256 => aws_lc_rs::rsa::KeyPair::from_der(der)
                .or_else(|_| aws_lc_rs::rsa::KeyPair::from_pkcs8(der))
                .map(PrivateKey::Rsa)
                .map_err(|e| e.to_string()),
        }
    }

    /// The JWS signature of `message`: RSASSA-PKCS1-v1_5 with SHA-256, ECDSA P-256 with
    /// SHA-256 as `r || s` (RFC 7518 §3.4), or Ed25519.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            PrivateKey::Rsa(key) => {
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut out)
                    .map_err(|e| e.to_string())?;
                Ok(out)
            }
            PrivateKey::Ec(key) => key
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| e.to_string()),
            PrivateKey::Ed(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }
}

/// A key that signs, or will.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub activates_at: i64,
    key: PrivateKey,
    /// The encoded JOSE header of every token this key signs: `alg`, `typ: at+jwt`, `kid`.
    header: String,
}

impl Signer {
    /// A compact JWS of `claims` (RFC 7515 §7.1) under this key.
    pub fn sign_token(&self, claims: &impl Serialize) -> Result<String, String> {
        let claims = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut token = String::with_capacity(self.header.len() + claims.len() * 2 + 400);
        token.push_str(&self.header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        let signature = self.key.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }
}

/// A published key, parsed for checking the signatures of tokens it made.
pub struct Verifier {
    pub alg: Algorithm,
    key: ParsedPublicKey,
}

impl Verifier {
    /// Reads a published JWK: the key this service generated, as it publishes it.
    fn from_jwk(alg: Algorithm, jwk: &serde_json::Value) -> Result<Verifier, String> {
        let member = |name: &str| -> Result<Vec<u8>, String> {
            let text = jwk[name]
                .as_str()
                .ok_or_else(|| format!("`{name}` is missing"))?;
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| format!("`{name}` is not base64url"))
        };
        let key = match alg {
            Algorithm::RS256 => {
                let (n, e) = (member("n")?, member("e")?);
                RsaPublicKeyComponents { n: &n, e: &e }
                    .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
            }
            Algorithm::ES256 => {
                let mut point = vec![0x04];
                point.extend(member("x")?);
                point.extend(member("y")?);
                ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
            }
            Algorithm::EdDSA => ParsedPublicKey::new(&signature::ED25519, member("x")?),
        };
        Ok(Verifier {
            alg,
            key: key.map_err(|e| e.to_string())?,
        })
    }

    /// Whether `signature` is this key's over `message` (a token's `header.payload`).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(message, signature).is_ok()
    }
}

/// The keys as of the last refresh.
pub struct KeySet {
    /// Oldest activation first.
    signers: Vec<Signer>,
    /// Published keys by kid, for introspection and revocation.
    verifiers: HashMap<String, Verifier>,
    /// The rendered JWKS document.
    pub jwks: bytes::Bytes,
}

impl KeySet {
    /// The key that signs at `now`: the one activated last.
    pub fn signer(&self, now: i64) -> Option<&Signer> {
        self.signers.iter().rev().find(|k| k.activates_at <= now)
    }

    pub fn verifier(&self, kid: &str) -> Option<&Verifier> {
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
            let key = PrivateKey::from_der(alg, &der)
                .map_err(|e| format!("key {}: bad private key: {e}", r.kid))?;
            let jwk_value: serde_json::Value = serde_json::from_str(&r.public_jwk)
                .map_err(|e| format!("key {}: bad public JWK: {e}", r.kid))?;
            let verifier = Verifier::from_jwk(alg, &jwk_value)
                .map_err(|e| format!("key {}: bad public JWK: {e}", r.kid))?;
            let header = json!({ "alg": alg.as_str(), "typ": "at+jwt", "kid": r.kid });
            signers.push(Signer {
                kid: r.kid.clone(),
                alg,
                activates_at: r.activates_at,
                key,
                header: URL_SAFE_NO_PAD.encode(header.to_string()),
            });
            verifiers.insert(r.kid.clone(), verifier);
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
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .get(..10)
        .unwrap_or("key")
        .replace('-', "");
    let mut tag = [0u8; 9];
    aws_lc_rs::rand::fill(&mut tag).map_err(|_| "no randomness for a key id".to_owned())?;
    let kid = format!(
        "{}-{date}-{}",
        alg.as_str().to_ascii_lowercase(),
        URL_SAFE_NO_PAD.encode(tag)
    );
    let (der, mut jwk) = match alg {
        Algorithm::ES256 => {
            let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(|e| format!("cannot generate P-256 key: {e}"))?;
            let der = key
                .to_pkcs8v1()
                .map_err(|e| format!("cannot encode P-256 key: {e}"))?;
            // The uncompressed point: `04 || x || y`.
            let point = key.public_key().as_ref();
            if point.len() != 65 {
                return Err("P-256 public key is not an uncompressed point".into());
            }
            (
                der.as_ref().to_vec(),
                json!({ "kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]) }),
            )
        }
        Algorithm::EdDSA => {
            // PKCS#8 v2 (with the public key), as ed25519-dalek wrote it before.
            let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|e| format!("cannot generate Ed25519 key: {e}"))?;
            let key = Ed25519KeyPair::from_pkcs8(der.as_ref())
                .map_err(|e| format!("cannot read the new Ed25519 key: {e}"))?;
            (
                der.as_ref().to_vec(),
                json!({ "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref()) }),
            )
        }
        Algorithm::RS256 => {
            use aws_lc_rs::rsa::{KeyPair, KeySize};
            let size = match rsa_bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                other => return Err(format!("cannot generate an RSA key of {other} bits")),
            };
            let key =
                KeyPair::generate(size).map_err(|e| format!("cannot generate RSA key: {e}"))?;
            let pkcs8 = key
                .as_der()
                .map_err(|e| format!("cannot encode RSA key: {e}"))?;
            // Stored as PKCS#1, the form every version of the service reads.
            let der = pkcs8_private_key(pkcs8.as_ref())
                .ok_or("cannot encode RSA key: unexpected PKCS#8 layout")?
                .to_vec();
            let public = key.public_key();
            (
                der,
                json!({ "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()), "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()) }),
            )
        }
    };
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.as_str());
    jwk["use"] = json!("sig");
    // What is stored must read back: the same parse every refresh runs.
    PrivateKey::from_der(alg, &der).map_err(|e| format!("the new key does not read back: {e}"))?;
    Ok(KeyRecord {
        kid,
        alg: alg.as_str().to_string(),
        private_key: STANDARD.encode(der),
        public_jwk: jwk.to_string(),
        created_at: now,
        activates_at,
    })
}

/// The `privateKey` octet string of a PKCS#8 `PrivateKeyInfo` (RFC 5208 §5): for RSA, the
/// PKCS#1 `RSAPrivateKey`.
fn pkcs8_private_key(der: &[u8]) -> Option<&[u8]> {
    let (info, _) = der_element(der, 0x30)?;
    let (_version, rest) = der_element(info, 0x02)?;
    let (_algorithm, rest) = der_element(rest, 0x30)?;
    let (key, _) = der_element(rest, 0x04)?;
    Some(key)
}

/// Splits the DER element of `tag` at the start of `input` into its contents and what
/// follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len, rest) = rest.split_at(count);
        (len.iter().fold(0, |l, &b| l << 8 | usize::from(b)), rest)
    };
    (rest.len() >= len).then(|| rest.split_at(len))
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

    /// Signs a token with the set's current key and checks it with the published one.
    fn sign_and_check(set: &KeySet) {
        let signer = set.signer(0).unwrap();
        let token = signer.sign_token(&json!({"sub": "x"})).unwrap();
        let (message, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let verifier = set.verifier(&signer.kid).unwrap();
        assert_eq!(verifier.alg, signer.alg);
        assert!(verifier.verify(message.as_bytes(), &sig));
        let mut forged = sig.clone();
        forged[0] ^= 1;
        assert!(!verifier.verify(message.as_bytes(), &forged));
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            header,
            json!({"alg": signer.alg.as_str(), "typ": "at+jwt", "kid": signer.kid})
        );
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
            let r = generate(alg, 2048, 0, 0).unwrap();
            sign_and_check(&KeySet::build(&[&r]).unwrap());
        }
    }

    #[test]
    fn rsa_keys_are_stored_as_pkcs1() {
        let r = generate(Algorithm::RS256, 2048, 0, 0).unwrap();
        let der = STANDARD.decode(&r.private_key).unwrap();
        // RSAPrivateKey ::= SEQUENCE { version 0, modulus, ... }: no algorithm identifier.
        let (body, rest) = der_element(&der, 0x30).unwrap();
        assert!(rest.is_empty());
        let (version, rest) = der_element(body, 0x02).unwrap();
        assert_eq!(version, [0]);
        let (modulus, _) = der_element(rest, 0x02).unwrap();
        assert_eq!(modulus.len(), 257, "2048 bits and a leading zero");
    }

    /// Keys as the service stored them before it moved to aws-lc (generated by that
    /// version with RustCrypto: P-256 PKCS#8, Ed25519 PKCS#8 v2, RSA PKCS#1) still load,
    /// sign, and verify against their published JWKs.
    #[test]
    fn keys_stored_by_the_rustcrypto_version_still_load() {
        let text = include_str!("../testdata/rustcrypto-keys.txt");
        let mut algs = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut parts = line.splitn(3, ' ');
            let (alg, private_key, public_jwk) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let jwk: serde_json::Value = serde_json::from_str(public_jwk).unwrap();
            let r = KeyRecord {
                kid: jwk["kid"].as_str().unwrap().to_owned(),
                alg: alg.to_owned(),
                private_key: private_key.to_owned(),
                public_jwk: public_jwk.to_owned(),
                created_at: 0,
                activates_at: 0,
            };
            sign_and_check(&KeySet::build(&[&r]).unwrap());
            algs.push(alg.to_owned());
        }
        assert_eq!(algs, ["ES256", "EdDSA", "RS256"]);
    }
}
