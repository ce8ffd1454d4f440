//! Filtering at the source: whether any of several subscriptions could want an event, asked
//! of an event that is not in a batch yet.
//!
//! An application publishing its events (`squilla-publish`) holds one [`Prefilter`] for the
//! queries subscribed to its stream, and ships an event only if it passes. The prefilter is a
//! superset test: the full queries run again where the subscriptions are served, so an event
//! shipped that a query then refuses costs bytes, never a wrong result. What it cannot decide
//! exactly it lets through: a query without `WHERE`, and a `WHERE` that holds `sample(…)`
//! (a random draw here and another there would sample twice).

use std::sync::Arc;

use squilla_batch::ValueRef;

use crate::eval::{Source, test};
use crate::value::{V, any, from_ref, prefix};
use crate::{Expr, Query, Slot};

/// An event as an application holds it before publishing: a timestamp and borrowed fields
/// (dotted names for nested values, as in batches).
#[derive(Debug, Clone, Copy)]
pub struct FieldSlice<'a> {
    /// Event time, ms since the Unix epoch (`timestamp-ms` in queries).
    pub timestamp_ms: i64,
    /// The fields, in order; the first of a repeated name is the one read.
    pub fields: &'a [(&'a str, ValueRef<'a>)],
}

impl<'a> Source<'a> for FieldSlice<'a> {
    #[inline]
    fn field(&self, name: &str) -> V<'a> {
        if name == squilla_batch::json::TIMESTAMP {
            return V::Int(self.timestamp_ms);
        }
        match self.fields.iter().find(|(n, _)| *n == name) {
            Some((_, v)) => from_ref(*v),
            None => prefix(self.fields.iter().copied(), name),
        }
    }

    fn any(&self, prefix: &str, suffix: &str) -> V<'a> {
        any(self.fields.iter().copied(), prefix, suffix)
    }

    fn slot(&self, _: Slot) -> V<'a> {
        V::Null
    }
}

/// Whether any of a set of queries could want an event (see the module's docs).
#[derive(Debug, Clone, Default)]
pub struct Prefilter {
    /// The queries' filters, when every query has one that can be decided here.
    filters: Vec<Arc<Query>>,
    /// Some query wants every event.
    all: bool,
    /// Some filter reads `timestamp-ms`.
    time: bool,
}

impl Prefilter {
    /// The prefilter of `queries` (`None`: a subscription without a query, which wants every
    /// event). Empty when there are no queries: then nothing passes.
    pub fn new(queries: impl IntoIterator<Item = Option<Arc<Query>>>) -> Prefilter {
        let mut filters = Vec::new();
        let mut all = false;
        for query in queries {
            match query {
                Some(q) if q.filter.as_ref().is_some_and(|f| !samples(f)) => filters.push(q),
                _ => all = true,
            }
        }
        if all {
            filters.clear();
        }
        let time = filters.iter().any(|q| q.filter.as_ref().is_some_and(reads_time));
        Prefilter { filters, all, time }
    }

    /// Whether no event passes (no queries at all).
    pub fn is_empty(&self) -> bool {
        !self.all && self.filters.is_empty()
    }

    /// Whether every event passes.
    pub fn passes_all(&self) -> bool {
        self.all
    }

    /// Whether some filter reads the event's time (`timestamp-ms`): if not, a caller may test
    /// an event before reading the clock for it.
    pub fn reads_time(&self) -> bool {
        self.time
    }

    /// Whether some query could want `event`.
    #[inline]
    pub fn matches(&self, event: &FieldSlice<'_>) -> bool {
        if self.all {
            return true;
        }
        // No filter here holds `sample`, so the random state is never read.
        let mut rng = 1;
        self.filters.iter().any(|q| q.filter.as_ref().is_some_and(|f| test(f, event, &mut rng)))
    }
}

