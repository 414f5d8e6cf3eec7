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
    /// Each table's mark: the lowest position any sink holds of it (the checkpoint's, moved
    /// past what a sink completed after it). Changes at or below it are skipped.
    pub(super) async fn recover_marks(&mut self) -> Result<(), Error> {
        for t in &mut self.tables {
            let record = self.task.record.tables.get(&t.key);
            let recorded = record.and_then(|r| r.mark);
            let mut lowest: Option<Option<Mark>> = None;
            for sink in &mut self.sinks {
                let m = sink.recover(&t.name, record).await?;
                lowest = Some(lowest.map_or(m, |l| l.min(m)));
            }
            t.mark = lowest.unwrap_or(recorded);
            if t.mark != recorded
                && let Some(m) = t.mark
            {
                tracing::info!(table = %t.key, mark_lsn = %Lsn(m.lsn), mark_seq = m.seq, "high-water mark moved past files written after the last checkpoint");
            }
        }
        Ok(())
    }

    /// Hands every buffered row to the sinks, has them make it durable, checkpoints the marks,
    /// then confirms to the slot the last commit whose rows every sink holds.
    pub(super) async fn flush(&mut self) -> Result<(), Error> {
        if self.buffered_rows > 0 {
            let mut changes = Vec::new();
            for t in &mut self.tables {
                if t.buffer.groups.is_empty() {
                    continue;
                }
                let taken = t.buffer.take().map_err(|e| {
                    Error::Runtime(format!("finishing the batch of {}: {e}", t.key))
                })?;
                changes.extend(taken.into_iter().map(|c| {
                    Arc::new(TableChanges {
                        key: t.key.clone(),
                        name: t.name.clone(),
                        changes: c,
                    })
                }));
            }
            for sink in &mut self.sinks {
                sink.write(&changes).await?;
            }
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
            // A table's mark is what every sink now holds.
            let mut held: HashMap<String, Mark> = HashMap::new();
            for (i, sink) in self.sinks.iter_mut().enumerate() {
                let mut this: HashMap<String, Mark> = HashMap::new();
                for (table, mark) in sink.flush().await? {
                    let m = this.entry(table).or_insert(mark);
                    *m = (*m).max(mark);
                }
                if i == 0 {
                    held = this;
                } else {
                    held.retain(|k, _| this.contains_key(k));
                    for (k, m) in &mut held {
                        *m = (*m).min(this[k]);
                    }
                }
            }
            for t in &mut self.tables {
                if let Some(m) = held.get(&t.key) {
                    t.mark = t.mark.max(Some(*m));
                }
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
