//! Parquet encoding of one file: row groups cut by the Arrow bytes that went in (or by their
//! encoded size), min/max statistics, the configured codec. The columns of a batch are encoded
//! (and their pages compressed) in parallel, on as many threads as the machine has cores, one
//! row group in flight: the low-level writers of the `parquet` crate
//! (`ArrowRowGroupWriterFactory`, one `ArrowColumnWriter` per leaf column).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory,
    compute_leaves,
};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::ObjectWriter;
use super::writer::{Codec, EncodeError, FileEncoder};
use crate::batch::budget::{self, Reservation};

/// Batches with fewer rows than this are encoded on the calling thread alone: threads would
/// cost more than they save.
const PARALLEL_MIN_ROWS: usize = 1024;

/// A row group is cut once it holds this many rows (the parquet crate's own default), whatever
/// its bytes: narrow tables keep row groups readers can skip.
const ROW_GROUP_MAX_ROWS: usize = 1024 * 1024;

/// One Parquet file being written into an object.
pub struct ParquetEncoder {
    file: SerializedFileWriter<Box<dyn ObjectWriter>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The row group in progress: one writer per leaf column.
    columns: Option<Vec<ArrowColumnWriter>>,
    /// Threads that encode the columns of a batch.
    threads: usize,
    /// The object's first I/O error, kept whole (the Parquet writer reports some as text).
    failed: Failed,
    row_group_bytes: usize,
    /// Arrow bytes written into the row group in progress.
    row_group_input: usize,
    /// Rows in the row group in progress.
    row_group_rows: usize,
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
        // The high-level writer sets the file up (the Arrow schema in the footer, the Parquet
        // schema), then hands over its file writer and column-writer factory.
        let (file, factory) = ArrowWriter::try_new(
            object as Box<dyn ObjectWriter>,
            schema.clone(),
            Some(properties(codec, plain)),
        )
        .and_then(|w| w.into_serialized_writer())
        .map_err(|e| why(&failed, e))?;
        Ok(ParquetEncoder {
            file,
            factory,
            schema,
            columns: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            failed,
            row_group_bytes,
            row_group_input: 0,
            row_group_rows: 0,
            held: budget::global().take(0),
        })
    }

    /// Encodes `batch` into the row group in progress, its columns in parallel.
    fn encode(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        let columns = match &mut self.columns {
            Some(c) => c,
            slot => slot.insert(
                self.factory
                    .create_column_writers(self.file.flushed_row_groups().len())?,
            ),
        };
        let mut leaves: Vec<ArrowLeafColumn> = Vec::with_capacity(columns.len());
        for (field, array) in self.schema.fields().iter().zip(batch.columns()) {
            leaves.extend(compute_leaves(field, array)?);
        }
        let threads = if batch.num_rows() < PARALLEL_MIN_ROWS {
            1
        } else {
            self.threads.min(columns.len())
        };
        let work: Vec<(&mut ArrowColumnWriter, ArrowLeafColumn)> =
            columns.iter_mut().zip(leaves).collect();
        in_parallel(work, threads, |(writer, leaf)| writer.write(&leaf))?;
        Ok(())
    }

    /// Closes the row group in progress (the last pages of its columns compressed in
    /// parallel) and writes it to the file.
    fn flush_row_group(&mut self) -> Result<(), ParquetError> {
        let Some(columns) = self.columns.take() else {
            return Ok(());
        };
        let slots: Vec<Mutex<Option<ArrowColumnChunk>>> =
            columns.iter().map(|_| Mutex::new(None)).collect();
        let work: Vec<(ArrowColumnWriter, &Mutex<Option<ArrowColumnChunk>>)> =
            columns.into_iter().zip(&slots).collect();
        in_parallel(work, self.threads, |(writer, slot)| {
            let chunk = writer.close()?;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(chunk);
            Ok(())
        })?;
        let mut group = self.file.next_row_group()?;
        for slot in slots {
            let chunk = slot
                .into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .ok_or_else(|| ParquetError::General("a column was not closed".into()))?;
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        Ok(())
    }

    /// Memory the row group in progress holds, and its estimated encoded size.
    fn in_progress(&self) -> (usize, usize) {
        self.columns.as_ref().map_or((0, 0), |c| {
            (
                c.iter().map(|w| w.memory_size()).sum(),
                c.iter().map(|w| w.get_estimated_total_bytes()).sum(),
            )
        })
    }
}

