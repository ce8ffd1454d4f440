//! Pulling a job's output from the agents that make it: how a job reads another job (chaining)
//! without the master in the path.
//!
//! The agent that runs a downstream job's source dials each agent that runs the upstream job's
//! last stage, proves the fleet key ([`super::handshake`]), and sends `subscribe` (job, query)
//! and an initial `credit`. The upstream agent asks the job's registered [`TapOpen`] for a
//! [`TapFeed`] — the job's output there, after the query, as batches — and writes each batch
//! as the very bytes it holds while credit lasts. The dialer validates each batch once,
//! queues it in its own job, and returns the credit. Nothing on the way is JSON: an event's
//! fields keep their types, bytes included.
//!
//! **Never slowing the upstream**: the feed between the upstream job and the connection is
//! bounded; when the downstream does not keep up (its credit is spent), the feed fills and the
//! upstream's sink drops further batches for it, counted there, as it does for a slow
//! subscriber. The upstream job itself never waits.
//!
//! **Ending**: when the job's output ends on the upstream agent (it stopped or moved there), the
//! stream ends with an `end` frame; a job that is not (or not yet) there is answered `end` at
//! once. The dialer decides whether to dial again (it follows the master's plan).
//!
//! **Fencing**: an upstream agent whose lease has run out sends nothing (batches are dropped,
//! counted as fenced), like any other output of it.

use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use squilla_batch::BatchBytes;

use super::conn::{Conn, Input, Output};
use super::frame::{self, Frame};
use super::state::{TransportState, read};

/// Opens a feed of a job's output here for one subscriber, after an optional query; `Err` says
/// why it cannot (e.g. the query does not parse).
pub type TapOpen = Arc<dyn Fn(Option<&str>) -> Result<TapFeed, String> + Send + Sync>;

/// A job's output for one puller, as batches; ends when its [`TapSender`] is dropped.
pub struct TapFeed {
    batches: Receiver<BatchBytes>,
    gone: Arc<AtomicBool>,
}

impl Drop for TapFeed {
    fn drop(&mut self) {
        self.gone.store(true, Ordering::SeqCst);
    }
}

/// The job's end of a [`TapFeed`].
pub struct TapSender {
    batches: SyncSender<BatchBytes>,
    gone: Arc<AtomicBool>,
}

impl TapSender {
    /// Hands `batch` over without waiting; gives it back if the feed is full or gone.
    pub fn try_send(&self, batch: BatchBytes) -> Result<(), TrySendError<BatchBytes>> {
        self.batches.try_send(batch)
    }

    /// Whether the puller's side has ended.
    pub fn is_closed(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

/// A feed holding at most `capacity` batches, and its sender.
pub fn channel(capacity: usize) -> (TapSender, TapFeed) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let gone = Arc::new(AtomicBool::new(false));
    (TapSender { batches: tx, gone: gone.clone() }, TapFeed { batches: rx, gone })
}

/// The stream id a puller uses (one stream per connection).
const STREAM: u32 = 1;

/// How long the serving side waits for credit or a batch before it checks whether to stop.
const POLL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Credit the puller has granted, and whether its connection is gone.
#[derive(Default)]
struct Credit {
    state: Mutex<(u32, bool)>,
    changed: Condvar,
}

impl Credit {
    /// Waits up to [`POLL`] for credit; `Some(true)` if there is some, `None` once closed.
    fn wait(&self) -> Option<bool> {
        let state = lock(&self.state);
        let (state, _) = self
            .changed
            .wait_timeout_while(state, POLL, |(n, closed)| *n == 0 && !*closed)
            .unwrap_or_else(PoisonError::into_inner);
        if state.1 { None } else { Some(state.0 > 0) }
    }

