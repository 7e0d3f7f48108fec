//! The `jwt` route plugin end to end, as an attack suite: hostile requests (no token,
//! `alg: none`, algorithm confusion, foreign keys, tampering, bad times, issuers and
//! audiences, unknown kids, malformed and oversized tokens, embedded `jwk` and remote `jku`
//! keys, duplicate credentials, query tokens, missing scopes) sent through the real gateway
//! process get the exact status and `WWW-Authenticate` challenge and never reach the real
//! upstream; valid tokens do, with the token's identity headers and never the client's.
//! With portico's real token service: a revoked token is refused by the gateway within the
//! revocation list's refresh, and opaque-token introspection goes through it.

mod common;

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use common::token_service;
use common::*;

const ISS: &str = "https://auth.portico.test";
const AUD: &str = "orders";
const REALM: &str = "orders";
const KID: &str = "rsa-1";
/// The `/mixed` route's HS256 secret (HS256 needs at least 32 bytes).
const HMAC_SECRET: &str = "mixed-route-secret-0123456789abcdef";

// The plugin's `error_description` texts (plugins/src/jwt/mod.rs and token.rs), spelled out
// here so a change in wording is a visible change in behaviour.
const UNSIGNED: &str = "unsigned tokens are not accepted";
const ALG_NOT_ALLOWED: &str = "signature algorithm not allowed for this issuer";
const BAD_SIGNATURE: &str = "invalid signature";
const UNKNOWN_KEY: &str = "unknown signing key";
const EXPIRED: &str = "token has expired";
const NOT_YET_VALID: &str = "token is not yet valid";
const UNKNOWN_ISSUER: &str = "unknown issuer";
const AUDIENCE: &str = "audience not accepted";
const MALFORMED: &str = "malformed token";
const TOO_LARGE: &str = "token is too large";
const MALFORMED_CREDENTIALS: &str = "malformed bearer credentials";
const EMPTY_TOKEN: &str = "empty bearer token";
const DUPLICATE_AUTHORIZATION: &str = "more than one Authorization header";
const QUERY_NOT_ALLOWED: &str = "access tokens in the query string are not accepted here";
const MISSING_TOKEN: &str = "this route requires a bearer token";
const LACKS_SCOPE: &str = "token lacks a scope this route requires";
const BAD_TYP: &str = "unexpected token type";
const REVOKED: &str = "token has been revoked";
const INACTIVE: &str = "token is not active";

// ---------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------

/// The issuer's key, which the gateway trusts. RSA key generation is slow in debug builds,
/// so every test shares the two keys.
static ISSUER: LazyLock<RsaKey> = LazyLock::new(|| rsa_key(KID));
/// A key the gateway has never seen.
static ATTACKER: LazyLock<RsaKey> = LazyLock::new(|| rsa_key("attacker"));

/// Generates both keys off the async workers (a few seconds in a debug build).
async fn keys() -> (&'static RsaKey, &'static RsaKey) {
    tokio::task::spawn_blocking(|| (&*ISSUER, &*ATTACKER))
        .await
        .expect("key generation")
}

fn jose_header(kid: &str) -> Value {
    access_header("RS256", Some(kid))
}

fn claims() -> Value {
    common::claims(ISS, AUD)
}

/// An RS256 token signed by `key` (kid `rsa-1`), after `edit` changed its header or claims.
fn rs256_with(key: &RsaKey, edit: impl FnOnce(&mut Value, &mut Value)) -> String {
    let mut header = jose_header(KID);
    let mut claims = claims();
    edit(&mut header, &mut claims);
    sign(&key.encoding, Algorithm::RS256, &header, &claims)
}

/// A valid token of the trusted issuer, after `edit`.
fn token_with(edit: impl FnOnce(&mut Value, &mut Value)) -> String {
    rs256_with(&ISSUER, edit)
}

fn token() -> String {
    token_with(|_, _| {})
}

// ---------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------

/// One upstream behind four protected routes, each with one RS256 issuer:
///
/// - `/orders`: the issuer's public key as a PEM file (no kid: it fits any kid);
/// - `/admin`: the same, and `scopes_all = ["orders:read", "orders:admin"]`;
/// - `/kids`: the key as a JWKS file, so it has kid `rsa-1` and other kids are unknown;
/// - `/mixed`: RS256 and HS256 allowed, HS256 with its own `hmac_secret`.
struct Setup {
    up: Upstream,
    gw: Gateway,
    _keys: tempfile::TempDir,
}

