//! The files of CDC: the files sink of the [`ChangeSink`] contract. One file per table, date
//! folder and schema at each flush, named by the commits it holds; and, at start, the
//! high-water mark read back from files an interrupted run completed after its last
//! checkpoint.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::writer::{FileFormat, WriteError, WrittenFile, complete, open_encoder};
use super::{ObjectStore, layout};
use crate::batch::spill::SpillFile;
use crate::error::Error;
use crate::pg::catalog::TableName;
use crate::pg::lsn::Lsn;
use crate::sink::{ChangeSink, TableChanges, Written};
use crate::state::{Mark, TableRecord};

/// The rows of one coming file: hand-offs of one table, date folder and schema, in order.
struct Pending {
    table: String,
    name: TableName,
    folder: String,
    schema: SchemaRef,
    first: Mark,
    last: Mark,
    /// The earlier batches, when the memory budget moved them to disk.
    spilled: Option<SpillFile>,
    /// The later batches, in memory.
    batches: Vec<RecordBatch>,
    /// The object key, once the flush named it (its intent).
    key: Option<String>,
}

/// CDC changes into files of the target.
pub struct CdcFiles {
    store: Arc<dyn ObjectStore>,
    format: FileFormat,
    /// This pipeline's spill folder.
    spill_dir: PathBuf,
    /// Taken changes, one entry per coming file.
    pending: Vec<Pending>,
    /// The time in the last file name: names are unique and in order even within a millisecond.
    last_file_ms: i64,
    written: Written,
}

impl CdcFiles {
    pub fn new(store: Arc<dyn ObjectStore>, format: FileFormat, spill_dir: PathBuf) -> CdcFiles {
        CdcFiles {
            store,
            format,
            spill_dir,
            pending: Vec::new(),
            last_file_ms: 0,
            written: Written::default(),
        }
    }
}

#[async_trait::async_trait]
impl ChangeSink for CdcFiles {
    fn name(&self) -> &'static str {
        "files"
    }

    async fn recover(
        &mut self,
        name: &TableName,
        record: Option<&TableRecord>,
    ) -> Result<Option<Mark>, Error> {
        let recorded = record.and_then(|r| self.recorded(r));
        let intents = record.and_then(|r| r.intents.clone());
        recover_mark(self.store.as_ref(), name, recorded, intents, &self.format)
            .await
            .map_err(|e| {
                crate::error::Failure::new(
                    crate::error::Kind::Recoverable,
                    format!("reading back the CDC files: {e}"),
                )
                .table(name.to_string())
                .into()
            })
    }

    fn recorded(&self, record: &TableRecord) -> Option<Mark> {
        record.mark
    }

    fn record(&mut self, _table: &str, record: &mut TableRecord, mark: Option<Mark>) {
        record.mark = mark;
    }

    async fn write(&mut self, changes: &[Arc<TableChanges>]) -> Result<(), Error> {
        // Hand-offs come as often as every commit (with a cache): they join the table's coming
        // file while its folder and schema stay the same.
        for c in changes {
            let ch = &c.changes;
            let open = self.pending.iter_mut().rev().find(|p| p.table == c.key);
            match open {
                Some(p) if p.key.is_none() && p.folder == ch.folder && p.schema == ch.schema => {
                    p.last = ch.last;
                    p.batches.extend(ch.batches.iter().cloned());
                }
                _ => self.pending.push(Pending {
                    table: c.key.clone(),
                    name: c.name.clone(),
                    folder: ch.folder.clone(),
                    schema: ch.schema.clone(),
                    first: ch.first,
                    last: ch.last,
                    spilled: None,
                    batches: ch.batches.clone(),
                    key: None,
                }),
            }
        }
        Ok(())
    }

    fn intents(&mut self) -> Vec<(String, String)> {
        let mut named = Vec::new();
        for p in &mut self.pending {
            if p.key.is_none() {
                let mut ms = chrono::Utc::now().timestamp_millis();
                if ms <= self.last_file_ms {
                    ms = self.last_file_ms + 1;
                }
                self.last_file_ms = ms;
                p.key = Some(layout::cdc_file(
                    &p.name,
                    &p.folder,
                    ms,
                    p.first.lsn,
                    p.last.lsn,
                    self.format.extension(),
                ));
            }
            named.push((p.table.clone(), p.key.clone().unwrap_or_default()));
        }
        named
    }

    async fn flush(&mut self) -> Result<Vec<(String, Mark)>, Error> {
        self.intents();
        let work = std::mem::take(&mut self.pending);
        let store = self.store.clone();
        let format = self.format.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for mut p in work {
                let key = p.key.clone().unwrap_or_default();
                let fail = |message: String| WriteError::Encode {
                    key: key.clone(),
                    message,
                };
                // Many small hand-offs make larger batches, so the encoder sees few large ones.
                let in_memory = Coalesce {
                    schema: p.schema.clone(),
                    batches: std::mem::take(&mut p.batches).into(),
                };
                // What was spilled comes first, read back one batch at a time.
                let spilled: Box<dyn Iterator<Item = Result<RecordBatch, WriteError>>> =
                    match p.spilled.as_mut() {
                        Some(f) => Box::new(
                            f.read()
                                .map_err(|e| fail(e.to_string()))?
                                .map(|b| b.map_err(|e| fail(e.to_string()))),
                        ),
                        None => Box::new(std::iter::empty()),
                    };
                let batches = spilled.chain(in_memory.map(|b| b.map_err(|e| fail(e.to_string()))));
                let file = write_file(store.as_ref(), &key, p.schema.clone(), &format, batches)?;
                // The spill file goes with its pending rows, now written.
                out.push((p, file));
            }
            Ok::<_, WriteError>(out)
        })
        .await
        .map_err(|e| Error::Runtime(format!("the CDC file writer crashed: {e}")))?
        .map_err(|e| {
            crate::error::Failure::new(crate::error::Kind::Recoverable, e.to_string()).source(e)
        })?;
        let mut marks = Vec::new();
        for (p, f) in written {
            self.written.rows += f.rows;
            self.written.objects += 1;
            tracing::info!(
                table = %p.table,
                file = %f.key,
                rows = f.rows,
                bytes = f.bytes,
                first_lsn = %Lsn(p.first.lsn),
                last_lsn = %Lsn(p.last.lsn),
                "CDC file written"
            );
            crate::notify::metrics::cdc_file_written(&p.table, f.bytes);
            marks.push((p.table.clone(), p.last));
        }
        Ok(marks)
    }

    fn reset(&mut self) {
        self.pending.clear();
    }

    fn spill(&mut self) -> Result<u64, Error> {
        let mut moved = 0;
        for p in &mut self.pending {
            if p.batches.is_empty() {
                continue;
            }
            if p.spilled.is_none() {
                p.spilled = Some(
                    SpillFile::create(&self.spill_dir, p.schema.clone())
                        .map_err(|e| Error::Runtime(e.to_string()))?,
                );
            }
            let file = p.spilled.as_mut().expect("just created");
            for b in p.batches.drain(..) {
                file.append(&b).map_err(|e| Error::Runtime(e.to_string()))?;
                moved += b.get_array_memory_size() as u64;
            }
        }
        Ok(moved)
    }

    fn written(&self) -> Written {
        self.written
    }
}

