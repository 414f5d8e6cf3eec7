//! Sinks: where data goes. Every output (files now; Redis next) implements the same contract for
//! CDC — take committed changes, make them durable when asked, say per table up to which
//! position they are durable, and find that position again at start — so the apply loop does
//! not know what an output is. The slot is confirmed only at the lowest position every sink
//! holds.

pub mod files;
pub mod redis;

use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;

use crate::batch::changes::Changes;
use crate::error::Error;
use crate::pg::catalog::TableName;
use crate::state::{Mark, TableRecord};

/// Committed changes of one followed table, in the CDC layout of the SPEC (`Op`, the columns,
/// `_lsn`, `_seq`, `_unchanged`), in (`_lsn`, `_seq`) order. Shared by every sink, never copied.
pub struct TableChanges {
    /// `schema.table`, as the state names it.
    pub key: String,
    pub name: TableName,
    pub changes: Changes,
}

impl TableChanges {
    /// The rows after `mark` (a sink that already holds some of them): `None` when none are.
    pub fn after(self: &Arc<Self>, mark: Option<Mark>) -> Option<Arc<TableChanges>> {
        let Some(m) = mark else {
            return Some(self.clone());
        };
        let c = &self.changes;
        if c.last <= m {
            return None;
        }
        if c.first > m {
            return Some(self.clone());
        }
        let mut batches = Vec::new();
        let mut before = Vec::new();
        for (i, b) in c.batches.iter().enumerate() {
            let keep = rows_after(b, m)?;
            let kept = arrow::compute::filter_record_batch(b, &keep).ok()?;
            if kept.num_rows() > 0 {
                batches.push(kept);
                if let Some(images) = c.before.get(i) {
                    before.push(arrow::compute::filter_record_batch(images, &keep).ok()?);
                }
            }
        }
        Some(Arc::new(TableChanges {
            key: self.key.clone(),
            name: self.name.clone(),
            changes: Changes {
                folder: c.folder.clone(),
                first: first_after(&batches).unwrap_or(c.last),
                last: c.last,
                schema: c.schema.clone(),
                batches,
                before,
            },
        }))
    }
}

/// Which rows of a CDC-layout batch have a (`_lsn`, `_seq`) above `m`.
fn rows_after(b: &RecordBatch, m: Mark) -> Option<BooleanArray> {
    let (lsn, seq) = mark_columns(b)?;
    Some(
        (0..b.num_rows())
            .map(|i| {
                Some(
                    Mark {
                        lsn: lsn.value(i) as u64,
                        seq: seq.value(i) as u64,
                    } > m,
                )
            })
            .collect(),
    )
}

/// The first (`_lsn`, `_seq`) of the first non-empty batch.
fn first_after(batches: &[RecordBatch]) -> Option<Mark> {
    let b = batches.first()?;
    let (lsn, seq) = mark_columns(b)?;
    Some(Mark {
        lsn: lsn.value(0) as u64,
        seq: seq.value(0) as u64,
    })
}

/// The `_lsn` and `_seq` columns (the last ones of those names: a source column may share it).
fn mark_columns(b: &RecordBatch) -> Option<(&Int64Array, &Int64Array)> {
    let fields = b.schema_ref().fields();
    let find = |name: &str| fields.iter().rposition(|f| f.name() == name);
    let lsn = b.column(find("_lsn")?).as_primitive_opt::<Int64Type>()?;
    let seq = b.column(find("_seq")?).as_primitive_opt::<Int64Type>()?;
    Some((lsn, seq))
}

/// One output of CDC.
#[async_trait::async_trait]
pub trait ChangeSink: Send {
    /// For messages and the state (`files`, `redis`).
    fn name(&self) -> &'static str;

    /// The position of `name` durable in this sink: the checkpoint's (`record`), moved past what
    /// the sink completed after it (a crash between a write and its checkpoint). At start and
    /// after the stream broke.
    async fn recover(
        &mut self,
        name: &TableName,
        record: Option<&TableRecord>,
    ) -> Result<Option<Mark>, Error>;

