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
    /// Objects and arrays nest deeper than [`MAX_DEPTH`].
    #[error("field `{0}`: objects and arrays nest at most 8 deep")]
    Nested(String),
    /// An array is longer than [`MAX_ARRAY`].
    #[error("field `{0}`: an array holds at most 1,000 elements")]
    LongArray(String),
}

/// An event as one JSON object. Bytes become `"0x…"` hex text; non-finite floats `null`.
/// Dotted names nest again (`user.id` → `{"user": {"id": …}}`), and objects whose keys are
/// `0`, `1`, … `n-1` become arrays: the inverse of how ingest flattens (see [`nest`]).
pub fn to_json(event: &EventRef<'_>) -> Json {
    let mut map = Map::with_capacity(event.field_count() + 1);
    map.insert(TIMESTAMP.into(), event.timestamp_ms().into());
    let mut nested = false;
    for (name, value) in event.fields() {
        let value = value_json(value);
        if name.contains('.') {
            nested = true;
            insert_nested(&mut map, name, value);
        } else {
            map.entry(name).or_insert(value);
        }
    }
    if nested {
        for v in map.values_mut() {
            arrays(v);
        }
    }
    Json::Object(map)
}

fn value_json(value: ValueRef<'_>) -> Json {
    match value {
        ValueRef::Null => Json::Null,
        ValueRef::Bool(b) => b.into(),
        ValueRef::Int(i) => i.into(),
        ValueRef::Float(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        ValueRef::Text(t) => t.into(),
        bytes @ ValueRef::Bytes(_) => bytes.to_string().into(),
    }
}

/// Puts `value` at the dotted `path` of `object`. Where a part of the path already holds a
/// value that is not an object, the rest keeps its dotted name at that level; of two values
/// for one place, the first wins.
pub fn insert_nested(object: &mut Map<String, Json>, path: &str, value: Json) {
    match path.split_once('.') {
        Some((head, rest)) if !head.is_empty() && !rest.is_empty() => {
            if !object.contains_key(head) {
                object.insert(head.to_owned(), Json::Object(Map::new()));
            }
            match object.get_mut(head) {
                Some(Json::Object(inner)) => insert_nested(inner, rest, value),
                _ => {
                    object.entry(path).or_insert(value);
                }
            }
        }
        _ => {
            object.entry(path).or_insert(value);
        }
    }
}

/// Turns every object in `value` whose keys are exactly `0` … `n-1` into an array.
pub fn arrays(value: &mut Json) {
    let Json::Object(map) = value else { return };
    for v in map.values_mut() {
        arrays(v);
    }
    let n = map.len();
    if n > 0 && (0..n).all(|i| map.contains_key(i.to_string().as_str())) {
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            items.push(map.remove(i.to_string().as_str()).unwrap_or(Json::Null));
        }
        *value = Json::Array(items);
    }
}

/// The JSON value of dotted `fields` under one name: nested objects, with arrays where the
/// keys are indices. What [`to_json`] does for a whole event.
pub fn nest<'a>(fields: impl IntoIterator<Item = (&'a str, Json)>) -> Json {
    let mut map = Map::new();
    for (name, value) in fields {
        insert_nested(&mut map, name, value);
    }
    let mut json = Json::Object(map);
    arrays(&mut json);
    json
}

/// Appends `event` as one JSON object to `out`, as [`to_json`] would make it but without
/// building a `Value` first: the timestamp first, then the fields in order; of fields sharing
/// a name (or named `timestamp-ms`) only the first counts. This is what sinks use: several
/// times faster than `to_json(event).to_string()`.
pub fn write_json(event: &EventRef<'_>, out: &mut Vec<u8>) {
    if event.fields().any(|(name, _)| name.contains('.')) {
        write_json_nested(event, out);
    } else {
        write_json_flat(event, out);
    }
}

/// [`write_json`] for an event with dotted names: they nest again, as [`to_json`] nests them.
pub fn write_json_nested(event: &EventRef<'_>, out: &mut Vec<u8>) {
    // Writing to a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, &to_json(event));
}

