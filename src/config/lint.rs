//! Warnings for configs that are valid but likely unsafe, printed by `portico check` and
//! logged when a config is loaded: a protected route whose refused requests fall through
//! to a weaker route on the same cluster, and an admin API without a token (or with one
//! written into the file itself).

use std::collections::BTreeSet;

use super::{Config, OnMismatchKind, PathMatchKind, Route};

/// Plugins that keep callers out; a route without one of these that another has is weaker.
const PROTECTING: &[&str] = &["jwt", "rate-limit"];

/// One warning, about the field at `field` (`routes[2]`, `admin.token`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every warning for `config`: the admin API's first, then the routes' in route order.
pub fn lint(config: &Config) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let admin = &config.admin;
    match (&admin.token, &admin.token_file) {
        (None, None) => warnings.push(Warning {
            field: "admin".into(),
            message: format!(
                "no token or token_file: the admin API answers 401 to everything but /healthz, /readyz{}; set token_file (or token = \"${{PORTICO_ADMIN_TOKEN}}\")",
                if admin.metrics_auth { "" } else { " and /metrics" }
            ),
        }),
        // A value substituted from `${ENV}` is listed among the secrets; anything else
        // was written into the file, which tends to end up in version control.
        (Some(token), _) if !config.secrets.iter().any(|s| s.trim() == token.trim()) => {
            warnings.push(Warning {
                field: "admin.token".into(),
                message: "is written in the config file; take it from the environment (\"${PORTICO_ADMIN_TOKEN}\") or a token_file".into(),
            })
        }
        _ => {}
    }
    for (i, protected) in config.routes.iter().enumerate() {
        if protected.on_mismatch != OnMismatchKind::FallThrough {
            continue;
        }
        let guards = plugin_names(protected);
        if guards.is_empty() {
            continue;
        }
        for (j, weaker) in config.routes.iter().enumerate() {
            if i == j || !can_catch_from(weaker, protected) {
                continue;
            }
            let missing: Vec<&str> = guards.difference(&plugin_names(weaker)).copied().collect();
            let shared = clusters(protected)
                .intersection(&clusters(weaker))
                .next()
                .map(|c| c.to_string());
            let (false, Some(cluster)) = (missing.is_empty(), shared) else {
                continue;
            };
            warnings.push(Warning {
                field: format!("routes[{i}]"),
                message: format!(
                    "route `{}` is protected by {}, but requests it refuses by {} fall through to routes[{j}] (`{}`), which lacks it and sends to the same cluster `{cluster}`; set on_mismatch = \"405\" (or \"404\") on `{}`",
                    protected.id,
                    missing.join(", "),
                    refusal_kinds(protected),
                    weaker.id,
                    protected.id,
                ),
            });
        }
    }
    warnings
}

/// The protecting plugins of a route.
fn plugin_names(route: &Route) -> BTreeSet<&'static str> {
    PROTECTING
        .iter()
        .copied()
        .filter(|name| route.plugins.iter().any(|p| p.name == *name))
        .collect()
}

fn clusters(route: &Route) -> BTreeSet<&str> {
    route
        .cluster
        .iter()
        .map(String::as_str)
        .chain(route.versions.iter().map(|v| v.cluster.as_str()))
        .collect()
}

/// What `route` can refuse a request on while still matching its host and path.
fn refusal_kinds(route: &Route) -> &'static str {
    match (!route.methods.is_empty(), !route.headers.is_empty()) {
        (true, true) => "method or headers",
        (true, false) => "method",
        (false, true) => "headers",
        (false, false) => "host",
    }
}

/// Whether a request on `protected`'s paths that `protected` does not take (by method,
/// headers or host table) can land on `weaker`.
fn can_catch_from(weaker: &Route, protected: &Route) -> bool {
    let restricted = !protected.methods.is_empty() || !protected.headers.is_empty();
    let host_fall_back = !protected.hosts.is_empty() && covers_hosts(weaker, protected);
    if !restricted && !host_fall_back {
        return false;
    }
    // A weaker route with the same hosts catches only when it is less specific.
    covers_hosts(weaker, protected) && covers_path(weaker, protected)
}

