//! Verification keys: parsing JWKs and PEM public keys into keys that know their type, local
//! key files read at build time, and remote key sets (JWKS URLs) fetched lazily, refreshed on
//! a schedule and on an unknown `kid` no more often than a floor, keeping the last good set
//! when a refresh fails.
//!
//! A key's type is fixed when it is parsed (RSA, P-256, P-384, Ed25519) and an algorithm only
//! ever uses a key of its own type, so an RSA or EC public key can never become an HMAC
//! secret: HMAC keys come from an issuer's `hmac_secret` alone, and `oct` JWKs are skipped.
//!
//! Signatures are checked with aws-lc. Each key is parsed into aws-lc's own form once, when
//! its set is loaded (a JWKS fetch, a key file, an `hmac_secret`), so a verification is the
//! public-key operation and nothing else: no modulus, point or secret is decoded per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::Deserialize;
use tokio::sync::Notify;

use super::fetch;

/// RSA keys below this size are refused (NIST SP 800-131A; RFC 7518 §3.3 requires 2048).
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// The largest RSA key accepted: the largest aws-lc verifies with.
const MAX_RSA_BITS: usize = 8192;

/// The largest JWKS document accepted; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// base64url as JWK members use it; some publishers pad, which is harmless in a key.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A JWS algorithm (RFC 7518 §3.1) that portico verifies; `none` is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

impl Algorithm {
    /// aws-lc's parameters for an RSA algorithm: PKCS#1 v1.5 or PSS (salt as long as the
    /// digest, RFC 7518 §3.5), keys of 2048 to 8192 bits.
    fn rsa(self) -> Option<&'static RsaParameters> {
        Some(match self {
            Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }

    fn hmac(self) -> Option<hmac::Algorithm> {
        Some(match self {
            Algorithm::HS256 => hmac::HMAC_SHA256,
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => return None,
        })
    }
}

/// The algorithm names portico accepts, spelled exactly as RFC 7518 does.
pub(crate) fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The type of key an algorithm verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    pub(crate) fn of(alg: Algorithm) -> Self {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyKind::Hmac,
            Algorithm::ES256 => KeyKind::P256,
            Algorithm::ES384 => KeyKind::P384,
            Algorithm::EdDSA => KeyKind::Ed25519,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyKind::Rsa,
        }
    }
}

/// A key in aws-lc's parsed form, ready for one algorithm. An HMAC key holds its hash's
/// precomputed inner and outer states (over 1 KiB), hence the box.
enum Checker {
    Public(ParsedPublicKey),
    Hmac(Box<hmac::Key>),
}

/// One key a signature may be checked with.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it named one: the key then serves that algorithm only.
    alg: Option<Algorithm>,
    /// One parsed key per algorithm the key serves. aws-lc binds a parsed key to one
    /// algorithm (an RSA key's padding and digest), so an RSA key without an `alg` holds six.
    checkers: Vec<(Algorithm, Checker)>,
}

impl VerifyKey {
    pub(crate) fn hmac(secret: &[u8]) -> Self {
        let checkers = HMAC_ALGS
            .iter()
            .filter_map(|&alg| {
                let key = hmac::Key::new(alg.hmac()?, secret);
                Some((alg, Checker::Hmac(Box::new(key))))
            })
            .collect();
        VerifyKey {
            kid: None,
            kind: KeyKind::Hmac,
            alg: None,
            checkers,
        }
    }

    pub(crate) fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Whether a token signed with `alg` and naming `kid` may be checked with this key. A key
    /// without a `kid` (a PEM file) fits any `kid`; a token without one fits any key.
    pub(crate) fn fits(&self, alg: Algorithm, kid: Option<&str>) -> bool {
        self.kind == KeyKind::of(alg)
            && self.alg.is_none_or(|a| a == alg)
            && match (kid, &self.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            }
    }

    /// Whether `signature` (decoded from base64url) is this key's signature under `alg` of
    /// `message` (the token's `header.payload`). HMAC tags are compared in constant time.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        let Some((_, checker)) = self.checkers.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        match checker {
            Checker::Public(key) => key.verify_sig(message, signature).is_ok(),
            Checker::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
        }
    }
}

