//! SQL expressions to [`Expr`]s. One structural lowering serves both kinds of expression; a
//! [`Scope`] decides what names and functions mean: per event (`WHERE`, a stream's items,
//! group keys, aggregates' arguments) fields are read from the event, while over a window's
//! results (items, `HAVING`, `ORDER BY` of a windowed query) they become [`Slot`]s.

use regex::Regex;
use sqlparser::ast::{
    self, BinaryOperator, DuplicateTreatment, Expr as Sql, FunctionArg, FunctionArgExpr, FunctionArguments, Spanned,
    UnaryOperator, Value as SqlValue,
};
use sqlparser::tokenizer::{Span, Token, TokenWithSpan};

use crate::{Agg, AggKind, Cmp, Expr, Lit, Op, Plan, QueryError, Slot};

/// An error at `span` (the query's start when the parser knows no better).
pub(crate) fn at(span: Span, message: impl Into<String>) -> QueryError {
    let (line, column) = if span.start.line == 0 { (1, 1) } else { (span.start.line, span.start.column) };
    QueryError { message: message.into(), line, column }
}

/// What names and functions mean where an expression stands.
pub(crate) trait Scope {
    /// The expression for `e` if this scope gives it its own meaning, else `None` to lower it
    /// structurally.
    fn leaf(&mut self, e: &Sql) -> Result<Option<Expr>, QueryError>;
}

/// Per event: fields are the event's; no aggregates.
pub(crate) struct PerEvent {
    /// Where aggregates are refused, for the message.
    pub clause: &'static str,
}

impl Scope for PerEvent {
    fn leaf(&mut self, e: &Sql) -> Result<Option<Expr>, QueryError> {
        if let Some(name) = dotted(e) {
            return Ok(Some(Expr::Field(name)));
        }
        if let Some((prefix, suffix)) = any_path(e) {
            return Ok(Some(Expr::Any(prefix, suffix)));
        }
        let Sql::Function(f) = e else { return Ok(None) };
        let name = function_name(f);
        if name == "sample" {
            if self.clause != "WHERE" {
                return Err(at(f.name.span(), "sample(percent) filters events: use it in WHERE"));
            }
            return sample(f).map(Some);
        }
        if aggregate_kind(&name).is_some() || name == "anomaly" {
            return Err(at(f.name.span(), format!("`{name}` works over a window: not in {}", self.clause)));
        }
        Ok(None)
    }
}

/// Over a window's results: group keys, aggregates, `anomaly`, and fields taking their first
/// value in the group.
pub(crate) struct OverWindow<'p> {
    pub plan: &'p mut Plan,
    /// The group keys' SQL text, to recognise them in items.
    pub key_texts: Vec<String>,
    /// Whether `anomaly` may appear (not inside its own argument).
    pub anomaly: bool,
    /// The SELECT list's names, which `HAVING` and `ORDER BY` may use.
    pub aliases: &'p [(String, Expr)],
}

