//! Per-route limits and timeouts (`[[routes]] limits = { … }`) over the global `[limits]`:
//! the request body size (declared and streamed), the client's body-read and response-write
//! timeouts, and the upstream's response-header timeout, each on real servers on loopback.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROBLEM_JSON: &str = "application/problem+json";

fn post(path: &str, body_len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {body_len}\r\n\r\n{}",
        "x".repeat(body_len)
    )
}

fn chunked(path: &str, body_len: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n{body_len:x}\r\n{}\r\n0\r\n\r\n",
        "y".repeat(body_len)
    )
}

fn assert_problem(resp: &RawResponse, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some(PROBLEM_JSON), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_size_limits_per_route_override_the_global_one() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .limits("max_body_bytes = 1024")
            .route_with(
                "upload",
                "/upload",
                "c",
                "limits = { max_body_bytes = 4096 }",
            )
            .route_with("small", "/small", "c", "limits = { max_body_bytes = 100 }")
            .route("other", "/", "c")
            .cluster("c", &[&up])
            .start()
            .await;

        // A route may allow more than [limits] …
        assert_eq!(gw.raw(&post("/upload", 3000)).await.status, 200);
        assert_eq!(up.last_request().body.len(), 3000);
        assert_eq!(gw.raw(&chunked("/upload", 4000)).await.status, 200);
        assert_problem(
            &gw.raw(&post("/upload", 4097)).await,
            413,
            "declared over 4096",
        );
        assert_problem(
            &gw.raw(&chunked("/upload", 5000)).await,
            413,
            "streamed over 4096",
        );
        // … or less.
        assert_eq!(gw.raw(&post("/small", 100)).await.status, 200);
        assert_problem(
            &gw.raw(&post("/small", 101)).await,
            413,
            "declared over 100",
        );
        assert_problem(
            &gw.raw(&chunked("/small", 200)).await,
            413,
            "streamed over 100",
        );
        // Routes without their own keep [limits], though another route allows more.
        assert_eq!(gw.raw(&post("/other", 1024)).await.status, 200);
        assert_problem(&gw.raw(&post("/other", 2000)).await, 413, "global limit");
        assert_problem(
            &gw.raw(&chunked("/other", 2000)).await,
            413,
            "global, streamed",
        );
        let resp = gw.raw(&post("/other", 2000)).await;
        assert!(
            resp.json()["detail"].as_str().unwrap().contains("1024"),
            "{}",
            resp.text()
        );
        assert!(
            up.requests().iter().all(|r| r.body.len() <= 4096),
            "nothing over a limit reached the upstream"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_read_timeout_per_route() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .limits("body_timeout = \"5s\"")
            .route_with(
                "hasty",
                "/hasty",
                "c",
                "limits = { body_timeout = \"300ms\" }",
            )
            .route("other", "/", "c")
            .cluster("c", &[&up])
            .start()
            .await;
        let head = |path: &str| {
            format!("POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10\r\n\r\nhello")
        };

        // Half a body, then a pause: 408 after the route's 300 ms.
        let mut conn = RawConn::connect(gw.listen).await;
        conn.send(head("/hasty").as_bytes()).await;
        let start = Instant::now();
        let resp = conn.read_response().await.expect("an answer");
        let took = start.elapsed();
        assert_problem(&resp, 408, "route body timeout");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "answered after {took:?}"
        );

        // The same pause on a route without its own timeout is fine.
        let mut conn = RawConn::connect(gw.listen).await;
        conn.send(head("/other").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        conn.send(b"world").await;
        assert_eq!(conn.read_response().await.expect("an answer").status, 200);
        assert_eq!(up.last_request().body, b"helloworld".to_vec());
        // And the next request on the connection has the global timeout again.
        conn.send(head("/other").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        conn.send(b"again").await;
        assert_eq!(conn.read_response().await.expect("an answer").status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_timeout_per_route() {
    bounded(async {
        let up = Upstream::slow("slow", Duration::from_millis(1200)).await;
        let gw = Gateway::config()
            .route_with(
                "impatient",
                "/impatient",
                "c",
                "limits = { response_header_timeout = \"300ms\" }",
            )
            .route("patient", "/", "c")
            .cluster("c", &[&up])
            .start()
            .await;
        let start = Instant::now();
        let resp = gw.raw_get("/impatient", &[]).await;
        let took = start.elapsed();
        assert_problem(&resp, 504, "response header timeout");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1100),
            "answered after {took:?}"
        );
        // The cluster's own read timeout on the other route waits for the slow answer.
        assert_eq!(gw.raw_get("/patient", &[]).await.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_write_timeout_per_route() {
    bounded(async {
        // Larger than what the loopback socket buffers and the gateway hold for a client
        // that does not read.
        const BIG: usize = 48 << 20;
        let body = Bytes::from(vec![b'z'; BIG]);
        let server = HttpServer::start(move |_req| {
            let body = body.clone();
            async move { reply(200, "application/octet-stream", body) }
        })
        .await;
        let gw = Gateway::config()
            .limits("send_timeout = \"10s\"")
            .route_with(
                "stalled",
                "/stalled",
                "c",
                "limits = { send_timeout = \"300ms\" }",
            )
            .route("other", "/", "c")
            .cluster_at("c", &[server.addr], "")
            .start()
            .await;

        let read_after_pause = |path: &'static str| {
            let listen = gw.listen;
            async move {
                let mut tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
                let request =
                    format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
                tcp.write_all(request.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let mut got = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut got)).await;
                got.len()
            }
        };
        let stalled = read_after_pause("/stalled").await;
        assert!(
            stalled < BIG,
            "the stalled client was cut off ({stalled} bytes)"
        );
        let other = read_after_pause("/other").await;
        assert!(
            other > BIG,
            "the global send_timeout let it finish ({other} bytes)"
        );
    })
    .await
}
