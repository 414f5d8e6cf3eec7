//! The one place where PostgreSQL types meet Arrow: which Arrow type a column becomes, how
//! the full load selects it, and how its binary COPY form is appended to an Arrow builder.
//!
//! Every other module asks this file; nothing else knows a type oid. `render` turns the Arrow
//! values back into PostgreSQL's text form and into JSON (for the Redis sink).

pub mod render;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListArray,
    NullBufferBuilder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::compute::concat;
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use arrow::error::ArrowError;

/// Days between 1970-01-01 (Arrow) and 2000-01-01 (PostgreSQL).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds between 1970-01-01 and 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A column type as godwit maps it (domains already resolved to their base type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    /// numeric(p,s) with p ≤ 38 and 0 ≤ s ≤ p.
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// Types whose binary form is UTF-8 text: text, varchar, char, name, citext, enums.
    Text,
    /// json: binary form is the JSON text.
    Json,
    /// jsonb: binary form is a version byte and the JSON text.
    Jsonb,
    Bytea,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Uuid,
    /// inet and cidr: decoded from binary into PostgreSQL's own text form (their casts to text
    /// would add a `/32` the output function leaves out).
    Inet {
        cidr: bool,
    },
    /// Any other type: the COPY query casts it to text (`cast` is the SQL cast suffix).
    AsText {
        cast: TextCast,
    },
    /// An array, nested to the column's declared dimensions.
    Array {
        elem: Box<PgType>,
        dims: usize,
    },
}

/// How a text-mapped type is turned into text inside the COPY query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextCast {
    /// `::text` — PostgreSQL's text output.
    Plain,
    /// money: `::numeric::text`, never locale-formatted.
    Money,
    /// numeric that is not Decimal128: `::text`, like `Plain`, but known to hold a number
    /// (the Redis JSON form writes it as one where that is exact).
    Numeric,
}

/// What the catalog says about a type; enough to resolve a column to a [`PgType`].
#[derive(Debug, Clone)]
pub struct TypeInfo {
    pub oid: u32,
    pub name: String,
    /// `pg_type.typtype`: b base, d domain, e enum, r range, c composite, p pseudo, m multirange.
    pub kind: u8,
    /// `pg_type.typcategory`; `A` for arrays.
    pub category: u8,
    pub elem: u32,
    pub base: u32,
    pub base_typmod: i32,
}

/// How numeric(p,s) columns are written (the per-table `numeric` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericAs {
    Decimal,
    Text,
}

mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
    pub const INET: u32 = 869;
    pub const CIDR: u32 = 650;
}

/// Resolves a column's type. `lookup` returns catalog facts for an oid; `typmod` is the
/// column's `atttypmod` and `ndims` its `attndims`.
pub fn resolve(
    type_oid: u32,
    typmod: i32,
    ndims: i32,
    numeric: NumericAs,
    lookup: &dyn Fn(u32) -> Option<TypeInfo>,
) -> PgType {
    resolve_inner(type_oid, typmod, ndims, numeric, lookup, 0)
}

fn resolve_inner(
    type_oid: u32,
    typmod: i32,
    ndims: i32,
    numeric: NumericAs,
    lookup: &dyn Fn(u32) -> Option<TypeInfo>,
    depth: usize,
) -> PgType {
    let text = PgType::AsText {
        cast: TextCast::Plain,
    };
    if depth > 16 {
        return text;
    }
    let scalar = match type_oid {
        oid::INT2 => Some(PgType::Int2),
        oid::INT4 => Some(PgType::Int4),
        oid::INT8 => Some(PgType::Int8),
        oid::FLOAT4 => Some(PgType::Float4),
        oid::FLOAT8 => Some(PgType::Float8),
        oid::BOOL => Some(PgType::Bool),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Some(PgType::Text),
        oid::JSON => Some(PgType::Json),
        oid::JSONB => Some(PgType::Jsonb),
        oid::BYTEA => Some(PgType::Bytea),
        oid::DATE => Some(PgType::Date),
        oid::TIME => Some(PgType::Time),
        oid::TIMESTAMP => Some(PgType::Timestamp),
        oid::TIMESTAMPTZ => Some(PgType::Timestamptz),
        oid::UUID => Some(PgType::Uuid),
        oid::INET => Some(PgType::Inet { cidr: false }),
        oid::CIDR => Some(PgType::Inet { cidr: true }),
        oid::MONEY => Some(PgType::AsText {
            cast: TextCast::Money,
        }),
        oid::NUMERIC => Some(numeric_type(typmod, numeric)),
        _ => None,
    };
    if let Some(t) = scalar {
        return t;
    }
    let Some(info) = lookup(type_oid) else {
        return text;
    };
    match info.kind {
        b'd' => {
            let typmod = if typmod == -1 {
                info.base_typmod
            } else {
                typmod
            };
            resolve_inner(info.base, typmod, ndims, numeric, lookup, depth + 1)
        }
        b'e' => PgType::Text,
        _ if info.category == b'A' && info.elem != 0 => {
            let elem = resolve_inner(info.elem, typmod, 0, numeric, lookup, depth + 1);
            match elem {
                // Arrays of arrays cannot be declared; a domain over an array is resolved above.
                PgType::Array { .. } => text,
                elem => PgType::Array {
                    elem: Box::new(elem),
                    dims: ndims.max(1) as usize,
                },
            }
        }
        _ if info.name == "citext" => PgType::Text,
        _ => text,
    }
}

