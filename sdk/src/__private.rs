//! What `#[squilla_sdk::stage]` expands to calls into; not a public API.
//!
//! The bindings are generated from `wit/stage.wit` (world `raw-stage`). The glue keeps one
//! stage value per instance in a thread-local (a component instance is single-threaded and
//! never re-entered) and turns the raw bytes the host passes into a [`BatchView`].

use std::cell::RefCell;
use std::thread::LocalKey;

use squilla_batch::{BatchBuilder, BatchBytes};

use crate::{Params, Stage, StageError};

#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "squilla:stage/raw-stage",
        pub_export_macro: true,
        default_bindings_module: "::squilla_sdk::__private::bindings",
    });
}

/// The bindings of the `raw-keyed-stage` world, for stages that hand their keyed state over
/// (they define [`Stage::state`]).
pub use squilla_sdk_keyed as keyed_bindings;

pub use bindings::export;
pub use bindings::exports::squilla::stage::raw_handler::Guest;
pub use bindings::squilla::stage::types::StageError as WitStageError;
pub use keyed_bindings::export as export_keyed;
pub use keyed_bindings::exports::squilla::stage::keyed_state::Guest as KeyedStateGuest;
pub use keyed_bindings::exports::squilla::stage::raw_handler::Guest as KeyedGuest;
pub use keyed_bindings::squilla::stage::types::StageError as KeyedWitStageError;

/// The per-instance home of the stage value.
pub struct StateCell<S>(RefCell<Option<S>>);

impl<S> StateCell<S> {
    /// Empty until `init`.
    pub const fn new() -> Self {
        StateCell(RefCell::new(None))
    }
}

impl<S> Default for StateCell<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl From<StageError> for WitStageError {
    fn from(err: StageError) -> Self {
        WitStageError { message: err.message, retryable: err.retryable }
    }
}

impl From<StageError> for KeyedWitStageError {
    fn from(err: StageError) -> Self {
        KeyedWitStageError { message: err.message, retryable: err.retryable }
    }
}

fn not_initialised() -> StageError {
    StageError::new("stage called before a successful init")
}

/// `init`: builds the stage value from the parameters.
pub fn init<S: Stage>(cell: &'static LocalKey<StateCell<S>>, params: Vec<(String, String)>) -> Result<(), String> {
    let stage = S::init(&Params::new(params)).map_err(|e| e.message)?;
    cell.with(|c| *c.0.borrow_mut() = Some(stage));
    Ok(())
}

/// `process`: reads the batch in place and returns the archived output — the input bytes
/// themselves when the stage copied every input event in order and nothing else (the copies
/// are then never made; see `squilla_batch::live`).
pub fn process<S: Stage>(cell: &'static LocalKey<StateCell<S>>, batch: Vec<u8>) -> Result<Vec<u8>, StageError> {
    #[cfg(debug_assertions)]
    squilla_batch::BatchView::validate(&batch).map_err(StageError::from)?;
    // SAFETY: the host validates every batch before passing it to a stage (see `raw-handler`
    // in the WIT). A debug build of the stage checks it again above.
    let input = unsafe { BatchBytes::from_validated(batch) };
    let output = squilla_batch::live::with_input(&input, || {
        cell.with(|c| {
            let mut state = c.0.borrow_mut();
            let stage = state.as_mut().ok_or_else(not_initialised)?;
            let view = input.view();
            let mut output = BatchBuilder::with_capacity(view.len());
            stage.process(view, &mut output)?;
            if !view.is_empty() && output.is_copy_of(&view) {
                return Ok(None);
            }
            Ok::<_, StageError>(Some(output.into_vec()?))
        })
    })?;
    Ok(output.unwrap_or_else(|| input.into_vec()))
}

/// `tick`: lets the stage emit what is due at `now_ms`.
pub fn tick<S: Stage>(cell: &'static LocalKey<StateCell<S>>, now_ms: i64) -> Result<Vec<u8>, StageError> {
    cell.with(|c| {
        let mut state = c.0.borrow_mut();
        let stage = state.as_mut().ok_or_else(not_initialised)?;
        let mut output = BatchBuilder::new();
        stage.tick(now_ms, &mut output)?;
        Ok(output.into_vec()?)
    })
}

fn no_state() -> StageError {
    StageError::new("the stage's `state` returned no keyed state")
}

/// `snapshot`: takes the state of the key groups `groups` out of the stage.
pub fn snapshot<S: Stage>(
    cell: &'static LocalKey<StateCell<S>>,
    groups: Vec<u32>,
) -> Result<Vec<(u32, Vec<u8>)>, StageError> {
    cell.with(|c| {
        let mut state = c.0.borrow_mut();
        let stage = state.as_mut().ok_or_else(not_initialised)?;
        let keyed = stage.state().ok_or_else(no_state)?;
        Ok(keyed.take_groups(&crate::KeyGroups::from_list(&groups)))
    })
}

/// `restore`: merges state taken from another worker into the stage.
pub fn restore<S: Stage>(cell: &'static LocalKey<StateCell<S>>, parts: Vec<(u32, Vec<u8>)>) -> Result<(), StageError> {
    cell.with(|c| {
        let mut state = c.0.borrow_mut();
        let stage = state.as_mut().ok_or_else(not_initialised)?;
        let keyed = stage.state().ok_or_else(no_state)?;
        for (group, bytes) in parts {
            keyed.restore_group(group, &bytes)?;
        }
        Ok(())
    })
}