/// Runs `job` on every item of `work`, on up to `threads` threads taking the next item as
/// they finish one (columns differ a lot in cost); the first error wins.
fn in_parallel<T: Send>(
    work: Vec<T>,
    threads: usize,
    job: impl Fn(T) -> Result<(), ParquetError> + Sync,
) -> Result<(), ParquetError> {
    if threads <= 1 || work.len() <= 1 {
        return work.into_iter().try_for_each(job);
    }
    let queue = Mutex::new(work.into_iter());
    let next = || queue.lock().unwrap_or_else(|p| p.into_inner()).next();
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .map(|_| {
                scope.spawn(|| {
                    while let Some(item) = next() {
                        job(item)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut result: Result<(), ParquetError> = (|| {
            while let Some(item) = next() {
                job(item)?;
            }
            Ok(())
        })();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(ParquetError::General("a column encoder panicked".into())));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// The object's own error when there is one, else the Parquet writer's.
fn why(failed: &Failed, e: ParquetError) -> EncodeError {
    let kept = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    match kept {
        Some(io) => EncodeError::Io(io),
        None => e.into(),
    }
}

impl FileEncoder for ParquetEncoder {
    fn write(&mut self, batch: &RecordBatch, input_bytes: usize) -> Result<(), EncodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.encode(batch).map_err(|e| why(&self.failed, e))?;
        self.row_group_input += input_bytes;
        self.row_group_rows += batch.num_rows();
        let (memory, encoded) = self.in_progress();
        let full = self.row_group_input >= self.row_group_bytes
            || encoded >= self.row_group_bytes
            || self.row_group_rows >= ROW_GROUP_MAX_ROWS;
        // The row group grows only while the budget has room: otherwise it is cut early.
        let grows = (memory as u64).saturating_sub(self.held.bytes());
        let cut_early = !full && grows > 0 && !budget::global().fits(grows);
        if cut_early {
            budget::global().pressed("Parquet row groups cut early");
        }
        if full || cut_early {
            self.flush_row_group().map_err(|e| why(&self.failed, e))?;
            self.row_group_input = 0;
            self.row_group_rows = 0;
        }
        self.held.set(self.in_progress().0 as u64);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.file.bytes_written() as u64 + self.in_progress().1 as u64
    }

    fn finish(mut self: Box<Self>) -> Result<Box<dyn ObjectWriter>, EncodeError> {
        self.flush_row_group().map_err(|e| why(&self.failed, e))?;
        let failed = self.failed.clone();
        self.file.into_inner().map_err(|e| why(&failed, e))
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

    /// An object kept in memory.
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl ObjectWriter for Memory {
        fn complete(self: Box<Self>) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
        fn abort(self: Box<Self>) {}
    }

    /// Columns encoded on several threads, over several row groups, read back in place and
    /// value for value (a nested list column too).
    #[test]
    fn columns_encoded_in_parallel_read_back_in_place() {
        use arrow::array::{ListArray, StringArray};
        use arrow::datatypes::Int32Type;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, true),
            Field::new(
                "list",
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                true,
            ),
            Field::new("other", DataType::Int64, true),
        ]));
        let batch = |start: i64, n: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(start..start + n)),
                    Arc::new(StringArray::from_iter(
                        (start..start + n).map(|i| (i % 7 != 0).then(|| format!("row {i}"))),
                    )),
                    Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
                        (start..start + n).map(|i| {
                            (i % 5 != 0).then(|| vec![Some(i as i32), None, Some(-(i as i32))])
                        }),
                    )),
                    Arc::new(Int64Array::from_iter(
                        (start..start + n).map(|i| (i % 3 != 0).then_some(i * 10)),
                    )),
                ],
            )
            .unwrap()
        };
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let mut enc = ParquetEncoder::new(
            Box::new(Memory(bytes.clone())),
            schema.clone(),
            Codec::Zstd,
            64 << 10,
            &["id".to_string()],
        )
        .unwrap();
        enc.threads = 4;
        let batches: Vec<RecordBatch> = (0..6).map(|k| batch(k * 5000, 5000)).collect();
        for b in &batches {
            enc.write(b, b.get_array_memory_size()).unwrap();
        }
        Box::new(enc).finish().unwrap();
        let data = bytes::Bytes::from(bytes.lock().unwrap().clone());
        let reader = ParquetRecordBatchReaderBuilder::try_new(data).unwrap();
        assert!(reader.metadata().num_row_groups() > 1);
        let got: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let got = arrow::compute::concat_batches(&schema, &got).unwrap();
        let want = arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert_eq!(got, want);
    }
}
