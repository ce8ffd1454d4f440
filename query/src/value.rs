//! Values while a query runs: borrowed from the batch where possible ([`V`]), owned as group
//! keys ([`Key`]), compared for `WHERE` and ordered for `ORDER BY`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use hashbrown::Equivalent;
use serde_json::{Number, Value as Json};
use squilla_batch::{EventRef, ValueRef};

use crate::Cmp;

/// A value while evaluating.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    /// An object (a field prefix) or an array (`list(x)`).
    Json(Box<Json>),
}

impl V<'_> {
    #[inline]
    pub(crate) fn number(&self) -> Option<f64> {
        match self {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            _ => None,
        }
    }

    #[inline]
    pub(crate) fn truthy(&self) -> bool {
        matches!(self, V::Bool(true))
    }

    pub(crate) fn json(&self) -> Json {
        match self {
            V::Null => Json::Null,
            V::Bool(b) => Json::Bool(*b),
            V::Int(i) => Json::from(*i),
            V::Float(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
            V::Text(t) => Json::String(t.to_string()),
            V::Json(j) => (**j).clone(),
        }
    }

    pub(crate) fn owned(&self) -> V<'static> {
        match self {
            V::Null => V::Null,
            V::Bool(b) => V::Bool(*b),
            V::Int(i) => V::Int(*i),
            V::Float(f) => V::Float(*f),
            V::Text(t) => V::Text(Cow::Owned(t.to_string())),
            V::Json(j) => V::Json(j.clone()),
        }
    }

    /// Bytes this value holds beyond its slot, as state accounting counts them.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            V::Text(t) => t.len(),
            V::Json(j) => json_bytes(j),
            _ => 0,
        }
    }
}

/// About what a JSON value takes in memory, bytes (never much less).
pub(crate) fn json_bytes(j: &Json) -> usize {
    match j {
        Json::String(s) => 24 + s.len(),
        Json::Array(a) => 24 + a.iter().map(json_bytes).sum::<usize>(),
        Json::Object(m) => 48 + m.iter().map(|(k, v)| 32 + k.len() + json_bytes(v)).sum::<usize>(),
        _ => 16,
    }
}

/// A field of `event`: `timestamp-ms` is its timestamp; a name no field has, but that prefixes
/// dotted names (`user` of `user.id`, `user.name`), is the object of those fields.
#[inline]
pub(crate) fn field<'a>(event: &EventRef<'a>, name: &str) -> V<'a> {
    if name == squilla_batch::json::TIMESTAMP {
        return V::Int(event.timestamp_ms());
    }
    match event.get(name) {
        Some(v) => from_ref(v),
        None => prefix(event.fields(), name),
    }
}

/// [`field`] as JSON, without an intermediate value.
pub(crate) fn field_json(event: &EventRef<'_>, name: &str) -> Json {
    if name == squilla_batch::json::TIMESTAMP {
        return Json::from(event.timestamp_ms());
    }
    match event.get(name) {
        Some(ValueRef::Null) => Json::Null,
        Some(ValueRef::Bool(b)) => Json::Bool(b),
        Some(ValueRef::Int(i)) => Json::from(i),
        Some(ValueRef::Float(f)) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        Some(ValueRef::Text(t)) => Json::String(t.to_owned()),
        Some(bytes @ ValueRef::Bytes(_)) => Json::String(bytes.to_string()),
        None => prefix(event.fields(), name).json(),
    }
}

