//! The one error type of the configuration layer: where (file, line, key), what, and how to fix it.

use std::fmt;

/// A problem with a pipeline file. Always maps to exit code 2 (SPEC §2).
///
/// `Display` renders `"{file}:{line}: {key}: {message}"` (parts that are unknown are left out) and, when a
/// hint is present, a second line `"  hint: {hint}"`. No secret value (password, token) is ever part of
/// `message` or `hint`: URLs are shown redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The pipeline file as the user named it.
    pub file: String,
    /// 1-based line of the offending key or value, when it can be located.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `target.compression` or `tables."public.orders".partitions`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ConfigError {
    /// A new error about `file` with `message`, no line, key or hint yet.
    pub fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            line: None,
            key: None,
            message: message.into(),
            hint: None,
        }
    }

    /// Sets the line.
    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    /// Sets the dotted key path.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the hint when one is given.
    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        if hint.is_some() {
            self.hint = hint;
        }
        self
    }

    /// The process exit code for a configuration error (SPEC §2).
    pub fn exit_code(&self) -> i32 {
        2
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_all_parts() {
        let e = ConfigError::new("p.toml", "bad value")
            .at_line(Some(7))
            .with_key("target.compression")
            .with_hint("use zstd");
        assert_eq!(
            e.to_string(),
            "p.toml:7: target.compression: bad value\n  hint: use zstd"
        );
    }

    #[test]
    fn display_missing_parts() {
        let e = ConfigError::new("p.toml", "cannot read");
        assert_eq!(e.to_string(), "p.toml: cannot read");
        let e = ConfigError::new("p.toml", "missing").with_key("name");
        assert_eq!(e.to_string(), "p.toml: name: missing");
    }
}
