//! Slow, idle and too many clients (issue 14, items 1 and 2): the deadlines of a client
//! connection (first byte, whole header, keep-alive idle, request body) and the connection
//! caps per listener and per client address, each against a real gateway with real sockets,
//! while ordinary requests keep being served.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

async fn gateway(up: &Upstream, limits: Option<&str>) -> Gateway {
    let mut builder = Gateway::config()
        .route("all", "/", "c")
        .cluster("c", &[up])
        .no_access_log();
    if let Some(limits) = limits {
        builder = builder.limits(limits);
    }
    builder.start().await
}

/// A connection from `source` (any 127.0.0.0/8 address) to `addr`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().unwrap())
        .expect("bind source address");
    socket.connect(addr).await.expect("connect")
}

/// Waits for the peer to close `conn`; returns when it did, measured from `since`, or
/// `None` if it had not within `limit`. Bytes it sends first are returned with it.
async fn wait_closed(
    mut conn: TcpStream,
    since: Instant,
    limit: Duration,
) -> Option<(Duration, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 2048];
    let deadline = since + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((since.elapsed(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn silent_and_trickling_clients_are_closed_under_the_default_limits() {
    bounded_by(Duration::from_secs(90), async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up, None).await;
        let start = Instant::now();

        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(TcpStream::connect(gw.listen).await.expect("connect"));
        }
        // A request line, then one header line every 2 s: each read is quick, the header
        // never ends.
        let mut tricklers = Vec::new();
        for _ in 0..200 {
            let mut conn = TcpStream::connect(gw.listen).await.expect("connect");
            conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
                .await
                .unwrap();
            tricklers.push(conn);
        }
        let trickle = tokio::spawn(async move {
            let (mut reads, mut writes) = (Vec::new(), Vec::new());
            for conn in tricklers {
                let (r, w) = conn.into_split();
                reads.push(r);
                writes.push(w);
            }
            let watchers: Vec<_> = reads
                .into_iter()
                .map(|mut r| {
                    tokio::spawn(async move {
                        use tokio::io::AsyncReadExt;
                        let mut got = Vec::new();
                        let _ =
                            tokio::time::timeout(Duration::from_secs(45), r.read_to_end(&mut got))
                                .await;
                        got
                    })
                })
                .collect();
            for i in 0..30 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut alive = 0;
                for w in &mut writes {
                    if w.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                        .await
                        .is_ok()
                    {
                        alive += 1;
                    }
                }
                if alive == 0 {
                    break;
                }
            }
            let mut answers = Vec::new();
            for w in watchers {
                answers.push(w.await.unwrap());
            }
            answers
        });

        // Ordinary requests are served all along.
        let mut served = 0;
        while start.elapsed() < Duration::from_secs(20) {
            let resp = gw.get("/ok").await;
            assert_eq!(resp.status(), 200);
            served += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(served > 50);

        for conn in silent {
            let (after, got) = wait_closed(conn, start, Duration::from_secs(45))
                .await
                .expect("a silent connection was still open after 45 s");
            assert!(got.is_empty(), "a silent connection was sent an answer");
            assert!(
                after >= Duration::from_secs(9),
                "closed before the deadline"
            );
        }
        let answers = trickle.await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(45));
        for got in answers {
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 408 "), "trickler got {text:?}");
            assert!(text.contains("application/problem+json"));
        }
        let metrics = gw.metrics().await;
        let timeouts = |phase| {
            metric_value(
                &metrics,
                "portico_client_timeouts_total",
                &[("phase", phase)],
            )
            .unwrap_or(0.0)
        };
        assert_eq!(timeouts("first_byte"), 200.0);
        assert_eq!(timeouts("header"), 200.0);
    })
    .await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up, Some("body_timeout = \"1s\"")).await;
        let mut conn = RawConn::connect(gw.listen).await;
        conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
        let resp = conn.read_response().await.expect("an answer");
        assert_eq!(resp.status, 408, "{}", resp.text());
        assert_eq!(resp.json()["status"], 408);
        assert!(conn.closed_within(Duration::from_secs(3)).await);
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_client_timeouts_total",
                &[("phase", "body")]
            ),
            Some(1.0)
        );
    })
    .await;
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_the_keepalive_timeout() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up, Some("keepalive_timeout = \"1s\"")).await;
        let mut conn = RawConn::connect(gw.listen).await;
        for _ in 0..3 {
            conn.send(raw_get_request("/", &[]).as_bytes()).await;
            assert_eq!(conn.read_response().await.expect("response").status, 200);
        }
        let idle = Instant::now();
        assert!(conn.closed_within(Duration::from_secs(4)).await);
        assert!(idle.elapsed() >= Duration::from_millis(900));

        // 0s: no keep-alive at all.
        let off = gateway(&up, Some("keepalive_timeout = \"0s\"")).await;
        let mut conn = RawConn::connect(off.listen).await;
        conn.send(raw_get_request("/", &[]).as_bytes()).await;
        let resp = conn.read_response().await.expect("response");
        assert_eq!(resp.status, 200);
        assert!(conn.closed_within(Duration::from_secs(2)).await);
    })
    .await;
}

#[tokio::test]
async fn connections_over_the_listener_cap_are_refused_and_the_rest_served() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up, Some("max_connections = 5")).await;
        let mut held = Vec::new();
        for _ in 0..5 {
            let mut conn = RawConn::connect(gw.listen).await;
            conn.send(raw_get_request("/", &[]).as_bytes()).await;
            assert_eq!(conn.read_response().await.expect("response").status, 200);
            held.push(conn);
        }
        // The sixth is closed at once, without an answer.
        let extra = TcpStream::connect(gw.listen).await.expect("connect");
        let (_, got) = wait_closed(extra, Instant::now(), Duration::from_secs(2))
            .await
            .expect("the connection over the cap was not closed");
        assert!(got.is_empty());
        // Those under the cap are unaffected.
        for conn in &mut held {
            conn.send(raw_get_request("/", &[]).as_bytes()).await;
            assert_eq!(conn.read_response().await.expect("response").status, 200);
        }
        // A closed connection frees its place.
        drop(held.pop());
        eventually(Duration::from_secs(5), "a place frees up", || async {
            let mut conn = RawConn::connect(gw.listen).await;
            conn.send(raw_get_request("/", &[]).as_bytes()).await;
            conn.read_response()
                .await
                .map(|r| r.status == 200)
                .unwrap_or(false)
        })
        .await;
        let metrics = gw.metrics().await;
        assert!(
            metric_value(
                &metrics,
                "portico_connections_refused_total",
                &[("reason", "listener_limit")]
            )
            .unwrap_or(0.0)
                >= 1.0
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_address_over_its_cap_does_not_block_other_clients() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway(&up, Some("max_connections_per_client = 3")).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from("127.0.0.1", gw.listen).await);
        }
        let over = connect_from("127.0.0.1", gw.listen).await;
        assert!(
            wait_closed(over, Instant::now(), Duration::from_secs(2))
                .await
                .is_some(),
            "a fourth connection from one address was kept"
        );
        // Another address is not affected.
        let mut other = connect_from("127.0.0.2", gw.listen).await;
        other
            .write_all(raw_get_request("/", &[("Connection", "close")]).as_bytes())
            .await
            .unwrap();
        let (_, got) = wait_closed(other, Instant::now(), Duration::from_secs(15))
            .await
            .expect("closed by the first-byte deadline at the latest");
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200 "));
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_connections_refused_total",
                &[("reason", "client_limit")]
            ),
            Some(1.0)
        );
    })
    .await;
}
