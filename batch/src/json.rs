//! Events to and from JSON: `{"timestamp-ms": 1700000000000, "field": value, …}` (feature
//! `json`). Used wherever events meet people: sinks over SSE, ingest, `squilla run`.

use serde_json::{Map, Number, Value as Json};

use crate::{BatchBuilder, EventRef, ValueRef};

/// The key that holds an event's timestamp in JSON.
pub const TIMESTAMP: &str = "timestamp-ms";

/// Why a JSON line is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    Syntax(String),
    /// JSON, but not an object.
    #[error("an event is a JSON object")]
    NotAnObject,
    /// `timestamp-ms` is there but not an integer.
    #[error("`timestamp-ms` must be an integer")]
    Timestamp,
    /// A field holds an array, or objects nest deeper than [`MAX_DEPTH`].
    #[error("field `{0}`: arrays (and objects nested deeper than 8) are not supported")]
    Nested(String),
}

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

/// How deep objects may nest in an event (`a.b.c…`).
pub const MAX_DEPTH: usize = 8;

/// Nested objects become dotted names (`{"user": {"id": 7}}` → `user.id`); arrays are refused.
fn flatten<'a>(
    map: &'a Map<String, Json>,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, &'a Json)>,
) -> Result<(), JsonError> {
    for (k, v) in map {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Json::Object(inner) if depth + 1 < MAX_DEPTH => flatten(inner, &name, depth + 1, out)?,
            Json::Object(_) | Json::Array(_) => return Err(JsonError::Nested(name)),
            _ => out.push((name, v)),
        }
    }
    Ok(())
}

/// Checks one JSON line and appends it as an event to `builder`; `default_ts` is used when
/// the line has no `timestamp-ms`. Nested objects become dotted field names; arrays are
/// refused. On error nothing is appended.
pub fn push_json_line(builder: &mut BatchBuilder, line: &str, default_ts: i64) -> Result<(), JsonError> {
    let Json::Object(map) = serde_json::from_str::<Json>(line).map_err(|e| JsonError::Syntax(e.to_string()))? else {
        return Err(JsonError::NotAnObject);
    };
    let ts = match map.get(TIMESTAMP) {
        None => default_ts,
        Some(v) => v.as_i64().ok_or(JsonError::Timestamp)?,
    };
    let mut flat = Vec::with_capacity(map.len());
    flatten(&map, "", 0, &mut flat)?;
    let mut event = builder.event(ts);
    for (name, value) in flat.iter().filter(|(k, _)| k != TIMESTAMP) {
        let name = name.as_str();
        match value {
            Json::Null => event.null(name),
            Json::Bool(b) => event.field(name, *b),
            Json::Number(n) => match n.as_i64() {
                Some(i) => event.field(name, i),
                None => event.field(name, n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => event.field(name, s.as_str()),
            Json::Array(_) | Json::Object(_) => unreachable!("refused above"),
        };
    }
    Ok(())
}
