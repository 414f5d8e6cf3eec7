//! CDC changes of one table → Arrow batches in the layout of SPEC §4: `Op`, the optional
//! timestamp column, the table's columns, `_lsn`, `_seq`, `_unchanged`. Values arrive in
//! pgoutput's text form and go straight into the same builders the full load uses.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::pg::replication::pgoutput::Value;
use crate::pg::types::{ColumnBuilder, DataError, KeyText, PgType};
use crate::state::Mark;

/// The kind of a CDC row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// The before image of an update (never written to files; see [`Changes::before`]).
    Before,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "I",
            Op::Update => "U",
            Op::Delete => "D",
            Op::Truncate => "T",
            Op::Before => "B",
        }
    }
}

/// How one table's rows look for one Relation message: which relation columns are written,
/// as which types, and the file schema.
#[derive(Debug)]
pub struct Layout {
    /// Bumped whenever the table's columns or types change (a new file schema).
    pub generation: u32,
    /// Written columns, in relation order.
    pub columns: Vec<(String, PgType)>,
    /// For each relation column, its written position (`None`: excluded).
    pub rel_to_out: Vec<Option<usize>>,
    /// The key columns (relation position, written position), to name a bad row.
    key: Vec<(usize, usize)>,
    pub schema: SchemaRef,
    with_op: bool,
    with_ts: bool,
    /// Whether batches carry a parallel batch of before images (see [`Changes::before`]).
    before_images: bool,
}

impl Layout {
    /// `timestamp_column` adds the commit time; `with_op` is false under `cdc_inserts_only`.
    pub fn new(
        generation: u32,
        columns: Vec<(String, PgType)>,
        rel_to_out: Vec<Option<usize>>,
        with_op: bool,
        timestamp_column: Option<&str>,
    ) -> Layout {
        let mut fields: Vec<Field> = Vec::new();
        if with_op {
            fields.push(Field::new("Op", DataType::Utf8, false));
        }
        if let Some(ts) = timestamp_column {
            fields.push(Field::new(
                ts,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ));
        }
        // Every table column is nullable in CDC files, NOT NULL ones too: a `D` row carries
        // only the key, an unchanged TOASTed value is NULL.
        fields.extend(columns.iter().map(|(n, t)| t.arrow_field(n, true)));
        fields.push(Field::new("_lsn", DataType::Int64, false));
        fields.push(Field::new("_seq", DataType::Int64, false));
        fields.push(Field::new(
            "_unchanged",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ));
        Layout {
            generation,
            columns,
            rel_to_out,
            key: Vec::new(),
            schema: Arc::new(Schema::new(fields)),
            with_op,
            with_ts: timestamp_column.is_some(),
            before_images: false,
        }
    }

    /// Keeps the before image of every update that has one (REPLICA IDENTITY FULL) beside the
    /// rows, for an output that must find where a row was (a cache key made of non-key
    /// columns). Needs `Op` (not under `cdc_inserts_only`).
    pub fn with_before_images(mut self, on: bool) -> Layout {
        self.before_images = on && self.with_op;
        self
    }

    /// Names the table's key columns (written ones only), so a bad row is named by its key.
    pub fn with_key(mut self, key_columns: &[String]) -> Layout {
        self.key = key_columns
            .iter()
            .filter_map(|k| {
                let out = self.columns.iter().position(|(n, _)| n == k)?;
                let rel = self.rel_to_out.iter().position(|&o| o == Some(out))?;
                Some((rel, out))
            })
            .collect();
        self
    }

    /// A row's key as data errors show it (`id=42`; withheld types as type and length), and
    /// the debug sample of withheld values.
    fn describe_key(&self, values: &[Value]) -> (String, Option<String>) {
        KeyText::row(self.key.iter().map(|&(rel, out)| {
            let (name, t) = &self.columns[out];
            let key = match values.get(rel) {
                Some(Value::Text(v) | Value::Binary(v)) => KeyText::text(t, v),
                Some(Value::Null) => KeyText::plain("NULL"),
                _ => KeyText::plain("unknown"),
            };
            (name.as_str(), key)
        }))
    }
}

/// One row to append.
pub struct Row<'a, 'b> {
    pub op: Op,
    pub commit_time: i64,
    pub mark: Mark,
    /// Values in relation order; empty for `T` (every column NULL).
    pub values: &'b [Value<'a>],
    /// The old tuple, where unchanged TOASTed values can be taken from (REPLICA IDENTITY FULL).
    pub old: Option<&'b [Value<'a>]>,
}

/// A column value that could not be decoded (the row is left out of the batch).
#[derive(Debug)]
pub struct BadValue {
    pub column: String,
    /// The row's key as [`KeyText`] shows it (`id=42`), empty when the table has no key:
    /// safe for logs, events and `task.json`.
    pub key: String,
    /// Truncated prefixes of key values that `key` withholds, for the debug line only.
    pub key_sample: Option<String>,
    pub error: DataError,
}

