//! Events to and from JSON: `{"timestamp-ms": 1700000000000, "field": value, …}` (feature
//! `json`). Used wherever events meet people: sinks over SSE, ingest, `squilla run`; JSON
//! texts become batches in one place, [`JsonBatcher`].

use std::io::Write;

use serde_json::{Map, Number, Value as Json};

use crate::{BatchBuilder, BatchBytes, BatchError, EventRef, ValueRef};

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

/// Appends `event` as one JSON object to `out`, as [`to_json`] would make it but without
/// building a `Value` first: the timestamp first, then the fields in order; of fields sharing
/// a name (or named `timestamp-ms`) only the first counts. This is what sinks use: several
/// times faster than `to_json(event).to_string()`.
pub fn write_json(event: &EventRef<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(TIMESTAMP.as_bytes());
    out.extend_from_slice(b"\":");
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "{}", event.timestamp_ms());
    // Names seen: a short list for the usual handful of fields, a set past that.
    let mut seen: Vec<&str> = Vec::with_capacity(event.field_count().min(16));
    let mut many: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (name, value) in event.fields() {
        if name == TIMESTAMP {
            continue;
        }
        if seen.len() < 16 {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
        } else if seen.contains(&name) || !many.insert(name) {
            continue;
        }
        out.push(b',');
        string(out, name);
        out.push(b':');
        match value {
            ValueRef::Null => out.extend_from_slice(b"null"),
            ValueRef::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            ValueRef::Int(i) => {
                let _ = write!(out, "{i}");
            }
            ValueRef::Float(f) => match Number::from_f64(f) {
                Some(n) => {
                    let _ = write!(out, "{n}");
                }
                None => out.extend_from_slice(b"null"),
            },
            ValueRef::Text(t) => string(out, t),
            bytes @ ValueRef::Bytes(_) => string(out, &bytes.to_string()),
        }
    }
    out.push(b'}');
}

/// A JSON string literal, escaped as `serde_json` escapes it.
fn string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a `str` to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
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

/// Events from JSON texts into batches: the one place JSON lines become batches (HTTP ingest,
/// `squilla run`'s standard input, and a job source reading an upstream job's sink).
///
/// A batch closes at `max_events` events, or before an event that would take its JSON past
/// `max_bytes` (so a batch's size follows its input's), or when the caller takes it early
/// ([`JsonBatcher::take`], e.g. after a linger time). Each text is parsed by
/// [`push_json_line`]; a text that is not an event is refused with its [`JsonError`] and
/// leaves the batch as it was, for the caller to decide (name it, skip it, stop).
#[derive(Debug)]
pub struct JsonBatcher {
    source: &'static str,
    max_events: usize,
    max_bytes: usize,
    builder: BatchBuilder,
    bytes: usize,
}

impl JsonBatcher {
    /// Batches of at most `max_events` events and `max_bytes` bytes of JSON, whose metadata
    /// names `source`.
    pub fn new(source: &'static str, max_events: usize, max_bytes: usize) -> Self {
        JsonBatcher {
            source,
            max_events: max_events.max(1),
            max_bytes,
            builder: BatchBuilder::new().source(source),
            bytes: 0,
        }
    }

    /// Adds one event from its JSON `text` (`default_ts`: its time if it has no
    /// `timestamp-ms`); returns the batch it closed, if adding it closed one.
    pub fn push(&mut self, text: &str, default_ts: i64) -> Result<Option<BatchBytes>, JsonPushError> {
        let full = self.builder.len() >= self.max_events
            || (!self.builder.is_empty() && self.bytes + text.len() > self.max_bytes);
        let closed = if full { self.take()? } else { None };
        push_json_line(&mut self.builder, text, default_ts)?;
        self.bytes += text.len();
        Ok(closed)
    }

    /// Events in the open batch.
    pub fn len(&self) -> usize {
        self.builder.len()
    }

    /// Whether the open batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.builder.is_empty()
    }

    /// Closes the open batch now, if it holds any event.
    pub fn take(&mut self) -> Result<Option<BatchBytes>, BatchError> {
        if self.builder.is_empty() {
            return Ok(None);
        }
        let full = std::mem::replace(&mut self.builder, BatchBuilder::new().source(self.source));
        self.bytes = 0;
        full.finish().map(Some)
    }
}

/// Why [`JsonBatcher::push`] refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPushError {
    /// The text is not an event.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The batch it closed could not be archived.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::DeviceLogs;

    fn both_ways(batch: &crate::BatchBytes) {
        for event in batch.view().events() {
            let mut out = Vec::new();
            write_json(&event, &mut out);
            let written: Json = serde_json::from_slice(&out).expect("valid JSON");
            // Both read back by the same parser (floats then compare exactly).
            let made: Json = serde_json::from_str(&to_json(&event).to_string()).unwrap();
            assert_eq!(written, made, "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn write_json_makes_what_to_json_makes() {
        both_ways(&DeviceLogs::new(3).batch(256, 1_700_000_000_000, 7).unwrap());
        let mut builder = BatchBuilder::new();
        builder
            .event(-5)
            .field("quote\"d", "back\\slash \u{1} tab\t é ✓")
            .field("timestamp-ms", 99i64)
            .field("dup", 1i64)
            .field("dup", 2i64)
            .field("nan", f64::NAN)
            .field("inf", f64::INFINITY)
            .field("float", 0.1f64)
            .field("big", i64::MIN)
            .field("yes", true)
            .field("nothing", ValueRef::Null)
            .field("raw", ValueRef::Bytes(&[0, 255, 16]));
        builder.event(0);
        // Past 16 fields, duplicates are found in a set.
        let mut wide = builder.event(1);
        for i in 0..40i64 {
            wide.field(&format!("f{}", i % 25), i);
        }
        both_ways(&builder.finish().unwrap());
    }
}
