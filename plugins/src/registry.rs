//! The registry of built-in plugins: their names and one explicit `match` from a name to its
//! constructor, so a reader finds every plugin the gateway can build in one place. It sits
//! above the plugins; what their constructors share is in `build.rs`, below them.

use std::fmt;
use std::sync::Arc;

use crate::build::BuildError;
use crate::{cors, headers, ip_filter, jwt, rate_limit, request_id, Plugin};

/// The names [`build`] accepts, sorted, for error messages and `--help`-style listings.
pub const BUILTIN_NAMES: &[&str] = &[
    cors::NAME,
    headers::NAME,
    ip_filter::NAME,
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
        ip_filter::NAME => Arc::new(ip_filter::IpFilter::from_config(config)?),
        jwt::NAME => Arc::new(jwt::Jwt::from_config(config)?),
        rate_limit::NAME => Arc::new(rate_limit::RateLimit::from_config(config)?),
        request_id::NAME => Arc::new(request_id::RequestId::from_config(config)?),
        other => return Err(BuildError::UnknownPlugin(other.to_owned())),
    };
    Ok(plugin)
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
                field,
            } => BuildError::fmt_invalid(f, plugin, field.as_deref(), message),
        }
    }
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
}
