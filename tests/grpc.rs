//! gRPC through the real gateway: tonic clients call tonic services (hand-written prost
//! messages on tonic's server API, and tonic-health's health service) through `portico
//! serve`, over an `h2c` listener to `h2c` (or, with a test CA, `h2` over TLS) upstreams.
//! Unary, server-, client- and bidirectional-streaming calls with their trailers and statuses;
//! `grpc-timeout` as the deadline; an instance killed while calls flow; gRPC health checks;
//! the gateway's own errors as gRPC statuses; `portico check` on the new fields.
//!
//! The services are served by hyper's HTTP/2 server directly (not tonic's transport, which
//! would enforce the forwarded `grpc-timeout` itself and race the gateway), each instance in
//! a task whose abort closes its listener and every connection, as a killed process would.

mod common;
mod ops_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use tonic::codegen::{BoxFuture, Service};
use tonic::{Code, Request, Response, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

// ---- messages and the echo service ----

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Replies a streaming call sends.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    /// The instance that answered.
    #[prost(string, tag = "2")]
    pub server: String,
}

/// The message of the error status `fail` answers with: not ASCII, and a `%`.
const FAIL_MESSAGE: &str = "bad input: ünïcode 100%";

/// One instance of `test.Echo`: `Unary` (`fail` → INVALID_ARGUMENT with metadata,
/// `unavailable` → UNAVAILABLE, `slow` → answers after 3 s, `wait` after 300 ms), `Stream` (`count` replies
/// 20 ms apart, then DATA_LOSS when the message is `cut`), `Collect` (client streaming:
/// the messages joined), `Chat` (bidirectional: each message answered as it comes).
#[derive(Clone)]
struct Echo {
    name: Arc<str>,
    /// Every unary call answers UNAVAILABLE while set.
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// The request headers of every call, in order.
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

type ReplyStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, Status>> + Send>>;

struct Unary(Echo);
struct ServerStream(Echo);
struct Collect(Echo);
struct Chat(Echo);

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let server = self.0.name.to_string();
        let failing = self.0.failing.load(std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let message = request.into_inner().message;
            if failing {
                return Err(Status::unavailable(format!("{server} is failing")));
            }
            match message.as_str() {
                "fail" => {
                    let mut meta = tonic::metadata::MetadataMap::new();
                    meta.insert("x-why", "the test asked".parse().unwrap());
                    Err(Status::with_metadata(
                        Code::InvalidArgument,
                        FAIL_MESSAGE,
                        meta,
                    ))
                }
                "unavailable" => Err(Status::unavailable(format!("{server} is draining"))),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(Response::new(EchoReply { message, server }))
                }
                "wait" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(Response::new(EchoReply { message, server }))
                }
                _ => Ok(Response::new(EchoReply { message, server })),
            }
        })
    }
}

impl tonic::server::ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;

    fn call(&mut self, request: Request<EchoRequest>) -> Self::Future {
        let server = self.0.name.to_string();
        Box::pin(async move {
            let req = request.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for i in 0..req.count {
                    let reply = EchoReply {
                        message: format!("{} {i}", req.message),
                        server: server.clone(),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if req.message == "cut" {
                    let _ = tx.send(Err(Status::data_loss("cut short"))).await;
                }
            });
            let stream: ReplyStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
    }
}

impl tonic::server::ClientStreamingService<EchoRequest> for Collect {
    type Response = EchoReply;
    type Future = BoxFuture<Response<EchoReply>, Status>;

    fn call(&mut self, request: Request<tonic::Streaming<EchoRequest>>) -> Self::Future {
        let server = self.0.name.to_string();
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut parts = Vec::new();
            while let Some(m) = stream.message().await? {
                parts.push(m.message);
            }
            Ok(Response::new(EchoReply {
                message: parts.join(","),
                server,
            }))
        })
    }
}

impl tonic::server::StreamingService<EchoRequest> for Chat {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFuture<Response<ReplyStream>, Status>;

