//! Running a query over events read in place.
//!
//! A [`Runner`] holds one subscription's state: its random stream (for `sample`), what a
//! stream's `LIMIT` has let through, and for a windowed query its open windows (several at
//! once for event time), each holding groups (or rows) with their captured values and
//! accumulators. Events are read as [`EventRef`]s straight from the batch; only what a result
//! keeps is copied, into the JSON object that is sent.
//!
//! Nothing here can panic on what the compiler accepted: slots out of place read as `null`,
//! arithmetic is checked, and every index is a `get`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::hash_map::EntryRef;
use hashbrown::{DefaultHashBuilder, HashMap};
use serde_json::{Map, Value as Json};
use smallvec::SmallVec;
use squilla_batch::EventRef;

use crate::acc::{Acc, next_random};
use crate::value::{GroupKey, Key, Parts, V, compare, field, json_bytes, order};
use crate::{Expr, Item, Lit, Op, Plan, Query, Slot, Window};

/// Default limit on what one running query's open windows hold, bytes (64 MiB).
pub const DEFAULT_STATE_BYTES: usize = 64 << 20;

/// Bytes counted for each group or row of an open window beyond its values.
const GROUP_OVERHEAD: usize = 96;
/// Bytes counted per key part, captured value and accumulator.
const PART_BYTES: usize = 24;
/// Bytes counted per open window.
const WINDOW_OVERHEAD: usize = 128;

/// An aggregating query's open windows would hold more than its state limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the query's window state would pass its limit of {limit} bytes ({groups} groups so far); group by fewer distinct keys or use a shorter window"
)]
pub struct StateLimit {
    /// The limit, bytes.
    pub limit: usize,
    /// Groups (or rows) in the window the refused event belonged to.
    pub groups: usize,
}

/// Where an expression reads its values: an event, or one of a window's results.
pub(crate) trait Source<'x> {
    fn field(&self, name: &str) -> V<'x>;
    fn any(&self, prefix: &str, suffix: &str) -> V<'x>;
    fn slot(&self, slot: Slot) -> V<'x>;
}

impl<'x, 'a: 'x> Source<'x> for EventRef<'a> {
    #[inline]
    fn field(&self, name: &str) -> V<'x> {
        field(self, name)
    }

    fn any(&self, prefix: &str, suffix: &str) -> V<'x> {
        crate::value::any(self.fields(), prefix, suffix)
    }

    fn slot(&self, _: Slot) -> V<'x> {
        V::Null
    }
}

/// One of a window's results while it closes.
struct Result_ {
    keys: Vec<V<'static>>,
    firsts: Vec<V<'static>>,
    accs: Vec<V<'static>>,
    all: Option<Map<String, Json>>,
    anomalies: Vec<bool>,
}

impl<'r> Source<'r> for &'r Result_ {
    fn field(&self, _: &str) -> V<'r> {
        V::Null
    }

    fn any(&self, _: &str, _: &str) -> V<'r> {
        V::Null
    }

    fn slot(&self, slot: Slot) -> V<'r> {
        let borrow = |v: Option<&'r V<'static>>| match v {
            Some(V::Text(t)) => V::Text(Cow::Borrowed(t.as_ref())),
            Some(v) => v.clone(),
            None => V::Null,
        };
        match slot {
            Slot::Key(i) => borrow(self.keys.get(i)),
            Slot::First(i) => borrow(self.firsts.get(i)),
            Slot::Acc(i) => borrow(self.accs.get(i)),
            Slot::Anomaly(i) => self.anomalies.get(i).map_or(V::Null, |b| V::Bool(*b)),
        }
    }
}

