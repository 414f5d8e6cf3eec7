//! Reloading single tables while CDC follows the rest, the way PostgreSQL's own table-sync
//! workers do it: a temporary slot with an exported snapshot for the table's full load; the
//! slot's consistent point becomes the table's high-water mark, so CDC skips exactly the
//! changes the snapshot already holds.

use super::full_load::{self, RunOptions, Shared};
use super::plan::TablePlan;
use crate::config::Pipeline;
use crate::error::Error;
use crate::pg::connect::Endpoint;
use crate::pg::lsn::Lsn;
use crate::pg::replication::session::NewSlot;
use crate::sink::files::{ObjectStore, layout};
use crate::state::TaskRecord;

/// Loads `plans` from a temporary slot's snapshot; returns the updated record and the slot's
/// consistent point (changes committed before it are in the load).
pub(crate) async fn load_from_temporary_slot(
    p: &Pipeline,
    progress: bool,
    shared: Shared,
    endpoint: &Endpoint,
    publications: &[String],
    plans: Vec<TablePlan>,
    record: TaskRecord,
) -> Result<(TaskRecord, Lsn), Error> {
    let mut name = format!("{}_reload_{}", p.source.slot, std::process::id());
    name.truncate(63);
    let temp = NewSlot::create(endpoint, &name, publications, true)
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let point = temp.consistent_point;
    let outcome = full_load::load(
        p,
        &RunOptions { progress },
        shared,
        &temp.snapshot,
        plans,
        record,
    )
    .await;
    // Ending the session drops the temporary slot.
    drop(temp);
    match outcome.fatal {
        Some(e) => Err(Error::Runtime(e)),
        None => Ok((outcome.record, point)),
    }
}

/// Removes a table's CDC files: a reload's snapshot holds everything they held.
pub(crate) async fn remove_cdc_files(
    store: &dyn ObjectStore,
    table: &crate::pg::catalog::TableName,
) -> std::io::Result<usize> {
    let prefix = layout::table_prefix(table);
    let mut n = 0;
    for o in store.list(&prefix).await? {
        let name = o.key.rsplit('/').next().unwrap_or(&o.key);
        if layout::parse_cdc_file(name).is_some() {
            store.delete(&o.key).await?;
            n += 1;
        }
    }
    Ok(n)
}
