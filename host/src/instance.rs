//! One worker's sandbox: a store with limits, an instance of the stage, and the calls.

use std::time::Duration;

use squilla_batch::BatchBytes;
use wasmtime::{Store, Trap, WasmBacktrace};

use crate::artifact::{Artifact, Pre};
use crate::bindings::{WitStageError, keyed, raw, typed};
use crate::engine::Runtime;
use crate::error::{CallError, InstantiateError};
use crate::logs::{LOG_LINES, LogRing};
use crate::store_data::StoreData;
use crate::typed as convert;

/// The limits of one worker. `Default` gives the values documented on each field.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Total linear memory the worker's instance may hold, in bytes (default 64 MiB). Growing
    /// past it traps with a message naming the cap.
    pub memory_bytes: usize,
    /// CPU time one call may take before it is interrupted (default 1 s). Rounded up to the
    /// runtime's epoch tick; a call is interrupted between one and two ticks past it.
    pub call_deadline: Duration,
    /// Lines of guest log kept (default 256).
    pub log_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 64 << 20, call_deadline: Duration::from_secs(1), log_lines: LOG_LINES }
    }
}

/// The stage's exports, in the flavour the component implements. Each call matches on it
/// once and calls the export of that flavour.
enum Handler {
    Raw(raw::RawStage),
    Keyed(keyed::RawKeyedStage),
    Typed(typed::TypedStage),
}

/// State of key groups, as a stage's `keyed-state.snapshot` returns it: bytes per group.
pub type GroupState = Vec<(u32, Vec<u8>)>;

/// A worker's store and the rules of every call into it: the epoch deadline, and poisoning
/// after a trap.
struct Sandbox {
    store: Store<StoreData>,
    deadline_ticks: u64,
    deadline_ms: u64,
    epochs: bool,
    poisoned: bool,
}

impl Sandbox {
    /// Runs one guest call under the deadline, poisoning the sandbox if it traps.
    fn call<R>(&mut self, f: impl FnOnce(&mut Store<StoreData>) -> wasmtime::Result<R>) -> Result<R, CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        if self.epochs {
            self.store.set_epoch_deadline(self.deadline_ticks);
        }
        f(&mut self.store).map_err(|err| {
            self.poisoned = true;
            if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                CallError::Deadline { deadline_ms: self.deadline_ms }
            } else {
                CallError::Trap { message: trap_message(&err) }
            }
        })
    }
}

/// A live instance of a stage: one worker's sandbox.
///
/// After a trap or an interrupted call the instance is *poisoned*: every later call answers
/// [`CallError::Poisoned`], and the owner replaces it with a fresh one.
pub struct StageInstance {
    sandbox: Sandbox,
    handler: Handler,
}

impl std::fmt::Debug for StageInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageInstance")
            .field("poisoned", &self.sandbox.poisoned)
            .field("memory", &self.memory_bytes())
            .finish()
    }
}

impl Artifact {
    /// Creates a worker's instance under `limits` and calls the stage's `init` with `params`.
    pub fn instantiate(
        &self,
        runtime: &Runtime,
        limits: &Limits,
        params: &[(String, String)],
    ) -> Result<StageInstance, InstantiateError> {
        let mut store = Store::new(&runtime.engine, StoreData::new(limits.memory_bytes, limits.log_lines));
        store.limiter(|s| &mut s.limiter);
        let epochs = runtime.config.epoch_interruption;
        if epochs {
            store.epoch_deadline_trap();
        }
        let tick = runtime.config.epoch_tick.as_nanos().max(1);
        let deadline_ticks = limits.call_deadline.as_nanos().div_ceil(tick).max(1) as u64;
        if epochs {
            store.set_epoch_deadline(deadline_ticks);
        }
        let instantiate = |e: wasmtime::Error| InstantiateError::Instantiate { detail: format!("{e:#}") };
        let handler = match self.pre() {
            Pre::Raw(pre) => Handler::Raw(pre.instantiate(&mut store).map_err(instantiate)?),
            Pre::Keyed(pre) => Handler::Keyed(pre.instantiate(&mut store).map_err(instantiate)?),
            Pre::Typed(pre) => Handler::Typed(pre.instantiate(&mut store).map_err(instantiate)?),
        };
        let mut instance = StageInstance {
            sandbox: Sandbox {
                store,
                deadline_ticks,
                deadline_ms: limits.call_deadline.as_millis() as u64,
                epochs,
                poisoned: false,
            },
            handler,
        };
        // The bindings take the parameters as a `Vec`.
        let params = params.to_vec();
        let sandbox = &mut instance.sandbox;
        let result = match &instance.handler {
            Handler::Raw(h) => sandbox.call(|store| h.squilla_stage_raw_handler().call_init(store, &params)),
            Handler::Keyed(h) => sandbox.call(|store| h.squilla_stage_raw_handler().call_init(store, &params)),
            Handler::Typed(h) => sandbox.call(|store| h.squilla_stage_typed_handler().call_init(store, &params)),
        };
        match result {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(InstantiateError::Init { message }),
            Err(trap) => Err(InstantiateError::Trap(trap)),
        }
    }
}