fn eval<'x, S: Source<'x>>(e: &'x Expr, src: &S, rng: &mut u64) -> V<'x> {
    match e {
        Expr::Field(name) => src.field(name),
        Expr::Any(prefix, suffix) => src.any(prefix, suffix),
        Expr::Slot(slot) => src.slot(*slot),
        Expr::Lit(l) => literal(l),
        Expr::FieldCmp(cmp, name, l) => {
            let x = src.field(name);
            let holds = compare(*cmp, &x, &literal(l));
            release(x);
            V::Bool(holds)
        }
        Expr::Cmp(cmp, a, b) => {
            let (x, y) = (eval(a, src, rng), eval(b, src, rng));
            let holds = compare(*cmp, &x, &y);
            release(x);
            release(y);
            V::Bool(holds)
        }
        Expr::Arith(op, a, b) => arith(*op, &eval(a, src, rng), &eval(b, src, rng)),
        Expr::And(a, b) => V::Bool(test(a, src, rng) && test(b, src, rng)),
        Expr::Or(a, b) => V::Bool(test(a, src, rng) || test(b, src, rng)),
        Expr::Not(a) => V::Bool(!test(a, src, rng)),
        Expr::IsNull(a, negated) => V::Bool((eval(a, src, rng) == V::Null) != *negated),
        Expr::Regex(a, re) => {
            let v = eval(a, src, rng);
            let matched = matches!(&v, V::Text(t) if re.is_match(t));
            release(v);
            V::Bool(matched)
        }
        Expr::Sample(share) => V::Bool(next_random(rng) < *share),
    }
}

#[inline(always)]
fn literal(l: &Lit) -> V<'_> {
    match l {
        Lit::Null => V::Null,
        Lit::Bool(b) => V::Bool(*b),
        Lit::Int(i) => V::Int(*i),
        Lit::Float(f) => V::Float(*f),
        Lit::Text(t) => V::Text(Cow::Borrowed(t)),
    }
}

/// Whether `e` is true.
#[inline(always)]
pub(crate) fn test<'x, S: Source<'x>>(e: &'x Expr, src: &S, rng: &mut u64) -> bool {
    let v = eval(e, src, rng);
    let holds = v.truthy();
    release(v);
    holds
}

/// Drops `v`, calling its drop glue only if it holds memory: on the per-event path most
/// values are numbers or borrowed text, and the out-of-line drop call costs a few percent.
#[inline(always)]
fn release(v: V<'_>) {
    if matches!(v, V::Text(Cow::Owned(_)) | V::Json(_)) {
        drop(v);
    } else {
        // Nothing to free: a number, a boolean, null or text borrowed from the batch.
        std::mem::forget(v);
    }
}

/// Integer arithmetic stays integer while it fits (division and remainder by zero are
/// `null`); with a float it is float; with anything else, `null`.
fn arith(op: Op, a: &V<'_>, b: &V<'_>) -> V<'static> {
    match (a, b) {
        (V::Int(x), V::Int(y)) if !matches!(op, Op::Div) => match op {
            Op::Add => x.checked_add(*y),
            Op::Sub => x.checked_sub(*y),
            Op::Mul => x.checked_mul(*y),
            _ => x.checked_rem(*y),
        }
        .map_or(V::Null, V::Int),
        _ => match (a.number(), b.number()) {
            (Some(x), Some(y)) => {
                let r = match op {
                    Op::Add => x + y,
                    Op::Sub => x - y,
                    Op::Mul => x * y,
                    Op::Div => x / y,
                    Op::Rem => x % y,
                };
                if r.is_finite() { V::Float(r) } else { V::Null }
            }
            _ => V::Null,
        },
    }
}

/// A group (or a row) of an open window.
#[derive(Debug)]
struct Group {
    firsts: Vec<V<'static>>,
    accs: Vec<Acc>,
    all: Option<Map<String, Json>>,
}

/// An open window: groups by key, or rows in order.
#[derive(Debug, Default)]
struct Open {
    groups: HashMap<GroupKey, Group>,
    rows: Vec<(Group, usize)>,
    /// What it holds, bytes.
    bytes: usize,
}

