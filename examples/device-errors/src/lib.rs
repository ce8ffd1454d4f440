//! `device-errors`: the error rate of each device type over a rolling window.
//!
//! Input: device-log events, either structured (fields `device-type` and `status`) or raw log
//! lines in a text field `line` of `key=value` words (`device-type=tv status=500 …`), which
//! are parsed. Events without a device type or status are skipped and counted in the log.
//!
//! Every `tick` emits, for each device type seen in the window, one event at the tick's time:
//! `device-type` (text), `requests` (int), `errors` (int), `error-rate` (float, 0 to 1) and
//! `window-ms` (int).
//!
//! The window moves with its key groups when the stage is rescaled (`Stage::state`), so a
//! device type is reported by one worker, with its whole count, before and after.
//!
//! Parameters: `window-ms` (default 30000), `bucket-ms` (default 1000, the window's
//! granularity), `key` (default `device-type`, the field to group by), `error-status`
//! (default 500: a status at or above it is an error).

use squilla_sdk::prelude::*;
use squilla_sdk::window::Ratio;

/// The stage.
pub struct DeviceErrors {
    key: String,
    error_status: i64,
    window_ms: i64,
    window: RollingWindow<Ratio>,
    skipped: u64,
    late_reported: u64,
}

/// The group key and status of one event, from its fields or its raw log line.
fn parse<'e>(event: &EventRef<'e>, key: &str) -> Option<(&'e str, i64)> {
    if let (Some(group), Some(status)) = (event.text(key), event.int("status")) {
        return Some((group, status));
    }
    let line = event.text("line")?;
    let mut group = None;
    let mut status = None;
    for word in line.split_ascii_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if k == key => group = Some(v),
            Some(("status", v)) => status = v.parse().ok(),
            _ => {}
        }
    }
    Some((group?, status?))
}

#[stage]
impl Stage for DeviceErrors {
    fn init(params: &Params) -> Result<Self, StageError> {
        let window_ms = params.get_or("window-ms", 30_000)?;
        if window_ms <= 0 {
            return Err(StageError::new("parameter `window-ms` must be positive"));
        }
        Ok(DeviceErrors {
            key: params.get_or("key", "device-type".to_string())?,
            error_status: params.get_or("error-status", 500)?,
            window_ms,
            window: RollingWindow::new(window_ms, params.get_or("bucket-ms", 1_000)?),
            skipped: 0,
            late_reported: 0,
        })
    }

    fn process(&mut self, input: BatchView<'_>, _out: &mut BatchBuilder) -> Result<(), StageError> {
        for event in input.events() {
            match parse(&event, &self.key) {
                Some((group, status)) => {
                    if let Some(ratio) = self.window.add(group, event.timestamp_ms()) {
                        ratio.record(status >= self.error_status);
                    }
                }
                None => self.skipped += 1,
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: i64, out: &mut BatchBuilder) -> Result<(), StageError> {
        self.window.advance(now_ms);
        for (group, ratio) in self.window.totals() {
            out.event(now_ms)
                .field(self.key.as_str(), group)
                .field("requests", ratio.total as i64)
                .field("errors", ratio.hits as i64)
                .field("error-rate", ratio.ratio())
                .field("window-ms", self.window_ms);
        }
        if self.skipped > 0 {
            squilla_sdk::log::warn(format!("skipped {} events without `{}` and `status`", self.skipped, self.key));
            self.skipped = 0;
        }
        // Events older than the window cannot count: say so, so that a producer can see it.
        let late = self.window.late();
        if late > self.late_reported {
            squilla_sdk::log::warn(format!(
                "dropped {} event(s) older than the {} ms window",
                late - self.late_reported,
                self.window_ms
            ));
            self.late_reported = late;
        }
        Ok(())
    }

    fn state(&mut self) -> Option<&mut dyn HandOff> {
        Some(&mut self.window)
    }
}