/// A set of keys, as one JWKS document or the files of `keys` give it.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    pub(crate) fn new(keys: Vec<VerifyKey>) -> Self {
        KeySet { keys }
    }

    pub(crate) fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| k.fits(alg, kid))
    }

    /// Whether some key carries exactly this `kid`.
    pub(crate) fn knows_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Parses a JWKS document. Keys that cannot be used (unsupported or symmetric types, not
    /// for signatures, too small, invalid points) are skipped with a warning rather than
    /// failing the whole set, so one odd key at the issuer does not lock every client out.
    pub(crate) fn from_jwks(json: &[u8], source: &str) -> Result<Self, String> {
        // Read as a JSON value first: serde reads a struct from an array as readily as from
        // an object, so `[[{…}]]` would pass for `{"keys": [{…}]}`, and a key written as an
        // array would have its members taken by position.
        let document: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let serde_json::Value::Object(mut document) = document else {
            return Err("not a JWKS document: not a JSON object".to_string());
        };
        let listed = match document.remove("keys") {
            Some(serde_json::Value::Array(keys)) => keys,
            Some(_) => return Err("not a JWKS document: `keys` is not an array".to_string()),
            None => return Err("not a JWKS document: no `keys` member".to_string()),
        };
        let mut keys = Vec::with_capacity(listed.len());
        for (i, value) in listed.iter().enumerate() {
            let parsed = if value.is_object() {
                RawJwk::deserialize(value).map_err(|e| e.to_string())
            } else {
                Err("a key is not a JSON object".to_string())
            };
            match parsed.and_then(parse_jwk) {
                Ok(key) => keys.push(key),
                Err(e) => log::warn!("jwt: {source}: skipping key {i}: {e}"),
            }
        }
        Ok(KeySet { keys })
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// A public key's material, as read from a JWK or a PEM file, before aws-lc parses it.
enum Public<'a> {
    /// Modulus and exponent, big-endian.
    Rsa(&'a [u8], &'a [u8]),
    /// A SEC1 uncompressed point or an SPKI.
    P256(&'a [u8]),
    P384(&'a [u8]),
    /// The 32-byte key.
    Ed25519(&'a [u8]),
}

impl Public<'_> {
    fn kind(&self) -> KeyKind {
        match self {
            Public::Rsa(..) => KeyKind::Rsa,
            Public::P256(_) => KeyKind::P256,
            Public::P384(_) => KeyKind::P384,
            Public::Ed25519(_) => KeyKind::Ed25519,
        }
    }
}

fn parse_jwk(raw: RawJwk) -> Result<VerifyKey, String> {
    if let Some(u) = raw.use_.as_deref().filter(|u| *u != "sig") {
        return Err(format!("its `use` is `{u}`, not `sig`"));
    }
    if raw
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("its `key_ops` do not include `verify`".to_owned());
    }
    let member = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let value = value
            .as_deref()
            .ok_or_else(|| format!("`{name}` is missing"))?;
        JWK_B64
            .decode(value)
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let (n, e, point);
    let public = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            (n, e) = (member(&raw.n, "n")?, member(&raw.e, "e")?);
            Public::Rsa(&n, &e)
        }
        ("EC", Some("P-256")) => {
            point = ec_point(&member(&raw.x, "x")?, &member(&raw.y, "y")?, 32)?;
            Public::P256(&point)
        }
        ("EC", Some("P-384")) => {
            point = ec_point(&member(&raw.x, "x")?, &member(&raw.y, "y")?, 48)?;
            Public::P384(&point)
        }
        ("OKP", Some("Ed25519")) => {
            point = member(&raw.x, "x")?;
            Public::Ed25519(&point)
        }
        ("oct", _) => {
            return Err("symmetric keys are never taken from a key set; \
                        HMAC needs the issuer's `hmac_secret`"
                .to_owned())
        }
        (kty, crv) => {
            return Err(format!(
                "unsupported key type `{kty}`{}",
                crv.map(|c| format!(" on curve `{c}`")).unwrap_or_default()
            ))
        }
    };
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => {
            let alg = parse_alg(name).ok_or_else(|| format!("unsupported `alg` `{name}`"))?;
            if KeyKind::of(alg) != public.kind() {
                return Err(format!("its `alg` `{name}` does not fit its key type"));
            }
            Some(alg)
        }
    };
    public_key(raw.kid, public, alg)
}

