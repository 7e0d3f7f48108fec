//! Reading a config file: `${ENV}` interpolation, TOML parsing with field-path tracking,
//! validation, and turning every problem into a [`ConfigError`] that names the file, the
//! line and column, and the field path.

use std::fmt;
use std::path::Path;

use super::{validate, Config};

/// Where in the file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem in a config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub location: Option<Location>,
    /// Dotted field path such as `routes[2].cluster`; empty when the problem is the file itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(loc) = &self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config file (never empty).
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            location: None,
            field: String::new(),
            message: format!("cannot read config file: {e}"),
        }])
    })?;
    load_str(&name, &text)
}

/// Parses and validates config text; `file` names it in errors.
pub fn load_str(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    let error = |offset: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_string(),
        location: offset.map(|o| location_of(text, o)),
        field,
        message,
    };
    let (text, secrets) = interpolate_env(text).map_err(|(offset, message)| {
        ConfigErrors(vec![error(Some(offset), String::new(), message)])
    })?;

    let deserializer = toml::Deserializer::new(&text);
    let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." { String::new() } else { path };
        ConfigErrors(vec![error(
            inner.span().map(|s| s.start),
            field,
            inner.message().trim().to_string(),
        )])
    })?;

    config.secrets = secrets;
    let problems = validate::validate(&config);
    if problems.is_empty() {
        return Ok(config);
    }
    // Parsing succeeded above, so the same text parses again here; spans come from toml_edit,
    // which keeps them, while the serde structs do not.
    let doc = toml_edit::ImDocument::parse(text.as_str()).ok();
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|p| {
            let offset = doc.as_ref().and_then(|d| span_of(d.as_table(), &p.path));
            error(offset, render_path(&p.path), p.message)
        })
        .collect();
    // In file order, as an editor would walk them; problems without a place come first.
    errors.sort_by_key(|e| e.location.as_ref().map(|l| (l.line, l.column)));
    Err(ConfigErrors(errors))
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

pub fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
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

fn location_of(text: &str, offset: usize) -> Location {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Location { line, column }
}

/// Replaces `${NAME}` inside double-quoted strings with the environment variable's value,
/// escaped for a TOML basic string so a secret containing `"` or `\\` cannot change the
/// document's structure. Comments and literal ('…') strings are left alone, and `$${`
/// writes a literal `${`. Values never add lines, so error lines stay right.
/// Also returns the substituted values, which are treated as secrets.
fn interpolate_env(text: &str) -> Result<(String, Vec<String>), (usize, String)> {
    let mut secrets = Vec::new();
    if !text.contains("${") {
        return Ok((text.to_string(), secrets));
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
            let end = after
                .find(['}', '"', '\n'])
                .filter(|&e| after.as_bytes()[e] == b'}')
                .ok_or((i, "unterminated `${` in config".to_string()))?;
            let name = &after[..end];
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err((
                    i,
                    format!("`${{{name}}}` is not a valid environment variable reference"),
                ));
            }
            let value = std::env::var(name)
                .map_err(|_| (i, format!("environment variable `{name}` is not set")))?;
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
    Ok((out, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_escapes_and_keeps_literal() {
        std::env::set_var("PORTICO_TEST_SECRET", "a\"b\\c");
        let (out, secrets) = interpolate_env(
            "k = \"${PORTICO_TEST_SECRET} $${X}\" # ${NOT_SUBSTITUTED}\nl = '${LITERAL}'",
        )
        .unwrap();
        assert_eq!(secrets, vec!["a\"b\\c".to_string()]);
        assert_eq!(
            out,
            "k = \"a\\\"b\\\\c ${X}\" # ${NOT_SUBSTITUTED}\nl = '${LITERAL}'"
        );
        let err = interpolate_env("a = 1\nk = \"${PORTICO_SURELY_UNSET_VAR}\"").unwrap_err();
        assert_eq!(location_of("a = 1\nk = \"${X", err.0).line, 2);
        assert!(err.1.contains("PORTICO_SURELY_UNSET_VAR"));
    }

    #[test]
    fn location_counts_lines_and_columns() {
        assert_eq!(location_of("ab\ncd", 4), Location { line: 2, column: 2 });
        assert_eq!(location_of("ab", 0), Location { line: 1, column: 1 });
    }
}