/// The `jwt` plugin of a route: `extra` plugin keys, one issuer with `keys` and
/// `issuer_extra`.
fn jwt(extra: &str, issuer_extra: &str, keys: &Path) -> String {
    format!(
        r#"
[[routes.plugins]]
name = "jwt"
realm = "{REALM}"
{extra}

[[routes.plugins.issuers]]
issuer = "{ISS}"
audiences = ["{AUD}"]
keys = ["{keys}"]
{issuer_extra}
"#,
        keys = keys.display()
    )
}

async fn start() -> Setup {
    let (issuer, _) = keys().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let pem = dir.path().join("pub.pem");
    std::fs::write(&pem, &issuer.pem).expect("write PEM");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [issuer.jwk] }).to_string()).expect("write JWKS");

    let up = Upstream::start("a").await;
    let rs256 = r#"algorithms = ["RS256"]"#;
    let gw = Gateway::config()
        .route_with("orders", "/orders", "c", &jwt("", rs256, &pem))
        .route_with(
            "admin",
            "/admin",
            "c",
            &jwt(
                r#"scopes_all = ["orders:read", "orders:admin"]"#,
                rs256,
                &pem,
            ),
        )
        .route_with("kids", "/kids", "c", &jwt("", rs256, &jwks))
        .route_with(
            "mixed",
            "/mixed",
            "c",
            &jwt(
                "",
                &format!("algorithms = [\"RS256\", \"HS256\"]\nhmac_secret = \"{HMAC_SECRET}\""),
                &pem,
            ),
        )
        .cluster("c", &[&up])
        .start()
        .await;
    Setup { up, gw, _keys: dir }
}

// ---------------------------------------------------------------------------------------
// Requests and answers
// ---------------------------------------------------------------------------------------

/// How a request is sent: with reqwest, or byte for byte (for duplicate headers).
#[derive(Clone, Copy, Debug)]
enum Via {
    Client,
    Raw,
}

/// A response, whichever client got it: the status and every header (lower-case names).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn send(gw: &Gateway, via: Via, target: &str, headers: &[(&str, &str)]) -> Answer {
    match via {
        Via::Client => {
            let resp = gw.get_with(target, headers).await;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(n, v)| {
                    let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), value)
                })
                .collect();
            let body = resp.text().await.expect("response body");
            Answer {
                status,
                headers,
                body,
            }
        }
        Via::Raw => {
            let resp = gw.raw_get(target, headers).await;
            Answer {
                status: resp.status,
                body: resp.text(),
                headers: resp.headers,
            }
        }
    }
}

/// What a refused request must get back.
struct Refusal {
    status: u16,
    /// The RFC 6750 error code; `None` for the bare challenge of a missing token.
    code: Option<&'static str>,
    description: &'static str,
    /// The `scope` attribute of an `insufficient_scope` challenge.
    scope: Option<&'static str>,
}

impl Refusal {
    fn challenge(&self) -> String {
        let mut text = format!("Bearer realm=\"{REALM}\"");
        if let Some(code) = self.code {
            text.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                self.description
            ));
        }
        if let Some(scope) = self.scope {
            text.push_str(&format!(", scope=\"{scope}\""));
        }
        text
    }
}

/// No token: 401 with the bare challenge.
fn missing() -> Refusal {
    Refusal {
        status: 401,
        code: None,
        description: MISSING_TOKEN,
        scope: None,
    }
}

/// 401 `invalid_token`.
fn bad_token(description: &'static str) -> Refusal {
    Refusal {
        status: 401,
        code: Some("invalid_token"),
        description,
        scope: None,
    }
}

/// 400 `invalid_request`.
fn bad_request(description: &'static str) -> Refusal {
    Refusal {
        status: 400,
        code: Some("invalid_request"),
        description,
        scope: None,
    }
}

/// One hostile request and the refusal it must get.
struct Attack {
    name: String,
    via: Via,
    target: String,
    headers: Vec<(String, String)>,
    want: Refusal,
}

fn attack(name: impl Into<String>, target: &str, token: &str, want: Refusal) -> Attack {
    Attack {
        name: name.into(),
        via: Via::Client,
        target: target.to_owned(),
        headers: vec![("Authorization".to_owned(), bearer(token))],
        want,
    }
}

