//! Tokens the tests present to the gateway: JWTs signed with the keys the tests use (an
//! HMAC secret, or a generated RSA key with its PEM and JWK), typed `at+jwt` by default as
//! the `jwt` plugin requires (RFC 9068), and the `Bearer` / `Basic` header values.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

/// The issuer the tests' tokens name.
pub const TEST_ISSUER: &str = "https://auth.portico.test";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `Bearer {token}`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `Basic base64(id:secret)`.
pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// Unpadded base64url.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JSON value as an unpadded base64url segment.
pub fn json_b64(value: &Value) -> String {
    b64(serde_json::to_vec(value).expect("JSON"))
}

/// A JOSE header for an access token: `alg`, `typ: at+jwt`, and `kid` when given.
pub fn access_header(alg: &str, kid: Option<&str>) -> Value {
    let mut header = json!({"alg": alg, "typ": "at+jwt"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    header
}

/// Claims of a valid access token of `iss` for `aud`: subject and client `service-a`,
/// scopes `orders:read orders:write`, valid from now for five minutes, a random `jti`.
pub fn claims(iss: &str, aud: &str) -> Value {
    let now = now();
    json!({
        "iss": iss, "aud": aud, "sub": "service-a", "client_id": "service-a",
        "scope": "orders:read orders:write", "iat": now, "nbf": now, "exp": now + 300,
        "jti": format!("{:016x}", rand::random::<u64>()),
    })
}

/// `header.payload.signature` over already-encoded segments, signed with `key` under `alg`
/// whatever the header says.
pub fn sign_segments(key: &EncodingKey, alg: Algorithm, header: &str, payload: &str) -> String {
    let input = format!("{header}.{payload}");
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("sign");
    format!("{input}.{signature}")
}

/// A JWT of `header` and `claims`, signed with `key` under `alg`.
pub fn sign(key: &EncodingKey, alg: Algorithm, header: &Value, claims: &Value) -> String {
    sign_segments(key, alg, &json_b64(header), &json_b64(claims))
}

/// An HS256 access token (`typ: at+jwt`, no kid) of `claims`, signed with `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    sign(
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
        &access_header("HS256", None),
        claims,
    )
}

/// An RSA key pair: the private half signs, the public half is given to the gateway.
pub struct RsaKey {
    pub encoding: EncodingKey,
    /// SPKI PEM of the public key.
    pub pem: String,
    /// The public key as a JWK (`alg: RS256`, `use: sig`).
    pub jwk: Value,
}

/// A fresh 2048-bit RSA key with `kid`. Share it between tests (a `LazyLock`) and make it
/// off the async workers: generating one takes a while.
pub fn rsa_key(kid: &str) -> RsaKey {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let private =
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
    let public = private.public_key();
    let pkcs8 = private.as_der().expect("PKCS#8");
    let spki = public.as_der().expect("SPKI");
    RsaKey {
        encoding: EncodingKey::from_rsa_der(pkcs1_of(pkcs8.as_ref())),
        pem: pem("PUBLIC KEY", spki.as_ref()),
        jwk: json!({
            "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        }),
    }
}

/// A PEM block of `label` around `der`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (its `privateKey` octet
/// string), the form jsonwebtoken signs RS256 with.
fn pkcs1_of(pkcs8: &[u8]) -> &[u8] {
    // Each step: tag, length (short or long form), contents.
    fn element(input: &[u8]) -> (&[u8], &[u8]) {
        let first = input[1];
        let (len, at) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            let len = input[2..2 + count]
                .iter()
                .fold(0, |l, &b| l << 8 | usize::from(b));
            (len, 2 + count)
        };
        (&input[at..at + len], &input[at + len..])
    }
    let (info, _) = element(pkcs8);
    let (_version, rest) = element(info);
    let (_algorithm, rest) = element(rest);
    let (key, _) = element(rest);
    key
}
