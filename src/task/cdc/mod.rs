//! CDC: the `cdc` and `full-load-and-cdc` modes. Start-up refuses tables CDC would break,
//! makes sure the publications and the slot exist (and are healthy), runs the initial full
//! load from the slot's exported snapshot, then applies the stream: pgoutput → per-table
//! Arrow rows → CDC files → checkpoint (per-table high-water marks) → confirm to the slot.
//! The slot is confirmed only up to commits whose every row is in a completed file and
//! checkpointed, and to the keepalive's WAL end while nothing is buffered.
//!
//! This file holds the run and the state the parts share; the parts:
//! - `startup`: checks, publications, slot, the initial load, then the apply loop;
//! - `apply`: the loop over the stream, decoding, reconnecting;
//! - `flush`: writing what is buffered, the checkpoint, confirming the slot;
//! - `reloads`: single-table reloads and partition changes while CDC runs.

mod apply;
mod flush;
mod reloads;
mod startup;

use reloads::finish_switches;
use startup::{prepare, run_started};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::full_load::{self, RunOptions, RunSummary, Shared, Warm, now};
use super::plan::TablePlan;
use super::progress::{CdcStats, LiveLine};
use super::run_context::RunContext;
use super::{Discovered, Started, partitions, reload};
use crate::batch::budget::{self, Reservation};
use crate::batch::changes::{Layout, Op, Row, TableBuffer};
use crate::config::{
    CdcMode, DataErrorPolicy, DatePartitioning, Mode, NumericMode, Pipeline, TableErrorPolicy,
    TargetUrl,
};
use crate::error::{Error, Failure, Kind};
use crate::notify::{EventKind, Notifier, PartitionChange, metrics};
use crate::pg::catalog::{self, Column, TableName, Types};
use crate::pg::connect::{Source, describe_error};
use crate::pg::lsn::Lsn;
use crate::pg::replication::pgoutput::{self, Message, OldTuple, Relation, Value};
use crate::pg::replication::session::{NewSlot, Stream, StreamEvent};
use crate::pg::replication::slot::{self, Published, SlotInfo};
use crate::pg::replication::{identity, row_filter};
use crate::pg::types::{self, NumericAs};
use crate::sink::files::cdc::CdcFiles;
use crate::sink::files::{ObjectStore, layout};
use crate::sink::redis::writer::{CacheChanges, CacheTarget};
use crate::sink::{ChangeSink, TableChanges};
use crate::state::{CdcRecord, Mark, StateStore, TableRecord, TableState, TaskRecord};

/// How a CDC run was asked to behave.
#[derive(Debug, Clone, Default)]
pub struct CdcOptions {
    /// Stop at the WAL position read when CDC starts.
    pub once: bool,
    /// What stops the run (signals, `--max-duration`, an invocation's deadline).
    pub run: RunContext,
    /// Progress bars for the full load.
    pub progress: bool,
    /// Shard 1/N of a sharded initial load (`run --shard 1/N`): this run coordinates the load
    /// from the slot's snapshot, loads its share, waits for the other shards' and then follows
    /// the slot (see `task::shard`).
    pub shard: Option<crate::task::shard::Shard>,
}

/// How much longer than `wal_sender_timeout` a run waits for an earlier session to leave
/// the slot.
const SLOT_WAIT_MARGIN: Duration = Duration::from_secs(10);

const DROP_AND_RELOAD: &str = "the changes the slot held are gone: run `godwit drop PIPELINE --yes`, then run the pipeline again (mode full-load-and-cdc reloads every table from a fresh snapshot)";

