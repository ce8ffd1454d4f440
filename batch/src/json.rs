//! Events to and from JSON: `{"timestamp-ms": 1700000000000, "field": value, …}` (feature
//! `json`). Used wherever events meet people: sinks over SSE, ingest, `squilla run`.

use std::io::Write;

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
