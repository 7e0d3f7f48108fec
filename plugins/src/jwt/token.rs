//! Reading a JWT before trusting it: the compact form is split and its header and payload
//! decoded here, strictly (base64url without padding, JSON objects only, no duplicate
//! members), so the gateway decides which issuer, algorithm and key apply from what it parsed
//! itself. Header members that point at keys (`jku`, `x5u`, `jwk`, `x5c`) are never read.
//!
//! The functions return the short `error_description` of RFC 6750 on failure: fixed ASCII
//! text, never an echo of the token.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::keys::{parse_alg, Algorithm};

pub(super) const MALFORMED: &str = "malformed token";
pub(super) const TOO_LARGE: &str = "token is too large";
pub(super) const UNSIGNED: &str = "unsigned tokens are not accepted";
pub(super) const UNSUPPORTED_ALG: &str = "unsupported signature algorithm";
pub(super) const ALG_NOT_ALLOWED: &str = "signature algorithm not allowed for this issuer";
pub(super) const CRIT: &str = "critical header parameters are not supported";
pub(super) const BAD_TYP: &str = "unexpected token type";
pub(super) const UNKNOWN_ISSUER: &str = "unknown issuer";
pub(super) const EXPIRED: &str = "token has expired";
pub(super) const NOT_YET_VALID: &str = "token is not yet valid";
pub(super) const AUDIENCE: &str = "audience not accepted";
pub(super) const MISSING_CLAIM: &str = "required claim missing";
pub(super) const MALFORMED_CLAIM: &str = "malformed claim";
pub(super) const UNKNOWN_KEY: &str = "unknown signing key";
pub(super) const BAD_SIGNATURE: &str = "invalid signature";
pub(super) const UNFORWARDABLE: &str = "claims cannot be forwarded as headers";
pub(super) const INACTIVE: &str = "token is not active";
pub(super) const REVOKED: &str = "token has been revoked";
pub(super) const MISSING_JTI: &str = "token has no jti";

/// A token split and decoded, not yet verified.
pub(super) struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

/// The header members portico reads. Members it does not name are skipped unread, which is
/// how `jku`, `x5u`, `jwk` and `x5c` are ignored; a member named twice fails the parse.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    /// Whether `crit` is present at all, whatever its value (`null` included).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// Splits and decodes `token` (already bounded in size by the caller).
pub(super) fn parse(token: &str) -> Result<Unverified, &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(MALFORMED);
    }

    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| MALFORMED)?;
    // serde reads a struct from a JSON array too; a JOSE header is an object.
    if !is_object(&header) {
        return Err(MALFORMED);
    }
    // JSON is UTF-8 (RFC 8259 §8.1). serde_json checks that only in the strings it reads,
    // not in the members it skips, so `{"alg":"ES256","x":"\xff"}` would pass unchecked.
    let header = std::str::from_utf8(&header).map_err(|_| MALFORMED)?;
    let header: RawHeader = serde_json::from_str(header).map_err(|_| MALFORMED)?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(UNSIGNED);
    }
    let alg = parse_alg(&header.alg).ok_or(UNSUPPORTED_ALG)?;
    if signature.is_empty() {
        return Err(MALFORMED);
    }
    // RFC 7515 §4.1.11: a recipient must reject `crit` members it does not understand, and
    // portico understands none.
    if header.crit {
        return Err(CRIT);
    }

    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| MALFORMED)?;
    let payload = std::str::from_utf8(&payload).map_err(|_| MALFORMED)?;
    let StrictObject(claims) = serde_json::from_str(payload).map_err(|_| MALFORMED)?;
    Ok(Unverified {
        alg,
        kid: header.kid,
        typ: header.typ,
        claims,
    })
}

fn is_object(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

/// A JSON object whose members must be unique: `{"iss":"a","iss":"b"}` is refused rather
/// than read as whichever one a parser keeps, which parsers disagree on.
struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrictVisitor;
        impl<'de> Visitor<'de> for StrictVisitor {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom("duplicate member"));
                    }
                    let value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(StrictVisitor)
    }
}