/// One subscription's query, running.
#[derive(Debug)]
pub struct Runner {
    query: Arc<Query>,
    st: State,
}

/// A runner's state, apart from its query so that both can be borrowed at once.
#[derive(Debug)]
struct State {
    rng: u64,
    hasher: DefaultHashBuilder,
    /// Results a stream has emitted (for its `LIMIT`).
    emitted: u64,
    /// Open windows by start (processing time: the subscription's clock; counted: 0).
    open: BTreeMap<i64, Open>,
    window_start: i64,
    counted: u64,
    last_timestamp: i64,
    /// Event time: the highest timestamp seen less the lateness; windows ending at or before it
    /// are closed.
    watermark: i64,
    late: u64,
    events_since_tick: bool,
    last_event_tick: i64,
    state_bytes: usize,
    max_state_bytes: usize,
}

impl Runner {
    /// A runner whose first processing-time window starts at `now_ms`; `seed` drives `sample`.
    /// Its open windows may hold up to [`DEFAULT_STATE_BYTES`] (see [`Runner::with_state_limit`]).
    pub fn new(query: Arc<Query>, now_ms: i64, seed: u64) -> Self {
        Runner {
            query,
            st: State {
                rng: seed | 1,
                hasher: DefaultHashBuilder::default(),
                emitted: 0,
                open: BTreeMap::new(),
                window_start: now_ms,
                counted: 0,
                last_timestamp: 0,
                watermark: i64::MIN,
                late: 0,
                events_since_tick: false,
                last_event_tick: now_ms,
                state_bytes: 0,
                max_state_bytes: DEFAULT_STATE_BYTES,
            },
        }
    }

    /// Sets how many bytes the open windows may hold (groups, their keys, captured values and
    /// accumulators); [`Runner::push`] refuses an event that would pass it.
    pub fn with_state_limit(mut self, max_state_bytes: usize) -> Self {
        self.st.max_state_bytes = max_state_bytes;
        self
    }

    /// What the open windows hold now, bytes (estimated from their groups, keys and values).
    pub fn state_bytes(&self) -> usize {
        self.st.state_bytes
    }

    /// The query it runs.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// Whether a stream's `LIMIT` has been reached: no more results will come.
    pub fn finished(&self) -> bool {
        self.query.limit.is_some_and(|n| self.st.emitted >= n)
    }

    /// Events of an event-time window that came after it closed, so far.
    pub fn late_events(&self) -> u64 {
        self.st.late
    }

    /// Whether the query passes `event` (its `WHERE`).
    #[inline]
    pub fn matches(&mut self, event: &EventRef<'_>) -> bool {
        match &self.query.filter {
            None => true,
            Some(f) => test(f, event, &mut self.st.rng),
        }
    }

    /// Feeds one event: a stream appends its result to `out`; a windowed query folds it into
    /// its window, and appends the results of any window it closes (counted and event-time
    /// windows close on events; see [`Runner::tick`] for the others). Refuses (and does not
    /// count) an event that would take the open windows past their state limit.
    pub fn push(&mut self, event: &EventRef<'_>, out: &mut Vec<Map<String, Json>>) -> Result<(), StateLimit> {
        if self.finished() || !self.matches(event) {
            return Ok(());
        }
        let query = &*self.query;
        let st = &mut self.st;
        let Some(plan) = &query.plan else {
            out.push(st.stream_result(query, event));
            st.emitted += 1;
            return Ok(());
        };
        st.push_windowed(query, plan, event, out)
    }
}

