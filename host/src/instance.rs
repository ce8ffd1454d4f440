//! One worker's sandbox: a store with limits, an instance of the stage, and the calls.

use std::time::Duration;

use squilla_batch::BatchBytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, WasmBacktrace};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::artifact::Pre;
use crate::bindings::{Level, WitStageError, raw, typed};
use crate::error::{CallError, InstantiateError};
use crate::logs::{LogLevel, LogRing};
use crate::{Artifact, Runtime, typed as convert};

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
        Limits { memory_bytes: 64 << 20, call_deadline: Duration::from_secs(1), log_lines: crate::logs::LOG_LINES }
    }
}

/// Enforces [`Limits::memory_bytes`] over all the memories of an instance and tracks what
/// they hold.
struct MemoryLimiter {
    cap: usize,
    used: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let after = self.used - current.min(self.used) + desired;
        if after > self.cap {
            wasmtime::bail!(
                "worker memory limit of {} MiB exceeded: growing a memory from {current} to {desired} bytes would make {after} bytes in all",
                self.cap >> 20
            );
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Table elements are host memory too; bound them as a generous multiple of the cap.
        Ok(desired <= 1_000_000)
    }
}

/// What a worker's store holds: WASI with no capabilities, the limiter and the log.
pub struct WorkerState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    log: LogRing,
}

impl WasiView for WorkerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl raw::squilla::stage::log::Host for WorkerState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.log.push(level, message);
    }
}

impl raw::squilla::stage::types::Host for WorkerState {}

enum Handler {
    Raw(raw::RawStage),
    Typed(typed::TypedStage),
}

/// A live instance of a stage: one worker's sandbox.
///
/// After a trap or an interrupted call the instance is *poisoned*: every later call answers
/// [`CallError::Poisoned`], and the owner replaces it with a fresh one.
pub struct StageInstance {
    store: Store<WorkerState>,
    handler: Handler,
    deadline_ticks: u64,
    deadline_ms: u64,
    epochs: bool,
    poisoned: bool,
}

impl std::fmt::Debug for StageInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageInstance").field("poisoned", &self.poisoned).field("memory", &self.memory_bytes()).finish()
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
        let state = WorkerState {
            // No preopened directories, no environment, no arguments; stdin is empty and
            // stdout/stderr are discarded: a stage communicates through batches and `log`.
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { cap: limits.memory_bytes, used: 0 },
            log: LogRing::with_capacity(limits.log_lines),
        };
        let mut store = Store::new(&runtime.engine, state);
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
            Pre::Typed(pre) => Handler::Typed(pre.instantiate(&mut store).map_err(instantiate)?),
        };
        let mut instance = StageInstance {
            store,
            handler,
            deadline_ticks,
            deadline_ms: limits.call_deadline.as_millis() as u64,
            epochs,
            poisoned: false,
        };
        let params = params.to_vec();
        let result = instance.call(|store, handler| match handler {
            Handler::Raw(h) => h.squilla_stage_raw_handler().call_init(store, &params),
            Handler::Typed(h) => h.squilla_stage_typed_handler().call_init(store, &params),
        });
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
        match &self.handler {
            Handler::Raw(_) => {
                let out = self.call(|store, handler| match handler {
                    Handler::Raw(h) => h.squilla_stage_raw_handler().call_process(store, batch.as_bytes()),
                    Handler::Typed(_) => unreachable!("matched Raw above"),
                })?;
                let out = out.map_err(stage_error)?;
                // A stage that passes its input through (a filter keeping everything) returns
                // the same bytes: share the input instead of validating a copy.
                if out.as_slice() == batch.as_bytes() {
                    return Ok(batch.clone());
                }
                Ok(BatchBytes::validate(out)?)
            }
            Handler::Typed(_) => {
                let events = convert::to_wit(batch.view());
                let out = self.call(|store, handler| match handler {
                    Handler::Typed(h) => h.squilla_stage_typed_handler().call_process(store, &events),
                    Handler::Raw(_) => unreachable!("matched Typed above"),
                })?;
                Ok(convert::from_wit(&out.map_err(stage_error)?)?)
            }
        }
    }

    /// Lets the stage emit what is due at `now_ms` (ms since the Unix epoch).
    pub fn tick(&mut self, now_ms: i64) -> Result<BatchBytes, CallError> {
        match &self.handler {
            Handler::Raw(_) => {
                let out = self.call(|store, handler| match handler {
                    Handler::Raw(h) => h.squilla_stage_raw_handler().call_tick(store, now_ms),
                    Handler::Typed(_) => unreachable!("matched Raw above"),
                })?;
                Ok(BatchBytes::validate(out.map_err(stage_error)?)?)
            }
            Handler::Typed(_) => {
                let out = self.call(|store, handler| match handler {
                    Handler::Typed(h) => h.squilla_stage_typed_handler().call_tick(store, now_ms),
                    Handler::Raw(_) => unreachable!("matched Typed above"),
                })?;
                Ok(convert::from_wit(&out.map_err(stage_error)?)?)
            }
        }
    }

    /// The lines the stage logged (since the last [`StageInstance::take_log`]).
    pub fn log(&self) -> &LogRing {
        &self.store.data().log
    }

    /// Moves the instance's log lines into `into`, e.g. a worker's log that outlives the
    /// instance.
    pub fn take_log(&mut self, into: &mut LogRing) {
        into.absorb(&mut self.store.data_mut().log);
    }

    /// Linear memory the instance holds, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.used
    }

    /// Whether an earlier trap made the instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Runs one guest call under the deadline, poisoning the instance if it traps.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<WorkerState>, &Handler) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        if self.epochs {
            self.store.set_epoch_deadline(self.deadline_ticks);
        }
        f(&mut self.store, &self.handler).map_err(|err| {
            self.poisoned = true;
            if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                CallError::Deadline { deadline_ms: self.deadline_ms }
            } else {
                CallError::Trap { message: trap_message(&err) }
            }
        })
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

fn stage_error(err: WitStageError) -> CallError {
    CallError::Stage { message: err.message, retryable: err.retryable }
}
