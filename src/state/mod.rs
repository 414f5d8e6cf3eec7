//! Task and table states with their statistics (SPEC §7), stored beside the target under
//! `_godwit/state`, and the lease that keeps two runs of one pipeline apart.

pub mod fence;
pub mod local;
pub mod s3;

pub use fence::{Fence, LeaseLost};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sink::files::writer::WrittenFile;

/// A table's state, in DMS words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableState {
    #[serde(rename = "Before load")]
    BeforeLoad,
    #[serde(rename = "Full load")]
    FullLoad,
    #[serde(rename = "Table completed")]
    Completed,
    #[serde(rename = "Table error")]
    Error,
    #[serde(rename = "Table is being reloaded")]
    Reloading,
    #[serde(rename = "CDC")]
    Cdc,
}

impl TableState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TableState::BeforeLoad => "Before load",
            TableState::FullLoad => "Full load",
            TableState::Completed => "Table completed",
            TableState::Error => "Table error",
            TableState::Reloading => "Table is being reloaded",
            TableState::Cdc => "CDC",
        }
    }
}

/// Statistics and state of one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRecord {
    pub state: TableState,
    pub estimated_rows: u64,
    pub full_load_rows: u64,
    pub full_load_bytes: u64,
    pub files: Vec<WrittenFile>,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub data_errors: u64,
    pub last_lsn: Option<String>,
    pub last_error: Option<String>,
    pub remedy: Option<String>,
    pub load_started_at: Option<String>,
    pub load_completed_at: Option<String>,
    pub load_seconds: Option<f64>,
    /// Parallel segments of the load (empty when read as one stream).
    #[serde(default)]
    pub segments: Vec<SegmentRecord>,
    /// A partitioned table's partition fingerprint (see `pg::catalog::partition_fingerprints`)
    /// in the snapshot its files were loaded from; CDC reloads the table when it changes.
    #[serde(default)]
    pub fingerprint: String,
    /// A reload's new load (`files`, staged) is complete and being switched in; a run that
    /// finds this set finishes the switch before anything else.
    #[serde(default)]
    pub switch_pending: bool,
    /// CDC high-water mark: every change at or below it is in the target already.
    #[serde(default)]
    pub mark: Option<Mark>,
    /// The cache's (Redis) high-water mark, when the pipeline has a `[cache]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_mark: Option<Mark>,
    /// Per cache projection of the table (in the pipeline file's order): operations sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_projections: Vec<ProjectionCounts>,
    /// The CDC objects the flush in progress is about to write (its intent, saved before the
    /// first of them): at start, only these are read back to move the mark past what a crash
    /// left unrecorded. `None` in a record of an older godwit, whose start-up lists the table's
    /// folder instead.
    #[serde(default)]
    pub intents: Option<Vec<String>>,
}

/// What one cache projection of a table was sent, over every run (full loads, reloads, CDC;
/// a replay counts again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionCounts {
    /// `type key` as in the pipeline file (`hash user:{id}`).
    pub projection: String,
    /// Keys or members written (set, added, appended, published).
    pub written: u64,
    /// Keys or members removed (deleted, invalidated).
    pub removed: u64,
}

impl ProjectionCounts {
    /// Adds `more` (the same projections, in order) to `all`.
    pub fn add(all: &mut Vec<ProjectionCounts>, more: &[ProjectionCounts]) {
        for (i, m) in more.iter().enumerate() {
            match all.get_mut(i) {
                Some(a) if a.projection == m.projection => {
                    a.written += m.written;
                    a.removed += m.removed;
                }
                Some(a) => *a = m.clone(),
                None => all.push(m.clone()),
            }
        }
    }
}

/// A position in the change stream: a transaction's commit LSN and the change's order in
/// it (`_lsn`, `_seq` of the CDC files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mark {
    pub lsn: u64,
    pub seq: u64,
}