fn covers_hosts(weaker: &Route, protected: &Route) -> bool {
    let any = |r: &Route| r.hosts.is_empty() || r.hosts.iter().any(|h| h == "*");
    any(weaker)
        || protected.hosts.iter().any(|h| {
            weaker.hosts.iter().any(|w| {
                w.eq_ignore_ascii_case(h)
                    || w.strip_prefix("*.").is_some_and(|suffix| {
                        h.len() > suffix.len()
                            && h.to_ascii_lowercase()
                                .ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
                    })
            })
        })
}

/// Whether `weaker`'s path matches every path `protected` matches.
fn covers_path(weaker: &Route, protected: &Route) -> bool {
    let trim = |p: &str| {
        let p = p.trim_end_matches('/');
        if p.is_empty() {
            "/".to_owned()
        } else {
            p.to_owned()
        }
    };
    let (w, p) = (trim(&weaker.path), trim(&protected.path));
    match weaker.path_match {
        PathMatchKind::Exact => {
            protected.path_match == PathMatchKind::Exact && weaker.path == protected.path
        }
        PathMatchKind::Prefix => {
            w == "/" || p == w || p.strip_prefix(&w).is_some_and(|rest| rest.starts_with('/'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn config(routes: &str) -> Config {
        std::env::set_var("PORTICO_LINT_TEST_TOKEN", TOKEN);
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\ntoken = \"${{PORTICO_LINT_TEST_TOKEN}}\"\n{routes}\n[clusters.c]\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n[clusters.d]\nendpoints = [{{ address = \"127.0.0.1:2\" }}]\n"
        );
        crate::config::load_str("test.toml", &text).expect("config loads")
    }

    const GUARD: &str = "[[routes.plugins]]\nname = \"rate-limit\"\n";

    #[test]
    fn warns_when_a_protected_route_falls_through_to_a_weaker_one() {
        let admin = format!(
            "[[routes]]\nid = \"admin\"\npath = \"/admin\"\nmethods = [\"GET\"]\ncluster = \"c\"\n{GUARD}"
        );
        let root = "[[routes]]\nid = \"root\"\npath = \"/\"\ncluster = \"c\"\n";
        let warnings = lint(&config(&format!("{admin}\n{root}")));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].field, "routes[0]");
        assert!(
            warnings[0].message.contains("routes[1] (`root`)"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].message.contains("rate-limit"),
            "{}",
            warnings[0]
        );

        // Fixed by on_mismatch, or harmless when the weaker route goes elsewhere.
        let strict = admin.replace("methods", "on_mismatch = \"405\"\nmethods");
        assert!(lint(&config(&format!("{strict}\n{root}"))).is_empty());
        let elsewhere = root.replace("\"c\"", "\"d\"");
        assert!(lint(&config(&format!("{admin}\n{elsewhere}"))).is_empty());
        // An unrestricted protected route has nothing to fall through.
        let open = admin.replace("methods = [\"GET\"]\n", "");
        assert!(lint(&config(&format!("{open}\n{root}"))).is_empty());
        // A sibling prefix does not cover the protected path.
        let sibling = root.replace("path = \"/\"", "path = \"/adm\"");
        assert!(lint(&config(&format!("{admin}\n{sibling}"))).is_empty());
    }

    #[test]
    fn warns_on_host_fall_back() {
        let api = format!(
            "[[routes]]\nid = \"api\"\nhosts = [\"api.example.com\"]\npath = \"/\"\nheaders = [{{ name = \"x-tenant\" }}]\ncluster = \"c\"\n{GUARD}"
        );
        let any = "[[routes]]\nid = \"any\"\npath = \"/\"\ncluster = \"c\"\n";
        let warnings = lint(&config(&format!("{api}\n{any}")));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].message.contains("headers"), "{}", warnings[0]);
    }

    #[test]
    fn warns_about_an_admin_api_without_a_token_or_with_one_in_the_file() {
        let bare = |admin: &str| {
            let text = format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n[admin]\n{admin}");
            lint(&crate::config::load_str("t.toml", &text).expect("loads"))
        };
        let w = bare("");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "admin");
        assert!(w[0].message.contains("401"), "{}", w[0]);
        let w = bare(&format!("token = \"{TOKEN}\"\n"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].field, "admin.token");
        // From the environment: no warning.
        assert!(lint(&config("")).is_empty());
    }
}
