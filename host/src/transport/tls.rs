//! TLS with mutual authentication on the data port.
//!
//! Each agent holds a certificate the master's CA issued it (see `squilla_net::ca`), renewed
//! before it expires ([`DataTls::install`]); both ends of every connection present theirs and
//! verify the other's against the CA, before a single frame is read. Only TLS 1.3 is spoken,
//! AES-128-GCM first (the cheapest AEAD on CPUs with AES instructions), no session tickets or
//! resumption: connections are few and long-lived, and each handshake is a full one.
//!
//! The transport's threads are blocking, and one reads a connection while another writes it
//! (a receiver writes credit from its reader and retry threads, a sender reads credit while
//! it writes batches). So rustls only makes the handshake (its unbuffered API, driven here on
//! the blocking socket within [`TIMEOUT`] per read or write) and then hands the traffic keys
//! over; each half protects its own direction ([`super::record`]) without sharing a lock
//! with the other.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::server::WebPkiClientVerifier;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::record::{KEY_UPDATE_RECORDS, Kernel, Keys, Opener, Sealer};

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
    /// The same certificate and key, for the agent's HTTPS server.
    certified: Arc<rustls::sign::CertifiedKey>,
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
        let signing = provider().key_provider.load_private_key(key.clone_key()).map_err(config_error)?;
        let certified = Arc::new(rustls::sign::CertifiedKey::new(chain.clone(), signing));
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
        server.enable_secret_extraction = true;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?;
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_secret_extraction = true;
        let configs = Configs { client: Arc::new(client), server: Arc::new(server), certified };
        *self.configs.write().unwrap_or_else(PoisonError::into_inner) = Some(configs);
        Ok(())
    }

    /// A TLS configuration for the agent's HTTP server: the installed certificate, whichever
    /// is current at each handshake (none before the first: handshakes fail), TLS 1.2 and
    /// 1.3, no client certificates (HTTP clients present a token or a capability).
    pub fn http_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, DataTlsError> {
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| DataTlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Current(self.clone())));
        Ok(Arc::new(config))
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
        Session::handshake_server(sock, server)
    }

    /// The dialling end's handshake on a connection just made.
    pub(super) fn dial(&self, sock: TcpStream) -> io::Result<Session> {
        let (client, _) = self.current()?;
        Session::handshake_client(sock, client)
    }
}

/// Drives an unbuffered rustls connection through the handshake on `sock`: returns what came
/// after it — records the peer sent with its last handshake flight, opened by rustls, and
/// the bytes of any record not yet complete.
macro_rules! drive_handshake {
    ($conn:expr, $sock:expr) => {{
        let (conn, sock) = ($conn, $sock);
        let (mut incoming, mut used) = (vec![0u8; 32 << 10], 0usize);
        let mut outgoing: Vec<u8> = Vec::new();
        let mut pending = 0usize;
        let mut early = Vec::new();
        loop {
            let mut blocked = false;
            let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut incoming[..used]);
            match state.map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))? {
                ConnectionState::EncodeTlsData(mut data) => loop {
                    match data.encode(&mut outgoing[pending..]) {
                        Ok(n) => {
                            pending += n;
                            break;
                        }
                        Err(EncodeError::InsufficientSize(size)) => outgoing.resize(pending + size.required_size, 0),
                        Err(err) => return Err(io::Error::other(err.to_string())),
                    }
                },
                ConnectionState::TransmitTlsData(data) => {
                    sock.write_all(&outgoing[..pending])?;
                    pending = 0;
                    data.done();
                }
                ConnectionState::BlockedHandshake => blocked = true,
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        early.extend_from_slice(record.payload);
                        discard += record.discard;
                    }
                }
                ConnectionState::WriteTraffic(_) => {
                    incoming.copy_within(discard..used, 0);
                    used -= discard;
                    break;
                }
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "unexpected data during the handshake")),
            }
            incoming.copy_within(discard..used, 0);
            used -= discard;
            if blocked {
                if used == incoming.len() {
                    // rustls bounds handshake messages to 64 KiB.
                    if incoming.len() >= 128 << 10 {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "an oversized handshake"));
                    }
                    incoming.resize(incoming.len() * 2, 0);
                }
                let n = sock.read(&mut incoming[used..])?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the peer left the handshake"));
                }
                used += n;
            }
        }
        incoming.truncate(used);
        (early, incoming)
    }};
}

/// A socket whose reads and writes all end by one moment.
struct Deadline<'a> {
    sock: &'a mut TcpStream,
    until: std::time::Instant,
}