    /// Bidirectional: each message is answered as soon as it arrives.
    fn call(&mut self, request: Request<tonic::Streaming<EchoRequest>>) -> Self::Future {
        let server = self.0.name.to_string();
        Box::pin(async move {
            let mut incoming = request.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                while let Ok(Some(m)) = incoming.message().await {
                    let reply = EchoReply {
                        message: format!("re: {}", m.message),
                        server: server.clone(),
                    };
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            });
            let stream: ReplyStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
    }
}

impl Echo {
    async fn handle(
        self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        self.seen.lock().unwrap().push(req.headers().clone());
        let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
        match req.uri().path() {
            "/test.Echo/Unary" => grpc.unary(Unary(self), req).await,
            "/test.Echo/Stream" => grpc.server_streaming(ServerStream(self), req).await,
            "/test.Echo/Collect" => grpc.client_streaming(Collect(self), req).await,
            "/test.Echo/Chat" => grpc.streaming(Chat(self), req).await,
            _ => Status::unimplemented("no such method").into_http(),
        }
    }
}

/// An instance's services: `test.Echo` and `grpc.health.v1.Health`, by path.
#[derive(Clone)]
struct Node<H> {
    echo: Echo,
    health: H,
    health_calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl<H> Service<http::Request<hyper::body::Incoming>> for Node<H>
where
    H: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            self.health_calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut health = self.health.clone();
            Box::pin(async move { health.call(req).await })
        } else {
            let echo = self.echo.clone();
            Box::pin(async move { Ok(echo.handle(req).await) })
        }
    }
}

/// A running instance on loopback; killed (listener and every connection closed) by
/// [`GrpcServer::kill`] or on drop.
struct GrpcServer {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections open now.
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// Health checks answered so far.
    health_calls: Arc<std::sync::atomic::AtomicUsize>,
    /// Makes every unary call answer UNAVAILABLE.
    failing: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    health: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    async fn start(name: &str) -> GrpcServer {
        GrpcServer::start_with(name, None).await
    }

    /// With `tls`, connections are TLS (the acceptor's ALPN says `h2`).
    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("test.Echo", ServingStatus::Serving)
            .await;
        let health_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let node = Node {
            echo: Echo {
                name: name.into(),
                failing: failing.clone(),
                seen: seen.clone(),
            },
            health: health_service,
            health_calls: health_calls.clone(),
        };
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open_now = open.clone();
        let task = tokio::spawn(async move {
            // Dropped with this task: aborting it closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let node = node.clone();
                let tls = tls.clone();
                let open_now = open_now.clone();
                open_now.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                connections.spawn(async move {
                    struct Close(Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Close {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    let _close = Close(open_now);
                    let service = hyper_util::service::TowerToHyperService::new(node);
                    let http2 = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            let _ = http2.serve_connection(io, service).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = http2.serve_connection(io, service).await;
                        }
                    }
                });
            }
        });
        GrpcServer {
            addr,
            accepted,
            open,
            health_calls,
            failing,
            seen,
            health,
            task,
        }
    }

    fn kill(&self) {
        self.task.abort();
    }

    fn last_headers(&self) -> http::HeaderMap {
        self.seen.lock().unwrap().last().cloned().expect("a call")
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- the client side ----

/// A tonic channel to the gateway's listener (HTTP/2 with prior knowledge).
async fn channel(gw: &Gateway) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", gw.listen))
        .unwrap()
        .connect_timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .expect("connect to the gateway")
}

fn path(method: &'static str) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(method)
}

async fn unary(
    ch: &tonic::transport::Channel,
    request: Request<EchoRequest>,
) -> Result<Response<EchoReply>, Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.expect("channel ready");
    let call = grpc.unary(
        request,
        path("/test.Echo/Unary"),
        tonic_prost::ProstCodec::default(),
    );
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .expect("a unary call within the request timeout")
}

fn echo(message: &str) -> Request<EchoRequest> {
    Request::new(EchoRequest {
        message: message.into(),
        count: 0,
    })
}

