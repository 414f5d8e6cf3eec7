//! CDC: the `cdc` and `full-load-and-cdc` modes. Start-up refuses tables CDC would break,
//! makes sure the publications and the slot exist (and are healthy), runs the initial full
//! load from the slot's exported snapshot, then applies the stream: pgoutput → per-table
//! Arrow rows → CDC files → checkpoint (per-table high-water marks) → confirm to the slot.
//! The slot is confirmed only up to commits whose every row is in a completed file and
//! checkpointed, and to the keepalive's WAL end while nothing is buffered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::full_load::{self, RunOptions, RunSummary, Shared, now};
use super::plan::TablePlan;
use super::progress::{CdcStats, LiveLine};
use super::{Discovered, Started, partitions, reload};
use crate::batch::changes::{Layout, Op, Row, TableBuffer};
use crate::config::{
    CdcMode, DataErrorPolicy, DatePartitioning, Mode, NumericMode, Pipeline, TableErrorPolicy,
};
use crate::error::Error;
use crate::notify::{EventKind, Notifier, PartitionChange};
use crate::pg::catalog::{self, Column, TableName, Types};
use crate::pg::connect::{Source, describe_error};
use crate::pg::lsn::Lsn;
use crate::pg::replication::pgoutput::{self, Message, OldTuple, Relation, Value};
use crate::pg::replication::session::{NewSlot, Stream, StreamEvent};
use crate::pg::replication::slot::{self, Published, SlotInfo};
use crate::pg::replication::{identity, row_filter};
use crate::pg::types::{self, NumericAs};
use crate::sink::files::writer::{FileFormat, WrittenFile};
use crate::sink::files::{ObjectStore, cdc as cdc_files, layout};
use crate::state::{CdcRecord, Mark, StateStore, TableRecord, TableState, TaskRecord};

/// How a CDC run was asked to behave.
#[derive(Debug, Clone, Default)]
pub struct CdcOptions {
    /// Stop at the WAL position read when CDC starts.
    pub once: bool,
    /// Stop cleanly after this long.
    pub max_duration: Option<Duration>,
    /// Progress bars for the full load.
    pub progress: bool,
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
        p, &opts, &mut task, prepared, source, store, plans, previous,
    )
    .await;
    let outcome = match result {
        Ok(summary) => {
            task.finish("stopped", None).await;
            notifier.emit(EventKind::TaskStopped {
                seconds: summary.1,
                tables_in_error: summary.0.tables_in_error,
            });
            Ok(summary.0)
        }
        Err(e) => {
            task.finish("failed", Some(e.to_string())).await;
            notifier.emit(EventKind::TaskFailed {
                error: e.to_string(),
            });
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
                Error::Recoverable(format!("cannot save the checkpoint: {e}"))
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

/// Start-up checks of CDC (exit 2 on failure): wal_level, replica identity of every table
/// whose UPDATE/DELETE would be published, the publications (created when missing).
async fn prepare(
    p: &Pipeline,
    source: &Source,
    catalog_client: &Client,
    plans: &[TablePlan],
    created_before: &[String],
) -> Result<Prepared, Error> {
    let pg_err = |what: &str, e: tokio_postgres::Error| {
        Error::Startup(format!(
            "{what} on {}: {}",
            source.display,
            describe_error(&e, &source.display)
        ))
    };
    let types = catalog::load_types(catalog_client)
        .await
        .map_err(|e| pg_err("reading pg_type", e))?;
    let tables: Vec<_> = plans.iter().map(|pl| pl.table.clone()).collect();
    let identities = identity::read(catalog_client, &tables)
        .await
        .map_err(|e| pg_err("reading replica identities", e))?;
    for plan in plans {
        let Some(filter) = &plan.settings.where_clause else {
            continue;
        };
        let problems = row_filter::problems(catalog_client, &plan.table, filter)
            .await
            .map_err(|e| pg_err("reading the catalog for the row filter", e))?;
        if !problems.is_empty() {
            let key = p
                .tables
                .settings_key(&plan.table.name.schema, &plan.table.name.name)
                .map(|k| format!("{k}.where"))
                .unwrap_or_else(|| "tables".into());
            return Err(Error::Config(p.error_at(
                &key,
                row_filter::describe(&plan.table, filter, &problems),
            )));
        }
    }
    for plan in plans.iter().filter(|pl| pl.settings.cdc == CdcMode::All) {
        let ids = identities
            .get(&plan.table.oid)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if let Some(problem) =
            identity::problem(&plan.table, ids, plan.settings.where_clause.as_ref())
        {
            let key = p
                .tables
                .settings_key(&plan.table.name.schema, &plan.table.name.name)
                .map(|k| format!("{k}.cdc"))
                .unwrap_or_else(|| "tables.include".into());
            return Err(Error::Config(p.error_at(&key, problem)));
        }
    }
    let admin = source
        .connect()
        .await
        .map_err(|e| Error::Startup(e.to_string()))?;
    let wal_level: String = admin
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| pg_err("reading wal_level", e))?
        .get(0);
    if wal_level != "logical" {
        return Err(Error::Startup(format!(
            "{} has wal_level = {wal_level}; CDC needs wal_level = logical (on RDS: the parameter \
             rds.logical_replication = 1) and a restart of the server",
            source.display
        )));
    }
    let main = p.source.publication.clone();
    let inserts_name = format!("{main}_inserts");
    let mut publications = vec![main.clone()];
    let mut created = Vec::new();
    let exists = slot::publication_exists(&admin, &main)
        .await
        .map_err(|e| pg_err("reading pg_publication", e))?;
    if exists {
        // Used as it is; its inserts-only companion, when an earlier run created one, too.
        if slot::publication_exists(&admin, &inserts_name)
            .await
            .map_err(|e| pg_err("reading pg_publication", e))?
        {
            publications.push(inserts_name);
        }
    } else {
        let all = published(plans, CdcMode::All);
        let inserts = published(plans, CdcMode::InsertsOnly);
        let wanted = [(&main, &all, false), (&inserts_name, &inserts, true)];
        publications.clear();
        let mut missing = Vec::new();
        for (name, tables, inserts_only) in wanted {
            if tables.is_empty() {
                continue;
            }
            let there = slot::publication_exists(&admin, name)
                .await
                .map_err(|e| pg_err("reading pg_publication", e))?;
            if !there {
                missing.push(slot::NewPublication {
                    name,
                    tables,
                    inserts_only,
                });
            }
            publications.push(name.clone());
        }
        slot::create_publications(&admin, &missing)
            .await
            .map_err(|(name, e)| {
                let hint = if e.as_db_error().map(|d| d.code().code()) == Some("42501") {
                    " (CREATE PUBLICATION needs ownership of every table, or create the \
                     publication yourself and name it in source.publication)"
                } else {
                    ""
                };
                Error::Startup(format!(
                    "creating publication {name} on {}: {}{hint}",
                    source.display,
                    describe_error(&e, &source.display)
                ))
            })?;
        created.extend(missing.iter().map(|m| m.name.to_string()));
    }
    let needs_load = ensure_published(
        p,
        &admin,
        plans,
        &publications,
        created_before,
        &created,
        source,
    )
    .await?;
    // A run that took the lease over waits for the old holder's session to leave the slot: a
    // stopped or cut-off holder's session ends after wal_sender_timeout without a reply.
    let patience = slot::wal_sender_timeout(&admin)
        .await
        .map_err(|e| pg_err("reading wal_sender_timeout", e))?
        .unwrap_or(Duration::from_secs(60))
        + SLOT_WAIT_MARGIN;
    let slot_info = slot::wait_inactive(&admin, &p.source.slot, patience)
        .await
        .map_err(|e| pg_err("reading pg_replication_slots", e))?;
    if let Some(info) = &slot_info
        && info.active
    {
        let pid = info
            .active_pid
            .map(|n| format!(" (server PID {n})"))
            .unwrap_or_default();
        return Err(Error::Startup(format!(
            "replication slot {} on {} is still in use by another session{pid} after waiting {} s \
             (wal_sender_timeout + {} s): another program reads from it; stop it, or name another \
             slot in source.slot",
            p.source.slot,
            source.display,
            patience.as_secs(),
            SLOT_WAIT_MARGIN.as_secs()
        )));
    }
    Ok(Prepared {
        admin,
        types,
        publications,
        publications_created: created,
        slot: slot_info,
        needs_load,
    })
}

/// The tables of `plans` whose CDC setting is `mode`, as a publication lists them.
fn published(plans: &[TablePlan], mode: CdcMode) -> Vec<Published<'_>> {
    plans
        .iter()
        .filter(|pl| pl.settings.cdc == mode)
        .map(|pl| Published {
            table: &pl.table.name,
            row_filter: pl.settings.where_clause.as_ref(),
        })
        .collect()
}

