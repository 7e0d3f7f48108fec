//! DNS service discovery: a cluster whose endpoints are given by host name
//! (`address = "orders.internal:8080"`), or that names an SRV record (`srv =
//! "_orders._tcp.example.internal"`), resolves them with hickory-resolver and keeps
//! resolving them in the background, the way Envoy's `STRICT_DNS` clusters do.
//!
//! - Every A and AAAA address of a host name becomes an endpoint with the configured
//!   weight and port; IP literals listed beside host names stay as they are.
//! - An SRV name gives targets, ports, priorities and weights (RFC 2782); each target's
//!   addresses become endpoints of its priority level, and the lowest level with an
//!   available endpoint takes all the traffic (see [`super::EndpointSet`]).
//! - The next resolution comes after the records' smallest TTL, held between the
//!   cluster's `dns.min_ttl` and `dns.max_ttl`.
//! - Each result goes through [`Cluster::apply_endpoints`], the one place that swaps a
//!   set: addresses that stay keep their state, new ones are probed first, removed ones
//!   drain. A failed resolution, NXDOMAIN or an empty answer keeps the last good set; it
//!   is logged once per change of state, counted (`portico_discovery_errors_total`,
//!   `portico_dns_resolutions_total{result}`), shown in `/admin/clusters`, and retried
//!   after `min_ttl`, doubling up to `max_ttl`.
//!
//! A cluster is resolved once when it is built (so it starts with its endpoints, or
//! with none and the error in its status when DNS fails: it answers 503 until a
//! resolution succeeds), then by a task that holds only a weak reference to it, so the
//! task ends when a config reload drops the cluster.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::discovery::{now_rfc3339, DiscoveryStatus, Listed, Member};
use super::Cluster;
use crate::config;
use crate::observe::metrics::METRICS;

/// How long one query waits for an answer, and how often it is sent.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;
/// The longest the resolution at build time may take (a reload or a start waits for it).
const FIRST_RESOLUTION_BOUND: Duration = Duration::from_secs(5);
/// SRV weights are multiplied by this in a level where some record has weight 0, so
/// that a weight-0 target gets the smallest share (1) and never none (RFC 2782).
const SRV_ZERO_WEIGHT_SCALE: u32 = 16;

/// What a cluster resolves, read from its definition.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Endpoints given by host name: (as written, host, port, weight).
    hosts: Vec<(String, String, u16, u32)>,
    /// Endpoints given by IP address, kept in every set.
    fixed: Vec<Member>,
    srv: Option<String>,
    settings: config::Dns,
}

impl Plan {
    pub fn new(def: &config::Cluster) -> Plan {
        let mut hosts = Vec::new();
        let mut fixed = Vec::new();
        for e in &def.endpoints {
            match e.address.parse::<SocketAddr>() {
                Ok(addr) => fixed.push(Member {
                    name: e.address.clone(),
                    addr,
                    weight: e.weight,
                    priority: 0,
                }),
                Err(_) => {
                    // Validation checked the form.
                    if let Ok((host, port)) = config::split_host_port(&e.address) {
                        hosts.push((e.address.clone(), host.to_string(), port, e.weight));
                    }
                }
            }
        }
        Plan {
            hosts,
            fixed,
            srv: def.srv.clone(),
            settings: def.dns.clone().unwrap_or_default(),
        }
    }

    fn source(&self) -> &'static str {
        if self.srv.is_some() {
            "srv"
        } else {
            "dns"
        }
    }

    /// The names resolved, for the admin API and logs.
    fn names(&self) -> Vec<String> {
        match &self.srv {
            Some(srv) => vec![srv.clone()],
            None => self.hosts.iter().map(|h| h.0.clone()).collect(),
        }
    }

    fn servers(&self) -> Vec<String> {
        if self.settings.servers.is_empty() {
            vec!["system".to_string()]
        } else {
            self.settings.servers.clone()
        }
    }

    /// The wait before the next resolution after one whose records said `ttl`.
    pub fn clamp_ttl(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.settings.min_ttl, self.settings.max_ttl)
    }

    /// The wait before the next try after a failure, when the previous wait was
    /// `previous` (`None` after a success): `min_ttl`, doubling up to `max_ttl`.
    pub fn backoff(&self, previous: Option<Duration>) -> Duration {
        match previous {
            None => self.settings.min_ttl,
            Some(p) => (p * 2).clamp(self.settings.min_ttl, self.settings.max_ttl),
        }
    }
}

