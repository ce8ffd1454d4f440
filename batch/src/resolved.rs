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

struct Resolved {
    /// Address of the name table the entries index.
    table: usize,
    /// (address of the name asked for, its length, its index in the table), `len` of them.
    entries: [(usize, usize, u32); NAMES],
    len: usize,
}

thread_local! {
    // Constant and without a destructor: reaching it is a plain thread-local load.
    static RESOLVED: RefCell<Resolved> = const { RefCell::new(Resolved { table: 0, entries: [(0, 0, 0); NAMES], len: 0 }) };
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
                r.len = 0;
            }
            let key = (name.as_ptr() as usize, name.len());
            let len = r.len;
            if let Some(&(_, _, i)) = r.entries[..len].iter().find(|(p, l, _)| (*p, *l) == key) {
                if names.get(i as usize).is_some_and(|n| same_name(n, name)) {
                    return Some(i);
                }
                // Another table at the same address: start afresh.
                r.len = 0;
            }
            let i = names.iter().position(|n| same_name(n, name))? as u32;
            if r.len == NAMES {
                r.len = 0;
            }
            let at = r.len;
            r.entries[at] = (key.0, key.1, i);
            r.len += 1;
            Some(i)
        })
        .ok()
        .flatten()
}
