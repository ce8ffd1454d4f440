//! The sending side: one thread per peer agent, writing its streams' batches as credit allows.

use std::io::{BufReader, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::Thread;
use std::time::Duration;

use super::state::{TransportConfig, TransportState};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
use super::conn::Conn;
use super::frame::{self, Frame};
use crate::pipeline::Outlet;

/// How long the sender sleeps when it has nothing to send (it is woken on every offer).
const IDLE: Duration = Duration::from_millis(20);

struct Stream {
    id: u32,
    job: String,
    stage: u32,
    index: u32,
    outlet: Weak<Outlet>,
    credit: AtomicU32,
    /// Batches written since the last `open` whose credit has not come back.
    in_flight: AtomicU32,
}

pub(super) struct Peer {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<Arc<Stream>>>>,
    next_id: AtomicU32,
    thread: Mutex<Option<Thread>>,
    inner: Weak<TransportState>,
}

impl Peer {
    pub fn start(addr: SocketAddr, inner: Arc<TransportState>) -> std::io::Result<Arc<Peer>> {
        let peer = Arc::new(Peer {
            addr,
            streams: Arc::new(Mutex::new(Vec::new())),
            next_id: AtomicU32::new(1),
            thread: Mutex::new(None),
            inner: Arc::downgrade(&inner),
        });
        let p = peer.clone();
        let handle = std::thread::Builder::new().name(format!("squilla-send-{addr}")).spawn(move || p.run(inner))?;
        *lock(&peer.thread) = Some(handle.thread().clone());
        Ok(peer)
    }

    pub fn wake(&self) {
        if let Some(t) = &*lock(&self.thread) {
            t.unpark();
        }
    }

    pub fn open(self: &Arc<Self>, job: &str, stage: u32, index: u32, capacity: usize) -> Arc<Outlet> {
        let me = Arc::downgrade(self);
        let outlet = Outlet::new(capacity, move || {
            if let Some(peer) = me.upgrade() {
                peer.wake();
            }
        });
        let stream = Stream {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            job: job.to_owned(),
            stage,
            index,
            outlet: Arc::downgrade(&outlet),
            credit: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
        };
        lock(&self.streams).push(Arc::new(stream));
        self.wake();
        outlet
    }

    /// Dials, sends, and re-dials with backoff until the transport stops.
    fn run(self: Arc<Self>, inner: Arc<TransportState>) {
        // Hold only a weak reference while idle, so that dropping the transport ends us.
        let config = inner.config.clone();
        drop(inner);
        let mut backoff = Duration::from_millis(50);
        loop {
            let Some(inner) = self.inner.upgrade() else { return };
            if inner.stopped.load(Ordering::Relaxed) {
                return;
            }
            match super::conn::dial(self.addr, &inner) {
                Ok(conn) => {
                    backoff = Duration::from_millis(50);
                    inner.counters.connects.fetch_add(1, Ordering::Relaxed);
                    if let Err(err) = self.session(conn, &inner, &config) {
                        tracing::info!(peer = %self.addr, error = %err, "connection to peer ended; reconnecting");
                    }
                    self.lose_in_flight();
                }
                Err(err) => {
                    tracing::debug!(peer = %self.addr, error = %err, "cannot reach peer; retrying");
                    drop(inner);
                    std::thread::park_timeout(backoff);
                    backoff = (backoff * 2).min(config.max_backoff);
                }
            }
        }
    }

    /// Batches written on a connection that broke are gone: count them on their outlets.
    fn lose_in_flight(&self) {
        for stream in lock(&self.streams).iter() {
            let lost = stream.in_flight.swap(0, Ordering::Relaxed);
            if let (Some(outlet), true) = (stream.outlet.upgrade(), lost > 0) {
                outlet.count_lost(u64::from(lost));
            }
            stream.credit.store(0, Ordering::Relaxed);
        }
    }

    fn session(&self, conn: Conn, inner: &TransportState, config: &TransportConfig) -> std::io::Result<()> {
        let Conn { input, output, socket, .. } = conn;
        let broken = Arc::new(AtomicBool::new(false));
        // Credits come back on the same connection.
        let reader = {
            let broken = broken.clone();
            let me = lock(&self.thread).clone();
            let peer_streams = self.streams.clone();
            let max = config.max_frame_bytes;
            std::thread::Builder::new().name(format!("squilla-credit-{}", self.addr)).spawn(move || {
                let mut input = BufReader::new(input);
                while let Ok(Frame::Credit { id, batches }) = frame::read(&mut input, max) {
                    if let Some(s) = lock(&peer_streams).iter().find(|s| s.id == id) {
                        s.credit.fetch_add(batches, Ordering::Relaxed);
                        let _ = s
                            .in_flight
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(batches)));
                    }
                    if let Some(t) = &me {
                        t.unpark();
                    }
                }
                broken.store(true, Ordering::SeqCst);
                if let Some(t) = &me {
                    t.unpark();
                }
            })?
        };
        let mut out = BufWriter::with_capacity(output.buffer_bytes(), output);
        frame::write(&mut out, &Frame::Hello { agent: config.agent.clone() })?;
        let mut opened: Vec<u32> = Vec::new();
        let result = (|| loop {
            if broken.load(Ordering::SeqCst) {
                break Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer closed the connection"));
            }
            if inner.stopped.load(Ordering::Relaxed) {
                break Ok(());
            }
            let streams: Vec<Arc<Stream>> = {
                let mut streams = lock(&self.streams);
                streams.retain(|s| s.outlet.strong_count() > 0);
                streams.clone()
            };
            let mut sent = false;
            for stream in &streams {
                let Some(outlet) = stream.outlet.upgrade() else { continue };
                if !opened.contains(&stream.id) {
                    let open = Frame::Open {
                        id: stream.id,
                        stage: stream.stage,
                        index: stream.index,
                        job: stream.job.clone(),
                    };
                    frame::write(&mut out, &open)?;
                    opened.push(stream.id);
                    stream.credit.store(config.credit_batches, Ordering::Relaxed);
                }
                while let Some(parcel) = outlet.take_state() {
                    if !config.lease.is_valid() {
                        config.lease.count_fenced(1);
                        inner.counters.fenced.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let lost = frame::write_state(&mut out, stream.id, parcel, config.max_frame_bytes)?;
                    if lost > 0 {
                        tracing::warn!(job = %stream.job, lost, "key-group state larger than a frame was not sent");
                    }
                    sent = true;
                }
                while stream.credit.load(Ordering::Relaxed) > 0 {
                    let Some(batch) = outlet.take() else { break };
                    if !config.lease.is_valid() {
                        // The lease ran out: what was queued must not leave (see the module docs).
                        config.lease.count_fenced(1);
                        inner.counters.fenced.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    stream.credit.fetch_sub(1, Ordering::Relaxed);
                    stream.in_flight.fetch_add(1, Ordering::Relaxed);
                    let bytes = batch.as_bytes();
                    frame::write_data_header(&mut out, stream.id, bytes.len())?;
                    out.write_all(bytes)?;
                    inner.counters.batches_sent.fetch_add(1, Ordering::Relaxed);
                    inner.counters.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    sent = true;
                }
            }
            opened.retain(|id| streams.iter().any(|s| s.id == *id));
            out.flush()?;
            if !sent {
                std::thread::park_timeout(IDLE);
            }
        })();
        let _ = socket.shutdown(std::net::Shutdown::Both);
        let _ = reader.join();
        result
    }
}
