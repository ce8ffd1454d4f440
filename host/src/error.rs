//! The runtime's errors, by what failed: loading an artifact, creating a worker's instance,
//! or one call into it.

use squilla_batch::BatchError;
use squilla_component::ComponentError;

/// Why a component was not accepted as a stage artifact.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtifactError {
    /// The bytes are not a stage component (see `squilla_component`).
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// Compiling it went over a budget (see `CompileConfig`); it was stopped.
    #[error("compiling the component went over its {budget} budget of {limit} and was stopped")]
    CompileBudget {
        /// Which budget: `CPU time`, `wall-clock time`, `memory` or `compiled size`.
        budget: &'static str,
        /// The budget, with its unit.
        limit: String,
    },
    /// The engine itself could not be set up, or the system failed it.
    #[error("wasm engine: {detail}")]
    Engine {
        /// What failed.
        detail: String,
    },
}

/// The name of the wall-clock compile budget (see [`ArtifactError::CompileBudget`]).
pub(crate) const WALL_CLOCK: &str = "wall-clock time";

impl ArtifactError {
    pub(crate) fn engine(err: impl std::fmt::Display) -> Self {
        ArtifactError::Engine { detail: format!("{err:#}") }
    }

    /// The compiler's refusal of the bytes.
    pub(crate) fn invalid(err: impl std::fmt::Display) -> Self {
        ArtifactError::Component(ComponentError::Invalid { detail: format!("{err:#}") })
    }

    /// Whether the same bytes would fail again wherever and whenever they are compiled: they
    /// are not a valid stage, or compiling them takes more CPU time or memory than the budget.
    /// A wall-clock overrun (the agent may have been busy) and a failure of this host's engine
    /// or system are not.
    pub fn is_permanent(&self) -> bool {
        match self {
            ArtifactError::Engine { .. } => false,
            ArtifactError::CompileBudget { budget, .. } => *budget != WALL_CLOCK,
            ArtifactError::Component(_) => true,
        }
    }
}

/// Why a worker's instance could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InstantiateError {
    /// Instantiation failed (out of pool slots, start function trapped…).
    #[error("cannot instantiate stage: {detail}")]
    Instantiate {
        /// Wasmtime's explanation.
        detail: String,
    },
    /// The stage's `init` refused the parameters.
    #[error("stage init failed: {message}")]
    Init {
        /// The stage's message.
        message: String,
    },
    /// `init` trapped.
    #[error("stage init trapped: {0}")]
    Trap(CallError),
}

/// Why one call (`process` or `tick`) produced no output.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The guest trapped: the instance is poisoned and must be replaced.
    #[error("stage trapped: {message}")]
    Trap {
        /// The trap and its guest backtrace, as wasmtime reports it.
        message: String,
    },
    /// The call ran past its CPU deadline and was interrupted; the instance is poisoned.
    #[error("stage exceeded its {deadline_ms} ms CPU deadline and was interrupted")]
    Deadline {
        /// The deadline in force.
        deadline_ms: u64,
    },
    /// The guest reported an error for this call; the instance is still usable.
    #[error("stage error{}: {message}", if *retryable { " (retryable)" } else { "" })]
    Stage {
        /// The stage's message.
        message: String,
        /// Whether the stage says retrying may help.
        retryable: bool,
    },
    /// The guest returned bytes that are not a valid batch; the instance is still usable.
    #[error("stage returned an invalid batch: {0}")]
    InvalidOutput(#[from] BatchError),
    /// The instance trapped earlier and cannot be called again.
    #[error("instance is poisoned by an earlier trap; create a new one")]
    Poisoned,
}

impl CallError {
    /// Whether the instance must be discarded after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, CallError::Trap { .. } | CallError::Deadline { .. } | CallError::Poisoned)
    }
}
