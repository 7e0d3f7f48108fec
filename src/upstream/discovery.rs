//! Endpoint discovery: a cluster with `endpoints_file` reads its endpoints from a JSON or
//! TOML file another tool writes, the way Prometheus `file_sd` and Envoy's file-based EDS
//! work. A task polls the file once a second (its content hash, no inotify) and applies
//! each good version with [`Cluster::apply_endpoints`], without a config reload. A bad
//! version is rejected with its file, line, column and reason (logged, counted in
//! `portico_discovery_errors_total`, shown in `/admin/clusters`), and the last good set
//! stays.
//!
//! The task holds only a weak reference to its cluster, so it ends by itself when a
//! config reload drops the cluster.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::config;

/// One endpoint a discovery source lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The address as written (a file's entry, a configured `host:port`, an SRV
    /// target with its port): logs, SNI and the health check's Host come from it.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Lower takes traffic first (SRV priority); 0 for every other source.
    pub priority: u16,
}

/// The endpoints a discovery source lists.
pub type Listed = Vec<Member>;

/// How often the endpoints file is looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the discovery of a cluster last did, for `/admin/clusters`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiscoveryStatus {
    /// `file` (`endpoints_file`), `dns` (endpoints given by host name) or `srv`.
    pub source: &'static str,
    /// The endpoints file.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The names resolved (`host:port` as configured, or the SRV name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The name servers asked (`system`: those of `/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Good versions applied since the cluster was built (the first one included); for
    /// DNS, resolutions that changed the set.
    pub updates: u64,
    /// Bad versions rejected; for DNS, failed resolutions (the last good set stayed).
    pub errors: u64,
    /// Why the newest version was rejected; `None` once a good one follows.
    pub last_error: Option<String>,
    /// When the endpoint set last changed (RFC 3339).
    pub last_change: Option<String>,
    /// DNS: when the last resolution succeeded (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_resolution: Option<String>,
    /// DNS: the records' TTL as used, within `min_ttl` and `max_ttl` (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<f64>,
    /// DNS: when the names are resolved next (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<String>,
}

impl DiscoveryStatus {
    pub(super) fn file(def: &config::Cluster) -> DiscoveryStatus {
        DiscoveryStatus {
            source: "file",
            path: def.endpoints_file.clone().unwrap_or_default(),
            updates: 1,
            last_change: Some(now_rfc3339()),
            ..DiscoveryStatus::default()
        }
    }
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    endpoints: Vec<config::Endpoint>,
}

/// Reads and checks an endpoints file: (name, address, weight) of each endpoint. An
/// error reads `path:line:column: reason`.
pub fn read_endpoints_file(path: &Path) -> Result<Listed, String> {
    read_endpoints_file_hashed(path).map(|(listed, _)| listed)
}

/// [`read_endpoints_file`], with the hash of the content read, so the watch starts from
/// the version the cluster was built from (a change in between is not missed).
pub(super) fn read_endpoints_file_hashed(path: &Path) -> Result<(Listed, u64), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the endpoints file: {e}", path.display()))?;
    Ok((parse_endpoints(path, &text)?, content_hash(text.as_bytes())))
}

/// [`read_endpoints_file`] on text already read.
pub fn parse_endpoints(path: &Path, text: &str) -> Result<Listed, String> {
    let shown = path.display();
    let at = |offset: usize| {
        let loc = portico_common::config_error::location_of(text, offset);
        format!("{shown}:{}:{}", loc.line, loc.column)
    };
    let listed: Vec<config::Endpoint> = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(text).map_err(|e| {
            // serde_json counts lines and columns from 1 (0 when the text is empty).
            let reason = e.to_string();
            let reason = reason
                .rsplit_once(" at line ")
                .map_or(reason.as_str(), |(r, _)| r);
            format!(
                "{shown}:{}:{}: {reason}",
                e.line().max(1),
                e.column().max(1)
            )
        })?,
        Some("toml") => {
            toml::from_str::<TomlFile>(text)
                .map_err(|e| {
                    let start = e.span().map_or(0, |s| s.start);
                    format!("{}: {}", at(start), e.message().trim())
                })?
                .endpoints
        }
        _ => {
            return Err(format!(
                "{shown}: an endpoints file is JSON (`.json`) or TOML (`.toml`), by its extension"
            ))
        }
    };
    if listed.is_empty() {
        return Err(format!(
            "{}: the file lists no endpoints (an empty list is taken for a mistake; the last good set stays)",
            at(0)
        ));
    }
    // Where an entry is, for errors about its values: its address as written.
    let entry_at = |address: &str| {
        let quoted = format!("\"{address}\"");
        at(text.find(&quoted).unwrap_or(0))
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(listed.len());
    for e in listed {
        if e.weight == 0 {
            return Err(format!(
                "{}: endpoint `{}`: weight must be at least 1 (remove the endpoint to stop traffic)",
                entry_at(&e.address),
                e.address
            ));
        }
        let addr = config::resolve_address(&e.address)
            .map_err(|m| format!("{}: {m}", entry_at(&e.address)))?;
        if !seen.insert(addr) {
            return Err(format!(
                "{}: endpoint `{}` is listed twice",
                entry_at(&e.address),
                e.address
            ));
        }
        out.push(Member {
            name: e.address,
            addr,
            weight: e.weight,
            priority: 0,
        });
    }
    Ok(out)
}

