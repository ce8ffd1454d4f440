//! TLS with mutual authentication on the data port.
//!
//! Each agent holds a certificate the master's CA issued it (see `squilla_net::ca`), renewed
//! before it expires ([`DataTls::install`]); both ends of every connection present theirs and
//! verify the other's against the CA, before a single frame is read. Only TLS 1.3 is spoken,
//! AES-128-GCM first (the cheapest AEAD on CPUs with AES instructions), no session tickets or
//! resumption: connections are few and long-lived, and each handshake is a full one.
//!
//! The transport's threads are blocking: one reads a connection while others write it (a
//! receiver writes credit from its reader and retry threads, a sender reads credit while it
//! writes batches). A rustls connection is one state machine, so a [`Session`] splits it
//! into a [`TlsReader`] and a [`TlsWriter`] that share it under a mutex which is never held
//! across socket I/O:
//!
//! - the reader reads ciphertext from the socket without the lock, then takes it to decrypt;
//! - a writer takes the *write* lock, then the state lock to encrypt, releases the state
//!   lock, and writes the records to the socket under the write lock alone, so that records
//!   leave in the order they were sealed while the reader keeps decrypting;
//! - anything rustls must send from the read side (an alert, a key update) goes out the
//!   same way, the write lock taken first.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

/// The DNS name every agent certificate carries and every peer verifies.
pub const AGENT_NAME: &str = "squilla-agent";

/// The longest a TLS handshake may take, each way (the same as the key handshake's).
pub use super::handshake::TIMEOUT;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataTlsError {
    /// A PEM text holds no certificate or key, or a malformed one.
    #[error("{what}: {message}")]
    Pem {
        /// Which text.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("the certificate does not make a TLS identity: {0}")]
    Config(String),
}

struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

/// An agent's identity on the data port: its certificate and key, and the CA it trusts.
/// Until one is installed every handshake fails (an agent that has not yet joined takes no
/// part in the data plane).
#[derive(Default)]
pub struct DataTls {
    configs: RwLock<Option<Configs>>,
}

impl std::fmt::Debug for DataTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataTls").field("installed", &self.installed()).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384];
    Arc::new(provider)
}

fn pem_error(what: &'static str) -> impl Fn(rustls::pki_types::pem::Error) -> DataTlsError {
    move |e| DataTlsError::Pem { what, message: e.to_string() }
}

impl DataTls {
    /// An identity with no certificate yet.
    pub fn new() -> Arc<DataTls> {
        Arc::default()
    }