/// Consecutive small batches joined into batches of up to 8 MiB, one at a time (each run is
/// let go once joined, so joining holds at most 8 MiB more).
struct Coalesce {
    schema: SchemaRef,
    batches: std::collections::VecDeque<RecordBatch>,
}

impl Iterator for Coalesce {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        const JOINED: usize = 8 << 20;
        let first = self.batches.pop_front()?;
        let mut bytes = first.get_array_memory_size();
        let mut run = vec![first];
        while let Some(b) = self.batches.front() {
            let more = b.get_array_memory_size();
            if bytes + more > JOINED {
                break;
            }
            bytes += more;
            run.extend(self.batches.pop_front());
        }
        Some(match run.len() {
            1 => Ok(run.pop().expect("one batch")),
            _ => arrow::compute::concat_batches(&self.schema, &run),
        })
    }
}

/// Writes `batches` (all of `schema`) as one complete object `key`. Blocking.
pub fn write_file(
    store: &dyn ObjectStore,
    key: &str,
    schema: SchemaRef,
    format: &FileFormat,
    batches: impl IntoIterator<Item = Result<RecordBatch, WriteError>>,
) -> Result<WrittenFile, WriteError> {
    let mut encoder = open_encoder(store, key, schema, format)?;
    let mut rows = 0u64;
    for batch in batches {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                if let Ok(w) = encoder.finish() {
                    w.abort();
                }
                return Err(e);
            }
        };
        let bytes = batch.get_array_memory_size();
        if let Err(e) = encoder.write(&batch, bytes) {
            if let Ok(w) = encoder.finish() {
                w.abort();
            }
            return Err(e.at(key));
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

/// The table's high-water mark: the checkpoint's, moved past the rows of CDC objects that a
/// flush completed after it (a crash between an object and its checkpoint). Only the objects
/// of the recorded intent are read back; without one (a record of an older godwit), every CDC
/// object of the table's folder at or past the mark.
async fn recover_mark(
    store: &dyn ObjectStore,
    table: &TableName,
    recorded: Option<Mark>,
    intents: Option<Vec<String>>,
    format: &FileFormat,
) -> Result<Option<Mark>, String> {
    let keys = match intents {
        Some(keys) => keys,
        None => {
            let prefix = layout::table_prefix(table);
            let objects = store.list(&prefix).await.map_err(|e| e.to_string())?;
            objects
                .into_iter()
                .filter(|o| {
                    if !o
                        .key
                        .strip_prefix(&prefix)
                        .is_some_and(layout::in_table_folder)
                    {
                        return false;
                    }
                    let name = o.key.rsplit('/').next().unwrap_or(&o.key);
                    layout::parse_cdc_file(name)
                        .is_some_and(|(_, last)| recorded.is_none_or(|m| last >= m.lsn))
                })
                .map(|o| o.key)
                .collect()
        }
    };
    let mut mark = recorded;
    for key in keys {
        let data = match store.get(&key).await {
            Ok(data) => data,
            // The crash came before this object was complete: nothing of it is visible.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.to_string()),
        };
        let format = format.clone();
        let found = tokio::task::spawn_blocking(move || max_mark(data, &format))
            .await
            .map_err(|e| format!("{key}: reading it back crashed: {e}"))?
            .map_err(|e| format!("{key}: {e}"))?;
        mark = mark.max(found);
    }
    Ok(mark)
}
