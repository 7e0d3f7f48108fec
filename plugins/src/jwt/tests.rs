//! Tests of the `jwt` plugin with keys generated at test time, tokens signed with aws-lc-rs,
//! and JWKS and introspection endpoints served by a small HTTP server on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::ResponseHeader;

const ISS: &str = "https://auth.test";
const AUD: &str = "orders";

// ---------------------------------------------------------------------------------------
// Keys and tokens

/// What signs a test token: a private key of one of the key types, or an HMAC secret.
enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ec(aws_lc_rs::signature::EcdsaKeyPair),
    Ed(aws_lc_rs::signature::Ed25519KeyPair),
    Hmac(Vec<u8>),
}

impl Signer {
    fn hmac(secret: &[u8]) -> Self {
        Signer::Hmac(secret.to_vec())
    }

    /// The JWS signature of `message` under `alg`, as raw bytes.
    fn sign(&self, alg: Algorithm, message: &[u8]) -> Vec<u8> {
        use aws_lc_rs::{hmac, rand::SystemRandom, signature as sig};
        let rng = SystemRandom::new();
        match self {
            Signer::Rsa(key) => {
                let encoding: &'static dyn sig::RsaEncoding = match alg {
                    Algorithm::RS256 => &sig::RSA_PKCS1_SHA256,
                    Algorithm::PS256 => &sig::RSA_PSS_SHA256,
                    other => panic!("{other:?} not used with RSA in tests"),
                };
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(encoding, &rng, message, &mut out).unwrap();
                out
            }
            Signer::Ec(key) => key.sign(&rng, message).unwrap().as_ref().to_vec(),
            Signer::Ed(key) => key.sign(message).as_ref().to_vec(),
            Signer::Hmac(secret) => {
                let alg = match alg {
                    Algorithm::HS256 => hmac::HMAC_SHA256,
                    Algorithm::HS384 => hmac::HMAC_SHA384,
                    Algorithm::HS512 => hmac::HMAC_SHA512,
                    other => panic!("{other:?} is not HMAC"),
                };
                hmac::sign(&hmac::Key::new(alg, secret), message)
                    .as_ref()
                    .to_vec()
            }
        }
    }
}

struct TestKey {
    alg: Algorithm,
    kid: String,
    signer: Signer,
    jwk: Value,
    pem: String,
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PEM block of `label` around `der`, lines of 64 characters.
fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The SPKI DER of a public key.
fn spki(
    key: &impl aws_lc_rs::encoding::AsDer<aws_lc_rs::encoding::PublicKeyX509Der<'static>>,
) -> Vec<u8> {
    key.as_der().unwrap().as_ref().to_vec()
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        other => panic!("{other:?} not used in tests"),
    }
}

fn ec_key(kid: &str) -> TestKey {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    // The uncompressed point `04 || x || y`.
    let point = key.public_key().as_ref().to_vec();
    TestKey {
        alg: Algorithm::ES256,
        kid: kid.to_owned(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }),
        pem: pem("PUBLIC KEY", &spki(key.public_key())),
        signer: Signer::Ec(key),
    }
}

/// RSA key generation is slow in debug builds, so the tests share one key.
static RSA_KEY: LazyLock<aws_lc_rs::rsa::KeyPair> =
    LazyLock::new(|| aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap());

