//! A reference point for `benches/load/run.sh`: the smallest Pingora proxy there is (one
//! fixed upstream, no routing, no plugins, no metrics, no headers added), built with the
//! same Pingora, allocator and release profile as portico. Its throughput is the ceiling
//! portico's own per-request work is measured against: portico ÷ bare is what portico
//! costs, bare ÷ nginx is what Pingora costs.
//!
//! `cargo build --release --bench bare_pingora`, then
//! `bare_pingora LISTEN UPSTREAM [THREADS] [WORK_STEALING] [POOL_SIZE]`, with
//! `PORTICO_BENCH_L4_READ=<bytes>` to change the client connections' transport read buffer,
//! and `PORTICO_BENCH_TLS_CERT=<pem> PORTICO_BENCH_TLS_KEY=<pem>` to terminate TLS on the
//! listener (rustls, Pingora's intermediate settings: contender "pingora+tls").
//!
//! With `PORTICO_BENCH_DUTIES=1` it also makes the Pingora calls every portico request needs
//! whatever its routes say (contender "pingora+duties" of `benches/load/run.sh`): the
//! client's body, send and keep-alive deadlines on the session, the cluster's connect, read,
//! write and idle timeouts on the peer, and the four headers portico adds upstream
//! (`X-Forwarded-For`, `-Proto`, `-Host` and `traceparent`), each through Pingora's header
//! API as portico does. What it costs against the plain reference is what Pingora charges
//! for those duties; portico against it is what portico's own work costs.
//!
//! Run by `cargo bench` (which passes `--bench`) it only says what it is for and exits.

use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};

/// The binary's allocator and its tuning, exactly as portico's. Its after-fork service is
/// for a daemonized portico; this never daemonizes, so that part goes unused here.
#[path = "../src/allocator.rs"]
#[allow(dead_code)]
mod allocator;

struct Bare {
    upstream: String,
    /// `PORTICO_BENCH_DUTIES=1`: make the calls portico's every request makes.
    duties: bool,
}

/// portico's defaults: `[limits] body_timeout`/`send_timeout` and a cluster's `timeouts`.
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
/// `[limits] keepalive_timeout`: how long an idle client connection is kept.
const KEEPALIVE_SECS: u64 = 60;
const CONNECT: Duration = Duration::from_secs(1);
const UPSTREAM_IO: Duration = Duration::from_secs(30);
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if self.duties {
            session.set_read_timeout(Some(CLIENT_DEADLINE));
            session.set_write_timeout(Some(CLIENT_DEADLINE));
            session.set_keepalive(Some(KEEPALIVE_SECS));
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        if self.duties {
            peer.options.connection_timeout = Some(CONNECT);
            peer.options.read_timeout = Some(UPSTREAM_IO);
            peer.options.write_timeout = Some(UPSTREAM_IO);
            peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if self.duties {
            let client = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            upstream.insert_header("x-forwarded-for", client)?;
            upstream.insert_header("x-forwarded-proto", "http")?;
            if let Some(host) = upstream.headers.get(http::header::HOST).cloned() {
                upstream.insert_header("x-forwarded-host", host)?;
            }
            upstream.insert_header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )?;
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a.starts_with("--")) {
        println!(
            "bare_pingora: the reference proxy of benches/load/run.sh (contender \"pingora\"); \
             usage: bare_pingora LISTEN UPSTREAM [THREADS] [WORK_STEALING] [POOL_SIZE]"
        );
        return;
    }
    let arg = |i: usize| args.get(i).map(String::as_str);
    let conf = ServerConf {
        threads: arg(2).and_then(|t| t.parse().ok()).unwrap_or(1),
        // portico's default: one runtime per thread.
        work_stealing: arg(3) == Some("true"),
        upstream_keepalive_pool_size: arg(4).and_then(|p| p.parse().ok()).unwrap_or(1024),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args[1].clone(),
            duties: std::env::var("PORTICO_BENCH_DUTIES").is_ok_and(|v| v == "1"),
        },
    );
    let mut endpoint = ListenerConfig::tcp(args[0].as_str());
    // PORTICO_BENCH_L4_READ=<bytes>: the client connections' transport read buffer
    // (Pingora's default is 64 KiB), to measure what it costs an idle connection.
    if let Some(read) = std::env::var("PORTICO_BENCH_L4_READ")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        endpoint = endpoint.l4_buffer(L4BufferSettings::default().read(read));
    }
    if let (Ok(cert), Ok(key)) = (
        std::env::var("PORTICO_BENCH_TLS_CERT"),
        std::env::var("PORTICO_BENCH_TLS_KEY"),
    ) {
        match TlsSettings::intermediate(&cert, &key) {
            Ok(tls) => endpoint = endpoint.tls(tls),
            Err(e) => {
                eprintln!("bare_pingora: TLS certificate {cert} or key {key}: {e}");
                std::process::exit(2);
            }
        }
    }
    proxy.add_listener(endpoint);
    server.add_service(proxy);
    server.run_forever();
}
