//! This agent's share of each job, reconciled to the master's plan.
//!
//! Every heartbeat's answer lists every job with a worker here and where all of its slots
//! run. [`Jobs::apply`] hands each job's thread ([`crate::job`]) its latest assignment, and
//! tells the threads of jobs no longer listed to stop. It never waits on a job: each job's
//! lifecycle (fetching and compiling artifacts, starting workers, re-planning, stopping) runs
//! on the job's own thread, so a job stuck in any of these delays nobody else. Before it
//! returns, `apply` fences what the plan took away — a replaced worker incarnation, a moved
//! source, a removed job — so that nothing of it is emitted once the agent's lease is renewed.
//! [`Jobs::reports`] says how every local worker is doing, for the next heartbeat, from what
//! the job threads published: it takes no lock a guest call can hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;
use squilla_host::pipeline::WorkerMetrics;
use squilla_host::pipeline::{FailureKind, PipelineHandle, Pushed};
use squilla_types::control::{AgentUsage, JobAssignment, ReportedState, WorkerCounters, WorkerReport};
use squilla_types::ids::JobKey;

use crate::job::{Context, JobCell};
use crate::reconcile::{self, JobsAction};
use crate::sink::SinkHub;

/// Every job this agent runs.
pub struct Jobs {
    ctx: Arc<Context>,
    jobs: Mutex<BTreeMap<JobKey, Arc<JobCell>>>,
    /// Jobs told to stop whose threads may still be at it.
    stopping: Mutex<Vec<Arc<JobCell>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What ingesting a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// The job's first stage took the batch; `dropped_events` of it were dropped by the job's
    /// backpressure policy (or fenced).
    Taken {
        /// Events dropped on the way in.
        dropped_events: u64,
    },
    /// The job is not here (it ended, or moved).
    NotHere,
    /// The job had no room in time (under `block`).
    Full,
}

impl Jobs {
    pub(crate) fn new(ctx: Context) -> Self {
        Jobs { ctx: Arc::new(ctx), jobs: Mutex::new(BTreeMap::new()), stopping: Mutex::new(Vec::new()) }
    }

    fn cell(&self, job: &JobKey) -> Option<Arc<JobCell>> {
        lock(&self.jobs).get(job).cloned()
    }

    /// The sink of a job running here.
    pub fn hub(&self, job: &JobKey) -> Option<Arc<SinkHub>> {
        self.cell(job)?.view().hub
    }

    /// Makes this agent run exactly `plan` (the actions of [`reconcile::jobs`]): never waits
    /// for a job's thread.
    pub fn apply(&self, plan: Vec<JobAssignment>) {
        lock(&self.stopping).retain(|c| !c.is_done());
        let mut jobs = lock(&self.jobs);
        let running: BTreeSet<JobKey> = jobs.keys().cloned().collect();
        for action in reconcile::jobs(&running, &plan) {
            match action {
                JobsAction::Stop(id) => {
                    if let Some(cell) = jobs.remove(&id) {
                        cell.stop();
                        lock(&self.stopping).push(cell);
                    }
                }
                JobsAction::Assign(assignment) => {
                    if let Some(cell) = jobs.get(&assignment.job) {
                        cell.assign(assignment);
                    }
                }
                JobsAction::Start(assignment) => {
                    let id = assignment.job.clone();
                    match JobCell::start(self.ctx.clone(), assignment) {
                        Ok(cell) => {
                            jobs.insert(id, cell);
                        }
                        // Nothing was started; the next plan tries again.
                        Err(err) => tracing::error!(job = %id, error = %err, "cannot start a thread for the job"),
                    }
                }
            }
        }
    }

    /// The log of a local worker of job `key` (see `PipelineHandle::log`).
    pub fn log(
        &self,
        key: &squilla_types::ids::JobKey,
        stage: usize,
        index: usize,
    ) -> Option<(Vec<squilla_host::LogLine>, u64, u64)> {
        let cell = lock(&self.jobs).get(key).cloned()?;
        let view = cell.view();
        view.handle.as_ref()?.log(stage, index)
    }

    /// The metrics of every job running here, with its key.
    pub fn metrics(&self) -> Vec<(squilla_types::ids::JobKey, squilla_host::pipeline::PipelineMetrics)> {
        self.cells()
            .iter()
            .filter_map(|cell| {
                let view = cell.view();
                let metrics = view.handle.as_ref().and_then(|h| h.metrics())?;
                Some((cell.key().clone(), metrics))
            })
            .collect()
    }

    /// Per job here: its sink's subscribers now, and events it dropped for other jobs'
    /// sources that did not keep up ([`crate::tap`]).
    pub fn sinks(&self) -> Vec<(squilla_types::ids::JobKey, crate::sink::SinkStats)> {
        self.cells().iter().filter_map(|cell| Some((cell.key().clone(), cell.view().hub?.stats()))).collect()
    }

    fn cells(&self) -> Vec<Arc<JobCell>> {
        lock(&self.jobs).values().cloned().collect()
    }

