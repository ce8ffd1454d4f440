//! A data-port connection once admitted: socket options, then the handshake the transport is
//! configured for ([`Auth`]), then a reading and a writing half that threads can own apart.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::state::TransportState;
use super::tls::{DataTls, TlsReader, TlsWriter};

/// How a data-port connection is admitted.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// No handshake: the port trusts its network (in-process tests and benchmarks only).
    #[default]
    Open,
    /// Both ends prove they hold the fleet's key ([`super::handshake`]); frames travel in
    /// the clear.
    Key([u8; 32]),
    /// TLS 1.3, each end presenting a certificate from the fleet's CA ([`super::tls`]).
    Tls(Arc<DataTls>),
}

/// The reading half.
pub(super) enum Input {
    Plain(TcpStream),
    Tls(Box<TlsReader>),
}

/// The writing half.
pub(super) enum Output {
    Plain(TcpStream),
    Tls(Box<TlsWriter>),
}

impl Input {
    /// How much a `BufReader` over this half should gather: in the clear, 256 KiB per system
    /// call; under TLS the records are already read in bulk and opened in place, so only
    /// frame headers are gathered and a batch is copied out once.
    pub fn buffer_bytes(&self) -> usize {
        match self {
            Input::Plain(_) => 256 << 10,
            Input::Tls(_) => 8 << 10,
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Plain(s) => s.read(buf),
            Input::Tls(s) => s.read(buf),
        }
    }
}

impl Output {
    /// How much a `BufWriter` over this half should gather: in the clear, up to 256 KiB per
    /// system call; under TLS only small frames, so that a batch goes to be sealed straight
    /// from where it lies rather than copied into the buffer first.
    pub fn buffer_bytes(&self) -> usize {
        match self {
            Output::Plain(_) => 256 << 10,
            Output::Tls(_) => 16 << 10,
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Plain(s) => s.write(buf),
            Output::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Plain(s) => s.flush(),
            Output::Tls(s) => s.flush(),
        }
    }
}

/// An admitted connection.
pub(super) struct Conn {
    pub input: Input,
    pub output: Output,
    /// The socket, to shut down (which ends both halves).
    pub socket: TcpStream,
    /// The agent the peer's certificate names (TLS only).
    pub peer_agent: Option<String>,
}

/// Which end of the connection this is.
#[derive(Clone, Copy)]
enum Side {
    Accepted,
    Dialled,
}

/// Admits a connection just accepted; one that fails is shut down and counted as refused.
pub(super) fn accepted(sock: TcpStream, inner: &TransportState) -> io::Result<Conn> {
    admit(sock, inner, Side::Accepted)
}

/// Dials `peer` and admits the connection.
pub(super) fn dial(peer: SocketAddr, inner: &TransportState) -> io::Result<Conn> {
    let sock = TcpStream::connect_timeout(&peer, Duration::from_secs(2))?;
    let conn = admit(sock, inner, Side::Dialled)?;
    let expected = super::state::read(&inner.expected).get(&peer).cloned();
    if let (Some(want), Some(got)) = (expected, conn.peer_agent.as_deref())
        && want != got
    {
        inner.counters.refused.fetch_add(1, Ordering::Relaxed);
        let _ = conn.socket.shutdown(std::net::Shutdown::Both);
        tracing::warn!(%peer, expected = %want, named = %got, "the agent at a peer's address is not the one planned; refused");
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{peer} is {got}, not {want}")));
    }
    Ok(conn)
}

/// A session whose peer's certificate names an agent (every certificate the CA issues does).
fn named(session: super::tls::Session) -> io::Result<super::tls::Session> {
    match session.peer_name() {
        Some(_) => Ok(session),
        None => Err(io::Error::new(io::ErrorKind::PermissionDenied, "the peer's certificate names no agent")),
    }
}

fn admit(mut sock: TcpStream, inner: &TransportState, side: Side) -> io::Result<Conn> {
    sock.set_nodelay(true)?;
    super::keepalive(&sock);
    let socket = sock.try_clone()?;
    let admitted = match (&inner.config.auth, side) {
        (Auth::Open, _) => Ok(None),
        (Auth::Key(key), Side::Accepted) => super::handshake::serve(&mut sock, key).map(|()| None),
        (Auth::Key(key), Side::Dialled) => super::handshake::dial(&mut sock, key).map(|()| None),
        (Auth::Tls(tls), Side::Accepted) => tls.serve(sock.try_clone()?).and_then(named).map(Some),
        (Auth::Tls(tls), Side::Dialled) => tls.dial(sock.try_clone()?).and_then(named).map(Some),
    };
    match admitted {
        Ok(None) => {
            Ok(Conn { input: Input::Plain(sock.try_clone()?), output: Output::Plain(sock), socket, peer_agent: None })
        }
        Ok(Some(session)) => {
            let peer_agent = session.peer_name();
            let (input, output) = session.split()?;
            Ok(Conn { input: Input::Tls(Box::new(input)), output: Output::Tls(Box::new(output)), socket, peer_agent })
        }
        Err(err) => {
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            let _ = socket.shutdown(std::net::Shutdown::Both);
            let peer = socket.peer_addr().ok();
            match side {
                Side::Accepted => tracing::warn!(?peer, error = %err, "data port connection refused"),
                Side::Dialled => tracing::warn!(?peer, error = %err, "a peer's data port did not admit this agent"),
            }
            Err(err)
        }
    }
}
