//! Serving the token service over HTTP/1.1 with hyper: keep-alive connections, a bound on
//! open connections and on request bodies, a header-read timeout, and a graceful stop that
//! lets requests in flight finish.
//!
//! hyper rather than a Pingora `Server` because the service must also run inside other
//! processes (`portico demo`, tests) on an ephemeral port, and a Pingora server owns its
//! process's signals and never returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::config::AuthConfig;
use super::keys::{KeyManager, KeyPolicy};
use super::oauth::{Reply, Request, TokenService};
use super::store::Store;

/// Largest request body read (token requests are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A started token service.
pub struct Running {
    pub addr: SocketAddr,
    pub issuer: String,
    pub service: Arc<TokenService>,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (bounded), and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.refresher.abort();
        let _ = self.accept.await;
    }
}

/// Opens the database, loads or creates the signing keys, binds `listen` and serves on
/// the current tokio runtime.
pub async fn start(config: &AuthConfig) -> Result<Running, String> {
    let db = config.database()?;
    let store = Store::open(&db).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let issuer = config.issuer_for(addr);
    let keys = KeyManager::start(store.clone(), KeyPolicy::from_config(config)).await?;
    let service = Arc::new(TokenService::new(
        config,
        issuer.clone(),
        store,
        keys.clone(),
    )?);
    let refresher = tokio::spawn(keys.run());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(
        listener,
        service.clone(),
        config.max_connections,
        shutdown_rx,
    ));
    log::info!(
        "{}",
        json!({
            "event": "token_service_started",
            "listen": addr.to_string(),
            "issuer": issuer,
            "database": match db { super::config::Database::Sqlite(_) => "sqlite", super::config::Database::Postgres(_) => "postgres" },
            "algorithm": config.tokens.algorithm.as_str(),
        })
    );
    if !issuer.starts_with("https://") {
        log::warn!(
            "{}",
            json!({ "event": "insecure_issuer", "issuer": issuer, "note": "serve the token service behind TLS in production" })
        );
    }
    Ok(Running {
        addr,
        issuer,
        service,
        shutdown,
        accept,
        refresher,
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    service: Arc<TokenService>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::warn!("{}", json!({ "event": "accept_failed", "error": e.to_string() }));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let handler = service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(serve_one(&service, req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), handler);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections so the set does not grow with every client.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_one(
    service: &TokenService,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let reply = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let head = parts.method == http::Method::HEAD;
            let mut reply = service
                .handle(Request {
                    method: parts.method,
                    path: parts.uri.path().to_string(),
                    headers: parts.headers,
                    body: collected.to_bytes(),
                    peer,
                })
                .await;
            if head {
                reply.body = Bytes::new();
            }
            reply
        }
        Err(_) => Reply {
            status: http::StatusCode::PAYLOAD_TOO_LARGE,
            headers: vec![],
            body: Bytes::from_static(
                b"{\"error\":\"invalid_request\",\"error_description\":\"request body too large\"}",
            ),
        },
    };
    let mut response = hyper::Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers {
        response.headers_mut().append(name, value);
    }
    response
}

/// Runs the service until SIGTERM or Ctrl-C, on a runtime of `threads` workers.
pub fn serve_until_signal(config: &AuthConfig) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .thread_name("portico-auth")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let running = start(config).await?;
        println!("token service listening on http://{}", running.addr);
        wait_for_signal().await;
        log::info!("{}", json!({ "event": "token_service_stopping" }));
        running.stop().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
