//! Start-up of a CDC run: the checks that refuse what CDC would break, the publications,
//! the slot (created with its exported snapshot for the initial load), then the apply loop.

use super::*;

/// Start-up checks of CDC (exit 2 on failure): wal_level, replica identity of every table
/// whose UPDATE/DELETE would be published, the publications (created when missing).
pub(super) async fn prepare(
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
    if let Some(problem) = cache_identity_problem(p, plans, &identities) {
        return Err(Error::Config(problem));
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
pub(super) fn published(plans: &[TablePlan], mode: CdcMode) -> Vec<Published<'_>> {
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
pub(super) async fn ensure_published(
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
pub(super) async fn run_started(
    p: &Pipeline,
    opts: &CdcOptions,
    task: &mut Task<'_>,
    prepared: Prepared,
    source: Source,
    store: Arc<dyn ObjectStore>,
    cache: Option<Arc<CacheTarget>>,
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
        interrupted: None,
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
        // An earlier sharded load's snapshot is gone with its slot: shards must not find it
        // while the new slot is being created.
        task.record.shards = None;
        task.record.snapshot = None;
        record_slot_intent(task, &mut cdc).await?;
        let new = NewSlot::create(&endpoint, &p.source.slot, &cdc.publications, false)
            .await
            .map_err(session_err)?;
        cdc.consistent_point = Some(new.consistent_point.to_string());
        let mut record = full_load::new_record(p, &plans, &BTreeMap::new(), &new.snapshot);
        record.cdc = Some(cdc.clone());
        // The coordinator of a sharded initial load says so: the other shards wait for this
        // record and import the slot's snapshot, which stays open until they are done.
        record.shards = opts.shard.map(|s| s.count);
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
            cache: cache.clone().map(|target| Warm {
                target,
                at: new.consistent_point,
                racing: false,
            }),
        };
        let outcome = full_load::load(
            p,
            &RunOptions {
                progress: opts.progress,
                run: opts.run.clone(),
                shard: opts.shard,
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
            return Err(fatal);
        }
        let stopped = summary.interrupted.is_some();
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
        // A sharded initial load is over: its shards have nothing more to do.
        task.record.shards = None;
        task.record.cdc = Some(cdc.clone());
        task.save().await?;
        // Every table was just loaded: older reload requests are done.
        for table in task.state.reload_requests().await.unwrap_or_default() {
            let _ = task.state.clear_reload(&table).await;
        }
        if stopped {
            // Stopped (a signal, a deadline) before every table was loaded: the tables loaded
            // are kept (from the slot's snapshot, CDC goes on after it); the others load as
            // reloads do, each from a temporary slot's snapshot with its own mark, when the
            // next run starts. The slot stays at its consistent point.
            for plan in &plans {
                let pending = task
                    .record
                    .tables
                    .get(&plan.key())
                    .is_some_and(|r| r.state == TableState::BeforeLoad);
                if pending {
                    task.state
                        .request_reload(&plan.key())
                        .await
                        .map_err(|e| Error::Runtime(e.to_string()))?;
                }
            }
            drop(new);
            summary.tables_in_error = in_error(&task.record);
            return Ok((summary, started.elapsed().as_secs_f64()));
        }
        let point = new.consistent_point;
        (new.start().await.map_err(session_err)?, point)
    } else {
        if let Some(shard) = opts.shard {
            tracing::info!(shard = %shard, "the initial load is done: there is nothing to split, this run follows the slot");
        }
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
        cache,
        run: opts.run.clone(),
    };
    let mut apply = Apply::new(p, task, store, reloader, prepared.types, stream, start_lsn).await?;
    // Partition changes made while godwit was not running, then what is queued.
    let ended = match apply.check_partitions().await {
        Ok(()) => apply.reload_requested().await,
        Err(e) => Err(e),
    };
    let ended = match ended {
        Ok(()) => apply.follow(stop_at).await,
        Err(e) => Err(e),
    };
    // A batch run (`--once`) stopped before its stop point leaves work for the next run.
    if let (Some(_), Ok(false)) = (stop_at, &ended) {
        summary.interrupted = Some(opts.run.reason().unwrap_or_else(|| "stopped".into()));
    }
    let ended = ended.map(|_| ());
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
    summary.tables_in_error = in_error(&task.record);
    // Tables a stopped run did not reload yet are work left too.
    if summary.interrupted.is_none()
        && opts.run.is_stopping()
        && !task
            .state
            .reload_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    {
        summary.interrupted = opts.run.reason();
    }
    Ok((summary, started.elapsed().as_secs_f64()))
}

fn in_error(record: &TaskRecord) -> usize {
    record
        .tables
        .values()
        .filter(|t| t.state == TableState::Error)
        .count()
}

/// The end of the last WAL record before insert position `lsn`: right after a page boundary the
/// insert position counts the next page's header (24 bytes; 40 at a segment start), which no
/// record fills — the stream would never reach it.
pub(super) fn record_end(lsn: Lsn) -> Lsn {
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
pub(super) async fn record_slot_intent(
    task: &mut Task<'_>,
    cdc: &mut CdcRecord,
) -> Result<(), Error> {
    cdc.slot_created = true;
    cdc.consistent_point = None;
    task.record.cdc = Some(cdc.clone());
    task.save().await
}

/// A cache projection whose key or member template reads a column outside the replica
/// identity cannot find its old key when a row is deleted (a DELETE carries only the identity
/// columns), unless the table's identity is FULL: refused, with the fix.
fn cache_identity_problem(
    p: &Pipeline,
    plans: &[TablePlan],
    identities: &HashMap<u32, Vec<identity::Identity>>,
) -> Option<crate::config::ConfigError> {
    let cache = p.cache.as_ref()?;
    for (i, projection) in cache.projections.iter().enumerate() {
        let Some((schema, name)) = projection.table.exact_name() else {
            continue;
        };
        let Some(plan) = plans.iter().find(|pl| {
            pl.table.name.schema == schema
                && pl.table.name.name == name
                && pl.settings.cdc == CdcMode::All
        }) else {
            continue;
        };
        let ids = identities
            .get(&plan.table.oid)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if ids.iter().all(|id| id.kind == b'f') && !ids.is_empty() {
            continue;
        }
        let key_columns: Vec<&str> = ids
            .first()
            .map(|id| id.columns.iter().map(String::as_str).collect())
            .unwrap_or_default();
        for (what, template) in [
            ("key", Some(&projection.key)),
            ("member", projection.member.as_ref()),
        ] {
            let Some(template) = template else { continue };
            let parts = crate::config::parse_template(template).unwrap_or_default();
            let outside: Vec<&str> = crate::config::template_columns(&parts)
                .filter(|c| !key_columns.contains(c))
                .collect();
            if let Some(column) = outside.first() {
                return Some(
                    p.error_at(
                        &format!("cache.projections[{i}].{what}"),
                        format!(
                            "the {what} template \"{template}\" reads column \"{column}\" of {}, which a DELETE \
                             does not carry under its replica identity ({}): the old {what} could not be removed",
                            plan.table.name,
                            ids.first().map(|id| id.describe()).unwrap_or_else(|| "nothing".into())
                        ),
                    )
                    .with_hint(format!(
                        "run ALTER TABLE {} REPLICA IDENTITY FULL; or template only the key columns ({})",
                        plan.table.name.quoted(),
                        key_columns.join(", ")
                    )),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_point_is_a_record_end() {
        assert_eq!(record_end(Lsn(0x1_0000_2018)), Lsn(0x1_0000_2000));
        assert_eq!(record_end(Lsn(0x1_0100_0028)), Lsn(0x1_0100_0000));
        assert_eq!(record_end(Lsn(0x1_0000_2019)), Lsn(0x1_0000_2019));
        assert_eq!(record_end(Lsn(0x1_0000_2028)), Lsn(0x1_0000_2028));
    }
}
