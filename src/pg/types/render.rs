//! Arrow values back into PostgreSQL's text form and into JSON, for the Redis sink.
//!
//! A [`Render`] is built once per column (the type dispatch happens there) and then writes
//! row after row into a byte buffer, without allocating per value.
//!
//! **Text form** — what PostgreSQL prints for the value on godwit's session (DateStyle ISO,
//! TimeZone UTC, IntervalStyle iso_8601, extra_float_digits 3), i.e. `SELECT col::text`, with
//! two exceptions where the Arrow value already holds the type's output form: `char(n)` keeps
//! its blank padding and `inet`/`cidr` have no `/32` added. Booleans are `true`/`false`
//! (inside arrays `t`/`f`, as PostgreSQL's array output writes them). Arrays are PostgreSQL's
//! `{…}` form, with elements quoted as PostgreSQL quotes them; lower bounds other than 1 are
//! not kept in Arrow, so they are not shown. `infinity`/`-infinity` dates and timestamps
//! (stored as the Arrow type's largest/smallest value) are `infinity`/`-infinity`.
//!
//! **JSON form** — one JSON type per column: integers and finite floats are numbers (floats in
//! PostgreSQL's shortest text); NaN and ±infinity floats are the strings `"NaN"`,
//! `"Infinity"`, `"-Infinity"` (as PostgreSQL's `to_json` writes them). numeric (Decimal128,
//! or the exact text of numeric/money) is a number, written in PostgreSQL's text, when the
//! value survives a round trip through an f64 exactly, otherwise its exact text as a string
//! (NaN and ±Infinity too). Booleans are `true`/`false`; json/jsonb the embedded value. bytea
//! is base64 (standard alphabet, padded). date is `YYYY-MM-DD`; time `HH:MM:SS[.ffffff]`;
//! timestamp `YYYY-MM-DDTHH:MM:SS[.ffffff]` and timestamptz the same with `Z`, microseconds
//! with trailing zeros trimmed; years before 1 or after 9999 in ISO 8601's expanded form
//! (`-4712-01-01` is 4713 BC, `10000-01-01`), as PostgreSQL's `to_json` does; `infinity` and
//! `-infinity` as those strings. Arrays are JSON arrays (nested; NULL elements are `null`).
//! Every other type is its text form as a string.

use std::fmt::Write as _;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use base64::Engine as _;

use super::{PgType, TextCast};

/// Renders one column of a batch for Redis; built once per column.
#[derive(Debug, Clone)]
pub struct Render {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float32,
    Float64,
    Decimal {
        scale: i8,
    },
    Utf8 {
        json: Utf8Json,
    },
    LargeUtf8,
    Binary,
    Date,
    Time,
    Timestamp {
        utc: bool,
    },
    List(Box<Kind>),
    /// Types godwit never produces: arrow's own display, as a JSON string.
    Other,
}

/// What a Utf8 value is in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Utf8Json {
    String,
    /// The exact text of a numeric (or money as numeric).
    Numeric,
    /// json/jsonb: the text is the JSON value itself.
    Embedded,
}

const JSON_EXTENSION: &str = "arrow.json";

impl Render {
    /// From the Arrow field alone: JSON columns are recognised by their JSON extension type;
    /// any other Utf8 value is a JSON string.
    pub fn new(field: &Field) -> Render {
        let json = field
            .metadata()
            .get("ARROW:extension:name")
            .is_some_and(|n| n == JSON_EXTENSION);
        Render {
            kind: kind(field.data_type(), None, json),
        }
    }

    /// From the Arrow field and the column's PostgreSQL type: also knows numeric kept as text
    /// (a JSON number where exact) and arrays of json/jsonb (embedded values).
    pub fn with_type(field: &Field, t: &PgType) -> Render {
        let json = matches!(t, PgType::Json | PgType::Jsonb);
        Render {
            kind: kind(field.data_type(), Some(t), json),
        }
    }

    /// The PostgreSQL text form of row `i`, appended to `out`; false for NULL (nothing
    /// appended).
    pub fn text(&self, array: &dyn Array, i: usize, out: &mut Vec<u8>) -> bool {
        if array.is_null(i) {
            return false;
        }
        text_value(&self.kind, array, i, out, false);
        true
    }

