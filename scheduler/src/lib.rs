//! The master: the HTTP API, the store, the control loop, and placement.
//!
//! - [`placement`] decides where workers run: a pure, deterministic function from the agents
//!   (capacity, what they already run, zone and labels) and the workers to place (needs and
//!   constraints) to assignments, with a reason for every worker it cannot place. Nothing
//!   there does I/O, so it is tested with in-memory fixtures and property tests.
//! - [`control`] holds jobs, workers and agents, applies tenants' operations and agents'
//!   heartbeats, and runs placement, failure handling and re-placement.
//! - [`store`] keeps everything durable in one redb file.
//! - [`api`] is the HTTP face of all of it.

pub mod advice;
pub mod api;
pub mod autoscale;
pub mod control;
pub mod placement;
pub mod store;
