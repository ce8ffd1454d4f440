//! The receiving side: a reader thread per connection, and a retry thread for batches whose
//! worker was full.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;

use super::state::{TransportState, read};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
use super::conn::{Conn, Output};
use super::frame::{self, Frame};
use crate::pipeline::{Delivery, StateParcel};

/// How often batches set aside (their worker full under `block`) are offered again.
const RETRY: Duration = Duration::from_millis(1);

/// Connections being admitted (in their handshake) at once, at most: past it, new ones are
/// closed at once and counted as refused, so strangers trickling handshakes cannot tie up
/// threads without end (each handshake has [`super::handshake::TIMEOUT`] in all).
const MAX_ADMITTING: usize = 64;

pub(super) fn accept(listener: TcpListener, inner: Arc<TransportState>) {
    for conn in listener.incoming() {
        if inner.stopped.load(Ordering::Relaxed) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if inner.admitting.fetch_add(1, Ordering::AcqRel) >= MAX_ADMITTING {
            inner.admitting.fetch_sub(1, Ordering::AcqRel);
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = ?conn.peer_addr().ok(), "data port connection refused: too many handshakes at once");
            continue;
        }
        let this = inner.clone();
        let started = std::thread::Builder::new().name("squilla-recv".into()).spawn(move || {
            let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let admitted = super::conn::accepted(conn, &this);
            this.admitting.fetch_sub(1, Ordering::AcqRel);
            if let Err(err) = admitted.and_then(|conn| Connection::serve(conn, this)) {
                tracing::debug!(%peer, error = %err, "peer connection ended");
            }
        });
        if let Err(err) = started {
            inner.admitting.fetch_sub(1, Ordering::AcqRel);
            // The connection went with the closure of the thread that did not start: it is
            // closed, and the peer dials again.
            tracing::warn!(error = %err, "cannot start a thread for a peer connection; closed it");
        }
    }
}

struct StreamIn {
    job: String,
    stage: usize,
    index: usize,
    /// Batches received but not yet queued (the worker was full, or its job was still
    /// starting here), oldest first.
    waiting: VecDeque<BatchBytes>,
    /// Key-group state received while the job was still starting here.
    parcels: VecDeque<StateParcel>,
    /// Since when the stream's job, assigned here, has not run yet.
    starting_since: Option<Instant>,
}

/// How long input for a job that is assigned here but not running yet (its artifacts are
/// being fetched and compiled) waits for it before it is dropped as misrouted.
pub const STARTING_WAIT: Duration = Duration::from_secs(30);

/// How long input for a job not assigned here waits for its assignment (a peer may have had
/// the new plan a heartbeat earlier) before it is dropped as misrouted.
pub const UNASSIGNED_WAIT: Duration = Duration::from_secs(5);

/// What to do with input for a stream whose job does not run here.
enum Absent {
    /// The job is assigned here and starting: keep the input a while.
    Wait,
    /// Drop it, counted as misrouted.
    Drop,
}

struct Connection {
    inner: Arc<TransportState>,
    /// The sending agent, as its `hello` named it.
    peer: Mutex<Option<String>>,
    streams: Mutex<HashMap<u32, StreamIn>>,
    out: Mutex<BufWriter<Output>>,
    waiting: Condvar,
    closed: std::sync::atomic::AtomicBool,
}

