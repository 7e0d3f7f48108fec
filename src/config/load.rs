//! Reading a config file: `${ENV}` interpolation, TOML parsing with field-path tracking,
//! validation, and turning every problem into a [`ConfigError`] that names the file, the
//! line and column, and the field path.

use std::path::Path;

use serde::Deserialize as _;

use super::field_path::{render_path, Seg};
use super::{validate, Config};
pub use portico_common::config_error::{location_of, ConfigError, ConfigErrors, Location};

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let (name, text) = portico_common::config_error::read_config_file(path)?;
    load_str(&name, &text)
}

/// Parses and validates config text; `file` names it in errors.
///
/// Every problem is reported, not just the first: a field serde rejects is removed and the
/// document parsed again (up to a bound), and the config that finally parses is validated
/// too. Only a TOML syntax error or a missing required field stops early.
///
/// A valid file is parsed once, straight into [`Config`]. The editable documents that
/// locate and remove bad fields are parsed only when there is a problem to locate: at
/// 100,000 routes each parse of the file costs as much as the whole load otherwise does.
pub fn load_str(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    load_str_reusing(file, text, None)
}

/// [`load_str`] for a reload: the routes of `previous` (the running config) whose text is
/// unchanged are taken from it instead of being parsed again (see [`super::by_route`]).
/// Everything is validated as in [`load_str`], and the result is the same.
pub fn load_str_reusing(
    file: &str,
    text: &str,
    previous: Option<&Config>,
) -> Result<Config, ConfigErrors> {
    // The common case, a valid config: parsed route by route, each piece with a `${…}`
    // interpolated on its own (see `by_route`), and validated. Anything else is read whole
    // below, which places every problem in the file.
    if let Some(config) = super::by_route::parse(text, previous, &interpolate_piece) {
        if validate::validate(&config).is_empty() {
            return Ok(config);
        }
    }
    // Every problem has a place: one about a field that is not in the file at all (no
    // `[[listeners]]`), and so no closer parent to point at, points at the file's start.
    let error = |offset: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_string(),
        location: Some(location_of(text, offset.unwrap_or(0))),
        field,
        message,
    };
    // The original text locates fields by path (its `${…}` are inside strings, so it
    // parses like the interpolated one, with the same keys on the same lines).
    let original = std::cell::OnceCell::new();
    let original = || {
        original
            .get_or_init(|| toml_edit::ImDocument::parse(text).ok())
            .as_ref()
    };
    let locate = |path: &[Seg]| original().and_then(|d| span_of(d.as_table(), path));
    let mut errors = Vec::new();

    // Interpolation works on the parsed document, the one that locates fields: a file
    // with a `${…}` is parsed once more than one without.
    let interpolated = interpolate_env(text, text.contains("${").then(original).flatten());
    // Fields whose `${NAME}` could not be substituted: their value is a stand-in, so
    // validating it again would only repeat the problem in other words.
    let mut env_fields = Vec::new();
    // Parser spans are offsets into the interpolated text, where a substituted string may
    // be longer or shorter than as written: they are mapped back to the file's offsets.
    let parsed_error = |offset: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_string(),
        location: Some(location_of(
            text,
            interpolated.original_offset(offset.unwrap_or(0)),
        )),
        field,
        message,
    };
    let Interpolated {
        text: ref substituted,
        ref secrets,
        ref problems,
        ..
    } = interpolated;
    let (text, secrets) = (substituted.as_str(), secrets.clone());
    for (offset, message) in problems.iter().cloned() {
        let field = original()
            .map(|d| render_path(&path_at(d.as_table(), offset)))
            .unwrap_or_default();
        env_fields.push(field.clone());
        errors.push(error(Some(offset), field, message));
    }

    // Parsed whole; when that fails, again below with the field paths tracked, to report
    // every problem.
    let config = match toml::Deserializer::parse(text).and_then(Config::deserialize) {
        Ok(c) => Some(c),
        Err(_) => deserialize_reporting(text, &locate, &error, &parsed_error, &mut errors)?,
    };

    if let Some(mut config) = config {
        config.secrets = secrets;
        for p in validate::validate(&config) {
            let field = render_path(&p.path);
            if !env_fields.contains(&field) {
                errors.push(error(locate(&p.path), field, p.message));
            }
        }
        if errors.is_empty() {
            return Ok(config);
        }
    }
    Err(sorted(errors))
}

