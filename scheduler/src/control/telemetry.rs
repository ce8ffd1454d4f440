//! Job metrics at the master: totals per worker slot across incarnations, a short history,
//! and rates over 10 s, 1 min and 5 min.
//!
//! Agents send *totals* of each worker incarnation with every heartbeat (a lost heartbeat then
//! loses nothing); this module turns consecutive totals into deltas — a new incarnation, or a
//! total that went down, starts again from zero — and adds them to the slot's totals, which
//! therefore count everything since the job started even as workers are replaced. Slots a
//! scale-down removes fold their totals into their stage's.
//!
//! Memory is bounded per slot and independent of how long a job runs: the latest totals, up to
//! [`FINE`] samples at least a second apart (the 10 s rate) and up to [`COARSE`] samples at
//! least [`COARSE_EVERY_MS`] apart (1 min and 5 min). An ended job keeps only its totals.
//! Nothing here is stored: after a master restart totals start again from the agents' next
//! reports (which are totals of the running incarnations).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use squilla_types::control::WorkerReport;
use squilla_types::ids::{JobKey, WorkerNumber};

/// Samples kept for the shortest rate (at least [`FINE_EVERY_MS`] apart).
pub const FINE: usize = 12;
/// Least time between two fine samples, ms.
pub const FINE_EVERY_MS: i64 = 1_000;
/// Samples kept for the longer rates.
pub const COARSE: usize = 32;
/// Least time between two coarse samples, ms.
pub const COARSE_EVERY_MS: i64 = 10_000;
/// Buckets of the call-time histogram (as the agents count them).
pub const BUCKETS: usize = 25;

/// The windows rates are computed over, with their names in the API.
pub const WINDOWS: [(&str, i64); 3] = [("10s", 10_000), ("1m", 60_000), ("5m", 300_000)];

/// Counters of a worker slot (or a stage: the sum of its slots').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Totals {
    /// Events received.
    pub events_in: u64,
    /// Events emitted.
    pub events_out: u64,
    /// Batches received.
    pub batches_in: u64,
    /// Batches emitted.
    pub batches_out: u64,
    /// Bytes of the batches received.
    pub bytes_in: u64,
    /// Bytes of the batches emitted.
    pub bytes_out: u64,
    /// Batches dropped on the way in (every reason).
    pub dropped: u64,
    /// Batches dropped because the input queue was full and the policy is `drop-oldest`.
    pub dropped_oldest: u64,
    /// Batches refused by the full input queue under `drop-newest`.
    pub dropped_newest: u64,
    /// Events in the batches a full input queue dropped (`drop-oldest`, `drop-newest`).
    pub dropped_events: u64,
    /// Calls into the stage that failed.
    pub failed_calls: u64,
    /// Calls that trapped or passed their deadline.
    pub traps: u64,
    /// Instances created.
    pub instances: u64,
    /// Time the tenant's code ran, ns.
    pub guest_nanos: u64,
    /// Calls into the stage (the histogram's sum).
    pub calls: u64,
}

impl Totals {
    fn of(report: &WorkerReport) -> Totals {
        let c = &report.counters;
        let drop = |reason: &str| c.drops.get(reason).copied().unwrap_or(0);
        Totals {
            events_in: report.events_in,
            events_out: report.events_out,
            batches_in: c.batches_in,
            batches_out: c.batches_out,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            dropped: report.dropped,
            dropped_oldest: drop("oldest"),
            dropped_newest: drop("newest"),
            dropped_events: c.dropped_events,
            failed_calls: report.failed_calls,
            traps: c.traps,
            instances: c.instances,
            guest_nanos: c.guest_nanos,
            calls: c.call_micros_log2.iter().take(BUCKETS).fold(0u64, |a, n| a.saturating_add(*n)),
        }
    }

    fn fields(&mut self) -> [&mut u64; 15] {
        [
            &mut self.events_in,
            &mut self.events_out,
            &mut self.batches_in,
            &mut self.batches_out,
            &mut self.bytes_in,
            &mut self.bytes_out,
            &mut self.dropped,
            &mut self.dropped_oldest,
            &mut self.dropped_newest,
            &mut self.dropped_events,
            &mut self.failed_calls,
            &mut self.traps,
            &mut self.instances,
            &mut self.guest_nanos,
            &mut self.calls,
        ]
    }

    /// `self + other`, saturating.
    fn plus(mut self, mut other: Totals) -> Totals {
        for (a, b) in self.fields().into_iter().zip(other.fields()) {
            *a = a.saturating_add(*b);
        }
        self
    }

