//! The master's control loop: jobs, their workers, the agents, and placement between them.
//!
//! [`Control`] holds the live state (jobs and agents) behind one lock, held only for work in
//! memory — never across a store commit, so that reads (and the async tasks that make them)
//! never wait for a disk. Writes are serialized by a second lock: a write changes the state,
//! lets go of it, stores what changed durably (an fsync), and only then answers; if the store
//! fails, the change is put back. Changes that agents' heartbeats make (a worker now runs) are
//! kept in memory at once and stored by the next round of the loop. The HTTP API calls it for tenant
//! operations ([`Control::submit`], [`Control::kill`], [`Control::scale`],
//! [`Control::resubmit`]) and for agents' heartbeats ([`Control::heartbeat`]); a timer calls
//! [`Control::tick`], which declares silent agents lost, re-places their workers with
//! backoff, places waiting workers, and keeps each cluster's SLA.
//!
//! On restart the jobs come back from the store with the agents their workers were on. No
//! agent is declared lost during the first [`ControlConfig::agent_timeout`]: agents that
//! still run the workers heartbeat in that time and are handed the same plan, so running
//! workers are adopted, never duplicated.
//!
//! The parts, each depending only on those before it: `config` ([`ControlConfig`], [`Quota`])
//! and [`model`] (jobs, workers and their states); `state` (what the lock guards: agents and
//! jobs); `schedule` (placing waiting workers through [`crate::placement::plan`], replacing
//! failed or lost ones) and `agents` (heartbeats and the plan each agent is handed); this
//! module on top. None of them refers to the store or the API.

mod agents;
pub(crate) mod autoscaler;
mod config;
pub mod model;
mod schedule;
mod state;
pub mod telemetry;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use squilla_types::control::Heartbeat;
use squilla_types::ids::{AgentId, ClusterName, JobId, JobKey, TenantId};

pub use config::{ControlConfig, Quota};
pub use model::{Job, JobState, Stage, Transition, Worker, WorkerState};

use self::state::State;
use crate::store::{ClusterVersion, JobRecord, Store, StoreError};

