//! Per-route response compression (`[routes.compress]`) through the real gateway: each
//! coding decoded by a real decoder equals the upstream's body, the client's q-values pick
//! the coding, and what must stay untouched does (small bodies, other media types,
//! already-encoded bodies, `HEAD`, 204, 304, `Range`, a route without `compress`), with
//! `Vary`, `ETag` and the metrics and access log that account for it.

mod common;
#[path = "../benches/support/json_body.rs"]
mod json_body;
mod ops_support;

use std::io::Read;

use bytes::Bytes;
use common::*;
use json_body::json_body;

/// 300 bytes of JSON: below the default `min_size`, above the `/gz` route's 64.
fn small_body() -> Bytes {
    let body = format!("{{\"notes\":\"{}\"}}", "abc ".repeat(72));
    assert_eq!(body.len(), 300);
    Bytes::from(body)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .expect("gzip decodes"),
        "br" => brotli::Decompressor::new(data, 4096)
            .read_to_end(&mut out)
            .expect("brotli decodes"),
        "zstd" => zstd::stream::read::Decoder::new(data)
            .unwrap()
            .read_to_end(&mut out)
            .expect("zstd decodes"),
        other => panic!("unexpected coding {other}"),
    };
    out
}

/// An upstream with one response per path.
async fn upstream() -> HttpServer {
    HttpServer::start(|req: hyper::Request<hyper::body::Incoming>| async move {
        let json = json_body();
        let ok = |ct: &str, body: Bytes| {
            hyper::Response::builder()
                .status(200)
                .header("content-type", ct)
                .body(http_body_util::Full::new(body))
                .unwrap()
        };
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/json" => {
                let mut resp = ok("application/json; charset=utf-8", json);
                let h = resp.headers_mut();
                h.insert("etag", "\"v1\"".parse().unwrap());
                h.insert("accept-ranges", "bytes".parse().unwrap());
                resp
            }
            "/small" => ok("application/json", small_body()),
            "/problem" => ok("application/problem+json", json),
            "/png" => ok("image/png", json),
            "/encoded" => {
                let mut resp = ok("application/json", Bytes::from(gzip(&json)));
                resp.headers_mut()
                    .insert("content-encoding", "gzip".parse().unwrap());
                resp
            }
            "/vary" => {
                let mut resp = ok("application/json", json);
                resp.headers_mut().insert("vary", "Origin".parse().unwrap());
                resp
            }
            "/no-transform" => {
                let mut resp = ok("application/json", json);
                resp.headers_mut()
                    .insert("cache-control", "no-transform".parse().unwrap());
                resp
            }
            "/no-content" => hyper::Response::builder()
                .status(204)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
            "/not-modified" => hyper::Response::builder()
                .status(304)
                .header("etag", "\"v1\"")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
            _ => hyper::Response::builder()
                .status(404)
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        }
    })
    .await
}