/// Compares a header `typ` with the expected one as RFC 7515 §4.1.9 says: case-insensitive,
/// with the `application/` prefix optional. `expected` is stored lower-case without prefix.
pub(super) fn typ_matches(typ: Option<&str>, expected: &str) -> bool {
    let Some(typ) = typ else { return false };
    let typ = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    typ.eq_ignore_ascii_case(expected)
}

/// A NumericDate claim as whole seconds: `None` when absent, an error when not a number.
/// Fractions are dropped and negative dates read as 0 (long past).
pub(super) fn numeric(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, &'static str> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(secs) = n.as_u64() {
                Ok(Some(secs))
            } else if let Some(secs) = n.as_f64().filter(|f| f.is_finite()) {
                Ok(Some(if secs <= 0.0 { 0 } else { secs as u64 }))
            } else {
                Err(MALFORMED_CLAIM)
            }
        }
        Some(_) => Err(MALFORMED_CLAIM),
    }
}

/// A string claim: `None` when absent, an error when of another type.
pub(super) fn string<'c>(
    claims: &'c Map<String, Value>,
    name: &str,
) -> Result<Option<&'c str>, &'static str> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MALFORMED_CLAIM),
    }
}

/// Whether the `aud` claim (a string or an array of strings) names one of `accepted`.
pub(super) fn audience_ok(
    claims: &Map<String, Value>,
    accepted: &[String],
) -> Result<bool, &'static str> {
    match claims.get("aud") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(aud)) => Ok(accepted.iter().any(|a| a == aud)),
        Some(Value::Array(auds)) => {
            let mut found = false;
            for aud in auds {
                let Value::String(aud) = aud else {
                    return Err(MALFORMED_CLAIM);
                };
                found |= accepted.iter().any(|a| a == aud);
            }
            Ok(found)
        }
        Some(_) => Err(MALFORMED_CLAIM),
    }
}

/// The token's scopes: the space-separated `scope` claim (RFC 8693, RFC 9068), else `scp` as
/// an array or a space-separated string (as some providers write it).
pub(super) fn scopes(claims: &Map<String, Value>) -> Result<Vec<String>, &'static str> {
    let mut scopes = Vec::new();
    match claims.get("scope").or_else(|| claims.get("scp")) {
        None | Some(Value::Null) => {}
        Some(Value::String(list)) => {
            for scope in list.split(' ').filter(|s| !s.is_empty()) {
                push_scope(&mut scopes, scope)?;
            }
        }
        Some(Value::Array(list)) => {
            for scope in list {
                let Value::String(scope) = scope else {
                    return Err(MALFORMED_CLAIM);
                };
                push_scope(&mut scopes, scope)?;
            }
        }
        Some(_) => return Err(MALFORMED_CLAIM),
    }
    Ok(scopes)
}

fn push_scope(scopes: &mut Vec<String>, scope: &str) -> Result<(), &'static str> {
    if !is_scope_token(scope) {
        return Err(MALFORMED_CLAIM);
    }
    if !scopes.iter().any(|s| s == scope) {
        scopes.push(scope.to_owned());
    }
    Ok(())
}