/// What CDC created on the source and where it stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CdcRecord {
    pub slot: String,
    /// godwit created the slot (so `drop` removes it, and a missing one is an alarm).
    pub slot_created: bool,
    /// Publications godwit created (an existing one named in the file is never listed).
    pub publications_created: Vec<String>,
    /// The publications the stream reads.
    pub publications: Vec<String>,
    /// The initial full load from the slot's snapshot finished (full-load-and-cdc).
    pub full_load_done: bool,
    /// The slot's consistent point when godwit created it.
    pub consistent_point: Option<String>,
    /// The last position confirmed to the slot.
    pub confirmed_lsn: Option<String>,
}

/// One parallel segment of a table's load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub number: u32,
    /// Heap blocks `[start, end)`; `end` none for the last segment.
    pub start: u64,
    pub end: Option<u64>,
    pub state: TableState,
    pub rows: u64,
    pub files: Vec<WrittenFile>,
}

impl TableRecord {
    pub fn new(estimated_rows: u64) -> TableRecord {
        TableRecord {
            state: TableState::BeforeLoad,
            estimated_rows,
            full_load_rows: 0,
            full_load_bytes: 0,
            files: Vec::new(),
            inserts: 0,
            updates: 0,
            deletes: 0,
            data_errors: 0,
            last_lsn: None,
            last_error: None,
            remedy: None,
            load_started_at: None,
            load_completed_at: None,
            load_seconds: None,
            segments: Vec::new(),
            fingerprint: String::new(),
            switch_pending: false,
            mark: None,
            cache_mark: None,
            cache_projections: Vec::new(),
            intents: Some(Vec::new()),
        }
    }
}

/// The task as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub pipeline: String,
    pub mode: String,
    /// `running`, `stopped` or `failed`.
    pub state: String,
    pub started_at: String,
    pub stopped_at: Option<String>,
    pub snapshot: Option<String>,
    pub last_error: Option<String>,
    /// Keyed by `schema.table`.
    pub tables: BTreeMap<String, TableRecord>,
    /// CDC modes only.
    #[serde(default)]
    pub cdc: Option<CdcRecord>,
    /// Events SNS had not taken when the run ended (with `[notify] sns_topic_arn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_undelivered: Option<UndeliveredEvents>,
    /// A sharded full load (`run --shard I/N`): N, in the coordinator's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

/// Events a run could not deliver to SNS (they are in the events file and the log).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndeliveredEvents {
    pub count: u64,
    /// `event_type@time` of the first ones.
    pub events: Vec<String>,
    pub last_error: Option<String>,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source} (move it away to start over)")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "pipeline {pipeline} is already running: the lease {path} is held by {holder}; wait for that run to end or stop it"
    )]
    LeaseHeld {
        pipeline: String,
        path: String,
        holder: String,
    },
    /// The lease was lost, or another writer changed the state: this run must stop.
    #[error("{0}")]
    LeaseLost(#[from] LeaseLost),
}

impl StateError {
    /// Whether another run may own the pipeline now (stop, do not retry).
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, StateError::LeaseLost(_))
    }
}

/// Where a pipeline's state lives: a local folder or an S3 prefix.
pub enum StateStore {
    Local(local::LocalState),
    S3(s3::S3State),
}

/// Held while a run owns the pipeline. Release it with [`Lease::release`]; a lease that is
/// only dropped is released in the background (local: at once; S3: best effort).
pub enum Lease {
    Local(local::LocalLease),
    S3(s3::S3Lease),
}

impl Lease {
    /// The fence every write of this run checks.
    pub fn fence(&self) -> Fence {
        match self {
            Lease::Local(_) => Fence::open(),
            Lease::S3(l) => l.fence(),
        }
    }

    pub async fn release(self) {
        match self {
            Lease::Local(l) => drop(l),
            Lease::S3(l) => l.release().await,
        }
    }
}

impl StateStore {
    /// Where the state is, for messages.
    pub fn describe(&self) -> String {
        match self {
            StateStore::Local(l) => format!("file://{}", l.dir().display()),
            StateStore::S3(s) => s.describe(),
        }
    }

