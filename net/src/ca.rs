//! The fleet's certificate authority for the agents' data port.
//!
//! The master keeps a small CA (an ECDSA P-256 key and a self-signed certificate, made on
//! its first start in `<data-dir>/ca/`). An agent makes its own key, which never leaves it,
//! and sends a certificate signing request with its agent token
//! (`POST /api/v1/agent/certificate`); the master answers with a certificate valid for
//! [`LIFETIME`] and the CA's certificate. Agents renew at two thirds of the lifetime, so a
//! stolen certificate is worth at most a day, and a fleet whose agent token is changed stops
//! trusting the old holders within a day.
//!
//! Every agent certificate names the same DNS name, [`AGENT_NAME`], and the agent's id as its
//! common name, and may be used both to serve and to dial: any agent of the fleet may talk to
//! any other, as their jobs' placement requires. The master decides every field: of the
//! request only the public key is used.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// The DNS name in every agent certificate, which peers verify.
pub const AGENT_NAME: &str = "squilla-agent";

/// How long an agent certificate is valid (24 h).
pub const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far back an agent certificate's validity starts, for clocks a little behind the
/// master's (5 min).
const SKEW: Duration = Duration::from_secs(300);

/// How long the CA's own certificate is valid (10 years).
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The largest signing request accepted, in bytes of PEM.
pub const MAX_REQUEST_BYTES: usize = 16 << 10;

/// Why the CA could not be loaded or a certificate not made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CA's files could not be read or written.
    #[error("the CA in {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The CA's files exist but do not hold a CA certificate and its key.
    #[error("the CA in {path} is damaged: {message}")]
    Damaged {
        /// The directory.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The signing request is not a PEM PKCS#10 request signed by its own key.
    #[error("the certificate signing request is not valid: {0}")]
    Request(String),
    /// Making a key or certificate failed.
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
}

/// A certificate the CA made.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub certificate: String,
    /// The end of its validity, in milliseconds since the epoch.
    pub not_after_ms: u64,
}

/// The master's CA.
pub struct Authority {
    certificate: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

fn offset(at: SystemTime) -> time::OffsetDateTime {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    time::OffsetDateTime::UNIX_EPOCH + since
}

fn random_serial() -> Result<SerialNumber, std::io::Error> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[0] &= 0x7f; // a positive integer
    Ok(SerialNumber::from_slice(&bytes))
}

impl Authority {
    /// The CA kept in `dir` (`ca.pem`, `ca.key`), made there on first use (the key with
    /// mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Authority, CaError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CaError::Io { path, source }
        };
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() || key_path.exists() {
            let certificate = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let damaged =
                |e: rcgen::Error| CaError::Damaged { path: dir.display().to_string(), message: e.to_string() };
            let key = KeyPair::from_pem(&key).map_err(damaged)?;
            let issuer = Issuer::from_ca_cert_pem(&certificate, key).map_err(damaged)?;
            return Ok(Authority { certificate, issuer });
        }
        // Made beside and renamed into place: a crash leaves either no CA or a whole one.
        let authority = Authority::generate()?;
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let staging = parent.join(format!(".ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        let staged_key = staging.join("ca.key");
        write_private(&staged_key, &authority.issuer.key().serialize_pem()).map_err(io(&staged_key))?;
        let staged_cert = staging.join("ca.pem");
        std::fs::write(&staged_cert, &authority.certificate).map_err(io(&staged_cert))?;
        std::fs::rename(&staging, dir).map_err(io(dir))?;
        Ok(authority)
    }

    /// The CA of a certificate and its key (both PEM), as [`Authority::pems`] gives them:
    /// how masters that share a store share one CA.
    pub fn from_pems(certificate: &str, key: &str) -> Result<Authority, CaError> {
        let damaged = |e: rcgen::Error| CaError::Damaged { path: "the store".into(), message: e.to_string() };
        let key = KeyPair::from_pem(key).map_err(damaged)?;
        let issuer = Issuer::from_ca_cert_pem(certificate, key).map_err(damaged)?;
        Ok(Authority { certificate: certificate.to_owned(), issuer })
    }

    /// The CA's certificate and private key, PEM.
    pub fn pems(&self) -> (String, String) {
        (self.certificate.clone(), self.issuer.key().serialize_pem())
    }

    /// A new CA held only in memory.
    pub fn generate() -> Result<Authority, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "squilla fleet CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = offset(now - SKEW);
        params.not_after = offset(now + CA_LIFETIME);
        params.serial_number = Some(random_serial().map_err(|e| CaError::Request(e.to_string()))?);
        let certificate = params.self_signed(&key)?.pem();
        Ok(Authority { certificate, issuer: Issuer::new(params, key) })
    }

    /// The CA's certificate (PEM), which agents trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate
    }

    /// A certificate for agent `agent` with the public key of `request` (PEM PKCS#10),
    /// valid for `lifetime` from now.
    pub fn issue(&self, request: &str, agent: &str, lifetime: Duration) -> Result<Issued, CaError> {
        if request.len() > MAX_REQUEST_BYTES {
            return Err(CaError::Request(format!("longer than {MAX_REQUEST_BYTES} bytes")));
        }
        let request =
            CertificateSigningRequestParams::from_pem(request).map_err(|e| CaError::Request(e.to_string()))?;
        let mut params = CertificateParams::new(vec![AGENT_NAME.to_owned()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, agent);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        let not_after = now + lifetime;
        params.not_before = offset(now - SKEW);
        params.not_after = offset(not_after);
        params.serial_number = Some(random_serial().map_err(|e| CaError::Request(e.to_string()))?);
        params.use_authority_key_identifier_extension = true;
        debug_assert!(matches!(params.subject_alt_names.first(), Some(SanType::DnsName(_))));
        let certificate = params.signed_by(&request.public_key, &self.issuer)?.pem();
        let not_after_ms = not_after.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Ok(Issued { certificate, not_after_ms })
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// An agent's new key (PEM PKCS#8, kept by the agent) and a signing request for it (PEM).
pub fn request(agent: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![AGENT_NAME.to_owned()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, agent);
    params.distinguished_name = name;
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_a_restart_and_signs_only_the_requests_key() {
        let dir = std::env::temp_dir().join(format!("squilla-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Authority::load_or_create(&dir).unwrap();
        let again = Authority::load_or_create(&dir).unwrap();
        assert_eq!(first.certificate_pem(), again.certificate_pem());
        let (_key, csr) = request("agent-1").unwrap();
        let issued = again.issue(&csr, "agent-1", LIFETIME).unwrap();
        assert!(issued.certificate.starts_with("-----BEGIN CERTIFICATE-----"));
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(issued.not_after_ms > now_ms + LIFETIME.as_millis() as u64 - 60_000);
        // A request whose signature does not match its key is refused.
        let mut forged = csr.clone();
        let tail = forged.len() - 40;
        forged.replace_range(tail..tail + 4, "AAAA");
        assert!(matches!(again.issue(&forged, "agent-1", LIFETIME), Err(CaError::Request(_))));
        assert!(matches!(again.issue("not pem", "agent-1", LIFETIME), Err(CaError::Request(_))));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("ca.key")).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "the CA key is readable by its owner only");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
