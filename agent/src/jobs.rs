//! This agent's share of each job, reconciled to the master's plan.
//!
//! Every heartbeat's answer lists every job with a worker here and where all of its slots
//! run. [`Jobs::apply`] makes the agent match it: a new job gets a pipeline (artifacts
//! fetched and verified, compiled once per sha256); a job whose slots changed is re-planned
//! stage by stage ([`Pipeline::place`] keeps unchanged workers and their state); a job no
//! longer listed is stopped. [`Jobs::reports`] says how every local worker is doing, for the
//! next heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squilla_host::pipeline::{Outlet, Pipeline, PipelineConfig, PipelineHandle, SlotPlan, SyntheticSource};
use squilla_host::transport::Transport;
use squilla_host::{Artifact, Executor, Runtime};
use squilla_types::control::{JobAssignment, ReportedState, SlotAssignment, WorkerReport};
use squilla_types::{ArtifactRef, SourceSpec};

use crate::fetch::Fetcher;
use crate::sink::SinkHub;

/// One job's part here.
struct Running {
    assignment: JobAssignment,
    pipeline: Pipeline,
    hub: Arc<SinkHub>,
}

/// Workers that could not start, by `(job, stage, index)`: their number and why. Reported
/// until the master gives the slot a new number.
type Failed = HashMap<(String, u32, u32), (u64, String)>;

/// Every job this agent runs.
pub struct Jobs {
    agent: String,
    runtime: Runtime,
    executor: Arc<Executor>,
    transport: Arc<Transport>,
    fetcher: Fetcher,
    running: Mutex<BTreeMap<String, Running>>,
    failed: Mutex<Failed>,
}

impl Jobs {
    pub(crate) fn new(
        agent: String,
        runtime: Runtime,
        executor: Arc<Executor>,
        transport: Arc<Transport>,
        fetcher: Fetcher,
    ) -> Self {
        Jobs {
            agent,
            runtime,
            executor,
            transport,
            fetcher,
            running: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The sink of a job running here.
    pub fn hub(&self, job: &str) -> Option<Arc<SinkHub>> {
        self.running.lock().expect("jobs lock").get(job).map(|r| r.hub.clone())
    }

    /// The state of every local worker.
    pub fn reports(&self) -> Vec<WorkerReport> {
        let mut out = Vec::new();
        for (id, r) in self.running.lock().expect("jobs lock").iter() {
            let metrics = r.pipeline.metrics();
            for (s, workers) in metrics.stages.iter().enumerate() {
                for w in workers {
                    let Some(slot) = r.assignment.slots.get(s).and_then(|st| st.get(w.index)) else { continue };
                    out.push(WorkerReport {
                        job: id.clone(),
                        stage: s as u32,
                        index: w.index as u32,
                        number: slot.number,
                        state: if w.failed.is_some() { ReportedState::Failed } else { ReportedState::Running },
                        message: w.failed.clone(),
                        events_in: w.events_in,
                        events_out: w.events_out,
                        dropped: w.dropped(),
                        memory_bytes: w.memory_bytes,
                    });
                }
            }
        }
        for ((job, stage, index), (number, message)) in self.failed.lock().expect("failed lock").iter() {
            out.push(WorkerReport {
                job: job.clone(),
                stage: *stage,
                index: *index,
                number: *number,
                state: ReportedState::Failed,
                message: Some(message.clone()),
                events_in: 0,
                events_out: 0,
                dropped: 0,
                memory_bytes: 0,
            });
        }
        out
    }

    /// Makes this agent run exactly `plan`.
    pub fn apply(&self, plan: Vec<JobAssignment>) {
        let wanted: Vec<String> = plan.iter().map(|a| a.job.clone()).collect();
        let gone: Vec<(String, Running)> = {
            let mut running = self.running.lock().expect("jobs lock");
            let ids: Vec<String> = running.keys().filter(|id| !wanted.contains(id)).cloned().collect();
            ids.into_iter().filter_map(|id| running.remove(&id).map(|r| (id, r))).collect()
        };
        for (id, mut r) in gone {
            tracing::info!(job = %id, "job no longer here; stopping its workers");
            self.transport.unregister(&id);
            r.pipeline.stop(Duration::from_millis(200));
            r.hub.close();
        }
        self.failed.lock().expect("failed lock").retain(|(job, s, i), (number, _)| {
            plan.iter().any(|a| {
                &a.job == job
                    && a.slots
                        .get(*s as usize)
                        .and_then(|st| st.get(*i as usize))
                        .is_some_and(|slot| slot.number == *number)
            })
        });
        for assignment in plan {
            if let Err(message) = self.apply_job(assignment.clone()) {
                tracing::warn!(job = %assignment.job, %message, "cannot run the job's workers here");
            }
        }
    }

    fn plan_of(&self, job: &str, stage: usize, slots: &[SlotAssignment]) -> Vec<SlotPlan> {
        let failed = self.failed.lock().expect("failed lock");
        slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let here = slot.agent.as_deref() == Some(self.agent.as_str());
                let failed_here = failed
                    .get(&(job.to_owned(), stage as u32, index as u32))
                    .is_some_and(|(number, _)| *number == slot.number);
                match (here && !failed_here, slot.data.as_deref().and_then(|d| d.parse::<SocketAddr>().ok())) {
                    (true, _) => SlotPlan::Local { number: slot.number },
                    (false, Some(addr)) if !here => {
                        SlotPlan::Remote(self.transport.outlet(addr, job, stage as u32, index as u32))
                    }
                    _ => SlotPlan::Remote(Outlet::detached(64)),
                }
            })
            .collect()
    }