    /// What grew from `before` to `self`: a field that went down counts from zero (a reset).
    fn since(mut self, mut before: Totals) -> Totals {
        for (now, then) in self.fields().into_iter().zip(before.fields()) {
            if *now >= *then {
                *now -= *then;
            }
        }
        self
    }
}

/// Rates over one window, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Rates {
    /// Events received per second.
    pub events_in: f64,
    /// Events emitted per second.
    pub events_out: f64,
    /// Bytes received per second.
    pub bytes_in: f64,
    /// Bytes emitted per second.
    pub bytes_out: f64,
    /// Batches dropped per second.
    pub dropped: f64,
    /// Failed calls per second.
    pub failed_calls: f64,
    /// CPU the tenant's code used: seconds per second (1.0 is one core busy).
    pub guest_cpu: f64,
    /// Calls into the stage per second.
    pub calls: f64,
    /// Mean time per call over the window, µs.
    pub call_micros: f64,
    /// The span the rates were computed over, ms (shorter than the window while the history
    /// is younger than it; 0 when there is not yet a second sample).
    pub span_ms: i64,
}

impl Rates {
    fn between(from: &Sample, to: &Sample) -> Rates {
        let span_ms = to.at_ms - from.at_ms;
        if span_ms <= 0 {
            return Rates::default();
        }
        let d = to.totals.since(from.totals);
        let per_s = |n: u64| n as f64 * 1000.0 / span_ms as f64;
        Rates {
            events_in: per_s(d.events_in),
            events_out: per_s(d.events_out),
            bytes_in: per_s(d.bytes_in),
            bytes_out: per_s(d.bytes_out),
            dropped: per_s(d.dropped),
            failed_calls: per_s(d.failed_calls),
            guest_cpu: d.guest_nanos as f64 / 1e6 / span_ms as f64,
            calls: per_s(d.calls),
            call_micros: if d.calls == 0 { 0.0 } else { d.guest_nanos as f64 / 1e3 / d.calls as f64 },
            span_ms,
        }
    }

    fn add(&mut self, other: &Rates) {
        self.events_in += other.events_in;
        self.events_out += other.events_out;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.dropped += other.dropped;
        self.failed_calls += other.failed_calls;
        self.guest_cpu += other.guest_cpu;
        self.calls += other.calls;
        self.span_ms = self.span_ms.max(other.span_ms);
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: i64,
    totals: Totals,
}

/// One worker slot's counters and history.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// The incarnation last reported, and its last totals.
    incarnation: Option<(WorkerNumber, Totals)>,
    totals: Totals,
    histogram: Vec<u64>,
    last_histogram: Vec<u64>,
    queue_depth: u64,
    memory_bytes: u64,
    user: BTreeMap<String, f64>,
    latest: Option<Sample>,
    fine: VecDeque<Sample>,
    coarse: VecDeque<Sample>,
}

impl Slot {
    fn observe(&mut self, report: &WorkerReport, now_ms: i64) {
        let now = Totals::of(report);
        let delta = match self.incarnation {
            Some((number, before)) if number == report.number => now.since(before),
            _ => {
                self.last_histogram.clear();
                now
            }
        };
        self.incarnation = Some((report.number, now));
        self.totals = self.totals.plus(delta);
        let histogram = &report.counters.call_micros_log2;
        for (i, n) in histogram.iter().enumerate().take(BUCKETS) {
            let before = self.last_histogram.get(i).copied().unwrap_or(0);
            let grew = if *n >= before { n - before } else { *n };
            if self.histogram.len() <= i {
                self.histogram.resize(i + 1, 0);
            }
            self.histogram[i] = self.histogram[i].saturating_add(grew);
        }
        self.last_histogram.clone_from(histogram);
        self.last_histogram.truncate(BUCKETS);
        self.queue_depth = report.counters.queue_depth;
        self.memory_bytes = report.memory_bytes;
        self.user.clone_from(&report.counters.user);
        let sample = Sample { at_ms: now_ms, totals: self.totals };
        self.latest = Some(sample);
        push(&mut self.fine, sample, FINE_EVERY_MS, FINE);
        push(&mut self.coarse, sample, COARSE_EVERY_MS, COARSE);
    }