fn rsa_key(kid: &str) -> TestKey {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let private = &*RSA_KEY;
    let public = private.public_key();
    // Each test key signs with its own copy, parsed from the shared key's PKCS#8.
    let pkcs8 = private.as_der().unwrap();
    TestKey {
        alg: Algorithm::RS256,
        kid: kid.to_owned(),
        jwk: json!({
            "kty": "RSA", "kid": kid, "use": "sig",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        }),
        pem: pem("PUBLIC KEY", &spki(public)),
        signer: Signer::Rsa(aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
    }
}

fn ed_key(kid: &str) -> TestKey {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let key = Ed25519KeyPair::generate().unwrap();
    TestKey {
        alg: Algorithm::EdDSA,
        kid: kid.to_owned(),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(key.public_key().as_ref())}),
        pem: pem("PUBLIC KEY", &spki(key.public_key())),
        signer: Signer::Ed(key),
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> u64 {
    unix_now()
}

/// A JOSE header of an access token as the plugin requires it by default: `typ: at+jwt`.
fn access_header(alg: &str, kid: Option<&str>) -> Value {
    let mut header = json!({"alg": alg, "typ": "at+jwt"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    header
}

fn header_for(key: &TestKey) -> Value {
    access_header(alg_name(key.alg), Some(&key.kid))
}

fn claims() -> Value {
    let now = now();
    json!({
        "iss": ISS, "aud": AUD, "sub": "service-a", "client_id": "service-a",
        "scope": "orders:read orders:write", "iat": now, "nbf": now, "exp": now + 300,
        "jti": format!("{:x}", rand::random::<u64>()),
    })
}

fn encode_parts(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(serde_json::to_vec(header).unwrap()),
        b64(serde_json::to_vec(claims).unwrap())
    )
}

/// Signs `header.claims` with `signer` under `alg`, whatever the header says.
fn sign_raw(signer: &Signer, alg: Algorithm, header: &Value, claims: &Value) -> String {
    let message = encode_parts(header, claims);
    let signature = b64(signer.sign(alg, message.as_bytes()));
    format!("{message}.{signature}")
}

fn sign(key: &TestKey, header: &Value, claims: &Value) -> String {
    sign_raw(&key.signer, key.alg, header, claims)
}

/// A valid token from `key`, after `edit` changed its header or claims.
fn token_with(key: &TestKey, edit: impl FnOnce(&mut Value, &mut Value)) -> String {
    let mut header = header_for(key);
    let mut claims = claims();
    edit(&mut header, &mut claims);
    sign(key, &header, &claims)
}

fn token(key: &TestKey) -> String {
    token_with(key, |_, _| {})
}

// ---------------------------------------------------------------------------------------
// A tiny HTTP server for JWKS and introspection

struct Server {
    addr: SocketAddr,
    state: Arc<ServerState>,
}

struct ServerState {
    reply: Mutex<(u16, String)>,
    delay: Mutex<Duration>,
    hits: AtomicUsize,
    requests: Mutex<Vec<String>>,
    /// Requests being answered now, and the most there ever were at once.
    active: AtomicUsize,
    max_active: AtomicUsize,
}

impl Server {
    async fn start(status: u16, body: impl Into<String>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState {
            reply: Mutex::new((status, body.into())),
            delay: Mutex::new(Duration::ZERO),
            hits: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(conn, Arc::clone(&shared)));
            }
        });
        Server { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn set(&self, status: u16, body: impl Into<String>) {
        *self.state.reply.lock().unwrap() = (status, body.into());
    }

    fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn max_active(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> String {
        self.state
            .requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits (bounded) until the server has answered `n` requests.
    async fn wait_for_hits(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.hits() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the plugin store what it fetched.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serve(mut conn: tokio::net::TcpStream, state: Arc<ServerState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = conn.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let Ok(n) = conn.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    state
        .requests
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&buf).to_string());
    let active = state.active.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_active.fetch_max(active, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let (status, body) = state.reply.lock().unwrap().clone();
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.active.fetch_sub(1, Ordering::SeqCst);
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Plugins and requests

fn plugin(src: &str) -> Jwt {
    Jwt::from_config(toml::from_str(src).expect("test TOML parses"))
        .unwrap_or_else(|e| panic!("config builds: {e}"))
}

fn config_error(src: &str) -> (String, Option<String>) {
    match Jwt::from_config(toml::from_str(src).expect("test TOML parses")) {
        Err(BuildError::InvalidConfig { message, field, .. }) => (message, field),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("config should fail:\n{src}"),
    }
}

/// A plugin whose one issuer takes its keys from `url`; `top` goes before the issuer table
/// and `issuer` inside it.
fn remote(url: &str, top: &str, issuer: &str) -> Jwt {
    plugin(&one_issuer(top, &format!("jwks_url = \"{url}\"\n{issuer}")))
}

/// A plugin config (realm `test`, then `top`) with one issuer of [`ISS`] for [`AUD`],
/// whose table ends with `issuer`.
fn one_issuer(top: &str, issuer: &str) -> String {
    format!("realm = \"test\"\n{top}\n[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n{issuer}\n")
}

/// A JWKS server serving `keys` and a plugin using it.
async fn served(keys: &[&TestKey], top: &str, issuer: &str) -> (Server, Jwt) {
    let server = Server::start(200, jwks(keys)).await;
    let p = remote(&server.url(), top, issuer);
    (server, p)
}

/// `GET target`, no headers.
fn get(target: &str) -> RequestHeader {
    RequestHeader::build("GET", target.as_bytes(), None).unwrap()
}

fn request(auth: Option<&str>) -> RequestHeader {
    let mut req = get("/orders/1");
    if let Some(token) = auth {
        req.insert_header("Authorization", format!("Bearer {token}"))
            .unwrap();
    }
    req
}

async fn run(p: &Jwt, req: &mut RequestHeader) -> (Flow, PluginCtx) {
    let mut ctx = PluginCtx::default();
    let flow = p.request(&mut ctx, req).await;
    (flow, ctx)
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).map(|v| v.to_str().unwrap())
}

fn resp_header<'a>(resp: &'a PluginResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_str().unwrap())
}

fn challenge(code: &str, description: &str) -> String {
    format!("Bearer realm=\"test\", error=\"{code}\", error_description=\"{description}\"")
}

fn bad_token(description: &str) -> String {
    challenge("invalid_token", description)
}

/// Runs `req` through `p`, expecting a refusal with exactly `status` and `www` (no header
/// when `None`), and the RFC 6750 hygiene every refusal must have.
async fn refused(
    p: &Jwt,
    req: &mut RequestHeader,
    status: u16,
    www: Option<&str>,
) -> PluginResponse {
    let (flow, ctx) = run(p, req).await;
    let Flow::Respond(resp) = flow else {
        panic!("expected {status}, the request was let through");
    };
    assert_eq!(resp.status.as_u16(), status);
    assert_eq!(resp_header(&resp, "www-authenticate"), www);
    assert_eq!(resp_header(&resp, "cache-control"), Some("no-store"));
    assert_eq!(
        resp_header(&resp, "content-type"),
        Some("application/problem+json")
    );
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["status"], status);
    assert!(ctx.identity.is_none());
    resp
}

async fn refused_token(p: &Jwt, token: &str, status: u16, www: Option<&str>) -> PluginResponse {
    refused(p, &mut request(Some(token)), status, www).await
}

async fn admitted(p: &Jwt, token: &str) -> (RequestHeader, PluginCtx) {
    let mut req = request(Some(token));
    let (flow, ctx) = run(p, &mut req).await;
    match flow {
        Flow::Continue => (req, ctx),
        Flow::Respond(resp) => panic!(
            "refused with {}: {:?}",
            resp.status,
            resp_header(&resp, "www-authenticate")
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Happy paths

#[tokio::test]
async fn every_default_algorithm_is_accepted_and_the_identity_forwarded() {
    let (ec, rsa, ed) = (ec_key("ec-1"), rsa_key("rsa-1"), ed_key("ed-1"));
    let (_server, p) = served(&[&ec, &rsa, &ed], "", "").await;
    for key in [&ec, &rsa, &ed] {
        let (req, ctx) = admitted(&p, &token(key)).await;
        let identity = ctx.identity.expect("identity set");
        assert_eq!(identity.subject, "service-a");
        assert_eq!(identity.client_id.as_deref(), Some("service-a"));
        assert_eq!(identity.scopes, ["orders:read", "orders:write"]);
        assert_eq!(header(&req, "x-portico-subject"), Some("service-a"));
        assert_eq!(header(&req, "x-portico-client-id"), Some("service-a"));
        assert_eq!(
            header(&req, "x-portico-scopes"),
            Some("orders:read orders:write")
        );
        // Forwarded by default, for upstreams that verify again.
        assert!(header(&req, "authorization").is_some());
    }
    assert_eq!(
        p.hooks(),
        Hooks {
            request: true,
            ..Hooks::default()
        }
    );
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    // A token without client_id/azp: the client's header must not survive in its place.
    let t = token_with(&key, |_, c| {
        c.as_object_mut().unwrap().remove("client_id");
    });
    let mut req = request(Some(&t));
    req.insert_header("X-Portico-Subject", "admin").unwrap();
    req.append_header("x-portico-subject", "root").unwrap();
    req.insert_header("X-PORTICO-CLIENT-ID", "admin-console")
        .unwrap();
    req.insert_header("X-Portico-Scopes", "admin:all").unwrap();
    let (flow, ctx) = run(&p, &mut req).await;
    assert!(matches!(flow, Flow::Continue));
    let subjects: Vec<_> = req.headers.get_all("x-portico-subject").iter().collect();
    assert_eq!(subjects, ["service-a"]);
    assert_eq!(header(&req, "x-portico-client-id"), None);
    assert_eq!(
        header(&req, "x-portico-scopes"),
        Some("orders:read orders:write")
    );
    assert_eq!(ctx.identity.unwrap().client_id, None);

    // A refused request goes nowhere, with or without them.
    let mut req = request(None);
    req.insert_header("X-Portico-Subject", "admin").unwrap();
    refused(&p, &mut req, 401, Some("Bearer realm=\"test\"")).await;
}

#[tokio::test]
async fn azp_and_scp_are_read_when_client_id_and_scope_are_absent() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "scopes_all = [\"b\"]", "").await;
    let t = token_with(&key, |_, c| {
        let c = c.as_object_mut().unwrap();
        c.remove("client_id");
        c.remove("scope");
        c.insert("azp".into(), json!("app-7"));
        c.insert("scp".into(), json!(["a", "b"]));
    });
    let (req, ctx) = admitted(&p, &t).await;
    let identity = ctx.identity.unwrap();
    assert_eq!(identity.client_id.as_deref(), Some("app-7"));
    assert_eq!(identity.scopes, ["a", "b"]);
    assert_eq!(header(&req, "x-portico-scopes"), Some("a b"));
}

#[tokio::test]
async fn strip_authorization_and_custom_headers() {
    let key = ec_key("k1");
    let (_server, p) = served(
        &[&key],
        "strip_authorization = true\nsubject_header = \"X-Caller\"\nscopes_header = \"\"",
        "",
    )
    .await;
    let mut req = request(Some(&token(&key)));
    req.insert_header("X-Portico-Scopes", "admin").unwrap();
    let (flow, _) = run(&p, &mut req).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(header(&req, "authorization"), None);
    assert_eq!(header(&req, "x-caller"), Some("service-a"));
    assert_eq!(header(&req, "x-portico-subject"), None);
    // No longer an identity header: the gateway neither sets nor owns it.
    assert_eq!(header(&req, "x-portico-scopes"), Some("admin"));
}

#[tokio::test]
async fn the_registry_builds_it() {
    let key = ec_key("k1");
    let server = Server::start(200, jwks(&[&key])).await;
    let table: toml::Value = toml::from_str(&format!(
        "[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_url = \"{}\"",
        server.url()
    ))
    .unwrap();
    let p = crate::registry::build(NAME, table).unwrap();
    assert_eq!(p.name(), "jwt");
    let mut req = request(Some(&token(&key)));
    let mut ctx = PluginCtx::default();
    assert!(matches!(
        p.request(&mut ctx, &mut req).await,
        Flow::Continue
    ));
    let mut req = request(None);
    let Flow::Respond(resp) = p.request(&mut ctx, &mut req).await else {
        panic!("missing token admitted")
    };
    // The default realm.
    assert_eq!(
        resp_header(&resp, "www-authenticate"),
        Some("Bearer realm=\"portico\"")
    );
}

#[tokio::test]
async fn verify_token_is_callable_directly() {
    let key = rsa_key("rsa-1");
    let (_server, p) = served(&[&key], "", "").await;
    let t = token(&key);
    let verified = p.verify_token(&t).await.unwrap();
    assert_eq!(verified.claims()["iss"], ISS);
    assert_eq!(verified.identity().subject, "service-a");
    assert!(verified.expires_at() > now());
    let cold = p.verify_token_uncached(&t).await.unwrap();
    assert_eq!(cold.identity().subject, "service-a");
    assert_eq!(p.signature_checks(), 2);
    assert_eq!(
        p.verify_token("nope").await.unwrap_err(),
        AuthError::InvalidToken(MALFORMED)
    );
}

// ---------------------------------------------------------------------------------------
// RFC 6750 request handling

#[tokio::test]
async fn missing_or_foreign_credentials_get_a_bare_challenge() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    let bare = Some("Bearer realm=\"test\"");
    let resp = refused(&p, &mut request(None), 401, bare).await;
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["type"], "urn:portico:problem:missing_token");
    assert_eq!(body["instance"], "/orders/1");

    let mut req = request(None);
    req.insert_header("Authorization", "Basic c2VydmljZS1hOnNlY3JldA==")
        .unwrap();
    refused(&p, &mut req, 401, bare).await;
}

#[tokio::test]
async fn malformed_requests_are_400_invalid_request() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    let t = token(&key);

    let mut req = request(Some(&t));
    req.append_header("Authorization", format!("Bearer {t}"))
        .unwrap();
    refused(
        &p,
        &mut req,
        400,
        Some(&challenge("invalid_request", DUPLICATE_AUTHORIZATION)),
    )
    .await;

    for (value, description) in [
        ("Bearer", EMPTY_TOKEN),
        ("Bearer    ", EMPTY_TOKEN),
        ("Bearer a b", MALFORMED_CREDENTIALS),
        ("bearer {t}, Bearer {t}", MALFORMED_CREDENTIALS),
        ("Bearer ###", MALFORMED_CREDENTIALS),
    ] {
        let mut req = request(None);
        req.insert_header("Authorization", value.replace("{t}", &t))
            .unwrap();
        refused(
            &p,
            &mut req,
            400,
            Some(&challenge("invalid_request", description)),
        )
        .await;
    }

    // The scheme is case-insensitive and may be followed by several spaces.
    let mut req = request(None);
    req.insert_header("Authorization", format!("bEaReR   {t}"))
        .unwrap();
    assert!(matches!(run(&p, &mut req).await.0, Flow::Continue));
}