    /// Takes the pipeline's lease, or says who holds it.
    pub async fn acquire_lease(&self, pipeline: &str) -> Result<Lease, StateError> {
        match self {
            StateStore::Local(l) => l.acquire_lease(pipeline).map(Lease::Local),
            StateStore::S3(s) => s.acquire_lease(pipeline).await.map(Lease::S3),
        }
    }

    /// The fence of the lease this run took from this store (an open one for a local lease,
    /// or before any lease is taken).
    pub fn fence(&self) -> Fence {
        match self {
            StateStore::Local(_) => Fence::open(),
            StateStore::S3(s) => s.fence(),
        }
    }

    /// Who holds the lease right now, if anyone (without taking it or creating anything);
    /// an error when the lease cannot be read.
    pub async fn lease_holder(&self) -> Result<Option<String>, StateError> {
        match self {
            StateStore::Local(l) => Ok(l.lease_holder()),
            StateStore::S3(s) => s.lease_holder().await,
        }
    }

    /// The stored task record, if any run wrote one.
    pub async fn load(&self) -> Result<Option<TaskRecord>, StateError> {
        match self {
            StateStore::Local(l) => l.load(),
            StateStore::S3(s) => s.load().await,
        }
    }

    /// Queues a fresh full load of `table` (`schema.table`) for the running or next run.
    pub async fn request_reload(&self, table: &str) -> Result<(), StateError> {
        match self {
            StateStore::Local(l) => l.request_reload(table),
            StateStore::S3(s) => s.request_reload(table).await,
        }
    }

    /// Tables with a pending reload request.
    pub async fn reload_requests(&self) -> Result<Vec<String>, StateError> {
        match self {
            StateStore::Local(l) => l.reload_requests(),
            StateStore::S3(s) => s.reload_requests().await,
        }
    }

    /// Marks a reload request done.
    pub async fn clear_reload(&self, table: &str) -> Result<(), StateError> {
        match self {
            StateStore::Local(l) => l.clear_reload(table),
            StateStore::S3(s) => s.clear_reload(table).await,
        }
    }

    /// Removes the stored record.
    pub async fn remove(&self) -> Result<(), StateError> {
        match self {
            StateStore::Local(l) => l.remove(),
            StateStore::S3(s) => s.remove().await,
        }
    }

    /// Replaces the stored record.
    pub async fn save(&self, record: &TaskRecord) -> Result<(), StateError> {
        match self {
            StateStore::Local(l) => {
                // The write ends with two fsyncs: off the async threads.
                let (l, bytes) = (
                    l.clone(),
                    serde_json::to_vec_pretty(record).unwrap_or_default(),
                );
                let path = l.dir().display().to_string();
                tokio::task::spawn_blocking(move || l.save(&bytes))
                    .await
                    .map_err(|e| StateError::Io {
                        path,
                        source: std::io::Error::other(e),
                    })?
            }
            StateStore::S3(s) => s.save(record).await,
        }
    }
}

/// The file/object name of a table's reload request: the name hex-encoded (any character is
/// safe in a key then).
fn request_name(table: &str) -> String {
    table.bytes().map(|b| format!("{b:02x}")).collect()
}

/// This process's run id: random (uuid v4), so two runs never look alike — containers reuse
/// host names and pids.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// The lease holder's identity: host, pid, run id, since when (and, for S3, when it expires).
fn holder_json(since: &str, expires_at: Option<i64>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "host": gethostname::gethostname().to_string_lossy(),
        "pid": std::process::id(),
        "run": run_id(),
        "since": since,
    });
    if let Some(e) = expires_at {
        v["expires_at"] = e.into();
    }
    v
}

/// The current time as the lease's `since` shows it.
fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// "pid N on HOST (run ID) since TIME" from the lease file's JSON.
fn describe_holder(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text.trim())
        .map(|v| {
            let run = v["run"]
                .as_str()
                .map(|r| format!(" (run {r})"))
                .unwrap_or_default();
            format!(
                "pid {} on {}{run} since {}",
                v["pid"],
                v["host"].as_str().unwrap_or("?"),
                v["since"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_else(|_| "another process".into())
}