/// A piece of a config text (see `by_route`) with its `${…}` substituted, and the values
/// substituted; `None` when a reference cannot be (the whole text is read then, to say so).
fn interpolate_piece(piece: &str) -> Option<(String, Vec<String>)> {
    let doc = toml_edit::ImDocument::parse(piece).ok()?;
    let out = interpolate_env(piece, Some(&doc));
    out.problems.is_empty().then_some((out.text, out.secrets))
}

/// Parses `text`, which does not deserialize into a [`Config`], reporting why: a TOML
/// syntax error ends it (`Err`); otherwise each field serde rejects is reported and removed,
/// and the document parsed again, until it deserializes (`Ok(Some)`) or cannot go on.
fn deserialize_reporting(
    text: &str,
    locate: &dyn Fn(&[Seg]) -> Option<usize>,
    error: &dyn Fn(Option<usize>, String, String) -> ConfigError,
    parsed_error: &dyn Fn(Option<usize>, String, String) -> ConfigError,
    errors: &mut Vec<ConfigError>,
) -> Result<Option<Config>, ConfigErrors> {
    let mut doc: toml_edit::DocumentMut = match text.parse() {
        Ok(doc) => doc,
        Err(e) => {
            let e: toml_edit::TomlError = e;
            let offset = e.span().map(|s| s.start);
            errors.push(parsed_error(
                offset,
                String::new(),
                syntax_message(e.message(), text, offset),
            ));
            return Err(sorted(std::mem::take(errors)));
        }
    };
    for round in 0..32 {
        let current = if round == 0 {
            text.to_owned()
        } else {
            doc.to_string()
        };
        // toml_edit parsed the text above, so `parse` fails only where the two parsers
        // disagree; such an error has no field path and ends the rounds.
        let outcome = match toml::Deserializer::parse(&current) {
            Ok(deserializer) => serde_path_to_error::deserialize::<_, Config>(deserializer)
                .map_err(|e| (path_of(e.path()), e.into_inner())),
            Err(e) => Err((Vec::new(), e)),
        };
        match outcome {
            Ok(c) => return Ok(Some(c)),
            Err((path, inner)) => {
                let message = match inner.message().trim() {
                    "" => "invalid value".to_string(),
                    m => m.to_string(),
                };
                // Spans are exact in the first round; later texts are re-rendered.
                let offset = if round == 0 {
                    inner.span().map(|s| s.start)
                } else {
                    locate(&path)
                };
                let missing = message.starts_with("missing field");
                if round == 0 {
                    errors.push(parsed_error(offset, render_path(&path), message));
                } else {
                    errors.push(error(offset, render_path(&path), message));
                }
                if missing || path.is_empty() || !remove_path(&mut doc, &path) {
                    break;
                }
            }
        }
    }
    Ok(None)
}

/// What is wrong with TOML that does not parse. toml_edit gives no reason for some errors
/// (`key = ` with nothing after it): then say what it stumbled on, so no problem is
/// reported without a message.
fn syntax_message(message: &str, text: &str, offset: Option<usize>) -> String {
    let message = message.trim();
    if !message.is_empty() {
        return message.to_string();
    }
    let at = offset
        .and_then(|o| text.get(o..))
        .and_then(|rest| rest.chars().next());
    match at {
        None => "invalid TOML: unexpected end of file".to_string(),
        Some('\n' | '\r') => "invalid TOML: unexpected end of line".to_string(),
        Some(c) => format!("invalid TOML: unexpected `{}`", c.escape_debug()),
    }
}

