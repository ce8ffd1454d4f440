//! The runtime's errors, by what failed: loading an artifact, creating a worker's instance,
//! or one call into it.

use squilla_batch::BatchError;

/// Why a component was not accepted as a stage artifact.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtifactError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly binary (it does not start with the `\\0asm` magic)")]
    NotWasm,
    /// The bytes are a core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 or run `wasm-tools component new`"
    )]
    CoreModule,
    /// Over the size cap.
    #[error("component is {len} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size offered.
        len: usize,
        /// The cap ([`crate::RuntimeConfig::max_component_bytes`]).
        limit: usize,
    },
    /// Wasmtime could not validate or compile it.
    #[error("invalid component: {detail}")]
    Invalid {
        /// Wasmtime's explanation.
        detail: String,
    },
    /// Compiling it went over a budget (see `CompileConfig`); it was stopped.
    #[error("compiling the component went over its {budget} budget of {limit} and was stopped")]
    CompileBudget {
        /// Which budget: `CPU time`, `wall-clock time`, `memory` or `compiled size`.
        budget: &'static str,
        /// The budget, with its unit.
        limit: String,
    },
    /// It exports neither stage interface.
    #[error(
        "component does not export a Squilla stage: expected `squilla:stage/raw-handler@0.1.0` or \
         `squilla:stage/typed-handler@0.1.0`, found exports [{}]",
        exports.join(", ")
    )]
    NotAStage {
        /// What it exports instead.
        exports: Vec<String>,
    },
    /// It exports a stage interface whose functions do not have the contract's types.
    #[error("component exports `{interface}` but does not match it: {detail}")]
    WrongSignature {
        /// The stage interface it claims.
        interface: String,
        /// What did not match.
        detail: String,
    },
    /// It imports something a stage may not use.
    #[error("component imports `{import}`, which stages may not use")]
    ForbiddenImport {
        /// The import's name.
        import: String,
    },
    /// The engine itself could not be set up.
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

    /// Whether the same bytes would fail again wherever and whenever they are compiled: they
    /// are not a valid stage, or compiling them takes more CPU time or memory than the budget.
    /// A wall-clock overrun (the agent may have been busy) and a failure of this host's engine
    /// or system are not.
    pub fn is_permanent(&self) -> bool {
        match self {
            ArtifactError::Engine { .. } => false,
            ArtifactError::CompileBudget { budget, .. } => *budget != WALL_CLOCK,
            _ => true,
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