    /// Rates over each of [`WINDOWS`]: from the newest sample at least the window old (or the
    /// oldest there is) to the latest.
    fn rates(&self) -> BTreeMap<String, Rates> {
        let mut out = BTreeMap::new();
        for (name, window) in WINDOWS {
            let rates = match self.latest {
                Some(latest) => {
                    let ring = if window <= FINE_EVERY_MS * (FINE as i64 - 2) { &self.fine } else { &self.coarse };
                    let cutoff = latest.at_ms - window;
                    let base = ring.iter().rev().find(|s| s.at_ms <= cutoff).or_else(|| ring.front());
                    base.map(|b| Rates::between(b, &latest)).unwrap_or_default()
                }
                None => Rates::default(),
            };
            out.insert(name.to_owned(), rates);
        }
        out
    }

    /// Keeps only the totals (the job ended).
    fn retire(&mut self) {
        *self = Slot { totals: self.totals, histogram: std::mem::take(&mut self.histogram), ..Slot::default() };
    }

    #[cfg(test)]
    fn samples(&self) -> usize {
        self.fine.len() + self.coarse.len()
    }
}

/// Appends `sample` if the newest is at least `every_ms` older, dropping the oldest past `cap`.
fn push(ring: &mut VecDeque<Sample>, sample: Sample, every_ms: i64, cap: usize) {
    if ring.back().is_some_and(|last| sample.at_ms - last.at_ms < every_ms) {
        return;
    }
    ring.push_back(sample);
    while ring.len() > cap {
        ring.pop_front();
    }
}

/// One job's slots, by `(stage, index)`, and what removed slots had counted, by stage.
#[derive(Debug, Clone, Default)]
struct JobTelemetry {
    slots: BTreeMap<(u32, u32), Slot>,
    removed: BTreeMap<u32, Totals>,
    ended: bool,
}

/// Every job's metrics (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    jobs: BTreeMap<JobKey, JobTelemetry>,
}

impl Telemetry {
    /// Records a report the control loop accepted (the slot's current incarnation on its
    /// assigned agent).
    pub fn observe(&mut self, report: &WorkerReport, now_ms: i64) {
        let job = self.jobs.entry(report.job.clone()).or_default();
        if !job.ended {
            job.slots.entry((report.stage, report.index)).or_default().observe(report, now_ms);
        }
    }

    /// Brings the entries in line with the jobs: slots beyond a stage's width fold into the
    /// stage, ended jobs keep only totals, removed jobs go.
    pub fn prune(&mut self, widths: impl Fn(&JobKey) -> Option<(Vec<u32>, bool)>) {
        self.jobs.retain(|key, job| {
            let Some((widths, ended)) = widths(key) else { return false };
            let gone: Vec<(u32, u32)> =
                job.slots.keys().filter(|(s, i)| widths.get(*s as usize).is_none_or(|w| *i >= *w)).copied().collect();
            for key in gone {
                if let Some(slot) = job.slots.remove(&key) {
                    let stage = job.removed.entry(key.0).or_default();
                    *stage = stage.plus(slot.totals);
                }
            }
            if ended && !job.ended {
                job.ended = true;
                job.slots.values_mut().for_each(Slot::retire);
            }
            true
        });
    }

    /// How many samples are held in all (for tests of the bound).
    #[cfg(test)]
    pub fn samples(&self) -> usize {
        self.jobs.values().flat_map(|j| j.slots.values()).map(Slot::samples).sum()
    }