/// Parses `public` with aws-lc for `alg`, or for every algorithm of its type.
fn public_key(
    kid: Option<String>,
    public: Public<'_>,
    alg: Option<Algorithm>,
) -> Result<VerifyKey, String> {
    let kind = public.kind();
    let checkers = match public {
        Public::Rsa(n, e) => rsa_checkers(n, e, alg)?,
        Public::P256(bytes) => {
            let key = ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, bytes)
                .map_err(|_| "not a point on P-256".to_owned())?;
            vec![(Algorithm::ES256, Checker::Public(key))]
        }
        Public::P384(bytes) => {
            let key = ParsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, bytes)
                .map_err(|_| "not a point on P-384".to_owned())?;
            vec![(Algorithm::ES384, Checker::Public(key))]
        }
        Public::Ed25519(x) => {
            // Checked here, before aws-lc reads it as an SPKI for being of another length.
            let bytes: &[u8; 32] = x
                .try_into()
                .map_err(|_| "an Ed25519 key must be 32 bytes".to_owned())?;
            let weak = ed25519_dalek::VerifyingKey::from_bytes(bytes)
                .map_err(|_| "not a valid Ed25519 key".to_owned())?
                .is_weak();
            // A small-order key verifies signatures nobody made with a private key.
            if weak {
                return Err("a weak (small-order) Ed25519 key".to_owned());
            }
            let key = ParsedPublicKey::new(&signature::ED25519, bytes)
                .map_err(|_| "not a valid Ed25519 key".to_owned())?;
            vec![(Algorithm::EdDSA, Checker::Public(key))]
        }
    };
    Ok(VerifyKey {
        kid,
        kind,
        alg,
        checkers,
    })
}

/// An RSA key of modulus `n` and exponent `e` (big-endian, leading zeros allowed, as some
/// publishers write them), checked for size and shape, parsed once per algorithm it serves.
fn rsa_checkers(
    n: &[u8],
    e: &[u8],
    alg: Option<Algorithm>,
) -> Result<Vec<(Algorithm, Checker)>, String> {
    let strip = |b: &[u8]| -> usize { b.iter().position(|&x| x != 0).unwrap_or(b.len()) };
    let (n, e) = (&n[strip(n)..], &e[strip(e)..]);
    let bits = n
        .first()
        .map_or(0, |&top| n.len() * 8 - top.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits; at most {MAX_RSA_BITS} are supported"
        ));
    }
    // A modulus is a product of odd primes; a public exponent is odd, at least 3 and at
    // most 33 bits (what aws-lc and every RSA implementation in use accept).
    let exponent = (e.len() <= 5).then(|| e.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)));
    if n[n.len() - 1] & 1 == 0 || !exponent.is_some_and(|e| e >= 3 && e & 1 == 1 && e < 1 << 33) {
        return Err("invalid RSA key: not a valid modulus and public exponent".to_owned());
    }
    let components = RsaPublicKeyComponents { n, e };
    let algs = alg.as_ref().map_or(&RSA_ALGS[..], std::slice::from_ref);
    algs.iter()
        .map(|&alg| {
            let params = alg.rsa().ok_or("not an RSA algorithm")?;
            let key = components
                .to_parsed_public_key(params)
                .map_err(|e| format!("invalid RSA key: {e}"))?;
            Ok((alg, Checker::Public(key)))
        })
        .collect()
}

