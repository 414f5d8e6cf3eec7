//! Walking the span-preserving TOML tree (`toml::de::DeTable`): typed getters that interpolate
//! `${VAR}`, and errors that carry file, line and dotted key. Also the line/key lookup for TOML syntax
//! errors, which come with a byte offset only.

use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::ConfigError;
use super::interpolate::{InterpolateError, interpolate};
use super::model::Spans;
use super::units::{DURATION_HINT, SIZE_HINT, parse_duration, parse_size};

pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

/// Everything a getter needs: the file name (for errors), the line index, the environment and the
/// span map being filled.
pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    line_starts: Vec<usize>,
    env: &'a dyn Fn(&str) -> Option<String>,
    pub spans: Spans,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str, text: &str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            file,
            line_starts,
            env,
            spans: Spans::default(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// An error at `line` about `key`.
    pub fn err(&self, line: Option<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let e = ConfigError::new(self.file, message).at_line(line);
        if key.is_empty() { e } else { e.with_key(key) }
    }

    /// Interpolates `${VAR}` in `s`, the string value of `key` at `line`.
    pub fn interpolate(&self, s: &str, line: usize, key: &str) -> Result<String, ConfigError> {
        interpolate(s, self.env).map_err(|e| match e {
            InterpolateError::Missing { var } => self
                .err(
                    Some(line),
                    key,
                    format!("environment variable `{var}` is not set"),
                )
                .with_hint(format!(
                    "export {var}=… before running godwit, or give a default in the file: ${{{var}:-default}}"
                )),
            InterpolateError::Malformed(m) => self.err(Some(line), key, m),
        })
    }

    /// The environment lookup (for defaults such as `${TMPDIR:-/tmp}`).
    pub fn env(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }
}

/// One key segment as written in a dotted path: bare when TOML allows it, quoted otherwise.
pub(crate) fn key_segment(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        let mut s = String::from("\"");
        for c in k.chars() {
            match c {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                c => s.push(c),
            }
        }
        s.push('"');
        s
    }
}

/// `parent.key` with `key` quoted when needed.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key_segment(key)
    } else {
        format!("{parent}.{}", key_segment(key))
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Edit distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "did you mean `x`?" when a known key is close, else the list of known keys.
pub(crate) fn suggest(unknown: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (distance(&unknown.to_ascii_lowercase(), k), *k))
        .min();
    match best {
        Some((d, k)) if d <= 2.max(unknown.len() / 3) && d < unknown.len() => {
            format!("did you mean `{k}`?")
        }
        _ => format!("known keys here: {}", known.join(", ")),
    }
}

/// A TOML table being read: its dotted path, header line and entries in file order.
pub(crate) struct Section<'t, 'i> {
    pub path: String,
    pub line: Option<usize>,
    entries: Vec<(&'t str, usize, &'t Val<'i>)>,
}

impl<'t, 'i> Section<'t, 'i> {
    /// Reads the entries of `table` (recording their lines in `ctx.spans`).
    pub fn new(
        ctx: &mut Ctx<'_>,
        path: String,
        line: Option<usize>,
        table: &'t DeTable<'i>,
    ) -> Self {
        let mut entries: Vec<(usize, &'t str, &'t Val<'i>)> = table
            .iter()
            .map(|(k, v)| (k.span().start, k.get_ref().as_ref(), v))
            .collect();
        entries.sort_by_key(|(start, _, _)| *start);
        let entries: Vec<(&'t str, usize, &'t Val<'i>)> = entries
            .into_iter()
            .map(|(start, k, v)| (k, ctx.line_of(start), v))
            .collect();
        for (k, l, _) in &entries {
            ctx.spans.insert(join(&path, k), *l);
        }
        Section {
            path,
            line,
            entries,
        }
    }

    /// Refuses keys not in `allowed`, naming the first in file order.
    pub fn check_keys(&self, ctx: &Ctx<'_>, allowed: &[&str]) -> Result<(), ConfigError> {
        for (k, line, v) in &self.entries {
            if !allowed.contains(k) {
                let key = join(&self.path, k);
                let message = match (self.path.is_empty(), v.get_ref()) {
                    (true, DeValue::Table(_)) => format!("unknown section [{}]", key_segment(k)),
                    (true, _) => format!("unknown key `{k}`"),
                    (false, _) => format!("unknown key `{k}` in [{}]", self.path),
                };
                return Err(ctx
                    .err(Some(*line), &key, message)
                    .with_hint(suggest(k, allowed)));
            }
        }
        Ok(())
    }

    /// The entry `key`, if written.
    pub fn get(&self, key: &str) -> Option<Item<'t, 'i>> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(k, line, v)| Item {
                path: join(&self.path, k),
                line: *line,
                val: v,
            })
    }

