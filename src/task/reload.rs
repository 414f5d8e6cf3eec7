//! Reloading single tables while CDC follows the rest, the way PostgreSQL's own table-sync
//! workers do it: a temporary slot with an exported snapshot for the table's full load; the
//! slot's consistent point becomes the table's high-water mark, so CDC skips exactly the
//! changes the snapshot already holds.
//!
//! The new load is written beside the old one, under `_godwit/staging/<schema>/<table>/`
//! (outside the table's folder, so no reader of the table sees it), and switched in only when
//! complete: the switch is recorded in the state first (`TableRecord::switch_pending`), then
//! each staged object is moved over its final name, the old load's other objects and the CDC
//! files the new load holds are removed. A switch that was interrupted is finished by the
//! next start. A reload that fails leaves the previous load as it was.

use std::io;
use std::sync::Arc;

use std::collections::BTreeMap;

use super::full_load::{self, RunOptions, Shared, Warm};
use super::partitions;
use super::plan::TablePlan;
use crate::config::Pipeline;
use crate::error::Error;
use crate::pg::catalog::TableName;
use crate::pg::connect::Endpoint;
use crate::pg::lsn::Lsn;
use crate::pg::replication::session::NewSlot;
use crate::sink::files::writer::WrittenFile;
use crate::sink::files::{ObjectInfo, ObjectStore, ObjectWriter, layout};
use crate::state::TaskRecord;

/// Where a reload's load is written until it is switched in.
const STAGING: &str = "_godwit/staging/";

/// The staged name of final key `key`.
pub(crate) fn staged(key: &str) -> String {
    format!("{STAGING}{key}")
}

/// How a reload's load went.
pub(crate) enum Attempt {
    /// The load ran (each table's record says whether it completed); changes committed before
    /// `point` are in it; `fingerprints` are the partitioned tables' in its snapshot.
    Loaded {
        record: Box<TaskRecord>,
        point: Lsn,
        fingerprints: BTreeMap<String, String>,
        /// The run context stopped the load before every table completed (those tables were
        /// not loaded, which is no failure of theirs).
        interrupted: bool,
    },
    /// No load could start (the temporary slot or its snapshot failed): why.
    NotStarted(String),
    /// The run context stopped the run before the load started (creating the temporary slot
    /// waits for the transactions running then to end): why.
    Stopped(String),
}

/// Loads `plans` from a temporary slot's snapshot into the staging area. `Err` only when the
/// task must stop (the `stop-task` policy, a crashed loader).
pub(crate) async fn load_from_temporary_slot(
    p: &Pipeline,
    opts: &RunOptions,
    shared: Shared,
    endpoint: &Endpoint,
    publications: &[String],
    plans: Vec<TablePlan>,
    record: TaskRecord,
) -> Result<Attempt, Error> {
    let name = temporary_slot_name(&p.source.slot);
    // The slot is temporary: a creation given up (its session closed) leaves nothing.
    let created = tokio::select! {
        created = NewSlot::create(endpoint, &name, publications, true) => created,
        why = opts.run.stopping() => return Ok(Attempt::Stopped(why)),
    };
    let temp = match created {
        Ok(t) => t,
        Err(e) => return Ok(Attempt::NotStarted(format!("creating slot {name}: {e}"))),
    };
    let point = temp.consistent_point;
    let fingerprints = match partitions::in_snapshot(&shared.source, &temp.snapshot, &plans).await {
        Ok(f) => f,
        Err(e) => {
            return Ok(Attempt::NotStarted(format!(
                "reading the partitions in the reload's snapshot: {e}"
            )));
        }
    };
    let shared = Shared {
        store: Arc::new(Staging {
            inner: shared.store,
        }),
        cache: shared.cache.map(|w| Warm { at: point, ..w }),
        ..shared
    };
    let outcome = full_load::load(p, opts, shared, &temp.snapshot, plans, record).await;
    // Ending the session drops the temporary slot.
    drop(temp);
    match outcome.fatal {
        // The temporary slot's session ended under the load: this attempt is over, the next
        // one makes a new slot (the reload is retried after a back-off).
        Some(Error::Failed(f)) if f.is_snapshot_gone() => Ok(Attempt::NotStarted(f.message())),
        Some(e) => Err(e),
        None => Ok(Attempt::Loaded {
            record: Box::new(outcome.record),
            point,
            fingerprints,
            interrupted: outcome.summary.interrupted.is_some(),
        }),
    }
}

/// A name for a reload's temporary slot that no other attempt uses: an attempt given up while
/// its slot was being created (a deadline) can still hold its name on the server for a moment,
/// a long-lived process (a Lambda function) makes many attempts, and a crashed container's
/// session may still hold the name the next container (also pid 1) would pick.
fn temporary_slot_name(slot: &str) -> String {
    static ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The pid alone is not enough: in a container every process is pid 1.
    let random = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let suffix = format!("_reload_{}_{n}_{random}", std::process::id());
    // Slot names have at most 63 characters (and are ASCII): the suffix always stays whole.
    let keep = 63usize.saturating_sub(suffix.len()).min(slot.len());
    format!("{}{suffix}", &slot[..keep])
}