/// numeric(p,s) → Decimal128 where it fits exactly, otherwise exact text.
fn numeric_type(typmod: i32, numeric: NumericAs) -> PgType {
    let text = PgType::AsText {
        cast: TextCast::Numeric,
    };
    if typmod < 4 || numeric == NumericAs::Text {
        return text;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    // The scale is an 11-bit signed field (PostgreSQL 15 allows negative scales).
    let raw_scale = t & 0x7ff;
    let scale = if raw_scale & 0x400 != 0 {
        raw_scale - 0x800
    } else {
        raw_scale
    };
    if (1..=38).contains(&precision) && (0..=precision).contains(&scale) {
        PgType::Decimal {
            precision: precision as u8,
            scale: scale as i8,
        }
    } else {
        text
    }
}

impl PgType {
    /// The Arrow type a column of this type becomes.
    pub fn arrow_type(&self) -> DataType {
        match self {
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Bool => DataType::Boolean,
            PgType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            PgType::Text
            | PgType::Json
            | PgType::Jsonb
            | PgType::Uuid
            | PgType::Inet { .. }
            | PgType::AsText { .. } => DataType::Utf8,
            PgType::Bytea => DataType::Binary,
            PgType::Date => DataType::Date32,
            PgType::Time => DataType::Time64(TimeUnit::Microsecond),
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Array { elem, dims } => {
                let mut t = elem.arrow_type();
                for _ in 0..*dims {
                    t = DataType::List(Arc::new(elem_field(t)));
                }
                t
            }
        }
    }

    /// The Arrow field of a column named `name` (JSON columns carry the canonical JSON
    /// extension type, so Parquet writes its JSON logical type). `nullable` is the column's
    /// own; an array's elements are always nullable.
    pub fn arrow_field(&self, name: &str, nullable: bool) -> Field {
        let field = Field::new(name, self.arrow_type(), nullable);
        if matches!(self, PgType::Json | PgType::Jsonb) {
            field.with_extension_type(arrow_schema::extension::Json::default())
        } else {
            field
        }
    }

    /// The expression the COPY query selects for column `ident` (already quoted).
    pub fn select_expr(&self, ident: &str) -> String {
        match self.text_cast() {
            None => ident.to_string(),
            Some((cast, is_array)) => {
                let brackets = if is_array { "[]" } else { "" };
                match cast {
                    TextCast::Plain | TextCast::Numeric => format!("{ident}::text{brackets}"),
                    TextCast::Money => format!("{ident}::numeric{brackets}::text{brackets}"),
                }
            }
        }
    }

    fn text_cast(&self) -> Option<(TextCast, bool)> {
        match self {
            PgType::AsText { cast } => Some((*cast, false)),
            PgType::Array { elem, .. } => elem.text_cast().map(|(c, _)| (c, true)),
            _ => None,
        }
    }

    /// A short name for reports (`check`, `inspect`).
    pub fn describe(&self) -> String {
        match self {
            PgType::AsText {
                cast: TextCast::Money,
            } => "money as text".into(),
            PgType::AsText {
                cast: TextCast::Numeric,
            } => "numeric as text".into(),
            PgType::AsText { .. } => "text form".into(),
            PgType::Array { elem, dims } => format!("{}-D array of {}", dims, elem.describe()),
            other => format!("{other:?}").to_lowercase(),
        }
    }
}

fn elem_field(t: DataType) -> Field {
    Field::new("item", t, true)
}

/// A value that cannot be represented in its Arrow column: a data error (`[errors].data`).
///
/// The message says what is wrong, never the value (a value can be a secret or personal
/// data); `sample` is a short, truncated prefix of the value, for a debug-level line only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct DataError {
    pub problem: String,
    pub sample: Option<String>,
}

impl DataError {
    pub fn new(problem: impl Into<String>) -> DataError {
        DataError {
            problem: problem.into(),
            sample: None,
        }
    }

    /// Keeps a [`sample`] of the bad value `text`.
    fn with_sample(mut self, text: &str) -> DataError {
        self.sample = Some(sample(text));
        self
    }

    /// The error of an element inside an array value.
    fn in_array(mut self) -> DataError {
        self.problem = format!("an array element: {}", self.problem);
        self
    }
}

/// The most of a value godwit ever shows, and only at debug level: its first characters —
/// half of them, at most 6, so a value never appears whole — marked as cut, and its length.
pub fn sample(text: &str) -> String {
    let chars = text.chars().count();
    let prefix: String = text.chars().take((chars / 2).min(6)).collect();
    format!("{prefix:?}… ({} bytes)", text.len())
}

fn malformed(what: &str, len: usize) -> DataError {
    DataError::new(format!("malformed binary {what} value ({len} bytes)"))
}

/// How a key value appears in a data error: `shown` goes into messages, logs, events and
/// `task.json`; `sample` only into a debug line.
///
/// Integer, numeric and uuid keys are identifiers and are shown whole; any other key can be
/// personal data (an e-mail address, a name, a birth date) and is shown as its type and
/// length only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyText {
    pub shown: String,
    pub sample: Option<String>,
}

impl KeyText {
    /// A key value as the full load reads it (binary COPY form).
    pub fn binary(t: &PgType, v: &[u8]) -> KeyText {
        let shown = match (t, v.len()) {
            (PgType::Int2, 2) => Some(i16::from_be_bytes([v[0], v[1]]).to_string()),
            (PgType::Int4, 4) => Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
            (PgType::Int8, 8) => v.try_into().ok().map(|b| i64::from_be_bytes(b).to_string()),
            (PgType::Uuid, 16) => uuid::Uuid::from_slice(v).ok().map(|u| u.to_string()),
            (PgType::Decimal { scale, .. }, _) => decode_numeric(v, *scale)
                .ok()
                .map(|n| decimal_text(n, *scale)),
            _ => None,
        };
        // Text-like keys travel as their UTF-8 text; others have no readable binary form.
        let text =
            matches!(t, PgType::Text | PgType::AsText { .. }).then(|| String::from_utf8_lossy(v));
        KeyText::build(t, shown, text.as_deref(), v.len())
    }

    /// A key value in PostgreSQL's text form (what pgoutput sends).
    pub fn text(t: &PgType, v: &[u8]) -> KeyText {
        let text = String::from_utf8_lossy(v);
        let shown = match t {
            PgType::Int2 | PgType::Int4 | PgType::Int8 => {
                text.parse::<i64>().ok().map(|n| n.to_string())
            }
            PgType::Uuid => uuid::Uuid::parse_str(&text).ok().map(|u| u.to_string()),
            PgType::Decimal { scale, .. } => text_numeric(&text, *scale)
                .ok()
                .map(|n| decimal_text(n, *scale)),
            _ => None,
        };
        KeyText::build(t, shown, Some(&text), v.len())
    }

    /// A key value that is SQL NULL (or otherwise has nothing to withhold).
    pub fn plain(shown: &str) -> KeyText {
        KeyText {
            shown: shown.into(),
            sample: None,
        }
    }

    /// A row's key from its columns' values: what messages show (`id=42, email=<text, 24
    /// bytes>`) and, when a value is withheld, the same with its sample, for the debug line.
    pub fn row<'a>(
        parts: impl IntoIterator<Item = (&'a str, KeyText)>,
    ) -> (String, Option<String>) {
        let (mut shown, mut sampled, mut any_sample) = (Vec::new(), Vec::new(), false);
        for (name, key) in parts {
            any_sample |= key.sample.is_some();
            sampled.push(format!(
                "{name}={}",
                key.sample.as_ref().unwrap_or(&key.shown)
            ));
            shown.push(format!("{name}={}", key.shown));
        }
        (shown.join(", "), any_sample.then(|| sampled.join(", ")))
    }

