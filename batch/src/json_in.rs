//! One JSON line into one event, in a single pass (the common flat lines are scanned by
//! [`crate::json_scan`] first; this reads the rest): the line is read by `serde_json`'s
//! streaming deserializer straight into a flat list of fields that borrow from the line (no
//! `serde_json::Value`, no string copied unless it has escapes), which then goes into the batch
//! builder. Ingest and `squilla run` spend most of their time here.
//!
//! The rules are [`crate::json::push_json_line`]'s. A line with a top-level key given twice
//! (where the last value replaces the first, in the first one's place) is left to the
//! general path.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::json::{JsonError, MAX_ARRAY, MAX_DEPTH, TIMESTAMP};

/// A field's value as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'de> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Cow<'de, str>),
}

/// What a line held: its fields in order (nested ones with dotted names), its timestamp, and
/// the first rule it broke.
#[derive(Debug, Default)]
pub(crate) struct Flat<'de> {
    pub fields: Vec<(Cow<'de, str>, Scalar<'de>)>,
    pub timestamp: Option<i64>,
    seen_timestamp: bool,
    bad_timestamp: bool,
    not_object: bool,
    nested: Option<JsonError>,
    /// A top-level key appeared twice.
    pub repeated: bool,
}

impl Flat<'_> {
    /// No fields yet, room for `n`.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Flat { fields: Vec::with_capacity(n), ..Flat::default() }
    }

    /// Whether top-level `key` was given before: a field of that name, or `key.…` of an
    /// object or array.
    #[inline]
    pub(crate) fn has_key(&self, key: &str) -> bool {
        let k = key.as_bytes();
        self.fields.iter().any(|(n, _)| {
            let n = n.as_bytes();
            // Length and first byte first: they tell most keys apart without a `memcmp`.
            n.len() >= k.len()
                && n.first() == k.first()
                && n.starts_with(k)
                && (n.len() == k.len() || n[k.len()] == b'.')
        })
    }
}

/// Reads `line`: `Ok(None)` when it repeats a top-level key (the caller takes the general
/// path), the rule it broke otherwise.
pub(crate) fn read(line: &str) -> Result<Option<Flat<'_>>, JsonError> {
    if let Some(flat) = crate::json_scan::read(line) {
        return Ok((!flat.repeated).then_some(flat));
    }
    let mut flat = Flat::with_capacity(16);
    let mut de = serde_json::Deserializer::from_str(line);
    let parsed = Top(&mut flat).deserialize(&mut de).and_then(|()| de.end());
    if let Err(e) = parsed {
        return Err(JsonError::Syntax(e.to_string()));
    }
    if flat.not_object {
        return Err(JsonError::NotAnObject);
    }
    if flat.repeated {
        return Ok(None);
    }
    if flat.bad_timestamp {
        return Err(JsonError::Timestamp);
    }
    if let Some(err) = flat.nested.take() {
        return Err(err);
    }
    Ok(Some(flat))
}

struct Top<'a, 'de>(&'a mut Flat<'de>);

impl<'de> DeserializeSeed<'de> for Top<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Anything but an object at the top: read to its end (so that a syntax error still wins),
/// and noted.
macro_rules! not_object {
    ($($name:ident($($arg:ty)?)),*) => {$(
        fn $name<E: de::Error>(self $(, _: $arg)?) -> Result<(), E> {
            self.0.not_object = true;
            Ok(())
        }
    )*};
}

impl<'de> Visitor<'de> for Top<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    not_object!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64), visit_str(&str), visit_unit());

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.0.not_object = true;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let flat = self.0;
        while let Some(key) = map.next_key_seed(Key)? {
            if key == TIMESTAMP {
                flat.repeated |= std::mem::replace(&mut flat.seen_timestamp, true);
                match map.next_value::<Timestamp>()? {
                    Timestamp(Some(ts)) => flat.timestamp = Some(ts),
                    Timestamp(None) => flat.bad_timestamp = true,
                }
                continue;
            }
            flat.repeated |= flat.has_key(&key);
            map.next_value_seed(Field { name: key, depth: 0, flat: &mut *flat })?;
        }
        Ok(())
    }
}

/// A key, borrowed from the line when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// `timestamp-ms`: an integer that fits an `i64`, or `None` for anything else.
struct Timestamp(Option<i64>);