/// Every selected table must be in a publication the stream reads, or its changes would
/// silently never arrive. A table selected after CDC started is added to the publication
/// godwit created (and, in full-load-and-cdc, loaded from a snapshot of its own); in a
/// publication godwit does not own, start-up stops with what to do.
#[allow(clippy::too_many_arguments)]
async fn ensure_published(
    p: &Pipeline,
    admin: &Client,
    plans: &[TablePlan],
    publications: &[String],
    created_before: &[String],
    created: &[String],
    source: &Source,
) -> Result<Vec<String>, Error> {
    let mut needs_load = Vec::new();
    let err = |what: &str, e: tokio_postgres::Error| {
        Error::Startup(format!(
            "{what} on {}: {}",
            source.display,
            describe_error(&e, &source.display)
        ))
    };
    let published = slot::published_tables(admin, publications)
        .await
        .map_err(|e| err("reading pg_publication_tables", e))?;
    let main = &p.source.publication;
    let ours = created_before.contains(main) || created.contains(main);
    for plan in plans {
        if published.contains(&plan.table.name) {
            continue;
        }
        if ours && plan.settings.cdc == CdcMode::All {
            let t = Published {
                table: &plan.table.name,
                row_filter: plan.settings.where_clause.as_ref(),
            };
            slot::add_table(admin, main, &t).await.map_err(|e| {
                err(
                    &format!("adding {} to publication {main}", plan.table.name),
                    e,
                )
            })?;
            tracing::info!(table = %plan.table.name, publication = %main, "newly selected table added to the publication");
            if p.mode == Mode::FullLoadAndCdc {
                // Its rows so far come from a snapshot of its own.
                needs_load.push(plan.key());
            }
            continue;
        }
        let fix = if !ours {
            format!(
                "the publication {main} is yours: ALTER PUBLICATION {main} ADD TABLE {};",
                plan.table.name.quoted()
            )
        } else {
            "an inserts-only table selected after CDC started is not supported yet: run `godwit drop` \
             and run again"
                .to_string()
        };
        return Err(Error::Config(p.error_at(
            "tables.include",
            format!(
                "{} is selected but not in the publication(s) {}: its changes would never arrive; {fix}",
                plan.table.name,
                publications.join(", ")
            ),
        )));
    }
    Ok(needs_load)
}

