//! Spreading a batch over the worker slots of a stage (local workers and remote ones alike).
//!
//! Round-robin and broadcast hand on the same shared bytes (a reference count, no copy).
//! Key-hash must split a batch by key, so each part is archived anew: one copy per event,
//! the price of sending every event of a key to the same worker.

use std::sync::atomic::{AtomicUsize, Ordering};

use squilla_batch::{BatchBuilder, BatchBytes, EventRef, ValueRef};
use squilla_types::Routing;

use super::worker::Slot;

/// FNV-1a over the key fields' values: deterministic across processes and runs, so that a
/// key maps to the same worker index everywhere.
pub(crate) fn key_hash(event: &EventRef<'_>, fields: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for field in fields {
        match event.get(field) {
            None | Some(ValueRef::Null) => eat(&[0]),
            Some(ValueRef::Bool(b)) => eat(&[1, b as u8]),
            Some(ValueRef::Int(i)) => eat(&i.to_le_bytes()),
            Some(ValueRef::Float(f)) => eat(&f.to_bits().to_le_bytes()),
            Some(ValueRef::Text(t)) => eat(t.as_bytes()),
            Some(ValueRef::Bytes(b)) => eat(b),
        }
        eat(&[0xff]);
    }
    hash
}

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
                let i = (key_hash(&event, fields) % workers.len() as u64) as usize;
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