impl State {
    /// [`Runner::push`] of a matching event into a windowed query: kept out of line so that the
    /// per-event path of a stream stays small.
    #[inline(never)]
    fn push_windowed(
        &mut self,
        query: &Query,
        plan: &Plan,
        event: &EventRef<'_>,
        out: &mut Vec<Map<String, Json>>,
    ) -> Result<(), StateLimit> {
        let st = self;
        st.events_since_tick = true;
        let start = match plan.window {
            Window::Time(_) => st.window_start,
            Window::Count(_) => 0,
            Window::Event { ms, lateness_ms } => {
                let ts = event.timestamp_ms();
                let ms = ms as i64;
                // The window's start; the lowest window, which would start before i64::MIN,
                // starts there.
                let start = Some(ts.checked_sub(ts.rem_euclid(ms)).unwrap_or(i64::MIN));
                let Some(start) = start.filter(|s| s.saturating_add(ms) > st.watermark) else {
                    st.late += 1;
                    return Ok(());
                };
                st.watermark = st.watermark.max(ts.saturating_sub(lateness_ms as i64));
                start
            }
        };
        st.add(plan, start, event)?;
        match plan.window {
            Window::Count(n) => {
                st.counted += 1;
                st.last_timestamp = event.timestamp_ms();
                if st.counted >= n {
                    st.counted = 0;
                    st.close_window(query, 0, st.last_timestamp, out);
                }
            }
            Window::Event { ms, .. } => {
                while let Some((&start, _)) = st.open.first_key_value() {
                    let end = start.saturating_add(ms as i64);
                    if end > st.watermark {
                        break;
                    }
                    st.close_window(query, start, end, out);
                }
            }
            Window::Time(_) => {}
        }
        Ok(())
    }
}

impl Runner {
    /// Closes the windows that `now_ms` (processing time) has passed, appending their
    /// results: a time window at its end; event-time windows once nothing arrived for
    /// `ms + lateness_ms`.
    pub fn tick(&mut self, now_ms: i64, out: &mut Vec<Map<String, Json>>) {
        let query = &*self.query;
        let st = &mut self.st;
        let Some(plan) = &query.plan else { return };
        match plan.window {
            Window::Time(ms) => {
                let ms = ms as i64;
                let end = st.window_start.saturating_add(ms);
                if now_ms < end {
                    return;
                }
                st.close_window(query, st.window_start, end, out);
                // Windows are aligned to the first one; skip any that passed with no tick.
                let passed = now_ms.saturating_sub(st.window_start) / ms;
                st.window_start = st.window_start.saturating_add(passed.saturating_mul(ms));
            }
            Window::Event { ms, lateness_ms } => {
                if std::mem::take(&mut st.events_since_tick) {
                    st.last_event_tick = now_ms;
                    return;
                }
                let idle = now_ms.saturating_sub(st.last_event_tick);
                if idle < (ms + lateness_ms) as i64 {
                    return;
                }
                let ms = ms as i64;
                while let Some((&start, _)) = st.open.first_key_value() {
                    let end = start.saturating_add(ms);
                    st.watermark = st.watermark.max(end);
                    st.close_window(query, start, end, out);
                }
            }
            Window::Count(_) => {}
        }
    }
}

impl State {
    #[inline]
    fn stream_result(&mut self, query: &Query, event: &EventRef<'_>) -> Map<String, Json> {
        let mut map = Map::new();
        map.insert(squilla_batch::json::TIMESTAMP.into(), event.timestamp_ms().into());
        for item in &query.items {
            match item {
                Item::All => {
                    if let Json::Object(all) = squilla_batch::json::to_json(event) {
                        for (k, v) in all {
                            map.entry(k).or_insert(v);
                        }
                    }
                }
                // A plain field, the usual item, goes from the batch to JSON directly.
                Item::Named { name, expr: Expr::Field(field) } => {
                    map.insert(name.clone(), crate::value::field_json(event, field));
                }
                Item::Named { name, expr } => {
                    let v = eval(expr, event, &mut self.rng);
                    map.insert(name.clone(), v.json());
                    release(v);
                }
            }
        }
        map
    }