/// `route` → `cluster` for every `test.Echo` method, then `extra` route keys.
fn echo_route(extra: &str) -> String {
    format!("[[routes]]\nid = \"echo\"\npath = \"/test.Echo/\"\ncluster = \"echo\"\n{extra}\n")
}

fn h2c_cluster(servers: &[&GrpcServer], extra: &str) -> String {
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    format!(
        "[clusters.echo]\nendpoints = {}\nprotocol = \"h2c\"\n{extra}\n",
        endpoints_at(&addrs)
    )
}

async fn grpc_gateway(body: &str) -> Gateway {
    Gateway::builder(body).listener("h2c = true").start().await
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_carry_messages_trailers_and_statuses() {
    bounded(async {
        let a = GrpcServer::start("a").await;
        let gw = grpc_gateway(&format!("{}{}", echo_route(""), h2c_cluster(&[&a], ""))).await;
        let ch = channel(&gw).await;

        // Unary, OK.
        let reply = unary(&ch, echo("hello")).await.expect("OK").into_inner();
        assert_eq!(reply.message, "hello");
        assert_eq!(reply.server, "a");
        let seen = a.last_headers();
        assert_eq!(seen.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(
            seen.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );

        // Unary, an error status: code, (percent-encoded on the wire) message and metadata.
        let status = unary(&ch, echo("fail")).await.expect_err("an error status");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), FAIL_MESSAGE);
        assert_eq!(
            status.metadata().get("x-why").and_then(|v| v.to_str().ok()),
            Some("the test asked")
        );

        // Server streaming: every message, then the status in the trailers.
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let request = Request::new(EchoRequest {
            message: "tick".into(),
            count: 5,
        });
        let mut stream = grpc
            .server_streaming(
                request,
                path("/test.Echo/Stream"),
                tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect("stream opened")
            .into_inner();
        let mut got = Vec::new();
        while let Some(reply) = stream.message().await.expect("stream ends OK") {
            got.push(reply.message);
        }
        assert_eq!(got, ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]);
        assert!(stream.trailers().await.is_ok());

        // A stream whose status (after its messages) is an error: only trailers carry it.
        grpc.ready().await.unwrap();
        let request = Request::new(EchoRequest {
            message: "cut".into(),
            count: 2,
        });
        let mut stream = grpc
            .server_streaming(
                request,
                path("/test.Echo/Stream"),
                tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect("stream opened")
            .into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().message, "cut 0");
        assert_eq!(stream.message().await.unwrap().unwrap().message, "cut 1");
        let status = stream
            .message()
            .await
            .expect_err("DATA_LOSS in the trailers");
        assert_eq!(status.code(), Code::DataLoss);
        assert_eq!(status.message(), "cut short");

        // Client streaming: the request body streams through.
        grpc.ready().await.unwrap();
        let parts = ["x", "y", "z"].map(|m| EchoRequest {
            message: m.into(),
            count: 0,
        });
        let reply = grpc
            .client_streaming(
                Request::new(tokio_stream::iter(parts)),
                path("/test.Echo/Collect"),
                tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect("client streaming OK")
            .into_inner();
        assert_eq!(reply.message, "x,y,z");

        // Bidirectional, in lock step: each message is sent only after the answer to the
        // one before came back, so neither direction can be buffered by the gateway.
        grpc.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
        let say = |m: &str| EchoRequest {
            message: m.into(),
            count: 0,
        };
        tx.send(say("one")).await.unwrap();
        let mut answers = grpc
            .streaming(
                Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                path("/test.Echo/Chat"),
                tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect("chat opened")
            .into_inner();
        for next in ["two", "three", ""] {
            let answer = answers.message().await.expect("an answer").expect("more");
            assert!(answer.message.starts_with("re: "), "{answer:?}");
            if next.is_empty() {
                drop(tx);
                break;
            }
            tx.send(say(next)).await.unwrap();
        }
        assert_eq!(answers.message().await.expect("a clean end"), None);

        // Calls at once share pooled HTTP/2 connections to the upstream: 20 calls that
        // overlap (each takes 300 ms) go over a few connections, not 20.
        let calls = (0..20).map(|i| {
            let ch = ch.clone();
            async move { unary(&ch, echo("wait")).await.map_err(|s| (i, s)) }
        });
        let started = Instant::now();
        for result in futures::future::join_all(calls).await {
            result.expect("OK");
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the calls overlapped"
        );
        let connections = a.accepted.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "20 overlapping calls took {:?} over {connections} upstream connection(s)",
            started.elapsed()
        );
        assert!(
            connections <= 4,
            "{connections} upstream connections for 20 calls"
        );

        // What the gateway recorded: the grpc status in the access log and the metric.
        let metrics = gw.metrics().await;
        for (status, n) in [("ok", 24), ("invalid_argument", 1), ("data_loss", 1)] {
            let line = format!(
                "portico_grpc_responses_total{{grpc_status=\"{status}\",route=\"echo\"}} {n}"
            );
            assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
        }
        let log = eventually_lines(&gw, 26).await;
        let codes: Vec<_> = log
            .iter()
            .take(6)
            .map(|l| l["grpc_status"].clone())
            .collect();
        assert_eq!(codes, [0, 3, 0, 15, 0, 0].map(serde_json::Value::from));
        assert!(log
            .iter()
            .all(|l| l["status"] == 200 && l["route"] == "echo"));
    })
    .await;
}

/// The access log's first `n` lines, once they are written.
async fn eventually_lines(gw: &Gateway, n: usize) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(5), "access log lines", || async {
        gw.access_log_lines().len() >= n
    })
    .await;
    gw.access_log_lines()
}