/// The SEC1 uncompressed point `04 || x || y`, both coordinates `len` bytes.
fn ec_point(x: &[u8], y: &[u8], len: usize) -> Result<Vec<u8>, String> {
    if x.len() != len || y.len() != len {
        return Err(format!("EC coordinates must be {len} bytes each"));
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    Ok(point)
}

/// The DER header of an Ed25519 SPKI (RFC 8410 §4), which the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Parses one PEM public key: `PUBLIC KEY` (SPKI) of RSA, P-256, P-384 or Ed25519, or
/// `RSA PUBLIC KEY` (PKCS#1). The SPKI's algorithm identifier decides the type.
pub(crate) fn parse_pem(text: &str) -> Result<VerifyKey, String> {
    if text.contains("PRIVATE KEY-----") {
        return Err("this is a private key; give the issuer's public key".to_owned());
    }
    if text.contains("-----BEGIN CERTIFICATE") {
        return Err("certificates are not read; extract the public key \
                    (`openssl x509 -pubkey -noout -in cert.pem`)"
            .to_owned());
    }
    let not_a_key = || {
        "not a PEM public key (`PUBLIC KEY` of RSA, P-256, P-384 or Ed25519, \
         or `RSA PUBLIC KEY`)"
            .to_owned()
    };
    let (label, der) = pem_block(text).ok_or_else(not_a_key)?;
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(not_a_key());
    }
    // aws-lc reads an RSA key from PKCS#1 and from an SPKI alike, and nothing else.
    if let Ok(rsa) = aws_lc_rs::rsa::PublicKey::from_der(&der) {
        let n = rsa.modulus().big_endian_without_leading_zero();
        let e = rsa.exponent().big_endian_without_leading_zero();
        return public_key(None, Public::Rsa(n, e), None);
    }
    if label == "PUBLIC KEY" {
        // Each parse takes only an SPKI of its own algorithm and curve.
        let is = |alg| ParsedPublicKey::new(alg, &der).is_ok();
        if is(&signature::ECDSA_P256_SHA256_FIXED) {
            return public_key(None, Public::P256(&der), None);
        }
        if is(&signature::ECDSA_P384_SHA384_FIXED) {
            return public_key(None, Public::P384(&der), None);
        }
        if let Some(x) = der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            return public_key(None, Public::Ed25519(x), None);
        }
    }
    Err(not_a_key())
}

/// The label and the decoded body of the first PEM block in `text` (RFC 7468).
fn pem_block(text: &str) -> Option<(&str, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(b64).ok()?;
    Some((label, der))
}

/// Reads one local key file: a JWKS document (or a single JWK) when it holds JSON, one PEM
/// public key otherwise.
pub(crate) fn load_file(path: &str) -> Result<Vec<VerifyKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    if text.trim_start().starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("`{path}`: not JSON: {e}"))?;
        if value.get("keys").is_some() {
            let set =
                KeySet::from_jwks(text.as_bytes(), path).map_err(|e| format!("`{path}`: {e}"))?;
            if set.keys.is_empty() {
                return Err(format!("`{path}`: no usable key in the set"));
            }
            return Ok(set.keys);
        }
        let key = RawJwk::deserialize(&value)
            .map_err(|e| e.to_string())
            .and_then(parse_jwk)
            .map_err(|e| format!("`{path}`: {e}"))?;
        return Ok(vec![key]);
    }
    parse_pem(&text)
        .map(|key| vec![key])
        .map_err(|e| format!("`{path}`: {e}"))
}

/// A JWKS URL's key set, shared by every plugin in the process that names the same URL with
/// the same timings, so several routes (and a config reload, while the old config is still
/// alive) fetch it once rather than once each.
pub(crate) struct RemoteKeys {
    url: String,
    refresh: Duration,
    min_refresh: Duration,
    timeout: Duration,
    /// The last good set; `None` until a fetch has succeeded.
    current: ArcSwapOption<KeySet>,
    state: Mutex<FetchState>,
    /// Woken when a fetch ends, successful or not.
    done: Notify,
    client: OnceLock<Result<reqwest::Client, String>>,
    fetches: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct FetchState {
    in_flight: bool,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    /// The last fetch an unknown `kid` started. Only these count against the floor for
    /// unknown kids, so a rotation right after the first (or a scheduled) fetch is still
    /// picked up at once, while a flood of random kids gets one fetch per floor.
    last_kid_refresh: Option<Instant>,
    /// Why the last fetch failed, until one succeeds.
    last_error: Option<String>,
}

/// Why a fetch is wanted, which decides the floor it must respect.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// No set yet, or the set is older than `jwks_refresh`.
    Scheduled,
    /// A token named a `kid` the set lacks.
    UnknownKid,
}

type RegistryKey = (String, Duration, Duration, Duration);

static SHARED: LazyLock<Mutex<HashMap<RegistryKey, Weak<RemoteKeys>>>> =
    LazyLock::new(Mutex::default);

enum Start {
    Started,
    InFlight,
    TooSoon,
}