/// Sends every attack and checks the exact refusal of each, and that none of them (nor
/// all of them together) reached the upstream.
async fn assert_all_refused(setup: &Setup, attacks: &[Attack]) {
    let before = setup.up.hits();
    for a in attacks {
        let headers: Vec<(&str, &str)> = a
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let got = send(&setup.gw, a.via, &a.target, &headers).await;
        let case = &a.name;
        assert_eq!(
            got.status, a.want.status,
            "{case}: status; body {}",
            got.body
        );
        assert_eq!(
            got.all("www-authenticate"),
            [a.want.challenge().as_str()],
            "{case}: WWW-Authenticate"
        );
        assert_eq!(
            got.all("cache-control"),
            ["no-store"],
            "{case}: Cache-Control"
        );
        assert_eq!(
            got.all("content-type"),
            ["application/problem+json"],
            "{case}: Content-Type"
        );
        let problem: Value = serde_json::from_str(&got.body)
            .unwrap_or_else(|e| panic!("{case}: body is not JSON ({e}): {}", got.body));
        let slug = a.want.code.unwrap_or("missing_token");
        assert_eq!(
            problem["type"],
            format!("urn:portico:problem:{slug}"),
            "{case}: problem type"
        );
        assert_eq!(problem["status"], a.want.status, "{case}: problem status");
        assert_eq!(
            problem["detail"], a.want.description,
            "{case}: problem detail"
        );
        assert_eq!(
            setup.up.hits(),
            before,
            "{case}: the refused request reached the upstream"
        );
    }
    assert_eq!(
        setup.up.hits(),
        before,
        "no refused request may reach the upstream"
    );
}