impl Scope for OverWindow<'_> {
    fn leaf(&mut self, e: &Sql) -> Result<Option<Expr>, QueryError> {
        let text = e.to_string();
        if let Some(i) = self.key_texts.iter().position(|k| *k == text) {
            return Ok(Some(Expr::Slot(Slot::Key(i))));
        }
        if let Some(name) = dotted(e) {
            if let Some((_, expr)) = self.aliases.iter().find(|(alias, _)| *alias == name) {
                return Ok(Some(expr.clone()));
            }
            return Ok(Some(self.first(name)));
        }
        if let Some((prefix, suffix)) = any_path(e) {
            self.plan.firsts.push(Expr::Any(prefix, suffix));
            return Ok(Some(Expr::Slot(Slot::First(self.plan.firsts.len() - 1))));
        }
        let Sql::Function(f) = e else { return Ok(None) };
        let name = function_name(f);
        if name == "sample" {
            return Err(at(f.name.span(), "sample(percent) filters events: use it in WHERE"));
        }
        if name == "anomaly" {
            if !self.anomaly {
                return Err(at(f.name.span(), "anomaly(…) cannot be nested in anomaly(…)"));
            }
            let args = args(f)?;
            let [x, k] = args.as_slice() else {
                return Err(at(f.name.span(), "anomaly(x, k) takes a value and a number of deviations"));
            };
            let k = number(k).filter(|k| *k > 0.0 && k.is_finite()).ok_or_else(|| {
                at(k.span(), "anomaly(x, k): k is a positive number of median absolute deviations, e.g. 3")
            })?;
            self.anomaly = false;
            let x = lower(x, self);
            self.anomaly = true;
            self.plan.anomalies.push((x?, k));
            return Ok(Some(Expr::Slot(Slot::Anomaly(self.plan.anomalies.len() - 1))));
        }
        let Some(kind) = aggregate_kind(&name) else { return Ok(None) };
        if !self.plan.grouped {
            return Err(at(f.name.span(), format!("`{name}` needs groups, but this query lists each event")));
        }
        let agg = aggregate(f, kind)?;
        self.plan.aggs.push(agg);
        Ok(Some(Expr::Slot(Slot::Acc(self.plan.aggs.len() - 1))))
    }
}

impl OverWindow<'_> {
    /// A field whose value for the group's first event is kept.
    fn first(&mut self, name: String) -> Expr {
        let i = self.plan.firsts.iter().position(|f| matches!(f, Expr::Field(n) if *n == name));
        let i = i.unwrap_or_else(|| {
            self.plan.firsts.push(Expr::Field(name));
            self.plan.firsts.len() - 1
        });
        Expr::Slot(Slot::First(i))
    }
}

fn function_name(f: &ast::Function) -> String {
    f.name.to_string().to_ascii_lowercase()
}

fn aggregate_kind(name: &str) -> Option<AggKind> {
    Some(match name {
        "count" => AggKind::Count,
        "approx_count_distinct" => AggKind::ApproxDistinct,
        "sum" => AggKind::Sum,
        "min" => AggKind::Min,
        "max" => AggKind::Max,
        "avg" => AggKind::Avg,
        "percentile" => AggKind::Percentile(0.0),
        "list" => AggKind::List,
        _ => return None,
    })
}

fn aggregate(f: &ast::Function, kind: AggKind) -> Result<Agg, QueryError> {
    let distinct = match &f.args {
        FunctionArguments::List(list) => match list.duplicate_treatment {
            Some(DuplicateTreatment::Distinct) => true,
            Some(DuplicateTreatment::All) | None => false,
        },
        _ => false,
    };
    if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() || f.null_treatment.is_some() {
        return Err(at(f.span(), "FILTER, OVER, WITHIN GROUP and null treatment are not supported"));
    }
    let name = function_name(f);
    if distinct && kind != AggKind::Count {
        return Err(at(f.name.span(), format!("DISTINCT works in count(DISTINCT x) only, not in `{name}`")));
    }
    let args = args(f)?;
    let per_event = &mut PerEvent { clause: "an aggregate's argument" };
    Ok(match (kind, args.as_slice()) {
        (AggKind::Count, [Sql::Wildcard(_)]) if !distinct => Agg { kind, arg: None },
        (_, []) => return Err(at(f.name.span(), format!("`{name}` takes an argument (`count(*)` counts events)"))),
        (AggKind::Count, [a]) if distinct => Agg { kind: AggKind::CountDistinct, arg: Some(lower(a, per_event)?) },
        (AggKind::Percentile(_), [a, q]) => {
            let q = number(q)
                .filter(|q| (0.0..=1.0).contains(q))
                .ok_or_else(|| at(q.span(), "percentile(x, q): q from 0 to 1, e.g. 0.99"))?;
            Agg { kind: AggKind::Percentile(q), arg: Some(lower(a, per_event)?) }
        }
        (AggKind::Percentile(_), _) => {
            return Err(at(f.name.span(), "percentile(x, q) takes a value and a fraction"));
        }
        (_, [Sql::Wildcard(t)]) => return Err(at(t.0.span, format!("`{name}(*)`: only count(*) takes `*`"))),
        (kind, [a]) => Agg { kind, arg: Some(lower(a, per_event)?) },
        _ => return Err(at(f.name.span(), format!("`{name}` takes one argument"))),
    })
}

