//! Assembling and running the Pingora server: process settings from the config, the proxy
//! service on every listener (TLS ones with certificates a reload can change), the admin
//! API, and the supervisor.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{
    RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, UnixShutdownSignalWatch,
};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use super::supervisor::Supervisor;
use super::tls::ListenerTlsState;
use super::{Snapshot, State};
use crate::admin::AdminApi;
use crate::config::Config;
use crate::proxy::connection::Connections;
use crate::proxy::handshake::HelloDeadline;
use crate::proxy::Gateway;

/// Pingora's own process options, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Take the listening sockets over from a running old process.
    pub upgrade: bool,
    pub daemon: bool,
    /// Build everything, then exit without serving.
    pub test: bool,
}

/// Makes a path absolute against the current directory: daemonizing changes directory
/// to `/`, and reloads read the config path again later.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Builds the server for a validated config. `config_path` enables reloads.
pub fn build(
    config: Config,
    config_path: Option<PathBuf>,
    options: &ProcessOptions,
) -> Result<(Server, Arc<State>), String> {
    let section = &config.server;
    let pid_file = absolute(Path::new(&section.pid_file));
    let upgrade_sock = absolute(Path::new(&section.upgrade_sock));
    // Before Pingora writes the pid file or binds the upgrade socket (see runtime::dirs).
    super::dirs::prepare(&[&pid_file, &upgrade_sock], section.user.as_deref())?;
    let mut conf = ServerConf {
        daemon: options.daemon,
        // A daemon keeps the directory it was started in (Pingora would move to `/`), so
        // relative paths in the config mean the same before and after daemonizing, and in
        // every reload.
        working_directory: std::env::current_dir().ok(),
        pid_file: pid_file.display().to_string(),
        upgrade_sock: upgrade_sock.display().to_string(),
        user: section.user.clone(),
        group: section.group.clone(),
        threads: section.threads,
        work_stealing: section.work_stealing,
        grace_period_seconds: Some(section.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(section.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: section.upstream_keepalive_pool_size,
        ..ServerConf::default()
    };
    conf.version = 1;
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        nocapture: false,
        test: options.test,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let phases = server.watch_execution_phase();

    let listeners = config.listeners.clone();
    let admin_address = config.admin.address.clone();
    let metrics_address = config.admin.metrics_address.clone();
    let mut tls_states = Vec::new();
    for l in &listeners {
        if let Some(tls) = &l.tls {
            let tls_state = ListenerTlsState::new(&l.address, tls)
                .map_err(|e| format!("listener {}: {e}", l.address))?;
            tls_states.push(Arc::new(tls_state));
        }
    }
    let snapshot = Snapshot::build(config, None)?;
    // Created now, so its series are on /metrics from the start.
    crate::cache::store::configure(snapshot.config.cache.limits());
    let config_path = config_path.map(|p| absolute(&p));
    // What the file watch compares against (read again: `config` came from the caller).
    let file_hash = config_path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| super::content_hash(&b));
    let state = State::new(snapshot, config_path);
    state.set_file_hash(file_hash);
    state.set_listeners(
        listeners.clone(),
        (admin_address.clone(), metrics_address.clone()),
        tls_states.clone(),
    );
    // After the snapshot, so `--test` (which exits inside bootstrap) has built everything;
    // with `--upgrade` this is where the old process's listening sockets are received.
    server.bootstrap();

    let mut proxy = pingora_proxy::http_proxy(&server.configuration, Gateway::new(state.clone()));
    // HTTP/2 in the clear reaches Pingora's loop only from `h2c` listeners, and only for
    // connections that opened with the preface (`proxy::connection`); the option lets that
    // loop take them.
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2c = true;
    proxy.server_options = Some(options);
    let mut proxy = Service::new(
        "portico proxy".to_string(),
        Connections::new(proxy, state.clone(), &listeners),
    );
    let mut bound: Vec<SocketAddr> = Vec::new();
    for l in &listeners {
        // No transport buffers under the client connections. Each would hold a 64 KiB read
        // buffer (Pingora's default), which only added a copy: the request header is read
        // into the session's buffer anyway. And each idle connection would hold a write
        // buffer: HTTP/1 connections gather a response's writes above TLS instead, in a
        // buffer that lives only while the response is written (`proxy::response_buffer`);
        // HTTP/2's codec and rustls's handshake flights gather their own.
        let mut endpoint =
            ListenerConfig::tcp(l.address.as_str()).l4_buffer(L4BufferSettings::unbuffered());
        if let Some(tls) = tls_states.iter().find(|t| t.address == l.address) {
            endpoint = endpoint.tls(
                tls.settings()
                    .map_err(|e| format!("listener {}: {e}", l.address))?,
            );
        }
        proxy.add_listener(endpoint);
        if let Ok(addr) = l.address.parse() {
            bound.push(addr);
        }
    }
    if !tls_states.is_empty() {
        let proxy_tls = listeners
            .iter()
            .filter(|l| l.proxy_protocol && l.tls.is_some())
            .filter_map(|l| l.address.parse().ok())
            .collect();
        // Only TLS listeners run it: the first byte and the ClientHello under `[limits]`.
        proxy
            .endpoints()
            .set_pre_tls_callback(HelloDeadline::new(state.clone(), proxy_tls));
    }
    server.add_service(super::notify::WatchdogFed::new(
        proxy,
        state.clone(),
        state.snapshot().config.server.threads,
    ));

    let mut admin = Service::new("portico admin".to_string(), AdminApi::new(state.clone()));
    admin.add_tcp(&admin_address);
    server.add_service(admin);
    if let Some(address) = &metrics_address {
        let mut metrics = Service::new(
            "portico metrics".to_string(),
            AdminApi::metrics_only(state.clone()),
        );
        metrics.add_tcp(address);
        server.add_service(metrics);
    }

    server.add_service(background_service(
        "portico supervisor",
        Supervisor::new(state.clone(), bound, phases),
    ));
    Ok((server, state))
}

/// Runs the server until a shutdown signal (SIGTERM graceful, SIGINT fast, SIGQUIT
/// graceful upgrade hand-off). A graceful stop usually ends inside the supervisor once the
/// requests in flight are done; whatever way Pingora returns, the access log is flushed.
pub fn run(server: Server) {
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    crate::observe::access_log::flush_all(std::time::Duration::from_secs(2));
}

/// Pingora's shutdown signals, except that SIGINT exits here rather than through Pingora's
/// fast shutdown: under load that path stops the proxy's runtime while its accept loop keeps
/// polling, which then fails on every turn ("A Tokio 1.x context was found, but it is being
/// shutdown") and logs each failure, hundreds of thousands of lines a second, without ever
/// exiting.
struct Signals;

#[async_trait::async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for shutdown signals; using Pingora's own");
            return UnixShutdownSignalWatch.recv().await;
        };
        tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => {
                log::info!("SIGINT: exiting now, requests in flight are cut");
                crate::observe::access_log::flush_all(std::time::Duration::from_secs(1));
                std::process::exit(0)
            }
        }
    }
}