#[tokio::test]
async fn query_tokens_are_refused_unless_allowed() {
    let key = ec_key("k1");
    let (server, p) = served(&[&key], "", "").await;
    let t = token(&key);
    let mut req = get(&format!("/orders?a=1&access_token={t}"));
    refused(
        &p,
        &mut req,
        400,
        Some(&challenge("invalid_request", QUERY_NOT_ALLOWED)),
    )
    .await;

    let p = remote(
        &server.url(),
        "allow_query_token = true\nstrip_authorization = true",
        "",
    );
    let mut req = get(&format!("/orders?a=1&access_token={t}&b=2"));
    let (flow, ctx) = run(&p, &mut req).await;
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(ctx.identity.unwrap().subject, "service-a");
    // Stripped from what the upstream sees, the rest of the query kept.
    assert_eq!(req.uri.to_string(), "/orders?a=1&b=2");

    // Both ways at once, or twice in the query: invalid_request.
    let mut req = get(&format!("/orders?access_token={t}"));
    req.insert_header("Authorization", format!("Bearer {t}"))
        .unwrap();
    refused(
        &p,
        &mut req,
        400,
        Some(&challenge("invalid_request", TWO_METHODS)),
    )
    .await;
    let mut req = get(&format!("/orders?access_token={t}&access_token={t}"));
    refused(
        &p,
        &mut req,
        400,
        Some(&challenge("invalid_request", REPEATED_QUERY_TOKEN)),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// The attack suite

#[tokio::test]
async fn alg_none_is_refused_in_any_spelling() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let unsigned = encode_parts(&access_header(alg, Some("k1")), &claims());
        for t in [format!("{unsigned}."), format!("{unsigned}.c2lnbmF0dXJl")] {
            refused_token(&p, &t, 401, Some(&bad_token(UNSIGNED))).await;
        }
    }
    assert_eq!(p.signature_checks(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    use aws_lc_rs::signature::KeyPair;
    let rsa = rsa_key("rsa-1");
    let public = RSA_KEY.public_key();
    let secrets: Vec<Vec<u8>> = vec![
        rsa.pem.clone().into_bytes(),
        spki(public),
        public.modulus().big_endian_without_leading_zero().to_vec(),
        rsa.jwk.to_string().into_bytes(),
    ];
    let forge = |secret: &[u8]| {
        sign_raw(
            &Signer::hmac(secret),
            Algorithm::HS256,
            &access_header("HS256", Some("rsa-1")),
            &claims(),
        )
    };

    // The default allow-list has no HMAC algorithm at all.
    let (server, p) = served(&[&rsa], "", "").await;
    for secret in &secrets {
        refused_token(&p, &forge(secret), 401, Some(&bad_token(ALG_NOT_ALLOWED))).await;
    }
    assert_eq!(p.signature_checks(), 0);

    // Even where HS256 is allowed, its key is the configured secret, never the RSA key.
    let secret = "k".repeat(32);
    let p = remote(
        &server.url(),
        "",
        &format!("algorithms = [\"RS256\", \"HS256\"]\nhmac_secret = \"{secret}\""),
    );
    for forged in secrets.iter().map(|s| forge(s)) {
        refused_token(&p, &forged, 401, Some(&bad_token(BAD_SIGNATURE))).await;
    }
    // ... while the issuer's real secret and real RSA key both work.
    admitted(&p, &forge(secret.as_bytes())).await;
    admitted(&p, &token(&rsa)).await;
}

#[tokio::test]
async fn wrong_keys_and_tampering_are_refused() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;

    // Signed by another key under the legitimate kid.
    let impostor = ec_key("k1");
    refused_token(&p, &token(&impostor), 401, Some(&bad_token(BAD_SIGNATURE))).await;

    // A valid token whose payload was swapped after signing.
    let good = token(&key);
    let mut parts: Vec<&str> = good.split('.').collect();
    let mut forged_claims = claims();
    forged_claims["sub"] = json!("admin");
    forged_claims["scope"] = json!("orders:read orders:write orders:admin");
    let payload = b64(serde_json::to_vec(&forged_claims).unwrap());
    parts[1] = &payload;
    refused_token(&p, &parts.join("."), 401, Some(&bad_token(BAD_SIGNATURE))).await;

    // A signature of another algorithm's key type: an RS256 header on an ES256 key's kid.
    let rsa = rsa_key("k1");
    refused_token(&p, &token(&rsa), 401, Some(&bad_token(UNKNOWN_KEY))).await;

    // The real token still works.
    admitted(&p, &good).await;
}

#[tokio::test]
async fn time_issuer_audience_and_claims_are_checked() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "typ = \"at+jwt\"").await;
    let n = now();
    for (edit, description) in [
        (json!({"exp": n - 120}), EXPIRED),
        (json!({"nbf": n + 120}), NOT_YET_VALID),
        (json!({"iss": "https://evil.test"}), UNKNOWN_ISSUER),
        (json!({"iss": [ISS]}), MALFORMED_CLAIM),
        (json!({"aud": "payments"}), AUDIENCE),
        (json!({"aud": ["payments", "billing"]}), AUDIENCE),
        (json!({"aud": null}), AUDIENCE),
        (json!({"exp": null}), MISSING_CLAIM),
        (json!({"exp": "tomorrow"}), MALFORMED_CLAIM),
        (json!({"sub": null}), MISSING_CLAIM),
        (json!({"sub": 42}), MALFORMED_CLAIM),
        (
            json!({"scope": ["orders:read"], "client_id": 7}),
            MALFORMED_CLAIM,
        ),
    ] {
        let t = token_with(&key, |_, c| {
            for (name, value) in edit.as_object().unwrap() {
                c[name] = value.clone();
            }
        });
        refused_token(&p, &t, 401, Some(&bad_token(description))).await;
    }
    // None of those needed a signature check.
    assert_eq!(p.signature_checks(), 2);

    // Within the leeway both ways, and with `aud` as an array naming us.
    let t = token_with(&key, |_, c| {
        c["exp"] = json!(n - 10);
        c["nbf"] = json!(n + 10);
        c["aud"] = json!(["billing", AUD]);
    });
    admitted(&p, &t).await;

    // typ: case-insensitive, `application/` optional, but required.
    for (typ, ok) in [
        (json!("application/AT+JWT"), true),
        (json!("JWT"), false),
        (Value::Null, false),
    ] {
        let t = token_with(&key, |h, _| h["typ"] = typ.clone());
        if ok {
            admitted(&p, &t).await;
        } else {
            refused_token(&p, &t, 401, Some(&bad_token(BAD_TYP))).await;
        }
    }
}

#[tokio::test]
async fn unknown_kids_and_disallowed_algorithms_are_refused() {
    let key = ec_key("k1");
    let (server, p) = served(&[&key], "", "algorithms = [\"ES256\"]").await;
    admitted(&p, &token(&key)).await;
    let stranger = ec_key("who-knows");
    refused_token(&p, &token(&stranger), 401, Some(&bad_token(UNKNOWN_KEY))).await;
    let ed = ed_key("k1");
    refused_token(&p, &token(&ed), 401, Some(&bad_token(ALG_NOT_ALLOWED))).await;
    let t = token_with(&key, |h, _| h["alg"] = json!("ES512"));
    refused_token(&p, &t, 401, Some(&bad_token(UNSUPPORTED_ALG))).await;
    let t = token_with(&key, |h, _| h["alg"] = json!("es256"));
    refused_token(&p, &t, 401, Some(&bad_token(UNSUPPORTED_ALG))).await;
    // One refetch for the unknown kid, none for the rest.
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn malformed_tokens_are_invalid_token() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    let good = token(&key);
    let (_, rest) = good.split_once('.').unwrap();
    let sig = good.rsplit('.').next().unwrap();
    let payload = good.split('.').nth(1).unwrap();
    let malformed = [
        // base64 that is not base64url, or not canonical
        format!("eyJ+.{rest}"),
        format!("{}.{payload}/.{sig}", header_b64(&header_for(&key))),
        // JSON that is not JSON, or not an object
        format!("{}.{rest}", b64("{\"alg\":\"ES256\"")),
        format!(
            "{}.{}.{sig}",
            header_b64(&header_for(&key)),
            b64("not json")
        ),
        format!("{}.{}.{sig}", header_b64(&header_for(&key)), b64("[1,2]")),
        format!("{}.{rest}", b64("[\"ES256\"]")),
        // duplicate members, which parsers resolve differently
        format!(
            "{}.{rest}",
            b64("{\"alg\":\"none\",\"alg\":\"ES256\",\"kid\":\"k1\"}")
        ),
        format!(
            "{}.{}.{sig}",
            header_b64(&header_for(&key)),
            b64(format!("{{\"iss\":\"https://evil\",\"iss\":\"{ISS}\"}}"))
        ),
        // wrong number of segments
        good.replacen('.', "", 1),
        format!("{good}.{sig}"),
        "a.b.c".to_owned(),
    ];
    for t in &malformed {
        refused_token(&p, t, 401, Some(&bad_token(MALFORMED))).await;
    }
    assert_eq!(p.signature_checks(), 0);
}

fn header_b64(header: &Value) -> String {
    b64(serde_json::to_vec(header).unwrap())
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_decoding() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "max_token_bytes = 1024", "").await;
    let t = token_with(&key, |_, c| c["pad"] = json!("x".repeat(2000)));
    refused_token(&p, &t, 401, Some(&bad_token(TOO_LARGE))).await;
    let huge = "a".repeat(70_000);
    refused_token(&p, &huge, 401, Some(&bad_token(TOO_LARGE))).await;
    assert_eq!(p.signature_checks(), 0);
}

