//! TLS termination on a listener: a test CA and server certificate are made at test time,
//! the real gateway serves them with rustls, and a rustls client that trusts only the test
//! CA calls through it to a plain HTTP upstream. `/metrics` tells when that certificate
//! expires.

mod common;
mod ops_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ConfigText, Routes, Upstream};
use ops_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway with one TLS listener (a certificate of a test CA for `localhost`) routing
/// everything to `up`, with `extra` appended to its config; and a client config trusting
/// only that CA.
struct TlsSite {
    site: Site,
    /// Kept alive with the site: dropping it kills the gateway.
    gateway: Proc,
    client_config: rustls::ClientConfig,
    leaf: Issued,
}

async fn tls_gateway(up: &Upstream, extra: &str) -> TlsSite {
    tls_gateway_with(up, "", extra).await
}

/// [`tls_gateway`] with extra keys on the TLS listener.
async fn tls_gateway_with(up: &Upstream, listener_extra: &str, extra: &str) -> TlsSite {
    let ca = TestCa::new("portico test CA");
    let mut site = Site::new();
    let leaf = ca.server(site.dir.path(), "leaf", &["localhost"]);
    site.plain_listener = false;
    site.extra_listeners = format!(
        "\n[[listeners]]\naddress = \"{}\"\n{listener_extra}\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        site.listen,
        leaf.cert.display(),
        leaf.key.display()
    );
    let routes = Routes::new()
        .route("all", "/", "up")
        .cluster("up", &[up])
        .to_string();
    site.write_config(&format!("{routes}\n{extra}"));
    let gateway = site.spawn(&[], "portico.log");
    wait_ready(&site, gateway.pid, Duration::from_secs(15)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsSite {
        site,
        gateway,
        client_config,
        leaf,
    }
}

/// `GET /x` over a new TLS connection; the whole response.
async fn get_over_tls(site: &Site, client_config: &rustls::ClientConfig) -> String {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config.clone()));
    let tcp = tokio::net::TcpStream::connect(site.listen).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake succeeds against the test CA");
    tls.write_all(b"GET /x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response))
        .await
        .expect("response in time")
        .ok();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn terminates_tls_with_a_test_ca() {
    let up = Upstream::start("up").await;
    let TlsSite {
        site,
        client_config,
        leaf,
        gateway: _gateway,
    } = tls_gateway(&up, "").await;
    let text = get_over_tls(&site, &client_config).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("up"), "the upstream answered: {text}");
    assert_eq!(
        up.last_request().header_all("x-forwarded-proto"),
        ["https"],
        "upstream should see X-Forwarded-Proto: https"
    );

    // The certificate's expiry, as Prometheus alerts on it.
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.der.as_ref()).unwrap();
    let expiry = parsed.validity().not_after.timestamp() as f64;
    let metrics = client()
        .get(site.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listener = site.listen.to_string();
    assert_eq!(
        common::metric_value(
            &metrics,
            "portico_tls_certificate_expiry_seconds",
            &[
                ("listener", listener.as_str()),
                ("certificate", "localhost")
            ]
        ),
        Some(expiry),
        "{metrics}"
    );
}

