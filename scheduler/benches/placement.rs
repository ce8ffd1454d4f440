//! Placement of 10,000 workers onto 1,000 agents with mixed sizes and constraints: time, and
//! agents used against the lower bound. Prints JSON.
//!
//! The fixture: 1,000 agents (16 cores, 64 GiB, 10 Gbps, 64 slots) in 4 zones, half with
//! label `ssd=true`; 1,000 stages of 10 workers, sized from 250 to 4,000 millicores and 256 to
//! 8,192 MiB; 30 % of the stages ask for a unique agent per worker (hard), 20 % for zone
//! balance (soft), 10 % for `ssd=true` (hard). Deterministic (a fixed-seed generator).
//!
//! Run: `cargo bench --workspace --bench placement`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::json;
use squilla_scheduler::placement::{
    Agent, Constraints, Fitness, Request, Resources, StageKey, Strength, WorkerKey, lower_bound, plan,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn main() {
    let capacity = Resources { cpu_millis: 16_000, memory_mib: 65_536, network_mbps: 10_000, slots: 64 };
    let agents: Vec<Agent> = (0..1000)
        .map(|i| Agent {
            id: format!("agent-{i:04}"),
            zone: format!("zone-{}", i % 4),
            labels: if i % 2 == 0 {
                BTreeMap::from([("ssd".to_string(), "true".to_string())])
            } else {
                BTreeMap::new()
            },
            capacity,
            used: Resources::default(),
            running: Vec::new(),
        })
        .collect();
    let mut rng = Rng(0x5eed);
    let sizes = [(250, 256), (500, 1024), (1000, 2048), (2000, 4096), (4000, 8192)];
    let mut requests = Vec::with_capacity(10_000);
    for stage in 0..1000 {
        let (cpu, mem) = sizes[rng.next(sizes.len() as u64) as usize];
        let kind = rng.next(10);
        let constraints = Constraints {
            unique_agent: if kind < 3 { Strength::Hard } else { Strength::Off },
            zone_balance: if (3..5).contains(&kind) { Strength::Soft } else { Strength::Off },
            labels: if kind == 5 { vec![("ssd".into(), "true".into(), Strength::Hard)] } else { vec![] },
        };
        for index in 0..10 {
            requests.push(Request {
                key: WorkerKey {
                    stage: StageKey { job: format!("job-{}", stage / 10), stage: format!("s{stage}") },
                    index,
                },
                needs: Resources { cpu_millis: cpu, memory_mib: mem, network_mbps: 10, slots: 1 },
                constraints: constraints.clone(),
            });
        }
    }
    let bound = lower_bound(&requests, &capacity);
    let mut runs = Vec::new();
    let mut result = None;
    for _ in 0..5 {
        let started = Instant::now();
        let p = plan(&agents, &requests, Fitness::BinPack);
        runs.push(started.elapsed().as_secs_f64() * 1e3);
        result = Some(p);
    }
    let p = result.expect("ran");
    let used: std::collections::BTreeSet<&str> = p.assigned.iter().map(|(_, a)| a.as_str()).collect();
    runs.sort_by(f64::total_cmp);
    let started = Instant::now();
    let spread = plan(&agents, &requests, Fitness::Spread);
    let spread_ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "agents": agents.len(),
            "workers": requests.len(),
            "bin_pack": {
                "median_ms": runs[runs.len() / 2],
                "min_ms": runs[0],
                "placed": p.assigned.len(),
                "unplaced": p.unplaced.len(),
                "agents_used": used.len(),
                "lower_bound": bound,
                "over_bound_pct": (used.len() as f64 / bound as f64 - 1.0) * 100.0,
            },
            "spread": { "ms": spread_ms, "placed": spread.assigned.len() },
        }))
        .unwrap()
    );
}