/// [`write_json`] for an event known to have no dotted name (a batch whose
/// [`names`](crate::BatchView::names) hold no `.`): the fast path, which writes names as they
/// are.
pub fn write_json_flat(event: &EventRef<'_>, out: &mut Vec<u8>) {
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
#[inline]
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

/// How deep objects and arrays may nest in an event (`a.b.c…`).
pub const MAX_DEPTH: usize = 8;

/// How many elements an array in an event may hold.
pub const MAX_ARRAY: usize = 1000;

/// Nested objects and arrays become dotted names: `{"user": {"id": 7}}` → `user.id`,
/// `{"a": [5, {"b": 6}]}` → `a.0`, `a.1.b`. An empty object or array becomes `null`.
fn flatten<'a>(
    map: &'a Map<String, Json>,
    prefix: &str,
    depth: usize,
    out: &mut Vec<(String, &'a Json)>,
) -> Result<(), JsonError> {
    for (k, v) in map {
        let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        flatten_value(name, v, depth, out)?;
    }
    Ok(())
}

fn flatten_value<'a>(
    name: String,
    v: &'a Json,
    depth: usize,
    out: &mut Vec<(String, &'a Json)>,
) -> Result<(), JsonError> {
    const NULL: &Json = &Json::Null;
    match v {
        Json::Object(_) | Json::Array(_) if depth + 1 >= MAX_DEPTH => Err(JsonError::Nested(name)),
        Json::Object(inner) if inner.is_empty() => {
            out.push((name, NULL));
            Ok(())
        }
        Json::Object(inner) => flatten(inner, &name, depth + 1, out),
        Json::Array(items) if items.len() > MAX_ARRAY => Err(JsonError::LongArray(name)),
        Json::Array(items) if items.is_empty() => {
            out.push((name, NULL));
            Ok(())
        }
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten_value(format!("{name}.{i}"), item, depth + 1, out)?;
            }
            Ok(())
        }
        _ => {
            out.push((name, v));
            Ok(())
        }
    }
}

/// Checks one JSON line and appends it as an event to `builder`; `default_ts` is used when
/// the line has no `timestamp-ms`. Nested objects and arrays become dotted field names
/// (`a.b`, `a.0`). On error nothing is appended.
pub fn push_json_line(builder: &mut BatchBuilder, line: &str, default_ts: i64) -> Result<(), JsonError> {
    if let Some(flat) = crate::json_in::read(line)? {
        let mut event = builder.event(flat.timestamp.unwrap_or(default_ts));
        for (name, value) in &flat.fields {
            use crate::json_in::Scalar;
            match value {
                Scalar::Null => event.null(name),
                Scalar::Bool(b) => event.field(name, *b),
                Scalar::Int(i) => event.field(name, *i),
                Scalar::Float(f) => event.field(name, *f),
                Scalar::Text(t) => event.field(name, &**t),
            };
        }
        return Ok(());
    }
    push_json_value(builder, line, default_ts)
}

#[cfg(test)]
pub(crate) fn push_json_value_for_tests(
    builder: &mut BatchBuilder,
    line: &str,
    default_ts: i64,
) -> Result<(), JsonError> {
    push_json_value(builder, line, default_ts)
}

/// [`push_json_line`] through a `serde_json::Value`: for lines that repeat a top-level key.
fn push_json_value(builder: &mut BatchBuilder, line: &str, default_ts: i64) -> Result<(), JsonError> {
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
            // Flattened above: never reached.
            Json::Array(_) | Json::Object(_) => event.null(name),
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
    max_events: usize,
    max_bytes: usize,
    builder: BatchBuilder,
    bytes: usize,
}

impl JsonBatcher {
    /// Batches of at most `max_events` events and `max_bytes` bytes of JSON, whose metadata
    /// names `source`.
    pub fn new(source: &'static str, max_events: usize, max_bytes: usize) -> Self {
        JsonBatcher { max_events: max_events.max(1), max_bytes, builder: BatchBuilder::new().source(source), bytes: 0 }
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
        self.bytes = 0;
        self.builder.take().map(Some)
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
