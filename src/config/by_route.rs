//! Parsing a config route by route, so a reload reuses every route whose text did not change.
//!
//! At 100,000 routes most of a reload was the TOML parse and serde of text that was the same
//! as last time. The text is cut at its table headers: each `[[routes]]` table, with the
//! `[routes.…]` and `[[routes.…]]` sub-tables after it, is one piece, parsed on its own — or,
//! when the running config has a route written exactly so, that route is shared with it (an
//! `Arc`) instead of parsed, with what validation and the snapshot build worked out about it.
//! Everything else (`[server]`, `[clusters.…]`, …) is parsed together as one document.
//!
//! The cut follows strings, comments and multi-line arrays, but it need not be perfect: a cut
//! inside a string or an array leaves a piece that does not parse, a piece with anything but
//! one route in it is refused, and the rest of the document must not mention `routes` at all.
//! In every such case, and on any error at all, [`parse`] answers `None` and the caller parses
//! the whole text as before, which also reports the errors. So a config parsed here is the
//! config the whole-text parse gives.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Config, Route};

/// Where a route came from and what it is, so the next load and build can tell an unchanged
/// route without reading it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteSource {
    /// A 128-bit hash of the route's text as parsed (after `${ENV}` substitution).
    pub(crate) text: u128,
    /// A hash of the route's JSON form, its part of the config version.
    pub(crate) json: u64,
}

/// What a route's piece of text must hold: one `[[routes]]` table and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutePiece {
    routes: Vec<Route>,
}

/// Substitutes the `${…}` of one piece of text: the new text and the values substituted, or
/// `None` when a reference cannot be substituted.
pub(crate) type Interpolate = dyn Fn(&str) -> Option<(String, Vec<String>)>;

/// Parses `text` into a [`Config`] with one [`RouteSource`] per route, sharing the routes of
/// `previous` whose text (after `${…}` substitution) is unchanged. Only the pieces with a
/// `${` are given to `interpolate`: at 100,000 routes, reading the whole text into the
/// editable document that substitution works on cost more than a reload. `None`: parse the
/// whole text.
pub(crate) fn parse(
    text: &str,
    previous: Option<&Config>,
    interpolate: &Interpolate,
) -> Option<Config> {
    let known: HashMap<u128, usize> = previous
        .filter(|p| p.route_sources.len() == p.routes.len())
        .map(|p| {
            p.route_sources
                .iter()
                .enumerate()
                .map(|(i, s)| (s.text, i))
                .collect()
        })
        .unwrap_or_default();
    let mut rest = String::new();
    let mut routes = Vec::new();
    let mut sources = Vec::new();
    let mut secrets = Vec::new();
    for piece in pieces(text) {
        let (Piece::Route(raw) | Piece::Other(raw)) = piece;
        let substituted = if raw.contains("${") {
            let (substituted, values) = interpolate(raw)?;
            secrets.extend(values);
            std::borrow::Cow::Owned(substituted)
        } else {
            std::borrow::Cow::Borrowed(raw)
        };
        let route_text = match piece {
            Piece::Route(_) => &*substituted,
            Piece::Other(_) => {
                rest.push_str(&substituted);
                continue;
            }
        };
        let hash = xxhash_rust::xxh3::xxh3_128(route_text.as_bytes());
        let reused = known.get(&hash).and_then(|&i| {
            let p = previous?;
            Some((p.routes.get(i)?.clone(), *p.route_sources.get(i)?))
        });
        let (route, source) = match reused {
            Some(r) => r,
            None => {
                let de = toml::Deserializer::parse(route_text).ok()?;
                let mut piece = RoutePiece::deserialize(de).ok()?;
                let route = piece.routes.pop().filter(|_| piece.routes.is_empty())?;
                let json = json_hash(&route);
                (std::sync::Arc::new(route), RouteSource { text: hash, json })
            }
        };
        routes.push(route);
        sources.push(source);
    }
    let root = toml::de::DeTable::parse(&rest).ok()?;
    if root.get_ref().contains_key("routes") {
        return None;
    }
    let mut config = Config::deserialize(toml::Deserializer::from(root)).ok()?;
    config.routes = routes;
    config.route_sources = sources;
    config.secrets = secrets;
    Some(config)
}

/// A hash of `value`'s JSON form, streamed into the hasher: at 100,000 routes the JSON text
/// would be tens of MiB held for nothing.
pub(crate) fn json_hash<T: serde::Serialize + ?Sized>(value: &T) -> u64 {
    use std::hash::Hasher;
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Buffered: serde_json writes a few bytes at a time, and a hasher call per piece cost
    // more than the serializing. SipHash streams, so the pieces do not change the hash.
    let mut h = std::io::BufWriter::with_capacity(
        8 * 1024,
        HashWriter(std::collections::hash_map::DefaultHasher::new()),
    );
    let _ = serde_json::to_writer(&mut h, value);
    match h.into_inner() {
        Ok(HashWriter(hasher)) => hasher.finish(),
        // Unreachable: writing into a hasher cannot fail.
        Err(_) => u64::MAX,
    }
}

