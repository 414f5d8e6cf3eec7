//! Reloads while CDC runs: `godwit reload`, newly selected tables and partition changes load
//! a table from a temporary slot's snapshot and switch it in; CDC goes on after that snapshot.

use super::*;

/// Finishes the reload switches an interrupted run (or a failed write) left half done (see
/// `reload`); returns the tables switched.
pub(super) async fn finish_switches(
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

impl Apply<'_, '_> {
    /// Reloads the tables `godwit reload`, a partition change or a newly selected table asked
    /// for: what is buffered is written first, the stream waits (its keepalives are still
    /// answered), the tables load from a temporary slot's snapshot into the staging area and
    /// are switched in (see `reload`), and their marks move to that slot's consistent point.
    /// A table whose reload failed is in `Table error` and tried again after a back-off.
    pub(super) async fn reload_requested(&mut self) -> Result<(), Error> {
        let requests = self
            .task
            .state
            .reload_requests()
            .await
            .map_err(|e| Failure::because(Kind::Recoverable, "reading reload requests", e))?;
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
        // A stopping run starts no reload: the requests stay for the next run.
        if self.reloader.run.is_stopping() {
            return Ok(());
        }
        self.flush().await?;
        let mut before = HashMap::new();
        for pl in &plans {
            if let Some(r) = self.task.record.tables.get_mut(&pl.key()) {
                before.insert(pl.key(), r.state);
                r.state = TableState::Reloading;
            }
        }
        self.task.save().await?;
        let shared = Shared {
            source: self.reloader.source.clone(),
            store: self.store.clone(),
            state: self.task.state.clone(),
            notifier: self.task.notifier.clone(),
            // The version is the temporary slot's point, known once it exists.
            cache: self.reloader.cache.clone().map(|target| Warm {
                target,
                at: Lsn(0),
                racing: true,
            }),
        };
        let opts = RunOptions {
            progress: self.reloader.progress,
            run: self.reloader.run.clone(),
            shard: None,
        };
        let attempt = reload::load_from_temporary_slot(
            self.p,
            &opts,
            shared,
            &self.reloader.source.endpoint(),
            &self.reloader.publications,
            plans.clone(),
            self.task.record.clone(),
        )
        .await?;
        let (point, fingerprints, interrupted) = match attempt {
            reload::Attempt::Loaded {
                record,
                point,
                fingerprints,
                interrupted,
            } => {
                self.task.record = *record;
                (point, fingerprints, interrupted)
            }
            reload::Attempt::Stopped(why) => {
                tracing::info!("{why}: the reload did not start; the next run reloads the tables");
                for (key, state) in before {
                    if let Some(r) = self.task.record.tables.get_mut(&key) {
                        r.state = state;
                    }
                }
                return self.task.save().await;
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
            if interrupted && r.state == TableState::BeforeLoad {
                // Stopped before it was loaded (a signal, a deadline): no failure; the old
                // load stays, the request too, and the next run reloads the table.
                r.state = before.get(&key).copied().unwrap_or(TableState::Completed);
                tracing::info!(table = %key, "the reload was stopped before it completed; the next run reloads the table");
                continue;
            }
            if r.last_error
                .as_deref()
                .is_some_and(|e| e.contains(full_load::NEEDS_SCHEDULED))
            {
                // Too big for one invocation: trying again would never end (the table error
                // says what to do); no retry.
                let _ = self.task.state.clear_reload(&key).await;
                if let Some(t) = self.tables.iter_mut().find(|t| t.key == key) {
                    t.suspended = true;
                }
                continue;
            }
            if r.state != TableState::Completed {
                // The load said why (state and `table.error`); the old load is untouched.
                let why = r
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the load did not complete".into());
                self.reload_failed(&key, &why, false).await?;
                continue;
            }
            for sink in &mut self.sinks {
                sink.record(&key, r, Some(mark));
            }
            r.last_lsn = None;
            r.fingerprint = fingerprints.get(&key).cloned().unwrap_or_default();
            r.switch_pending = true;
            // Its changes wait for the switch; from then on they count from the new mark.
            if let Some(t) = self.tables.iter_mut().find(|t| t.key == key) {
                t.hold_all(Some(mark));
                t.suspended = true;
            }
            self.reload_failures.remove(&key);
            tracing::info!(table = %key, consistent_point = %point, "reloaded; CDC goes on after the new snapshot");
        }
        self.task.save().await?;
        self.finish_switches().await
    }

    /// Finishes pending reload switches and follows the switched tables from their new marks.
    pub(super) async fn finish_switches(&mut self) -> Result<(), Error> {
        let plans = self.reloader.plans.clone();
        let done = finish_switches(self.task, self.store.as_ref(), &plans)
            .await
            .map_err(Error::recoverable)?;
        for key in done {
            let record = self.task.record.tables.get(&key);
            if let Some(t) = self.tables.iter_mut().find(|t| t.key == key) {
                t.held = self
                    .sinks
                    .iter()
                    .map(|s| record.and_then(|r| s.recorded(r)))
                    .collect();
                t.mark = t.held.iter().copied().min().flatten();
                t.suspended = false;
            }
        }
        Ok(())
    }

    /// A reload of `key` failed (`why`): the table goes to `Table error` (its changes wait for
    /// the reload) and the reload is tried again after a back-off, `[errors]
    /// recoverable_retries` times; `emit` when no `table.error` was emitted for it yet.
    pub(super) async fn reload_failed(
        &mut self,
        key: &str,
        why: &str,
        emit: bool,
    ) -> Result<(), Error> {
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
            return Err(Failure::new(Kind::Table, error).table(key).into());
        }
        Ok(())
    }

    /// Partition changes the stream does not carry (see `partitions`): a followed partitioned
    /// table whose partitions changed since its files were loaded is reloaded (in
    /// full-load-and-cdc), with a `table.truncated` event naming each partition. Tables
    /// already waiting for a reload, or in error, are left to it. A catalog that cannot be read
    /// now is tried again at the next check.
    pub(super) async fn check_partitions(&mut self) -> Result<(), Error> {
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
}
