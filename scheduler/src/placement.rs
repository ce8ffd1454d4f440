//! Placement of workers onto agents by resource fit.
//!
//! [`plan`] is the one function: from [`Agent`]s (capacity, what is in use, zone, labels, the
//! stages it already runs), [`Request`]s (one worker each: its key, its needs, its
//! [`Constraints`]) and a [`Fitness`] it computes a [`Placement`]. Nothing here refers to the
//! control loop, which calls it ([`crate::control`]).
//!
//! The algorithm, and why:
//!
//! - Workers are placed largest first (by their dominant share of the largest agent), ties
//!   broken by key: first-fit decreasing, the classic heuristic that stays within a few percent
//!   of the optimum for many small items and is fast.
//! - **Bin-pack** (default) puts a worker on the first agent, in a fixed order, that fits it
//!   and meets its constraints: agents fill one after another, leaving whole agents free for
//!   large workers and for scaling in. A cursor skips the prefix of agents too full for the
//!   smallest request, so a placement usually inspects a handful of agents.
//! - **Spread** puts a worker on the agent with the most room left (by dominant share): load
//!   evens out, at the cost of looking at every agent.
//! - Constraints are **hard** (an agent that breaks one is never chosen) or **soft** (agents
//!   that meet it are preferred; the worker goes elsewhere rather than nowhere). Soft
//!   preferences are applied by a first pass that treats them as hard, then a second that
//!   drops them.
//! - Everything iterates in a fixed order (agents by id, requests by size then key), so the
//!   same input always gives the same output.

use std::collections::{BTreeMap, HashMap};

/// Resources an agent offers or a worker needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    /// CPU, in millicores.
    pub cpu_millis: u64,
    /// Memory, in MiB.
    pub memory_mib: u64,
    /// Network, in Mbps.
    pub network_mbps: u64,
    /// Worker slots (a worker needs 1).
    pub slots: u64,
}

impl Resources {
    /// Whether `need` fits in `self`.
    pub fn fits(&self, need: &Resources) -> bool {
        need.cpu_millis <= self.cpu_millis
            && need.memory_mib <= self.memory_mib
            && need.network_mbps <= self.network_mbps
            && need.slots <= self.slots
    }

    /// `self - other`, saturating at zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            network_mbps: self.network_mbps.saturating_sub(other.network_mbps),
            slots: self.slots.saturating_sub(other.slots),
        }
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis + other.cpu_millis,
            memory_mib: self.memory_mib + other.memory_mib,
            network_mbps: self.network_mbps + other.network_mbps,
            slots: self.slots + other.slots,
        }
    }

    /// The largest of `self`'s shares of `of`, per dimension (0 to 1 when it fits).
    pub fn dominant_share(&self, of: &Resources) -> f64 {
        let share =
            |n: u64, d: u64| if d == 0 { if n == 0 { 0.0 } else { f64::INFINITY } } else { n as f64 / d as f64 };
        share(self.cpu_millis, of.cpu_millis)
            .max(share(self.memory_mib, of.memory_mib))
            .max(share(self.network_mbps, of.network_mbps))
            .max(share(self.slots, of.slots))
    }
}

/// A job's stage: the scope of "unique agent" and "zone balance".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageKey {
    /// The job.
    pub job: String,
    /// The stage's name.
    pub stage: String,
}

/// One worker slot of a stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerKey {
    /// Its stage.
    pub stage: StageKey,
    /// Its index in the stage.
    pub index: u32,
}

/// An agent as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Its id; agents are considered in id order.
    pub id: String,
    /// Its zone.
    pub zone: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it offers in all.
    pub capacity: Resources,
    /// What is in use already.
    pub used: Resources,
    /// The stages of the workers it runs already (one entry per worker).
    pub running: Vec<StageKey>,
}

/// How strongly a constraint holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strength {
    /// Not asked for.
    #[default]
    Off,
    /// Preferred.
    Soft,
    /// Required.
    Hard,
}

/// A worker's placement constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// At most one worker of the stage per agent.
    pub unique_agent: Strength,
    /// The stage's workers spread evenly over the zones: a worker goes to a zone that has
    /// the fewest workers of its stage.
    pub zone_balance: Strength,
    /// Labels the agent must (hard) or should (soft) carry with these values.
    pub labels: Vec<(String, String, Strength)>,
}

