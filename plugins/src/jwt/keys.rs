//! Verification keys: parsing JWKs and PEM public keys into keys that know their type, local
//! key files read at build time, and remote key sets (JWKS URLs) fetched lazily, refreshed on
//! a schedule and on an unknown `kid` no more often than a floor, keeping the last good set
//! when a refresh fails.
//!
//! A key's type is fixed when it is parsed (RSA, P-256, P-384, Ed25519) and an algorithm only
//! ever uses a key of its own type, so an RSA or EC public key can never become an HMAC
//! secret: HMAC keys come from an issuer's `hmac_secret` alone, and `oct` JWKs are skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::Notify;

use super::fetch;

/// RSA keys below this size are refused (NIST SP 800-131A; RFC 7518 §3.3 requires 2048).
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// The largest JWKS document accepted; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// base64url as JWK members use it; some publishers pad, which is harmless in a key.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

/// One key a signature may be checked with.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it named one: the key then serves that algorithm only.
    alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    pub(crate) fn hmac(secret: &[u8]) -> Self {
        VerifyKey {
            kid: None,
            kind: KeyKind::Hmac,
            alg: None,
            key: DecodingKey::from_secret(secret),
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
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        let jwks: Jwks =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::with_capacity(jwks.keys.len());
        for (i, value) in jwks.keys.iter().enumerate() {
            match RawJwk::deserialize(value)
                .map_err(|e| e.to_string())
                .and_then(parse_jwk)
            {
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
    let (kind, key) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => rsa_key(&member(&raw.n, "n")?, &member(&raw.e, "e")?)?,
        ("EC", Some("P-256")) => {
            let point = ec_point(&member(&raw.x, "x")?, &member(&raw.y, "y")?, 32)?;
            p256_key(&point)?
        }
        ("EC", Some("P-384")) => {
            let point = ec_point(&member(&raw.x, "x")?, &member(&raw.y, "y")?, 48)?;
            p384_key(&point)?
        }
        ("OKP", Some("Ed25519")) => ed25519_key(&member(&raw.x, "x")?)?,
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
            if KeyKind::of(alg) != kind {
                return Err(format!("its `alg` `{name}` does not fit its key type"));
            }
            Some(alg)
        }
    };
    Ok(VerifyKey {
        kid: raw.kid,
        kind,
        alg,
        key,
    })
}

fn rsa_key(n: &[u8], e: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    use rsa::traits::PublicKeyParts;
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(n),
        rsa::BigUint::from_bytes_be(e),
    )
    .map_err(|e| format!("invalid RSA key: {e}"))?;
    rsa_checked(&public).map(|()| {
        (
            KeyKind::Rsa,
            DecodingKey::from_rsa_raw_components(
                &public.n().to_bytes_be(),
                &public.e().to_bytes_be(),
            ),
        )
    })
}

fn rsa_checked(public: &rsa::RsaPublicKey) -> Result<(), String> {
    use rsa::traits::PublicKeyParts;
    let bits = public.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(())
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

fn p256_key(point: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    p256::PublicKey::from_sec1_bytes(point).map_err(|_| "not a point on P-256".to_owned())?;
    Ok((KeyKind::P256, DecodingKey::from_ec_der(point)))
}

fn p384_key(point: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    p384::PublicKey::from_sec1_bytes(point).map_err(|_| "not a point on P-384".to_owned())?;
    Ok((KeyKind::P384, DecodingKey::from_ec_der(point)))
}

fn ed25519_key(x: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    // Checked here: jsonwebtoken slices the first 32 bytes and would panic on fewer.
    let bytes: &[u8; 32] = x
        .try_into()
        .map_err(|_| "an Ed25519 key must be 32 bytes".to_owned())?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map_err(|_| "not a valid Ed25519 key".to_owned())?;
    if key.is_weak() {
        return Err("a weak (small-order) Ed25519 key".to_owned());
    }
    Ok((KeyKind::Ed25519, DecodingKey::from_ed_der(bytes)))
}

/// Parses one PEM public key: `PUBLIC KEY` (SPKI) of RSA, P-256, P-384 or Ed25519, or
/// `RSA PUBLIC KEY` (PKCS#1). The SPKI's algorithm identifier decides the type.
pub(crate) fn parse_pem(text: &str) -> Result<VerifyKey, String> {
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    use rsa::pkcs1::DecodeRsaPublicKey as _;

    if text.contains("PRIVATE KEY-----") {
        return Err("this is a private key; give the issuer's public key".to_owned());
    }
    if text.contains("-----BEGIN CERTIFICATE") {
        return Err("certificates are not read; extract the public key \
                    (`openssl x509 -pubkey -noout -in cert.pem`)"
            .to_owned());
    }
    let key = |(kind, key)| VerifyKey {
        kid: None,
        kind,
        alg: None,
        key,
    };
    let rsa = rsa::RsaPublicKey::from_public_key_pem(text)
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(text));
    if let Ok(public) = rsa {
        use rsa::traits::PublicKeyParts;
        rsa_checked(&public)?;
        return Ok(key((
            KeyKind::Rsa,
            DecodingKey::from_rsa_raw_components(
                &public.n().to_bytes_be(),
                &public.e().to_bytes_be(),
            ),
        )));
    }
    if let Ok(public) = p256::PublicKey::from_public_key_pem(text) {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        return p256_key(public.to_encoded_point(false).as_bytes()).map(key);
    }
    if let Ok(public) = p384::PublicKey::from_public_key_pem(text) {
        use p384::elliptic_curve::sec1::ToEncodedPoint;
        return p384_key(public.to_encoded_point(false).as_bytes()).map(key);
    }
    if let Ok(public) = ed25519_dalek::VerifyingKey::from_public_key_pem(text) {
        return ed25519_key(public.as_bytes()).map(key);
    }
    Err(
        "not a PEM public key (`PUBLIC KEY` of RSA, P-256, P-384 or Ed25519, \
         or `RSA PUBLIC KEY`)"
            .to_owned(),
    )
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
                    finish
                        .0
                        .state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .last_success = Some(Instant::now());
                }
                Err(e) => log::warn!(
                    "jwt: fetching the key set from {} failed: {e}{}",
                    finish.0.url,
                    if finish.0.current.load().is_some() {
                        "; keeping the last good set"
                    } else {
                        ""
                    }
                ),
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