    /// Folds `event` into the window starting at `start`.
    fn add(&mut self, plan: &Plan, start: i64, event: &EventRef<'_>) -> Result<(), StateLimit> {
        let State { rng, hasher, open, state_bytes, max_state_bytes, .. } = self;
        let max = *max_state_bytes;
        let full = |w: &Open| StateLimit { limit: max, groups: w.groups.len() + w.rows.len() };
        // The usual case first: the event belongs to the latest open window.
        let latest = open.last_key_value().is_some_and(|(s, _)| *s == start);
        if !latest && !open.contains_key(&start) {
            if *state_bytes + WINDOW_OVERHEAD > max {
                return Err(StateLimit { limit: max, groups: 0 });
            }
            *state_bytes += WINDOW_OVERHEAD;
            open.insert(start, Open { bytes: WINDOW_OVERHEAD, ..Open::default() });
        }
        let window = if latest { open.last_entry().map(|e| e.into_mut()) } else { open.get_mut(&start) };
        let Some(window) = window else { return Ok(()) };
        let new_group = |rng: &mut u64, keys: &[V<'_>]| {
            let firsts: Vec<V<'static>> = plan.firsts.iter().map(|f| eval(f, event, rng).owned()).collect();
            let all = plan.all.then(|| match squilla_batch::json::to_json(event) {
                Json::Object(m) => m,
                _ => Map::new(),
            });
            let accs: Vec<Acc> = plan.aggs.iter().map(|a| Acc::new(a.kind)).collect();
            let cost = GROUP_OVERHEAD
                + keys.iter().map(V::heap_bytes).sum::<usize>()
                + firsts.iter().map(V::heap_bytes).sum::<usize>()
                + all.as_ref().map_or(0, |m| m.iter().map(|(k, v)| 32 + k.len() + json_bytes(v)).sum())
                + plan.aggs.iter().map(|a| Acc::base_bytes(a.kind)).sum::<usize>()
                + (keys.len() + firsts.len() + accs.len()) * PART_BYTES;
            (Group { firsts, accs, all }, cost)
        };
        let group = if plan.grouped {
            // The key's values on the stack (no allocation per event), hashed once.
            let values: SmallVec<[V<'_>; 4]> = plan.keys.iter().map(|k| eval(k, event, rng)).collect();
            let parts = Parts(&values);
            let limit = full(window);
            match window.groups.entry_ref(&parts) {
                EntryRef::Occupied(group) => group.into_mut(),
                EntryRef::Vacant(slot) => {
                    let (group, cost) = new_group(rng, &values);
                    if *state_bytes + cost > *max_state_bytes {
                        return Err(limit);
                    }
                    *state_bytes += cost;
                    window.bytes += cost;
                    slot.insert_with_key(GroupKey(values.iter().map(Key::of).collect()), group)
                }
            }
        } else {
            if plan.limit.is_some_and(|n| plan.order.is_empty() && window.rows.len() as u64 >= n) {
                // The first n rows are the result: later ones need not be kept.
                return Ok(());
            }
            let (group, cost) = new_group(rng, &[]);
            if *state_bytes + cost > *max_state_bytes {
                return Err(full(window));
            }
            *state_bytes += cost;
            window.bytes += cost;
            window.rows.push((group, cost));
            let freed = prune(plan, &mut window.rows, rng);
            *state_bytes = state_bytes.saturating_sub(freed);
            window.bytes = window.bytes.saturating_sub(freed);
            // Rows have no accumulators: nothing more to fold.
            return Ok(());
        };
        let mut grown = 0isize;
        for (acc, agg) in group.accs.iter_mut().zip(&plan.aggs) {
            let v = agg.arg.as_ref().map(|a| eval(a, event, rng));
            if let (Some(V::Json(items)), Some(Expr::Any(..))) = (&v, &agg.arg) {
                // `sum(a[*].x)`: every element counts, as a value of its own.
                grown += elements(acc, items, rng, hasher);
            } else {
                grown += acc.add(v, rng, hasher);
            }
        }
        *state_bytes = state_bytes.saturating_add_signed(grown);
        window.bytes = window.bytes.saturating_add_signed(grown);
        if *state_bytes > *max_state_bytes {
            return Err(full(window));
        }
        Ok(())
    }

    /// Closes the window starting at `start`, appending its results stamped `end`.
    fn close_window(&mut self, query: &Query, start: i64, end: i64, out: &mut Vec<Map<String, Json>>) {
        let Some(plan) = &query.plan else { return };
        let Some(window) = self.open.remove(&start) else { return };
        self.state_bytes = self.state_bytes.saturating_sub(window.bytes);
        let finish = |keys: Vec<V<'static>>, mut g: Group| Result_ {
            keys,
            firsts: g.firsts,
            accs: g.accs.iter_mut().map(Acc::finish).collect(),
            all: g.all,
            anomalies: Vec::new(),
        };
        let mut results: Vec<Result_> = window
            .groups
            .into_iter()
            .map(|(GroupKey(keys), g)| finish(keys.iter().map(Key::value).collect(), g))
            .chain(window.rows.into_iter().map(|(g, _)| finish(Vec::new(), g)))
            .collect();
        self.flag_anomalies(plan, &mut results);
        let rng = &mut self.rng;
        if let Some(having) = &plan.having {
            results.retain(|r| eval(having, &r, rng).truthy());
        }
        if !plan.order.is_empty() {
            let mut keyed: Vec<(Vec<V<'_>>, &Result_)> =
                results.iter().map(|r| (plan.order.iter().map(|o| eval(&o.expr, &r, rng)).collect(), r)).collect();
            keyed.sort_by(|(a, _), (b, _)| by_order(plan, a, b));
            let limit = plan.limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
            for (_, r) in keyed.into_iter().take(limit) {
                out.push(render(query, plan, r, end, self.late, rng));
            }
        } else {
            let limit = plan.limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
            for r in results.iter().take(limit) {
                out.push(render(query, plan, r, end, self.late, rng));
            }
        }
    }

    /// `anomaly(x, k)`: a result is an outlier when `|x − median| > k × 1.4826 × MAD` over the
    /// window's results (MAD: the median absolute deviation); with a MAD of 0, when `x` differs
    /// from the median at all. Results whose `x` is not a number are not outliers.
    fn flag_anomalies(&mut self, plan: &Plan, results: &mut [Result_]) {
        for (expr, k) in &plan.anomalies {
            let rng = &mut self.rng;
            let values: Vec<Option<f64>> = results.iter().map(|r| eval(expr, &r, rng).number()).collect();
            let mut numbers: Vec<f64> = values.iter().flatten().copied().filter(|x| x.is_finite()).collect();
            let median = median_of(&mut numbers);
            let mut deviations: Vec<f64> = numbers.iter().map(|x| (x - median).abs()).collect();
            let mad = median_of(&mut deviations) * 1.4826;
            for (r, v) in results.iter_mut().zip(values) {
                let outlier = v.is_some_and(|x| {
                    let d = (x - median).abs();
                    if mad > 0.0 { d > k * mad } else { d > 0.0 }
                });
                r.anomalies.push(outlier);
            }
        }
    }
}

/// Folds each element of an `a[*]` array into `acc`.
#[cold]
fn elements(acc: &mut Acc, items: &Json, rng: &mut u64, hasher: &DefaultHashBuilder) -> isize {
    let Json::Array(items) = items else { return 0 };
    items.iter().map(|item| acc.add(Some(crate::value::from_json(item)), rng, hasher)).sum()
}

/// Compares two results' `ORDER BY` keys.
fn by_order(plan: &Plan, a: &[V<'_>], b: &[V<'_>]) -> std::cmp::Ordering {
    use std::cmp::Ordering::{Equal, Greater, Less};
    for ((x, y), o) in a.iter().zip(b).zip(&plan.order) {
        let ord = match (x == &V::Null, y == &V::Null) {
            (true, true) => Equal,
            (true, false) => {
                if o.nulls_first {
                    Less
                } else {
                    Greater
                }
            }
            (false, true) => {
                if o.nulls_first {
                    Greater
                } else {
                    Less
                }
            }
            (false, false) => {
                if o.desc {
                    order(y, x)
                } else {
                    order(x, y)
                }
            }
        };
        if ord.is_ne() {
            return ord;
        }
    }
    Equal
}

/// A row of an open window, seen by `HAVING` and `ORDER BY` before the window closes.
struct RowView<'r>(&'r [V<'static>]);

impl<'r> Source<'r> for RowView<'r> {
    fn field(&self, _: &str) -> V<'r> {
        V::Null
    }

