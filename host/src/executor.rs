//! The agent's fixed pool of worker threads and its clock.
//!
//! Workers do not own threads. A worker with something to do (an input batch, a due tick, or
//! room downstream for output it holds) is *scheduled*: put once on the run queue, however
//! many times it is woken. A pool thread takes it, lets it process at most
//! [`QUANTUM`] batches, and moves on; if the worker still has work it goes to the back of the
//! queue. So a hot worker yields after a bounded slice and every tenant's worker gets turns:
//! nobody starves, and the thread count stays fixed at the number of cores however many
//! workers the agent hosts.
//!
//! The clock is one thread with a heap of due ticks; it wakes workers whose stage timer fired.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::pipeline::worker::Worker;

/// Batches a worker processes per turn before it yields its thread.
pub const QUANTUM: usize = 8;

/// Time a worker may keep a pool thread in one turn: it starts no new call after this, so a
/// slow stage holds a thread for at most one call (itself bounded by the call deadline) past
/// it, and the other workers on the agent get their turns.
pub const TURN_BUDGET: std::time::Duration = std::time::Duration::from_millis(10);

struct Timer {
    due: Instant,
    seq: u64,
    worker: Weak<Worker>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

pub(crate) struct Shared {
    run_queue: Sender<Arc<Worker>>,
    timers: Mutex<BinaryHeap<Reverse<Timer>>>,
    timer_added: Condvar,
    timer_seq: AtomicU64,
    stop: AtomicBool,
}

/// A fixed pool of threads running workers, and the clock that drives their ticks.
/// Dropping it stops the threads (after their current turn).
pub struct Executor {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("threads", &self.threads.len()).finish()
    }
}

impl Executor {
    /// A pool of `threads` worker threads (0: one per available core) plus the clock thread.
    pub fn new(threads: usize) -> Arc<Self> {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { threads };
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            run_queue: tx,
            timers: Mutex::new(BinaryHeap::new()),
            timer_added: Condvar::new(),
            timer_seq: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(threads + 1);
        for i in 0..threads {
            let (shared, rx) = (shared.clone(), rx.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("squilla-worker-{i}"))
                    .spawn(move || run_workers(&shared, &rx))
                    .expect("spawn a pool thread"),
            );
        }
        let clock = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name("squilla-clock".into())
                .spawn(move || run_clock(&clock))
                .expect("spawn clock"),
        );
        Arc::new(Executor { shared, threads: handles })
    }

    /// How many threads run workers.
    pub fn threads(&self) -> usize {
        self.threads.len() - 1
    }

    pub(crate) fn handle(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.timer_added.notify_all();
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Shared {
    /// Puts `worker` on the run queue unless it is there already.
    pub(crate) fn schedule(&self, worker: &Arc<Worker>) {
        if worker.try_mark_scheduled() {
            // The receivers live as long as `self`; a send fails only during shutdown.
            let _ = self.run_queue.send(worker.clone());
        }
    }

    /// Wakes `worker` at `due` for its stage tick.
    pub(crate) fn tick_at(&self, due: Instant, worker: Weak<Worker>) {
        let seq = self.timer_seq.fetch_add(1, Ordering::Relaxed);
        let mut timers = self.timers.lock().expect("timer heap lock");
        let earliest = timers.peek().is_none_or(|Reverse(t)| due < t.due);
        timers.push(Reverse(Timer { due, seq, worker }));
        if earliest {
            self.timer_added.notify_one();
        }
    }
}

fn run_workers(shared: &Arc<Shared>, rx: &Receiver<Arc<Worker>>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(worker) => worker.run(shared),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn run_clock(shared: &Arc<Shared>) {
    let mut timers = shared.timers.lock().expect("timer heap lock");
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        match timers.peek() {
            Some(Reverse(t)) if t.due <= now => {
                let Reverse(timer) = timers.pop().expect("peeked");
                drop(timers);
                if let Some(worker) = timer.worker.upgrade() {
                    worker.tick_fired(shared, timer.due);
                }
                timers = shared.timers.lock().expect("timer heap lock");
            }
            Some(Reverse(t)) => {
                let wait = t.due - now;
                timers = shared.timer_added.wait_timeout(timers, wait).expect("timer heap lock").0;
            }
            None => {
                timers =
                    shared.timer_added.wait_timeout(timers, Duration::from_millis(100)).expect("timer heap lock").0;
            }
        }
    }
}
