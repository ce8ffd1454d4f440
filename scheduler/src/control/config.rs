//! The control loop's timings and limits, and tenants' quotas.

use std::time::Duration;

/// Per-tenant quotas on running work. `Default` gives the documented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Workers of active jobs (default 100).
    pub workers: u64,
    /// Memory of active jobs' workers, MiB (default 16,384).
    pub memory_mib: u64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota { workers: 100, memory_mib: 16_384 }
    }
}

/// Timings and limits of the control loop. `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// How often agents heartbeat (default 1 s).
    pub heartbeat: Duration,
    /// Silence after which an agent is lost and its workers re-placed (default 5 s).
    pub agent_timeout: Duration,
    /// Failures in a row of one worker slot that fail its job (default 5).
    pub max_worker_failures: u32,
    /// First re-placement delay; doubles per attempt (default 250 ms).
    pub backoff: Duration,
    /// Longest re-placement delay (default 30 s).
    pub max_backoff: Duration,
    /// Running this long forgives a slot's earlier failures (default 30 s).
    pub healthy_after: Duration,
    /// Per-tenant quotas.
    pub quota: Quota,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            heartbeat: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(5),
            max_worker_failures: 5,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            healthy_after: Duration::from_secs(30),
            quota: Quota::default(),
        }
    }
}
