//! `window-count`: how many events each key had in consecutive fixed windows of event time.
//!
//! Input: events with a text field naming their key (parameter `key`, default `key`); events
//! without it are skipped and counted in the log.
//!
//! A window closes `grace-ms` after its end by the clock the platform passes to `tick`, so that
//! events delayed by up to that long still count; then one event per key seen in the window is
//! emitted, at the window's end: `key` (the parameter's field, text), `window-start-ms`,
//! `window-end-ms` and `count` (ints).
//!
//! The counts move with their key groups when the stage is rescaled (`Stage::state`): route it
//! `key-hash` by the same field, and every window's count for a key is emitted once, whole,
//! however many times the stage scales while it is open.
//!
//! On every tick it reports the gauge `open-keys`: keys held in its open windows (a key open
//! in two windows counts twice), which a scaling policy can aim at (`user` signal).
//!
//! Parameters: `window-ms` (default 10000), `grace-ms` (default 2000), `key` (default `key`).

use squilla_sdk::prelude::*;

/// The stage.
pub struct WindowCount {
    key: String,
    grace_ms: i64,
    windows: TumblingWindows<u64>,
    skipped: u64,
}

#[stage]
impl Stage for WindowCount {
    fn init(params: &Params) -> Result<Self, StageError> {
        let window_ms: i64 = params.get_or("window-ms", 10_000)?;
        let grace_ms: i64 = params.get_or("grace-ms", 2_000)?;
        if window_ms <= 0 || grace_ms < 0 {
            return Err(StageError::new("`window-ms` must be positive and `grace-ms` not negative"));
        }
        Ok(WindowCount {
            key: params.get_or("key", "key".to_string())?,
            grace_ms,
            windows: TumblingWindows::new(window_ms),
            skipped: 0,
        })
    }

    fn process(&mut self, input: BatchView<'_>, _out: &mut BatchBuilder) -> Result<(), StageError> {
        for event in input.events() {
            match event.text(&self.key) {
                Some(key) => {
                    if let Some(count) = self.windows.add(key, event.timestamp_ms()) {
                        *count += 1;
                    }
                }
                None => self.skipped += 1,
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: i64, out: &mut BatchBuilder) -> Result<(), StageError> {
        for window in self.windows.close(now_ms - self.grace_ms) {
            for (key, count) in window.keys.sorted() {
                out.event(window.end_ms)
                    .field(self.key.as_str(), key)
                    .field("window-start-ms", window.start_ms)
                    .field("window-end-ms", window.end_ms)
                    .field("count", *count as i64);
            }
        }
        squilla_sdk::metrics::gauge("open-keys", self.windows.open_keys() as f64);
        if self.skipped > 0 {
            squilla_sdk::log::warn(format!("skipped {} events without a text `{}`", self.skipped, self.key));
            self.skipped = 0;
        }
        Ok(())
    }

    fn state(&mut self) -> Option<&mut dyn HandOff> {
        Some(&mut self.windows)
    }
}
