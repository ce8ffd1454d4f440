//! Batches between agents over TCP.
//!
//! Workers of consecutive stages that run on different agents exchange batches over one TCP
//! connection per ordered agent pair (sender → receiver), in the length-delimited frames of
//! [`frame`]. On the sending agent, each remote worker slot is an [`Outlet`] that the stage
//! before offers batches to, as to any local inbox; one sender thread per peer takes them
//! out and writes them. On the receiving agent, a reader thread per connection validates
//! each batch once and delivers it to the worker's inbox.
//!
//! **Flow control is by credit**: a stream (one remote worker slot) may have at most
//! [`TransportConfig::credit_batches`] batches on the wire that the receiver has not yet
//! queued. A receiver whose worker is full (under `block`) keeps the batch aside and returns
//! the credit only once it is queued, so the outlet on the sender fills and the job's
//! backpressure policy applies there: `block` slows the upstream workers, `drop-*` drops
//! (counted). A slow stream never stalls another on the same connection.
//!
//! **Reconnection**: a broken connection is re-dialled with backoff (50 ms doubling to 1 s);
//! batches that were on the wire are lost and counted on their outlet (delivery is
//! at-most-once). When the master moves a worker, the agents are given a new plan and the
//! slot gets an outlet towards its new agent.
//!
//! **Fencing**: nothing is sent while the agent's [`Lease`](crate::Lease) has run out (batches taken off
//! outlets are dropped, counted), and a batch that arrives from an agent that, by this agent's
//! latest plan, runs no worker feeding that stage ([`Transport::allow_senders`]) is dropped
//! and counted: the output of a worker incarnation the master has replaced goes nowhere.
//!
//! **Pulling a job's output** ([`tap`]): a job that reads another job's output pulls it from
//! the agents that make it, over the same port and frames, on a connection of its own.
//!
//! **Who may connect** ([`TransportConfig::auth`]): agents speak TLS 1.3, each end
//! presenting a certificate from the master's CA ([`tls`]), or, on a network the operator
//! trusts not to be tapped, the key handshake ([`handshake`]) in which both ends prove they
//! hold a key derived from the agent token. Either way a connection that fails is closed
//! before a single frame is read and counted (`refused`). Under TLS, a peer's `hello` must
//! name the agent its certificate names. Without either (in-process tests and benchmarks)
//! the data port trusts its network.

mod conn;
pub mod frame;
pub mod handshake;
mod record;
mod recv;
mod send;
mod state;
pub mod tap;
pub mod tls;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::pipeline::{Outlet, PipelineHandle};

pub use self::conn::Auth;
pub use self::state::TransportConfig;
use self::state::{Counters, TransportState, write};
pub use self::tls::{DataTls, DataTlsError};

/// How long a data-port connection may be silent before the kernel probes it, how often it
/// probes, and so (with Linux's 9 probes) within about 55 s a peer that vanished without
/// closing (a host lost, a cable cut) is noticed on both ends.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Sets TCP keepalive on a data-port connection (best effort: a socket that refuses it still
/// works, and a broken connection is still noticed on the next write).
pub(crate) fn keepalive(conn: &std::net::TcpStream) {
    let probes = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
    if let Err(err) = socket2::SockRef::from(conn).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %err, "cannot set TCP keepalive on a data-port connection");
    }
}

/// Counters of the transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Batches written to peers.
    pub batches_sent: u64,
    /// Bytes of batches written to peers.
    pub bytes_sent: u64,
    /// Batches received and delivered (or dropped by policy) here.
    pub batches_received: u64,
    /// Batches received that failed validation (dropped).
    pub invalid: u64,
    /// Batches received for a job or worker that is not here (dropped).
    pub misrouted: u64,
    /// Batches not sent because the lease had run out, or received from an agent that runs
    /// no worker feeding their stage any more (dropped).
    pub fenced: u64,
    /// Connections (re)established to peers.
    pub connects: u64,
    /// Connections closed because they failed the handshake (either side).
    pub refused: u64,
}

/// The agent's end of the data network: a listener for peers' batches and a sender per peer.
pub struct Transport {
    inner: Arc<TransportState>,
    /// A sender per peer agent, started on the first outlet towards it.
    peers: Mutex<HashMap<SocketAddr, Arc<send::Peer>>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("addr", &self.addr).finish()
    }
}

