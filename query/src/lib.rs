//! Ad-hoc queries over live events: a small SQL subset, parsed with `sqlparser` and run in
//! the host (never in tenant code).
//!
//! ```sql
//! SELECT "device-type", status AS code, user.id   -- projection, aliases, nested (dotted) fields
//! FROM events                                      -- optional; the name is ignored
//! WHERE status >= 500 AND NOT ("device-type" ~ '^(tv|phone)$') AND sample(10)
//! ```
//!
//! ```sql
//! SELECT "device-type", count(*) AS n, avg(latency), percentile(latency, 0.99) AS p99
//! WHERE status >= 500
//! GROUP BY "device-type", window(10000)             -- tumbling window of 10 s (default 10 s)
//! ```
//!
//! - Fields: identifiers; quote names with dashes (`"device-type"`); `a.b` names the field
//!   `a.b` (ingested JSON objects are flattened to dotted names); `timestamp-ms` is the event's
//!   timestamp.
//! - `WHERE`: `= != <> < <= > >=` (numbers compare across int and float; text with text),
//!   `~ !~ ~* !~*` and `REGEXP` / `RLIKE` (regular expressions), `LIKE` / `ILIKE`,
//!   `IS [NOT] NULL`, `AND OR NOT`, `+ - * /`, and `sample(percent)`, true for that share of
//!   events at random.
//! - Aggregates in the SELECT list: `count(*)`, `count(x)` (non-null), `sum`, `min`, `max`,
//!   `avg`, `percentile(x, q)` (`q` from 0 to 1; over at most [`PERCENTILE_SAMPLES`] values
//!   per group and window, sampled uniformly beyond). With aggregates or `GROUP BY`, results
//!   are emitted once per window (processing time) per group, with `timestamp-ms` the
//!   window's end and `window-ms` its length.
//! - A bad query is a [`QueryError`] with the line and column of the problem where the parser
//!   or the checks know it.

mod compile;
mod eval;
#[cfg(test)]
mod tests;

pub use compile::{DEFAULT_WINDOW_MS, MAX_QUERY_BYTES, WINDOW_MS};
pub use eval::{DEFAULT_STATE_BYTES, PERCENTILE_SAMPLES, Runner, StateLimit};

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// What is wrong.
    pub message: String,
    /// 1-based line of the problem (0 when unknown).
    pub line: u64,
    /// 1-based column of the problem (0 when unknown).
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

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    Percentile(f64),
}

#[derive(Debug, Clone)]
pub(crate) struct Agg {
    pub kind: AggKind,
    pub arg: Option<Expr>,
}

/// An expression, lowered from SQL.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Field(String),
    Lit(Lit),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    Arith(char, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    IsNull(Box<Expr>, bool),
    Regex(Box<Expr>, regex::Regex),
    Sample(f64),
    Agg(Box<Agg>),
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        // Structural equality is only needed for "is this item one of the GROUP BY keys",
        // where keys are fields.
        match (self, other) {
            (Expr::Field(a), Expr::Field(b)) => a == b,
            (Expr::Lit(a), Expr::Lit(b)) => a == b,
            _ => false,
        }
    }
}

impl Expr {
    pub(crate) fn has_aggregate(&self) -> bool {
        match self {
            Expr::Agg(_) => true,
            Expr::Cmp(_, a, b) | Expr::Arith(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => {
                a.has_aggregate() || b.has_aggregate()
            }
            Expr::Not(a) | Expr::IsNull(a, _) | Expr::Regex(a, _) => a.has_aggregate(),
            Expr::Field(_) | Expr::Lit(_) | Expr::Sample(_) => false,
        }
    }
}

/// One item of the SELECT list.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    All,
    Named { name: String, expr: Expr },
}

/// A checked query, ready to run ([`Runner`]).
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    pub(crate) items: Vec<Item>,
    pub(crate) filter: Option<Expr>,
    pub(crate) keys: Vec<Expr>,
    pub(crate) window_ms: Option<u64>,
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

    /// The window of an aggregating query, ms (`None`: one result per matching event).
    pub fn window_ms(&self) -> Option<u64> {
        self.window_ms
    }

    /// Whether the query only filters (`SELECT * [WHERE …]`, no grouping): its results are the
    /// matching events as they are, so a caller may write them itself after
    /// [`Runner::matches`](crate::Runner::matches).
    pub fn selects_events(&self) -> bool {
        self.window_ms.is_none() && matches!(self.items.as_slice(), [Item::All])
    }
}
