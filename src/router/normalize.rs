//! Path normalisation (RFC 3986 §6.2.2 syntax-based normalisation plus §5.2.4 dot-segment
//! removal) and prefix rewriting.
//!
//! Routing decisions and access rules are made on the normalised path, so that `/public/../admin`,
//! `/public/%2e%2e/admin` and `//admin` cannot reach `/admin` behind a route that only
//! looks at `/public`. Written by hand because it must agree byte for byte with how the table
//! stores configured paths and must not allocate for the usual already-clean path.

use std::borrow::Cow;
use std::fmt;

/// Why a request path cannot be normalised (answer 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// The path does not start with `/` (this includes `*` and an empty path).
    NotAbsolute,
    /// An escaped control character (`%00`–`%1F`, `%7F`).
    ControlCharacter,
    /// An escaped `%` followed by two hex digits (`%252e`): a second decoding upstream
    /// would read another path than the gateway routed.
    DoubleEncoding,
    /// Escapes that decode to bytes that are not UTF-8, such as the overlong `%C0%AE`.
    InvalidUtf8,
    /// A `;` parameter on an empty, `.` or `..` segment (`/public/..;/admin`), which
    /// servlet containers resolve as a dot-segment after routing.
    DotSegmentParameter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::BadPercentEncoding => "invalid percent-encoding in path",
            PathError::NotAbsolute => "path does not start with '/'",
            PathError::ControlCharacter => "escaped control character in path",
            PathError::DoubleEncoding => "double percent-encoding in path",
            PathError::InvalidUtf8 => "path escapes do not decode to UTF-8",
            PathError::DotSegmentParameter => "path parameter on an empty or dot segment",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalises a request path (without query):
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
///   escape gets uppercase hex and stays encoded (`%2F` never splits a segment);
/// - bytes that may not appear literally in a path (space, `"`, `\`, non-ASCII, …) are
///   percent-encoded, so the literal and the encoded spelling compare equal;
/// - empty segments (`//`) are dropped, `.` and `..` segments are resolved and `..` never
///   climbs above `/`; a trailing slash is kept, and one is left where a final `.` or `..`
///   was (`/a/b/..` → `/a/`).
///
/// Returns the input borrowed when it is already normal.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(raw.as_bytes())? {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_slow(raw.as_bytes()).map(Cow::Owned)
}

/// Whether `path` (starting with `/`) is already in normal form. May return `Ok(false)` for a
/// path with a bad escape further on; the slow path reports that error.
fn is_normal(path: &[u8]) -> Result<bool, PathError> {
    let mut seg_start = 1;
    let mut i = 1;
    while let Some(&b) = path.get(i) {
        match b {
            b'/' => {
                if is_removable_segment(path.get(seg_start..i).unwrap_or_default()) {
                    return Ok(false);
                }
                seg_start = i + 1;
            }
            b'%' => {
                let byte = decode_escape(path, i)?;
                if is_unreserved(byte) || !is_upper_escape(path, i) {
                    return Ok(false);
                }
                i += 2;
            }
            _ if !is_path_literal(b) => return Ok(false),
            _ => {}
        }
        i += 1;
    }
    // A final empty segment is a trailing slash (or the root itself), which stays.
    let last = path.get(seg_start..).unwrap_or_default();
    Ok(last.is_empty() || !is_removable_segment(last))
}

/// What a normalised path holds that upstreams may read differently from the gateway and
/// a route must allow explicitly (see [`inspect_path`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathTraits {
    /// A `;` path parameter (`/admin;jsessionid=1`), which Tomcat, Jetty and Spring strip
    /// before they route.
    pub params: bool,
    /// An escaped `/` or `\` (`%2F`, `%5C`, or a literal `\`, which normalisation escapes),
    /// which some upstreams decode into a segment separator.
    pub escaped_slash: bool,
}

