//! Running a query over events read in place.
//!
//! A [`Runner`] holds one subscription's state: its random stream (for `sample`) and, for an
//! aggregating query, the accumulators of the open window by group. Events are read as
//! [`EventRef`]s straight from the batch; only what a result keeps is copied, into the JSON
//! object that is sent.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};
use std::sync::Arc;

use serde_json::{Map, Number, Value as Json};
use squilla_batch::{EventRef, ValueRef};

use crate::{AggKind, Cmp, Expr, Item, Lit, Query};

/// Values a `percentile` keeps per group and window; beyond, a uniform sample of that size.
pub const PERCENTILE_SAMPLES: usize = 10_000;

/// Default limit on what one running query's open window holds, bytes (64 MiB).
pub const DEFAULT_STATE_BYTES: usize = 64 << 20;

/// A value while evaluating.
#[derive(Debug, Clone, PartialEq)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
}

impl V<'_> {
    fn number(&self) -> Option<f64> {
        match self {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            _ => None,
        }
    }

    fn truthy(&self) -> bool {
        matches!(self, V::Bool(true))
    }

    fn json(&self) -> Json {
        match self {
            V::Null => Json::Null,
            V::Bool(b) => Json::Bool(*b),
            V::Int(i) => Json::from(*i),
            V::Float(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
            V::Text(t) => Json::String(t.to_string()),
        }
    }

    fn owned(&self) -> V<'static> {
        match self {
            V::Null => V::Null,
            V::Bool(b) => V::Bool(*b),
            V::Int(i) => V::Int(*i),
            V::Float(f) => V::Float(*f),
            V::Text(t) => V::Text(Cow::Owned(t.to_string())),
        }
    }
}

/// A group key part, owned: what the groups of an open window are stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Text(Box<str>),
}

/// A group's key. Hashed part by part exactly as [`Parts`] hashes, so that an event's key can
/// be looked up from its values read in place, without making owned copies of its text.
#[derive(Debug, PartialEq, Eq)]
struct GroupKey(Vec<Key>);

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for k in &self.0 {
            match k {
                Key::Null => hash_part(h, 0, &()),
                Key::Bool(b) => hash_part(h, 1, b),
                Key::Int(i) => hash_part(h, 2, i),
                Key::Float(bits) => hash_part(h, 3, bits),
                Key::Text(t) => hash_part(h, 4, &**t),
            }
        }
    }
}

/// An event's group key as evaluated, borrowing its text from the batch.
struct Parts<'v, 'a>(&'v [V<'a>]);

impl Hash for Parts<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for v in self.0 {
            match v {
                V::Null => hash_part(h, 0, &()),
                V::Bool(b) => hash_part(h, 1, b),
                V::Int(i) => hash_part(h, 2, i),
                V::Float(f) => hash_part(h, 3, &f.to_bits()),
                V::Text(t) => hash_part(h, 4, &**t),
            }
        }
    }
}

fn hash_part<H: Hasher, T: Hash + ?Sized>(h: &mut H, tag: u8, value: &T) {
    h.write_u8(tag);
    value.hash(h);
}

impl Equivalent<GroupKey> for Parts<'_, '_> {
    fn equivalent(&self, key: &GroupKey) -> bool {
        self.0.len() == key.0.len()
            && self.0.iter().zip(&key.0).all(|(v, k)| match (v, k) {
                (V::Null, Key::Null) => true,
                (V::Bool(a), Key::Bool(b)) => a == b,
                (V::Int(a), Key::Int(b)) => a == b,
                (V::Float(a), Key::Float(b)) => a.to_bits() == *b,
                (V::Text(a), Key::Text(b)) => **a == **b,
                _ => false,
            })
    }
}

impl Key {
    fn of(v: &V<'_>) -> Key {
        match v {
            V::Null => Key::Null,
            V::Bool(b) => Key::Bool(*b),
            V::Int(i) => Key::Int(*i),
            V::Float(f) => Key::Float(f.to_bits()),
            V::Text(t) => Key::Text(Box::from(&**t)),
        }
    }

    fn json(&self) -> Json {
        match self {
            Key::Null => Json::Null,
            Key::Bool(b) => Json::Bool(*b),
            Key::Int(i) => Json::from(*i),
            Key::Float(bits) => Number::from_f64(f64::from_bits(*bits)).map_or(Json::Null, Json::Number),
            Key::Text(t) => Json::String(t.to_string()),
        }
    }
}