/// Everything after start-up; returns the summary and the run's seconds.
#[allow(clippy::too_many_arguments)]
async fn run_started(
    p: &Pipeline,
    opts: &CdcOptions,
    task: &mut Task<'_>,
    prepared: Prepared,
    source: Source,
    store: Arc<dyn ObjectStore>,
    plans: Vec<TablePlan>,
    previous: Option<TaskRecord>,
) -> Result<(RunSummary, f64), Error> {
    let started = Instant::now();
    let prev_cdc = previous.as_ref().and_then(|r| r.cdc.clone());
    let mut cdc = prev_cdc.clone().unwrap_or_else(|| CdcRecord {
        slot: p.source.slot.clone(),
        ..CdcRecord::default()
    });
    cdc.slot = p.source.slot.clone();
    cdc.publications = prepared.publications.clone();
    for name in &prepared.publications_created {
        if !cdc.publications_created.contains(name) {
            cdc.publications_created.push(name.clone());
        }
    }
    let needs_load = p.mode == Mode::FullLoadAndCdc && !cdc.full_load_done;
    task.record.cdc = Some(cdc.clone());
    task.record.state = "running".into();
    task.record.started_at = now();
    task.record.stopped_at = None;
    task.record.last_error = None;

    if let Some(info) = &prepared.slot
        && info.lost()
    {
        return Err(task.unhealthy(
            "it was invalidated (wal_status = lost): WAL it needed was removed".into(),
        ));
    }
    // `consistent_point` is set once the slot godwit created exists; `slot_created` alone is
    // the intent recorded before creating it (a crash in between must not look like a loss).
    let progressed = cdc.confirmed_lsn.is_some()
        || task.record.tables.values().any(|t| t.mark.is_some())
        || (cdc.slot_created && cdc.consistent_point.is_some());
    if prepared.slot.is_none() && progressed && !needs_load {
        return Err(task.unhealthy(
            "the slot godwit created for this pipeline no longer exists (dropped?)".into(),
        ));
    }
    let endpoint = source.endpoint();
    let session_err =
        |e: crate::pg::replication::session::SessionError| Error::Runtime(e.to_string());
    let mut summary = RunSummary {
        tables: plans.len(),
        tables_in_error: 0,
        rows: 0,
    };
    let (stream, start_lsn) = if needs_load {
        if prepared.slot.is_some() {
            if !cdc.slot_created {
                return Err(Error::Startup(format!(
                    "slot {} exists but this pipeline did not create it; full-load-and-cdc needs a \
                     new slot for a consistent snapshot: drop that slot, name another one in \
                     source.slot, or use mode = \"cdc\"",
                    p.source.slot
                )));
            }
            // The initial load was interrupted: its slot and files start over together.
            tracing::info!(slot = %p.source.slot, "the initial load did not finish: its slot is recreated and every table reloaded");
            slot::drop_slot(&prepared.admin, &p.source.slot)
                .await
                .map_err(|e| Error::Runtime(format!("dropping slot {}: {e}", p.source.slot)))?;
        }
        record_slot_intent(task, &mut cdc).await?;
        let new = NewSlot::create(&endpoint, &p.source.slot, &cdc.publications, false)
            .await
            .map_err(session_err)?;
        cdc.consistent_point = Some(new.consistent_point.to_string());
        let mut record = full_load::new_record(p, &plans, &BTreeMap::new(), &new.snapshot);
        record.cdc = Some(cdc.clone());
        task.record = record;
        task.save().await?;
        task.notifier.emit(EventKind::TaskStarted {
            mode: p.mode.as_str().into(),
            tables: plans.len(),
        });
        // Taken in the load's own snapshot: a partition change after it is seen by the
        // first check, however soon it comes.
        let fingerprints = partitions::in_snapshot(&source, &new.snapshot, &plans)
            .await
            .map_err(|e| Error::Runtime(format!("reading the partitions in the snapshot: {e}")))?;
        let shared = Shared {
            source: source.clone(),
            store: store.clone(),
            state: task.state.clone(),
            notifier: task.notifier.clone(),
        };
        let outcome = full_load::load(
            p,
            &RunOptions {
                progress: opts.progress,
            },
            shared,
            &new.snapshot,
            plans.clone(),
            task.record.clone(),
        )
        .await;
        task.record = outcome.record;
        summary = outcome.summary;
        if let Some(fatal) = outcome.fatal {
            return Err(Error::Runtime(fatal));
        }
        // CDC files an earlier life of this pipeline left (before a `drop`) would replay
        // over the new load; so would a reload's staged load, switched in later.
        for plan in &plans {
            let Some(r) = task.record.tables.get_mut(&plan.key()) else {
                continue;
            };
            if r.state != TableState::Completed {
                continue;
            }
            r.fingerprint = fingerprints.get(&plan.key()).cloned().unwrap_or_default();
            let name = &plan.table.name;
            let cleaned = match reload::remove_cdc_files(store.as_ref(), name, u64::MAX).await {
                Ok(_) => reload::discard_staged(store.as_ref(), name).await,
                Err(e) => Err(e),
            };
            cleaned.map_err(|e| {
                Error::Runtime(format!("removing old CDC files of {}: {e}", plan.key()))
            })?;
        }
        cdc.full_load_done = true;
        task.record.cdc = Some(cdc.clone());
        task.save().await?;
        // Every table was just loaded: older reload requests are done.
        for table in task.state.reload_requests().await.unwrap_or_default() {
            let _ = task.state.clear_reload(&table).await;
        }
        let point = new.consistent_point;
        (new.start().await.map_err(session_err)?, point)
    } else {
        for plan in &plans {
            task.record
                .tables
                .entry(plan.key())
                .or_insert_with(|| TableRecord::new(plan.table.estimated_rows.unwrap_or(0)));
        }
        task.save().await?;
        task.notifier.emit(EventKind::TaskStarted {
            mode: p.mode.as_str().into(),
            tables: plans.len(),
        });
        match &prepared.slot {
            Some(info) => (
                Stream::open(&endpoint, &p.source.slot, &cdc.publications)
                    .await
                    .map_err(session_err)?,
                info.confirmed_flush.unwrap_or(Lsn(0)),
            ),
            None => {
                record_slot_intent(task, &mut cdc).await?;
                let new = NewSlot::create(&endpoint, &p.source.slot, &cdc.publications, false)
                    .await
                    .map_err(session_err)?;
                cdc.consistent_point = Some(new.consistent_point.to_string());
                task.record.cdc = Some(cdc.clone());
                task.save().await?;
                let point = new.consistent_point;
                (new.start().await.map_err(session_err)?, point)
            }
        }
    };
    let stop_at = if opts.once {
        Some(record_end(
            slot::current_wal_lsn(&prepared.admin)
                .await
                .map_err(|e| Error::Runtime(format!("reading pg_current_wal_insert_lsn(): {e}")))?,
        ))
    } else {
        None
    };
    let newly_selected = if needs_load {
        &[][..]
    } else {
        &prepared.needs_load[..]
    };
    for table in newly_selected {
        task.state
            .request_reload(table)
            .await
            .map_err(|e| Error::Runtime(e.to_string()))?;
    }
    finish_switches(task, store.as_ref(), &plans)
        .await
        .map_err(Error::Runtime)?;
    let reloader = Reloader {
        source: source.clone(),
        publications: cdc.publications.clone(),
        plans: plans.clone(),
        progress: opts.progress,
    };
    let mut apply = Apply::new(p, task, store, reloader, prepared.types, stream, start_lsn).await?;
    // Partition changes made while godwit was not running, then what is queued.
    let ended = match apply.check_partitions().await {
        Ok(()) => apply.reload_requested().await,
        Err(e) => Err(e),
    };
    let ended = match ended {
        Ok(()) => apply.follow(stop_at, opts.max_duration).await,
        Err(e) => Err(e),
    };
    let closed = apply.close(ended.is_ok()).await;
    if let Err(e) = ended {
        if task.unhealthy {
            return Err(e);
        }
        // The stream broke: say so plainly when the slot is the cause.
        if let Some(unhealthy) = task.slot_broken(&prepared.admin, &e.to_string()).await {
            return Err(unhealthy);
        }
        return Err(e);
    }
    closed?;
    summary.tables_in_error = task
        .record
        .tables
        .values()
        .filter(|t| t.state == TableState::Error)
        .count();
    Ok((summary, started.elapsed().as_secs_f64()))
}

/// The end of the last WAL record before insert position `lsn`: right after a page boundary the
/// insert position counts the next page's header (24 bytes; 40 at a segment start), which no
/// record fills — the stream would never reach it.
fn record_end(lsn: Lsn) -> Lsn {
    const PAGE: u64 = 8192;
    const SEGMENT: u64 = 16 << 20;
    match (lsn.0 % PAGE, lsn.0 % SEGMENT) {
        (_, 40) => Lsn(lsn.0 - 40),
        (24, _) => Lsn(lsn.0 - 24),
        _ => lsn,
    }
}

/// Records, before creating the slot, that godwit creates it: a crash right after the
/// creation still leaves a state that owns the slot (and `drop` removes it).
async fn record_slot_intent(task: &mut Task<'_>, cdc: &mut CdcRecord) -> Result<(), Error> {
    cdc.slot_created = true;
    cdc.consistent_point = None;
    task.record.cdc = Some(cdc.clone());
    task.save().await
}

/// Finishes the reload switches an interrupted run (or a failed write) left half done (see
/// `reload`); returns the tables switched.
async fn finish_switches(
    task: &mut Task<'_>,
    store: &dyn ObjectStore,
    plans: &[TablePlan],
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    for plan in plans {
        let key = plan.key();
        let Some(r) = task.record.tables.get(&key).filter(|r| r.switch_pending) else {
            continue;
        };
        let (files, up_to) = (r.files.clone(), r.mark.map(|m| m.lsn).unwrap_or(0));
        // The switch starts only once the state says it is pending (and with which files and
        // mark), so a crash in the middle is always finished at the next start.
        task.save().await.map_err(|e| e.to_string())?;
        reload::switch(store, &plan.table.name, &files, up_to)
            .await
            .map_err(|e| format!("switching in the reloaded load of {key}: {e}"))?;
        let set_pending = |task: &mut Task<'_>, pending: bool| {
            if let Some(r) = task.record.tables.get_mut(&key) {
                r.switch_pending = pending;
            }
        };
        set_pending(task, false);
        if let Err(e) = task.save().await {
            // Not recorded as done: it is done again (it can be) before the table goes on.
            set_pending(task, true);
            return Err(e.to_string());
        }
        let _ = task.state.clear_reload(&key).await;
        tracing::info!(table = %key, "the reloaded load is in place");
        done.push(key);
    }
    Ok(done)
}