impl StageInstance {
    /// Processes one batch and returns the stage's output, validated.
    pub fn process(&mut self, batch: &BatchBytes) -> Result<BatchBytes, CallError> {
        let sandbox = &mut self.sandbox;
        match &self.handler {
            Handler::Raw(h) => raw_output(
                batch,
                sandbox.call(|store| h.squilla_stage_raw_handler().call_process(store, batch.as_bytes()))?,
            ),
            Handler::Keyed(h) => raw_output(
                batch,
                sandbox.call(|store| h.squilla_stage_raw_handler().call_process(store, batch.as_bytes()))?,
            ),
            Handler::Typed(h) => {
                let events = convert::to_wit(batch.view());
                let out = sandbox.call(|store| h.squilla_stage_typed_handler().call_process(store, &events))?;
                Ok(convert::from_wit(&out.map_err(stage_error)?)?)
            }
        }
    }

    /// Lets the stage emit what is due at `now_ms` (ms since the Unix epoch).
    pub fn tick(&mut self, now_ms: i64) -> Result<BatchBytes, CallError> {
        let sandbox = &mut self.sandbox;
        match &self.handler {
            Handler::Raw(h) => {
                let out = sandbox.call(|store| h.squilla_stage_raw_handler().call_tick(store, now_ms))?;
                Ok(BatchBytes::validate(out.map_err(stage_error)?)?)
            }
            Handler::Keyed(h) => {
                let out = sandbox.call(|store| h.squilla_stage_raw_handler().call_tick(store, now_ms))?;
                Ok(BatchBytes::validate(out.map_err(stage_error)?)?)
            }
            Handler::Typed(h) => {
                let out = sandbox.call(|store| h.squilla_stage_typed_handler().call_tick(store, now_ms))?;
                Ok(convert::from_wit(&out.map_err(stage_error)?)?)
            }
        }
    }

    /// Whether the stage hands its keyed state over (exports `keyed-state`).
    pub fn hands_off_state(&self) -> bool {
        matches!(self.handler, Handler::Keyed(_))
    }

    /// Takes the state of key groups `groups` out of the stage (`keyed-state.snapshot`).
    /// A stage without `keyed-state` has none to give.
    pub fn snapshot(&mut self, groups: &[u32]) -> Result<GroupState, CallError> {
        match &self.handler {
            Handler::Keyed(h) => {
                let out = self.sandbox.call(|store| h.squilla_stage_keyed_state().call_snapshot(store, groups))?;
                out.map_err(stage_error)
            }
            Handler::Raw(_) | Handler::Typed(_) => Ok(Vec::new()),
        }
    }

    /// Merges state another worker's `snapshot` took into the stage (`keyed-state.restore`).
    pub fn restore(&mut self, state: &[(u32, Vec<u8>)]) -> Result<(), CallError> {
        match &self.handler {
            Handler::Keyed(h) => {
                let out = self.sandbox.call(|store| h.squilla_stage_keyed_state().call_restore(store, state))?;
                out.map_err(stage_error)
            }
            Handler::Raw(_) | Handler::Typed(_) => Ok(()),
        }
    }

    /// The lines the stage logged (since the last [`StageInstance::take_log`]).
    pub fn log(&self) -> &LogRing {
        &self.sandbox.store.data().log
    }

    /// Moves the instance's log lines into `into`, e.g. a worker's log that outlives the
    /// instance.
    pub fn take_log(&mut self, into: &mut LogRing) {
        into.absorb(&mut self.sandbox.store.data_mut().log);
    }

    /// The gauges the stage reported (`metrics.gauge`), latest value per name.
    pub fn gauges(&self) -> &[(String, f64)] {
        &self.sandbox.store.data().gauges
    }

    /// Linear memory the instance holds, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.sandbox.store.data().limiter.used
    }

    /// Whether an earlier trap made the instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.sandbox.poisoned
    }
}

/// Frames of the guest backtrace kept in a trap message: enough to locate the fault, bounded
/// because a stack overflow has thousands.
const TRAP_FRAMES: usize = 8;

/// The cause of a trap (e.g. `wasm trap: call stack exhausted`, or the memory limiter's
/// message) followed by the innermost guest frames.
fn trap_message(err: &wasmtime::Error) -> String {
    let mut message = err.root_cause().to_string();
    if let Some(backtrace) = err.downcast_ref::<WasmBacktrace>() {
        let frames = backtrace.frames();
        for frame in frames.iter().take(TRAP_FRAMES) {
            let name = frame.func_name().unwrap_or("<unknown>");
            message.push_str(&format!("\n  at {name} (function {})", frame.func_index()));
        }
        if frames.len() > TRAP_FRAMES {
            message.push_str(&format!("\n  … {} more frames", frames.len() - TRAP_FRAMES));
        }
    }
    message
}

/// A raw stage's output, validated — or the input itself when the stage returned the same
/// bytes (a filter that kept everything), which is then shared instead of validated again.
fn raw_output(input: &BatchBytes, out: Result<Vec<u8>, WitStageError>) -> Result<BatchBytes, CallError> {
    let out = out.map_err(stage_error)?;
    if out.as_slice() == input.as_bytes() {
        return Ok(input.clone());
    }
    Ok(BatchBytes::validate(out)?)
}

fn stage_error(err: WitStageError) -> CallError {
    CallError::Stage { message: err.message, retryable: err.retryable }
}
