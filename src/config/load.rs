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
    let error = |offset: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_string(),
        location: offset.map(|o| location_of(text, o)),
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

    let (text, secrets, env_problems) = interpolate_env(text);
    // Fields whose `${NAME}` could not be substituted: their value is a stand-in, so
    // validating it again would only repeat the problem in other words.
    let mut env_fields = Vec::new();
    // Parser spans are offsets into the interpolated text, where a substituted value may
    // be longer or shorter than its `${NAME}`: locate them there (lines are the same in
    // both texts, offsets are not).
    let parsed_error = |offset: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_string(),
        location: offset.map(|o| location_of(&text, o)),
        field,
        message,
    };
    for (offset, message) in env_problems {
        let field = original()
            .map(|d| render_path(&path_at(d.as_table(), offset)))
            .unwrap_or_default();
        env_fields.push(field.clone());
        errors.push(error(Some(offset), field, message));
    }

    // The common case: the text parses into a `Config` as it is. Otherwise it is parsed
    // again below, with the field paths tracked, to report every problem.
    let config = match Config::deserialize(toml::Deserializer::new(&text)) {
        Ok(c) => Some(c),
        Err(_) => deserialize_reporting(&text, &locate, &error, &parsed_error, &mut errors)?,
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
            errors.push(parsed_error(
                e.span().map(|s| s.start),
                String::new(),
                e.message().trim().to_string(),
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
        match serde_path_to_error::deserialize::<_, Config>(toml::Deserializer::new(&current)) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => {
                let path = path_of(e.path());
                let inner = e.into_inner();
                let message = inner.message().trim().to_string();
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

/// Replaces `${NAME}` inside double-quoted strings with the environment variable's value,
/// escaped for a TOML basic string so a secret containing `"` or `\\` cannot change the
/// document's structure. Comments and literal ('…') strings are left alone, and `$${`
/// writes a literal `${`. Values never add lines, so error lines stay right.
/// Returns the text, the substituted values (treated as secrets), and every problem with
/// its offset; a reference that cannot be substituted becomes an empty string so parsing
/// can go on and report the rest.
fn interpolate_env(text: &str) -> (String, Vec<String>, Vec<(usize, String)>) {
    let mut secrets = Vec::new();
    let mut problems = Vec::new();
    if !text.contains("${") {
        return (text.to_string(), secrets, problems);
    }
    #[derive(PartialEq)]
    enum At {
        Code,
        Comment,
        Basic,
        MultiBasic,
        Literal,
        MultiLiteral,
    }
    let mut at = At::Code;
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < text.len() {
        let rest = &text[i..];
        let in_basic = at == At::Basic || at == At::MultiBasic;
        if in_basic && rest.starts_with("$${") {
            out.push_str("${");
            i += 3;
            continue;
        }
        if in_basic && rest.starts_with("${") {
            let after = &rest[2..];
            let Some(end) = after
                .find(['}', '"', '\n'])
                .filter(|&e| after.as_bytes()[e] == b'}')
            else {
                problems.push((i, "unterminated `${` in config".to_string()));
                out.push_str("${");
                i += 2;
                continue;
            };
            let name = &after[..end];
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            let value = if !valid {
                problems.push((
                    i,
                    format!("`${{{name}}}` is not a valid environment variable reference"),
                ));
                String::new()
            } else {
                std::env::var(name).unwrap_or_else(|_| {
                    problems.push((i, format!("environment variable `{name}` is not set")));
                    String::new()
                })
            };
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
            if !value.is_empty() {
                secrets.push(value);
            }
            i += 2 + end + 1;
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        let mut step = c.len_utf8();
        match at {
            At::Code => {
                if rest.starts_with("\"\"\"") {
                    at = At::MultiBasic;
                    step = 3;
                } else if rest.starts_with("'''") {
                    at = At::MultiLiteral;
                    step = 3;
                } else if c == '"' {
                    at = At::Basic;
                } else if c == '\'' {
                    at = At::Literal;
                } else if c == '#' {
                    at = At::Comment;
                }
            }
            At::Comment => {
                if c == '\n' {
                    at = At::Code;
                }
            }
            At::Basic | At::MultiBasic => {
                if c == '\\' && i + 1 < bytes.len() {
                    // An escape: copy it whole so `\"` does not end the string.
                    step = 1 + rest[1..].chars().next().map_or(0, char::len_utf8);
                } else if at == At::Basic && (c == '"' || c == '\n') {
                    at = At::Code;
                } else if at == At::MultiBasic && rest.starts_with("\"\"\"") {
                    at = At::Code;
                    step = 3;
                }
            }
            At::Literal => {
                if c == '\'' || c == '\n' {
                    at = At::Code;
                }
            }
            At::MultiLiteral => {
                if rest.starts_with("'''") {
                    at = At::Code;
                    step = 3;
                }
            }
        }
        out.push_str(&rest[..step.min(rest.len())]);
        i += step.min(rest.len());
    }
    (out, secrets, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_escapes_and_keeps_literal() {
        std::env::set_var("PORTICO_TEST_SECRET", "a\"b\\c");
        let (out, secrets, problems) = interpolate_env(
            "k = \"${PORTICO_TEST_SECRET} $${X}\" # ${NOT_SUBSTITUTED}\nl = '${LITERAL}'",
        );
        assert!(problems.is_empty());
        assert_eq!(secrets, vec!["a\"b\\c".to_string()]);
        assert_eq!(
            out,
            "k = \"a\\\"b\\\\c ${X}\" # ${NOT_SUBSTITUTED}\nl = '${LITERAL}'"
        );
        let (_, _, problems) = interpolate_env("a = 1\nk = \"${PORTICO_SURELY_UNSET_VAR}\"");
        let (offset, message) = &problems[0];
        assert_eq!(location_of("a = 1\nk = \"${X", *offset).line, 2);
        assert!(message.contains("PORTICO_SURELY_UNSET_VAR"));
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

    #[test]
    fn location_counts_lines_and_columns() {
        assert_eq!(location_of("ab\ncd", 4), Location { line: 2, column: 2 });
        assert_eq!(location_of("ab", 0), Location { line: 1, column: 1 });
    }
}
