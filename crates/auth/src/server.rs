//! Serving the token service over HTTP/1.1 with hyper: keep-alive connections, a bound on
//! open connections and on request bodies, read deadlines for the header and the body, the
//! client's source address (through trusted proxies), a separate admin listener for
//! `/metrics`, and a graceful stop that lets requests in flight finish.
//!
//! hyper rather than a Pingora `Server` because the service must also run inside other
//! processes (`portico demo`, tests) on an ephemeral port, and a Pingora server owns its
//! process's signals and never returns.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portico_common::sd_notify;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::config::AuthConfig;
use super::keys::{KeyManager, KeyPolicy};
use super::oauth::{Reply, Request, TokenService};
use super::store::Store;

/// Largest request body read (token requests are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;
/// How long a graceful stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A started token service.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`), unless `admin_listen = "off"`.
    pub admin_addr: Option<SocketAddr>,
    pub issuer: String,
    pub service: Arc<TokenService>,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    admin_accept: Option<tokio::task::JoinHandle<()>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (bounded), and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.refresher.abort();
        let _ = self.accept.await;
        if let Some(admin) = self.admin_accept {
            let _ = admin.await;
        }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The OAuth2 endpoints, for clients.
    Public,
    /// `/metrics` and `/healthz`, for operators.
    Admin,
}

/// What every connection needs.
struct Shared {
    service: Arc<TokenService>,
    trusted: Vec<ipnet::IpNet>,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
}

/// Opens the database, loads or creates the signing keys, binds `listen` and serves on
/// the current tokio runtime.
pub async fn start(config: &AuthConfig) -> Result<Running, String> {
    let db = config.database()?;
    let store = Store::open(&db, config.key_encryption_key()?).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_listener = match config.admin_address() {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a} (admin_listen): {e}"))?,
        ),
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
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
    let shared = Arc::new(Shared {
        service: service.clone(),
        trusted: config.trusted_networks(),
        header_read_timeout: config.header_read_timeout,
        body_read_timeout: config.body_read_timeout,
    });
    let accept = tokio::spawn(accept_loop(
        listener,
        shared.clone(),
        Role::Public,
        config.max_connections,
        shutdown_rx.clone(),
    ));
    // Operators' connections are few; a small bound of their own keeps a flood of client
    // connections from ever taking the metrics away.
    let admin_accept =
        admin_listener.map(|l| tokio::spawn(accept_loop(l, shared, Role::Admin, 64, shutdown_rx)));
    log::info!(
        "{}",
        json!({
            "event": "token_service_started",
            "listen": addr.to_string(),
            "admin_listen": admin_addr.map(|a| a.to_string()),
            "issuer": issuer,
            "database": match db { super::config::Database::Sqlite(_) => "sqlite", super::config::Database::Postgres { .. } => "postgres" },
            "database_sslmode": service.store.postgres().map(|p| p.sslmode()),
            "signing_keys_encrypted": service.store.key_encryption_key_id().is_some(),
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
        admin_addr,
        issuer,
        service,
        shutdown,
        accept,
        admin_accept,
        refresher,
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    role: Role,
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
        let shared = shared.clone();
        let header_read_timeout = shared.header_read_timeout;
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let handler = service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    Ok::<_, Infallible>(match role {
                        Role::Public => serve_one(&shared, req, peer).await,
                        Role::Admin => serve_admin(&shared, req),
                    })
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
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
    shared: &Shared,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    // The header has its deadline in hyper; the body gets one here, so a client trickling
    // its body holds a connection for `body_read_timeout` at most.
    let collected = tokio::time::timeout(
        shared.body_read_timeout,
        Limited::new(body, MAX_BODY).collect(),
    )
    .await;
    let error = |status: http::StatusCode, description: &str| Reply {
        status,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            ),
            // The rest of the body may still be on its way: the connection cannot be
            // reused.
            (
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            ),
        ],
        body: serde_json::to_vec(
            &json!({ "error": "invalid_request", "error_description": description }),
        )
        .unwrap_or_default()
        .into(),
    };
    let reply = match collected {
        Ok(Ok(collected)) => {
            let head = parts.method == http::Method::HEAD;
            let client = client_address(peer, &parts.headers, &shared.trusted);
            let mut reply = shared
                .service
                .handle(Request {
                    method: parts.method,
                    path: parts.uri.path().to_string(),
                    headers: parts.headers,
                    body: collected.to_bytes(),
                    peer,
                    client,
                })
                .await;
            if head {
                reply.body = Bytes::new();
            }
            reply
        }
        Ok(Err(_)) => error(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        ),
        Err(_) => {
            super::metrics::AUTH_METRICS.body_timeouts.inc();
            log::info!(
                "{}",
                json!({ "event": "body_read_timeout", "peer": peer.ip().to_string() })
            );
            error(
                http::StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            )
        }
    };
    into_response(reply)
}