    fn build(t: &PgType, shown: Option<String>, text: Option<&str>, len: usize) -> KeyText {
        match shown {
            Some(shown) => KeyText {
                shown,
                sample: None,
            },
            None => KeyText {
                shown: format!("<{}, {len} bytes>", t.describe()),
                sample: text.map(sample),
            },
        }
    }
}

/// An Arrow builder for one column, fed with the column's binary COPY values or their text
/// form (pgoutput).
///
/// A failed append leaves no trace, and [`ColumnBuilder::truncate`] takes whole rows back, so
/// a row that fails in one column can be removed from every column (values, offsets, nulls).
pub struct ColumnBuilder {
    values: Values,
    /// Rows kept by a rollback. Arrow's leaf builders cannot shrink: [`ColumnBuilder::truncate`]
    /// finishes them and keeps the rows before the cut here, and `finish` puts these chunks in
    /// front of the rest. Only the rare error path pays for it.
    settled: Vec<ArrayRef>,
    settled_len: usize,
}

/// The builder of each Arrow type.
enum Values {
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Decimal(Decimal128Builder, i8),
    Utf8(StringBuilder),
    /// money: full load selects it as numeric text; pgoutput sends `$1,234.56`.
    Money(StringBuilder),
    Jsonb(StringBuilder),
    Uuid(StringBuilder),
    Inet(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    List(Box<ListBuilder>),
}

/// A list column: offsets and validity of its own, elements in a child builder.
struct ListBuilder {
    field: FieldRef,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    child: ColumnBuilder,
}

impl ColumnBuilder {
    /// A builder for `t`, sized for `rows` values.
    pub fn new(t: &PgType, rows: usize) -> ColumnBuilder {
        ColumnBuilder {
            values: Values::new(t, rows),
            settled: Vec::new(),
            settled_len: 0,
        }
    }

    /// Appends one binary COPY value (`None` is SQL NULL).
    ///
    /// On a [`DataError`] nothing was appended (not even part of an array).
    pub fn append(&mut self, value: Option<&[u8]>) -> Result<(), DataError> {
        let Some(v) = value else {
            self.append_null();
            return Ok(());
        };
        let done = self.values.append(v);
        if done.is_err() {
            self.truncate(self.len());
        }
        done
    }

    /// Appends one value in PostgreSQL's text form (what pgoutput sends), giving the same
    /// Arrow value as [`ColumnBuilder::append`] does for the binary form. The session must
    /// have pinned `DateStyle=ISO`, `TimeZone=UTC`, `IntervalStyle=iso_8601`,
    /// `extra_float_digits=3`, `bytea_output=hex`, `lc_monetary=C`.
    ///
    /// On a [`DataError`] nothing was appended (not even part of an array).
    pub fn append_text(&mut self, v: &[u8]) -> Result<(), DataError> {
        let done = self.values.append_text(v);
        if done.is_err() {
            self.truncate(self.len());
        }
        done
    }

    /// Appends SQL NULL.
    pub fn append_null(&mut self) {
        self.values.append_null();
    }

    /// Takes back every value after the first `len` (with their list elements, offsets and
    /// nulls): the rollback of a row that failed part-way. `truncate(len())` drops only what
    /// a failed value left in a list's children (a list ends a row after its elements); a `len`
    /// past the end does nothing.
    pub fn truncate(&mut self, len: usize) {
        if let Values::List(l) = &mut self.values {
            // Lists shrink in place (they never settle chunks), and their children also when
            // no row was added: a row that failed part-way left elements there.
            if len <= l.len() {
                l.truncate(len);
            }
            return;
        }
        if len >= self.len() {
            return;
        }
        if len > self.settled_len {
            let current = self.values.finish_current();
            self.settled.push(current.slice(0, len - self.settled_len));
        } else {
            // The cut falls inside rows settled earlier: drop the current rows and cut there.
            drop(self.values.finish_current());
            while self.settled_len > len {
                let Some(last) = self.settled.pop() else {
                    break;
                };
                self.settled_len -= last.len();
                if self.settled_len < len {
                    self.settled.push(last.slice(0, len - self.settled_len));
                }
            }
        }
        self.settled_len = len;
    }

    /// Builds the array of everything appended so far and starts empty again.
    pub fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        let current = match &mut self.values {
            Values::List(l) => l.finish()?,
            other => other.finish_current(),
        };
        if self.settled.is_empty() {
            return Ok(current);
        }
        let mut parts = std::mem::take(&mut self.settled);
        self.settled_len = 0;
        parts.push(current);
        let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        concat(&parts)
    }

    /// Number of values appended since the last finish.
    pub fn len(&self) -> usize {
        self.settled_len + self.values.len()
    }