/// A numeric literal (possibly negative).
fn number(e: &Sql) -> Option<f64> {
    match e {
        Sql::Value(v) => match &v.value {
            SqlValue::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        Sql::UnaryOp { op: UnaryOperator::Minus, expr } => number(expr).map(|x| -x),
        _ => None,
    }
}

/// A non-negative integer literal.
pub(crate) fn integer(e: &Sql) -> Option<u64> {
    match e {
        Sql::Value(v) => match &v.value {
            SqlValue::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn sample(f: &ast::Function) -> Result<Expr, QueryError> {
    let args = args(f)?;
    let [p] = args.as_slice() else {
        return Err(at(f.name.span(), "sample(percent) takes one number from 0 to 100"));
    };
    let percent = number(p)
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| at(p.span(), "sample(percent): a number from 0 to 100"))?;
    Ok(Expr::Sample(percent / 100.0))
}

/// The name that stands for "every element" in `a[*]` once [`crate::compile`] has made it
/// parseable (`a[_]`, the same length, so that positions stay right).
pub(crate) const ANY_INDEX: &str = "_";

/// One step of a field path: `.name`, `[n]` (the element `n`, from 0), or `[*]` (`Err`).
fn step(access: &ast::AccessExpr) -> Option<Result<String, ()>> {
    match access {
        ast::AccessExpr::Dot(part) => dotted(part).map(Ok),
        ast::AccessExpr::Subscript(ast::Subscript::Index { index }) => match index {
            Sql::Identifier(id) if id.value == ANY_INDEX && id.quote_style.is_none() => Some(Err(())),
            e => integer(e).map(|n| Ok(n.to_string())),
        },
        ast::AccessExpr::Subscript(_) => None,
    }
}

/// The field a (possibly dotted or indexed) name refers to: `a.b` is the field `a.b`, `a[1].b`
/// the field `a.1.b` (arrays are flattened to indexed names).
pub(crate) fn dotted(e: &Sql) -> Option<String> {
    match e {
        Sql::Identifier(id) => Some(id.value.clone()),
        Sql::CompoundIdentifier(ids) => Some(ids.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(".")),
        Sql::CompoundFieldAccess { root, access_chain } => {
            let mut name = dotted(root)?;
            for access in access_chain {
                name.push('.');
                name.push_str(&step(access)?.ok()?);
            }
            Some(name)
        }
        // Keywords such as `user` parse as argument-less functions; as names they are fields.
        Sql::Function(f) if matches!(f.args, FunctionArguments::None) => Some(f.name.to_string()),
        _ => None,
    }
}

/// `a[*]…`: the path before the first `[*]` and the rest (`.b` of `a[*].b`); one `[*]` only.
fn any_path(e: &Sql) -> Option<(String, String)> {
    let Sql::CompoundFieldAccess { root, access_chain } = e else { return None };
    let mut prefix = dotted(root)?;
    let mut suffix: Option<String> = None;
    for access in access_chain {
        match (step(access)?, &mut suffix) {
            (Ok(part), None) => {
                prefix.push('.');
                prefix.push_str(&part);
            }
            (Ok(part), Some(s)) => {
                s.push('.');
                s.push_str(&part);
            }
            (Err(()), None) => suffix = Some(String::new()),
            (Err(()), Some(_)) => return None,
        }
    }
    Some((prefix, suffix?))
}

/// A function's plain arguments.
pub(crate) fn args(f: &ast::Function) -> Result<Vec<Sql>, QueryError> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::List(list) => {
            if let Some(clause) = list.clauses.first() {
                return Err(at(f.span(), format!("`{clause}` in a function call is not supported")));
            }
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
                    FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => Ok(Sql::Wildcard(
                        ast::helpers::attached_token::AttachedToken(TokenWithSpan::new(Token::Mul, f.name.span())),
                    )),
                    _ => Err(at(a.span(), "named or qualified arguments are not supported")),
                })
                .collect()
        }
        FunctionArguments::Subquery(q) => Err(at(q.span(), "subqueries are not supported")),
    }
}