/// Whether `e` reads the event's time anywhere.
fn reads_time(e: &Expr) -> bool {
    match e {
        Expr::Field(name) | Expr::FieldCmp(_, name, _) => {
            name == squilla_batch::json::TIMESTAMP || squilla_batch::json::TIMESTAMP.starts_with(&format!("{name}."))
        }
        Expr::Any(prefix, _) => squilla_batch::json::TIMESTAMP.starts_with(prefix.as_str()),
        Expr::Cmp(_, a, b) | Expr::Arith(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => reads_time(a) || reads_time(b),
        Expr::Not(a) | Expr::IsNull(a, _) | Expr::Regex(a, _) => reads_time(a),
        Expr::Lit(_) | Expr::Sample(_) | Expr::Slot(_) => false,
    }
}

/// Whether `e` draws at random anywhere.
fn samples(e: &Expr) -> bool {
    match e {
        Expr::Sample(_) => true,
        Expr::Cmp(_, a, b) | Expr::Arith(_, a, b) | Expr::And(a, b) | Expr::Or(a, b) => samples(a) || samples(b),
        Expr::Not(a) | Expr::IsNull(a, _) | Expr::Regex(a, _) => samples(a),
        Expr::Field(_) | Expr::Any(..) | Expr::Lit(_) | Expr::FieldCmp(..) | Expr::Slot(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefilter(queries: &[Option<&str>]) -> Prefilter {
        Prefilter::new(queries.iter().map(|q| q.map(|q| Arc::new(Query::parse(q).expect("query parses")))))
    }

    fn event<'a>(fields: &'a [(&'a str, ValueRef<'a>)]) -> FieldSlice<'a> {
        FieldSlice { timestamp_ms: 1_000, fields }
    }

    #[test]
    fn passes_what_any_query_selects() {
        let p = prefilter(&[Some("SELECT * WHERE status >= 500"), Some("SELECT path WHERE path = '/a'")]);
        assert!(!p.is_empty() && !p.passes_all());
        let server_error = [("status", ValueRef::Int(503)), ("path", ValueRef::Text("/b"))];
        let ok_a = [("status", ValueRef::Int(200)), ("path", ValueRef::Text("/a"))];
        let ok_b = [("status", ValueRef::Int(200)), ("path", ValueRef::Text("/b"))];
        assert!(p.matches(&event(&server_error)));
        assert!(p.matches(&event(&ok_a)));
        assert!(!p.matches(&event(&ok_b)));
    }

    #[test]
    fn reads_nested_fields_and_time() {
        let p = prefilter(&[Some("SELECT * WHERE user.id = 7 AND \"timestamp-ms\" < 2000")]);
        assert!(p.reads_time());
        assert!(!prefilter(&[Some("SELECT * WHERE user.id = 7")]).reads_time());
        assert!(p.matches(&event(&[("user.id", ValueRef::Int(7))])));
        assert!(!p.matches(&event(&[("user.id", ValueRef::Int(8))])));
        let p = prefilter(&[Some("SELECT * WHERE user IS NOT NULL")]);
        assert!(p.matches(&event(&[("user.id", ValueRef::Int(8))])));
        assert!(!p.matches(&event(&[("account.id", ValueRef::Int(8))])));
    }

    #[test]
    fn lets_through_what_it_cannot_decide() {
        assert!(prefilter(&[]).is_empty());
        assert!(prefilter(&[None]).passes_all());
        assert!(prefilter(&[Some("SELECT status, count(*) AS n GROUP BY status")]).passes_all());
        let sampled = prefilter(&[Some("SELECT * WHERE NOT sample(1)")]);
        assert!(sampled.passes_all());
        assert!(sampled.matches(&event(&[])));
        // A grouped query's WHERE still filters at the source.
        let grouped = prefilter(&[Some("SELECT count(*) AS n WHERE status = 500 GROUP BY window(1000)")]);
        assert!(!grouped.matches(&event(&[("status", ValueRef::Int(200))])));
    }
}
