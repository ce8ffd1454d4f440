//! A job source: this job reads another job cluster's output, straight from the agents that
//! make it.
//!
//! The master's plan tells the agent that runs the source where the upstream cluster's
//! current job makes its output ([`UpstreamSinks`]: the data ports of the agents running its
//! last stage), and tells it again on every heartbeat, so the plan follows the upstream's
//! resubmits, re-placements and rescales. For each of those agents the source keeps one pull
//! ([`squilla_host::transport::tap`]): the upstream agent applies the job's query and sends
//! batches as they are, over the authenticated data port; here each is validated once and
//! queued under the job's backpressure policy, and only then is the credit returned. No JSON
//! on the way, and the master is not in the path.
//!
//! A pull that ends (the upstream stopped or moved there, the connection broke) is dialled
//! again after [`REDIAL`] (doubling to 1 s while it keeps failing) for as long as the plan
//! names that agent; an agent the plan no longer names is let go at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use squilla_host::pipeline::PipelineHandle;
use squilla_host::transport::Transport;
use squilla_host::transport::tap::{Pulled, Puller, PullerCloser};
use squilla_types::control::UpstreamSinks;

/// Batches a pull may have on the wire before this side has queued them.
pub const CHAIN_CREDIT: u32 = 16;
/// First wait before dialling an upstream agent again.
pub const REDIAL: Duration = Duration::from_millis(50);
/// How often the source looks at the plan's upstream locations.
const FOLLOW: Duration = Duration::from_millis(100);

/// Where the upstream's output is now, as the latest plan says (shared with the job's cell,
/// which sets it on every assignment).
#[derive(Default)]
pub(crate) struct Targets {
    current: Mutex<Option<UpstreamSinks>>,
}

impl Targets {
    pub fn set(&self, sinks: Option<UpstreamSinks>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = sinks;
    }

    /// `(upstream job, agent data address)` pairs to pull from now.
    fn wanted(&self) -> Vec<(String, SocketAddr)> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sinks) = &*current else { return Vec::new() };
        let job = sinks.job.to_string();
        sinks.data.iter().filter_map(|d| d.parse().ok()).map(|addr| (job.clone(), addr)).collect()
    }
}

/// Where a job source reads from.
pub(crate) struct Upstream {
    pub transport: Arc<Transport>,
    pub targets: Arc<Targets>,
    pub query: Option<String>,
    /// The downstream job (for logs).
    pub job: String,
}

/// One running pull.
struct Pull {
    stop: Arc<AtomicBool>,
    closer: Arc<Mutex<Option<PullerCloser>>>,
    thread: JoinHandle<()>,
}

impl Pull {
    fn end(self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = &*self.closer.lock().unwrap_or_else(PoisonError::into_inner) {
            c.close();
        }
        let _ = self.thread.join();
    }
}

impl Upstream {
    /// Follows the plan's upstream locations and feeds `pipeline` until `stop` is set.
    pub fn run(self: Arc<Self>, pipeline: &PipelineHandle, stop: &Arc<AtomicBool>) {
        let mut pulls: HashMap<(String, SocketAddr), Pull> = HashMap::new();
        while !stop.load(Ordering::Relaxed) && pipeline.is_alive() {
            let wanted = self.targets.wanted();
            let gone: Vec<_> = pulls.keys().filter(|k| !wanted.contains(k)).cloned().collect();
            for key in gone {
                if let Some(pull) = pulls.remove(&key) {
                    tracing::debug!(job = %self.job, upstream = %key.0, agent = %key.1, "upstream agent left the plan");
                    pull.end();
                }
            }
            for key in wanted {
                if pulls.contains_key(&key) {
                    continue;
                }
                let pull_stop = Arc::new(AtomicBool::new(false));
                let closer = Arc::new(Mutex::new(None));
                let (me, p, s, c, k) = (self.clone(), pipeline.clone(), pull_stop.clone(), closer.clone(), key.clone());
                let started = std::thread::Builder::new()
                    .name(format!("squilla-pull-{}", key.1))
                    .spawn(move || me.pull(&k.0, k.1, &p, &s, &c));
                match started {
                    Ok(thread) => {
                        pulls.insert(key, Pull { stop: pull_stop, closer, thread });
                    }
                    Err(err) => tracing::warn!(job = %self.job, error = %err, "cannot start a pull; trying again"),
                }
            }
            std::thread::sleep(FOLLOW);
        }
        for (_, pull) in pulls.drain() {
            pull.end();
        }
    }

    /// Pulls `job`'s output from `agent` until told to stop.
    fn pull(
        &self,
        job: &str,
        agent: SocketAddr,
        pipeline: &PipelineHandle,
        stop: &AtomicBool,
        closer: &Mutex<Option<PullerCloser>>,
    ) {
        let mut wait = REDIAL;
        while !stop.load(Ordering::SeqCst) && pipeline.is_alive() {
            match self.transport.pull(agent, job, self.query.as_deref(), CHAIN_CREDIT) {
                Ok(mut puller) => {
                    *closer.lock().unwrap_or_else(PoisonError::into_inner) = puller.closer().ok();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match feed(&mut puller, pipeline, stop) {
                        Ok(Some(why)) => tracing::debug!(job = %self.job, %agent, %why, "upstream stream ended"),
                        Ok(None) => wait = REDIAL,
                        Err(err) => tracing::debug!(job = %self.job, %agent, error = %err, "upstream pull broke"),
                    }
                }
                Err(err) => tracing::debug!(job = %self.job, %agent, error = %err, "cannot pull from upstream agent"),
            }
            let slept = std::time::Instant::now();
            while slept.elapsed() < wait && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }
}

/// Queues what `puller` brings until its stream ends (`Ok(Some(why))`), or this side stops
/// (`Ok(None)`).
fn feed(puller: &mut Puller, pipeline: &PipelineHandle, stop: &AtomicBool) -> std::io::Result<Option<String>> {
    loop {
        let batch = match puller.recv() {
            Ok(Pulled::Batch(batch)) => batch,
            Ok(Pulled::End(why)) => return Ok(Some(why)),
            Err(_) if puller.is_closed() || stop.load(Ordering::SeqCst) => return Ok(None),
            Err(err) => return Err(err),
        };
        // Waits for room under `block`; a stopped pipeline ends the pull.
        while !pipeline.push(batch.clone(), Duration::from_millis(200)) {
            if stop.load(Ordering::SeqCst) || !pipeline.is_alive() {
                return Ok(None);
            }
        }
        puller.credit(1)?;
    }
}
