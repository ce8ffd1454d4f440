//! Tells what type a field arrives with: for tests that prove events cross a hop without
//! passing through JSON, which has no bytes.
//!
//! `mode=tag` copies each event and adds `raw`, the bytes `0x00 0xff` followed by the event's
//! `device-type` text. `mode=inspect` copies each event and adds `raw-type`, the type name of
//! its `raw` field as it arrived (`bytes`, `text`, …, or `missing`).

use squilla_sdk::prelude::*;

enum Mode {
    Tag,
    Inspect,
}

struct Typed {
    mode: Mode,
}

#[stage]
impl Stage for Typed {
    fn init(params: &Params) -> Result<Self, StageError> {
        let mode = match params.get_or("mode", "tag".to_string())?.as_str() {
            "tag" => Mode::Tag,
            "inspect" => Mode::Inspect,
            other => return Err(StageError::new(format!("unknown mode `{other}` (tag or inspect)"))),
        };
        Ok(Typed { mode })
    }

    fn process(&mut self, input: BatchView<'_>, out: &mut BatchBuilder) -> Result<(), StageError> {
        for event in input.events() {
            let mut copy = out.event(event.timestamp_ms());
            for (name, value) in event.fields() {
                copy.field(name, value);
            }
            match self.mode {
                Mode::Tag => {
                    let mut raw = vec![0x00, 0xff];
                    raw.extend_from_slice(event.text("device-type").unwrap_or("").as_bytes());
                    copy.field("raw", raw.as_slice());
                }
                Mode::Inspect => {
                    let kind = event.get("raw").map_or("missing", |v| v.type_name());
                    copy.field("raw-type", kind);
                }
            }
        }
        Ok(())
    }
}
