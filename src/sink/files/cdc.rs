//! The files of CDC: one file per table, date folder and schema at each flush, named by the
//! commits it holds; and, at start, the high-water mark read back from files an interrupted
//! run completed after its last checkpoint.

use std::io::Read;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ObjectStore;
use super::writer::{FileFormat, WriteError, WrittenFile, complete, open_encoder};
use crate::state::Mark;

/// Writes `batches` (all of `schema`) as one complete object `key`. Blocking.
pub fn write_file(
    store: &dyn ObjectStore,
    key: &str,
    schema: SchemaRef,
    format: &FileFormat,
    batches: &[RecordBatch],
) -> Result<WrittenFile, WriteError> {
    let mut encoder = open_encoder(store, key, schema, format)?;
    let mut rows = 0u64;
    for batch in batches {
        let bytes = batch.get_array_memory_size();
        if let Err(message) = encoder.write(batch, bytes) {
            if let Ok(w) = encoder.finish() {
                w.abort();
            }
            return Err(WriteError::Encode {
                key: key.to_string(),
                message,
            });
        }
        rows += batch.num_rows() as u64;
    }
    let bytes = complete(encoder, key)?;
    Ok(WrittenFile {
        key: key.to_string(),
        rows,
        bytes,
    })
}

/// The highest (`_lsn`, `_seq`) in a CDC file's contents; `None` for a file without rows.
pub fn max_mark(data: bytes::Bytes, format: &FileFormat) -> Result<Option<Mark>, String> {
    match format {
        FileFormat::Parquet { .. } => {
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(data).map_err(|e| e.to_string())?;
            // The last `_lsn`/`_seq` fields: a source column may carry the same name.
            let fields = builder.schema().fields();
            let find = |name: &str| fields.iter().rposition(|f| f.name() == name);
            let (Some(lsn_at), Some(seq_at)) = (find("_lsn"), find("_seq")) else {
                return Err("no _lsn and _seq columns".into());
            };
            let positions = vec![lsn_at, seq_at];
            let mask = ProjectionMask::roots(builder.parquet_schema(), positions);
            let reader = builder
                .with_projection(mask)
                .build()
                .map_err(|e| e.to_string())?;
            let mut best: Option<Mark> = None;
            for batch in reader {
                let batch = batch.map_err(|e| e.to_string())?;
                let lsn = batch.column(0).as_primitive::<Int64Type>();
                let seq = batch.column(1).as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    if lsn.is_null(i) || seq.is_null(i) {
                        continue;
                    }
                    let m = Mark {
                        lsn: lsn.value(i) as u64,
                        seq: seq.value(i) as u64,
                    };
                    best = best.max(Some(m));
                }
            }
            Ok(best)
        }
        FileFormat::Csv(o) => {
            let mut text = Vec::new();
            if o.gzip {
                flate2::read::GzDecoder::new(&data[..])
                    .read_to_end(&mut text)
                    .map_err(|e| e.to_string())?;
            } else {
                text = data.to_vec();
            }
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(o.delimiter as u8)
                .has_headers(o.header)
                .flexible(true)
                .from_reader(&text[..]);
            let mut best: Option<Mark> = None;
            for record in reader.records() {
                let record = record.map_err(|e| e.to_string())?;
                let n = record.len();
                if n < 3 {
                    return Err("a row without _lsn, _seq, _unchanged".into());
                }
                let num = |i: usize| record[i].parse::<u64>().map_err(|e| e.to_string());
                best = best.max(Some(Mark {
                    lsn: num(n - 3)?,
                    seq: num(n - 2)?,
                }));
            }
            Ok(best)
        }
    }
}
