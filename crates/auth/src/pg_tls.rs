//! PostgreSQL over TLS: libpq's `sslmode` and `sslrootcert` (read from the
//! `database_url`'s query, which tokio-postgres would refuse), and a
//! `tokio_postgres::tls::MakeTlsConnect` on tokio-rustls (ring, as the gateway's
//! listeners), so the token service needs no OpenSSL.
//!
//! | `sslmode`     | TLS                         | certificate checked                        |
//! |---------------|-----------------------------|--------------------------------------------|
//! | `disable`     | never                       | —                                          |
//! | `prefer`      | if the server offers it     | no                                         |
//! | `require`     | always                      | no; with `sslrootcert`, as `verify-ca`     |
//! | `verify-ca`   | always                      | chain to `sslrootcert` (or system roots)   |
//! | `verify-full` | always                      | chain and the host name (or IP address)    |
//!
//! Without `sslmode`, a database on loopback (`localhost`, 127.0.0.0/8, `::1`, a Unix
//! socket) gets `prefer` and any other host `verify-full`: the service reads every
//! private signing key from the database, which must not cross a network in the clear or
//! to an impostor. Without `sslrootcert`, `verify-ca` and `verify-full` use the system's
//! roots (libpq would read `~/.postgresql/root.crt`); `sslrootcert=system` says so
//! explicitly, as libpq 16 does.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode` values that the service supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err("sslmode `allow` is not supported: use `prefer` or stricter".into())
            }
            other => {
                return Err(format!(
                    "unknown sslmode `{other}`: use disable, prefer, require, verify-ca or \
                     verify-full"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the CA certificates that `verify-ca` and `verify-full` trust come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The operating system's store.
    System,
    /// A PEM file of one or more certificates.
    File(PathBuf),
}

/// A PostgreSQL `database_url` taken apart: the connection settings tokio-postgres reads,
/// and the TLS settings it does not.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    /// Whether `mode` came from the URL (else the loopback rule chose it).
    pub mode_explicit: bool,
    pub root_cert: Option<RootCerts>,
}

impl PgSettings {
    /// Parses a `postgres://` URL with libpq's `sslmode` and `sslrootcert` in its query.
    pub fn parse(url: &str) -> Result<PgSettings, String> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut kept = Vec::new();
        let (mut mode, mut root_cert) = (None, None);
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = || -> String {
                form_urlencoded::parse(format!("v={value}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            match key {
                "sslmode" => mode = Some(SslMode::parse(&decoded())?),
                "sslrootcert" => {
                    let v = decoded();
                    root_cert = Some(if v == "system" {
                        RootCerts::System
                    } else {
                        RootCerts::File(PathBuf::from(v))
                    });
                }
                "sslcert" | "sslkey" | "sslpassword" | "sslcrl" => {
                    return Err(format!(
                        "`{key}` is not supported (client certificates and CRLs): \
                         authenticate with a password"
                    ))
                }
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        let mode_explicit = mode.is_some();
        let mode = mode.unwrap_or_else(|| {
            if is_loopback(config.get_hosts()) {
                SslMode::Prefer
            } else {
                SslMode::VerifyFull
            }
        });
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgSettings {
            config,
            mode,
            mode_explicit,
            root_cert,
        })
    }

    /// The TLS connector for these settings (reads `sslrootcert`).
    pub fn connector(&self) -> Result<MakeRustls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        // `require` with a CA file checks the chain, as libpq does.
        let verify = match (self.mode, &self.root_cert) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => None,
            (SslMode::Require | SslMode::VerifyCa, _) => Some(false),
            (SslMode::VerifyFull, _) => Some(true),
        };
        let config = match verify {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth(),
            Some(check_name) => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("sslrootcert: {e}"))?;
                if check_name {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match self.root_cert.as_ref().unwrap_or(&RootCerts::System) {
            RootCerts::System => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(format!(
                        "sslmode={} needs CA certificates: the system has none \
                         ({:?}); set sslrootcert",
                        self.mode.as_str(),
                        found.errors
                    ));
                }
            }
            RootCerts::File(path) => {
                let shown = path.display();
                let pem = std::fs::read(path)
                    .map_err(|e| format!("sslrootcert `{shown}`: cannot read: {e}"))?;
                let mut n = 0;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| format!("sslrootcert `{shown}`: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert `{shown}`: {e}"))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(format!("sslrootcert `{shown}` holds no PEM certificate"));
                }
            }
        }
        Ok(roots)
    }

    /// `host:port` of the first host, for messages.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port} (sslmode={})", self.mode.as_str())
    }
}

/// Whether every host is on this machine: `localhost`, a loopback address or a socket.
fn is_loopback(hosts: &[tokio_postgres::config::Host]) -> bool {
    // No host: tokio-postgres connects to localhost... on Unix, a socket in practice.
    hosts.iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    })
}

/// Checks the chain but not the name (`verify-ca`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked first; a name mismatch is reported only after it passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Encrypts without checking who answers (`prefer`, `require` without a CA): libpq's
/// semantics, only against passive eavesdropping. The handshake's signatures are still
/// checked, so the session key is the certificate holder's.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Makes a TLS connector per connection, for the host tokio-postgres connects to.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = domain.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            connector
                .connect(self.name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
        })
    }
}

/// An encrypted connection to PostgreSQL.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM's tls-server-end-point binding is not offered (the default `prefer` of
        // channel binding then authenticates without it).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_defaults_by_host_and_url_params_are_taken_out() {
        let s = PgSettings::parse("postgres://u@127.0.0.1:5432/db").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        let s = PgSettings::parse("postgres://u@localhost/db").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        let s = PgSettings::parse("postgres://u@db.internal/db").unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert!(!s.mode_explicit);
        let s = PgSettings::parse(
            "postgres://u@db.internal/db?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&options=-c%20search_path%3Dx",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert, Some(RootCerts::File("/etc/ca.pem".into())));
        assert_eq!(s.config.get_options(), Some("-c search_path=x"));
        let s = PgSettings::parse("postgres://u@10.0.0.1/db?sslmode=disable").unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        assert!(PgSettings::parse("postgres://u@h/db?sslmode=bogus")
            .unwrap_err()
            .contains("bogus"));
        assert!(PgSettings::parse("postgres://u@h/db?sslcert=/x").is_err());
    }
}
