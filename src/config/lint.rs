//! Warnings for configs that are valid but likely unsafe, printed by `portico check` and
//! logged when a config is loaded: a protected route whose refused requests fall through
//! to a weaker route on the same cluster, and an admin API without a token (or with one
//! written into the file itself).
//!
//! The fall-through rule compares pairs of routes, but not all pairs: a weaker route can
//! only catch a protected route's requests when its path covers the protected path and its
//! hosts cover the protected hosts, so the routes are indexed by path and host first and
//! each protected route is compared with the few routes its own path prefixes and host names
//! look up. At 100,000 routes the all-pairs scan this replaces took minutes.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

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
    let mut index: Option<Index> = None;
    let mut candidates = Vec::new();
    for (i, protected) in config.routes.iter().enumerate() {
        if protected.on_mismatch != OnMismatchKind::FallThrough {
            continue;
        }
        let guards = plugin_names(protected);
        if guards.is_empty() {
            continue;
        }
        let index = index.get_or_insert_with(|| Index::new(&config.routes));
        index.candidates(protected, &mut candidates);
        for &j in &candidates {
            let weaker = &config.routes[j];
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

/// Host key of a route that matches any host.
const ANY_HOST: &str = "*";

/// Route indices by path, then by host key, in config order. The keys borrow from the
/// routes (a host is copied only to lower its case): at 100,000 routes, owned keys were
/// hundreds of thousands of allocations every load and reload.
type ByPathAndHost<'a> = HashMap<&'a str, HashMap<Cow<'a, str>, Vec<usize>>>;

/// The routes by the paths and hosts they cover, for [`Index::candidates`].
struct Index<'a> {
    /// Prefix routes by path with trailing slashes trimmed.
    prefix: ByPathAndHost<'a>,
    /// Exact routes by path as written.
    exact: ByPathAndHost<'a>,
}

impl<'a> Index<'a> {
    fn new(routes: &'a [std::sync::Arc<Route>]) -> Index<'a> {
        let mut index = Index {
            prefix: HashMap::new(),
            exact: HashMap::new(),
        };
        for (j, route) in routes.iter().enumerate() {
            let (map, path) = match route.path_match {
                PathMatchKind::Prefix => (&mut index.prefix, trim_path(&route.path)),
                PathMatchKind::Exact => (&mut index.exact, route.path.as_str()),
            };
            let mut keys: Vec<Cow<'a, str>> = if route.hosts.is_empty() {
                vec![Cow::Borrowed(ANY_HOST)]
            } else {
                // `*` is the any-host key itself; `*.suffix` and names are keyed lowercase.
                route.hosts.iter().map(|h| lowercase(h)).collect()
            };
            keys.sort_unstable();
            keys.dedup();
            let by_host = map.entry(path).or_default();
            for key in keys {
                by_host.entry(key).or_default().push(j);
            }
        }
        index
    }

    /// Every route that can cover `protected`'s path and hosts ([`covers_path`] and
    /// [`covers_hosts`] hold for no other), ascending and without repeats, into `out`.
    fn candidates(&self, protected: &Route, out: &mut Vec<usize>) {
        out.clear();
        // Host keys whose routes can cover a protected host: the any-host key, the host
        // itself, and a wildcard for each of its proper suffixes after a dot.
        let mut hosts = vec![ANY_HOST.to_owned()];
        for h in &protected.hosts {
            let h = h.to_ascii_lowercase();
            for (dot, _) in h.match_indices('.') {
                hosts.push(format!("*.{}", &h[dot + 1..]));
            }
            hosts.push(h);
        }
        hosts.sort_unstable();
        hosts.dedup();
        let mut look = |map: &ByPathAndHost, path: &str| {
            let Some(by_host) = map.get(path) else {
                return;
            };
            for host in &hosts {
                if let Some(routes) = by_host.get(host.as_str()) {
                    out.extend_from_slice(routes);
                }
            }
        };
        // A prefix covers the path when it is `/`, the path itself, or the path up to a `/`.
        let path = trim_path(&protected.path);
        let mut prefixes: Vec<&str> = vec!["/", path];
        prefixes.extend(
            path.match_indices('/')
                .filter(|&(at, _)| at > 0)
                .map(|(at, _)| &path[..at]),
        );
        prefixes.sort_unstable();
        prefixes.dedup();
        for prefix in prefixes {
            look(&self.prefix, prefix);
        }
        if protected.path_match == PathMatchKind::Exact {
            look(&self.exact, &protected.path);
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// A path without trailing slashes, `/` for the root.
fn trim_path(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

/// `s` in lower case, copied only when it has an upper-case letter.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
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
    let (w, p) = (trim_path(&weaker.path), trim_path(&protected.path));
    match weaker.path_match {
        PathMatchKind::Exact => {
            protected.path_match == PathMatchKind::Exact && weaker.path == protected.path
        }
        PathMatchKind::Prefix => {
            w == "/" || p == w || p.strip_prefix(w).is_some_and(|rest| rest.starts_with('/'))
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

    /// The rule as first written: every protected route against every other route.
    fn all_pairs(config: &Config) -> Vec<Warning> {
        let mut warnings = Vec::new();
        for (i, protected) in config.routes.iter().enumerate() {
            let guards = plugin_names(protected);
            if protected.on_mismatch != OnMismatchKind::FallThrough || guards.is_empty() {
                continue;
            }
            for (j, weaker) in config.routes.iter().enumerate() {
                if i == j || !can_catch_from(weaker, protected) {
                    continue;
                }
                let missing = guards.difference(&plugin_names(weaker)).count();
                let shared = clusters(protected)
                    .intersection(&clusters(weaker))
                    .next()
                    .is_some();
                if missing > 0 && shared {
                    warnings.push(Warning {
                        field: format!("routes[{i}]"),
                        message: format!("{j}"),
                    });
                }
            }
        }
        warnings
    }

    #[test]
    fn the_index_finds_what_comparing_all_pairs_finds() {
        // Paths, hosts and matchers drawn from small sets so that routes overlap often:
        // trailing and doubled slashes, root prefixes, exact twins, case-different host
        // names, wildcards at several depths and `*`.
        const PATHS: &[&str] = &[
            "/", "/a", "/a/", "/a/b", "/a//b", "/ab", "/a/b/c", "//", "/b",
        ];
        const HOSTS: &[&str] = &[
            "",
            "\"*\"",
            "\"x.example.com\"",
            "\"X.Example.COM\"",
            "\"*.example.com\"",
            "\"*.EXAMPLE.com\", \"y.x.example.com\"",
            "\"example.com\"",
            "\"*.x.example.com\"",
            "\"*.com\", \"other.net\"",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut warned = 0;
        for _ in 0..400 {
            let mut text = String::new();
            for r in 0..24 {
                text.push_str(&format!(
                    "[[routes]]\nid = \"r{r}\"\npath = \"{}\"\nhosts = [{}]\ncluster = \"{}\"\n",
                    PATHS[next(PATHS.len())],
                    HOSTS[next(HOSTS.len())],
                    ["c", "d"][next(2)],
                ));
                if next(3) == 0 {
                    text.push_str("path_match = \"exact\"\n");
                }
                if next(3) == 0 {
                    text.push_str("methods = [\"GET\"]\n");
                }
                if next(4) == 0 {
                    text.push_str("headers = [{ name = \"x-tenant\" }]\n");
                }
                if next(6) == 0 {
                    text.push_str("on_mismatch = \"405\"\n");
                }
                for plugin in ["jwt", "rate-limit"] {
                    if next(3) == 0 {
                        text.push_str(&format!("[[routes.plugins]]\nname = \"{plugin}\"\n"));
                    }
                }
            }
            let config: Config = toml::from_str(&text).expect("routes parse");
            let fast: Vec<(String, usize)> = lint(&config)
                .iter()
                .filter(|w| w.field.starts_with("routes["))
                .map(|w| {
                    let j = w
                        .message
                        .split("routes[")
                        .nth(1)
                        .and_then(|t| t.split(']').next());
                    (
                        w.field.clone(),
                        j.and_then(|j| j.parse().ok())
                            .expect("names the weaker route"),
                    )
                })
                .collect();
            let slow: Vec<(String, usize)> = all_pairs(&config)
                .iter()
                .map(|w| (w.field.clone(), w.message.parse().expect("index")))
                .collect();
            assert_eq!(fast, slow, "{text}");
            warned += fast.len();
        }
        // The sets overlap enough for the comparison to mean something.
        assert!(warned > 400, "{warned}");
    }

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
