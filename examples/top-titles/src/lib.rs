//! `top-titles`: the N most played titles per country, per tumbling window.
//!
//! Input: play events with a `country` and a `title` text field (other events are skipped).
//! When a window closes (on `tick`), emits for each country, in country order, up to N events
//! ranked by plays (ties broken by title): `country`, `rank` (1-based), `title`, `plays`,
//! `window-start-ms`, `window-end-ms`; each event's timestamp is the window's end.
//!
//! Parameters: `n` (default 3), `window-ms` (default 10000), `group-by` (default `country`),
//! `item` (default `title`).

use squilla_sdk::prelude::*;

/// The stage.
pub struct TopTitles {
    n: usize,
    group_by: String,
    item: String,
    windows: TumblingWindows<KeyedState<u64>>,
}

#[stage]
impl Stage for TopTitles {
    fn init(params: &Params) -> Result<Self, StageError> {
        let n = params.get_or("n", 3usize)?;
        if n == 0 {
            return Err(StageError::new("parameter `n` must be at least 1"));
        }
        Ok(TopTitles {
            n,
            group_by: params.get_or("group-by", "country".to_string())?,
            item: params.get_or("item", "title".to_string())?,
            windows: TumblingWindows::new(params.get_or("window-ms", 10_000)?),
        })
    }

    fn process(&mut self, input: BatchView<'_>, _out: &mut BatchBuilder) -> Result<(), StageError> {
        for event in input.events() {
            let (Some(group), Some(item)) = (event.text(&self.group_by), event.text(&self.item)) else {
                continue;
            };
            if let Some(plays) = self.windows.add(group, event.timestamp_ms()) {
                *plays.get_or_default(item) += 1;
            }
        }
        Ok(())
    }

    fn tick(&mut self, now_ms: i64, out: &mut BatchBuilder) -> Result<(), StageError> {
        for window in self.windows.close(now_ms) {
            for (group, plays) in window.keys.sorted() {
                let mut ranked: Vec<(&str, u64)> = plays.iter().map(|(t, &p)| (t, p)).collect();
                ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                for (rank, (item, count)) in ranked.into_iter().take(self.n).enumerate() {
                    out.event(window.end_ms)
                        .field(self.group_by.as_str(), group)
                        .field("rank", rank as i64 + 1)
                        .field(self.item.as_str(), item)
                        .field("plays", count as i64)
                        .field("window-start-ms", window.start_ms)
                        .field("window-end-ms", window.end_ms);
                }
            }
        }
        Ok(())
    }
}
