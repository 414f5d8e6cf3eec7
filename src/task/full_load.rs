//! The full load: every selected table read from one exported snapshot, `load.parallel` at a
//! time, each through COPY → Arrow → Parquet or CSV with reading and encoding overlapped, table
//! states and events kept as it goes, and the error policies applied.

use crate::pg::lsn::Lsn;
use crate::sink::redis::writer::{CacheLoad, CacheTarget};
use crate::state::{Mark, ProjectionCounts};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::{Segment, TablePlan};
use super::progress::Progress;
use super::run_context::RunContext;
use super::shard::Shard;
use super::{Discovered, Started};
use crate::config::{Compression, DataErrorPolicy, Format, Pipeline, TableErrorPolicy, TargetUrl};
use crate::error::{Error, Failure, Kind};
use crate::notify::{EventKind, Notifier};
use crate::pg::catalog::TableName;
use crate::pg::connect::Source;
use crate::pg::copy::{CopyError, HeldBatch, RowError, run_copy};
use crate::pg::import_snapshot;
use crate::sink::files::csv::CsvOptions;
use crate::sink::files::writer::{
    Codec, FileFormat, FileSettings, LoadWriter, WriteError, WrittenFile,
};
use crate::sink::files::{ObjectStore, layout};
use crate::state::{SegmentRecord, StateStore, TableRecord, TableState, TaskRecord};

/// How a run was asked to behave.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Draw progress bars (stderr is a terminal).
    pub progress: bool,
    /// What stops the run (signals, `--max-duration`, an invocation's deadline).
    pub run: RunContext,
    /// This process's share of a sharded full load (`--shard I/N`).
    pub shard: Option<Shard>,
}

/// How a run ended (when it did not fail as a whole).
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub tables: usize,
    pub tables_in_error: usize,
    pub rows: u64,
    /// Why the run stopped before its work was done (a signal, a deadline): the next run
    /// goes on from there.
    pub interrupted: Option<String>,
}

/// Why one table's load (or one of its segments) did not complete: the classified failure
/// (data, table, recoverable — retried — or fatal, which fails the run).
#[derive(Debug)]
struct TableFailure {
    failure: Failure,
    /// The data policy said stop-task.
    stop_task: bool,
    /// The failed unit's permit, held until the run has decided what the failure means: under
    /// stop-task no other table starts in between.
    permit: Option<OwnedSemaphorePermit>,
    /// Not a failure: the run context stopped the load (a signal, a deadline) before the unit
    /// finished; what it was writing was aborted, and the next run loads the table again.
    interrupted: bool,
}

impl From<Failure> for TableFailure {
    fn from(failure: Failure) -> TableFailure {
        TableFailure {
            failure,
            stop_task: false,
            permit: None,
            interrupted: false,
        }
    }
}

impl TableFailure {
    /// The load of `table` was stopped by the run context (see [`TableFailure::interrupted`]).
    fn interrupted(table: &str, why: String) -> TableFailure {
        TableFailure {
            interrupted: true,
            ..Failure::new(Kind::Table, format!("stopped before it was loaded ({why})"))
                .table(table)
                .into()
        }
    }
}

/// What marks the table error of a table whose load does not fit in one serverless invocation.
pub(crate) const NEEDS_SCHEDULED: &str = "needs the scheduled shape";

struct Loaded {
    rows: u64,
    files: Vec<WrittenFile>,
    data_errors: u64,
}

/// Everything the table loaders share.
struct Ctx {
    pipeline: Pipeline,
    source: Source,
    snapshot_id: String,
    store: Arc<dyn ObjectStore>,
    state: Arc<StateStore>,
    record: Mutex<TaskRecord>,
    notifier: Arc<Notifier>,
    progress: Progress,
    permits: Arc<Semaphore>,
    load_time: i64,
    /// This process's share of a sharded load, and the units each table starts at.
    shard: Option<Shard>,
    first_units: HashMap<String, usize>,
    /// The state stores of the other shards (the coordinator reads their records).
    shard_stores: Mutex<HashMap<u32, Arc<StateStore>>>,
    cache: Option<Warm>,
    /// Per projected table: whether its warm goes through the version guard (see [`Warm`]).
    cache_guarded: HashMap<String, bool>,
    /// What stops the load.
    run: RunContext,
    /// `batch_bytes` and `row_group_bytes` shared by the files written at once, so that
    /// several parallel loads hold about as much memory as one would.
    batch_bytes: u64,
    row_group_bytes: usize,
}

