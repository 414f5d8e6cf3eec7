//! Events (SPEC §6): one typed model whose every emission is written to the events file,
//! logged with structured fields and, with `[notify] sns_topic_arn`, published to SNS in the
//! background (`sns.rs`), so logs and notifications never disagree.

pub mod log_format;
pub mod metrics;
pub mod pulse;
pub mod sns;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

/// Severity of an event (also an SNS message attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Everything godwit tells the outside world about.
#[derive(Debug, Clone)]
pub enum EventKind {
    TaskStarted {
        mode: String,
        tables: usize,
    },
    TaskStopped {
        seconds: f64,
        tables_in_error: usize,
    },
    TaskFailed {
        error: String,
    },
    FullLoadStarted {
        tables: usize,
        snapshot: String,
    },
    TableLoaded {
        table: String,
        rows: u64,
        bytes: u64,
        files: usize,
        seconds: f64,
        data_errors: u64,
    },
    FullLoadCompleted {
        tables: usize,
        rows: u64,
        seconds: f64,
    },
    TableError {
        table: String,
        error: String,
        policy: String,
        remedy: String,
    },
    /// A TRUNCATE from the stream (`lsn`), or rows of a partition that went without a change
    /// record (`partition`).
    TableTruncated {
        table: String,
        lsn: Option<String>,
        partition: Option<PartitionChange>,
    },
    TableReloadRequested {
        table: String,
    },
    CdcLag {
        seconds: f64,
        threshold_seconds: f64,
    },
    SlotUnhealthy {
        slot: String,
        reason: String,
        remedy: String,
    },
    /// The memory budget was exceeded; `action` says what godwit did about it.
    MemoryPressure {
        limit_bytes: u64,
        buffered_bytes: u64,
        spilled_bytes: u64,
        action: String,
    },
    /// Back under three quarters of the budget after `seconds` of pressure.
    MemoryRecovered {
        limit_bytes: u64,
        buffered_bytes: u64,
        spilled_bytes: u64,
        seconds: f64,
    },
}

/// A partition whose rows changed without a change record in the stream: PostgreSQL does not
/// publish a leaf's TRUNCATE under `publish_via_partition_root`, nor DETACH, ATTACH or DROP.
#[derive(Debug, Clone)]
pub struct PartitionChange {
    /// `schema.table` of the partition (`oid N` when it was dropped).
    pub partition: String,
    /// `truncated`, `detached`, `attached`, `dropped`, `detached and attached again`.
    pub change: String,
    /// What godwit does about it.
    pub action: String,
}

/// The JSON object of SPEC §6.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub event_type: &'static str,
    pub severity: Severity,
    pub pipeline: String,
    pub table: Option<String>,
    pub time: String,
    pub message: String,
    pub dms_event_id: Option<&'static str>,
    pub details: Value,
}