impl RemoteKeys {
    /// The shared key set of `url`. Only bookkeeping: nothing is fetched until a request
    /// needs a key, so config checks never touch the network.
    pub(crate) fn shared(
        url: &str,
        refresh: Duration,
        min_refresh: Duration,
        timeout: Duration,
    ) -> Arc<Self> {
        let key = (url.to_owned(), refresh, min_refresh, timeout);
        fetch::shared(&SHARED, key, || RemoteKeys {
            url: url.to_owned(),
            refresh,
            min_refresh,
            timeout,
            current: ArcSwapOption::empty(),
            state: Mutex::default(),
            done: Notify::new(),
            client: OnceLock::new(),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The current keys. The first call waits for the first fetch; later ones never wait and
    /// start a background refresh when the set is older than `jwks_refresh`. `None` when no
    /// set was ever fetched.
    pub(crate) async fn keys(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        if let Some(set) = self.current.load_full() {
            if self.refresh_due() {
                self.try_start(Reason::Scheduled);
            }
            return Some(set);
        }
        self.fetch_and_wait(Reason::Scheduled).await
    }

    /// Refetches because a token named a `kid` the set lacks, unless an unknown kid already
    /// caused a fetch less than `jwks_min_refresh` ago; waits for the fetch in flight if there
    /// is one. Returns the newest set.
    pub(crate) async fn refresh_for_unknown_kid(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        self.fetch_and_wait(Reason::UnknownKid).await
    }

    /// How many fetches were started (tests and metrics).
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    fn refresh_due(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        !state.in_flight
            && state
                .last_success
                .is_none_or(|t| t.elapsed() >= self.refresh)
            && state
                .last_attempt
                .is_none_or(|t| t.elapsed() >= self.min_refresh)
    }

    async fn fetch_and_wait(self: &Arc<Self>, reason: Reason) -> Option<Arc<KeySet>> {
        // Registered before the state is read, so a fetch ending in between still wakes us.
        let notified = self.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match self.try_start(reason) {
            Start::Started | Start::InFlight => {
                // The fetch has its own deadline; this one only guards against a lost wakeup.
                let _ = tokio::time::timeout(self.timeout + Duration::from_secs(1), notified).await;
            }
            Start::TooSoon => {}
        }
        self.current.load_full()
    }

    /// Starts a fetch in its own task unless one is running or the floor forbids it. The task
    /// is spawned rather than awaited in place so a client that disconnects mid-fetch cannot
    /// cancel it for every other request waiting on it.
    fn try_start(self: &Arc<Self>, reason: Reason) -> Start {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Start::TooSoon;
        };
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.in_flight {
                return Start::InFlight;
            }
            let floor_from = match reason {
                Reason::Scheduled => state.last_attempt,
                Reason::UnknownKid => state.last_kid_refresh,
            };
            if floor_from.is_some_and(|t| t.elapsed() < self.min_refresh) {
                return Start::TooSoon;
            }
            let now = Instant::now();
            state.in_flight = true;
            state.last_attempt = Some(now);
            if reason == Reason::UnknownKid {
                state.last_kid_refresh = Some(now);
            }
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let this = Arc::clone(self);
        runtime.spawn(async move {
            // Ends the fetch even if the task is dropped (runtime shutdown) or panics.
            struct Finish(Arc<RemoteKeys>);
            impl Drop for Finish {
                fn drop(&mut self) {
                    self.0
                        .state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .in_flight = false;
                    self.0.done.notify_waiters();
                }
            }
            let finish = Finish(this);
            match finish.0.fetch().await {
                Ok(set) => {
                    log::debug!("jwt: fetched {} keys from {}", set.len(), finish.0.url);
                    finish.0.current.store(Some(Arc::new(set)));
                    let mut state = finish
                        .0
                        .state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    state.last_success = Some(Instant::now());
                    state.last_error = None;
                }
                Err(e) => {
                    log::warn!(
                        "jwt: fetching the key set from {} failed: {e}{}",
                        finish.0.url,
                        if finish.0.current.load().is_some() {
                            "; keeping the last good set"
                        } else {
                            ""
                        }
                    );
                    finish.0.failures.fetch_add(1, Ordering::Relaxed);
                    finish
                        .0
                        .state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .last_error = Some(e);
                }
            }
        });
        Start::Started
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let client = self
            .client
            .get_or_init(|| fetch::client(self.timeout))
            .as_ref()
            .map_err(Clone::clone)?;
        let request = client.get(&self.url).header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        );
        let body = fetch::send(request, self.timeout, MAX_JWKS_BYTES).await?;
        let set = KeySet::from_jwks(&body, &self.url)?;
        if set.keys.is_empty() {
            return Err("no usable key in the set".to_owned());
        }
        Ok(set)
    }
}

/// One remote key set (JWKS) in use, for `/metrics` and the admin console.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySetStatus {
    /// The JWKS URL without user info, query or fragment (which could hold a secret).
    pub url: String,
    /// Keys in the last good set; `None` before the first good fetch.
    pub keys: Option<usize>,
    pub fetches: u64,
    pub failures: u64,
    pub last_success_age: Option<Duration>,
    /// Why the last fetch failed, until one succeeds.
    pub last_error: Option<String>,
}