    /// The JSON form of row `i`, appended to `out` as JSON text (`null` for NULL).
    pub fn json(&self, array: &dyn Array, i: usize, out: &mut Vec<u8>) {
        json_value(&self.kind, array, i, out);
    }
}

fn kind(t: &DataType, pg: Option<&PgType>, json: bool) -> Kind {
    match t {
        DataType::Boolean => Kind::Bool,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int32,
        DataType::Int64 => Kind::Int64,
        DataType::UInt8 => Kind::UInt8,
        DataType::UInt16 => Kind::UInt16,
        DataType::UInt32 => Kind::UInt32,
        DataType::UInt64 => Kind::UInt64,
        DataType::Float32 => Kind::Float32,
        DataType::Float64 => Kind::Float64,
        DataType::Decimal128(_, scale) if *scale >= 0 => Kind::Decimal { scale: *scale },
        DataType::Utf8 => {
            let numeric = matches!(
                pg,
                Some(PgType::AsText {
                    cast: TextCast::Numeric | TextCast::Money
                })
            );
            let json = if json || matches!(pg, Some(PgType::Json | PgType::Jsonb)) {
                Utf8Json::Embedded
            } else if numeric {
                Utf8Json::Numeric
            } else {
                Utf8Json::String
            };
            Kind::Utf8 { json }
        }
        DataType::LargeUtf8 => Kind::LargeUtf8,
        DataType::Binary => Kind::Binary,
        DataType::Date32 => Kind::Date,
        DataType::Time64(TimeUnit::Microsecond) => Kind::Time,
        DataType::Timestamp(TimeUnit::Microsecond, tz) => Kind::Timestamp { utc: tz.is_some() },
        DataType::List(item) => {
            let elem = match pg {
                Some(PgType::Array { elem, .. }) => Some(elem.as_ref()),
                _ => None,
            };
            Kind::List(Box::new(kind(item.data_type(), elem, json)))
        }
        _ => Kind::Other,
    }
}

// ---------------------------------------------------------------------------------------
// Text form