impl Deadline<'_> {
    fn left(&self) -> io::Result<std::time::Duration> {
        let left = self.until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the handshake took too long"));
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        self.sock.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// A connection after a successful handshake, to be split.
pub(super) struct Session {
    sock: TcpStream,
    secrets: rustls::ExtractedSecrets,
    keys: Arc<Keys>,
    /// What came with the end of the handshake: opened records, and ciphertext.
    early: (Vec<u8>, Vec<u8>),
    peer: Option<String>,
}

impl Session {
    fn handshake_server(mut sock: TcpStream, config: Arc<ServerConfig>) -> io::Result<Session> {
        let mut conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Session::timed(&mut sock, |sock| {
            let early = drive_handshake!(&mut conn, sock);
            let peer = peer_of(conn.peer_certificates());
            let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(io::Error::other)?;
            Ok((secrets, Kernel::Server(kernel), early, peer))
        })
        .map(|(secrets, kernel, early, peer)| Session::new(sock, secrets, kernel, early, peer))
    }

    fn handshake_client(mut sock: TcpStream, config: Arc<ClientConfig>) -> io::Result<Session> {
        let name = ServerName::try_from(AGENT_NAME).map_err(io::Error::other)?;
        let mut conn = UnbufferedClientConnection::new(config, name).map_err(io::Error::other)?;
        Session::timed(&mut sock, |sock| {
            let early = drive_handshake!(&mut conn, sock);
            let peer = peer_of(conn.peer_certificates());
            let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(io::Error::other)?;
            Ok((secrets, Kernel::Client(kernel), early, peer))
        })
        .map(|(secrets, kernel, early, peer)| Session::new(sock, secrets, kernel, early, peer))
    }

    /// Runs `handshake`, which must be over within [`TIMEOUT`] in all (however slowly the peer
    /// trickles its bytes).
    fn timed<T>(sock: &mut TcpStream, handshake: impl FnOnce(&mut Deadline<'_>) -> io::Result<T>) -> io::Result<T> {
        let done = handshake(&mut Deadline { sock, until: std::time::Instant::now() + TIMEOUT })?;
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        Ok(done)
    }

    fn new(
        sock: TcpStream,
        secrets: rustls::ExtractedSecrets,
        kernel: Kernel,
        early: (Vec<u8>, Vec<u8>),
        peer: Option<String>,
    ) -> Session {
        Session { sock, secrets, keys: Keys::new(kernel), early, peer }
    }

    /// The common name of the peer's certificate (its agent id).
    pub(super) fn peer_name(&self) -> Option<String> {
        self.peer.clone()
    }

    /// The reading and the writing half.
    pub(super) fn split(self) -> io::Result<(TlsReader, TlsWriter)> {
        self.split_updating_after(KEY_UPDATE_RECORDS)
    }

    fn split_updating_after(self, records: u64) -> io::Result<(TlsReader, TlsWriter)> {
        let opener = Opener::new(&self.secrets.rx, self.keys.clone(), &self.early.0, &self.early.1)?;
        let sealer = Sealer::new(&self.secrets.tx, self.keys, records)?;
        let reader = TlsReader { sock: self.sock.try_clone()?, opener };
        Ok((reader, TlsWriter { sock: self.sock, sealer, out: Vec::new(), failed: false }))
    }
}

/// The installed certificate, for the HTTPS server.
#[derive(Debug)]
struct Current(Arc<DataTls>);

impl rustls::server::ResolvesServerCert for Current {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.configs.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.certified.clone())
    }
}

fn peer_of(certificates: Option<&[CertificateDer<'_>]>) -> Option<String> {
    common_name(certificates?.first()?)
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
    sock: TcpStream,
    opener: Opener,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.opener.read(&mut self.sock, buf)
    }
}

/// The writing half of a [`Session`].
pub(super) struct TlsWriter {
    sock: TcpStream,
    sealer: Sealer,
    out: Vec<u8>,
    /// A write failed: records may have been sealed and not sent, so nothing sealed later
    /// would open at the peer.
    failed: bool,
}

impl Write for TlsWriter {
    /// Seals all of `buf` and sends it in one go.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "an earlier write on this connection failed"));
        }
        self.out.clear();
        self.failed = true;
        self.sealer.seal(buf, &mut self.out)?;
        self.sock.write_all(&self.out)?;
        self.failed = false;
        if self.out.capacity() > 4 << 20 {
            self.out = Vec::new();
        }
        Ok(buf.len())
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
    fn both_halves_carry_megabytes_each_way_at_once_across_key_updates_and_name_the_peer() {
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
                // Keys replaced every 7 records: hundreds of updates each way.
                let (mut reader, mut writer) = session.split_updating_after(7).unwrap();
                let echo = std::thread::spawn(move || writer.write_all(&data).unwrap());
                let mut got = vec![0u8; SIZE];
                reader.read_exact(&mut got).unwrap();
                echo.join().unwrap();
                (name, got)
            }
        });
        let session = client.dial(TcpStream::connect(addr).unwrap()).unwrap();
        assert_eq!(session.peer_name().as_deref(), Some("b"));
        let (mut reader, mut writer) = session.split_updating_after(7).unwrap();
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

    #[test]
    fn a_handshake_trickled_byte_by_byte_ends_at_its_deadline() {
        let ca = Authority::generate().unwrap();
        let server = identity(&ca, "b");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let trickler = std::thread::spawn(move || {
            let mut sock = TcpStream::connect(addr).unwrap();
            // A plausible start of a ClientHello, one byte a second: every read is well within
            // the timeout, the handshake as a whole is not.
            for byte in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x00] {
                if sock.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
        let (sock, _) = listener.accept().unwrap();
        let started = std::time::Instant::now();
        let refused = server.serve(sock);
        let took = started.elapsed();
        assert!(refused.is_err(), "a handshake that never completes is refused");
        assert!(took < TIMEOUT + std::time::Duration::from_secs(2), "within its deadline: {took:?}");
        trickler.join().unwrap();
    }
}
