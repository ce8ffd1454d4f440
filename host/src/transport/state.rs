//! What the transport shares with its threads: its settings, the jobs peers may deliver to,
//! the allowed senders, the counters and the stop flag. Its own module so that the sending
//! and receiving sides depend on it, and not on the [`super::Transport`] that starts them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use super::conn::Auth;
use crate::lease::Lease;
use crate::pipeline::PipelineHandle;

/// Settings of the transport. `Default` gives the values documented on each field.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This agent's id, sent in each connection's `hello`.
    pub agent: String,
    /// Capacity of each outlet, in batches (default 64).
    pub outlet_batches: usize,
    /// Batches a stream may have on the wire before the receiver queues them (default 16).
    pub credit_batches: u32,
    /// Largest frame accepted (default 64 MiB); a larger one closes the connection.
    pub max_frame_bytes: usize,
    /// Longest wait between reconnection attempts (default 1 s; the first is 50 ms).
    pub max_backoff: Duration,
    /// The agent's lease: nothing is sent while it has run out (default: never runs out).
    pub lease: Arc<Lease>,
    /// How connections are admitted (default [`Auth::Open`]: no handshake, for in-process
    /// use only).
    pub auth: Auth,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            agent: "agent".into(),
            outlet_batches: 64,
            credit_batches: 16,
            max_frame_bytes: 64 << 20,
            max_backoff: Duration::from_secs(1),
            lease: Lease::unlimited(),
            auth: Auth::Open,
        }
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) batches_sent: AtomicU64,
    pub(super) bytes_sent: AtomicU64,
    pub(super) batches_received: AtomicU64,
    pub(super) invalid: AtomicU64,
    pub(super) misrouted: AtomicU64,
    pub(super) fenced: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) refused: AtomicU64,
}

/// What the transport shares with its threads.
pub(super) struct TransportState {
    pub(super) config: TransportConfig,
    /// The jobs whose local workers peers may deliver to.
    pub(super) jobs: RwLock<HashMap<String, PipelineHandle>>,
    /// The jobs whose output here peers may pull ([`super::tap`]).
    pub(super) taps: RwLock<HashMap<String, super::tap::TapOpen>>,
    /// Per job, per stage: the agents allowed to send to that stage's workers here.
    pub(super) senders: RwLock<HashMap<String, Vec<Vec<String>>>>,
    pub(super) counters: Counters,
    pub(super) stopped: AtomicBool,
    /// Connections in their handshake now.
    pub(super) admitting: AtomicUsize,
    /// The agent the plan says listens at an address (checked against its certificate).
    pub(super) expected: RwLock<HashMap<std::net::SocketAddr, String>>,
}

pub(super) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