fn text_value(k: &Kind, a: &dyn Array, i: usize, out: &mut Vec<u8>, in_array: bool) {
    match k {
        Kind::Bool => {
            let v = a.as_boolean().value(i);
            out.extend_from_slice(match (v, in_array) {
                (true, false) => b"true",
                (false, false) => b"false",
                (true, true) => b"t",
                (false, true) => b"f",
            });
        }
        Kind::Int8 => int(out, a.as_primitive::<Int8Type>().value(i)),
        Kind::Int16 => int(out, a.as_primitive::<Int16Type>().value(i)),
        Kind::Int32 => int(out, a.as_primitive::<Int32Type>().value(i)),
        Kind::Int64 => int(out, a.as_primitive::<Int64Type>().value(i)),
        Kind::UInt8 => int(out, a.as_primitive::<UInt8Type>().value(i)),
        Kind::UInt16 => int(out, a.as_primitive::<UInt16Type>().value(i)),
        Kind::UInt32 => int(out, a.as_primitive::<UInt32Type>().value(i)),
        Kind::UInt64 => int(out, a.as_primitive::<UInt64Type>().value(i)),
        Kind::Float32 => float4(out, a.as_primitive::<Float32Type>().value(i)),
        Kind::Float64 => float8(out, a.as_primitive::<Float64Type>().value(i)),
        Kind::Decimal { scale } => {
            decimal(out, a.as_primitive::<Decimal128Type>().value(i), *scale)
        }
        Kind::Utf8 { .. } => {
            let s = a.as_string::<i32>().value(i);
            if in_array {
                array_element(out, s);
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
        Kind::LargeUtf8 => {
            let s = a.as_string::<i64>().value(i);
            if in_array {
                array_element(out, s);
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
        Kind::Binary => {
            let b = a.as_binary::<i32>().value(i);
            // `\x…` has a backslash: PostgreSQL quotes it inside an array and doubles it.
            out.extend_from_slice(if in_array { b"\"\\\\x" } else { b"\\x" });
            hex(out, b);
            if in_array {
                out.push(b'"');
            }
        }
        Kind::Date => {
            let start = out.len();
            date_text(out, a.as_primitive::<Date32Type>().value(i));
            // A BC date has a space.
            if in_array && out[start..].contains(&b' ') {
                quote_in_place(out, start);
            }
        }
        Kind::Time => time(out, a.as_primitive::<Time64MicrosecondType>().value(i)),
        Kind::Timestamp { utc } => {
            let start = out.len();
            timestamp_text(
                out,
                a.as_primitive::<TimestampMicrosecondType>().value(i),
                *utc,
            );
            if in_array && out[start..].contains(&b' ') {
                quote_in_place(out, start);
            }
        }
        Kind::List(elem) => {
            let list = a.as_list::<i32>();
            let offsets = list.value_offsets();
            let (from, to) = (offsets[i] as usize, offsets[i + 1] as usize);
            let values = list.values().as_ref();
            out.push(b'{');
            for j in from..to {
                if j > from {
                    out.push(b',');
                }
                if values.is_null(j) {
                    out.extend_from_slice(b"NULL");
                } else {
                    text_value(elem, values, j, out, true);
                }
            }
            out.push(b'}');
        }
        Kind::Other => {
            let s = other_text(a, i);
            if in_array {
                array_element(out, &s);
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Arrow's own display of a value of a type godwit does not produce (allocates; rare).
fn other_text(a: &dyn Array, i: usize) -> String {
    let opts = arrow::util::display::FormatOptions::default();
    match arrow::util::display::ArrayFormatter::try_new(a, &opts) {
        Ok(f) => f.value(i).to_string(),
        Err(_) => String::new(),
    }
}

/// An array element as PostgreSQL's array output writes it: double-quoted (with `\"` and
/// `\\`) when it is empty, is `NULL` in any case, or holds a quote, backslash, brace, comma
/// or white space.
fn array_element(out: &mut Vec<u8>, s: &str) {
    let needs = s.is_empty()
        || s.eq_ignore_ascii_case("NULL")
        || s.bytes().any(|b| {
            matches!(
                b,
                b'"' | b'\\' | b'{' | b'}' | b',' | b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C
            )
        });
    if !needs {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Wraps what was written since `start` in double quotes (it holds no quote or backslash).
fn quote_in_place(out: &mut Vec<u8>, start: usize) {
    out.insert(start, b'"');
    out.push(b'"');
}

fn hex(out: &mut Vec<u8>, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(b.len() * 2);
    for &x in b {
        out.push(DIGITS[(x >> 4) as usize]);
        out.push(DIGITS[(x & 15) as usize]);
    }
}

/// A fixed buffer for `{:e}` output (no allocation).
struct Stack {
    buf: [u8; 40],
    len: usize,
}

impl std::fmt::Write for Stack {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The shortest digits that read back as `v` (finite, non-zero, positive) and the decimal
/// exponent of the first digit: `1.5e-5` → (`15`, -5).
fn shortest(v: impl std::fmt::LowerExp) -> (Stack, usize, i32) {
    let mut s = Stack {
        buf: [0; 40],
        len: 0,
    };
    // `{:e}` is the shortest round-trip form: `d[.ddd]e[-]x`.
    let _ = write!(s, "{v:e}");
    let text = &s.buf[..s.len];
    let e = text.iter().position(|&b| b == b'e').unwrap_or(text.len());
    let exp: i32 = std::str::from_utf8(&text[e + 1..])
        .ok()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    // Digits only (drop the point) in place.
    let mut n = 0;
    for k in 0..e {
        if s.buf[k] != b'.' {
            s.buf[n] = s.buf[k];
            n += 1;
        }
    }
    (s, n, exp)
}

/// float8out: shortest exact digits; fixed-point while the decimal exponent is in -4..15,
/// otherwise `d.ddde±XX` (at least two exponent digits).
fn float8(out: &mut Vec<u8>, v: f64) {
    float(
        out,
        v.is_nan(),
        v.is_infinite(),
        v == 0.0,
        v.is_sign_negative(),
        15,
        || shortest(v.abs()),
    );
}

/// float4out: as float8out with fixed-point while the exponent is in -4..6.
fn float4(out: &mut Vec<u8>, v: f32) {
    float(
        out,
        v.is_nan(),
        v.is_infinite(),
        v == 0.0,
        v.is_sign_negative(),
        6,
        || shortest(v.abs()),
    );
}

fn float(
    out: &mut Vec<u8>,
    nan: bool,
    inf: bool,
    zero: bool,
    negative: bool,
    fixed_below: i32,
    digits: impl FnOnce() -> (Stack, usize, i32),
) {
    if nan {
        out.extend_from_slice(b"NaN");
        return;
    }
    if negative {
        out.push(b'-');
    }
    if inf {
        out.extend_from_slice(b"Infinity");
        return;
    }
    if zero {
        out.push(b'0');
        return;
    }
    let (s, n, exp) = digits();
    let d = &s.buf[..n];
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.extend_from_slice(b"0.");
            out.extend(std::iter::repeat_n(b'0', (-exp - 1) as usize));
            out.extend_from_slice(d);
        } else {
            let int_digits = exp as usize + 1;
            if n <= int_digits {
                out.extend_from_slice(d);
                out.extend(std::iter::repeat_n(b'0', int_digits - n));
            } else {
                out.extend_from_slice(&d[..int_digits]);
                out.push(b'.');
                out.extend_from_slice(&d[int_digits..]);
            }
        }
    } else {
        out.push(d[0]);
        if n > 1 {
            out.push(b'.');
            out.extend_from_slice(&d[1..]);
        }
        out.push(b'e');
        out.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            out.push(b'0');
        }
        int(out, e);
    }
}

/// A Decimal128 value in numeric's text form: all `scale` fraction digits.
fn decimal(out: &mut Vec<u8>, unscaled: i128, scale: i8) {
    if unscaled < 0 {
        out.push(b'-');
    }
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(unscaled.unsigned_abs()).as_bytes();
    let scale = scale as usize;
    if scale == 0 {
        out.extend_from_slice(digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    } else {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', scale - digits.len()));
        out.extend_from_slice(digits);
    }
}

/// Days since 1970-01-01 → (astronomical year, month, day) in the proleptic Gregorian calendar.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn two(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// A year of at least four digits.
fn year4(out: &mut Vec<u8>, y: u64) {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(y).as_bytes();
    out.extend(std::iter::repeat_n(b'0', 4usize.saturating_sub(s.len())));
    out.extend_from_slice(s);
}

/// `YYYY-MM-DD`; `iso`: astronomical years (`-4712`), otherwise PostgreSQL's `4713 … BC`
/// (the caller appends ` BC` when this returns true).
fn ymd(out: &mut Vec<u8>, days: i64, iso: bool) -> bool {
    let (y, m, d) = civil(days);
    let bc = y <= 0;
    if iso {
        if y < 0 {
            out.push(b'-');
        }
        year4(out, y.unsigned_abs());
    } else {
        year4(out, if bc { (1 - y) as u64 } else { y as u64 });
    }
    out.push(b'-');
    two(out, m);
    out.push(b'-');
    two(out, d);
    bc && !iso
}

fn date_text(out: &mut Vec<u8>, days: i32) {
    match days {
        i32::MAX => out.extend_from_slice(b"infinity"),
        i32::MIN => out.extend_from_slice(b"-infinity"),
        _ => {
            if ymd(out, days as i64, false) {
                out.extend_from_slice(b" BC");
            }
        }
    }
}

/// `HH:MM:SS[.ffffff]`, trailing zeros of the fraction trimmed (24:00:00 stays).
fn time(out: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) as u32;
    two(out, (secs / 3600) as u32);
    out.push(b':');
    two(out, ((secs / 60) % 60) as u32);
    out.push(b':');
    two(out, (secs % 60) as u32);
    if frac != 0 {
        out.push(b'.');
        let mut f = frac;
        let mut width = 6;
        while f.is_multiple_of(10) {
            f /= 10;
            width -= 1;
        }
        let mut buf = itoa::Buffer::new();
        let s = buf.format(f).as_bytes();
        out.extend(std::iter::repeat_n(b'0', width - s.len()));
        out.extend_from_slice(s);
    }
}

const DAY_MICROS: i64 = 86_400_000_000;

fn timestamp_text(out: &mut Vec<u8>, micros: i64, utc: bool) {
    match micros {
        i64::MAX => out.extend_from_slice(b"infinity"),
        i64::MIN => out.extend_from_slice(b"-infinity"),
        _ => {
            let bc = ymd(out, micros.div_euclid(DAY_MICROS), false);
            out.push(b' ');
            time(out, micros.rem_euclid(DAY_MICROS));
            if utc {
                out.extend_from_slice(b"+00");
            }
            if bc {
                out.extend_from_slice(b" BC");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// JSON form

fn json_value(k: &Kind, a: &dyn Array, i: usize, out: &mut Vec<u8>) {
    if a.is_null(i) {
        out.extend_from_slice(b"null");
        return;
    }
    match k {
        Kind::Bool
        | Kind::Int8
        | Kind::Int16
        | Kind::Int32
        | Kind::Int64
        | Kind::UInt8
        | Kind::UInt16
        | Kind::UInt32
        | Kind::UInt64 => text_value(k, a, i, out, false),
        Kind::Float32 => {
            let v = a.as_primitive::<Float32Type>().value(i);
            float_json(out, v.is_finite(), |out| float4(out, v));
        }
        Kind::Float64 => {
            let v = a.as_primitive::<Float64Type>().value(i);
            float_json(out, v.is_finite(), |out| float8(out, v));
        }
        Kind::Decimal { scale } => {
            let start = out.len();
            decimal(out, a.as_primitive::<Decimal128Type>().value(i), *scale);
            if !exact_in_f64(&out[start..]) {
                quote_in_place(out, start);
            }
        }
        Kind::Utf8 { json } => {
            let s = a.as_string::<i32>().value(i);
            match json {
                Utf8Json::Embedded => out.extend_from_slice(s.as_bytes()),
                Utf8Json::Numeric if exact_in_f64(s.as_bytes()) => {
                    out.extend_from_slice(s.as_bytes())
                }
                _ => json_string(out, s),
            }
        }
        Kind::LargeUtf8 => json_string(out, a.as_string::<i64>().value(i)),
        Kind::Binary => {
            let b = a.as_binary::<i32>().value(i);
            out.push(b'"');
            let start = out.len();
            out.resize(start + b.len().div_ceil(3) * 4, 0);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(b, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + n);
            out.push(b'"');
        }
        Kind::Date => {
            let days = a.as_primitive::<Date32Type>().value(i);
            out.push(b'"');
            match days {
                i32::MAX => out.extend_from_slice(b"infinity"),
                i32::MIN => out.extend_from_slice(b"-infinity"),
                _ => {
                    ymd(out, days as i64, true);
                }
            }
            out.push(b'"');
        }
        Kind::Time => {
            out.push(b'"');
            time(out, a.as_primitive::<Time64MicrosecondType>().value(i));
            out.push(b'"');
        }
        Kind::Timestamp { utc } => {
            let micros = a.as_primitive::<TimestampMicrosecondType>().value(i);
            out.push(b'"');
            match micros {
                i64::MAX => out.extend_from_slice(b"infinity"),
                i64::MIN => out.extend_from_slice(b"-infinity"),
                _ => {
                    ymd(out, micros.div_euclid(DAY_MICROS), true);
                    out.push(b'T');
                    time(out, micros.rem_euclid(DAY_MICROS));
                    if *utc {
                        out.push(b'Z');
                    }
                }
            }
            out.push(b'"');
        }
        Kind::List(elem) => {
            let list = a.as_list::<i32>();
            let offsets = list.value_offsets();
            let (from, to) = (offsets[i] as usize, offsets[i + 1] as usize);
            let values = list.values().as_ref();
            out.push(b'[');
            for j in from..to {
                if j > from {
                    out.push(b',');
                }
                json_value(elem, values, j, out);
            }
            out.push(b']');
        }
        Kind::Other => json_string(out, &other_text(a, i)),
    }
}

fn float_json(out: &mut Vec<u8>, finite: bool, text: impl FnOnce(&mut Vec<u8>)) {
    if finite {
        text(out);
    } else {
        out.push(b'"');
        text(out);
        out.push(b'"');
    }
}

/// A JSON string: `"` and `\` escaped, control characters as `\n`, `\t`, … or `\u00XX`.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut done = 0;
    for (k, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[done..k]);
        if esc.is_empty() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(DIGITS[(b >> 4) as usize]);
            out.push(DIGITS[(b & 15) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        done = k + 1;
    }
    out.extend_from_slice(&bytes[done..]);
    out.push(b'"');
}

/// Whether a decimal in numeric's text form (`-12.50`; no exponent) reads back unchanged
/// from the nearest f64: the f64's shortest digits are the decimal's significant digits, at
/// the same place. NaN, Infinity and anything not a plain decimal are not.
fn exact_in_f64(text: &[u8]) -> bool {
    let body = text.strip_prefix(b"-").unwrap_or(text);
    if body.is_empty() || !body.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    if body.iter().filter(|&&b| b == b'.').count() > 1 {
        return false;
    }
    let point = body.iter().position(|&b| b == b'.').unwrap_or(body.len());
    // Significant digits: from the first non-zero digit to the last one.
    let digit_at = |k: usize| body[k] != b'.' && body[k] != b'0';
    let Some(first) = (0..body.len()).find(|&k| digit_at(k)) else {
        return true; // zero
    };
    let last = (0..body.len())
        .rev()
        .find(|&k| digit_at(k))
        .unwrap_or(first);
    let count = (first..=last).filter(|&k| body[k] != b'.').count();
    if count > 17 {
        return false;
    }
    // Decimal exponent of the first significant digit.
    let exp = if first < point {
        (point - first - 1) as i32
    } else {
        -((first - point) as i32)
    };
    if count <= 15 && (-307..=308).contains(&exp) {
        return true; // 15 significant digits always survive (DBL_DIG)
    }
    let Some(v) = std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    else {
        return false;
    };
    if !v.is_finite() || v == 0.0 {
        return false;
    }
    let (s, n, e) = shortest(v);
    if e != exp || n != count {
        return false;
    }
    let mut k = 0;
    (first..=last).filter(|&p| body[p] != b'.').all(|p| {
        let same = body[p] == s.buf[k];
        k += 1;
        same
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
        Float64Array, Int32Array, ListArray, StringArray, Time64MicrosecondArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::Int32Type as I32;

    fn text_of(r: &Render, a: &dyn Array, i: usize) -> Option<String> {
        let mut out = Vec::new();
        r.text(a, i, &mut out)
            .then(|| String::from_utf8(out).unwrap())
    }

    fn texts(a: ArrayRef) -> Vec<Option<String>> {
        let r = Render::new(&Field::new("v", a.data_type().clone(), true));
        (0..a.len()).map(|i| text_of(&r, a.as_ref(), i)).collect()
    }

    fn jsons(a: ArrayRef) -> Vec<String> {
        let r = Render::new(&Field::new("v", a.data_type().clone(), true));
        (0..a.len())
            .map(|i| {
                let mut out = Vec::new();
                r.json(a.as_ref(), i, &mut out);
                String::from_utf8(out).unwrap()
            })
            .collect()
    }

    fn f8(v: f64) -> String {
        let mut out = Vec::new();
        float8(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    fn f4(v: f32) -> String {
        let mut out = Vec::new();
        float4(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn float8_switches_to_exponent_form_where_postgresql_does() {
        let cases = [
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (1.0, "1"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (-12.25, "-12.25"),
            (0.0001, "0.0001"),
            (0.00015, "0.00015"),
            (0.00001, "1e-05"),
            (0.000015, "1.5e-05"),
            (1e14, "100000000000000"),
            (123456789012345.6, "123456789012345.6"),
            (1e15, "1e+15"),
            (1.5e15, "1.5e+15"),
            (1e20, "1e+20"),
            (1e100, "1e+100"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (2.2250738585072014e-308, "2.2250738585072014e-308"),
        ];
        for (v, want) in cases {
            assert_eq!(f8(v), want, "{v:e}");
        }
    }

    #[test]
    fn float4_switches_to_exponent_form_where_postgresql_does() {
        let cases = [
            (0.0f32, "0"),
            (-0.0, "-0"),
            (f32::NAN, "NaN"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (99999.0, "99999"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (3.4028235e38, "3.4028235e+38"),
            (1.4e-45, "1e-45"),
        ];
        for (v, want) in cases {
            assert_eq!(f4(v), want, "{v:e}");
        }
    }

    #[test]
    fn array_elements_are_quoted_as_postgresql_quotes_them() {
        let values = StringArray::from(vec![
            Some("a"),
            Some(""),
            None,
            Some("ü é"),
            Some("{}"),
            Some("null"),
            Some("a\"b\\c"),
            Some("x,y"),
            Some("tab\there"),
            Some("NULLS"),
        ]);
        let list = ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            arrow::buffer::OffsetBuffer::from_lengths([10, 0]),
            Arc::new(values),
            None,
        );
        assert_eq!(
            texts(Arc::new(list)),
            [
                Some(
                    "{a,\"\",NULL,\"ü é\",\"{}\",\"null\",\"a\\\"b\\\\c\",\"x,y\",\"tab\there\",NULLS}"
                        .into()
                ),
                Some("{}".into())
            ]
        );
        // Nested, booleans as t/f, bytea quoted with its backslash doubled.
        let grid = ListArray::from_iter_primitive::<I32, _, _>([Some(vec![Some(1), None])]);
        let grid = ListArray::new(
            Arc::new(Field::new("item", grid.data_type().clone(), true)),
            arrow::buffer::OffsetBuffer::from_lengths([1]),
            Arc::new(grid),
            None,
        );
        assert_eq!(texts(Arc::new(grid.clone())), [Some("{{1,NULL}}".into())]);
        assert_eq!(jsons(Arc::new(grid)), ["[[1,null]]"]);
        let bools = BooleanArray::from(vec![Some(true), Some(false)]);
        let bools = ListArray::new(
            Arc::new(Field::new("item", DataType::Boolean, true)),
            arrow::buffer::OffsetBuffer::from_lengths([2]),
            Arc::new(bools),
            None,
        );
        assert_eq!(texts(Arc::new(bools)), [Some("{t,f}".into())]);
        let bytes = BinaryArray::from(vec![Some(&b"\x00\xff"[..]), Some(&b""[..])]);
        let bytes = ListArray::new(
            Arc::new(Field::new("item", DataType::Binary, true)),
            arrow::buffer::OffsetBuffer::from_lengths([2]),
            Arc::new(bytes),
            None,
        );
        assert_eq!(
            texts(Arc::new(bytes.clone())),
            [Some(r#"{"\\x00ff","\\x"}"#.into())]
        );
        assert_eq!(jsons(Arc::new(bytes)), [r#"["AP8=",""]"#]);
    }

    #[test]
    fn dates_and_timestamps_with_bc_years_and_infinity() {
        let days = |y: i64, m: i64, d: i64| super::super::days_from_civil(y, m, d) as i32;
        let dates = Date32Array::from(vec![
            0,
            days(-4712, 1, 1),
            days(0, 12, 31),
            days(10000, 1, 1),
            i32::MAX,
            i32::MIN,
        ]);
        assert_eq!(
            texts(Arc::new(dates.clone())),
            [
                "1970-01-01",
                "4713-01-01 BC",
                "0001-12-31 BC",
                "10000-01-01",
                "infinity",
                "-infinity"
            ]
            .map(|s| Some(s.to_string()))
        );
        assert_eq!(
            jsons(Arc::new(dates)),
            [
                "\"1970-01-01\"",
                "\"-4712-01-01\"",
                "\"0000-12-31\"",
                "\"10000-01-01\"",
                "\"infinity\"",
                "\"-infinity\""
            ]
        );
        let us = |d: i32| d as i64 * DAY_MICROS;
        let ts = vec![
            us(days(-4712, 1, 1)) + 1_500_000,
            -1,
            us(days(2024, 6, 1)) + 45_296_120_000,
            i64::MAX,
            i64::MIN,
        ];
        let plain = TimestampMicrosecondArray::from(ts.clone());
        assert_eq!(
            texts(Arc::new(plain.clone())),
            [
                "4713-01-01 00:00:01.5 BC",
                "1969-12-31 23:59:59.999999",
                "2024-06-01 12:34:56.12",
                "infinity",
                "-infinity"
            ]
            .map(|s| Some(s.to_string()))
        );
        assert_eq!(
            jsons(Arc::new(plain)),
            [
                "\"-4712-01-01T00:00:01.5\"",
                "\"1969-12-31T23:59:59.999999\"",
                "\"2024-06-01T12:34:56.12\"",
                "\"infinity\"",
                "\"-infinity\""
            ]
        );
        let utc = TimestampMicrosecondArray::from(ts).with_timezone("UTC");
        assert_eq!(
            texts(Arc::new(utc.clone()))[..3],
            [
                "4713-01-01 00:00:01.5+00 BC",
                "1969-12-31 23:59:59.999999+00",
                "2024-06-01 12:34:56.12+00",
            ]
            .map(|s| Some(s.to_string()))
        );
        assert_eq!(jsons(Arc::new(utc))[2], "\"2024-06-01T12:34:56.12Z\"");
        let times = Time64MicrosecondArray::from(vec![0, 86_400_000_000, 45_296_500_000, 1]);
        assert_eq!(
            texts(Arc::new(times)),
            ["00:00:00", "24:00:00", "12:34:56.5", "00:00:00.000001"].map(|s| Some(s.to_string()))
        );
    }

    #[test]
    fn numerics_are_json_numbers_only_when_exact() {
        let dec = Decimal128Array::from(vec![Some(1250), Some(-1), Some(0), None])
            .with_precision_and_scale(10, 2)
            .unwrap();
        assert_eq!(
            texts(Arc::new(dec.clone())),
            [
                Some("12.50".into()),
                Some("-0.01".into()),
                Some("0.00".into()),
                None
            ]
        );
        assert_eq!(jsons(Arc::new(dec)), ["12.50", "-0.01", "0.00", "null"]);
        let big = Decimal128Array::from(vec![
            99_999_999_999_999_999_999_999_999_999_999_999_999i128,
            1_234_567_890_123_456,
            9_007_199_254_740_993,
        ])
        .with_precision_and_scale(38, 0)
        .unwrap();
        assert_eq!(
            jsons(Arc::new(big)),
            [
                "\"99999999999999999999999999999999999999\"",
                "1234567890123456",
                "\"9007199254740993\""
            ]
        );
        for (text, exact) in [
            ("0.1", true),
            ("1000000000000000000000000000000000000000", true),
            ("0.000001", true),
            ("123456789012345678", false),
            ("0.30000000000000004", true),
            ("0.30000000000000001", false),
            ("NaN", false),
            ("-Infinity", false),
            ("1e5", false),
            ("", false),
            ("-", false),
        ] {
            assert_eq!(exact_in_f64(text.as_bytes()), exact, "{text}");
        }
        let numeric = StringArray::from(vec!["1.5", "NaN", "123456789012345678901"]);
        let field = Field::new("v", DataType::Utf8, true);
        let t = PgType::AsText {
            cast: TextCast::Numeric,
        };
        let r = Render::with_type(&field, &t);
        let got: Vec<String> = (0..3)
            .map(|i| {
                let mut out = Vec::new();
                r.json(&numeric, i, &mut out);
                String::from_utf8(out).unwrap()
            })
            .collect();
        assert_eq!(got, ["1.5", "\"NaN\"", "\"123456789012345678901\""]);
        assert_eq!(
            jsons(Arc::new(numeric)),
            ["\"1.5\"", "\"NaN\"", "\"123456789012345678901\""]
        );
    }

    #[test]
    fn json_strings_floats_and_embedded_json() {
        let s = StringArray::from(vec!["a\"b\\c\n\u{1}ü"]);
        assert_eq!(jsons(Arc::new(s)), [r#""a\"b\\c\n\u0001ü""#]);
        let f = Float64Array::from(vec![f64::NAN, f64::NEG_INFINITY, 1e20, -0.0]);
        assert_eq!(
            jsons(Arc::new(f)),
            ["\"NaN\"", "\"-Infinity\"", "1e+20", "-0"]
        );
        let f = Float32Array::from(vec![f32::INFINITY, 1.5e-5]);
        assert_eq!(jsons(Arc::new(f)), ["\"Infinity\"", "1.5e-05"]);
        let field = Field::new("v", DataType::Utf8, true)
            .with_extension_type(arrow_schema::extension::Json::default());
        let doc = StringArray::from(vec![Some(r#"{"a": [1, 2.50]}"#), None]);
        let r = Render::new(&field);
        let mut out = Vec::new();
        r.json(&doc, 0, &mut out);
        out.push(b' ');
        r.json(&doc, 1, &mut out);
        assert_eq!(out, br#"{"a": [1, 2.50]} null"#);
        let ints = Int32Array::from(vec![Some(-7), None]);
        assert_eq!(jsons(Arc::new(ints.clone())), ["-7", "null"]);
        assert_eq!(texts(Arc::new(ints)), [Some("-7".into()), None]);
    }
}
