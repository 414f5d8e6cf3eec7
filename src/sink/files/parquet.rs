//! Parquet encoding of one file: row groups cut by the Arrow bytes that went in (or by their
//! encoded size), statistics on, the configured codec.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::ObjectWriter;
use super::writer::{Codec, EncodeError, FileEncoder};
use crate::batch::budget::{self, Reservation};

/// One Parquet file being written into an object.
pub struct ParquetEncoder {
    writer: ArrowWriter<Box<dyn ObjectWriter>>,
    /// The object's first I/O error, kept whole (the Parquet writer reports some as text).
    failed: Failed,
    row_group_bytes: usize,
    /// Arrow bytes written into the row group in progress.
    row_group_input: usize,
    /// The row group in progress, held against the memory budget.
    held: Reservation,
}

type Failed = Arc<Mutex<Option<io::Error>>>;

/// The object under the Parquet writer, keeping its first write error for [`ParquetEncoder`]:
/// an S3 blip must stay an S3 blip (retried), not become a message.
struct Keeping {
    object: Box<dyn ObjectWriter>,
    failed: Failed,
}

impl Write for Keeping {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.object.write(buf).map_err(|e| self.keep(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.object.flush().map_err(|e| self.keep(e))
    }
}

impl Keeping {
    fn keep(&self, e: io::Error) -> io::Error {
        let told = io::Error::new(e.kind(), e.to_string());
        let mut slot = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
        told
    }
}

impl ObjectWriter for Keeping {
    fn complete(self: Box<Self>) -> io::Result<u64> {
        self.object.complete()
    }

    fn abort(self: Box<Self>) {
        self.object.abort()
    }
}

impl ParquetEncoder {
    pub fn new(
        object: Box<dyn ObjectWriter>,
        schema: SchemaRef,
        codec: Codec,
        row_group_bytes: usize,
        plain: &[String],
    ) -> Result<ParquetEncoder, EncodeError> {
        let failed = Failed::default();
        let object = Box::new(Keeping {
            object,
            failed: failed.clone(),
        });
        let writer = ArrowWriter::try_new(
            object as Box<dyn ObjectWriter>,
            schema,
            Some(properties(codec, plain)),
        )
        .map_err(|e| why(&failed, e))?;
        Ok(ParquetEncoder {
            writer,
            failed,
            row_group_bytes,
            row_group_input: 0,
            held: budget::global().take(0),
        })
    }
}

/// The object's own error when there is one, else the Parquet writer's.
fn why(failed: &Failed, e: parquet::errors::ParquetError) -> EncodeError {
    let kept = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    match kept {
        Some(io) => EncodeError::Io(io),
        None => e.into(),
    }
}

impl FileEncoder for ParquetEncoder {
    fn write(&mut self, batch: &RecordBatch, input_bytes: usize) -> Result<(), EncodeError> {
        self.writer.write(batch).map_err(|e| why(&self.failed, e))?;
        self.row_group_input += input_bytes;
        let full = self.row_group_input >= self.row_group_bytes
            || self.writer.in_progress_size() >= self.row_group_bytes;
        // The row group grows only while the budget has room: otherwise it is cut early.
        let memory = self.writer.memory_size() as u64;
        let grows = memory.saturating_sub(self.held.bytes());
        let cut_early = !full && grows > 0 && !budget::global().fits(grows);
        if cut_early {
            budget::global().pressed("Parquet row groups cut early");
        }
        if full || cut_early {
            self.writer.flush().map_err(|e| why(&self.failed, e))?;
            self.row_group_input = 0;
        }
        self.held.set(self.writer.memory_size() as u64);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.writer.bytes_written() as u64 + self.writer.in_progress_size() as u64
    }

    fn finish(self: Box<Self>) -> Result<Box<dyn ObjectWriter>, EncodeError> {
        let failed = self.failed.clone();
        self.writer.into_inner().map_err(|e| why(&failed, e))
    }
}

/// The writer's settings: `codec`; dictionary encoding except for the `plain` columns;
/// min/max statistics per column chunk (row group), which DuckDB, Athena and Spark prune on,
/// without per-page statistics and page indexes, whose CPU buys little for files that are read
/// whole or by row group.
fn properties(codec: Codec, plain: &[String]) -> WriterProperties {
    let compression = match codec {
        Codec::Zstd => Compression::ZSTD(ZstdLevel::default()),
        Codec::Snappy => Compression::SNAPPY,
        Codec::Gzip => Compression::GZIP(GzipLevel::default()),
        Codec::None => Compression::UNCOMPRESSED,
    };
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("godwit {}", env!("CARGO_PKG_VERSION")));
    for name in plain {
        b = b.set_column_dictionary_enabled(ColumnPath::from(name.as_str()), false);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    /// An object whose writes fail the way a broken upload does.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "upload broke",
            ))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl ObjectWriter for Broken {
        fn complete(self: Box<Self>) -> io::Result<u64> {
            Ok(0)
        }
        fn abort(self: Box<Self>) {}
    }

    #[test]
    fn the_objects_own_io_error_comes_back_whole() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2]))])
                .unwrap();
        // Writes are buffered: the error comes at the latest when the file ends.
        let mut enc = ParquetEncoder::new(Box::new(Broken), schema, Codec::None, 1, &[]).unwrap();
        let err = match enc.write(&batch, 1 << 20) {
            Err(e) => e,
            Ok(()) => Box::new(enc).finish().err().expect("a broken object fails"),
        };
        match err {
            EncodeError::Io(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            EncodeError::Format(m) => panic!("the I/O error became text: {m}"),
        }
    }
}