impl BadValue {
    /// The debug-level line with the truncated prefixes of the bad value and withheld keys.
    pub fn log_detail(&self, table: &str) {
        tracing::debug!(table = %table, column = %self.column,
            key = self.key_sample.as_deref().unwrap_or(&self.key),
            value = self.error.sample.as_deref().unwrap_or("-"),
            "data error detail (values truncated)");
    }
}

/// Arrow builders for rows of one layout.
pub struct Builder {
    pub layout: Arc<Layout>,
    op: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    cols: Vec<ColumnBuilder>,
    lsn: Int64Builder,
    seq: Int64Builder,
    unchanged: ListBuilder<StringBuilder>,
    /// The before images, row for row (see [`Changes::before`]).
    before: Option<Box<Builder>>,
    pub rows: usize,
    /// Rough Arrow bytes appended (value bytes plus fixed per-row overhead).
    pub bytes: usize,
}

impl Builder {
    pub fn new(layout: Arc<Layout>, capacity: usize) -> Builder {
        let cols = layout
            .columns
            .iter()
            .map(|(_, t)| ColumnBuilder::new(t, capacity))
            .collect();
        let before = layout
            .before_images
            .then(|| Box::new(Builder::without_before(layout.clone(), capacity)));
        Builder {
            before,
            op: StringBuilder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            cols,
            lsn: Int64Builder::new(),
            seq: Int64Builder::new(),
            unchanged: ListBuilder::new(StringBuilder::new()),
            rows: 0,
            bytes: 0,
            layout,
        }
    }

    fn without_before(layout: Arc<Layout>, capacity: usize) -> Builder {
        let mut b = Builder::new(
            Arc::new(Layout {
                before_images: false,
                generation: layout.generation,
                columns: layout.columns.clone(),
                rel_to_out: layout.rel_to_out.clone(),
                key: layout.key.clone(),
                schema: layout.schema.clone(),
                with_op: layout.with_op,
                with_ts: layout.with_ts,
            }),
            capacity,
        );
        b.before = None;
        b
    }

    /// Appends one row (and its before image, or an empty one). A value that does not decode
    /// leaves no trace of the row in any builder and is returned, for the `[errors].data`
    /// policy.
    pub fn append(&mut self, row: &Row) -> Result<(), BadValue> {
        self.append_row(row)?;
        if let Some(b) = self.before.as_mut() {
            let held = b.bytes;
            let image = match (row.op, row.old) {
                (Op::Update, Some(old)) => b
                    .append_row(&Row {
                        op: Op::Before,
                        commit_time: row.commit_time,
                        mark: row.mark,
                        values: old,
                        old: None,
                    })
                    .is_ok(),
                _ => false,
            };
            if !image {
                b.append_empty();
            }
            // Before images are buffered memory too.
            self.bytes += b.bytes - held;
        }
        Ok(())
    }

    /// A row of NULLs with an empty `Op` (no before image).
    fn append_empty(&mut self) {
        for c in &mut self.cols {
            c.append_null();
        }
        if self.layout.with_op {
            self.op.append_value("");
        }
        if self.layout.with_ts {
            self.ts.append_value(0);
        }
        self.lsn.append_value(0);
        self.seq.append_value(0);
        self.unchanged.append(true);
        self.rows += 1;
    }

