//! From SQL text to a [`Query`]: parsed by `sqlparser` (generic dialect), then checked and
//! lowered to the small expression tree the evaluator runs. Everything the language does not
//! support is refused here, with the position of the offending part where there is one.

use regex::Regex;
use sqlparser::ast::{
    self, BinaryOperator, Expr as Sql, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, SelectItem,
    SetExpr, Spanned, Statement, UnaryOperator, Value as SqlValue,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Span;

use crate::{Agg, AggKind, Cmp, Expr, Item, Lit, Query, QueryError};

/// Longest query text accepted.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Default window of a `GROUP BY` without `window(ms)`.
pub const DEFAULT_WINDOW_MS: u64 = 10_000;
/// Window bounds, ms.
pub const WINDOW_MS: (u64, u64) = (100, 3_600_000);

fn at(span: Span, message: impl Into<String>) -> QueryError {
    let (line, column) = if span == Span::empty() { (0, 0) } else { (span.start.line, span.start.column) };
    QueryError { message: message.into(), line, column }
}

fn nowhere(message: impl Into<String>) -> QueryError {
    QueryError { message: message.into(), line: 0, column: 0 }
}

/// Parses `"Line: 3, Column: 14"` out of a sqlparser message.
fn position_of(message: &str) -> (u64, u64) {
    let number = |key: &str| {
        message.rfind(key).and_then(|i| {
            message[i + key.len()..]
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
    };
    (number("Line:").unwrap_or(0), number("Column:").unwrap_or(0))
}

pub(crate) fn compile(sql: &str) -> Result<Query, QueryError> {
    if sql.len() > MAX_QUERY_BYTES {
        return Err(nowhere(format!("a query is at most {MAX_QUERY_BYTES} bytes")));
    }
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| {
        let message = e.to_string();
        let (line, column) = position_of(&message);
        QueryError { message: message.trim_start_matches("sql parser error: ").to_owned(), line, column }
    })?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(nowhere("one SELECT statement is expected"));
    };
    if query.order_by.is_some() || query.limit_clause.is_some() || query.with.is_some() {
        return Err(nowhere("WITH, ORDER BY and LIMIT have no meaning on a stream"));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(nowhere("one plain SELECT is expected (no UNION, VALUES, …)"));
    };
    if select.from.len() > 1 || select.from.iter().any(|t| !t.joins.is_empty()) {
        return Err(nowhere("a query reads one stream: FROM names at most one, without joins"));
    }
    if select.having.is_some() || select.distinct.is_some() {
        return Err(nowhere("HAVING and DISTINCT are not supported"));
    }
    let filter = select.selection.as_ref().map(|e| expr(e, false)).transpose()?;
    let mut items = Vec::new();
    for item in &select.projection {
        items.push(match item {
            SelectItem::Wildcard(_) => Item::All,
            SelectItem::UnnamedExpr(e) => Item::Named { name: default_name(e), expr: expr(e, true)? },
            SelectItem::ExprWithAlias { expr: e, alias } => {
                Item::Named { name: alias.value.clone(), expr: expr(e, true)? }
            }
            SelectItem::QualifiedWildcard(..) => return Err(nowhere("`x.*` is not supported; use `*`")),
        });
    }
    let mut keys = Vec::new();
    let mut window_ms = None;
    let grouped = match &select.group_by {
        GroupByExpr::Expressions(list, modifiers) if modifiers.is_empty() => {
            for e in list {
                if let Some(ms) = window_call(e)? {
                    window_ms = Some(ms);
                } else {
                    keys.push(expr(e, false)?);
                }
            }
            !list.is_empty()
        }
        _ => return Err(nowhere("GROUP BY ALL and GROUP BY modifiers are not supported")),
    };
    let has_aggregates = items.iter().any(|i| matches!(i, Item::Named { expr, .. } if expr.has_aggregate()));
    if has_aggregates && !grouped {
        // Aggregates without GROUP BY: one group, over the default window.
        window_ms = window_ms.or(Some(DEFAULT_WINDOW_MS));
    }
    if grouped || has_aggregates {
        for item in &items {
            match item {
                Item::All => return Err(nowhere("`*` cannot be used with GROUP BY")),
                Item::Named { name, expr } if !expr.has_aggregate() && !keys.contains(expr) => {
                    return Err(nowhere(format!("`{name}` is neither grouped by nor aggregated")));
                }
                _ => {}
            }
        }
        window_ms = window_ms.or(Some(DEFAULT_WINDOW_MS));
    }
    Ok(Query { text: sql.to_owned(), items, filter, keys, window_ms })
}

/// The field a (possibly dotted) name refers to: `a.b` is the field `a.b`.
fn dotted(e: &Sql) -> Option<String> {
    match e {
        Sql::Identifier(id) => Some(id.value.clone()),
        Sql::CompoundIdentifier(ids) => Some(ids.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(".")),
        Sql::CompoundFieldAccess { root, access_chain } => {
            let mut name = dotted(root)?;
            for access in access_chain {
                let ast::AccessExpr::Dot(part) = access else { return None };
                name.push('.');
                name.push_str(&dotted(part)?);
            }
            Some(name)
        }
        // Keywords such as `user` parse as argument-less functions; as names they are fields.
        Sql::Function(f) if matches!(f.args, FunctionArguments::None) => Some(f.name.to_string()),
        _ => None,
    }
}

/// The name of an unaliased item: the field's name, or the expression's text.
fn default_name(e: &Sql) -> String {
    dotted(e).unwrap_or_else(|| e.to_string())
}

/// `window(ms)` in GROUP BY.
fn window_call(e: &Sql) -> Result<Option<u64>, QueryError> {
    let Sql::Function(f) = e else { return Ok(None) };
    if !f.name.to_string().eq_ignore_ascii_case("window") {
        return Ok(None);
    }
    let args = args(f)?;
    let [Sql::Value(v)] = args.as_slice() else {
        return Err(at(f.name.span(), "window(ms) takes one number of milliseconds"));
    };
    let ms = match &v.value {
        SqlValue::Number(n, _) => n.parse::<u64>().ok(),
        _ => None,
    }
    .filter(|ms| (WINDOW_MS.0..=WINDOW_MS.1).contains(ms))
    .ok_or_else(|| at(v.span, format!("window(ms): between {} and {} ms", WINDOW_MS.0, WINDOW_MS.1)))?;
    Ok(Some(ms))
}

fn args(f: &ast::Function) -> Result<Vec<Sql>, QueryError> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => {
                    Ok(Sql::Wildcard(sqlparser::ast::helpers::attached_token::AttachedToken::empty()))
                }
                _ => Err(at(f.name.span(), "named or qualified arguments are not supported")),
            })
            .collect(),
        FunctionArguments::Subquery(_) => Err(at(f.name.span(), "subqueries are not supported")),
    }
}

