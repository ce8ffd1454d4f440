//! The batch a stage call is reading, registered for the call's duration, so that a builder
//! copying that batch's events in order can defer the copy — and skip it altogether when the
//! stage turns out to pass its whole input through (see `BatchBuilder::is_copy_of`).
//!
//! Only the stage glue registers (`squilla-sdk`, with [`with_input`]): during the call the
//! input's bytes are borrowed and unchanged, so a deferred copy can be made from them. Every
//! registration has its own generation; a deferred copy made under another one (a builder
//! kept past the call that made it) is refused with a panic, never read from freed memory.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{BatchView, wire};

thread_local! {
    /// The registered input: its archived batch's address and the registration's generation.
    static CURRENT: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// Registrations are numbered across all threads, so that a builder moved to another thread
/// can never mistake a registration there for its own.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Runs `f` with `view`'s batch registered as the current stage call's input (on this thread),
/// then restores whatever was registered before — also if `f` panics. The registration
/// cannot outlive this call (there is no guard to leak), and `view`'s bytes are borrowed for
/// all of it.
pub fn with_input<R>(view: &BatchView<'_>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(usize, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let _restore = Restore(CURRENT.with(|c| c.replace(Some((view.address(), generation)))));
    f()
}

/// The generation under which the batch at `address` is the registered input, if it is.
pub(crate) fn generation_of(address: usize) -> Option<u64> {
    CURRENT.with(|c| c.get()).filter(|(a, _)| *a == address).map(|(_, g)| g)
}

/// Runs `f` on the registered input at `address`, if it is still registered under
/// `generation`.
pub(crate) fn with_view<R>(address: usize, generation: u64, f: impl FnOnce(BatchView<'_>) -> R) -> Option<R> {
    if CURRENT.with(|c| c.get()) != Some((address, generation)) {
        return None;
    }
    // SAFETY: generations are unique, so the batch at `address` is the one a `with_input` call
    // on this thread registered, and that call has not returned (returning restores the
    // previous registration); it borrows the bytes (validated, or written by this crate) for
    // its whole duration, so they are alive and unchanged while `f` runs, and `f` cannot keep
    // the view past its return.
    let batch = unsafe { &*(address as *const wire::ArchivedBatch) };
    Some(f(BatchView::from_archived(batch)))
}