#[tokio::test]
async fn embedded_and_remote_header_keys_are_never_used() {
    let key = ec_key("k1");
    let (server, p) = served(&[&key], "", "").await;
    let attacker = ec_key("attacker");
    let attacker_server = Server::start(200, jwks(&[&attacker])).await;
    let attacker_url = attacker_server.url();

    // The attacker's own key, embedded or pointed at, under its own kid.
    for extra in [
        json!({"jwk": attacker.jwk}),
        json!({"jku": attacker_url}),
        json!({"x5u": attacker_url}),
        json!({"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}),
        json!({"jwk": attacker.jwk, "jku": attacker_url}),
    ] {
        let t = token_with(&attacker, |h, _| {
            for (name, value) in extra.as_object().unwrap() {
                h[name] = value.clone();
            }
        });
        refused_token(&p, &t, 401, Some(&bad_token(UNKNOWN_KEY))).await;
        // The same under the legitimate kid: the issuer's key is used, and fails.
        let t = token_with(&attacker, |h, _| {
            h["kid"] = json!("k1");
            for (name, value) in extra.as_object().unwrap() {
                h[name] = value.clone();
            }
        });
        refused_token(&p, &t, 401, Some(&bad_token(BAD_SIGNATURE))).await;
    }
    assert_eq!(attacker_server.hits(), 0);
    // The first fetch, and one refetch for the attacker's kid (the floor held the rest).
    assert_eq!(server.hits(), 2);
    // A legitimate token carrying such members is judged on its signature alone.
    let t = token_with(&key, |h, _| h["jku"] = json!(attacker_url));
    admitted(&p, &t).await;
}

#[tokio::test]
async fn crit_headers_are_refused() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    for crit in [json!(["exp"]), json!([]), json!(["b64"]), Value::Null] {
        let t = token_with(&key, |h, _| {
            h["crit"] = crit.clone();
            h["b64"] = json!(false);
        });
        refused_token(&p, &t, 401, Some(&bad_token(CRIT))).await;
    }
}

#[tokio::test]
async fn missing_scopes_and_claims_are_403_insufficient_scope() {
    let key = ec_key("k1");
    let server = Server::start(200, jwks(&[&key])).await;
    let url = server.url();
    let t = token(&key);

    let p = remote(&url, "scopes_all = [\"orders:read\", \"orders:admin\"]", "");
    let resp = refused_token(
        &p,
        &t,
        403,
        Some(
            "Bearer realm=\"test\", error=\"insufficient_scope\", \
             error_description=\"token lacks a scope this route requires\", \
             scope=\"orders:read orders:admin\"",
        ),
    )
    .await;
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["type"], "urn:portico:problem:insufficient_scope");

    let p = remote(
        &url,
        "scopes_any = [\"orders:admin\", \"billing:read\"]",
        "",
    );
    refused_token(
        &p,
        &t,
        403,
        Some(
            "Bearer realm=\"test\", error=\"insufficient_scope\", \
             error_description=\"token has none of the scopes this route accepts\", \
             scope=\"orders:admin billing:read\"",
        ),
    )
    .await;
    let p = remote(
        &url,
        "scopes_any = [\"orders:admin\", \"orders:write\"]",
        "",
    );
    admitted(&p, &t).await;

    let p = remote(
        &url,
        "claims = { tenant = \"acme\", roles = [\"admin\", \"ops\"] }",
        "",
    );
    refused_token(
        &p,
        &t,
        403,
        Some(
            "Bearer realm=\"test\", error=\"insufficient_scope\", \
             error_description=\"token claims do not permit this route\"",
        ),
    )
    .await;
    let ok = token_with(&key, |_, c| {
        c["tenant"] = json!("acme");
        c["roles"] = json!(["reader", "ops"]);
    });
    admitted(&p, &ok).await;
    let wrong_tenant = token_with(&key, |_, c| {
        c["tenant"] = json!("evil");
        c["roles"] = json!("admin");
    });
    refused_token(
        &p,
        &wrong_tenant,
        403,
        Some(
            "Bearer realm=\"test\", error=\"insufficient_scope\", \
             error_description=\"token claims do not permit this route\"",
        ),
    )
    .await;
}

#[tokio::test]
async fn claims_that_cannot_be_headers_are_refused() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    let t = token_with(&key, |_, c| c["sub"] = json!("svc\r\nX-Admin: 1"));
    refused_token(&p, &t, 401, Some(&bad_token(UNFORWARDABLE))).await;
}

// ---------------------------------------------------------------------------------------
// The verified-token cache

#[tokio::test]
async fn a_repeated_token_costs_no_signature_check() {
    let key = rsa_key("rsa-1");
    let (server, p) = served(&[&key], "scopes_all = [\"orders:read\"]", "").await;
    let t = token(&key);
    admitted(&p, &t).await;
    assert_eq!(p.signature_checks(), 1);
    for _ in 0..5 {
        let (req, ctx) = admitted(&p, &t).await;
        assert_eq!(ctx.identity.unwrap().subject, "service-a");
        assert_eq!(header(&req, "x-portico-subject"), Some("service-a"));
    }
    assert_eq!(p.signature_checks(), 1);
    // Authorization is still per request: the cached token lacks this route's scope.
    let strict = remote(&server.url(), "scopes_all = [\"orders:admin\"]", "");
    refused_token(&strict, &t, 403, strict_challenge().as_deref()).await;

    // Another token is verified on its own.
    admitted(&p, &token(&key)).await;
    assert_eq!(p.signature_checks(), 2);
    let stats = p.stats();
    assert_eq!((stats.signature_checks, stats.cached_tokens), (2, 2));

    // cache_size = 0 turns it off.
    let uncached = remote(&server.url(), "cache_size = 0", "");
    admitted(&uncached, &t).await;
    admitted(&uncached, &t).await;
    assert_eq!(uncached.signature_checks(), 2);
}

fn strict_challenge() -> Option<String> {
    Some(
        "Bearer realm=\"test\", error=\"insufficient_scope\", \
         error_description=\"token lacks a scope this route requires\", scope=\"orders:admin\""
            .to_owned(),
    )
}

#[tokio::test]
async fn a_cached_token_dies_at_its_exp() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "leeway = \"0s\"").await;
    let exp = now() + 2;
    let t = token_with(&key, |_, c| c["exp"] = json!(exp));
    admitted(&p, &t).await;
    admitted(&p, &t).await;
    assert_eq!(p.signature_checks(), 1);
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused_token(&p, &t, 401, Some(&bad_token(EXPIRED))).await;
    assert_eq!(p.signature_checks(), 1);
}

// ---------------------------------------------------------------------------------------
// JWKS fetching

