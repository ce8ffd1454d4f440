//! The batch a stage call is reading, registered for the call's duration, so that a builder
//! copying that batch's events in order can defer the copy — and skip it altogether when the
//! stage turns out to pass its whole input through (see `BatchBuilder::is_copy_of`).
//!
//! Only the stage glue registers (`squilla-sdk`, with [`with_input`]). A builder that defers
//! copies keeps its own reference to the input's bytes, so the copies can be made whenever
//! they are needed — even after the call, if the builder was kept — and no other batch can
//! ever be mistaken for it. Nothing here is `unsafe`.

use std::cell::RefCell;

use crate::BatchBytes;

thread_local! {
    static CURRENT: RefCell<Option<BatchBytes>> = const { RefCell::new(None) };
}

/// Runs `f` with `input` registered as the current stage call's input (on this thread), then
/// restores whatever was registered before — also if `f` panics.
pub fn with_input<R>(input: &BatchBytes, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<BatchBytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(input.clone())));
    f()
}

/// The registered input, if its archived batch is at `address`.
pub(crate) fn input_at(address: usize) -> Option<BatchBytes> {
    CURRENT.with(|c| c.borrow().as_ref().filter(|b| b.view().address() == address).cloned())
}