/// In file order, as an editor would walk them; problems without a place come first.
fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| e.location.as_ref().map(|l| (l.line, l.column)));
    ConfigErrors(errors)
}

fn path_of(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|seg| match seg {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// Removes the item at `path` so the document can be parsed again past it.
fn remove_path(doc: &mut toml_edit::DocumentMut, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut item = doc.as_item_mut();
    for seg in parents {
        let next = match seg {
            Seg::Key(k) if item.get(k.as_str()).is_some() => item.get_mut(k.as_str()),
            Seg::Index(i) => item.get_mut(*i),
            Seg::Key(_) => None,
        };
        match next {
            Some(n) => item = n,
            None => return false,
        }
    }
    match last {
        Seg::Key(k) => item
            .as_table_like_mut()
            .is_some_and(|t| t.remove(k).is_some()),
        Seg::Index(i) => match item {
            toml_edit::Item::ArrayOfTables(a) if *i < a.len() => {
                a.remove(*i);
                true
            }
            toml_edit::Item::Value(toml_edit::Value::Array(a)) if *i < a.len() => {
                a.remove(*i);
                true
            }
            _ => false,
        },
    }
}

/// The path of the deepest item whose span contains `offset`.
fn path_at(root: &toml_edit::Table, offset: usize) -> Vec<Seg> {
    use toml_edit::{Item, Value};
    fn contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end)
    }
    fn in_value(v: &Value, offset: usize, path: &mut Vec<Seg>) {
        match v {
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    if contains(v.span(), offset) {
                        path.push(Seg::Index(i));
                        return in_value(v, offset, path);
                    }
                }
            }
            Value::InlineTable(t) => {
                for (k, v) in t.iter() {
                    if contains(v.span(), offset) {
                        path.push(Seg::Key(k.to_string()));
                        return in_value(v, offset, path);
                    }
                }
            }
            _ => {}
        }
    }
    fn in_table(t: &toml_edit::Table, offset: usize, path: &mut Vec<Seg>) {
        for (k, item) in t.iter() {
            let here = path.len();
            path.push(Seg::Key(k.to_string()));
            match item {
                Item::Value(v) if contains(v.span(), offset) => return in_value(v, offset, path),
                Item::Table(sub) => {
                    in_table(sub, offset, path);
                    if path.len() > here + 1 {
                        return;
                    }
                }
                Item::ArrayOfTables(a) => {
                    for (i, sub) in a.iter().enumerate() {
                        path.push(Seg::Index(i));
                        in_table(sub, offset, path);
                        if path.len() > here + 2 {
                            return;
                        }
                        path.pop();
                    }
                }
                _ => {}
            }
            path.truncate(here);
        }
    }
    let mut path = Vec::new();
    in_table(root, offset, &mut path);
    path
}

