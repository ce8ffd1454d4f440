//! TLS for the HTTP servers (the master's API, a gateway): a certificate chain and its key from
//! PEM files (`--tls-cert`, `--tls-key`), TLS 1.2 and 1.3 with rustls's safe defaults and the
//! `ring` provider. Clients verify the server against the roots they are given (`--ca`) or
//! the public ones.
//!
//! Agents serve their HTTP (sinks, ingest, logs, metrics) over HTTPS with the certificate the
//! master's CA issued them ([`crate::ca`]); [`agent_client_config`] is what their clients
//! (the master, gateways, programs holding a capability) verify them with.
//!
//! The handshake is part of the connection's admission: it must finish within the server's
//! header timeout, and a client that does not speak TLS is closed without an answer.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error("the certificate file {path}: {message}")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key file is missing, unreadable or holds no private key.
    #[error("the key file {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key do not make a TLS server: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor serving the certificate chain in `cert` (PEM, leaf first) with the private
/// key in `key` (PEM: PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certificate_error = |message: String| TlsError::Certificate { path: cert.display().to_string(), message };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| certificate_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| certificate_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificate_error("no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), message: e.to_string() })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The base URL of an agent's HTTP server from the address it reports: a URL as is
/// (`https://10.0.0.5:7071`, what agents serving HTTPS report), a bare `host:port` as `http://`.
pub fn agent_base(addr: &str) -> String {
    if addr.contains("://") { addr.trim_end_matches('/').to_owned() } else { format!("http://{addr}") }
}

/// A TLS client configuration for agents' HTTPS servers: it trusts the fleet's CA (`ca`,
/// PEM, from the master) and checks that the agent's certificate names
/// [`crate::ca::AGENT_NAME`], whatever address was dialled (agents are reached by the
/// addresses they report, not by a name in DNS).
pub fn agent_client_config(ca: &str) -> Result<rustls::ClientConfig, TlsError> {
    let certificate_error = |message: String| TlsError::Certificate { path: "the fleet CA".into(), message };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.map_err(|e| certificate_error(e.to_string()))?).map_err(TlsError::Config)?;
    }
    if roots.is_empty() {
        return Err(certificate_error("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| certificate_error(e.to_string()))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AgentVerifier { inner }))
        .with_no_client_auth())
}

/// Verifies an agent's certificate chain against the fleet CA under the agents' one name.
#[derive(Debug)]
struct AgentVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let name = rustls::pki_types::ServerName::try_from(crate::ca::AGENT_NAME)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
