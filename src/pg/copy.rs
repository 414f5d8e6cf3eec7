//! Full load: `COPY (SELECT …) TO STDOUT (FORMAT binary)` decoded straight into Arrow
//! builders, cut into `RecordBatch`es by rows and bytes. No row objects in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::types::{ColumnBuilder, DataError, PgType};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// What to read and how to cut it.
#[derive(Debug, Clone)]
pub struct CopySpec {
    /// The complete `COPY (…) TO STDOUT (FORMAT binary)` statement.
    pub statement: String,
    /// Column names and types in select order.
    pub columns: Vec<(String, PgType)>,
    /// Positions of the key columns (for naming a bad row in an error).
    pub key_columns: Vec<usize>,
    pub batch_rows: usize,
    pub batch_bytes: u64,
}

impl CopySpec {
    /// The Arrow schema of the batches this COPY produces.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|(name, t)| t.arrow_field(name))
                .collect::<Vec<_>>(),
        ))
    }
}

/// A row that could not be converted.
#[derive(Debug, Clone)]
pub struct RowError {
    /// 1-based position of the row in the COPY stream.
    pub row: u64,
    pub column: String,
    /// The row's key as `col=value, …` (or its position when the table has no usable key).
    pub key: String,
    pub error: DataError,
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
            .map(|(_, t)| ColumnBuilder::new(t, rows))
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
        self.cut(out, false)
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
                    let ext = be_i32(&buf[pos + SIGNATURE.len() + 4..]) as usize;
                    if buf.len() - pos < fixed + ext {
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
                    self.append_row(buf, out)?;
                    self.bytes_in_batch += (p - pos) as u64;
                    pos = p;
                }
            }
        }
    }

    fn append_row(&mut self, buf: &[u8], out: &mut Decoded) -> Result<(), CopyError> {
        self.rows_seen += 1;
        let mut bad = None;
        for (i, &(start, len)) in self.fields.iter().enumerate() {
            let value = (len >= 0).then(|| &buf[start..start + len as usize]);
            let builder = &mut self.builders[i];
            if let Err(e) = builder.append(value) {
                builder.append_null();
                bad.get_or_insert((i, e));
            }
        }
        self.rows_in_batch += 1;
        if let Some((col, error)) = bad {
            out.errors.push(RowError {
                row: self.rows_seen,
                column: self.spec.columns[col].0.clone(),
                key: self.describe_key(buf),
                error,
            });
            return self.cut(out, true);
        }
        if self.rows_in_batch >= self.spec.batch_rows
            || self.bytes_in_batch >= self.spec.batch_bytes
        {
            self.cut(out, false)?;
        }
        Ok(())
    }

    /// Finishes the current batch; `drop_last` leaves out the row just appended.
    fn cut(&mut self, out: &mut Decoded, drop_last: bool) -> Result<(), CopyError> {
        if self.rows_in_batch == 0 {
            return Ok(());
        }
        let columns = self.builders.iter_mut().map(|b| b.finish()).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let keep = self.rows_in_batch - usize::from(drop_last);
        self.rows_in_batch = 0;
        self.bytes_in_batch = 0;
        if keep > 0 {
            self.rows_out += keep as u64;
            out.batches.push(batch.slice(0, keep));
        }
        Ok(())
    }

    fn describe_key(&self, buf: &[u8]) -> String {
        let mut parts = Vec::new();
        for &k in &self.spec.key_columns {
            let (start, len) = self.fields[k];
            let (name, t) = &self.spec.columns[k];
            let value = if len < 0 {
                "NULL".to_string()
            } else {
                key_text(t, &buf[start..start + len as usize])
            };
            parts.push(format!("{name}={value}"));
        }
        if parts.is_empty() {
            format!("row {} of the COPY (the table has no key)", self.rows_seen)
        } else {
            parts.join(", ")
        }
    }
}

/// A readable form of a key value, for error messages.
fn key_text(t: &PgType, v: &[u8]) -> String {
    match (t, v.len()) {
        (PgType::Int2, 2) => i16::from_be_bytes([v[0], v[1]]).to_string(),
        (PgType::Int4, 4) => be_i32(v).to_string(),
        (PgType::Int8, 8) => i64::from_be_bytes(v.try_into().unwrap_or([0; 8])).to_string(),
        (PgType::Uuid, 16) => uuid::Uuid::from_slice(v)
            .map(|u| u.to_string())
            .unwrap_or_default(),
        (PgType::Text | PgType::AsText { .. }, _) => {
            format!("{:?}", String::from_utf8_lossy(&v[..v.len().min(64)]))
        }
        _ => format!("<{} bytes>", v.len()),
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Runs the COPY on `client` and sends every batch to `tx`. `on_error` decides what a bad
/// row does: `Ok` skips it, `Err` aborts the table. `rows` counts rows as they are read.
pub async fn run_copy(
    client: &tokio_postgres::Client,
    spec: CopySpec,
    tx: mpsc::Sender<RecordBatch>,
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
            counted = now;
        }
    }
    decoder.finish(&mut out)?;
    drain(&mut out, &tx, on_error).await?;
    rows.fetch_add(decoder.rows_seen - counted, Ordering::Relaxed);
    Ok(decoder.rows_out())
}

async fn drain(
    out: &mut Decoded,
    tx: &mpsc::Sender<RecordBatch>,
    on_error: &mut (dyn FnMut(RowError) -> Result<(), String> + Send),
) -> Result<(), CopyError> {
    for e in out.errors.drain(..) {
        on_error(e).map_err(CopyError::Aborted)?;
    }
    for batch in out.batches.drain(..) {
        tx.send(batch).await.map_err(|_| CopyError::Closed)?;
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

    fn spec(batch_rows: usize) -> CopySpec {
        CopySpec {
            statement: String::new(),
            columns: vec![("id".into(), PgType::Int4)],
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
}
