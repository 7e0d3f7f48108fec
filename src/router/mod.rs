//! The compiled route table: picks the route for a request from its host, method, normalised
//! path and headers.
//!
//! The config's route list is compiled once per config load into lookup structures instead of
//! being scanned per request: one table per exact host and per wildcard suffix (plus one for
//! "any host"), and inside each table a hash map of exact paths and a segment trie of prefixes.
//! A lookup therefore costs O(host labels + path segments) hash probes whatever the number of
//! routes, and a reload builds a fresh immutable `Router` that is swapped in as a whole.
//!
//! Precedence, most specific first, always deterministic:
//! 1. host: exact host, then wildcard suffixes from longest to shortest, then any-host; a host
//!    table without a matching route falls through to the next less specific one;
//! 2. path: exact path, then the deepest matching prefix, then shallower prefixes;
//! 3. within one path: method-restricted routes, then more header matchers, then config order.
//!
//! Written by hand rather than on matchit: matchit has no host dimension, no method/header
//! candidates per path with fall-back to a shallower prefix when they all fail, and no
//! segment-boundary prefix that also matches the bare prefix itself.

mod host;
mod normalize;
mod table;
#[cfg(test)]
mod tests;
pub mod version;

use std::collections::HashMap;
use std::fmt;

use http::{HeaderMap, HeaderName, Method};

pub use normalize::{
    inspect_path, normalize_path, rewrite_prefix, without_params, PathError, PathTraits,
};

use host::HostPattern;
use table::PathTable;

/// How a route's `path` is compared with the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole normalised path must be equal.
    Exact,
    /// The path must start with the route path on a segment boundary (`/v1` matches `/v1`,
    /// `/v1/` and `/v1/x`, not `/v10`); `/` matches every path.
    Prefix,
}

/// What a route does with a request whose host and path it matches but whose method or
/// headers it does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OnMismatch {
    /// Let a less specific route (a shorter prefix, a wildcard or any-host table) take it.
    #[default]
    FallThrough,
    /// Stop here: a method mismatch is answered 405 with `Allow`, a header mismatch 404.
    MethodNotAllowed,
    /// Stop here and answer 404.
    NotFound,
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    /// `None`: the header must be present. `Some`: one of its values must be exactly this
    /// string (case-sensitive).
    pub value: Option<String>,
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        match &self.value {
            None => headers.contains_key(&self.name),
            // Repeated headers count as a match if any one of the values is equal, so a
            // client cannot dodge a matcher by sending the header twice.
            Some(want) => headers
                .get_all(&self.name)
                .iter()
                .any(|v| v.as_bytes() == want.as_bytes()),
        }
    }
}

/// One configured route, as matched by [`Router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub id: String,
    /// Empty: any host. Entries are exact (`api.example.com`, case-insensitive), wildcard
    /// (`*.example.com`: one or more labels in front of `example.com`) or `*` (any host).
    pub hosts: Vec<String>,
    /// An absolute path. [`Router::new`] replaces it by its normalised form (and drops a
    /// trailing slash from a prefix) so it can be passed to [`rewrite_prefix`] as is.
    pub path: String,
    pub path_match: PathMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// All must match.
    pub headers: Vec<HeaderMatch>,
    /// Whether a mismatch of method or headers may fall through to a weaker route.
    pub on_mismatch: OnMismatch,
}

