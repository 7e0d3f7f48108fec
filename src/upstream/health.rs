//! Active health checking: every interval, probe each endpoint of a cluster with an HTTP
//! request (Pingora's `HttpHealthCheck` does the probe) or, with `kind = "grpc"`, a call of
//! the gRPC health protocol (`grpc.health.v1.Health/Check` over the cluster's HTTP/2, made
//! here on Pingora's HTTP/2 connector: `SERVING` passes), and flip the endpoint's health
//! after the configured number of consecutive passes or failures.
//!
//! Endpoints start healthy, so a starting gateway serves at once. For a cluster a config
//! reload adds or changes, the first round is decisive for the endpoints without a history
//! (the ones it keeps inherit their health from the cluster it replaces): an endpoint that
//! fails its very first probe starts unhealthy, and the reload waits for that round, so
//! new endpoints take traffic only once a probe passed.
//!
//! The checking task follows the cluster's endpoint set round by round, so endpoints that
//! discovery adds are checked and removed ones no longer are. Discovery probes the
//! endpoints it adds once before they join the set ([`probe_new`]), so they take traffic
//! only once a probe passed.
//!
//! The checking task holds only a weak reference to its cluster, so it ends by itself
//! when a config reload drops the cluster.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::{HealthCheck as _, HttpHealthCheck};
use pingora_load_balancing::Backend;

use crate::config::HealthCheckKind;

use super::{Cluster, Endpoint};

/// Completes when a cluster's first probe round is over.
pub struct FirstRound {
    done: tokio::sync::oneshot::Receiver<()>,
    /// The longest the round can take: each probe is cut at twice the check timeout.
    bound: Duration,
}

impl FirstRound {
    /// Waits for the round, at most its bound; false when it did not finish in time.
    pub async fn wait(self) -> bool {
        matches!(
            tokio::time::timeout(self.bound, self.done).await,
            Ok(Ok(()))
        )
    }
}

/// Starts the checking task of a cluster that has `health_check` configured (needs a
/// Tokio runtime) and returns its first round. With `decisive_first`, the first probe of
/// an endpoint without a health history sets its health directly. Does nothing for
/// clusters without checks.
pub fn spawn_health_checks(cluster: &Arc<Cluster>, decisive_first: bool) -> Option<FirstRound> {
    let spec = cluster.health_check.clone()?;
    let weak: Weak<Cluster> = Arc::downgrade(cluster);
    let name = cluster.name.clone();
    let (first_done, done) = tokio::sync::oneshot::channel();
    let bound = spec.timeout * 2 + Duration::from_millis(250);
    tokio::spawn(async move {
        let mut first_done = Some(first_done);
        // One probe per endpoint, kept while the endpoint stays in the set (discovery
        // can change the set between rounds).
        let mut probes: HashMap<usize, Probe> = HashMap::new();
        let mut tick = tokio::time::interval(spec.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(cluster) = weak.upgrade() else {
                log::debug!("cluster {name}: stopping health checks");
                return;
            };
            let endpoints = cluster.endpoints();
            probes.retain(|k, _| endpoints.iter().any(|e| Arc::as_ptr(e) as usize == *k));
            for e in &endpoints {
                probes
                    .entry(Arc::as_ptr(e) as usize)
                    .or_insert_with(|| Probe::new(&cluster, e));
            }
            drop(cluster);
            let (name, spec) = (&name, &spec);
            // Probe concurrently, so one slow endpoint does not delay the others.
            let round = probes.values().map(|probe| async move {
                let passed = probe.run(spec.timeout).await;
                let endpoint = &probe.endpoint;
                let fresh = !endpoint.probed.swap(true, Ordering::Relaxed);
                if decisive_first && fresh {
                    record_first(name, endpoint, passed);
                } else {
                    record(
                        name,
                        endpoint,
                        passed,
                        spec.healthy_threshold,
                        spec.unhealthy_threshold,
                    );
                }
            });
            futures::future::join_all(round).await;
            if let Some(done) = first_done.take() {
                let _ = done.send(());
            }
        }
    });
    Some(FirstRound { done, bound })
}

/// Probes endpoints discovery is adding, once each and concurrently, before they join the
/// set: each starts healthy only if its probe passed (the regular checks take it from there).
pub(super) async fn probe_new(cluster: &Cluster, fresh: &[Arc<Endpoint>]) {
    let Some(spec) = cluster.health_check.clone() else {
        return;
    };
    let round = fresh.iter().map(|e| {
        let probe = Probe::new(cluster, e);
        let timeout = spec.timeout;
        let name = cluster.name.as_str();
        async move {
            let passed = probe.run(timeout).await;
            e.probed.store(true, Ordering::Relaxed);
            e.healthy.store(passed, Ordering::Relaxed);
            e.check_passes.store(u32::from(passed), Ordering::Relaxed);
            e.check_failures.store(u32::from(!passed), Ordering::Relaxed);
            if !passed {
                log::warn!(
                    "cluster {name}: new endpoint {} failed its first health check; no traffic until it passes",
                    e.name
                );
            }
        }
    });
    futures::future::join_all(round).await;
}