/// A name server as configured: `ip` (port 53) or `ip:port`.
pub fn name_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("`{text}` is not `ip` or `ip:port`"))
}

/// A resolver for a cluster: its servers, or the system's; no cache of its own (each
/// refresh asks the servers; the TTL already spaces the refreshes).
fn resolver(settings: &config::Dns) -> Result<TokioResolver, String> {
    let mut builder = if settings.servers.is_empty() {
        TokioResolver::builder_tokio().unwrap_or_else(|e| {
            // No usable /etc/resolv.conf (a minimal container): /etc/hosts still
            // answers, and every other name fails as a resolution error.
            log::debug!("cannot read the system's resolver configuration: {e}");
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                TokioRuntimeProvider::default(),
            )
        })
    } else {
        let mut servers = Vec::new();
        for s in &settings.servers {
            let addr = name_server(s)?;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            servers.push(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
        }
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            TokioRuntimeProvider::default(),
        );
        // Configured servers are the whole truth: no /etc/hosts.
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let opts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = QUERY_ATTEMPTS;
    builder
        .build()
        .map_err(|e| format!("cannot build the resolver: {e}"))
}

/// A resolution's result: the members and the smallest TTL of the records read.
#[derive(Debug)]
struct Resolved {
    listed: Listed,
    ttl: Duration,
}

/// Why a resolution gave no set; `kind` is the metric's `result` label.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn of(name: &str, e: &NetError) -> Failure {
        let kind = if e.is_nx_domain() {
            "nxdomain"
        } else if e.is_no_records_found() {
            "empty"
        } else {
            "error"
        };
        let message = match kind {
            "nxdomain" => format!("{name}: no such name (NXDOMAIN)"),
            "empty" => format!("{name}: no records"),
            _ => format!("{name}: {e}"),
        };
        Failure { kind, message }
    }
}

/// One A/AAAA lookup: the addresses and the smallest TTL.
async fn lookup_ip(r: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, u32), Failure> {
    let lookup = r.lookup_ip(host).await.map_err(|e| Failure::of(host, &e))?;
    let ips: Vec<IpAddr> = lookup.iter().collect();
    if ips.is_empty() {
        return Err(Failure {
            kind: "empty",
            message: format!("{host}: no A or AAAA records"),
        });
    }
    let ttl = lookup
        .as_lookup()
        .answers()
        .iter()
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0);
    Ok((ips, ttl))
}

/// Resolves every name of `plan`: all of them must resolve, or the resolution fails
/// as a whole (a set that lost a name by accident is worse than the last good one).
async fn resolve(r: &TokioResolver, plan: &Plan) -> Result<Resolved, Failure> {
    let mut listed: Listed = plan.fixed.clone();
    let mut ttl = u32::MAX;
    if let Some(srv) = &plan.srv {
        let lookup = r
            .srv_lookup(srv.as_str())
            .await
            .map_err(|e| Failure::of(srv, &e))?;
        let records: Vec<(u16, u16, u16, String)> = lookup
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::SRV(s) => {
                    ttl = ttl.min(rec.ttl);
                    Some((s.priority, s.weight, s.port, s.target.to_ascii()))
                }
                _ => None,
            })
            .collect();
        // A target of "." says the service is decidedly not available there.
        let records: Vec<_> = records.into_iter().filter(|r| r.3 != ".").collect();
        if records.is_empty() {
            return Err(Failure {
                kind: "empty",
                message: format!("{srv}: no SRV records with a target"),
            });
        }
        let weights = srv_weights(&records.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>());
        let lookups = records.iter().map(|(_, _, _, target)| lookup_ip(r, target));
        let results = futures::future::join_all(lookups).await;
        for ((record, weight), result) in records.iter().zip(weights).zip(results) {
            let (priority, _, port, target) = record;
            let (ips, t) = result?;
            ttl = ttl.min(t);
            let host = target.strip_suffix('.').unwrap_or(target);
            for ip in ips {
                listed.push(Member {
                    name: format!("{host}:{port}"),
                    addr: SocketAddr::new(ip, *port),
                    weight,
                    priority: *priority,
                });
            }
        }
    } else {
        let lookups = plan.hosts.iter().map(|h| lookup_ip(r, &h.1));
        let results = futures::future::join_all(lookups).await;
        for ((written, _, port, weight), result) in plan.hosts.iter().zip(results) {
            let (ips, t) = result?;
            ttl = ttl.min(t);
            for ip in ips {
                listed.push(Member {
                    name: written.clone(),
                    addr: SocketAddr::new(ip, *port),
                    weight: *weight,
                    priority: 0,
                });
            }
        }
    }
    Ok(Resolved {
        listed: normalise(listed),
        ttl: Duration::from_secs(u64::from(ttl)),
    })
}