#[inline]
pub(crate) fn from_ref(v: ValueRef<'_>) -> V<'_> {
    match v {
        ValueRef::Null => V::Null,
        ValueRef::Bool(b) => V::Bool(b),
        ValueRef::Int(i) => V::Int(i),
        ValueRef::Float(f) => V::Float(f),
        ValueRef::Text(t) => V::Text(Cow::Borrowed(t)),
        bytes @ ValueRef::Bytes(_) => V::Text(Cow::Owned(bytes.to_string())),
    }
}

/// The object (or array) of the fields named `name.…`, nested at each further dot; `null` if
/// none.
#[cold]
#[inline(never)]
pub(crate) fn prefix<'a>(fields: impl Iterator<Item = (&'a str, ValueRef<'a>)>, name: &str) -> V<'a> {
    let mut found = false;
    let nested = squilla_batch::json::nest(fields.filter_map(|(field, value)| {
        let rest = field.strip_prefix(name)?.strip_prefix('.')?;
        found = true;
        Some((rest, from_ref(value).json()))
    }));
    if found { V::Json(Box::new(nested)) } else { V::Null }
}

/// The values of the fields `prefix.N` + `suffix` (`a[*].latency`: prefix `a`, suffix
/// `.latency`), for every index `N`, as an array; `null` if none.
#[inline(never)]
pub(crate) fn any<'a>(fields: impl Iterator<Item = (&'a str, ValueRef<'a>)>, prefix: &str, suffix: &str) -> V<'a> {
    let mut items = Vec::new();
    let mut objects: Vec<(usize, Vec<(&str, Json)>)> = Vec::new();
    for (field, value) in fields {
        let Some(rest) = field.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else { continue };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(index) = rest[..digits].parse::<usize>() else { continue };
        let after = &rest[digits..];
        if after == suffix {
            items.push(from_ref(value).json());
        } else if let Some(deeper) = after.strip_prefix(suffix).and_then(|r| r.strip_prefix('.')) {
            // An object inside the element: gathered per index.
            match objects.iter_mut().find(|(i, _)| *i == index) {
                Some((_, fields)) => fields.push((deeper, from_ref(value).json())),
                None => objects.push((index, vec![(deeper, from_ref(value).json())])),
            }
        }
    }
    items.extend(objects.into_iter().map(|(_, fields)| squilla_batch::json::nest(fields)));
    if items.is_empty() { V::Null } else { V::Json(Box::new(Json::Array(items))) }
}

/// A JSON value as a query value.
pub(crate) fn from_json(j: &Json) -> V<'static> {
    match j {
        Json::Null => V::Null,
        Json::Bool(b) => V::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => V::Int(i),
            None => V::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => V::Text(Cow::Owned(s.clone())),
        other => V::Json(Box::new(other.clone())),
    }
}

/// `a cmp b` as `WHERE` compares: numbers across int and float, text with text, booleans with
/// booleans; anything else (or `null`) is false, except that `!=` holds between different
/// non-null values.
#[inline]
pub(crate) fn compare(cmp: Cmp, a: &V<'_>, b: &V<'_>) -> bool {
    let ord = match (a, b) {
        (V::Text(x), V::Text(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Json(_), _) | (_, V::Json(_)) => return compare_elements(cmp, a, b),
        _ => match (a.number(), b.number()) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
    };
    let Some(ord) = ord else { return cmp == Cmp::Ne && (a != b) && !matches!((a, b), (V::Null, _) | (_, V::Null)) };
    match cmp {
        Cmp::Eq => ord == Ordering::Equal,
        Cmp::Ne => ord != Ordering::Equal,
        Cmp::Lt => ord == Ordering::Less,
        Cmp::Le => ord != Ordering::Greater,
        Cmp::Gt => ord == Ordering::Greater,
        Cmp::Ge => ord != Ordering::Less,
    }
}

/// [`compare`] with an array on either side: true if any element compares true
/// (`a[*].x > 3`); an object compares as itself (equal only to an equal object).
#[cold]
fn compare_elements(cmp: Cmp, a: &V<'_>, b: &V<'_>) -> bool {
    if let V::Json(j) = a
        && let Json::Array(items) = &**j
    {
        return items.iter().any(|item| compare(cmp, &from_json(item), b));
    }
    if let V::Json(j) = b
        && let Json::Array(items) = &**j
    {
        return items.iter().any(|item| compare(cmp, a, &from_json(item)));
    }
    match cmp {
        Cmp::Eq => a == b,
        Cmp::Ne => a != b && !matches!((a, b), (V::Null, _) | (_, V::Null)),
        _ => false,
    }
}

/// A total order for `ORDER BY` over non-null values: booleans, then numbers (ints and floats
/// together, NaN last), then text, then objects and arrays (by their JSON text).
pub(crate) fn order(a: &V<'_>, b: &V<'_>) -> Ordering {
    fn rank(v: &V<'_>) -> u8 {
        match v {
            V::Null => 0,
            V::Bool(_) => 1,
            V::Int(_) | V::Float(_) => 2,
            V::Text(_) => 3,
            V::Json(_) => 4,
        }
    }
    match (a, b) {
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        (V::Text(x), V::Text(y)) => x.cmp(y),
        (V::Json(x), V::Json(y)) => x.to_string().cmp(&y.to_string()),
        _ => match (a.number(), b.number()) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => rank(a).cmp(&rank(b)),
        },
    }
}

