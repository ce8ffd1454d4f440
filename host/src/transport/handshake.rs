//! The data port's handshake: before a single frame is read, each end of a connection proves
//! it holds the fleet's transport key, derived from the agent token every agent and the master
//! already share ([`key_from_token`]).
//!
//! The receiver sends a fresh 32-byte nonce; the sender answers with its own nonce and
//! `HMAC-SHA256(key, "client" ‖ receiver's nonce ‖ sender's nonce)`; the receiver checks it in
//! constant time and answers `HMAC-SHA256(key, "server" ‖ sender's nonce ‖ receiver's nonce)`,
//! which the sender checks. Both sides give the exchange [`TIMEOUT`]. A connection that fails
//! is closed at once, before any frame, and counted. Fresh nonces on both sides make a
//! recorded exchange useless on another connection. The frames that follow are not encrypted
//! or authenticated one by one: this keeps strangers out of the data port, while a network
//! that can be tapped or spliced needs TLS (docs/security.md).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The longest a handshake may take, each way.
pub const TIMEOUT: Duration = Duration::from_secs(5);

const NONCE: usize = 32;

/// The transport key of a fleet whose agents share `token`.
pub fn key_from_token(token: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"squilla data port v1\0");
    hash.update(token.trim().as_bytes());
    hash.finalize().into()
}

fn nonce() -> io::Result<[u8; NONCE]> {
    let mut bytes = [0u8; NONCE];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn mac(key: &[u8; 32], role: &[u8], first: &[u8], second: &[u8]) -> HmacSha256 {
    // A key of any length is accepted by HMAC; this one is 32 bytes.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(role);
    mac.update(first);
    mac.update(second);
    mac
}

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("data port handshake: {what}"))
}

/// The receiving end's half, on a connection just accepted.
pub(super) fn serve(conn: &mut TcpStream, key: &[u8; 32]) -> io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mine = nonce()?;
    conn.write_all(&mine)?;
    let mut answer = [0u8; NONCE + 32];
    conn.read_exact(&mut answer)?;
    let (theirs, proof) = answer.split_at(NONCE);
    mac(key, b"client", &mine, theirs).verify_slice(proof).map_err(|_| refused("the sender does not hold the key"))?;
    conn.write_all(&mac(key, b"server", theirs, &mine).finalize().into_bytes())?;
    conn.set_read_timeout(None)?;
    conn.set_write_timeout(None)
}

/// The sending end's half, on a connection just made.
pub(super) fn dial(conn: &mut TcpStream, key: &[u8; 32]) -> io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut theirs = [0u8; NONCE];
    conn.read_exact(&mut theirs)?;
    let mine = nonce()?;
    let mut answer = Vec::with_capacity(NONCE + 32);
    answer.extend_from_slice(&mine);
    answer.extend_from_slice(&mac(key, b"client", &theirs, &mine).finalize().into_bytes());
    conn.write_all(&answer)?;
    let mut proof = [0u8; 32];
    conn.read_exact(&mut proof)?;
    mac(key, b"server", &mine, &theirs)
        .verify_slice(&proof)
        .map_err(|_| refused("the receiver does not hold the key"))?;
    conn.set_read_timeout(None)?;
    conn.set_write_timeout(None)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn pair(server_key: [u8; 32], client_key: [u8; 32]) -> (io::Result<()>, io::Result<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            serve(&mut conn, &server_key)
        });
        let mut conn = TcpStream::connect(addr).unwrap();
        let client = dial(&mut conn, &client_key);
        drop(conn);
        (server.join().unwrap(), client)
    }

    #[test]
    fn both_ends_prove_the_same_key() {
        let key = key_from_token("agent-token-0123456789");
        let (server, client) = pair(key, key);
        assert!(server.is_ok() && client.is_ok(), "{server:?} {client:?}");
    }

    #[test]
    fn a_sender_without_the_key_is_refused_before_any_frame() {
        let (server, client) = pair(key_from_token("agent-token-0123456789"), key_from_token("guessed-token-000000"));
        assert_eq!(server.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert!(client.is_err(), "the receiver never proved itself to a sender without the key");
    }

    #[test]
    fn a_silent_or_plain_peer_gets_nowhere() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            serve(&mut conn, &key_from_token("agent-token-0123456789"))
        });
        // A peer speaking the frame protocol straight away: its bytes are no proof.
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(&[0u8; 64]).unwrap();
        assert!(server.join().unwrap().is_err());
    }
}