fn literal(v: &ast::ValueWithSpan) -> Result<Lit, QueryError> {
    Ok(match &v.value {
        SqlValue::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Lit::Int(i),
            Err(_) => Lit::Float(n.parse().map_err(|_| at(v.span, format!("`{n}` is not a number")))?),
        },
        SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => Lit::Text(s.clone()),
        SqlValue::Boolean(b) => Lit::Bool(*b),
        SqlValue::Null => Lit::Null,
        other => return Err(at(v.span, format!("unsupported literal `{other}`"))),
    })
}

fn regex(pattern: &Sql, case_insensitive: bool) -> Result<Regex, QueryError> {
    let Sql::Value(v) = pattern else { return Err(nowhere("a regular expression is a quoted string")) };
    let SqlValue::SingleQuotedString(p) = &v.value else {
        return Err(at(v.span, "a regular expression is a quoted string"));
    };
    let p = if case_insensitive { format!("(?i){p}") } else { p.clone() };
    regex::RegexBuilder::new(&p)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| at(v.span, format!("bad regular expression: {e}")))
}

fn like_to_regex(pattern: &Sql, case_insensitive: bool) -> Result<Regex, QueryError> {
    let Sql::Value(v) = pattern else { return Err(nowhere("a LIKE pattern is a quoted string")) };
    let SqlValue::SingleQuotedString(p) = &v.value else { return Err(at(v.span, "a LIKE pattern is a quoted string")) };
    let mut re = String::from(if case_insensitive { "(?is)^" } else { "(?s)^" });
    for c in p.chars() {
        match c {
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re).map_err(|e| at(v.span, e.to_string()))
}

/// Lowers an expression; aggregates only where `aggregates` allows them (the SELECT list).
fn expr(e: &Sql, aggregates: bool) -> Result<Expr, QueryError> {
    if let Some(name) = dotted(e) {
        return Ok(Expr::Field(name));
    }
    Ok(match e {
        Sql::Value(v) => Expr::Lit(literal(v)?),
        Sql::Nested(inner) => expr(inner, aggregates)?,
        Sql::IsNull(inner) => Expr::IsNull(Box::new(expr(inner, aggregates)?), false),
        Sql::IsNotNull(inner) => Expr::IsNull(Box::new(expr(inner, aggregates)?), true),
        Sql::UnaryOp { op: UnaryOperator::Not, expr: inner } => Expr::Not(Box::new(expr(inner, aggregates)?)),
        Sql::UnaryOp { op: UnaryOperator::Minus, expr: inner } => {
            Expr::Arith('-', Box::new(Expr::Lit(Lit::Int(0))), Box::new(expr(inner, aggregates)?))
        }
        Sql::RLike { negated, expr: inner, pattern, .. } => {
            let m = Expr::Regex(Box::new(expr(inner, aggregates)?), regex(pattern, false)?);
            if *negated { Expr::Not(Box::new(m)) } else { m }
        }
        Sql::Like { negated, expr: inner, pattern, any: false, .. }
        | Sql::ILike { negated, expr: inner, pattern, any: false, .. } => {
            let ci = matches!(e, Sql::ILike { .. });
            let m = Expr::Regex(Box::new(expr(inner, aggregates)?), like_to_regex(pattern, ci)?);
            if *negated { Expr::Not(Box::new(m)) } else { m }
        }
        Sql::BinaryOp { left, op, right } => {
            let (l, r) = (Box::new(expr(left, aggregates)?), expr(right, aggregates));
            match op {
                BinaryOperator::And => Expr::And(l, Box::new(r?)),
                BinaryOperator::Or => Expr::Or(l, Box::new(r?)),
                BinaryOperator::Eq => Expr::Cmp(Cmp::Eq, l, Box::new(r?)),
                BinaryOperator::NotEq => Expr::Cmp(Cmp::Ne, l, Box::new(r?)),
                BinaryOperator::Lt => Expr::Cmp(Cmp::Lt, l, Box::new(r?)),
                BinaryOperator::LtEq => Expr::Cmp(Cmp::Le, l, Box::new(r?)),
                BinaryOperator::Gt => Expr::Cmp(Cmp::Gt, l, Box::new(r?)),
                BinaryOperator::GtEq => Expr::Cmp(Cmp::Ge, l, Box::new(r?)),
                BinaryOperator::Plus => Expr::Arith('+', l, Box::new(r?)),
                BinaryOperator::Minus => Expr::Arith('-', l, Box::new(r?)),
                BinaryOperator::Multiply => Expr::Arith('*', l, Box::new(r?)),
                BinaryOperator::Divide => Expr::Arith('/', l, Box::new(r?)),
                BinaryOperator::PGRegexMatch | BinaryOperator::PGRegexIMatch => {
                    Expr::Regex(l, regex(right, *op == BinaryOperator::PGRegexIMatch)?)
                }
                BinaryOperator::PGRegexNotMatch | BinaryOperator::PGRegexNotIMatch => {
                    Expr::Not(Box::new(Expr::Regex(l, regex(right, *op == BinaryOperator::PGRegexNotIMatch)?)))
                }
                other => return Err(nowhere(format!("operator `{other}` is not supported"))),
            }
        }
        Sql::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let args = args(f)?;
            let kind = match name.as_str() {
                "sample" => {
                    let [Sql::Value(v)] = args.as_slice() else {
                        return Err(at(f.name.span(), "sample(percent) takes one number from 0 to 100"));
                    };
                    let percent = match literal(v)? {
                        Lit::Int(i) => i as f64,
                        Lit::Float(x) => x,
                        _ => -1.0,
                    };
                    if !(0.0..=100.0).contains(&percent) {
                        return Err(at(v.span, "sample(percent): from 0 to 100"));
                    }
                    return Ok(Expr::Sample(percent / 100.0));
                }
                "count" => AggKind::Count,
                "sum" => AggKind::Sum,
                "min" => AggKind::Min,
                "max" => AggKind::Max,
                "avg" => AggKind::Avg,
                "percentile" => AggKind::Percentile(0.0),
                _ => return Err(at(f.name.span(), format!("unknown function `{name}`"))),
            };
            if !aggregates {
                return Err(at(f.name.span(), format!("`{name}` is an aggregate: only in the SELECT list")));
            }
            let (arg, kind) = match (kind, args.as_slice()) {
                (AggKind::Count, [Sql::Wildcard(_)] | []) => (None, AggKind::Count),
                (AggKind::Percentile(_), [a, Sql::Value(q)]) => {
                    let q = match literal(q)? {
                        Lit::Float(x) => x,
                        Lit::Int(i) => i as f64,
                        _ => -1.0,
                    };
                    if !(0.0..=1.0).contains(&q) {
                        return Err(at(f.name.span(), "percentile(field, q): q from 0 to 1, e.g. 0.99"));
                    }
                    (Some(expr(a, false)?), AggKind::Percentile(q))
                }
                (AggKind::Percentile(_), _) => {
                    return Err(at(f.name.span(), "percentile(field, q) takes a field and a fraction"));
                }
                (kind, [a]) => (Some(expr(a, false)?), kind),
                _ => return Err(at(f.name.span(), format!("`{name}` takes one argument"))),
            };
            Expr::Agg(Box::new(Agg { kind, arg }))
        }
        other => return Err(nowhere(format!("`{other}` is not supported"))),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn positions_come_from_the_parser_message() {
        assert_eq!(super::position_of("Expected: an expression, found: FROM at Line: 1, Column: 8"), (1, 8));
        assert_eq!(super::position_of("no position"), (0, 0));
    }
}