impl Transport {
    /// Listens on `addr` (port 0 picks one) and starts accepting peers.
    pub fn bind(addr: SocketAddr, config: TransportConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(TransportState {
            config,
            jobs: RwLock::new(HashMap::new()),
            taps: RwLock::new(HashMap::new()),
            senders: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            stopped: AtomicBool::new(false),
            admitting: Default::default(),
            expected: RwLock::new(HashMap::new()),
        });
        let accept = inner.clone();
        std::thread::Builder::new().name("squilla-accept".into()).spawn(move || recv::accept(listener, accept))?;
        Ok(Transport { inner, peers: Mutex::new(HashMap::new()), addr })
    }

    /// Where peers connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `job`'s local workers reachable from peers.
    pub fn register(&self, job: &str, handle: PipelineHandle) {
        write(&self.inner.jobs).insert(job.to_owned(), handle);
    }

    /// Stops delivering to `job` if `handle` is what is registered for it (a newer pipeline
    /// of the same job keeps its registration); batches for it are then dropped, counted as
    /// misrouted.
    pub fn unregister(&self, job: &str, handle: &PipelineHandle) {
        let mut jobs = write(&self.inner.jobs);
        if jobs.get(job).is_some_and(|h| h.same(handle)) {
            jobs.remove(job);
            write(&self.inner.senders).remove(job);
            write(&self.inner.taps).remove(job);
        }
    }

    /// Lets peers pull `job`'s output made here ([`tap`]): each `subscribe` for it calls
    /// `open`. Replaces an earlier registration; [`Transport::unregister`] ends it.
    pub fn register_tap(&self, job: &str, open: tap::TapOpen) {
        write(&self.inner.taps).insert(job.to_owned(), open);
    }

    /// Pulls `job`'s output made on the agent at `peer`, after `query`, with at most `credit`
    /// batches on the wire ([`tap`]).
    pub fn pull(&self, peer: SocketAddr, job: &str, query: Option<&str>, credit: u32) -> io::Result<tap::Puller> {
        tap::Puller::dial(self.inner.clone(), peer, job, query, credit)
    }

    /// Says which agents may send to each stage of `job` here (`per_stage[s]`: the agents
    /// running the workers, or the source, that feed stage `s`). Batches from any other agent
    /// are dropped and counted as fenced. Without a call, any sender is accepted.
    pub fn allow_senders(&self, job: &str, per_stage: Vec<Vec<String>>) {
        write(&self.inner.senders).insert(job.to_owned(), per_stage);
    }

    /// Says that the agent at `peer` is `agent`: under TLS, a connection to `peer` whose
    /// certificate names another agent is refused (counted), so batches meant for `agent` go
    /// to nobody else, even one of the fleet that took over its address.
    pub fn expect_agent(&self, peer: SocketAddr, agent: &str) {
        let mut expected = write(&self.inner.expected);
        if expected.get(&peer).map(String::as_str) != Some(agent) {
            expected.insert(peer, agent.to_owned());
        }
    }

    /// An outlet towards worker `index` of stage `stage` of `job` on the agent at `peer`.
    /// The stream lives as long as the outlet does. Fails only if no thread can be started
    /// for a new peer.
    pub fn outlet(&self, peer: SocketAddr, job: &str, stage: u32, index: u32) -> io::Result<Arc<Outlet>> {
        let peer = {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            match peers.get(&peer) {
                Some(p) => p.clone(),
                None => {
                    let p = send::Peer::start(peer, self.inner.clone())?;
                    peers.insert(peer, p.clone());
                    p
                }
            }
        };
        Ok(peer.open(job, stage, index, self.inner.config.outlet_batches))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            batches_sent: get(&c.batches_sent),
            bytes_sent: get(&c.bytes_sent),
            batches_received: get(&c.batches_received),
            invalid: get(&c.invalid),
            misrouted: get(&c.misrouted),
            fenced: get(&c.fenced),
            connects: get(&c.connects),
            refused: get(&c.refused),
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for peer in self.peers.lock().unwrap_or_else(PoisonError::into_inner).values() {
            peer.wake();
        }
        // Unblock the accept loop.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}
