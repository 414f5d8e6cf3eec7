//! `where` filters: parsed (PostgreSQL dialect) as exactly ONE expression, so a filter can
//! never be more than a condition — no `;`, no comment that hides the rest of a statement, no
//! `)` that leaves the parentheses godwit puts around it — and what a filter uses (columns,
//! functions, types, collations, operators, subqueries), for the row-filter rules of CDC.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, Expr, FunctionArguments, Ident, ObjectName, Query, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// A `where` filter that is known to be one SQL expression. Only [`Filter::parse`] makes one,
/// so every statement that carries a filter carries a checked one.
#[derive(Clone)]
pub struct Filter {
    text: String,
    expr: Expr,
}

/// Why a text is not one expression. Messages quote the user's own text, never secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("contains `;`: a filter is one condition, not statements")]
    Semicolon,
    #[error("contains a comment (`--` or `/*`)")]
    Comment,
    #[error("uses the parameter `{0}`; a filter has no parameters")]
    Parameter(String),
    #[error("is not an SQL expression: {0}")]
    Syntax(String),
    #[error("is more than one expression: it ends after `{expr}`, leaving `{rest}`")]
    LeftOver { expr: String, rest: String },
}

impl FilterError {
    /// How to fix it.
    pub fn hint(&self) -> &'static str {
        match self {
            FilterError::Comment => "remove the comment; write only the condition",
            FilterError::Parameter(_) => "write the value itself, e.g. id > 100",
            _ => {
                "write one boolean condition, as after WHERE, e.g. where = \"created_at >= '2024-01-01' \
                 AND region = 'eu'\"; godwit puts it in parentheses as it is, so its own parentheses \
                 must balance"
            }
        }
    }
}

impl Filter {
    /// Parses `text` as exactly one expression and nothing else.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let dialect = PostgreSqlDialect {};
        let tokens = Tokenizer::new(&dialect, text)
            .tokenize()
            .map_err(|e| FilterError::Syntax(e.to_string()))?;
        for t in &tokens {
            match t {
                Token::SemiColon => return Err(FilterError::Semicolon),
                Token::Whitespace(
                    Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_),
                ) => return Err(FilterError::Comment),
                Token::Placeholder(p) => return Err(FilterError::Parameter(p.clone())),
                _ => {}
            }
        }
        let mut parser = Parser::new(&dialect)
            .try_with_sql(text)
            .map_err(|e| FilterError::Syntax(e.to_string()))?;
        let expr = parser
            .parse_expr()
            .map_err(|e| FilterError::Syntax(e.to_string()))?;
        let mut rest = Vec::new();
        loop {
            let t = parser.next_token();
            if t.token == Token::EOF {
                break;
            }
            rest.push(t.token.to_string());
        }
        if !rest.is_empty() {
            return Err(FilterError::LeftOver {
                expr: expr.to_string(),
                rest: rest.join(" "),
            });
        }
        Ok(Filter {
            text: text.trim().to_string(),
            expr,
        })
    }

    /// The filter as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What the expression uses, for the row-filter checks.
    pub fn uses(&self) -> Uses {
        let mut v = Uses::default();
        let _ = self.expr.visit(&mut v);
        v
    }

    /// The columns the filter names (as PostgreSQL folds them).
    pub fn columns(&self) -> BTreeSet<String> {
        self.uses().columns
    }
}

impl std::ops::Deref for Filter {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({:?})", self.text)
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Filter {}

/// A function as the filter names it: schema (when qualified) and name, folded as
/// PostgreSQL folds identifiers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FunctionName {
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for FunctionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}()", self.name),
            None => write!(f, "{}()", self.name),
        }
    }
}

/// What a filter uses. Syntax that PostgreSQL turns into a function call (`EXTRACT`,
/// `SUBSTRING`, `AT TIME ZONE`, …) is listed under that function's name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uses {
    pub columns: BTreeSet<String>,
    pub functions: BTreeSet<FunctionName>,
    /// Types named by casts and typed literals, as SQL text (`numeric(10,2)`, `"Mood"`).
    pub types: BTreeSet<String>,
    /// `column::type` casts (column, type as SQL text): their cast function counts too.
    pub column_casts: BTreeSet<(String, String)>,
    /// Collations named by COLLATE, as SQL text.
    pub collations: BTreeSet<String>,
    /// Operators written as `OPERATOR(…)` or unknown to the parser, by name.
    pub operators: BTreeSet<String>,
    /// What a publication row filter can never contain, one reason each.
    pub never: Vec<String>,
}

