//! What every plugin constructor shares: [`BuildError`] and the typed reading of a plugin's
//! config table ([`parse_config`], field paths in TOML syntax). It sits below the plugins and
//! the registry and names neither, so the plugins use it without reaching up to the registry
//! that lists them.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

/// Why a plugin could not be built.
///
/// Its `Display` is in `registry.rs`: the message for an unknown plugin lists the built-in
/// names, and only the registry knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// No built-in plugin has this name.
    UnknownPlugin(String),
    /// The plugin's config table is wrong.
    InvalidConfig {
        /// The plugin's registry name.
        plugin: &'static str,
        /// What is wrong, for a human.
        message: String,
        /// Where inside the plugin's table, when known, in TOML dotted-key syntax with list
        /// indices in brackets: `allow_origins[1]`, `request.add."X-Bad Name"`. The gateway
        /// uses it to point at the file and line of the offending key.
        field: Option<String>,
    },
}

impl std::error::Error for BuildError {}

impl BuildError {
    /// An [`BuildError::InvalidConfig`] found by a plugin's own validation.
    pub(crate) fn invalid(
        plugin: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        BuildError::InvalidConfig {
            plugin,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// The text of an [`BuildError::InvalidConfig`]: `plugin `p`: `field`: message`.
    pub(crate) fn fmt_invalid(
        f: &mut fmt::Formatter<'_>,
        plugin: &str,
        field: Option<&str>,
        message: &str,
    ) -> fmt::Result {
        match field {
            Some(field) => write!(f, "plugin `{plugin}`: `{field}`: {message}"),
            None => write!(f, "plugin `{plugin}`: {message}"),
        }
    }
}

/// Deserializes a plugin's typed config from its table, turning serde's error into an
/// [`BuildError::InvalidConfig`] that says where in the table the problem is.
///
/// serde's own messages name at most the last key (`unknown field `foo``), which is ambiguous
/// in nested tables such as `headers`' `request.add`; `serde_path_to_error` tracks the full
/// path while deserializing, down to the unknown key itself.
pub(crate) fn parse_config<T: DeserializeOwned>(
    plugin: &'static str,
    config: toml::Value,
) -> Result<T, BuildError> {
    serde_path_to_error::deserialize(config).map_err(|err| {
        let mut field = String::new();
        for segment in err.path() {
            match segment {
                Segment::Seq { index } => {
                    field.push('[');
                    field.push_str(&index.to_string());
                    field.push(']');
                }
                Segment::Map { key } | Segment::Enum { variant: key } => push_key(&mut field, key),
                // The rest of the path is unknown; what we have still narrows it down.
                Segment::Unknown => break,
            }
        }
        let message = err.into_inner().message().trim_end().to_owned();
        BuildError::InvalidConfig {
            plugin,
            message,
            field: (!field.is_empty()).then_some(field),
        }
    })
}

/// Appends `key` to a field path as TOML would spell it: bare when it can be, quoted
/// otherwise (header names in `headers` may hold any character).
pub(crate) fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        path.push_str(key);
    } else {
        path.push('"');
        for c in key.chars() {
            match c {
                '"' => path.push_str("\\\""),
                '\\' => path.push_str("\\\\"),
                c if c.is_control() => path.push_str(&format!("\\u{:04X}", c as u32)),
                c => path.push(c),
            }
        }
        path.push('"');
    }
}

/// A field path `prefix.key` (see [`push_key`]).
pub(crate) fn key_path(prefix: &str, key: &str) -> String {
    let mut path = prefix.to_owned();
    push_key(&mut path, key);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read only through Debug
    struct Sample {
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        size: u32,
    }

    fn parse(src: &str) -> Result<Sample, BuildError> {
        parse_config("sample", toml::from_str(src).expect("test TOML parses"))
    }

    #[test]
    fn errors_carry_the_path_down_to_the_key() {
        let err = parse("names = [\"a\", 2]").expect_err("wrong element type");
        let BuildError::InvalidConfig { plugin, field, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*plugin, "sample");
        assert_eq!(field.as_deref(), Some("names[1]"));

        let err = parse("[nested]\nsize = 1\n\"odd key\" = 2").expect_err("unknown key");
        let BuildError::InvalidConfig { field, message, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(field.as_deref(), Some("nested.\"odd key\""));
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn a_good_table_parses() {
        assert!(parse("names = [\"a\"]\n[nested]\nsize = 3").is_ok());
    }

    #[test]
    fn keys_are_quoted_only_when_needed() {
        assert_eq!(key_path("request.add", "X-Foo_1"), "request.add.X-Foo_1");
        assert_eq!(key_path("request.add", "X Foo"), "request.add.\"X Foo\"");
        assert_eq!(key_path("", "a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(key_path("", "a\nb"), "\"a\\u000Ab\"");
        assert_eq!(key_path("", ""), "\"\"");
    }
}
