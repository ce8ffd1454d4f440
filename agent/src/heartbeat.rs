//! The heartbeat loop: report, receive the plan, fence what it took away, renew the lease.
//!
//! Every period the agent sends its capacity, attributes and every worker's state (read from
//! what the job threads published — never waiting on tenant code) and gets its whole plan
//! back. It hands the plan to [`Jobs::apply`], which fences at once whatever the plan took
//! away and leaves the slow work to the job threads, and only then renews the agent's
//! [`Lease`] from the moment the heartbeat was sent (see `squilla_host::Lease`). A heartbeat
//! that fails leaves the workers running until the lease runs out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use squilla_host::Lease;
use squilla_types::control::{Assignments, Heartbeat};

use crate::config::AgentConfig;
use crate::jobs::Jobs;

/// Longest a heartbeat request may take before it counts as failed.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// A lease length standing for "no limit" (the master sent none).
const UNLIMITED: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(crate) async fn run(
    config: AgentConfig,
    client: reqwest::Client,
    mut beat: Heartbeat,
    jobs: Arc<Jobs>,
    lease: Arc<Lease>,
) {
    let mut period = Duration::from_secs(1);
    let mut failing = false;
    loop {
        // Reports and plans take only brief locks, never one a guest call holds: they run here,
        // on the heartbeat's own task, so that no pool other tasks can fill delays them.
        beat.workers = jobs.reports();
        beat.usage = jobs.usage(&beat.workers);
        let sent = Instant::now();
        let answer = crate::master::post_json::<Assignments>(
            &client,
            &config,
            "/api/v1/agent/heartbeat",
            HEARTBEAT_TIMEOUT,
            &beat,
        );
        match answer.await {
            Ok(answer) => {
                if failing {
                    tracing::info!(master = %config.master, "master reachable again");
                    failing = false;
                }
                period = Duration::from_millis(answer.heartbeat_ms.clamp(50, 60_000));
                jobs.apply(answer.jobs);
                let length = if answer.lease_ms == 0 { UNLIMITED } else { Duration::from_millis(answer.lease_ms) };
                lease.renew(sent, length);
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(
                        master = %config.master,
                        error = %err,
                        "heartbeat failed; workers keep running until the lease runs out"
                    );
                    failing = true;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}
