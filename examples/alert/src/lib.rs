//! `alert`: raises an alert when a key's value passes a threshold, and clears it only once the
//! value has fallen below a lower one (hysteresis), so that a value hovering at the threshold
//! does not raise an alert per event.
//!
//! Input: events with a group key (parameter `key`, default `device-type`) and a numeric
//! value (parameter `field`, default `error-rate`; ints count as floats). Events without
//! either are skipped and counted in the log.
//!
//! Output, only on a change of a key's state, at the input event's time: the key field, the
//! value field, `alert` (`"raised"` or `"cleared"`), `threshold`, `clear-below`, and on
//! `cleared` also `raised-at-ms` (when the alert was raised).
//!
//! Parameters: `threshold` (float, required: at or above it raises), `clear-below` (float,
//! default 0.8 × threshold: below it clears; must not exceed `threshold`), `key`, `field`,
//! `max-keys` (default 10000: keys beyond it are not tracked, and a warning is logged).

use std::collections::HashMap;

use squilla_sdk::prelude::*;

/// The stage.
pub struct Alert {
    key: String,
    field: String,
    threshold: f64,
    clear_below: f64,
    max_keys: usize,
    /// Keys with a raised alert, and since when. Keys in the normal state are not stored
    /// unless seen once (then `None`).
    state: HashMap<String, Option<i64>>,
    skipped: u64,
    untracked: u64,
}

#[stage]
impl Stage for Alert {
    fn init(params: &Params) -> Result<Self, StageError> {
        let threshold: f64 = params.require("threshold")?;
        let clear_below = params.get_or("clear-below", threshold * 0.8)?;
        if !threshold.is_finite() || !clear_below.is_finite() || clear_below > threshold {
            return Err(StageError::new(format!(
                "`clear-below` ({clear_below}) must be a number no greater than `threshold` ({threshold})"
            )));
        }
        Ok(Alert {
            key: params.get_or("key", "device-type".to_string())?,
            field: params.get_or("field", "error-rate".to_string())?,
            threshold,
            clear_below,
            max_keys: params.get_or("max-keys", 10_000)?,
            state: HashMap::new(),
            skipped: 0,
            untracked: 0,
        })
    }

    fn process(&mut self, input: BatchView<'_>, out: &mut BatchBuilder) -> Result<(), StageError> {
        for event in input.events() {
            let (Some(key), Some(value)) = (event.text(&self.key), event.float(&self.field).filter(|v| !v.is_nan()))
            else {
                self.skipped += 1;
                continue;
            };
            if !self.state.contains_key(key) && self.state.len() >= self.max_keys {
                self.untracked += 1;
                continue;
            }
            let raised = self.state.entry(key.to_owned()).or_insert(None);
            let now = event.timestamp_ms();
            match *raised {
                None if value >= self.threshold => {
                    *raised = Some(now);
                    out.event(now)
                        .field(self.key.as_str(), key)
                        .field(self.field.as_str(), value)
                        .field("alert", "raised")
                        .field("threshold", self.threshold)
                        .field("clear-below", self.clear_below);
                }
                Some(since) if value < self.clear_below => {
                    *raised = None;
                    out.event(now)
                        .field(self.key.as_str(), key)
                        .field(self.field.as_str(), value)
                        .field("alert", "cleared")
                        .field("threshold", self.threshold)
                        .field("clear-below", self.clear_below)
                        .field("raised-at-ms", since);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn tick(&mut self, _now_ms: i64, _out: &mut BatchBuilder) -> Result<(), StageError> {
        if self.skipped > 0 {
            squilla_sdk::log::warn(format!(
                "skipped {} events without `{}` and a numeric `{}`",
                self.skipped, self.key, self.field
            ));
            self.skipped = 0;
        }
        if self.untracked > 0 {
            squilla_sdk::log::warn(format!(
                "{} events of keys beyond `max-keys` ({}) not tracked",
                self.untracked, self.max_keys
            ));
            self.untracked = 0;
        }
        Ok(())
    }
}