/// Starts the discovery task of a cluster: the watch of its endpoints file, or its DNS
/// refreshes ([`super::dns`]) (needs a Tokio runtime). Does nothing for clusters with
/// fixed endpoints.
pub fn spawn_discovery(cluster: &Arc<Cluster>) {
    if cluster.definition.uses_dns() {
        return super::dns::spawn(cluster);
    }
    let Some(path) = cluster.definition.endpoints_file.clone() else {
        return;
    };
    let weak: Weak<Cluster> = Arc::downgrade(cluster);
    let name = cluster.name.clone();
    // The version the cluster was built from counts as seen.
    let mut seen = Some(cluster.built_from);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(cluster) = weak.upgrade() else {
                log::debug!("cluster {name}: stopping the watch of {path}");
                return;
            };
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    // A file being replaced can be briefly absent: tell once per state.
                    let hash = Some(0);
                    if seen != hash {
                        seen = hash;
                        reject(
                            &cluster,
                            format!("{path}: cannot read the endpoints file: {e}"),
                        );
                    }
                    continue;
                }
            };
            let hash = Some(content_hash(&bytes));
            if seen == hash {
                continue;
            }
            seen = hash;
            let p = path.clone();
            // Parsing may resolve host names: off the runtime's worker threads.
            let parsed = tokio::task::spawn_blocking(move || {
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("{p}: the endpoints file is not UTF-8"))?;
                parse_endpoints(Path::new(&p), &text)
            })
            .await
            .unwrap_or_else(|e| Err(format!("{path}: parsing failed: {e}")));
            match parsed {
                Ok(listed) => accept(&cluster, listed).await,
                Err(e) => reject(&cluster, e),
            }
        }
    });
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    // 0 stands for "unreadable".
    h.finish().max(1)
}

async fn accept(cluster: &Arc<Cluster>, listed: Listed) {
    let total = listed.len();
    match cluster.apply_endpoints(listed).await {
        Ok((added, removed)) => {
            log::info!(
                "cluster {}: endpoints file applied: {total} endpoints ({added} new, {removed} removed)",
                cluster.name
            );
            crate::observe::metrics::METRICS
                .discovery_updates
                .with_label_values(&[cluster.name.as_str()])
                .inc();
            if let Some(status) = &cluster.discovery {
                if let Ok(mut s) = status.lock() {
                    s.updates += 1;
                    s.last_error = None;
                    s.last_change = Some(now_rfc3339());
                }
            }
        }
        Err(e) => reject(cluster, e),
    }
}

fn reject(cluster: &Cluster, error: String) {
    log::warn!(
        "cluster {}: endpoints file rejected, keeping the last good set: {error}",
        cluster.name
    );
    crate::observe::metrics::METRICS
        .discovery_errors
        .with_label_values(&[cluster.name.as_str()])
        .inc();
    if let Some(status) = &cluster.discovery {
        if let Ok(mut s) = status.lock() {
            s.errors += 1;
            s.last_error = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_toml_files_list_endpoints() {
        let json = parse_endpoints(
            Path::new("o.json"),
            r#"[{"address": "127.0.0.1:1", "weight": 3}, {"address": "127.0.0.1:2"}]"#,
        )
        .unwrap();
        assert_eq!(json[0].weight, 3);
        assert_eq!(json[1].weight, 1);
        let toml = parse_endpoints(
            Path::new("o.toml"),
            "[[endpoints]]\naddress = \"127.0.0.1:1\"\nweight = 2\n",
        )
        .unwrap();
        assert_eq!(toml[0].addr, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse_endpoints(
            Path::new("o.json"),
            "[\n  {\"address\": \"127.0.0.1:1\",}\n]",
        )
        .unwrap_err();
        assert!(e.starts_with("o.json:2:"), "{e}");
        let e = parse_endpoints(
            Path::new("o.json"),
            "[\n {\"address\": \"127.0.0.1:1\"},\n {\"address\": \"nope\"}\n]",
        )
        .unwrap_err();
        assert!(e.starts_with("o.json:3:14: `nope` has no port"), "{e}");
        let e = parse_endpoints(
            Path::new("o.toml"),
            "[[endpoints]]\naddress = \"127.0.0.1:1\"\nwieght = 2\n",
        )
        .unwrap_err();
        assert!(e.starts_with("o.toml:3:1:"), "{e}");
        let e = parse_endpoints(
            Path::new("o.json"),
            r#"[{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:1"}]"#,
        )
        .unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        assert!(parse_endpoints(Path::new("o.json"), "[]").is_err());
        assert!(parse_endpoints(Path::new("o.yaml"), "[]").is_err());
    }
}
