//! The files of a full load: the table's batches (plus the optional `Op` and timestamp
//! columns) encoded as Parquet or CSV into `LOAD…` objects, files cut at `max_file_size`.
//! Runs on a blocking thread; nothing here is async.

use std::sync::Arc;

use super::csv::{CsvEncoder, CsvOptions};
use super::layout;
use super::parquet::ParquetEncoder;
use super::{ObjectStore, ObjectWriter};
use crate::pg::catalog::TableName;
use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

/// Parquet codec names of the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Snappy,
    Gzip,
    None,
}

/// The file format and its options.
#[derive(Debug, Clone)]
pub enum FileFormat {
    Parquet {
        codec: Codec,
        row_group_bytes: usize,
        /// Columns written without a dictionary (mostly distinct values, see
        /// `Column::dictionary_pays`).
        plain: Arc<[String]>,
    },
    Csv(CsvOptions),
}

impl FileFormat {
    pub fn extension(&self) -> &'static str {
        match self {
            FileFormat::Parquet { .. } => "parquet",
            FileFormat::Csv(o) if o.gzip => "csv.gz",
            FileFormat::Csv(_) => "csv",
        }
    }
}

/// Why an encoder failed: its object could not be written (an I/O error, kept whole so an S3
/// blip can be told from a refusal), or the data could not be encoded.
#[derive(Debug)]
pub enum EncodeError {
    Io(std::io::Error),
    Format(String),
}

impl EncodeError {
    /// The error of writing object `key`.
    pub fn at(self, key: &str) -> WriteError {
        match self {
            EncodeError::Io(source) => WriteError::Io {
                key: key.to_string(),
                source,
            },
            EncodeError::Format(message) => WriteError::Encode {
                key: key.to_string(),
                message,
            },
        }
    }
}

impl From<std::io::Error> for EncodeError {
    fn from(e: std::io::Error) -> Self {
        EncodeError::Io(e)
    }
}

impl From<parquet::errors::ParquetError> for EncodeError {
    /// The object's own I/O error comes back from the Parquet writer wrapped: unwrap it.
    fn from(e: parquet::errors::ParquetError) -> Self {
        match e {
            parquet::errors::ParquetError::External(inner) => {
                match inner.downcast::<std::io::Error>() {
                    Ok(io) => EncodeError::Io(*io),
                    Err(other) => EncodeError::Format(other.to_string()),
                }
            }
            other => EncodeError::Format(other.to_string()),
        }
    }
}

/// One file being encoded into an object.
pub trait FileEncoder: Send {
    /// Encodes a batch; `input_bytes` is its share of Arrow memory (for row-group sizing).
    fn write(&mut self, batch: &RecordBatch, input_bytes: usize) -> Result<(), EncodeError>;
    /// Bytes the file has (or will have once buffered data is flushed), for `max_file_size`.
    fn size(&self) -> u64;
    /// Ends the file and hands back the object to complete.
    fn finish(self: Box<Self>) -> Result<Box<dyn ObjectWriter>, EncodeError>;
}

/// How the files of one table load are written.
#[derive(Debug, Clone)]
pub struct FileSettings {
    pub format: FileFormat,
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
    #[error("encoding {key}: {message}")]
    Encode { key: String, message: String },
    #[error("adding load columns: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

struct Current {
    encoder: Box<dyn FileEncoder>,
    key: String,
    rows: u64,
}

/// Ends an encoder's file and makes object `key` visible; returns its size.
pub(crate) fn complete(encoder: Box<dyn FileEncoder>, key: &str) -> Result<u64, WriteError> {
    let object = encoder.finish().map_err(|e| e.at(key))?;
    if let Err(source) = crate::faults::object_completing(key) {
        object.abort();
        return Err(WriteError::Io {
            key: key.to_string(),
            source,
        });
    }
    let bytes = object.complete().map_err(|source| WriteError::Io {
        key: key.to_string(),
        source,
    })?;
    crate::faults::object_completed();
    Ok(bytes)
}

/// Starts object `key` with an encoder of `format` for `schema`.
pub(crate) fn open_encoder(
    store: &dyn ObjectStore,
    key: &str,
    schema: SchemaRef,
    format: &FileFormat,
) -> Result<Box<dyn FileEncoder>, WriteError> {
    let object = store.create(key).map_err(|source| WriteError::Io {
        key: key.to_string(),
        source,
    })?;
    Ok(match format {
        FileFormat::Parquet {
            codec,
            row_group_bytes,
            plain,
        } => Box::new(
            ParquetEncoder::new(object, schema, *codec, *row_group_bytes, plain)
                .map_err(|e| e.at(key))?,
        ),
        FileFormat::Csv(options) => Box::new(CsvEncoder::new(
            object,
            schema.fields().iter().map(|f| f.name().clone()).collect(),
            options.clone(),
        )),
    })
}

/// Writes the full load of one table (or one segment of it).
pub struct LoadWriter {
    store: Arc<dyn ObjectStore>,
    table: TableName,
    segment: Option<u32>,
    settings: FileSettings,
    schema: SchemaRef,
    /// The load's start, microseconds since 1970 (the timestamp column's value).
    load_time: i64,
    next_number: u32,
    current: Option<Current>,
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
        LoadWriter {
            store,
            table,
            segment,
            settings,
            schema: Arc::new(Schema::new(fields)),
            load_time,
            next_number: 1,
            current: None,
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
        if let Some(cur) = &self.current
            && cur.encoder.size() >= self.settings.max_file_size
        {
            self.close_current()?;
        }
        if self.current.is_none() {
            self.open_next()?;
        }
        let batch = self.with_load_columns(batch)?;
        let cur = self.current.as_mut().expect("a file was just opened");
        cur.encoder
            .write(&batch, input_bytes)
            .map_err(|e| e.at(&cur.key))?;
        cur.rows += batch.num_rows() as u64;
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
            && let Ok(w) = cur.encoder.finish()
        {
            w.abort();
        }
    }

    fn open_next(&mut self) -> Result<(), WriteError> {
        let ext = self.settings.format.extension();
        let key = layout::load_file(&self.table, self.segment, self.next_number, ext);
        self.next_number += 1;
        let encoder = open_encoder(
            self.store.as_ref(),
            &key,
            self.schema.clone(),
            &self.settings.format,
        )?;
        self.current = Some(Current {
            encoder,
            key,
            rows: 0,
        });
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), WriteError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let key = cur.key;
        let bytes = complete(cur.encoder, &key)?;
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