    /// Every entry in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&'t str, Item<'t, 'i>)> + '_ {
        self.entries.iter().map(|(k, line, v)| {
            (
                *k,
                Item {
                    path: join(&self.path, k),
                    line: *line,
                    val: v,
                },
            )
        })
    }

    /// The error for a required key that is missing (located at the section header).
    pub fn missing(&self, ctx: &Ctx<'_>, key: &str, what: &str) -> ConfigError {
        let message = if self.path.is_empty() {
            format!("missing required key `{key}` ({what})")
        } else {
            format!("[{}] needs `{key}` ({what})", self.path)
        };
        ctx.err(self.line, &join(&self.path, key), message)
    }

    /// The sub-table `key` as a section, `None` when not written; an error when it is not a table.
    pub fn section(
        &self,
        ctx: &mut Ctx<'_>,
        key: &str,
    ) -> Result<Option<Section<'t, 'i>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(item) => {
                let table = item.table(ctx)?;
                Ok(Some(Section::new(
                    ctx,
                    item.path.clone(),
                    Some(item.line),
                    table,
                )))
            }
        }
    }
}

/// One value being read, with its dotted path and line.
pub(crate) struct Item<'t, 'i> {
    pub path: String,
    pub line: usize,
    pub val: &'t Val<'i>,
}

impl<'t, 'i> Item<'t, 'i> {
    /// An error about this value.
    pub fn err(&self, ctx: &Ctx<'_>, message: impl Into<String>) -> ConfigError {
        ctx.err(Some(self.line), &self.path, message)
    }

    fn wrong_type(&self, ctx: &Ctx<'_>, expected: &str) -> ConfigError {
        self.err(
            ctx,
            format!(
                "expected {expected}, found {}",
                type_name(self.val.get_ref())
            ),
        )
    }

