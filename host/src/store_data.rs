//! What a worker's wasmtime `Store` holds: WASI with no capabilities, the memory limiter, and
//! the guest's log and gauges, with the host side of the `log` and `metrics` imports.
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
    /// The gauges the stage reported (`metrics.gauge`), at most [`USER_METRICS`].
    pub(crate) gauges: Vec<(String, f64)>,
}

/// The most gauges one worker keeps (`metrics.gauge` with a 17th name is ignored).
pub const USER_METRICS: usize = 16;

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
            gauges: Vec::new(),
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

impl raw::squilla::stage::metrics::Host for StoreData {
    fn gauge(&mut self, name: String, value: f64) {
        if !value.is_finite() || !squilla_types::ids::is_name(&name) {
            return;
        }
        let full = self.gauges.len() >= USER_METRICS;
        match self.gauges.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None if !full => self.gauges.push((name, value)),
            None => {}
        }
    }
}
