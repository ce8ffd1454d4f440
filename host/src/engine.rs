//! The agent's one wasmtime engine and linker.
//!
//! Design choices, each with its reason:
//! - **Pooling allocator with copy-on-write images.** Instantiating a stage then costs a few
//!   page-table updates instead of a fresh `mmap` and a copy of the data segments; workers
//!   come and go (traps, rescaling) and must be cheap to make. If the pool's virtual memory
//!   cannot be reserved (a constrained container, a small `ulimit -v`), the engine falls back
//!   to on-demand allocation and says so in the log.
//! - **Epoch interruption.** A ticker thread bumps the engine's epoch every
//!   [`RuntimeConfig::epoch_tick`]; each call gets a deadline in ticks, so an endless loop
//!   traps within one tick of its deadline at a cost of a load and compare per loop header,
//!   far cheaper than fuel metering.
//! - **A capped wasm stack**, so that deep recursion traps instead of exhausting the host
//!   thread's stack.
//! - **Synchronous calls.** Workers run on the agent's own thread pool; a guest call never
//!   needs to yield to an async runtime.

use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings;
use crate::error::ArtifactError;
use crate::store_data::StoreData;

/// How a [`Runtime`] is set up. `Default` gives the values documented on each field.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Use the pooling allocator (default `true`; falls back to on-demand if the pool cannot
    /// be reserved).
    pub pooling: bool,
    /// Component instances the pool holds at once, i.e. live workers on this agent (default
    /// 1,000).
    pub max_instances: u32,
    /// Largest linear memory any instance may grow to, in bytes (default 1 GiB); the
    /// per-worker cap from the job spec is enforced below it.
    pub max_memory_bytes: usize,
    /// Wasm stack a call may use, in bytes (default 512 KiB).
    pub max_wasm_stack: usize,
    /// Period of the epoch ticker (default 1 ms): the granularity of call deadlines.
    pub epoch_tick: Duration,
    /// Largest component accepted, in bytes (default 64 MiB).
    pub max_component_bytes: usize,
    /// Interrupt calls that pass their deadline (default `true`). Off only to measure what
    /// the check costs: without it an endless loop in a guest holds its thread forever.
    pub epoch_interruption: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            pooling: true,
            max_instances: 1_000,
            max_memory_bytes: 1 << 30,
            max_wasm_stack: 512 << 10,
            epoch_tick: Duration::from_millis(1),
            max_component_bytes: 64 << 20,
            epoch_interruption: true,
        }
    }
}

/// One agent's wasmtime engine, linker and epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreData>,
    pub(crate) config: RuntimeConfig,
    pooling: bool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("pooling", &self.pooling).field("config", &self.config).finish()
    }
}

impl Runtime {
    /// Builds the engine (pooling if configured and possible), the linker, and starts the
    /// epoch ticker thread, which ends by itself when the engine is dropped.
    pub fn new(config: RuntimeConfig) -> Result<Self, ArtifactError> {
        let (engine, pooling) = if config.pooling {
            match Engine::new(&wasmtime_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        "cannot reserve the pooling allocator's memory; falling back to on-demand instance allocation"
                    );
                    (on_demand(&config)?, false)
                }
            }
        } else {
            (on_demand(&config)?, false)
        };

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(ArtifactError::engine)?;
        bindings::raw::squilla::stage::metrics::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |s| s)
            .map_err(ArtifactError::engine)?;
        bindings::raw::squilla::stage::log::add_to_linker::<StoreData, HasSelf<StoreData>>(&mut linker, |s| s)
            .map_err(ArtifactError::engine)?;

        let weak = engine.weak();
        let tick = config.epoch_tick;
        if config.epoch_interruption {
            std::thread::Builder::new()
                .name("squilla-epoch".into())
                .spawn(move || {
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(tick);
                    }
                })
                .map_err(|e| ArtifactError::Engine { detail: format!("cannot start the epoch ticker: {e}") })?;
        }

        Ok(Runtime { engine, linker, config, pooling })
    }

    /// Whether instances come from the pooling allocator (false after a fallback).
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The underlying wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// An engine for compiling only (a compile worker), configured as a [`Runtime`] with
/// `config` is, so that what it compiles loads there; a pooling one reserves room for one
/// instance only.
pub(crate) fn compile_engine(config: &RuntimeConfig, pooling: bool) -> Result<Engine, ArtifactError> {
    let config = RuntimeConfig { max_instances: 1, ..config.clone() };
    Engine::new(&wasmtime_config(&config, pooling)).map_err(ArtifactError::engine)
}

fn on_demand(config: &RuntimeConfig) -> Result<Engine, ArtifactError> {
    Engine::new(&wasmtime_config(config, false)).map_err(ArtifactError::engine)
}

/// Bytes of a freed slot's linear memory reset in place rather than given back to the kernel.
const MEMORY_KEEP_RESIDENT: usize = 1 << 20;
/// Bytes of a freed slot's tables reset in place.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

fn wasmtime_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(config.epoch_interruption);
    c.max_wasm_stack(config.max_wasm_stack);
    c.memory_init_cow(true);
    c.parallel_compilation(true);
    // `SQUILLA_PERF_MAP=1` names guest code for `perf` (in /tmp/perf-PID.map): profiling only.
    if std::env::var_os("SQUILLA_PERF_MAP").is_some_and(|v| v == "1") {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let instances = config.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        // Components from Python and JavaScript tool-chains hold several core modules, each
        // with its own memory and tables; allow for a few of each per component.
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_core_instances_per_component(64)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(config.max_memory_bytes)
            // Keep some slots warm (their pages resident) so re-instantiation is fast, but
            // not so many that an idle agent holds memory for workers long gone.
            .max_unused_warm_slots(64);
        // Where the kernel finds a range's dirty pages for us (the PAGEMAP_SCAN ioctl, Linux
        // 6.7+), a freed slot's memory is reset by rewriting only those pages, up to the
        // first MiB, instead of by `madvise`: the next worker in the slot takes no page faults
        // and no TLB shoot-down interrupts the other cores (instantiation 30 → 10 µs). Without
        // it, `memset` of the whole range would cost more than it saves.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.linear_memory_keep_resident(MEMORY_KEEP_RESIDENT)
                .table_keep_resident(TABLE_KEEP_RESIDENT)
                .pagemap_scan(wasmtime::Enabled::Yes);
        }
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}
