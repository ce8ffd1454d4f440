//! Events to and from JSON lines: `{"timestamp-ms": 1700000000000, "field": value, …}`.

use anyhow::{Context, bail};
use serde_json::{Map, Number, Value as Json};
use squilla_batch::{BatchBuilder, EventRef, ValueRef};

/// The key that holds an event's timestamp in JSON.
pub const TIMESTAMP: &str = "timestamp-ms";

/// An event as one JSON object. Bytes become `"0x…"` hex text; non-finite floats `null`.
pub fn to_json(event: &EventRef<'_>) -> Json {
    let mut map = Map::with_capacity(event.field_count() + 1);
    map.insert(TIMESTAMP.into(), event.timestamp_ms().into());
    for (name, value) in event.fields() {
        let value = match value {
            ValueRef::Null => Json::Null,
            ValueRef::Bool(b) => b.into(),
            ValueRef::Int(i) => i.into(),
            ValueRef::Float(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
            ValueRef::Text(t) => t.into(),
            bytes @ ValueRef::Bytes(_) => bytes.to_string().into(),
        };
        map.entry(name).or_insert(value);
    }
    Json::Object(map)
}

/// Appends the event in one JSON line to `builder`; `default_ts` is used when the line has
/// no `timestamp-ms`. Nested objects and arrays are refused.
pub fn push_json_line(builder: &mut BatchBuilder, line: &str, default_ts: i64) -> anyhow::Result<()> {
    let Json::Object(map) = serde_json::from_str::<Json>(line).context("not JSON")? else {
        bail!("an event is a JSON object");
    };
    let ts = match map.get(TIMESTAMP) {
        None => default_ts,
        Some(v) => v.as_i64().with_context(|| format!("`{TIMESTAMP}` must be an integer"))?,
    };
    let mut event = builder.event(ts);
    for (name, value) in map.iter().filter(|(k, _)| *k != TIMESTAMP) {
        match value {
            Json::Null => event.null(name),
            Json::Bool(b) => event.field(name, *b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => event.field(name, i),
                None => event.field(name, n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => event.field(name, s.as_str()),
            Json::Array(_) | Json::Object(_) => {
                bail!("field `{name}`: nested values are not supported")
            }
        };
    }
    Ok(())
}
