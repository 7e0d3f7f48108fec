//! JWT verification cost in the `jwt` plugin, for RS256 (RSA-2048) and ES256 (P-256):
//!
//! - `cold`: the signature is verified every time (the verified-token cache is bypassed),
//!   what the first use of each token costs;
//! - `cached`: the verified-token cache answers a repeated token, what a steady
//!   service-to-service caller pays, since it reuses its token until shortly before expiry;
//! - `forged`: a different token on every call with the right header, kid and claims but
//!   random signature bytes of the right length, as a flood of forgeries sends them: each one
//!   misses the cache and costs a full signature check before it is refused;
//! - `aws-lc-alone`: the same-run control, aws-lc verifying the valid token's signature
//!   with an already parsed key and nothing else: the floor `cold` can approach.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use portico_plugins::jwt::Jwt;

/// Signs a message, returning the raw signature.
type SignFn = Box<dyn Fn(&[u8]) -> Vec<u8>>;

/// A private key and what the plugin is given to check its signatures.
struct Key {
    alg: &'static str,
    /// aws-lc's verification algorithm for it.
    verify: &'static dyn signature::VerificationAlgorithm,
    sign: SignFn,
    /// SPKI DER of the public key.
    public: Vec<u8>,
}

fn rsa_key() -> Key {
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA");
    let public = key.public_key().as_der().expect("SPKI").as_ref().to_vec();
    Key {
        alg: "RS256",
        verify: &signature::RSA_PKCS1_2048_8192_SHA256,
        public,
        sign: Box::new(move |message| {
            let mut out = vec![0; key.public_modulus_len()];
            key.sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut out,
            )
            .expect("sign");
            out
        }),
    }
}

fn ec_key() -> Key {
    let key = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256");
    let public = key.public_key().as_der().expect("SPKI").as_ref().to_vec();
    Key {
        alg: "ES256",
        verify: &signature::ECDSA_P256_SHA256_FIXED,
        public,
        sign: Box::new(move |message| {
            let sig = key.sign(&SystemRandom::new(), message).expect("sign");
            sig.as_ref().to_vec()
        }),
    }
}

fn pem(der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// A plugin trusting `key` (a PEM file), the signed part of a valid access token, and the
/// token itself.
fn setup(key: &Key, dir: &std::path::Path) -> (Jwt, String, String) {
    let key_path = dir.join(format!("{}.pem", key.alg));
    std::fs::write(&key_path, pem(&key.public)).expect("write key");
    let config: toml::Value = toml::from_str(&format!(
        r#"
[[issuers]]
issuer = "https://auth.bench"
audiences = ["portico"]
algorithms = ["{}"]
keys = ["{}"]
"#,
        key.alg,
        key_path.display()
    ))
    .expect("config");
    let plugin = Jwt::from_config(config).expect("plugin");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": key.alg, "typ": "at+jwt", "kid": "bench"});
    let claims = serde_json::json!({
        "iss": "https://auth.bench", "sub": "service-a", "aud": "portico",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "bench",
        "client_id": "service-a", "scope": "orders:read orders:write",
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let token = format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode((key.sign)(signed.as_bytes()))
    );
    (plugin, signed, token)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("jwt_verify");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for key in [rsa_key(), ec_key()] {
        let (plugin, signed, token) = setup(&key, dir.path());
        let alg = key.alg;
        group.bench_function(format!("{alg}/cold"), |b| {
            b.iter(|| {
                runtime
                    .block_on(plugin.verify_token_uncached(black_box(&token)))
                    .expect("valid")
            })
        });
        group.bench_function(format!("{alg}/cached"), |b| {
            b.iter(|| {
                runtime
                    .block_on(plugin.verify_token(black_box(&token)))
                    .expect("valid")
            })
        });
        let parsed = signature::ParsedPublicKey::new(key.verify, &key.public).expect("key");
        let sig = URL_SAFE_NO_PAD
            .decode(token.rsplit_once('.').unwrap().1)
            .unwrap();
        group.bench_function(format!("{alg}/aws-lc-alone"), |b| {
            b.iter(|| {
                parsed
                    .verify_sig(black_box(signed.as_bytes()), black_box(&sig))
                    .expect("valid")
            })
        });
        // Distinct forgeries, as many as a flood cycles through before repeating one.
        let sig_len = sig.len();
        let forged: Vec<String> = (0..4096)
            .map(|_| {
                let mut sig = vec![0u8; sig_len];
                aws_lc_rs::rand::fill(&mut sig).unwrap();
                if alg == "RS256" {
                    // Below the modulus: a larger value is refused before any arithmetic,
                    // and a flood that wants to cost the most avoids that.
                    sig[0] &= 0x3f;
                }
                format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
            })
            .collect();
        let mut next = forged.iter().cycle();
        group.bench_function(format!("{alg}/forged"), |b| {
            b.iter(|| {
                let token = next.next().unwrap();
                runtime
                    .block_on(plugin.verify_token(black_box(token)))
                    .expect_err("forged")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