impl RouteSpec {
    /// Checks what [`Router::new`] would otherwise accept silently: a path that cannot be
    /// normalised and host patterns that can never match. Meant for config validation, so
    /// the error names the offending value.
    pub fn validate(&self) -> Result<(), RouteSpecError> {
        if let Err(source) = normalize_path(&self.path) {
            return Err(RouteSpecError::InvalidPath {
                path: self.path.clone(),
                source,
            });
        }
        for h in &self.hosts {
            host::validate_pattern(h).map_err(|reason| RouteSpecError::InvalidHost {
                host: h.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    fn allows_method(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    fn matches_headers(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|h| h.matches(headers))
    }
}

/// Why [`RouteSpec::validate`] rejected a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSpecError {
    InvalidPath { path: String, source: PathError },
    InvalidHost { host: String, reason: &'static str },
}

impl fmt::Display for RouteSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteSpecError::InvalidPath { path, source } => {
                write!(f, "invalid route path {path:?}: {source}")
            }
            RouteSpecError::InvalidHost { host, reason } => {
                write!(f, "invalid route host {host:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for RouteSpecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RouteSpecError::InvalidPath { source, .. } => Some(source),
            RouteSpecError::InvalidHost { .. } => None,
        }
    }
}

/// The outcome of [`Router::find`].
#[derive(Debug, PartialEq)]
pub enum RouteMatch<'a, T> {
    Found {
        spec: &'a RouteSpec,
        value: &'a T,
    },
    /// Some route matched host, path and headers but not the method: answer 405 with these
    /// methods (sorted by name, deduplicated) in `Allow`.
    MethodNotAllowed {
        allowed: Vec<Method>,
    },
    NotFound,
}

/// The compiled route table, with a payload `T` per route (e.g. the route's runtime config).
#[derive(Debug, Clone)]
pub struct Router<T> {
    routes: Vec<(RouteSpec, T)>,
    exact_hosts: HashMap<Box<str>, PathTable>,
    /// Keyed by the suffix after `*.`.
    wildcard_hosts: HashMap<Box<str>, PathTable>,
    any_host: PathTable,
}

impl<T> Router<T> {
    /// Compiles the routes. Never fails: a route whose path does not normalise is kept (it
    /// still counts in `len` and `iter`) but matches nothing, with a warning; use
    /// [`RouteSpec::validate`] to reject it up front.
    pub fn new(mut routes: Vec<(RouteSpec, T)>) -> Router<T> {
        let mut exact_hosts: HashMap<Box<str>, PathTable> = HashMap::new();
        let mut wildcard_hosts: HashMap<Box<str>, PathTable> = HashMap::new();
        let mut any_host = PathTable::default();

        for (idx, (spec, _)) in routes.iter_mut().enumerate() {
            if !canonicalise_path(spec) {
                continue;
            }
            let mut on_any_host = spec.hosts.is_empty();
            for pattern in spec.hosts.iter().map(|h| host::parse_pattern(h)) {
                match pattern {
                    HostPattern::Any => on_any_host = true,
                    HostPattern::Exact(h) => exact_hosts.entry(h).or_default().insert(idx, spec),
                    HostPattern::Wildcard(suffix) => {
                        wildcard_hosts.entry(suffix).or_default().insert(idx, spec)
                    }
                }
            }
            if on_any_host {
                any_host.insert(idx, spec);
            }
        }

        let specs: Vec<&RouteSpec> = routes.iter().map(|(spec, _)| spec).collect();
        for table in exact_hosts
            .values_mut()
            .chain(wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut any_host))
        {
            table.finish(&specs);
        }

        Router {
            routes,
            exact_hosts,
            wildcard_hosts,
            any_host,
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes in config order, with their canonicalised specs (for listings).
    pub fn iter(&self) -> impl Iterator<Item = (&RouteSpec, &T)> {
        self.routes.iter().map(|(spec, value)| (spec, value))
    }

    /// Finds the route for a request.
    ///
    /// `host` is the raw Host header or `:authority`; an optional `:port` and a trailing dot
    /// are stripped here and it is compared case-insensitively. `path` must already be
    /// normalised by [`normalize_path`] and carry no query.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> RouteMatch<'_, T> {
        let mut allowed = Vec::new();
        let found = self.find_index(host, method, path, headers, &mut allowed);
        match found {
            Lookup::Found(idx) => match self.routes.get(idx) {
                Some((spec, value)) => RouteMatch::Found { spec, value },
                None => RouteMatch::NotFound,
            },
            Lookup::Stop(OnMismatch::NotFound) => RouteMatch::NotFound,
            _ if allowed.is_empty() => RouteMatch::NotFound,
            _ => {
                allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                allowed.dedup();
                RouteMatch::MethodNotAllowed { allowed }
            }
        }
    }

    fn find_index(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        allowed: &mut Vec<Method>,
    ) -> Lookup {
        let lookup = |table: &PathTable, allowed: &mut Vec<Method>| {
            table.find(&self.routes, method, path, headers, allowed)
        };

        if let Some(host) = host.and_then(host::canonical_request_host) {
            if let Some(table) = self.exact_hosts.get(&*host) {
                let found = lookup(table, allowed);
                if found.is_final() {
                    return found;
                }
            }
            if !self.wildcard_hosts.is_empty() {
                // Each proper label suffix, longest first: `a.b.example.com` probes
                // `b.example.com`, `example.com`, `com`. Never the full host, so
                // `*.example.com` does not match `example.com`.
                for (dot, _) in host.match_indices('.') {
                    let Some(suffix) = host.get(dot + 1..) else {
                        continue;
                    };
                    if let Some(table) = self.wildcard_hosts.get(suffix) {
                        let found = lookup(table, allowed);
                        if found.is_final() {
                            return found;
                        }
                    }
                }
            }
        }
        lookup(&self.any_host, allowed)
    }
}

/// The outcome of a lookup in one table (or in all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Found(usize),
    /// A route that does not let mismatches fall through matched host and path: the search
    /// ends without a route.
    Stop(OnMismatch),
    /// Nothing here; a less specific table may still match.
    Continue,
}

impl Lookup {
    fn is_final(self) -> bool {
        self != Lookup::Continue
    }
}

/// Puts the route path in the form request paths are compared in, so `/V1/%7euser/` in the
/// config matches a request for `/V1/~user`. `false` when the path is invalid and the route
/// must be left out of the tables.
fn canonicalise_path(spec: &mut RouteSpec) -> bool {
    let normalised = match normalize_path(&spec.path) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            log::warn!(
                "route {:?}: path {:?} is not valid ({e}); the route will never match",
                spec.id,
                spec.path
            );
            return false;
        }
    };
    spec.path = match spec.path_match {
        // A configured trailing slash on a prefix means nothing: `/v1/` ≡ `/v1`.
        PathMatch::Prefix if normalised.len() > 1 => normalised.trim_end_matches('/').to_owned(),
        _ => normalised,
    };
    true
}
