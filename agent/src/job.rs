//! One job's part on this agent, run by a thread of its own.
//!
//! Everything that can take long for a job — fetching and compiling its artifacts, starting
//! its workers (each `init` is tenant code), re-planning its stages, stopping it — happens on
//! the job's own thread, so one job stuck in any of these never delays another job or the
//! agent's heartbeats. The dispatcher ([`crate::jobs::Jobs`]) only hands the thread the latest
//! assignment (or tells it to stop) and reads the job's [`View`], which the thread publishes
//! after every change and which holds no lock a guest call can hold.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::Duration;

use squilla_host::pipeline::{
    Outlet, Pipeline, PipelineConfig, PipelineError, PipelineHandle, SlotPlan, SyntheticSource, Wanted,
};
use squilla_host::{Artifact, Lease};
use squilla_types::control::{JobAssignment, SlotAssignment};
use squilla_types::ids::{AgentId, JobKey, WorkerNumber};
use squilla_types::{ArtifactRef, SourceSpec};

use crate::chain::Targets;
use crate::master::{ArtifactFailure, MasterClient};
use crate::reconcile::{self, JobAction};
use crate::sink::{SinkHub, SinkLimits};

/// How long stopping a job lets in-flight batches drain before its workers stop.
pub const STOP_DRAIN: Duration = Duration::from_millis(200);

/// What the agent shares with every job thread.
pub(crate) struct Context {
    pub agent: AgentId,
    pub runtime: squilla_host::Runtime,
    pub executor: Arc<squilla_host::Executor>,
    pub transport: Arc<squilla_host::transport::Transport>,
    pub master: MasterClient,
    pub lease: Arc<Lease>,
    pub sink_limits: SinkLimits,
}

/// A worker slot that could not start here: its number, why, and whether the failure will
/// recur wherever it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartFailure {
    pub number: WorkerNumber,
    pub message: String,
    pub fatal: bool,
}

/// What the rest of the agent may read about a job, published by its thread.
#[derive(Default, Clone)]
pub(crate) struct View {
    /// The assignment the pipeline matches (`None` until it has started).
    pub applied: Option<JobAssignment>,
    /// The running pipeline.
    pub handle: Option<PipelineHandle>,
    /// Its sink.
    pub hub: Option<Arc<SinkHub>>,
    /// The source's stop flag, so that the dispatcher can stop the source at once.
    pub source_stop: Option<Arc<AtomicBool>>,
    /// Local slots that could not start, by `(stage, index)`.
    pub failed: BTreeMap<(u32, u32), StartFailure>,
}

/// What the dispatcher wants of a job.
#[derive(Clone)]
enum Desired {
    Run(Box<JobAssignment>),
    Stop,
}