    /// The raw string (not interpolated).
    pub fn raw_str(&self, ctx: &Ctx<'_>) -> Result<&'t str, ConfigError> {
        match self.val.get_ref() {
            DeValue::String(s) => Ok(s.as_ref()),
            _ => Err(self.wrong_type(ctx, "a string")),
        }
    }

    /// The string with `${VAR}` replaced.
    pub fn string(&self, ctx: &Ctx<'_>) -> Result<String, ConfigError> {
        let raw = self.raw_str(ctx)?;
        ctx.interpolate(raw, self.line, &self.path)
    }

    /// The string; `None` when it is empty after interpolation (the file's way of saying "not set").
    pub fn opt_string(&self, ctx: &Ctx<'_>) -> Result<Option<String>, ConfigError> {
        let s = self.string(ctx)?;
        Ok(if s.is_empty() { None } else { Some(s) })
    }

    pub fn bool(&self, ctx: &Ctx<'_>) -> Result<bool, ConfigError> {
        match self.val.get_ref() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self
                .wrong_type(ctx, "true or false")
                .with_hint("write it without quotes: true or false")),
        }
    }

    pub fn int(&self, ctx: &Ctx<'_>) -> Result<i64, ConfigError> {
        match self.val.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| self.err(ctx, "the number is too large")),
            DeValue::String(_) => Err(self
                .wrong_type(ctx, "an integer")
                .with_hint("write the number without quotes")),
            _ => Err(self.wrong_type(ctx, "an integer")),
        }
    }

    /// An integer in `lo..=hi`.
    pub fn int_in(&self, ctx: &Ctx<'_>, lo: i64, hi: i64) -> Result<i64, ConfigError> {
        let n = self.int(ctx)?;
        if n < lo || n > hi {
            return Err(self.err(ctx, format!("must be from {lo} to {hi}, got {n}")));
        }
        Ok(n)
    }

    /// A size (string with unit, or integer bytes) of at least `min` bytes.
    pub fn size(&self, ctx: &Ctx<'_>, min: u64, min_text: &str) -> Result<u64, ConfigError> {
        let n = match self.val.get_ref() {
            DeValue::Integer(_) => {
                let n = self.int(ctx)?;
                u64::try_from(n).map_err(|_| {
                    self.err(ctx, format!("a size cannot be negative, got {n}"))
                        .with_hint(SIZE_HINT)
                })?
            }
            DeValue::String(_) => {
                let s = self.string(ctx)?;
                parse_size(&s).map_err(|m| self.err(ctx, m).with_hint(SIZE_HINT))?
            }
            _ => {
                return Err(self
                    .wrong_type(ctx, "a size like \"16MiB\"")
                    .with_hint(SIZE_HINT));
            }
        };
        if n < min {
            let msg = if min == 1 {
                "must be greater than zero".to_string()
            } else {
                format!("must be at least {min_text}, got {n} bytes")
            };
            return Err(self.err(ctx, msg));
        }
        Ok(n)
    }

    /// A duration string greater than zero.
    pub fn duration(&self, ctx: &Ctx<'_>) -> Result<Duration, ConfigError> {
        match self.val.get_ref() {
            DeValue::String(_) => {
                let s = self.string(ctx)?;
                let d =
                    parse_duration(&s).map_err(|m| self.err(ctx, m).with_hint(DURATION_HINT))?;
                if d.is_zero() {
                    return Err(self
                        .err(ctx, "must be longer than zero")
                        .with_hint(DURATION_HINT));
                }
                Ok(d)
            }
            _ => Err(self
                .wrong_type(ctx, "a duration string like \"60s\"")
                .with_hint(DURATION_HINT)),
        }
    }

    /// One of an enum's spellings.
    pub fn one_of<E>(
        &self,
        ctx: &Ctx<'_>,
        parse: fn(&str) -> Option<E>,
        values: &[&str],
    ) -> Result<E, ConfigError> {
        let s = self.string(ctx)?;
        parse(&s).ok_or_else(|| {
            let list = values
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let lower = s.to_ascii_lowercase();
            let hint = match values.iter().find(|v| **v == lower) {
                Some(v) => format!("values are lowercase: write \"{v}\""),
                None => format!("use one of: {list}"),
            };
            self.err(ctx, format!("\"{s}\" is not a valid value"))
                .with_hint(hint)
        })
    }

    /// The elements of an array, each as an item (`path[i]`) with its own line.
    pub fn array(&self, ctx: &mut Ctx<'_>) -> Result<Vec<Item<'t, 'i>>, ConfigError> {
        match self.val.get_ref() {
            DeValue::Array(a) => Ok(a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let path = format!("{}[{i}]", self.path);
                    let line = ctx.line_of(v.span().start);
                    ctx.spans.insert(path.clone(), line);
                    Item { path, line, val: v }
                })
                .collect()),
            _ => Err(self.wrong_type(ctx, "an array")),
        }
    }

    /// An array of strings (interpolated), with each element's item for later errors.
    pub fn strings(&self, ctx: &mut Ctx<'_>) -> Result<Vec<(String, Item<'t, 'i>)>, ConfigError> {
        let items = self.array(ctx)?;
        items
            .into_iter()
            .map(|it| Ok((it.string(ctx)?, it)))
            .collect()
    }

    pub fn table(&self, ctx: &Ctx<'_>) -> Result<&'t DeTable<'i>, ConfigError> {
        match self.val.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.wrong_type(ctx, &format!("a table ([{}])", self.path))),
        }
    }

    pub fn is_table(&self) -> bool {
        matches!(self.val.get_ref(), DeValue::Table(_))
    }
}

