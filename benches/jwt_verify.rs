//! JWT verification cost in the `jwt` plugin: a cold check (signature verified every time)
//! against a cached one (the verified-token cache answers a repeat token), for RS256 and
//! ES256. The cached path is what a steady service-to-service caller pays, since it reuses
//! its token until shortly before expiry.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portico_plugins::jwt::Jwt;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// A plugin trusting `public_pem` for `alg`, and a valid token signed with `private_pem`.
fn setup(
    alg: Algorithm,
    signing: &EncodingKey,
    public_pem: &str,
    dir: &std::path::Path,
) -> (Jwt, String) {
    let key_path = dir.join(format!("{alg:?}.pem"));
    std::fs::write(&key_path, public_pem).expect("write key");
    let config: toml::Value = toml::from_str(&format!(
        r#"
[[issuers]]
issuer = "https://auth.bench"
audiences = ["portico"]
algorithms = ["{alg:?}"]
keys = ["{}"]
"#,
        key_path.display()
    ))
    .expect("config");
    let plugin = Jwt::from_config(config).expect("plugin");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://auth.bench", "sub": "service-a", "aud": "portico",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": "bench",
        "client_id": "service-a", "scope": "orders:read orders:write",
    });
    let token = jsonwebtoken::encode(&Header::new(alg), &claims, signing).expect("token");
    (plugin, token)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let rsa_signing = EncodingKey::from_rsa_der(rsa_key.to_pkcs1_der().unwrap().as_bytes());
    let rsa_public = rsa_key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let ec_key = p256::SecretKey::random(&mut rsa::rand_core::OsRng);
    let ec_signing = EncodingKey::from_ec_der(ec_key.to_pkcs8_der().unwrap().as_bytes());
    let ec_public = ec_key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();

    let mut group = c.benchmark_group("jwt_verify");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for (alg, signing, public) in [
        (Algorithm::RS256, &rsa_signing, rsa_public.as_str()),
        (Algorithm::ES256, &ec_signing, ec_public.as_str()),
    ] {
        let (plugin, token) = setup(alg, signing, public, dir.path());
        group.bench_function(format!("{alg:?}/cold"), |b| {
            b.iter(|| {
                runtime
                    .block_on(plugin.verify_token_uncached(black_box(&token)))
                    .expect("valid")
            })
        });
        group.bench_function(format!("{alg:?}/cached"), |b| {
            b.iter(|| {
                runtime
                    .block_on(plugin.verify_token(black_box(&token)))
                    .expect("valid")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