/// Why a control operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such job (or another tenant's).
    #[error("no job `{0}`")]
    NoSuchJob(String),
    /// The job parameters do not fit the cluster's parameter declarations.
    #[error(transparent)]
    Params(#[from] squilla_types::ParamError),
    /// A scale request outside 1..=`max` workers.
    #[error("workers: between 1 and {max}")]
    InvalidScale {
        /// The most workers a stage may have.
        max: u32,
    },
    /// A scale request outside the stage's scaling policy, or a policy whose bounds leave
    /// out the stage's workers.
    #[error("workers: {workers} is outside the stage's scaling policy ({min} to {max})")]
    OutsidePolicy {
        /// The workers asked for, or the stage has.
        workers: u32,
        /// The policy's `min`.
        min: u32,
        /// The policy's `max`.
        max: u32,
    },
    /// A scaling policy that breaks a rule (the path of the problem in the message).
    #[error(transparent)]
    InvalidPolicy(squilla_types::SpecError),
    /// The job has no such stage (by name or 0-based index).
    #[error("job `{job}` has no stage `{stage}`")]
    NoSuchStage {
        /// The job.
        job: String,
        /// The stage asked for.
        stage: String,
    },
    /// The stage has no worker with that index.
    #[error("stage `{stage}` has no worker {index}")]
    NoSuchWorker {
        /// The stage.
        stage: String,
        /// The index asked for.
        index: u32,
    },
    /// The tenant's quota of running workers would be passed.
    #[error("tenant `{tenant}` runs {used} worker(s); {more} more would pass its quota of {quota}")]
    WorkerQuota {
        /// The tenant.
        tenant: TenantId,
        /// Workers it runs.
        used: u64,
        /// Workers asked for.
        more: u64,
        /// Its quota.
        quota: u64,
    },
    /// The tenant's quota of reserved memory would be passed.
    #[error("tenant `{tenant}` uses {used} MiB; {more} MiB more would pass its quota of {quota} MiB")]
    MemoryQuota {
        /// The tenant.
        tenant: TenantId,
        /// MiB reserved.
        used: u64,
        /// MiB asked for.
        more: u64,
        /// Its quota in MiB.
        quota: u64,
    },
    /// The cluster's SLA maximum of active jobs is reached.
    #[error("cluster `{cluster}` allows {max} active job(s) (sla.max-jobs) and has {active}")]
    SlaMaxJobs {
        /// The cluster.
        cluster: ClusterName,
        /// The SLA maximum.
        max: u32,
        /// Active jobs now.
        active: u32,
    },
    /// The job has ended.
    #[error("job `{0}` has ended")]
    Ended(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored job, or `None` (logged) if its record does not decode.
fn decode_stored(record: &JobRecord) -> Option<Job> {
    serde_json::from_slice(&record.json)
        .map_err(|e| tracing::error!(key = %record.key, error = %e, "a stored job does not decode; skipped"))
        .ok()
}

/// The master's live state and the operations on it.
pub struct Control {
    store: Arc<Store>,
    config: ControlConfig,
    state: Mutex<State>,
    /// Serializes writes: held across a store commit (never the state lock).
    writer: Mutex<()>,
    started: Instant,
    changed: tokio::sync::watch::Sender<u64>,
}

/// What a write changed: the jobs to store, and how to put back the one it was for.
struct Changed {
    dirty: Vec<JobKey>,
    undo: Option<(JobKey, Option<Job>)>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// The control loop over `store`, with the jobs it holds.
    pub fn load(store: Arc<Store>, config: ControlConfig) -> Result<Self, StoreError> {
        let mut jobs = BTreeMap::new();
        for record in store.all_jobs()? {
            let job: Job = serde_json::from_slice(&record.json).map_err(|e| StoreError::corrupt(&record.key, e))?;
            jobs.insert(record.key, job);
        }
        Ok(Control {
            store,
            config,
            state: Mutex::new(State { jobs, ..State::default() }),
            writer: Mutex::new(()),
            started: Instant::now(),
            changed: tokio::sync::watch::channel(0).0,
        })
    }

    /// A standby's copy: replaces every job with `records`, as the store holds them (a
    /// standby master answers reads from the jobs the leader wrote; it runs nothing).
    /// Records that do not decode are skipped, and logged.
    pub fn replace_stored_jobs(&self, records: Vec<JobRecord>) {
        let jobs = records.into_iter().filter_map(|r| decode_stored(&r).map(|job| (r.key, job))).collect();
        let mut state = self.lock();
        state.jobs = jobs;
        self.notify(&mut state);
    }

    /// A standby's copy: one job as the leader just wrote it (`None`: removed).
    pub fn put_stored_job(&self, key: JobKey, json: Option<&[u8]>) {
        let job = json.and_then(|json| decode_stored(&JobRecord { key: key.clone(), json: json.to_vec() }));
        let mut state = self.lock();
        match job {
            Some(job) => state.jobs.insert(key, job),
            None => state.jobs.remove(&key),
        };
        self.notify(&mut state);
    }

    /// The settings in force.
    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells status streams that jobs changed.
    fn notify(&self, state: &mut State) {
        state.version += 1;
        self.changed.send_replace(state.version);
    }

    /// A write: `f` changes the state (under its lock) and says what changed; then, without
    /// the state lock, what changed is stored durably; if that fails the change is put back.
    /// The caller holds the writer lock.
    fn write<T>(&self, f: impl FnOnce(&mut State) -> Result<(T, Changed), ControlError>) -> Result<T, ControlError> {
        let (out, records, mut changed) = {
            let mut state = self.lock();
            let (out, mut changed) = f(&mut state)?;
            changed.dirty.sort();
            changed.dirty.dedup();
            let records = records(&state, &changed.dirty);
            (out, records, changed)
        };
        if let Err(err) = self.store.put_job_records(&records) {
            let mut state = self.lock();
            if let Some((key, before)) = changed.undo {
                match before {
                    Some(job) => state.jobs.insert(key.clone(), job),
                    None => state.jobs.remove(&key),
                };
                changed.dirty.retain(|k| *k != key);
            }
            // Other jobs the write placed keep their places; the loop stores them later.
            state.unsaved.extend(changed.dirty);
            return Err(err.into());
        }
        self.notify(&mut self.lock());
        Ok(out)
    }

    /// A receiver that sees a new value after every change of any job.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Submits a job of `cluster` with parameter overrides `params`.
    pub fn submit(
        &self,
        tenant: &TenantId,
        cluster: &ClusterVersion,
        params: BTreeMap<String, String>,
    ) -> Result<Job, ControlError> {
        let spec = &cluster.spec;
        spec.check_params(&params)?;
        let (workers, memory) = spec.stages.iter().fold((0u64, 0u64), |(w, m), s| {
            (w + u64::from(s.workers), m + u64::from(s.workers) * u64::from(s.resources.memory_mib))
        });
        let _writer = self.writer();
        // The SLA and the quota hold until this write ends: only writers change what they count.
        self.check_submission(&self.lock(), tenant, cluster, workers, memory)?;
        let n = self.store.next_job_number(tenant, &cluster.name)?;
        self.write(|state| {
            let mut job = Job {
                id: JobId::new(&cluster.name, n),
                tenant: tenant.clone(),
                cluster: cluster.name.clone(),
                version: cluster.version,
                spec: spec.clone(),
                artifacts: cluster.artifacts.clone(),
                params,
                state: JobState::Accepted,
                reason: None,
                history: Vec::new(),
                stages: Vec::new(),
                generation: 1,
                next_number: 1,
                submitted_at_ms: model::now_ms(),
                autoscale_paused: false,
            };
            model::push_history(&mut job.history, JobState::Accepted, None);
            for stage in &spec.stages {
                let workers = (0..stage.workers).map(|i| job.new_worker(i, 0, 0, 0)).collect();
                job.stages.push(Stage { name: stage.name.clone(), workers });
            }
            let id = job.key();
            state.jobs.insert(id.clone(), job);
            let mut dirty = vec![id.clone()];
            dirty.extend(schedule::place_waiting(state, model::now_ms()));
            let job = state.jobs.get(&id).cloned().ok_or_else(|| ControlError::NoSuchJob(id.job.to_string()))?;
            Ok((job, Changed { dirty, undo: Some((id, None)) }))
        })
    }

    /// Refuses a submission over the cluster's SLA or the tenant's quota.
    fn check_submission(
        &self,
        state: &State,
        tenant: &TenantId,
        cluster: &ClusterVersion,
        workers: u64,
        memory: u64,
    ) -> Result<(), ControlError> {
        let spec = &cluster.spec;
        let active = state
            .jobs
            .values()
            .filter(|j| j.tenant == *tenant && j.cluster == cluster.name && !j.state.is_terminal())
            .count() as u32;
        if spec.sla.max_jobs != 0 && active >= spec.sla.max_jobs {
            return Err(ControlError::SlaMaxJobs { cluster: cluster.name.clone(), max: spec.sla.max_jobs, active });
        }
        self.check_quota(state, tenant, workers, memory)
    }

    fn check_quota(&self, state: &State, tenant: &TenantId, workers: u64, memory: u64) -> Result<(), ControlError> {
        let (used_w, used_m) = state
            .jobs
            .values()
            .filter(|j| j.tenant == *tenant && !j.state.is_terminal())
            .flat_map(|j| j.stages.iter().zip(&j.spec.stages))
            .fold((0u64, 0u64), |(w, m), (stage, spec)| {
                let n = stage.workers.len() as u64;
                (w + n, m + n * u64::from(spec.resources.memory_mib))
            });
        let q = self.config.quota;
        if used_w + workers > q.workers {
            return Err(ControlError::WorkerQuota {
                tenant: tenant.clone(),
                used: used_w,
                more: workers,
                quota: q.workers,
            });
        }
        if used_m + memory > q.memory_mib {
            return Err(ControlError::MemoryQuota {
                tenant: tenant.clone(),
                used: used_m,
                more: memory,
                quota: q.memory_mib,
            });
        }
        Ok(())
    }

    /// Every tenant's jobs that have not ended.
    pub fn live_jobs(&self) -> Vec<Job> {
        self.lock().jobs.values().filter(|j| !j.state.is_terminal()).cloned().collect()
    }

    /// How many jobs each tenant has in each state (by the state's API name).
    pub fn job_counts(&self) -> BTreeMap<(TenantId, String), u64> {
        let mut counts = BTreeMap::new();
        for job in self.lock().jobs.values() {
            let state = serde_json::to_value(job.state).ok().and_then(|v| v.as_str().map(str::to_owned));
            *counts.entry((job.tenant.clone(), state.unwrap_or_default())).or_default() += 1;
        }
        counts
    }

    /// `tenant`'s jobs, oldest first.
    pub fn jobs(&self, tenant: &TenantId) -> Vec<Job> {
        let mut jobs: Vec<Job> = self.lock().jobs.values().filter(|j| j.tenant == *tenant).cloned().collect();
        jobs.sort_by_key(|j| (j.submitted_at_ms, j.id.clone()));
        jobs
    }

    /// One of `tenant`'s jobs.
    pub fn job(&self, tenant: &TenantId, id: &JobId) -> Result<Job, ControlError> {
        let key = JobKey::new(tenant.clone(), id.clone());
        self.lock().jobs.get(&key).cloned().ok_or_else(|| ControlError::NoSuchJob(id.to_string()))
    }

    /// One of `tenant`'s jobs' metrics, per stage and worker, with rates.
    pub fn job_metrics(&self, tenant: &TenantId, id: &JobId) -> Result<telemetry::JobMetrics, ControlError> {
        let key = JobKey::new(tenant.clone(), id.clone());
        let state = self.lock();
        let job = state.jobs.get(&key).ok_or_else(|| ControlError::NoSuchJob(id.to_string()))?;
        let stages = autoscaler::infos(job);
        Ok(state.telemetry.view(&key, &stages, model::now_ms()))
    }

    fn mutate(
        &self,
        tenant: &TenantId,
        id: &JobId,
        f: impl FnOnce(&mut Job, &ControlConfig) -> Result<(), ControlError>,
    ) -> Result<Job, ControlError> {
        let _writer = self.writer();
        let key = JobKey::new(tenant.clone(), id.clone());
        self.write(|state| self.change(state, &key, f))
    }

    /// Applies `f` to job `key` if it exists and has not ended, then places; on `f`'s
    /// failure the job is as it was.
    fn change(
        &self,
        state: &mut State,
        key: &JobKey,
        f: impl FnOnce(&mut Job, &ControlConfig) -> Result<(), ControlError>,
    ) -> Result<(Job, Changed), ControlError> {
        let id = || key.job.to_string();
        let Some(job) = state.jobs.get_mut(key) else { return Err(ControlError::NoSuchJob(id())) };
        if job.state.is_terminal() {
            return Err(ControlError::Ended(id()));
        }
        let before = job.clone();
        if let Err(e) = f(job, &self.config) {
            state.jobs.insert(key.clone(), before);
            return Err(e);
        }
        let mut dirty = vec![key.clone()];
        dirty.extend(schedule::place_waiting(state, model::now_ms()));
        let job = state.jobs.get(key).cloned().ok_or_else(|| ControlError::NoSuchJob(id()))?;
        Ok((job, Changed { dirty, undo: Some((key.clone(), Some(before))) }))
    }

    /// Kills a job: its workers stop at their agents' next heartbeat.
    pub fn kill(&self, tenant: &TenantId, id: &JobId) -> Result<Job, ControlError> {
        self.mutate(tenant, id, |job, _| {
            for stage in &mut job.stages {
                for w in &mut stage.workers {
                    w.set_state(WorkerState::Stopped, Some("job killed".into()));
                }
            }
            job.generation += 1;
            job.set_state(JobState::Killed, Some(format!("killed by `{tenant}`")));
            Ok(())
        })
    }

    /// Sets stage `stage` (its name or 0-based index) of a job to `workers` workers. The
    /// quota check and the change are one write, so concurrent scales and submissions cannot
    /// pass the quota together.
    pub fn scale(&self, tenant: &TenantId, id: &JobId, stage: &str, workers: u32) -> Result<Job, ControlError> {
        let key = JobKey::new(tenant.clone(), id.clone());
        self.rescale(&key, stage, workers, |stage, from, to| {
            format!("stage `{stage}` scaled from {from} to {to} workers by its tenant")
        })
    }

    /// [`Control::scale`] for `key`, writing `note(stage, from, to)` in the job's history and
    /// starting the stage's autoscaling cooldown.
    fn rescale(
        &self,
        key: &JobKey,
        stage: &str,
        workers: u32,
        note: impl FnOnce(&str, u32, u32) -> String,
    ) -> Result<Job, ControlError> {
        if !(1..=squilla_types::limits::WORKERS).contains(&workers) {
            return Err(ControlError::InvalidScale { max: squilla_types::limits::WORKERS });
        }
        let _writer = self.writer();
        let id = &key.job;
        self.write(|state| {
            let job = state.jobs.get(key).ok_or_else(|| ControlError::NoSuchJob(id.to_string()))?;
            if job.state.is_terminal() {
                return Err(ControlError::Ended(id.to_string()));
            }
            let s = stage_index(job, stage)?;
            if let Some(policy) = &job.spec.stages[s].scaling
                && !(policy.min..=policy.max).contains(&workers)
            {
                return Err(ControlError::OutsidePolicy { workers, min: policy.min, max: policy.max });
            }
            let current = job.stages[s].workers.len() as u64;
            if u64::from(workers) > current {
                let more = u64::from(workers) - current;
                let memory = more * u64::from(job.spec.stages[s].resources.memory_mib);
                self.check_quota(state, &key.tenant, more, memory)?;
            }
            state.autoscale.scaled(key, s, model::now_ms());
            // Agents whose last workers of the job a scale-down removes keep the job's
            // assignment a while, so that those workers hand their keyed state over.
            let n = workers as usize;
            let removed: std::collections::BTreeSet<&AgentId> =
                job.stages[s].workers.iter().skip(n).filter_map(|w| w.agent.as_ref()).collect();
            let leaving: Vec<AgentId> = removed
                .into_iter()
                .filter(|agent| {
                    !job.stages.iter().enumerate().any(|(i, st)| {
                        st.workers
                            .iter()
                            .take(if i == s { n } else { usize::MAX })
                            .any(|w| w.agent.as_ref() == Some(*agent))
                    })
                })
                .cloned()
                .collect();
            let until = std::time::Instant::now() + state::LEAVING_FOR;
            state.leaving.retain(|_, t| *t > std::time::Instant::now());
            state.rescaled.retain(|_, (_, t)| *t > std::time::Instant::now());
            let before = job.stages[s].workers.len() as u32;
            if before != workers {
                state.rescaled.insert((key.clone(), s), (before, until));
            }
            for agent in leaving {
                state.leaving.insert((key.clone(), agent), until);
            }
            self.change(state, key, |job, _| {
                let list = &mut job.stages[s].workers;
                let n = workers as usize;
                let from = list.len() as u32;
                let mut added = Vec::new();
                if list.len() > n {
                    list.truncate(n);
                } else {
                    for index in list.len()..n {
                        added.push(index as u32);
                    }
                }
                for index in added {
                    let w = job.new_worker(index, 0, 0, 0);
                    job.stages[s].workers.push(w);
                }
                job.spec.stages[s].workers = workers;
                job.generation += 1;
                if from != workers {
                    let line = note(&job.stages[s].name, from, workers);
                    model::push_history(&mut job.history, job.state, Some(line));
                }
                Ok(())
            })
        })
    }

    /// Pauses or resumes the scaling policies of a job's stages.
    pub fn set_autoscaling(&self, tenant: &TenantId, id: &JobId, paused: bool) -> Result<Job, ControlError> {
        self.mutate(tenant, id, |job, _| {
            if job.autoscale_paused != paused {
                job.autoscale_paused = paused;
                let line =
                    if paused { "autoscaling paused by its tenant" } else { "autoscaling resumed by its tenant" };
                model::push_history(&mut job.history, job.state, Some(line.to_owned()));
            }
            Ok(())
        })
    }

    /// Replaces the scaling policy of stage `stage` (none: the stage stops scaling itself);
    /// the stage's workers must lie within the new policy's bounds.
    pub fn set_scaling(
        &self,
        tenant: &TenantId,
        id: &JobId,
        stage: &str,
        policy: Option<squilla_types::scaling::ScalingPolicy>,
    ) -> Result<Job, ControlError> {
        let stage = stage.to_owned();
        self.mutate(tenant, id, move |job, _| {
            let s = stage_index(job, &stage)?;
            let path = format!("stages[{s}].scaling");
            if let Some(policy) = &policy {
                policy.validate(&path).map_err(ControlError::InvalidPolicy)?;
                let workers = job.stages[s].workers.len() as u32;
                if !(policy.min..=policy.max).contains(&workers) {
                    return Err(ControlError::OutsidePolicy { workers, min: policy.min, max: policy.max });
                }
            }
            job.spec.stages[s].scaling = policy;
            let line = format!("stage `{}`'s scaling policy replaced by its tenant", job.stages[s].name);
            model::push_history(&mut job.history, job.state, Some(line));
            Ok(())
        })
    }

    /// One round of autoscaling (from [`Control::tick`]): each decision applied as a scale.
    fn autoscale(&self) {
        let decisions = {
            let mut state = self.lock();
            let State { jobs, telemetry, autoscale, .. } = &mut *state;
            autoscale.round(jobs, telemetry, model::now_ms())
        };
        for (key, s, decision) in decisions {
            let stage = s.to_string();
            let to = decision.workers;
            let applied = self.rescale(&key, &stage, to, |stage, from, _| autoscaler::note(stage, from, &decision));
            if let Err(err) = applied {
                tracing::warn!(job = %key.job, stage = s, workers = to, error = %err, "autoscaling refused");
            }
        }
    }

    /// Replaces worker `index` of stage `stage` by a new incarnation, placed anew.
    pub fn resubmit(&self, tenant: &TenantId, id: &JobId, stage: &str, index: u32) -> Result<Job, ControlError> {
        let stage = stage.to_owned();
        self.mutate(tenant, id, move |job, config| {
            let s = stage_index(job, &stage)?;
            if index as usize >= job.stages[s].workers.len() {
                return Err(ControlError::NoSuchWorker { stage, index });
            }
            schedule::replace(
                job,
                s,
                index as usize,
                "resubmitted by its tenant".into(),
                false,
                config,
                model::now_ms(),
            );
            Ok(())
        })
    }

    /// The sink addresses (`host:port` of agents' HTTP servers) of a job's last stage.
    pub fn sink_agents(&self, tenant: &TenantId, id: &JobId) -> Result<Vec<String>, ControlError> {
        let state = self.lock();
        let key = JobKey::new(tenant.clone(), id.clone());
        let job = state.jobs.get(&key).ok_or_else(|| ControlError::NoSuchJob(id.to_string()))?;
        let mut out: Vec<String> = job
            .stages
            .last()
            .into_iter()
            .flat_map(|s| s.workers.iter())
            .filter_map(|w| w.agent.as_ref())
            .filter_map(|a| state.agents.get(a).filter(|e| !e.lost).map(|e| e.beat.http.clone()))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Whether a job's last stage runs on an agent this master has not heard from since it
    /// started, while it still waits for such agents (one agent timeout after a restart or a
    /// failover): where the job's output is cannot be told yet, and saying "nowhere" would
    /// make gateways drop streams that are flowing.
    pub fn sinks_unknown(&self, tenant: &TenantId, id: &JobId) -> bool {
        if self.started.elapsed() >= self.config.agent_timeout {
            return false;
        }
        let state = self.lock();
        let key = JobKey::new(tenant.clone(), id.clone());
        state.jobs.get(&key).is_some_and(|job| {
            job.stages
                .last()
                .into_iter()
                .flat_map(|s| s.workers.iter())
                .filter_map(|w| w.agent.as_ref())
                .any(|a| !state.agents.contains_key(a))
        })
    }

    /// The sink server of the agent that runs a job's source (stage 0's slot 0), the job's
    /// source spec, and whether that agent's lease still holds (it was heard from within nine
    /// tenths of the agent timeout: an agent whose lease ran out emits nothing).
    pub fn source_agent(
        &self,
        tenant: &TenantId,
        id: &JobId,
    ) -> Result<(Option<String>, squilla_types::SourceSpec, bool), ControlError> {
        let state = self.lock();
        let key = JobKey::new(tenant.clone(), id.clone());
        let job = state.jobs.get(&key).ok_or_else(|| ControlError::NoSuchJob(id.to_string()))?;
        let agent = job.stages.first().and_then(|s| s.workers.first()).and_then(|w| w.agent.as_ref());
        let entry = agent.and_then(|a| state.agents.get(a)).filter(|e| !e.lost);
        let fresh = entry.is_some_and(|e| e.last_seen.elapsed() <= self.config.agent_timeout * 9 / 10);
        Ok((entry.map(|e| e.beat.http.clone()), job.spec.source.clone(), fresh))
    }

    /// Where `tenant`'s job `id`'s worker `index` of `stage` (a name or 0-based index) runs.
    pub fn worker_place(
        &self,
        tenant: &TenantId,
        id: &JobId,
        stage: &str,
        index: u32,
    ) -> Result<WorkerPlace, ControlError> {
        let state = self.lock();
        let key = JobKey::new(tenant.clone(), id.clone());
        let job = state.jobs.get(&key).ok_or_else(|| ControlError::NoSuchJob(id.to_string()))?;
        let s = stage_index(job, stage)?;
        let worker = job
            .stages
            .get(s)
            .and_then(|st| st.workers.get(index as usize))
            .ok_or_else(|| ControlError::NoSuchWorker { stage: stage.to_owned(), index })?;
        let http =
            worker.agent.as_ref().and_then(|a| state.agents.get(a)).filter(|e| !e.lost).map(|e| e.beat.http.clone());
        Ok(WorkerPlace { key, stage: s, http, number: worker.number, ended: job.state.is_terminal() })
    }

    /// An agent's heartbeat: records it and answers with its assignments.
    /// What it changes is kept in memory at once (and stored by the next round of the loop):
    /// a heartbeat never waits for the store.
    pub fn heartbeat(&self, beat: Heartbeat) -> Result<squilla_types::control::Assignments, StoreError> {
        let mut state = self.lock();
        let dirty = agents::record(&mut state, beat.clone(), &self.config, model::now_ms());
        if !dirty.is_empty() {
            state.unsaved.extend(dirty);
            self.notify(&mut state);
        }
        Ok(agents::assignments(&state, &beat.agent, &self.config))
    }

    /// The live agents, as `(id, heartbeat, lost)`.
    pub fn agents(&self) -> Vec<(AgentId, Heartbeat, bool)> {
        self.lock().agents.iter().map(|(id, e)| (id.clone(), e.beat.clone(), e.lost)).collect()
    }

    /// Advice on the agent pool under `rules` ([`crate::advice`]).
    pub fn pool_advice(&self, rules: crate::advice::PoolRules) -> crate::advice::Advice {
        let now = model::now_ms();
        let ago = |at: std::time::Instant| now - i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
        let changed: BTreeMap<AgentId, i64> = {
            let state = self.lock();
            state
                .agents
                .iter()
                .map(|(id, e)| (id.clone(), if e.lost { ago(e.last_seen) } else { ago(e.joined) }))
                .collect()
        };
        let pending = {
            let state = self.lock();
            let waiting = state.jobs.values().filter(|j| !j.state.is_terminal()).flat_map(|j| j.stages.iter());
            waiting.flat_map(|s| s.workers.iter()).filter(|w| w.agent.is_none()).count()
        };
        let agents: Vec<crate::advice::PoolAgent> = self
            .agent_loads()
            .into_iter()
            .map(|a| crate::advice::PoolAgent {
                changed_ms: changed.get(&a.id).copied().unwrap_or(now),
                zone: a.beat.zone,
                slots: a.beat.capacity.slots,
                reserved_slots: a.reserved.slots,
                lost: a.lost,
            })
            .collect();
        crate::advice::advise(&agents, u32::try_from(pending).unwrap_or(u32::MAX), rules, now)
    }

    /// The agents with what the workers assigned to each reserve, and how long ago each was
    /// last heard from.
    pub fn agent_loads(&self) -> Vec<AgentLoad> {
        let state = self.lock();
        let mut loads: BTreeMap<AgentId, AgentLoad> = state
            .agents
            .iter()
            .map(|(id, e)| {
                let load = AgentLoad {
                    id: id.clone(),
                    beat: e.beat.clone(),
                    lost: e.lost,
                    silent_ms: u64::try_from(e.last_seen.elapsed().as_millis()).unwrap_or(u64::MAX),
                    reserved: squilla_types::control::Capacity::default(),
                };
                (id.clone(), load)
            })
            .collect();
        for job in state.jobs.values().filter(|j| !j.state.is_terminal()) {
            for (s, stage) in job.stages.iter().enumerate() {
                for w in &stage.workers {
                    let Some(load) = w.agent.as_ref().and_then(|a| loads.get_mut(a)) else { continue };
                    let needs = schedule::needs(job, s);
                    let r = &mut load.reserved;
                    r.cpu_millis += needs.cpu_millis;
                    r.memory_mib += needs.memory_mib;
                    r.network_mbps += needs.network_mbps;
                    r.slots += needs.slots;
                }
            }
        }
        loads.into_values().collect()
    }

    /// One round of the loop: lost agents, backoff expiries, placement, SLAs; and what
    /// heartbeats changed is stored.
    pub fn tick(&self) -> Result<(), StoreError> {
        let clusters = self.store.all_latest_clusters()?;
        {
            let _writer = self.writer();
            let records = {
                let mut state = self.lock();
                let now = model::now_ms();
                let grace = self.started.elapsed() < self.config.agent_timeout;
                let mut dirty = schedule::lose_agents(&mut state, &self.config, grace, now);
                dirty.extend(schedule::forgive(&mut state, &self.config, now));
                dirty.extend(schedule::place_waiting(&mut state, now));
                dirty.extend(std::mem::take(&mut state.unsaved));
                let State { jobs, telemetry, .. } = &mut *state;
                telemetry.prune(|key| {
                    let job = jobs.get(key)?;
                    Some((job.stages.iter().map(|s| s.workers.len() as u32).collect(), job.state.is_terminal()))
                });
                dirty.sort();
                dirty.dedup();
                if !dirty.is_empty() {
                    self.notify(&mut state);
                }
                records(&state, &dirty)
            };
            if let Err(err) = self.store.put_job_records(&records) {
                let mut state = self.lock();
                state.unsaved.extend(records.into_iter().map(|r| r.key));
                return Err(err);
            }
        }
        self.autoscale();
        for (tenant, cluster) in clusters {
            let min = cluster.spec.sla.min_jobs;
            if min == 0 {
                continue;
            }
            let active = self
                .lock()
                .jobs
                .values()
                .filter(|j| j.tenant == tenant && j.cluster == cluster.name && !j.state.is_terminal())
                .count() as u32;
            for _ in active..min {
                if let Err(err) = self.submit(&tenant, &cluster, BTreeMap::new()) {
                    tracing::warn!(%tenant, cluster = %cluster.name, error = %err, "cannot keep the cluster's sla.min-jobs");
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Where a worker runs ([`Control::worker_place`]).
#[derive(Debug, Clone)]
pub struct WorkerPlace {
    /// Its job.
    pub key: JobKey,
    /// Its stage's index.
    pub stage: usize,
    /// Its agent's HTTP address, if the worker is placed on an agent that is alive.
    pub http: Option<String>,
    /// Its incarnation.
    pub number: squilla_types::ids::WorkerNumber,
    /// Whether the job has ended.
    pub ended: bool,
}

/// An agent and what is placed on it ([`Control::agent_loads`]).
#[derive(Debug, Clone)]
pub struct AgentLoad {
    /// The agent.
    pub id: AgentId,
    /// Its last heartbeat.
    pub beat: Heartbeat,
    /// Whether the master has given up on it.
    pub lost: bool,
    /// Since its last heartbeat, ms.
    pub silent_ms: u64,
    /// What the workers assigned to it reserve.
    pub reserved: squilla_types::control::Capacity,
}

/// What the store keeps of `keys`' jobs (those still there), serialized now.
fn records(state: &State, keys: &[JobKey]) -> Vec<JobRecord> {
    keys.iter()
        .filter_map(|key| state.jobs.get(key).map(|job| (key, job)))
        .filter_map(|(key, job)| {
            let json = serde_json::to_vec(job).ok()?;
            Some(JobRecord { key: key.clone(), json })
        })
        .collect()
}

fn stage_index(job: &Job, stage: &str) -> Result<usize, ControlError> {
    job.stages
        .iter()
        .position(|s| s.name == stage)
        .or_else(|| stage.parse::<usize>().ok().filter(|i| *i < job.stages.len()))
        .ok_or_else(|| ControlError::NoSuchStage { job: job.id.to_string(), stage: stage.to_owned() })
}
