#![doc = include_str!("../README.md")]

pub mod handoff;
mod log_impl;
pub mod metrics;
mod params;
mod stage;
pub mod window;

pub use handoff::{HandOff, KeyGroups, StateCodec, key_group};
pub use params::Params;
pub use squilla_batch::{
    BatchBuilder, BatchError, BatchView, Event, EventBuilder, EventRef, NameIndex, Value, ValueRef,
};
pub use squilla_sdk_macros::stage;
pub use stage::{Stage, StageError};
pub use window::{KeyedState, RollingWindow, TumblingWindows};

/// Logging into the worker's log (served by the API); see the `log` interface in the WIT.
///
/// Off WebAssembly (in native unit tests of a stage) lines go to standard error.
pub mod log {
    pub use crate::log_impl::{debug, error, info, trace, warn};
}

/// Everything a stage module needs, in one import: `use squilla_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::handoff::HandOff;
    pub use crate::window::{KeyedState, RollingWindow, TumblingWindows};
    pub use crate::{BatchBuilder, BatchView, EventRef, Params, Stage, StageError, ValueRef, stage};
}

#[doc(hidden)]
pub mod __private;