/// Checks a path already normalised by [`normalize_path`] for forms that no upstream may
/// decode differently: escaped control characters, double encoding and escapes that are
/// not UTF-8 are errors; path parameters and escaped slashes are reported, for the route
/// to allow or refuse. A path with neither `%` nor `;` (nearly all) is one scan.
pub fn inspect_path(path: &str) -> Result<PathTraits, PathError> {
    let bytes = path.as_bytes();
    let mut traits = PathTraits::default();
    if !bytes.iter().any(|&b| b == b'%' || b == b';') {
        return Ok(traits);
    }
    let mut seg_start = 0;
    let mut non_ascii = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'/' => seg_start = i + 1,
            b';' => {
                traits.params = true;
                if is_removable_segment(bytes.get(seg_start..i).unwrap_or_default()) {
                    return Err(PathError::DotSegmentParameter);
                }
            }
            b'%' => {
                match decode_escape(bytes, i)? {
                    0x00..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
                    b'/' | b'\\' => traits.escaped_slash = true,
                    b'%' if decode_escape(bytes, i + 2).is_ok() => {
                        return Err(PathError::DoubleEncoding)
                    }
                    0x80..=0xFF => non_ascii = true,
                    _ => {}
                }
                i += 2;
            }
            _ => {}
        }
        i += 1;
    }
    if non_ascii && std::str::from_utf8(&percent_decode(bytes)).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(traits)
}

/// The path with every segment's `;` parameter removed (`/a;x/b;y` → `/a/b`): the path a
/// servlet container routes by, and so the one the gateway must route by too.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (n, seg) in path.split('/').enumerate() {
        if n > 0 {
            out.push('/');
        }
        out.push_str(seg.split_once(';').map_or(seg, |(name, _)| name));
    }
    Cow::Owned(out)
}

