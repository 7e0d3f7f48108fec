//! Small example upstream services for the demo: HTTP/1.1 JSON APIs on loopback that
//! answer every path, report which instance served the call and echo the headers the
//! gateway adds (request id, trace context, forwarded-for), so a demo user can see them.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Starts `orders` (two instances) and `inventory` (one) on a runtime of their own, in a
/// background thread; returns their addresses.
pub fn spawn_demo_services() -> Result<(Vec<SocketAddr>, SocketAddr), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("portico-demo-services".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the demo services: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let started = async {
                    let o1 = start("orders", 1).await?;
                    let o2 = start("orders", 2).await?;
                    let inv = start("inventory", 1).await?;
                    Ok::<_, String>((vec![o1, o2], inv))
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
pub async fn start(service: &'static str, instance: u32) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind {service}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let handler = service_fn(move |req| answer(service, instance, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(
    service: &'static str,
    instance: u32,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
    let data = match service {
        "orders" => json!({ "order_id": id, "status": "shipped", "items": 3 }),
        _ => json!({ "sku": id, "in_stock": 17 }),
    };
    let body = json!({
        "service": service,
        "instance": instance,
        "method": req.method().as_str(),
        "path": path,
        "data": data,
        "seen_headers": {
            "x-request-id": header("x-request-id"),
            "traceparent": header("traceparent"),
            "x-forwarded-for": header("x-forwarded-for"),
            "x-forwarded-host": header("x-forwarded-host"),
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
