//! The apply loop: follows the stream, decodes pgoutput into per-table Arrow rows, reconnects
//! after a blip, and hands committed changes on to the flush.

use super::*;

impl<'a, 'b> Apply<'a, 'b> {
    pub(super) async fn new(
        p: &'a Pipeline,
        task: &'a mut Task<'b>,
        store: Arc<dyn ObjectStore>,
        reloader: Reloader,
        types: Types,
        stream: Stream,
        start: Lsn,
    ) -> Result<Apply<'a, 'b>, Error> {
        let plans = &reloader.plans;
        let mut tables = Vec::new();
        let mut by_oid = HashMap::new();
        for plan in plans {
            let key = plan.key();
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
                mark: None,
                held: Vec::new(),
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
        let sinks = sinks(p, &store, reloader.cache.as_ref());
        let live = LiveLine::new(reloader.progress, "CDC");
        let mut apply = Apply {
            p,
            task,
            store,
            sinks,
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
            spilled_upto: 0,
            memory: budget::global().take(0),
            buffered_since: None,
            lag_alerted: false,
            reloader,
            last_request_check: Instant::now(),
            catalog: None,
            reload_failures: HashMap::new(),
            live,
            last_commit: None,
            probed_at: Instant::now(),
            reply_time: None,
        };
        apply.recover_marks().await.map_err(Error::into_fatal)?;
        Ok(apply)
    }

    /// What the live line shows: the first sink's counts (the files sink's when there is one).
    pub(super) fn stats(&self) -> CdcStats {
        let written = self.sinks.first().map(|s| s.written()).unwrap_or_default();
        CdcStats {
            changes: written.rows,
            buffered: self.buffered_rows as u64,
            files: written.objects,
            lag_seconds: self.last_commit.map(|(_, lag)| lag),
            last_commit: self.last_commit.map(|(time, _)| time),
        }
    }

    /// Follows the stream until `stop_at` (with `--once`), or until the run context stops
    /// (a signal, `--max-duration`, an invocation's deadline). Returns whether `stop_at` was
    /// reached (false: stopped before, or no stop point).
    pub(super) async fn follow(&mut self, stop_at: Option<Lsn>) -> Result<bool, Error> {
        let run = self.reloader.run.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut failures: u64 = 0;
        tracing::info!(start = %self.position, stop_at = stop_at.map(tracing::field::display), "CDC started");
        metrics::progress(metrics::Activity::Cdc);
        loop {
            if let Some(stop) = stop_at
                && self.txn.is_none()
                && self.position >= stop
            {
                tracing::info!(position = %self.position, "reached the WAL position of the start (--once)");
                return Ok(true);
            }
            if let Some(why) = run.reason() {
                tracing::info!("{why}: flushing and stopping");
                return Ok(false);
            }
            let outcome = match self.stream.as_mut() {
                None => Err(Error::recoverable(
                    "the last attempt to reopen the stream failed",
                )),
                Some(stream) => tokio::select! {
                    ev = stream.next() => match ev {
                        Ok(Some(ev)) => {
                            metrics::progress(metrics::Activity::Cdc);
                            self.on_event(ev).await.map(|()| failures = 0)
                        }
                        Ok(None) => Err(Error::recoverable("the replication stream ended")),
                        Err(e) => Err(Failure::because(Kind::Recoverable, "the replication stream broke", e).into()),
                    },
                    _ = tick.tick() => self.on_tick().await,
                    why = run.stopping() => {
                        tracing::info!("{why}: flushing and stopping");
                        return Ok(false);
                    }
                },
            };
            let why = match outcome {
                Ok(()) => continue,
                Err(e) if e.is_recoverable() => e.to_string(),
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
            if self.reconnect(&why, failures).await? {
                return Ok(false);
            }
        }
    }

    /// After the stream or a write broke: forget what is not checkpointed (the slot sends it
    /// again), move the marks past files completed since the checkpoint, wait (5 s doubling up
    /// to 30 min, or until a stop) and open a new session from the slot's confirmed position.
    /// Returns true when a stop came during the wait.
    pub(super) async fn reconnect(&mut self, why: &str, attempt: u64) -> Result<bool, Error> {
        let wait = backoff(attempt);
        tracing::warn!(
            attempt,
            wait_s = wait.as_secs(),
            error_kind = "recoverable",
            "CDC broke ({why}); starting again from the slot"
        );
        self.stream = None;
        for t in &mut self.tables {
            t.buffer = TableBuffer::default();
            t.counts = Counts::default();
        }
        for sink in &mut self.sinks {
            sink.reset();
        }
        self.rels.clear();
        self.txn = None;
        self.last_commit_end = None;
        self.buffered_rows = 0;
        self.buffered_bytes = 0;
        self.spilled_upto = 0;
        self.memory.set(0);
        self.buffered_since = None;
        self.position = self.confirmed;
        self.live.note(
            &self.stats(),
            &format!("reconnecting in {}s (attempt {attempt})", wait.as_secs()),
        );
        let fence = self.task.state.fence();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            why = self.reloader.run.stopping() => {
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
        // A write may have completed what the checkpoint does not know.
        self.recover_marks().await?;
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

    pub(super) async fn on_tick(&mut self) -> Result<(), Error> {
        // A run that lost its lease (paused past it, or taken over) stops at once.
        self.task.fenced()?;
        self.live.update(&self.stats());
        self.observe_source().await;
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

    /// With metrics: every few seconds, the slot's retained WAL, how far the source's WAL is
    /// ahead of what CDC processed, and whether the walsender still takes the status updates
    /// the session sends each second. A walsender that took one since the last look counts
    /// as progress: an idle stream sends nothing, a stopped or cut-off one stops taking them.
    pub(super) async fn observe_source(&mut self) {
        if !metrics::enabled() {
            return;
        }
        let every = (self.p.metrics.health_threshold / 4)
            .clamp(Duration::from_millis(500), Duration::from_secs(5));
        if self.probed_at.elapsed() < every {
            return;
        }
        self.probed_at = Instant::now();
        if self.catalog.is_none() {
            match tokio::time::timeout(every, self.reloader.source.connect()).await {
                Ok(Ok(c)) => self.catalog = Some(c),
                Ok(Err(e)) => {
                    tracing::debug!("metrics: connecting to read the slot: {e}");
                    return;
                }
                Err(_) => return,
            }
        }
        let Some(client) = self.catalog.as_ref() else {
            return;
        };
        let read = slot::stream_health(client, &self.p.source.slot);
        match tokio::time::timeout(every.max(Duration::from_secs(2)), read).await {
            Ok(Ok(Some(h))) => {
                let lag = h.current_lsn.0.saturating_sub(self.position.0);
                metrics::set_slot(lag, h.retained_bytes.unwrap_or(0).max(0) as u64);
                if lag == 0 {
                    metrics::set_cdc_lag_seconds(0.0);
                }
                if h.reply_time.is_some()
                    && self.reply_time.is_some()
                    && h.reply_time != self.reply_time
                {
                    metrics::progress(metrics::Activity::Cdc);
                }
                self.reply_time = h.reply_time;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!("metrics: reading the slot: {e}");
                self.catalog = None;
            }
            Err(_) => tracing::debug!("metrics: reading the slot took too long"),
        }
    }

    pub(super) async fn on_event(&mut self, ev: StreamEvent) -> Result<(), Error> {
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
                if budget::global().over() && self.buffered_bytes > self.spilled_upto {
                    self.relieve().await?;
                }
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
                } else if self.sinks.iter().any(|s| s.immediate()) {
                    // Write-through: the cache gets each transaction as it commits; only the
                    // slot's confirmation waits for the flush.
                    self.hand_off().await?;
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

    /// Over the memory budget: everything buffered goes to the sinks, and what they hold in
    /// memory moves to spill files (written out, in order, by the next flush). When spilling
    /// fails (a full or unwritable `spill_dir`), the buffered changes are written out early
    /// instead, in files smaller than `cdc_min_file_size`.
    pub(super) async fn relieve(&mut self) -> Result<(), Error> {
        self.hand_off().await?;
        let mut moved = 0;
        let mut failed = None;
        for sink in &mut self.sinks {
            match sink.spill() {
                Ok(n) => moved += n,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let dir = crate::batch::spill::folder(&self.p.limits.spill_dir, &self.p.name);
        match failed {
            None => {
                self.spilled_upto = self.buffered_bytes;
                self.memory.set(0);
                budget::global().pressed(&format!(
                    "buffered CDC changes spilled to {}",
                    dir.display()
                ));
                tracing::info!(
                    buffered_bytes = self.buffered_bytes,
                    moved_bytes = moved,
                    spilled_bytes = budget::global().spilled(),
                    spill_dir = %dir.display(),
                    "memory budget exceeded: buffered CDC changes spilled"
                );
                Ok(())
            }
            Some(e) => {
                tracing::warn!(
                    error_kind = "spill",
                    "{e}; writing the buffered changes out early instead"
                );
                budget::global().pressed(&format!(
                    "spilling failed ({e}): buffered changes written out early"
                ));
                self.flush().await
            }
        }
    }

    pub(super) fn watch_lag(&mut self, commit_time: i64) {
        let lag = (chrono::Utc::now().timestamp_micros() - commit_time) as f64 / 1e6;
        crate::notify::pulse::lag(lag);
        self.last_commit = Some((commit_time, lag));
        metrics::set_cdc_lag_seconds(lag);
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

    pub(super) fn on_message(&mut self, msg: Message) -> Result<(), Error> {
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

    pub(super) fn on_relation(&mut self, r: &Relation) -> Result<(), Error> {
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
                .with_key(&t.primary_key)
                .with_before_images(cache_templates_other_columns(
                    self.p,
                    &t.key,
                    &t.primary_key,
                )),
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
    pub(super) fn change(
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
        let cut = batch_cut(self.p);
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
            .push(&layout, &folder, &row, cut)
            .map_err(|e| Error::Runtime(format!("building the batch of {}: {e}", t.key)))?;
        if pushed.is_ok() {
            // A row that failed left no trace: it is not buffered and not counted.
            match op {
                Op::Insert => t.counts.inserts += 1,
                Op::Update => t.counts.updates += 1,
                Op::Delete => t.counts.deletes += 1,
                Op::Truncate => t.counts.truncates += 1,
                Op::Before => {}
            }
            self.buffered_rows += 1;
            crate::notify::pulse::changes(1);
            let added = t.buffer.bytes - before;
            self.buffered_bytes += added;
            self.memory
                .set((self.buffered_bytes - self.spilled_upto) as u64);
            if added as u64 > budget::global().limit() {
                budget::global().pressed(&format!(
                    "one change of {added} bytes in {} is larger than the whole budget: it is \
                     processed alone",
                    t.key
                ));
            }
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
                    let remedy = format!(
                        "fix the value in the source, then `godwit reload PIPELINE --table {key}`"
                    );
                    tracing::error!(table = %key, error_kind = "data", policy = "suspend-table", remedy = %remedy, "{what}");
                    if let Some(r) = self.task.record.tables.get_mut(&key) {
                        r.state = TableState::Error;
                        r.last_error = Some(what.clone());
                        r.remedy = Some(remedy.clone());
                    }
                    self.task.notifier.emit(EventKind::TableError {
                        table: key,
                        error: what,
                        policy: "suspend-table".into(),
                        remedy,
                    });
                }
                DataErrorPolicy::StopTask => {
                    return Err(Failure::new(Kind::Data, what)
                        .remedy("fix the value in the source, then run the pipeline again")
                        .into());
                }
            }
        }
        Ok(())
    }
}

/// Whether a cache projection of `table` builds a key, member or channel from columns outside
/// its primary key: an update of such a column moves the row to another key or member, found
/// from the update's before image (REPLICA IDENTITY FULL, which start-up requires then).
fn cache_templates_other_columns(p: &Pipeline, table: &str, primary_key: &[String]) -> bool {
    let Some(cache) = &p.cache else {
        return false;
    };
    cache
        .projections
        .iter()
        .filter(|c| {
            c.table
                .exact_name()
                .is_some_and(|(schema, name)| format!("{schema}.{name}") == table)
        })
        .flat_map(|c| [Some(&c.key), c.member.as_ref(), c.channel.as_ref()])
        .flatten()
        .any(|t| {
            let parts = crate::config::parse_template(t).unwrap_or_default();
            crate::config::template_columns(&parts).any(|c| !primary_key.iter().any(|k| k == c))
        })
}

/// Where CDC batches are cut: `batch_rows` rows, or `batch_bytes` capped at a sixteenth of the
/// memory budget.
fn batch_cut(p: &Pipeline) -> (usize, usize) {
    let bytes = p.load.batch_bytes.min(p.limits.memory / 16) as usize;
    (p.load.batch_rows, bytes)
}
