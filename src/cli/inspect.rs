//! `godwit inspect PIPELINE [--table schema.table]`: what landed in the target — per table
//! the objects, rows, bytes, schema and a few sample rows, read back from the files.

use std::collections::BTreeMap;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use arrow::util::pretty::pretty_format_batches;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};

use crate::error::Error;
use crate::task::target_store;

pub async fn execute(path: &str, table: Option<&str>, sample_rows: usize) -> Result<i32, Error> {
    let p = super::load_pipeline(path).await?;
    let store = target_store(&p).await?;
    let objects = store
        .list("")
        .await
        .map_err(|e| Error::Runtime(format!("listing {}: {e}", store.describe())))?;
    let mut by_table: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for o in objects {
        let mut parts = o.key.splitn(3, '/');
        let (Some(schema), Some(name), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let known = [".parquet", ".csv", ".csv.gz"];
        if schema == "_godwit" || !known.iter().any(|x| o.key.ends_with(x)) {
            continue;
        }
        by_table
            .entry(format!("{schema}.{name}"))
            .or_default()
            .push(o);
    }
    if let Some(t) = table {
        by_table.retain(|k, _| k == t);
        if by_table.is_empty() {
            outln!("nothing landed for {t} in {}", store.describe())?;
            return Ok(0);
        }
    }
    outln!("target {}", store.describe())?;
    for (name, objects) in by_table {
        let mut total_rows = 0i64;
        let total_bytes: u64 = objects.iter().map(|o| o.size).sum();
        let mut lines = Vec::new();
        let mut first = None;
        let mut first_csv = None;
        for o in &objects {
            let data = store
                .get(&o.key)
                .await
                .map_err(|e| Error::Runtime(format!("reading {}: {e}", o.key)))?;
            if !o.key.ends_with(".parquet") {
                let text = csv_text(&o.key, &data)?;
                // Rows, not lines: a quoted value may hold line breaks.
                let rows = text.matches('\n').count() as i64;
                total_rows += rows;
                lines.push(format!("    {}  ~{} lines  {} bytes", o.key, rows, o.size));
                if first_csv.is_none() {
                    first_csv = Some(text);
                }
                continue;
            }
            let reader = SerializedFileReader::new(data.clone())
                .map_err(|e| Error::Runtime(format!("{}: not a Parquet file: {e}", o.key)))?;
            let rows = reader.metadata().file_metadata().num_rows();
            total_rows += rows;
            lines.push(format!("    {}  {} rows  {} bytes", o.key, rows, o.size));
            if first.is_none() && rows > 0 {
                first = Some(data);
            }
        }
        outln!(
            "\n{name}: {} objects, {total_rows} rows, {total_bytes} bytes",
            objects.len()
        )?;
        for l in lines {
            outln!("{l}")?;
        }
        if let Some(text) = first_csv {
            outln!("  sample:")?;
            for line in text.lines().take(sample_rows) {
                outln!("    {line}")?;
            }
        }
        if let Some(data) = first {
            let builder = ParquetRecordBatchReaderBuilder::try_new(data)
                .map_err(|e| Error::Runtime(e.to_string()))?;
            let schema = builder.schema().clone();
            outln!("  schema:")?;
            for f in schema.fields() {
                outln!("    {}: {}", f.name(), f.data_type())?;
            }
            let reader = builder
                .with_batch_size(sample_rows.max(1))
                .build()
                .map_err(|e| Error::Runtime(e.to_string()))?;
            if let Some(batch) = reader.into_iter().next() {
                let sample = batch
                    .and_then(|b| displayable(&b.slice(0, b.num_rows().min(sample_rows))))
                    .and_then(|b| pretty_format_batches(&[b]));
                match sample {
                    Ok(text) => outln!("  sample:\n{text}")?,
                    Err(e) => outln!("  sample: cannot be shown: {e}")?,
                }
            }
        }
    }
    Ok(0)
}

/// The batch with `UTC` timestamps given as the `+00:00` offset, which Arrow's pretty printer
/// can show without a time-zone database.
fn displayable(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, Some(_)) => {
                let t = DataType::Timestamp(*unit, Some("+00:00".into()));
                columns.push(arrow::compute::cast(column, &t)?);
                fields.push(Field::new(field.name(), t, true));
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// A CSV object's text (gunzipped for `.csv.gz`).
fn csv_text(key: &str, data: &bytes::Bytes) -> Result<String, Error> {
    use std::io::Read;
    let mut text = String::new();
    let result = if key.ends_with(".gz") {
        flate2::read::GzDecoder::new(&data[..]).read_to_string(&mut text)
    } else {
        (&data[..]).read_to_string(&mut text)
    };
    result.map_err(|e| Error::Runtime(format!("{key}: {e}")))?;
    Ok(text)
}
