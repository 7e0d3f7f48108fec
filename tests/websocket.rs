//! WebSocket through the gateway, end to end: a real WebSocket server (tokio-tungstenite)
//! behind a route and a real WebSocket client in front — the upgrade, messages both ways,
//! the close handshake, `portico_upgraded_connections`, the idle timeout of upgraded
//! connections (global and per route), and a graceful stop that lets an open WebSocket
//! finish or closes it at the drain deadline.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket server on loopback: greets every connection with `hello`, echoes text and
/// binary messages with an `echo: ` prefix, and answers a close.
struct WsServer {
    addr: SocketAddr,
    /// Close frames received from the gateway's side.
    closes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl WsServer {
    async fn start() -> WsServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closes = Arc::new(AtomicUsize::new(0));
        let seen = closes.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    if ws.send(Message::text("hello")).await.is_err() {
                        return;
                    }
                    while let Some(Ok(message)) = ws.next().await {
                        let reply = match message {
                            Message::Text(t) => Message::text(format!("echo: {}", t.as_str())),
                            Message::Binary(b) => {
                                let mut echoed = b"echo: ".to_vec();
                                echoed.extend_from_slice(&b);
                                Message::binary(echoed)
                            }
                            Message::Close(_) => {
                                seen.fetch_add(1, Ordering::SeqCst);
                                // tungstenite answers the close itself.
                                continue;
                            }
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsServer { addr, closes, task }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Client = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `path` through the gateway and reads the server's greeting.
async fn connect(gw: &Gateway, path: &str) -> Client {
    let tcp = TcpStream::connect(gw.listen).await.unwrap();
    let url = format!("ws://{}{path}", gw.listen);
    let (mut ws, resp) =
        tokio::time::timeout(REQUEST_TIMEOUT, tokio_tungstenite::client_async(url, tcp))
            .await
            .expect("upgrade in time")
            .expect("the upgrade succeeds");
    assert_eq!(resp.status(), 101);
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("hello"));
    ws
}

/// The next text message; `None` when the connection ends (closed, reset or a close frame).
async fn next_text(ws: &mut Client) -> Option<String> {
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await {
            Err(_) => panic!("no message within {REQUEST_TIMEOUT:?}"),
            Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_string()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(b)))) => return Some(String::from_utf8_lossy(&b).into()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn upgraded(gw: &Gateway) -> Option<f64> {
    metric_value(&gw.metrics().await, "portico_upgraded_connections", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_messages_both_ways_and_close() {
    bounded(async {
        let server = WsServer::start().await;
        let gw = Gateway::config()
            .route("ws", "/ws", "ws")
            .cluster_at("ws", &[server.addr], "")
            .start()
            .await;
        assert_eq!(upgraded(&gw).await, Some(0.0));

        let mut ws = connect(&gw, "/ws/chat").await;
        assert_eq!(
            upgraded(&gw).await,
            Some(1.0),
            "one open upgraded connection"
        );
        for i in 0..3 {
            ws.send(Message::text(format!("ping {i}"))).await.unwrap();
            assert_eq!(next_text(&mut ws).await, Some(format!("echo: ping {i}")));
        }
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        match tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], b"echo: \x01\x02\x03"),
            other => panic!("expected the binary echo: {other:?}"),
        }
        // A second connection at the same time.
        let mut other = connect(&gw, "/ws/other").await;
        assert_eq!(upgraded(&gw).await, Some(2.0));
        other.send(Message::text("x")).await.unwrap();
        assert_eq!(next_text(&mut other).await.as_deref(), Some("echo: x"));

        // The close handshake goes through both ways.
        ws.close(None).await.unwrap();
        assert_eq!(
            next_text(&mut ws).await,
            None,
            "the server's close comes back"
        );
        eventually(
            Duration::from_secs(3),
            "the upstream saw the close",
            || async { server.closes.load(Ordering::SeqCst) == 1 },
        )
        .await;
        drop(other);
        eventually(Duration::from_secs(3), "the gauge back at 0", || async {
            upgraded(&gw).await == Some(0.0)
        })
        .await;
        let lines = gw.wait_access_log(2).await;
        assert!(
            lines
                .iter()
                .all(|l| l["status"] == 101 && l["route"] == "ws"),
            "{lines:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upgraded_connections_are_closed_globally_and_per_route() {
    bounded(async {
        let server = WsServer::start().await;
        let gw = Gateway::config()
            .limits("upgrade_idle_timeout = \"3s\"")
            .route_with(
                "quick",
                "/quick",
                "ws",
                "limits = { upgrade_idle_timeout = \"500ms\" }",
            )
            .route("slow", "/slow", "ws")
            .cluster_at("ws", &[server.addr], "")
            .start()
            .await;

        // Traffic more often than the idle timeout keeps the connection open well past it.
        let mut ws = connect(&gw, "/quick").await;
        let start = Instant::now();
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            ws.send(Message::text(format!("{i}"))).await.unwrap();
            assert_eq!(next_text(&mut ws).await, Some(format!("echo: {i}")));
        }
        assert!(start.elapsed() > Duration::from_millis(1000));

        // Then silence: closed after the route's 500 ms, not the global 3 s.
        let silent = Instant::now();
        assert_eq!(next_text(&mut ws).await, None);
        let took = silent.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
            "closed after {took:?}"
        );

        // The global idle timeout on a route without its own.
        let mut ws = connect(&gw, "/slow").await;
        let silent = Instant::now();
        assert_eq!(next_text(&mut ws).await, None);
        let took = silent.elapsed();
        assert!(
            took >= Duration::from_millis(2800) && took < Duration::from_millis(4900),
            "closed after {took:?}"
        );
        eventually(Duration::from_secs(3), "the gauge back at 0", || async {
            upgraded(&gw).await == Some(0.0)
        })
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_an_open_websocket_finish() {
    bounded(async {
        let server = WsServer::start().await;
        let mut gw = Gateway::config()
            .graceful_shutdown(10)
            .route("ws", "/ws", "ws")
            .cluster_at("ws", &[server.addr], "")
            .start()
            .await;
        let mut ws = connect(&gw, "/ws").await;
        gw.terminate();
        // Draining: the open WebSocket still works, and the process waits for it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            next_text(&mut ws).await.as_deref(),
            Some("echo: still here")
        );
        assert!(gw.wait_exit(Duration::from_millis(500)).await.is_none());
        // Once it closes, the process exits at once, long before the 10 s deadline.
        ws.close(None).await.unwrap();
        let closed = Instant::now();
        let status = gw.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.map(|s| s.success()), Some(true), "exit 0");
        assert!(
            closed.elapsed() < Duration::from_secs(3),
            "{:?}",
            closed.elapsed()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_closes_a_websocket_left_open_at_its_deadline() {
    bounded(async {
        let server = WsServer::start().await;
        let mut gw = Gateway::config()
            .graceful_shutdown(1)
            .route("ws", "/ws", "ws")
            .cluster_at("ws", &[server.addr], "")
            .start()
            .await;
        let mut ws = connect(&gw, "/ws").await;
        let stop = Instant::now();
        gw.terminate();
        let status = gw.wait_exit(Duration::from_secs(5)).await;
        assert_eq!(status.map(|s| s.success()), Some(true), "exit 0");
        let took = stop.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "exited after {took:?}"
        );
        assert_eq!(next_text(&mut ws).await, None, "the connection is closed");
    })
    .await
}
