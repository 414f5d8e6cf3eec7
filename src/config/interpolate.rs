//! `${VAR}` / `${VAR:-default}` replacement inside string values of a pipeline file.
//!
//! Rules:
//! - `${NAME}` is replaced by the variable's value; an unset variable is an error (an empty one is `""`).
//! - `${NAME:-default}` uses `default` when the variable is unset **or empty** (POSIX shell semantics). The
//!   default is literal text up to the first `}`; it is not interpolated again.
//! - `$${` is an escape for a literal `${` (so `"$${HOME}"` stays `${HOME}`). Any other `$` is literal.
//! - `NAME` is `[A-Za-z_][A-Za-z0-9_]*`.
//! - Replaced text is never scanned again, so a value containing `${` or quotes cannot inject anything.

/// Why a string could not be interpolated. Neither variant carries the value of anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolateError {
    /// `${NAME}` where `NAME` is not set.
    Missing { var: String },
    /// A `${` without a closing `}` or with an invalid name.
    Malformed(String),
}

/// Replaces every `${…}` in `s` using `env`.
pub fn interpolate(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let close = after.find('}').ok_or_else(|| {
                InterpolateError::Malformed(
                    "`${` without a closing `}` (write `$${` for a literal `${`)".to_string(),
                )
            })?;
            let inner = &after[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                let shown: String = if name.len() <= 64 && !name.contains(['@', ':', '/']) {
                    format!(" `{name}`")
                } else {
                    String::new()
                };
                return Err(InterpolateError::Malformed(format!(
                    "invalid variable name{shown} in `${{…}}`: use letters, digits and `_`, \
                     as in ${{NAME}} or ${{NAME:-default}}"
                )));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(InterpolateError::Missing {
                        var: name.to_string(),
                    });
                }
            }
            rest = &after[close + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some(String::new()),
            "QUOTE" => Some("pa\"ss'${X}".into()),
            _ => None,
        }
    }

    fn run(s: &str) -> Result<String, InterpolateError> {
        interpolate(s, &env)
    }

    #[test]
    fn replaces() {
        assert_eq!(
            run("postgres://${HOST}/db").unwrap(),
            "postgres://db.example/db"
        );
        assert_eq!(run("${HOST}${HOST}").unwrap(), "db.exampledb.example");
        assert_eq!(run("no vars").unwrap(), "no vars");
        assert_eq!(run("cost $5 and $").unwrap(), "cost $5 and $");
        assert_eq!(run("${EMPTY}").unwrap(), "");
    }

    #[test]
    fn defaults() {
        assert_eq!(run("${NOPE:-/tmp}/godwit").unwrap(), "/tmp/godwit");
        assert_eq!(run("${EMPTY:-x}").unwrap(), "x");
        assert_eq!(run("${HOST:-x}").unwrap(), "db.example");
        assert_eq!(run("${NOPE:-}").unwrap(), "");
        assert_eq!(run("${NOPE:-a:-b}").unwrap(), "a:-b");
    }

    #[test]
    fn escapes_and_no_rescan() {
        assert_eq!(run("$${HOST}").unwrap(), "${HOST}");
        assert_eq!(run("a$${").unwrap(), "a${");
        assert_eq!(run("${QUOTE}").unwrap(), "pa\"ss'${X}");
    }

    #[test]
    fn errors() {
        assert_eq!(
            run("x${NOPE}y"),
            Err(InterpolateError::Missing { var: "NOPE".into() })
        );
        assert!(matches!(run("${HOST"), Err(InterpolateError::Malformed(_))));
        assert!(matches!(run("${}"), Err(InterpolateError::Malformed(_))));
        assert!(matches!(run("${1A}"), Err(InterpolateError::Malformed(_))));
        assert!(matches!(run("${A B}"), Err(InterpolateError::Malformed(_))));
    }
}