/// Pingora gives a TLS handshake a fixed 60 s; portico's pre-TLS hook puts the first byte
/// and the ClientHello under `[limits]`, like a plaintext request header.
#[tokio::test]
async fn silent_and_trickling_tls_clients_are_closed_at_the_limits() {
    let up = Upstream::start("up").await;
    let limits = "[limits]\nfirst_byte_timeout = \"1s\"\nheader_timeout = \"2s\"\n";
    let TlsSite {
        site,
        client_config,
        gateway: _gateway,
        ..
    } = tls_gateway(&up, limits).await;

    let start = Instant::now();
    let silent = tokio::net::TcpStream::connect(site.listen).await.unwrap();
    // A handshake record header announcing 512 bytes, then a byte every 300 ms: every read is
    // quick, the ClientHello never ends.
    let mut trickler = tokio::net::TcpStream::connect(site.listen).await.unwrap();
    trickler.write_all(&[22, 3, 1, 2, 0]).await.unwrap();
    let trickled_from = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if trickler.write_all(&[1]).await.is_err() {
                return Some(trickled_from.elapsed());
            }
            // A closed socket shows on a read first.
            let mut probe = [0u8; 16];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), trickler.read(&mut probe)).await
            {
                return Some(trickled_from.elapsed());
            }
        }
        None
    });

    // Real clients are served meanwhile: the hook hands rustls the bytes it read.
    let text = get_over_tls(&site, &client_config).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    let silent_closed = closed_within(silent, Duration::from_secs(10)).await;
    let silent_after = start.elapsed();
    assert!(silent_closed, "a silent TLS client is closed");
    assert!(
        silent_after >= Duration::from_millis(900) && silent_after < Duration::from_secs(5),
        "closed at first_byte_timeout (1 s), not Pingora's 60 s: {silent_after:?}"
    );
    let trickled = trickle
        .await
        .unwrap()
        .expect("the trickling client is closed");
    assert!(
        trickled >= Duration::from_millis(1500) && trickled < Duration::from_secs(6),
        "closed at header_timeout (2 s) from its first byte: {trickled:?}"
    );
    // Pingora logs each failed handshake as an error; portico keeps them at debug, counted.
    let log = site.log("portico.log");
    assert!(!log.contains("Downstream handshake"), "{log}");
    let metrics = client()
        .get(site.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The two above, and the supervisor's own connect that checks the listener accepts.
    let failed = common::metric_value(
        &metrics,
        "portico_pingora_events_total",
        &[("event", "downstream_handshake_failed")],
    );
    assert!(failed >= Some(2.0), "{metrics}");
    let timeouts = |phase| {
        common::metric_value(
            &metrics,
            "portico_client_timeouts_total",
            &[("phase", phase)],
        )
    };
    assert_eq!(
        (timeouts("first_byte"), timeouts("header")),
        (Some(1.0), Some(1.0))
    );
}

/// Whether the peer closes `conn` within `limit`.
async fn closed_within(mut conn: tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// On a TLS listener with `proxy_protocol = true` the PROXY header comes before the
/// ClientHello; its source is the client the upstream hears of. Without it, no handshake.
#[tokio::test]
async fn a_proxy_protocol_header_before_the_client_hello_names_the_client() {
    let up = Upstream::start("up").await;
    let TlsSite {
        site,
        client_config,
        gateway: _gateway,
        ..
    } = tls_gateway_with(
        &up,
        "proxy_protocol = true",
        "[limits]\nproxy_header_timeout = \"500ms\"",
    )
    .await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    // Version 2, as AWS NLB and HAProxy send it: TCP over IPv4, 198.51.100.20:40000.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    header.extend_from_slice(&[198, 51, 100, 20, 127, 0, 0, 1]);
    header.extend_from_slice(&40000u16.to_be_bytes());
    header.extend_from_slice(&443u16.to_be_bytes());
    for (prefix, client) in [
        (
            b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 443\r\n".to_vec(),
            "203.0.113.9",
        ),
        (header, "198.51.100.20"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(site.listen).await.unwrap();
        tcp.write_all(&prefix).await.unwrap();
        let mut tls =
            tokio::time::timeout(Duration::from_secs(5), connector.connect(name.clone(), tcp))
                .await
                .expect("handshake in time")
                .expect("handshake after the PROXY header");
        tls.write_all(b"GET /x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(up.last_request().header_all("x-forwarded-for"), [client]);
        assert_eq!(up.last_request().header_all("x-forwarded-proto"), ["https"]);
    }

    // A ClientHello without the header first is not a PROXY header: closed, no handshake.
    let tcp = tokio::net::TcpStream::connect(site.listen).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("refused in time");
    assert!(
        refused.is_err(),
        "a handshake without a PROXY header must fail"
    );
    assert_eq!(up.hits(), 2);
}