/// One job: what is wanted of it, and what it is.
pub(crate) struct JobCell {
    key: JobKey,
    ctx: Arc<Context>,
    done: AtomicBool,
    desired: Mutex<(u64, Desired)>,
    changed: Condvar,
    view: RwLock<View>,
    /// What the plan wants emitted, set at once by the dispatcher (see [`Wanted`]).
    wanted: Arc<Wanted>,
    /// Where the upstream job's output is, for a source that reads one (set at once too).
    upstream: Arc<Targets>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl JobCell {
    /// Starts the thread of a job first assigned `assignment`.
    pub fn start(ctx: Arc<Context>, assignment: JobAssignment) -> Result<Arc<JobCell>, std::io::Error> {
        let cell = Arc::new(JobCell {
            key: assignment.job.clone(),
            ctx: ctx.clone(),
            done: AtomicBool::new(false),
            desired: Mutex::new((0, Desired::Stop)),
            changed: Condvar::new(),
            view: RwLock::new(View::default()),
            wanted: Arc::new(Wanted::everything()),
            upstream: Arc::new(Targets::default()),
        });
        cell.assign(assignment);
        let c = cell.clone();
        std::thread::Builder::new().name(format!("squilla-job-{}", cell.key)).spawn(move || c.run(&ctx))?;
        Ok(cell)
    }

    /// The job's key.
    pub fn key(&self) -> &JobKey {
        &self.key
    }

    /// Whether the plan has this agent run the job's source (where ingest goes).
    pub fn takes_ingest(&self) -> bool {
        self.wanted.source()
    }

    /// Whether the thread has stopped the job and ended.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The latest published view.
    pub fn view(&self) -> View {
        self.view.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn publish(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.view.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// Hands the thread a new assignment (it applies only the latest one). Before that, and
    /// at once, what the assignment no longer wants here stops emitting (a replaced worker
    /// incarnation, a source that moved) and the transport learns which agents may now feed
    /// each stage: the job thread may be busy for a while, and the agent's lease is renewed
    /// as soon as this returns.
    pub fn assign(&self, assignment: JobAssignment) {
        let agent = &self.ctx.agent;
        let mut local = std::collections::HashMap::new();
        for (s, slots) in assignment.slots.iter().enumerate() {
            for (i, slot) in slots.iter().enumerate() {
                if slot.agent.as_ref() == Some(agent) {
                    local.insert((s, i), slot.number.0);
                }
            }
        }
        let counts = assignment.slots.iter().map(Vec::len).collect();
        self.wanted.set(local, counts, assignment.source);
        self.upstream.set(assignment.upstream.clone());
        let mut desired = lock(&self.desired);
        let previous = match &desired.1 {
            Desired::Run(previous) => Some(&**previous),
            Desired::Stop => None,
        };
        allow_senders(&self.ctx, &assignment, previous);
        if matches!(&desired.1, Desired::Run(a) if **a == assignment) {
            return;
        }
        desired.0 += 1;
        desired.1 = Desired::Run(Box::new(assignment));
        self.changed.notify_all();
    }

    /// Tells the thread to stop the job. Nothing more leaves the job from now on (its
    /// pipeline, or the one its thread may be starting, is fenced) and its source stops soon.
    pub fn stop(&self) {
        self.wanted.stop();
        if let Some(flag) = &self.view().source_stop {
            flag.store(true, Ordering::SeqCst);
        }
        let mut desired = lock(&self.desired);
        desired.0 += 1;
        desired.1 = Desired::Stop;
        self.changed.notify_all();
    }

    fn run(&self, ctx: &Context) {
        let mut job = Running { wanted: self.wanted.clone(), upstream: self.upstream.clone(), ..Running::default() };
        let mut seen = 0;
        loop {
            let desired = {
                let mut desired = lock(&self.desired);
                while desired.0 == seen {
                    desired = self.changed.wait(desired).unwrap_or_else(PoisonError::into_inner);
                }
                seen = desired.0;
                desired.1.clone()
            };
            match desired {
                Desired::Stop => {
                    job.stop(ctx, &self.key);
                    self.publish(|v| *v = View::default());
                    self.done.store(true, Ordering::SeqCst);
                    return;
                }
                Desired::Run(assignment) => job.apply(ctx, self, *assignment),
            }
        }
    }
}

/// The job as its thread holds it.
#[derive(Default)]
struct Running {
    wanted: Arc<Wanted>,
    upstream: Arc<Targets>,
    pipeline: Option<Pipeline>,
    hub: Option<Arc<SinkHub>>,
    applied: Option<JobAssignment>,
    failed: BTreeMap<(u32, u32), StartFailure>,
}

impl Running {
    fn stop(&mut self, ctx: &Context, key: &JobKey) {
        if let Some(mut pipeline) = self.pipeline.take() {
            tracing::info!(job = %key, "job no longer here; stopping its workers");
            ctx.transport.unregister(&key.to_string(), &pipeline.handle());
            pipeline.stop(STOP_DRAIN);
        }
        if let Some(hub) = self.hub.take() {
            hub.close();
        }
    }

    /// Forgets start failures of slots the master has since given a new number.
    fn forget_failures(&mut self, assignment: &JobAssignment) {
        self.failed.retain(|(s, i), f| {
            assignment
                .slots
                .get(*s as usize)
                .and_then(|st| st.get(*i as usize))
                .is_some_and(|slot| slot.number == f.number)
        });
    }

    fn fail_stage(&mut self, ctx: &Context, assignment: &JobAssignment, stage: usize, message: &str, fatal: bool) {
        for (index, slot) in assignment.slots.get(stage).into_iter().flatten().enumerate() {
            if slot.agent.as_ref() == Some(&ctx.agent) {
                let failure = StartFailure { number: slot.number, message: message.to_owned(), fatal };
                self.failed.insert((stage as u32, index as u32), failure);
            }
        }
    }

    fn plan_of(
        &self,
        ctx: &Context,
        job: &JobKey,
        stage: usize,
        slots: &[SlotAssignment],
    ) -> Result<Vec<SlotPlan>, PipelineError> {
        slots
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let here = slot.agent.as_ref() == Some(&ctx.agent);
                let failed_here =
                    self.failed.get(&(stage as u32, index as u32)).is_some_and(|f| f.number == slot.number);
                Ok(match (here && !failed_here, slot.data.as_deref().and_then(|d| d.parse::<SocketAddr>().ok())) {
                    (true, _) => SlotPlan::Local { number: slot.number.0 },
                    (false, Some(addr)) if !here => {
                        if let Some(agent) = &slot.agent {
                            ctx.transport.expect_agent(addr, agent.as_str());
                        }
                        SlotPlan::Remote(
                            ctx.transport
                                .outlet(addr, &job.to_string(), stage as u32, index as u32)
                                .map_err(PipelineError::Thread)?,
                        )
                    }
                    _ => SlotPlan::Remote(Outlet::detached(64)),
                })
            })
            .collect()
    }

    /// Carries out what [`reconcile::job`] says takes the job to `assignment`, then publishes
    /// the result.
    fn apply(&mut self, ctx: &Context, cell: &JobCell, assignment: JobAssignment) {
        self.forget_failures(&assignment);
        let applied = self.applied.as_ref().filter(|_| self.pipeline.is_some());
        let source_attached = self.pipeline.as_ref().is_some_and(Pipeline::has_source);
        for action in reconcile::job(applied, source_attached, &assignment) {
            let result = match action {
                JobAction::Start => self.start(ctx, &assignment),
                JobAction::SetSlots { stage } => self.set_slots(ctx, &assignment, stage),
                JobAction::AttachSource => match &mut self.pipeline {
                    Some(pipeline) => {
                        attach_source(pipeline, &assignment, ctx, &self.upstream).map_err(ApplyError::from)
                    }
                    None => Ok(()),
                },
                JobAction::DetachSource => {
                    if let Some(pipeline) = &mut self.pipeline {
                        pipeline.stop_source();
                    }
                    Ok(())
                }
            };
            if let Err(error) = result {
                tracing::warn!(job = %assignment.job, %error, "cannot run the job's workers here");
                if self.pipeline.is_none() {
                    // Whatever failed, the master must hear of it and place the workers anew.
                    for s in 0..assignment.slots.len() {
                        if !self.failed.keys().any(|(stage, _)| *stage as usize == s) {
                            self.fail_stage(ctx, &assignment, s, &error.to_string(), false);
                        }
                    }
                }
            }
        }
        let handle = self.pipeline.as_ref().map(Pipeline::handle);
        let source_stop = self.pipeline.as_ref().and_then(Pipeline::source_flag);
        let (hub, failed) = (self.hub.clone(), self.failed.clone());
        let applied = self.pipeline.as_ref().map(|_| assignment.clone());
        self.applied = applied.clone();
        cell.publish(|v| {
            v.applied = applied;
            v.handle = handle;
            v.hub = hub;
            v.source_stop = source_stop;
            v.failed = failed;
        });
    }

    /// A job new here: its artifacts (fetched, verified, compiled once), then its pipeline.
    fn start(&mut self, ctx: &Context, assignment: &JobAssignment) -> Result<(), ApplyError> {
        let id = &assignment.job;
        let mut by_ref: HashMap<ArtifactRef, Artifact> = HashMap::new();
        for (s, (stage, sha)) in assignment.spec.stages.iter().zip(&assignment.artifacts).enumerate() {
            match ctx.master.artifact(&assignment.tenant, sha) {
                Ok(artifact) => {
                    by_ref.insert(stage.artifact.clone(), artifact);
                }
                Err(ArtifactFailure { message, fatal }) => {
                    self.fail_stage(ctx, assignment, s, &message, fatal);
                    return Err(ApplyError::Artifact(message));
                }
            }
        }
        let mut config = PipelineConfig::from_spec(&assignment.spec, &assignment.params, |r| by_ref.get(r).cloned())?;
        config.name = id.to_string();
        config.lease = ctx.lease.clone();
        config.wanted = self.wanted.clone();
        config.rescaled_from = assignment.rescaled_from.iter().map(|n| *n as usize).collect();
        let plan = |me: &Self| -> Result<Vec<Vec<SlotPlan>>, PipelineError> {
            assignment.slots.iter().enumerate().map(|(s, slots)| me.plan_of(ctx, id, s, slots)).collect()
        };
        let started = plan(self).and_then(|p| Pipeline::start_placed(&ctx.runtime, &ctx.executor, config.clone(), p));
        let mut pipeline = match started {
            Ok(p) => p,
            Err(err) => {
                let stage = match &err {
                    PipelineError::Start { stage, .. } => {
                        assignment.spec.stages.iter().position(|s| &s.name == stage).unwrap_or(0)
                    }
                    _ => 0,
                };
                self.fail_stage(ctx, assignment, stage, &err.to_string(), false);
                plan(self).and_then(|p| Pipeline::start_placed(&ctx.runtime, &ctx.executor, config, p))?
            }
        };
        if self.wanted.is_stopped() {
            // Stopped while it started: it never joins the transport nor gets a source.
            self.pipeline = Some(pipeline);
            return Ok(());
        }
        if assignment.source {
            attach_source(&mut pipeline, assignment, ctx, &self.upstream)?;
        }
        ctx.transport.register(&id.to_string(), pipeline.handle());
        let hub = match SinkHub::start(
            &id.to_string(),
            assignment.tenant.as_str(),
            pipeline.handle(),
            ctx.sink_limits.clone(),
        ) {
            Ok(hub) => hub,
            Err(err) => {
                // Nothing of the job stays half-started: the transport forgets it, and
                // dropping `pipeline` stops the source started above and its workers.
                ctx.transport.unregister(&id.to_string(), &pipeline.handle());
                return Err(ApplyError::Sink(err));
            }
        };
        let tap_hub = hub.clone();
        ctx.transport.register_tap(&id.to_string(), Arc::new(move |query| tap_hub.tap(query)));
        tracing::info!(job = %id, tenant = %assignment.tenant, "job started here");
        self.pipeline = Some(pipeline);
        self.hub = Some(hub);
        Ok(())
    }

    /// Re-plans stage `stage` of a job already here (unchanged workers keep their state); a
    /// worker whose `init` fails is marked failed and its slot left empty here.
    fn set_slots(&mut self, ctx: &Context, assignment: &JobAssignment, stage: usize) -> Result<(), ApplyError> {
        let Some(slots) = assignment.slots.get(stage) else { return Ok(()) };
        let plan = self.plan_of(ctx, &assignment.job, stage, slots)?;
        let Some(pipeline) = &self.pipeline else { return Ok(()) };
        if let Err(err) = pipeline.set_slots(stage, plan) {
            self.fail_stage(ctx, assignment, stage, &err.to_string(), false);
            let plan = self.plan_of(ctx, &assignment.job, stage, slots)?;
            if let Some(pipeline) = &self.pipeline {
                pipeline.set_slots(stage, plan)?;
            }
        }
        Ok(())
    }
}

/// Why a job's plan could not be carried out here.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    /// An artifact could not be fetched or compiled.
    #[error("{0}")]
    Artifact(String),
    /// The pipeline refused the plan.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The sink's thread could not start.
    #[error("cannot start the sink: {0}")]
    Sink(std::io::Error),
}

