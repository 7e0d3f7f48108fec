//! Single values of the effective config (`portico config get`), so scripts read what the
//! gateway uses — defaults, `${ENV}` values, dotted keys — instead of scraping the file.

use super::Config;

/// The value at a dotted `key` (`server.pid_file`, `listeners.0.address`,
/// `clusters."a.b".lb`): `None` for a setting that is not set (or not written, for optional
/// ones); an error when a step of the path leads through a plain value or past an array's end.
pub fn effective_value(config: &Config, key: &str) -> Result<Option<serde_json::Value>, String> {
    let segments = split_key(key)?;
    let mut value = serde_json::to_value(config).map_err(|e| e.to_string())?;
    for (i, segment) in segments.iter().enumerate() {
        let here = || segments[..i].join(".");
        value = match value {
            serde_json::Value::Object(mut table) => match table.remove(segment.as_str()) {
                Some(v) => v,
                None => return Ok(None),
            },
            serde_json::Value::Array(mut items) => {
                let index: usize = segment.parse().map_err(|_| {
                    format!("`{key}`: `{}` is an array; index it with a number", here())
                })?;
                if index >= items.len() {
                    return Err(format!(
                        "`{key}`: `{}` has {} element(s)",
                        here(),
                        items.len()
                    ));
                }
                items.swap_remove(index)
            }
            serde_json::Value::Null => return Ok(None),
            _ => return Err(format!("`{key}`: `{}` is a value, not a table", here())),
        };
    }
    Ok((!value.is_null()).then_some(value))
}

/// One output line: strings bare, tables and arrays as JSON, nothing for an unset value.
pub fn value_as_line(value: Option<&serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `a.b."c.d".0` → `a`, `b`, `c.d`, `0`.
fn split_key(key: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    let mut rest = key;
    loop {
        let (segment, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("`{key}`: unterminated quote"))?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if segment.is_empty() {
            return Err(format!("`{key}` is not a dotted key"));
        }
        segments.push(segment.to_string());
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => return Ok(segments),
            None => return Err(format!("`{key}` is not a dotted key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_reach_defaults_arrays_and_quoted_names() {
        let config = super::super::load_str(
            "t.toml",
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[clusters.\"api.v2\"]\nendpoints = [{ address = \"127.0.0.1:2\" }]\n",
        )
        .unwrap();
        let get = |k: &str| effective_value(&config, k).map(|v| value_as_line(v.as_ref()));
        assert_eq!(get("listeners.0.address").unwrap(), "127.0.0.1:1");
        assert_eq!(get("server.grace_period_seconds").unwrap(), "30");
        assert_eq!(get("admin.token_file").unwrap(), "");
        assert_eq!(
            get("clusters.\"api.v2\".endpoints.0.address").unwrap(),
            "127.0.0.1:2"
        );
        assert!(get("listeners.1.address").is_err());
        assert!(get("server.threads.x").is_err());
        assert!(get("server..threads").is_err());
    }
}
