//! `sentiment`: counts positive, negative and neutral texts that mention a keyword, per
//! tumbling window.
//!
//! Input: events with a text field (`field`, default `text`). An event is kept if its text
//! contains `keyword` (ASCII case-insensitive substring). Its score is the number of positive
//! words minus the number of negative words, where words are maximal runs of ASCII letters,
//! digits and apostrophes, compared ASCII-lowercased against the built-in lists below.
//! Score > 0 is positive, < 0 negative, 0 neutral.
//!
//! When a window closes (on `tick`) and it saw at least one kept event, emits one event at
//! the window's end: `keyword`, `positive`, `negative`, `neutral` (ints),
//! `window-start-ms`, `window-end-ms`.
//!
//! Parameters: `keyword` (required), `field` (default `text`), `window-ms` (default 10000).
//!
//! The Python example `examples/python/sentiment` implements the same contract; the tests
//! compare the two on the same input.

use squilla_sdk::prelude::*;

/// Words that count +1.
pub const POSITIVE: [&str; 12] = [
    "good",
    "great",
    "love",
    "excellent",
    "happy",
    "awesome",
    "fun",
    "best",
    "amazing",
    "like",
    "enjoyed",
    "brilliant",
];
/// Words that count -1.
pub const NEGATIVE: [&str; 12] = [
    "bad",
    "terrible",
    "hate",
    "awful",
    "sad",
    "worst",
    "boring",
    "broken",
    "slow",
    "poor",
    "disappointing",
    "buffering",
];

/// Positive minus negative words in `text`.
pub fn score(text: &str) -> i64 {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|word| {
            let word = word.to_ascii_lowercase();
            i64::from(POSITIVE.contains(&word.as_str())) - i64::from(NEGATIVE.contains(&word.as_str()))
        })
        .sum()
}

/// Counts per class in one window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    positive: i64,
    negative: i64,
    neutral: i64,
}

/// The stage.
pub struct Sentiment {
    keyword: String,
    field: String,
    windows: TumblingWindows<Counts>,
}

#[stage]
impl Stage for Sentiment {
    fn init(params: &Params) -> Result<Self, StageError> {
        let keyword: String = params.require("keyword")?;
        if keyword.is_empty() {
            return Err(StageError::new("parameter `keyword` must not be empty"));
        }
        Ok(Sentiment {
            keyword: keyword.to_ascii_lowercase(),
            field: params.get_or("field", "text".to_string())?,
            windows: TumblingWindows::new(params.get_or("window-ms", 10_000)?),
        })
    }

    fn process(&mut self, input: BatchView<'_>, _out: &mut BatchBuilder) -> Result<(), StageError> {
        for event in input.events() {
            let Some(text) = event.text(&self.field) else {
                continue;
            };
            if !text.to_ascii_lowercase().contains(&self.keyword) {
                continue;
            }
            let Some(counts) = self.windows.add(&self.keyword, event.timestamp_ms()) else {
                continue;
            };
            match score(text) {
                s if s > 0 => counts.positive += 1,
                s if s < 0 => counts.negative += 1,
                _ => counts.neutral += 1,
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: i64, out: &mut BatchBuilder) -> Result<(), StageError> {
        for window in self.windows.close(now_ms) {
            if let Some(c) = window.keys.get(&self.keyword) {
                out.event(window.end_ms)
                    .field("keyword", self.keyword.as_str())
                    .field("positive", c.positive)
                    .field("negative", c.negative)
                    .field("neutral", c.neutral)
                    .field("window-start-ms", window.start_ms)
                    .field("window-end-ms", window.end_ms);
            }
        }
        Ok(())
    }
}
