//! Parquet encoding of one file: row groups cut by the Arrow bytes that went in (or by their
//! encoded size), statistics on, the configured codec.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::ObjectWriter;
use super::writer::{Codec, FileEncoder};
use crate::batch::budget::{self, Reservation};

/// One Parquet file being written into an object.
pub struct ParquetEncoder {
    writer: ArrowWriter<Box<dyn ObjectWriter>>,
    row_group_bytes: usize,
    /// Arrow bytes written into the row group in progress.
    row_group_input: usize,
    /// The row group in progress, held against the memory budget.
    held: Reservation,
}

impl ParquetEncoder {
    pub fn new(
        object: Box<dyn ObjectWriter>,
        schema: SchemaRef,
        codec: Codec,
        row_group_bytes: usize,
    ) -> Result<ParquetEncoder, String> {
        let writer = ArrowWriter::try_new(object, schema, Some(properties(codec)))
            .map_err(|e| e.to_string())?;
        Ok(ParquetEncoder {
            writer,
            row_group_bytes,
            row_group_input: 0,
            held: budget::global().take(0),
        })
    }
}

impl FileEncoder for ParquetEncoder {
    fn write(&mut self, batch: &RecordBatch, input_bytes: usize) -> Result<(), String> {
        self.writer.write(batch).map_err(|e| e.to_string())?;
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
            self.writer.flush().map_err(|e| e.to_string())?;
            self.row_group_input = 0;
        }
        self.held.set(self.writer.memory_size() as u64);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.writer.bytes_written() as u64 + self.writer.in_progress_size() as u64
    }

    fn finish(self: Box<Self>) -> Result<Box<dyn ObjectWriter>, String> {
        self.writer.into_inner().map_err(|e| e.to_string())
    }
}

fn properties(codec: Codec) -> WriterProperties {
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