/// `/z/…` compresses with the defaults, `/gz/…` offers gzip only from 64 bytes for
/// `application/json`, and `/…` (the same upstream) does not compress.
async fn gateway(up: &HttpServer) -> Gateway {
    Gateway::config()
        .route_with(
            "zipped",
            "/z",
            "c",
            "strip_prefix = true\n[routes.compress]\n",
        )
        .route_with(
            "gzip-only",
            "/gz",
            "c",
            "strip_prefix = true\ncompress = { algorithms = [\"gzip\"], min_size = 64, \
             content_types = [\"application/json\"], levels = { gzip = 1 } }",
        )
        .route("plain", "/", "c")
        .cluster_at("c", &[up.addr], "")
        .start()
        .await
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn vary(&self) -> Vec<String> {
        self.headers
            .get_all("vary")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

async fn fetch(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    // reqwest without its compression features neither asks for nor decodes codings: the
    // body is what the gateway sent.
    let mut req = http_client().request(method.parse().unwrap(), gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request through the gateway");
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.expect("body").to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_coding_decodes_to_the_upstream_body() {
    bounded(async {
        let up = upstream().await;
        let gw = gateway(&up).await;
        let original = json_body();
        for coding in ["gzip", "br", "zstd"] {
            let a = fetch(&gw, "GET", "/z/json", &[("accept-encoding", coding)]).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.header("content-encoding"), Some(coding));
            assert!(a.header("content-length").is_none(), "{coding}: streamed");
            assert!(a.header("accept-ranges").is_none(), "{coding}");
            assert_eq!(a.header("etag"), Some("W/\"v1\""), "{coding}: weak ETag");
            assert_eq!(a.vary(), ["Accept-Encoding"]);
            assert!(
                a.body.len() < original.len() / 3,
                "{coding}: {} of {} bytes",
                a.body.len(),
                original.len()
            );
            assert!(decode(coding, &a.body) == original, "{coding} round trip");
        }
        // A `+json` type is in the default list.
        let a = fetch(&gw, "GET", "/z/problem", &[("accept-encoding", "gzip")]).await;
        assert_eq!(a.header("content-encoding"), Some("gzip"));
        assert!(decode("gzip", &a.body) == original);

        // Counted per route and coding, with the bytes saved; and in the access log. (A
        // request is counted after its response is sent.)
        let lines = gw.wait_access_log(4).await;
        let metrics = gw.metrics().await;
        let count = |name: &str, coding: &str| {
            metric_value(
                &metrics,
                name,
                &[("route", "zipped"), ("algorithm", coding)],
            )
            .unwrap_or(0.0)
        };
        assert_eq!(count("portico_compressed_responses_total", "br"), 1.0);
        assert_eq!(count("portico_compressed_responses_total", "zstd"), 1.0);
        assert_eq!(count("portico_compressed_responses_total", "gzip"), 2.0);
        assert_eq!(
            count("portico_compression_input_bytes_total", "br"),
            original.len() as f64
        );
        let out = count("portico_compression_output_bytes_total", "br");
        assert!(out > 0.0 && out < original.len() as f64 / 3.0, "{out}");
        let codings: Vec<_> = lines
            .iter()
            .map(|l| l["compression"].as_str().unwrap_or("-").to_string())
            .collect();
        assert_eq!(codings, ["gzip", "br", "zstd", "gzip"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q_values_choose_the_coding() {
    bounded(async {
        let up = upstream().await;
        let gw = gateway(&up).await;
        let original = json_body();
        for (accept, expected) in [
            ("gzip;q=0.5, br;q=1", Some("br")),
            ("gzip, br, zstd", Some("zstd")),
            ("br;q=0.3, gzip;q=0.8", Some("gzip")),
            ("gzip;q=0.5, *;q=0.6", Some("zstd")),
            ("*;q=0", None),
            ("identity", None),
            ("gzip;q=0", None),
            ("gzip;q=0.5, identity", None),
            ("deflate", None),
        ] {
            let a = fetch(&gw, "GET", "/z/json", &[("accept-encoding", accept)]).await;
            assert_eq!(a.status, 200, "{accept}");
            assert_eq!(a.header("content-encoding"), expected, "{accept}");
            // Either way the answer depended on Accept-Encoding.
            assert_eq!(a.vary(), ["Accept-Encoding"], "{accept}");
            match expected {
                Some(coding) => assert!(decode(coding, &a.body) == original, "{accept}"),
                None => {
                    assert!(a.body == original, "{accept}: identity body");
                    assert_eq!(a.header("etag"), Some("\"v1\""), "{accept}");
                    assert_eq!(
                        a.header("content-length"),
                        Some(original.len().to_string().as_str())
                    );
                }
            }
        }
        // No Accept-Encoding at all: identity.
        let a = fetch(&gw, "GET", "/z/json", &[]).await;
        assert!(a.header("content-encoding").is_none());
        assert!(a.body == original);
        // The route offers gzip only: a client preferring br still gets gzip, one refusing
        // gzip gets identity.
        let a = fetch(
            &gw,
            "GET",
            "/gz/json",
            &[("accept-encoding", "br, gzip;q=0.1")],
        )
        .await;
        assert_eq!(a.header("content-encoding"), Some("gzip"));
        assert!(decode("gzip", &a.body) == original);
        let a = fetch(&gw, "GET", "/gz/json", &[("accept-encoding", "br, zstd")]).await;
        assert!(a.header("content-encoding").is_none());
        assert!(a.body == original);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_stay_untouched_does() {
    bounded(async {
        let up = upstream().await;
        let gw = gateway(&up).await;
        let original = json_body();
        let all = [("accept-encoding", "gzip, br, zstd")];

        // Below min_size (default 1 KiB): as the upstream sent it, and no Vary (it would
        // never be compressed, whatever the client accepts).
        let a = fetch(&gw, "GET", "/z/small", &all).await;
        assert!(a.header("content-encoding").is_none());
        assert_eq!(a.body, small_body());
        assert_eq!(a.header("content-length"), Some("300"));
        assert!(a.vary().is_empty());
        // … while a route with a lower minimum (64) compresses the same body.
        let a = fetch(&gw, "GET", "/gz/small", &all).await;
        assert_eq!(a.header("content-encoding"), Some("gzip"));
        assert_eq!(decode("gzip", &a.body), small_body());

        // A media type outside the list.
        let a = fetch(&gw, "GET", "/z/png", &all).await;
        assert!(a.header("content-encoding").is_none());
        assert!(a.body == original);
        assert!(a.vary().is_empty());
        let a = fetch(&gw, "GET", "/gz/problem", &all).await;
        assert!(
            a.header("content-encoding").is_none(),
            "not in this route's list"
        );

        // Already encoded by the upstream: passed through, not encoded twice.
        let a = fetch(&gw, "GET", "/z/encoded", &[("accept-encoding", "br, gzip")]).await;
        assert_eq!(a.header("content-encoding"), Some("gzip"));
        assert!(decode("gzip", &a.body) == original);

        // Cache-Control: no-transform.
        let a = fetch(&gw, "GET", "/z/no-transform", &all).await;
        assert!(a.header("content-encoding").is_none());
        assert!(a.body == original);

        // An existing Vary is merged with, not replaced or repeated.
        let a = fetch(&gw, "GET", "/z/vary", &all).await;
        assert_eq!(a.header("content-encoding"), Some("zstd"));
        assert_eq!(a.vary(), ["Origin, Accept-Encoding"]);

        // HEAD, 204, 304 and Range requests.
        let a = fetch(&gw, "HEAD", "/z/json", &all).await;
        assert_eq!(a.status, 200);
        assert!(a.header("content-encoding").is_none());
        assert_eq!(
            a.header("content-length"),
            Some(original.len().to_string().as_str())
        );
        assert_eq!(a.header("etag"), Some("\"v1\""));
        let a = fetch(&gw, "GET", "/z/no-content", &all).await;
        assert_eq!(a.status, 204);
        assert!(a.header("content-encoding").is_none() && a.vary().is_empty());
        let a = fetch(&gw, "GET", "/z/not-modified", &all).await;
        assert_eq!(a.status, 304);
        assert!(a.header("content-encoding").is_none() && a.vary().is_empty());
        assert_eq!(a.header("etag"), Some("\"v1\""));
        let a = fetch(&gw, "GET", "/z/json", &[all[0], ("range", "bytes=0-99")]).await;
        assert!(a.header("content-encoding").is_none());
        assert!(a.body == original, "the upstream ignores Range here");

        gw.wait_access_log(11).await;
        let metrics = gw.metrics().await;
        let compressed = metric_sum(
            &metrics,
            "portico_compressed_responses_total",
            &[("route", "zipped")],
        );
        assert_eq!(compressed, 1.0, "only the Vary response on /z");
    })
    .await
}

/// An upstream that streams `json_body()` in chunks of 1000 bytes with no
/// `Content-Length` (chunked), as a service that writes its answer as it goes; after the
/// first chunk it waits until the test adds a permit to `release` (at most 5 s).
async fn streaming_upstream(
    release: std::sync::Arc<tokio::sync::Semaphore>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let release = release.clone();
            tokio::spawn(async move {
                if read_head(&mut stream, &mut Vec::new()).await.is_none() {
                    return;
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
                          transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                for (i, chunk) in json_body().chunks(1000).enumerate() {
                    if i == 1 {
                        let wait = release.acquire();
                        if let Ok(Ok(permit)) =
                            tokio::time::timeout(std::time::Duration::from_secs(5), wait).await
                        {
                            permit.forget();
                        }
                    }
                    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                    framed.extend_from_slice(chunk);
                    framed.extend_from_slice(b"\r\n");
                    let _ = stream.write_all(&framed).await;
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    (addr, task)
}

/// What a decoder makes of the start of a stream.
fn decode_prefix(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut reader: Box<dyn Read + '_> = match coding {
        "gzip" => Box::new(flate2::read::GzDecoder::new(data)),
        "br" => Box::new(brotli::Decompressor::new(data, 4096)),
        _ => Box::new(zstd::stream::read::Decoder::new(data).unwrap()),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = reader.read(&mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// A streamed body is compressed chunk by chunk as it arrives: what the upstream has sent
/// so far reaches the client decodable, before the upstream finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_compressed_as_it_arrives() {
    bounded(async {
        let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let (addr, upstream) = streaming_upstream(release.clone()).await;
        let gw = Gateway::config()
            .route_with("zipped", "/", "c", "compress = {}")
            .cluster_at("c", &[addr], "")
            .start()
            .await;
        let original = json_body();
        for coding in ["gzip", "br", "zstd"] {
            let mut resp = http_client()
                .get(gw.url("/stream"))
                .header("accept-encoding", coding)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(header(&resp, "content-encoding").as_deref(), Some(coding));
            assert!(header(&resp, "content-length").is_none());
            // The first 1000 bytes, while the upstream holds the rest back.
            let mut wire = Vec::new();
            while decode_prefix(coding, &wire).len() < 1000 {
                let chunk = tokio::time::timeout(std::time::Duration::from_secs(3), resp.chunk())
                    .await
                    .unwrap_or_else(|_| panic!("{coding}: the first chunk is held back"))
                    .unwrap()
                    .expect("more body");
                wire.extend_from_slice(&chunk);
            }
            assert_eq!(decode_prefix(coding, &wire), original[..1000]);
            release.add_permits(1);
            while let Some(chunk) = resp.chunk().await.unwrap() {
                wire.extend_from_slice(&chunk);
            }
            assert!(decode(coding, &wire) == original, "{coding} round trip");
        }
        upstream.abort();
    })
    .await
}

/// Over HTTP/2 (TLS, ALPN h2) the encoded body is framed by DATA frames: no
/// `Transfer-Encoding`, the same codings and the same bytes once decoded. curl makes the
/// requests (it sends `Accept-Encoding` as given and, without `--compressed`, decodes
/// nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_get_the_same_codings() {
    bounded(async {
        let up = upstream().await;
        let certs = tempfile::tempdir().unwrap();
        let ca = ops_support::TestCa::new("compress-ca");
        let ca_pem = ca.write(certs.path());
        let leaf = ca.server(certs.path(), "leaf", &["localhost"]);
        let gw = Gateway::config()
            .listener(&format!(
                "tls = {{ cert = \"{}\", key = \"{}\" }}",
                leaf.cert.display(),
                leaf.key.display()
            ))
            .route_with("zipped", "/", "c", "compress = {}")
            .cluster_at("c", &[up.addr], "")
            .start()
            .await;
        let original = json_body();
        for coding in ["gzip", "br", "zstd"] {
            let body = certs.path().join(format!("body.{coding}"));
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "--http2", "-D", "-", "-o"])
                .arg(&body)
                .arg("--cacert")
                .arg(&ca_pem)
                .arg("--resolve")
                .arg(format!("localhost:{}:127.0.0.1", gw.listen.port()))
                .args(["-H", &format!("accept-encoding: {coding}")])
                .arg(format!("https://localhost:{}/json", gw.listen.port()))
                .output()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    println!("SKIPPED the HTTP/2 requests: no curl ({e})");
                    return;
                }
            };
            let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            assert!(
                head.starts_with("http/2 200"),
                "{head}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                head.contains(&format!("content-encoding: {coding}\r\n")),
                "{head}"
            );
            assert!(head.contains("vary: accept-encoding\r\n"), "{head}");
            assert!(!head.contains("transfer-encoding"), "{head}");
            assert!(!head.contains("content-length"), "{head}");
            let sent = std::fs::read(&body).unwrap();
            assert!(decode(coding, &sent) == original, "{coding} over h2");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_compress_is_unchanged() {
    bounded(async {
        let up = upstream().await;
        let gw = gateway(&up).await;
        let original = json_body();
        let direct = reqwest::Client::new()
            .get(format!("http://{}/json", up.addr))
            .header("accept-encoding", "gzip, br, zstd")
            .send()
            .await
            .unwrap();
        let direct_headers = direct.headers().clone();
        for accept in ["gzip, br, zstd", "br", "*"] {
            let a = fetch(&gw, "GET", "/json", &[("accept-encoding", accept)]).await;
            assert_eq!(a.status, 200);
            assert!(a.body == original, "{accept}: byte-identical body");
            assert!(a.header("content-encoding").is_none());
            assert!(a.vary().is_empty(), "{accept}: no Vary added");
            for name in ["content-type", "content-length", "etag", "accept-ranges"] {
                assert_eq!(
                    a.headers.get(name),
                    direct_headers.get(name),
                    "{accept}: {name} as the upstream sent it"
                );
            }
        }
        let lines = gw.wait_access_log(3).await;
        assert!(lines.iter().all(|l| l.get("compression").is_none()));
        let metrics = gw.metrics().await;
        assert!(!metrics.contains("portico_compressed_responses_total{"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_with_their_place() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portico.toml");
        let text = "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
            [[routes]]\nid = \"r\"\npath = \"/\"\ncluster = \"c\"\n\
            [routes.compress]\nalgorithms = [\"gzip\", \"deflate\", \"gzip\"]\n\
            content_types = [\"json\"]\nlevels = { gzip = 12 }\n\n\
            [clusters.c]\nendpoints = [{ address = \"127.0.0.1:9\" }]\n";
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(PORTICO)
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        for expected in [
            "portico.toml:12:23: routes[0].compress.algorithms[1]: `deflate` is not a supported coding",
            "portico.toml:12:34: routes[0].compress.algorithms[2]: `gzip` is listed twice",
            "portico.toml:13:18: routes[0].compress.content_types[0]: `json`: a media type is written type/subtype",
            "portico.toml:14:19: routes[0].compress.levels.gzip: gzip level must be 1–9 (was 12)",
        ] {
            assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
        }

        // `portico routes` shows a route's settings.
        let text = text
            .replace("\"gzip\", \"deflate\", \"gzip\"", "\"br\", \"gzip\"")
            .replace("[\"json\"]", "[\"application/json\"]")
            .replace("gzip = 12", "gzip = 5");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(PORTICO)
            .args(["routes", "-c"])
            .arg(&path)
            .args(["GET", "/x"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            stdout.contains("compress:   br 4, gzip 5; from 1024 bytes; application/json"),
            "{stdout}"
        );
    })
    .await
}