/// PostgreSQL's system columns; a row filter may not use them.
const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

/// An identifier as PostgreSQL folds it: unquoted to lower case, quoted as written.
fn fold(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

fn function_name(n: &ObjectName) -> FunctionName {
    let parts: Vec<String> =
        n.0.iter()
            .map(|p| match p.as_ident() {
                Some(i) => fold(i),
                None => p.to_string(),
            })
            .collect();
    match parts.as_slice() {
        [name] => FunctionName {
            schema: None,
            name: name.clone(),
        },
        [.., schema, name] => FunctionName {
            schema: Some(schema.clone()),
            name: name.clone(),
        },
        [] => FunctionName {
            schema: None,
            name: String::new(),
        },
    }
}

impl Uses {
    fn function(&mut self, name: &str) {
        self.functions.insert(FunctionName {
            schema: None,
            name: name.into(),
        });
    }

    fn column(&mut self, name: String) {
        if SYSTEM_COLUMNS.contains(&name.as_str()) {
            let msg = format!("it uses the system column {name}");
            if !self.never.contains(&msg) {
                self.never.push(msg);
            }
        }
        self.columns.insert(name);
    }
}

impl Visitor for Uses {
    type Break = ();

    fn pre_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.never.push("it contains a subquery".into());
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Identifier(i) => self.column(fold(i)),
            Expr::CompoundIdentifier(parts) => {
                if let Some(last) = parts.last() {
                    self.column(fold(last));
                }
            }
            Expr::Function(f) => {
                let name = function_name(&f.name);
                if f.over.is_some() {
                    self.never
                        .push(format!("{name} is used as a window function (OVER)"));
                }
                if matches!(f.args, FunctionArguments::None) {
                    // CURRENT_TIMESTAMP, CURRENT_USER, …: values of the session, never immutable.
                    self.never.push(format!(
                        "{} is a value of the session, not an immutable function",
                        f.name.to_string().to_uppercase()
                    ));
                } else {
                    self.functions.insert(name);
                }
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                ..
            } => {
                let ty = data_type.to_string();
                if let (CastKind::DoubleColon | CastKind::Cast, Expr::Identifier(i)) =
                    (kind, expr.as_ref())
                {
                    self.column_casts.insert((fold(i), ty.clone()));
                }
                self.types.insert(ty);
            }
            Expr::TypedString(t) => {
                self.types.insert(t.data_type.to_string());
            }
            Expr::Collate { collation, .. } => {
                self.collations.insert(collation.to_string());
            }
            Expr::BinaryOp { op, .. } => {
                if let BinaryOperator::PGCustomBinaryOperator(parts) = op {
                    self.operators
                        .insert(parts.last().cloned().unwrap_or_default());
                } else if let BinaryOperator::Custom(o) = op {
                    self.operators.insert(o.clone());
                }
            }
            Expr::Extract { .. } => self.function("extract"),
            Expr::Substring { .. } => self.function("substring"),
            Expr::Position { .. } => self.function("position"),
            Expr::Overlay { .. } => self.function("overlay"),
            Expr::Ceil { .. } => self.function("ceil"),
            Expr::Floor { .. } => self.function("floor"),
            Expr::AtTimeZone { .. } => self.function("timezone"),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> FilterError {
        Filter::parse(text).expect_err(text)
    }

    #[test]
    fn one_expression_is_accepted_as_written() {
        for ok in [
            "id < 100 OR id > 900",
            "id % 100 <> 0 OR pg_sleep(0.05) IS NOT NULL",
            "created_at >= '2024-01-01' AND region = 'eu'",
            "keep",
            "note = 'a;b -- not a comment /* nor this */'",
            "x = $$ ) OR (true; $$",
            "\"Odd\"\")Name\" = 1",
            "x = E'it\\'s'",
            "id IN (SELECT id FROM other WHERE v > 1)",
            "data ? 'key' AND data->>'k' = 'v'",
            "CURRENT_DATE > d",
        ] {
            let f = Filter::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(f.as_str(), ok);
        }
    }

    #[test]
    fn statements_comments_and_escapes_are_refused() {
        assert_eq!(
            err("true) LIMIT 0; COMMIT; CREATE TABLE pwned (x int); SELECT 1 WHERE (true"),
            FilterError::Semicolon
        );
        assert_eq!(err("id > 1; DROP TABLE t"), FilterError::Semicolon);
        assert_eq!(err("id > 1 -- )"), FilterError::Comment);
        assert_eq!(err("id > 1 /* ) OR (true */"), FilterError::Comment);
        assert_eq!(err("id > $1"), FilterError::Parameter("$1".into()));
        assert_eq!(
            err("1=1) OR (true"),
            FilterError::LeftOver {
                expr: "1 = 1".into(),
                rest: ") OR ( true".into()
            }
        );
        assert!(matches!(err("id > 1 id"), FilterError::LeftOver { .. }));
        assert!(matches!(err(""), FilterError::Syntax(_)));
        assert!(matches!(err("id > "), FilterError::Syntax(_)));
        assert!(matches!(err("x = 'open"), FilterError::Syntax(_)));
        // With standard_conforming_strings (PostgreSQL's default) a backslash does not escape
        // a quote: this is the string 'a\' followed by an unbalanced rest.
        assert!(Filter::parse("x = 'a\\' ) OR (true'").is_err());
        assert!(Filter::parse("SELECT 1").is_err());
    }

    #[test]
    fn what_a_filter_uses() {
        let f = Filter::parse(
            "\"Region\" = 'eu' AND t.amount::numeric(10,2) > 1 AND lower(name) = 'x' \
             AND pg_catalog.abs(v) < 3 AND random() < 2 AND EXTRACT(year FROM at) > 2020 \
             AND c COLLATE \"de_DE\" > 'a' AND x OPERATOR(public.<~>) 1 AND y ### 2 AND mood 'happy' = m",
        )
        .unwrap();
        let u = f.uses();
        let cols: Vec<_> = u.columns.iter().map(String::as_str).collect();
        assert_eq!(
            cols,
            ["Region", "amount", "at", "c", "m", "name", "v", "x", "y"].to_vec()
        );
        let funcs: Vec<String> = u.functions.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            funcs,
            ["extract()", "lower()", "random()", "pg_catalog.abs()"].to_vec()
        );
        assert!(u.types.contains("NUMERIC(10,2)"), "{:?}", u.types);
        assert!(u.types.iter().any(|t| t == "mood"), "{:?}", u.types);
        assert!(u.collations.contains("\"de_DE\""), "{:?}", u.collations);
        assert!(u.operators.contains("<~>"), "{:?}", u.operators);
        assert!(u.operators.contains("###"), "{:?}", u.operators);
        assert!(u.never.is_empty(), "{:?}", u.never);
        let c = Filter::parse("id::text = '1'").unwrap().uses();
        assert!(c.column_casts.contains(&("id".into(), "TEXT".into())));
    }

    #[test]
    fn columns_are_folded_as_postgresql_does() {
        let cols =
            |t: &str| -> Vec<String> { Filter::parse(t).unwrap().columns().into_iter().collect() };
        assert_eq!(cols("Region = 'eu'"), ["region"]);
        assert_eq!(cols("note = 'region'"), ["note"]);
        assert_eq!(cols("\"Region\" = 'eu'"), ["Region"]);
        assert_eq!(cols("regions > 1 AND o.total > 2"), ["regions", "total"]);
    }

    #[test]
    fn what_a_row_filter_can_never_use() {
        let never = |t: &str| Filter::parse(t).unwrap().uses().never;
        assert!(never("id IN (SELECT 1)")[0].contains("subquery"));
        assert!(never("EXISTS (SELECT 1)")[0].contains("subquery"));
        assert!(never("rank() OVER () = 1")[0].contains("window"));
        assert!(never("ctid > '(0,1)'")[0].contains("system column ctid"));
        assert!(never("at < CURRENT_TIMESTAMP")[0].contains("CURRENT_TIMESTAMP"));
        assert!(never("current_user = 'x'")[0].contains("CURRENT_USER"));
        assert!(never("id > 1 AND region = 'eu'").is_empty());
    }
}