/// The integer a float equals, if any (`-0.0` is 0): keys, distinct counts and groups take
/// `1` and `1.0` as one value, as `=` does.
#[inline]
fn integral(f: f64) -> Option<i64> {
    // 2^63 as f64 is out of range; every float below it in magnitude with no fraction fits.
    if f.fract() == 0.0 && f.abs() < 9_223_372_036_854_775_808.0 { Some(f as i64) } else { None }
}

/// A group key part, owned: what the groups of an open window are stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Text(Box<str>),
    /// An object or array, by its JSON text.
    Json(Box<str>),
}

impl Key {
    #[inline]
    pub(crate) fn of(v: &V<'_>) -> Key {
        match v {
            V::Null => Key::Null,
            V::Bool(b) => Key::Bool(*b),
            V::Int(i) => Key::Int(*i),
            V::Float(f) => match integral(*f) {
                Some(i) => Key::Int(i),
                None => Key::Float(f.to_bits()),
            },
            V::Text(t) => Key::Text(Box::from(&**t)),
            V::Json(j) => Key::Json(j.to_string().into_boxed_str()),
        }
    }

    pub(crate) fn value(&self) -> V<'static> {
        match self {
            Key::Null => V::Null,
            Key::Bool(b) => V::Bool(*b),
            Key::Int(i) => V::Int(*i),
            Key::Float(bits) => V::Float(f64::from_bits(*bits)),
            Key::Text(t) => V::Text(Cow::Owned(t.to_string())),
            Key::Json(j) => V::Json(Box::new(serde_json::from_str(j).unwrap_or(Json::Null))),
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Key::Text(t) | Key::Json(t) => t.len(),
            _ => 0,
        }
    }

    #[inline]
    fn hash_into<H: Hasher>(&self, h: &mut H) {
        match self {
            Key::Null => hash_part(h, 0, &()),
            Key::Bool(b) => hash_part(h, 1, b),
            Key::Int(i) => hash_part(h, 2, i),
            Key::Float(bits) => hash_part(h, 3, bits),
            Key::Text(t) => hash_part(h, 4, &**t),
            Key::Json(t) => hash_part(h, 5, &**t),
        }
    }
}

impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.hash_into(h);
    }
}

/// A group's key. Hashed part by part exactly as [`Parts`] hashes, so that an event's key can
/// be looked up from its values read in place, without making owned copies of its text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct GroupKey(pub Vec<Key>);

impl Hash for GroupKey {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        for k in &self.0 {
            k.hash_into(h);
        }
    }
}

/// An event's group key as evaluated, borrowing its text from the batch.
pub(crate) struct Parts<'v, 'a>(pub &'v [V<'a>]);

impl Hash for Parts<'_, '_> {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        for v in self.0 {
            match v {
                V::Null => hash_part(h, 0, &()),
                V::Bool(b) => hash_part(h, 1, b),
                V::Int(i) => hash_part(h, 2, i),
                V::Float(f) => match integral(*f) {
                    Some(i) => hash_part(h, 2, &i),
                    None => hash_part(h, 3, &f.to_bits()),
                },
                V::Text(t) => hash_part(h, 4, &**t),
                V::Json(j) => hash_part(h, 5, j.to_string().as_str()),
            }
        }
    }
}

#[inline]
fn hash_part<H: Hasher, T: Hash + ?Sized>(h: &mut H, tag: u8, value: &T) {
    h.write_u8(tag);
    value.hash(h);
}

impl Equivalent<GroupKey> for Parts<'_, '_> {
    #[inline]
    fn equivalent(&self, key: &GroupKey) -> bool {
        self.0.len() == key.0.len() && self.0.iter().zip(&key.0).all(|(v, k)| same(v, k))
    }
}

/// Whether `v` is the value `k` was made of.
#[inline]
pub(crate) fn same(v: &V<'_>, k: &Key) -> bool {
    match (v, k) {
        (V::Null, Key::Null) => true,
        (V::Bool(a), Key::Bool(b)) => a == b,
        (V::Int(a), Key::Int(b)) => a == b,
        (V::Float(a), Key::Float(b)) => a.to_bits() == *b,
        (V::Float(a), Key::Int(b)) => integral(*a) == Some(*b),
        (V::Text(a), Key::Text(b)) => **a == **b,
        (V::Json(a), Key::Json(b)) => serde_json::from_str::<Json>(b).is_ok_and(|b| **a == b),
        _ => false,
    }
}