/// Best-effort dotted key for a TOML syntax error at byte `offset`: the last `[header]` above it plus
/// the key written on its line (text before `=`), `[[array]]` headers counted into `[i]`.
pub(crate) fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let current = &text[line_start..line_end];
    let mut header = String::new();
    let mut aot_counts: Vec<(String, usize)> = Vec::new();
    for line in text[..line_start].lines() {
        if let Some(h) = parse_header(line) {
            header = h;
            if let Some(name) = header.strip_suffix("[]") {
                let name = name.to_string();
                let n = match aot_counts.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, c)) => {
                        *c += 1;
                        *c
                    }
                    None => {
                        aot_counts.push((name.clone(), 0));
                        0
                    }
                };
                header = format!("{name}[{n}]");
            }
        }
    }
    if let Some(h) = parse_header(current) {
        return Some(h.trim_end_matches("[]").to_string());
    }
    let key = current
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('#'));
    match (header.is_empty(), key) {
        (true, None) => None,
        (true, Some(k)) => Some(k.to_string()),
        (false, None) => Some(header),
        (false, Some(k)) => Some(format!("{header}.{k}")),
    }
}

/// `[a.b]` → `a.b`, `[[a.b]]` → `a.b[]` (dots and quotes kept as written, spaces around dots removed).
fn parse_header(line: &str) -> Option<String> {
    let t = line.trim();
    let (inner, aot) = if let Some(r) = t.strip_prefix("[[") {
        (r.split_once("]]")?.0, true)
    } else if let Some(r) = t.strip_prefix('[') {
        (r.split_once(']')?.0, false)
    } else {
        return None;
    };
    let inner = inner
        .split('.')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(".");
    Some(if aot { format!("{inner}[]") } else { inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let env = |_: &str| None;
        let ctx = Ctx::new("f", "a\nbc\n\nd", &env);
        assert_eq!(ctx.line_of(0), 1);
        assert_eq!(ctx.line_of(1), 1);
        assert_eq!(ctx.line_of(2), 2);
        assert_eq!(ctx.line_of(4), 2);
        assert_eq!(ctx.line_of(5), 3);
        assert_eq!(ctx.line_of(6), 4);
    }

    #[test]
    fn segments() {
        assert_eq!(join("", "target"), "target");
        assert_eq!(join("target", "url"), "target.url");
        assert_eq!(join("tables", "public.orders"), "tables.\"public.orders\"");
        assert_eq!(join("tables", "a\"b"), "tables.\"a\\\"b\"");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("compresion", &["format", "compression"]),
            "did you mean `compression`?"
        );
        assert_eq!(suggest("zzz", &["a", "b"]), "known keys here: a, b");
    }

    #[test]
    fn syntax_error_keys() {
        let text = "name = \"x\"\n[target]\nurl = \n[[cache.projections]]\nk = 1\n[[cache.projections]]\nkey = \n";
        let off = text.find("url = ").unwrap() + 6;
        assert_eq!(key_at(text, off).as_deref(), Some("target.url"));
        let off = text.rfind("key = ").unwrap() + 6;
        assert_eq!(
            key_at(text, off).as_deref(),
            Some("cache.projections[1].key")
        );
        assert_eq!(key_at(text, 3).as_deref(), Some("name"));
        let off = text.find("[target]").unwrap() + 1;
        assert_eq!(key_at(text, off).as_deref(), Some("target"));
    }
}
