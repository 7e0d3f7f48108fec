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
//! Run by `cargo bench` (which passes `--bench`) it only says what it is for and exits.

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_proxy::{ProxyHttp, Session};

/// The binary's allocator and its tuning, exactly as portico's. Its after-fork service is
/// for a daemonized portico; this never daemonizes, so that part goes unused here.
#[path = "../src/allocator.rs"]
#[allow(dead_code)]
mod allocator;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
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
