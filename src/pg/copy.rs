//! Full load: `COPY (SELECT …) TO STDOUT (FORMAT binary)` decoded straight into Arrow
//! builders, cut into `RecordBatch`es by rows and bytes. No row objects in between.

use crate::batch::budget::{self, Reservation};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::types::{ColumnBuilder, DataError, KeyText, PgType};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// What to read and how to cut it.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// The complete `COPY (…) TO STDOUT (FORMAT binary)` statement.
    pub statement: String,
    /// The selected columns, in select order.
    pub columns: Vec<CopyColumn>,
    /// Positions of the key columns (for naming a bad row in an error).
    pub key_columns: Vec<usize>,
    pub batch_rows: usize,
    pub batch_bytes: u64,
}

/// One selected column.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyColumn {
    pub name: String,
    pub ty: PgType,
    /// `NOT NULL` in the source: a required field, and a NULL here is a bad row.
    pub not_null: bool,
}

impl CopySpec {
    /// The Arrow schema of the batches this COPY produces: `NOT NULL` columns are
    /// non-nullable (required in Parquet), every other column nullable.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| c.ty.arrow_field(&c.name, !c.not_null))
                .collect::<Vec<_>>(),
        ))
    }
}

/// A row that could not be converted (it is left out of every batch).
#[derive(Debug, Clone)]
pub struct RowError {
    /// 1-based position of the row in the COPY stream.
    pub row: u64,
    pub column: String,
    /// The row's key as `col=value, …` as [`KeyText`] shows it (or its position when the
    /// table has no usable key): safe for logs, events and `task.json`.
    pub key: String,
    /// Truncated prefixes of key values that `key` withholds, for the debug line only.
    pub key_sample: Option<String>,
    pub error: DataError,
}

impl RowError {
    /// The debug-level line with the truncated prefixes of the bad value and withheld keys.
    pub fn log_detail(&self, table: &str) {
        tracing::debug!(table = %table, row = self.row, column = %self.column,
            key = self.key_sample.as_deref().unwrap_or(&self.key),
            value = self.error.sample.as_deref().unwrap_or("-"),
            "data error detail (values truncated)");
    }
}

/// Errors of the COPY itself (as opposed to one bad value).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading COPY from PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("unexpected COPY data: {0}")]
    Protocol(String),
    #[error("building an Arrow batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Aborted(String),
    #[error("the batch consumer went away")]
    Closed,
}

enum Phase {
    Header,
    Rows,
    Done,
}

/// Turns the bytes of a binary COPY stream into record batches.
pub struct CopyDecoder {
    spec: CopySpec,
    schema: SchemaRef,
    builders: Vec<ColumnBuilder>,
    phase: Phase,
    pending: Vec<u8>,
    fields: Vec<(usize, i32)>,
    rows_in_batch: usize,
    bytes_in_batch: u64,
    rows_seen: u64,
    rows_out: u64,
}

/// What one call to [`CopyDecoder::feed`] produced.
#[derive(Default)]
pub struct Decoded {
    pub batches: Vec<RecordBatch>,
    pub errors: Vec<RowError>,
}

impl CopyDecoder {
    pub fn new(spec: CopySpec) -> CopyDecoder {
        let schema = spec.schema();
        let rows = spec.batch_rows.min(65_536);
        let builders = spec
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(&c.ty, rows))
            .collect();
        CopyDecoder {
            spec,
            schema,
            builders,
            phase: Phase::Header,
            pending: Vec::new(),
            fields: Vec::new(),
            rows_in_batch: 0,
            bytes_in_batch: 0,
            rows_seen: 0,
            rows_out: 0,
        }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows decoded into batches so far (bad rows excluded).
    pub fn rows_out(&self) -> u64 {
        self.rows_out
    }

    /// Feeds one chunk of the COPY stream.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Decoded) -> Result<(), CopyError> {
        if self.pending.is_empty() {
            let used = self.parse(chunk, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            let used = self.parse(&buf, out)?;
            buf.drain(..used);
            self.pending = buf;
        }
        Ok(())
    }

    /// Ends the stream: checks it was complete and returns the last partial batch.
    pub fn finish(&mut self, out: &mut Decoded) -> Result<(), CopyError> {
        if !matches!(self.phase, Phase::Done) || !self.pending.is_empty() {
            return Err(CopyError::Protocol(
                "the COPY stream ended before its trailer".into(),
            ));
        }
        self.cut(out)
    }

