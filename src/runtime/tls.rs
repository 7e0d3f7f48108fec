//! TLS material: reading PEM files (certificates, keys, CA bundles) with errors that say
//! which file is wrong and why, and the downstream TLS state of each listener that config
//! reloads can change while it keeps accepting.
//!
//! Pingora's rustls listener builds its `ServerConfig` once, when the listener starts. It
//! takes a certificate resolver and a client-certificate verifier as trait objects, so each
//! TLS listener gets an [`SniResolver`] and a [`ClientVerifier`] whose contents sit behind an
//! `ArcSwap`: a reload loads every file first, then swaps them in, and the next handshake
//! sees the new certificates. Protocol versions (TLS 1.2 and 1.3, 1.3 preferred) and cipher
//! suites are rustls' defaults with the ring provider: only AEAD suites with forward secrecy.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::protocols::ALPN;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::config::{CertificateFiles, ClientAuth, ListenerTls};

/// The crypto provider of every TLS object portico builds: the one Pingora installs.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))
}

/// Every certificate in a PEM file, in file order (a chain: leaf first).
pub fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{path}` is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "`{path}` holds no certificate (PEM `CERTIFICATE` block)"
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("`{path}`: certificate #{} does not parse: {e}", i + 1))?;
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("`{path}` holds no usable private key: {e}"))
}

/// A CA bundle as a trust store.
pub fn read_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("`{path}`: not a usable CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// Which of a certificate pair's files is wrong.
#[derive(Debug)]
pub enum PairError {
    Cert(String),
    Key(String),
}

impl fmt::Display for PairError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairError::Cert(m) | PairError::Key(m) => f.write_str(m),
        }
    }
}

/// A certificate chain with its key, checked to belong together.
pub fn certified_key(files: &CertificateFiles) -> Result<CertifiedKey, PairError> {
    let chain = read_certificates(&files.cert).map_err(PairError::Cert)?;
    let key = read_private_key(&files.key).map_err(PairError::Key)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        PairError::Key(format!(
            "`{}` does not fit the certificate in `{}`: {e}",
            files.key, files.cert
        ))
    })
}

/// The DNS names a certificate is valid for, lower-cased: its subject alternative names,
/// or its common name when it has none.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|cn| cn.to_ascii_lowercase()),
        );
    }
    names
}

// ---------------------------------------------------------------------------------------
// Certificates by SNI
// ---------------------------------------------------------------------------------------

/// The certificates of one listener, indexed by the names they are valid for.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients without SNI or with a name no certificate has.
    default: Arc<CertifiedKey>,
}

impl CertStore {
    /// Loads every certificate of a listener. Names claimed by two certificates go to the
    /// first one listed.
    pub fn load(tls: &ListenerTls) -> Result<CertStore, String> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for files in tls.all_certificates() {
            let key = Arc::new(
                certified_key(&files).map_err(|e| format!("certificate `{}`: {e}", files.cert))?,
            );
            let names = key
                .end_entity_cert()
                .map(certificate_names)
                .unwrap_or_default();
            for name in names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_string()),
                    None => exact.entry(name),
                }
                .or_insert_with(|| key.clone());
            }
            default.get_or_insert(key);
        }
        Ok(CertStore {
            exact,
            wildcard,
            default: default.ok_or("no certificate configured")?,
        })
    }

    /// The certificate for an SNI name: an exact name, then a wildcard one level up, then
    /// the default.
    pub fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return key.clone();
            }
        }
        self.default.clone()
    }
}

impl CertStore {
    /// Every certificate of the listener once: its first name (or subject) and the Unix
    /// time it expires.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let mut keys: Vec<&Arc<CertifiedKey>> = vec![&self.default];
        for key in self.exact.values().chain(self.wildcard.values()) {
            if !keys.iter().any(|k| Arc::ptr_eq(k, key)) {
                keys.push(key);
            }
        }
        keys.into_iter()
            .filter_map(|key| {
                let cert = key.end_entity_cert().ok()?;
                let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
                let name = certificate_names(cert)
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| parsed.subject().to_string());
                Some((name, parsed.validity().not_after.timestamp()))
            })
            .collect()
    }
}

/// The listener's certificate resolver; a reload swaps its [`CertStore`].
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.store.load().select(hello.server_name()))
    }
}

// ---------------------------------------------------------------------------------------
// Client certificates (mTLS)
// ---------------------------------------------------------------------------------------

/// How a listener treats client certificates right now.
#[derive(Debug)]
pub struct ClientAuthState {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientAuthState {
    /// Builds the verifier of a listener's `client_ca`/`client_auth`; none without a CA.
    pub fn load(tls: &ListenerTls) -> Result<ClientAuthState, String> {
        let Some(ca) = &tls.client_ca else {
            return Ok(ClientAuthState { verifier: None });
        };
        let roots = Arc::new(read_roots(ca)?);
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
        let builder = match tls.client_auth.unwrap_or(ClientAuth::Required) {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        let verifier = builder
            .build()
            .map_err(|e| format!("client_ca `{ca}`: {e}"))?;
        Ok(ClientAuthState {
            verifier: Some(verifier),
        })
    }
}

/// The listener's client-certificate verifier, delegating to the current
/// [`ClientAuthState`]. rustls asks it on every handshake whether to request a
/// certificate, so a reload can turn mTLS on, off, or change the CA.
#[derive(Debug)]
pub struct ClientVerifier {
    state: ArcSwap<ClientAuthState>,
}

impl ClientVerifier {
    fn signature_algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.state
            .load()
            .verifier
            .as_ref()
            .is_some_and(|v| v.offer_client_auth())
    }

    fn client_auth_mandatory(&self) -> bool {
        self.state
            .load()
            .verifier
            .as_ref()
            .is_some_and(|v| v.client_auth_mandatory())
    }

    /// No CA names are sent as hints: they would have to outlive a reload, and clients
    /// with one certificate (the usual service case) send it either way.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.state.load().verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "client certificates are not accepted on this listener".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &Self::signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &Self::signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::signature_algorithms().supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------
// One TLS listener
// ---------------------------------------------------------------------------------------

/// Certificates and client-auth settings loaded for a listener, not yet in use.
pub struct Prepared {
    certs: CertStore,
    client_auth: ClientAuthState,
}

impl Prepared {
    /// Loads every file a listener's TLS section names.
    pub fn load(tls: &ListenerTls) -> Result<Prepared, String> {
        Ok(Prepared {
            certs: CertStore::load(tls)?,
            client_auth: ClientAuthState::load(tls)?,
        })
    }
}

/// The live TLS state of one listener.
pub struct ListenerTlsState {
    pub address: String,
    /// ALPN is fixed when the listener starts; a change needs a graceful upgrade.
    pub http2: bool,
    resolver: Arc<SniResolver>,
    verifier: Arc<ClientVerifier>,
}

impl ListenerTlsState {
    pub fn new(address: &str, tls: &ListenerTls) -> Result<ListenerTlsState, String> {
        let Prepared { certs, client_auth } = Prepared::load(tls)?;
        Ok(ListenerTlsState {
            address: address.to_string(),
            http2: tls.http2,
            resolver: Arc::new(SniResolver {
                store: ArcSwap::from_pointee(certs),
            }),
            verifier: Arc::new(ClientVerifier {
                state: ArcSwap::from_pointee(client_auth),
            }),
        })
    }

    /// Pingora listener settings that resolve through this state.
    pub fn settings(&self) -> Result<TlsSettings, String> {
        // The paths are not used: a resolver is set.
        let mut settings = TlsSettings::intermediate("", "").map_err(|e| e.to_string())?;
        settings.set_cert_resolver(self.resolver.clone());
        settings.set_client_cert_verifier(self.verifier.clone());
        if self.http2 {
            settings.enable_h2();
        } else {
            settings.set_alpn(ALPN::H1);
        }
        Ok(settings)
    }

    /// The certificates served now, each with its expiry (Unix time).
    pub fn certificate_expiries(&self) -> Vec<(String, i64)> {
        self.resolver.store.load().expiries()
    }

    /// Puts freshly loaded certificates and client-auth settings in place; the next
    /// handshake uses them.
    pub fn apply(&self, prepared: Prepared) {
        self.resolver.store.store(Arc::new(prepared.certs));
        self.verifier.state.store(Arc::new(prepared.client_auth));
    }
}

// ---------------------------------------------------------------------------------------
// Upstream peers
// ---------------------------------------------------------------------------------------

/// A CA bundle in the form Pingora's connector takes per peer.
pub fn upstream_ca(path: &str) -> Result<Arc<pingora_core::protocols::tls::CaType>, String> {
    use pingora_core::utils::tls::{parse_x509, WrappedX509};
    // read_certificates checked that each parses, so parse_x509 (which panics on bad
    // DER) is safe here.
    let certs = read_certificates(path)?;
    let wrapped: Vec<WrappedX509> = certs
        .into_iter()
        .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
        .collect();
    Ok(Arc::from(wrapped))
}

/// A client certificate and key in the form Pingora's connector takes per peer.
pub fn upstream_client_cert(
    cert: &str,
    key: &str,
) -> Result<Arc<pingora_core::utils::tls::CertKey>, PairError> {
    let files = CertificateFiles {
        cert: cert.to_string(),
        key: key.to_string(),
    };
    // Checks that the key parses and fits the certificate before Pingora would panic on it.
    let checked = certified_key(&files)?;
    let key = read_private_key(key).map_err(PairError::Key)?;
    Ok(Arc::new(pingora_core::utils::tls::CertKey::new(
        checked.cert.iter().map(|c| c.to_vec()).collect(),
        key.secret_der().to_vec(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &std::path::Path, name: &str, sans: &[&str]) -> CertificateFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = CertificateFiles {
            cert: dir.join(format!("{name}.pem")).display().to_string(),
            key: dir.join(format!("{name}.key")).display().to_string(),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.test"]);
        let w = pair(dir.path(), "w", &["*.w.test"]);
        let tls = ListenerTls {
            cert: None,
            key: None,
            certificates: vec![a.clone(), w],
            client_ca: None,
            client_auth: None,
            http2: true,
        };
        let store = CertStore::load(&tls).unwrap();
        let a_cert = read_certificates(&a.cert).unwrap();
        let is_a = |k: &Arc<CertifiedKey>| k.cert[0] == a_cert[0];
        assert!(is_a(&store.select(Some("A.test."))));
        assert!(!is_a(&store.select(Some("x.w.test"))));
        // A wildcard covers one label only.
        assert!(is_a(&store.select(Some("y.x.w.test"))));
        assert!(is_a(&store.select(None)));
    }

    #[test]
    fn mismatched_key_is_reported_on_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", &["a.test"]);
        let b = pair(dir.path(), "b", &["b.test"]);
        let wrong = CertificateFiles {
            cert: a.cert,
            key: b.key,
        };
        assert!(matches!(certified_key(&wrong), Err(PairError::Key(_))));
    }
}
