//! State hand-off: a key group's state follows the group when a key-hashed stage is rescaled.
//!
//! Only stages routed `key-hash` whose artifact exports `keyed-state` take part; every other
//! stage keeps its state where it is when rescaled (as it always has).
//!
//! The protocol, per stage, when its worker count goes from `n` to `m` on an agent (each agent
//! applies the plan it is given, in the order it is given):
//!
//! 1. Every local worker that *gains* groups (owner under `m` but not under `n`) marks them
//!    *pending* before the new slots take effect: input for a pending group is held, not
//!    processed.
//! 2. The slots are swapped: senders here route by `m` from now on.
//! 3. Every local worker that *loses* groups is asked for their state (`snapshot`, between two
//!    of its calls), and the state goes, as a [`StateParcel`] per new owner, to that owner —
//!    a worker here, or the transport towards another agent.
//! 4. A worker that receives a parcel restores the groups it owns (clearing them from pending
//!    and releasing what it held for them) and forwards the rest to their owners.
//!
//! Every worker also checks, batch by batch, that it owns each event's group under the count
//! it knows: a sender that has not applied the new plan yet (another agent, or a batch
//! queued before the change) sends to the old owner, which forwards. So each event is
//! processed once, by the worker that holds its group's state. A group still pending after
//! [`HOLD_LIMIT`] (its parcel was lost: a connection broke, an agent failed) is released and
//! counted as timed out: its input is processed from then on, without the lost state, and a
//! parcel arriving later is still merged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use squilla_batch::keys::{KEY_GROUPS, group_owner, key_group, key_hash};
use squilla_batch::{BatchBuilder, BatchBytes, BatchView};

/// How long a worker holds input for a group whose state has not arrived.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// State of some key groups on its way to their new owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateParcel {
    /// Every group handed over (also those without state): the receiver stops holding them.
    pub groups: Vec<u32>,
    /// The state of the groups that had any, as the stage's `snapshot` encoded it.
    pub parts: Vec<(u32, Vec<u8>)>,
}

impl StateParcel {
    /// Bytes of state carried.
    pub fn state_bytes(&self) -> usize {
        self.parts.iter().map(|(_, b)| b.len()).sum()
    }

    /// Splits the parcel by the owner of each group among `workers`.
    pub fn split_by_owner(self, workers: usize) -> Vec<(usize, StateParcel)> {
        let mut by_owner: Vec<(usize, StateParcel)> = Vec::new();
        let at = |owner: usize, by_owner: &mut Vec<(usize, StateParcel)>| match by_owner
            .iter()
            .position(|(o, _)| *o == owner)
        {
            Some(i) => i,
            None => {
                by_owner.push((owner, StateParcel::default()));
                by_owner.len() - 1
            }
        };
        for group in self.groups {
            let i = at(group_owner(group, workers), &mut by_owner);
            by_owner[i].1.groups.push(group);
        }
        for (group, bytes) in self.parts {
            let i = at(group_owner(group, workers), &mut by_owner);
            by_owner[i].1.parts.push((group, bytes));
        }
        by_owner
    }
}

/// A set of key groups.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct GroupSet([u64; KEY_GROUPS as usize / 64]);

impl Default for GroupSet {
    fn default() -> Self {
        GroupSet([0; KEY_GROUPS as usize / 64])
    }
}

impl GroupSet {
    pub fn contains(&self, group: u32) -> bool {
        group < KEY_GROUPS && self.0[group as usize / 64] & (1 << (group % 64)) != 0
    }

    pub fn insert(&mut self, group: u32) {
        if group < KEY_GROUPS {
            self.0[group as usize / 64] |= 1 << (group % 64);
        }
    }