/// One member per address (the first listed wins), in a stable order, so that two
/// resolutions with the same answer compare equal.
fn normalise(listed: Listed) -> Listed {
    let mut seen = BTreeSet::new();
    let mut out: Listed = listed.into_iter().filter(|m| seen.insert(m.addr)).collect();
    out.sort_by_key(|m| (m.priority, m.addr));
    out
}

/// The weight of each SRV record (priority, weight): as published, except in a priority
/// level where some record has weight 0 and another does not: there a weight-0 target
/// gets the smallest share (1) and the others theirs times [`SRV_ZERO_WEIGHT_SCALE`]; a
/// level of only weight-0 records shares equally.
pub fn srv_weights(records: &[(u16, u16)]) -> Vec<u32> {
    records
        .iter()
        .map(|&(priority, weight)| {
            let level = records.iter().filter(|r| r.0 == priority);
            let mixed = level.clone().any(|r| r.1 == 0) && level.clone().any(|r| r.1 > 0);
            match (weight, mixed) {
                (0, _) => 1,
                (w, true) => u32::from(w) * SRV_ZERO_WEIGHT_SCALE,
                (w, false) => u32::from(w),
            }
        })
        .collect()
}

/// Resolves a cluster's names once, at build time, on a thread of its own (building
/// runs inside or outside a Tokio runtime), bounded by [`FIRST_RESOLUTION_BOUND`]. On a
/// failure the cluster starts with its IP-literal endpoints only (often none) and the
/// error in its status.
pub(super) fn first_resolution(cluster: &str, def: &config::Cluster) -> (Listed, DiscoveryStatus) {
    let plan = Plan::new(def);
    let result = resolve_blocking(&plan);
    let mut status = DiscoveryStatus {
        source: plan.source(),
        names: plan.names(),
        servers: plan.servers(),
        ..DiscoveryStatus::default()
    };
    match result {
        Ok(resolved) => {
            count(cluster, "ok");
            let wait = plan.clamp_ttl(resolved.ttl);
            status.updates = 1;
            status.last_change = Some(now_rfc3339());
            status.last_resolution = status.last_change.clone();
            status.ttl_secs = Some(wait.as_secs_f64());
            status.next_refresh = Some(rfc3339_in(wait));
            (resolved.listed, status)
        }
        Err(f) => {
            log::warn!(
                "cluster {cluster}: DNS discovery of {} failed: {}; the cluster has {} endpoints until a resolution succeeds",
                plan.names().join(", "),
                f.message,
                plan.fixed.len()
            );
            count(cluster, f.kind);
            METRICS.discovery_errors.with_label_values(&[cluster]).inc();
            status.errors = 1;
            status.last_error = Some(f.message);
            status.next_refresh = Some(rfc3339_in(plan.settings.min_ttl));
            (normalise(plan.fixed.clone()), status)
        }
    }
}

/// For `portico check`: whether a cluster's names resolve now (the number of
/// endpoints they give). A failure is a warning there, never an error: the gateway
/// starts without DNS and keeps trying.
pub fn check_resolves(def: &config::Cluster) -> Result<usize, String> {
    resolve_blocking(&Plan::new(def))
        .map(|r| r.listed.len())
        .map_err(|f| f.message)
}

