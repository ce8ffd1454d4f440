//! A job's output pulled by another job's source (chaining), as batches: one [`Tap`] per
//! puller, fed by the job's [`SinkHub`](crate::sink::SinkHub) thread beside its subscribers.
//!
//! - **No query**: each output batch is handed over as it is — the same shared bytes, no copy.
//! - **A filter** (`SELECT * WHERE …`): the matching events are copied into a new batch, every
//!   field with its type (bytes stay bytes).
//! - **Any other query** (projections, windows): its results, which the query computes as
//!   JSON-typed values (text, numbers, booleans), become the events of a batch.
//!
//! The feed towards the connection holds at most [`TAP_BATCHES`] batches: past that, batches
//! for this puller are dropped and counted ([`Tap::dropped`]); the job never waits for it. A
//! query that fails ends the tap (the puller sees its stream end and dials again).

use std::sync::mpsc::TrySendError;
use std::sync::{Arc, atomic::AtomicU64, atomic::Ordering};

use serde_json::{Map, Value as Json};
use squilla_batch::{BatchBuilder, BatchBytes};
use squilla_host::transport::tap::{self, TapFeed, TapSender};
use squilla_query::{Query, Runner};

/// Batches that may wait for one puller's connection before more are dropped.
pub const TAP_BATCHES: usize = 32;

/// Most query results per batch handed to a puller.
const RESULTS_PER_BATCH: usize = 1024;

/// One puller of a job's output.
pub(crate) struct Tap {
    tx: TapSender,
    runner: Option<Runner>,
    /// Events dropped for this puller (shared with the hub's total).
    dropped: Arc<AtomicU64>,
    /// Batches in a row on which the query took more than the sink's budget.
    slow: u32,
}

impl Tap {
    /// A tap after `query` (checked here: `Err` says why it does not parse), and its feed.
    pub fn open(query: Option<&str>, dropped: Arc<AtomicU64>, state_limit: usize) -> Result<(Tap, TapFeed), String> {
        let runner = match query {
            None => None,
            Some(text) => {
                let query = Query::parse(text)
                    .map_err(|e| format!("invalid query: {} (line {}, column {})", e.message, e.line, e.column))?;
                Some(Runner::new(Arc::new(query), squilla_types::time::now_ms(), 1).with_state_limit(state_limit))
            }
        };
        let (tx, feed) = tap::channel(TAP_BATCHES);
        Ok((Tap { tx, runner, dropped, slow: 0 }, feed))
    }

    /// Hands over what `batch` gives after the query; `false` once the tap has ended (the
    /// puller left, or the query ended, failed, or was too slow: the same budget as a
    /// subscriber's query, [`crate::sink::QUERY_BATCH_BUDGET`] on
    /// [`crate::sink::QUERY_SLOW_BATCHES`] batches in a row or [`crate::sink::QUERY_BATCH_MAX`]
    /// on one, since pullers share the sink's thread with every subscriber of the job). A
    /// panic in the query (a bug) ends only this tap.
    pub fn offer(&mut self, batch: &BatchBytes, now_ms: i64) -> bool {
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.offer_inner(batch, now_ms)));
        let took = started.elapsed();
        self.slow = if took > crate::sink::QUERY_BATCH_BUDGET { self.slow + 1 } else { 0 };
        if took > crate::sink::QUERY_BATCH_MAX || self.slow >= crate::sink::QUERY_SLOW_BATCHES {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                "a chained job's query is too slow at its upstream; its pull ends"
            );
            return false;
        }
        match outcome {
            Ok(alive) => alive,
            Err(_) => {
                tracing::error!("a chained job's query failed at its upstream; its pull ends");
                false
            }
        }
    }

    fn offer_inner(&mut self, batch: &BatchBytes, now_ms: i64) -> bool {
        let Some(runner) = &mut self.runner else { return self.send(batch.clone(), batch.len()) };
        if runner.query().selects_events() {
            let view = batch.view();
            let mut out = BatchBuilder::with_capacity(view.len())
                .source(view.meta().source())
                .sequence(view.meta().sequence())
                .created_at_ms(view.meta().created_at_ms());
            for event in view.events() {
                if runner.matches(&event) {
                    out.push_ref(event);
                }
            }
            return self.send_built(out);
        }
        let mut results = Vec::new();
        runner.tick(now_ms, &mut results);
        let mut within_limit = true;
        for event in batch.view().events() {
            if runner.push(&event, &mut results).is_err() {
                within_limit = false;
                break;
            }
        }
        self.send_results(results) && within_limit && !self.finished()
    }

    /// Closes windows that are due with no batch arriving.
    pub fn tick(&mut self, now_ms: i64) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let Some(runner) = &mut self.runner else { return true };
        if runner.query().selects_events() {
            return true;
        }
        let mut results = Vec::new();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.tick(now_ms, &mut results))).is_ok();
        self.send_results(results) && ok && !self.finished()
    }

    fn finished(&self) -> bool {
        self.runner.as_ref().is_some_and(Runner::finished)
    }

    fn send_results(&mut self, results: Vec<Map<String, Json>>) -> bool {
        for chunk in results.chunks(RESULTS_PER_BATCH) {
            let mut out = BatchBuilder::with_capacity(chunk.len()).source("query");
            let now = squilla_types::time::now_ms();
            for result in chunk {
                let line = Json::Object(result.clone()).to_string();
                // A result is a JSON object of plain values: it always makes an event.
                let _ = squilla_batch::json::push_json_line(&mut out, &line, now);
            }
            if !self.send_built(out) {
                return false;
            }
        }
        true
    }

    fn send_built(&mut self, out: BatchBuilder) -> bool {
        if out.is_empty() {
            return true;
        }
        let events = out.len();
        match out.finish() {
            Ok(batch) => self.send(batch, events),
            Err(err) => {
                tracing::warn!(error = %err, "a pulled batch could not be built; dropped");
                self.dropped.fetch_add(events as u64, Ordering::Relaxed);
                true
            }
        }
    }

    fn send(&mut self, batch: BatchBytes, events: usize) -> bool {
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(events as u64, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}