fn literal(v: &ast::ValueWithSpan) -> Result<Lit, QueryError> {
    Ok(match &v.value {
        SqlValue::Number(n, _) => match n.parse::<i64>() {
            Ok(i) => Lit::Int(i),
            Err(_) => Lit::Float(
                n.parse()
                    .ok()
                    .filter(|x: &f64| x.is_finite())
                    .ok_or_else(|| at(v.span, format!("`{n}` is not a number")))?,
            ),
        },
        SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => Lit::Text(s.clone()),
        SqlValue::Boolean(b) => Lit::Bool(*b),
        SqlValue::Null => Lit::Null,
        other => return Err(at(v.span, format!("unsupported literal `{other}`"))),
    })
}

fn pattern(e: &Sql, what: &str) -> Result<String, QueryError> {
    match e {
        Sql::Value(v) => match &v.value {
            SqlValue::SingleQuotedString(p) => Ok(p.clone()),
            _ => Err(at(v.span, format!("{what} is a quoted string"))),
        },
        other => Err(at(other.span(), format!("{what} is a quoted string"))),
    }
}

fn regex(e: &Sql, case_insensitive: bool) -> Result<Regex, QueryError> {
    let p = pattern(e, "a regular expression")?;
    let p = if case_insensitive { format!("(?i){p}") } else { p };
    regex::RegexBuilder::new(&p)
        .size_limit(1 << 20)
        .build()
        .map_err(|err| at(e.span(), format!("bad regular expression: {err}")))
}