    /// A job's metrics view; `stages` gives each stage's name and its workers'
    /// `(number, agent, state)`.
    pub fn view(&self, key: &JobKey, stages: &[(String, Vec<WorkerInfo>)], now_ms: i64) -> JobMetrics {
        let empty = JobTelemetry::default();
        let job = self.jobs.get(key).unwrap_or(&empty);
        let stages = stages
            .iter()
            .enumerate()
            .map(|(s, (name, workers))| {
                let mut stage = StageMetrics {
                    name: name.clone(),
                    totals: job.removed.get(&(s as u32)).copied().unwrap_or_default(),
                    rates: WINDOWS.iter().map(|(w, _)| ((*w).to_owned(), Rates::default())).collect(),
                    call_micros: Quantiles::default(),
                    queue_depth: 0,
                    memory_bytes: 0,
                    user: BTreeMap::new(),
                    workers: Vec::new(),
                };
                let mut histogram = vec![0u64; BUCKETS];
                for (i, info) in workers.iter().enumerate() {
                    let slot = job.slots.get(&(s as u32, i as u32));
                    let default = Slot::default();
                    let slot = slot.unwrap_or(&default);
                    let rates = slot.rates();
                    for (w, r) in &rates {
                        if let Some(sum) = stage.rates.get_mut(w) {
                            sum.add(r);
                        }
                    }
                    stage.totals = stage.totals.plus(slot.totals);
                    for (b, n) in histogram.iter_mut().zip(&slot.histogram) {
                        *b = b.saturating_add(*n);
                    }
                    stage.queue_depth = stage.queue_depth.saturating_add(slot.queue_depth);
                    stage.memory_bytes = stage.memory_bytes.saturating_add(slot.memory_bytes);
                    for (name, value) in &slot.user {
                        *stage.user.entry(name.clone()).or_default() += value;
                    }
                    stage.workers.push(WorkerMetrics {
                        index: i as u32,
                        number: info.number.0,
                        agent: info.agent.clone(),
                        state: info.state.clone(),
                        totals: slot.totals,
                        rates,
                        call_micros: Quantiles::of(&slot.histogram),
                        call_micros_log2: slot.histogram.clone(),
                        queue_depth: slot.queue_depth,
                        memory_bytes: slot.memory_bytes,
                        user: slot.user.clone(),
                    });
                }
                for r in stage.rates.values_mut() {
                    r.call_micros = if r.calls > 0.0 { r.guest_cpu * 1e6 / r.calls } else { 0.0 };
                }
                stage.call_micros = Quantiles::of(&histogram);
                stage
            })
            .collect();
        JobMetrics { job: key.job.to_string(), at_ms: now_ms, stages }
    }
}

/// What the view needs to know of a worker besides its metrics.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub number: WorkerNumber,
    pub agent: Option<String>,
    pub state: String,
}

/// Upper bounds of call-time quantiles, µs (powers of two: the histogram's bucket bounds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Quantiles {
    /// Half the calls took less.
    pub p50: u64,
    /// 99 % of the calls took less.
    pub p99: u64,
}

impl Quantiles {
    fn of(histogram: &[u64]) -> Quantiles {
        let total = histogram.iter().fold(0u64, |a, n| a.saturating_add(*n));
        let at = |q: f64| {
            let target = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for (i, n) in histogram.iter().enumerate() {
                seen = seen.saturating_add(*n);
                if seen >= target {
                    return 1u64 << i;
                }
            }
            0
        };
        if total == 0 { Quantiles::default() } else { Quantiles { p50: at(0.5), p99: at(0.99) } }
    }
}

/// `GET /api/v1/jobs/{id}/metrics`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct JobMetrics {
    /// The job.
    pub job: String,
    /// When the view was made, ms since the Unix epoch.
    pub at_ms: i64,
    /// Per stage.
    pub stages: Vec<StageMetrics>,
}

/// A stage's metrics: the sum of its workers'.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct StageMetrics {
    /// The stage's name.
    pub name: String,
    /// Since the job started (workers removed by scaling included).
    pub totals: Totals,
    /// Sums of the workers' rates, by window (`10s`, `1m`, `5m`).
    pub rates: BTreeMap<String, Rates>,
    /// Call-time quantiles over the job's life.
    pub call_micros: Quantiles,
    /// Batches waiting in the workers' input queues.
    pub queue_depth: u64,
    /// Linear memory of the workers' instances, bytes.
    pub memory_bytes: u64,
    /// Sums of the workers' own gauges (`metrics.gauge` in the WIT), by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, f64>,
    /// Per worker slot.
    pub workers: Vec<WorkerMetrics>,
}

/// A worker slot's metrics (every incarnation's).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct WorkerMetrics {
    /// Its slot in the stage.
    pub index: u32,
    /// Its current incarnation.
    pub number: u64,
    /// Its agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Its state.
    pub state: String,
    /// Since the job started, all incarnations of the slot.
    pub totals: Totals,
    /// By window (`10s`, `1m`, `5m`).
    pub rates: BTreeMap<String, Rates>,
    /// Call-time quantiles.
    pub call_micros: Quantiles,
    /// The call-time histogram: entry `i` counts calls under `2^i` µs.
    pub call_micros_log2: Vec<u64>,
    /// Batches waiting in its input queue.
    pub queue_depth: u64,
    /// Linear memory of its instance, bytes.
    pub memory_bytes: u64,
    /// The gauges its stage reports about itself (`metrics.gauge` in the WIT), latest values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, f64>,
}

#[cfg(test)]
mod tests;