/// Every escape decoded (escapes are known valid here).
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match decode_escape(bytes, i) {
            Ok(byte) if b == b'%' => {
                out.push(byte);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Empty, `.` or `..`: segments that normalisation removes when not last.
fn is_removable_segment(seg: &[u8]) -> bool {
    matches!(seg, b"" | b"." | b"..")
}

fn normalize_slow(path: &[u8]) -> Result<String, PathError> {
    // Only ASCII is ever pushed, so slicing `out` at any index below is on a char boundary.
    let mut out = String::with_capacity(path.len() + 8);
    let body = path.get(1..).unwrap_or_default();
    let mut segments = body.split(|&b| b == b'/').peekable();
    let mut trailing_slash = false;
    while let Some(raw_seg) = segments.next() {
        let is_last = segments.peek().is_none();
        let start = out.len();
        out.push('/');
        decode_segment(raw_seg, &mut out)?;
        match out.get(start + 1..).unwrap_or_default() {
            "" | "." => out.truncate(start),
            ".." => {
                out.truncate(start);
                // Drop the previous segment; at the root there is none and `..` stops there.
                let parent = out.rfind('/').unwrap_or(0);
                out.truncate(parent);
            }
            _ => continue,
        }
        if is_last {
            trailing_slash = true;
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Appends the canonical spelling of one raw segment (no `/` inside) to `out`.
fn decode_segment(seg: &[u8], out: &mut String) -> Result<(), PathError> {
    let mut i = 0;
    while let Some(&b) = seg.get(i) {
        if b == b'%' {
            let byte = decode_escape(seg, i)?;
            if is_unreserved(byte) {
                out.push(char::from(byte));
            } else {
                push_escape(out, byte);
            }
            i += 3;
        } else {
            if is_path_literal(b) {
                out.push(char::from(b));
            } else {
                push_escape(out, b);
            }
            i += 1;
        }
    }
    Ok(())
}

/// The byte encoded by the escape whose `%` is at `at`.
fn decode_escape(s: &[u8], at: usize) -> Result<u8, PathError> {
    let hex = |i: usize| s.get(i).and_then(|&c| char::from(c).to_digit(16));
    match (hex(at + 1), hex(at + 2)) {
        // Two hex digits are at most 0xFF, so the cast is lossless.
        (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
        _ => Err(PathError::BadPercentEncoding),
    }
}

fn is_upper_escape(s: &[u8], at: usize) -> bool {
    let upper = |i: usize| s.get(i).is_some_and(|c| !c.is_ascii_lowercase());
    upper(at + 1) && upper(at + 2)
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0F)]));
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `pct-encoded`: what a segment may contain unescaped.
fn is_path_literal(b: u8) -> bool {
    // sub-delims, then `:` and `@`
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

/// Replaces the route prefix at the start of a normalised path by `replacement`:
/// `rewrite_prefix("/orders/12", "/orders", "/api/v2/orders")` is `/api/v2/orders/12`, and
/// with `""` as replacement `/12`. A trailing slash on `prefix` or `replacement` is ignored
/// when a remainder follows; the result always starts with `/`. A path the prefix does not
/// match on a segment boundary is returned unchanged.
pub fn rewrite_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let rest = match path.strip_prefix(prefix) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => return with_leading_slash(String::from(path)),
    };
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    if rest.is_empty() {
        out.push_str(replacement);
    } else {
        out.push_str(replacement.trim_end_matches('/'));
        out.push_str(rest);
    }
    with_leading_slash(out)
}

fn with_leading_slash(s: String) -> String {
    if s.starts_with('/') {
        s
    } else {
        format!("/{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, &str)] = &[
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            // traversal
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2e%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("//admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/..", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/b/../../../c", "/c"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a//b///c//", "/a/b/c/"),
            ("///", "/"),
            // encoded slash stays one segment
            ("/a%2fb", "/a%2Fb"),
            ("/a/%2e%2e%2fb", "/a/..%2Fb"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            // unreserved decoded, others uppercased
            ("/%7euser/%41%62%2D%5f", "/~user/Ab-_"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a%3Ab"),
            ("/%25", "/%25"),
            ("/%252e", "/%252e"),
            // literal bytes that have no place in a path get encoded
            ("/a b", "/a%20b"),
            ("/a\\b", "/a%5Cb"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/x?y#z", "/x%3Fy%23z"),
            // allowed literal sub-delims and friends stay
            ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).as_deref(), Ok(*want), "input {raw:?}");
        }
    }

    #[test]
    fn normalisation_errors() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("http://h/a", PathError::NotAbsolute),
            ("/a%", PathError::BadPercentEncoding),
            ("/a%2", PathError::BadPercentEncoding),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%2g/b", PathError::BadPercentEncoding),
            ("/a%%41", PathError::BadPercentEncoding),
            // a bad escape after something the fast path already flagged
            ("//a%x", PathError::BadPercentEncoding),
            ("/%c3%", PathError::BadPercentEncoding),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw), Err(*want), "input {raw:?}");
        }
    }

    #[test]
    fn inspection_refuses_ambiguous_forms() {
        let refused: &[(&str, PathError)] = &[
            ("/public/..;/admin", PathError::DotSegmentParameter),
            ("/public/.;x/admin", PathError::DotSegmentParameter),
            ("/;x/admin", PathError::DotSegmentParameter),
            ("/a/..;", PathError::DotSegmentParameter),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0Ab", PathError::ControlCharacter),
            ("/a%1F", PathError::ControlCharacter),
            ("/a%7F", PathError::ControlCharacter),
            ("/%252e%252e/admin", PathError::DoubleEncoding),
            ("/a%252F", PathError::DoubleEncoding),
            ("/a%2541", PathError::DoubleEncoding),
            ("/%C0%AE%C0%AE/admin", PathError::InvalidUtf8),
            ("/%C3", PathError::InvalidUtf8),
            ("/%E0%80%AF", PathError::InvalidUtf8),
            ("/%ED%A0%80", PathError::InvalidUtf8),
        ];
        for (path, want) in refused {
            assert_eq!(inspect_path(path), Err(*want), "{path:?}");
        }
        let traits = |params, escaped_slash| PathTraits {
            params,
            escaped_slash,
        };
        let accepted: &[(&str, PathTraits)] = &[
            ("/", traits(false, false)),
            ("/v1/orders/12", traits(false, false)),
            ("/discount/50%25", traits(false, false)),
            ("/%25/x", traits(false, false)),
            ("/caf%C3%A9", traits(false, false)),
            ("/a%20b", traits(false, false)),
            ("/admin;x", traits(true, false)),
            ("/a;b=c/d;e", traits(true, false)),
            ("/a;%2F..", traits(true, true)),
            ("/a%2Fb", traits(false, true)),
            ("/a%5Cb", traits(false, true)),
            ("/a;x/b%2F", traits(true, true)),
        ];
        for (path, want) in accepted {
            assert_eq!(inspect_path(path), Ok(*want), "{path:?}");
        }
        // Every form normalisation produces from a literal backslash is caught too.
        let normalised = normalize_path("/a\\..\\admin").unwrap();
        assert_eq!(inspect_path(&normalised).map(|t| t.escaped_slash), Ok(true));
    }

    #[test]
    fn params_are_removed_per_segment() {
        for (path, want) in [
            ("/admin;x", "/admin"),
            ("/a;b=c/d;e/f", "/a/d/f"),
            ("/a/b", "/a/b"),
            ("/a;x/", "/a/"),
        ] {
            assert_eq!(without_params(path), want, "{path:?}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a%2Fb",
            "/v1/orders/12",
            "/a/.../b",
            "/%25",
        ] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(_))),
                "{p:?} should be borrowed"
            );
        }
        for p in ["//", "/a%2fb", "/%41", "/a/./b", "/a/..", "/a/."] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Owned(_))),
                "{p:?} should be rewritten"
            );
        }
    }

    #[test]
    fn normalisation_is_idempotent_and_fast_path_agrees() {
        const ALPHABET: &[&str] = &[
            "/", "/", "/", ".", ".", "..", "%", "2", "e", "E", "f", "F", "%2e", "%2E", "%2f",
            "%2F", "%41", "%7e", "%zz", "a", "b", "~", "-", " ", "\u{e9}", "?", ":", "%25",
        ];
        let mut rng = rand::thread_rng();
        for _ in 0..500 {
            let mut raw = String::new();
            if rng.gen_range(0..10) > 0 {
                raw.push('/');
            }
            for _ in 0..rng.gen_range(0..16) {
                raw.push_str(ALPHABET[rng.gen_range(0..ALPHABET.len())]);
            }
            let Ok(once) = normalize_path(&raw) else {
                continue;
            };
            let once = once.into_owned();
            assert!(
                matches!(normalize_path(&once), Ok(Cow::Borrowed(p)) if p == once),
                "not idempotent: {raw:?} -> {once:?} -> {:?}",
                normalize_path(&once)
            );
            // The fast path must say "normal" exactly when the full algorithm changes nothing.
            let slow = normalize_slow(raw.as_bytes()).ok();
            assert_eq!(slow.as_deref(), Some(once.as_str()), "input {raw:?}");
            assert_eq!(
                is_normal(raw.as_bytes()).unwrap_or(false),
                once == raw,
                "fast path disagrees on {raw:?}"
            );
            assert!(!once.contains("//"), "{raw:?} -> {once:?}");
            assert!(
                !once.split('/').any(|s| s == "." || s == ".."),
                "{raw:?} -> {once:?}"
            );
        }
    }

    #[test]
    fn rewrite_prefix_cases() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "/orders/12",
                "/orders",
                "/api/v2/orders",
                "/api/v2/orders/12",
            ),
            ("/orders/12", "/orders", "", "/12"),
            ("/orders", "/orders", "", "/"),
            ("/orders/", "/orders", "", "/"),
            ("/orders", "/orders", "/api", "/api"),
            ("/orders/", "/orders", "/api", "/api/"),
            ("/orders/12", "/orders/", "/api/", "/api/12"),
            ("/orders/12", "/orders", "/", "/12"),
            ("/orders/12", "/orders", "api", "/api/12"),
            ("/orders", "/orders", "/api/", "/api/"),
            ("/x/y", "/", "/api", "/api/x/y"),
            ("/", "/", "/api", "/api/"),
            ("/", "/", "", "/"),
            // not a segment-boundary match: untouched
            ("/orders2/1", "/orders", "/api", "/orders2/1"),
            ("/other", "/orders", "/api", "/other"),
            ("", "/orders", "/api", "/"),
        ];
        for (path, prefix, repl, want) in cases {
            assert_eq!(
                rewrite_prefix(path, prefix, repl),
                *want,
                "rewrite_prefix({path:?}, {prefix:?}, {repl:?})"
            );
        }
    }
}