#[tokio::test]
async fn keys_are_fetched_lazily_once_and_shared() {
    let key = ec_key("k1");
    let (server, p) = served(&[&key], "", "").await;
    assert_eq!(server.hits(), 0, "building fetched");
    admitted(&p, &token(&key)).await;
    admitted(&p, &token(&key)).await;
    assert_eq!(server.hits(), 1);
    assert!(server.last_request().starts_with("GET /jwks HTTP/1.1\r\n"));

    // A second plugin (another route, or the next config) naming the same URL reuses it.
    let other = remote(&server.url(), "scopes_any = [\"orders:read\"]", "");
    admitted(&other, &token(&key)).await;
    assert_eq!(server.hits(), 1);
    assert_eq!(other.stats().jwks_fetches, 1);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_fetch() {
    let key = ec_key("k1");
    let server = Server::start(200, jwks(&[&key])).await;
    server.set_delay(Duration::from_millis(200));
    let p = Arc::new(remote(&server.url(), "", ""));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let p = Arc::clone(&p);
            let t = token(&key);
            tokio::spawn(async move { p.verify_token(&t).await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(()));
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn an_unknown_kid_refreshes_no_more_often_than_the_floor() {
    let old = ec_key("old");
    let new = ec_key("new");
    let newer = ec_key("newer");
    let (server, p) = served(&[&old], "", "jwks_min_refresh = \"1s\"").await;
    admitted(&p, &token(&old)).await;
    assert_eq!(server.hits(), 1);

    // The issuer rotates right after the first fetch: the new kid is picked up at once.
    server.set(200, jwks(&[&old, &new]));
    admitted(&p, &token(&new)).await;
    assert_eq!(server.hits(), 2);

    // A flood of random kids gets no fetch before the floor has passed, and neither does
    // a real rotation caught inside it.
    for i in 0..20 {
        let random = ec_key(&format!("random-{i}"));
        refused_token(&p, &token(&random), 401, Some(&bad_token(UNKNOWN_KEY))).await;
    }
    server.set(200, jwks(&[&old, &new, &newer]));
    refused_token(&p, &token(&newer), 401, Some(&bad_token(UNKNOWN_KEY))).await;
    assert_eq!(server.hits(), 2);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    admitted(&p, &token(&newer)).await;
    assert_eq!(server.hits(), 3);
    admitted(&p, &token(&old)).await;
    let random = ec_key("random-again");
    refused_token(&p, &token(&random), 401, Some(&bad_token(UNKNOWN_KEY))).await;
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_set() {
    let key = ec_key("k1");
    let (server, p) = served(
        &[&key],
        "",
        "jwks_refresh = \"1s\"\njwks_min_refresh = \"1s\"",
    )
    .await;
    admitted(&p, &token(&key)).await;
    server.set(500, "{\"error\":\"down\"}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Due for a refresh: it starts in the background and the request does not wait for it.
    admitted(&p, &token(&key)).await;
    server.wait_for_hits(2).await;
    // The refresh failed; the old set still verifies.
    admitted(&p, &token(&key)).await;

    // An unknown kid after the floor refetches, fails, and is an invalid token, not a 503.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stranger = ec_key("k2");
    refused_token(&p, &token(&stranger), 401, Some(&bad_token(UNKNOWN_KEY))).await;
    assert_eq!(server.hits(), 3);

    // Garbage and empty sets do not replace it either.
    for body in [
        "not json",
        "{\"keys\":[]}",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}",
    ] {
        server.set(200, body);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        refused_token(&p, &token(&stranger), 401, Some(&bad_token(UNKNOWN_KEY))).await;
        admitted(&p, &token(&key)).await;
    }
}

#[tokio::test]
async fn without_any_key_set_the_answer_is_503_until_the_issuer_is_back() {
    let key = ec_key("k1");
    let server = Server::start(500, "oops").await;
    let p = remote(&server.url(), "", "jwks_min_refresh = \"1s\"");
    let resp = refused_token(&p, &token(&key), 503, None).await;
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["detail"], KEYS_UNAVAILABLE);
    // Within the floor nothing is refetched.
    refused_token(&p, &token(&key), 503, None).await;
    assert_eq!(server.hits(), 1);
    // The key set's state, as the admin console and /metrics show it.
    let state = || {
        super::key_sets()
            .into_iter()
            .find(|s| s.url == server.url())
            .expect("the key set is listed")
    };
    let failing = state();
    assert_eq!(
        (failing.keys, failing.fetches, failing.failures),
        (None, 1, 1)
    );
    assert!(failing.last_error.is_some_and(|e| e.contains("500")));
    assert_eq!(failing.last_success_age, None);

    server.set(200, jwks(&[&key]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    admitted(&p, &token(&key)).await;
    assert_eq!(server.hits(), 2);
    let good = state();
    assert_eq!((good.keys, good.fetches, good.failures), (Some(1), 2, 1));
    assert_eq!(good.last_error, None);
    assert!(good.last_success_age.is_some());
}

#[tokio::test]
async fn a_slow_issuer_times_out() {
    let key = ec_key("k1");
    let server = Server::start(200, jwks(&[&key])).await;
    server.set_delay(Duration::from_secs(3));
    let p = remote(&server.url(), "", "jwks_timeout = \"300ms\"");
    let started = Instant::now();
    refused_token(&p, &token(&key), 503, None).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn building_needs_no_runtime_and_no_network() {
    // No Tokio runtime here, as in `portico check`.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let p = remote(&url, "", "");
    assert_eq!(p.stats(), JwtStats::default());
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

// ---------------------------------------------------------------------------------------
// Local keys

/// The algorithms the other tests leave out: PS256 next to RS256 from one RSA key without
/// an `alg`, RSA keys as PKCS#1 PEM and with a padded modulus, ES384, HS384 and HS512. A
/// key serves each algorithm with its own parsed form, and a signature of one algorithm
/// never passes for another.
#[tokio::test]
async fn every_algorithm_family_verifies_and_stays_apart() {
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    /// `header.claims` of `alg`, and its signature made as `as_alg`.
    fn signed_as(signer: &Signer, alg: &str, as_alg: Algorithm) -> String {
        let message = encode_parts(&access_header(alg, None), &claims());
        let signature = b64(signer.sign(as_alg, message.as_bytes()));
        format!("{message}.{signature}")
    }

    // RSA: a JWK with a leading zero on its modulus, as some publishers write it.
    let rsa = rsa_key("rsa-1");
    let mut jwk = rsa.jwk.clone();
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    jwk["n"] = json!(b64([&[0u8][..], &n].concat()));
    let set = write("rsa.json", &json!({ "keys": [jwk] }).to_string());
    let pkcs1 = write(
        "rsa1.pem",
        &pem("RSA PUBLIC KEY", RSA_KEY.public_key().as_ref()),
    );
    for path in [set, pkcs1] {
        let p = plugin(&one_issuer(
            "",
            &format!("algorithms = [\"RS256\", \"PS256\"]\nkeys = [{path:?}]"),
        ));
        admitted(&p, &signed_as(&rsa.signer, "RS256", Algorithm::RS256)).await;
        admitted(&p, &signed_as(&rsa.signer, "PS256", Algorithm::PS256)).await;
        for (alg, as_alg) in [("PS256", Algorithm::RS256), ("RS256", Algorithm::PS256)] {
            let forged = signed_as(&rsa.signer, alg, as_alg);
            refused_token(&p, &forged, 401, Some(&bad_token(BAD_SIGNATURE))).await;
        }
    }

    // ES384, from a PEM file and from a JWK.
    let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
    let point = key.public_key().as_ref().to_vec();
    let pem_path = write("ec384.pem", &pem("PUBLIC KEY", &spki(key.public_key())));
    let jwk = json!({"kty": "EC", "crv": "P-384", "x": b64(&point[1..49]), "y": b64(&point[49..])});
    let jwk_path = write("ec384.json", &jwk.to_string());
    let signer = Signer::Ec(key);
    for path in [pem_path, jwk_path] {
        let p = plugin(&one_issuer(
            "",
            &format!("algorithms = [\"ES384\"]\nkeys = [{path:?}]"),
        ));
        admitted(&p, &signed_as(&signer, "ES384", Algorithm::ES384)).await;
        refused_token(
            &p,
            &signed_as(&ec_key("x").signer, "ES384", Algorithm::ES256),
            401,
            Some(&bad_token(BAD_SIGNATURE)),
        )
        .await;
    }

    // HMAC: one secret, three hashes, and a tag of one hash is no tag of another.
    let secret = "s".repeat(64);
    let p = plugin(&one_issuer(
        "",
        &format!("algorithms = [\"HS256\", \"HS384\", \"HS512\"]\nhmac_secret = \"{secret}\""),
    ));
    let hmac = Signer::hmac(secret.as_bytes());
    for (name, alg) in [
        ("HS256", Algorithm::HS256),
        ("HS384", Algorithm::HS384),
        ("HS512", Algorithm::HS512),
    ] {
        admitted(&p, &signed_as(&hmac, name, alg)).await;
    }
    let forged = signed_as(&hmac, "HS512", Algorithm::HS384);
    refused_token(&p, &forged, 401, Some(&bad_token(BAD_SIGNATURE))).await;
}

#[tokio::test]
async fn local_pem_and_jwks_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (ec, rsa, ed) = (ec_key("ec-1"), rsa_key("rsa-1"), ed_key("ed-1"));
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let paths = [
        write("ec.pem", &ec.pem),
        write("rsa.pem", &rsa.pem),
        write("ed.pem", &ed.pem),
    ];
    let p = plugin(&one_issuer("", &format!("keys = {paths:?}")));
    for key in [&ec, &rsa, &ed] {
        admitted(&p, &token(key)).await;
    }
    // PEM keys have no kid, so they fit any kid; the signature still has to hold.
    admitted(&p, &token_with(&ec, |h, _| h["kid"] = json!("whatever"))).await;
    refused_token(
        &p,
        &token(&ec_key("ec-1")),
        401,
        Some(&bad_token(BAD_SIGNATURE)),
    )
    .await;

    let set = write("set.json", &jwks(&[&ec, &ed]));
    let single = write("one.json", &rsa.jwk.to_string());
    let p = plugin(&one_issuer("", &format!("keys = [{set:?}, {single:?}]")));
    for key in [&ec, &rsa, &ed] {
        admitted(&p, &token(key)).await;
    }
    refused_token(
        &p,
        &token(&ec_key("ec-2")),
        401,
        Some(&bad_token(UNKNOWN_KEY)),
    )
    .await;
}

#[tokio::test]
async fn hmac_works_only_with_its_own_secret() {
    let secret = "0123456789abcdef0123456789abcdef";
    let p = plugin(&one_issuer(
        "",
        &format!("algorithms = [\"HS256\"]\nhmac_secret = \"{secret}\""),
    ));
    let header = access_header("HS256", None);
    let good = sign_raw(
        &Signer::hmac(secret.as_bytes()),
        Algorithm::HS256,
        &header,
        &claims(),
    );
    admitted(&p, &good).await;
    let bad = sign_raw(
        &Signer::hmac(&[b'x'; 32]),
        Algorithm::HS256,
        &header,
        &claims(),
    );
    refused_token(&p, &bad, 401, Some(&bad_token(BAD_SIGNATURE))).await;
    let ec = ec_key("k1");
    refused_token(&p, &token(&ec), 401, Some(&bad_token(ALG_NOT_ALLOWED))).await;
}

// ---------------------------------------------------------------------------------------
// Introspection

/// An introspection-only plugin; `extra` goes into the introspection table, which names
/// `audiences = [AUD]` unless `extra` names its own.
fn introspection_config(url: &str, extra: &str) -> String {
    let audiences = if extra.contains("audiences") {
        String::new()
    } else {
        format!("audiences = [\"{AUD}\"]\n")
    };
    format!(
        "realm = \"test\"\n[introspection]\nurl = \"{url}\"\nclient_id = \"gateway\"\n\
         client_secret = \"s3cret:/+\"\n{audiences}{extra}\n"
    )
}

#[tokio::test]
async fn opaque_tokens_are_introspected_and_cached() {
    let answer = json!({
        "active": true, "sub": "service-b", "client_id": "service-b", "scope": "orders:read",
        "exp": now() + 60, "aud": AUD, "iss": ISS,
    });
    let server = Server::start(200, answer.to_string()).await;
    let p = plugin(&introspection_config(
        &server.url(),
        &format!("audiences = [\"{AUD}\"]\nissuer = \"{ISS}\""),
    ));
    let (req, ctx) = admitted(&p, "opaque-token_123~").await;
    assert_eq!(ctx.identity.unwrap().subject, "service-b");
    assert_eq!(header(&req, "x-portico-scopes"), Some("orders:read"));
    let sent = server.last_request();
    assert!(sent.starts_with("POST /jwks HTTP/1.1\r\n"), "{sent}");
    let basic = STANDARD.encode("gateway:s3cret%3A%2F%2B");
    assert!(
        sent.contains(&format!("authorization: Basic {basic}\r\n")),
        "{sent}"
    );
    assert!(
        sent.ends_with("\r\n\r\ntoken=opaque-token_123%7E&token_type_hint=access_token"),
        "{sent}"
    );

    admitted(&p, "opaque-token_123~").await;
    assert_eq!(server.hits(), 1);
    assert_eq!(p.stats().introspections, 1);

    // An answer for another audience is refused.
    server.set(
        200,
        json!({"active": true, "sub": "x", "aud": "payments"}).to_string(),
    );
    refused_token(&p, "another-token", 401, Some(&bad_token(AUDIENCE))).await;
}

#[tokio::test]
async fn inactive_tokens_are_refused_and_remembered() {
    let server = Server::start(200, "{\"active\":false}").await;
    let p = plugin(&introspection_config(&server.url(), ""));
    refused_token(&p, "revoked-token", 401, Some(&bad_token(INACTIVE))).await;
    refused_token(&p, "revoked-token", 401, Some(&bad_token(INACTIVE))).await;
    assert_eq!(server.hits(), 1);
    // "active" must be the JSON true, not something truthy.
    server.set(200, "{\"active\":\"true\",\"sub\":\"x\"}");
    refused_token(&p, "other-token", 401, Some(&bad_token(INACTIVE))).await;
    // An active answer already past its exp is not active.
    server.set(
        200,
        json!({"active": true, "sub": "x", "exp": now() - 1}).to_string(),
    );
    refused_token(&p, "stale-token", 401, Some(&bad_token(INACTIVE))).await;
}

#[tokio::test]
async fn an_unreachable_introspection_endpoint_is_503() {
    let server = Server::start(500, "{}").await;
    let p = plugin(&introspection_config(&server.url(), ""));
    refused_token(&p, "some-token", 503, None).await;
    refused_token(&p, "some-token", 503, None).await;
    // Failures are not cached: each request asks again.
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn jwts_are_verified_locally_and_opaque_tokens_introspected() {
    let key = ec_key("k1");
    let jwks_server = Server::start(200, jwks(&[&key])).await;
    let introspection = Server::start(
        200,
        json!({"active": true, "sub": "opaque", "aud": AUD}).to_string(),
    )
    .await;
    let p = plugin(&format!(
        "{}\n[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_url = \"{}\"",
        introspection_config(&introspection.url(), ""),
        jwks_server.url()
    ));
    admitted(&p, &token(&key)).await;
    assert_eq!(introspection.hits(), 0);
    let (_, ctx) = admitted(&p, "not-a-jwt").await;
    assert_eq!(ctx.identity.unwrap().subject, "opaque");
    // A JWT from an unknown issuer is not handed to introspection.
    let other = token_with(&key, |_, c| c["iss"] = json!("https://elsewhere"));
    refused_token(&p, &other, 401, Some(&bad_token(UNKNOWN_ISSUER))).await;
    assert_eq!(introspection.hits(), 1);
}

// ---------------------------------------------------------------------------------------
// Config validation

const ISSUER: &str = "[[issuers]]\nissuer = \"https://auth.test\"\naudiences = [\"orders\"]\n\
                      jwks_url = \"https://auth.test/jwks\"\n";

#[test]
fn unsafe_algorithm_configs_are_refused() {
    for (extra, field, hint) in [
        (
            "algorithms = [\"ES256\", \"none\"]",
            "issuers[0].algorithms[1]",
            "unsigned",
        ),
        (
            "algorithms = [\"NoNe\"]",
            "issuers[0].algorithms[0]",
            "unsigned",
        ),
        (
            "algorithms = [\"HS256\"]",
            "issuers[0].algorithms[0]",
            "hmac_secret",
        ),
        (
            "algorithms = [\"es256\"]",
            "issuers[0].algorithms[0]",
            "unknown algorithm",
        ),
        ("algorithms = []", "issuers[0].algorithms", "at least one"),
        (
            "algorithms = [\"ES256\", \"HS256\"]\nhmac_secret = \"short\"",
            "issuers[0].hmac_secret",
            "at least 32 bytes",
        ),
        (
            "hmac_secret = \"0123456789abcdef0123456789abcdef\"",
            "issuers[0].hmac_secret",
            "allows no HS256",
        ),
        (
            "jwks_min_refresh = \"100ms\"",
            "issuers[0].jwks_min_refresh",
            "at least 1s",
        ),
        (
            "jwks_refresh = \"5s\"",
            "issuers[0].jwks_refresh",
            "jwks_min_refresh",
        ),
        (
            "jwks_timeout = \"0s\"",
            "issuers[0].jwks_timeout",
            "between",
        ),
        ("leeway = \"soon\"", "issuers[0].leeway", "not a duration"),
        (
            "keys = [\"/nonexistent.pem\"]",
            "issuers[0].keys",
            "not both",
        ),
        ("bogus = 1", "issuers[0].bogus", "unknown field"),
    ] {
        let (message, got) = config_error(&format!("{ISSUER}{extra}"));
        assert_eq!(got.as_deref(), Some(field), "{extra}: {message}");
        assert!(message.contains(hint), "{extra}: {message}");
    }
}

#[test]
fn incomplete_or_unsafe_issuers_are_refused() {
    let base = "[[issuers]]\nissuer = \"https://auth.test\"\naudiences = [\"orders\"]\n";
    for (src, field, hint) in [
        ("".to_owned(), None, "at least one"),
        (base.to_owned(), Some("issuers[0].jwks_url"), "need the issuer's public keys"),
        (
            "[[issuers]]\nissuer = \"i\"\naudiences = []\njwks_url = \"https://a/j\"".to_owned(),
            Some("issuers[0].audiences"),
            "audiences",
        ),
        (
            "[[issuers]]\nissuer = \"i\"\njwks_url = \"https://a/j\"".to_owned(),
            Some("issuers[0]"),
            "missing field `audiences`",
        ),
        (
            format!("{base}jwks_url = \"http://auth.example.com/jwks\""),
            Some("issuers[0].jwks_url"),
            "plain http",
        ),
        (
            format!("{base}jwks_url = \"file:///etc/jwks.json\""),
            Some("issuers[0].jwks_url"),
            "scheme",
        ),
        (format!("{ISSUER}{ISSUER}"), Some("issuers[1].issuer"), "twice"),
        (format!("realm = \"a\\\"b\"\n{ISSUER}"), Some("realm"), "printable"),
        (format!("subject_header = \"X Bad\"\n{ISSUER}"), Some("subject_header"), "header name"),
        (format!("client_id_header = \"Authorization\"\n{ISSUER}"), Some("client_id_header"), "cannot"),
        (format!("scopes_header = \"x-portico-subject\"\n{ISSUER}"), Some("scopes_header"), "different"),
        (format!("scopes_all = [\"a b\"]\n{ISSUER}"), Some("scopes_all[0]"), "not a scope"),
        (format!("claims = {{ nested = {{ a = 1 }} }}\n{ISSUER}"), Some("claims.nested"), "claim matcher"),
        (format!("claims = {{ roles = [] }}\n{ISSUER}"), Some("claims.roles"), "at least one"),
        (format!("max_token_bytes = 10\n{ISSUER}"), Some("max_token_bytes"), "between"),
        (
            "[introspection]\nurl = \"http://10.0.0.1/introspect\"\nclient_id = \"g\"\nclient_secret = \"s\"".to_owned(),
            Some("introspection.url"),
            "plain http",
        ),
    ] {
        let (message, got) = config_error(&src);
        assert_eq!(got.as_deref(), field, "{src}: {message}");
        assert!(message.contains(hint), "{src}: {message}");
    }
    // Loopback http is fine: a local token service or sidecar.
    plugin(&format!("{base}jwks_url = \"http://127.0.0.1:9/jwks\""));
    plugin(&format!("{base}jwks_url = \"http://[::1]:9/jwks\""));
    plugin(&format!("{base}jwks_url = \"http://localhost:9/jwks\""));
}

#[test]
fn local_key_files_are_checked_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let base = "[[issuers]]\nissuer = \"https://auth.test\"\naudiences = [\"orders\"]\n";
    let ec = ec_key("k1");
    let private = {
        use aws_lc_rs::encoding::AsDer;
        let key = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .unwrap();
        pem("PRIVATE KEY", key.private_key().as_der().unwrap().as_ref())
    };
    // aws-lc makes no RSA key this small, but the size check reads only the modulus: an odd
    // 1024-bit number and the usual exponent make the SPKI of one.
    let small_rsa = {
        use aws_lc_rs::encoding::AsDer;
        let mut n = [0x5au8; 128];
        n[0] = 0xc1;
        n[127] = 0x01;
        let e = [1u8, 0, 1];
        let components = aws_lc_rs::signature::RsaPublicKeyComponents {
            n: &n[..],
            e: &e[..],
        };
        pem("PUBLIC KEY", components.as_der().unwrap().as_ref())
    };
    for (text, extra, hint) in [
        (
            ec.pem.clone(),
            "algorithms = [\"RS256\"]",
            "none of `algorithms`",
        ),
        (private, "", "private key"),
        (small_rsa, "", "at least 2048"),
        ("hello".to_owned(), "", "not a PEM public key"),
        (
            "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}".to_owned(),
            "",
            "no usable key",
        ),
        (
            "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AAAA\"}".to_owned(),
            "",
            "32 bytes",
        ),
    ] {
        let path = write("key", &text);
        let (message, field) = config_error(&format!("{base}keys = [{path:?}]\n{extra}"));
        assert_eq!(field.as_deref(), Some("issuers[0].keys[0]"), "{message}");
        assert!(message.contains(hint), "{message}");
    }
    let (message, field) = config_error(&format!("{base}keys = [\"/no/such/key.pem\"]"));
    assert_eq!(field.as_deref(), Some("issuers[0].keys[0]"));
    assert!(message.contains("cannot read"), "{message}");
}

#[test]
fn jwk_parsing_skips_unusable_keys() {
    let ec = ec_key("ok");
    let mut wrong_use = ec_key("enc").jwk;
    wrong_use["use"] = json!("enc");
    let mut wrong_alg = ec_key("alg").jwk;
    wrong_alg["alg"] = json!("RS256");
    let mut off_curve = ec_key("off").jwk;
    off_curve["y"] = off_curve["x"].clone();
    let mut no_verify = ec_key("ops").jwk;
    no_verify["key_ops"] = json!(["encrypt"]);
    let doc = json!({"keys": [
        ec.jwk, wrong_use, wrong_alg, off_curve, no_verify,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "tiny", "n": "AQAB", "e": "AQAB"},
        "not an object",
    ]});
    let set = KeySet::from_jwks(doc.to_string().as_bytes(), "test").unwrap();
    assert_eq!(set.len(), 1);
    assert!(set.knows_kid("ok"));
}

#[tokio::test]
async fn response_hooks_are_untouched() {
    // The plugin only takes part in the request phase; a response passes by unchanged.
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    let req = request(None);
    let mut resp = ResponseHeader::build(200, None).unwrap();
    let before = resp.headers.clone();
    p.response(&mut PluginCtx::default(), &req, &mut resp).await;
    assert_eq!(resp.headers, before);
}

#[test]
fn the_documented_example_builds() {
    // The example at the top of mod.rs, as a route's plugin table.
    let example: String = include_str!("mod.rs")
        .lines()
        .skip_while(|l| !l.starts_with("//! ```toml"))
        .skip(1)
        .take_while(|l| !l.starts_with("//! ```"))
        .map(|l| {
            l.strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .filter(|l| *l != "[[routes.plugins]]" && *l != "name = \"jwt\"")
        .map(|l| {
            l.replace("[[routes.plugins.issuers]]", "[[issuers]]")
                .replace("[routes.plugins.introspection]", "[introspection]")
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(example.contains("[[issuers]]") && example.contains("[introspection]"));
    let p = plugin(&example);
    assert_eq!(p.issuers.len(), 1);
    assert!(p.introspection.is_some());
}

// ---------------------------------------------------------------------------------------
// Token lifetimes against revocation (issue 19, item 8)

#[tokio::test]
async fn typ_at_jwt_is_required_by_default_and_can_be_turned_off() {
    let key = ec_key("k1");
    let (server, p) = served(&[&key], "", "").await;
    admitted(&p, &token(&key)).await;
    admitted(
        &p,
        &token_with(&key, |h, _| h["typ"] = json!("application/AT+JWT")),
    )
    .await;
    // An ID token or any other JWT of the same issuer and audience is not an access token.
    for typ in [
        Value::Null,
        json!("JWT"),
        json!("application/jwt"),
        json!(""),
    ] {
        let t = token_with(&key, |h, _| h["typ"] = typ.clone());
        refused_token(&p, &t, 401, Some(&bad_token(BAD_TYP))).await;
    }
    let t = token_with(&key, |h, _| {
        h.as_object_mut().unwrap().remove("typ");
    });
    refused_token(&p, &t, 401, Some(&bad_token(BAD_TYP))).await;
    // None of those cost a signature check.
    assert_eq!(p.signature_checks(), 2);

    // `typ = ""`: the issuer mints plain JWTs; any typ, or none, passes.
    let plain = remote(&server.url(), "", "typ = \"\"");
    admitted(&plain, &t).await;
    admitted(&plain, &token_with(&key, |h, _| h["typ"] = json!("JWT"))).await;
    admitted(&plain, &token(&key)).await;
    // Another explicit type is matched like the default.
    let custom = remote(&server.url(), "", "typ = \"application/JWT\"");
    admitted(&custom, &token_with(&key, |h, _| h["typ"] = json!("jwt"))).await;
    refused_token(&custom, &token(&key), 401, Some(&bad_token(BAD_TYP))).await;
}

#[test]
fn leeway_and_revocation_configs_are_checked() {
    for (extra, field, hint) in [
        ("leeway = \"301s\"", "issuers[0].leeway", "at most 300s"),
        ("leeway = \"1h\"", "issuers[0].leeway", "at most 300s"),
        ("typ = \"application/\"", "issuers[0].typ", "media type"),
        (
            "revocation_url = \"http://10.1.1.1/revoked\"",
            "issuers[0].revocation_url",
            "plain http",
        ),
        (
            "revocation_url = \"https://a/r\"\nrevocation_refresh = \"500ms\"",
            "issuers[0].revocation_refresh",
            "at least 1s",
        ),
        (
            "revocation_url = \"https://a/r\"\nrevocation_timeout = \"2m\"",
            "issuers[0].revocation_timeout",
            "between",
        ),
        (
            "revocation_url = \"https://a/r\"\nrevocation_refresh = \"1m\"\n\
             revocation_max_age = \"30s\"",
            "issuers[0].revocation_max_age",
            "revocation_refresh",
        ),
        (
            "revocation_url = \"https://a/r\"\nrevocation_client_id = \"g\"",
            "issuers[0].revocation_client_secret",
            "required",
        ),
        (
            "revocation_url = \"https://a/r\"\nrevocation_client_secret = \"s\"",
            "issuers[0].revocation_client_id",
            "required",
        ),
        (
            "revocation_url = \"https://a/r\"\nrevocation_client_id = \"g\"\n\
             revocation_client_secret = \"\"",
            "issuers[0].revocation_client_secret",
            "empty",
        ),
        (
            "revocation_client_id = \"g\"",
            "issuers[0].revocation_client_id",
            "revocation_url",
        ),
        (
            "revocation_fail_open = true",
            "issuers[0].revocation_fail_open",
            "revocation_url",
        ),
        (
            "revocation_refresh = \"soon\"",
            "issuers[0].revocation_refresh",
            "not a duration",
        ),
    ] {
        let (message, got) = config_error(&format!("{ISSUER}{extra}"));
        assert_eq!(got.as_deref(), Some(field), "{extra}: {message}");
        assert!(message.contains(hint), "{extra}: {message}");
    }
    // The cap itself and the opt-out are fine.
    plugin(&format!("{ISSUER}leeway = \"5m\"\ntyp = \"\""));
    plugin(&format!(
        "{ISSUER}revocation_url = \"https://a/r\"\nrevocation_refresh = \"1s\"\n\
         revocation_max_age = \"1s\"\nrevocation_client_id = \"g\"\nrevocation_client_secret = \"s\""
    ));
}

fn revocation_list(entries: &[(&str, u64)]) -> String {
    json!({ "revoked": entries.iter().map(|(jti, exp)| json!({"jti": jti, "exp": exp}))
        .collect::<Vec<_>>() })
    .to_string()
}

/// A JWKS server, a revocation list server (initially empty) and a plugin using both.
async fn with_revocation(key: &TestKey, issuer: &str) -> (Server, Server, Jwt) {
    let keys = Server::start(200, jwks(&[key])).await;
    let list = Server::start(200, revocation_list(&[])).await;
    let p = remote(
        &keys.url(),
        "",
        &format!(
            "revocation_url = \"{}\"\nrevocation_refresh = \"1s\"\n\
             revocation_client_id = \"gateway\"\nrevocation_client_secret = \"li:st\"\n{issuer}",
            list.url()
        ),
    );
    (keys, list, p)
}

/// Waits (bounded) until `p` has finished `n` polls of its revocation list.
async fn polled(p: &Jwt, list: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while (p.stats().revocation_fetches < n || list.hits() < n as usize)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the poll store what it fetched.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_revoked_jti_is_refused_within_the_refresh_even_from_the_cache() {
    let key = ec_key("k1");
    let (_keys, list, p) = with_revocation(&key, "").await;
    let n = now();
    let (a, b) = (
        token_with(&key, |_, c| c["jti"] = json!("jti-a")),
        token_with(&key, |_, c| c["jti"] = json!("jti-b")),
    );
    admitted(&p, &a).await;
    admitted(&p, &b).await;
    assert_eq!(p.signature_checks(), 2);
    // The list is fetched with the configured credentials.
    let sent = list.last_request();
    assert!(sent.starts_with("GET /jwks HTTP/1.1\r\n"), "{sent}");
    let basic = STANDARD.encode("gateway:li%3Ast");
    assert!(
        sent.contains(&format!("authorization: Basic {basic}\r\n")),
        "{sent}"
    );

    // Revoked at the issuer; an entry already past its exp is dropped on arrival.
    list.set(
        200,
        revocation_list(&[("jti-a", n + 300), ("jti-b", n - 1)]),
    );
    let started = Instant::now();
    let polls = p.stats().revocation_fetches;
    polled(&p, &list, polls + 1).await;
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(p.stats().revoked_ids, 1);
    let resp = refused_token(&p, &a, 401, Some(&bad_token(REVOKED))).await;
    assert_eq!(resp_header(&resp, "retry-after"), None);
    admitted(&p, &b).await;
    // Both were answered from the cache: a revoked token costs a lookup, not a signature.
    assert_eq!(p.signature_checks(), 2);
    let err = p.verify_token(&a).await.unwrap_err();
    assert_eq!(err, AuthError::InvalidToken(REVOKED));
    let err = p.verify_token_uncached(&a).await.unwrap_err();
    assert_eq!(err, AuthError::InvalidToken(REVOKED));

    // Without a jti the token cannot be checked against the list: refused.
    for jti in [Value::Null, json!(""), json!(7)] {
        let t = token_with(&key, |_, c| c["jti"] = jti.clone());
        let want = if jti.is_number() {
            MALFORMED_CLAIM
        } else {
            MISSING_JTI
        };
        refused_token(&p, &t, 401, Some(&bad_token(want))).await;
    }
    let t = token_with(&key, |_, c| {
        c.as_object_mut().unwrap().remove("jti");
    });
    refused_token(&p, &t, 401, Some(&bad_token(MISSING_JTI))).await;
}

#[tokio::test]
async fn an_unreachable_list_fails_closed_unless_configured_open() {
    let key = ec_key("k1");
    // Never fetched: closed answers 503 with Retry-After, open admits.
    let (keys, list, closed) = with_revocation(&key, "").await;
    list.set(500, "{}");
    let resp = refused_token(&closed, &token(&key), 503, None).await;
    assert_eq!(resp_header(&resp, "retry-after"), Some("5"));
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["detail"], REVOCATION_UNAVAILABLE);
    assert!(closed.stats().revocation_failures >= 1);
    let open = remote(
        &keys.url(),
        "",
        &format!(
            "revocation_url = \"{}\"\nrevocation_fail_open = true",
            list.url()
        ),
    );
    admitted(&open, &token(&key)).await;

    // A list that was fetched and then goes stale: kept until `revocation_max_age`, then
    // closed refuses with 503 and open keeps checking against the last good list.
    let list = Server::start(200, revocation_list(&[("gone", now() + 300)])).await;
    let issuer = |open: bool| {
        format!(
            "revocation_url = \"{}\"\nrevocation_refresh = \"1s\"\nrevocation_max_age = \"2s\"\n\
             revocation_fail_open = {open}",
            list.url()
        )
    };
    let closed = remote(&keys.url(), "", &issuer(false));
    let open = remote(&keys.url(), "cache_size = 0", &issuer(true));
    let good = token(&key);
    let gone = token_with(&key, |_, c| c["jti"] = json!("gone"));
    admitted(&closed, &good).await;
    admitted(&open, &good).await;
    list.set(500, "{}");
    let failures = closed.stats().revocation_failures;
    polled(&closed, &list, closed.stats().revocation_fetches + 1).await;
    // Within max_age: the last good list still answers.
    assert!(closed.stats().revocation_failures > failures);
    admitted(&closed, &good).await;
    refused_token(&closed, &gone, 401, Some(&bad_token(REVOKED))).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    refused_token(&closed, &good, 503, None).await;
    // A token known to be revoked stays refused as such.
    refused_token(&closed, &gone, 401, Some(&bad_token(REVOKED))).await;
    admitted(&open, &good).await;
    refused_token(&open, &gone, 401, Some(&bad_token(REVOKED))).await;
    // Back: admitted again at the next poll.
    list.set(200, revocation_list(&[]));
    polled(&closed, &list, closed.stats().revocation_fetches + 1).await;
    admitted(&closed, &good).await;
    admitted(&closed, &gone).await;
}

#[tokio::test]
async fn plugins_naming_one_list_share_its_polling_which_stops_with_them() {
    let key = ec_key("k1");
    let (keys, list, p) = with_revocation(&key, "").await;
    let q = remote(
        &keys.url(),
        "",
        &format!(
            "revocation_url = \"{}\"\nrevocation_refresh = \"1s\"\n\
             revocation_client_id = \"gateway\"\nrevocation_client_secret = \"li:st\"",
            list.url()
        ),
    );
    admitted(&p, &token(&key)).await;
    admitted(&q, &token(&key)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // One poller: an immediate poll and about one a second, not two a second.
    let hits = list.hits();
    assert!((2..=4).contains(&hits), "{hits}");
    drop((p, q));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = list.hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        list.hits(),
        after,
        "polling goes on after the last plugin went"
    );
}

// ---------------------------------------------------------------------------------------
// Introspection under load

#[test]
fn introspection_needs_audiences_and_a_sane_cap() {
    let base = "[introspection]\nurl = \"https://a/i\"\nclient_id = \"g\"\nclient_secret = \"s\"\n";
    for (extra, field, hint) in [
        ("", "introspection.audiences", "list the audiences"),
        (
            "audiences = []",
            "introspection.audiences",
            "list the audiences",
        ),
        (
            "audiences = [\"\"]",
            "introspection.audiences",
            "list the audiences",
        ),
        (
            "audiences = [\"a\"]\nmax_concurrent = 0",
            "introspection.max_concurrent",
            "between 1 and 1024",
        ),
        (
            "audiences = [\"a\"]\nmax_concurrent = 5000",
            "introspection.max_concurrent",
            "between 1 and 1024",
        ),
        (
            "audiences = [\"a\"]\nqueue_timeout = \"2m\"",
            "introspection.queue_timeout",
            "at most 60s",
        ),
    ] {
        let (message, got) = config_error(&format!("{base}{extra}"));
        assert_eq!(got.as_deref(), Some(field), "{extra}: {message}");
        assert!(message.contains(hint), "{extra}: {message}");
    }
    plugin(&format!(
        "{base}audiences = [\"a\"]\nqueue_timeout = \"0s\""
    ));
}

fn active_answer() -> String {
    json!({"active": true, "sub": "service-b", "aud": [AUD], "exp": now() + 60}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_with_one_token_make_one_call() {
    let server = Server::start(200, active_answer()).await;
    server.set_delay(Duration::from_millis(300));
    let p = Arc::new(plugin(&introspection_config(&server.url(), "")));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let p = Arc::clone(&p);
        tasks.spawn(async move {
            let mut req = request(Some("shared-opaque-token"));
            let (flow, ctx) = run(&p, &mut req).await;
            (
                matches!(flow, Flow::Continue),
                ctx.identity.map(|i| i.subject.clone()),
            )
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), (true, Some("service-b".to_owned())));
    }
    assert_eq!(server.hits(), 1);
    assert_eq!(p.stats().introspections, 1);

    // The same for a refusal: 50 at once with a dead token make one call, and it is then
    // remembered.
    server.set(200, "{\"active\": false}");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let p = Arc::clone(&p);
        tasks.spawn(async move { p.verify_token("dead-token").await.map(|_| ()) });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), Err(AuthError::InvalidToken(INACTIVE)));
    }
    refused_token(&p, "dead-token", 401, Some(&bad_token(INACTIVE))).await;
    assert_eq!(server.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bearers_never_exceed_the_cap_and_are_remembered() {
    let server = Server::start(200, "{\"active\": false}").await;
    server.set_delay(Duration::from_millis(50));
    let p = Arc::new(plugin(&introspection_config(
        &server.url(),
        "max_concurrent = 4\nqueue_timeout = \"10s\"",
    )));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let p = Arc::clone(&p);
        tasks.spawn(async move { p.verify_token(&format!("random-{i}")).await.map(|_| ()) });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), Err(AuthError::InvalidToken(INACTIVE)));
    }
    assert_eq!(server.hits(), 60);
    assert_eq!(
        server.max_active(),
        4,
        "the cap was not reached or was exceeded"
    );
    // A repeated random bearer is answered from the refusal cache.
    for i in 0..60 {
        refused_token(&p, &format!("random-{i}"), 401, Some(&bad_token(INACTIVE))).await;
    }
    assert_eq!(server.hits(), 60);
    // So is an active answer for another audience.
    server.set(
        200,
        json!({"active": true, "sub": "x", "aud": "payments"}).to_string(),
    );
    refused_token(&p, "elsewhere", 401, Some(&bad_token(AUDIENCE))).await;
    refused_token(&p, "elsewhere", 401, Some(&bad_token(AUDIENCE))).await;
    assert_eq!(server.hits(), 61);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_a_request_gets_503_with_retry_after() {
    let server = Server::start(200, active_answer()).await;
    server.set_delay(Duration::from_millis(500));
    let p = Arc::new(plugin(&introspection_config(
        &server.url(),
        "max_concurrent = 2\nqueue_timeout = \"0s\"",
    )));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2 {
        let p = Arc::clone(&p);
        tasks.spawn(async move { p.verify_token(&format!("slow-{i}")).await.map(|_| ()) });
    }
    while server.state.active.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = refused_token(&p, "third", 503, None).await;
    assert_eq!(resp_header(&resp, "retry-after"), Some("1"));
    let body: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body["detail"], INTROSPECTION_BUSY);
    assert_eq!(p.stats().introspections_busy, 1);
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap(), Ok(()));
    }
    // Busy is not remembered: with a free slot the same token goes through.
    admitted(&p, "third").await;
    assert_eq!(server.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_does_not_strand_the_others() {
    let server = Server::start(200, active_answer()).await;
    server.set_delay(Duration::from_millis(300));
    let p = Arc::new(plugin(&introspection_config(&server.url(), "")));
    // The first request leads the call and is dropped mid-call (its client went away).
    let leader = {
        let p = Arc::clone(&p);
        tokio::spawn(async move { p.verify_token("orphan").await.map(|_| ()) })
    };
    while server.state.active.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let follower = {
        let p = Arc::clone(&p);
        tokio::spawn(async move { p.verify_token("orphan").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    // The follower makes its own call and is answered.
    let answered = tokio::time::timeout(Duration::from_secs(5), follower).await;
    assert_eq!(answered.expect("not stranded").unwrap(), Ok(()));
    assert_eq!(server.hits(), 2);
}

// ---------------------------------------------------------------------------------------
// Regression tests for what fuzzing found (fuzz/README.md)

/// A JOSE header (or payload) whose bytes are not UTF-8 is not JSON: refused as malformed
/// before any key is tried, even when genuinely signed. serde_json checks UTF-8 only in
/// the strings it reads, so a non-UTF-8 byte in a member it skips used to pass.
#[tokio::test]
async fn jose_headers_and_payloads_that_are_not_utf8_are_malformed() {
    let key = ec_key("k1");
    let (_server, p) = served(&[&key], "", "").await;
    let claims_b64 = b64(serde_json::to_vec(&claims()).unwrap());
    let signed = |header: &[u8], payload: &str| {
        let message = format!("{}.{payload}", b64(header));
        let signature = b64(key.signer.sign(key.alg, message.as_bytes()));
        format!("{message}.{signature}")
    };
    let header = |extra: &[u8]| {
        let mut h = br#"{"alg":"ES256","typ":"at+jwt","kid":"k1","x5u":""#.to_vec();
        h.extend_from_slice(extra);
        h.extend_from_slice(br#""}"#);
        h
    };
    let not_utf8_payload = {
        let mut c = serde_json::to_vec(&claims()).unwrap();
        c.pop();
        c.extend_from_slice(b",\"x\":\"\xff\"}");
        b64(c)
    };
    for t in [
        signed(&header(b"\xff"), &claims_b64),
        signed(&header(b"\xc0\xae"), &claims_b64),
        signed(&header(b"\xed\xa0\x80"), &claims_b64),
        signed(&header(b"ok"), &not_utf8_payload),
    ] {
        assert_eq!(token::parse(&t).err(), Some(MALFORMED), "{t}");
        refused_token(&p, &t, 401, Some(&bad_token(MALFORMED))).await;
    }
    assert_eq!(p.signature_checks(), 0);
    // The same header in UTF-8 is fine.
    admitted(&p, &signed(&header(b"ok"), &claims_b64)).await;
}

/// A JWKS document is a JSON object with a `keys` array: an array (which serde would read
/// as the struct's members by position), a `keys` that is no array, or a key that is no
/// object is refused or skipped, never read.
#[test]
fn jwks_documents_that_are_not_objects_are_refused() {
    let key = ec_key("k1");
    let jwk = key.jwk.clone();
    for doc in [
        json!([[jwk.clone()]]),
        json!([{"keys": [jwk.clone()]}]),
        json!({"keys": {"0": jwk.clone()}}),
        json!({"keys": jwk.clone()}),
        json!({"keys": null}),
        json!({"other": [jwk.clone()]}),
        json!("keys"),
        json!(null),
    ] {
        let err = KeySet::from_jwks(doc.to_string().as_bytes(), "test")
            .err()
            .unwrap_or_else(|| panic!("{doc} was read as a key set"));
        assert!(err.starts_with("not a JWKS document"), "{doc}: {err}");
    }
    // A key written as an array (members by position) is skipped, not read.
    let as_array = json!({"keys": [[
        jwk["kty"], jwk["kid"], "sig", null, "ES256", jwk["crv"], null, null, jwk["x"], jwk["y"]
    ]]});
    let set = KeySet::from_jwks(as_array.to_string().as_bytes(), "test").unwrap();
    assert_eq!(set.len(), 0);
    // Not UTF-8 at all.
    assert!(KeySet::from_jwks(b"{\"keys\": [\"\xff\"]}", "test").is_err());
    let good = json!({ "keys": [jwk] });
    assert_eq!(
        KeySet::from_jwks(good.to_string().as_bytes(), "test")
            .unwrap()
            .len(),
        1
    );
}