/// One piece of a config text: a route's tables, or anything else.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Route(&'a str),
    Other(&'a str),
}

/// `text` cut at its table headers into route pieces and other pieces, in order; together
/// they are the whole text.
fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let starts = header_starts(text);
    // The text before the first header is the root table's keys.
    let first = starts.first().copied().unwrap_or(text.len());
    out.push(Piece::Other(&text[..first]));
    let mut in_route = false;
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let section = &text[start..end];
        let header = header_name(section);
        let piece = match header {
            Header::Route => {
                in_route = true;
                Piece::Route(section)
            }
            // A sub-table belongs to the route above it; anywhere else the whole text is
            // parsed (the other pieces must not mention `routes`).
            Header::RouteSubTable if in_route => match out.pop() {
                Some(Piece::Route(route)) => {
                    let joined = &text[text_offset(text, route)..end];
                    Piece::Route(joined)
                }
                other => {
                    out.extend(other);
                    Piece::Other(section)
                }
            },
            Header::RouteSubTable | Header::Other => {
                in_route = false;
                Piece::Other(section)
            }
        };
        out.push(piece);
    }
    out
}

/// The offset of `part`, a slice of `text`, in `text`.
fn text_offset(text: &str, part: &str) -> usize {
    part.as_ptr() as usize - text.as_ptr() as usize
}

enum Header {
    /// `[[routes]]`
    Route,
    /// `[routes.…]` or `[[routes.…]]`
    RouteSubTable,
    Other,
}

/// What the header at the start of `section` opens. Only the plain spellings count as route
/// headers; any other (`[[ routes ]]`, `[["routes"]]`) is "other", and the whole text is
/// parsed then, as the other pieces may not mention `routes`.
fn header_name(section: &str) -> Header {
    let line = &section[..memchr::memchr(b'\n', section.as_bytes()).unwrap_or(section.len())];
    let (double, inner) = match line.strip_prefix("[[") {
        Some(inner) => (true, inner),
        None => (false, line.strip_prefix('[').unwrap_or_default()),
    };
    let name = inner.find(']').map(|end| &inner[..end]);
    match name {
        Some("routes") if double => Header::Route,
        Some(name) if name.starts_with("routes.") => Header::RouteSubTable,
        _ => Header::Other,
    }
}

/// The bytes [`header_starts`] stops at; it skips every other byte in a tight loop.
static SPECIAL: [bool; 256] = {
    let mut special = [false; 256];
    let mut n = 0;
    let bytes = b"\n#\"'[]{}";
    while n < bytes.len() {
        special[bytes[n] as usize] = true;
        n += 1;
    }
    special
};

/// The offsets of the `[` of every table header: a line whose first non-blank character is
/// `[` outside any string, comment, array or inline table.
fn header_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let mut starts = Vec::new();
    // Open `[` and `{` of values (arrays and inline tables may span lines).
    let mut depth = 0usize;
    let mut at_line_start = true;
    let mut i = 0;
    let line_end = |from: usize| memchr::memchr(b'\n', &b[from..]).map_or(b.len(), |n| from + n);
    while i < b.len() {
        let c = b[i];
        if at_line_start {
            if c == b' ' || c == b'\t' || c == b'\r' {
                i += 1;
                continue;
            }
            at_line_start = false;
            if c == b'[' && depth == 0 {
                starts.push(i);
                // A header's keys are on its line; what follows it is a comment at most.
                i = line_end(i);
                continue;
            }
        }
        match c {
            b'\n' => {
                at_line_start = true;
                i += 1;
            }
            b'#' => i = line_end(i),
            b'"' | b'\'' => i = string_end(b, i),
            b'[' | b'{' => {
                depth += 1;
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => {
                i += 1;
                while i < b.len() && !SPECIAL[b[i] as usize] {
                    i += 1;
                }
            }
        }
    }
    starts
}