/// The wait before retry `attempt` (1-based) of something recoverable: 5 s, doubling, at most
/// 30 min.
fn backoff(attempt: u64) -> Duration {
    Duration::from_secs(5)
        .saturating_mul(1u32 << (attempt.max(1) - 1).min(9) as u32)
        .min(Duration::from_secs(1800))
}

/// What ends a CDC run cleanly: SIGTERM, SIGINT, `--max-duration`.
struct Stops {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    deadline: Option<tokio::time::Instant>,
}

impl Stops {
    fn new(max_duration: Option<Duration>) -> Result<Stops, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Error::Runtime(format!("cannot watch {name}: {e}")))
        };
        Ok(Stops {
            term: watch(SignalKind::terminate(), "SIGTERM")?,
            int: watch(SignalKind::interrupt(), "SIGINT")?,
            deadline: max_duration.map(|d| tokio::time::Instant::now() + d),
        })
    }

    /// Waits for the next stop; says which.
    async fn next(&mut self) -> &'static str {
        let deadline = self.deadline;
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => "--max-duration reached",
        }
    }
}

/// One selected table as CDC follows it.
struct Followed {
    key: String,
    name: TableName,
    columns: Vec<Column>,
    exclude: Vec<String>,
    numeric: NumericAs,
    primary_key: Vec<String>,
    mark: Option<Mark>,
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
    data_errors: u64,
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
    store: Arc<dyn ObjectStore>,
    format: FileFormat,
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
    buffered_bytes: usize,
    buffered_since: Option<Instant>,
    last_file_ms: i64,
    lag_alerted: bool,
    files_written: u64,
    reloader: Reloader,
    last_request_check: Instant,
    /// An ordinary connection for the partition checks (opened when first needed).
    catalog: Option<Client>,
    /// Failed reloads: attempts so far, and when the next may start.
    reload_failures: HashMap<String, (u64, Instant)>,
    /// The live line on a terminal, and the changes this run wrote to files.
    live: LiveLine,
    changes_written: u64,
    /// The last commit received: its time (µs) and how late it arrived (s).
    last_commit: Option<(i64, f64)>,
}

/// What reloading single tables needs.
struct Reloader {
    source: Source,
    publications: Vec<String>,
    plans: Vec<TablePlan>,
    progress: bool,
}

impl<'a, 'b> Apply<'a, 'b> {
    async fn new(
        p: &'a Pipeline,
        task: &'a mut Task<'b>,
        store: Arc<dyn ObjectStore>,
        reloader: Reloader,
        types: Types,
        stream: Stream,
        start: Lsn,
    ) -> Result<Apply<'a, 'b>, Error> {
        let plans = &reloader.plans;
        let format = full_load::file_format(p, p.target.row_group_bytes as usize);
        let mut tables = Vec::new();
        let mut by_oid = HashMap::new();
        for plan in plans {
            let key = plan.key();
            let record = task.record.tables.get(&key);
            let recorded = record.and_then(|r| r.mark);
            let intents = record.and_then(|r| r.intents.clone());
            let mark = recover_mark(store.as_ref(), &plan.table.name, recorded, intents, &format)
                .await
                .map_err(|e| Error::Runtime(format!("reading back the CDC files of {key}: {e}")))?;
            if mark != recorded {
                tracing::info!(
                    table = %key,
                    mark_lsn = mark.map(|m| tracing::field::display(Lsn(m.lsn))),
                    mark_seq = mark.map(|m| m.seq),
                    "high-water mark moved past files written after the last checkpoint"
                );
            }
            by_oid.insert(plan.table.oid, tables.len());
            tables.push(Followed {
                key,
                name: plan.table.name.clone(),
                columns: plan.table.columns.clone(),
                exclude: plan.settings.exclude_columns.clone(),
                numeric: match plan.settings.numeric {
                    NumericMode::Decimal => NumericAs::Decimal,
                    NumericMode::Text => NumericAs::Text,
                },
                primary_key: plan.table.key.clone(),
                mark,
                layout: None,
                buffer: TableBuffer::default(),
                counts: Counts::default(),
                // A table in error waits for `godwit reload`: its changes would land on a
                // table whose copy is not whole.
                suspended: task
                    .record
                    .tables
                    .get(&plan.key())
                    .is_some_and(|r| r.state == TableState::Error),
            });
        }
        let live = LiveLine::new(reloader.progress, "CDC");
        Ok(Apply {
            p,
            task,
            store,
            format,
            types,
            stream: Some(stream),
            tables,
            by_oid,
            rels: HashMap::new(),
            txn: None,
            last_commit_end: None,
            position: start,
            confirmed: start,
            confirmed_now: Lsn(0),
            buffered_rows: 0,
            buffered_bytes: 0,
            buffered_since: None,
            last_file_ms: 0,
            lag_alerted: false,
            files_written: 0,
            reloader,
            last_request_check: Instant::now(),
            catalog: None,
            reload_failures: HashMap::new(),
            live,
            changes_written: 0,
            last_commit: None,
        })
    }

    /// What the live line shows.
    fn stats(&self) -> CdcStats {
        CdcStats {
            changes: self.changes_written,
            buffered: self.buffered_rows as u64,
            files: self.files_written,
            lag_seconds: self.last_commit.map(|(_, lag)| lag),
            last_commit: self.last_commit.map(|(time, _)| time),
        }
    }

    /// Follows the stream until `stop_at` (with `--once`), the deadline or a signal.
    async fn follow(
        &mut self,
        stop_at: Option<Lsn>,
        max_duration: Option<Duration>,
    ) -> Result<(), Error> {
        let mut stops = Stops::new(max_duration)?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut failures: u64 = 0;
        tracing::info!(start = %self.position, stop_at = stop_at.map(tracing::field::display), "CDC started");
        loop {
            if let Some(stop) = stop_at
                && self.txn.is_none()
                && self.position >= stop
            {
                tracing::info!(position = %self.position, "reached the WAL position of the start (--once)");
                return Ok(());
            }
            let outcome = match self.stream.as_mut() {
                None => Err(Error::Recoverable(
                    "the last attempt to reopen the stream failed".into(),
                )),
                Some(stream) => tokio::select! {
                    ev = stream.next() => match ev {
                        Ok(Some(ev)) => self.on_event(ev).await.map(|()| failures = 0),
                        Ok(None) => Err(Error::Recoverable("the replication stream ended".into())),
                        Err(e) => Err(Error::Recoverable(e.to_string())),
                    },
                    _ = tick.tick() => self.on_tick().await,
                    why = stops.next() => {
                        tracing::info!("{why}: flushing and stopping");
                        return Ok(());
                    }
                },
            };
            let why = match outcome {
                Ok(()) => continue,
                Err(Error::Recoverable(why)) => why,
                Err(e) => return Err(e),
            };
            // A write refused by the fence is no blip: the lease is lost, this run stops.
            self.task.fenced()?;
            failures += 1;
            let retries = self.p.errors.recoverable_retries;
            if retries >= 0 && failures > retries as u64 {
                return Err(Error::Runtime(format!(
                    "{why} ([errors] recoverable_retries = {retries} spent)"
                )));
            }
            if self.reconnect(&why, failures, &mut stops).await? {
                return Ok(());
            }
        }
    }