/// The admin listener: `/metrics` (every metric of the process) and `/healthz`.
fn serve_admin(shared: &Shared, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let get = req.method() == http::Method::GET || req.method() == http::Method::HEAD;
    let json = |status: http::StatusCode, body: serde_json::Value| Reply {
        status,
        headers: vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
    };
    let mut reply = match req.uri().path() {
        "/metrics" | "/healthz" if !get => {
            let mut r = json(
                http::StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": "method_not_allowed" }),
            );
            r.headers.push((
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            ));
            r
        }
        "/metrics" => {
            shared.service.refresh_gauges();
            Reply {
                status: http::StatusCode::OK,
                headers: vec![(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                )],
                body: super::metrics::render().into(),
            }
        }
        "/healthz" => json(http::StatusCode::OK, json!({ "status": "ok" })),
        _ => json(http::StatusCode::NOT_FOUND, json!({ "error": "not_found" })),
    };
    if req.method() == http::Method::HEAD {
        reply.body = Bytes::new();
    }
    into_response(reply)
}

/// The address the limits count a request by: the peer, unless the peer is a trusted
/// proxy; then the rightmost `X-Forwarded-For` address that is not one (what the last
/// trusted proxy saw). Anything a client wrote further left is not believed.
pub fn client_address(
    peer: SocketAddr,
    headers: &http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(&client) {
        return client;
    }
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let entry = entry.trim();
        let parsed = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()));
        let Some(ip) = parsed else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

fn into_response(reply: Reply) -> hyper::Response<Full<Bytes>> {
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
        if let Some(admin) = running.admin_addr {
            println!("admin (metrics) listening on http://{admin}");
        }
        // A `Type=notify` unit (systemd/portico-auth.service) learns here that the
        // listeners accept; the watchdog is fed from this runtime, which serves the
        // requests, so a wedged runtime stops the pings and systemd restarts the service.
        sd_notify::notify(&format!(
            "READY=1\nMAINPID={}\nSTATUS=serving on {}",
            std::process::id(),
            running.addr
        ));
        if let Some(timeout) = sd_notify::watchdog_timeout() {
            tokio::spawn(async move {
                loop {
                    sd_notify::notify("WATCHDOG=1");
                    tokio::time::sleep(timeout / 4).await;
                }
            });
        }
        wait_for_signal().await;
        sd_notify::notify("STOPPING=1\nSTATUS=stopping");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.1.1.1".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let direct: SocketAddr = "198.51.100.1:4000".parse().unwrap();
        // Through two trusted hops, the first untrusted address from the right.
        assert_eq!(
            client_address(proxy, &headers, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // A client talking directly cannot choose its address by writing the header.
        assert_eq!(client_address(direct, &headers, &trusted), direct.ip());
        assert_eq!(client_address(proxy, &headers, &[]), proxy.ip());
        // Garbage stops the walk at the last good hop.
        headers.insert("x-forwarded-for", "nonsense, 10.2.2.2".parse().unwrap());
        assert_eq!(
            client_address(proxy, &headers, &trusted),
            "10.2.2.2".parse::<IpAddr>().unwrap()
        );
    }
}
