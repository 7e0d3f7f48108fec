//! Upstream clusters: endpoints with their live state (active health, passive outlier
//! ejection, in-flight count), load balancing over the available ones, and the peer
//! settings (timeouts, TLS) Pingora connects with.
//!
//! Endpoint state is atomics: selecting an endpoint and recording its outcome take no lock
//! of their own. Only a configured endpoint breaker adds one, a short mutex to count the
//! outcome (see [`breaker`]), never held across an await.
//!
//! A cluster's endpoints are fixed, or (with `endpoints_file`, see [`discovery`], or
//! host names and `srv`, see [`dns`]) an endpoint set swapped whole at run time: requests
//! hold the `Arc<Endpoint>` they chose, addresses that stay keep their `Endpoint`, and
//! removed ones drain. Endpoints with different priorities (SRV) form priority levels:
//! the lowest level with an available endpoint takes all the traffic.

pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod discovery;
pub mod dns;
mod health;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_ketama::{Bucket, Continuum};
use serde::Serialize;

use crate::config::{self, HashBy, LbKind};
use breaker::{Admission, BreakerState, CircuitBreaker};
use budget::RetryBudget;
use bulkhead::Bulkhead;

pub use discovery::{spawn_discovery, DiscoveryStatus};
pub use health::{spawn_health_checks, FirstRound};

/// One upstream instance.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The address as configured, for logs, metrics and the admin API.
    pub name: String,
    /// What names this endpoint alone in metrics, the access log and the console: the
    /// name, or `name@address` when the name does not say the address (a host name,
    /// whose addresses DNS discovery makes several endpoints of).
    pub label: String,
    pub weight: u32,
    /// Lower takes traffic first (SRV priority); 0 unless discovery says otherwise.
    pub priority: u16,
    /// The peer Pingora connects to; cloned per attempt.
    peer: HttpPeer,
    /// Result of active health checking (true until a check says otherwise).
    healthy: AtomicBool,
    /// Passive ejection: milliseconds since the cluster's epoch until which this endpoint
    /// gets no traffic; 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// How many times this endpoint has been ejected in a row; each doubles the next ejection.
    ejections: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    in_flight: AtomicUsize,
    breaker: Option<CircuitBreaker>,
    // Counters of the active checker, touched only by its task.
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    /// Whether the endpoint has a health history: probed already, or taken over from the
    /// cluster a reload replaced. A reload-added endpoint without one is decided by its
    /// first probe.
    probed: AtomicBool,
}

impl Endpoint {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A new endpoint of a cluster for one listed member.
    fn new(def: &config::Cluster, tls: &PeerTls, member: &discovery::Member) -> Endpoint {
        let discovery::Member {
            name,
            addr,
            weight,
            priority,
        } = member;
        let (addr, weight) = (*addr, *weight);
        let sni = def.sni.clone().unwrap_or_else(|| {
            name.rsplit_once(':')
                .map_or(name.to_string(), |(h, _)| h.to_string())
        });
        let mut peer = HttpPeer::new(addr, def.tls, sni);
        tls.apply(&mut peer);
        set_protocol(&mut peer, def);
        peer.options.connection_timeout = Some(def.timeouts.connect);
        peer.options.read_timeout = Some(def.timeouts.read);
        peer.options.write_timeout = Some(def.timeouts.write);
        peer.options.idle_timeout = Some(def.timeouts.idle);
        Endpoint {
            addr,
            name: name.to_string(),
            label: if name.parse::<SocketAddr>().ok() == Some(addr) {
                name.to_string()
            } else {
                format!("{name}@{addr}")
            },
            weight: weight.max(1),
            priority: *priority,
            peer,
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            breaker: def.endpoint_breaker.as_ref().map(CircuitBreaker::new),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            probed: AtomicBool::new(false),
        }
    }

