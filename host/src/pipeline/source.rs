//! The synthetic source: device-log events at a set rate, cut into batches by size and by
//! linger time, so that throughput is high at high rates and latency low at low ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use squilla_batch::BatchBytes;
use squilla_batch::synth::DeviceLogs;

use squilla_types::time::now_ms;

/// A generator of device-log events (see `squilla_batch::synth`).
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    /// Events per second; `None` for as fast as the pipeline takes them.
    pub events_per_second: Option<u64>,
    /// Most events in one batch (default 1024).
    pub max_batch: usize,
    /// Longest an event waits for its batch to fill (default 5 ms).
    pub linger: Duration,
    /// Seed of the generator.
    pub seed: u64,
    /// Stop after this many events (`None`: run until stopped).
    pub limit: Option<u64>,
}

impl SyntheticSource {
    /// `events_per_second` events/s in batches of at most 1024, lingering at most 5 ms.
    pub fn at_rate(events_per_second: u64) -> Self {
        SyntheticSource {
            events_per_second: Some(events_per_second),
            max_batch: 1024,
            linger: Duration::from_millis(5),
            seed: 1,
            limit: None,
        }
    }

    /// Produces until `stop` is set, the limit is reached, or `push` returns false.
    pub(crate) fn run(&self, stop: &AtomicBool, mut push: impl FnMut(BatchBytes) -> bool) {
        let mut generator = DeviceLogs::new(self.seed);
        let max_batch = self.max_batch.max(1) as u64;
        let start = Instant::now();
        let mut produced = 0u64;
        let mut last_cut = start;
        while !stop.load(Ordering::Relaxed) && self.limit.is_none_or(|l| produced < l) {
            let now = Instant::now();
            let due = match self.events_per_second {
                None => max_batch,
                Some(rate) => ((rate as f64 * (now - start).as_secs_f64()) as u64).saturating_sub(produced),
            };
            let due = self.limit.map_or(due, |l| due.min(l - produced));
            if due >= max_batch || (due > 0 && now - last_cut >= self.linger) {
                let n = due.min(max_batch);
                let batch = match generator.batch(n as usize, now_ms(), 0) {
                    Ok(batch) => batch,
                    Err(err) => {
                        tracing::error!(error = %err, "synthetic source cannot archive a batch");
                        return;
                    }
                };
                if !push(batch) {
                    return;
                }
                produced += n;
                last_cut = now;
                continue;
            }
            // Sleep until the batch would fill or the linger time runs out, whichever is first.
            let rate = self.events_per_second.unwrap_or(1).max(1) as f64;
            let fill = Duration::from_secs_f64((max_batch - due) as f64 / rate);
            let linger_left = (last_cut + self.linger).saturating_duration_since(now);
            std::thread::sleep(fill.min(linger_left).max(Duration::from_micros(50)));
        }
    }
}