    /// The state of every local worker, for the master.
    pub fn reports(&self) -> Vec<WorkerReport> {
        let cells: Vec<Arc<JobCell>> = lock(&self.jobs).values().cloned().collect();
        let mut out = Vec::new();
        for cell in cells {
            let view = cell.view();
            if let (Some(applied), Some(metrics)) = (&view.applied, view.handle.as_ref().and_then(|h| h.metrics())) {
                for (s, workers) in metrics.stages.iter().enumerate() {
                    for w in workers {
                        let Some(slot) = applied.slots.get(s).and_then(|st| st.get(w.index)) else { continue };
                        let failures = FailureKind::ALL
                            .iter()
                            .zip(w.failures)
                            .filter(|(_, n)| *n > 0)
                            .map(|(k, n)| (k.name().to_owned(), n))
                            .collect();
                        out.push(WorkerReport {
                            job: applied.job.clone(),
                            stage: s as u32,
                            index: w.index as u32,
                            number: slot.number,
                            state: if w.failed.is_some() { ReportedState::Failed } else { ReportedState::Running },
                            message: w.failed.clone(),
                            fatal: false,
                            events_in: w.events_in,
                            events_out: w.events_out,
                            dropped: w.dropped(),
                            memory_bytes: w.memory_bytes,
                            failed_calls: w.failed_calls,
                            failures,
                            last_failure: w.last_failure.as_ref().map(|(k, m)| format!("{}: {m}", k.name())),
                            counters: counters(w),
                        });
                    }
                }
            }
            for ((stage, index), failure) in &view.failed {
                out.push(WorkerReport {
                    state: ReportedState::Failed,
                    message: Some(failure.message.clone()),
                    fatal: failure.fatal,
                    ..WorkerReport::new(cell.key().clone(), *stage, *index, failure.number)
                });
            }
        }
        out
    }

    /// What the agent's compile cache has done.
    pub fn cache_stats(&self) -> squilla_host::CacheStats {
        self.ctx.master.cache.stats()
    }

    /// What the agent uses, for the heartbeat that carries `reports`.
    pub fn usage(&self, reports: &[WorkerReport]) -> AgentUsage {
        let running = reports.iter().filter(|r| r.state == ReportedState::Running);
        let stats = self.ctx.master.cache.stats();
        AgentUsage {
            workers: running.clone().count() as u64,
            memory_bytes: running.fold(0u64, |a, r| a.saturating_add(r.memory_bytes)),
            compile_cache_hits: stats.hits + stats.loaded,
            compiled: stats.compiled,
        }
    }

    /// Stops everything (agent shutdown), waiting up to `timeout` for the job threads.
    pub fn stop_all(&self, timeout: Duration) {
        let all = std::mem::take(&mut *lock(&self.jobs));
        for cell in all.into_values() {
            cell.stop();
            lock(&self.stopping).push(cell);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            lock(&self.stopping).retain(|c| !c.is_done());
            if lock(&self.stopping).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether this agent runs `job`'s source now (where its ingest goes).
    pub fn takes_ingest(&self, job: &JobKey) -> bool {
        self.cell(job).is_some_and(|cell| cell.takes_ingest())
    }

    /// Feeds an ingested batch to a job's first stage, waiting up to `wait` for room.
    pub fn ingest(&self, job: &JobKey, batch: BatchBytes, wait: Duration) -> Ingested {
        let Some(cell) = self.cell(job) else { return Ingested::NotHere };
        if !cell.takes_ingest() {
            return Ingested::NotHere;
        }
        let Some(handle) = cell.view().handle else { return Ingested::NotHere };
        if !handle.is_alive() {
            return Ingested::NotHere;
        }
        match handle.push_counted(batch, wait) {
            Pushed { taken: true, dropped_events } => Ingested::Taken { dropped_events },
            Pushed { taken: false, .. } if handle.is_alive() => Ingested::Full,
            Pushed { .. } => Ingested::NotHere,
        }
    }

    /// Handles of the running pipelines (for tests and metrics).
    pub fn handles(&self) -> Vec<(JobKey, PipelineHandle)> {
        let cells: Vec<(JobKey, Arc<JobCell>)> = lock(&self.jobs).iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        cells.into_iter().filter_map(|(id, c)| c.view().handle.map(|h| (id, h))).collect()
    }

    /// Batches fenced on this agent since it started (its lease had run out).
    pub fn fenced(&self) -> u64 {
        self.ctx.lease.fenced()
    }
}

/// The heartbeat's copy of a worker's counters.
fn counters(w: &WorkerMetrics) -> WorkerCounters {
    let drops = [
        ("oldest", w.dropped_oldest),
        ("newest", w.dropped_newest),
        ("failed", w.dropped_failed),
        ("retired", w.dropped_retired),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    let mut histogram = w.call_micros_log2.clone();
    while histogram.last() == Some(&0) {
        histogram.pop();
    }
    WorkerCounters {
        batches_in: w.batches_in,
        batches_out: w.batches_out,
        bytes_in: w.bytes_in,
        bytes_out: w.bytes_out,
        drops,
        dropped_events: w.dropped_events,
        traps: w.traps,
        instances: w.instances,
        queue_depth: w.queue_depth as u64,
        guest_nanos: w.call_nanos,
        call_micros_log2: histogram,
        user: w.user.iter().cloned().collect(),
    }
}
