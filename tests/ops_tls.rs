//! TLS end to end with CAs made at test time (rcgen): a listener with two certificates
//! picked by SNI, a reload that switches a certificate, client-certificate (mTLS) checks
//! turned from required to optional by a reload, TLS 1.3 by default and 1.2 with safe
//! suites, ALPN h2; upstream TLS to an in-test rustls server trusted through a private CA
//! (and refused without it, or with the wrong name), with a client certificate toward it;
//! and `portico check` naming the place of every TLS mistake.

mod common;
mod ops_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Upstream;
use ops_support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts `roots`, optionally presenting `cert`.
fn client_config(
    roots: &[CertificateDer<'static>],
    cert: Option<&Issued>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store);
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&c.cert).unwrap()],
                PrivateKeyDer::from_pem_file(&c.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

fn trusting(roots: &[CertificateDer<'static>], cert: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    client_config(roots, cert, rustls::DEFAULT_VERSIONS, &[])
}

/// Accepts any server certificate: to see which one a server presents.
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn accept_any() -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth(),
    )
}

/// What one HTTPS request saw.
#[derive(Debug)]
struct TlsAnswer {
    status: u16,
    body: String,
    cert: CertificateDer<'static>,
    version: rustls::ProtocolVersion,
    suite: String,
    alpn: Option<String>,
}

