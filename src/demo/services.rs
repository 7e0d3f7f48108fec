//! Small example upstream services for the demo: HTTP/1.1 JSON APIs on loopback that
//! answer every path, report which service, version and instance served the call and echo
//! the headers the gateway adds (request id, trace context, forwarded-for, identity), so a
//! demo user can see them. Each instance can be slowed down or stopped while it runs, for
//! the demo's failure scenes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// One running instance of an example service.
#[derive(Clone)]
pub struct Instance {
    pub addr: SocketAddr,
    pub name: String,
    delay_ms: Arc<AtomicU64>,
    stopped: Arc<AtomicBool>,
    stop: Arc<tokio::sync::Notify>,
}

impl Instance {
    /// Delays every answer (health checks too) by this long.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Closes the listener and every open connection: new connections are refused, like
    /// a killed process.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
    }
}

/// The demo's services, started on a runtime of their own in a background thread.
pub struct Services {
    pub orders_v1: Vec<Instance>,
    pub orders_v2: Vec<Instance>,
    pub inventory: Instance,
    /// Runs work on the services' runtime (stopping or slowing instances).
    pub runtime: tokio::runtime::Handle,
}

/// Starts `orders` v1 and v2 (two instances each) and `inventory` (one).
pub fn spawn_demo_services() -> Result<Services, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("portico-demo-services".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the demo services: {e}")));
                    return;
                }
            };
            let handle = runtime.handle().clone();
            runtime.block_on(async move {
                let started = async {
                    Ok::<_, String>(Services {
                        orders_v1: vec![
                            start("orders", "1", 1).await?,
                            start("orders", "1", 2).await?,
                        ],
                        orders_v2: vec![
                            start("orders", "2", 1).await?,
                            start("orders", "2", 2).await?,
                        ],
                        inventory: start("inventory", "1", 1).await?,
                        runtime: handle,
                    })
                }
                .await;
                let _ = tx.send(started);
                std::future::pending::<()>().await;
            });
        })
        .map_err(|e| format!("cannot start the demo services: {e}"))?;
    rx.recv().map_err(|e| format!("demo services: {e}"))?
}

/// Starts one instance of a named example service on an ephemeral loopback port.
pub async fn start(
    service: &'static str,
    version: &'static str,
    instance: u32,
) -> Result<Instance, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind {service}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let me = Instance {
        addr,
        name: format!("{service}-v{version}-{instance}"),
        delay_ms: Arc::new(AtomicU64::new(0)),
        stopped: Arc::new(AtomicBool::new(false)),
        stop: Arc::new(tokio::sync::Notify::new()),
    };
    let state = me.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = state.stop.notified() => return,
            };
            let Ok((stream, _)) = accepted else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let stop = state.stop.clone();
                let handler = service_fn(move |req| answer(service, version, state.clone(), req));
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), handler);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.notified() => {}
                }
            });
        }
    });
    Ok(me)
}

async fn answer(
    service: &'static str,
    version: &'static str,
    instance: Instance,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = instance.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(json_response(200, json!({ "status": "ok" })));
    }
    let id = path.rsplit('/').next().unwrap_or("").to_string();
    let data = match (service, version) {
        ("orders", "1") => json!({ "id": id, "status": "shipped" }),
        ("orders", _) => {
            json!({ "order_id": id, "state": "SHIPPED", "items": [{ "sku": "sku-1", "qty": 2 }] })
        }
        _ => json!({ "sku": id, "in_stock": 17 }),
    };
    let body = json!({
        "service": service,
        "version": version,
        "instance": instance.name,
        "method": req.method().as_str(),
        "path": path,
        "data": data,
        "seen_headers": {
            "x-request-id": header("x-request-id"),
            "traceparent": header("traceparent"),
            "x-forwarded-for": header("x-forwarded-for"),
            "x-portico-subject": header("x-portico-subject"),
            "x-portico-scopes": header("x-portico-scopes"),
        },
    });
    Ok(json_response(200, body))
}

fn json_response(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec_pretty(&body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
