//! The path part of one host table: a hash map for exact paths and a segment trie for
//! prefixes, each slot holding route indices already sorted in precedence order.

use std::cmp::Reverse;
use std::collections::HashMap;

use http::{HeaderMap, Method};

use super::{Lookup, OnMismatch, PathMatch, RouteSpec};

/// Index of the trie root, the node of prefix `/`.
const ROOT: usize = 0;

#[derive(Debug, Clone)]
pub(super) struct PathTable {
    exact: HashMap<Box<str>, Vec<usize>>,
    /// Trie nodes in an arena so a lookup can walk back up through parent indices from the
    /// deepest match without recursion or a per-request stack allocation.
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: HashMap<Box<str>, usize>,
    /// `None` only for the root.
    parent: Option<usize>,
    routes: Vec<usize>,
}

impl Default for PathTable {
    fn default() -> Self {
        PathTable {
            exact: HashMap::new(),
            nodes: vec![Node::default()],
        }
    }
}

impl PathTable {
    /// Adds route `idx`; `spec.path` is already canonical (see `canonicalise_path`).
    pub(super) fn insert(&mut self, idx: usize, spec: &RouteSpec) {
        let slot = match spec.path_match {
            PathMatch::Exact => self.exact.entry(spec.path.as_str().into()).or_default(),
            PathMatch::Prefix => {
                let node = self.prefix_node(&spec.path);
                match self.nodes.get_mut(node) {
                    Some(n) => &mut n.routes,
                    None => return,
                }
            }
        };
        // A route listing the same host twice must not become two candidates.
        if slot.last() != Some(&idx) {
            slot.push(idx);
        }
    }

    /// The node for `prefix`, created on the way down as needed.
    fn prefix_node(&mut self, prefix: &str) -> usize {
        let mut node = ROOT;
        for seg in segments(prefix).filter(|s| !s.is_empty()) {
            let existing = self
                .nodes
                .get(node)
                .and_then(|n| n.children.get(seg).copied());
            node = match existing {
                Some(child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(Node {
                        parent: Some(node),
                        ..Node::default()
                    });
                    if let Some(n) = self.nodes.get_mut(node) {
                        n.children.insert(seg.into(), child);
                    }
                    child
                }
            };
        }
        node
    }

    /// Orders every candidate list once, so a lookup takes the first that matches.
    pub(super) fn finish(&mut self, specs: &[&RouteSpec]) {
        let key = |&idx: &usize| {
            let spec = specs.get(idx);
            (
                spec.is_none_or(|s| s.methods.is_empty()),
                Reverse(spec.map_or(0, |s| s.headers.len())),
                idx,
            )
        };
        for slot in self.exact.values_mut() {
            slot.sort_by_key(key);
            slot.shrink_to_fit();
        }
        for node in &mut self.nodes {
            node.routes.sort_by_key(key);
            node.routes.shrink_to_fit();
        }
    }

    /// The winning route in this table, if any. Routes that matched everything but the
    /// method add their methods to `allowed`. A route that matched host and path but not
    /// method or headers, and lets no mismatch fall through, ends the search.
    pub(super) fn find<T>(
        &self,
        routes: &[(RouteSpec, T)],
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        allowed: &mut Vec<Method>,
    ) -> Lookup {
        if let Some(slot) = self.exact.get(path) {
            let found = pick(slot, routes, method, headers, allowed);
            if found.is_final() {
                return found;
            }
        }

        let mut node = ROOT;
        for seg in segments(path) {
            match self.nodes.get(node).and_then(|n| n.children.get(seg)) {
                Some(&child) => node = child,
                None => break,
            }
        }
        // Deepest prefix first, then back up towards `/`.
        let mut current = self.nodes.get(node);
        while let Some(n) = current {
            let found = pick(&n.routes, routes, method, headers, allowed);
            if found.is_final() {
                return found;
            }
            current = n.parent.and_then(|p| self.nodes.get(p));
        }
        Lookup::Continue
    }
}

/// The segments of a path after its leading slash; a trailing slash yields a last empty
/// segment, which no trie child has, so `/v1/` stops at the `/v1` node.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').filter(move |_| !rest.is_empty())
}

fn pick<T>(
    candidates: &[usize],
    routes: &[(RouteSpec, T)],
    method: &Method,
    headers: &HeaderMap,
    allowed: &mut Vec<Method>,
) -> Lookup {
    // The strictest answer among the candidates that refuse to let a mismatch fall
    // through: a header mismatch is a 404 even on a route that answers 405 for methods.
    let mut stop = None;
    for &idx in candidates {
        let Some((spec, _)) = routes.get(idx) else {
            continue;
        };
        let strict = spec.on_mismatch != OnMismatch::FallThrough;
        if !spec.matches_headers(headers) {
            if strict {
                stop = Some(OnMismatch::NotFound);
            }
            continue;
        }
        if spec.allows_method(method) {
            return Lookup::Found(idx);
        }
        allowed.extend(spec.methods.iter().cloned());
        if strict && stop.is_none() {
            stop = Some(spec.on_mismatch);
        }
    }
    stop.map_or(Lookup::Continue, Lookup::Stop)
}