/// One resolution of `plan`, on a thread of its own with a runtime of its own (a
/// cluster is built inside or outside a Tokio runtime).
fn resolve_blocking(plan: &Plan) -> Result<Resolved, Failure> {
    let worker = plan.clone();
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure {
                    kind: "error",
                    message: format!("cannot start the resolver: {e}"),
                })?;
            rt.block_on(async {
                let r = resolver(&worker.settings).map_err(|message| Failure {
                    kind: "error",
                    message,
                })?;
                tokio::time::timeout(FIRST_RESOLUTION_BOUND, resolve(&r, &worker))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure {
                            kind: "error",
                            message: format!(
                                "no answer within {}",
                                humantime::format_duration(FIRST_RESOLUTION_BOUND)
                            ),
                        })
                    })
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Failure {
                kind: "error",
                message: "the resolver thread failed".into(),
            })
        })
    })
}

fn count(cluster: &str, result: &str) {
    METRICS
        .dns_resolutions
        .with_label_values(&[cluster, result])
        .inc();
}

fn rfc3339_in(wait: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + wait).to_string()
}

/// Starts the refresh task of a DNS-discovered cluster (needs a Tokio runtime).
pub(super) fn spawn(cluster: &Arc<Cluster>) {
    let plan = Plan::new(&cluster.definition);
    let weak: Weak<Cluster> = Arc::downgrade(cluster);
    let name = cluster.name.clone();
    // The build's resolution decides the first wait.
    let (mut wait, mut failing) = match cluster.discovery.as_ref().and_then(|d| d.lock().ok()) {
        Some(s) if s.last_error.is_some() => (plan.settings.min_ttl, s.last_error.clone()),
        Some(s) => (
            plan.clamp_ttl(Duration::from_secs_f64(s.ttl_secs.unwrap_or(0.0))),
            None,
        ),
        None => (plan.settings.min_ttl, None),
    };
    let mut backoff = failing.as_ref().map(|_| wait);
    tokio::spawn(async move {
        let mut client = None;
        loop {
            tokio::time::sleep(wait).await;
            if weak.strong_count() == 0 {
                log::debug!("cluster {name}: stopping DNS discovery");
                return;
            }
            if client.is_none() {
                match resolver(&plan.settings) {
                    Ok(r) => client = Some(r),
                    Err(message) => {
                        let f = Failure {
                            kind: "error",
                            message,
                        };
                        let Some(cluster) = weak.upgrade() else {
                            return;
                        };
                        wait = plan.backoff(backoff);
                        backoff = Some(wait);
                        failed(&cluster, &plan, f, &mut failing, wait);
                        continue;
                    }
                }
            }
            let Some(r) = client.as_ref() else {
                continue;
            };
            // Each refresh asks the servers, not a cache.
            r.clear_cache();
            let result = resolve(r, &plan).await;
            let Some(cluster) = weak.upgrade() else {
                log::debug!("cluster {name}: stopping DNS discovery");
                return;
            };
            match result {
                Ok(resolved) => {
                    wait = plan.clamp_ttl(resolved.ttl);
                    backoff = None;
                    succeeded(&cluster, &plan, resolved.listed, &mut failing, wait).await;
                }
                Err(f) => {
                    wait = plan.backoff(backoff);
                    backoff = Some(wait);
                    failed(&cluster, &plan, f, &mut failing, wait);
                }
            }
        }
    });
}

async fn succeeded(
    cluster: &Arc<Cluster>,
    plan: &Plan,
    listed: Listed,
    failing: &mut Option<String>,
    wait: Duration,
) {
    count(&cluster.name, "ok");
    if failing.take().is_some() {
        log::info!(
            "cluster {}: DNS discovery of {} resolves again",
            cluster.name,
            plan.names().join(", ")
        );
    }
    let current: Listed = cluster
        .endpoints()
        .iter()
        .map(|e| Member {
            name: e.name.clone(),
            addr: e.addr,
            weight: e.weight,
            priority: e.priority,
        })
        .collect();
    let changed = normalise(current) != listed;
    let mut applied = Ok(());
    if changed {
        let total = listed.len();
        match cluster.apply_endpoints(listed).await {
            Ok((added, removed)) => {
                log::info!(
                    "cluster {}: DNS discovery applied: {total} endpoints ({added} new, {removed} removed)",
                    cluster.name
                );
                METRICS
                    .discovery_updates
                    .with_label_values(&[cluster.name.as_str()])
                    .inc();
            }
            Err(e) => applied = Err(e),
        }
    }
    if let Some(status) = &cluster.discovery {
        if let Ok(mut s) = status.lock() {
            let now = now_rfc3339();
            s.last_resolution = Some(now.clone());
            s.ttl_secs = Some(wait.as_secs_f64());
            s.next_refresh = Some(rfc3339_in(wait));
            if changed && applied.is_ok() {
                s.updates += 1;
                s.last_change = Some(now);
            }
            s.last_error = applied.as_ref().err().cloned();
        }
    }
    if let Err(e) = applied {
        log::warn!(
            "cluster {}: DNS discovery result not applied: {e}",
            cluster.name
        );
    }
}