impl<'de> de::Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(Some(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(i64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Timestamp, E> {
                Ok(Timestamp(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Timestamp, E> {
                Ok(Timestamp(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Timestamp, E> {
                Ok(Timestamp(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Timestamp, E> {
                Ok(Timestamp(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Timestamp, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Timestamp(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Timestamp, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Timestamp(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A field's value at `depth` (0 at the top), flattened into `flat` under `name`.
struct Field<'a, 'de> {
    name: Cow<'de, str>,
    depth: usize,
    flat: &'a mut Flat<'de>,
}

impl<'de> DeserializeSeed<'de> for Field<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Field<'_, 'de> {
    fn push(self, value: Scalar<'de>) {
        self.flat.fields.push((self.name, value));
    }

    /// Whether an object or array may open here; if not, the rule is noted (once).
    fn may_nest(&mut self) -> bool {
        if self.depth + 1 < MAX_DEPTH {
            return true;
        }
        if self.flat.nested.is_none() {
            self.flat.nested = Some(JsonError::Nested(self.name.to_string()));
        }
        false
    }
}

impl<'de> Visitor<'de> for Field<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Scalar::Bool(v));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Scalar::Int(v));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Scalar::Float(v));
        Ok(())
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.push(Scalar::Text(Cow::Borrowed(v)));
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Scalar::Text(Cow::Owned(v.to_owned())));
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.push(Scalar::Text(Cow::Owned(v)));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.push(Scalar::Null);
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.push(Scalar::Null);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if !self.may_nest() {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let mut any = false;
        while let Some(key) = map.next_key_seed(Key)? {
            any = true;
            let name = Cow::Owned(format!("{}.{key}", self.name));
            map.next_value_seed(Field { name, depth: self.depth + 1, flat: &mut *self.flat })?;
        }
        if !any {
            self.push(Scalar::Null);
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if !self.may_nest() {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let mut i = 0usize;
        loop {
            if i == MAX_ARRAY {
                // One more element is one too many.
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                if self.flat.nested.is_none() {
                    self.flat.nested = Some(JsonError::LongArray(self.name.to_string()));
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                break;
            }
            let name = Cow::Owned(format!("{}.{i}", self.name));
            let field = Field { name, depth: self.depth + 1, flat: &mut *self.flat };
            if seq.next_element_seed(field)?.is_none() {
                break;
            }
            i += 1;
        }
        if i == 0 {
            self.push(Scalar::Null);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::json::{JsonError, push_json_line};
    use crate::{BatchBuilder, Event};

    /// What a line becomes on the general path (through `serde_json::Value`).
    fn general(line: &str) -> Result<Vec<Event>, JsonError> {
        let mut b = BatchBuilder::new();
        super::super::json::push_json_value_for_tests(&mut b, line, 7)?;
        Ok(b.finish().unwrap().view().to_events())
    }

    fn fast(line: &str) -> Result<Vec<Event>, JsonError> {
        let mut b = BatchBuilder::new();
        push_json_line(&mut b, line, 7)?;
        Ok(b.finish().unwrap().view().to_events())
    }

    fn json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value as J;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::from),
            any::<u64>().prop_map(J::from),
            (-1e12f64..1e12).prop_map(J::from),
            "[a-z\\\"é\n .]{0,6}".prop_map(J::String),
        ];
        leaf.prop_recursive(10, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
                proptest::collection::vec(("[a-c.]{1,2}|timestamp-ms", inner), 0..5)
                    .prop_map(|kv| J::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_object_reads_as_on_the_general_path(
            fields in proptest::collection::vec(("[a-d.]{1,3}|timestamp-ms", json()), 0..8),
        ) {
            // Written by hand, so that keys may repeat.
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}: {v}", serde_json::Value::from(k.as_str()))).collect();
            let line = format!("{{{}}}", body.join(", "));
            let (f, g) = (fast(&line), general(&line));
            match (&f, &g) {
                (Err(JsonError::Syntax(_)), Err(JsonError::Syntax(_))) => {}
                _ => proptest::prop_assert_eq!(f, g, "{}", line),
            }
        }
    }

    proptest::proptest! {
        /// Flat lines of the kinds `json_scan` reads itself, numbers written in many ways.
        #[test]
        fn flat_lines_read_as_on_the_general_path(
            fields in proptest::collection::vec(("[a-c]{1,2}|timestamp-ms", prop_flat_value()), 0..8),
            space in "[ \t]{0,2}",
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\"{space}:{space}{v}")).collect();
            let line = format!("{space}{{{}}}{space}", body.join(","));
            let (f, g) = (fast(&line), general(&line));
            match (&f, &g) {
                (Err(JsonError::Syntax(_)), Err(JsonError::Syntax(_))) => {}
                _ => proptest::prop_assert_eq!(f, g, "{}", line),
            }
        }
    }

    fn prop_flat_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            (-1_000_000_000i64..1_000_000_000, 0u32..1_000_000, 0usize..7)
                .prop_map(|(i, f, w)| format!("{i}.{f:0w$}", w = w.max(1))),
            any::<f64>().prop_map(|x| x.to_string()),
            "-?[0-9]{1,20}(\\.[0-9]{0,20})?".prop_map(|n| n),
            "[a-zé ✓-]{0,12}".prop_map(|t| format!("\"{t}\"")),
        ]
    }

    #[test]
    fn the_single_pass_reads_every_line_as_the_general_path_does() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(8), "]".repeat(8));
        let long = format!("{{\"a\": [{}0]}}", "0,".repeat(1000));
        let lines = [
            r#"{"timestamp-ms": 5, "device": "tv", "status": 500, "latency": 12.5, "ok": true, "none": null}"#,
            r#"{"device": "t\"v\n", "esc\u00e9": "\u00e9", "big": 18446744073709551615, "neg": -3}"#,
            r#"{"user": {"id": 7, "tags": ["a", {"b": 6}], "empty": {}, "list": []}, "x": 1}"#,
            r#"{"timestamp-ms": 1.5}"#,
            r#"{"timestamp-ms": "now", "a": 1}"#,
            r#"{"timestamp-ms": 18446744073709551615}"#,
            r#"{"a": 1, "a": 2, "b": 3}"#,
            r#"{"a": {"x": 1}, "b": 2, "a": 3}"#,
            r#"{"a.b": 1, "a": {"b": 2}}"#,
            r#"{"timestamp-ms": 1, "timestamp-ms": 2}"#,
            r#"[1, 2, 3]"#,
            r#""text""#,
            r#"17"#,
            r#"{"a": 1"#,
            r#"{"a": 1} trailing"#,
            r#"[1, 2"#,
            r#"nope"#,
            r#"{}"#,
            "",
            &deep,
            &long,
            r#"{"a": [[[[[[[{}]]]]]]]}"#,
            // Lines the scanner reads itself, and the edges where it hands over.
            r#"{"a":"x","b":-12,"c":0.25,"d":true,"e":false,"f":null,"timestamp-ms":-3}"#,
            " \t{ \"a\" : 1 ,\r\n\"b\":\"\" } \n",
            r#"{"n": -0, "m": 0}"#,
            r#"{"n": -0.0}"#,
            r#"{"n": 1e5, "m": 2E-3, "o": 1.5e300, "p": 1e400}"#,
            r#"{"n": 00}"#,
            r#"{"n": 01.5}"#,
            r#"{"n": 1.}"#,
            r#"{"n": .5}"#,
            r#"{"n": -}"#,
            r#"{"n": +1}"#,
            r#"{"n": 999999999999999999, "m": -999999999999999999}"#,
            r#"{"n": 9223372036854775807, "m": -9223372036854775808, "o": 9223372036854775808}"#,
            r#"{"n": 123456789012345678901234567890}"#,
            r#"{"n": 0.1, "m": 3.141592653589793, "o": 2.2250738585072014e-308, "p": 0.30000000000000004}"#,
            r#"{"n": 12abc}"#,
            r#"{"n": tru}"#,
            r#"{"n": nulls}"#,
            "{\"tab\": \"a\tb\"}",
            r#"{"a": "é✓"}"#,
            r#"{"a": 1,}"#,
            r#"{,}"#,
            r#"{"a" 1}"#,
            r#"{"a": 1}}"#,
            r#"{"timestamp-ms": 9223372036854775807}"#,
            r#"{"timestamp-ms": -0}"#,
            r#"{"timestamp-ms": true}"#,
            r#"{"x": 1, "timestamp-ms": 2, "timestamp-ms": 2}"#,
        ];
        for line in lines {
            let (f, g) = (fast(line), general(line));
            match (&f, &g) {
                (Err(JsonError::Syntax(_)), Err(JsonError::Syntax(_))) => {}
                _ => assert_eq!(f, g, "{line}"),
            }
        }
    }
}