/// The byte offset of the item at `path`, or of its closest existing parent, so an error
/// about a missing or defaulted field still points at the table it belongs in.
fn span_of(root: &toml_edit::Table, path: &[Seg]) -> Option<usize> {
    use toml_edit::{Item, Value};
    enum Node<'a> {
        Item(&'a Item),
        Value(&'a Value),
        Table(&'a toml_edit::Table),
    }
    let mut node = Node::Table(root);
    let mut best = None;
    for seg in path {
        let next = match (&node, seg) {
            (Node::Table(t), Seg::Key(k)) => {
                if let Some(key) = t.key(k) {
                    best = key.span().map(|s| s.start).or(best);
                }
                t.get(k).map(Node::Item)
            }
            (Node::Item(Item::Table(t)), Seg::Key(k)) => {
                if let Some(key) = t.key(k) {
                    best = key.span().map(|s| s.start).or(best);
                }
                t.get(k).map(Node::Item)
            }
            (Node::Item(Item::Value(Value::InlineTable(t))), Seg::Key(k))
            | (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => {
                if let Some(key) = t.key(k) {
                    best = key.span().map(|s| s.start).or(best);
                }
                t.get(k).map(Node::Value)
            }
            (Node::Item(Item::ArrayOfTables(a)), Seg::Index(i)) => a.get(*i).map(Node::Table),
            (Node::Item(Item::Value(Value::Array(a))), Seg::Index(i))
            | (Node::Value(Value::Array(a)), Seg::Index(i)) => a.get(*i).map(Node::Value),
            _ => None,
        };
        let Some(next) = next else { break };
        let span = match &next {
            Node::Item(item) => item.span(),
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
        };
        best = span.map(|s| s.start).or(best);
        node = next;
    }
    best
}

/// A config text with its `${NAME}` references substituted, and how to find an offset of it
/// in the file as written.
struct Interpolated {
    text: String,
    /// The substituted values, treated as secrets.
    secrets: Vec<String>,
    /// Every reference that could not be substituted, at its offset in the original text.
    problems: Vec<(usize, String)>,
    /// The strings replaced, in file order: their span in the original text and the length
    /// of what replaced them.
    edits: Vec<(std::ops::Range<usize>, usize)>,
}

impl Interpolated {
    /// The offset in the original text of `offset` in the substituted one: inside a
    /// replaced string, the string's start.
    fn original_offset(&self, offset: usize) -> usize {
        let mut shift: isize = 0;
        for (span, new_len) in &self.edits {
            let new_start = (span.start as isize + shift) as usize;
            if offset < new_start {
                break;
            }
            if offset < new_start + new_len {
                return span.start;
            }
            shift += *new_len as isize - span.len() as isize;
        }
        (offset as isize - shift).max(0) as usize
    }
}

/// Replaces `${NAME}` in the document's double-quoted string values with the environment
/// variable's value. The document is parsed first (a syntax error is left for the real
/// parse to report), so only string values are touched: comments, keys and literal ('…')
/// strings stay as written, and `$${` writes a literal `${`. Each string with a reference
/// is written back as a basic string with the value escaped, so a secret containing `"` or
/// `\\` cannot change the document's structure. A reference that cannot be substituted
/// becomes an empty string, so parsing can go on and report the rest.
/// `doc` is `text` parsed; without it (no reference in the text, or a syntax error) the
/// text is returned as it is.
fn interpolate_env(text: &str, doc: Option<&toml_edit::ImDocument<&str>>) -> Interpolated {
    let mut out = Interpolated {
        text: String::new(),
        secrets: Vec::new(),
        problems: Vec::new(),
        edits: Vec::new(),
    };
    let Some(doc) = doc else {
        out.text = text.to_string();
        return out;
    };
    let mut strings = Vec::new();
    strings_in_table(doc.as_table(), &mut strings);
    strings.sort_by_key(|(span, _)| span.start);
    let mut rebuilt = String::with_capacity(text.len());
    let mut copied = 0;
    for (span, value) in strings {
        let raw = &text[span.clone()];
        // Literal strings mean what they say; strings without a reference stay as written.
        if !raw.starts_with('"') || !value.contains("${") || span.start < copied {
            continue;
        }
        let substituted = substitute(&value, raw, span.start, &mut out);
        let encoded = basic_string(&substituted);
        rebuilt.push_str(&text[copied..span.start]);
        rebuilt.push_str(&encoded);
        out.edits.push((span.clone(), encoded.len()));
        copied = span.end;
    }
    rebuilt.push_str(&text[copied..]);
    out.text = rebuilt;
    out
}

/// `value` (a decoded string) with its references replaced; `raw` is how it is written at
/// `start`, to place problems at their reference.
fn substitute(value: &str, raw: &str, start: usize, out: &mut Interpolated) -> String {
    let at = |needle: &str| start + raw.find(needle).unwrap_or(0);
    let mut result = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        result.push_str(&rest[..i]);
        let from = &rest[i..];
        if let Some(after) = from.strip_prefix("$${") {
            result.push_str("${");
            rest = after;
        } else if let Some(after) = from.strip_prefix("${") {
            let Some(end) = after
                .find(['}', '\n'])
                .filter(|&e| after.as_bytes()[e] == b'}')
            else {
                out.problems
                    .push((at("${"), "unterminated `${` in config".to_string()));
                result.push_str("${");
                rest = after;
                continue;
            };
            let name = &after[..end];
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            let reference = format!("${{{name}}}");
            if !valid {
                out.problems.push((
                    at(&reference),
                    format!("`{reference}` is not a valid environment variable reference"),
                ));
            } else {
                match std::env::var(name) {
                    Ok(v) => {
                        result.push_str(&v);
                        if !v.is_empty() {
                            out.secrets.push(v);
                        }
                    }
                    Err(_) => out.problems.push((
                        at(&reference),
                        format!("environment variable `{name}` is not set"),
                    )),
                }
            }
            rest = &after[end + 1..];
        } else {
            result.push('$');
            rest = &from[1..];
        }
    }
    result.push_str(rest);
    result
}

/// `value` as a one-line TOML basic string.
fn basic_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Every string value of a parsed document with its span, at any depth.
fn strings_in_table(table: &toml_edit::Table, out: &mut Vec<(std::ops::Range<usize>, String)>) {
    for (_, item) in table.iter() {
        match item {
            toml_edit::Item::Value(v) => strings_in_value(v, out),
            toml_edit::Item::Table(t) => strings_in_table(t, out),
            toml_edit::Item::ArrayOfTables(a) => a.iter().for_each(|t| strings_in_table(t, out)),
            toml_edit::Item::None => {}
        }
    }
}

fn strings_in_value(value: &toml_edit::Value, out: &mut Vec<(std::ops::Range<usize>, String)>) {
    match value {
        toml_edit::Value::String(s) => {
            if let Some(span) = s.span() {
                out.push((span, s.value().clone()));
            }
        }
        toml_edit::Value::Array(a) => a.iter().for_each(|v| strings_in_value(v, out)),
        toml_edit::Value::InlineTable(t) => t.iter().for_each(|(_, v)| strings_in_value(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interpolate(text: &str) -> Interpolated {
        interpolate_env(text, toml_edit::ImDocument::parse(text).ok().as_ref())
    }

    #[test]
    fn interpolation_escapes_and_keeps_literal() {
        std::env::set_var("PORTICO_TEST_SECRET", "a\"b\\c");
        let out = interpolate(
            "k = \"${PORTICO_TEST_SECRET} $${X}\" # ${NOT_SUBSTITUTED}\nl = '${LITERAL}'",
        );
        assert!(out.problems.is_empty());
        assert_eq!(out.secrets, vec!["a\"b\\c".to_string()]);
        assert_eq!(
            out.text,
            "k = \"a\\\"b\\\\c ${X}\" # ${NOT_SUBSTITUTED}\nl = '${LITERAL}'"
        );
        let text = "a = 1\nk = \"${PORTICO_SURELY_UNSET_VAR}\"";
        let out = interpolate(text);
        let (offset, message) = &out.problems[0];
        assert_eq!(location_of(text, *offset), Location { line: 2, column: 6 });
        assert!(message.contains("PORTICO_SURELY_UNSET_VAR"));
    }

    #[test]
    fn only_string_values_are_interpolated_wherever_they_are() {
        std::env::set_var("PORTICO_TEST_NESTED", "v");
        // Dotted keys, inline tables, arrays, multi-line strings; keys and comments stay.
        let text = "a.b = \"${PORTICO_TEST_NESTED}\"\nt = { x = [\"1${PORTICO_TEST_NESTED}\", 2] }\n\"${K}\" = \"\"\"\nm${PORTICO_TEST_NESTED}\"\"\"\n# \"${C}\"\n";
        let out = interpolate(text);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let parsed: toml::Value = toml::from_str(&out.text).unwrap();
        assert_eq!(parsed["a"]["b"].as_str(), Some("v"));
        assert_eq!(parsed["t"]["x"][0].as_str(), Some("1v"));
        assert_eq!(parsed["${K}"].as_str(), Some("mv"));
        assert!(out.text.ends_with("# \"${C}\"\n"));
        // An offset after the (shorter) multi-line string maps back to its line in the file.
        let after = out.text.find("# \"").unwrap();
        assert_eq!(location_of(text, out.original_offset(after)).line, 5);
        // Inside a replaced string: the string's start.
        let inside = out.text.find("1v").unwrap();
        assert_eq!(location_of(text, out.original_offset(inside)).line, 2);
    }

    #[test]
    fn a_substituted_value_of_another_length_keeps_error_lines_right() {
        std::env::set_var("PORTICO_TEST_LONG_VALUE", "x".repeat(200));
        let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[admin]\ntoken = \"${PORTICO_TEST_LONG_VALUE}\"\nunknown = 1\n";
        let errors = load_str("t.toml", text).unwrap_err().0;
        let e = errors.iter().find(|e| e.field == "admin.unknown").unwrap();
        assert_eq!(
            e.location,
            Some(Location { line: 5, column: 1 }),
            "{errors:?}"
        );

        // An unset variable is one problem, not also "the admin token is empty".
        let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[admin]\ntoken = \"${PORTICO_SURELY_UNSET_ADMIN_TOKEN}\"\n";
        let errors = load_str("t.toml", text).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "admin.token");
        assert!(errors[0].message.contains("is not set"), "{errors:?}");
    }

    /// Route by route, each piece with a reference is interpolated on its own, its values
    /// are secrets as before, and a reload notices a changed value in an unchanged text.
    /// A running config for the reuse tests below: routes `a` and `b` on two clusters.
    const RUNNING: &str = "[[listeners]]\naddress = \"127.0.0.1:1\"\n\
        [[routes]]\nid = \"a\"\npath = \"/a\"\ncluster = \"one\"\n\
        [[routes]]\nid = \"b\"\npath = \"/b\"\ncluster = \"two\"\n\
        [clusters.one]\nendpoints = [{ address = \"127.0.0.1:8\" }]\n\
        [clusters.two]\nendpoints = [{ address = \"127.0.0.1:9\" }]\n";

    /// Every reload of `text` against the running config refuses it with the very errors a
    /// first load of it gives: what a reused route brings along never hides a problem.
    fn refused_as_by_a_first_load(text: &str) -> String {
        let running = load_str("t.toml", RUNNING).unwrap();
        // Twice: the second time the running routes carry what the first validation cached.
        let _ = load_str_reusing("t.toml", RUNNING, Some(&running)).unwrap();
        let first_load = load_str("t.toml", text).unwrap_err().to_string();
        let reload = load_str_reusing("t.toml", text, Some(&running))
            .unwrap_err()
            .to_string();
        assert_eq!(reload, first_load);
        reload
    }

    #[test]
    fn a_reused_route_is_checked_again_when_its_cluster_is_gone() {
        let text = RUNNING.replace(
            "[clusters.two]\nendpoints = [{ address = \"127.0.0.1:9\" }]\n",
            "",
        );
        assert_ne!(text, RUNNING);
        let error = refused_as_by_a_first_load(&text);
        assert!(
            error.starts_with("t.toml:10:11: routes[1].cluster: unknown cluster `two`"),
            "{error}"
        );
    }

    #[test]
    fn a_new_route_matching_like_a_reused_one_is_refused() {
        let text = format!("{RUNNING}[[routes]]\nid = \"c\"\npath = \"/a/\"\ncluster = \"two\"\n");
        let error = refused_as_by_a_first_load(&text);
        assert!(
            error.contains("routes[2].path: route `c` has the same hosts, path, methods and headers as routes[0] (`a`)"),
            "{error}"
        );
    }

    #[test]
    fn a_new_route_reusing_an_id_is_refused() {
        let text = format!("{RUNNING}[[routes]]\nid = \"b\"\npath = \"/c\"\ncluster = \"two\"\n");
        let error = refused_as_by_a_first_load(&text);
        assert!(
            error.contains("routes[2].id: duplicate route id `b` (first used by routes[1])"),
            "{error}"
        );
    }

    #[test]
    fn route_by_route_interpolates_each_piece_and_notices_a_changed_value() {
        std::env::set_var(
            "PORTICO_TEST_BY_ROUTE_TOKEN",
            "0123456789abcdef0123456789abcdef",
        );
        std::env::set_var("PORTICO_TEST_BY_ROUTE_PREFIX", "/one");
        let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[admin]\ntoken = \"${PORTICO_TEST_BY_ROUTE_TOKEN}\"\n\
                    [[routes]]\nid = \"a\"\npath = \"/a\"\ncluster = \"c\"\nrewrite_prefix = \"${PORTICO_TEST_BY_ROUTE_PREFIX}\"\n\
                    [clusters.c]\nendpoints = [{ address = \"127.0.0.1:9\" }]\n";
        let first = load_str("t.toml", text).unwrap();
        assert_eq!(first.route_sources.len(), 1, "parsed route by route");
        assert_eq!(first.routes[0].rewrite_prefix.as_deref(), Some("/one"));
        assert_eq!(
            first.admin.token.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(first.secrets.len(), 2, "{:?}", first.secrets);
        assert!(crate::config::lint(&first)
            .iter()
            .all(|w| w.field != "admin.token"));

        std::env::set_var("PORTICO_TEST_BY_ROUTE_PREFIX", "/two");
        let second = load_str_reusing("t.toml", text, Some(&first)).unwrap();
        assert_eq!(second.routes[0].rewrite_prefix.as_deref(), Some("/two"));
        assert_ne!(second.route_sources[0], first.route_sources[0]);
    }

    #[test]
    fn location_counts_lines_and_columns() {
        assert_eq!(location_of("ab\ncd", 4), Location { line: 2, column: 2 });
        assert_eq!(location_of("ab", 0), Location { line: 1, column: 1 });
    }

    /// Found by fuzzing (`fuzz/` target `config`): toml_edit reports `key = ` with nothing
    /// after it without a message, and a missing top-level table had no line. Every problem
    /// names the file, a line and column, and says what is wrong.
    #[test]
    fn every_problem_has_a_place_and_a_message() {
        // (text, line, column, whether toml_edit gives no message of its own)
        for (text, line, column, silent) in [
            ("client_id_header = ", 1, 20, true),
            ("[server]\nthreads = \n", 2, 11, false),
            ("a = 1\nb = ", 2, 5, true),
        ] {
            let errors = load_str("t.toml", text).unwrap_err().0;
            for e in &errors {
                assert!(!e.message.trim().is_empty(), "{text:?}: {e:?}");
                assert_eq!(e.file, "t.toml");
            }
            assert_eq!(
                errors[0].location,
                Some(Location { line, column }),
                "{text:?}: {errors:?}"
            );
            if silent {
                assert_eq!(
                    errors[0].message, "invalid TOML: unexpected end of file",
                    "{errors:?}"
                );
            }
        }
        // Nothing to point at but the file: its start.
        let errors = load_str("t.toml", "").unwrap_err().0;
        let e = errors
            .iter()
            .find(|e| e.field == "listeners")
            .unwrap_or_else(|| panic!("{errors:?}"));
        assert_eq!(e.location, Some(Location { line: 1, column: 1 }));
        assert!(e.message.contains("listener"), "{e:?}");
    }
}