/// One worker to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Which worker.
    pub key: WorkerKey,
    /// What it needs (`slots` is normally 1).
    pub needs: Resources,
    /// Where it may go.
    pub constraints: Constraints,
}

/// How to choose among agents that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fitness {
    /// Fill agents one after another (fewest agents used).
    #[default]
    BinPack,
    /// Put each worker where the most room is left (even load).
    Spread,
}

/// The outcome: where each placed worker goes, and why each other one could not be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// `(worker, agent id)`, in the order they were placed.
    pub assigned: Vec<(WorkerKey, String)>,
    /// `(worker, reason)` for every worker left unplaced.
    pub unplaced: Vec<(WorkerKey, String)>,
}

/// Mutable view of the agents during one placement run.
struct State<'a> {
    agents: Vec<&'a Agent>,
    free: Vec<Resources>,
    /// Agents (by position) running each stage, with counts.
    stage_agents: HashMap<StageKey, HashMap<usize, u32>>,
    /// Workers of each stage per zone.
    stage_zones: HashMap<StageKey, BTreeMap<&'a str, u32>>,
    zones: Vec<&'a str>,
}

impl<'a> State<'a> {
    fn new(agents: &'a [Agent]) -> Self {
        let mut agents: Vec<&Agent> = agents.iter().collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        let mut zones: Vec<&str> = agents.iter().map(|a| a.zone.as_str()).collect();
        zones.sort_unstable();
        zones.dedup();
        let mut state = State {
            free: agents.iter().map(|a| a.capacity.minus(&a.used)).collect(),
            stage_agents: HashMap::new(),
            stage_zones: HashMap::new(),
            zones,
            agents,
        };
        for i in 0..state.agents.len() {
            let agent = state.agents[i];
            for stage in &agent.running {
                state.note(stage, i, agent.zone.as_str());
            }
        }
        state
    }

    fn note(&mut self, stage: &StageKey, agent: usize, zone: &'a str) {
        *self.stage_agents.entry(stage.clone()).or_default().entry(agent).or_default() += 1;
        *self.stage_zones.entry(stage.clone()).or_default().entry(zone).or_default() += 1;
    }

    /// Zones where the stage has the fewest workers.
    fn least_loaded_zones(&self, stage: &StageKey) -> Vec<&'a str> {
        let counts = self.stage_zones.get(stage);
        let count = |z: &str| counts.and_then(|c| c.get(z)).copied().unwrap_or(0);
        let min = self.zones.iter().map(|z| count(z)).min().unwrap_or(0);
        self.zones.iter().copied().filter(|z| count(z) == min).collect()
    }

    /// Whether agent `i` can take `request`, treating constraints at least `as_hard` as hard.
    fn admits(&self, i: usize, request: &Request, as_hard: Strength, balanced: &[&str]) -> bool {
        let c = &request.constraints;
        let agent = self.agents[i];
        if !self.free[i].fits(&request.needs) {
            return false;
        }
        if c.unique_agent >= as_hard
            && c.unique_agent != Strength::Off
            && self.stage_agents.get(&request.key.stage).is_some_and(|m| m.contains_key(&i))
        {
            return false;
        }
        if c.zone_balance >= as_hard && c.zone_balance != Strength::Off && !balanced.contains(&agent.zone.as_str()) {
            return false;
        }
        c.labels
            .iter()
            .filter(|(_, _, s)| *s >= as_hard && *s != Strength::Off)
            .all(|(k, v, _)| agent.labels.get(k) == Some(v))
    }

    /// Why no agent takes `request` under its hard constraints.
    fn reason(&self, request: &Request) -> String {
        if self.agents.is_empty() {
            return "no agents are registered".into();
        }
        let n = &request.needs;
        let fits: Vec<usize> = (0..self.agents.len()).filter(|&i| self.free[i].fits(n)).collect();
        if fits.is_empty() {
            let most = self.free.iter().max_by_key(|f| (f.cpu_millis, f.memory_mib)).copied().unwrap_or_default();
            return format!(
                "no agent has room for {} millicores, {} MiB, {} Mbps and a slot (the most free: {} millicores, {} MiB, {} Mbps, {} slots)",
                n.cpu_millis,
                n.memory_mib,
                n.network_mbps,
                most.cpu_millis,
                most.memory_mib,
                most.network_mbps,
                most.slots
            );
        }
        let c = &request.constraints;
        for (key, value, strength) in &c.labels {
            if *strength == Strength::Hard && !fits.iter().any(|&i| self.agents[i].labels.get(key) == Some(value)) {
                return format!("no agent with room has label {key}={value}");
            }
        }
        if c.unique_agent == Strength::Hard {
            return format!(
                "every agent with room already runs a worker of stage `{}` of job `{}` (unique agent per stage)",
                request.key.stage.stage, request.key.stage.job
            );
        }
        if c.zone_balance == Strength::Hard {
            return format!(
                "no agent with room in the zones where stage `{}` has the fewest workers ({}) (zone balance)",
                request.key.stage.stage,
                self.least_loaded_zones(&request.key.stage).join(", ")
            );
        }
        "no agent meets all of the worker's hard constraints at once".into()
    }
}