/// Runs a `cdc` or `full-load-and-cdc` pipeline.
pub async fn run(p: &Pipeline, opts: CdcOptions) -> Result<RunSummary, Error> {
    let Started {
        store,
        state,
        lease,
        notifier,
        previous,
        discovered,
        cache,
    } = super::start(p).await?;
    let Discovered {
        source,
        snapshot,
        plans,
        ..
    } = discovered;
    let created_before = previous
        .as_ref()
        .and_then(|r| r.cdc.as_ref())
        .map(|c| c.publications_created.clone())
        .unwrap_or_default();
    let prepared = match prepare(p, &source, snapshot.client(), &plans, &created_before).await {
        Ok(x) => x,
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    let _ = snapshot.release().await;
    let mut task = Task {
        p,
        state: state.clone(),
        notifier: notifier.clone(),
        record: previous.clone().unwrap_or_else(|| empty_record(p)),
        unhealthy: false,
    };
    let result = run_started(
        p, &opts, &mut task, prepared, source, store, cache, plans, previous,
    )
    .await;
    let outcome = match result {
        Ok(summary) => {
            notifier.emit(EventKind::TaskStopped {
                seconds: summary.1,
                tables_in_error: summary.0.tables_in_error,
            });
            task.record.events_undelivered =
                crate::notify::undelivered(notifier.close(crate::task::SNS_GRACE).await);
            // Stopped before its work was done (the next run goes on): "interrupted".
            let state = if summary.0.interrupted.is_some() {
                "interrupted"
            } else {
                "stopped"
            };
            task.finish(state, None).await;
            Ok(summary.0)
        }
        Err(e) => {
            notifier.emit(EventKind::TaskFailed {
                error: e.to_string(),
            });
            task.record.events_undelivered =
                crate::notify::undelivered(notifier.close(crate::task::SNS_GRACE).await);
            task.finish("failed", Some(e.to_string())).await;
            Err(e)
        }
    };
    lease.release().await;
    outcome
}

/// The task record and where it is kept.
struct Task<'a> {
    p: &'a Pipeline,
    state: Arc<StateStore>,
    notifier: Arc<Notifier>,
    record: TaskRecord,
    /// `slot.unhealthy` was emitted (once is enough).
    unhealthy: bool,
}

impl Task<'_> {
    async fn save(&self) -> Result<(), Error> {
        self.state.save(&self.record).await.map_err(|e| {
            if e.is_lease_lost() {
                Error::Runtime(e.to_string())
            } else {
                Failure::because(Kind::Recoverable, "cannot save the checkpoint", e).into()
            }
        })
    }

    /// Ok while this run holds the lease; the failure that stops it (exit 1) once it lost it.
    fn fenced(&self) -> Result<(), Error> {
        self.state
            .fence()
            .check()
            .map_err(|lost| Error::Runtime(lost.to_string()))
    }

    async fn finish(&mut self, state: &str, error: Option<String>) {
        self.record.state = state.into();
        self.record.stopped_at = Some(now());
        self.record.last_error = error;
        if let Err(e) = self.state.save(&self.record).await {
            tracing::error!("cannot save the task state: {e}");
        }
    }

    /// After the stream broke (`why`): the slot failure when the slot is gone or invalidated,
    /// `None` when it is fine (or cannot be read now).
    async fn slot_broken(&mut self, client: &Client, why: &str) -> Option<Error> {
        match slot::slot_info(client, &self.p.source.slot).await {
            Ok(None) => Some(self.unhealthy(format!("it disappeared while streaming ({why})"))),
            Ok(Some(i)) if i.lost() => {
                Some(self.unhealthy(format!("it was invalidated while streaming ({why})")))
            }
            _ => None,
        }
    }

    /// A slot that cannot be followed: `slot.unhealthy`, then the task fails (exit 1).
    fn unhealthy(&mut self, reason: String) -> Error {
        self.unhealthy = true;
        self.notifier.emit(EventKind::SlotUnhealthy {
            slot: self.p.source.slot.clone(),
            reason: reason.clone(),
            remedy: DROP_AND_RELOAD.into(),
        });
        Error::Runtime(format!(
            "replication slot {}: {reason}; {DROP_AND_RELOAD}",
            self.p.source.slot
        ))
    }
}

fn empty_record(p: &Pipeline) -> TaskRecord {
    TaskRecord {
        pipeline: p.name.clone(),
        mode: p.mode.as_str().into(),
        state: "running".into(),
        started_at: now(),
        stopped_at: None,
        snapshot: None,
        last_error: None,
        tables: BTreeMap::new(),
        cdc: None,
        events_undelivered: None,
        shards: None,
    }
}

/// What start-up found and made sure of on the source.
struct Prepared {
    admin: Client,
    types: Types,
    publications: Vec<String>,
    publications_created: Vec<String>,
    slot: Option<SlotInfo>,
    /// Tables newly selected in full-load-and-cdc: loaded from a snapshot of their own.
    needs_load: Vec<String>,
}

/// The wait before retry `attempt` (1-based) of something recoverable: 5 s, doubling, at most
/// 30 min.
pub(crate) fn backoff(attempt: u64) -> Duration {
    Duration::from_secs(5)
        .saturating_mul(1u32 << (attempt.max(1) - 1).min(9) as u32)
        .min(Duration::from_secs(1800))
}

