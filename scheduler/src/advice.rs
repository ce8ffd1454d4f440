//! Agent-pool advice (`GET /api/v1/agents/advice`), Mantis's resource-cluster rules as a pure
//! function: per agent group (a zone), keep between `min-idle` and `max-idle` idle agents (alive,
//! with nothing placed on them), and after the group changed (an agent joined or was lost)
//! advise nothing for `cooldown` while the change settles. Workers waiting for a place are
//! fleet-wide: beyond the free slots of the fleet they need `ceil(short / slots per agent)`
//! more agents (a worker held back by its constraints while slots are free is not a reason
//! to grow). The master only advises; whoever runs the machines acts.

use std::collections::BTreeMap;

use serde::Serialize;

/// The rules (master flags `--pool-min-idle`, `--pool-max-idle`, `--pool-cooldown-secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRules {
    /// Idle agents each group should keep at least (default 0).
    pub min_idle: u32,
    /// Idle agents beyond which a group should shrink (default 2).
    pub max_idle: u32,
    /// How long after a change of a group nothing is advised for it, ms (default 300 s).
    pub cooldown_ms: i64,
}

impl Default for PoolRules {
    fn default() -> Self {
        PoolRules { min_idle: 0, max_idle: 2, cooldown_ms: 300_000 }
    }
}

/// An agent as the advice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolAgent {
    /// Its group.
    pub zone: String,
    /// Its worker slots.
    pub slots: u64,
    /// Slots taken by what is placed on it.
    pub reserved_slots: u64,
    /// Whether the master has lost it.
    pub lost: bool,
    /// When its group last changed because of it (joined, or lost), ms.
    pub changed_ms: i64,
}

/// Advice for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct GroupAdvice {
    /// The group (zone).
    pub zone: String,
    /// Its alive agents.
    pub agents: u32,
    /// Of which idle.
    pub idle: u32,
    /// Agents to add.
    pub add: u32,
    /// Idle agents to remove.
    pub remove: u32,
    /// Why, for a person.
    pub reason: String,
}

/// The whole advice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub struct Advice {
    /// Per group, by zone.
    pub groups: Vec<GroupAdvice>,
    /// Workers waiting for a place, fleet-wide.
    pub pending_workers: u32,
    /// Agents to add (anywhere their constraints allow) for the pending workers.
    pub add_for_pending: u32,
    /// The rules applied.
    pub min_idle: u32,
    /// The rules applied.
    pub max_idle: u32,
    /// The rules applied, seconds.
    pub cooldown_secs: i64,
}

/// The advice for `agents` with `pending` workers waiting, at `now_ms`.
pub fn advise(agents: &[PoolAgent], pending: u32, rules: PoolRules, now_ms: i64) -> Advice {
    let mut groups: BTreeMap<&str, (u32, u32, i64)> = BTreeMap::new();
    for agent in agents {
        let group = groups.entry(agent.zone.as_str()).or_insert((0, 0, i64::MIN));
        group.2 = group.2.max(agent.changed_ms);
        if !agent.lost {
            group.0 += 1;
            group.1 += u32::from(agent.reserved_slots == 0);
        }
    }
    let groups = groups
        .into_iter()
        .map(|(zone, (alive, idle, changed))| {
            let since = now_ms.saturating_sub(changed);
            let (mut add, mut remove) = (rules.min_idle.saturating_sub(idle), idle.saturating_sub(rules.max_idle));
            let reason = if since < rules.cooldown_ms && (add > 0 || remove > 0) {
                let wait = (rules.cooldown_ms - since + 999) / 1000;
                (add, remove) = (0, 0);
                format!("cooling down: the group changed {}s ago; ask again in {wait}s", since / 1000)
            } else if add > 0 {
                format!("{idle} idle, fewer than min-idle {}", rules.min_idle)
            } else if remove > 0 {
                format!("{idle} idle, more than max-idle {}", rules.max_idle)
            } else {
                format!("{idle} idle, within {}..={}", rules.min_idle, rules.max_idle)
            };
            GroupAdvice { zone: zone.to_owned(), agents: alive, idle, add, remove, reason }
        })
        .collect();
    let alive: Vec<&PoolAgent> = agents.iter().filter(|a| !a.lost).collect();
    let free: u64 = alive.iter().map(|a| a.slots.saturating_sub(a.reserved_slots)).sum();
    let short = u64::from(pending).saturating_sub(free);
    let mut slots: Vec<u64> = alive.iter().map(|a| a.slots.max(1)).collect();
    slots.sort_unstable();
    let per_agent = slots.get(slots.len() / 2).copied().unwrap_or(1).max(1);
    Advice {
        groups,
        pending_workers: pending,
        add_for_pending: u32::try_from(short.div_ceil(per_agent)).unwrap_or(u32::MAX),
        min_idle: rules.min_idle,
        max_idle: rules.max_idle,
        cooldown_secs: rules.cooldown_ms / 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize, zones: usize, busy_every: usize) -> Vec<PoolAgent> {
        (0..n)
            .map(|i| PoolAgent {
                zone: format!("z{}", i % zones),
                slots: 8,
                reserved_slots: if i % busy_every == 0 { 0 } else { 8 },
                lost: false,
                changed_ms: 0,
            })
            .collect()
    }

    #[test]
    fn hundreds_of_agents_keep_their_groups_idle_count_within_the_rules() {
        let rules = PoolRules { min_idle: 2, max_idle: 5, cooldown_ms: 60_000 };
        // 300 agents in 3 zones; every 10th idle: 10 idle per zone, 5 too many each.
        let advice = advise(&fleet(300, 3, 10), 0, rules, 1_000_000);
        assert_eq!(advice.groups.len(), 3);
        for g in &advice.groups {
            assert_eq!((g.agents, g.idle, g.add, g.remove), (100, 10, 0, 5), "{g:?}");
        }
        // Nobody idle: each zone needs 2 more.
        let busy: Vec<PoolAgent> =
            fleet(300, 3, 10).into_iter().map(|a| PoolAgent { reserved_slots: 8, ..a }).collect();
        let advice = advise(&busy, 0, rules, 1_000_000);
        assert!(advice.groups.iter().all(|g| (g.add, g.remove) == (2, 0)), "{advice:?}");
        // All busy and 100 workers waiting: 100 / 8 slots = 13 agents.
        assert_eq!(advise(&busy, 100, rules, 1_000_000).add_for_pending, 13);
        // Pending workers that fit in free slots are not a reason to grow.
        assert_eq!(advise(&fleet(300, 3, 10), 100, rules, 1_000_000).add_for_pending, 0);
    }

    #[test]
    fn a_group_that_just_changed_is_left_alone_for_the_cooldown() {
        let rules = PoolRules { min_idle: 0, max_idle: 1, cooldown_ms: 60_000 };
        let mut agents = fleet(10, 1, 1); // all idle
        agents[3].changed_ms = 990_000; // joined 10 s ago
        let advice = advise(&agents, 0, rules, 1_000_000);
        assert_eq!((advice.groups[0].add, advice.groups[0].remove), (0, 0));
        assert!(advice.groups[0].reason.contains("cooling down"), "{advice:?}");
        let later = advise(&agents, 0, rules, 1_100_000);
        assert_eq!(later.groups[0].remove, 9);
        // A lost agent is not counted, but its loss is a change of its group.
        agents[5].lost = true;
        agents[5].changed_ms = 1_095_000;
        let after_loss = advise(&agents, 0, rules, 1_100_000);
        assert_eq!((after_loss.groups[0].agents, after_loss.groups[0].remove), (9, 0));
    }
}
