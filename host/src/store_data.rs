//! What a worker's wasmtime `Store` holds: WASI with no capabilities, the memory limiter, and
//! the guest's log, with the host side of the `log` import.
//!
//! Its own module because three others need the type and nothing above it: the engine's
//! linker ([`crate::engine`]), the pre-linked artifacts ([`crate::artifact`]) and the
//! instances made from them ([`crate::instance`]).

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::{Level, raw};
use crate::logs::{LogLevel, LogRing};

/// Enforces a cap over all the memories of an instance and tracks what they hold.
pub(crate) struct MemoryLimiter {
    cap: usize,
    /// Linear memory the instance holds, in bytes.
    pub(crate) used: usize,
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

/// The data of one worker's store.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: LogRing,
}

impl StoreData {
    /// Data for a store whose memories may hold `memory_bytes` in all and whose log keeps
    /// `log_lines` lines.
    pub(crate) fn new(memory_bytes: usize, log_lines: usize) -> Self {
        StoreData {
            // No preopened directories, no environment, no arguments; stdin is empty and
            // stdout/stderr are discarded: a stage communicates through batches and `log`.
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter { cap: memory_bytes, used: 0 },
            log: LogRing::with_capacity(log_lines),
        }
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl raw::squilla::stage::log::Host for StoreData {
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

impl raw::squilla::stage::types::Host for StoreData {}