/// RFC 6749 §3.3 `scope-token`: printable ASCII without space, `"` and `\`.
pub(super) fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub(super) fn is_b64token(token: &[u8]) -> bool {
    let body = token
        .iter()
        .rposition(|&b| b != b'=')
        .map_or(&token[..0], |end| &token[..=end]);
    !body.is_empty()
        && body.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    #[test]
    fn a_well_formed_token_parses() {
        let t = parse(&token(
            r#"{"alg":"ES256","kid":"k1","typ":"at+jwt","jku":"https://evil","jwk":{"kty":"EC"}}"#,
            r#"{"iss":"i","exp":1}"#,
        ))
        .unwrap();
        assert_eq!(t.alg, Algorithm::ES256);
        assert_eq!(t.kid.as_deref(), Some("k1"));
        assert_eq!(t.claims["iss"], "i");
    }

    #[test]
    fn hostile_shapes_are_refused() {
        let ok_payload = r#"{"iss":"i"}"#;
        for (t, want) in [
            (token(r#"{"alg":"none"}"#, ok_payload), UNSIGNED),
            (token(r#"{"alg":"nOnE"}"#, ok_payload), UNSIGNED),
            (
                format!("{}.{}.", b64(r#"{"alg":"ES256"}"#), b64(ok_payload)),
                MALFORMED,
            ),
            (token(r#"{"alg":"es256"}"#, ok_payload), UNSUPPORTED_ALG),
            (token(r#"{"alg":"ES256","crit":["exp"]}"#, ok_payload), CRIT),
            (token(r#"{"alg":"ES256","crit":null}"#, ok_payload), CRIT),
            (
                token(r#"{"alg":"ES256","alg":"HS256"}"#, ok_payload),
                MALFORMED,
            ),
            (token(r#"["ES256"]"#, ok_payload), MALFORMED),
            (token(r#"{"alg":"ES256"}"#, r#"["iss"]"#), MALFORMED),
            (
                token(r#"{"alg":"ES256"}"#, r#"{"iss":"a","iss":"b"}"#),
                MALFORMED,
            ),
            (token(r#"{"alg":"ES256"}"#, r#"{"iss":"a""#), MALFORMED),
            (token(r#"{"alg":5}"#, ok_payload), MALFORMED),
            ("a.b".to_owned(), MALFORMED),
            ("a.b.c.d".to_owned(), MALFORMED),
            (
                format!("{}=.{}.c2ln", b64(r#"{"alg":"ES256"}"#), b64(ok_payload)),
                MALFORMED,
            ),
            // Non-canonical trailing bits in the last base64 character.
            (
                "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJpIn1.c2ln".to_owned(),
                MALFORMED,
            ),
        ] {
            assert_eq!(parse(&t).err(), Some(want), "{t}");
        }
    }

    #[test]
    fn typ_compares_like_rfc_7515() {
        assert!(typ_matches(Some("at+jwt"), "at+jwt"));
        assert!(typ_matches(Some("AT+JWT"), "at+jwt"));
        assert!(typ_matches(Some("application/at+jwt"), "at+jwt"));
        assert!(typ_matches(Some("Application/At+Jwt"), "at+jwt"));
        assert!(!typ_matches(Some("JWT"), "at+jwt"));
        assert!(!typ_matches(Some("application/"), "at+jwt"));
        assert!(!typ_matches(None, "at+jwt"));
    }

    #[test]
    fn claims_are_read_strictly() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"exp":10.7,"nbf":-3,"iat":"x","aud":["a",1],"scope":"a  b a","scp":["z"]}"#,
        )
        .unwrap();
        assert_eq!(numeric(&claims, "exp"), Ok(Some(10)));
        assert_eq!(numeric(&claims, "nbf"), Ok(Some(0)));
        assert_eq!(numeric(&claims, "iat"), Err(MALFORMED_CLAIM));
        assert_eq!(numeric(&claims, "missing"), Ok(None));
        assert_eq!(audience_ok(&claims, &["a".into()]), Err(MALFORMED_CLAIM));
        assert_eq!(scopes(&claims).unwrap(), ["a", "b"]);

        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"aud":"b","scp":["x","y"]}"#).unwrap();
        assert_eq!(audience_ok(&claims, &["a".into(), "b".into()]), Ok(true));
        assert_eq!(audience_ok(&claims, &["a".into()]), Ok(false));
        assert_eq!(scopes(&claims).unwrap(), ["x", "y"]);

        let claims: Map<String, Value> = serde_json::from_str(r#"{"scope":"a \"b"}"#).unwrap();
        assert_eq!(scopes(&claims), Err(MALFORMED_CLAIM));
    }

    #[test]
    fn b64token_follows_rfc_6750() {
        assert!(is_b64token(b"abc.DEF-_~+/=="));
        assert!(!is_b64token(b""));
        assert!(!is_b64token(b"=="));
        assert!(!is_b64token(b"a=b"));
        assert!(!is_b64token(b"a b"));
        assert!(!is_b64token(b"a,b"));
        assert!(!is_b64token(b"a\"b"));
    }
}
