//! The trait a stage implements, and its error.

use squilla_batch::{BatchBuilder, BatchError, BatchView};

use crate::Params;
use crate::handoff::HandOff;

/// A stage: the state of one worker and what it does with batches.
///
/// The platform creates one value per worker with [`Stage::init`], then calls
/// [`Stage::process`] once per input batch and [`Stage::tick`] on the stage's timer. Calls
/// never overlap. If a call traps (a panic is a trap), the value is thrown away and the next
/// batch reaches a fresh one made by `init` with the same parameters.
pub trait Stage: Sized + 'static {
    /// Builds the worker's state from the job's parameters. An error fails the worker with
    /// its message.
    fn init(params: &Params) -> Result<Self, StageError>;

    /// Processes one batch: read `input` in place, write what to emit into `output`.
    fn process(&mut self, input: BatchView<'_>, output: &mut BatchBuilder) -> Result<(), StageError>;

    /// Called on the stage's timer with the current time (ms since the Unix epoch); write
    /// into `output` what is due, e.g. the results of windows that have closed. Does nothing
    /// unless overridden.
    fn tick(&mut self, now_ms: i64, output: &mut BatchBuilder) -> Result<(), StageError> {
        let _ = (now_ms, output);
        Ok(())
    }

    /// The worker's keyed state, if it should move with its key groups when the stage is
    /// rescaled (see [`crate::handoff`]). Defining this method makes `#[stage]` export the
    /// `keyed-state` interface; a stage that does not keeps its state where it is.
    fn state(&mut self) -> Option<&mut dyn HandOff> {
        None
    }
}

/// A failure a stage reports for one call instead of trapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    /// What went wrong, for a person.
    pub message: String,
    /// Whether the same call might succeed if tried again.
    pub retryable: bool,
}

impl StageError {
    /// A failure that will happen again with the same input.
    pub fn new(message: impl Into<String>) -> Self {
        StageError { message: message.into(), retryable: false }
    }

    /// A failure worth retrying (a transient condition).
    pub fn retryable(message: impl Into<String>) -> Self {
        StageError { message: message.into(), retryable: true }
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StageError {}

impl From<BatchError> for StageError {
    fn from(err: BatchError) -> Self {
        StageError::new(err.to_string())
    }
}
