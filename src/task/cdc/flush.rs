//! Flush and confirm: committed changes written out, the checkpoint saved, and only then the
//! slot confirmed.

use super::*;

impl Apply<'_, '_> {
    /// Confirms `lsn` to the slot — only while this run holds the lease.
    pub(super) fn confirm(&mut self, lsn: Lsn) -> Result<(), Error> {
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
    /// Each table's position in every sink (the checkpoint's, moved past what a sink
    /// completed after it); its mark is the lowest of them. Changes at or below it are skipped.
    pub(super) async fn recover_marks(&mut self) -> Result<(), Error> {
        for t in &mut self.tables {
            let record = self.task.record.tables.get(&t.key);
            t.held.clear();
            for sink in &mut self.sinks {
                let recorded = record.and_then(|r| sink.recorded(r));
                let m = sink.recover(&t.name, record).await?;
                if m != recorded
                    && let Some(m) = m
                {
                    tracing::info!(table = %t.key, sink = sink.name(), mark_lsn = %Lsn(m.lsn), mark_seq = m.seq, "high-water mark moved past files written after the last checkpoint");
                }
                t.held.push(m);
            }
            t.mark = t.held.iter().copied().min().flatten();
        }
        self.reload_lost().await
    }

    /// A sink that lost what it had acknowledged (a cache restarted empty) gets its tables
    /// loaded again, from a snapshot of their own.
    pub(super) async fn reload_lost(&mut self) -> Result<(), Error> {
        let lost: Vec<String> = self.sinks.iter_mut().flat_map(|s| s.lost()).collect();
        for table in lost {
            self.task.state.request_reload(&table).await.map_err(|e| {
                Failure::because(
                    Kind::Recoverable,
                    format_args!("requesting the reload of {table}"),
                    e,
                )
                .table(&table)
            })?;
            self.task
                .notifier
                .emit(EventKind::TableReloadRequested { table });
        }
        Ok(())
    }

    /// Hands the changes built since the last hand-off to every sink (each gets what it does
    /// not hold yet). The files sink keeps them for its next files; the cache writes them now.
    pub(super) async fn hand_off(&mut self) -> Result<(), Error> {
        let mut changes = Vec::new();
        for t in &mut self.tables {
            if t.buffer.groups.is_empty() {
                continue;
            }
            let taken = t
                .buffer
                .take()
                .map_err(|e| Error::Runtime(format!("finishing the batch of {}: {e}", t.key)))?;
            changes.extend(taken.into_iter().map(|c| {
                Arc::new(TableChanges {
                    key: t.key.clone(),
                    name: t.name.clone(),
                    changes: c,
                })
            }));
        }
        if changes.is_empty() {
            return Ok(());
        }
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            let mine: Vec<Arc<TableChanges>> = changes
                .iter()
                .filter_map(|c| {
                    let held = self.tables.iter().find(|t| t.key == c.key)?.held[i];
                    c.after(held)
                })
                .collect();
            sink.write(&mine).await?;
        }
        Ok(())
    }

    /// Hands every buffered row to the sinks, has them make it durable, checkpoints the marks,
    /// then confirms to the slot the last commit whose rows every sink holds.
    pub(super) async fn flush(&mut self) -> Result<(), Error> {
        if self.buffered_rows > 0 {
            self.hand_off().await?;
            // The intent: what this flush is about to complete, saved before the first write,
            // so a start after a crash reads back only those.
            for sink in &mut self.sinks {
                for (table, key) in sink.intents() {
                    if let Some(r) = self.task.record.tables.get_mut(&table) {
                        r.intents.get_or_insert_with(Vec::new).push(key);
                    }
                }
            }
            self.task.save().await?;
            for (i, sink) in self.sinks.iter_mut().enumerate() {
                for (table, mark) in sink.flush().await? {
                    if let Some(t) = self.tables.iter_mut().find(|t| t.key == table) {
                        t.held[i] = t.held[i].max(Some(mark));
                    }
                }
            }
            for t in &mut self.tables {
                t.mark = t.held.iter().copied().min().flatten();
            }
            self.buffered_rows = 0;
            self.buffered_bytes = 0;
            self.spilled_upto = 0;
            self.memory.set(0);
            self.buffered_since = None;
        }
        for t in &mut self.tables {
            let counts = std::mem::take(&mut t.counts);
            if let Some(r) = self.task.record.tables.get_mut(&t.key) {
                r.inserts += counts.inserts;
                r.updates += counts.updates;
                r.deletes += counts.deletes;
                r.data_errors += counts.data_errors;
                metrics::changes_applied(
                    &t.key,
                    [
                        ("insert", counts.inserts),
                        ("update", counts.updates),
                        ("delete", counts.deletes),
                        ("truncate", counts.truncates),
                    ],
                    counts.data_errors,
                );
                for (sink, held) in self.sinks.iter_mut().zip(&t.held) {
                    sink.record(&t.key, r, *held);
                }
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
        self.reload_lost().await
    }

    /// Flushes (after a clean end) and closes the session once the last position reached
    /// the server.
    pub(super) async fn close(&mut self, clean: bool) -> Result<(), Error> {
        let flushed = if clean { self.flush().await } else { Ok(()) };
        if let Some(stream) = self.stream.take()
            && let Err(e) = stream.close(self.confirmed_now).await
        {
            tracing::warn!("closing the replication session: {e}");
        }
        self.live.finish(&self.stats());
        let written = self.stats();
        tracing::info!(files = written.files, changes = written.changes, confirmed = %self.confirmed, "CDC stopped");
        flushed
    }
}
