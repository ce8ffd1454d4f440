//! Spreading a batch over the worker slots of a stage (local workers and remote ones alike).
//!
//! Round-robin and broadcast hand on the same shared bytes (a reference count, no copy).
//! Key-hash must split a batch by key, so each part is archived anew: one copy per event,
//! the price of sending every event of a key to the same worker.
//!
//! **Key groups.** A key's hash picks one of [`squilla_batch::keys::KEY_GROUPS`] (4,096) key groups, and the groups are
//! dealt to a stage's `n` workers in contiguous ranges (worker `i` owns groups
//! `[i·G/n, (i+1)·G/n)`). Rescaling from `n` to `m` workers moves only the groups whose
//! owner changes, and a group — with whatever a stage keeps for its keys — moves whole. It
//! bounds a key-hashed stage's useful parallelism at 4,096 workers (a job's stage may have
//! at most 1,000).

use std::sync::atomic::{AtomicUsize, Ordering};

use squilla_batch::{BatchBuilder, BatchBytes};
use squilla_types::Routing;

use super::worker::Slot;

pub use squilla_batch::keys::{group_owner, key_group, key_hash};

/// Where each part of `batch` goes among `workers`.
pub(crate) fn split(
    routing: &Routing,
    next: &AtomicUsize,
    workers: &[Slot],
    batch: BatchBytes,
    out: &mut impl FnMut(&Slot, BatchBytes),
) {
    if workers.is_empty() {
        return;
    }
    match routing {
        Routing::RoundRobin => {
            let i = next.fetch_add(1, Ordering::Relaxed) % workers.len();
            out(&workers[i], batch);
        }
        Routing::Broadcast => {
            for worker in workers {
                out(worker, batch.clone());
            }
        }
        Routing::KeyHash { fields } => {
            if workers.len() == 1 {
                out(&workers[0], batch);
                return;
            }
            let view = batch.view();
            let mut parts: Vec<Option<BatchBuilder>> = (0..workers.len()).map(|_| None).collect();
            for event in view.events() {
                let i = group_owner(key_group(key_hash(&event, fields)), workers.len());
                parts[i]
                    .get_or_insert_with(|| {
                        BatchBuilder::new()
                            .source(view.meta().source())
                            .sequence(view.meta().sequence())
                            .created_at_ms(view.meta().created_at_ms())
                    })
                    .push_ref(event);
            }
            for (worker, part) in workers.iter().zip(parts) {
                // Archiving owned events of valid batches cannot fail short of the 2 GiB limit,
                // which a batch that was itself archived cannot reach.
                if let Some(Ok(part)) = part.map(BatchBuilder::finish) {
                    out(worker, part);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use squilla_batch::keys::KEY_GROUPS;

    use super::*;

    proptest! {
        #[test]
        fn groups_are_dealt_in_even_contiguous_ranges(workers in 1usize..=1000) {
            let owners: Vec<usize> = (0..KEY_GROUPS).map(|g| group_owner(g, workers)).collect();
            // Every owner is a worker, owners never go back (ranges), and every worker owns
            // between floor(G/n) and ceil(G/n) groups.
            prop_assert!(owners.iter().all(|&o| o < workers));
            prop_assert!(owners.windows(2).all(|w| w[0] <= w[1]));
            let mut counts = vec![0u32; workers];
            for &o in &owners {
                counts[o] += 1;
            }
            let (low, high) = (KEY_GROUPS / workers as u32, KEY_GROUPS.div_ceil(workers as u32));
            prop_assert!(counts.iter().all(|&c| c >= low && c <= high), "{counts:?}");
        }

        #[test]
        fn doubling_splits_each_workers_range_between_two_workers(workers in 1usize..=500, group in 0..KEY_GROUPS) {
            // Worker i's groups go to 2i and 2i+1: state moves only between those.
            let before = group_owner(group, workers);
            let after = group_owner(group, workers * 2);
            prop_assert!(after == 2 * before || after == 2 * before + 1, "{group}: {before} -> {after}");
        }
    }

    #[test]
    fn growing_by_one_worker_moves_only_part_of_the_groups() {
        // From 4 to 5 workers: a group keeps its owner unless its range boundary moved.
        let moved = (0..KEY_GROUPS).filter(|&g| group_owner(g, 4) != group_owner(g, 5)).count();
        assert!(moved < KEY_GROUPS as usize * 3 / 5, "{moved} of {KEY_GROUPS} groups moved");
        assert!(moved > 0);
    }
}