    fn take(&self) {
        let mut state = lock(&self.state);
        state.0 = state.0.saturating_sub(1);
    }
}

/// Serves a `subscribe` that opened a connection: the job's output here, as credit allows.
pub(super) fn serve(
    socket: TcpStream,
    mut input: BufReader<Input>,
    output: Output,
    inner: &Arc<TransportState>,
    job: &str,
    query: &str,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(output.buffer_bytes(), output);
    let open = read(&inner.taps).get(job).cloned();
    let query = Some(query).filter(|q| !q.trim().is_empty());
    let feed = match open.map(|open| open(query)) {
        Some(Ok(feed)) => feed,
        Some(Err(message)) => return end(&mut out, &message),
        None => return end(&mut out, &format!("job {job} makes no output on this agent")),
    };
    let credit = Arc::new(Credit::default());
    let reader = {
        let (credit, max) = (credit.clone(), inner.config.max_frame_bytes);
        std::thread::Builder::new().name("squilla-tap-credit".into()).spawn(move || {
            while let Ok(Frame::Credit { batches, .. }) = frame::read(&mut input, max) {
                {
                    let mut state = lock(&credit.state);
                    state.0 = state.0.saturating_add(batches);
                }
                credit.changed.notify_all();
            }
            lock(&credit.state).1 = true;
            credit.changed.notify_all();
        })?
    };
    let result = pump(&feed, &credit, &mut out, inner);
    let _ = socket.shutdown(std::net::Shutdown::Both);
    let _ = reader.join();
    result
}

/// Writes the feed's batches while credit lasts, until the feed or the connection ends.
fn pump(feed: &TapFeed, credit: &Credit, out: &mut BufWriter<Output>, inner: &TransportState) -> std::io::Result<()> {
    let counters = &inner.counters;
    loop {
        if inner.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        match credit.wait() {
            None => return Ok(()),
            Some(false) => continue,
            Some(true) => {}
        }
        let batch = match feed.batches.recv_timeout(POLL) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return end(out, "the job's output ended on this agent"),
        };
        if !inner.config.lease.is_valid() {
            inner.config.lease.count_fenced(1);
            counters.fenced.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        credit.take();
        let bytes = batch.as_bytes();
        frame::write_data_header(out, STREAM, bytes.len())?;
        out.write_all(bytes)?;
        counters.batches_sent.fetch_add(1, Ordering::Relaxed);
        counters.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        out.flush()?;
    }
}

fn end(out: &mut BufWriter<Output>, message: &str) -> std::io::Result<()> {
    frame::write(out, &Frame::End { id: STREAM, message: message.to_owned() })?;
    out.flush()
}

/// What a pull of a job's output gives next.
#[derive(Debug)]
pub enum Pulled {
    /// A batch of the job's output (validated).
    Batch(BatchBytes),
    /// The stream ended on the upstream agent, and why.
    End(String),
}

/// The pulling end: a connection to the agent that makes a job's output.
pub struct Puller {
    conn: TcpStream,
    input: BufReader<Input>,
    out: BufWriter<Output>,
    inner: Arc<TransportState>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller").field("peer", &self.conn.peer_addr().ok()).finish()
    }
}

/// Closes a [`Puller`]'s connection from another thread, ending a wait in [`Puller::recv`].
#[derive(Debug, Clone)]
pub struct PullerCloser {
    conn: Arc<TcpStream>,
    closed: Arc<AtomicBool>,
}

impl PullerCloser {
    /// Closes the connection; the puller's next (or current) read fails.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}

impl Puller {
    /// Dials `peer`, proves the key, and asks for `job`'s output there after `query`, with
    /// `credit` batches in flight at most.
    pub(super) fn dial(
        inner: Arc<TransportState>,
        peer: SocketAddr,
        job: &str,
        query: Option<&str>,
        credit: u32,
    ) -> std::io::Result<Puller> {
        let Conn { input, output, socket: conn, .. } = super::conn::dial(peer, &inner)?;
        inner.counters.connects.fetch_add(1, Ordering::Relaxed);
        let mut out = BufWriter::new(output);
        let subscribe = Frame::Subscribe { id: STREAM, job: job.to_owned(), query: query.unwrap_or("").to_owned() };
        frame::write(&mut out, &subscribe)?;
        frame::write(&mut out, &Frame::Credit { id: STREAM, batches: credit })?;
        out.flush()?;
        let input = BufReader::with_capacity(input.buffer_bytes(), input);
        Ok(Puller { conn, input, out, inner, closed: Arc::new(AtomicBool::new(false)) })
    }

    /// A handle that closes this connection from elsewhere.
    pub fn closer(&self) -> std::io::Result<PullerCloser> {
        Ok(PullerCloser { conn: Arc::new(self.conn.try_clone()?), closed: self.closed.clone() })
    }

    /// Waits for the next batch (an invalid one is dropped, counted, and its credit returned)
    /// or the end of the stream. An error means the connection is gone.
    pub fn recv(&mut self) -> std::io::Result<Pulled> {
        let max = self.inner.config.max_frame_bytes;
        loop {
            match frame::read(&mut self.input, max)? {
                Frame::Data { bytes, .. } => match BatchBytes::validate(bytes) {
                    Ok(batch) => {
                        self.inner.counters.batches_received.fetch_add(1, Ordering::Relaxed);
                        return Ok(Pulled::Batch(batch));
                    }
                    Err(err) => {
                        self.inner.counters.invalid.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %err, "invalid batch from an upstream agent dropped");
                        self.credit(1)?;
                    }
                },
                Frame::End { message, .. } => return Ok(Pulled::End(message)),
                other => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("unexpected frame from an upstream agent: {other:?}"),
                    ));
                }
            }
        }
    }

    /// Grants the upstream `batches` more batches (call once each is queued).
    pub fn credit(&mut self, batches: u32) -> std::io::Result<()> {
        frame::write(&mut self.out, &Frame::Credit { id: STREAM, batches })?;
        self.out.flush()
    }

    /// Whether [`PullerCloser::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Puller {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}