fn like_to_regex(e: &Sql, case_insensitive: bool) -> Result<Regex, QueryError> {
    let p = pattern(e, "a LIKE pattern")?;
    let mut re = String::from(if case_insensitive { "(?is)^" } else { "(?s)^" });
    for c in p.chars() {
        match c {
            '%' => re.push_str(".*"),
            '_' => re.push('.'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    regex::RegexBuilder::new(&re).size_limit(1 << 20).build().map_err(|err| at(e.span(), err.to_string()))
}

/// `l cmp r`, as [`Expr::FieldCmp`] where one side is a field and the other a literal.
fn comparison(cmp: Cmp, l: Expr, r: Expr) -> Expr {
    let flipped = match cmp {
        Cmp::Lt => Cmp::Gt,
        Cmp::Le => Cmp::Ge,
        Cmp::Gt => Cmp::Lt,
        Cmp::Ge => Cmp::Le,
        other => other,
    };
    match (l, r) {
        (Expr::Field(name), Expr::Lit(lit)) => Expr::FieldCmp(cmp, name, lit),
        (Expr::Lit(lit), Expr::Field(name)) => Expr::FieldCmp(flipped, name, lit),
        (l, r) => Expr::Cmp(cmp, Box::new(l), Box::new(r)),
    }
}

/// Lowers `e` in `scope`.
pub(crate) fn lower(e: &Sql, scope: &mut impl Scope) -> Result<Expr, QueryError> {
    if let Some(x) = scope.leaf(e)? {
        return Ok(x);
    }
    let boxed = |e: &Sql, scope: &mut _| lower(e, scope).map(Box::new);
    Ok(match e {
        Sql::Value(v) => Expr::Lit(literal(v)?),
        Sql::Nested(inner) => lower(inner, scope)?,
        Sql::IsNull(inner) => Expr::IsNull(boxed(inner, scope)?, false),
        Sql::IsNotNull(inner) => Expr::IsNull(boxed(inner, scope)?, true),
        Sql::UnaryOp { op: UnaryOperator::Not, expr: inner } => Expr::Not(boxed(inner, scope)?),
        Sql::UnaryOp { op: UnaryOperator::Minus, expr: inner } => {
            Expr::Arith(Op::Sub, Box::new(Expr::Lit(Lit::Int(0))), boxed(inner, scope)?)
        }
        Sql::UnaryOp { op: UnaryOperator::Plus, expr: inner } => lower(inner, scope)?,
        Sql::RLike { negated, expr: inner, pattern, .. } => {
            let m = Expr::Regex(boxed(inner, scope)?, regex(pattern, false)?);
            if *negated { Expr::Not(Box::new(m)) } else { m }
        }
        Sql::Like { negated, expr: inner, pattern, any: false, escape_char: None }
        | Sql::ILike { negated, expr: inner, pattern, any: false, escape_char: None } => {
            let ci = matches!(e, Sql::ILike { .. });
            let m = Expr::Regex(boxed(inner, scope)?, like_to_regex(pattern, ci)?);
            if *negated { Expr::Not(Box::new(m)) } else { m }
        }
        Sql::InList { expr: inner, list, negated } => {
            let mut any: Option<Expr> = None;
            for item in list {
                let eq = comparison(Cmp::Eq, lower(inner, scope)?, lower(item, scope)?);
                any = Some(match any {
                    None => eq,
                    Some(before) => Expr::Or(Box::new(before), Box::new(eq)),
                });
            }
            let any = any.unwrap_or(Expr::Lit(Lit::Bool(false)));
            if *negated { Expr::Not(Box::new(any)) } else { any }
        }
        Sql::Between { expr: inner, negated, low, high } => {
            let within = Expr::And(
                Box::new(comparison(Cmp::Ge, lower(inner, scope)?, lower(low, scope)?)),
                Box::new(comparison(Cmp::Le, lower(inner, scope)?, lower(high, scope)?)),
            );
            if *negated { Expr::Not(Box::new(within)) } else { within }
        }
        Sql::BinaryOp { left, op, right } => {
            let l = boxed(left, scope)?;
            let r = |scope: &mut _| boxed(right, scope);
            match op {
                BinaryOperator::And => Expr::And(l, r(scope)?),
                BinaryOperator::Or => Expr::Or(l, r(scope)?),
                BinaryOperator::Eq => comparison(Cmp::Eq, *l, *r(scope)?),
                BinaryOperator::NotEq => comparison(Cmp::Ne, *l, *r(scope)?),
                BinaryOperator::Lt => comparison(Cmp::Lt, *l, *r(scope)?),
                BinaryOperator::LtEq => comparison(Cmp::Le, *l, *r(scope)?),
                BinaryOperator::Gt => comparison(Cmp::Gt, *l, *r(scope)?),
                BinaryOperator::GtEq => comparison(Cmp::Ge, *l, *r(scope)?),
                BinaryOperator::Plus => Expr::Arith(Op::Add, l, r(scope)?),
                BinaryOperator::Minus => Expr::Arith(Op::Sub, l, r(scope)?),
                BinaryOperator::Multiply => Expr::Arith(Op::Mul, l, r(scope)?),
                BinaryOperator::Divide => Expr::Arith(Op::Div, l, r(scope)?),
                BinaryOperator::Modulo => Expr::Arith(Op::Rem, l, r(scope)?),
                BinaryOperator::PGRegexMatch | BinaryOperator::PGRegexIMatch => {
                    Expr::Regex(l, regex(right, *op == BinaryOperator::PGRegexIMatch)?)
                }
                BinaryOperator::PGRegexNotMatch | BinaryOperator::PGRegexNotIMatch => {
                    Expr::Not(Box::new(Expr::Regex(l, regex(right, *op == BinaryOperator::PGRegexNotIMatch)?)))
                }
                other => return Err(at(e.span(), format!("operator `{other}` is not supported"))),
            }
        }
        Sql::Function(f) => {
            let name = function_name(f);
            let message = match name.as_str() {
                "window" | "count_window" | "event_window" => format!("`{name}(…)` belongs in GROUP BY"),
                _ => format!("unknown function `{name}`"),
            };
            return Err(at(f.name.span(), message));
        }
        Sql::Wildcard(t) => return Err(at(t.0.span, "`*` is not a value here")),
        other => return Err(at(other.span(), format!("`{other}` is not supported"))),
    })
}