    /// True when nothing was appended since the last finish.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Values {
    fn new(t: &PgType, rows: usize) -> Values {
        match t {
            PgType::Int2 => Values::Int16(Int16Builder::with_capacity(rows)),
            PgType::Int4 => Values::Int32(Int32Builder::with_capacity(rows)),
            PgType::Int8 => Values::Int64(Int64Builder::with_capacity(rows)),
            PgType::Float4 => Values::Float32(Float32Builder::with_capacity(rows)),
            PgType::Float8 => Values::Float64(Float64Builder::with_capacity(rows)),
            PgType::Bool => Values::Bool(BooleanBuilder::with_capacity(rows)),
            PgType::Decimal { precision, scale } => Values::Decimal(
                Decimal128Builder::with_capacity(rows)
                    .with_data_type(DataType::Decimal128(*precision, *scale)),
                *scale,
            ),
            PgType::AsText {
                cast: TextCast::Money,
            } => Values::Money(StringBuilder::with_capacity(rows, rows * 8)),
            PgType::Text | PgType::Json | PgType::AsText { .. } => {
                Values::Utf8(StringBuilder::with_capacity(rows, rows * 16))
            }
            PgType::Jsonb => Values::Jsonb(StringBuilder::with_capacity(rows, rows * 32)),
            PgType::Uuid => Values::Uuid(StringBuilder::with_capacity(rows, rows * 36)),
            PgType::Inet { .. } => Values::Inet(StringBuilder::with_capacity(rows, rows * 16)),
            PgType::Bytea => Values::Binary(BinaryBuilder::with_capacity(rows, rows * 16)),
            PgType::Date => Values::Date(Date32Builder::with_capacity(rows)),
            PgType::Time => Values::Time(Time64MicrosecondBuilder::with_capacity(rows)),
            PgType::Timestamp => {
                Values::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows))
            }
            PgType::Timestamptz => Values::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            PgType::Array { elem, dims } => {
                let inner = if *dims > 1 {
                    PgType::Array {
                        elem: elem.clone(),
                        dims: dims - 1,
                    }
                } else {
                    (**elem).clone()
                };
                Values::List(Box::new(ListBuilder {
                    field: Arc::new(elem_field(inner.arrow_type())),
                    offsets: vec![0],
                    nulls: NullBufferBuilder::new(rows),
                    child: ColumnBuilder::new(&inner, rows),
                }))
            }
        }
    }

    /// A binary value; a list may have appended part of it when this fails.
    fn append(&mut self, v: &[u8]) -> Result<(), DataError> {
        match self {
            Values::Int16(b) => b.append_value(i16::from_be_bytes(fixed(v, "smallint")?)),
            Values::Int32(b) => b.append_value(i32::from_be_bytes(fixed(v, "integer")?)),
            Values::Int64(b) => b.append_value(i64::from_be_bytes(fixed(v, "bigint")?)),
            Values::Float32(b) => b.append_value(f32::from_be_bytes(fixed(v, "real")?)),
            Values::Float64(b) => b.append_value(f64::from_be_bytes(fixed(v, "double precision")?)),
            Values::Bool(b) => b.append_value(fixed::<1>(v, "boolean")?[0] != 0),
            Values::Decimal(b, scale) => b.append_value(decode_numeric(v, *scale)?),
            Values::Utf8(b) | Values::Money(b) => b.append_value(utf8(v)?),
            Values::Jsonb(b) => match v.split_first() {
                Some((1, json)) => b.append_value(utf8(json)?),
                _ => return Err(malformed("jsonb", v.len())),
            },
            Values::Uuid(b) => {
                let id = uuid::Uuid::from_slice(v).map_err(|_| malformed("uuid", v.len()))?;
                b.append_value(
                    id.hyphenated()
                        .encode_lower(&mut uuid::Uuid::encode_buffer()),
                )
            }
            Values::Inet(b) => b.append_value(inet_text(v)?),
            Values::Binary(b) => b.append_value(v),
            Values::Date(b) => {
                let days = i32::from_be_bytes(fixed(v, "date")?);
                b.append_value(match days {
                    i32::MAX | i32::MIN => days,
                    d => d
                        .checked_add(PG_EPOCH_DAYS)
                        .ok_or_else(|| DataError::new("date outside the Arrow range"))?,
                })
            }
            Values::Time(b) => b.append_value(i64::from_be_bytes(fixed(v, "time")?)),
            Values::Timestamp(b) => {
                let micros = i64::from_be_bytes(fixed(v, "timestamp")?);
                b.append_value(match micros {
                    i64::MAX | i64::MIN => micros,
                    m => m
                        .checked_add(PG_EPOCH_MICROS)
                        .ok_or_else(|| DataError::new("timestamp outside the Arrow range"))?,
                })
            }
            Values::List(l) => l.append_array(v)?,
        }
        Ok(())
    }

    /// A text value; a list may have appended part of it when this fails.
    fn append_text(&mut self, v: &[u8]) -> Result<(), DataError> {
        let s = utf8(v)?;
        let bad = |what: &str| DataError::new(format!("not a valid {what}")).with_sample(s);
        match self {
            Values::Int16(b) => b.append_value(s.parse().map_err(|_| bad("smallint"))?),
            Values::Int32(b) => b.append_value(s.parse().map_err(|_| bad("integer"))?),
            Values::Int64(b) => b.append_value(s.parse().map_err(|_| bad("bigint"))?),
            Values::Float32(b) => b.append_value(parse_float(s).ok_or_else(|| bad("real"))? as f32),
            Values::Float64(b) => {
                b.append_value(parse_float(s).ok_or_else(|| bad("double precision"))?)
            }
            Values::Bool(b) => b.append_value(match s {
                "t" => true,
                "f" => false,
                _ => return Err(bad("boolean")),
            }),
            Values::Decimal(b, scale) => b.append_value(text_numeric(s, *scale)?),
            Values::Utf8(b) | Values::Jsonb(b) | Values::Uuid(b) | Values::Inet(b) => {
                b.append_value(s)
            }
            Values::Money(b) => b.append_value(s.replace(['$', ','], "")),
            Values::Binary(b) => {
                let hex = s.strip_prefix("\\x").ok_or_else(|| bad("bytea (hex)"))?;
                b.append_value(decode_hex(hex).ok_or_else(|| bad("bytea (hex)"))?)
            }
            Values::Date(b) => b.append_value(match s {
                "infinity" => i32::MAX,
                "-infinity" => i32::MIN,
                _ => {
                    let (date, bc) = split_bc(s);
                    i32::try_from(text_date(date, bc).ok_or_else(|| bad("date"))?)
                        .map_err(|_| bad("date in range"))?
                }
            }),
            Values::Time(b) => b.append_value(text_time(s).ok_or_else(|| bad("time"))?),
            Values::Timestamp(b) => b.append_value(match s {
                "infinity" => i64::MAX,
                "-infinity" => i64::MIN,
                _ => text_timestamp(s).ok_or_else(|| bad("timestamp"))?,
            }),
            Values::List(l) => {
                let node = parse_array(s).ok_or_else(|| bad("array"))?;
                l.append_text_array(&node)?
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Values::Int16(b) => b.append_null(),
            Values::Int32(b) => b.append_null(),
            Values::Int64(b) => b.append_null(),
            Values::Float32(b) => b.append_null(),
            Values::Float64(b) => b.append_null(),
            Values::Bool(b) => b.append_null(),
            Values::Decimal(b, _) => b.append_null(),
            Values::Utf8(b)
            | Values::Money(b)
            | Values::Jsonb(b)
            | Values::Uuid(b)
            | Values::Inet(b) => b.append_null(),
            Values::Binary(b) => b.append_null(),
            Values::Date(b) => b.append_null(),
            Values::Time(b) => b.append_null(),
            Values::Timestamp(b) => b.append_null(),
            Values::List(l) => l.push_row(false),
        }
    }

    /// Finishes a leaf builder (lists finish through [`ListBuilder::finish`]).
    fn finish_current(&mut self) -> ArrayRef {
        match self {
            Values::Int16(b) => Arc::new(b.finish()),
            Values::Int32(b) => Arc::new(b.finish()),
            Values::Int64(b) => Arc::new(b.finish()),
            Values::Float32(b) => Arc::new(b.finish()),
            Values::Float64(b) => Arc::new(b.finish()),
            Values::Bool(b) => Arc::new(b.finish()),
            Values::Decimal(b, _) => Arc::new(b.finish()),
            Values::Utf8(b)
            | Values::Money(b)
            | Values::Jsonb(b)
            | Values::Uuid(b)
            | Values::Inet(b) => Arc::new(b.finish()),
            Values::Binary(b) => Arc::new(b.finish()),
            Values::Date(b) => Arc::new(b.finish()),
            Values::Time(b) => Arc::new(b.finish()),
            Values::Timestamp(b) => Arc::new(b.finish()),
            Values::List(_) => unreachable!("lists finish through ListBuilder::finish"),
        }
    }

    fn len(&self) -> usize {
        match self {
            Values::Int16(b) => b.len(),
            Values::Int32(b) => b.len(),
            Values::Int64(b) => b.len(),
            Values::Float32(b) => b.len(),
            Values::Float64(b) => b.len(),
            Values::Bool(b) => b.len(),
            Values::Decimal(b, _) => b.len(),
            Values::Utf8(b)
            | Values::Money(b)
            | Values::Jsonb(b)
            | Values::Uuid(b)
            | Values::Inet(b) => b.len(),
            Values::Binary(b) => b.len(),
            Values::Date(b) => b.len(),
            Values::Time(b) => b.len(),
            Values::Timestamp(b) => b.len(),
            Values::List(l) => l.len(),
        }
    }
}