impl Connection {
    fn serve(conn: Conn, inner: Arc<TransportState>) -> std::io::Result<()> {
        let Conn { input, output, socket, peer_agent } = conn;
        let max = inner.config.max_frame_bytes;
        let mut input = BufReader::with_capacity(input.buffer_bytes(), input);
        // A connection that pulls a job's output says so in its first frame.
        let first = frame::read(&mut input, max)?;
        if let Frame::Subscribe { job, query, .. } = &first {
            return super::tap::serve(socket, input, output, &inner, job, query);
        }
        let me = Arc::new(Connection {
            inner,
            peer: Mutex::new(None),
            streams: Mutex::new(HashMap::new()),
            out: Mutex::new(BufWriter::new(output)),
            waiting: Condvar::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let retry = {
            let me = me.clone();
            std::thread::Builder::new().name("squilla-retry".into()).spawn(move || me.retry_loop())?
        };
        let mut first = Some(first);
        let result = (|| loop {
            let next = match first.take() {
                Some(frame) => frame,
                None => frame::read(&mut input, max)?,
            };
            match next {
                Frame::Hello { agent } => {
                    tracing::debug!(%agent, "peer said hello");
                    // Under TLS the certificate names the agent: a peer may not speak for another.
                    if peer_agent.as_ref().is_some_and(|named| *named != agent) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("a peer whose certificate names {peer_agent:?} said hello as {agent}"),
                        ));
                    }
                    *lock(&me.peer) = Some(agent);
                }
                Frame::Open { id, stage, index, job } => {
                    let stream = StreamIn {
                        job,
                        stage: stage as usize,
                        index: index as usize,
                        waiting: VecDeque::new(),
                        parcels: VecDeque::new(),
                        starting_since: None,
                    };
                    me.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, stream);
                }
                Frame::Data { id, bytes } => me.receive(id, bytes)?,
                Frame::State { id, parcel } => me.receive_state(id, parcel)?,
                Frame::Credit { .. } => {}
                other @ (Frame::Subscribe { .. } | Frame::End { .. }) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("unexpected frame on a batch connection: {other:?}"),
                    ));
                }
            }
        })();
        me.closed.store(true, Ordering::SeqCst);
        me.waiting.notify_all();
        let _ = socket.shutdown(std::net::Shutdown::Both);
        let _ = retry.join();
        result
    }

    fn receive(&self, id: u32, bytes: Vec<u8>) -> std::io::Result<()> {
        let counters = &self.inner.counters;
        let batch = match BatchBytes::validate(bytes) {
            Ok(batch) => Some(batch),
            Err(err) => {
                counters.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "invalid batch from a peer dropped");
                None
            }
        };
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(stream) = streams.get_mut(&id) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("data on unopened stream {id}")));
        };
        let Some(batch) = batch else { return self.credit(id, 1) };
        if !stream.waiting.is_empty() {
            stream.waiting.push_back(batch);
            self.waiting.notify_all();
            return Ok(());
        }
        match self.deliver(stream, batch) {
            None => self.credit(id, 1),
            Some(batch) => {
                stream.waiting.push_back(batch);
                self.waiting.notify_all();
                Ok(())
            }
        }
    }

    fn receive_state(&self, id: u32, parcel: StateParcel) -> std::io::Result<()> {
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(stream) = streams.get_mut(&id) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("state on unopened stream {id}")));
        };
        if !self.allowed(stream) {
            self.inner.counters.fenced.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let handle = read(&self.inner.jobs).get(&stream.job).cloned();
        match handle {
            Some(handle) => handle.deliver_state(stream.stage, stream.index, parcel),
            None => match self.absent(stream) {
                Absent::Wait => {
                    stream.parcels.push_back(parcel);
                    self.waiting.notify_all();
                }
                Absent::Drop => {
                    tracing::warn!(job = %stream.job, "key-group state for a job that does not run here dropped");
                    self.inner.counters.misrouted.fetch_add(1, Ordering::Relaxed);
                }
            },
        }
        Ok(())
    }

    /// Whether input for `stream`, whose job does not run here, should wait for it: up to
    /// [`STARTING_WAIT`] while the job is assigned here (it is starting), up to
    /// [`UNASSIGNED_WAIT`] for its assignment.
    fn absent(&self, stream: &mut StreamIn) -> Absent {
        let assigned = read(&self.inner.senders).contains_key(&stream.job);
        let waited = stream.starting_since.get_or_insert_with(Instant::now).elapsed();
        if waited < if assigned { STARTING_WAIT } else { UNASSIGNED_WAIT } { Absent::Wait } else { Absent::Drop }
    }

    /// Whether this connection's agent may feed `stream`'s stage (see
    /// [`super::Transport::allow_senders`]).
    fn allowed(&self, stream: &StreamIn) -> bool {
        let senders = read(&self.inner.senders);
        let Some(stages) = senders.get(&stream.job) else { return true };
        let peer = lock(&self.peer);
        stages.get(stream.stage).is_some_and(|agents| peer.as_ref().is_some_and(|p| agents.contains(p)))
    }

    /// Offers a batch to its worker; hands it back if the worker is full.
    fn deliver(&self, stream: &mut StreamIn, batch: BatchBytes) -> Option<BatchBytes> {
        let counters = &self.inner.counters;
        if !self.allowed(stream) {
            counters.fenced.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let handle = read(&self.inner.jobs).get(&stream.job).cloned();
        let delivery = match handle {
            Some(handle) => {
                stream.starting_since = None;
                handle.deliver(stream.stage, stream.index, batch)
            }
            None => match self.absent(stream) {
                Absent::Wait => return Some(batch),
                Absent::Drop => Delivery::NotHere,
            },
        };
        match delivery {
            Delivery::Accepted => {
                counters.batches_received.fetch_add(1, Ordering::Relaxed);
                None
            }
            Delivery::NotHere => {
                counters.misrouted.fetch_add(1, Ordering::Relaxed);
                None
            }
            Delivery::Full(batch) => Some(batch),
        }
    }

    fn credit(&self, id: u32, batches: u32) -> std::io::Result<()> {
        let mut out = lock(&self.out);
        frame::write(&mut *out, &Frame::Credit { id, batches })?;
        out.flush()
    }

    /// Offers set-aside batches again, in order, returning credit for each one queued.
    fn retry_loop(&self) {
        let mut streams = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while !self.closed.load(Ordering::SeqCst) {
            let mut credits = Vec::new();
            for stream in streams.values_mut().filter(|s| !s.parcels.is_empty()) {
                let handle = read(&self.inner.jobs).get(&stream.job).cloned();
                match handle {
                    Some(handle) => {
                        stream.parcels.drain(..).for_each(|p| handle.deliver_state(stream.stage, stream.index, p))
                    }
                    None => {
                        if let Absent::Drop = self.absent(stream) {
                            tracing::warn!(job = %stream.job, "key-group state for a job that never started here dropped");
                            stream.parcels.clear();
                        }
                    }
                }
            }
            for (id, stream) in streams.iter_mut() {
                let mut queued = 0;
                while let Some(batch) = stream.waiting.pop_front() {
                    match self.deliver(stream, batch) {
                        None => queued += 1,
                        Some(batch) => {
                            stream.waiting.push_front(batch);
                            break;
                        }
                    }
                }
                if queued > 0 {
                    credits.push((*id, queued));
                }
            }
            let any_waiting = streams.values().any(|s| !s.waiting.is_empty() || !s.parcels.is_empty());
            for (id, n) in credits {
                if self.credit(id, n).is_err() {
                    return;
                }
            }
            let wait = if any_waiting { RETRY } else { Duration::from_millis(100) };
            streams = self.waiting.wait_timeout(streams, wait).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}
