//! Placement on in-memory fixtures, and its invariants by property.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

fn agent(id: &str, zone: &str, cpu: u64, mem: u64) -> Agent {
    Agent {
        id: id.into(),
        zone: zone.into(),
        labels: BTreeMap::new(),
        capacity: Resources { cpu_millis: cpu, memory_mib: mem, network_mbps: 1000, slots: 100 },
        used: Resources::default(),
        running: Vec::new(),
    }
}

fn worker(job: &str, stage: &str, index: u32, cpu: u64, mem: u64, constraints: Constraints) -> Request {
    Request {
        key: WorkerKey { stage: StageKey { job: job.into(), stage: stage.into() }, index },
        needs: Resources { cpu_millis: cpu, memory_mib: mem, network_mbps: 10, slots: 1 },
        constraints,
    }
}

fn agent_of(p: &Placement, index: u32) -> &str {
    p.assigned.iter().find(|(k, _)| k.index == index).map(|(_, a)| a.as_str()).unwrap()
}

#[test]
fn bin_pack_fills_agents_in_order_and_spread_evens_them() {
    let agents = [agent("a", "z", 1000, 1000), agent("b", "z", 1000, 1000)];
    let requests: Vec<_> = (0..4).map(|i| worker("j", "s", i, 250, 100, Constraints::default())).collect();
    let packed = plan(&agents, &requests, Fitness::BinPack);
    assert!(packed.assigned.iter().all(|(_, a)| a == "a"));
    let spread = plan(&agents, &requests, Fitness::Spread);
    let on_a = spread.assigned.iter().filter(|(_, a)| a == "a").count();
    assert_eq!(on_a, 2);
}

#[test]
fn hard_constraints_hold_and_unplaceable_workers_get_reasons() {
    let mut agents = vec![agent("a", "east", 4000, 4000), agent("b", "west", 4000, 4000)];
    agents[1].labels.insert("ssd".into(), "true".into());
    let unique = Constraints { unique_agent: Strength::Hard, ..Constraints::default() };
    let requests: Vec<_> = (0..3).map(|i| worker("j", "s", i, 100, 100, unique.clone())).collect();
    let p = plan(&agents, &requests, Fitness::BinPack);
    assert_eq!(p.assigned.len(), 2);
    assert_ne!(agent_of(&p, 0), agent_of(&p, 1));
    assert_eq!(p.unplaced.len(), 1);
    assert!(p.unplaced[0].1.contains("unique agent per stage"), "{}", p.unplaced[0].1);

    let ssd = Constraints { labels: vec![("ssd".into(), "true".into(), Strength::Hard)], ..Constraints::default() };
    let p = plan(&agents, &[worker("j", "t", 0, 100, 100, ssd)], Fitness::BinPack);
    assert_eq!(p.assigned[0].1, "b");
    let gpu = Constraints { labels: vec![("gpu".into(), "a100".into(), Strength::Hard)], ..Constraints::default() };
    let p = plan(&agents, &[worker("j", "t", 0, 100, 100, gpu)], Fitness::BinPack);
    assert_eq!(p.unplaced[0].1, "no agent with room has label gpu=a100");

    let p = plan(&agents, &[worker("j", "big", 0, 5000, 100, Constraints::default())], Fitness::BinPack);
    assert!(p.unplaced[0].1.starts_with("no agent has room for 5000 millicores"), "{}", p.unplaced[0].1);
    let p = plan(&[], &[worker("j", "s", 0, 1, 1, Constraints::default())], Fitness::BinPack);
    assert_eq!(p.unplaced[0].1, "no agents are registered");
}

#[test]
fn soft_constraints_are_preferred_but_give_way() {
    let mut agents = vec![agent("a", "east", 1000, 1000), agent("b", "west", 1000, 1000)];
    agents[1].labels.insert("ssd".into(), "true".into());
    let soft = Constraints { labels: vec![("ssd".into(), "true".into(), Strength::Soft)], ..Constraints::default() };
    // Five workers of 300 millicores: three fit on b (preferred), the other two go to a.
    let requests: Vec<_> = (0..5).map(|i| worker("j", "s", i, 300, 10, soft.clone())).collect();
    let p = plan(&agents, &requests, Fitness::BinPack);
    assert_eq!(p.assigned.iter().filter(|(_, a)| a == "b").count(), 3);
    assert_eq!(p.assigned.len(), 5);
}