impl ListBuilder {
    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Ends a row at the child's current length (`valid` false: a NULL list).
    fn push_row(&mut self, valid: bool) {
        // A batch is cut long before 2^31 elements (batch_rows, batch_bytes).
        let end = i32::try_from(self.child.len()).expect("a batch holds < 2^31 list elements");
        self.offsets.push(end);
        self.nulls.append(valid);
    }

    fn truncate(&mut self, len: usize) {
        self.offsets.truncate(len + 1);
        self.nulls.truncate(len);
        self.child.truncate(self.offsets[len] as usize);
    }

    /// Appends one binary array value: `ndim`, flags, element oid, (size, lower bound) per
    /// dimension, then every element as length + bytes in row-major order.
    fn append_array(&mut self, v: &[u8]) -> Result<(), DataError> {
        let mut r = Reader { buf: v, pos: 0 };
        let ndim = r.i32()?;
        let _has_nulls = r.i32()?;
        let _elem_oid = r.i32()?;
        let declared = self.depth();
        if ndim == 0 {
            // An empty array of any declared dimensionality is an empty outer list.
            self.push_row(true);
            return Ok(());
        }
        if ndim as usize != declared {
            return Err(DataError::new(format!(
                "array with {ndim} dimensions in a column declared with {declared}"
            )));
        }
        let mut dims = Vec::with_capacity(declared);
        for _ in 0..ndim {
            let size = r.i32()?;
            let _lower = r.i32()?;
            dims.push(usize::try_from(size).map_err(|_| malformed("array", v.len()))?);
        }
        // The sizes come from the wire: every element takes at least its 4-byte length, so a
        // claimed count the value cannot hold is malformed before anything is appended.
        let count = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= r.remaining() / 4)
            .ok_or_else(|| malformed("array", v.len()))?;
        if count == 0 {
            // PostgreSQL reads an array with no elements as the empty array.
            self.push_row(true);
            return Ok(());
        }
        self.append_dims(&dims, &mut r)
    }

    /// Appends a parsed array literal (see [`parse_array`]).
    fn append_text_array(&mut self, node: &ArrayNode) -> Result<(), DataError> {
        let ArrayNode::List(items) = node else {
            return Err(DataError::new("an array value that is not a list"));
        };
        if items.is_empty() {
            self.push_row(true);
            return Ok(());
        }
        let declared = self.depth();
        let depth = node.depth();
        if depth != declared {
            return Err(DataError::new(format!(
                "array with {depth} dimensions in a column declared with {declared}"
            )));
        }
        self.append_text_items(items)
    }

    fn append_text_items(&mut self, items: &[ArrayNode]) -> Result<(), DataError> {
        for item in items {
            match (&mut self.child.values, item) {
                (Values::List(inner), ArrayNode::List(sub)) => inner.append_text_items(sub)?,
                (Values::List(_), ArrayNode::Leaf(_)) | (_, ArrayNode::List(_)) => {
                    return Err(DataError::new("a ragged array"));
                }
                (_, ArrayNode::Leaf(None)) => self.child.append_null(),
                (_, ArrayNode::Leaf(Some(text))) => self
                    .child
                    .append_text(text.as_bytes())
                    .map_err(DataError::in_array)?,
            }
        }
        self.push_row(true);
        Ok(())
    }

    fn depth(&self) -> usize {
        match &self.child.values {
            Values::List(inner) => 1 + inner.depth(),
            _ => 1,
        }
    }

    fn append_dims(&mut self, dims: &[usize], r: &mut Reader<'_>) -> Result<(), DataError> {
        for _ in 0..dims[0] {
            match &mut self.child.values {
                Values::List(inner) if dims.len() > 1 => inner.append_dims(&dims[1..], r)?,
                _ => {
                    let elem = r.element()?;
                    self.child.append(elem).map_err(DataError::in_array)?;
                }
            }
        }
        self.push_row(true);
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let values = self.child.finish()?;
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        Ok(Arc::new(ListArray::try_new(
            self.field.clone(),
            offsets,
            values,
            self.nulls.finish(),
        )?))
    }
}

/// A cursor over a binary value.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DataError> {
        let b = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| malformed("array", self.buf.len()))?;
        self.pos += n;
        Ok(b)
    }

    fn i32(&mut self) -> Result<i32, DataError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn element(&mut self) -> Result<Option<&'a [u8]>, DataError> {
        match self.i32()? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| malformed("array", self.buf.len()))?;
                self.take(len).map(Some)
            }
        }
    }
}

