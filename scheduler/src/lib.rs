//! The master's scheduling core.
//!
//! [`placement`] decides where workers run: a pure, deterministic function from the agents
//! (capacity, what they already run, zone and labels) and the workers to place (needs and
//! constraints) to assignments, with a reason for every worker it cannot place. The caller
//! — the master — performs the assignments; nothing here does I/O, so it is tested with
//! in-memory fixtures and property tests.

pub mod api;
pub mod placement;
pub mod store;