// ---------------------------------------------------------------------------------------
// Refused requests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unsigned_tokens_and_algorithm_confusion_are_refused() {
    bounded(async {
        let setup = start().await;
        let (issuer, _) = keys().await;
        let mut attacks = vec![
            Attack {
                name: "no Authorization header".to_owned(),
                via: Via::Client,
                target: "/orders/1".to_owned(),
                headers: Vec::new(),
                want: missing(),
            },
            Attack {
                name: "another scheme (Basic)".to_owned(),
                via: Via::Client,
                target: "/orders/1".to_owned(),
                headers: vec![(
                    "Authorization".to_owned(),
                    "Basic c2VydmljZS1hOnNlY3JldA==".to_owned(),
                )],
                want: missing(),
            },
            Attack {
                name: "Bearer without a token".to_owned(),
                via: Via::Client,
                target: "/orders/1".to_owned(),
                headers: vec![("Authorization".to_owned(), "Bearer".to_owned())],
                want: bad_request(EMPTY_TOKEN),
            },
        ];

        // `alg: none` in any spelling, with the empty signature an unsigned JWT has.
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = json!({"alg": alg, "kid": KID, "typ": "at+jwt"});
            let unsigned = format!("{}.{}.", json_b64(&header), json_b64(&claims()));
            attacks.push(attack(
                format!("alg {alg}"),
                "/orders/1",
                &unsigned,
                bad_token(UNSIGNED),
            ));
        }

        // HS256 with the issuer's public key (its PEM text, which is public) as the secret.
        let confused = sign(
            &EncodingKey::from_secret(issuer.pem.as_bytes()),
            Algorithm::HS256,
            &json!({"alg": "HS256", "kid": KID, "typ": "at+jwt"}),
            &claims(),
        );
        attacks.push(attack(
            "HS256 keyed with the RSA public key PEM, RS256-only route",
            "/orders/1",
            &confused,
            bad_token(ALG_NOT_ALLOWED),
        ));
        // Where HS256 is allowed, its key is the configured secret, never the RSA key.
        attacks.push(attack(
            "HS256 keyed with the RSA public key PEM, route allowing HS256",
            "/mixed/1",
            &confused,
            bad_token(BAD_SIGNATURE),
        ));

        assert_all_refused(&setup, &attacks).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_misaddressed_tokens_are_refused() {
    bounded(async {
        let setup = start().await;
        let (_, attacker) = keys().await;
        let n = now();

        // A valid token whose payload is swapped after signing.
        let good = token();
        let signature = good.rsplit('.').next().unwrap();
        let mut forged = claims();
        forged["sub"] = json!("admin");
        let tampered = format!(
            "{}.{}.{signature}",
            json_b64(&jose_header(KID)),
            json_b64(&forged)
        );

        let attacks = [
            // RFC 9068 §4: by default only `typ: at+jwt` is an access token, so an ID token
            // (or any other JWT) signed by the same issuer for the same audience is not one.
            attack(
                "no typ (an ID token or plain JWT)",
                "/orders/1",
                &token_with(|h, _| {
                    h.as_object_mut().unwrap().remove("typ");
                }),
                bad_token(BAD_TYP),
            ),
            attack(
                "typ JWT",
                "/orders/1",
                &token_with(|h, _| h["typ"] = json!("JWT")),
                bad_token(BAD_TYP),
            ),
            attack(
                "typ of a logout token",
                "/orders/1",
                &token_with(|h, _| h["typ"] = json!("logout+jwt")),
                bad_token(BAD_TYP),
            ),
            attack(
                "signed by another RSA key under the issuer's kid",
                "/orders/1",
                &rs256_with(attacker, |_, _| {}),
                bad_token(BAD_SIGNATURE),
            ),
            attack(
                "payload changed after signing (sub = admin)",
                "/orders/1",
                &tampered,
                bad_token(BAD_SIGNATURE),
            ),
            attack(
                "expired an hour ago",
                "/orders/1",
                &token_with(|_, c| {
                    c["iat"] = json!(n - 7200);
                    c["nbf"] = json!(n - 7200);
                    c["exp"] = json!(n - 3600);
                }),
                bad_token(EXPIRED),
            ),
            attack(
                "not valid before an hour from now",
                "/orders/1",
                &token_with(|_, c| {
                    c["nbf"] = json!(n + 3600);
                    c["exp"] = json!(n + 7200);
                }),
                bad_token(NOT_YET_VALID),
            ),
            attack(
                "another issuer",
                "/orders/1",
                &token_with(|_, c| c["iss"] = json!("https://evil.test")),
                bad_token(UNKNOWN_ISSUER),
            ),
            attack(
                "another audience",
                "/orders/1",
                &token_with(|_, c| c["aud"] = json!("payments")),
                bad_token(AUDIENCE),
            ),
            // PEM keys have no kid, so with `keys = ["…pem"]` a kid selects nothing: the key
            // is tried and the signature decides.
            attack(
                "unknown kid, attacker's signature, PEM key",
                "/orders/1",
                &rs256_with(attacker, |h, _| h["kid"] = json!("who-knows")),
                bad_token(BAD_SIGNATURE),
            ),
            // A JWKS file gives the key its kid, and another kid finds no key at all.
            attack(
                "unknown kid, attacker's signature, JWKS file",
                "/kids/1",
                &rs256_with(attacker, |h, _| h["kid"] = json!("who-knows")),
                bad_token(UNKNOWN_KEY),
            ),
            attack(
                "unknown kid, issuer's signature, JWKS file",
                "/kids/1",
                &token_with(|h, _| h["kid"] = json!("who-knows")),
                bad_token(UNKNOWN_KEY),
            ),
        ];
        assert_all_refused(&setup, &attacks).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_tokens_are_refused() {
    bounded(async {
        let setup = start().await;
        let (issuer, _) = keys().await;
        let good = token();
        let (header, rest) = good.split_once('.').unwrap();
        let payload = rest.split('.').next().unwrap();

        let attacks = [
            // `+` is allowed in a bearer token (b64token) but is not base64url.
            attack(
                "header segment not base64url",
                "/orders/1",
                &format!("eyJ+.{rest}"),
                bad_token(MALFORMED),
            ),
            // `!` is not even allowed in a bearer token.
            attack(
                "header segment outside the b64token alphabet",
                "/orders/1",
                &format!("eyJ!.{rest}"),
                bad_request(MALFORMED_CREDENTIALS),
            ),
            attack(
                "payload not JSON (signed)",
                "/orders/1",
                &sign_segments(&issuer.encoding, Algorithm::RS256, header, &b64("not json")),
                bad_token(MALFORMED),
            ),
            attack(
                "payload truncated JSON (signed)",
                "/orders/1",
                &sign_segments(
                    &issuer.encoding,
                    Algorithm::RS256,
                    header,
                    &b64(format!("{{\"iss\":\"{ISS}\"")),
                ),
                bad_token(MALFORMED),
            ),
            attack(
                "only two segments",
                "/orders/1",
                &format!("{header}.{payload}"),
                bad_token(MALFORMED),
            ),
            attack(
                "four segments",
                "/orders/1",
                &format!("{good}.{payload}"),
                bad_token(MALFORMED),
            ),
            // Signed by the issuer, so only its size is wrong: over the default 8192 bytes.
            attack(
                "oversized (validly signed, about 12 KiB)",
                "/orders/1",
                &token_with(|_, c| c["pad"] = json!("x".repeat(9000))),
                bad_token(TOO_LARGE),
            ),
        ];
        assert!(attacks[6].headers[0].1.len() > 8192 + "Bearer ".len());
        assert_all_refused(&setup, &attacks).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_named_in_the_token_header_are_never_used() {
    bounded(async {
        let setup = start().await;
        let (_, attacker) = keys().await;
        // Where a `jku`/`x5u` would send a gateway that followed it: a real server that
        // counts every connection.
        let evil = Upstream::start("evil").await;
        let evil_url = format!("http://{}/jwks.json", evil.addr);

        let mut attacks = Vec::new();
        for (what, members) in [
            ("embedded jwk", json!({"jwk": attacker.jwk})),
            ("jku", json!({"jku": evil_url})),
            ("x5u", json!({"x5u": evil_url})),
            ("jwk and jku", json!({"jwk": attacker.jwk, "jku": evil_url})),
        ] {
            // Each under the attacker's kid and under the issuer's, on the PEM route (the
            // key fits any kid, the signature fails) and the JWKS route (a foreign kid
            // finds no key).
            for (kid, route, want) in [
                ("attacker", "/orders/1", BAD_SIGNATURE),
                (KID, "/orders/1", BAD_SIGNATURE),
                ("attacker", "/kids/1", UNKNOWN_KEY),
                (KID, "/kids/1", BAD_SIGNATURE),
            ] {
                let t = rs256_with(attacker, |h, _| {
                    h["kid"] = json!(kid);
                    for (name, value) in members.as_object().unwrap() {
                        h[name] = value.clone();
                    }
                });
                attacks.push(attack(
                    format!("{what}, kid {kid}, {route}"),
                    route,
                    &t,
                    bad_token(want),
                ));
            }
        }
        assert_all_refused(&setup, &attacks).await;
        assert_eq!(
            (evil.hits(), evil.health_hits()),
            (0, 0),
            "the gateway fetched a key from a URL in a token"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_credentials_query_tokens_and_missing_scopes_are_refused() {
    bounded(async {
        let setup = start().await;
        let t = token();
        let auth = bearer(&t);
        let attacks = [
            Attack {
                name: "two Authorization headers, both valid".to_owned(),
                via: Via::Raw,
                target: "/orders/1".to_owned(),
                headers: vec![
                    ("Authorization".to_owned(), auth.clone()),
                    ("Authorization".to_owned(), auth.clone()),
                ],
                want: bad_request(DUPLICATE_AUTHORIZATION),
            },
            Attack {
                name: "two Authorization headers, differently cased".to_owned(),
                via: Via::Raw,
                target: "/orders/1".to_owned(),
                headers: vec![
                    ("Authorization".to_owned(), auth.clone()),
                    ("authorization".to_owned(), "Bearer x".to_owned()),
                ],
                want: bad_request(DUPLICATE_AUTHORIZATION),
            },
            Attack {
                name: "valid token in ?access_token= on a route not allowing it".to_owned(),
                via: Via::Client,
                target: format!("/orders/1?a=1&access_token={t}"),
                headers: Vec::new(),
                want: bad_request(QUERY_NOT_ALLOWED),
            },
            Attack {
                name: "?access_token= next to a valid Authorization header".to_owned(),
                via: Via::Client,
                target: format!("/orders/1?access_token={t}"),
                headers: vec![("Authorization".to_owned(), auth.clone())],
                want: bad_request(QUERY_NOT_ALLOWED),
            },
            attack(
                "valid token without orders:admin on the /admin route",
                "/admin/1",
                &t,
                Refusal {
                    status: 403,
                    code: Some("insufficient_scope"),
                    description: LACKS_SCOPE,
                    scope: Some("orders:read orders:admin"),
                },
            ),
        ];
        assert_all_refused(&setup, &attacks).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Admitted requests
// ---------------------------------------------------------------------------------------

/// Sends `headers` to `target`, expects the upstream's 200, and returns what the upstream
/// received.
async fn admitted(setup: &Setup, via: Via, target: &str, headers: &[(&str, &str)]) -> Recorded {
    let before = setup.up.hits();
    let got = send(&setup.gw, via, target, headers).await;
    assert_eq!(
        (got.status, got.all("x-upstream")),
        (200, vec!["a"]),
        "{target} should be served by the upstream; WWW-Authenticate {:?}, body {}",
        got.all("www-authenticate"),
        got.body
    );
    assert!(got.all("www-authenticate").is_empty(), "{target}");
    assert_eq!(
        setup.up.hits(),
        before + 1,
        "{target}: one upstream request"
    );
    setup.up.last_request()
}

/// The identity headers the upstream saw: subject, client id, scopes (every value of each).
fn identity(seen: &Recorded) -> [Vec<String>; 3] {
    [
        seen.header_all("x-portico-subject"),
        seen.header_all("x-portico-client-id"),
        seen.header_all("x-portico-scopes"),
    ]
}

fn one(value: &str) -> Vec<String> {
    vec![value.to_owned()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_upstream_with_the_tokens_identity() {
    bounded(async {
        let setup = start().await;
        let t = token();
        let auth = bearer(&t);

        let seen = admitted(
            &setup,
            Via::Client,
            "/orders/1",
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(seen.uri, "/orders/1");
        assert_eq!(
            identity(&seen),
            [
                one("service-a"),
                one("service-a"),
                one("orders:read orders:write")
            ]
        );
        // Not stripped by default, so the upstream may verify again.
        assert_eq!(seen.header_all("authorization"), [auth.as_str()]);

        // The same token again: answered from the verified-token cache, same identity.
        for _ in 0..3 {
            let seen = admitted(
                &setup,
                Via::Client,
                "/orders/2",
                &[("Authorization", &auth)],
            )
            .await;
            assert_eq!(
                identity(&seen),
                [
                    one("service-a"),
                    one("service-a"),
                    one("orders:read orders:write")
                ]
            );
        }

        // The scoped route admits a token holding every scope it requires.
        let admin = token_with(|_, c| c["scope"] = json!("orders:read orders:admin"));
        let seen = admitted(
            &setup,
            Via::Client,
            "/admin/1",
            &[("Authorization", &bearer(&admin))],
        )
        .await;
        assert_eq!(
            seen.header_all("x-portico-scopes"),
            ["orders:read orders:admin"]
        );

        // The route allowing HS256 admits its own secret's tokens and RS256 ones.
        let hs = sign(
            &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
            Algorithm::HS256,
            &json!({"alg": "HS256", "typ": "at+jwt"}),
            &claims(),
        );
        admitted(
            &setup,
            Via::Client,
            "/mixed/1",
            &[("Authorization", &bearer(&hs))],
        )
        .await;
        admitted(&setup, Via::Client, "/mixed/1", &[("Authorization", &auth)]).await;

        // A PEM key has no kid, so the issuer's own signature under any kid is accepted
        // (the refused counterpart is the attacker's signature under an unknown kid).
        let any_kid = token_with(|h, _| h["kid"] = json!("who-knows"));
        admitted(
            &setup,
            Via::Client,
            "/orders/1",
            &[("Authorization", &bearer(&any_kid))],
        )
        .await;
        assert_eq!(setup.up.hits(), 8);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_sent_by_the_client_never_reach_the_upstream() {
    bounded(async {
        let setup = start().await;
        // A token without client_id (or azp): the client's client-id header must not
        // survive in its place.
        let t = token_with(|_, c| {
            c.as_object_mut().unwrap().remove("client_id");
            c["sub"] = json!("service-b");
        });
        let auth = bearer(&t);
        let want = [Vec::new(), Vec::new(), Vec::new()];
        let want_b = || {
            let mut w = want.clone();
            w[0] = one("service-b");
            w[2] = one("orders:read orders:write");
            w
        };

        let seen = admitted(
            &setup,
            Via::Client,
            "/orders/1",
            &[
                ("Authorization", &auth),
                ("X-Portico-Subject", "admin"),
                ("X-PORTICO-CLIENT-ID", "x"),
                ("X-Portico-Scopes", "orders:admin"),
            ],
        )
        .await;
        assert_eq!(identity(&seen), want_b(), "spoofed once each");

        // Twice each, in different cases, which only the raw client can send; the cached
        // token takes this path too.
        for _ in 0..2 {
            let seen = admitted(
                &setup,
                Via::Raw,
                "/orders/1",
                &[
                    ("X-Portico-Subject", "admin"),
                    ("Authorization", &auth),
                    ("x-portico-subject", "root"),
                    ("X-PORTICO-CLIENT-ID", "x"),
                    ("x-portico-client-id", "y"),
                    ("X-Portico-Scopes", "orders:admin"),
                    ("x-portico-scopes", "admin:all"),
                ],
            )
            .await;
            assert_eq!(identity(&seen), want_b(), "spoofed twice each");
        }

        // A token with no scopes at all: the client's scopes header goes too.
        let bare = token_with(|_, c| {
            let c = c.as_object_mut().unwrap();
            c.remove("client_id");
            c.remove("scope");
        });
        let seen = admitted(
            &setup,
            Via::Raw,
            "/orders/1",
            &[
                ("Authorization", &bearer(&bare)),
                ("X-Portico-Subject", "admin"),
                ("X-Portico-Client-Id", "x"),
                ("X-Portico-Scopes", "orders:admin"),
            ],
        )
        .await;
        let mut want_a = want.clone();
        want_a[0] = one("service-a");
        assert_eq!(identity(&seen), want_a, "token without client_id and scope");

        // On a token that has every claim, each header carries exactly the token's value.
        let seen = admitted(
            &setup,
            Via::Raw,
            "/orders/1",
            &[
                ("X-Portico-Subject", "admin"),
                ("x-portico-subject", "root"),
                ("Authorization", &bearer(&token())),
                ("X-Portico-Client-Id", "x"),
                ("x-portico-client-id", "y"),
            ],
        )
        .await;
        assert_eq!(
            identity(&seen),
            [
                one("service-a"),
                one("service-a"),
                one("orders:read orders:write")
            ],
            "token with every claim"
        );
        assert_eq!(setup.up.hits(), 5);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// With portico's own token service
// ---------------------------------------------------------------------------------------

const SERVICE_ISSUER: &str = "https://auth.portico.test";

/// The real token service (SQLite in a temp dir) with client `service-a` (audience
/// `portico`) and `gateway`, the gateway's own credentials for the revocation list and
/// introspection (granted the `introspect` right). Returns the service, its temp dir and
/// the two secrets.
async fn start_token_service() -> (portico::auth::Running, tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = token_service::config(
        dir.path(),
        &format!("issuer = \"{SERVICE_ISSUER}\""),
        "[tokens]\nlifetime = \"10m\"\n",
    );
    let service = token_service::start(&config).await;
    let a = token_service::add_client(&service, "service-a", "orders:read", "portico").await;
    let gw = token_service::add_client(&service, "gateway", "", "portico").await;
    token_service::grant_introspect(&service, "gateway").await;
    (service, dir, a, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_at_the_token_service_is_refused_within_the_refresh() {
    bounded(async {
        let (service, _dir, a, gw) = start_token_service().await;
        let base = token_service::base(&service);
        let up = Upstream::start("a").await;
        let gateway = Gateway::config()
            .route_with(
                "orders",
                "/orders",
                "c",
                &format!(
                    r#"
[[routes.plugins]]
name = "jwt"
realm = "{REALM}"

[[routes.plugins.issuers]]
issuer = "{SERVICE_ISSUER}"
audiences = ["portico"]
jwks_url = "{base}/.well-known/jwks.json"
revocation_url = "{base}/oauth2/revoked"
revocation_refresh = "1s"
revocation_client_id = "gateway"
revocation_client_secret = "{gw}"
"#
                ),
            )
            .cluster("c", &[&up])
            .start()
            .await;
        let setup = Setup {
            up,
            gw: gateway,
            _keys: tempfile::tempdir().unwrap(),
        };
        let http = token_service::http();
        let token = token_service::token(&http, &base, "service-a", &a, &[]).await;
        let other = token_service::token(&http, &base, "service-a", &a, &[]).await;
        let (auth, other_auth) = (bearer(&token), bearer(&other));

        // Valid and not revoked: through, twice (the second from the verified-token cache).
        for _ in 0..2 {
            admitted(
                &setup,
                Via::Client,
                "/orders/1",
                &[("Authorization", &auth)],
            )
            .await;
        }
        admitted(
            &setup,
            Via::Client,
            "/orders/1",
            &[("Authorization", &other_auth)],
        )
        .await;

        let (status, _, _) = token_service::post_basic(
            &http,
            &format!("{base}/oauth2/revoke"),
            "service-a",
            &a,
            &[("token", &token)],
        )
        .await;
        assert_eq!(status, 200);
        let revoked_at = std::time::Instant::now();
        // Refused within revocation_refresh (1s) plus a fetch; poll until it is.
        let took = eventually(
            Duration::from_secs(5),
            "the revoked token is refused",
            || {
                let setup = &setup;
                let auth = auth.clone();
                async move {
                    let got = send(
                        &setup.gw,
                        Via::Client,
                        "/orders/1",
                        &[("Authorization", &auth)],
                    )
                    .await;
                    got.status == 401
                }
            },
        )
        .await;
        assert!(
            took < Duration::from_millis(2500) && revoked_at.elapsed() < Duration::from_secs(3),
            "refused only after {took:?}"
        );
        // Exactly the invalid_token refusal, never reaching the upstream; the other token
        // of the same client still passes.
        assert_all_refused(
            &setup,
            &[attack(
                "revoked at the token service",
                "/orders/1",
                &token,
                bad_token(REVOKED),
            )],
        )
        .await;
        admitted(
            &setup,
            Via::Client,
            "/orders/1",
            &[("Authorization", &other_auth)],
        )
        .await;
        service.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_are_introspected_at_the_token_service() {
    bounded(async {
        let (service, _dir, a, gw) = start_token_service().await;
        let base = token_service::base(&service);
        let up = Upstream::start("a").await;
        // Introspection only: every token, JWT or not, is asked about.
        let gateway = Gateway::config()
            .route_with(
                "orders",
                "/orders",
                "c",
                &format!(
                    r#"
[[routes.plugins]]
name = "jwt"
realm = "{REALM}"

[routes.plugins.introspection]
url = "{base}/oauth2/introspect"
client_id = "gateway"
client_secret = "{gw}"
audiences = ["portico"]
issuer = "{SERVICE_ISSUER}"
cache_ttl = "1s"
"#
                ),
            )
            .cluster("c", &[&up])
            .start()
            .await;
        let setup = Setup {
            up,
            gw: gateway,
            _keys: tempfile::tempdir().unwrap(),
        };
        let http = token_service::http();
        let token = token_service::token(&http, &base, "service-a", &a, &[]).await;
        let auth = bearer(&token);
        let seen = admitted(
            &setup,
            Via::Client,
            "/orders/1",
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(seen.header("x-portico-client-id"), Some("service-a"));
        assert_all_refused(
            &setup,
            &[attack(
                "a random bearer",
                "/orders/1",
                "random-opaque-bearer",
                bad_token(INACTIVE),
            )],
        )
        .await;
        let (status, _, _) = token_service::post_basic(
            &http,
            &format!("{base}/oauth2/revoke"),
            "service-a",
            &a,
            &[("token", &token)],
        )
        .await;
        assert_eq!(status, 200);
        // Refused once the cached answer (cache_ttl = 1s) is gone.
        eventually(
            Duration::from_secs(5),
            "the revoked token is refused",
            || {
                let setup = &setup;
                let auth = auth.clone();
                async move {
                    send(
                        &setup.gw,
                        Via::Client,
                        "/orders/1",
                        &[("Authorization", &auth)],
                    )
                    .await
                    .status
                        == 401
                }
            },
        )
        .await;
        service.stop().await;
    })
    .await;
}

/// Token checks are counted for `/metrics` and the admin console: verified, refused by
/// result and reason, and the verified-token cache's hits and misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_are_counted_by_result_and_reason() {
    bounded(async {
        let setup = start().await;
        let gw = &setup.gw;
        let auth = bearer(&token());
        // The first check verifies the signature (a cache miss), the next two are hits.
        for i in 0..3 {
            admitted(
                &setup,
                Via::Client,
                &format!("/orders/{i}"),
                &[("Authorization", &auth)],
            )
            .await;
        }
        let n = now();
        let expired = token_with(|_, c| {
            c["iat"] = json!(n - 7200);
            c["nbf"] = json!(n - 7200);
            c["exp"] = json!(n - 3600);
        });
        let answer = send(
            gw,
            Via::Client,
            "/orders/1",
            &[("Authorization", &bearer(&expired))],
        )
        .await;
        assert_eq!(answer.status, 401);
        let answer = send(gw, Via::Client, "/orders/1", &[]).await;
        assert_eq!(answer.status, 401);

        let metrics = gw.metrics().await;
        let checks =
            |labels: &[(&str, &str)]| metric_value(&metrics, "portico_jwt_checks_total", labels);
        assert_eq!(
            checks(&[("result", "verified"), ("reason", "")]),
            Some(3.0),
            "{metrics}"
        );
        assert_eq!(
            checks(&[("result", "invalid_token"), ("reason", EXPIRED)]),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            checks(&[("result", "missing_token"), ("reason", MISSING_TOKEN)]),
            Some(1.0),
            "{metrics}"
        );
        let lookups = |result| {
            metric_value(
                &metrics,
                "portico_jwt_cache_lookups_total",
                &[("result", result)],
            )
        };
        // The expired token missed the cache too; the request without one asked nothing.
        assert_eq!(
            (lookups("hit"), lookups("miss")),
            (Some(2.0), Some(2.0)),
            "{metrics}"
        );

        let console = gw.admin_json("/admin/console").await;
        let tokens = &console["tokens"];
        assert_eq!(tokens["verified"], 3, "{tokens}");
        assert_eq!(tokens["failed_total"], 2, "{tokens}");
        assert_eq!(tokens["cache_hit_ratio"], 0.5, "{tokens}");
    })
    .await;
}
