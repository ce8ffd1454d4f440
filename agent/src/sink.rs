//! A job's sink on this agent: what the job's local last-stage workers emit, fanned out to
//! subscribers.
//!
//! One thread per job takes output batches off the pipeline's sink. With no subscriber it
//! only drops them (nothing is converted or sent). With subscribers it turns each event into
//! one JSON text and publishes it on a broadcast ring of [`SUBSCRIBER_BUFFER`] events: each
//! subscriber reads at its own pace, and one that falls a whole ring behind loses the oldest
//! events — counted, and told so in a `meta` event — without slowing the job or the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use squilla_host::pipeline::PipelineHandle;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind before it loses the oldest.
pub const SUBSCRIBER_BUFFER: usize = 4096;

/// The fan-out of one job's sink.
pub struct SinkHub {
    sender: broadcast::Sender<Arc<str>>,
    closed: AtomicBool,
    /// Events that reached the sink while nobody listened.
    pub unheard: AtomicU64,
    /// Events published to subscribers.
    pub published: AtomicU64,
}

impl SinkHub {
    /// Starts the thread that drains `pipeline`'s sink.
    pub fn start(job: &str, pipeline: PipelineHandle) -> Arc<SinkHub> {
        let hub = Arc::new(SinkHub {
            sender: broadcast::channel(SUBSCRIBER_BUFFER).0,
            closed: AtomicBool::new(false),
            unheard: AtomicU64::new(0),
            published: AtomicU64::new(0),
        });
        let h = hub.clone();
        std::thread::Builder::new()
            .name(format!("squilla-sink-{job}"))
            .spawn(move || h.run(pipeline))
            .expect("spawn sink thread");
        hub
    }

    fn run(&self, pipeline: PipelineHandle) {
        while !self.closed.load(Ordering::Relaxed) && pipeline.is_alive() {
            let Some(batch) = pipeline.recv(Duration::from_millis(100)) else { continue };
            if self.sender.receiver_count() == 0 {
                self.unheard.fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
            for event in batch.view().events() {
                let json = squilla_batch::json::to_json(&event).to_string();
                let _ = self.sender.send(Arc::from(json));
            }
            self.published.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }

    /// A new subscriber, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.sender.subscribe()
    }

    /// Ends the hub (its job stopped here); subscribers see the end of their stream.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether the hub has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}
