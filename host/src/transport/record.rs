//! TLS 1.3 record protection for the data port, after rustls has made the handshake.
//!
//! rustls authenticates both ends and derives the traffic keys; it then hands them over
//! (its "kernel connection" API, made for kernel TLS) and each half of the connection
//! protects its own direction (RFC 8446 §5.2) with no lock between them: the writer seals a
//! batch straight from where it lies into one buffer of records and sends it in one system
//! call, the reader opens records in place in its receive buffer. AES-GCM from `ring`, the
//! same code rustls would run.
//!
//! Keys are updated (a `key_update` message, §4.6.3) every [`KEY_UPDATE_RECORDS`] records,
//! far below AES-GCM's confidentiality limit of 2^24.5 records per key; the new secrets come
//! from rustls. Anything else a peer might send after the handshake — an alert, a session
//! ticket, a record that does not open — ends the connection.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;

/// Records sealed under one key before it is replaced.
pub const KEY_UPDATE_RECORDS: u64 = 1 << 22;

/// The largest plaintext of one record (2^14, as TLS allows).
const MAX_PLAINTEXT: usize = 1 << 14;
/// The largest record body accepted: plaintext, content type, padding and tag (§5.2).
const MAX_BODY: usize = MAX_PLAINTEXT + 256;
const HEADER: usize = 5;
const TAG: usize = 16;

const APPLICATION_DATA: u8 = 0x17;
const HANDSHAKE: u8 = 0x16;
const ALERT: u8 = 0x15;
const KEY_UPDATE: u8 = 24;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// What rustls keeps after the handshake: the secrets' next generations.
pub(super) enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn next(&mut self, transmit: bool) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match (self, transmit) {
            (Kernel::Client(k), true) => k.update_tx_secret(),
            (Kernel::Client(k), false) => k.update_rx_secret(),
            (Kernel::Server(k), true) => k.update_tx_secret(),
            (Kernel::Server(k), false) => k.update_rx_secret(),
        }
    }
}

/// What the two halves share: the secrets' next generations, and whether the peer asked for
/// this side's key to be updated (the reader learns it, the writer does it).
pub(super) struct Keys {
    kernel: Mutex<Kernel>,
    update_requested: AtomicBool,
}

impl Keys {
    pub(super) fn new(kernel: Kernel) -> Arc<Keys> {
        Arc::new(Keys { kernel: Mutex::new(kernel), update_requested: AtomicBool::new(false) })
    }

    fn next(&self, transmit: bool) -> io::Result<Protection> {
        let (seq, secrets) = lock(&self.kernel).next(transmit).map_err(|e| invalid(e.to_string()))?;
        Protection::new(&secrets, seq)
    }
}

/// One direction's key, nonce base and sequence number.
struct Protection {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Protection {
    fn new(secrets: &ConnectionTrafficSecrets, seq: u64) -> io::Result<Protection> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            _ => return Err(invalid("a cipher suite the data port does not offer was negotiated")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| invalid("a traffic key of the wrong length"))?;
        let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| invalid("a traffic IV of the wrong length"))?;
        Ok(Protection { key: LessSafeKey::new(key), iv, seq })
    }

    /// The per-record nonce: the IV xor the sequence number (§5.3); then the next number.
    fn nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

fn lock(kernel: &Mutex<Kernel>) -> std::sync::MutexGuard<'_, Kernel> {
    kernel.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sending direction.
pub(super) struct Sealer {
    protection: Protection,
    keys: Arc<Keys>,
    update_after: u64,
}

impl Sealer {
    pub(super) fn new(
        secrets: &(u64, ConnectionTrafficSecrets),
        keys: Arc<Keys>,
        update_after: u64,
    ) -> io::Result<Sealer> {
        Ok(Sealer { protection: Protection::new(&secrets.1, secrets.0)?, keys, update_after })
    }