/// One endpoint's health probe.
struct Probe {
    endpoint: Arc<Endpoint>,
    kind: ProbeKind,
}

enum ProbeKind {
    /// Pingora's HTTP check and the backend it probes.
    Http {
        check: Box<HttpHealthCheck>,
        backend: Backend,
    },
    Grpc(Box<GrpcCheck>),
}

impl Probe {
    fn new(cluster: &Cluster, e: &Arc<Endpoint>) -> Probe {
        let spec = cluster
            .health_check
            .as_ref()
            .expect("probes are made for clusters with health checks");
        let host = spec.host.clone().unwrap_or_else(|| e.name.clone());
        if spec.kind == HealthCheckKind::Grpc {
            return Probe {
                endpoint: e.clone(),
                kind: ProbeKind::Grpc(Box::new(GrpcCheck::new(e, spec, host))),
            };
        }
        let mut check = HttpHealthCheck::new(&host, cluster.definition.tls);
        if let Some(sni) = &cluster.definition.sni {
            check.peer_template.sni = sni.clone();
        }
        cluster.tls.apply(&mut check.peer_template);
        check.peer_template.options.connection_timeout = Some(spec.timeout);
        check.peer_template.options.read_timeout = Some(spec.timeout);
        check.peer_template.options.total_connection_timeout = Some(spec.timeout);
        // A fresh connection every time: a pooled one can hide a dead listener.
        check.reuse_connection = false;
        if let Ok(mut req) = pingora_http::RequestHeader::build("GET", spec.path.as_bytes(), None) {
            let _ = req.insert_header("Host", host.as_str());
            let _ = req.insert_header("User-Agent", "portico-health-check");
            check.req = req;
        }
        let expected = spec.expected_status.clone();
        check.validator = Some(Box::new(move |resp| {
            if expected.contains(&resp.status.as_u16()) {
                Ok(())
            } else {
                pingora_error::Error::e_explain(
                    pingora_error::ErrorType::CustomCode(
                        "unexpected health status",
                        resp.status.as_u16(),
                    ),
                    format!("status {}", resp.status),
                )
            }
        }));
        let backend = Backend {
            addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(e.addr),
            weight: e.weight as usize,
            ext: Default::default(),
        };
        Probe {
            endpoint: e.clone(),
            kind: ProbeKind::Http {
                check: Box::new(check),
                backend,
            },
        }
    }

    /// One probe, cut at twice the check timeout; true when it passed.
    async fn run(&self, timeout: Duration) -> bool {
        match &self.kind {
            ProbeKind::Http { check, backend } => {
                tokio::time::timeout(timeout * 2, check.check(backend))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false)
            }
            ProbeKind::Grpc(check) => match tokio::time::timeout(timeout * 2, check.call()).await {
                Ok(Ok(())) => true,
                Ok(Err(why)) => {
                    log::debug!("gRPC health check of {}: {why}", self.endpoint.name);
                    false
                }
                Err(_) => false,
            },
        }
    }
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; `status` 1 is `SERVING`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;

/// The longest health answer read: the real one is a few bytes.
const MAX_HEALTH_ANSWER: usize = 4096;

/// A gRPC health check of one endpoint: a fresh HTTP/2 connection per probe (a pooled one
/// can hide a dead listener), speaking `h2` or `h2c` as the cluster does.
struct GrpcCheck {
    connector: pingora_core::connectors::http::v2::Connector,
    peer: HttpPeer,
    authority: String,
    /// The request message, framed once (the body is the same every time).
    body: Bytes,
}

impl GrpcCheck {
    fn new(e: &Arc<Endpoint>, spec: &crate::config::HealthCheck, authority: String) -> GrpcCheck {
        let mut peer = e.peer.clone();
        let o = &mut peer.options;
        o.connection_timeout = Some(spec.timeout);
        o.total_connection_timeout = Some(spec.timeout);
        o.read_timeout = Some(spec.timeout);
        o.write_timeout = Some(spec.timeout);
        // One stream: the connection is not pooled, and closes when the probe drops it.
        o.max_h2_streams = 1;
        let message = HealthCheckRequest {
            service: spec.service.clone().unwrap_or_default(),
        };
        let encoded = prost::Message::encode_to_vec(&message);
        let mut body = BytesMut::with_capacity(5 + encoded.len());
        body.put_u8(0);
        body.put_u32(encoded.len() as u32);
        body.put_slice(&encoded);
        GrpcCheck {
            connector: pingora_core::connectors::http::v2::Connector::new(None),
            peer,
            authority,
            body: body.freeze(),
        }
    }

