//! A byte-bounded queue of stream chunks between a producer thread or task and one
//! subscriber's response.
//!
//! Each queued chunk holds bytes of the subscriber's [`Budget`] (and so of its tenant's and
//! the process's) until the subscriber takes it. A chunk that does not fit the subscriber's
//! own share is dropped and counted — the subscriber is told how many it lost when it reads
//! again — so a slow reader loses data, never memory. When a chunk does not fit the tenant's
//! or the process's budget, or the producer ends the stream with an error, the queue is
//! emptied at once (its memory given back) and the subscriber gets the error as its last item.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::budget::{Budget, Exceeded, Level};

/// Why a stream ended early, as the subscriber is told (a stable `code` and a message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEnd {
    /// A stable code, e.g. `subscriber_memory`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

impl StreamEnd {
    /// `subscriber_memory`: buffering more would pass `exceeded`'s limit.
    pub fn memory(exceeded: Exceeded) -> StreamEnd {
        StreamEnd {
            code: "subscriber_memory",
            message: format!(
                "the stream was ended: its buffered data would pass the {} memory limit of {} bytes for streams; \
                 read faster, or ask for less (a query, sample=N)",
                exceeded.level.name(),
                exceeded.limit
            ),
        }
    }
}

/// What a subscriber reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The next chunk; `dropped` events were lost just before it (a chunk may be empty when
    /// it only tells of losses at the end).
    Chunk {
        /// The bytes.
        bytes: Bytes,
        /// Events lost (chunks that did not fit) since the last item.
        dropped: u64,
    },
    /// The stream ended with an error; nothing follows.
    End(StreamEnd),
}

#[derive(Debug, Default)]
struct State {
    /// Queued chunks: bytes, events, and events lost just before this chunk.
    chunks: VecDeque<(Bytes, usize, u64)>,
    events: usize,
    /// Events lost since the last queued chunk.
    dropped: u64,
    end: Option<StreamEnd>,
    finished: bool,
    reader_gone: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    budget: Arc<Budget>,
    max_events: usize,
}

/// The producer's end.
#[derive(Debug, Clone)]
pub struct Sender(Arc<Shared>);

/// The subscriber's end; dropping it gives back what it held.
#[derive(Debug)]
pub struct Receiver(Arc<Shared>);

/// What an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued.
    Queued,
    /// Dropped (the subscriber's share is full); counted and announced to it.
    Dropped,
    /// The stream is over: ended by the producer or a limit, or the subscriber left.
    Closed,
}

/// A queue whose chunks hold `budget` bytes; at most `max_events` events wait at once (a
/// chunk is always taken when nothing waits, whatever its size in events).
pub fn channel(budget: Arc<Budget>, max_events: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared { state: Mutex::default(), notify: Notify::new(), budget, max_events });
    (Sender(shared.clone()), Receiver(shared))
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Empties the queue, giving its bytes back.
    fn clear(&self, state: &mut State) {
        let held: usize = state.chunks.drain(..).map(|(b, _, _)| b.len()).sum();
        state.events = 0;
        self.budget.release(held);
    }
}

impl Sender {
    /// Offers a chunk of `events` events.
    pub fn offer(&self, bytes: Bytes, events: usize) -> Offered {
        let shared = &self.0;
        let mut state = shared.lock();
        if state.reader_gone || state.end.is_some() || state.finished {
            return Offered::Closed;
        }
        if !state.chunks.is_empty() && state.events + events > shared.max_events {
            state.dropped += events as u64;
            return Offered::Dropped;
        }
        match shared.budget.try_reserve(bytes.len()) {
            Ok(()) => {}
            Err(Exceeded { level: Level::Subscriber, .. }) => {
                state.dropped += events as u64;
                return Offered::Dropped;
            }
            Err(e) => {
                shared.clear(&mut state);
                state.end = Some(StreamEnd::memory(e));
                drop(state);
                shared.notify.notify_one();
                return Offered::Closed;
            }
        }
        let dropped = std::mem::take(&mut state.dropped);
        state.chunks.push_back((bytes, events, dropped));
        state.events += events;
        drop(state);
        shared.notify.notify_one();
        Offered::Queued
    }