impl EventKind {
    /// Builds the event as published.
    pub fn to_event(&self, pipeline: &str) -> Event {
        let (event_type, severity, table, message, dms, details) = match self {
            EventKind::TaskStarted { mode, tables } => (
                "task.started",
                Severity::Info,
                None,
                format!("task started ({mode}, {tables} tables)"),
                Some("DMS-EVENT-0069"),
                json!({"mode": mode, "tables": tables}),
            ),
            EventKind::TaskStopped {
                seconds,
                tables_in_error,
            } => (
                "task.stopped",
                if *tables_in_error > 0 {
                    Severity::Warning
                } else {
                    Severity::Info
                },
                None,
                format!("task stopped after {seconds:.1}s, {tables_in_error} tables in error"),
                Some("DMS-EVENT-0079"),
                json!({"seconds": seconds, "tables_in_error": tables_in_error}),
            ),
            EventKind::TaskFailed { error } => (
                "task.failed",
                Severity::Error,
                None,
                format!("task failed: {error}"),
                Some("DMS-EVENT-0078"),
                json!({"error": error}),
            ),
            EventKind::FullLoadStarted { tables, snapshot } => (
                "full_load.started",
                Severity::Info,
                None,
                format!("full load of {tables} tables started"),
                None,
                json!({"tables": tables, "snapshot": snapshot}),
            ),
            EventKind::TableLoaded {
                table,
                rows,
                bytes,
                files,
                seconds,
                data_errors,
            } => (
                "table.loaded",
                Severity::Info,
                Some(table.clone()),
                format!(
                    "{table} loaded: {rows} rows, {bytes} bytes in {files} files, {seconds:.1}s"
                ),
                None,
                json!({"rows": rows, "bytes": bytes, "files": files, "seconds": seconds, "data_errors": data_errors}),
            ),
            EventKind::FullLoadCompleted {
                tables,
                rows,
                seconds,
            } => (
                "full_load.completed",
                Severity::Info,
                None,
                format!("full load completed: {tables} tables, {rows} rows, {seconds:.1}s"),
                None,
                json!({"tables": tables, "rows": rows, "seconds": seconds}),
            ),
            EventKind::TableError {
                table,
                error,
                policy,
                remedy,
            } => (
                "table.error",
                Severity::Error,
                Some(table.clone()),
                format!("{table}: {error} ({policy}); {remedy}"),
                None,
                json!({"error": error, "policy": policy, "remedy": remedy}),
            ),
            EventKind::TableTruncated {
                table,
                lsn,
                partition,
            } => (
                "table.truncated",
                Severity::Warning,
                Some(table.clone()),
                match (partition, lsn) {
                    (Some(pc), _) => format!(
                        "{table}: partition {} was {}; {}",
                        pc.partition, pc.change, pc.action
                    ),
                    (None, Some(lsn)) => format!("{table} was truncated at {lsn}"),
                    (None, None) => format!("{table} was truncated"),
                },
                None,
                match partition {
                    Some(pc) => {
                        json!({"lsn": lsn, "partition": pc.partition, "change": pc.change, "action": pc.action})
                    }
                    None => json!({"lsn": lsn}),
                },
            ),
            EventKind::TableReloadRequested { table } => (
                "table.reload_requested",
                Severity::Info,
                Some(table.clone()),
                format!("a fresh full load of {table} was requested"),
                Some("DMS-EVENT-0081"),
                json!({}),
            ),
            EventKind::MemoryPressure {
                limit_bytes,
                buffered_bytes,
                spilled_bytes,
                action,
            } => (
                "memory.pressure",
                Severity::Warning,
                None,
                format!(
                    "memory budget of {limit_bytes} bytes exceeded ({buffered_bytes} buffered, \
                     {spilled_bytes} spilled): {action}"
                ),
                Some("DMS-EVENT-0091"),
                json!({"limit_bytes": limit_bytes, "buffered_bytes": buffered_bytes,
                       "spilled_bytes": spilled_bytes, "action": action}),
            ),
            EventKind::MemoryRecovered {
                limit_bytes,
                buffered_bytes,
                spilled_bytes,
                seconds,
            } => (
                "memory.recovered",
                Severity::Info,
                None,
                format!(
                    "back under the memory budget of {limit_bytes} bytes after {seconds:.1}s \
                     ({buffered_bytes} buffered, {spilled_bytes} spilled)"
                ),
                Some("DMS-EVENT-0093"),
                json!({"limit_bytes": limit_bytes, "buffered_bytes": buffered_bytes,
                       "spilled_bytes": spilled_bytes, "seconds": seconds}),
            ),
            EventKind::CdcLag {
                seconds,
                threshold_seconds,
            } => (
                "cdc.lag",
                Severity::Warning,
                None,
                format!(
                    "CDC is {seconds:.0}s behind the source (threshold {threshold_seconds:.0}s)"
                ),
                None,
                json!({"seconds": seconds, "threshold_seconds": threshold_seconds}),
            ),
            EventKind::SlotUnhealthy {
                slot,
                reason,
                remedy,
            } => (
                "slot.unhealthy",
                Severity::Error,
                None,
                format!("replication slot {slot}: {reason}; {remedy}"),
                None,
                json!({"slot": slot, "reason": reason, "remedy": remedy}),
            ),
        };
        Event {
            event_type,
            severity,
            pipeline: pipeline.to_string(),
            table,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            message,
            dms_event_id: dms,
            details,
        }
    }
}

