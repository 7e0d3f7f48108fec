//! The integration-test harness, shared by every test file (`mod common;`):
//!
//! - [`gateway`]: the real `portico` binary started as a subprocess on free loopback ports,
//!   with a builder for its routes and clusters;
//! - [`upstream`]: in-test upstreams whose behaviour the test controls (recording, slow,
//!   failing, resetting, or any handler);
//! - [`count`]: request-and-count loops, response and metric readers;
//! - [`raw`]: a raw HTTP/1.1 client;
//! - [`tokens`]: JWTs and credentials;
//! - [`token_service`]: portico's own token service, started in-process;
//! - [`postgres`]: a schema of the test's own on the machine's PostgreSQL.
//!
//! A test reads as set-up, action, assertions:
//!
//! ```ignore
//! let up = Upstream::start("a").await;
//! let gw = Gateway::config()
//!     .route_with("all", "/", "c", "retry = { attempts = 3 }")
//!     .cluster("c", &[&up])
//!     .start()
//!     .await;
//! let counts = send_and_count(&gw, "/x", 10).await;
//! assert_eq!(counts.status(200), 10);
//! ```
//!
//! Nothing here sleeps for a fixed time to wait for a condition: [`eventually`] polls with
//! a deadline, and every network call has its own timeout, so a broken gateway makes a
//! test fail quickly with a message instead of hanging.

#![allow(dead_code, unused_imports)]

pub mod count;
pub mod gateway;
pub mod postgres;
pub mod raw;
pub mod token_service;
pub mod tokens;
pub mod traffic;
pub mod upstream;

pub use count::*;
pub use gateway::*;
pub use raw::*;
pub use tokens::*;
pub use traffic::Traffic;
pub use upstream::*;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Path of the portico binary built for this test run.
pub const PORTICO: &str = env!("CARGO_BIN_EXE_portico");

/// Upper bound of a whole test body (see [`bounded`]).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(40);

/// Timeout of one HTTP exchange made by the helpers here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a test body with an overall deadline, so a hang fails the test instead of the suite.
pub async fn bounded<T>(body: impl Future<Output = T>) -> T {
    bounded_by(TEST_TIMEOUT, body).await
}

/// [`bounded`] with another deadline.
pub async fn bounded_by<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// A free loopback address: a port that binds now, released for the caller to bind.
///
/// The port is taken below the kernel's ephemeral range (`ip_local_port_range`), from a
/// per-process sequence: a port from `bind(0)` could be handed out again, between its
/// release here and the gateway binding it, to an in-test [`Upstream`] (which binds port
/// 0) or to a client socket of a test running in parallel. The gateway would then report
/// ready (something accepts on its address) while Pingora retries the bind, and the test
/// would talk to another test's upstream. Falls back to `bind(0)` when no such port is
/// free.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    const FIRST: usize = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > FIRST + 1_000 {
        let span = ephemeral_low - FIRST;
        // Start each test process at its own offset so parallel processes rarely overlap.
        let _ = NEXT.compare_exchange(
            usize::MAX,
            (std::process::id() as usize).wrapping_mul(7_919) % span,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        for _ in 0..span {
            let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % span;
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
                if let Ok(addr) = listener.local_addr() {
                    return addr;
                }
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
}

/// Polls `check` every 20 ms until it returns true; panics with `what` after `timeout`.
/// Returns how long it took.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
