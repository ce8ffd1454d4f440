//! The Squilla agent runtime: runs many tenants' stage components side by side, each in its
//! own wasmtime sandbox.
//!
//! The key types:
//!
//! - [`Runtime`]: one per agent. Owns the wasmtime `Engine` (pooling allocator with
//!   copy-on-write memory images where the pool can be reserved, epoch interruption driven by
//!   a ticker thread, a capped wasm stack) and the `Linker` holding the few imports a stage
//!   may use.
//! - [`Artifact`]: a component compiled once per sha256, checked to export a stage world
//!   (raw or typed, see `wit/stage.wit`) and to import nothing outside the allowlist, and
//!   pre-linked so that each worker instantiates it cheaply.
//! - [`ArtifactCache`]: artifacts by sha256, compiled once (on a thread of its own, within a
//!   time limit) and optionally kept on disk, where only code this host wrote is ever loaded.
//! - [`StageInstance`]: one worker's sandbox: a `Store` with memory limits, a CPU deadline per
//!   call, a bounded log, and the stage calls `init`, `process`, `tick`.
//!
//! - [`Executor`]: the agent's fixed pool of threads (one per core) that runs every worker in
//!   turns, and the clock behind stage ticks.
//! - [`pipeline::Pipeline`]: one job's workers on this agent, the bounded queues between
//!   them, routing, backpressure and metrics.
//! - [`transport::Transport`]: batches to and from the workers of a job that run on other
//!   agents, over TCP with credit-based flow control.
//!
//! Batches cross into the host as [`squilla_batch::BatchBytes`]: whatever a guest returns is
//! validated once, here, before anything else reads it.
//!
//! The modules depend on each other one way only, lowest first: `bindings`, `typed`, `error`,
//! `logs`, `lease`; `store_data` (what a worker's wasmtime store holds); `engine`
//! ([`Runtime`]); `artifact`; `instance`; `compile` and `cache`; `executor`, which knows
//! workers only as its `Task` trait; [`pipeline`]; [`transport`]. Where a lower module must call back into a
//! higher one (the executor or an inbox into a worker, a worker into its pipeline), the lower
//! one defines a small trait that the higher one implements.

mod artifact;
mod bindings;
mod cache;
pub mod compile;
mod engine;
mod error;
mod executor;
mod instance;
mod lease;
mod logs;
pub mod pipeline;
mod store_data;
pub mod transport;
mod typed;

pub use artifact::{ALLOWED_IMPORTS, Artifact, Flavour, RAW_EXPORT, Sha256, TYPED_EXPORT};
pub use cache::{ArtifactCache, CacheStats, SharedCache};
pub use compile::{CompileConfig, CompileIsolation};
pub use engine::{Runtime, RuntimeConfig};
pub use error::{ArtifactError, CallError, InstantiateError};
pub use executor::Executor;
pub use instance::{Limits, StageInstance};
pub use lease::Lease;
pub use logs::{LogLevel, LogLine, LogRing};
pub use squilla_component::ComponentError;