    /// This sink's position of a table as the checkpoint `record` holds it.
    fn recorded(&self, record: &TableRecord) -> Option<Mark>;

    /// Puts this sink's position of a table into the checkpoint `record`.
    fn record(&mut self, table: &str, record: &mut TableRecord, mark: Option<Mark>);

    /// True when this sink wants committed changes as soon as each transaction commits (a
    /// cache serving readers), not only at the next flush.
    fn immediate(&self) -> bool {
        false
    }

    /// Takes committed changes (only those after this sink's own position). A sink that serves readers at once writes them now; the files
    /// sink keeps them for its next files.
    async fn write(&mut self, changes: &[Arc<TableChanges>]) -> Result<(), Error>;

    /// What the next [`flush`](Self::flush) is about to complete, per table key (files: the
    /// object keys), saved in the checkpoint before the flush so that a start after a crash
    /// reads back only those.
    fn intents(&mut self) -> Vec<(String, String)>;

    /// Makes everything taken durable; returns, per table key, the highest position now durable.
    async fn flush(&mut self) -> Result<Vec<(String, Mark)>, Error>;

    /// Forgets what was taken and is not durable (the stream sends it again).
    fn reset(&mut self);
    /// Moves every batch it holds in memory to spill files (the memory budget is exceeded);
    /// returns the bytes moved. A sink that holds nothing between hand-offs moves nothing.
    fn spill(&mut self) -> Result<u64, Error> {
        Ok(0)
    }

    /// What this sink wrote so far in this run.
    fn written(&self) -> Written;

    /// Tables whose copy in this sink was found incomplete at [`recover`](Self::recover) (a
    /// cache that lost acknowledged writes): they must be loaded again.
    fn lost(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// Rows (changes) and objects (files, keys) a sink wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    pub rows: u64,
    pub objects: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn changes(marks: &[(i64, i64)]) -> Arc<TableChanges> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("_lsn", DataType::Int64, false),
            Field::new("_seq", DataType::Int64, false),
        ]));
        let col = |f: fn(&(i64, i64)) -> i64| -> ArrayRef {
            Arc::new(marks.iter().map(f).collect::<Int64Array>())
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![col(|m| m.0 * 10 + m.1), col(|m| m.0), col(|m| m.1)],
        )
        .unwrap();
        let mark = |m: &(i64, i64)| Mark {
            lsn: m.0 as u64,
            seq: m.1 as u64,
        };
        Arc::new(TableChanges {
            key: "public.t".into(),
            name: TableName {
                schema: "public".into(),
                name: "t".into(),
            },
            changes: Changes {
                folder: String::new(),
                first: mark(&marks[0]),
                last: mark(marks.last().unwrap()),
                schema,
                batches: vec![batch.slice(0, 2), batch.slice(2, marks.len() - 2)],
                before: Vec::new(),
            },
        })
    }

    fn ids(c: &TableChanges) -> Vec<i64> {
        c.changes
            .batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    #[test]
    fn a_sink_gets_only_the_rows_after_what_it_holds() {
        let c = changes(&[(5, 2), (5, 4), (7, 2), (7, 4), (9, 2)]);
        let m = |lsn, seq| Some(Mark { lsn, seq });
        assert_eq!(ids(&c.after(None).unwrap()), [52, 54, 72, 74, 92]);
        assert_eq!(ids(&c.after(m(5, 1)).unwrap()), [52, 54, 72, 74, 92]);
        let part = c.after(m(7, 2)).unwrap();
        assert_eq!(ids(&part), [74, 92]);
        assert_eq!(part.changes.first, Mark { lsn: 7, seq: 4 });
        assert_eq!(part.changes.last, Mark { lsn: 9, seq: 2 });
        assert!(c.after(m(9, 2)).is_none());
        assert!(c.after(m(10, 0)).is_none());
    }
}