/// What SNS did not take, as the task record keeps it (`None`: nothing is missing).
pub fn undelivered(left: Option<sns::Undelivered>) -> Option<crate::state::UndeliveredEvents> {
    let left = left.filter(|l| l.count > 0)?;
    Some(crate::state::UndeliveredEvents {
        count: left.count,
        events: left.events,
        last_error: left.last_error,
    })
}

/// Emits events: one JSON line in the events file, one structured log line, and an SNS message
/// when a topic is set.
pub struct Notifier {
    pipeline: String,
    file: Mutex<Option<File>>,
    path: PathBuf,
    sns: Mutex<Option<sns::SnsPublisher>>,
}

impl Notifier {
    /// Opens (appends to) the events file, creating its folder.
    pub fn open(pipeline: &str, path: &Path) -> std::io::Result<Notifier> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Notifier {
            pipeline: pipeline.to_string(),
            file: Mutex::new(Some(file)),
            path: path.to_path_buf(),
            sns: Mutex::new(None),
        })
    }

    /// Publishes every later event to SNS too.
    pub fn publish_to(&self, publisher: sns::SnsPublisher) {
        if let Ok(mut guard) = self.sns.lock() {
            *guard = Some(publisher);
        }
    }

    /// At the end of a run: gives SNS up to `within` to take what is queued, and says (log)
    /// what it could not deliver. `None` without a topic.
    pub async fn close(&self, within: std::time::Duration) -> Option<sns::Undelivered> {
        let publisher = self.sns.lock().ok()?.take()?;
        let left = publisher.finish(within).await;
        if left.count > 0 {
            tracing::error!(
                undelivered = left.count,
                events = %left.events.join(", "),
                error = left.last_error.as_deref().unwrap_or(""),
                "{} events could not be delivered to SNS before the run ended (they are in the events file)",
                left.count
            );
        }
        Some(left)
    }

    /// Emits one event. Never fails: a write problem is logged, the data path goes on.
    pub fn emit(&self, kind: EventKind) -> Event {
        let event = kind.to_event(&self.pipeline);
        metrics::on_event(&kind, event.event_type, event.severity.as_str());
        let line = serde_json::to_string(&event).unwrap_or_default();
        // A JSON object: the JSON log line keeps it one (see `log_format`).
        let details = match &event.details {
            Value::Object(m) if !m.is_empty() => serde_json::to_string(&event.details).ok(),
            _ => None,
        };
        match event.severity {
            Severity::Error => tracing::error!(
                event_type = event.event_type,
                table = event.table.as_deref(),
                details = details.as_deref(),
                "{}",
                event.message
            ),
            Severity::Warning => tracing::warn!(
                event_type = event.event_type,
                table = event.table.as_deref(),
                details = details.as_deref(),
                "{}",
                event.message
            ),
            Severity::Info => tracing::info!(
                event_type = event.event_type,
                table = event.table.as_deref(),
                details = details.as_deref(),
                "{}",
                event.message
            ),
        }
        if let Ok(guard) = self.sns.lock()
            && let Some(publisher) = guard.as_ref()
        {
            publisher.publish(&event);
        }
        if let Ok(mut guard) = self.file.lock()
            && let Some(f) = guard.as_mut()
            && let Err(e) = writeln!(f, "{line}").and_then(|_| f.flush())
        {
            tracing::warn!(path = %self.path.display(), "cannot write the events file: {e}");
        }
        event
    }
}