/// Every remote key set some loaded route uses.
pub fn key_sets() -> Vec<KeySetStatus> {
    let live: Vec<Arc<RemoteKeys>> = SHARED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    let mut sets: Vec<KeySetStatus> = live
        .iter()
        .map(|r| {
            let state = r.state.lock().unwrap_or_else(PoisonError::into_inner);
            KeySetStatus {
                url: shown_url(&r.url),
                keys: r.current.load().as_ref().map(|set| set.len()),
                fetches: r.fetches(),
                failures: r.failures.load(Ordering::Relaxed),
                last_success_age: state.last_success.map(|t| t.elapsed()),
                last_error: state.last_error.clone(),
            }
        })
        .collect();
    sets.sort_by(|a, b| a.url.cmp(&b.url));
    sets
}

/// `url` as scheme, host and path only.
fn shown_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            format!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("https"),
                uri.host().unwrap_or(""),
                uri.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + uri.path()
        }
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An odd modulus of `bytes` bytes whose first byte is `top`.
    fn modulus(bytes: usize, top: u8) -> Vec<u8> {
        let mut n = vec![0x5a; bytes];
        n[0] = top;
        n[bytes - 1] |= 1;
        n
    }

    fn refused(n: &[u8], e: &[u8]) -> String {
        rsa_checkers(n, e, None)
            .err()
            .expect("the key should be refused")
    }

    #[test]
    fn rsa_keys_are_checked_for_size_and_shape() {
        let e = [1, 0, 1];
        // Parsed once per RSA algorithm, or for the one its JWK names; leading zeros in
        // either number are read past.
        let all = rsa_checkers(&modulus(256, 0x80), &e, None).unwrap();
        assert_eq!(all.iter().map(|(a, _)| *a).collect::<Vec<_>>(), RSA_ALGS);
        let padded = [&[0, 0][..], &modulus(256, 0xc0)].concat();
        let one = rsa_checkers(&padded, &[0, 1, 0, 1], Some(Algorithm::PS256)).unwrap();
        assert_eq!(one.len(), 1);
        assert!(rsa_checkers(&modulus(1024, 0x80), &e, None).is_ok());

        assert!(refused(&modulus(256, 0x40), &e).contains("2047 bits; at least 2048"));
        assert!(refused(&modulus(1025, 0x01), &e).contains("8193 bits; at most 8192"));
        let mut even = modulus(256, 0x80);
        even[255] &= 0xfe;
        for (n, e) in [
            (&even[..], &e[..]),
            (&modulus(256, 0x80), &[1][..]),
            (&modulus(256, 0x80), &[2][..]),
            (&modulus(256, 0x80), &[1, 0, 0][..]),
            (&modulus(256, 0x80), &[2, 0, 0, 0, 1][..]),
            (&modulus(256, 0x80), &[][..]),
        ] {
            assert!(refused(n, e).contains("invalid RSA key"), "{e:?}");
        }
    }

    #[test]
    fn pem_blocks_are_read_by_label() {
        let (label, der) =
            pem_block("junk\n-----BEGIN PUBLIC KEY-----\nAAEC\nAw==\n-----END PUBLIC KEY-----\n")
                .unwrap();
        assert_eq!((label, der.as_slice()), ("PUBLIC KEY", &[0, 1, 2, 3][..]));
        assert!(pem_block("-----BEGIN PUBLIC KEY-----\nAAEC\n-----END OTHER-----\n").is_none());
        assert!(pem_block("-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n").is_none());
    }
}