fn failed(
    cluster: &Cluster,
    plan: &Plan,
    f: Failure,
    failing: &mut Option<String>,
    wait: Duration,
) {
    count(&cluster.name, f.kind);
    METRICS
        .discovery_errors
        .with_label_values(&[cluster.name.as_str()])
        .inc();
    // Once per change of state, not once per try.
    if failing.as_deref() != Some(f.message.as_str()) {
        log::warn!(
            "cluster {}: DNS discovery of {} failed, keeping the last good set ({} endpoints): {}; retrying with backoff",
            cluster.name,
            plan.names().join(", "),
            cluster.endpoint_count(),
            f.message
        );
        *failing = Some(f.message.clone());
    }
    if let Some(status) = &cluster.discovery {
        if let Ok(mut s) = status.lock() {
            s.errors += 1;
            s.last_error = Some(f.message);
            s.next_refresh = Some(rfc3339_in(wait));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dns: &str) -> Plan {
        let def: config::Cluster = toml::from_str(&format!(
            "endpoints = [{{ address = \"orders.internal:8080\" }}]\n{dns}"
        ))
        .unwrap();
        Plan::new(&def)
    }

    #[test]
    fn ttl_is_held_between_floor_and_ceiling() {
        let p = plan(r#"dns = { min_ttl = "2s", max_ttl = "1m" }"#);
        assert_eq!(p.clamp_ttl(Duration::ZERO), Duration::from_secs(2));
        assert_eq!(
            p.clamp_ttl(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.clamp_ttl(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
        // Defaults: 1 s to 300 s.
        let p = plan("");
        assert_eq!(p.clamp_ttl(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            p.clamp_ttl(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn failures_back_off_from_floor_to_ceiling() {
        let p = plan(r#"dns = { min_ttl = "1s", max_ttl = "5s" }"#);
        let mut wait = None;
        let waits: Vec<u64> = (0..5)
            .map(|_| {
                let w = p.backoff(wait);
                wait = Some(w);
                w.as_secs()
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn srv_weights_give_weight_zero_the_smallest_share() {
        // Plain weights per level stay as published.
        assert_eq!(srv_weights(&[(10, 60), (10, 20), (20, 5)]), [60, 20, 5]);
        // A weight-0 record beside weighted ones: the smallest nonzero share.
        assert_eq!(srv_weights(&[(10, 3), (10, 0)]), [48, 1]);
        // Only weight-0 records in a level: equal shares.
        assert_eq!(srv_weights(&[(10, 0), (10, 0), (20, 7)]), [1, 1, 7]);
    }

    #[test]
    fn a_plan_splits_host_names_from_addresses() {
        let def: config::Cluster = toml::from_str(
            r#"endpoints = [{ address = "orders.internal:8080", weight = 3 }, { address = "10.0.0.9:80" }]"#,
        )
        .unwrap();
        let p = Plan::new(&def);
        assert_eq!(p.source(), "dns");
        assert_eq!(
            p.hosts,
            [(
                "orders.internal:8080".to_string(),
                "orders.internal".to_string(),
                8080,
                3
            )]
        );
        assert_eq!(p.fixed.len(), 1);
        assert_eq!(name_server("127.0.0.1").unwrap().port(), 53);
        assert_eq!(name_server("[::1]:5353").unwrap().port(), 5353);
        assert!(name_server("dns.example").is_err());
    }

    #[test]
    fn members_are_unique_and_ordered() {
        let m = |a: &str, p: u16| Member {
            name: "x:1".into(),
            addr: a.parse().unwrap(),
            weight: 1,
            priority: p,
        };
        let out = normalise(vec![
            m("10.0.0.2:1", 0),
            m("10.0.0.1:1", 5),
            m("10.0.0.2:1", 1),
        ]);
        assert_eq!(out, [m("10.0.0.2:1", 0), m("10.0.0.1:1", 5)]);
    }
}