/// Tells the transport which agents may feed each stage of the job here: the agents of the
/// stage before's workers (for the first stage, the agent that runs the source), and those of
/// the stage's own workers, which pass on input and key-group state to each other when the
/// stage is rescaled — under this assignment and the one before it, so that workers leaving
/// in a rescale can still hand their state over.
fn allow_senders(ctx: &Context, assignment: &JobAssignment, previous: Option<&JobAssignment>) {
    let agents_of = |a: &JobAssignment, stage: usize| -> Vec<String> {
        a.slots.get(stage).into_iter().flatten().filter_map(|w| w.agent.as_ref()).map(|a| a.to_string()).collect()
    };
    let per_stage = (0..assignment.slots.len())
        .map(|s| {
            let mut agents = Vec::new();
            for a in std::iter::once(assignment).chain(previous) {
                match s.checked_sub(1) {
                    None => agents.extend(agents_of(a, 0).into_iter().take(1)),
                    Some(before) => agents.extend(agents_of(a, before)),
                }
                agents.extend(agents_of(a, s));
            }
            agents.sort();
            agents.dedup();
            agents
        })
        .collect();
    ctx.transport.allow_senders(&assignment.job.to_string(), per_stage);
}

fn attach_source(
    pipeline: &mut Pipeline,
    assignment: &JobAssignment,
    ctx: &Context,
    targets: &Arc<Targets>,
) -> Result<(), PipelineError> {
    match &assignment.spec.source {
        SourceSpec::Synthetic { events_per_second, .. } => {
            pipeline.start_synthetic(SyntheticSource::at_rate(*events_per_second))
        }
        // Ingested batches (and an application stream's, sent by gateways) arrive through
        // `Jobs::ingest`.
        SourceSpec::Ingest | SourceSpec::App { .. } => Ok(()),
        SourceSpec::Job { query, .. } => {
            let upstream = Arc::new(crate::chain::Upstream {
                transport: ctx.transport.clone(),
                targets: targets.clone(),
                query: query.clone(),
                job: assignment.job.to_string(),
            });
            let handle = pipeline.handle();
            pipeline.start_source(&assignment.job.to_string(), move |stop| upstream.run(&handle, &stop))
        }
    }
}
