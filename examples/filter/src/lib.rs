//! `filter`: keeps the events whose field matches a predicate given as parameters.
//!
//! Parameters:
//! - `field` (required): the field to test;
//! - `op` (default `eq`): one of `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `contains`, `exists`;
//! - `value` (required unless `op` is `exists`): what to compare with. Numbers compare as
//!   numbers (an int field with an int value exactly, otherwise as floats), `true`/`false`
//!   with booleans, anything else as text. `contains` is a substring test on text.
//!
//! An event without the field never matches (except that it fails `exists`); an event whose
//! field has another type than the value, or is NaN, never matches either. Matching events pass
//! unchanged.

use std::cmp::Ordering;

use squilla_sdk::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    Exists,
}

/// The filter stage.
pub struct Filter {
    field: String,
    op: Op,
    value: String,
    int: Option<i64>,
    float: Option<f64>,
    boolean: Option<bool>,
}

impl Filter {
    /// Whether `event` passes the predicate.
    pub fn matches(&self, event: &EventRef<'_>) -> bool {
        event.get(&self.field).is_some_and(|actual| self.holds(actual))
    }

    /// Whether the field's value `actual` passes the predicate.
    #[inline]
    fn holds(&self, actual: ValueRef<'_>) -> bool {
        match self.op {
            Op::Exists => true,
            Op::Contains => actual.as_str().is_some_and(|t| t.contains(self.value.as_str())),
            op => self.compare(actual).is_some_and(|o| match op {
                Op::Eq => o == Ordering::Equal,
                Op::Ne => o != Ordering::Equal,
                Op::Lt => o == Ordering::Less,
                Op::Le => o != Ordering::Greater,
                Op::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }),
        }
    }

    /// How the field's value orders against the parameter, if they are comparable.
    fn compare(&self, actual: ValueRef<'_>) -> Option<Ordering> {
        match actual {
            ValueRef::Int(i) => match self.int {
                Some(v) => Some(i.cmp(&v)),
                None => self.float.and_then(|f| (i as f64).partial_cmp(&f)),
            },
            ValueRef::Float(x) => self.float.and_then(|f| x.partial_cmp(&f)),
            ValueRef::Bool(b) => self.boolean.map(|v| b.cmp(&v)),
            ValueRef::Text(t) => Some(t.cmp(self.value.as_str())),
            ValueRef::Null | ValueRef::Bytes(_) => None,
        }
    }
}

#[stage]
impl Stage for Filter {
    fn init(params: &Params) -> Result<Self, StageError> {
        let op = match params.get("op").unwrap_or("eq") {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "contains" => Op::Contains,
            "exists" => Op::Exists,
            other => {
                return Err(StageError::new(format!(
                    "parameter `op` = {other:?} is not one of eq, ne, lt, le, gt, ge, contains, exists"
                )));
            }
        };
        let value: String =
            if op == Op::Exists { params.get_or("value", String::new())? } else { params.require("value")? };
        Ok(Filter {
            field: params.require("field")?,
            op,
            int: value.parse().ok(),
            float: value.parse().ok(),
            boolean: value.parse().ok(),
            value,
        })
    }

    fn process(&mut self, input: BatchView<'_>, out: &mut BatchBuilder) -> Result<(), StageError> {
        // The field's name is looked up once per batch; no event has it if the batch does not.
        let Some(field) = input.name_index(&self.field) else {
            return Ok(());
        };
        for event in input.events().filter(|e| e.get_at(field).is_some_and(|v| self.holds(v))) {
            out.push_ref(event);
        }
        Ok(())
    }
}
