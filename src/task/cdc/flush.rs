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
    /// Writes every buffered row, checkpoints the marks, then confirms to the slot the last
    /// commit whose rows are all written.
    pub(super) async fn flush(&mut self) -> Result<(), Error> {
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
                let mut out: Vec<(usize, Mark, WrittenFile)> = Vec::new();
                for (ti, key, g) in work {
                    let f = cdc_files::write_file(
                        store.as_ref(),
                        &key,
                        g.schema(),
                        &format,
                        &g.batches,
                    )?;
                    out.push((ti, g.last, f));
                }
                Ok::<_, crate::sink::files::writer::WriteError>(out)
            })
            .await
            .map_err(|e| Error::Runtime(format!("the CDC file writer crashed: {e}")))?
            .map_err(|e| Error::Recoverable(e.to_string()))?;
            self.files_written += written.len() as u64;
            for (ti, last, _) in &written {
                let t = &mut self.tables[*ti];
                t.mark = t.mark.max(Some(*last));
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
        tracing::info!(files = self.files_written, confirmed = %self.confirmed, "CDC stopped");
        flushed
    }
}

/// The table's high-water mark: the checkpoint's, moved past the rows of CDC objects that a
/// flush completed after it (a crash between an object and its checkpoint). Only the objects
/// of the recorded intent are read back; without one (a record of an older godwit), every CDC
/// object of the table's folder at or past the mark.
pub(super) async fn recover_mark(
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
