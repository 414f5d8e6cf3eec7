//! Spill files: buffered batches moved out of memory when the budget is exceeded, as Arrow
//! IPC streams in `[limits] spill_dir`, read back in the order they were written and removed
//! once what they held is written out (or dropped: a spill file never outlives its owner, and
//! the ones a crash left behind are removed at the next start — the slot sends their changes
//! again).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use super::budget;

/// Why spilling failed: the directory cannot take the file.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot spill buffered changes to {path}: {source}; free space there or set [limits] \
     spill_dir to a writable directory with room (or raise [limits] memory)"
)]
pub struct SpillError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The folder of one pipeline's spill files.
pub fn folder(spill_dir: &Path, pipeline: &str) -> PathBuf {
    spill_dir.join(pipeline)
}

/// Removes the spill files a previous run of `pipeline` left behind (it crashed while some
/// were open); returns how many.
pub fn remove_leftovers(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "arrows") && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// One spill file being appended to.
pub struct SpillFile {
    path: PathBuf,
    writer: Option<StreamWriter<BufWriter<File>>>,
    schema: SchemaRef,
    /// Arrow bytes this file holds (as counted against the budget's spilled bytes).
    bytes: u64,
    rows: u64,
}

impl SpillFile {
    /// Creates a new spill file in `dir` for batches of `schema`.
    pub fn create(dir: &Path, schema: SchemaRef) -> Result<SpillFile, SpillError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.arrows", std::process::id()));
        let fail = |source| SpillError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let file = File::create(&path).map_err(fail)?;
        let writer = StreamWriter::try_new(BufWriter::with_capacity(1 << 20, file), &schema)
            .map_err(|e| fail(std::io::Error::other(e)))?;
        Ok(SpillFile {
            path,
            writer: Some(writer),
            schema,
            bytes: 0,
            rows: 0,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends `batch`.
    pub fn append(&mut self, batch: &RecordBatch) -> Result<(), SpillError> {
        let fail = |source| SpillError {
            path: self.path.clone(),
            source,
        };
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| fail(std::io::Error::other("the spill file is closed")))?;
        writer.write(batch).map_err(|e| match e {
            arrow::error::ArrowError::IoError(_, io) => fail(io),
            e => fail(std::io::Error::other(e)),
        })?;
        let bytes = batch.get_array_memory_size() as u64;
        self.bytes += bytes;
        self.rows += batch.num_rows() as u64;
        budget::global().spill(bytes as i64);
        Ok(())
    }

    /// Ends writing and reads the batches back, one at a time, in order.
    pub fn read(
        &mut self,
    ) -> Result<impl Iterator<Item = Result<RecordBatch, SpillError>> + '_, SpillError> {
        let path = self.path.clone();
        let fail = move |source| SpillError {
            path: path.clone(),
            source,
        };
        if let Some(mut w) = self.writer.take() {
            w.finish().map_err(|e| fail(std::io::Error::other(e)))?;
            w.into_inner()
                .map_err(|e| fail(std::io::Error::other(e)))?
                .into_inner()
                .map_err(|e| fail(e.into_error()))?
                .sync_data()
                .ok();
        }
        let file = File::open(&self.path).map_err(fail.clone())?;
        let reader = StreamReader::try_new(BufReader::with_capacity(1 << 20, file), None)
            .map_err(|e| fail(std::io::Error::other(e)))?;
        if reader.schema() != self.schema {
            return Err(fail(std::io::Error::other(
                "the spill file holds another schema",
            )));
        }
        Ok(reader.map(move |b| b.map_err(|e| fail(std::io::Error::other(e)))))
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        self.writer = None;
        let _ = std::fs::remove_file(&self.path);
        budget::global().spill(-(self.bytes as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn batches_come_back_in_order_and_the_file_goes_with_its_owner() {
        let dir = std::env::temp_dir().join(format!("godwit-spill-test-{}", std::process::id()));
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let mut f = SpillFile::create(&dir, schema.clone()).unwrap();
        for i in 0..3 {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(vec![i * 10, i * 10 + 1]))],
            )
            .unwrap();
            f.append(&b).unwrap();
        }
        assert_eq!(f.rows(), 6);
        let values: Vec<i64> = f
            .read()
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                a.values().to_vec()
            })
            .collect();
        assert_eq!(values, vec![0, 1, 10, 11, 20, 21]);
        let path = f.path.clone();
        assert!(path.exists());
        drop(f);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_directory_is_a_clear_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let e = SpillFile::create(Path::new("/proc/godwit-no-such/dir"), schema)
            .err()
            .unwrap();
        let text = e.to_string();
        assert!(text.contains("/proc/godwit-no-such/dir"), "{text}");
        assert!(text.contains("spill_dir"), "{text}");
    }
}
