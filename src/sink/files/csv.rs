//! CSV encoding with DMS's defaults: no header unless asked, RFC 4180 quoting, NULL as an
//! empty unquoted field (or `csv_null_value`) and the empty string as `""`, optional gzip.
//!
//! Values are written in PostgreSQL's text form (DateStyle ISO, TimeZone UTC: `2024-06-01
//! 10:00:00.5+00`, `t`/`f`, `infinity`, `\x00ff` for bytea, BC years as PostgreSQL writes
//! them); arrays as JSON arrays (`[1,null,3]`, nested for more dimensions). The csv crate
//! cannot tell a NULL from an empty string, so the quoting is done here.

use std::fmt::Write as _;
use std::io::{self, Write};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use flate2::write::GzEncoder;

use super::ObjectWriter;
use super::writer::{EncodeError, FileEncoder};

/// The CSV settings of the target.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: char,
    pub null_value: String,
    pub header: bool,
    pub gzip: bool,
}

/// Counts what reaches the object (compressed bytes with gzip).
struct Counting {
    inner: Box<dyn ObjectWriter>,
    count: u64,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Out {
    Plain(io::BufWriter<Counting>),
    Gzip(GzEncoder<Counting>),
}

/// One CSV file being written into an object.
pub struct CsvEncoder {
    out: Out,
    options: CsvOptions,
    header: Option<Vec<String>>,
    line: String,
    cell: String,
}

impl CsvEncoder {
    pub fn new(
        object: Box<dyn ObjectWriter>,
        names: Vec<String>,
        options: CsvOptions,
    ) -> CsvEncoder {
        let counting = Counting {
            inner: object,
            count: 0,
        };
        let out = if options.gzip {
            Out::Gzip(GzEncoder::new(counting, flate2::Compression::default()))
        } else {
            Out::Plain(io::BufWriter::with_capacity(1 << 20, counting))
        };
        CsvEncoder {
            out,
            header: options.header.then_some(names),
            options,
            line: String::new(),
            cell: String::new(),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        let bytes = self.line.as_bytes();
        match &mut self.out {
            Out::Plain(w) => w.write_all(bytes),
            Out::Gzip(w) => w.write_all(bytes),
        }
    }

    fn push_field(&mut self, first: bool, value: Option<&str>) {
        if !first {
            self.line.push(self.options.delimiter);
        }
        match value {
            None => self.line.push_str(&self.options.null_value),
            Some("") => self.line.push_str("\"\""),
            Some(v) if needs_quotes(v, self.options.delimiter) => {
                self.line.push('"');
                self.line.push_str(&v.replace('"', "\"\""));
                self.line.push('"');
            }
            Some(v) => self.line.push_str(v),
        }
    }
}

fn needs_quotes(v: &str, delimiter: char) -> bool {
    v.contains(delimiter) || v.contains(['"', '\n', '\r'])
}

impl FileEncoder for CsvEncoder {
    fn write(&mut self, batch: &RecordBatch, _input_bytes: usize) -> Result<(), EncodeError> {
        if let Some(names) = self.header.take() {
            self.line.clear();
            for (i, n) in names.iter().enumerate() {
                self.push_field(i == 0, Some(n));
            }
            self.line.push('\n');
            self.emit()?;
        }
        for row in 0..batch.num_rows() {
            self.line.clear();
            for (i, col) in batch.columns().iter().enumerate() {
                if col.is_null(row) {
                    self.push_field(i == 0, None);
                } else {
                    let mut cell = std::mem::take(&mut self.cell);
                    cell.clear();
                    render(col, row, &mut cell);
                    self.push_field(i == 0, Some(&cell));
                    self.cell = cell;
                }
            }
            self.line.push('\n');
            self.emit()?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        match &self.out {
            Out::Plain(w) => w.get_ref().count + w.buffer().len() as u64,
            Out::Gzip(w) => w.get_ref().count,
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Box<dyn ObjectWriter>, EncodeError> {
        if self.header.is_some() {
            // A table without rows still gets its header line.
            let schema = arrow::datatypes::Schema::empty();
            self.write(&RecordBatch::new_empty(std::sync::Arc::new(schema)), 0)?;
        }
        let counting = match self.out {
            Out::Plain(w) => w.into_inner().map_err(|e| e.into_error())?,
            Out::Gzip(w) => w.finish()?,
        };
        Ok(counting.inner)
    }
}

/// Appends the text form of a non-null value.
fn render(a: &ArrayRef, i: usize, out: &mut String) {
    match a.data_type() {
        DataType::Int16 => write_display(out, a.as_primitive::<Int16Type>().value(i)),
        DataType::Int32 => write_display(out, a.as_primitive::<Int32Type>().value(i)),
        DataType::Int64 => write_display(out, a.as_primitive::<Int64Type>().value(i)),
        DataType::Float32 => float(out, a.as_primitive::<Float32Type>().value(i) as f64, |o| {
            let _ = write!(o, "{:?}", a.as_primitive::<Float32Type>().value(i));
        }),
        DataType::Float64 => float(out, a.as_primitive::<Float64Type>().value(i), |o| {
            let _ = write!(o, "{:?}", a.as_primitive::<Float64Type>().value(i));
        }),
        DataType::Boolean => out.push(if a.as_boolean().value(i) { 't' } else { 'f' }),
        DataType::Decimal128(_, _) => {
            out.push_str(&a.as_primitive::<Decimal128Type>().value_as_string(i))
        }
        DataType::Utf8 => out.push_str(a.as_string::<i32>().value(i)),
        DataType::Binary => {
            out.push_str("\\x");
            for b in a.as_binary::<i32>().value(i) {
                let _ = write!(out, "{b:02x}");
            }
        }
        DataType::Date32 => match a.as_primitive::<Date32Type>().value(i) {
            i32::MAX => out.push_str("infinity"),
            i32::MIN => out.push_str("-infinity"),
            d => {
                let (y, m, day) = civil_from_days(d as i64);
                date(out, y, m, day);
                bc(out, y);
            }
        },
        DataType::Time64(TimeUnit::Microsecond) => {
            time(out, a.as_primitive::<Time64MicrosecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            match a.as_primitive::<TimestampMicrosecondType>().value(i) {
                i64::MAX => out.push_str("infinity"),
                i64::MIN => out.push_str("-infinity"),
                us => {
                    let days = us.div_euclid(86_400_000_000);
                    let (y, m, d) = civil_from_days(days);
                    date(out, y, m, d);
                    out.push(' ');
                    time(out, us.rem_euclid(86_400_000_000));
                    if tz.is_some() {
                        out.push_str("+00");
                    }
                    bc(out, y);
                }
            }
        }
        DataType::List(_) => out.push_str(&json(a, i).to_string()),
        other => {
            let _ = write!(out, "<{other}>");
        }
    }
}

fn write_display(out: &mut String, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

fn float(out: &mut String, v: f64, shortest: impl FnOnce(&mut String)) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        shortest(out);
    }
}

/// `YYYY-MM-DD`, with PostgreSQL's year for dates before year 1 (`0` is 1 BC).
fn date(out: &mut String, y: i64, m: u32, d: u32) {
    let year = if y <= 0 { 1 - y } else { y };
    let _ = write!(out, "{year:04}-{m:02}-{d:02}");
}

fn bc(out: &mut String, y: i64) {
    if y <= 0 {
        out.push_str(" BC");
    }
}

/// `HH:MM:SS[.ffffff]` with trailing zeros of the fraction dropped (`24:00:00` kept).
fn time(out: &mut String, us: i64) {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01, for any i64 day
/// (PostgreSQL's range is wider than chrono's).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A list value as a JSON array (elements in their text form; numbers and booleans as JSON).
fn json(a: &ArrayRef, i: usize) -> serde_json::Value {
    use serde_json::Value;
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::List(_) => {
            let values = a.as_list::<i32>().value(i);
            Value::Array((0..values.len()).map(|j| json(&values, j)).collect())
        }
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::Decimal128(_, _) => {
            let mut s = String::new();
            render(a, i, &mut s);
            serde_json::from_str(&s).unwrap_or(Value::String(s))
        }
        DataType::Float32 | DataType::Float64 => {
            let mut s = String::new();
            render(a, i, &mut s);
            s.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or(Value::String(s))
        }
        _ => {
            let mut s = String::new();
            render(a, i, &mut s);
            Value::String(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let mut s = String::new();
        let (y, m, d) = civil_from_days(-2_440_588 - 365);
        date(&mut s, y, m, d);
        bc(&mut s, y);
        assert!(s.ends_with(" BC"), "{s}");
    }

    #[test]
    fn times_trim_fractions() {
        let mut s = String::new();
        time(&mut s, 45_296_500_000);
        assert_eq!(s, "12:34:56.5");
        s.clear();
        time(&mut s, 86_400_000_000);
        assert_eq!(s, "24:00:00");
    }
}