    /// Parses as much of `buf` as forms complete items; returns the bytes consumed.
    fn parse(&mut self, buf: &[u8], out: &mut Decoded) -> Result<usize, CopyError> {
        let mut pos = 0;
        loop {
            match self.phase {
                Phase::Done => {
                    if pos < buf.len() {
                        return Err(CopyError::Protocol("data after the COPY trailer".into()));
                    }
                    return Ok(pos);
                }
                Phase::Header => {
                    let fixed = SIGNATURE.len() + 8;
                    if buf.len() - pos < fixed {
                        return Ok(pos);
                    }
                    if &buf[pos..pos + SIGNATURE.len()] != SIGNATURE {
                        return Err(CopyError::Protocol("missing binary COPY signature".into()));
                    }
                    let ext = usize::try_from(be_i32(&buf[pos + SIGNATURE.len() + 4..])).map_err(
                        |_| CopyError::Protocol("a negative COPY header extension length".into()),
                    )?;
                    if buf.len() - pos - fixed < ext {
                        return Ok(pos);
                    }
                    pos += fixed + ext;
                    self.phase = Phase::Rows;
                }
                Phase::Rows => {
                    if buf.len() - pos < 2 {
                        return Ok(pos);
                    }
                    let count = i16::from_be_bytes([buf[pos], buf[pos + 1]]);
                    if count == -1 {
                        self.phase = Phase::Done;
                        pos += 2;
                        continue;
                    }
                    if count as usize != self.builders.len() {
                        return Err(CopyError::Protocol(format!(
                            "a row with {count} fields where {} were selected",
                            self.builders.len()
                        )));
                    }
                    // First pass: find every field; stop if the row is not complete yet.
                    self.fields.clear();
                    let mut p = pos + 2;
                    for _ in 0..count {
                        if buf.len() - p < 4 {
                            return Ok(pos);
                        }
                        let len = be_i32(&buf[p..]);
                        p += 4;
                        if len < -1 {
                            return Err(CopyError::Protocol(format!(
                                "a field of length {len} in the COPY data"
                            )));
                        }
                        if len > 0 {
                            if buf.len() - p < len as usize {
                                return Ok(pos);
                            }
                            self.fields.push((p, len));
                            p += len as usize;
                        } else {
                            self.fields.push((p, len));
                        }
                    }
                    self.append_row(buf, (p - pos) as u64, out)?;
                    pos = p;
                }
            }
        }
    }

    /// Appends one row to every builder, or — when a value does not convert — to none: the
    /// columns already appended are truncated back to where the row began.
    fn append_row(&mut self, buf: &[u8], bytes: u64, out: &mut Decoded) -> Result<(), CopyError> {
        self.rows_seen += 1;
        for (i, &(start, len)) in self.fields.iter().enumerate() {
            let value = (len >= 0).then(|| &buf[start..start + len as usize]);
            let appended = if value.is_none() && self.spec.columns[i].not_null {
                // The schema promises no NULL here; a row breaking it is a bad row, never
                // a batch Arrow refuses.
                Err(DataError {
                    problem: "NULL in a NOT NULL column".into(),
                    sample: None,
                })
            } else {
                self.builders[i].append(value)
            };
            if let Err(error) = appended {
                for b in &mut self.builders[..i] {
                    b.truncate(self.rows_in_batch);
                }
                let (key, key_sample) = self.describe_key(buf);
                out.errors.push(RowError {
                    row: self.rows_seen,
                    column: self.spec.columns[i].name.clone(),
                    key,
                    key_sample,
                    error,
                });
                return Ok(());
            }
        }
        self.rows_in_batch += 1;
        self.bytes_in_batch += bytes;
        if self.rows_in_batch >= self.spec.batch_rows
            || self.bytes_in_batch >= self.spec.batch_bytes
        {
            self.cut(out)?;
        }
        Ok(())
    }

    /// Finishes the current batch.
    fn cut(&mut self, out: &mut Decoded) -> Result<(), CopyError> {
        if self.rows_in_batch == 0 {
            return Ok(());
        }
        let columns = self
            .builders
            .iter_mut()
            .map(|b| b.finish())
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.rows_out += self.rows_in_batch as u64;
        self.rows_in_batch = 0;
        self.bytes_in_batch = 0;
        out.batches.push(batch);
        Ok(())
    }