    /// Copies the health, ejection and check state of `old` (the same address), for an
    /// endpoint that replaces it with another weight.
    fn take_state_of(&self, old: &Endpoint) {
        let copy32 = |to: &AtomicU32, from: &AtomicU32| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        self.healthy.store(old.is_healthy(), Ordering::Relaxed);
        self.ejected_until_ms.store(
            old.ejected_until_ms.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        copy32(&self.ejections, &old.ejections);
        copy32(&self.consecutive_5xx, &old.consecutive_5xx);
        copy32(
            &self.consecutive_connect_failures,
            &old.consecutive_connect_failures,
        );
        copy32(&self.check_passes, &old.check_passes);
        copy32(&self.check_failures, &old.check_failures);
        self.probed
            .store(old.probed.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }
}

/// How requests are spread over a cluster's endpoints.
enum Balancer {
    /// Smooth weighted round robin: a precomputed cycle of endpoint indexes in which each
    /// endpoint appears `weight` times, interleaved, walked by one atomic counter.
    RoundRobin { cycle: Vec<u32>, next: AtomicUsize },
    /// Power of two choices on in-flight requests divided by weight.
    LeastRequest,
    /// Ketama ring, so adding or removing an endpoint moves few keys.
    ConsistentHash {
        ring: Continuum,
        on: HashBy,
        name: String,
    },
}

/// A cluster's upstream TLS material, loaded from the files its definition names.
#[derive(Clone, Default)]
pub(crate) struct PeerTls {
    ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    client_cert: Option<Arc<pingora_core::utils::tls::CertKey>>,
    verify: bool,
    /// Of the files' contents: pooled connections made with other TLS material are
    /// never reused for this cluster, and a reload notices rotated files.
    pub(crate) fingerprint: u64,
}

impl PeerTls {
    fn load(def: &config::Cluster) -> Result<PeerTls, String> {
        if !def.tls {
            return Ok(PeerTls::default());
        }
        let ca = match &def.ca_file {
            Some(path) => Some(crate::runtime::tls::upstream_ca(path)?),
            None => None,
        };
        let client_cert = match (&def.client_cert, &def.client_key) {
            (Some(cert), Some(key)) => Some(
                crate::runtime::tls::upstream_client_cert(cert, key).map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        Ok(PeerTls {
            ca,
            client_cert,
            verify: def.verify,
            fingerprint: tls_fingerprint(def),
        })
    }

    /// Sets a peer's CA, client certificate and verification from this material.
    pub(crate) fn apply(&self, peer: &mut HttpPeer) {
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client_cert.clone();
        peer.group_key = self.fingerprint;
        if !self.verify {
            peer.options.verify_cert = false;
            peer.options.verify_hostname = false;
        }
    }
}

/// Makes a peer speak the cluster's HTTP version. HTTP/2 only (`min = max = 2`) is ALPN `h2`
/// on TLS and, on plaintext, HTTP/2 with prior knowledge (Pingora's connector trusts the
/// peer to speak h2c when no ALPN can say so). Requests share pooled connections up to
/// `max_h2_streams` streams each.
pub(crate) fn set_protocol(peer: &mut HttpPeer, def: &config::Cluster) {
    if def.protocol.is_h2() {
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = def.max_h2_streams.unwrap_or(config::DEFAULT_MAX_H2_STREAMS);
    }
}

/// A hash of the contents of the TLS files a cluster names (0 without upstream TLS).
pub fn tls_fingerprint(def: &config::Cluster) -> u64 {
    use std::hash::{Hash, Hasher};
    if !def.tls {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [&def.ca_file, &def.client_cert, &def.client_key]
        .into_iter()
        .flatten()
    {
        path.hash(&mut h);
        std::fs::read(path).ok().hash(&mut h);
    }
    def.verify.hash(&mut h);
    h.finish()
}

/// A group of interchangeable endpoints and its policies.
pub struct Cluster {
    pub name: String,
    endpoints: Endpoints,
    outlier: config::Outlier,
    pub(crate) health_check: Option<config::HealthCheck>,
    pub(crate) tls: PeerTls,
    /// Fails requests fast while the cluster as a whole is failing.
    pub breaker: Option<CircuitBreaker>,
    pub bulkhead: Option<Bulkhead>,
    pub retry_budget: RetryBudget,
    max_per_endpoint: usize,
    /// The definition this cluster was built from, so a reload can keep an unchanged
    /// cluster (and its live state) as it is.
    pub definition: config::Cluster,
    epoch: Instant,
    /// Endpoints a discovery update removed while requests were in flight on them: they
    /// get no new requests and are shown until the last one finishes.
    draining: Mutex<Vec<Arc<Endpoint>>>,
    /// What the discovery task last did (`None` for a cluster with fixed endpoints).
    pub(crate) discovery: Option<Mutex<DiscoveryStatus>>,
    /// The content hash of the endpoints file version the cluster was built from.
    built_from: u64,
}

/// The endpoints of a cluster and the balancer over them, replaced as one.
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    levels: Levels,
}

/// How a set's endpoints are balanced: as one level (every cluster but SRV ones with
/// several priorities), or by priority level, `endpoints` then sorted by priority and
/// each level with its own balancer.
enum Levels {
    One(Balancer),
    Tiers(Box<[Tier]>),
}

/// The endpoints of one priority level: a range of the sorted set and their balancer.
struct Tier {
    range: std::ops::Range<usize>,
    balancer: Balancer,
}

/// Fixed endpoints are read directly; discovered ones behind one pointer that an update
/// swaps, so a request sees either the old set or the new one, never a mix.
enum Endpoints {
    Static(EndpointSet),
    Dynamic(ArcSwap<EndpointSet>),
}

/// What the request offers for consistent hashing.
pub struct HashInput<'a> {
    pub client_ip: Option<IpAddr>,
    pub headers: &'a http::HeaderMap,
}

/// Why no endpoint could be chosen.
#[derive(Debug, PartialEq, Eq)]
pub enum SelectError {
    /// Every endpoint is unhealthy or ejected.
    NoHealthyEndpoint,
}

impl Cluster {
    /// Builds a cluster from a validated definition (addresses were checked by validation).
    pub fn build(name: &str, def: &config::Cluster) -> Result<Cluster, String> {
        let tls = PeerTls::load(def)?;
        let mut built_from = 0;
        let mut discovery = None;
        let listed: discovery::Listed = match &def.endpoints_file {
            Some(path) => {
                let (listed, hash) =
                    discovery::read_endpoints_file_hashed(std::path::Path::new(path))?;
                built_from = hash;
                discovery = Some(DiscoveryStatus::file(def));
                listed
            }
            // Resolved once now, so a cluster starts with its endpoints (or, when DNS
            // fails, with none and the error in its status), then by its task.
            None if def.uses_dns() => {
                let (listed, status) = dns::first_resolution(name, def);
                discovery = Some(status);
                listed
            }
            None => def
                .endpoints
                .iter()
                .map(|e| {
                    Ok(discovery::Member {
                        name: e.address.clone(),
                        addr: crate::config::resolve_address(&e.address)?,
                        weight: e.weight,
                        priority: 0,
                    })
                })
                .collect::<Result<_, String>>()?,
        };
        let endpoints: Vec<Arc<Endpoint>> = listed
            .iter()
            .map(|m| Arc::new(Endpoint::new(def, &tls, m)))
            .collect();
        let set = EndpointSet::new(def, endpoints)?;
        let dynamic = discovery.is_some();
        Ok(Cluster {
            name: name.to_string(),
            endpoints: if dynamic {
                Endpoints::Dynamic(ArcSwap::from_pointee(set))
            } else {
                Endpoints::Static(set)
            },
            outlier: def.outlier.clone(),
            health_check: def.health_check.clone(),
            tls,
            breaker: def.breaker.as_ref().map(CircuitBreaker::new),
            bulkhead: def.bulkhead.as_ref().map(Bulkhead::new),
            retry_budget: RetryBudget::new(&def.retry_budget),
            max_per_endpoint: def.max_requests_per_endpoint.unwrap_or(usize::MAX),
            definition: def.clone(),
            epoch: Instant::now(),
            draining: Mutex::new(Vec::new()),
            discovery: discovery.map(Mutex::new),
            built_from,
        })
    }

    /// Runs `f` on the current endpoint set: no atomic operation for fixed endpoints, one
    /// pointer load for discovered ones.
    #[inline]
    fn with_set<R>(&self, f: impl FnOnce(&EndpointSet) -> R) -> R {
        match &self.endpoints {
            Endpoints::Static(set) => f(set),
            Endpoints::Dynamic(set) => f(&set.load()),
        }
    }

    /// The current endpoints (a copy of the list, for the admin API, checks and tests).
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.with_set(|set| set.endpoints.clone())
    }

    /// How many endpoints the cluster has now.
    pub fn endpoint_count(&self) -> usize {
        self.with_set(|set| set.endpoints.len())
    }

    /// Whether the endpoints can change at run time (discovery).
    pub fn is_dynamic(&self) -> bool {
        matches!(self.endpoints, Endpoints::Dynamic(_))
    }

    /// Replaces the endpoint set of a discovered cluster with `listed` (name, address,
    /// weight). An address that stays keeps its `Endpoint` and all its state (a changed
    /// weight gets a new `Endpoint` that copies the state); new addresses become new
    /// endpoints, probed first when the cluster has health checks, so they take traffic
    /// only once a probe passed; removed ones get no new requests and drain. Returns what
    /// changed: (added, removed).
    pub(crate) async fn apply_endpoints(
        self: &Arc<Self>,
        listed: discovery::Listed,
    ) -> Result<(usize, usize), String> {
        let Endpoints::Dynamic(current) = &self.endpoints else {
            return Err("the cluster's endpoints are fixed".into());
        };
        let old = current.load_full();
        let mut fresh = Vec::new();
        let endpoints: Vec<Arc<Endpoint>> = listed
            .iter()
            .map(|m| match old.endpoints.iter().find(|e| e.addr == m.addr) {
                Some(e)
                    if e.weight == m.weight.max(1)
                        && e.name == m.name
                        && e.priority == m.priority =>
                {
                    e.clone()
                }
                kept => {
                    let e = Arc::new(Endpoint::new(&self.definition, &self.tls, m));
                    match kept {
                        Some(k) => e.take_state_of(k),
                        None => fresh.push(e.clone()),
                    }
                    e
                }
            })
            .collect();
        if self.health_check.is_some() && !fresh.is_empty() {
            health::probe_new(self, &fresh).await;
        }
        let set = EndpointSet::new(&self.definition, endpoints)?;
        let removed: Vec<Arc<Endpoint>> = old
            .endpoints
            .iter()
            .filter(|o| !set.endpoints.iter().any(|e| Arc::ptr_eq(e, o)))
            .cloned()
            .collect();
        let added = fresh.len();
        current.store(Arc::new(set));
        let n_removed = removed
            .iter()
            .filter(|o| !listed.iter().any(|m| m.addr == o.addr))
            .count();
        if let Ok(mut draining) = self.draining.lock() {
            draining.retain(|e| e.in_flight() > 0);
            draining.extend(removed.into_iter().filter(|e| e.in_flight() > 0));
        }
        Ok((added, n_removed))
    }

    /// Takes over the active health state of the endpoints `previous` (the cluster of the
    /// same name a reload replaces) has at the same address, so a changed cluster does not
    /// forget what it knew about the endpoints it keeps.
    pub fn inherit_health(&self, previous: &Cluster) {
        let before = previous.endpoints();
        for e in &self.endpoints() {
            let Some(old) = before.iter().find(|o| o.addr == e.addr) else {
                continue;
            };
            if previous.health_check.is_none() || self.health_check.is_none() {
                continue;
            }
            e.healthy.store(old.is_healthy(), Ordering::Relaxed);
            e.check_passes
                .store(old.check_passes.load(Ordering::Relaxed), Ordering::Relaxed);
            e.check_failures.store(
                old.check_failures.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            e.probed.store(true, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "not ejected".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Healthy, not ejected, its breaker would let a request through, and not full.
    fn available(&self, e: &Endpoint, now_ms: u64) -> bool {
        e.is_healthy()
            && !e.is_ejected(now_ms)
            && e.breaker.as_ref().is_none_or(|b| b.would_allow())
            && e.in_flight() < self.max_per_endpoint
    }

    /// How many endpoints would get traffic right now.
    pub fn available_count(&self) -> usize {
        let now = self.now_ms();
        self.with_set(|set| {
            set.endpoints
                .iter()
                .filter(|e| self.available(e, now))
                .count()
        })
    }

    /// Picks an endpoint for one attempt, avoiding the ones in `exclude` (already tried by
    /// this request) when another is available.
    pub fn select(
        &self,
        input: &HashInput<'_>,
        exclude: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, SelectError> {
        self.with_set(|set| self.select_in(set, input, exclude))
    }

    fn select_in(
        &self,
        set: &EndpointSet,
        input: &HashInput<'_>,
        exclude: &[Arc<Endpoint>],
    ) -> Result<Arc<Endpoint>, SelectError> {
        let now = self.now_ms();
        let endpoints = &set.endpoints;
        let usable = |i: usize| {
            let e = &endpoints[i];
            self.available(e, now) && !exclude.iter().any(|x| Arc::ptr_eq(x, e))
        };
        let picked = match &set.levels {
            Levels::One(balancer) => pick(balancer, endpoints, input, usable),
            // The lowest level with an available endpoint takes the traffic; the next one
            // only once every endpoint of the levels before it is down (Envoy's priority
            // levels, without spill-over by percentage).
            Levels::Tiers(tiers) => tiers
                .iter()
                .find(|t| t.range.clone().any(|i| self.available(&endpoints[i], now)))
                .and_then(|t| {
                    let start = t.range.start;
                    pick(&t.balancer, &endpoints[t.range.clone()], input, |i| {
                        usable(start + i)
                    })
                    .map(|i| start + i)
                }),
        };
        // Everything not yet tried is down: retrying on an endpoint already tried beats
        // failing the request.
        let picked = picked.or_else(|| {
            if exclude.is_empty() {
                None
            } else {
                (0..endpoints.len()).find(|&i| self.available(&endpoints[i], now))
            }
        });
        picked
            .map(|i| endpoints[i].clone())
            .ok_or(SelectError::NoHealthyEndpoint)
    }

    /// Starts an attempt on a selected endpoint: asks its breaker (which may have changed
    /// its mind since selection, or has no half-open probe left) and counts the attempt
    /// as in flight until [`Cluster::finish`]. `None` means pick another endpoint.
    pub fn start(&self, e: &Arc<Endpoint>) -> Option<Attempt> {
        let probe = match e.breaker.as_ref().map(CircuitBreaker::admit) {
            Some(Admission::Rejected { .. }) => return None,
            Some(Admission::Allowed { probe }) => probe,
            None => false,
        };
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Attempt {
            endpoint: e.clone(),
            probe,
            peer: Box::new(e.peer.clone()),
        })
    }

    /// Records the outcome of an attempt started with [`Cluster::start`] for passive outlier
    /// ejection.
    /// The endpoint may have left the set since: its state is still its own.
    pub fn finish(&self, e: &Endpoint, probe: bool, outcome: Outcome) {
        e.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(b) = &e.breaker {
            match outcome.success() {
                Some(success) => b.record(success, probe),
                None => b.cancel(probe),
            }
        }
        let o = &self.outlier;
        match outcome {
            Outcome::Response(status) if status >= 500 => {
                let n = e.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                if o.consecutive_5xx > 0 && n >= o.consecutive_5xx {
                    self.eject(e, "consecutive 5xx responses");
                }
            }
            Outcome::Response(_) => {
                e.consecutive_5xx.store(0, Ordering::Relaxed);
                e.consecutive_connect_failures.store(0, Ordering::Relaxed);
                // A good answer after an ejection ended: the endpoint has recovered.
                if e.ejected_until_ms.load(Ordering::Relaxed) != 0 && !e.is_ejected(self.now_ms()) {
                    e.ejected_until_ms.store(0, Ordering::Relaxed);
                    e.ejections.store(0, Ordering::Relaxed);
                }
            }
            Outcome::ConnectFailure => {
                let n = e
                    .consecutive_connect_failures
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if o.consecutive_connect_failures > 0 && n >= o.consecutive_connect_failures {
                    self.eject(e, "consecutive connect failures");
                }
            }
            Outcome::Failure | Outcome::Abandoned => {}
        }
    }

    fn eject(&self, e: &Endpoint, why: &str) {
        let now = self.now_ms();
        if e.is_ejected(now) {
            return;
        }
        // Keep the configured minimum: better a struggling endpoint than none at all.
        if self.available_count() <= self.outlier.min_healthy {
            return;
        }
        let times = e.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let base = self.outlier.base_ejection.as_millis() as u64;
        let length = base
            .saturating_mul(1u64 << times)
            .min(self.outlier.max_ejection.as_millis() as u64);
        e.ejected_until_ms.store(now + length, Ordering::Relaxed);
        e.consecutive_5xx.store(0, Ordering::Relaxed);
        e.consecutive_connect_failures.store(0, Ordering::Relaxed);
        log::warn!(
            "cluster {}: ejecting endpoint {} for {:?} after {why}",
            self.name,
            e.name,
            Duration::from_millis(length)
        );
    }

    /// The endpoints' state for the admin API and metrics.
    pub fn status(&self) -> ClusterStatus {
        let now = self.now_ms();
        let tiered = self.with_set(|set| matches!(set.levels, Levels::Tiers(_)));
        ClusterStatus {
            name: self.name.clone(),
            lb: self.definition.lb,
            protocol: self.definition.protocol,
            available: self.available_count(),
            breaker: self.breaker.as_ref().map(CircuitBreaker::state),
            bulkhead: self.bulkhead.as_ref().map(|b| BulkheadStatus {
                limit: b.limit(),
                in_flight: b.in_flight(),
                queued: b.queued(),
            }),
            retry_budget: self.retry_budget.usage(),
            discovery: self
                .discovery
                .as_ref()
                .and_then(|d| d.lock().ok().map(|d| d.clone())),
            draining: self
                .draining
                .lock()
                .map(|d| {
                    d.iter()
                        .filter(|e| e.in_flight() > 0)
                        .map(|e| DrainingStatus {
                            address: e.name.clone(),
                            in_flight: e.in_flight(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            endpoints: self
                .endpoints()
                .iter()
                .map(|e| EndpointStatus {
                    address: e.name.clone(),
                    addr: e.addr,
                    priority: tiered.then_some(e.priority),
                    label: e.label.clone(),
                    weight: e.weight,
                    healthy: e.is_healthy(),
                    ejected: e.is_ejected(now),
                    ejected_for_ms: e
                        .ejected_until_ms
                        .load(Ordering::Relaxed)
                        .saturating_sub(now)
                        .min(if e.is_ejected(now) { u64::MAX } else { 0 }),
                    in_flight: e.in_flight(),
                    breaker: e.breaker.as_ref().map(CircuitBreaker::state),
                })
                .collect(),
        }
    }
}

/// One attempt in progress on an endpoint.
pub struct Attempt {
    pub endpoint: Arc<Endpoint>,
    /// A half-open breaker probe: its outcome decides whether the breaker closes.
    pub probe: bool,
    pub peer: Box<HttpPeer>,
}

/// What happened to one attempt, for outlier detection and breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Response(u16),
    ConnectFailure,
    /// Timed out or the connection broke after connecting.
    Failure,
    /// Ended for a reason that says nothing about the upstream (the client left).
    Abandoned,
}

impl Outcome {
    /// Success or failure for a breaker; `None` when it should not count.
    pub fn success(self) -> Option<bool> {
        match self {
            Outcome::Response(status) => Some(status < 500),
            Outcome::ConnectFailure | Outcome::Failure => Some(false),
            Outcome::Abandoned => None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub lb: LbKind,
    pub protocol: config::UpstreamProtocol,
    pub available: usize,
    pub breaker: Option<BreakerState>,
    pub bulkhead: Option<BulkheadStatus>,
    pub retry_budget: budget::BudgetUsage,
    /// Where a discovered cluster's endpoints come from and how the last update went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// Endpoints discovery removed that still have requests in flight.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<DrainingStatus>,
}

#[derive(Debug, Serialize)]
pub struct DrainingStatus {
    pub address: String,
    pub in_flight: usize,
}

#[derive(Debug, Serialize)]
pub struct EndpointStatus {
    /// The address as written (for DNS discovery, the `host:port` or SRV target).
    pub address: String,
    /// The socket address connected to (what DNS resolved `address` to).
    pub addr: SocketAddr,
    /// Its priority level, when discovery gives several (SRV).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    /// [`Endpoint::label`], for metrics and the console's history.
    #[serde(skip)]
    pub label: String,
    pub weight: u32,
    pub healthy: bool,
    pub ejected: bool,
    pub ejected_for_ms: u64,
    pub in_flight: usize,
    pub breaker: Option<BreakerState>,
}

#[derive(Debug, Serialize)]
pub struct BulkheadStatus {
    pub limit: usize,
    pub in_flight: usize,
    pub queued: usize,
}

impl EndpointSet {
    /// The set and its balancer (a fresh round-robin cycle or hash ring), or one
    /// balancer per priority level when the endpoints have several.
    fn new(
        def: &config::Cluster,
        mut endpoints: Vec<Arc<Endpoint>>,
    ) -> Result<EndpointSet, String> {
        let tiered = endpoints
            .iter()
            .any(|e| e.priority != endpoints[0].priority);
        let levels = if tiered {
            endpoints.sort_by_key(|e| e.priority);
            let mut tiers = Vec::new();
            let mut start = 0;
            while start < endpoints.len() {
                let p = endpoints[start].priority;
                let end = start
                    + endpoints[start..]
                        .iter()
                        .take_while(|e| e.priority == p)
                        .count();
                tiers.push(Tier {
                    range: start..end,
                    balancer: Balancer::new(def, &endpoints[start..end])?,
                });
                start = end;
            }
            Levels::Tiers(tiers.into_boxed_slice())
        } else {
            Levels::One(Balancer::new(def, &endpoints)?)
        };
        Ok(EndpointSet { endpoints, levels })
    }
}

impl Balancer {
    fn new(def: &config::Cluster, endpoints: &[Arc<Endpoint>]) -> Result<Balancer, String> {
        Ok(match def.lb {
            LbKind::RoundRobin => Balancer::RoundRobin {
                cycle: smooth_weighted_cycle(endpoints),
                next: AtomicUsize::new(0),
            },
            LbKind::LeastRequest => Balancer::LeastRequest,
            LbKind::ConsistentHash => {
                let hash = def.hash.clone().ok_or("consistent_hash needs `hash`")?;
                let buckets: Vec<Bucket> = endpoints
                    .iter()
                    .map(|e| Bucket::new(e.addr, e.weight))
                    .collect();
                Balancer::ConsistentHash {
                    ring: Continuum::new(&buckets),
                    on: hash.by,
                    name: hash.name.unwrap_or_default().to_ascii_lowercase(),
                }
            }
        })
    }
}

/// One pick by `balancer` among `endpoints`, keeping to the ones `usable` accepts (by
/// index in `endpoints`).
#[inline]
fn pick(
    balancer: &Balancer,
    endpoints: &[Arc<Endpoint>],
    input: &HashInput<'_>,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    if endpoints.is_empty() {
        // DNS discovery that has not resolved yet.
        return None;
    }
    match balancer {
        Balancer::RoundRobin { cycle, next } => {
            let start = next.fetch_add(1, Ordering::Relaxed);
            (0..cycle.len())
                .map(|k| cycle[(start + k) % cycle.len()] as usize)
                .find(|&i| usable(i))
        }
        Balancer::LeastRequest => least_request(endpoints, &usable),
        Balancer::ConsistentHash { ring, on, name } => {
            let key = hash_key(*on, name, input);
            ring.node_iter(key.as_bytes())
                .take(ring_probe_limit(endpoints.len()))
                .filter_map(|addr| endpoints.iter().position(|e| e.addr == *addr))
                .find(|&i| usable(i))
        }
    }
}

/// Power of two choices among the usable endpoints, on in-flight requests per weight.
fn least_request(endpoints: &[Arc<Endpoint>], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
    let candidates: Vec<usize> = (0..endpoints.len()).filter(|&i| usable(i)).collect();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            use rand::Rng;
            let mut rng = rand::thread_rng();
            let a = candidates[rng.gen_range(0..n)];
            let mut b = candidates[rng.gen_range(0..n - 1)];
            if b == a {
                b = candidates[n - 1];
            }
            // Compare in_flight/weight without division: a_load * b_w vs b_load * a_w.
            let load = |i: usize| (endpoints[i].in_flight() + 1) as u64;
            let w = |i: usize| endpoints[i].weight as u64;
            Some(if load(a) * w(b) <= load(b) * w(a) {
                a
            } else {
                b
            })
        }
    }
}

/// Nginx's smooth weighted round robin, unrolled once into a cycle: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c, so no endpoint gets a burst.
fn smooth_weighted_cycle(endpoints: &[Arc<Endpoint>]) -> Vec<u32> {
    if endpoints.is_empty() {
        // DNS discovery that has not resolved yet: nothing to cycle over.
        return Vec::new();
    }
    let weights: Vec<i64> = endpoints.iter().map(|e| e.weight as i64).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| w / g).collect();
    let total: i64 = weights.iter().sum();
    // Bound the cycle for extreme weights; proportions stay right to within 1/4096.
    let len = total.clamp(1, 4096) as usize;
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// How far along the ring to look for an available endpoint before giving up: each
/// endpoint owns many ring points, so a few laps' worth covers every endpoint.
fn ring_probe_limit(endpoints: usize) -> usize {
    endpoints * 160 * 2
}

fn hash_key<'a>(on: HashBy, name: &str, input: &'a HashInput<'_>) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    match on {
        HashBy::ClientIp => {
            Cow::Owned(input.client_ip.map(|ip| ip.to_string()).unwrap_or_default())
        }
        HashBy::Header => Cow::Borrowed(
            input
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        ),
        HashBy::Cookie => Cow::Borrowed(
            input
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map_or("", |(_, v)| v),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(toml_text: &str) -> Cluster {
        let def: config::Cluster = toml::from_str(toml_text).unwrap();
        Cluster::build("test", &def).unwrap()
    }

    fn index_of(c: &Cluster, e: &Arc<Endpoint>) -> usize {
        c.endpoints()
            .iter()
            .position(|x| Arc::ptr_eq(x, e))
            .unwrap()
    }

    fn input(headers: &http::HeaderMap) -> HashInput<'_> {
        HashInput {
            client_ip: None,
            headers,
        }
    }

    #[test]
    fn weighted_round_robin_follows_weights_smoothly() {
        let c = cluster(
            r#"endpoints = [{ address = "127.0.0.1:1", weight = 3 }, { address = "127.0.0.1:2" }]"#,
        );
        let h = http::HeaderMap::new();
        let picks: Vec<usize> = (0..8)
            .map(|_| index_of(&c, &c.select(&input(&h), &[]).unwrap()))
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        // Never three of the heavy one in a row at the cycle's start and end.
        assert!(picks.windows(4).all(|w| w.contains(&1)));
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let c = cluster(
            r#"lb = "least_request"
            endpoints = [{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }]"#,
        );
        let first = c.endpoints()[0].clone();
        let _busy: Vec<_> = (0..10).map(|_| c.start(&first)).collect();
        let h = http::HeaderMap::new();
        for _ in 0..20 {
            assert_eq!(index_of(&c, &c.select(&input(&h), &[]).unwrap()), 1);
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_fails_over() {
        let c = cluster(
            r#"lb = "consistent_hash"
            hash = { by = "header", name = "X-User" }
            endpoints = [{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }, { address = "127.0.0.1:3" }]"#,
        );
        let mut h = http::HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        let first = index_of(&c, &c.select(&input(&h), &[]).unwrap());
        for _ in 0..10 {
            assert_eq!(index_of(&c, &c.select(&input(&h), &[]).unwrap()), first);
        }
        c.endpoints()[first].healthy.store(false, Ordering::Relaxed);
        let second = index_of(&c, &c.select(&input(&h), &[]).unwrap());
        assert_ne!(second, first);
    }

    #[test]
    fn ejection_respects_min_healthy_and_backs_off() {
        let c = cluster(
            r#"endpoints = [{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2" }]
            outlier = { consecutive_5xx = 2, min_healthy = 1, base_ejection = "10s", max_ejection = "1m", consecutive_connect_failures = 1 }"#,
        );
        let h = http::HeaderMap::new();
        let e = c.endpoints();
        for _ in 0..2 {
            c.start(&e[0]);
            c.finish(&e[0], false, Outcome::Response(503));
        }
        assert_eq!(c.available_count(), 1);
        // The last available endpoint is never ejected.
        c.start(&e[1]);
        c.finish(&e[1], false, Outcome::ConnectFailure);
        assert_eq!(c.available_count(), 1);
        assert_eq!(index_of(&c, &c.select(&input(&h), &[]).unwrap()), 1);
        assert!(c.status().endpoints[0].ejected);
    }

    #[test]
    fn a_changed_cluster_keeps_the_health_of_the_endpoints_it_keeps() {
        let hc = r#"health_check = { path = "/h", interval = "1s", timeout = "1s" }"#;
        let old = cluster(&format!(
            "endpoints = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"127.0.0.1:2\" }}]\n{hc}"
        ));
        old.endpoints()[0].healthy.store(false, Ordering::Relaxed);
        old.endpoints()[0]
            .check_failures
            .store(3, Ordering::Relaxed);
        let new = cluster(&format!(
            "endpoints = [{{ address = \"127.0.0.1:1\" }}, {{ address = \"127.0.0.1:3\" }}]\n{hc}"
        ));
        new.inherit_health(&old);
        assert!(!new.endpoints()[0].is_healthy());
        assert_eq!(new.endpoints()[0].check_failures.load(Ordering::Relaxed), 3);
        assert!(new.endpoints()[0].probed.load(Ordering::Relaxed));
        // A new endpoint has no history: its first probe will decide.
        assert!(!new.endpoints()[1].probed.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_discovery_update_keeps_staying_endpoints_and_drains_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("e.json");
        std::fs::write(
            &file,
            r#"[{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2"}]"#,
        )
        .unwrap();
        let c = Arc::new(cluster(&format!(
            "endpoints_file = {:?}",
            file.to_str().unwrap()
        )));
        assert!(c.is_dynamic());
        let before = c.endpoints();
        before[0].ejections.store(2, Ordering::Relaxed);
        let busy = c.start(&before[1]).unwrap();
        let listed = |a: &[(&str, u32)]| {
            a.iter()
                .map(|(s, w)| discovery::Member {
                    name: s.to_string(),
                    addr: s.parse().unwrap(),
                    weight: *w,
                    priority: 0,
                })
                .collect::<Vec<_>>()
        };
        let (added, removed) = c
            .apply_endpoints(listed(&[("127.0.0.1:1", 1), ("127.0.0.1:3", 1)]))
            .await
            .unwrap();
        assert_eq!((added, removed), (1, 1));
        let after = c.endpoints();
        assert!(
            Arc::ptr_eq(&after[0], &before[0]),
            "a staying endpoint is the same one"
        );
        assert_eq!(after[1].addr, "127.0.0.1:3".parse().unwrap());
        assert_eq!(c.status().draining.len(), 1);
        // The removed endpoint's attempt still finishes on it, and it leaves the list.
        c.finish(&busy.endpoint, false, Outcome::Response(200));
        assert!(c.status().draining.is_empty());
        // A new weight is a new endpoint with the old one's state.
        c.apply_endpoints(listed(&[("127.0.0.1:1", 5), ("127.0.0.1:3", 1)]))
            .await
            .unwrap();
        let reweighted = &c.endpoints()[0];
        assert_eq!(reweighted.weight, 5);
        assert_eq!(reweighted.ejections.load(Ordering::Relaxed), 2);
        let h = http::HeaderMap::new();
        let picks = (0..6)
            .filter(|_| index_of(&c, &c.select(&input(&h), &[]).unwrap()) == 0)
            .count();
        assert_eq!(picks, 5);
    }

    #[tokio::test]
    async fn priority_levels_take_traffic_lowest_first() {
        // A cluster as SRV discovery builds it: two levels, weights 3:1 in the first.
        let c = Arc::new(cluster(
            r#"endpoints = [{ address = "127.0.0.1:1" }]
            outlier = { consecutive_5xx = 1, min_healthy = 0 }"#,
        ));
        let member = |a: &str, weight: u32, priority: u16| discovery::Member {
            name: a.to_string(),
            addr: a.parse().unwrap(),
            weight,
            priority,
        };
        // Fixed endpoints cannot be replaced: build the set the way discovery does.
        let def = c.definition.clone();
        let set = EndpointSet::new(
            &def,
            [
                member("127.0.0.1:3", 5, 20),
                member("127.0.0.1:1", 3, 10),
                member("127.0.0.1:2", 1, 10),
            ]
            .iter()
            .map(|m| Arc::new(Endpoint::new(&def, &c.tls, m)))
            .collect(),
        )
        .unwrap();
        assert!(matches!(set.levels, Levels::Tiers(_)));
        let h = http::HeaderMap::new();
        let pick = |set: &EndpointSet| c.select_in(set, &input(&h), &[]).map(|e| e.addr.port());
        let picks: Vec<u16> = (0..8).map(|_| pick(&set).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 6, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&p| p == 2).count(), 2, "{picks:?}");
        // One endpoint of the first level down: the other takes it all.
        set.endpoints[0].healthy.store(false, Ordering::Relaxed);
        assert!((0..4).all(|_| pick(&set) == Ok(2)));
        // The whole first level down: the next level.
        set.endpoints[1].healthy.store(false, Ordering::Relaxed);
        assert!((0..4).all(|_| pick(&set) == Ok(3)));
        // A retry that already tried the only available endpoint gets it again.
        let only = set.endpoints[2].clone();
        assert_eq!(
            c.select_in(&set, &input(&h), std::slice::from_ref(&only))
                .map(|e| e.addr.port()),
            Ok(3)
        );
        // An empty set (DNS not resolved yet) selects nothing, without a panic.
        let empty = EndpointSet::new(&def, Vec::new()).unwrap();
        assert_eq!(pick(&empty), Err(SelectError::NoHealthyEndpoint));
    }

    #[test]
    fn no_available_endpoint_is_an_error() {
        let c = cluster(r#"endpoints = [{ address = "127.0.0.1:1" }]"#);
        c.endpoints()[0].healthy.store(false, Ordering::Relaxed);
        let h = http::HeaderMap::new();
        assert!(matches!(
            c.select(&input(&h), &[]),
            Err(SelectError::NoHealthyEndpoint)
        ));
    }
}
