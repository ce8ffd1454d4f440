//! The agent's lease on its work: the right to emit, granted by the master and renewed by
//! every heartbeat it answers.
//!
//! The master replaces the workers of an agent it has not heard from for its agent timeout.
//! An agent that was merely paused (SIGSTOP, a long GC-like stall of the host, a network
//! partition) does not know that; when it wakes, its old workers would run beside their
//! replacements and every event would be emitted twice. So an agent holds a [`Lease`]: valid
//! until a moment the master's answer implies (the heartbeat's *send* time plus a lease that
//! is shorter than the master's agent timeout), and every batch leaving a stage, a source or
//! the transport is dropped — counted as *fenced* — while it is not valid. Because the lease
//! is measured from when the heartbeat left, on the monotonic clock, it always runs out before
//! the master can have declared the agent lost; a paused agent wakes with an expired lease and
//! emits nothing until a new answer says which of its workers are still its own.
//!
//! A pipeline without a master (tests, `squilla run`) uses [`Lease::unlimited`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Until when this agent may emit; see the module docs.
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Nanoseconds after `base` at which the lease runs out (`u64::MAX`: never).
    until: AtomicU64,
    /// Batches dropped because the lease had run out.
    fenced: AtomicU64,
}

impl Lease {
    /// A lease that never runs out.
    pub fn unlimited() -> Arc<Lease> {
        Arc::new(Lease { base: Instant::now(), until: AtomicU64::new(u64::MAX), fenced: AtomicU64::new(0) })
    }

    /// A lease that has run out: nothing is emitted until [`Lease::renew`].
    pub fn expired() -> Arc<Lease> {
        Arc::new(Lease { base: Instant::now(), until: AtomicU64::new(0), fenced: AtomicU64::new(0) })
    }

    /// Makes the lease valid until `granted_at + length` (a later renewal wins over an
    /// earlier one that arrives late).
    pub fn renew(&self, granted_at: Instant, length: Duration) {
        let until = (granted_at + length).saturating_duration_since(self.base).as_nanos().min(u128::from(u64::MAX - 1));
        self.until.fetch_max(until as u64, Ordering::AcqRel);
    }

    /// Whether emitting is allowed now.
    pub fn is_valid(&self) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until == u64::MAX || (self.base.elapsed().as_nanos() as u64) < until
    }

    /// Counts `n` batches dropped because the lease had run out.
    pub fn count_fenced(&self, n: u64) {
        self.fenced.fetch_add(n, Ordering::Relaxed);
    }

    /// Batches dropped because the lease had run out, since the agent started.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_out_and_later_grants_win() {
        let lease = Lease::expired();
        assert!(!lease.is_valid());
        let now = Instant::now();
        lease.renew(now, Duration::from_secs(60));
        assert!(lease.is_valid());
        // An answer to an older heartbeat that arrives late does not shorten the lease.
        lease.renew(now - Duration::from_secs(120), Duration::from_secs(1));
        assert!(lease.is_valid());
        let short = Lease::expired();
        short.renew(Instant::now(), Duration::from_millis(20));
        assert!(short.is_valid());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!short.is_valid());
        assert!(Lease::unlimited().is_valid());
    }
}
