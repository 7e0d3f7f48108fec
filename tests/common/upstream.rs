//! Upstreams the tests put behind the gateway: a generic in-test HTTP/1.1 server
//! ([`HttpServer`]), the recording [`Upstream`] with status, delay and health controls (and
//! its slow and failing variants), and a raw TCP [`Resetter`] that drops connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::task::{JoinHandle, JoinSet};

/// An HTTP/1.1 server on `127.0.0.1:0` answering every request with `handler`.
///
/// Dropping it (or [`HttpServer::stop`]) closes the listener and every open connection, so
/// new connections are refused.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl HttpServer {
    pub async fn start<F, Fut>(handler: F) -> HttpServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        HttpServer::start_on("127.0.0.1:0".parse().unwrap(), handler).await
    }

    /// [`HttpServer::start`] on a chosen loopback address (DNS tests put several
    /// upstreams on one port of 127.0.0.1, 127.0.0.2, ...).
    pub async fn start_on<F, Fut>(bind: SocketAddr, handler: F) -> HttpServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .expect("bind in-test server");
        let addr = listener.local_addr().expect("in-test server address");
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the accept task also closes them.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let handler = handler.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |req| {
                                let answer = handler(req);
                                async move { Ok::<_, Infallible>(answer.await) }
                            });
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        HttpServer {
            addr,
            task: Some(task),
        }
    }

    /// Closes the listener and all connections; returns once they are closed, so the next
    /// connection attempt is refused.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A response with `status`, `content-type` and `body`.
pub fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("response")
}

/// One request as an [`Upstream`] received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target exactly as received (path and query, still percent-encoded).
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The first value of a header, as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// The controllable behaviour and the observations of an [`Upstream`].
pub struct UpstreamState {
    pub name: String,
    /// Status of every non-health request (default 200).
    pub status: AtomicU16,
    /// Delay before answering a non-health request, in milliseconds (default 0).
    pub delay_ms: AtomicU64,
    /// Status of `GET /healthz` (default 200).
    pub health_status: AtomicU16,
    /// Non-health requests received (counted on arrival, before any delay).
    pub hits: AtomicUsize,
    /// `/healthz` requests received.
    pub health_hits: AtomicUsize,
    /// Every non-health request received, in order.
    pub requests: Mutex<Vec<Recorded>>,
    /// Extra headers on every non-health response.
    pub response_headers: Mutex<Vec<(String, String)>>,
    /// Non-health requests being handled right now (from arrival until answered or dropped).
    pub in_flight: AtomicUsize,
    /// The highest `in_flight` seen since start.
    pub max_in_flight: AtomicUsize,
    /// When each non-health request arrived, in order.
    pub arrivals: Mutex<Vec<Instant>>,
}

/// The health endpoint every [`Upstream`] serves.
pub const HEALTH_PATH: &str = "/healthz";

/// An in-test HTTP/1.1 upstream on `127.0.0.1:0`.
///
/// Every non-health request is answered with the configured status, after the configured
/// delay, with the upstream's name as body and in an `X-Upstream` header, so a test can tell
/// which instance served a request. `GET /healthz` answers `health_status` with body `ok`.
/// Dropping it (or [`Upstream::stop`]) closes the listener and every open connection, so
/// new connections are refused.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    server: HttpServer,
}

impl Upstream {
    /// Starts an upstream answering 200 at once.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// [`Upstream::start`] on a chosen loopback address.
    pub async fn start_on(name: &str, bind: SocketAddr) -> Upstream {
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            health_status: AtomicU16::new(200),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            response_headers: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            arrivals: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let server = HttpServer::start_on(bind, move |req| handle(shared.clone(), req)).await;
        Upstream {
            addr: server.addr,
            state,
            server,
        }
    }

    /// Starts a failing upstream: every non-health request is answered with `status`.
    pub async fn with_status(name: &str, status: u16) -> Upstream {
        let up = Upstream::start(name).await;
        up.set_status(status);
        up
    }

    /// Starts a slow upstream: every non-health request is answered 200 after `delay`.
    pub async fn slow(name: &str, delay: Duration) -> Upstream {
        let up = Upstream::start(name).await;
        up.set_delay(delay);
        up
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// Adds a header to every later non-health response.
    pub fn add_response_header(&self, name: &str, value: &str) {
        self.state
            .response_headers
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    /// Non-health requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// The most non-health requests this upstream handled at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// When each non-health request arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.state.arrivals.lock().unwrap().clone()
    }

    /// A copy of every non-health request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The most recent non-health request; panics when there is none.
    pub fn last_request(&self) -> Recorded {
        self.requests()
            .pop()
            .unwrap_or_else(|| panic!("upstream {} received no request", self.state.name))
    }

    /// Closes the listener and all connections; returns once they are closed, so the next
    /// connection attempt is refused.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// `host:port` for a config file.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// Counts one request in [`UpstreamState::in_flight`] while it lives.
struct InFlight<'a>(&'a UpstreamState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a UpstreamState) -> InFlight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(state: Arc<UpstreamState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == HEALTH_PATH {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        let status = state.health_status.load(Ordering::SeqCst);
        return Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap();
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.arrivals.lock().unwrap().push(Instant::now());
    // Decremented on drop, so a request whose connection is aborted mid-delay counts too.
    let _in_flight = InFlight::enter(&state);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut resp = Response::builder()
        .status(state.status.load(Ordering::SeqCst))
        .header("x-upstream", state.name.as_str())
        .header("content-type", "text/plain");
    for (name, value) in state.response_headers.lock().unwrap().iter() {
        resp = resp.header(name.as_str(), value.as_str());
    }
    resp.body(Full::new(Bytes::from(state.name.clone())))
        .unwrap()
}

/// A raw TCP upstream that reads a request head and resets the connection without
/// answering. Counts the requests it swallowed.
pub struct Resetter {
    pub addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Resetter {
    pub async fn start() -> Resetter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind resetter");
        let addr = listener.local_addr().expect("resetter address");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    if super::raw::read_head(&mut stream, &mut Vec::new())
                        .await
                        .is_none()
                    {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    // Linger 0: closing sends RST instead of FIN (and never blocks, which
                    // is what the deprecation warns about).
                    #[allow(deprecated)]
                    let _ = stream.set_linger(Some(Duration::ZERO));
                    drop(stream);
                });
            }
        });
        Resetter { addr, seen, task }
    }

    /// Requests whose connection was reset.
    pub fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for Resetter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
