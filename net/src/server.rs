//! Serving an axum router with limits on connections and timeouts, for the master and agents.
//!
//! `axum::serve` accepts every connection and waits on a silent one forever. [`serve`] is
//! the same loop with the limits a shared server needs, each applied before any request is
//! read ([`ServerLimits`] documents the defaults):
//!
//! - at most `max_connections` connections in all and `max_connections_per_ip` from one
//!   address: past either, a new connection is closed at once (and counted);
//! - request headers must arrive within `header_read_timeout` and fit `max_header_bytes`
//!   (431 past it);
//! - a connection on which nothing is read or written for `idle_timeout` is closed (streams
//!   send pings well within it).
//!
//! Every request carries the client's address as a [`ClientAddr`] extension, for per-client
//! rate limits.
//!
//! Request bodies are limited per route by the routers themselves (byte caps and a body read
//! timeout, see [`crate::limits`]).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// Limits of a server. `Default` gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections in all (default 4,096).
    pub max_connections: usize,
    /// Open connections from one IP address (default 512).
    pub max_connections_per_ip: usize,
    /// Time to receive a request's headers (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest request head, start line and headers (default 64 KiB).
    pub max_header_bytes: usize,
    /// A connection with nothing read or written for this long is closed (default 120 s).
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            max_connections_per_ip: 512,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// What a server has refused, for tests and metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections closed at once because a connection limit was reached.
    pub refused: AtomicU64,
    /// Connections closed because nothing moved for the idle timeout.
    pub idle_closed: AtomicU64,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// A connection's place in the counts, given back when it closes.
struct Admitted {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(n) = counts.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` under `limits` until the task is dropped.
pub async fn serve(listener: TcpListener, app: Router, limits: ServerLimits, stats: Arc<ServerStats>) {
    serve_tls(listener, app, limits, stats, None).await;
}

/// [`serve`], over TLS when `tls` is given (see [`crate::tls`]): the handshake must finish
/// within the header timeout.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    stats: Arc<ServerStats>,
    tls: Option<crate::tls::TlsAcceptor>,
) {
    let counts: Arc<Mutex<Counts>> = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admitted = {
            let mut c = counts.lock().unwrap_or_else(PoisonError::into_inner);
            let from_ip = c.by_ip.get(&peer.ip()).copied().unwrap_or(0);
            if c.total >= limits.max_connections || from_ip >= limits.max_connections_per_ip {
                None
            } else {
                c.total += 1;
                *c.by_ip.entry(peer.ip()).or_default() += 1;
                Some(Admitted { counts: counts.clone(), ip: peer.ip() })
            }
        };
        let Some(admitted) = admitted else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let idle = Idle::new(stream, limits.idle_timeout, stats.clone());
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ClientAddr(peer));
                    request
                })
                .service(app.clone()),
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_header_size(limits.max_header_bytes);
        let tls = tls.clone();
        let handshake = limits.header_read_timeout;
        tokio::spawn(async move {
            let _admitted = admitted;
            let served = match tls {
                None => builder.serve_connection(TokioIo::new(idle), service).with_upgrades().await,
                Some(acceptor) => match tokio::time::timeout(handshake, acceptor.accept(idle)).await {
                    Ok(Ok(stream)) => builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
        });
    }
}

/// A TCP stream that fails with `TimedOut` once nothing has been read or written on it for
/// its idle timeout.
struct Idle {
    inner: TcpStream,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    stats: Arc<ServerStats>,
}

impl Idle {
    fn new(inner: TcpStream, timeout: Duration, stats: Arc<ServerStats>) -> Self {
        Idle { inner, timeout, timer: Box::pin(tokio::time::sleep(timeout)), stats }
    }

    fn touch(&mut self) {
        self.timer.as_mut().reset(Instant::now() + self.timeout);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer.as_mut().poll(cx).is_ready() {
            self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long")
}

impl AsyncRead for Idle {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

use std::future::Future;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: ServerLimits) -> (std::net::SocketAddr, Arc<ServerStats>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/",
            axum::routing::get(
                |axum::extract::Extension(ClientAddr(peer)): axum::extract::Extension<ClientAddr>| async move {
                    peer.ip().to_string()
                },
            ),
        );
        let stats = Arc::new(ServerStats::default());
        tokio::spawn(serve(listener, app, limits, stats.clone()));
        (addr, stats)
    }

    /// Sends one request on `stream` and returns the response's head and body text.
    async fn get(stream: &mut TcpStream) -> String {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Whether the server closed `stream` (a read returns end of file or an error) within 5 s.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    #[tokio::test]
    async fn connections_over_the_per_address_limit_are_closed_at_once() {
        let limits = ServerLimits { max_connections_per_ip: 2, ..ServerLimits::default() };
        let (addr, stats) = start(limits).await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut a).await.ends_with("127.0.0.1"), "requests see the client's address");
        assert!(get(&mut b).await.starts_with("HTTP/1.1 200"));
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut c).await);
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut d = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut d).await.starts_with("HTTP/1.1 200"), "a freed place is taken again");
    }

    #[tokio::test]
    async fn slow_headers_and_idle_connections_are_closed() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            ..ServerLimits::default()
        };
        let (addr, stats) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        let started = std::time::Instant::now();
        assert!(closed(&mut slow).await);
        assert!(started.elapsed() < Duration::from_secs(3));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut idle).await.starts_with("HTTP/1.1 200"));
        assert!(closed(&mut idle).await, "a kept-alive connection with nothing to do is closed");
        assert!(stats.idle_closed.load(Ordering::Relaxed) + 1 >= 1);
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let limits = ServerLimits { max_header_bytes: 8192, ..ServerLimits::default() };
        let (addr, _) = start(limits).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(16 << 10));
        let _ = stream.write_all(head.as_bytes()).await;
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 431"), "{text}");
    }
}
