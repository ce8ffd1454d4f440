//! Ad-hoc queries over live events: a small SQL subset, parsed with `sqlparser` and run in
//! the host (never in tenant code). `docs/queries.md` is the reference: every construct, its
//! semantics, and how Mantis's MQL maps onto it.
//!
//! ```sql
//! SELECT "device-type", status AS code, user.id   -- projection, aliases, nested (dotted) fields
//! FROM events                                      -- optional; the name is ignored
//! WHERE status >= 500 AND NOT ("device-type" ~ '^(tv|phone)$') AND sample(10)
//! LIMIT 100                                        -- the first 100 results, then the end
//! ```
//!
//! ```sql
//! SELECT "device-type", count(*) AS n, count(DISTINCT user.id) AS users, path, p99 * 2
//! WHERE status >= 500
//! GROUP BY "device-type", window(10000)            -- tumbling window of 10 s (default 10 s)
//! HAVING count(*) > 10
//! ORDER BY n DESC LIMIT 5                          -- top 5 per window
//! ```
//!
//! A query runs in one of three shapes, decided when it is compiled:
//!
//! - **Stream**: no aggregates, no `GROUP BY`: one result per matching event as it arrives.
//! - **Groups**: aggregates or `GROUP BY` keys: per window, one result per group. A field that
//!   is neither grouped by nor aggregated takes its first value in the group (as in Mantis).
//! - **Rows**: `GROUP BY window(…)` alone, without aggregates: per window, the matching events'
//!   results, which `ORDER BY`/`LIMIT` and `anomaly` see whole.
//!
//! Windows are processing-time (`window(ms)`), counted (`count_window(n)`) or event-time
//! (`event_window(ms[, lateness_ms])`). Everything the evaluator cannot run is refused by the
//! compiler with the line and column of the offending token: an accepted query never panics.

mod acc;
mod compile;
mod eval;
mod lower;
mod prefilter;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
mod value;

pub use acc::{HLL_PRECISION, LIST_MAX, PERCENTILE_SAMPLES};
pub use compile::{COUNT_WINDOW, DEFAULT_WINDOW_MS, LIMIT_MAX, MAX_QUERY_BYTES, WINDOW_LIMIT_MAX, WINDOW_MS};
pub use eval::{DEFAULT_STATE_BYTES, Runner, StateLimit};
pub use prefilter::{FieldSlice, Prefilter};

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// What is wrong (without its position).
    pub message: String,
    /// 1-based line of the offending token.
    pub line: u64,
    /// 1-based column of the offending token.
    pub column: u64,
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AggKind {
    Count,
    CountDistinct,
    ApproxDistinct,
    Sum,
    Min,
    Max,
    Avg,
    Percentile(f64),
    List,
}

/// An aggregate: its function and its per-event argument (`None`: `count(*)`).
#[derive(Debug, Clone)]
pub(crate) struct Agg {
    pub kind: AggKind,
    pub arg: Option<Expr>,
}

/// A value a window computes for each of its results, read by [`Expr::Slot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The group's `i`-th key.
    Key(usize),
    /// The `i`-th captured expression's value for the group's first event.
    First(usize),
    /// The `i`-th aggregate's result.
    Acc(usize),
    /// Whether the result is an outlier by the `i`-th `anomaly(…)` of the window.
    Anomaly(usize),
}

/// An expression, lowered from SQL. Per-event expressions read fields (and `sample`);
/// expressions over a window's results read [`Slot`]s. The compiler never mixes the two, and
/// the evaluator gives `null` for anything out of place, so no expression can fail.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Field(String),
    /// `a[*].b`: the values of `a.0.b`, `a.1.b`, … as an array (prefix `a`, suffix `.b`).
    Any(String, String),
    Lit(Lit),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    /// `field cmp literal`, the usual filter: read without building a value for the literal.
    FieldCmp(Cmp, String, Lit),
    Arith(Op, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull(Box<Expr>, bool),
    Regex(Box<Expr>, regex::Regex),
    Sample(f64),
    Slot(Slot),
}

/// One item of a result.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// `*`: every field of the event.
    All,
    /// `name`: the value of `expr`.
    Named { name: String, expr: Expr },
}

/// How a window is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Tumbling windows of this many ms of processing time, from the subscription's start.
    Time(u64),
    /// Every this many matching events.
    Count(u64),
    /// Tumbling windows of `ms` of event time (`timestamp-ms`), aligned to multiples of `ms`
    /// since the epoch; a window closes once an event `lateness_ms` past its end arrives (or
    /// nothing arrived for `ms + lateness_ms` of processing time); later events are late.
    Event {
        /// The window's length, ms.
        ms: u64,
        /// How long after a window's end its events are still counted, ms.
        lateness_ms: u64,
    },
}

/// One `ORDER BY` key over a window's results.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub expr: Expr,
    pub desc: bool,
    pub nulls_first: bool,
}

/// What a windowed query computes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub window: Window,
    /// Aggregating (results by group), or rows (one result per matching event).
    pub grouped: bool,
    /// Per-event group keys.
    pub keys: Vec<Expr>,
    /// Per-event expressions whose value for a group's first event is kept.
    pub firsts: Vec<Expr>,
    pub aggs: Vec<Agg>,
    /// `anomaly(x, k)`: the argument (over results) and `k`.
    pub anomalies: Vec<(Expr, f64)>,
    /// Whether a result keeps its whole event (`SELECT *` in rows).
    pub all: bool,
    pub having: Option<Expr>,
    pub order: Vec<Order>,
    pub limit: Option<u64>,
}

/// A checked query, ready to run ([`Runner`]).
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    pub(crate) filter: Option<Expr>,
    /// Per-event items (a stream) or items over a window's results (a plan).
    pub(crate) items: Vec<Item>,
    pub(crate) plan: Option<Plan>,
    /// A stream's `LIMIT`.
    pub(crate) limit: Option<u64>,
}

impl Query {
    /// Parses and checks `sql`.
    pub fn parse(sql: &str) -> Result<Query, QueryError> {
        compile::compile(sql)
    }

    /// The text it was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// How its results are windowed (`None`: one result per matching event, as they come).
    pub fn window(&self) -> Option<Window> {
        self.plan.as_ref().map(|p| p.window)
    }

    /// The length of a time window, ms (processing or event time).
    pub fn window_ms(&self) -> Option<u64> {
        match self.window()? {
            Window::Time(ms) | Window::Event { ms, .. } => Some(ms),
            Window::Count(_) => None,
        }
    }

    /// A stream's `LIMIT`: how many results, in all, before its end (`None`: no end, or a
    /// windowed query, whose `LIMIT` is per window).
    pub fn stream_limit(&self) -> Option<u64> {
        self.limit
    }

    /// Whether the query only filters (`SELECT * [WHERE …]`, no window, no `LIMIT`): its
    /// results are the matching events as they are, so a caller may write them itself after
    /// [`Runner::matches`](crate::Runner::matches).
    pub fn selects_events(&self) -> bool {
        self.plan.is_none() && self.limit.is_none() && matches!(self.items.as_slice(), [Item::All])
    }
}
