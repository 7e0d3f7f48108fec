//! The registry of built-in plugins: one explicit `match` from a plugin name to its
//! constructor, so a reader finds every plugin the gateway can build in one place, plus the
//! shared config plumbing (typed deserialization and [`BuildError`] with the field path) that
//! every constructor uses.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::{cors, headers, jwt, rate_limit, request_id, Plugin};

/// The names [`build`] accepts, sorted, for error messages and `--help`-style listings.
pub const BUILTIN_NAMES: &[&str] = &[
    cors::NAME,
    headers::NAME,
    jwt::NAME,
    rate_limit::NAME,
    request_id::NAME,
];

/// Builds the built-in plugin `name` from its config table (the `[[routes.plugins]]` table
/// with the `name` key already removed; an empty table means "all defaults").
pub fn build(name: &str, config: toml::Value) -> Result<Arc<dyn Plugin>, BuildError> {
    let plugin: Arc<dyn Plugin> = match name {
        cors::NAME => Arc::new(cors::Cors::from_config(config)?),
        headers::NAME => Arc::new(headers::Headers::from_config(config)?),
        jwt::NAME => Arc::new(jwt::Jwt::from_config(config)?),
        rate_limit::NAME => Arc::new(rate_limit::RateLimit::from_config(config)?),
        request_id::NAME => Arc::new(request_id::RequestId::from_config(config)?),
        other => return Err(BuildError::UnknownPlugin(other.to_owned())),
    };
    Ok(plugin)
}

/// Why a plugin could not be built.
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

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::UnknownPlugin(name) => write!(
                f,
                "unknown plugin `{name}` (built-in plugins: {})",
                BUILTIN_NAMES.join(", ")
            ),
            BuildError::InvalidConfig {
                plugin,
                message,
                field: Some(field),
            } => write!(f, "plugin `{plugin}`: `{field}`: {message}"),
            BuildError::InvalidConfig {
                plugin,
                message,
                field: None,
            } => write!(f, "plugin `{plugin}`: {message}"),
        }
    }
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

    fn table(src: &str) -> toml::Value {
        toml::from_str(src).expect("test TOML parses")
    }

    #[test]
    fn every_builtin_builds_from_an_empty_table() {
        for name in BUILTIN_NAMES {
            // `jwt` has no safe default issuer: its empty table is refused, saying why.
            if *name == jwt::NAME {
                assert!(build(name, table("")).is_err());
                continue;
            }
            let plugin = build(name, table("")).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(plugin.name(), *name);
        }
    }

    #[test]
    fn builtin_names_are_sorted_and_unique() {
        let mut sorted = BUILTIN_NAMES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, BUILTIN_NAMES);
    }

    #[test]
    fn unknown_plugin_is_named() {
        let err = build("jwtt", table(""))
            .err()
            .expect("unknown plugin fails");
        assert_eq!(err, BuildError::UnknownPlugin("jwtt".into()));
        let text = err.to_string();
        assert!(
            text.contains("`jwtt`") && text.contains("request-id"),
            "{text}"
        );
    }

    #[test]
    fn unknown_field_points_at_the_key() {
        for name in BUILTIN_NAMES {
            let err = build(name, table("bogus = 1"))
                .err()
                .expect("unknown field fails");
            match err {
                BuildError::InvalidConfig {
                    plugin,
                    message,
                    field,
                } => {
                    assert_eq!(plugin, *name);
                    assert!(message.contains("unknown field `bogus`"), "{message}");
                    assert_eq!(field.as_deref(), Some("bogus"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = build("request-id", table("echo = \"yes\""))
            .err()
            .expect("wrong type fails");
        let BuildError::InvalidConfig { message, field, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(field.as_deref(), Some("echo"));
        assert!(message.contains("invalid type"), "{message}");
        assert!(err.to_string().starts_with("plugin `request-id`: `echo`: "));
    }

    #[test]
    fn a_non_table_config_is_rejected() {
        let err = build("cors", toml::Value::Integer(3))
            .err()
            .expect("non-table fails");
        assert!(matches!(
            err,
            BuildError::InvalidConfig {
                plugin: "cors",
                field: None,
                ..
            }
        ));
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
