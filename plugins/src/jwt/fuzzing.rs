//! Entry points for the fuzz targets in `fuzz/` (not an API): the token parser and the
//! JWKS reader, which are private to the plugin, reached without making them public.

use serde_json::{Map, Value};

/// What [`super::token::parse`] read from a token, in public types.
#[derive(Debug)]
pub struct ParsedToken {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
}

/// Splits and decodes a compact JWT as the plugin does before any signature check; the
/// error is the RFC 6750 `error_description` the plugin would answer with.
pub fn parse_token(token: &str) -> Result<ParsedToken, &'static str> {
    super::token::parse(token).map(|t| ParsedToken {
        alg: format!("{:?}", t.alg),
        kid: t.kid,
        typ: t.typ,
        claims: t.claims,
    })
}

/// Reads a JWKS document as a fetched key set is read: the number of usable keys, or why
/// the document is not a key set.
pub fn jwks(json: &[u8]) -> Result<usize, String> {
    super::keys::KeySet::from_jwks(json, "fuzz").map(|set| set.len())
}

/// The claim checks the plugin runs on a parsed token's claims: scopes, `aud` against
/// `audiences`, and the numeric and string claims it reads.
pub fn check_claims(claims: &Map<String, Value>, audiences: &[String]) {
    let _ = super::token::scopes(claims);
    let _ = super::token::audience_ok(claims, audiences);
    for name in ["exp", "nbf", "iat"] {
        let _ = super::token::numeric(claims, name);
    }
    for name in ["iss", "sub", "jti", "client_id"] {
        let _ = super::token::string(claims, name);
    }
}