    /// Marks the local workers of `stage` of `assignment` as failed to start.
    fn fail_stage(&self, assignment: &JobAssignment, stage: usize, message: &str) {
        let mut failed = self.failed.lock().expect("failed lock");
        for (index, slot) in assignment.slots.get(stage).into_iter().flatten().enumerate() {
            if slot.agent.as_deref() == Some(self.agent.as_str()) {
                failed.insert((assignment.job.clone(), stage as u32, index as u32), (slot.number, message.to_owned()));
            }
        }
    }

    fn apply_job(&self, assignment: JobAssignment) -> Result<(), String> {
        let id = assignment.job.clone();
        let mut running = self.running.lock().expect("jobs lock");
        if let Some(r) = running.get_mut(&id) {
            if r.assignment == assignment {
                return Ok(());
            }
            for (stage, slots) in assignment.slots.iter().enumerate() {
                if r.assignment.slots.get(stage) == Some(slots) {
                    continue;
                }
                let plan = self.plan_of(&id, stage, slots);
                if let Err(err) = r.pipeline.place(stage, plan) {
                    self.fail_stage(&assignment, stage, &err.to_string());
                    let plan = self.plan_of(&id, stage, slots);
                    r.pipeline.place(stage, plan).map_err(|e| e.to_string())?;
                }
            }
            if assignment.source != r.pipeline.has_source() {
                if assignment.source {
                    attach_source(&mut r.pipeline, &assignment, &self.fetcher);
                } else {
                    r.pipeline.stop_source();
                }
            }
            r.assignment = assignment;
            return Ok(());
        }
        drop(running);

        // A job new here: its artifacts first (fetched, verified, compiled once).
        let mut by_ref: HashMap<ArtifactRef, Artifact> = HashMap::new();
        for (stage, sha) in assignment.spec.stages.iter().zip(&assignment.artifacts) {
            match self.fetcher.artifact(sha) {
                Ok(artifact) => {
                    by_ref.insert(stage.artifact.clone(), artifact);
                }
                Err(err) => {
                    let s = assignment.spec.stages.iter().position(|x| x.name == stage.name).unwrap_or(0);
                    self.fail_stage(&assignment, s, &err);
                    return Err(err);
                }
            }
        }
        let config = PipelineConfig::from_spec(&assignment.spec, &assignment.params, |r| by_ref.get(r).cloned())
            .map_err(|e| e.to_string())?;
        let start = |jobs: &Self| {
            let plan = assignment.slots.iter().enumerate().map(|(s, slots)| jobs.plan_of(&id, s, slots)).collect();
            Pipeline::start_placed(&jobs.runtime, &jobs.executor, config.clone(), plan)
        };
        let mut pipeline = match start(self) {
            Ok(p) => p,
            Err(err) => {
                let stage = match &err {
                    squilla_host::pipeline::PipelineError::Start { stage, .. } => {
                        assignment.spec.stages.iter().position(|s| &s.name == stage).unwrap_or(0)
                    }
                    _ => 0,
                };
                self.fail_stage(&assignment, stage, &err.to_string());
                start(self).map_err(|e| e.to_string())?
            }
        };
        if assignment.source {
            attach_source(&mut pipeline, &assignment, &self.fetcher);
        }
        self.transport.register(&id, pipeline.handle());
        let hub = SinkHub::start(&id, pipeline.handle());
        tracing::info!(job = %id, tenant = %assignment.tenant, "job started here");
        self.running.lock().expect("jobs lock").insert(id, Running { assignment, pipeline, hub });
        Ok(())
    }

    /// Stops everything (agent shutdown).
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut *self.running.lock().expect("jobs lock"));
        for (id, mut r) in all {
            self.transport.unregister(&id);
            r.pipeline.stop(Duration::from_millis(200));
            r.hub.close();
        }
    }

    /// Feeds an ingested batch to a job's first stage, waiting up to `wait` for room; false
    /// when the job is not here or had no room in time.
    pub fn ingest(&self, job: &str, batch: squilla_batch::BatchBytes, wait: Duration) -> bool {
        let handle = self.running.lock().expect("jobs lock").get(job).map(|r| r.pipeline.handle());
        handle.is_some_and(|h| h.push(batch, wait))
    }

    /// Handles of the running pipelines (for tests and metrics).
    pub fn handles(&self) -> Vec<(String, PipelineHandle)> {
        self.running.lock().expect("jobs lock").iter().map(|(id, r)| (id.clone(), r.pipeline.handle())).collect()
    }
}

fn attach_source(pipeline: &mut Pipeline, assignment: &JobAssignment, fetcher: &Fetcher) {
    match &assignment.spec.source {
        SourceSpec::Synthetic { events_per_second, .. } => {
            pipeline.start_synthetic(SyntheticSource::at_rate(*events_per_second));
        }
        // Ingested batches arrive through `Jobs::ingest`.
        SourceSpec::Ingest => {}
        SourceSpec::Job { cluster, query } => {
            let upstream = crate::chain::Upstream {
                fetcher: fetcher.clone(),
                tenant: assignment.tenant.clone(),
                cluster: cluster.clone(),
                query: query.clone(),
                client_id: assignment.job.clone(),
            };
            let handle = pipeline.handle();
            pipeline.start_source(&assignment.job, move |stop| upstream.run(&handle, &stop));
        }
    }
}