fn field<'a>(event: &EventRef<'a>, name: &str) -> V<'a> {
    if name == squilla_batch::json::TIMESTAMP {
        return V::Int(event.timestamp_ms());
    }
    match event.get(name) {
        None | Some(ValueRef::Null) => V::Null,
        Some(ValueRef::Bool(b)) => V::Bool(b),
        Some(ValueRef::Int(i)) => V::Int(i),
        Some(ValueRef::Float(f)) => V::Float(f),
        Some(ValueRef::Text(t)) => V::Text(Cow::Borrowed(t)),
        Some(bytes @ ValueRef::Bytes(_)) => V::Text(Cow::Owned(bytes.to_string())),
    }
}

fn compare(cmp: Cmp, a: &V<'_>, b: &V<'_>) -> bool {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (V::Text(x), V::Text(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
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

/// xorshift64*: a fast, seeded random stream for `sample`.
fn next_random(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

fn eval<'a>(e: &Expr, event: &EventRef<'a>, rng: &mut u64) -> V<'a> {
    match e {
        Expr::Field(name) => field(event, name),
        Expr::Lit(l) => match l {
            Lit::Null => V::Null,
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::Float(f) => V::Float(*f),
            Lit::Text(t) => V::Text(Cow::Owned(t.clone())),
        },
        Expr::Cmp(cmp, a, b) => V::Bool(compare(*cmp, &eval(a, event, rng), &eval(b, event, rng))),
        Expr::Arith(op, a, b) => {
            let (a, b) = (eval(a, event, rng), eval(b, event, rng));
            match (&a, &b, op) {
                (V::Int(x), V::Int(y), '+') => x.checked_add(*y).map_or(V::Null, V::Int),
                (V::Int(x), V::Int(y), '-') => x.checked_sub(*y).map_or(V::Null, V::Int),
                (V::Int(x), V::Int(y), '*') => x.checked_mul(*y).map_or(V::Null, V::Int),
                _ => match (a.number(), b.number()) {
                    (Some(x), Some(y)) => V::Float(match op {
                        '+' => x + y,
                        '-' => x - y,
                        '*' => x * y,
                        _ => x / y,
                    }),
                    _ => V::Null,
                },
            }
        }
        Expr::And(a, b) => V::Bool(eval(a, event, rng).truthy() && eval(b, event, rng).truthy()),
        Expr::Or(a, b) => V::Bool(eval(a, event, rng).truthy() || eval(b, event, rng).truthy()),
        Expr::Not(a) => V::Bool(!eval(a, event, rng).truthy()),
        Expr::IsNull(a, negated) => V::Bool((eval(a, event, rng) == V::Null) != *negated),
        Expr::Regex(a, re) => match eval(a, event, rng) {
            V::Text(t) => V::Bool(re.is_match(&t)),
            _ => V::Bool(false),
        },
        Expr::Sample(share) => V::Bool(next_random(rng) < *share),
        // Aggregates are evaluated by the window, never per event.
        Expr::Agg(_) => V::Null,
    }
}

/// An aggregate's running state.
#[derive(Debug, Clone)]
enum Acc {
    Count(u64),
    Sum(f64, bool),
    Min(Option<V<'static>>),
    Max(Option<V<'static>>),
    Avg(f64, u64),
    Percentile(f64, Vec<f64>, u64),
}

impl Acc {
    fn new(kind: AggKind) -> Acc {
        match kind {
            AggKind::Count => Acc::Count(0),
            AggKind::Sum => Acc::Sum(0.0, false),
            AggKind::Min => Acc::Min(None),
            AggKind::Max => Acc::Max(None),
            AggKind::Avg => Acc::Avg(0.0, 0),
            AggKind::Percentile(q) => Acc::Percentile(q, Vec::new(), 0),
        }
    }

    /// Adds a value; returns by how many bytes the accumulator grew (or shrank).
    fn add(&mut self, v: Option<V<'_>>, rng: &mut u64) -> isize {
        let text = |m: &Option<V<'_>>| match m {
            Some(V::Text(t)) => t.len() as isize,
            _ => 0,
        };
        match (self, v) {
            (Acc::Count(n), None) => *n += 1,
            (_, Some(V::Null)) => {}
            (Acc::Count(n), Some(_)) => *n += 1,
            (Acc::Sum(s, any), Some(v)) => {
                if let Some(x) = v.number() {
                    *s += x;
                    *any = true;
                }
            }
            (Acc::Min(m), Some(v)) => {
                if m.as_ref().is_none_or(|m| compare(Cmp::Lt, &v, m)) {
                    let before = text(m);
                    *m = Some(v.owned());
                    return text(m) - before;
                }
            }
            (Acc::Max(m), Some(v)) => {
                if m.as_ref().is_none_or(|m| compare(Cmp::Gt, &v, m)) {
                    let before = text(m);
                    *m = Some(v.owned());
                    return text(m) - before;
                }
            }
            (Acc::Avg(s, n), Some(v)) => {
                if let Some(x) = v.number() {
                    *s += x;
                    *n += 1;
                }
            }
            (Acc::Percentile(_, values, seen), Some(v)) => {
                if let Some(x) = v.number() {
                    *seen += 1;
                    if values.len() < PERCENTILE_SAMPLES {
                        values.push(x);
                        return std::mem::size_of::<f64>() as isize;
                    } else {
                        // Reservoir sampling: every value seen has the same chance to be kept.
                        let j = (next_random(rng) * *seen as f64) as usize;
                        if j < PERCENTILE_SAMPLES {
                            values[j] = x;
                        }
                    }
                }
            }
            (_, None) => {}
        }
        0
    }

    fn finish(&mut self) -> Json {
        match self {
            Acc::Count(n) => Json::from(*n),
            Acc::Sum(s, any) => {
                if *any {
                    V::Float(*s).json()
                } else {
                    Json::Null
                }
            }
            Acc::Min(m) | Acc::Max(m) => m.as_ref().map_or(Json::Null, V::json),
            Acc::Avg(s, n) => {
                if *n == 0 {
                    Json::Null
                } else {
                    V::Float(*s / *n as f64).json()
                }
            }
            Acc::Percentile(q, values, _) => {
                if values.is_empty() {
                    return Json::Null;
                }
                values.sort_by(f64::total_cmp);
                // Nearest rank.
                let rank = ((*q * values.len() as f64).ceil() as usize).clamp(1, values.len());
                V::Float(values[rank - 1]).json()
            }
        }
    }
}

/// Bytes counted for each group of an open window beyond its key's text: the table entry,
/// the key's parts and the accumulators.
const GROUP_OVERHEAD: usize = 96;
/// Bytes counted per key part and per accumulator.
const PART_BYTES: usize = 24;

/// An aggregating query's open window would hold more than its state limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the query's window state would pass its limit of {limit} bytes ({groups} groups so far); group by fewer distinct keys or use a shorter window"
)]
pub struct StateLimit {
    /// The limit, bytes.
    pub limit: usize,
    /// Groups in the open window when it was reached.
    pub groups: usize,
}

/// One subscription's query, running.
#[derive(Debug)]
pub struct Runner {
    query: Arc<Query>,
    rng: u64,
    groups: HashMap<GroupKey, Vec<Acc>>,
    window_start: i64,
    /// What the open window holds, bytes (an estimate that never undercounts by much).
    state_bytes: usize,
    max_state_bytes: usize,
}

impl Runner {
    /// A runner whose first window starts at `now_ms`; `seed` drives `sample`. Its open
    /// window may hold up to [`DEFAULT_STATE_BYTES`] (see [`Runner::with_state_limit`]).
    pub fn new(query: Arc<Query>, now_ms: i64, seed: u64) -> Self {
        Runner {
            query,
            rng: seed | 1,
            groups: HashMap::new(),
            window_start: now_ms,
            state_bytes: 0,
            max_state_bytes: DEFAULT_STATE_BYTES,
        }
    }

    /// Sets how many bytes the open window may hold (groups, their keys and accumulators);
    /// [`Runner::push`] refuses an event that would pass it.
    pub fn with_state_limit(mut self, max_state_bytes: usize) -> Self {
        self.max_state_bytes = max_state_bytes;
        self
    }

    /// What the open window holds now, bytes (estimated from its groups, keys and values).
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    /// The query it runs.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Whether the query passes `event` (its `WHERE`).
    pub fn matches(&mut self, event: &EventRef<'_>) -> bool {
        match &self.query.filter {
            None => true,
            Some(f) => eval(f, event, &mut self.rng).truthy(),
        }
    }

    /// Feeds one event: a non-aggregating query appends its result to `out`; an aggregating
    /// one folds it into its window (see [`Runner::tick`]). Refuses (and does not count) an
    /// event whose new group would take the window past its state limit.
    pub fn push(&mut self, event: &EventRef<'_>, out: &mut Vec<Map<String, Json>>) -> Result<(), StateLimit> {
        if !self.matches(event) {
            return Ok(());
        }
        let Some(_) = self.query.window_ms else {
            let mut map = Map::new();
            map.insert(squilla_batch::json::TIMESTAMP.into(), event.timestamp_ms().into());
            for item in &self.query.items {
                match item {
                    Item::All => {
                        if let Json::Object(all) = squilla_batch::json::to_json(event) {
                            map.extend(all);
                        }
                    }
                    Item::Named { name, expr } => {
                        map.insert(name.clone(), eval(expr, event, &mut self.rng).json());
                    }
                }
            }
            out.push(map);
            return Ok(());
        };
        let rng = &mut self.rng;
        let values: Vec<V<'_>> = self.query.keys.iter().map(|k| eval(k, event, rng)).collect();
        let query = &self.query;
        // Owned copies of the key are made only for a group's first event in the window.
        if !self.groups.contains_key(&Parts(&values)) {
            let accs: Vec<Acc> = query
                .items
                .iter()
                .filter_map(|i| match i {
                    Item::Named { expr: Expr::Agg(agg), .. } => Some(Acc::new(agg.kind)),
                    _ => None,
                })
                .collect();
            let key_text: usize = values.iter().map(|v| if let V::Text(t) = v { t.len() } else { 0 }).sum();
            let cost = GROUP_OVERHEAD + key_text + (values.len() + accs.len()) * PART_BYTES;
            if self.state_bytes + cost > self.max_state_bytes {
                return Err(StateLimit { limit: self.max_state_bytes, groups: self.groups.len() });
            }
            self.state_bytes += cost;
            self.groups.insert(GroupKey(values.iter().map(Key::of).collect()), accs);
        }
        let Some(accs) = self.groups.get_mut(&Parts(&values)) else { return Ok(()) };
        let mut i = 0;
        let mut grown = 0isize;
        for item in &query.items {
            if let Item::Named { expr: Expr::Agg(agg), .. } = item {
                let v = agg.arg.as_ref().map(|a| eval(a, event, rng));
                grown += accs[i].add(v, rng);
                i += 1;
            }
        }
        self.state_bytes = self.state_bytes.saturating_add_signed(grown);
        if self.state_bytes > self.max_state_bytes {
            return Err(StateLimit { limit: self.max_state_bytes, groups: self.groups.len() });
        }
        Ok(())
    }

    /// Closes the window if `now_ms` is past its end, appending one result per group.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Map<String, Json>>) {
        let Some(window) = self.query.window_ms else { return };
        let end = self.window_start + window as i64;
        if now_ms < end {
            return;
        }
        for (GroupKey(key), mut accs) in self.groups.drain() {
            let mut map = Map::new();
            map.insert(squilla_batch::json::TIMESTAMP.into(), end.into());
            map.insert("window-ms".into(), window.into());
            let mut i = 0;
            for item in &self.query.items {
                let Item::Named { name, expr } = item else { continue };
                match expr {
                    Expr::Agg(_) => {
                        map.insert(name.clone(), accs[i].finish());
                        i += 1;
                    }
                    e => {
                        // The compiler accepts only keys here; anything else has no value.
                        let value = self.query.keys.iter().position(|k| k == e).and_then(|k| key.get(k));
                        map.insert(name.clone(), value.map_or(Json::Null, Key::json));
                    }
                }
            }
            out.push(map);
        }
        self.state_bytes = 0;
        // Windows are aligned to the first one; skip any that passed with no tick.
        let passed = (now_ms - self.window_start) / window as i64;
        self.window_start += passed * window as i64;
    }
}
