//! From SQL text to a [`Query`]: parsed by `sqlparser` (generic dialect), then checked clause by
//! clause and lowered ([`crate::lower`]). Every clause the evaluator does not run is refused
//! here, with the line and column of its first token: nothing is silently ignored.

use sqlparser::ast::{
    self, Expr as Sql, FunctionArguments, GroupByExpr, LimitClause, OrderByKind, SelectItem, SetExpr, Spanned,
    Statement, TableFactor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::lower::{OverWindow, PerEvent, args, at, dotted, integer, lower};
use crate::{Expr, Item, Order, Plan, Query, QueryError, Window};

/// Longest query text accepted.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Default window of an aggregating query without a window in its `GROUP BY`.
pub const DEFAULT_WINDOW_MS: u64 = 10_000;
/// Bounds of a time window and of an event-time window's lateness, ms.
pub const WINDOW_MS: (u64, u64) = (100, 3_600_000);
/// Bounds of a count window, events.
pub const COUNT_WINDOW: (u64, u64) = (1, 1_000_000);
/// Largest `LIMIT` of a stream (results, then the end).
pub const LIMIT_MAX: u64 = 1_000_000_000;
/// Largest `LIMIT` of a windowed query (results per window).
pub const WINDOW_LIMIT_MAX: u64 = 100_000;

/// The position of the first `word` (a keyword, case-insensitive) outside quotes, for clauses
/// the parser keeps without a position.
fn keyword(sql: &str, word: &str, message: impl Into<String>) -> QueryError {
    let (mut line, mut column, mut quote) = (1u64, 1u64, None::<char>);
    let chars: Vec<char> = sql.chars().collect();
    let target: Vec<char> = word.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None => {
                let boundary = |j: Option<&char>| j.is_none_or(|c| !c.is_alphanumeric() && *c != '_');
                let matched = chars
                    .get(i..i + target.len())
                    .is_some_and(|s| s.iter().zip(&target).all(|(a, b)| a.eq_ignore_ascii_case(b)));
                // `window(…)` is a call, not the keyword `WINDOW`.
                let call = chars.get(i + target.len()) == Some(&'(');
                if matched
                    && !call
                    && boundary(i.checked_sub(1).and_then(|j| chars.get(j)))
                    && boundary(chars.get(i + target.len()))
                {
                    return QueryError { message: message.into(), line, column };
                }
            }
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    QueryError { message: message.into(), line: 1, column: 1 }
}

/// `sql` with each `[*]` outside quotes written `[_]` (same length, so positions hold), which
/// the parser reads as an index; [`crate::lower`] reads it as "any element".
fn any_index(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '[' && chars.peek() == Some(&'*') => {
                let mut ahead = chars.clone();
                ahead.next();
                if ahead.next() == Some(']') {
                    chars.next();
                    chars.next();
                    out.push('[');
                    out.push_str(crate::lower::ANY_INDEX);
                    out.push(']');
                    continue;
                }
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// An error at the query's first token.
fn first_token(sql: &str, message: &str) -> QueryError {
    let lead = &sql[..sql.len() - sql.trim_start().len()];
    let line = 1 + lead.matches('\n').count() as u64;
    let column = 1 + lead.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64;
    QueryError { message: message.to_owned(), line, column }
}

/// A parser error: its message without the position, and the position on its own.
fn parse_error(sql: &str, e: sqlparser::parser::ParserError) -> QueryError {
    let message = e.to_string();
    let message = message.trim_start_matches("sql parser error: ").trim_start_matches("sql tokenizer error: ");
    let (text, position) = match message.rfind(" at Line: ") {
        Some(i) => (&message[..i], &message[i + " at ".len()..]),
        None => (message, ""),
    };
    let number = |key: &str| {
        position.find(key).and_then(|i| {
            position[i + key.len()..]
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
    };
    if text.contains("recursion limit exceeded") {
        return QueryError {
            message: "the query nests too deeply (the parser allows about 50 levels of parentheses or calls)".into(),
            line: 1,
            column: 1,
        };
    }
    if text.ends_with("found: EOF") {
        // The parser gives no position for the end: it is just after the last character.
        let line = 1 + sql.matches('\n').count() as u64;
        let column = 1 + sql.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64;
        let expected = text.trim_end_matches(", found: EOF");
        return QueryError { message: format!("{expected}, but the query ends"), line, column };
    }
    QueryError {
        message: text.to_owned(),
        line: number("Line:").filter(|l| *l > 0).unwrap_or(1),
        column: number("Column:").filter(|c| *c > 0).unwrap_or(1),
    }
}

pub(crate) fn compile(sql: &str) -> Result<Query, QueryError> {
    compile_checked(sql).map_err(|mut e| {
        // `[*]` is parsed as `[_]` (see `any_index`): messages show what the user wrote.
        e.message = e.message.replace("[_]", "[*]");
        e
    })
}

fn compile_checked(sql: &str) -> Result<Query, QueryError> {
    if sql.len() > MAX_QUERY_BYTES {
        return Err(QueryError { message: format!("a query is at most {MAX_QUERY_BYTES} bytes"), line: 1, column: 1 });
    }
    let statements = Parser::parse_sql(&GenericDialect {}, &any_index(sql)).map_err(|e| parse_error(sql, e))?;
    let query = match statements.as_slice() {
        [Statement::Query(query)] => query,
        [] => return Err(at(sqlparser::tokenizer::Span::empty(), "a query is one SELECT statement")),
        [Statement::Query(_), second, ..] => {
            return Err(at(second.span(), "a query is one SELECT statement, not several"));
        }
        [_, ..] => return Err(first_token(sql, "a query is one SELECT statement")),
    };
    refuse_query_clauses(sql, query)?;
    let select = match query.body.as_ref() {
        SetExpr::Select(select) => select,
        SetExpr::SetOperation { op, .. } => {
            let word = op.to_string();
            return Err(keyword(sql, &word, format!("{word} is not supported: a query reads one stream")));
        }
        SetExpr::Values(_) => return Err(keyword(sql, "VALUES", "VALUES is not supported: a query reads a stream")),
        other => return Err(at(other.span(), "one plain SELECT is expected")),
    };
    refuse_select_clauses(sql, select)?;
    check_from(sql, select)?;

    let filter = select.selection.as_ref().map(|e| lower(e, &mut PerEvent { clause: "WHERE" })).transpose()?;
    let (keys_sql, window) = group_by(sql, select)?;
    let order_by = order_by(query)?;
    let limit = limit(query)?;
    let aggregating = select.projection.iter().any(|i| match i {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => has_aggregate(e),
        _ => false,
    }) || select.having.as_ref().is_some_and(has_aggregate)
        || order_by.iter().any(|o| has_aggregate(&o.expr));
    let grouped = aggregating || !keys_sql.is_empty();

    if window.is_none() && !grouped {
        // A stream: one result per matching event.
        if let Some(having) = &select.having {
            return Err(at(having.span(), "HAVING needs GROUP BY or aggregates"));
        }
        if let Some(o) = order_by.first() {
            return Err(at(
                o.expr.span(),
                "ORDER BY needs a window (GROUP BY window(ms)): a stream never ends to be sorted",
            ));
        }
        let mut items = Vec::new();
        for item in &select.projection {
            items.push(match item {
                SelectItem::Wildcard(_) => Item::All,
                SelectItem::UnnamedExpr(e) => Item::Named {
                    name: default_name(e),
                    expr: lower(e, &mut PerEvent { clause: "a stream's SELECT" })?,
                },
                SelectItem::ExprWithAlias { expr: e, alias } => Item::Named {
                    name: alias.value.clone(),
                    expr: lower(e, &mut PerEvent { clause: "a stream's SELECT" })?,
                },
                SelectItem::QualifiedWildcard(kind, _) => prefix_item(kind)?,
            });
        }
        if let Some((n, span)) = limit
            && (n == 0 || n > LIMIT_MAX)
        {
            return Err(at(span, format!("LIMIT: from 1 to {LIMIT_MAX}")));
        }
        check_names(select, &items, false)?;
        return Ok(Query { text: sql.to_owned(), filter, items, plan: None, limit: limit.map(|(n, _)| n) });
    }

    let mut plan = Plan {
        window: window.unwrap_or(Window::Time(DEFAULT_WINDOW_MS)),
        grouped,
        keys: keys_sql.iter().map(|k| lower(k, &mut PerEvent { clause: "GROUP BY" })).collect::<Result<_, _>>()?,
        firsts: Vec::new(),
        aggs: Vec::new(),
        anomalies: Vec::new(),
        all: false,
        having: None,
        order: Vec::new(),
        limit: None,
    };
    if let Some((n, span)) = limit {
        if n == 0 || n > WINDOW_LIMIT_MAX {
            return Err(at(span, format!("LIMIT per window: from 1 to {WINDOW_LIMIT_MAX}")));
        }
        plan.limit = Some(n);
    }
    let key_texts: Vec<String> = keys_sql.iter().map(ToString::to_string).collect();
    let mut items = Vec::new();
    for item in &select.projection {
        let mut scope = OverWindow { plan: &mut plan, key_texts: key_texts.clone(), anomaly: true, aliases: &[] };
        items.push(match item {
            SelectItem::Wildcard(w) if grouped => {
                return Err(at(w.wildcard_token.0.span, "`*` lists each event: not with aggregates or GROUP BY keys"));
            }
            SelectItem::Wildcard(_) => {
                scope.plan.all = true;
                Item::All
            }
            SelectItem::UnnamedExpr(e) => Item::Named { name: default_name(e), expr: lower(e, &mut scope)? },
            SelectItem::ExprWithAlias { expr: e, alias } => {
                Item::Named { name: alias.value.clone(), expr: lower(e, &mut scope)? }
            }
            SelectItem::QualifiedWildcard(kind, _) => match prefix_item(kind)? {
                Item::Named { name, .. } => {
                    let expr = lower(&Sql::Identifier(ast::Ident::new(name.clone())), &mut scope)?;
                    Item::Named { name, expr }
                }
                Item::All => Item::All,
            },
        });
    }
    check_names(select, &items, true)?;
    let aliases: Vec<(String, Expr)> = items
        .iter()
        .filter_map(|i| match i {
            Item::Named { name, expr } => Some((name.clone(), expr.clone())),
            Item::All => None,
        })
        .collect();
    if let Some(having) = &select.having {
        let mut scope = OverWindow { plan: &mut plan, key_texts: key_texts.clone(), anomaly: true, aliases: &aliases };
        plan.having = Some(lower(having, &mut scope)?);
    }
    for o in &order_by {
        let by_item = match &o.expr {
            // An item's name or alias, or its position from 1.
            e if dotted(e).is_some() => {
                let name = dotted(e).unwrap_or_default();
                items.iter().find_map(|i| match i {
                    Item::Named { name: n, expr } if *n == name => Some(expr.clone()),
                    _ => None,
                })
            }
            e => match integer(e) {
                Some(p) => match usize::try_from(p).ok().and_then(|p| p.checked_sub(1)).and_then(|p| items.get(p)) {
                    Some(Item::Named { expr, .. }) => Some(expr.clone()),
                    _ => return Err(at(e.span(), "ORDER BY position: a named item of the SELECT list, from 1")),
                },
                None if constant(e) => {
                    return Err(at(
                        e.span(),
                        "ORDER BY takes a name, a position from 1 or an expression, not a constant",
                    ));
                }
                None => None,
            },
        };
        let expr = match by_item {
            Some(expr) => expr,
            None => {
                let mut scope =
                    OverWindow { plan: &mut plan, key_texts: key_texts.clone(), anomaly: true, aliases: &aliases };
                lower(&o.expr, &mut scope)?
            }
        };
        let desc = o.options.asc == Some(false);
        plan.order.push(Order { expr, desc, nulls_first: o.options.nulls_first.unwrap_or(false) });
    }
    Ok(Query { text: sql.to_owned(), filter, items, plan: Some(plan), limit: None })
}

/// Names of results: each once, and none of the fields every result carries (`timestamp-ms`,
/// and for windows `window-ms`, `window-events`, `late-events`) unless it is that field itself.
fn check_names(select: &ast::Select, items: &[Item], windowed: bool) -> Result<(), QueryError> {
    let reserved: &[&str] =
        if windowed { &["timestamp-ms", "window-ms", "window-events", "late-events"] } else { &["timestamp-ms"] };
    let mut seen: Vec<&str> = Vec::new();
    for (item, sql) in items.iter().zip(&select.projection) {
        let Item::Named { name, expr } = item else { continue };
        let itself = !windowed && matches!(expr, Expr::Field(f) if f == name);
        if reserved.contains(&name.as_str()) && !itself {
            return Err(at(sql.span(), format!("`{name}` is a field every result carries; choose another name")));
        }
        if seen.contains(&name.as_str()) {
            return Err(at(sql.span(), format!("two items are named `{name}`; give one an alias")));
        }
        seen.push(name);
    }
    Ok(())
}

/// `x.*`: the object of the fields named `x.…`, as the item `x`.
fn prefix_item(kind: &ast::SelectItemQualifiedWildcardKind) -> Result<Item, QueryError> {
    match kind {
        ast::SelectItemQualifiedWildcardKind::ObjectName(name) => {
            let name = name.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(".");
            Ok(Item::Named { name: name.clone(), expr: Expr::Field(name) })
        }
        ast::SelectItemQualifiedWildcardKind::Expr(e) => Err(at(e.span(), "`x.*` takes a field name")),
    }
}

/// The name of an unaliased item: the field's name, or the expression's text.
fn default_name(e: &Sql) -> String {
    dotted(e).unwrap_or_else(|| e.to_string().replace("[_]", "[*]"))
}

/// Whether `e` calls an aggregate (anywhere the evaluator could run one).
fn has_aggregate(e: &Sql) -> bool {
    match e {
        Sql::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            matches!(
                name.as_str(),
                "count" | "approx_count_distinct" | "sum" | "min" | "max" | "avg" | "percentile" | "list"
            ) && !matches!(f.args, FunctionArguments::None)
                || args(f).is_ok_and(|a| a.iter().any(has_aggregate))
        }
        Sql::BinaryOp { left, right, .. } => has_aggregate(left) || has_aggregate(right),
        Sql::UnaryOp { expr, .. } | Sql::Nested(expr) | Sql::IsNull(expr) | Sql::IsNotNull(expr) => has_aggregate(expr),
        Sql::Like { expr, .. } | Sql::ILike { expr, .. } | Sql::RLike { expr, .. } => has_aggregate(expr),
        _ => false,
    }
}

/// Query-level clauses a stream cannot honour.
fn refuse_query_clauses(sql: &str, q: &ast::Query) -> Result<(), QueryError> {
    if q.with.is_some() {
        return Err(keyword(sql, "WITH", "WITH is not supported: a query reads one stream"));
    }
    if q.fetch.is_some() {
        return Err(keyword(sql, "FETCH", "FETCH is not supported: use LIMIT"));
    }
    if !q.locks.is_empty() || q.for_clause.is_some() {
        return Err(keyword(sql, "FOR", "FOR clauses are not supported"));
    }
    if q.settings.is_some() {
        return Err(keyword(sql, "SETTINGS", "SETTINGS is not supported"));
    }
    if q.format_clause.is_some() {
        return Err(keyword(sql, "FORMAT", "FORMAT is not supported"));
    }
    if !q.pipe_operators.is_empty() {
        return Err(keyword(sql, "|>", "pipe operators are not supported"));
    }
    Ok(())
}

/// SELECT-level clauses the evaluator does not run.
fn refuse_select_clauses(sql: &str, s: &ast::Select) -> Result<(), QueryError> {
    let refuse = |word: &str, what: &str| Err(keyword(sql, word, format!("{what} is not supported")));
    if s.distinct.is_some() {
        return Err(keyword(
            sql,
            "DISTINCT",
            "SELECT DISTINCT is not supported: use GROUP BY, or count(DISTINCT x) for a count",
        ));
    }
    if s.top.is_some() {
        return refuse("TOP", "TOP");
    }
    if s.into.is_some() {
        return refuse("INTO", "SELECT … INTO");
    }
    if s.exclude.is_some() {
        return refuse("EXCLUDE", "EXCLUDE");
    }
    if !s.lateral_views.is_empty() {
        return refuse("LATERAL", "LATERAL VIEW");
    }
    if s.prewhere.is_some() {
        return refuse("PREWHERE", "PREWHERE");
    }
    if !s.cluster_by.is_empty() {
        return refuse("CLUSTER", "CLUSTER BY");
    }
    if !s.distribute_by.is_empty() {
        return refuse("DISTRIBUTE", "DISTRIBUTE BY");
    }
    if !s.sort_by.is_empty() {
        return refuse("SORT", "SORT BY (use ORDER BY)");
    }
    if !s.named_window.is_empty() {
        return refuse("WINDOW", "a named WINDOW clause (use GROUP BY window(ms))");
    }
    if s.qualify.is_some() {
        return refuse("QUALIFY", "QUALIFY");
    }
    if s.connect_by.is_some() {
        return refuse("CONNECT", "CONNECT BY");
    }
    if s.value_table_mode.is_some() {
        return refuse("AS", "SELECT AS STRUCT / VALUE");
    }
    for item in &s.projection {
        if let SelectItem::Wildcard(options) | SelectItem::QualifiedWildcard(_, options) = item
            && !options.to_string().trim().is_empty()
        {
            return Err(at(item.span(), "options on `*` are not supported"));
        }
    }
    Ok(())
}

/// `FROM name`: at most one stream, named only (the name is not used).
fn check_from(sql: &str, s: &ast::Select) -> Result<(), QueryError> {
    if let Some(second) = s.from.get(1) {
        return Err(at(second.relation.span(), "a query reads one stream: FROM names at most one"));
    }
    let Some(from) = s.from.first() else { return Ok(()) };
    if !from.joins.is_empty() {
        return Err(keyword(
            sql,
            "JOIN",
            "JOIN is not supported: a subscription reads one job's output; join streams in a job (docs/queries.md, \"Joins\")",
        ));
    }
    match &from.relation {
        TableFactor::Table { sample: Some(_), .. } => {
            let word = if sql.to_ascii_uppercase().contains("TABLESAMPLE") { "TABLESAMPLE" } else { "SAMPLE" };
            Err(keyword(sql, word, "TABLESAMPLE is not supported: use sample(percent) in WHERE"))
        }
        TableFactor::Table { name, .. } if from.relation.to_string() == name.to_string() => Ok(()),
        other => Err(at(other.span(), "FROM names the stream and nothing else (no alias, arguments or hints)")),
    }
}

/// `GROUP BY` keys and the window.
fn group_by(sql: &str, s: &ast::Select) -> Result<(Vec<Sql>, Option<Window>), QueryError> {
    let list = match &s.group_by {
        GroupByExpr::Expressions(list, modifiers) if modifiers.is_empty() => list,
        GroupByExpr::Expressions(list, _) => {
            return Err(at(
                list.last().map_or_else(|| s.group_by.span(), Spanned::span),
                "GROUP BY modifiers are not supported",
            ));
        }
        GroupByExpr::All(_) => return Err(keyword(sql, "GROUP", "GROUP BY ALL is not supported: name the keys")),
    };
    let mut keys = Vec::new();
    let mut window = None;
    for e in list {
        if constant(e) {
            return Err(at(
                e.span(),
                "GROUP BY takes fields or expressions, not constants or positions; name the field",
            ));
        }
        match window_call(e)? {
            Some(_) if window.is_some() => return Err(at(e.span(), "a query has one window")),
            Some(w) => window = Some(w),
            None => keys.push(e.clone()),
        }
    }
    Ok((keys, window))
}

/// Whether `e` is a literal (a number, text, boolean or null, possibly negated).
fn constant(e: &Sql) -> bool {
    match e {
        Sql::Value(_) => true,
        Sql::UnaryOp { expr, .. } | Sql::Nested(expr) => constant(expr),
        _ => false,
    }
}

/// `window(ms)`, `count_window(n)` or `event_window(ms[, lateness_ms])` in GROUP BY.
fn window_call(e: &Sql) -> Result<Option<Window>, QueryError> {
    let Sql::Function(f) = e else { return Ok(None) };
    let name = f.name.to_string().to_ascii_lowercase();
    if !matches!(name.as_str(), "window" | "count_window" | "event_window") {
        return Ok(None);
    }
    let args = args(f)?;
    let bounded = |e: &Sql, (lo, hi): (u64, u64), what: &str| {
        integer(e)
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| at(e.span(), format!("{what}: a whole number from {lo} to {hi}")))
    };
    Ok(Some(match (name.as_str(), args.as_slice()) {
        ("window", [ms]) => Window::Time(bounded(ms, WINDOW_MS, "window(ms)")?),
        ("count_window", [n]) => Window::Count(bounded(n, COUNT_WINDOW, "count_window(events)")?),
        ("event_window", [ms]) => Window::Event { ms: bounded(ms, WINDOW_MS, "event_window(ms)")?, lateness_ms: 0 },
        ("event_window", [ms, late]) => Window::Event {
            ms: bounded(ms, WINDOW_MS, "event_window(ms, lateness_ms)")?,
            lateness_ms: bounded(late, (0, WINDOW_MS.1), "event_window(ms, lateness_ms): lateness")?,
        },
        ("window", _) => return Err(at(f.name.span(), "window(ms) takes one number of milliseconds")),
        ("count_window", _) => return Err(at(f.name.span(), "count_window(events) takes one number of events")),
        _ => return Err(at(f.name.span(), "event_window(ms[, lateness_ms]) takes one or two numbers")),
    }))
}

fn order_by(q: &ast::Query) -> Result<Vec<ast::OrderByExpr>, QueryError> {
    let Some(order) = &q.order_by else { return Ok(Vec::new()) };
    if order.interpolate.is_some() {
        return Err(at(order.span(), "INTERPOLATE is not supported"));
    }
    match &order.kind {
        OrderByKind::Expressions(list) => {
            if let Some(o) = list.iter().find(|o| o.with_fill.is_some()) {
                return Err(at(o.span(), "WITH FILL is not supported"));
            }
            Ok(list.clone())
        }
        OrderByKind::All(_) => Err(at(order.span(), "ORDER BY ALL is not supported")),
    }
}

/// `LIMIT n` (no offset).
fn limit(q: &ast::Query) -> Result<Option<(u64, sqlparser::tokenizer::Span)>, QueryError> {
    let Some(clause) = &q.limit_clause else { return Ok(None) };
    match clause {
        LimitClause::LimitOffset { limit, offset: None, limit_by } if limit_by.is_empty() => match limit {
            None => Ok(None),
            Some(e) => integer(e)
                .map(|n| Some((n, e.span())))
                .ok_or_else(|| at(e.span(), "LIMIT takes a whole number (at most 1,000,000,000)")),
        },
        LimitClause::LimitOffset { offset: Some(o), .. } => {
            Err(at(o.value.span(), "OFFSET is not supported: a stream has no fixed start"))
        }
        other => Err(at(other.span(), "LIMIT takes one number (no OFFSET, no LIMIT BY)")),
    }
}