/// Binary inet/cidr (family, bits, is_cidr, length, address) → the output function's text:
/// the address, `/bits` unless it covers the whole address (always for cidr).
fn inet_text(v: &[u8]) -> Result<String, DataError> {
    let bad = || malformed("inet", v.len());
    let (&[family, bits, is_cidr, len], addr) = v.split_first_chunk::<4>().ok_or_else(bad)?;
    let (text, max) = match (family, len, addr.len()) {
        (2, 4, 4) => (
            std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
            32,
        ),
        (3, 16, 16) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(addr);
            let ip = std::net::Ipv6Addr::from(octets);
            let s = ip.segments();
            // PostgreSQL writes IPv4-compatible addresses (::a.b.c.d) with a dotted tail.
            let text = if s[..6].iter().all(|&w| w == 0) && s[6] != 0 {
                format!("::{}.{}.{}.{}", addr[12], addr[13], addr[14], addr[15])
            } else {
                ip.to_string()
            };
            (text, 128)
        }
        _ => return Err(bad()),
    };
    Ok(if bits != max || is_cidr != 0 {
        format!("{text}/{bits}")
    } else {
        text
    })
}

/// An array literal: nested lists of element texts (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayNode {
    Leaf(Option<String>),
    List(Vec<ArrayNode>),
}

impl ArrayNode {
    fn depth(&self) -> usize {
        match self {
            ArrayNode::Leaf(_) => 0,
            ArrayNode::List(items) => 1 + items.first().map_or(0, ArrayNode::depth),
        }
    }
}

/// Parses PostgreSQL's array text (`{1,NULL,"a \"b\""}`, nested, optionally prefixed by
/// `[1:2]=` bounds) with `,` as the delimiter.
pub fn parse_array(s: &str) -> Option<ArrayNode> {
    let s = match s.find("={") {
        Some(i) if s.starts_with('[') => &s[i + 1..],
        _ => s,
    };
    let mut chars = s.chars().peekable();
    let node = parse_list(&mut chars, 0)?;
    chars.next().is_none().then_some(node)
}

/// PostgreSQL's MAXDIM: no array has more dimensions, so deeper nesting is not an array
/// (and cannot exhaust the stack).
const MAX_ARRAY_DIMS: usize = 6;

fn parse_list(c: &mut std::iter::Peekable<std::str::Chars<'_>>, depth: usize) -> Option<ArrayNode> {
    if c.next()? != '{' || depth >= MAX_ARRAY_DIMS {
        return None;
    }
    let mut items = Vec::new();
    if c.peek() == Some(&'}') {
        c.next();
        return Some(ArrayNode::List(items));
    }
    loop {
        match c.peek()? {
            '{' => items.push(parse_list(c, depth + 1)?),
            '"' => {
                c.next();
                let mut v = String::new();
                loop {
                    match c.next()? {
                        '\\' => v.push(c.next()?),
                        '"' => break,
                        ch => v.push(ch),
                    }
                }
                items.push(ArrayNode::Leaf(Some(v)));
            }
            _ => {
                let mut v = String::new();
                while let Some(&ch) = c.peek() {
                    if ch == ',' || ch == '}' {
                        break;
                    }
                    if ch == '\\' {
                        c.next();
                        v.push(c.next()?);
                        continue;
                    }
                    v.push(ch);
                    c.next();
                }
                let v = v.trim().to_string();
                items.push(ArrayNode::Leaf(if v == "NULL" { None } else { Some(v) }));
            }
        }
        match c.next()? {
            ',' => continue,
            '}' => return Some(ArrayNode::List(items)),
            _ => return None,
        }
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// Numeric text (`-12.50`) → the unscaled i128 of a Decimal128 with `scale`.
fn text_numeric(s: &str, scale: i8) -> Result<i128, DataError> {
    match s {
        "NaN" => return Err(not_decimal("NaN")),
        "Infinity" | "-Infinity" => return Err(not_decimal("infinity")),
        _ => {}
    }
    let bad = || DataError::new("not a valid numeric").with_sample(s);
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > scale as usize || int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let mut acc: i128 = 0;
    for ch in int
        .chars()
        .chain(frac.chars())
        .chain(std::iter::repeat_n('0', scale as usize - frac.len()))
    {
        let d = ch.to_digit(10).ok_or_else(bad)? as i128;
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(d))
            .ok_or_else(bad)?;
    }
    Ok(if neg { -acc } else { acc })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `text` without a trailing ` BC`, and whether it had one.
fn split_bc(s: &str) -> (&str, bool) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    }
}

/// `YYYY-MM-DD` (with PostgreSQL's BC years) → days since 1970-01-01.
fn text_date(s: &str, bc: bool) -> Option<i64> {
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    let y = if bc { 1 - y } else { y };
    Some(days_from_civil(y, m, d))
}