    pub fn remove(&mut self, group: u32) -> bool {
        let had = self.contains(group);
        if had {
            self.0[group as usize / 64] &= !(1 << (group % 64));
        }
        had
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// The groups worker `index` gains when its stage goes from `from` to `to` workers.
pub(crate) fn gained(index: usize, from: usize, to: usize) -> impl Iterator<Item = u32> {
    (0..KEY_GROUPS).filter(move |&g| group_owner(g, to) == index && group_owner(g, from) != index)
}

/// The groups worker `index` loses when its stage goes from `from` to `to` workers (all it
/// owned, if it is removed: `index >= to`).
pub(crate) fn lost(index: usize, from: usize, to: usize) -> Vec<u32> {
    (0..KEY_GROUPS).filter(|&g| group_owner(g, from) == index && (index >= to || group_owner(g, to) != index)).collect()
}

/// What a hand-off-capable worker keeps besides its instance: the groups it waits for and the
/// input it holds for them. Locked briefly, never across a guest call.
#[derive(Default)]
pub(crate) struct Holding {
    pub pending: GroupSet,
    /// When the oldest pending group started waiting.
    pub since: Option<Instant>,
    /// Input for pending groups.
    pub held: VecDeque<BatchBytes>,
    /// Input released (its groups' state arrived), to process before the inbox.
    pub ready: VecDeque<BatchBytes>,
}

impl Holding {
    /// Marks `groups` pending (held until their state arrives).
    pub fn expect(&mut self, groups: impl Iterator<Item = u32>) {
        let before = self.pending.len();
        groups.for_each(|g| self.pending.insert(g));
        if self.pending.len() > before && self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// Stops waiting for the groups worker `index` of `workers` does not own.
    pub fn keep_owned(&mut self, index: usize, workers: usize) {
        for group in 0..KEY_GROUPS {
            if self.pending.contains(group) && group_owner(group, workers) != index {
                self.pending.remove(group);
            }
        }
        if self.pending.is_empty() {
            self.since = None;
        }
    }

    /// Stops waiting for `group`; true if it was pending.
    pub fn arrived(&mut self, group: u32) -> bool {
        let had = self.pending.remove(group);
        if self.pending.is_empty() {
            self.since = None;
        }
        had
    }

    /// Whether the oldest pending group has waited past [`HOLD_LIMIT`].
    pub fn timed_out(&self) -> bool {
        self.since.is_some_and(|s| s.elapsed() >= HOLD_LIMIT)
    }

    /// Gives up on every pending group; returns how many there were.
    pub fn release_all(&mut self) -> usize {
        let n = self.pending.len();
        self.pending = GroupSet::default();
        self.since = None;
        n
    }
}

/// How the events of a batch fall for worker `index` of `workers`: to process now, to hold
/// (their group is pending), or to forward (another worker owns their group).
pub(crate) struct Sorted {
    pub now: Option<BatchBytes>,
    pub hold: Option<BatchBytes>,
    pub forward: Option<BatchBytes>,
}

/// Sorts `batch` for worker `index` of `workers` by its events' key groups. A batch whose
/// events are all for groups the worker owns and holds (the usual case) is passed on as it
/// is, after one pass over its keys.
pub(crate) fn sort(batch: BatchBytes, fields: &[String], index: usize, workers: usize, pending: &GroupSet) -> Sorted {
    let view = batch.view();
    let place = |event: &squilla_batch::EventRef<'_>| {
        let group = key_group(key_hash(event, fields));
        if group_owner(group, workers) != index {
            2
        } else if pending.contains(group) {
            1
        } else {
            0
        }
    };
    if view.events().all(|e| place(&e) == 0) {
        return Sorted { now: Some(batch), hold: None, forward: None };
    }
    let mut parts: [Option<BatchBuilder>; 3] = [None, None, None];
    for event in view.events() {
        parts[place(&event)].get_or_insert_with(|| builder_like(&view)).push_ref(event);
    }
    // Archiving events of a valid batch cannot fail short of the 2 GiB limit, which a batch
    // that was itself archived cannot reach.
    let [now, hold, forward] = parts.map(|p| p.and_then(|b| b.finish().ok()));
    Sorted { now, hold, forward }
}

fn builder_like(view: &BatchView<'_>) -> BatchBuilder {
    BatchBuilder::new()
        .source(view.meta().source())
        .sequence(view.meta().sequence())
        .created_at_ms(view.meta().created_at_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_gained_and_lost_match_across_a_rescale() {
        for (from, to) in [(2, 5), (5, 3), (1, 4), (4, 1), (3, 3)] {
            let mut gains = vec![0u32; KEY_GROUPS as usize];
            let mut losses = vec![0u32; KEY_GROUPS as usize];
            for i in 0..to {
                gained(i, from, to).for_each(|g| gains[g as usize] += 1);
            }
            for i in 0..from {
                lost(i, from, to).into_iter().for_each(|g| losses[g as usize] += 1);
            }
            // A group moves iff its owner changes; each moving group is lost once and gained once.
            for g in 0..KEY_GROUPS {
                let moves = group_owner(g, from) != group_owner(g, to);
                assert_eq!(
                    (gains[g as usize], losses[g as usize]),
                    if moves { (1, 1) } else { (0, 0) },
                    "{from}->{to} {g}"
                );
            }
        }
    }

    #[test]
    fn a_parcel_splits_by_the_owner_of_each_group() {
        let parcel = StateParcel { groups: vec![0, 1, 4095], parts: vec![(0, vec![1]), (4095, vec![2, 3])] };
        assert_eq!(parcel.state_bytes(), 3);
        let split = parcel.split_by_owner(2);
        assert_eq!(
            split,
            vec![
                (0, StateParcel { groups: vec![0, 1], parts: vec![(0, vec![1])] }),
                (1, StateParcel { groups: vec![4095], parts: vec![(4095, vec![2, 3])] }),
            ]
        );
    }

    #[test]
    fn a_batch_is_sorted_into_now_held_and_forwarded_events() {
        let fields = vec!["k".to_string()];
        let mut b = BatchBuilder::new();
        let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
        for key in &keys {
            b.event(1).field("k", key.as_str());
        }
        let batch = BatchBytes::validate(b.into_vec().unwrap()).unwrap();
        let group = |k: &str| squilla_batch::keys::text_key_group(k);
        let mut pending = GroupSet::default();
        let mine: Vec<&String> = keys.iter().filter(|k| group_owner(group(k), 2) == 0).collect();
        pending.insert(group(mine[0]));
        let sorted = sort(batch.clone(), &fields, 0, 2, &pending);
        let count = |b: &Option<BatchBytes>| b.as_ref().map_or(0, |b| b.len());
        let held = keys.iter().filter(|k| group(k) == group(mine[0])).count();
        assert_eq!(count(&sorted.hold), held);
        assert_eq!(count(&sorted.now), mine.len() - held);
        assert_eq!(count(&sorted.forward), keys.len() - mine.len());
        // One worker owning everything, nothing pending: the batch passes as it is.
        let sorted = sort(batch.clone(), &fields, 0, 1, &GroupSet::default());
        assert!(sorted.now.is_some_and(|b| b.as_bytes() == batch.as_bytes()));
    }
}
