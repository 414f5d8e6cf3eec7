//! Parquet files of a full load: the table's batches (plus the optional `Op` and timestamp
//! columns) encoded into `LOAD…` objects, row groups cut by bytes, files cut at
//! `max_file_size`. Runs on a blocking thread; nothing here is async.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::layout;
use super::{ObjectStore, ObjectWriter};
use crate::pg::catalog::TableName;

/// Parquet codec names of the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Snappy,
    Gzip,
    None,
}

/// How the files of one table load are written.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub codec: Codec,
    pub row_group_bytes: usize,
    pub max_file_size: u64,
    /// `include_op_for_full_load`: an `Op` column holding `I`, first.
    pub include_op: bool,
    /// `timestamp_column`: its name; holds the load's start time.
    pub timestamp_column: Option<String>,
}

/// One object that was completed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenFile {
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
}

/// Errors while encoding or storing files.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing {key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error("encoding Parquet for {key}: {source}")]
    Parquet {
        key: String,
        source: parquet::errors::ParquetError,
    },
    #[error("adding load columns: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

struct Current {
    writer: ArrowWriter<Box<dyn ObjectWriter>>,
    key: String,
    rows: u64,
}

/// Writes the full load of one table (or one segment of it).
pub struct LoadWriter {
    store: Arc<dyn ObjectStore>,
    table: TableName,
    segment: Option<u32>,
    settings: FileSettings,
    schema: SchemaRef,
    props: WriterProperties,
    /// The load's start, microseconds since 1970 (the timestamp column's value).
    load_time: i64,
    next_number: u32,
    current: Option<Current>,
    /// Arrow bytes written into the row group in progress.
    row_group_input: usize,
    files: Vec<WrittenFile>,
}

impl LoadWriter {
    /// `source_schema` is the schema of the batches the COPY produces.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        table: TableName,
        segment: Option<u32>,
        source_schema: &Schema,
        settings: FileSettings,
        load_time: i64,
    ) -> LoadWriter {
        let mut fields: Vec<Arc<Field>> = Vec::new();
        if settings.include_op {
            fields.push(Arc::new(Field::new("Op", DataType::Utf8, false)));
        }
        if let Some(name) = &settings.timestamp_column {
            fields.push(Arc::new(Field::new(
                name,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            )));
        }
        fields.extend(source_schema.fields().iter().cloned());
        let props = writer_properties(settings.codec);
        LoadWriter {
            store,
            table,
            segment,
            settings,
            schema: Arc::new(Schema::new(fields)),
            props,
            load_time,
            next_number: 1,
            current: None,
            row_group_input: 0,
            files: Vec::new(),
        }
    }

    /// Appends one batch of table rows, in slices, so row groups and files are cut close to
    /// their sizes whatever the batch size.
    ///
    /// A row group is cut once `row_group_bytes` of Arrow data went into it (or its encoded
    /// form reached that size): what is held in memory is bounded by the data, not the table.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        const SLICE_ROWS: usize = 8192;
        let rows = batch.num_rows().max(1);
        let bytes_per_row = batch.get_array_memory_size() / rows;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = SLICE_ROWS.min(batch.num_rows() - offset);
            self.write_slice(&batch.slice(offset, len), len * bytes_per_row)?;
            offset += len;
        }
        Ok(())
    }

    fn write_slice(&mut self, batch: &RecordBatch, input_bytes: usize) -> Result<(), WriteError> {
        if let Some(cur) = &self.current {
            let size = cur.writer.bytes_written() as u64 + cur.writer.in_progress_size() as u64;
            if size >= self.settings.max_file_size {
                self.close_current()?;
            }
        }
        if self.current.is_none() {
            self.open_next()?;
        }
        let batch = self.with_load_columns(batch)?;
        let row_group_bytes = self.settings.row_group_bytes;
        let cur = self.current.as_mut().expect("a file was just opened");
        let key = cur.key.clone();
        let parquet_err = |source| WriteError::Parquet {
            key: key.clone(),
            source,
        };
        cur.writer.write(&batch).map_err(parquet_err)?;
        cur.rows += batch.num_rows() as u64;
        self.row_group_input += input_bytes;
        if self.row_group_input >= row_group_bytes
            || cur.writer.in_progress_size() >= row_group_bytes
        {
            cur.writer.flush().map_err(parquet_err)?;
            self.row_group_input = 0;
        }
        Ok(())
    }

    /// Completes the last file and returns every file written. A table with no rows still
    /// gets one (empty) file, so its schema is visible in the target.
    pub fn finish(mut self) -> Result<Vec<WrittenFile>, WriteError> {
        if self.current.is_none() && self.files.is_empty() {
            self.open_next()?;
        }
        self.close_current()?;
        Ok(std::mem::take(&mut self.files))
    }

    /// Drops the file in progress; completed files stay (the next load replaces them).
    pub fn abort(mut self) {
        if let Some(cur) = self.current.take()
            && let Ok(w) = cur.writer.into_inner()
        {
            w.abort();
        }
    }

    fn open_next(&mut self) -> Result<(), WriteError> {
        let key = layout::load_file(&self.table, self.segment, self.next_number, "parquet");
        self.next_number += 1;
        let object = self.store.create(&key).map_err(|source| WriteError::Io {
            key: key.clone(),
            source,
        })?;
        let writer = ArrowWriter::try_new(object, self.schema.clone(), Some(self.props.clone()))
            .map_err(|source| WriteError::Parquet {
                key: key.clone(),
                source,
            })?;
        self.current = Some(Current {
            writer,
            key,
            rows: 0,
        });
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), WriteError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        self.row_group_input = 0;
        let key = cur.key;
        let object = cur
            .writer
            .into_inner()
            .map_err(|source| WriteError::Parquet {
                key: key.clone(),
                source,
            })?;
        let bytes = object.complete().map_err(|source| WriteError::Io {
            key: key.clone(),
            source,
        })?;
        self.files.push(WrittenFile {
            key,
            rows: cur.rows,
            bytes,
        });
        Ok(())
    }

    fn with_load_columns(&self, batch: &RecordBatch) -> Result<RecordBatch, WriteError> {
        if !self.settings.include_op && self.settings.timestamp_column.is_none() {
            return Ok(batch.clone());
        }
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        if self.settings.include_op {
            columns.push(Arc::new(StringArray::from_iter_values(
                std::iter::repeat_n("I", n),
            )));
        }
        if self.settings.timestamp_column.is_some() {
            columns.push(Arc::new(
                TimestampMicrosecondArray::from_value(self.load_time, n).with_timezone("UTC"),
            ));
        }
        columns.extend(batch.columns().iter().cloned());
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

fn writer_properties(codec: Codec) -> WriterProperties {
    let compression = match codec {
        Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
        Codec::Snappy => Compression::SNAPPY,
        Codec::Gzip => Compression::GZIP(GzipLevel::default()),
        Codec::None => Compression::UNCOMPRESSED,
    };
    WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("godwit {}", env!("CARGO_PKG_VERSION")))
        .build()
}