/// Plans where `requests` go among `agents`. Pure and deterministic: the same input gives the
/// same output; no agent ends over capacity; every hard constraint holds for every assignment.
pub fn plan(agents: &[Agent], requests: &[Request], fitness: Fitness) -> Placement {
    let mut state = State::new(agents);
    let largest =
        state.agents.iter().map(|a| a.capacity).max_by_key(|c| (c.cpu_millis, c.memory_mib)).unwrap_or_default();
    let mut order: Vec<(f64, &Request)> = requests.iter().map(|r| (r.needs.dominant_share(&largest), r)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key)));
    let smallest =
        requests.iter().map(|r| r.needs).min_by_key(|n| (n.cpu_millis, n.memory_mib, n.network_mbps, n.slots));

    let mut placement = Placement::default();
    // Bin-pack cursor: agents before it cannot take even the smallest request.
    let mut cursor = 0;
    for (_, request) in order {
        let balanced = state.least_loaded_zones(&request.key.stage);
        let has_soft = request.constraints.unique_agent == Strength::Soft
            || request.constraints.zone_balance == Strength::Soft
            || request.constraints.labels.iter().any(|(_, _, s)| *s == Strength::Soft);
        let passes: &[Strength] = if has_soft { &[Strength::Soft, Strength::Hard] } else { &[Strength::Hard] };
        let mut chosen = None;
        for &as_hard in passes {
            chosen = match fitness {
                Fitness::BinPack => {
                    (cursor..state.agents.len()).find(|&i| state.admits(i, request, as_hard, &balanced))
                }
                Fitness::Spread => (0..state.agents.len())
                    .filter(|&i| state.admits(i, request, as_hard, &balanced))
                    .min_by(|&a, &b| {
                        let used = |i: usize| {
                            state.agents[i].capacity.minus(&state.free[i]).dominant_share(&state.agents[i].capacity)
                        };
                        used(a).total_cmp(&used(b)).then(a.cmp(&b))
                    }),
            };
            if chosen.is_some() {
                break;
            }
        }
        match chosen {
            Some(i) => {
                state.free[i] = state.free[i].minus(&request.needs);
                let zone = state.agents[i].zone.as_str();
                state.note(&request.key.stage, i, zone);
                placement.assigned.push((request.key.clone(), state.agents[i].id.clone()));
                if let Some(smallest) = smallest {
                    while cursor < state.agents.len() && !state.free[cursor].fits(&smallest) {
                        cursor += 1;
                    }
                }
            }
            None => placement.unplaced.push((request.key.clone(), state.reason(request))),
        }
    }
    placement
}

/// The fewest agents of capacity `per_agent` that could hold `requests`, by total resources
/// alone (a lower bound for any placement).
pub fn lower_bound(requests: &[Request], per_agent: &Resources) -> u64 {
    let total = requests.iter().fold(Resources::default(), |t, r| t.plus(&r.needs));
    let bound = |n: u64, d: u64| if d == 0 { 0 } else { n.div_ceil(d) };
    bound(total.cpu_millis, per_agent.cpu_millis)
        .max(bound(total.memory_mib, per_agent.memory_mib))
        .max(bound(total.network_mbps, per_agent.network_mbps))
        .max(bound(total.slots, per_agent.slots))
}

#[cfg(test)]
mod tests;