#[test]
fn zone_balance_spreads_a_stage_over_zones() {
    let agents =
        [agent("a1", "east", 10_000, 10_000), agent("a2", "east", 10_000, 10_000), agent("b1", "west", 10_000, 10_000)];
    let balanced = Constraints { zone_balance: Strength::Hard, ..Constraints::default() };
    let requests: Vec<_> = (0..6).map(|i| worker("j", "s", i, 100, 100, balanced.clone())).collect();
    let p = plan(&agents, &requests, Fitness::BinPack);
    let west = p.assigned.iter().filter(|(_, a)| a == "b1").count();
    assert_eq!(west, 3);
}

#[test]
fn already_running_workers_count_for_unique_agent() {
    let mut agents = vec![agent("a", "z", 1000, 1000), agent("b", "z", 1000, 1000)];
    agents[0].running.push(StageKey { job: "j".into(), stage: "s".into() });
    let unique = Constraints { unique_agent: Strength::Hard, ..Constraints::default() };
    let p = plan(&agents, &[worker("j", "s", 1, 10, 10, unique)], Fitness::BinPack);
    assert_eq!(p.assigned[0].1, "b");
}

fn strength() -> impl Strategy<Value = Strength> {
    prop_oneof![Just(Strength::Off), Just(Strength::Soft), Just(Strength::Hard)]
}

fn fixture() -> impl Strategy<Value = (Vec<Agent>, Vec<Request>)> {
    let agents =
        proptest::collection::vec((0..3u8, 500..4000u64, 500..4000u64, 1..6u64, any::<bool>(), 0..500u64), 0..12)
            .prop_map(|specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (zone, cpu, mem, slots, ssd, used))| {
                        let mut a = agent(&format!("agent-{i:02}"), &format!("zone-{zone}"), cpu, mem);
                        a.capacity.slots = slots;
                        a.used.cpu_millis = used.min(cpu);
                        if ssd {
                            a.labels.insert("ssd".into(), "true".into());
                        }
                        a
                    })
                    .collect::<Vec<_>>()
            });
    // Constraints belong to a stage: every worker of a stage shares them.
    let stages = proptest::collection::vec((strength(), strength(), strength()), 4);
    let workers = proptest::collection::vec((0..4usize, 50..1500u64, 50..1500u64), 0..40);
    let requests = (stages, workers).prop_map(|(stages, workers)| {
        workers
            .into_iter()
            .enumerate()
            .map(|(i, (stage, cpu, mem))| {
                let (unique, zone, label) = stages[stage];
                let constraints = Constraints {
                    unique_agent: unique,
                    zone_balance: zone,
                    labels: vec![("ssd".into(), "true".into(), label)],
                };
                worker("job", &format!("stage-{stage}"), i as u32, cpu, mem, constraints)
            })
            .collect::<Vec<_>>()
    });
    (agents, requests)
}

proptest! {
    #[test]
    fn placements_keep_every_invariant((agents, requests) in fixture(), spread in any::<bool>()) {
        let fitness = if spread { Fitness::Spread } else { Fitness::BinPack };
        let p = plan(&agents, &requests, fitness);
        // Same input, same output.
        prop_assert_eq!(&p, &plan(&agents, &requests, fitness));
        // Every worker is either assigned or has a reason, once.
        prop_assert_eq!(p.assigned.len() + p.unplaced.len(), requests.len());
        let by_key: HashMap<&WorkerKey, &Request> = requests.iter().map(|r| (&r.key, r)).collect();
        let by_id: HashMap<&str, &Agent> = agents.iter().map(|a| (a.id.as_str(), a)).collect();
        // No agent over capacity.
        let mut used: HashMap<&str, Resources> = agents.iter().map(|a| (a.id.as_str(), a.used)).collect();
        for (key, agent) in &p.assigned {
            let u = used.get_mut(agent.as_str()).unwrap();
            *u = u.plus(&by_key[key].needs);
        }
        for a in &agents {
            prop_assert!(a.capacity.fits(&used[a.id.as_str()]), "{} over capacity", a.id);
        }
        // Every hard constraint holds.
        let mut per_stage_agent: HashMap<(&StageKey, &str), u32> = HashMap::new();
        for (key, agent) in &p.assigned {
            *per_stage_agent.entry((&key.stage, agent.as_str())).or_default() += 1;
        }
        for (key, agent) in &p.assigned {
            let c = &by_key[key].constraints;
            if c.unique_agent == Strength::Hard {
                prop_assert_eq!(per_stage_agent[&(&key.stage, agent.as_str())], 1, "two workers of {:?} on {}", key.stage, agent);
            }
            for (k, v, s) in &c.labels {
                if *s == Strength::Hard {
                    prop_assert_eq!(by_id[agent.as_str()].labels.get(k), Some(v));
                }
            }
        }
        for (_, reason) in &p.unplaced {
            prop_assert!(!reason.is_empty());
        }
    }
}
