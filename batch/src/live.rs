//! The batch a stage call is reading, registered for the call's duration, so that a builder
//! copying that batch's events in order can defer the copy — and skip it altogether when the
//! stage turns out to pass its whole input through (see `BatchBuilder::is_copy_of`).
//!
//! Only the stage glue registers (`squilla-sdk`): while its [`LiveInput`] guard lives, the
//! input's bytes are borrowed and unchanged, so a deferred copy can be made from them. Every
//! registration has its own generation; a deferred copy made under another one (a builder
//! kept past the call that made it) is refused with a panic, never read from freed memory.

use std::cell::Cell;
use std::marker::PhantomData;

use crate::{BatchView, wire};

thread_local! {
    /// The registered input: its archived batch's address and the registration's generation.
    static CURRENT: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

/// Registers a stage call's input until dropped. Not `Send`: it belongs to the calling thread.
#[derive(Debug)]
pub struct LiveInput<'a> {
    _input: PhantomData<(&'a [u8], *const ())>,
}

impl<'a> LiveInput<'a> {
    /// Registers `view`'s batch as the input of the current call (replacing any other).
    pub fn register(view: &BatchView<'a>) -> LiveInput<'a> {
        let generation = GENERATION.with(|g| {
            g.set(g.get() + 1);
            g.get()
        });
        CURRENT.with(|c| c.set(Some((view.address(), generation))));
        LiveInput { _input: PhantomData }
    }
}

impl Drop for LiveInput<'_> {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
        GENERATION.with(|g| g.set(g.get() + 1));
    }
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
    // SAFETY: the batch at `address` was registered by a `LiveInput` whose generation is still
    // current, so that guard is alive; it borrows the bytes (validated, or written by this
    // crate) for its whole lifetime, so they are alive and unchanged while `f` runs — the
    // guard belongs to this thread and cannot be dropped during `f`, which cannot keep the
    // view past its return.
    let batch = unsafe { &*(address as *const wire::ArchivedBatch) };
    Some(f(BatchView::from_archived(batch)))
}
