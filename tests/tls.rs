//! TLS termination on a listener: a test CA and server certificate are made at test time,
//! the real gateway serves them with rustls, and a rustls client that trusts only the test
//! CA calls through it to a plain HTTP upstream. `/metrics` tells when that certificate
//! expires.

mod common;
mod ops_support;

use std::sync::Arc;
use std::time::Duration;

use common::{ConfigText, Routes, Upstream};
use ops_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn terminates_tls_with_a_test_ca() {
    let ca = TestCa::new("portico test CA");
    let mut site = Site::new();
    let leaf = ca.server(site.dir.path(), "leaf", &["localhost"]);
    site.plain_listener = false;
    site.extra_listeners = format!(
        "\n[[listeners]]\naddress = \"{}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
        site.listen,
        leaf.cert.display(),
        leaf.key.display()
    );
    let up = Upstream::start("up").await;
    site.write_config(
        &Routes::new()
            .route("all", "/", "up")
            .cluster("up", &[&up])
            .to_string(),
    );
    let gateway = site.spawn(&[], "portico.log");
    wait_ready(&site, gateway.pid, Duration::from_secs(15)).await;
    let listen = site.listen;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
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
    let text = String::from_utf8_lossy(&response);
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
    let listener = listen.to_string();
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