    /// After the stream or a write broke: forget what is not checkpointed (the slot sends it
    /// again), move the marks past files completed since the checkpoint, wait (5 s doubling up
    /// to 30 min, or until a stop) and open a new session from the slot's confirmed position.
    /// Returns true when a stop came during the wait.
    async fn reconnect(
        &mut self,
        why: &str,
        attempt: u64,
        stops: &mut Stops,
    ) -> Result<bool, Error> {
        let wait = backoff(attempt);
        tracing::warn!(
            attempt,
            wait_s = wait.as_secs(),
            "CDC broke ({why}); starting again from the slot"
        );
        self.stream = None;
        for t in &mut self.tables {
            t.buffer = TableBuffer::default();
            t.counts = Counts::default();
        }
        self.rels.clear();
        self.txn = None;
        self.last_commit_end = None;
        self.buffered_rows = 0;
        self.buffered_bytes = 0;
        self.buffered_since = None;
        self.position = self.confirmed;
        self.live.note(
            &self.stats(),
            &format!("reconnecting in {}s (attempt {attempt})", wait.as_secs()),
        );
        let fence = self.task.state.fence();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            why = stops.next() => {
                tracing::info!("{why} while waiting to reconnect: stopping");
                return Ok(true);
            }
            lost = fence.lost() => return Err(Error::Runtime(lost.to_string())),
        }
        // A reload's switch a failed write interrupted (failing again: wait and retry).
        if let Err(e) = self.finish_switches().await {
            tracing::warn!("{e}");
            return Ok(false);
        }
        // A write may have completed files the checkpoint does not know.
        for t in &mut self.tables {
            let intents = self
                .task
                .record
                .tables
                .get(&t.key)
                .and_then(|r| r.intents.clone());
            match recover_mark(self.store.as_ref(), &t.name, t.mark, intents, &self.format).await {
                Ok(m) => t.mark = m,
                Err(e) => return Err(Error::Recoverable(format!("reading back {}: {e}", t.key))),
            }
        }
        // A slot that is gone or invalidated is not a network blip.
        if let Ok(client) = self.reloader.source.connect().await
            && let Some(unhealthy) = self.task.slot_broken(&client, why).await
        {
            return Err(unhealthy);
        }
        let endpoint = self.reloader.source.endpoint();
        match Stream::open(&endpoint, &self.p.source.slot, &self.reloader.publications).await {
            Ok(stream) => {
                tracing::info!("replication stream open again");
                self.stream = Some(stream);
            }
            Err(e) => tracing::warn!("reconnecting failed: {e}"),
        }
        Ok(false)
    }

    /// Reloads the tables `godwit reload`, a partition change or a newly selected table asked
    /// for: what is buffered is written first, the stream waits (its keepalives are still
    /// answered), the tables load from a temporary slot's snapshot into the staging area and
    /// are switched in (see `reload`), and their marks move to that slot's consistent point.
    /// A table whose reload failed is in `Table error` and tried again after a back-off.
    async fn reload_requested(&mut self) -> Result<(), Error> {
        let requests = self
            .task
            .state
            .reload_requests()
            .await
            .map_err(|e| Error::Recoverable(format!("reading reload requests: {e}")))?;
        if requests.is_empty() {
            return Ok(());
        }
        for r in &requests {
            if !self.reloader.plans.iter().any(|pl| &pl.key() == r) {
                tracing::warn!(table = %r, "reload requested for a table this pipeline does not select; dropped");
                let _ = self.task.state.clear_reload(r).await;
            }
        }
        let now = Instant::now();
        let plans: Vec<TablePlan> = self
            .reloader
            .plans
            .iter()
            .filter(|pl| requests.contains(&pl.key()))
            .filter(|pl| {
                self.reload_failures
                    .get(&pl.key())
                    .is_none_or(|(_, next)| now >= *next)
            })
            .cloned()
            .collect();
        if plans.is_empty() {
            return Ok(());
        }
        self.flush().await?;
        for pl in &plans {
            if let Some(r) = self.task.record.tables.get_mut(&pl.key()) {
                r.state = TableState::Reloading;
            }
        }
        self.task.save().await?;
        let shared = Shared {
            source: self.reloader.source.clone(),
            store: self.store.clone(),
            state: self.task.state.clone(),
            notifier: self.task.notifier.clone(),
        };
        let attempt = reload::load_from_temporary_slot(
            self.p,
            self.reloader.progress,
            shared,
            &self.reloader.source.endpoint(),
            &self.reloader.publications,
            plans.clone(),
            self.task.record.clone(),
        )
        .await?;
        let (point, fingerprints) = match attempt {
            reload::Attempt::Loaded {
                record,
                point,
                fingerprints,
            } => {
                self.task.record = *record;
                (point, fingerprints)
            }
            reload::Attempt::NotStarted(why) => {
                for pl in &plans {
                    self.reload_failed(&pl.key(), &why, true).await?;
                }
                return self.task.save().await;
            }
        };
        // Changes committed before the consistent point are in the new load.
        let mark = Mark {
            lsn: point.0.saturating_sub(1),
            seq: u64::MAX,
        };
        for pl in &plans {
            let key = pl.key();
            let Some(r) = self.task.record.tables.get_mut(&key) else {
                continue;
            };
            if r.state != TableState::Completed {
                // The load said why (state and `table.error`); the old load is untouched.
                let why = r
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the load did not complete".into());
                self.reload_failed(&key, &why, false).await?;
                continue;
            }
            r.mark = Some(mark);
            r.last_lsn = None;
            r.fingerprint = fingerprints.get(&key).cloned().unwrap_or_default();
            r.switch_pending = true;
            // Its changes wait for the switch; from then on they count from the new mark.
            if let Some(t) = self.tables.iter_mut().find(|t| t.key == key) {
                t.mark = Some(mark);
                t.suspended = true;
            }
            self.reload_failures.remove(&key);
            tracing::info!(table = %key, consistent_point = %point, "reloaded; CDC goes on after the new snapshot");
        }
        self.task.save().await?;
        self.finish_switches().await
    }

    /// Finishes pending reload switches and follows the switched tables from their new marks.
    async fn finish_switches(&mut self) -> Result<(), Error> {
        let plans = self.reloader.plans.clone();
        let done = finish_switches(self.task, self.store.as_ref(), &plans)
            .await
            .map_err(Error::Recoverable)?;
        for key in done {
            let mark = self.task.record.tables.get(&key).and_then(|r| r.mark);
            if let Some(t) = self.tables.iter_mut().find(|t| t.key == key) {
                t.mark = mark;
                t.suspended = false;
            }
        }
        Ok(())
    }

    /// A reload of `key` failed (`why`): the table goes to `Table error` (its changes wait for
    /// the reload) and the reload is tried again after a back-off, `[errors]
    /// recoverable_retries` times; `emit` when no `table.error` was emitted for it yet.
    async fn reload_failed(&mut self, key: &str, why: &str, emit: bool) -> Result<(), Error> {
        let policy = if self.p.errors.table == TableErrorPolicy::StopTask {
            "stop-task"
        } else {
            "suspend-table"
        };
        let entry = self
            .reload_failures
            .entry(key.to_string())
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        let attempt = entry.0;
        let wait = backoff(attempt);
        entry.1 = Instant::now() + wait;
        let retries = self.p.errors.recoverable_retries;
        let spent = retries >= 0 && attempt > retries as u64;
        let remedy = if spent {
            let _ = self.task.state.clear_reload(key).await;
            format!(
                "the reload failed {attempt} times ([errors] recoverable_retries = {retries}); fix \
                 the cause, then run `godwit reload PIPELINE --table {key}`"
            )
        } else {
            format!(
                "godwit tries the reload again in {}s (attempt {}); the previous load stays in \
                 place until a reload completes",
                wait.as_secs(),
                attempt + 1
            )
        };
        let error = format!("reload failed: {why}");
        tracing::warn!(table = %key, "{error}; {remedy}");
        if let Some(r) = self.task.record.tables.get_mut(key) {
            r.state = TableState::Error;
            r.last_error = Some(error.clone());
            r.remedy = Some(remedy.clone());
        }
        if let Some(t) = self.tables.iter_mut().find(|t| t.key == key) {
            t.suspended = true;
        }
        if emit {
            self.task.notifier.emit(EventKind::TableError {
                table: key.to_string(),
                error: error.clone(),
                policy: policy.into(),
                remedy,
            });
        }
        if policy == "stop-task" {
            return Err(Error::Runtime(format!("{key}: {error}")));
        }
        Ok(())
    }

    /// Partition changes the stream does not carry (see `partitions`): a followed partitioned
    /// table whose partitions changed since its files were loaded is reloaded (in
    /// full-load-and-cdc), with a `table.truncated` event naming each partition. Tables
    /// already waiting for a reload, or in error, are left to it. A catalog that cannot be read
    /// now is tried again at the next check.
    async fn check_partitions(&mut self) -> Result<(), Error> {
        let roots: Vec<TablePlan> = self
            .reloader
            .plans
            .iter()
            .filter(|pl| pl.table.partitioned)
            .filter(|pl| !self.tables.iter().any(|t| t.key == pl.key() && t.suspended))
            .cloned()
            .collect();
        if roots.is_empty() {
            return Ok(());
        }
        let pending = match self.task.state.reload_requests().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading reload requests: {e}");
                return Ok(());
            }
        };
        let roots: Vec<&TablePlan> = roots
            .iter()
            .filter(|pl| !pending.contains(&pl.key()))
            .collect();
        if roots.is_empty() {
            return Ok(());
        }
        if self.catalog.is_none() {
            match self.reloader.source.connect().await {
                Ok(c) => self.catalog = Some(c),
                Err(e) => {
                    tracing::warn!("checking the partitions: {e}");
                    return Ok(());
                }
            }
        }
        let Some(client) = self.catalog.as_ref() else {
            return Ok(());
        };
        let read = async {
            let current = partitions::now(client, &roots).await?;
            let mut oids = Vec::new();
            for pl in &roots {
                let stored = self.task.record.tables.get(&pl.key());
                for text in [
                    stored.map(|r| r.fingerprint.as_str()),
                    current.get(&pl.key()).map(String::as_str),
                ]
                .into_iter()
                .flatten()
                {
                    oids.extend(
                        catalog::parse_fingerprint(text)
                            .unwrap_or_default()
                            .iter()
                            .map(|e| e.oid),
                    );
                }
            }
            let names = catalog::table_names(client, &oids).await?;
            Ok::<_, tokio_postgres::Error>((current, names))
        };
        let (current, names) = match read.await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(
                    "checking the partitions: {}",
                    describe_error(&e, &self.reloader.source.display)
                );
                self.catalog = None;
                return Ok(());
            }
        };
        let reload = self.p.mode == Mode::FullLoadAndCdc;
        let mut save = false;
        for pl in roots {
            let key = pl.key();
            let (Some(now), Some(r)) = (current.get(&key), self.task.record.tables.get_mut(&key))
            else {
                continue;
            };
            if &r.fingerprint == now {
                continue;
            }
            let changes = partitions::diff(&r.fingerprint, now, &|oid| names.contains_key(&oid));
            if changes.is_empty() || !reload {
                // Nothing recorded yet (an older state), or a changes-only pipeline.
                r.fingerprint = now.clone();
                save = true;
            }
            let action = if reload {
                "its rows changed without a change record in the stream: the table is reloaded"
            } else {
                "its rows changed without a change record in the stream (mode cdc writes no \
                 full load): `godwit reload` the table for a copy that is whole again"
            };
            for c in &changes {
                self.task.notifier.emit(EventKind::TableTruncated {
                    table: key.clone(),
                    lsn: None,
                    partition: Some(PartitionChange {
                        partition: partitions::name_of(&names, c.oid),
                        change: c.change.into(),
                        action: action.into(),
                    }),
                });
            }
            if reload
                && !changes.is_empty()
                && let Err(e) = self.task.state.request_reload(&key).await
            {
                // The fingerprint stays as it was: the next check asks again.
                tracing::warn!(table = %key, "requesting the reload: {e}; trying again at the next check");
            }
        }
        if save {
            self.task.save().await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), Error> {
        // A run that lost its lease (paused past it, or taken over) stops at once.
        self.task.fenced()?;
        self.live.update(&self.stats());
        if self.last_request_check.elapsed() >= Duration::from_secs(5) {
            self.last_request_check = Instant::now();
            self.check_partitions().await?;
            self.reload_requested().await?;
        }
        if let Some(since) = self.buffered_since
            && since.elapsed() >= self.p.target.cdc_max_batch_interval
        {
            self.flush().await?;
        }
        Ok(())
    }

    async fn on_event(&mut self, ev: StreamEvent) -> Result<(), Error> {
        match ev {
            StreamEvent::Begin {
                final_lsn,
                commit_time,
            } => {
                self.txn = Some(Txn {
                    lsn: final_lsn,
                    commit_time,
                    seq: 0,
                });
            }
            StreamEvent::Data { data } => {
                let msg = pgoutput::decode(&data).map_err(|e| Error::Runtime(e.to_string()))?;
                self.on_message(msg)?;
                if self.buffered_bytes as u64 >= self.p.target.cdc_min_file_size {
                    self.flush().await?;
                }
            }
            StreamEvent::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                self.txn = None;
                tracing::debug!(end_lsn = %end_lsn, buffered_rows = self.buffered_rows, "transaction received");
                self.last_commit_end = Some(end_lsn);
                self.position = self.position.max(end_lsn);
                self.watch_lag(commit_time);
                if self.buffered_rows == 0 {
                    self.confirm(end_lsn)?;
                } else if self.buffered_bytes as u64 >= self.p.target.cdc_min_file_size {
                    self.flush().await?;
                }
            }
            StreamEvent::KeepAlive { wal_end } => {
                if self.txn.is_none() {
                    self.position = self.position.max(wal_end);
                    if self.buffered_rows == 0 {
                        // Nothing buffered or in flight: WAL up to here needs no keeping.
                        self.confirm(wal_end)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn watch_lag(&mut self, commit_time: i64) {
        let lag = (chrono::Utc::now().timestamp_micros() - commit_time) as f64 / 1e6;
        self.last_commit = Some((commit_time, lag));
        let threshold = self.p.notify.cdc_lag_threshold.as_secs_f64();
        if lag > threshold && !self.lag_alerted {
            self.lag_alerted = true;
            self.task.notifier.emit(EventKind::CdcLag {
                seconds: lag,
                threshold_seconds: threshold,
            });
        } else if lag < threshold / 2.0 {
            self.lag_alerted = false;
        }
    }

    /// Confirms `lsn` to the slot — only while this run holds the lease.
    fn confirm(&mut self, lsn: Lsn) -> Result<(), Error> {
        if lsn > self.confirmed {
            self.task.fenced()?;
            self.confirmed = lsn;
            self.confirmed_now = lsn;
            if let Some(s) = &self.stream {
                s.confirm(lsn);
            }
        }
        Ok(())
    }

    fn on_message(&mut self, msg: Message) -> Result<(), Error> {
        // `_seq` is a function of the stream alone: twice the change message's position in its
        // transaction (+1 for the `I` of a `D`+`I` pair), whatever is followed or configured.
        let seq = match &msg {
            Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. } => {
                let txn = self.txn.as_mut().ok_or_else(|| {
                    Error::Runtime("pgoutput sent a change outside a transaction".into())
                })?;
                txn.seq += 1;
                txn.seq * 2
            }
            _ => 0,
        };
        match msg {
            Message::Relation(r) => self.on_relation(&r),
            Message::Insert { relation, new } => self.change(relation, Op::Insert, &new, None, seq),
            Message::Update { relation, old, new } => {
                let key_changed = match &old {
                    None => false,
                    // `K` (key changed, or a TOASTed key) and `O` (FULL): compare the key.
                    Some((_, o)) => match self.rels.get(&relation) {
                        Some(r) if !r.key_positions.is_empty() => {
                            r.key_positions.iter().any(|&i| {
                                o.get(i) != new.get(i) && new.get(i) != Some(&Value::Unchanged)
                            })
                        }
                        // Without a key, a row is only its values: delete the old, insert the new.
                        _ => true,
                    },
                } && !self.p.target.cdc_inserts_only;
                let full_old = match &old {
                    Some((OldTuple::Full, o)) => Some(o.as_slice()),
                    _ => None,
                };
                if key_changed {
                    let (_, o) = old.as_ref().expect("a key change carries the old tuple");
                    self.change(relation, Op::Delete, o, None, seq)?;
                    self.change(relation, Op::Insert, &new, full_old, seq + 1)
                } else {
                    self.change(relation, Op::Update, &new, full_old, seq)
                }
            }
            Message::Delete { relation, old, .. } => {
                self.change(relation, Op::Delete, &old, None, seq)
            }
            Message::Truncate { relations, .. } => {
                // One seq for all: each table has its own mark.
                for r in relations {
                    self.change(r, Op::Truncate, &[], None, seq)?;
                }
                Ok(())
            }
            Message::Begin { .. }
            | Message::Commit { .. }
            | Message::Origin { .. }
            | Message::Type { .. }
            | Message::Message { .. } => Ok(()),
        }
    }

    fn on_relation(&mut self, r: &Relation) -> Result<(), Error> {
        // By OID: a renamed table is still the table it was (its files keep their folder).
        let Some(&ti) = self.by_oid.get(&r.oid) else {
            self.rels.insert(
                r.oid,
                Rel {
                    table: None,
                    key_positions: Vec::new(),
                },
            );
            return Ok(());
        };
        let t = &mut self.tables[ti];
        let key_positions = t
            .primary_key
            .iter()
            .filter_map(|k| r.columns.iter().position(|c| &c.name == k))
            .collect();
        let mut columns = Vec::new();
        let mut rel_to_out = Vec::new();
        for c in &r.columns {
            if t.exclude.contains(&c.name) {
                rel_to_out.push(None);
                continue;
            }
            let ndims = t
                .columns
                .iter()
                .find(|k| k.name == c.name && k.type_oid == c.type_oid)
                .map(|k| k.ndims)
                .unwrap_or(0);
            let types_ = &self.types;
            let ty = types::resolve(c.type_oid, c.typmod, ndims, t.numeric, &|o| types_.get(o));
            rel_to_out.push(Some(columns.len()));
            columns.push((c.name.clone(), ty));
        }
        let changed = t
            .layout
            .as_ref()
            .is_none_or(|old| old.columns != columns || old.rel_to_out != rel_to_out);
        if changed {
            let generation = match &t.layout {
                Some(old) => {
                    tracing::info!(table = %t.key, "the table's columns changed: the next rows go to a file with the new schema");
                    old.generation + 1
                }
                None => 0,
            };
            t.layout = Some(Arc::new(
                Layout::new(
                    generation,
                    columns,
                    rel_to_out,
                    !self.p.target.cdc_inserts_only,
                    self.p.target.timestamp_column.as_deref(),
                )
                .with_key(&t.primary_key),
            ));
        }
        self.rels.insert(
            r.oid,
            Rel {
                table: Some(ti),
                key_positions,
            },
        );
        Ok(())
    }

    /// One change of a relation inside the current transaction.
    fn change(
        &mut self,
        relation: u32,
        op: Op,
        values: &[Value],
        old: Option<&[Value]>,
        seq: u64,
    ) -> Result<(), Error> {
        let txn = self
            .txn
            .as_ref()
            .ok_or_else(|| Error::Runtime("pgoutput sent a change outside a transaction".into()))?;
        let mark = Mark {
            lsn: txn.lsn.0,
            seq,
        };
        let commit_time = txn.commit_time;
        let rel = self.rels.get(&relation).ok_or_else(|| {
            Error::Runtime(format!(
                "pgoutput sent a change of relation {relation} before describing it"
            ))
        })?;
        let Some(ti) = rel.table else {
            return Ok(());
        };
        let t = &mut self.tables[ti];
        if t.suspended || t.mark.is_some_and(|m| mark <= m) {
            return Ok(());
        }
        if op == Op::Truncate {
            self.task.notifier.emit(EventKind::TableTruncated {
                table: t.key.clone(),
                lsn: Some(Lsn(mark.lsn).to_string()),
                partition: None,
            });
        }
        if self.p.target.cdc_inserts_only && op != Op::Insert {
            // Seen, not written (DMS CdcInsertsOnly).
            match op {
                Op::Update => t.counts.updates += 1,
                Op::Delete => t.counts.deletes += 1,
                _ => {}
            }
            return Ok(());
        }
        let layout = t.layout.clone().expect("a described relation has a layout");
        let folder = match self.p.target.date_partitioning {
            DatePartitioning::None => String::new(),
            DatePartitioning::Day => layout::date_folder(commit_time, false),
            DatePartitioning::Hour => layout::date_folder(commit_time, true),
        };
        let row = Row {
            op,
            commit_time,
            mark,
            values,
            old,
        };
        let before = t.buffer.bytes;
        let pushed = t
            .buffer
            .push(&layout, &folder, &row, self.p.load.batch_rows)
            .map_err(|e| Error::Runtime(format!("building the batch of {}: {e}", t.key)))?;
        if pushed.is_ok() {
            // A row that failed left no trace: it is not buffered and not counted.
            match op {
                Op::Insert => t.counts.inserts += 1,
                Op::Update => t.counts.updates += 1,
                Op::Delete => t.counts.deletes += 1,
                Op::Truncate => {}
            }
            self.buffered_rows += 1;
            self.buffered_bytes += t.buffer.bytes - before;
            self.buffered_since.get_or_insert_with(Instant::now);
        }
        if let Err(bad) = pushed {
            t.counts.data_errors += 1;
            let key = match bad.key.as_str() {
                "" => String::new(),
                k => format!(", key {k}"),
            };
            let what = format!(
                "data error in {} at LSN {}{key} (column {}): {}",
                t.key,
                Lsn(mark.lsn),
                bad.column,
                bad.error
            );
            bad.log_detail(&t.key);
            match self.p.errors.data {
                DataErrorPolicy::IgnoreRecord => {}
                DataErrorPolicy::LogError => {
                    tracing::warn!(table = %t.key, "{what}; the change was skipped ([errors] data = \"log-error\")");
                }
                DataErrorPolicy::SuspendTable => {
                    t.suspended = true;
                    let key = t.key.clone();
                    if let Some(r) = self.task.record.tables.get_mut(&key) {
                        r.state = TableState::Error;
                        r.last_error = Some(what.clone());
                        r.remedy = Some(
                            "fix the value in the source, then `godwit reload` the table".into(),
                        );
                    }
                    self.task.notifier.emit(EventKind::TableError {
                        table: key,
                        error: what,
                        policy: "suspend-table".into(),
                        remedy: "fix the value in the source, then reload the table".into(),
                    });
                }
                DataErrorPolicy::StopTask => return Err(Error::Runtime(what)),
            }
        }
        Ok(())
    }

    /// Writes every buffered row, checkpoints the marks, then confirms to the slot the last
    /// commit whose rows are all written.
    async fn flush(&mut self) -> Result<(), Error> {
        if self.buffered_rows > 0 {
            let mut work = Vec::new();
            for (ti, t) in self.tables.iter_mut().enumerate() {
                if t.buffer.groups.is_empty() {
                    continue;
                }
                let groups = t.buffer.take().map_err(|e| {
                    Error::Runtime(format!("finishing the batch of {}: {e}", t.key))
                })?;
                for g in groups {
                    let mut ms = chrono::Utc::now().timestamp_millis();
                    if ms <= self.last_file_ms {
                        ms = self.last_file_ms + 1;
                    }
                    self.last_file_ms = ms;
                    let key = layout::cdc_file(
                        &t.name,
                        &g.folder,
                        ms,
                        g.first.lsn,
                        g.last.lsn,
                        self.format.extension(),
                    );
                    work.push((ti, key, g));
                }
            }
            // The intent: which objects this flush is about to write, saved before the first
            // one, so a start after a crash reads back only those.
            for (ti, key, _) in &work {
                if let Some(r) = self.task.record.tables.get_mut(&self.tables[*ti].key) {
                    r.intents.get_or_insert_with(Vec::new).push(key.clone());
                }
            }
            self.task.save().await?;
            let store = self.store.clone();
            let format = self.format.clone();
            let written = tokio::task::spawn_blocking(move || {
                let mut out: Vec<(usize, Mark, Mark, WrittenFile)> = Vec::new();
                for (ti, key, g) in work {
                    let f = cdc_files::write_file(
                        store.as_ref(),
                        &key,
                        g.schema(),
                        &format,
                        &g.batches,
                    )?;
                    out.push((ti, g.first, g.last, f));
                }
                Ok::<_, crate::sink::files::writer::WriteError>(out)
            })
            .await
            .map_err(|e| Error::Runtime(format!("the CDC file writer crashed: {e}")))?
            .map_err(|e| Error::Recoverable(e.to_string()))?;
            self.files_written += written.len() as u64;
            for (ti, first, last, f) in &written {
                let t = &mut self.tables[*ti];
                t.mark = t.mark.max(Some(*last));
                self.changes_written += f.rows;
                tracing::info!(
                    table = %t.key,
                    file = %f.key,
                    rows = f.rows,
                    bytes = f.bytes,
                    first_lsn = %Lsn(first.lsn),
                    last_lsn = %Lsn(last.lsn),
                    "CDC file written"
                );
            }
            self.buffered_rows = 0;
            self.buffered_bytes = 0;
            self.buffered_since = None;
        }
        for t in &mut self.tables {
            let counts = std::mem::take(&mut t.counts);
            if let Some(r) = self.task.record.tables.get_mut(&t.key) {
                r.inserts += counts.inserts;
                r.updates += counts.updates;
                r.deletes += counts.deletes;
                r.data_errors += counts.data_errors;
                r.mark = t.mark;
                r.intents = Some(Vec::new());
                r.last_lsn = t.mark.map(|m| Lsn(m.lsn).to_string());
                if r.state != TableState::Error {
                    r.state = TableState::Cdc;
                }
            }
        }
        let confirm = if self.txn.is_none() {
            Some(self.position)
        } else {
            self.last_commit_end
        };
        if let Some(cdc) = self.task.record.cdc.as_mut()
            && let Some(l) = confirm
        {
            cdc.confirmed_lsn = Some(l.max(self.confirmed).to_string());
        }
        self.task.save().await?;
        if let Some(lsn) = confirm {
            self.confirm(lsn)?;
        }
        self.live.update(&self.stats());
        Ok(())
    }

    /// Flushes (after a clean end) and closes the session once the last position reached
    /// the server.
    async fn close(&mut self, clean: bool) -> Result<(), Error> {
        let flushed = if clean { self.flush().await } else { Ok(()) };
        if let Some(stream) = self.stream.take()
            && let Err(e) = stream.close(self.confirmed_now).await
        {
            tracing::warn!("closing the replication session: {e}");
        }
        self.live.finish(&self.stats());
        tracing::info!(files = self.files_written, changes = self.changes_written, confirmed = %self.confirmed, "CDC stopped");
        flushed
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
        let found = tokio::task::spawn_blocking(move || cdc_files::max_mark(data, &format))
            .await
            .map_err(|e| format!("{key}: reading it back crashed: {e}"))?
            .map_err(|e| format!("{key}: {e}"))?;
        mark = mark.max(found);
    }
    Ok(mark)
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

    #[test]
    fn the_stop_point_is_a_record_end() {
        assert_eq!(record_end(Lsn(0x1_0000_2018)), Lsn(0x1_0000_2000));
        assert_eq!(record_end(Lsn(0x1_0100_0028)), Lsn(0x1_0100_0000));
        assert_eq!(record_end(Lsn(0x1_0000_2019)), Lsn(0x1_0000_2019));
        assert_eq!(record_end(Lsn(0x1_0000_2028)), Lsn(0x1_0000_2028));
    }
}