/// One selected table as CDC follows it.
struct Followed {
    key: String,
    name: TableName,
    columns: Vec<Column>,
    exclude: Vec<String>,
    numeric: NumericAs,
    primary_key: Vec<String>,
    /// Changes at or below this are skipped: the lowest of `held`.
    mark: Option<Mark>,
    /// Per sink (in `Apply::sinks` order), the position it holds.
    held: Vec<Option<Mark>>,
    layout: Option<Arc<Layout>>,
    buffer: TableBuffer,
    counts: Counts,
    suspended: bool,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    inserts: u64,
    updates: u64,
    deletes: u64,
    truncates: u64,
    data_errors: u64,
}

impl Followed {
    /// Every sink holds the table up to `mark` (a reload's new start).
    fn hold_all(&mut self, mark: Option<Mark>) {
        self.held.iter_mut().for_each(|h| *h = mark);
        self.mark = mark;
    }
}

/// A relation of the stream: which followed table it is, and where its key columns are.
struct Rel {
    table: Option<usize>,
    key_positions: Vec<usize>,
}

struct Txn {
    lsn: Lsn,
    commit_time: i64,
    seq: u64,
}

/// The apply loop's state.
struct Apply<'a, 'b> {
    p: &'a Pipeline,
    task: &'a mut Task<'b>,
    /// The target's objects (reloads switch their files in there).
    store: Arc<dyn ObjectStore>,
    /// Where committed changes go; the slot is confirmed at what all of them hold.
    sinks: Vec<Box<dyn ChangeSink>>,
    types: Types,
    stream: Option<Stream>,
    tables: Vec<Followed>,
    by_oid: HashMap<u32, usize>,
    rels: HashMap<u32, Rel>,
    txn: Option<Txn>,
    /// End of the last commit received completely.
    last_commit_end: Option<Lsn>,
    /// Everything up to here is processed (commits, keepalives).
    position: Lsn,
    confirmed: Lsn,
    /// What this run confirmed (0 until it confirms anything new).
    confirmed_now: Lsn,
    buffered_rows: usize,
    /// Bytes of the buffered rows (those in spill files included: files are cut by it).
    buffered_bytes: usize,
    /// How much of `buffered_bytes` was moved to spill files.
    spilled_upto: usize,
    /// The rest, held against the memory budget.
    memory: Reservation,
    buffered_since: Option<Instant>,
    lag_alerted: bool,
    reloader: Reloader,
    last_request_check: Instant,
    /// An ordinary connection for the partition checks (opened when first needed).
    catalog: Option<Client>,
    /// Failed reloads: attempts so far, and when the next may start.
    reload_failures: HashMap<String, (u64, Instant)>,
    /// The live line on a terminal.
    live: LiveLine,
    /// The last commit received: its time (µs) and how late it arrived (s).
    last_commit: Option<(i64, f64)>,
    /// With metrics: the last look at the slot and its walsender, and the walsender's last
    /// reply time then (see `observe_source`).
    probed_at: Instant,
    reply_time: Option<i64>,
}

/// The outputs of committed changes this pipeline has: the files, and the cache when there
/// is one.
fn sinks(
    p: &Pipeline,
    store: &Arc<dyn ObjectStore>,
    cache: Option<&Arc<CacheTarget>>,
) -> Vec<Box<dyn ChangeSink>> {
    // CDC files are small and their columns mixed (before images, ops): the writer's own
    // dictionary fallback is enough.
    let format = full_load::file_format(
        p,
        (p.target.row_group_bytes as usize).min(p.limits.memory as usize / 4),
        Arc::from(Vec::<String>::new()),
    );
    let mut sinks: Vec<Box<dyn ChangeSink>> = Vec::new();
    if p.target.url != TargetUrl::None {
        sinks.push(Box::new(CdcFiles::new(
            store.clone(),
            format,
            crate::batch::spill::folder(&p.limits.spill_dir, &p.name),
        )));
    }
    if let Some(c) = cache {
        sinks.push(Box::new(CacheChanges::new(c.clone())));
    }
    sinks
}

/// What reloading single tables needs.
struct Reloader {
    source: Source,
    publications: Vec<String>,
    plans: Vec<TablePlan>,
    progress: bool,
    /// The cache reloads warm too.
    cache: Option<Arc<CacheTarget>>,
    /// What stops the run.
    run: RunContext,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_5_s_doubling_to_30_min() {
        let secs: Vec<u64> = (1..=11).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 640, 1280, 1800, 1800]);
        assert_eq!(backoff(1000).as_secs(), 1800);
    }
}