    fn any(&self, _: &str, _: &str) -> V<'r> {
        V::Null
    }

    fn slot(&self, slot: Slot) -> V<'r> {
        match (
            slot,
            self.0.get(match slot {
                Slot::First(i) => i,
                _ => usize::MAX,
            }),
        ) {
            (_, Some(V::Text(t))) => V::Text(Cow::Borrowed(t.as_ref())),
            (_, Some(v)) => v.clone(),
            (_, None) => V::Null,
        }
    }
}

/// Rows of an open window kept for top-N: past twice the limit, only the best `limit` (by
/// `HAVING` and `ORDER BY`) stay, so a long window holds O(limit) rows. Not with `anomaly`,
/// which needs every row. Returns the bytes freed.
fn prune(plan: &Plan, rows: &mut Vec<(Group, usize)>, rng: &mut u64) -> usize {
    let Some(limit) = plan.limit.and_then(|n| usize::try_from(n).ok()) else { return 0 };
    if plan.order.is_empty() || !plan.anomalies.is_empty() || rows.len() < limit.saturating_mul(2).max(64) {
        return 0;
    }
    let mut keyed: Vec<(Vec<V<'static>>, (Group, usize))> = Vec::with_capacity(rows.len());
    let mut freed = 0;
    for row in std::mem::take(rows) {
        if plan.having.as_ref().is_some_and(|h| !eval(h, &RowView(&row.0.firsts), rng).truthy()) {
            freed += row.1;
            continue;
        }
        let keys = plan.order.iter().map(|o| eval(&o.expr, &RowView(&row.0.firsts), rng).owned()).collect();
        keyed.push((keys, row));
    }
    keyed.sort_by(|(a, _), (b, _)| by_order(plan, a, b));
    for (i, (_, row)) in keyed.into_iter().enumerate() {
        if i < limit {
            rows.push(row);
        } else {
            freed += row.1;
        }
    }
    freed
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values.get(n / 2).copied().unwrap_or(0.0),
        _ => (values.get(n / 2 - 1).copied().unwrap_or(0.0) + values.get(n / 2).copied().unwrap_or(0.0)) / 2.0,
    }
}

/// One window result as JSON: the window's fields, then the items in order.
fn render(query: &Query, plan: &Plan, r: &Result_, end: i64, late: u64, rng: &mut u64) -> Map<String, Json> {
    let mut map = Map::new();
    map.insert(squilla_batch::json::TIMESTAMP.into(), end.into());
    match plan.window {
        Window::Time(ms) => {
            map.insert("window-ms".into(), ms.into());
        }
        Window::Count(n) => {
            map.insert("window-events".into(), n.into());
        }
        Window::Event { ms, .. } => {
            map.insert("window-ms".into(), ms.into());
            map.insert("late-events".into(), late.into());
        }
    }
    for item in &query.items {
        match item {
            Item::All => {
                for (k, v) in r.all.iter().flatten() {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            Item::Named { name, expr } => {
                map.insert(name.clone(), eval(expr, &r, rng).json());
            }
        }
    }
    map
}