/// A unary call by hand over hyper's HTTP/2 client, with `grpc-timeout` as a header only:
/// tonic's channel would also start a timer of its own for it and give up (CANCELLED) at
/// the same moment the gateway answers, and this test is about the gateway's answer, which
/// a client without such a timer relies on. Returns the answer's header and the time taken.
async fn raw_unary_with_grpc_timeout(
    gw: &Gateway,
    message: &str,
    grpc_timeout: &str,
) -> (http::response::Parts, Duration) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let encoded = prost::Message::encode_to_vec(&EchoRequest {
        message: message.into(),
        count: 0,
    });
    let mut body = vec![0];
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(&encoded);
    let request = http::Request::post(format!("http://{}/test.Echo/Unary", gw.listen))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .expect("an answer within the request timeout")
        .expect("an answer");
    let took = started.elapsed();
    (response.into_parts().0, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_deadline_and_the_upstream_gets_what_is_left() {
    bounded(async {
        let a = GrpcServer::start("a").await;
        // The route allows 10 s; the client's 400 ms is what counts.
        let gw = grpc_gateway(&format!(
            "{}{}",
            echo_route("timeout = \"10s\""),
            h2c_cluster(&[&a], "")
        ))
        .await;
        let (answer, took) = raw_unary_with_grpc_timeout(&gw, "slow", "400m").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-type"], "application/grpc");
        assert_eq!(answer.headers["grpc-status"], "4", "{answer:?}");
        println!("grpc-timeout 400m: DEADLINE_EXCEEDED from the gateway after {took:?}");
        assert!(
            took >= Duration::from_millis(380) && took < Duration::from_millis(2500),
            "the deadline passed after {took:?}"
        );
        let forwarded = a.last_headers();
        let forwarded = forwarded
            .get("grpc-timeout")
            .expect("grpc-timeout forwarded")
            .to_str()
            .unwrap();
        let left = parse_grpc_timeout(forwarded);
        println!("forwarded grpc-timeout: {forwarded} ({left:?})");
        assert!(
            left <= Duration::from_millis(400) && left > Duration::from_millis(200),
            "forwarded {forwarded}"
        );

        // With tonic's own deadline too, the call ends by the deadline whichever side
        // notices first, and the gateway records DEADLINE_EXCEEDED.
        let ch = channel(&gw).await;
        let mut request = echo("slow");
        request.set_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let status = unary(&ch, request).await.expect_err("past the deadline");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(2500));

        // Without a grpc-timeout, the route's own deadline is forwarded.
        let reply = unary(&ch, echo("quick")).await.expect("OK");
        assert_eq!(reply.into_inner().message, "quick");
        let forwarded = a.last_headers();
        let left = parse_grpc_timeout(forwarded["grpc-timeout"].to_str().unwrap());
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));

        let log = eventually_lines(&gw, 3).await;
        assert_eq!(log[0]["grpc_status"], 4);
        assert_eq!(log[0]["error"], "upstream-timeout");
    })
    .await;
}