    /// The current row's key as shown in errors, and the debug sample of withheld values.
    fn describe_key(&self, buf: &[u8]) -> (String, Option<String>) {
        if self.spec.key_columns.is_empty() {
            let at = format!("row {} of the COPY (the table has no key)", self.rows_seen);
            return (at, None);
        }
        KeyText::row(self.spec.key_columns.iter().map(|&k| {
            let (start, len) = self.fields[k];
            let c = &self.spec.columns[k];
            let key = if len < 0 {
                KeyText::plain("NULL")
            } else {
                KeyText::binary(&c.ty, &buf[start..start + len as usize])
            };
            (c.name.as_str(), key)
        }))
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A batch on its way to the encoder, with the bytes it holds against the memory budget
/// (given back when the batch is dropped after encoding).
pub type HeldBatch = (RecordBatch, Reservation);

/// Runs the COPY on `client` and sends every batch to `tx`. `on_error` decides what a bad
/// row does: `Ok` skips it, `Err` aborts the table. `rows` counts rows as they are read.
/// While the memory budget is full, reading waits (back-pressure into the COPY stream).
pub async fn run_copy(
    client: &tokio_postgres::Client,
    spec: CopySpec,
    tx: mpsc::Sender<HeldBatch>,
    rows: &AtomicU64,
    on_error: &mut (dyn FnMut(RowError) -> Result<(), String> + Send),
) -> Result<u64, CopyError> {
    let stream = client.copy_out(spec.statement.as_str()).await?;
    let mut stream = std::pin::pin!(stream);
    let mut decoder = CopyDecoder::new(spec);
    let mut out = Decoded::default();
    let mut counted = 0;
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk?;
        decoder.feed(&chunk, &mut out)?;
        drain(&mut out, &tx, on_error).await?;
        let now = decoder.rows_seen;
        if now - counted >= 1024 {
            rows.fetch_add(now - counted, Ordering::Relaxed);
            crate::notify::pulse::rows_loaded(now - counted);
            counted = now;
        }
    }
    decoder.finish(&mut out)?;
    drain(&mut out, &tx, on_error).await?;
    rows.fetch_add(decoder.rows_seen - counted, Ordering::Relaxed);
    crate::notify::pulse::rows_loaded(decoder.rows_seen - counted);
    Ok(decoder.rows_out())
}

async fn drain(
    out: &mut Decoded,
    tx: &mpsc::Sender<HeldBatch>,
    on_error: &mut (dyn FnMut(RowError) -> Result<(), String> + Send),
) -> Result<(), CopyError> {
    for e in out.errors.drain(..) {
        on_error(e).map_err(CopyError::Aborted)?;
    }
    for batch in out.batches.drain(..) {
        let held = budget::global()
            .reserve(
                batch.get_array_memory_size() as u64,
                "reading paused: COPY waits until batches are encoded",
            )
            .await;
        tx.send((batch, held))
            .await
            .map_err(|_| CopyError::Closed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;

    fn stream(rows: &[Option<i32>]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        for r in rows {
            v.extend_from_slice(&1i16.to_be_bytes());
            match r {
                Some(x) => {
                    v.extend_from_slice(&4i32.to_be_bytes());
                    v.extend_from_slice(&x.to_be_bytes());
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    fn column(name: &str, ty: PgType, not_null: bool) -> CopyColumn {
        CopyColumn {
            name: name.into(),
            ty,
            not_null,
        }
    }

    fn spec(batch_rows: usize) -> CopySpec {
        CopySpec {
            statement: String::new(),
            columns: vec![column("id", PgType::Int4, false)],
            key_columns: vec![0],
            batch_rows,
            batch_bytes: u64::MAX,
        }
    }

    #[test]
    fn decodes_across_any_chunking() {
        let rows: Vec<Option<i32>> = (0..10).map(|i| (i % 3 != 0).then_some(i)).collect();
        let bytes = stream(&rows);
        for chunk in [1, 2, 3, 7, 1000] {
            let mut d = CopyDecoder::new(spec(4));
            let mut out = Decoded::default();
            for c in bytes.chunks(chunk) {
                d.feed(c, &mut out).unwrap();
            }
            d.finish(&mut out).unwrap();
            let got: Vec<Option<i32>> = out
                .batches
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_primitive::<Int32Type>();
                    (0..a.len())
                        .map(|i| a.is_valid(i).then(|| a.value(i)))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(got, rows, "chunk size {chunk}");
            assert_eq!(out.batches.len(), 3);
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let bytes = stream(&[Some(1), Some(2)]);
        let mut d = CopyDecoder::new(spec(4));
        let mut out = Decoded::default();
        d.feed(&bytes[..bytes.len() - 3], &mut out).unwrap();
        assert!(d.finish(&mut out).is_err());
    }

    /// A COPY stream of rows given as raw fields.
    fn raw_stream(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&[0; 8]);
        for r in rows {
            v.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    Some(b) => {
                        v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        v.extend_from_slice(b);
                    }
                    None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    fn int_array(items: &[i32]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [1, 0, 23, items.len() as i32, 1] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        for x in items {
            v.extend_from_slice(&4i32.to_be_bytes());
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    #[test]
    fn a_bad_row_leaves_no_trace_in_any_column() {
        let columns = vec![
            column("name", PgType::Text, false),
            column(
                "arr",
                PgType::Array {
                    elem: Box::new(PgType::Int4),
                    dims: 1,
                },
                false,
            ),
            column("n", PgType::Int4, false),
        ];
        let row = |name: &str, arr: &[i32], n: Vec<u8>| {
            vec![
                Some(name.as_bytes().to_vec()),
                Some(int_array(arr)),
                Some(n),
            ]
        };
        let good = |i: i32| row(&format!("row{i}"), &[i, i + 1], i.to_be_bytes().to_vec());
        // The array column is complete when the last column fails (3 bytes for an integer).
        let bad = |i: i32| row(&format!("secret{i}"), &[-i, -i], vec![0; 3]);
        // Bad rows first, inside, at a batch end and last.
        let rows = vec![
            bad(0),
            good(1),
            good(2),
            bad(3),
            good(4),
            bad(5),
            good(6),
            bad(7),
        ];
        let bytes = raw_stream(&rows);
        for batch_rows in [1, 2, 3, 100] {
            let mut d = CopyDecoder::new(CopySpec {
                statement: String::new(),
                columns: columns.clone(),
                key_columns: vec![0],
                batch_rows,
                batch_bytes: u64::MAX,
            });
            let mut out = Decoded::default();
            d.feed(&bytes, &mut out).unwrap();
            d.finish(&mut out).unwrap();
            let mut got = Vec::new();
            for b in &out.batches {
                let names = b.column(0).as_string::<i32>();
                let arrs = b.column(1).as_list::<i32>();
                let ns = b.column(2).as_primitive::<Int32Type>();
                for i in 0..b.num_rows() {
                    let arr = arrs.value(i);
                    let arr: Vec<i32> = arr.as_primitive::<Int32Type>().values().to_vec();
                    got.push((names.value(i).to_string(), arr, ns.value(i)));
                }
            }
            let want: Vec<_> = [1, 2, 4, 6]
                .map(|i| (format!("row{i}"), vec![i, i + 1], i))
                .to_vec();
            assert_eq!(got, want, "batch_rows {batch_rows}");
            assert_eq!(d.rows_out(), 4);
            let errors: Vec<_> = out.errors.iter().map(|e| e.row).collect();
            assert_eq!(errors, [1, 4, 6, 8]);
            let e = &out.errors[0];
            assert_eq!(e.column, "n");
            assert_eq!(e.key, "name=<text, 7 bytes>");
            assert_eq!(e.key_sample.as_deref(), Some("name=\"sec\"… (7 bytes)"));
            assert_eq!(
                e.error.to_string(),
                "malformed binary integer value (3 bytes)"
            );
        }
    }

    #[test]
    fn a_null_in_a_not_null_column_is_a_bad_row() {
        let columns = vec![
            column("id", PgType::Int4, true),
            column("note", PgType::Text, false),
            column("a", PgType::Text, true),
        ];
        let row = |id: i32, note: Option<&str>, a: Option<&str>| {
            vec![
                Some(id.to_be_bytes().to_vec()),
                note.map(|x| x.as_bytes().to_vec()),
                a.map(|x| x.as_bytes().to_vec()),
            ]
        };
        let rows = vec![
            row(1, None, Some("x")),
            row(2, Some("n"), None),
            row(3, None, Some("z")),
        ];
        let mut d = CopyDecoder::new(CopySpec {
            statement: String::new(),
            columns,
            key_columns: vec![0],
            batch_rows: 100,
            batch_bytes: u64::MAX,
        });
        let nullable: Vec<bool> = d
            .schema()
            .fields()
            .iter()
            .map(|f| f.is_nullable())
            .collect();
        assert_eq!(nullable, [false, true, false]);
        let mut out = Decoded::default();
        d.feed(&raw_stream(&rows), &mut out).unwrap();
        d.finish(&mut out).unwrap();
        let ids: Vec<i32> = out
            .batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
            .collect();
        assert_eq!(ids, [1, 3]);
        let b = &out.batches[0];
        assert_eq!(b.column(1).null_count(), 2);
        assert_eq!(b.column(2).null_count(), 0);
        assert_eq!(out.errors.len(), 1);
        let e = &out.errors[0];
        assert_eq!((e.row, e.column.as_str(), e.key.as_str()), (2, "a", "id=2"));
        assert_eq!(e.error.to_string(), "NULL in a NOT NULL column");
    }

    #[test]
    fn impossible_lengths_are_protocol_errors() {
        let mut header = SIGNATURE.to_vec();
        header.extend_from_slice(&0i32.to_be_bytes());
        header.extend_from_slice(&(-2i32).to_be_bytes());
        let mut d = CopyDecoder::new(spec(4));
        assert!(d.feed(&header, &mut Decoded::default()).is_err());
        let mut bytes = stream(&[Some(1)]);
        let at = SIGNATURE.len() + 8 + 2;
        bytes[at..at + 4].copy_from_slice(&(-5i32).to_be_bytes());
        let mut d = CopyDecoder::new(spec(4));
        assert!(d.feed(&bytes, &mut Decoded::default()).is_err());
    }
}
