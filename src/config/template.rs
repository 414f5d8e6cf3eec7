//! Redis key templates: `user:{id}`, with `{{` and `}}` as literal braces (for Redis Cluster hash tags:
//! `user:{{{id}}}` renders as `user:{42}`).

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text copied as it is (escaped braces already unescaped).
    Literal(String),
    /// `{column}`: the column's text value.
    Column(String),
}

/// Parses a template; the error says what is wrong with the braces.
pub fn parse_template(s: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') => {
                            return Err(format!(
                                "template \"{s}\": `{{` inside a placeholder (write `{{{{` for a literal brace)"
                            ));
                        }
                        Some(ch) => name.push(ch),
                        None => {
                            return Err(format!(
                                "template \"{s}\": unclosed `{{` (write `{{{{` for a literal brace)"
                            ));
                        }
                    }
                }
                if name.trim().is_empty() {
                    return Err(format!(
                        "template \"{s}\": empty placeholder `{{}}`; write a column name, e.g. {{id}}"
                    ));
                }
                if !lit.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut lit)));
                }
                parts.push(TemplatePart::Column(name));
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '}' => {
                return Err(format!(
                    "template \"{s}\": unmatched `}}` (write `}}}}` for a literal brace)"
                ));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(TemplatePart::Literal(lit));
    }
    Ok(parts)
}

/// The column names a template refers to, in order.
pub fn template_columns(parts: &[TemplatePart]) -> impl Iterator<Item = &str> {
    parts.iter().filter_map(|p| match p {
        TemplatePart::Column(c) => Some(c.as_str()),
        TemplatePart::Literal(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::TemplatePart::{Column, Literal};
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            parse_template("user:{id}").unwrap(),
            vec![Literal("user:".into()), Column("id".into())]
        );
        assert_eq!(
            parse_template("leaderboard").unwrap(),
            vec![Literal("leaderboard".into())]
        );
        assert_eq!(
            parse_template("user:{{{id}}}:x").unwrap(),
            vec![
                Literal("user:{".into()),
                Column("id".into()),
                Literal("}:x".into())
            ]
        );
        assert_eq!(
            parse_template("{{literal}}").unwrap(),
            vec![Literal("{literal}".into())]
        );
        assert_eq!(
            parse_template("{a}{b}").unwrap(),
            vec![Column("a".into()), Column("b".into())]
        );
        assert_eq!(
            parse_template("{My Col}").unwrap(),
            vec![Column("My Col".into())]
        );
        let parts = parse_template("o:{tenant}:{id}").unwrap();
        assert_eq!(
            template_columns(&parts).collect::<Vec<_>>(),
            ["tenant", "id"]
        );
    }

    #[test]
    fn errors() {
        assert!(parse_template("user:{id").unwrap_err().contains("unclosed"));
        assert!(
            parse_template("user:id}")
                .unwrap_err()
                .contains("unmatched")
        );
        assert!(
            parse_template("user:{}")
                .unwrap_err()
                .contains("empty placeholder")
        );
        assert!(
            parse_template("user:{a{b}}")
                .unwrap_err()
                .contains("inside")
        );
        assert!(parse_template("}").is_err());
    }
}
