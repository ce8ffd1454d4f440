//! A job source: this job reads another job cluster's sink.
//!
//! The agent that runs the job's source subscribes, through the master, to the current job
//! of the upstream cluster (`GET /api/v1/agent/subscribe/{tenant}/{cluster}`, with the job's
//! query and the downstream job as `clientId`). The master follows the upstream across
//! resubmits and re-placements; this side reconnects (after 500 ms) whenever the stream
//! ends. Upstream events arrive as JSON and are archived into batches of at most
//! [`CHAIN_BATCH`] events or [`CHAIN_LINGER`] of waiting, then fed under the job's
//! backpressure policy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use squilla_batch::json::JsonBatcher;
use squilla_host::pipeline::PipelineHandle;

use crate::master::MasterClient;

/// Most events per batch from an upstream job.
pub const CHAIN_BATCH: usize = 1024;
/// Most bytes of JSON per batch from an upstream job.
pub const CHAIN_BATCH_BYTES: usize = 4 << 20;
/// Longest an upstream event waits for its batch.
pub const CHAIN_LINGER: Duration = Duration::from_millis(20);

/// Why a subscription to the upstream ended (the source then reconnects).
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    /// The master's address does not make a URL.
    #[error("bad subscription URL: {0}")]
    Url(String),
    /// The connection failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The master refused the subscription.
    #[error("the master answered {0}")]
    Refused(reqwest::StatusCode),
    /// The stream ended.
    #[error("the stream ended")]
    Ended,
}

/// Where a job source reads from.
pub(crate) struct Upstream {
    pub master: MasterClient,
    pub tenant: squilla_types::ids::TenantId,
    pub cluster: String,
    pub query: Option<String>,
    pub client_id: String,
}

impl Upstream {
    /// Reads the upstream and feeds `pipeline` until `stop` is set.
    pub fn run(&self, pipeline: &PipelineHandle, stop: &AtomicBool) {
        let runtime = self.master.runtime.clone();
        while !stop.load(Ordering::Relaxed) && pipeline.is_alive() {
            if let Err(err) = runtime.block_on(self.session(pipeline, stop)) {
                tracing::debug!(cluster = %self.cluster, error = %err, "upstream subscription ended; reconnecting");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    async fn session(&self, pipeline: &PipelineHandle, stop: &AtomicBool) -> Result<(), SessionEnd> {
        let base = self.master.url.trim_end_matches('/');
        let mut url = reqwest::Url::parse(&format!("{base}/api/v1/agent/subscribe/{}/{}", self.tenant, self.cluster))
            .map_err(|e| SessionEnd::Url(e.to_string()))?;
        url.query_pairs_mut().append_pair("clientId", &self.client_id);
        if let Some(q) = &self.query {
            url.query_pairs_mut().append_pair("query", q);
        }
        let mut response = self
            .master
            .client
            .get(url)
            .bearer_auth(&self.master.token)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(SessionEnd::Refused(response.status()));
        }
        let mut parser = squilla_types::sse::Parser::new();
        let mut batcher = JsonBatcher::new("job", CHAIN_BATCH, CHAIN_BATCH_BYTES);
        let mut first_at = None::<Instant>;
        let mut ready = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let bytes = match tokio::time::timeout(CHAIN_LINGER, response.chunk()).await {
                Ok(Ok(Some(bytes))) => bytes,
                Ok(Ok(None)) => return Err(SessionEnd::Ended),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => Default::default(),
            };
            let now = squilla_types::time::now_ms();
            parser.feed(&bytes, |event| {
                // An upstream event that is not one (it cannot be, unless a stage emits odd
                // JSON) is skipped.
                if event.name.is_none()
                    && let Ok(closed) = batcher.push(&event.data, now)
                {
                    first_at.get_or_insert_with(Instant::now);
                    ready.extend(closed);
                }
            });
            if first_at.is_some_and(|t| t.elapsed() >= CHAIN_LINGER) {
                ready.extend(batcher.take().ok().flatten());
                first_at = None;
            }
            for batch in ready.drain(..) {
                // Waits for room under `block`; a stopped pipeline ends the session.
                while !pipeline.push(batch.clone(), Duration::from_millis(200)) {
                    if stop.load(Ordering::Relaxed) || !pipeline.is_alive() {
                        return Ok(());
                    }
                }
            }
        }
    }
}