    /// Appends `plaintext` to `out` as records.
    pub(super) fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.reserve(plaintext.len() + plaintext.len().div_ceil(MAX_PLAINTEXT) * (HEADER + 1 + TAG));
        if self.keys.update_requested.swap(false, Ordering::AcqRel) {
            self.update_key(out)?;
        }
        for chunk in plaintext.chunks(MAX_PLAINTEXT) {
            self.record(APPLICATION_DATA, chunk, out)?;
            if self.protection.seq >= self.update_after {
                self.update_key(out)?;
            }
        }
        Ok(())
    }

    fn record(&mut self, kind: u8, body: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let start = out.len();
        let length = (body.len() + 1 + TAG) as u16;
        let [high, low] = length.to_be_bytes();
        let header = [APPLICATION_DATA, 0x03, 0x03, high, low];
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        out.push(kind);
        let nonce = self.protection.nonce();
        let tag = self
            .protection
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER..])
            .map_err(|_| invalid("sealing a record failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Tells the peer that what follows is under the next key (not asking it to update its
    /// own), then uses it.
    fn update_key(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.protection = self.keys.next(true)?;
        Ok(())
    }
}

/// The receiving direction: records read into `buf`, opened in place.
pub(super) struct Opener {
    protection: Protection,
    keys: Arc<Keys>,
    buf: Vec<u8>,
    /// Ciphertext not yet opened: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Plaintext opened and not yet read: `buf[plain.0..plain.1]`.
    plain: (usize, usize),
    closed: bool,
}

impl Opener {
    /// `opened` and `sealed`: what arrived with the end of the handshake, records rustls
    /// already opened and the bytes after them.
    pub(super) fn new(
        secrets: &(u64, ConnectionTrafficSecrets),
        keys: Arc<Keys>,
        opened: &[u8],
        sealed: &[u8],
    ) -> io::Result<Opener> {
        let early = opened.len() + sealed.len();
        let mut buf = vec![0u8; (256 << 10).max(2 * early)];
        buf[..opened.len()].copy_from_slice(opened);
        buf[opened.len()..early].copy_from_slice(sealed);
        Ok(Opener {
            protection: Protection::new(&secrets.1, secrets.0)?,
            keys,
            buf,
            start: opened.len(),
            end: early,
            plain: (0, opened.len()),
            closed: false,
        })
    }

    /// Copies opened plaintext into `out`, reading and opening records from `source` as
    /// needed; `Ok(0)` once the peer has closed the connection.
    pub(super) fn read(&mut self, source: &mut impl io::Read, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let (from, to) = self.plain;
            if from < to {
                let n = out.len().min(to - from);
                out[..n].copy_from_slice(&self.buf[from..from + n]);
                self.plain.0 += n;
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            if !self.open_next()? {
                self.fill(source)?;
            }
        }
    }

    /// Opens the next whole record in the buffer, if there is one.
    fn open_next(&mut self) -> io::Result<bool> {
        let available = &self.buf[self.start..self.end];
        if available.len() < HEADER {
            return Ok(false);
        }
        let header: [u8; HEADER] = available[..HEADER].try_into().unwrap_or_default();
        if header[0] != APPLICATION_DATA || header[1] != 0x03 {
            return Err(invalid(format!("a record of type {} where only protected ones may come", header[0])));
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if !(TAG + 1..=MAX_BODY).contains(&length) {
            return Err(invalid(format!("a record of {length} bytes")));
        }
        if available.len() < HEADER + length {
            return Ok(false);
        }
        let body = self.start + HEADER;
        self.start = body + length;
        let nonce = self.protection.nonce();
        let opened = self
            .protection
            .key
            .open_in_place(nonce, Aad::from(header), &mut self.buf[body..body + length])
            .map_err(|_| invalid("a record that does not open under the connection's key"))?;
        // The content type is the last byte that is not padding (§5.4).
        let Some(last) = opened.iter().rposition(|&b| b != 0) else {
            return Err(invalid("a record with no content type"));
        };
        if last > MAX_PLAINTEXT {
            return Err(invalid("a record over 2^14 bytes of plaintext"));
        }
        let (kind, content) = (opened[last], body..body + last);
        match kind {
            APPLICATION_DATA => self.plain = (content.start, content.end),
            HANDSHAKE if matches!(self.buf[content.clone()], [KEY_UPDATE, 0, 0, 1, 0 | 1]) => {
                // update_requested (1): the peer wants this side's key replaced too (§4.6.3).
                if self.buf[content.end - 1] == 1 {
                    self.keys.update_requested.store(true, Ordering::Release);
                }
                self.protection = self.keys.next(false)?;
            }
            ALERT if self.buf[content.clone()] == [1, 0] => self.closed = true, // close_notify
            other => return Err(invalid(format!("a protected record of type {other} after the handshake"))),
        }
        Ok(true)
    }

    /// Reads more ciphertext, first moving what is left to the front.
    fn fill(&mut self, source: &mut impl io::Read) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.end, self.start, self.plain) = (self.end - self.start, 0, (0, 0));
        }
        let n = source.read(&mut self.buf[self.end..])?;
        if n == 0 {
            self.closed = true;
        }
        self.end += n;
        Ok(())
    }
}
