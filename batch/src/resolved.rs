//! Field names resolved to indexes of a batch's name table, remembered per thread for the
//! batch being read, so that [`crate::EventRef::get`] compares strings once per batch instead
//! of once per field of every event.
//!
//! The memory is keyed by the name table's address, which a later batch may reuse: every
//! remembered index is checked against the table (one string comparison) before it is used,
//! so the index used always holds the name asked for — and, names being distinct in every
//! batch (validation refuses a table that repeats one), no other index does. A name the table
//! lacks is not remembered and takes the full comparison.

use std::cell::RefCell;

use rkyv::string::ArchivedString;
use rkyv::vec::ArchivedVec;

use crate::view::same_name;

/// Names remembered per table, at most; more start the memory afresh.
const NAMES: usize = 16;

#[derive(Default)]
struct Resolved {
    /// Address of the name table the entries index.
    table: usize,
    /// (address of the name asked for, its length, its index in the table).
    entries: Vec<(usize, usize, u32)>,
}

thread_local! {
    static RESOLVED: RefCell<Resolved> = RefCell::new(Resolved::default());
}

/// The index of `name` in `names`; `None` when the table does not hold it, or when this
/// thread's memory is in use (the caller then compares names itself).
#[inline]
pub(crate) fn index(names: &ArchivedVec<ArchivedString>, name: &str) -> Option<u32> {
    RESOLVED
        .try_with(|r| {
            let mut r = r.try_borrow_mut().ok()?;
            let table = names as *const _ as usize;
            if r.table != table {
                r.table = table;
                r.entries.clear();
            }
            let key = (name.as_ptr() as usize, name.len());
            if let Some(&(_, _, i)) = r.entries.iter().find(|(p, l, _)| (*p, *l) == key) {
                if names.get(i as usize).is_some_and(|n| same_name(n, name)) {
                    return Some(i);
                }
                // Another table at the same address: start afresh.
                r.entries.clear();
            }
            let i = names.iter().position(|n| same_name(n, name))? as u32;
            if r.entries.len() == NAMES {
                r.entries.clear();
            }
            r.entries.push((key.0, key.1, i));
            Some(i)
        })
        .ok()
        .flatten()
}
