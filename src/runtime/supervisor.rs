//! The background service that runs beside the listeners: starts active health checks,
//! declares the gateway ready once its listeners accept connections, and reloads the
//! config on SIGHUP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::State;

pub struct Supervisor {
    state: Arc<State>,
    /// Addresses that must accept connections before `/readyz` says ready.
    listeners: Vec<SocketAddr>,
}

impl Supervisor {
    pub fn new(state: Arc<State>, listeners: Vec<SocketAddr>) -> Supervisor {
        Supervisor { state, listeners }
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for cluster in self.state.snapshot().clusters.values() {
            crate::upstream::spawn_health_checks(cluster);
        }
        wait_for_listeners(&self.listeners).await;
        self.state.set_ready(true);
        log::info!("portico is ready");

        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot watch SIGHUP, reload only through the admin API: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    log::info!("SIGHUP: reloading config");
                    let _ = super::reload(&self.state);
                }
            }
        }
        self.state.set_ready(false);
    }
}

/// Waits until every listener accepts a TCP connection (they are bound by Pingora's own
/// services, which start concurrently with this one).
async fn wait_for_listeners(addrs: &[SocketAddr]) {
    for addr in addrs {
        let target = match addr.ip() {
            ip if ip.is_unspecified() && addr.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
            }
            _ => *addr,
        };
        loop {
            if tokio::net::TcpStream::connect(target).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
