//! The pipeline file (SPEC §3): TOML → [`Pipeline`], with `${VAR}` interpolation, defaults, and
//! validation whose every error names file, line and key.
//!
//! How it works: the file is parsed with `toml::de::DeTable`, which keeps the byte span of every key and
//! value. A small reader (`reader.rs`) walks that tree section by section, refuses unknown keys, applies
//! `${VAR}` replacement to string values (after parsing, so quotes in a password cannot break the file),
//! converts and checks each value, and maps spans to 1-based lines. Errors carry the dotted key path
//! (`target.compression`, `tables."public.orders".partitions`, `cache.projections[1].score`). TOML
//! syntax errors only have an offset: their key is recovered from the nearest `[header]` and the text
//! before `=` on that line. The line of every key is kept in [`Pipeline::spans`] so later checks can point
//! at the file too.
//!
//! Interpolation: `${NAME}` (unset → error naming the variable), `${NAME:-default}` (unset or empty →
//! default), and `$${` for a literal `${`. See [`interpolate`].
//!
//! Secrets: `source.url` and `cache.url` are [`SecretUrl`]s; errors about them show the URL with the
//! password replaced by `***` (and nothing at all when the value is not even a URL).

mod build;
mod error;
pub mod interpolate;
mod model;
mod pattern;
mod reader;
mod template;
mod units;
mod url;

use std::path::Path;

pub use error::ConfigError;
pub use model::{
    Cache, CdcMode, Compression, DataErrorPolicy, DatePartitioning, ErrorPolicy, Format, Limits,
    Load, Metrics, Mode, Notify, NumericMode, Pipeline, Projection, ProjectionKind, Source, Spans,
    Sse, StateConfig, StateUrl, TableErrorPolicy, TableSettings, Tables, Target, TargetUrl,
};
pub use pattern::TablePattern;
pub use template::{TemplatePart, parse_template, template_columns};
pub use units::{parse_duration, parse_size};
pub use url::{RedisUrlInfo, SSLMODES, SecretUrl, redact_url};

/// Reads, parses, interpolates (from the process environment) and validates a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(file.clone(), format!("cannot read the pipeline file: {e}"))
            .with_hint("pass the path of a pipeline .toml file")
    })?;
    parse(&text, &file)
}

/// Parses and validates pipeline text, taking `${VAR}` values from the process environment. `file` is
/// only used in messages.
pub fn parse(text: &str, file: &str) -> Result<Pipeline, ConfigError> {
    parse_with_env(text, file, &|name| std::env::var(name).ok())
}

/// Like [`parse`], with `${VAR}` values looked up through `env` (tests need not touch the process
/// environment).
pub fn parse_with_env(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| syntax_error(text, file, &e))?;
    let mut ctx = reader::Ctx::new(file, text, env);
    build::build(&mut ctx, doc.get_ref())
}

fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let line = span
        .as_ref()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let key = span.as_ref().and_then(|s| reader::key_at(text, s.start));
    let msg = e.message().trim_end();
    let hint = if msg.contains("duplicate key") {
        Some("each key and each [section] may appear only once".to_string())
    } else if msg.contains("must be quoted") || msg.contains("literal string") {
        Some("strings are written in double quotes, e.g. url = \"file://./out\"".to_string())
    } else {
        None
    };
    let mut err = ConfigError::new(file, format!("TOML syntax error: {msg}"))
        .at_line(line)
        .with_hint_opt(hint);
    err.key = key;
    err
}