    /// One `Check` call: passes on `SERVING` with `grpc-status` 0.
    async fn call(&self) -> Result<(), String> {
        let session = self
            .connector
            .new_http_session::<_, ()>(&self.peer)
            .await
            .map_err(|e| e.to_string())?;
        let HttpSession::H2(mut h2) = session else {
            return Err("the endpoint did not speak HTTP/2".into());
        };
        let mut req =
            pingora_http::RequestHeader::build("POST", b"/grpc.health.v1.Health/Check", None)
                .map_err(|e| e.to_string())?;
        for (name, value) in [
            ("host", self.authority.as_str()),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "portico-health-check"),
        ] {
            req.insert_header(name, value).map_err(|e| e.to_string())?;
        }
        h2.write_request_header(Box::new(req), false)
            .map_err(|e| e.to_string())?;
        h2.write_request_body(self.body.clone(), true)
            .await
            .map_err(|e| e.to_string())?;
        h2.read_response_header().await.map_err(|e| e.to_string())?;
        let header = h2.response_header().ok_or("no response header")?;
        if header.status != 200 {
            return Err(format!("HTTP status {}", header.status));
        }
        // A trailers-only answer carries its status in the header: never SERVING.
        if let Some(code) = crate::proxy::grpc::status_of(&header.headers) {
            return Err(format!("grpc-status {code}"));
        }
        let mut answer = BytesMut::new();
        while let Some(chunk) = h2.read_response_body().await.map_err(|e| e.to_string())? {
            if answer.len() + chunk.len() > MAX_HEALTH_ANSWER {
                return Err("answer too long".into());
            }
            answer.extend_from_slice(&chunk);
        }
        let trailers = h2.read_trailers().await.map_err(|e| e.to_string())?;
        match trailers.as_ref().and_then(crate::proxy::grpc::status_of) {
            Some(0) => {}
            Some(code) => return Err(format!("grpc-status {code}")),
            None => return Err("no grpc-status".into()),
        }
        let status = serving_status(&answer)?;
        if status == SERVING {
            Ok(())
        } else {
            Err(format!("serving status {status}"))
        }
    }
}

/// The serving status in one length-prefixed, uncompressed gRPC message.
fn serving_status(answer: &[u8]) -> Result<i32, String> {
    let [0, a, b, c, d, message @ ..] = answer else {
        return Err("not one uncompressed gRPC message".into());
    };
    if u32::from_be_bytes([*a, *b, *c, *d]) as usize != message.len() {
        return Err("not one uncompressed gRPC message".into());
    }
    let response: HealthCheckResponse =
        prost::Message::decode(message).map_err(|e| format!("bad answer: {e}"))?;
    Ok(response.status)
}

/// The first probe of an endpoint sets its health directly.
fn record_first(cluster: &str, e: &Endpoint, passed: bool) {
    if passed {
        e.check_passes.store(1, Ordering::Relaxed);
        e.check_failures.store(0, Ordering::Relaxed);
    } else {
        e.check_passes.store(0, Ordering::Relaxed);
        e.check_failures.store(1, Ordering::Relaxed);
        if e.healthy.swap(false, Ordering::Relaxed) {
            log::warn!(
                "cluster {cluster}: endpoint {} failed its first health check; no traffic until it passes",
                e.name
            );
        }
    }
}

/// Applies one probe result with hysteresis: health flips only after `healthy` passes or
/// `unhealthy` failures in a row.
fn record(cluster: &str, e: &Endpoint, passed: bool, healthy: u32, unhealthy: u32) {
    if passed {
        e.check_failures.store(0, Ordering::Relaxed);
        let n = e.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
        if !e.is_healthy() && n >= healthy {
            e.healthy.store(true, Ordering::Relaxed);
            log::info!("cluster {cluster}: endpoint {} is healthy again", e.name);
        }
    } else {
        e.check_passes.store(0, Ordering::Relaxed);
        let n = e.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if e.is_healthy() && n >= unhealthy {
            e.healthy.store(false, Ordering::Relaxed);
            log::warn!(
                "cluster {cluster}: endpoint {} failed {n} health checks",
                e.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(status: i32) -> Vec<u8> {
        let msg = prost::Message::encode_to_vec(&HealthCheckResponse { status });
        let mut out = vec![0];
        out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        out.extend_from_slice(&msg);
        out
    }

    #[test]
    fn serving_status_reads_one_framed_message() {
        assert_eq!(serving_status(&framed(1)), Ok(1));
        assert_eq!(serving_status(&framed(2)), Ok(2));
        let mut compressed = framed(1);
        compressed[0] = 1;
        assert!(serving_status(&compressed).is_err());
        let mut long = framed(1);
        long.push(0);
        assert!(serving_status(&long).is_err());
        assert!(serving_status(&[0, 0]).is_err());
    }
}