impl Ctx {
    /// Changes one table's record and persists the task record.
    async fn update(&self, table: &str, f: impl FnOnce(&mut TableRecord)) {
        let mut record = self.record.lock().await;
        if let Some(r) = record.tables.get_mut(table) {
            f(r);
        }
        if let Err(e) = self.state.save(&record).await {
            tracing::error!("cannot save the table state: {e}");
        }
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs a `full-load` pipeline once.
pub async fn run(p: &Pipeline, opts: RunOptions) -> Result<RunSummary, Error> {
    let started = super::start(p).await?;
    let Started {
        store,
        state,
        lease,
        notifier,
        previous,
        discovered,
        cache,
    } = started;
    let Discovered {
        source,
        snapshot,
        plans,
        ..
    } = discovered;
    // A run that did not end cleanly is resumed: the tables it completed are kept, the others
    // load again whole. So is one that ended with tables in `Table error`, or when reloads
    // were asked for (`godwit reload --table`): those tables load again, the completed ones
    // are kept (as DMS reloads the tables in error). A run after a clean end with nothing
    // asked for takes a new snapshot and reloads everything.
    let requested: BTreeSet<String> = match state.reload_requests().await {
        Ok(r) => r.into_iter().collect(),
        Err(e) => {
            lease.release().await;
            return Err(Error::Runtime(format!("reading reload requests: {e}")));
        }
    };
    let resumable = match previous {
        Some(r)
            if r.state != "stopped"
                || !requested.is_empty()
                || r.tables.values().any(|t| t.state == TableState::Error) =>
        {
            let mut tables = r.tables;
            tables.retain(|k, _| !requested.contains(k));
            tables
        }
        _ => BTreeMap::new(),
    };
    // In a serverless invocation, a table found too big for one (see `needs_scheduled`) is
    // not tried again by every invocation: it stays in error until a reload is asked for.
    let too_big: BTreeMap<String, TableRecord> = if opts.run.is_invocation() {
        resumable
            .iter()
            .filter(|(_, r)| {
                r.state == TableState::Error
                    && r.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains(NEEDS_SCHEDULED))
            })
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut record = new_record(p, &plans, &resumable, snapshot.id());
    // The coordinator of a sharded load says so: the other shards wait for this record.
    record.shards = opts.shard.map(|s| s.count);
    for (k, r) in &too_big {
        tracing::warn!(table = %k, "{}", r.last_error.as_deref().unwrap_or(NEEDS_SCHEDULED));
        record.tables.insert(k.clone(), r.clone());
    }
    let plans: Vec<TablePlan> = plans
        .into_iter()
        .filter(|pl| !too_big.contains_key(&pl.key()))
        .collect();
    if let Err(e) = state.save(&record).await {
        lease.release().await;
        return Err(Error::Runtime(e.to_string()));
    }
    notifier.emit(EventKind::TaskStarted {
        mode: p.mode.as_str().into(),
        tables: plans.len(),
    });
    // The cache's rows carry the WAL position of the snapshot: a later run's load is newer.
    let cache = match cache {
        Some(target) => {
            match crate::pg::replication::slot::current_wal_lsn(snapshot.client()).await {
                Ok(at) => Some(Warm {
                    target,
                    at,
                    racing: false,
                }),
                Err(e) => {
                    lease.release().await;
                    return Err(Error::Runtime(format!("reading pg_current_wal_lsn(): {e}")));
                }
            }
        }
        None => None,
    };
    let shared = Shared {
        source,
        store,
        state: state.clone(),
        notifier: notifier.clone(),
        cache,
    };
    let snapshot_id = snapshot.id().to_string();
    let mut outcome = load(p, &opts, shared, &snapshot_id, plans, record).await;
    outcome.summary.tables += too_big.len();
    outcome.summary.tables_in_error += too_big.len();
    // Every worker has imported the snapshot and finished; the exporting transaction can end.
    let _ = snapshot.release().await;
    let mut record = outcome.record;
    record.state = if outcome.fatal.is_some() {
        "failed"
    } else if outcome.summary.interrupted.is_some() {
        // Not ended: the next run resumes (keeps the completed tables, loads the others).
        "interrupted"
    } else {
        "stopped"
    }
    .into();
    record.stopped_at = Some(now());
    record.last_error = outcome.fatal.as_ref().map(|e| e.to_string());
    notifier.emit(match &outcome.fatal {
        Some(error) => EventKind::TaskFailed {
            error: error.to_string(),
        },
        None => EventKind::TaskStopped {
            seconds: outcome.seconds,
            tables_in_error: outcome.summary.tables_in_error,
        },
    });
    record.events_undelivered = crate::notify::undelivered(notifier.close(super::SNS_GRACE).await);
    if let Err(e) = state.save(&record).await {
        tracing::error!("cannot save the task state: {e}");
    }
    lease.release().await;
    match outcome.fatal {
        Some(error) => Err(error),
        None => {
            // The reloads asked for are done once their tables completed.
            for (table, r) in &record.tables {
                if r.state == TableState::Completed && requested.contains(table) {
                    let _ = state.clear_reload(table).await;
                }
            }
            Ok(outcome.summary)
        }
    }
}

/// Shard `shard` (2..N) of a sharded `full-load`: waits for the coordinator's record, imports
/// its snapshot and loads this shard's units, recording them under `<state>/shard-I/` (see
/// `task::shard`). The coordinator completes the tables.
pub async fn run_shard(p: &Pipeline, opts: RunOptions, shard: Shard) -> Result<RunSummary, Error> {
    let main = super::state_store(p).await?;
    let Some(coordinator) = super::shard::wait_for_coordinator(
        &main,
        shard,
        &opts.run,
        std::time::Duration::from_secs(600),
    )
    .await?
    else {
        tracing::info!(shard = %shard, "the initial load is done and CDC follows the slot: nothing left for this shard");
        return Ok(RunSummary {
            tables: 0,
            tables_in_error: 0,
            rows: 0,
            interrupted: None,
        });
    };
    let snapshot_id = coordinator.snapshot.clone().unwrap_or_default();
    let state = Arc::new(super::shard::store(p, shard.index).await?);
    let lease = state
        .acquire_lease(&format!("{} (shard {shard})", p.name))
        .await
        .map_err(|e| Error::Startup(e.to_string()))?;
    // The catalog (the plans' columns and types); its own snapshot is not used.
    let discovered = match super::discover(p).await {
        Ok(d) => d,
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    let _ = discovered.snapshot.release().await;
    let previous = state.load().await.ok().flatten();
    // What this shard completed under the same snapshot is kept (it was killed and runs
    // again); anything from another snapshot is not.
    let kept = previous.filter(|r| r.snapshot.as_deref() == Some(snapshot_id.as_str()));
    let mut plans = Vec::new();
    let mut record = new_record(p, &[], &BTreeMap::new(), &snapshot_id);
    for mut plan in discovered.plans {
        let key = plan.key();
        let Some(theirs) = coordinator.tables.get(&key) else {
            continue;
        };
        let mut mine = theirs.clone();
        mine.state = TableState::BeforeLoad;
        mine.files.clear();
        for s in &mut mine.segments {
            let done = kept.as_ref().and_then(|k| {
                k.tables
                    .get(&key)?
                    .segments
                    .iter()
                    .find(|d| d.number == s.number && d.state == TableState::Completed)
            });
            *s = match done {
                Some(d) => d.clone(),
                None => SegmentRecord {
                    state: TableState::BeforeLoad,
                    rows: 0,
                    files: Vec::new(),
                    ..s.clone()
                },
            };
        }
        if theirs.state == TableState::Completed {
            // Kept by the coordinator from an earlier run: nothing to load.
            mine.state = TableState::Completed;
        } else if mine.segments.is_empty()
            && let Some(k) = kept.as_ref().and_then(|k| k.tables.get(&key))
            && k.state == TableState::Completed
        {
            mine = k.clone();
        }
        plan.segments = mine
            .segments
            .iter()
            .map(|s| Segment {
                number: s.number,
                start: s.start,
                end: s.end,
            })
            .collect();
        record.tables.insert(key, mine);
        plans.push(plan);
    }
    if let Err(e) = state.save(&record).await {
        lease.release().await;
        return Err(Error::Runtime(e.to_string()));
    }
    let store = match super::target_store(p).await {
        Ok(s) => crate::sink::files::fenced::FencedStore::wrap(s, lease.fence()),
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    let notifier = match Notifier::open(&p.name, &p.notify.events_file) {
        Ok(n) => Arc::new(n),
        Err(e) => {
            lease.release().await;
            return Err(Error::Startup(format!(
                "cannot open the events file {}: {e}",
                p.notify.events_file.display()
            )));
        }
    };
    tracing::info!(shard = %shard, snapshot = %snapshot_id, "loading this shard's part of the full load");
    let shared = Shared {
        source: discovered.source,
        store,
        state: state.clone(),
        notifier,
        cache: None,
    };
    // Units are numbered over the coordinator's tables, kept ones included.
    let mut numbered = record.clone();
    for (key, t) in &coordinator.tables {
        numbered
            .tables
            .entry(key.clone())
            .or_insert_with(|| t.clone());
    }
    let outcome = load_numbered(
        p,
        &opts,
        shared,
        &snapshot_id,
        plans,
        record,
        &numbered.tables,
    )
    .await;
    let mut record = outcome.record;
    record.state = if outcome.fatal.is_some() {
        "failed"
    } else {
        "stopped"
    }
    .into();
    record.stopped_at = Some(now());
    record.last_error = outcome.fatal.as_ref().map(|e| e.to_string());
    if let Err(e) = state.save(&record).await {
        tracing::error!("cannot save the shard's state: {e}");
    }
    lease.release().await;
    match outcome.fatal {
        Some(e) => Err(e),
        None => Ok(outcome.summary),
    }
}

/// A fresh task record for a load of `plans`, keeping what `resumable` completed.
pub(crate) fn new_record(
    p: &Pipeline,
    plans: &[TablePlan],
    resumable: &BTreeMap<String, TableRecord>,
    snapshot: &str,
) -> TaskRecord {
    TaskRecord {
        pipeline: p.name.clone(),
        mode: p.mode.as_str().to_string(),
        state: "running".into(),
        started_at: now(),
        stopped_at: None,
        snapshot: Some(snapshot.to_string()),
        last_error: None,
        tables: plans
            .iter()
            .map(|pl| (pl.key(), initial_record(pl, resumable.get(&pl.key()))))
            .collect(),
        cdc: None,
        events_undelivered: None,
        shards: None,
    }
}

/// What the loaders need from the run around them.
pub(crate) struct Shared {
    pub source: Source,
    pub store: Arc<dyn ObjectStore>,
    pub state: Arc<StateStore>,
    pub notifier: Arc<Notifier>,
    /// The cache the load also warms.
    pub cache: Option<Warm>,
}

/// The cache a load warms.
#[derive(Clone)]
pub(crate) struct Warm {
    pub target: Arc<CacheTarget>,
    /// The version the load's rows carry (the snapshot's position).
    pub at: Lsn,
    /// Whether changes may reach the cache while the load runs (a reload during CDC). When not,
    /// a table whose keys are all absent is warmed without the version guard (nothing newer can
    /// exist); otherwise every write is guarded, and once the table is loaded its keys older
    /// than the load are removed (rows deleted while the cache was not following them).
    pub racing: bool,
}

/// Per projected table of `plans`, whether its warm must be guarded.
async fn guarded_tables(cache: Option<&Warm>, plans: &[TablePlan]) -> HashMap<String, bool> {
    let mut out = HashMap::new();
    let Some(w) = cache else {
        return out;
    };
    for plan in plans {
        let key = plan.key();
        if !w.target.projects(&key) {
            continue;
        }
        let guarded = w.racing
            || match w.target.untouched(&key).await {
                Ok(untouched) => !untouched,
                Err(e) => {
                    tracing::warn!(table = %key, "{e}; the warm is guarded");
                    true
                }
            };
        tracing::debug!(table = %key, guarded, "cache warm");
        out.insert(key, guarded);
    }
    // Bulk writes of a guarded warm pass while the lanes' high-water keys are below the load
    // (set after the look for existing keys, which must not find these).
    let at = Mark {
        lsn: w.at.0,
        seq: 0,
    };
    if let Err(e) = w.target.raise_high_water(at, !w.racing).await {
        tracing::warn!("{e}; the warm's writes are guarded key by key");
    }
    out
}

/// How a load ended.
pub(crate) struct LoadOutcome {
    pub record: TaskRecord,
    pub summary: RunSummary,
    /// Why the task must stop (stop-task policy, a fatal failure, a crashed loader).
    pub fatal: Option<Error>,
    pub seconds: f64,
}

/// Loads every table of `plans` from snapshot `snapshot_id`, `load.parallel` at a time,
/// keeping the tables `record` marks completed; emits the full-load events.
pub(crate) async fn load(
    p: &Pipeline,
    opts: &RunOptions,
    shared: Shared,
    snapshot_id: &str,
    plans: Vec<TablePlan>,
    record: TaskRecord,
) -> LoadOutcome {
    let numbered = record.tables.clone();
    load_numbered(p, opts, shared, snapshot_id, plans, record, &numbered).await
}

/// [`load`], with a sharded load's units numbered over `numbered` (the coordinator's tables).
async fn load_numbered(
    p: &Pipeline,
    opts: &RunOptions,
    shared: Shared,
    snapshot_id: &str,
    plans: Vec<TablePlan>,
    record: TaskRecord,
    numbered: &BTreeMap<String, TableRecord>,
) -> LoadOutcome {
    let worker = opts.shard.is_some_and(|s| !s.coordinates());
    if !worker {
        shared.notifier.emit(EventKind::FullLoadStarted {
            tables: plans.len(),
            snapshot: snapshot_id.into(),
        });
    }
    let started = Instant::now();
    let writers = concurrent_writers(p, &plans);
    let cache_guarded = guarded_tables(shared.cache.as_ref(), &plans).await;
    let ctx = Arc::new(Ctx {
        pipeline: p.clone(),
        source: shared.source,
        snapshot_id: snapshot_id.to_string(),
        store: shared.store,
        state: shared.state,
        record: Mutex::new(record),
        notifier: shared.notifier,
        cache: shared.cache,
        cache_guarded,
        run: opts.run.clone(),
        progress: Progress::new(opts.progress),
        permits: Arc::new(Semaphore::new(p.load.parallel)),
        batch_bytes: (p.load.batch_bytes / writers as u64)
            .max(4 << 20)
            .min(p.limits.memory / 16),
        row_group_bytes: (p.target.row_group_bytes as usize / writers)
            .max(16 << 20)
            .min(p.limits.memory as usize / 4 / writers),
        load_time: chrono::Utc::now().timestamp_micros(),
        shard: opts.shard,
        first_units: super::shard::first_units(numbered),
        shard_stores: Mutex::new(HashMap::new()),
    });
    let tables = plans.len();
    let mut set = JoinSet::new();
    // Tables start in plan order (schema, name): each waits until the one before it has its
    // first permit, so `load.parallel = 1` loads them one after the other, in order.
    let mut turn: Option<oneshot::Receiver<()>> = None;
    for plan in plans {
        let (started, next) = oneshot::channel();
        let wait = turn.replace(next);
        let kept = record_of(&ctx, &plan.key()).await;
        if kept.state == TableState::Completed {
            tracing::info!(table = %plan.key(), "kept: loaded completely by an earlier run");
            set.spawn(async move {
                if let Some(w) = wait {
                    let _ = w.await;
                }
                drop(started);
                Ok(kept.full_load_rows)
            });
            continue;
        }
        // Log lines about one table carry its name.
        let span = tracing::info_span!("table", table = %plan.key());
        set.spawn(tracing::Instrument::instrument(
            load_one(ctx.clone(), plan, kept, wait, started),
            span,
        ));
    }
    let mut rows = 0;
    let mut in_error = 0;
    let mut fatal = None;
    let mut interrupted = None;
    let fence = ctx.state.fence();
    loop {
        let joined = tokio::select! {
            joined = set.join_next() => match joined {
                Some(j) => j,
                None => break,
            },
            // A run that lost its lease stops loading (its writes are refused anyway).
            lost = fence.lost(), if fatal.is_none() => {
                fatal = Some(Error::Runtime(lost.to_string()));
                set.abort_all();
                continue;
            }
        };
        match joined {
            Ok(Ok(n)) => rows += n,
            Ok(Err(failure)) if failure.interrupted => {
                interrupted
                    .get_or_insert_with(|| ctx.run.reason().unwrap_or_else(|| "stopped".into()));
            }
            Ok(Err(failure)) => {
                // Not the table's fault (a lost lease, a snapshot that is gone): the run fails
                // and the next one resumes, keeping the tables completed so far.
                if failure.failure.kind == Kind::Fatal {
                    if fatal.is_none() {
                        fatal = Some(failure.failure.into());
                        set.abort_all();
                    }
                    continue;
                }
                in_error += 1;
                let stop = failure.stop_task || p.errors.table == TableErrorPolicy::StopTask;
                if stop && fatal.is_none() {
                    fatal = Some(failure.failure.into());
                    set.abort_all();
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                fatal.get_or_insert_with(|| Error::Runtime(format!("a table loader crashed: {e}")));
                set.abort_all();
            }
        }
    }
    if fatal.is_none()
        && let Err(lost) = fence.check()
    {
        fatal = Some(Error::Runtime(lost.to_string()));
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(why) = &interrupted {
        tracing::info!(
            "{why}: the full load stopped before every table was loaded; the next run goes on \
             (completed tables are kept)"
        );
    }
    if fatal.is_none() && interrupted.is_none() && !worker {
        ctx.notifier.emit(EventKind::FullLoadCompleted {
            tables,
            rows,
            seconds,
        });
    }
    let record = ctx.record.lock().await.clone();
    LoadOutcome {
        record,
        summary: RunSummary {
            tables,
            tables_in_error: in_error,
            rows,
            interrupted,
        },
        fatal,
        seconds,
    }
}

/// The record a table starts this run with: the interrupted run's when that run completed
/// the table, otherwise a fresh one. A table the interrupted run did not finish is loaded again
/// whole, so all its segments come from this run's one snapshot: segments kept from an older
/// snapshot would duplicate or lose rows that moved between blocks in the meantime.
fn initial_record(plan: &TablePlan, previous: Option<&TableRecord>) -> TableRecord {
    if let Some(prev) = previous
        && prev.state == TableState::Completed
    {
        let mut r = prev.clone();
        r.estimated_rows = plan.table.estimated_rows.unwrap_or(0);
        return r;
    }
    let mut r = TableRecord::new(plan.table.estimated_rows.unwrap_or(0));
    r.segments = plan
        .segments
        .iter()
        .map(|s| SegmentRecord {
            number: s.number,
            start: s.start,
            end: s.end,
            state: TableState::BeforeLoad,
            rows: 0,
            files: Vec::new(),
        })
        .collect();
    r
}

async fn record_of(ctx: &Ctx, table: &str) -> TableRecord {
    ctx.record.lock().await.tables[table].clone()
}

/// Loads one table (each of its segments when a permit is free) and records the outcome.
async fn load_one(
    ctx: Arc<Ctx>,
    plan: TablePlan,
    start: TableRecord,
    turn: Option<oneshot::Receiver<()>>,
    started: oneshot::Sender<()>,
) -> Result<u64, TableFailure> {
    // The table before this one has its first permit (or ended, or was kept).
    if let Some(t) = turn {
        let _ = t.await;
    }
    let key = plan.key();
    // A stopping run starts no new table.
    if let Some(why) = ctx.run.reason() {
        return Err(TableFailure::interrupted(&key, why));
    }
    let mut first_permit = Some(started);
    let started = Instant::now();
    ctx.update(&key, |r| {
        r.state = TableState::FullLoad;
        r.load_started_at = Some(now());
        r.last_error = None;
        r.remedy = None;
    })
    .await;
    let rows = Arc::new(AtomicU64::new(0));
    let bar = ctx
        .progress
        .table(&key, plan.table.estimated_rows, rows.clone());
    // The units of work: every segment, or the whole table.
    let pending: Vec<Option<Segment>> = if start.segments.is_empty() {
        vec![None]
    } else {
        start
            .segments
            .iter()
            .map(|s| {
                Some(Segment {
                    number: s.number,
                    start: s.start,
                    end: s.end,
                })
            })
            .collect()
    };
    let first_unit = ctx.first_units.get(&key).copied().unwrap_or(0);
    let (pending, others) = split_units(&ctx, first_unit, pending, &start);
    let worker = ctx.shard.is_some_and(|s| !s.coordinates());
    if worker && pending.is_empty() {
        // Nothing of this table is this shard's (or all of it is done already).
        drop(first_permit);
        return Ok(0);
    }
    let plan = Arc::new(plan);
    let mut units = JoinSet::new();
    // Cancelled when this table cannot complete in this run: its units stop at once.
    let abort = CancellationToken::new();
    let mut stopped_early = None;
    // When the table's first unit started reading (a table that never did is no candidate for
    // `needs_scheduled`).
    let mut first_unit_at = None;
    for segment in pending {
        // Permits are taken in segment order, so segment 1 starts first. A stopping run starts
        // no new segment.
        let permit = tokio::select! {
            biased;
            why = ctx.run.stopping() => {
                stopped_early = Some(why);
                break;
            }
            permit = ctx.permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        if let Some(why) = ctx.run.reason() {
            stopped_early = Some(why);
            break;
        }
        first_unit_at.get_or_insert_with(Instant::now);
        if let Some(s) = first_permit.take() {
            let _ = s.send(());
        }
        let (ctx, plan, rows, abort) = (ctx.clone(), plan.clone(), rows.clone(), abort.clone());
        // Log lines of one segment carry its number (the table's span is the parent).
        let span = match &segment {
            Some(s) => tracing::info_span!("segment", segment = s.number),
            None => tracing::Span::current(),
        };
        units.spawn(tracing::Instrument::instrument(
            async move {
                let done =
                    match load_with_retries(&ctx, &plan, segment.as_ref(), rows, &abort).await {
                        Ok(done) => done,
                        Err(mut f) => {
                            f.permit = Some(permit);
                            return Err(f);
                        }
                    };
                if let Some(seg) = segment {
                    ctx.update(&plan.key(), |r| {
                        if let Some(s) = r.segments.iter_mut().find(|s| s.number == seg.number) {
                            s.state = TableState::Completed;
                            s.rows = done.rows;
                            s.files = done.files.clone();
                        }
                    })
                    .await;
                }
                drop(permit);
                Ok::<Loaded, TableFailure>(done)
            },
            span,
        ));
    }
    if stopped_early.is_some() {
        // Segments not started yet: the table cannot complete in this run, and a resumed run
        // loads it again whole, so the segments in flight would be wasted work.
        abort.cancel();
    }
    let mut loaded = Vec::new();
    let mut failure: Option<TableFailure> = None;
    while let Some(joined) = units.join_next().await {
        match joined {
            Ok(Ok(done)) => loaded.push(done),
            // Interrupted units end by themselves, their files aborted.
            Ok(Err(f)) if f.interrupted => {
                failure.get_or_insert(f);
            }
            Ok(Err(f)) => {
                if failure.as_ref().is_none_or(|old| old.interrupted) {
                    failure = Some(f);
                }
                units.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(TableFailure::from(
                    Failure::new(Kind::Table, format!("a loader crashed: {e}"))
                        .table(&key)
                        .remedy(reload_remedy(&key)),
                ));
                units.abort_all();
            }
        }
    }
    if failure.is_none()
        && let Some(why) = stopped_early
    {
        failure = Some(TableFailure::interrupted(&key, why));
    }
    // A shard's part is done: its record says so, and the coordinator completes the table.
    if worker {
        return match failure {
            Some(f) => {
                ctx.update(&key, |r| {
                    r.state = TableState::Error;
                    r.last_error = Some(f.failure.to_string());
                })
                .await;
                Err(f)
            }
            None => {
                let rows: u64 = loaded.iter().map(|l| l.rows).sum();
                if start.segments.is_empty() {
                    let files: Vec<WrittenFile> =
                        loaded.iter().flat_map(|l| l.files.clone()).collect();
                    ctx.update(&key, |r| {
                        r.state = TableState::Completed;
                        r.full_load_rows = rows;
                        r.files = files;
                    })
                    .await;
                }
                bar.finish(rows, "loaded (this shard's part)");
                Ok(rows)
            }
        };
    }
    // The coordinator of a sharded load waits for the other shards' units of this table.
    if failure.is_none() && !others.is_empty() {
        // The next table need not wait for this one's wait.
        drop(first_permit.take());
        match from_other_shards(&ctx, &key, &others).await {
            Ok(theirs) => loaded.extend(theirs),
            Err(f) => failure = Some(f),
        }
    }
    let outcome = match failure {
        Some(f)
            if f.interrupted && first_unit_at.is_some_and(|at| needs_scheduled(&ctx.run, at)) =>
        {
            let budget = ctx
                .run
                .deadline()
                .map(|d| d.saturating_duration_since(ctx.run.started()).as_secs())
                .unwrap_or(0);
            Err(TableFailure::from(
                Failure::new(
                    Kind::Table,
                    format!(
                        "{NEEDS_SCHEDULED}: its full load did not finish within one invocation \
                         ({budget} s before the safety margin), and a load cannot span \
                         invocations (its snapshot ends with the invocation)"
                    ),
                )
                .table(&key)
                .remedy(format!(
                    "load it with the scheduled shape (`godwit run PIPELINE --once` in a \
                     container or on a host; the state is shared, later invocations go on from \
                     there), or raise the function's timeout (15 min at most); then `godwit \
                     reload PIPELINE --table {key}`"
                )),
            ))
        }
        Some(f) => Err(f),
        None => {
            // Every file of the load, in segment order.
            let record = record_of(&ctx, &key).await;
            // Rows counted as copied: a cache-only pipeline writes no file to count them in.
            let (files, copied): (Vec<WrittenFile>, u64) = if record.segments.is_empty() {
                (
                    loaded.iter().flat_map(|l| l.files.clone()).collect(),
                    loaded.iter().map(|l| l.rows).sum(),
                )
            } else {
                (
                    record
                        .segments
                        .iter()
                        .flat_map(|s| s.files.clone())
                        .collect(),
                    record.segments.iter().map(|s| s.rows).sum(),
                )
            };
            match remove_stale_files(ctx.store.as_ref(), &plan.table.name, &files).await {
                Ok(()) => match sweep_cache(&ctx, &key).await {
                    Ok(()) => Ok((files, copied)),
                    Err(e) => Err(TableFailure::from(
                        error_failure(e, &key)
                            .doing("removing old cache keys")
                            .with_kind(Kind::Table),
                    )),
                },
                Err(e) => Err(TableFailure::from(
                    Failure::from_io(e, "removing old load files", Some(&key))
                        .with_kind_unless_fatal(Kind::Table),
                )),
            }
        }
    };
    match outcome {
        Ok((files, copied)) => {
            let bytes = files.iter().map(|f| f.bytes).sum();
            let total_rows: u64 = if ctx.pipeline.target.url == TargetUrl::None {
                copied
            } else {
                files.iter().map(|f| f.rows).sum()
            };
            let data_errors: u64 = loaded.iter().map(|l| l.data_errors).sum();
            let seconds = started.elapsed().as_secs_f64();
            ctx.update(&key, |r| {
                r.state = TableState::Completed;
                r.full_load_rows = total_rows;
                r.full_load_bytes = bytes;
                r.files = files.clone();
                r.data_errors += data_errors;
                r.load_completed_at = Some(now());
                r.load_seconds = Some(seconds);
            })
            .await;
            bar.finish(total_rows, "loaded");
            ctx.notifier.emit(EventKind::TableLoaded {
                table: key,
                rows: total_rows,
                bytes,
                files: files.len(),
                seconds,
                data_errors,
            });
            Ok(total_rows)
        }
        Err(failure) if failure.interrupted => {
            // Loaded again by the next run (whole: see `initial_record`).
            tracing::info!(table = %key, "stopped before the table was loaded; the next run loads it");
            ctx.update(&key, |r| {
                r.state = TableState::BeforeLoad;
                r.load_started_at = None;
            })
            .await;
            bar.finish(0, "stopped");
            Err(failure)
        }
        Err(failure) if failure.failure.kind == Kind::Fatal => {
            // The run fails as a whole; the table is loaded again by the next run.
            bar.finish(0, "stopped");
            Err(failure)
        }
        Err(failure) => {
            let stop = failure.stop_task || ctx.pipeline.errors.table == TableErrorPolicy::StopTask;
            let policy = if stop { "stop-task" } else { "suspend-table" };
            let error = failure.failure.message_in_table();
            let remedy = failure
                .failure
                .remedy
                .clone()
                .unwrap_or_else(|| reload_remedy(&key));
            tracing::error!(
                table = %key,
                error_kind = failure.failure.kind.as_str(),
                policy,
                remedy = %remedy,
                "{error}"
            );
            ctx.update(&key, |r| {
                r.state = TableState::Error;
                r.last_error = Some(error.clone());
                r.remedy = Some(remedy.clone());
            })
            .await;
            bar.finish(0, "error");
            ctx.notifier.emit(EventKind::TableError {
                table: key,
                error,
                policy: policy.into(),
                remedy,
            });
            Err(failure)
        }
    }
}

/// Whether a table whose load a serverless invocation's deadline stopped cannot be loaded in
/// one invocation: it started early in the invocation (within its first tenth, at least 2 s), so it had
/// about the whole time and still did not finish. A table that started late is loaded by the
/// next invocation (where it starts early): every table is loaded or declared too big after a
/// bounded number of invocations, none is restarted forever.
fn needs_scheduled(run: &RunContext, table_started: Instant) -> bool {
    let Some(deadline) = run.deadline() else {
        return false;
    };
    if !run.is_invocation() || !run.stopped_by_deadline() {
        return false;
    }
    let budget = deadline.saturating_duration_since(run.started());
    let waited =
        tokio::time::Instant::from_std(table_started).saturating_duration_since(run.started());
    waited <= (budget / 10).max(std::time::Duration::from_secs(2))
}

/// How many files are written at once: `load.parallel`, or fewer when there are fewer
/// tables and segments. Batch and row-group sizes are shared among them.
fn concurrent_writers(p: &Pipeline, plans: &[TablePlan]) -> usize {
    let units: usize = plans.iter().map(|pl| pl.segments.len().max(1)).sum();
    p.load.parallel.min(units).max(1)
}

/// The target's file format, with Parquet row groups cut at `row_group_bytes` and the `plain`
/// columns written without a dictionary.
pub(crate) fn file_format(
    p: &Pipeline,
    row_group_bytes: usize,
    plain: Arc<[String]>,
) -> FileFormat {
    let target = &p.target;
    match target.format {
        Format::Parquet => FileFormat::Parquet {
            codec: codec(target.compression),
            row_group_bytes,
            plain,
        },
        Format::Csv => FileFormat::Csv(CsvOptions {
            delimiter: target.csv_delimiter,
            null_value: target.csv_null_value.clone(),
            header: target.csv_header,
            gzip: target.compression == Compression::Gzip,
        }),
    }
}

fn codec(c: Compression) -> Codec {
    match c {
        Compression::Zstd => Codec::Zstd,
        Compression::Snappy => Codec::Snappy,
        Compression::Gzip => Codec::Gzip,
        Compression::None => Codec::None,
    }
}

/// The remedy of a table failure that names no better one.
fn reload_remedy(table: &str) -> String {
    format!(
        "fix the cause, then `godwit reload PIPELINE --table {table}` and run the pipeline again"
    )
}

/// `e` as a classified failure of `table`.
fn error_failure(e: Error, table: &str) -> Failure {
    match e {
        Error::Failed(f) if f.table.is_some() => *f,
        Error::Failed(f) => f.table(table),
        other => {
            let kind = match other.kind() {
                Kind::Config | Kind::Startup => Kind::Fatal,
                k => k,
            };
            Failure::new(kind, other.to_string()).table(table)
        }
    }
}

/// Loads one unit (a segment, or the whole table), again after a recoverable failure (the
/// source connection broke mid-COPY, the server restarted, S3 said slow down): after 5 s,
/// doubling to 30 min, `[errors] recoverable_retries` times (-1: forever), each attempt on a
/// new connection importing the same exported snapshot, so every segment of the table still
/// comes from one snapshot. A failed attempt leaves no file behind (its file in progress is
/// aborted — a temporary file removed, a multipart upload aborted; files it completed carry
/// the names the next attempt writes again, and any extra one is removed when the table
/// completes). When the retries are spent the table fails (`Table error`).
async fn load_with_retries(
    ctx: &Ctx,
    plan: &TablePlan,
    segment: Option<&Segment>,
    rows: Arc<AtomicU64>,
    abort: &CancellationToken,
) -> Result<Loaded, TableFailure> {
    let retries = ctx.pipeline.errors.recoverable_retries;
    let key = plan.key();
    let mut attempt: u64 = 0;
    loop {
        if abort.is_cancelled() || ctx.run.is_hard_stopped() {
            let why = ctx.run.reason().unwrap_or_else(|| "stopped".into());
            return Err(TableFailure::interrupted(&key, why));
        }
        let failure = match load_table(ctx, plan, segment, rows.clone(), abort).await {
            Ok(done) => return Ok(done),
            Err(f) if f.failure.kind == Kind::Recoverable => f.failure,
            Err(f) => return Err(f),
        };
        attempt += 1;
        if retries >= 0 && attempt > retries as u64 {
            let remedy = format!(
                "the load failed {attempt} times ([errors] recoverable_retries = {retries}); fix \
                 the cause, then `godwit reload PIPELINE --table {key}` and run the pipeline again"
            );
            return Err(failure.with_kind(Kind::Table).remedy(remedy).into());
        }
        let wait = super::cdc::backoff(attempt);
        tracing::warn!(
            table = %key,
            segment = segment.map(|s| s.number),
            attempt,
            wait_s = wait.as_secs(),
            error = %failure.message(),
            "the load broke; trying again from the same snapshot"
        );
        let fence = ctx.state.fence();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            lost = fence.lost() => {
                return Err(Failure::new(Kind::Fatal, lost.to_string()).into());
            }
            // A retry is new work: a stopping run does not wait for it.
            why = ctx.run.stopping() => return Err(TableFailure::interrupted(&key, why)),
            _ = abort.cancelled() => {
                let why = ctx.run.reason().unwrap_or_else(|| "stopped".into());
                return Err(TableFailure::interrupted(&key, why));
            }
        }
    }
}

/// COPY on its own connection inside the shared snapshot, encoding on a blocking thread.
async fn load_table(
    ctx: &Ctx,
    plan: &TablePlan,
    segment: Option<&Segment>,
    rows: Arc<AtomicU64>,
    abort: &CancellationToken,
) -> Result<Loaded, TableFailure> {
    let table = plan.table.name.to_string();
    let number = segment.map(|s| s.number);
    let pg_failure = |e: tokio_postgres::Error, doing: &str| -> TableFailure {
        Failure::from_pg(e, &ctx.source.display, ctx.source.user(), Some(&table))
            .segment(number)
            .doing(doing)
            .into()
    };
    let client = ctx
        .source
        .open(Some(&table))
        .await
        .map_err(|f| f.segment(number))?;
    import_snapshot(&client, &ctx.snapshot_id)
        .await
        .map_err(|e| pg_failure(e, "joining the load's snapshot"))?;

    let target = &ctx.pipeline.target;
    let settings = FileSettings {
        format: file_format(&ctx.pipeline, ctx.row_group_bytes, plan.plain_columns()),
        max_file_size: target.max_file_size,
        include_op: target.include_op_for_full_load,
        timestamp_column: target.timestamp_column.clone(),
    };
    let mut writer = LoadWriter::new(
        ctx.store.clone(),
        plan.table.name.clone(),
        segment.map(|s| s.number),
        &plan.copy.schema(),
        settings,
        ctx.load_time,
    );
    let (tx, mut rx) = mpsc::channel::<HeldBatch>(1);
    let commit = Arc::new(AtomicBool::new(false));
    let commit_seen = commit.clone();
    // A cache-only pipeline encodes no file: the batches only warm the cache.
    let files = ctx.pipeline.target.url != TargetUrl::None;
    let encoder = tokio::task::spawn_blocking(move || -> Result<Vec<WrittenFile>, WriteError> {
        if !files {
            while rx.blocking_recv().is_some() {
                crate::notify::metrics::progress(crate::notify::metrics::Activity::FullLoad);
            }
            return Ok(Vec::new());
        }
        // A batch's bytes go back to the budget once it is encoded.
        while let Some((batch, _held)) = rx.blocking_recv() {
            crate::notify::metrics::progress(crate::notify::metrics::Activity::FullLoad);
            if let Err(e) = writer.write(&batch) {
                writer.abort();
                return Err(e);
            }
        }
        if commit_seen.load(Ordering::SeqCst) {
            writer.finish()
        } else {
            writer.abort();
            Ok(Vec::new())
        }
    });

    let policy = ctx.pipeline.errors.clone();
    let data_errors = AtomicU64::new(0);
    let stop_task = AtomicBool::new(false);
    let mut on_error = |e: RowError| -> Result<(), String> {
        let n = data_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let what = format!(
            "data error in {table} at {} (column {}): {}",
            e.key, e.column, e.error
        );
        e.log_detail(&table);
        if policy.data_escalation_count > 0 && n >= policy.data_escalation_count {
            return Err(format!(
                "{what}; {n} data errors reached data_escalation_count"
            ));
        }
        match policy.data {
            DataErrorPolicy::IgnoreRecord => Ok(()),
            DataErrorPolicy::LogError => {
                tracing::warn!(table = %table, row = e.row, key = %e.key, column = %e.column,
                    "{what}; the row was skipped ([errors] data = \"log-error\")");
                Ok(())
            }
            DataErrorPolicy::SuspendTable => Err(what),
            DataErrorPolicy::StopTask => {
                stop_task.store(true, Ordering::Relaxed);
                Err(what)
            }
        }
    };
    let mut spec = plan.copy_for(segment);
    spec.batch_bytes = ctx.batch_bytes;
    // With a cache, each batch warms it before it goes on to the file encoder: the same Arrow
    // batches, one COPY.
    let warm = ctx.cache.as_ref().and_then(|w| {
        let guarded = ctx.cache_guarded.get(&table).copied().unwrap_or(true);
        CacheLoad::new(
            &w.target,
            &table,
            Mark {
                lsn: w.at.0,
                seq: 0,
            },
            guarded,
        )
    });
    let (copy_tx, warming) = match warm {
        None => (tx.clone(), None),
        Some(mut warm) => {
            let (warm_tx, mut warm_rx) = mpsc::channel::<HeldBatch>(1);
            let files = tx.clone();
            let task = tokio::spawn(async move {
                while let Some((batch, held)) = warm_rx.recv().await {
                    warm.write(&batch).await?;
                    if files.send((batch, held)).await.is_err() {
                        break;
                    }
                }
                warm.finish().await
            });
            (warm_tx, Some(task))
        }
    };
    // The run context's hard stop (or this table's abort) ends the COPY where it is: the file
    // in progress is then aborted like after a failure (no partial object).
    let copied = tokio::select! {
        copied = run_copy(&client, spec, copy_tx, &rows, &mut on_error) => Some(copied),
        _ = abort.cancelled() => None,
        _ = ctx.run.hard_stop() => None,
    };
    let warmed = match warming {
        Some(task) => match task.await {
            Ok(Ok(counts)) => {
                ctx.update(&table, |r| {
                    ProjectionCounts::add(&mut r.cache_projections, &counts)
                })
                .await;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::from(Failure::new(
                Kind::Table,
                format!("the cache writer crashed: {e}"),
            ))),
        },
        None => Ok(()),
    };
    if copied.as_ref().is_some_and(|c| c.is_ok()) && warmed.is_ok() {
        commit.store(true, Ordering::SeqCst);
    }
    drop(tx);
    let encoded = encoder.await.map_err(|e| {
        Failure::new(Kind::Table, format!("the file encoder crashed: {e}"))
            .table(&table)
            .segment(number)
            .remedy(reload_remedy(&table))
    })?;
    let Some(copied) = copied else {
        let why = ctx.run.reason().unwrap_or_else(|| "stopped".into());
        tracing::info!(table = %table, segment = number, "{why}: the load in progress was stopped and its file aborted");
        return Err(TableFailure::interrupted(&table, why));
    };
    if let Err(e) = warmed {
        return Err(error_failure(e, &table)
            .segment(number)
            .doing("warming the cache")
            .into());
    }
    let loaded = match (copied, encoded) {
        (Ok(n), Ok(files)) => (n, files),
        (_, Err(e)) => return Err(write_failure(e, &table).segment(number).into()),
        (Err(CopyError::Aborted(msg)), _) => {
            let remedy = format!(
                "fix the value in the source (a NaN or ±Infinity in a numeric(p,s) column: or set \
                 numeric = \"text\" for the table), then `godwit reload PIPELINE --table {table}` \
                 and run the pipeline again"
            );
            return Err(TableFailure {
                failure: Failure::new(Kind::Data, msg).remedy(remedy),
                stop_task: stop_task.load(Ordering::Relaxed),
                permit: None,
                interrupted: false,
            });
        }
        (Err(CopyError::Postgres(e)), _) => return Err(pg_failure(e, "reading the table")),
        (Err(e), _) => {
            return Err(Failure::because(Kind::Table, "reading the table", e)
                .table(&table)
                .segment(number)
                .remedy(reload_remedy(&table))
                .into());
        }
    };
    let _ = client.batch_execute("COMMIT").await;
    Ok(Loaded {
        rows: loaded.0,
        files: loaded.1,
        data_errors: data_errors.load(Ordering::Relaxed),
    })
}

/// A file of `table` could not be written: an I/O error is classified (an S3 blip or a
/// broken connection recoverable, a lost lease fatal, anything else a table failure);
/// encoding errors are table failures.
fn write_failure(e: WriteError, table: &str) -> Failure {
    match e {
        WriteError::Io { key, source } => {
            Failure::from_io(source, &format!("writing {key}"), Some(table))
        }
        other => Failure::because(Kind::Table, "writing the load's files", other)
            .table(table)
            .remedy(reload_remedy(table)),
    }
}

/// After a guarded warm of `table`: its cache keys older than the load go (see [`Warm`]).
async fn sweep_cache(ctx: &Ctx, table: &str) -> Result<(), Error> {
    let Some(w) = &ctx.cache else {
        return Ok(());
    };
    if !ctx.cache_guarded.get(table).copied().unwrap_or(false) {
        return Ok(());
    }
    let started = Instant::now();
    let removed = w
        .target
        .sweep(
            table,
            Mark {
                lsn: w.at.0,
                seq: 0,
            },
        )
        .await?;
    tracing::info!(
        table,
        removed,
        seconds = started.elapsed().as_secs_f64(),
        "cache swept: keys of rows no longer in the source removed"
    );
    Ok(())
}

/// A reload replaces the previous load: load files of `table` this load did not write are
/// removed, only after the new ones are complete.
pub(crate) async fn remove_stale_files(
    store: &dyn ObjectStore,
    table: &TableName,
    written: &[WrittenFile],
) -> std::io::Result<()> {
    let prefix = layout::table_prefix(table);
    for object in store.list(&prefix).await? {
        let name = &object.key[prefix.len()..];
        if !name.contains('/')
            && layout::is_load_file(name)
            && !written.iter().any(|w| w.key == object.key)
        {
            store.delete(&object.key).await?;
        }
    }
    Ok(())
}

/// A table's units this process loads, and (for the coordinator of a sharded load) the other
/// shards' ones with their owner. A shard run again skips the segments it completed already.
#[allow(clippy::type_complexity)]
fn split_units(
    ctx: &Ctx,
    first_unit: usize,
    pending: Vec<Option<Segment>>,
    start: &TableRecord,
) -> (Vec<Option<Segment>>, Vec<(u32, Option<Segment>)>) {
    let Some(shard) = ctx.shard else {
        return (pending, Vec::new());
    };
    let mut mine = Vec::new();
    let mut others = Vec::new();
    for (i, unit) in pending.into_iter().enumerate() {
        let owner = Shard::owner(shard.count, first_unit + i);
        if owner != shard.index {
            if shard.coordinates() {
                others.push((owner, unit));
            }
            continue;
        }
        let done = start
            .segments
            .get(i)
            .is_some_and(|s| s.state == TableState::Completed);
        if !done {
            mine.push(unit);
        }
    }
    (mine, others)
}

/// How long the coordinator of a sharded load waits for another shard's units while there is
/// no sign of that shard (its lease free, none of its units completed), before the table
/// fails: 10 minutes, or `GODWIT_SHARD_PATIENCE` seconds.
fn shard_patience() -> std::time::Duration {
    let secs = std::env::var("GODWIT_SHARD_PATIENCE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    std::time::Duration::from_secs(secs)
}

/// The coordinator of a sharded load: waits until the other shards completed `units` of
/// `table` under this load's snapshot and takes their files into the table's record. A shard
/// that put the table in error fails it here too. Waiting is progress (`/healthz` stays
/// fine) as long as a shard shows signs of life — its lease held, a unit completed — and the
/// table fails once none did for [`shard_patience`], so a shard that never comes cannot hold
/// the load (and a CDC job's slot) forever: the table is then reloaded like any table in error.
async fn from_other_shards(
    ctx: &Ctx,
    table: &str,
    units: &[(u32, Option<Segment>)],
) -> Result<Vec<Loaded>, TableFailure> {
    let mut found: Vec<Option<Loaded>> = units.iter().map(|_| None).collect();
    let mut told = Instant::now();
    let mut alive = Instant::now();
    let mut leases_read = Instant::now();
    let patience = shard_patience();
    loop {
        let before = found.iter().filter(|f| f.is_some()).count();
        for (i, (owner, segment)) in units.iter().enumerate() {
            if found[i].is_some() {
                continue;
            }
            let record = match shard_record(ctx, *owner).await {
                Ok(Some(r)) if r.snapshot.as_deref() == Some(ctx.snapshot_id.as_str()) => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(shard = owner, "reading the shard's record: {e}");
                    continue;
                }
            };
            let Some(t) = record.tables.get(table) else {
                continue;
            };
            if t.state == TableState::Error {
                let why = t.last_error.clone().unwrap_or_default();
                return Err(TableFailure::from(
                    Failure::new(Kind::Table, format!("shard {owner} failed: {why}"))
                        .table(table)
                        .remedy(reload_remedy(table)),
                ));
            }
            found[i] = match segment {
                Some(seg) => t
                    .segments
                    .iter()
                    .find(|s| s.number == seg.number && s.state == TableState::Completed)
                    .map(|s| Loaded {
                        rows: s.rows,
                        files: s.files.clone(),
                        data_errors: 0,
                    }),
                None => (t.state == TableState::Completed).then(|| Loaded {
                    rows: t.full_load_rows,
                    files: t.files.clone(),
                    data_errors: t.data_errors,
                }),
            };
            if let (Some(seg), Some(done)) = (segment, &found[i]) {
                let (rows, files) = (done.rows, done.files.clone());
                ctx.update(table, |r| {
                    if let Some(s) = r.segments.iter_mut().find(|s| s.number == seg.number) {
                        s.state = TableState::Completed;
                        s.rows = rows;
                        s.files = files;
                    }
                })
                .await;
            }
        }
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        let waiting_for: std::collections::BTreeSet<u32> = units
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|((owner, _), _)| *owner)
            .collect();
        if found.iter().filter(|f| f.is_some()).count() > before {
            alive = Instant::now();
        } else if leases_read.elapsed() > std::time::Duration::from_secs(15) {
            leases_read = Instant::now();
            for owner in &waiting_for {
                if shard_running(ctx, *owner).await {
                    alive = Instant::now();
                }
            }
        }
        if alive.elapsed() > patience {
            let shards: Vec<String> = waiting_for.iter().map(u32::to_string).collect();
            return Err(TableFailure::from(
                Failure::new(
                    Kind::Table,
                    format!(
                        "shard(s) {} did not load their part of {table}: not running and nothing \
                         completed for {} s",
                        shards.join(", "),
                        patience.as_secs()
                    ),
                )
                .table(table)
                .remedy(reload_remedy(table)),
            ));
        }
        crate::notify::metrics::progress(crate::notify::metrics::Activity::FullLoad);
        if told.elapsed() > std::time::Duration::from_secs(15) {
            told = Instant::now();
            let waiting = found.iter().filter(|f| f.is_none()).count();
            tracing::info!(
                table,
                "waiting for {waiting} of its units from the other shards"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            why = ctx.run.stopping() => return Err(TableFailure::interrupted(table, why)),
        }
    }
}

/// Whether shard `index` runs now (its lease is held); false when that cannot be read.
async fn shard_running(ctx: &Ctx, index: u32) -> bool {
    match shard_store(ctx, index).await {
        Ok(store) => store.lease_holder().await.ok().flatten().is_some(),
        Err(_) => false,
    }
}

/// Shard `index`'s state store (opened once).
async fn shard_store(ctx: &Ctx, index: u32) -> Result<Arc<StateStore>, Error> {
    let mut stores = ctx.shard_stores.lock().await;
    match stores.get(&index) {
        Some(s) => Ok(s.clone()),
        None => {
            let s = Arc::new(super::shard::store(&ctx.pipeline, index).await?);
            stores.insert(index, s.clone());
            Ok(s)
        }
    }
}

/// Shard `index`'s record, read from its own state store.
async fn shard_record(ctx: &Ctx, index: u32) -> Result<Option<TaskRecord>, Error> {
    shard_store(ctx, index)
        .await?
        .load()
        .await
        .map_err(|e| Error::Runtime(e.to_string()))
}
