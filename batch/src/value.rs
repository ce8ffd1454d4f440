//! Field values, borrowed and owned, and the owned event.

/// An owned field value: the six types an event field can hold.
///
/// Floats compare by bit pattern, so a `NaN` equals itself and a value always equals its
/// round trip through a batch.
#[derive(Debug, Clone)]
pub enum Value {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(String),
    /// Opaque bytes.
    Bytes(Vec<u8>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.as_ref() == other.as_ref()
    }
}

impl Value {
    /// Borrows this value as a [`ValueRef`].
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Bytes(b) => ValueRef::Bytes(b),
        }
    }
}

/// A borrowed field value, as read in place from a batch.
#[derive(Debug, Clone, Copy)]
pub enum ValueRef<'a> {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    Text(&'a str),
    /// Opaque bytes.
    Bytes(&'a [u8]),
}

impl PartialEq for ValueRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        use ValueRef::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (Text(a), Text(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            _ => false,
        }
    }
}

impl<'a> ValueRef<'a> {
    /// Copies this value into an owned [`Value`].
    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Text(s) => Value::Text(s.to_owned()),
            ValueRef::Bytes(b) => Value::Bytes(b.to_vec()),
        }
    }

    /// The text, if this is text.
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            ValueRef::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an integer.
    pub fn as_int(self) -> Option<i64> {
        match self {
            ValueRef::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            ValueRef::Float(f) => Some(f),
            ValueRef::Int(i) => Some(i as f64),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean.
    pub fn as_bool(self) -> Option<bool> {
        match self {
            ValueRef::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The name of this value's type, as used in error messages and docs.
    pub fn type_name(self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Bool(_) => "bool",
            ValueRef::Int(_) => "int",
            ValueRef::Float(_) => "float",
            ValueRef::Text(_) => "text",
            ValueRef::Bytes(_) => "bytes",
        }
    }
}

impl std::fmt::Display for ValueRef<'_> {
    /// Formats the value as a person reads it: text unquoted, bytes as `0x…` hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueRef::Null => f.write_str("null"),
            ValueRef::Bool(b) => write!(f, "{b}"),
            ValueRef::Int(i) => write!(f, "{i}"),
            ValueRef::Float(x) => write!(f, "{x}"),
            ValueRef::Text(s) => f.write_str(s),
            ValueRef::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }
    }
}

macro_rules! value_from {
    ($($t:ty => |$v:ident| $owned:expr, $borrowed:expr;)*) => {$(
        impl From<$t> for Value {
            fn from($v: $t) -> Self { $owned }
        }
        impl<'a> From<$t> for ValueRef<'a> {
            fn from($v: $t) -> Self { $borrowed }
        }
    )*};
}

value_from! {
    bool => |v| Value::Bool(v), ValueRef::Bool(v);
    i64 => |v| Value::Int(v), ValueRef::Int(v);
    i32 => |v| Value::Int(v.into()), ValueRef::Int(v.into());
    u32 => |v| Value::Int(v.into()), ValueRef::Int(v.into());
    f64 => |v| Value::Float(v), ValueRef::Float(v);
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl<'a> From<&'a str> for ValueRef<'a> {
    fn from(v: &'a str) -> Self {
        ValueRef::Text(v)
    }
}
impl<'a> From<&'a String> for ValueRef<'a> {
    fn from(v: &'a String) -> Self {
        ValueRef::Text(v)
    }
}
impl<'a> From<&'a [u8]> for ValueRef<'a> {
    fn from(v: &'a [u8]) -> Self {
        ValueRef::Bytes(v)
    }
}
impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> Self {
        v.as_ref()
    }
}

/// An owned, self-describing event: a timestamp and `(name, value)` fields.
///
/// Batches do not store this type (they intern names); it is for code that keeps events
/// beyond the life of a batch, and for tests.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// Event time in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The fields, in order.
    pub fields: Vec<(String, Value)>,
}

impl Event {
    /// An event at `timestamp_ms` with no fields.
    pub fn new(timestamp_ms: i64) -> Self {
        Event { timestamp_ms, fields: Vec::new() }
    }

    /// Adds a field, builder-style.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.push((name.to_owned(), value.into()));
        self
    }

    /// The first field called `name`.
    pub fn get(&self, name: &str) -> Option<ValueRef<'_>> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_ref())
    }
}