/// The offset just past the string that opens at `start` (a `"` or `'`): basic or literal,
/// one-line or multi-line. An unterminated one-line string ends at its line's end.
fn string_end(b: &[u8], start: usize) -> usize {
    let quote = b[start];
    let basic = quote == b'"';
    let triple = b.get(start..start + 3) == Some(&[quote; 3][..]);
    let mut i = start + if triple { 3 } else { 1 };
    // Only a quote, a backslash (in basic strings) or a line end can matter.
    let next = |from: usize| {
        let rest = &b[from..];
        let found = match (basic, triple) {
            (true, false) => memchr::memchr3(quote, b'\\', b'\n', rest),
            (true, true) => memchr::memchr2(quote, b'\\', rest),
            (false, false) => memchr::memchr2(quote, b'\n', rest),
            (false, true) => memchr::memchr(quote, rest),
        };
        found.map_or(b.len(), |n| from + n)
    };
    loop {
        i = next(i.min(b.len()));
        let Some(&c) = b.get(i) else {
            return b.len();
        };
        if c == b'\\' {
            i += 2;
        } else if c == b'\n' {
            return i;
        } else if !triple {
            return i + 1;
        } else if b.get(i..i + 3) == Some(&[quote; 3][..]) {
            // Up to two more quotes are part of the string (`"""a"""""`).
            let mut end = i + 3;
            while end < b.len() && end < i + 5 && b[end] == quote {
                end += 1;
            }
            return end;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(&'static str, &str)> {
        pieces(text)
            .into_iter()
            .map(|p| match p {
                Piece::Route(t) => ("route", t),
                Piece::Other(t) => ("other", t),
            })
            .collect()
    }

    #[test]
    fn pieces_are_the_whole_text_cut_at_headers() {
        let text = "a = 1\n[server]\nx = [\n  [1],\n]\n[[routes]]\nid = \"r\"\n[[routes.plugins]]\nname = \"\"\"\n[[routes]]\n\"\"\"\n[routes.limits] # c\n[clusters.c]\ns = '[x]'\n  [[routes]]\n# [[routes]]\nh = { a = [\n[1]] }\n";
        let got = kinds(text);
        assert_eq!(
            got,
            vec![
                ("other", "a = 1\n"),
                ("other", "[server]\nx = [\n  [1],\n]\n"),
                (
                    "route",
                    "[[routes]]\nid = \"r\"\n[[routes.plugins]]\nname = \"\"\"\n[[routes]]\n\"\"\"\n[routes.limits] # c\n"
                ),
                ("other", "[clusters.c]\ns = '[x]'\n  "),
                ("route", "[[routes]]\n# [[routes]]\nh = { a = [\n[1]] }\n"),
            ]
        );
        let joined: String = got.iter().map(|(_, t)| *t).collect();
        assert_eq!(joined, text);
    }

    #[test]
    fn escaped_and_extra_quotes_do_not_end_strings_early() {
        let text =
            "[a]\nk = \"x\\\"[[routes]]\"\nm = \"\"\"q\"\"\"\"\"\n[[routes]]\nl = '''\n[b]\n'''\n";
        let got = kinds(text);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2], ("route", "[[routes]]\nl = '''\n[b]\n'''\n"));
    }

    #[test]
    fn a_sub_table_outside_a_route_piece_is_left_to_the_whole_text_parse() {
        let text = "[[routes]]\nid = \"a\"\npath = \"/\"\ncluster = \"c\"\n[clusters.c]\nendpoints = []\n[routes.limits]\nmax_body_bytes = 1\n";
        assert!(matches!(kinds(text)[3], ("other", _)));
        assert!(parse(text, None, &no_env).is_none());
    }

    const TEXT: &str = r#"
[server]
threads = 1

[[listeners]]
address = "127.0.0.1:0"

[[routes]]
id = "a"
path = "/a"
cluster = "c"
[[routes.plugins]]
name = "headers"
request = { set = { "X-A" = "1" } }

[clusters.c]
endpoints = [{ address = "127.0.0.1:9" }]

[[routes]]
id = "v"
path = "/v"
versioning = { sources = ["uri"] }
[[routes.versions]]
name = "1"
cluster = "c"
[routes.limits]
max_body_bytes = 10
"#;

    fn no_env(_: &str) -> Option<(String, Vec<String>)> {
        panic!("no piece has a reference")
    }

    fn whole(text: &str) -> serde_json::Value {
        serde_json::to_value(toml::from_str::<Config>(text).unwrap()).unwrap()
    }

    #[test]
    fn route_by_route_gives_the_whole_text_config_and_reuses_unchanged_routes() {
        let first = parse(TEXT, None, &no_env).expect("parses route by route");
        assert_eq!(serde_json::to_value(&first).unwrap(), whole(TEXT));
        assert_eq!(first.route_sources.len(), 2);
        assert_ne!(first.route_sources[0], first.route_sources[1]);

        let changed = TEXT.replace("\"X-A\" = \"1\"", "\"X-A\" = \"2\"");
        assert_ne!(changed, TEXT);
        let second = parse(&changed, Some(&first), &no_env).expect("parses route by route");
        assert_eq!(serde_json::to_value(&second).unwrap(), whole(&changed));
        assert_ne!(second.route_sources[0], first.route_sources[0]);
        assert_eq!(second.route_sources[1], first.route_sources[1]);
        assert_eq!(
            second.routes[0].plugins[0].config["request"]["set"]["X-A"].as_str(),
            Some("2")
        );
        // A reused route's hash is what hashing it again gives.
        assert_eq!(second.route_sources[1].json, json_hash(&*second.routes[1]));
        assert_eq!(second.route_sources[0].json, json_hash(&*second.routes[0]));
    }

    #[test]
    fn anything_unusual_is_left_to_the_whole_text_parse() {
        for text in [
            // A syntax error in a route piece, and in the rest.
            "[[routes]]\nid = \"a\"\npath = \n",
            "[server\n[[routes]]\nid = \"a\"\npath = \"/\"\n",
            // Routes written another way.
            "routes = []\n",
            "[[ routes ]]\nid = \"a\"\npath = \"/\"\n",
            // A field serde refuses.
            "[[routes]]\nid = \"a\"\npath = \"/\"\nbogus = 1\n",
        ] {
            assert!(parse(text, None, &no_env).is_none(), "{text:?}");
        }
    }
}
