//! `godwit status PIPELINE`: task state and per-table statistics, as a table or `--json`.
//! Its `load files` column counts the full-load files the state recorded (LOAD and
//! SEGMENT…_LOAD objects); CDC files are not recorded one by one: `godwit inspect` lists
//! both kinds from the target.

use crate::error::Error;
use crate::pg::replication::slot;
use crate::task::state_store;

/// The slot as the source sees it now: WAL it retains and its health (best effort: the
/// state is shown even when the source cannot be reached).
async fn live_slot(p: &crate::config::Pipeline, name: &str) -> String {
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        crate::task::connect_source(p),
    );
    let Ok(Ok((_, client))) = connect.await else {
        return "; source not reachable now".into();
    };
    let keep = slot::max_slot_wal_keep_size(&client)
        .await
        .unwrap_or_default();
    let warn = if keep == "-1" {
        " — warning: max_slot_wal_keep_size = -1, WAL is kept without limit"
    } else {
        ""
    };
    match slot::slot_info(&client, name).await {
        Ok(Some(i)) => format!(
            "; retains {} of WAL, wal_status {}{}{warn}",
            super::check::human_bytes(i.retained_bytes.unwrap_or(0)),
            i.wal_status.as_deref().unwrap_or("?"),
            if i.active { ", streaming now" } else { "" }
        ),
        Ok(None) => "; the slot does NOT exist on the source".into(),
        Err(_) => String::new(),
    }
}

pub async fn execute(path: &str, json: bool) -> Result<i32, Error> {
    let p = super::load_pipeline(path).await?;
    let store = state_store(&p).await?;
    let record = store
        .load()
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let Some(record) = record else {
        if json {
            outln!(
                "{}",
                serde_json::json!({"pipeline": p.name, "state": "never run", "tables": {}})
            )?;
        } else {
            outln!(
                "pipeline {}: never run (no state in {})",
                p.name,
                store.describe()
            )?;
        }
        return Ok(0);
    };
    let shards = crate::task::shard::views(&p, &record).await;
    if json {
        let mut value = serde_json::to_value(&record).unwrap_or_default();
        if !shards.is_empty()
            && let Some(o) = value.as_object_mut()
        {
            o.insert(
                "shard_status".into(),
                serde_json::to_value(&shards).unwrap_or_default(),
            );
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )?;
        return Ok(0);
    }
    outln!(
        "pipeline {} ({}): {} — started {}{}",
        record.pipeline,
        record.mode,
        record.state,
        record.started_at,
        record
            .stopped_at
            .as_deref()
            .map(|s| format!(", stopped {s}"))
            .unwrap_or_default()
    )?;
    if let Some(e) = &record.last_error {
        outln!("last error: {e}")?;
    }
    if let Some(u) = &record.events_undelivered {
        outln!(
            "events not delivered to SNS by the end of the run: {} ({}){}; they are in the events file",
            u.count,
            u.events.join(", "),
            u.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        )?;
    }
    if let Some(cdc) = &record.cdc {
        outln!(
            "slot {} (publications {}): confirmed {}{}",
            cdc.slot,
            cdc.publications.join(", "),
            cdc.confirmed_lsn.as_deref().unwrap_or("-"),
            live_slot(&p, &cdc.slot).await
        )?;
    }
    for v in &shards {
        outln!(
            "shard {}: {} of {} units loaded, {} rows; {}{}",
            v.shard,
            v.completed,
            v.units,
            v.rows,
            v.state,
            v.running
                .as_deref()
                .map(|h| format!("; running: {h}"))
                .unwrap_or_default()
        )?;
    }
    let width = record
        .tables
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    outln!(
        "{:width$}  {:<16} {:>12} {:>14} {:>10} {:>8} {:>8} {:>8} {:>6}  last LSN",
        "table",
        "state",
        "rows",
        "bytes",
        "load files",
        "inserts",
        "updates",
        "deletes",
        "errors",
    )?;
    for (name, t) in &record.tables {
        outln!(
            "{:width$}  {:<16} {:>12} {:>14} {:>10} {:>8} {:>8} {:>8} {:>6}  {}",
            name,
            t.state.as_str(),
            t.full_load_rows,
            t.full_load_bytes,
            t.files.len(),
            t.inserts,
            t.updates,
            t.deletes,
            t.data_errors,
            t.last_lsn.as_deref().unwrap_or("-")
        )?;
        let projected = p.cache.as_ref().is_some_and(|c| {
            c.projections.iter().any(|pr| {
                pr.table
                    .exact_name()
                    .is_some_and(|(s, n)| format!("{s}.{n}") == *name)
            })
        });
        if projected && let Some(m) = t.cache_mark {
            outln!(
                "    cache: every change up to {} applied in Redis",
                crate::pg::lsn::Lsn(m.lsn)
            )?;
        }
        if projected {
            for c in &t.cache_projections {
                outln!(
                    "    cache {}: {} written, {} removed",
                    c.projection,
                    c.written,
                    c.removed
                )?;
            }
        }
        for seg in &t.segments {
            outln!(
                "    segment {}/{} (blocks {}..{}): {}, {} rows, {} load files",
                seg.number,
                t.segments.len(),
                seg.start,
                seg.end.map(|e| e.to_string()).unwrap_or_default(),
                seg.state.as_str(),
                seg.rows,
                seg.files.len()
            )?;
        }
        if let Some(e) = &t.last_error {
            outln!("    error: {e}")?;
            if let Some(r) = &t.remedy {
                outln!("    remedy: {r}")?;
            }
        }
    }
    Ok(0)
}