/// Proleptic Gregorian date → days since 1970-01-01, for any year.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `HH:MM:SS[.ffffff]` → microseconds.
fn text_time(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: i64 = whole.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    Some(((h * 60 + m) * 60 + whole) * 1_000_000 + micros)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` → microseconds since 1970 (UTC).
fn text_timestamp(s: &str) -> Option<i64> {
    let (s, bc) = split_bc(s);
    let (date, rest) = s.split_once(' ')?;
    let days = text_date(date, bc)?;
    let (time, offset) = match rest.find(['+', '-']) {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let mut micros = days
        .checked_mul(86_400_000_000)?
        .checked_add(text_time(time)?)?;
    if let Some(off) = offset {
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut secs = 0i64;
        for (i, p) in off[1..].split(':').enumerate() {
            let v: i64 = p.parse().ok()?;
            secs += v * [3600, 60, 1].get(i)?;
        }
        micros -= sign * secs * 1_000_000;
    }
    Some(micros)
}

fn fixed<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], DataError> {
    v.try_into().map_err(|_| malformed(what, v.len()))
}

fn utf8(v: &[u8]) -> Result<&str, DataError> {
    std::str::from_utf8(v).map_err(|e| DataError::new(format!("invalid UTF-8 in text value: {e}")))
}

/// The unscaled value of a Decimal128 with `scale` as text (`-12.50`).
fn decimal_text(unscaled: i128, scale: i8) -> String {
    let digits = format!(
        "{:0>width$}",
        unscaled.unsigned_abs(),
        width = scale as usize + 1
    );
    let (int, frac) = digits.split_at(digits.len() - scale as usize);
    let sign = if unscaled < 0 { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// NaN and ±infinity have no Decimal128 form.
fn not_decimal(what: &str) -> DataError {
    DataError::new(format!(
        "{what} cannot be stored in a decimal column (set numeric = \"text\" for this table)"
    ))
}

/// Binary numeric → the unscaled i128 of a Decimal128 with `scale`.
///
/// Layout: ndigits, weight, sign, dscale (all i16), then ndigits base-10000 digits; digit `i`
/// is worth 10000^(weight - i).
fn decode_numeric(v: &[u8], scale: i8) -> Result<i128, DataError> {
    let head = |i: usize| -> Result<i16, DataError> {
        v.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| malformed("numeric", v.len()))
    };
    let ndigits = head(0)?;
    let weight = head(1)? as i32;
    let sign = head(2)? as u16;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => {
            return Err(not_decimal("NaN"));
        }
        _ => {
            return Err(not_decimal("infinity"));
        }
    }
    let overflow = || DataError::new("numeric value does not fit its declared precision");
    let mut acc: i128 = 0;
    for i in 0..ndigits.max(0) as usize {
        let digit = head(4 + i)? as i128;
        let exp = 4 * (weight - i as i32) + scale as i32;
        let part = if exp >= 0 {
            10i128
                .checked_pow(exp as u32)
                .and_then(|p| p.checked_mul(digit))
                .ok_or_else(overflow)?
        } else if exp > -4 {
            digit / 10i128.pow((-exp) as u32)
        } else {
            0
        };
        acc = acc.checked_add(part).ok_or_else(overflow)?;
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(ndigits: i16, weight: i16, sign: u16, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [ndigits, weight, sign as i16, dscale] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_scales() {
        // 12345.678 as numeric(10,3): digits [1, 2345, 6780], weight 1
        let v = numeric_bytes(3, 1, 0, 3, &[1, 2345, 6780]);
        assert_eq!(decode_numeric(&v, 3).unwrap(), 12_345_678);
        let v = numeric_bytes(3, 1, 0x4000, 3, &[1, 2345, 6780]);
        assert_eq!(decode_numeric(&v, 3).unwrap(), -12_345_678);
        // 0.05 as numeric(4,2): digits [500], weight -1
        let v = numeric_bytes(1, -1, 0, 2, &[500]);
        assert_eq!(decode_numeric(&v, 2).unwrap(), 5);
        // zero
        let v = numeric_bytes(0, 0, 0, 2, &[]);
        assert_eq!(decode_numeric(&v, 2).unwrap(), 0);
        let nan = numeric_bytes(0, 0, 0xC000, 0, &[]);
        assert!(decode_numeric(&nan, 2).is_err());
    }

    #[test]
    fn numeric_typmods() {
        let tm = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(
            numeric_type(tm(12, 2), NumericAs::Decimal),
            PgType::Decimal {
                precision: 12,
                scale: 2
            }
        );
        assert!(matches!(
            numeric_type(tm(40, 2), NumericAs::Decimal),
            PgType::AsText { .. }
        ));
        assert!(matches!(
            numeric_type(tm(5, -2), NumericAs::Decimal),
            PgType::AsText { .. }
        ));
        assert!(matches!(
            numeric_type(-1, NumericAs::Decimal),
            PgType::AsText { .. }
        ));
        assert!(matches!(
            numeric_type(tm(12, 2), NumericAs::Text),
            PgType::AsText { .. }
        ));
    }

    #[test]
    fn text_forms() {
        assert_eq!(text_numeric("-12.5", 2).unwrap(), -1250);
        assert_eq!(text_numeric("0.01", 2).unwrap(), 1);
        assert!(text_numeric("NaN", 2).is_err());
        assert!(text_numeric("1.234", 2).is_err());
        assert_eq!(text_date("1970-01-01", false), Some(0));
        assert_eq!(text_date("2000-01-01", false), Some(10_957));
        assert_eq!(text_time("24:00:00"), Some(86_400_000_000));
        assert_eq!(text_time("12:34:56.5"), Some(45_296_500_000));
        assert_eq!(text_timestamp("1970-01-01 01:00:00+01"), Some(0));
        assert_eq!(text_timestamp("1969-12-31 23:59:59.999999"), Some(-1));
        assert_eq!(
            parse_array(r#"{{1,NULL},{"a\"b",""}}"#),
            Some(ArrayNode::List(vec![
                ArrayNode::List(vec![
                    ArrayNode::Leaf(Some("1".into())),
                    ArrayNode::Leaf(None)
                ]),
                ArrayNode::List(vec![
                    ArrayNode::Leaf(Some("a\"b".into())),
                    ArrayNode::Leaf(Some(String::new()))
                ]),
            ]))
        );
        assert_eq!(parse_array("{}"), Some(ArrayNode::List(vec![])));
        assert_eq!(parse_array("[0:1]={7,8}").map(|n| n.depth()), Some(1));
        assert_eq!(parse_array("{1,2"), None);
    }

    #[test]
    fn select_exprs() {
        let money = PgType::AsText {
            cast: TextCast::Money,
        };
        assert_eq!(money.select_expr("\"m\""), "\"m\"::numeric::text");
        let arr = PgType::Array {
            elem: Box::new(PgType::AsText {
                cast: TextCast::Plain,
            }),
            dims: 2,
        };
        assert_eq!(arr.select_expr("\"a\""), "\"a\"::text[]");
        assert_eq!(PgType::Int4.select_expr("\"i\""), "\"i\"");
    }

    fn decimal_array(dims: usize) -> PgType {
        PgType::Array {
            elem: Box::new(PgType::Decimal {
                precision: 10,
                scale: 2,
            }),
            dims,
        }
    }

    /// A binary array value of numeric elements (`None`: NULL element).
    fn binary_array(dims: &[i32], elems: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [dims.len() as i32, 1, 1700] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
            v.extend_from_slice(&1i32.to_be_bytes());
        }
        for e in elems {
            match e {
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    /// Renders a finished column as text, one entry per row.
    fn rows_of(a: &ArrayRef) -> Vec<String> {
        let opts = arrow::util::display::FormatOptions::default().with_null("NULL");
        let f = arrow::util::display::ArrayFormatter::try_new(a.as_ref(), &opts).unwrap();
        (0..a.len()).map(|i| f.value(i).to_string()).collect()
    }

    fn n(units: i16, cents: i16) -> Option<Vec<u8>> {
        // units.cents with units < 10000: digits [units, cents * 100], weight 0
        Some(numeric_bytes(2, 0, 0, 2, &[units, cents * 100]))
    }

    #[test]
    fn a_failed_text_array_leaves_no_trace() {
        let mut b = ColumnBuilder::new(&decimal_array(1), 4);
        b.append_text(b"{1.50}").unwrap();
        let e = b.append_text(b"{1.50,NaN}").unwrap_err();
        assert!(e.problem.contains("NaN cannot be stored"), "{e}");
        assert_eq!(b.len(), 1);
        b.append_text(b"{2.00,3.25}").unwrap();
        b.append_null();
        let e = b.append_text(b"{4.00,1.234}").unwrap_err();
        assert_eq!(e.problem, "an array element: not a valid numeric");
        assert_eq!(e.sample.as_deref(), Some("\"1.\"… (5 bytes)"));
        b.append_text(b"{5.00}").unwrap();
        let a = b.finish().unwrap();
        assert_eq!(rows_of(&a), ["[1.50]", "[2.00, 3.25]", "NULL", "[5.00]"]);
    }

    #[test]
    fn a_failed_binary_2d_array_leaves_no_trace() {
        let nan = Some(numeric_bytes(0, 0, 0xC000, 0, &[]));
        let mut b = ColumnBuilder::new(&decimal_array(2), 4);
        b.append(Some(&binary_array(
            &[2, 2],
            &[n(1, 50), n(2, 0), n(3, 0), None],
        )))
        .unwrap();
        // The first sub-array is complete when the second one fails.
        let bad = binary_array(&[2, 2], &[n(7, 0), n(8, 0), n(9, 0), nan]);
        assert!(b.append(Some(&bad)).is_err());
        // Cut short: elements missing from the end.
        let short = binary_array(&[2, 2], &[n(7, 0), n(8, 0), n(9, 0)]);
        assert!(b.append(Some(&short)).is_err());
        assert_eq!(b.len(), 1);
        b.append(Some(&binary_array(&[1, 1], &[n(4, 25)]))).unwrap();
        let a = b.finish().unwrap();
        assert_eq!(rows_of(&a), ["[[1.50, 2.00], [3.00, NULL]]", "[[4.25]]"]);
    }

    #[test]
    fn truncate_takes_back_whole_rows() {
        // A leaf: truncations settle chunks, also cutting inside rows settled before.
        let mut b = ColumnBuilder::new(&PgType::Int4, 4);
        for i in 0..5 {
            b.append_text(i.to_string().as_bytes()).unwrap();
        }
        b.truncate(4);
        b.append_text(b"40").unwrap();
        b.append_text(b"50").unwrap();
        b.truncate(2);
        b.append_text(b"20").unwrap();
        b.truncate(9);
        assert_eq!(b.len(), 3);
        assert_eq!(rows_of(&b.finish().unwrap()), ["0", "1", "20"]);
        assert!(b.is_empty());
        // A list of lists: offsets, nulls and every level of children.
        let mut b = ColumnBuilder::new(&decimal_array(2), 4);
        b.append_text(b"{{1.00},{2.00}}").unwrap();
        b.append_null();
        b.append_text(b"{{3.00,4.00}}").unwrap();
        b.truncate(1);
        b.append_text(b"{{5.00}}").unwrap();
        assert_eq!(
            rows_of(&b.finish().unwrap()),
            ["[[1.00], [2.00]]", "[[5.00]]"]
        );
    }

    #[test]
    fn claimed_sizes_must_fit_the_value() {
        let mut b = ColumnBuilder::new(&decimal_array(2), 4);
        // 2^30 × 2^30 elements claimed in a 40-byte value; also an overflowing product.
        for dims in [[1 << 30, 1 << 30], [i32::MAX, i32::MAX], [1 << 30, 0]] {
            let v = binary_array(&dims, &[n(1, 0)]);
            match b.append(Some(&v)) {
                // A zero size: no elements, the empty array (as PostgreSQL reads it).
                Ok(()) => assert_eq!(dims[1], 0),
                Err(e) => assert!(e.problem.contains("malformed binary array"), "{e}"),
            }
        }
        let v = binary_array(&[1, 1], &[Some(vec![0; 3])]);
        let mut bad_len = v.clone();
        let at = bad_len.len() - 7;
        bad_len[at..at + 4].copy_from_slice(&(-7i32).to_be_bytes());
        assert!(b.append(Some(&bad_len)).is_err());
        assert_eq!(rows_of(&b.finish().unwrap()), ["[]"]);
        // Nesting deeper than any PostgreSQL array is not an array (and no stack overflow).
        let deep = format!("{}1{}", "{".repeat(100_000), "}".repeat(100_000));
        assert_eq!(parse_array(&deep), None);
        assert!(parse_array("{{{{{{1}}}}}}").is_some());
    }

    #[test]
    fn messages_and_samples_never_hold_a_whole_value() {
        assert_eq!(sample("NaN"), "\"N\"… (3 bytes)");
        assert_eq!(sample("alice@example.com"), "\"alice@\"… (17 bytes)");
        assert_eq!(sample(""), "\"\"… (0 bytes)");
        let mut b = ColumnBuilder::new(&PgType::Date, 1);
        let e = b.append_text(b"secret-value").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let text_key = KeyText::text(&PgType::Text, b"alice@example.com");
        assert_eq!(text_key.shown, "<text, 17 bytes>");
        assert_eq!(text_key.sample.as_deref(), Some("\"alice@\"… (17 bytes)"));
        assert_eq!(KeyText::text(&PgType::Int8, b"42").shown, "42");
        assert_eq!(
            KeyText::binary(&PgType::Int4, &7i32.to_be_bytes()).shown,
            "7"
        );
        let money = PgType::Decimal {
            precision: 10,
            scale: 2,
        };
        assert_eq!(KeyText::text(&money, b"-0.05").shown, "-0.05");
        let v = numeric_bytes(3, 1, 0, 3, &[1, 2345, 6780]);
        let thousands = PgType::Decimal {
            precision: 10,
            scale: 3,
        };
        assert_eq!(KeyText::binary(&thousands, &v).shown, "12345.678");
        let whole = PgType::Decimal {
            precision: 10,
            scale: 0,
        };
        assert_eq!(KeyText::text(&whole, b"120").shown, "120");
        let bin = KeyText::binary(&PgType::Text, b"bob");
        assert_eq!(bin.shown, "<text, 3 bytes>");
        // A value that claims to be an integer key but is not one is withheld too.
        assert_eq!(KeyText::text(&PgType::Int4, b"x1").shown, "<int4, 2 bytes>");
    }
}