fn parse_grpc_timeout(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad grpc-timeout {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_costs_no_call() {
    bounded(async {
        let a = GrpcServer::start("a").await;
        let b = GrpcServer::start("b").await;
        let gw = grpc_gateway(&format!(
            "{}{}",
            echo_route("retry = { attempts = 3, on = [\"unavailable\"] }"),
            h2c_cluster(
                &[&a, &b],
                "health_check = { kind = \"grpc\", interval = \"200ms\", timeout = \"150ms\", unhealthy_threshold = 1 }"
            )
        ))
        .await;
        let ch = channel(&gw).await;
        let mut served = std::collections::HashMap::<String, usize>::new();
        for i in 0..60 {
            if i == 20 {
                a.kill();
            }
            let reply = unary(&ch, echo(&format!("call {i}")))
                .await
                .unwrap_or_else(|s| panic!("call {i} failed: {s:?}\n{}", gw.stderr()))
                .into_inner();
            *served.entry(reply.server).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served.get("a").copied().unwrap_or(0) > 0, "{served:?}");
        assert!(served["b"] >= 40, "{served:?}");
        // The gRPC health check takes the killed instance out.
        let addr = a.addr.to_string();
        eventually(Duration::from_secs(5), "a marked unhealthy", || async {
            gw.endpoint_status("echo", &addr).await["healthy"] == false
        })
        .await;

        // An instance killed in the middle of a stream: the messages sent so far, then
        // UNAVAILABLE in trailers the gateway writes (not a bare reset).
        let d = GrpcServer::start("d").await;
        let gw_d = grpc_gateway(&format!("{}{}", echo_route(""), h2c_cluster(&[&d], ""))).await;
        let ch_d = channel(&gw_d).await;
        let mut grpc = tonic::client::Grpc::new(ch_d.clone());
        grpc.ready().await.unwrap();
        let request = Request::new(EchoRequest {
            message: "long".into(),
            count: 100,
        });
        let mut stream = grpc
            .server_streaming(
                request,
                path("/test.Echo/Stream"),
                tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect("stream opened")
            .into_inner();
        for i in 0..3 {
            let reply = stream.message().await.expect("a message").expect("not the end");
            assert_eq!(reply.message, format!("long {i}"));
        }
        d.kill();
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended OK although its instance was killed"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");

        // A trailers-only UNAVAILABLE is retried on the other instance; a call that only
        // ever meets UNAVAILABLE ends with it after the route's attempts.
        let c = GrpcServer::start("c").await;
        let gw = grpc_gateway(&format!(
            "{}{}",
            echo_route("retry = { attempts = 2, on = [\"unavailable\"] }"),
            h2c_cluster(&[&b, &c], "")
        ))
        .await;
        let ch = channel(&gw).await;
        let before = b.calls() + c.calls();
        let status = unary(&ch, echo("unavailable")).await.expect_err("UNAVAILABLE");
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(b.calls() + c.calls() - before, 2, "one call, two attempts");
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("portico_retries_total{cluster=\"echo\",reason=\"grpc_status\"} 1"),
            "{metrics}"
        );
    })
    .await;
}

/// An instance that answers every call with UNAVAILABLE (HTTP 200, trailers-only) is ejected
/// like one answering 503: outlier ejection judges a gRPC call by its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_unavailable_is_ejected() {
    bounded(async {
        let a = GrpcServer::start("a").await;
        let b = GrpcServer::start("b").await;
        let gw = grpc_gateway(&format!(
            "{}{}",
            echo_route("retry = { attempts = 1, on = [] }"),
            h2c_cluster(
                &[&a, &b],
                "outlier = { consecutive_5xx = 2, base_ejection = \"30s\", min_healthy = 1 }"
            )
        ))
        .await;
        a.failing.store(true, std::sync::atomic::Ordering::Relaxed);
        let ch = channel(&gw).await;
        let mut failed = 0;
        for i in 0..20 {
            match unary(&ch, echo(&format!("{i}"))).await {
                Ok(reply) => assert_eq!(reply.into_inner().server, "b"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable);
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 2, "a is ejected after its second UNAVAILABLE");
        let status = gw.endpoint_status("echo", &a.addr.to_string()).await;
        assert_eq!(status["ejected"], true, "{status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_serving_instance_is_taken_out_by_the_grpc_health_check() {
    bounded(async {
        let a = GrpcServer::start("a").await;
        let b = GrpcServer::start("b").await;
        let gw = grpc_gateway(&format!(
            "{}{}",
            echo_route(""),
            h2c_cluster(
                &[&a, &b],
                "health_check = { kind = \"grpc\", service = \"test.Echo\", interval = \"200ms\", timeout = \"150ms\", unhealthy_threshold = 1, healthy_threshold = 1 }"
            )
        ))
        .await;
        let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
        assert_eq!(gw.endpoint_status("echo", &a_addr).await["healthy"], true);

        a.health
            .set_service_status("test.Echo", ServingStatus::NotServing)
            .await;
        eventually(Duration::from_secs(5), "a marked unhealthy", || async {
            gw.endpoint_status("echo", &a_addr).await["healthy"] == false
        })
        .await;
        assert_eq!(gw.endpoint_status("echo", &b_addr).await["healthy"], true);
        let ch = channel(&gw).await;
        for i in 0..10 {
            let reply = unary(&ch, echo(&format!("{i}"))).await.expect("OK");
            assert_eq!(reply.into_inner().server, "b");
        }

        a.health
            .set_service_status("test.Echo", ServingStatus::Serving)
            .await;
        eventually(Duration::from_secs(5), "a healthy again", || async {
            gw.endpoint_status("echo", &a_addr).await["healthy"] == true
        })
        .await;

        // Each probe's connection is closed after it: none pile up.
        eventually(Duration::from_secs(5), "eight probes of b", || async {
            b.health_calls.load(std::sync::atomic::Ordering::Relaxed) >= 8
        })
        .await;
        let open = b.open.load(std::sync::atomic::Ordering::Relaxed);
        println!("b: 8 probes or more, {open} connection(s) open");
        assert!(open <= 3, "{open} connections open after 8 probes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_reaches_an_upstream_that_speaks_only_h2() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ops_support::TestCa::new("grpc-ca");
        let ca_pem = ca.write(dir.path());
        let cert = ca.server(dir.path(), "upstream", &["grpc.test"]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der.clone()],
                rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap(),
            )
            .unwrap();
        // Only h2: a client that does not offer it by ALPN gets no protocol it can use.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let a = GrpcServer::start_with("tls-a", Some(acceptor)).await;

        let gw = grpc_gateway(&format!(
            "{}[clusters.echo]\nendpoints = [{{ address = \"{}\" }}]\nprotocol = \"h2\"\ntls = true\nsni = \"grpc.test\"\nca_file = \"{}\"\nhealth_check = {{ kind = \"grpc\", interval = \"200ms\", timeout = \"150ms\" }}\n",
            echo_route(""),
            a.addr,
            ca_pem.display()
        ))
        .await;
        let ch = channel(&gw).await;
        for i in 0..3 {
            let reply = unary(&ch, echo(&format!("secure {i}"))).await.expect("OK");
            assert_eq!(reply.into_inner().server, "tls-a");
        }
        let status = unary(&ch, echo("fail")).await.expect_err("an error status");
        assert_eq!(status.code(), Code::InvalidArgument);
        // The gRPC health check speaks h2 over TLS too: its probes arrive, and a NOT_SERVING
        // answer takes the instance out.
        eventually(Duration::from_secs(5), "health checks over TLS", || async {
            a.health_calls.load(std::sync::atomic::Ordering::Relaxed) >= 2
        })
        .await;
        let addr = a.addr.to_string();
        assert_eq!(gw.endpoint_status("echo", &addr).await["healthy"], true);
        a.health.set_service_status("", ServingStatus::NotServing).await;
        eventually(Duration::from_secs(5), "unhealthy over TLS", || async {
            gw.endpoint_status("echo", &addr).await["healthy"] == false
        })
        .await;
    })
    .await;
}

const SECRET: &str = "grpc-test-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_errors_are_grpc_statuses() {
    bounded(async {
        let a = GrpcServer::start("a").await;
        // A port nothing listens on: the cluster's only endpoint refuses connections.
        let dead = free_addr();
        let body = format!(
            r#"{echo}
[[routes.plugins]]
name = "jwt"

[[routes.plugins.issuers]]
issuer = "{iss}"
audiences = ["echo"]
algorithms = ["HS256"]
hmac_secret = "{SECRET}"

[[routes]]
id = "down"
path = "/test.Down/"
cluster = "down"

[[routes]]
id = "limited"
path = "/test.Limited/"
cluster = "echo"

[[routes.plugins]]
name = "rate-limit"
rate = 1
period = "1m"
by = "client_ip"

{cluster}
[clusters.down]
endpoints = [{{ address = "{dead}" }}]
protocol = "h2c"
"#,
            echo = echo_route(""),
            iss = TEST_ISSUER,
            cluster = h2c_cluster(&[&a], ""),
        );
        let gw = grpc_gateway(&body).await;
        let ch = channel(&gw).await;

        // No token on a jwt route: UNAUTHENTICATED, with the plugin's detail.
        let status = unary(&ch, echo("hi")).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(!status.message().is_empty());
        assert_eq!(a.calls(), 0);

        // With a token it goes through.
        let mut request = echo("hi");
        let token = hs256(SECRET, &claims(TEST_ISSUER, "echo"));
        request
            .metadata_mut()
            .insert("authorization", bearer(&token).parse().unwrap());
        assert_eq!(
            unary(&ch, request).await.expect("OK").into_inner().server,
            "a"
        );

        // No route: UNIMPLEMENTED.
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                echo("x"),
                path("/test.Nothing/Here"),
                tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect_err("no route");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert!(status.message().contains("request_id"), "{status:?}");

        // An upstream that cannot be reached: UNAVAILABLE.
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                echo("x"),
                path("/test.Down/Call"),
                tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
            )
            .await
            .expect_err("upstream down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");

        // Over a rate limit: RESOURCE_EXHAUSTED, the plugin's Retry-After kept. (The first
        // call passes; the echo service has no such method.)
        for expected in [Code::Unimplemented, Code::ResourceExhausted] {
            grpc.ready().await.unwrap();
            let status = grpc
                .unary(
                    echo("x"),
                    path("/test.Limited/Call"),
                    tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default(),
                )
                .await
                .expect_err("no such method, then limited");
            assert_eq!(status.code(), expected, "{status:?}");
            if expected == Code::ResourceExhausted {
                assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
            }
        }

        let log = eventually_lines(&gw, 6).await;
        let codes: Vec<_> = log.iter().map(|l| l["grpc_status"].clone()).collect();
        assert_eq!(codes, [16, 0, 12, 14, 12, 8].map(serde_json::Value::from));

        // HTTP/1 clients on the same h2c listener are served as before.
        let (status, _) = gw.get_text("/test.Nothing/Here").await;
        assert_eq!(status, 404);
    })
    .await;
}

#[test]
fn check_reports_misused_grpc_fields_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[[listeners]]
address = "127.0.0.1:9400"
h2c = true
proxy_protocol = true

[admin]
address = "127.0.0.1:9401"

[[routes]]
id = "r"
path = "/"
cluster = "a"
retry = { on = ["unavailable", "not_a_code", "ok"] }

[clusters.a]
endpoints = [{ address = "127.0.0.1:9402" }]
protocol = "h2"
max_h2_streams = 0

[clusters.b]
endpoints = [{ address = "127.0.0.1:9403" }]
max_h2_streams = 10
health_check = { kind = "grpc" }

[clusters.c]
endpoints = [{ address = "127.0.0.1:9404" }]
protocol = "h2c"
health_check = { kind = "grpc", path = "/health" }
"#;
    let file = dir.path().join("grpc.toml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(PORTICO)
        .args(["check", "-c", file.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for (line, field) in [
        (3, "listeners[0].h2c"),
        (13, "routes[0].retry.on[1]"),
        (13, "routes[0].retry.on[2]"),
        (17, "clusters.a.protocol"),
        (18, "clusters.a.max_h2_streams"),
        (22, "clusters.b.max_h2_streams"),
        (23, "clusters.b.health_check.kind"),
        (28, "clusters.c.health_check.path"),
    ] {
        let located = stderr
            .lines()
            .any(|l| l.contains(&format!(":{line}:")) && l.contains(&format!(": {field}: ")));
        assert!(located, "no error at line {line} for {field}:\n{stderr}");
    }
}

#[test]
fn routes_shows_the_clusters_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[[listeners]]
address = "127.0.0.1:9410"
h2c = true

[admin]
address = "127.0.0.1:9411"

[[routes]]
id = "echo"
path = "/test.Echo/"
cluster = "echo"

[clusters.echo]
endpoints = [{ address = "127.0.0.1:9412" }]
protocol = "h2c"
max_h2_streams = 50
health_check = { kind = "grpc", service = "test.Echo" }
"#;
    let file = dir.path().join("grpc.toml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(PORTICO)
        .args(["check", "-c", file.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(PORTICO)
        .args([
            "routes",
            "-c",
            file.to_str().unwrap(),
            "POST",
            "/test.Echo/Unary",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("cluster:    echo (RoundRobin, h2c)"),
        "{stdout}"
    );
}

/// One unary call by hand over HTTP/2 on `io`: the reply's message (if any) and the
/// trailers' (or, trailers-only, the header's) `grpc-status`.
async fn raw_unary_over<IO>(
    io: IO,
    authority: &str,
    method: &str,
    message: &str,
) -> (Option<EchoReply>, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let encoded = prost::Message::encode_to_vec(&EchoRequest {
        message: message.into(),
        count: 0,
    });
    let mut body = vec![0];
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(&encoded);
    let request = http::Request::post(format!("https://{authority}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("the whole answer");
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or(parts.headers.get("grpc-status"))
        .expect("a grpc-status")
        .to_str()
        .unwrap()
        .to_string();
    let reply = (data.len() > 5).then(|| prost::Message::decode(&data[5..]).expect("a reply"));
    (reply, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_grpc_over_a_tls_listener_by_alpn() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = ops_support::TestCa::new("listener-ca");
        let cert = ca.server(dir.path(), "gateway", &["gateway.test"]);
        let a = GrpcServer::start("a").await;
        let gw = Gateway::builder(format!("{}{}", echo_route(""), h2c_cluster(&[&a], "")))
            .listener(&format!(
                "tls = {{ cert = \"{}\", key = \"{}\" }}",
                cert.cert.display(),
                cert.key.display()
            ))
            .start()
            .await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("gateway.test").unwrap();
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            tls
        };

        let (reply, status) = raw_unary_over(
            connect().await,
            "gateway.test",
            "/test.Echo/Unary",
            "over tls",
        )
        .await;
        assert_eq!(status, "0");
        let reply = reply.expect("a reply");
        assert_eq!(
            (reply.message.as_str(), reply.server.as_str()),
            ("over tls", "a")
        );
        assert_eq!(a.last_headers()["te"], "trailers");

        let (reply, status) =
            raw_unary_over(connect().await, "gateway.test", "/test.Nothing/Here", "x").await;
        assert_eq!((reply, status.as_str()), (None, "12"));
    })
    .await;
}
