//! `schema.table` glob patterns for table selection, matched exactly and case-sensitively against
//! catalog names.
//!
//! Syntax:
//! - The first unescaped `.` outside double quotes splits the schema part from the table part; later
//!   dots belong to the table part.
//! - `*` and DMS-style `%` match any run of characters (also none); `?` matches exactly one character.
//! - `\.`, `\*`, `\?`, `\%`, `\\` and `\"` are literal characters; any other escape is an error.
//! - A double-quoted run is literal: `"My Schema"."Order.Items"` matches schema `My Schema` and table
//!   `Order.Items`. Inside quotes, `""` is one literal `"` (as in SQL).
//! - Everything else (spaces, unicode, `_`, mixed case) is literal and compared character by character.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Tok {
    Lit(char),
    /// `*` or `%`.
    Any,
    /// `?`.
    One,
}

/// A parsed `schema.table` pattern. Keeps the text as written for messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TablePattern {
    raw: String,
    schema: Vec<Tok>,
    table: Vec<Tok>,
}

impl TablePattern {
    /// Parses a pattern; the error says what is wrong (and how to write it).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut schema = Vec::new();
        let mut table = Vec::new();
        let mut in_table = false;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            let part = if in_table { &mut table } else { &mut schema };
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('.' | '*' | '?' | '%' | '\\' | '"')) => part.push(Tok::Lit(e)),
                    Some(e) => {
                        return Err(format!(
                            "table pattern \"{s}\": unknown escape `\\{e}` (only \\. \\* \\? \\% \\\\ \\\" are escapes)"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "table pattern \"{s}\" ends with a lone `\\` (write `\\\\` for a backslash)"
                        ));
                    }
                },
                '"' => loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push(Tok::Lit('"'));
                        }
                        Some('"') => break,
                        Some(q) => part.push(Tok::Lit(q)),
                        None => {
                            return Err(format!("table pattern \"{s}\" has an unclosed `\"`"));
                        }
                    }
                },
                '.' if !in_table => in_table = true,
                '*' | '%' => part.push(Tok::Any),
                '?' => part.push(Tok::One),
                c => part.push(Tok::Lit(c)),
            }
        }
        if !in_table {
            return Err(format!(
                "table pattern \"{s}\" has no schema: write schema.table, e.g. \"public.{s}\""
            ));
        }
        if schema.is_empty() {
            return Err(format!("table pattern \"{s}\" has an empty schema part"));
        }
        if table.is_empty() {
            return Err(format!(
                "table pattern \"{s}\" has an empty table part (write \"{s}*\" for every table)"
            ));
        }
        Ok(TablePattern {
            raw: s.to_string(),
            schema,
            table,
        })
    }

    /// Whether `schema`.`table` (catalog names, unquoted) is matched. Exact and case-sensitive.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob(&self.schema, schema) && glob(&self.table, table)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the pattern has no wildcard, i.e. names exactly one table.
    pub fn is_exact(&self) -> bool {
        self.schema
            .iter()
            .chain(self.table.iter())
            .all(|t| matches!(t, Tok::Lit(_)))
    }

    /// For an exact pattern, the schema and table names it stands for (escapes and quotes removed).
    pub fn exact_name(&self) -> Option<(String, String)> {
        if !self.is_exact() {
            return None;
        }
        let lit = |toks: &[Tok]| {
            toks.iter()
                .map(|t| match t {
                    Tok::Lit(c) => *c,
                    _ => unreachable!("checked by is_exact"),
                })
                .collect::<String>()
        };
        Some((lit(&self.schema), lit(&self.table)))
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Glob match over chars with single-star backtracking (linear in practice, no recursion).
fn glob(pat: &[Tok], text: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(Tok::One) => {
                p += 1;
                t += 1;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            Some(Tok::Any) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|t| *t == Tok::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> TablePattern {
        TablePattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn exact_names() {
        let p = pat("public.orders");
        assert!(p.matches("public", "orders"));
        assert!(!p.matches("public", "orders2"));
        assert!(!p.matches("public", "order"));
        assert!(!p.matches("Public", "orders"));
        assert!(!p.matches("public", "Orders"));
        assert!(!p.matches("publi", "corders"));
        assert!(p.is_exact());
        assert_eq!(p.exact_name(), Some(("public".into(), "orders".into())));
        assert_eq!(p.as_str(), "public.orders");
        assert_eq!(p.to_string(), "public.orders");
    }

    #[test]
    fn stars_and_percent() {
        let p = pat("public.*");
        assert!(p.matches("public", "orders"));
        assert!(p.matches("public", "x"));
        assert!(!p.matches("other", "orders"));
        assert!(!p.is_exact());
        assert_eq!(p.exact_name(), None);
        let p = pat("public.audit_*");
        assert!(p.matches("public", "audit_log"));
        assert!(p.matches("public", "audit_"));
        assert!(!p.matches("public", "audit"));
        assert!(!p.matches("public", "xaudit_log"));
        let p = pat("%.%_log");
        assert!(p.matches("app", "audit_log"));
        assert!(p.matches("x", "_log"));
        assert!(!p.matches("x", "log"));
        let p = pat("*.*");
        assert!(p.matches("a", "b"));
        assert!(p.matches("", ""));
        let p = pat("s.a*b*c");
        assert!(p.matches("s", "abc"));
        assert!(p.matches("s", "aXXbYYc"));
        assert!(p.matches("s", "abcbc"));
        assert!(!p.matches("s", "abcd"));
        assert!(!p.matches("s", "acb"));
    }

    #[test]
    fn question_mark_is_one_char() {
        let p = pat("s.t?");
        assert!(p.matches("s", "t1"));
        assert!(p.matches("s", "tä"));
        assert!(!p.matches("s", "t"));
        assert!(!p.matches("s", "t12"));
    }

    #[test]
    fn underscore_is_literal() {
        let p = pat("public.a_b");
        assert!(p.matches("public", "a_b"));
        assert!(!p.matches("public", "axb"));
    }

    #[test]
    fn dots() {
        // First unescaped dot splits; later dots are part of the table name.
        let p = pat("public.a.b");
        assert!(p.matches("public", "a.b"));
        assert!(!p.matches("public.a", "b"));
        // Escaped dot in the schema.
        let p = pat(r"my\.schema.t");
        assert!(p.matches("my.schema", "t"));
        assert!(!p.matches("my", "schema.t"));
        // Escaped dot in the table.
        let p = pat(r"s.order\.items");
        assert!(p.matches("s", "order.items"));
        assert!(p.is_exact());
    }

    #[test]
    fn quoted_parts() {
        let p = pat(r#""My Schema"."Order.Items""#);
        assert!(p.matches("My Schema", "Order.Items"));
        assert!(!p.matches("my schema", "Order.Items"));
        assert!(!p.matches("My Schema", "order.items"));
        assert_eq!(
            p.exact_name(),
            Some(("My Schema".into(), "Order.Items".into()))
        );
        // Wildcards inside quotes are literal; outside they are wildcards.
        let p = pat(r#""a*".*"#);
        assert!(p.matches("a*", "anything"));
        assert!(!p.matches("ab", "anything"));
        let p = pat(r#"public."we""ird""#);
        assert!(p.matches("public", "we\"ird"));
    }

    #[test]
    fn escapes() {
        let p = pat(r"s.\*\?\%\\");
        assert!(p.matches("s", r"*?%\"));
        assert!(!p.matches("s", r"a?%\"));
        assert!(p.is_exact());
    }

    #[test]
    fn spaces_unicode_case() {
        let p = pat("Sales Data.Ünïcödé tàble");
        assert!(p.matches("Sales Data", "Ünïcödé tàble"));
        assert!(!p.matches("sales data", "ünïcödé tàble"));
        let p = pat("日本.テーブル*");
        assert!(p.matches("日本", "テーブル"));
        assert!(p.matches("日本", "テーブル2"));
        assert!(!p.matches("日本", "テー"));
        let p = pat("public. leading");
        assert!(p.matches("public", " leading"));
        assert!(!p.matches("public", "leading"));
        let p = pat("MixedCase.Table?");
        assert!(p.matches("MixedCase", "TableX"));
        assert!(!p.matches("mixedcase", "tablex"));
    }

    #[test]
    fn errors() {
        assert!(
            TablePattern::parse("orders")
                .unwrap_err()
                .contains("schema.table")
        );
        assert!(TablePattern::parse(r"orders\.x").is_err());
        assert!(
            TablePattern::parse(".orders")
                .unwrap_err()
                .contains("empty schema")
        );
        assert!(
            TablePattern::parse("public.")
                .unwrap_err()
                .contains("empty table")
        );
        assert!(
            TablePattern::parse(r#""public.orders"#)
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            TablePattern::parse(r"public.a\b")
                .unwrap_err()
                .contains("unknown escape")
        );
        assert!(
            TablePattern::parse("public.a\\")
                .unwrap_err()
                .contains("lone")
        );
        assert!(
            TablePattern::parse(r#""public.orders""#)
                .unwrap_err()
                .contains("no schema")
        );
        assert!(TablePattern::parse("").is_err());
    }

    #[test]
    fn pathological_backtracking_is_fine() {
        let p = pat("s.*a*a*a*a*a*a*b");
        let long = "a".repeat(2000);
        assert!(!p.matches("s", &long));
    }
}
