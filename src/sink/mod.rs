//! Sinks: where data goes. Every output (files now; Redis next) implements the same contract for
//! CDC — take committed changes, make them durable when asked, say per table up to which
//! position they are durable, and find that position again at start — so the apply loop does
//! not know what an output is. The slot is confirmed only at the lowest position every sink
//! holds.

pub mod files;

use std::sync::Arc;

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

    /// Takes committed changes. A sink that serves readers at once writes them now; the files
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

    /// What this sink wrote so far in this run.
    fn written(&self) -> Written;
}

/// Rows (changes) and objects (files, keys) a sink wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    pub rows: u64,
    pub objects: u64,
}