/// `GET path` over TLS with `sni`, on a new connection.
async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<TlsAnswer, String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, conn) = tls.get_ref();
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no certificate")?;
        let version = conn.protocol_version().unwrap();
        let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok(TlsAnswer {
            status,
            body,
            cert,
            version,
            suite,
            alpn,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn route_all(up: &Upstream) -> String {
    format!(
        "[[routes]]\nid = \"all\"\npath = \"/\"\ncluster = \"up\"\n[clusters.up]\nendpoints = [{{ address = \"{}\" }}]\n",
        up.addr
    )
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_a_reload_switches_it() {
    bounded(async {
        let up = Upstream::start("up").await;
        let mut site = Site::new();
        let dir = site.dir.path().to_path_buf();
        let ca = TestCa::new("edge-ca");
        let a = ca.server(&dir, "a", &["a.test"]);
        let b = ca.server(&dir, "b", &["b.test", "*.b.test"]);
        let tls_addr = common::free_addr();
        site.extra_listeners = format!(
            "\n[[listeners]]\naddress = \"{tls_addr}\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}\n",
            p(&a.cert), p(&a.key), p(&b.cert), p(&b.key)
        );
        site.write_config(&route_all(&up));
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;

        let roots = [ca.der()];
        for (sni, expected) in [("a.test", &a.der), ("b.test", &b.der), ("api.b.test", &b.der)] {
            let answer = tls_get(tls_addr, sni, trusting(&roots, None), "/x")
                .await
                .unwrap_or_else(|e| panic!("{sni}: {e}"));
            assert_eq!(answer.status, 200, "{sni}");
            assert_eq!(&answer.cert, expected, "{sni} gets its own certificate");
            assert_eq!(answer.version, rustls::ProtocolVersion::TLSv1_3, "TLS 1.3 preferred");
        }
        // An unknown name gets the first certificate.
        let answer = tls_get(tls_addr, "unknown.test", accept_any(), "/x").await.unwrap();
        assert_eq!(answer.cert, a.der);
        // ... which a verifying client then refuses.
        assert!(tls_get(tls_addr, "unknown.test", trusting(&roots, None), "/x")
            .await
            .is_err());

        // The certificate of b.test is renewed on disk; a reload puts it in service.
        let b2 = ca.server(&dir, "b", &["b.test", "*.b.test"]);
        assert_ne!(b2.der, b.der);
        let still = tls_get(tls_addr, "b.test", trusting(&roots, None), "/x").await.unwrap();
        assert_eq!(still.cert, b.der, "nothing changes before the reload");
        let (status, answer) = admin_reload(&site).await;
        assert_eq!(status, 200, "{answer}");
        let renewed = tls_get(tls_addr, "b.test", trusting(&roots, None), "/x").await.unwrap();
        assert_eq!(renewed.cert, b2.der, "the reload switched the certificate");
        let a_again = tls_get(tls_addr, "a.test", trusting(&roots, None), "/x").await.unwrap();
        assert_eq!(a_again.cert, a.der);

        // A broken key file is refused by the reload; the running certificates stay.
        std::fs::write(&b.key, "not a key").unwrap();
        let (status, answer) = admin_reload(&site).await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("listeners[1].tls.certificates[1].key"),
            "{answer}"
        );
        let kept = tls_get(tls_addr, "b.test", trusting(&roots, None), "/x").await.unwrap();
        assert_eq!(kept.cert, b2.der);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_clients_without_a_certificate_from_the_ca() {
    bounded(async {
        let up = Upstream::start("up").await;
        let mut site = Site::new();
        let dir = site.dir.path().to_path_buf();
        let server_ca = TestCa::new("server-ca");
        let client_ca = TestCa::new("client-ca");
        let other_ca = TestCa::new("other-ca");
        let client_ca_pem = client_ca.write(&dir);
        let server = server_ca.server(&dir, "server", &["gw.test"]);
        let good = client_ca.client(&dir, "service-a", "service-a");
        let stranger = other_ca.client(&dir, "stranger", "service-a");
        let tls_addr = common::free_addr();
        let listener = |mode: &str| {
            format!(
                "\n[[listeners]]\naddress = \"{tls_addr}\"\ntls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\"{mode} }}\n",
                p(&server.cert),
                p(&server.key),
                p(&client_ca_pem)
            )
        };
        site.extra_listeners = listener("");
        site.write_config(&route_all(&up));
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;
        let roots = [server_ca.der()];

        let ok = tls_get(tls_addr, "gw.test", trusting(&roots, Some(&good)), "/x")
            .await
            .expect("a client certificate from the CA is accepted");
        assert_eq!((ok.status, ok.body.as_str()), (200, "up"));
        let hits = up.hits();
        let none = tls_get(tls_addr, "gw.test", trusting(&roots, None), "/x").await;
        assert!(none.is_err(), "no certificate: refused, got {none:?}");
        let wrong = tls_get(tls_addr, "gw.test", trusting(&roots, Some(&stranger)), "/x").await;
        assert!(wrong.is_err(), "a certificate from another CA: refused, got {wrong:?}");
        assert_eq!(up.hits(), hits, "refused clients reach nothing");

        // A reload makes the certificate optional: no certificate passes, a bad one still not.
        site.extra_listeners = listener(", client_auth = \"optional\"");
        site.write_config(&route_all(&up));
        let (status, answer) = admin_reload(&site).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer["upgrade_required"].is_null(), "certificates change in place: {answer}");
        let none = tls_get(tls_addr, "gw.test", trusting(&roots, None), "/x").await;
        assert_eq!(none.expect("optional: no certificate is fine").status, 200);
        let wrong = tls_get(tls_addr, "gw.test", trusting(&roots, Some(&stranger)), "/x").await;
        assert!(wrong.is_err(), "optional still verifies a presented certificate");
        let ok = tls_get(tls_addr, "gw.test", trusting(&roots, Some(&good)), "/x").await;
        assert_eq!(ok.unwrap().status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions_suites_and_alpn() {
    bounded(async {
        let up = Upstream::start("up").await;
        let mut site = Site::new();
        let dir = site.dir.path().to_path_buf();
        let ca = TestCa::new("edge-ca");
        let ca_pem = ca.write(&dir);
        let cert = ca.server(&dir, "gw", &["gw.test"]);
        let (h2_addr, h1_addr) = (common::free_addr(), common::free_addr());
        site.extra_listeners = format!(
            "\n[[listeners]]\naddress = \"{h2_addr}\"\ntls = {{ cert = \"{c}\", key = \"{k}\" }}\n\
             \n[[listeners]]\naddress = \"{h1_addr}\"\ntls = {{ cert = \"{c}\", key = \"{k}\", http2 = false }}\n",
            c = p(&cert.cert),
            k = p(&cert.key)
        );
        site.write_config(&route_all(&up));
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;
        let roots = [ca.der()];

        let tls12 = client_config(&roots, None, &[&rustls::version::TLS12], &[]);
        let old = tls_get(h2_addr, "gw.test", tls12, "/x").await.expect("TLS 1.2 works");
        assert_eq!(old.version, rustls::ProtocolVersion::TLSv1_2);
        assert!(
            old.suite.contains("ECDHE") && (old.suite.contains("GCM") || old.suite.contains("CHACHA20")),
            "forward secrecy and AEAD: {}",
            old.suite
        );
        let both = client_config(&roots, None, rustls::DEFAULT_VERSIONS, &["h2", "http/1.1"]);
        // The h2 listener picks h2 (then the raw HTTP/1.1 bytes are not an h2 request:
        // only the negotiation is looked at here).
        let conn = async {
            let tcp = tokio::net::TcpStream::connect(h2_addr).await.unwrap();
            tokio_rustls::TlsConnector::from(both.clone())
                .connect(ServerName::try_from("gw.test").unwrap(), tcp)
                .await
                .unwrap()
        }
        .await;
        assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let h1 = tls_get(h1_addr, "gw.test", both, "/x").await.unwrap();
        assert_eq!(h1.alpn.as_deref(), Some("http/1.1"));
        assert_eq!(h1.status, 200);

        // A real HTTP/2 request, when curl is there to make one.
        let curl = std::process::Command::new("curl")
            .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .arg("--cacert")
            .arg(&ca_pem)
            .arg("--resolve")
            .arg(format!("gw.test:{}:127.0.0.1", h2_addr.port()))
            .arg(format!("https://gw.test:{}/over-h2", h2_addr.port()))
            .output();
        match curl {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert_eq!(text, "2 200", "{}", String::from_utf8_lossy(&out.stderr));
                assert_eq!(up.last_request().uri, "/over-h2");
            }
            Err(e) => println!("SKIPPED the HTTP/2 request: no curl ({e})"),
        }
    })
    .await;
}

/// An in-test HTTPS upstream (rustls): answers `tls-upstream` with `x-client-cert: yes|no`.
async fn tls_upstream(cert: &Issued, client_ca: Option<&TestCa>) -> SocketAddr {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = client_ca {
        roots.add(ca.der()).unwrap();
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(_) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&cert.cert).unwrap()],
            PrivateKeyDer::from_pem_file(&cert.key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let presented = tls.get_ref().1.peer_certificates().is_some();
                let service = service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("x-client-cert", if presented { "yes" } else { "no" })
                            .body(Full::new(bytes::Bytes::from_static(b"tls-upstream")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_trusts_a_private_ca_and_presents_a_client_certificate() {
    bounded(async {
        let site = Site::new();
        let dir = site.dir.path().to_path_buf();
        let upstream_ca = TestCa::new("upstream-ca");
        let upstream_ca_pem = upstream_ca.write(&dir);
        let gateway_ca = TestCa::new("gateway-client-ca");
        let server_cert = upstream_ca.server(&dir, "upstream", &["upstream.test"]);
        let gateway_cert = gateway_ca.client(&dir, "gateway", "portico");
        let plain = tls_upstream(&server_cert, None).await;
        let mtls = tls_upstream(&server_cert, Some(&gateway_ca)).await;

        let cluster = |name: &str, addr: SocketAddr, extra: &str| {
            format!(
                "[[routes]]\nid = \"{name}\"\npath = \"/{name}\"\ncluster = \"{name}\"\nretry = {{ attempts = 1, on = [] }}\n\
                 [clusters.{name}]\nendpoints = [{{ address = \"{addr}\" }}]\ntls = true\nsni = \"upstream.test\"\n{extra}\n"
            )
        };
        let ca_line = format!("ca_file = \"{}\"\n", p(&upstream_ca_pem));
        let client_lines = format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            p(&gateway_cert.cert),
            p(&gateway_cert.key)
        );
        let body = [
            cluster("trusted", plain, &ca_line),
            cluster("untrusted", plain, ""),
            cluster("noverify", plain, "verify = false\n"),
            cluster("wrongname", plain, &ca_line)
                .replace("sni = \"upstream.test\"", "sni = \"other.test\""),
            cluster("mtls", mtls, &format!("{ca_line}{client_lines}")),
            cluster("mtlsnocert", mtls, &ca_line),
        ]
        .concat();
        site.write_config(&body);
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;

        let get = |path: &'static str| {
            let url = site.url(path);
            async move {
                let resp = client().get(url).send().await.unwrap();
                let status = resp.status().as_u16();
                let cert = resp
                    .headers()
                    .get("x-client-cert")
                    .map(|v| v.to_str().unwrap().to_string());
                (status, cert, resp.text().await.unwrap())
            }
        };
        let (status, _, body) = get("/trusted/x").await;
        assert_eq!((status, body.as_str()), (200, "tls-upstream"), "trusted through ca_file");
        let (status, _, body) = get("/untrusted/x").await;
        assert_eq!(status, 502, "the private CA is not in the system store: {body}");
        let (status, _, _) = get("/noverify/x").await;
        assert_eq!(status, 200, "verify = false skips the check");
        let (status, _, body) = get("/wrongname/x").await;
        assert_eq!(status, 502, "the certificate is not for other.test: {body}");
        let (status, cert, _) = get("/mtls/x").await;
        assert_eq!((status, cert.as_deref()), (200, Some("yes")), "client certificate presented");
        let (status, _, body) = get("/mtlsnocert/x").await;
        assert_eq!(status, 502, "the upstream requires a client certificate: {body}");
    })
    .await;
}

#[tokio::test]
async fn tls_mistakes_are_reported_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    let a = ca.server(dir.path(), "a", &["a.test"]);
    let b = ca.server(dir.path(), "b", &["b.test"]);
    let missing = dir.path().join("missing.key");
    let config = format!(
        r#"[[listeners]]
address = "127.0.0.1:1"
tls = {{ certificates = [{{ cert = "{ac}", key = "{ak}" }}, {{ cert = "{bc}", key = "{missing}" }}] }}

[[listeners]]
address = "127.0.0.1:2"
tls = {{ cert = "{ac}", key = "{bk}", client_auth = "optional" }}

[[routes]]
id = "r"
path = "/"
cluster = "c"

[clusters.c]
endpoints = [{{ address = "127.0.0.1:3" }}]
ca_file = "{ac}"

[clusters.d]
endpoints = [{{ address = "127.0.0.1:4" }}]
tls = true
client_cert = "{ac}"
"#,
        ac = p(&a.cert),
        ak = p(&a.key),
        bc = p(&b.cert),
        bk = p(&b.key),
        missing = p(&missing),
    );
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(common::PORTICO)
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&out.stderr);
    println!("{errors}");
    for expected in [
        ":3:",
        "listeners[0].tls.certificates[1].key: file",
        "does not exist",
        "listeners[1].tls.key:",
        "does not fit the certificate",
        "listeners[1].tls.client_auth: needs `client_ca`",
        "clusters.c.ca_file: only used with `tls = true`",
        "clusters.d.client_key: `client_cert` needs its `client_key`",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
}