    /// Whether a certificate is installed.
    pub fn installed(&self) -> bool {
        self.configs.read().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Uses `certificate` (PEM chain, leaf first) with `key` (PEM) from now on, trusting
    /// peers whose certificates `ca` (PEM) issued. Connections already open keep the
    /// identity they were made with.
    pub fn install(&self, ca: &str, certificate: &str, key: &str) -> Result<(), DataTlsError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.map_err(pem_error("the CA"))?).map_err(|e| DataTlsError::Config(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(DataTlsError::Pem { what: "the CA", message: "no certificate in it".into() });
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(certificate.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(pem_error("the certificate"))?;
        if chain.is_empty() {
            return Err(DataTlsError::Pem { what: "the certificate", message: "no certificate in it".into() });
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(pem_error("the key"))?;
        let config_error = |e: rustls::Error| DataTlsError::Config(e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| DataTlsError::Config(e.to_string()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?;
        client.resumption = rustls::client::Resumption::disabled();
        let configs = Configs { client: Arc::new(client), server: Arc::new(server) };
        *self.configs.write().unwrap_or_else(PoisonError::into_inner) = Some(configs);
        Ok(())
    }

    fn current(&self) -> io::Result<(Arc<ClientConfig>, Arc<ServerConfig>)> {
        match &*self.configs.read().unwrap_or_else(PoisonError::into_inner) {
            Some(c) => Ok((c.client.clone(), c.server.clone())),
            None => Err(io::Error::new(io::ErrorKind::PermissionDenied, "no data-port certificate yet")),
        }
    }

    /// The receiving end's handshake on a connection just accepted.
    pub(super) fn serve(&self, sock: TcpStream) -> io::Result<Session> {
        let (_, server) = self.current()?;
        let conn = ServerConnection::new(server).map_err(io::Error::other)?;
        Session::handshake(sock, conn.into())
    }

    /// The dialling end's handshake on a connection just made.
    pub(super) fn dial(&self, sock: TcpStream) -> io::Result<Session> {
        let (client, _) = self.current()?;
        let name = ServerName::try_from(AGENT_NAME).map_err(io::Error::other)?;
        let conn = ClientConnection::new(client, name).map_err(io::Error::other)?;
        Session::handshake(sock, conn.into())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Shared {
    sock: TcpStream,
    tls: Mutex<Connection>,
    /// Taken before `tls` by whoever writes records to the socket.
    write: Mutex<()>,
}

impl Shared {
    /// Seals whatever rustls has queued and writes it out (the write lock taken first).
    fn flush_records(&self, plaintext: &[u8], scratch: &mut Vec<u8>) -> io::Result<usize> {
        let _writing = lock(&self.write);
        scratch.clear();
        let accepted = {
            let mut tls = lock(&self.tls);
            let accepted = if plaintext.is_empty() { 0 } else { tls.writer().write(plaintext)? };
            while tls.wants_write() {
                tls.write_tls(scratch)?;
            }
            accepted
        };
        (&self.sock).write_all(scratch)?;
        Ok(accepted)
    }
}

/// A connection after a successful handshake, to be split.
pub(super) struct Session {
    shared: Arc<Shared>,
}

impl Session {
    fn handshake(mut sock: TcpStream, mut conn: Connection) -> io::Result<Session> {
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.set_write_timeout(Some(TIMEOUT))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock)?;
        }
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        // Each write is sealed and sent whole (the caller bounds it), not in 64 KiB pieces.
        conn.set_buffer_limit(None);
        Ok(Session { shared: Arc::new(Shared { sock, tls: Mutex::new(conn), write: Mutex::new(()) }) })
    }

    /// The common name of the peer's certificate (its agent id), if it presented one.
    pub(super) fn peer_name(&self) -> Option<String> {
        let tls = lock(&self.shared.tls);
        let cert = tls.peer_certificates()?.first()?;
        common_name(cert)
    }

    /// The reading and the writing half.
    pub(super) fn split(self) -> io::Result<(TlsReader, TlsWriter)> {
        let reader = TlsReader {
            shared: self.shared.clone(),
            sock: self.shared.sock.try_clone()?,
            raw: vec![0; 64 << 10].into_boxed_slice(),
            start: 0,
            end: 0,
            scratch: Vec::new(),
        };
        Ok((reader, TlsWriter { shared: self.shared, scratch: Vec::with_capacity(64 << 10) }))
    }
}

/// The CN of a DER certificate, found without a full X.509 parser: the UTF8String or
/// PrintableString after the commonName OID (2.5.4.3) in the subject (the issuer's CN comes
/// first, so the last occurrence is the subject's).
fn common_name(cert: &[u8]) -> Option<String> {
    const OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = cert.windows(OID.len()).rposition(|w| w == OID)? + OID.len();
    let (&tag, rest) = cert.get(at..)?.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if !matches!(tag, 0x0c | 0x13) || len >= 0x80 {
        return None;
    }
    String::from_utf8(rest.get(..len as usize)?.to_vec()).ok()
}

/// The reading half of a [`Session`].
pub(super) struct TlsReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    /// Ciphertext read from the socket and not yet given to rustls: `raw[start..end]`.
    raw: Box<[u8]>,
    start: usize,
    end: usize,
    scratch: Vec<u8>,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (processed, must_write) = {
                let mut tls = lock(&self.shared.tls);
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // rustls decrypts only as much as its plaintext buffer holds: records may be
                // waiting in it although the socket has nothing more to give.
                let mut processed = tls.process_new_packets();
                let waiting = processed.as_ref().is_ok_and(|state| state.plaintext_bytes_to_read() > 0);
                if processed.is_ok() && !waiting && self.start < self.end {
                    let mut pending = &self.raw[self.start..self.end];
                    self.start += tls.read_tls(&mut pending)?;
                    processed = tls.process_new_packets();
                }
                (processed.map(|state| state.plaintext_bytes_to_read() > 0), tls.wants_write())
            };
            let decrypted = match processed {
                Ok(decrypted) => decrypted,
                Err(err) => {
                    // Let the peer know why (an alert), then give up on the connection.
                    let _ = self.shared.flush_records(&[], &mut self.scratch);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, err));
                }
            };
            if must_write {
                self.shared.flush_records(&[], &mut self.scratch)?;
            }
            if !decrypted && self.start == self.end {
                let n = self.sock.read(&mut self.raw)?;
                if n == 0 {
                    return Ok(0);
                }
                (self.start, self.end) = (0, n);
            }
        }
    }
}

/// The writing half of a [`Session`].
pub(super) struct TlsWriter {
    shared: Arc<Shared>,
    scratch: Vec<u8>,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.flush_records(buf, &mut self.scratch)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use squilla_net::ca::{Authority, LIFETIME, request};

    use super::*;

    fn identity(ca: &Authority, agent: &str) -> DataTls {
        let (key, csr) = request(agent).unwrap();
        let issued = ca.issue(&csr, agent, LIFETIME).unwrap();
        let tls = DataTls::default();
        tls.install(ca.certificate_pem(), &issued.certificate, &key).unwrap();
        tls
    }

    #[test]
    fn both_halves_carry_megabytes_each_way_at_once_and_name_the_peer() {
        let ca = Authority::generate().unwrap();
        let (server, client) = (identity(&ca, "b"), identity(&ca, "a"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        const SIZE: usize = 8 << 20;
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let served = std::thread::spawn({
            let data = data.clone();
            move || {
                let (sock, _) = listener.accept().unwrap();
                let session = server.serve(sock).unwrap();
                let name = session.peer_name();
                let (mut reader, mut writer) = session.split().unwrap();
                let echo = std::thread::spawn(move || writer.write_all(&data).unwrap());
                let mut got = vec![0u8; SIZE];
                reader.read_exact(&mut got).unwrap();
                echo.join().unwrap();
                (name, got)
            }
        });
        let session = client.dial(TcpStream::connect(addr).unwrap()).unwrap();
        assert_eq!(session.peer_name().as_deref(), Some("b"));
        let (mut reader, mut writer) = session.split().unwrap();
        let sending = std::thread::spawn({
            let data = data.clone();
            move || {
                for chunk in data.chunks(100_003) {
                    writer.write_all(chunk).unwrap();
                }
                writer
            }
        });
        let mut got = vec![0u8; SIZE];
        reader.read_exact(&mut got).unwrap();
        let _writer = sending.join().unwrap();
        let (name, theirs) = served.join().unwrap();
        assert_eq!(name.as_deref(), Some("a"));
        assert!(got == data && theirs == data, "the bytes arrived intact both ways");
    }
}