/// Puts a complete staged load of `table` in place (see the module comment): `files` are the
/// new load's objects (final keys), `up_to` the last commit LSN the new load holds. Safe to
/// repeat after an interruption.
pub(crate) async fn switch(
    store: &dyn ObjectStore,
    table: &TableName,
    files: &[WrittenFile],
    up_to: u64,
) -> io::Result<()> {
    for f in files {
        match store.rename(&staged(&f.key), &f.key).await {
            // Moved already, by the run that was interrupted.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    super::full_load::remove_stale_files(store, table, files).await?;
    remove_cdc_files(store, table, up_to).await?;
    discard_staged(store, table).await
}

/// Removes what a reload of `table` left in the staging area.
pub(crate) async fn discard_staged(store: &dyn ObjectStore, table: &TableName) -> io::Result<()> {
    for o in store.list(&staged(&layout::table_prefix(table))).await? {
        store.delete(&o.key).await?;
    }
    Ok(())
}

/// Removes a table's CDC files whose commits are all at or below `up_to`: a load taken
/// after them holds everything they held.
pub(crate) async fn remove_cdc_files(
    store: &dyn ObjectStore,
    table: &TableName,
    up_to: u64,
) -> io::Result<usize> {
    let prefix = layout::table_prefix(table);
    let mut n = 0;
    for o in store.list(&prefix).await? {
        // Only the table's own folder and its date folders: another pipeline's prefix may
        // sit deeper inside it.
        if !o
            .key
            .strip_prefix(&prefix)
            .is_some_and(layout::in_table_folder)
        {
            continue;
        }
        let name = o.key.rsplit('/').next().unwrap_or(&o.key);
        if layout::parse_cdc_file(name).is_some_and(|(_, last)| last <= up_to) {
            store.delete(&o.key).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// The target seen through the staging area: every key is written, listed and removed under
/// [`STAGING`], and reported without it.
struct Staging {
    inner: Arc<dyn ObjectStore>,
}

#[async_trait::async_trait]
impl ObjectStore for Staging {
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        self.inner.create(&staged(key))
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        Ok(self
            .inner
            .list(&staged(prefix))
            .await?
            .into_iter()
            .map(|o| ObjectInfo {
                key: o.key[STAGING.len()..].to_string(),
                size: o.size,
            })
            .collect())
    }

    async fn get(&self, key: &str) -> io::Result<bytes::Bytes> {
        self.inner.get(&staged(key)).await
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        self.inner.delete(&staged(key)).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(&staged(from), &staged(to)).await
    }

    fn describe(&self) -> String {
        format!("{} (staging)", self.inner.describe())
    }

    async fn probe(&self) -> io::Result<String> {
        self.inner.probe().await
    }

    async fn cleanup_incomplete(&self, prefixes: &[String]) -> io::Result<usize> {
        let staged: Vec<String> = prefixes.iter().map(|p| staged(p)).collect();
        self.inner.cleanup_incomplete(&staged).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::files::local::LocalStore;
    use std::io::Write;

    fn put(store: &dyn ObjectStore, key: &str, body: &str) {
        let mut w = store.create(key).unwrap();
        w.write_all(body.as_bytes()).unwrap();
        w.complete().unwrap();
    }

    fn file(key: &str) -> WrittenFile {
        WrittenFile {
            key: key.into(),
            rows: 1,
            bytes: 1,
        }
    }

    #[test]
    fn temporary_slot_names_differ_and_fit() {
        let long = "s".repeat(63);
        let (a, b) = (temporary_slot_name(&long), temporary_slot_name(&long));
        assert_ne!(a, b);
        assert!(a.len() <= 63 && b.len() <= 63, "{a}");
        assert!(temporary_slot_name("godwit").starts_with("godwit_reload_"));
    }

    #[tokio::test]
    async fn a_switch_replaces_the_load_and_can_be_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path()));
        let t = TableName::new("public", "t");
        put(store.as_ref(), "public/t/LOAD00000001.parquet", "old1");
        put(store.as_ref(), "public/t/LOAD00000002.parquet", "old2");
        put(
            store.as_ref(),
            "public/t/20260101-000000000-0000000000000010-0000000000000020.parquet",
            "cdc-old",
        );
        put(
            store.as_ref(),
            "public/t/20260101-000000000-0000000000000090-0000000000000090.parquet",
            "cdc-new",
        );
        let staging = Staging {
            inner: store.clone(),
        };
        put(&staging, "public/t/LOAD00000001.parquet", "new1");
        let listed = staging.list("public/t/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "public/t/LOAD00000001.parquet");
        // Readers of the table folder see only the old load so far.
        assert_eq!(
            &store.get("public/t/LOAD00000001.parquet").await.unwrap()[..],
            b"old1"
        );
        let files = [file("public/t/LOAD00000001.parquet")];
        switch(store.as_ref(), &t, &files, 0x50).await.unwrap();
        switch(store.as_ref(), &t, &files, 0x50).await.unwrap();
        let keys: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(
            keys,
            vec![
                "public/t/20260101-000000000-0000000000000090-0000000000000090.parquet",
                "public/t/LOAD00000001.parquet",
            ]
        );
        assert_eq!(
            &store.get("public/t/LOAD00000001.parquet").await.unwrap()[..],
            b"new1"
        );
    }
}