    /// Ends the stream with `end`: what is queued is dropped (its memory given back) and the
    /// subscriber reads `end` next.
    pub fn end(&self, end: StreamEnd) {
        let mut state = self.0.lock();
        if state.end.is_none() && !state.finished {
            self.0.clear(&mut state);
            state.end = Some(end);
        }
        drop(state);
        self.0.notify.notify_one();
    }

    /// Ends the stream normally: the subscriber reads what is queued, then sees the end.
    pub fn finish(&self) {
        self.0.lock().finished = true;
        self.0.notify.notify_one();
    }

    /// Whether the subscriber has gone (its end was dropped).
    pub fn is_closed(&self) -> bool {
        let state = self.0.lock();
        state.reader_gone || state.end.is_some()
    }
}

impl Receiver {
    /// The next item; `None` once the stream is over.
    pub async fn recv(&mut self) -> Option<Item> {
        loop {
            let notified = self.0.notify.notified();
            {
                let mut state = self.0.lock();
                if let Some((bytes, events, dropped)) = state.chunks.pop_front() {
                    state.events -= events;
                    self.0.budget.release(bytes.len());
                    return Some(Item::Chunk { bytes, dropped });
                }
                if let Some(end) = state.end.take() {
                    state.finished = true;
                    return Some(Item::End(end));
                }
                if state.finished {
                    // Losses after the last chunk are still told, once.
                    let dropped = std::mem::take(&mut state.dropped);
                    return (dropped > 0).then_some(Item::Chunk { bytes: Bytes::new(), dropped });
                }
            }
            notified.await;
        }
    }

    /// Bytes waiting now.
    pub fn queued_bytes(&self) -> usize {
        self.0.lock().chunks.iter().map(|(b, _, _)| b.len()).sum()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.reader_gone = true;
        self.0.clear(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budgets;

    fn chunk(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[tokio::test]
    async fn a_slow_reader_loses_chunks_not_memory_and_hears_of_it() {
        let budgets = Budgets::new(1000, 1000);
        let (tx, mut rx) = channel(budgets.tenant("t").child(Level::Subscriber, 100), 1000);
        assert_eq!(tx.offer(chunk(60), 6), Offered::Queued);
        assert_eq!(tx.offer(chunk(60), 6), Offered::Dropped);
        assert_eq!(budgets.total().used(), 60);
        assert_eq!(rx.recv().await, Some(Item::Chunk { bytes: chunk(60), dropped: 0 }));
        assert_eq!(tx.offer(chunk(10), 1), Offered::Queued);
        assert_eq!(rx.recv().await, Some(Item::Chunk { bytes: chunk(10), dropped: 6 }));
        tx.finish();
        assert_eq!(rx.recv().await, None);
        assert_eq!(budgets.total().used(), 0);
    }

    #[tokio::test]
    async fn over_the_tenant_share_the_stream_ends_and_frees_its_memory() {
        let budgets = Budgets::new(1000, 100);
        let (tx1, mut rx1) = channel(budgets.tenant("t").child(Level::Subscriber, 80), 1000);
        let (tx2, _rx2) = channel(budgets.tenant("t").child(Level::Subscriber, 80), 1000);
        assert_eq!(tx1.offer(chunk(70), 1), Offered::Queued);
        assert_eq!(tx2.offer(chunk(40), 1), Offered::Closed);
        assert!(tx2.is_closed());
        assert_eq!(budgets.total().used(), 70);
        drop(_rx2);
        tx1.end(StreamEnd { code: "x", message: "y".into() });
        assert_eq!(budgets.total().used(), 0);
        assert!(matches!(rx1.recv().await, Some(Item::End(StreamEnd { code: "x", .. }))));
        assert_eq!(rx1.recv().await, None);
    }

    #[tokio::test]
    async fn a_dropped_reader_gives_back_what_it_held() {
        let budgets = Budgets::new(1000, 1000);
        let (tx, rx) = channel(budgets.tenant("t").child(Level::Subscriber, 500), 1000);
        tx.offer(chunk(100), 1);
        drop(rx);
        assert_eq!(budgets.total().used(), 0);
        assert_eq!(tx.offer(chunk(1), 1), Offered::Closed);
    }
}