    fn append_row(&mut self, row: &Row) -> Result<(), BadValue> {
        let layout = self.layout.clone();
        let mut written = vec![false; self.cols.len()];
        let mut unchanged: Vec<&str> = Vec::new();
        let mut bytes = 40;
        for (i, v) in row.values.iter().enumerate() {
            let Some(Some(out)) = layout.rel_to_out.get(i) else {
                continue;
            };
            let out = *out;
            let mut value = *v;
            if value == Value::Unchanged {
                value = match row.old.and_then(|o| o.get(i)) {
                    Some(old @ (Value::Text(_) | Value::Binary(_) | Value::Null)) => *old,
                    _ => Value::Unchanged,
                };
            }
            let col = &mut self.cols[out];
            match value {
                Value::Null => col.append_null(),
                Value::Unchanged => {
                    col.append_null();
                    unchanged.push(&layout.columns[out].0);
                }
                Value::Text(t) | Value::Binary(t) => {
                    bytes += t.len();
                    if let Err(error) = col.append_text(t) {
                        // Roll back the columns this row already reached.
                        for c in &mut self.cols {
                            c.truncate(self.rows);
                        }
                        let (key, key_sample) = layout.describe_key(row.values);
                        return Err(BadValue {
                            column: layout.columns[out].0.clone(),
                            key,
                            key_sample,
                            error,
                        });
                    }
                }
            }
            written[out] = true;
        }
        for (out, done) in written.iter().enumerate() {
            if !done {
                self.cols[out].append_null();
            }
        }
        if layout.with_op {
            self.op.append_value(row.op.as_str());
        }
        if layout.with_ts {
            self.ts.append_value(row.commit_time);
        }
        self.lsn.append_value(row.mark.lsn as i64);
        self.seq.append_value(row.mark.seq as i64);
        for c in &unchanged {
            self.unchanged.values().append_value(c);
        }
        self.unchanged.append(true);
        self.rows += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// The rows appended so far as one batch, and their before images when kept; the builder
    /// is empty again afterwards.
    pub fn finish_with_before(&mut self) -> Result<(RecordBatch, Option<RecordBatch>), ArrowError> {
        let before = match self.before.as_mut() {
            Some(b) => Some(b.finish()?),
            None => None,
        };
        Ok((self.finish()?, before))
    }

    /// The rows appended so far as one batch; the builder is empty again afterwards.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.layout.schema.fields().len());
        if self.layout.with_op {
            columns.push(Arc::new(self.op.finish()));
        }
        if self.layout.with_ts {
            columns.push(Arc::new(self.ts.finish()));
        }
        for c in &mut self.cols {
            columns.push(c.finish()?);
        }
        columns.push(Arc::new(self.lsn.finish()));
        columns.push(Arc::new(self.seq.finish()));
        let unchanged = self.unchanged.finish();
        // The list's item field must match the schema's exactly.
        columns.push(Arc::new(unchanged));
        let batch = RecordBatch::try_new(self.layout.schema.clone(), columns)?;
        self.rows = 0;
        self.bytes = 0;
        Ok(batch)
    }
}

/// Rows of one table waiting to be written, in groups that each become one file: a group
/// ends where the date folder or the layout changes.
#[derive(Default)]
pub struct TableBuffer {
    pub groups: Vec<Group>,
    pub rows: usize,
    pub bytes: usize,
}

/// Rows being built for one file.
pub struct Group {
    pub folder: String,
    pub first: Mark,
    pub last: Mark,
    pub batches: Vec<RecordBatch>,
    pub before: Vec<RecordBatch>,
    pub builder: Builder,
}

/// Finished rows of one table that belong in one file (one date folder, one layout): what
/// the apply loop hands to the sinks.
pub struct Changes {
    /// The date folder (`yyyy/mm/dd/`), empty without date partitioning.
    pub folder: String,
    pub first: Mark,
    pub last: Mark,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Empty, or one batch per batch of `batches` with the same schema and rows: row `i` holds
    /// the before image of row `i` (`Op` `B`, the update's `_lsn`/`_seq`) or, where there is
    /// none, NULLs and an empty `Op`. Kept only for tables whose layout asks for it.
    pub before: Vec<RecordBatch>,
}

impl TableBuffer {
    /// Appends a row under `folder`, cutting batches at `batch_rows` rows or `batch_bytes`
    /// bytes. A bad row is not counted and leaves no trace: no rows, no bytes, no group of its
    /// own, no file LSN.
    pub fn push(
        &mut self,
        layout: &Arc<Layout>,
        folder: &str,
        row: &Row,
        (batch_rows, batch_bytes): (usize, usize),
    ) -> Result<Result<(), BadValue>, ArrowError> {
        let fits = self.groups.last().is_some_and(|g| {
            g.folder == folder && g.builder.layout.generation == layout.generation
        });
        if !fits {
            self.groups.push(Group {
                folder: folder.to_string(),
                first: row.mark,
                last: row.mark,
                batches: Vec::new(),
                before: Vec::new(),
                builder: Builder::new(layout.clone(), batch_rows.min(8192)),
            });
        }
        let g = self.groups.last_mut().expect("a group was just ensured");
        let before = g.builder.bytes;
        if let Err(bad) = g.builder.append(row) {
            if !fits {
                self.groups.pop();
            }
            return Ok(Err(bad));
        }
        g.last = row.mark;
        self.bytes += g.builder.bytes - before;
        self.rows += 1;
        if g.builder.rows >= batch_rows || g.builder.bytes >= batch_bytes {
            let (b, before) = g.builder.finish_with_before()?;
            g.batches.push(b);
            g.before.extend(before);
        }
        Ok(Ok(()))
    }

    /// Takes every group, builders finished into batches.
    pub fn take(&mut self) -> Result<Vec<Changes>, ArrowError> {
        let groups = std::mem::take(&mut self.groups);
        self.rows = 0;
        self.bytes = 0;
        groups
            .into_iter()
            .map(|mut g| {
                if g.builder.rows > 0 {
                    let (b, before) = g.builder.finish_with_before()?;
                    g.batches.push(b);
                    g.before.extend(before);
                }
                Ok(Changes {
                    folder: g.folder,
                    first: g.first,
                    last: g.last,
                    schema: g.builder.layout.schema.clone(),
                    batches: g.batches,
                    before: g.before,
                })
            })
            .collect()
    }
}
