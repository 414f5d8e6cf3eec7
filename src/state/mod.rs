//! Task and table states with their statistics (SPEC §7), stored beside the target under
//! `_godwit/state`, and the lease that keeps two runs of one pipeline apart.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sink::files::parquet::WrittenFile;

/// A table's state, in DMS words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableState {
    #[serde(rename = "Before load")]
    BeforeLoad,
    #[serde(rename = "Full load")]
    FullLoad,
    #[serde(rename = "Table completed")]
    Completed,
    #[serde(rename = "Table error")]
    Error,
    #[serde(rename = "Table is being reloaded")]
    Reloading,
    #[serde(rename = "CDC")]
    Cdc,
}

impl TableState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TableState::BeforeLoad => "Before load",
            TableState::FullLoad => "Full load",
            TableState::Completed => "Table completed",
            TableState::Error => "Table error",
            TableState::Reloading => "Table is being reloaded",
            TableState::Cdc => "CDC",
        }
    }
}

/// Statistics and state of one table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRecord {
    pub state: TableState,
    pub estimated_rows: u64,
    pub full_load_rows: u64,
    pub full_load_bytes: u64,
    pub files: Vec<WrittenFile>,
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
    pub data_errors: u64,
    pub last_lsn: Option<String>,
    pub last_error: Option<String>,
    pub remedy: Option<String>,
    pub load_started_at: Option<String>,
    pub load_completed_at: Option<String>,
    pub load_seconds: Option<f64>,
}

impl TableRecord {
    pub fn new(estimated_rows: u64) -> TableRecord {
        TableRecord {
            state: TableState::BeforeLoad,
            estimated_rows,
            full_load_rows: 0,
            full_load_bytes: 0,
            files: Vec::new(),
            inserts: 0,
            updates: 0,
            deletes: 0,
            data_errors: 0,
            last_lsn: None,
            last_error: None,
            remedy: None,
            load_started_at: None,
            load_completed_at: None,
            load_seconds: None,
        }
    }
}

/// The task as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub pipeline: String,
    pub mode: String,
    /// `running`, `stopped` or `failed`.
    pub state: String,
    pub started_at: String,
    pub stopped_at: Option<String>,
    pub snapshot: Option<String>,
    pub last_error: Option<String>,
    /// Keyed by `schema.table`.
    pub tables: BTreeMap<String, TableRecord>,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source} (move it away to start over)")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "pipeline {pipeline} is already running: the lease {path} is held by {holder}; wait for that run to end or stop it"
    )]
    LeaseHeld {
        pipeline: String,
        path: String,
        holder: String,
    },
}

/// A local state folder.
pub struct StateStore {
    dir: PathBuf,
}

/// Held while a run owns the pipeline; released when dropped (or when the process dies).
pub struct Lease {
    _file: File,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> StateStore {
        StateStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.dir.display().to_string(),
            source,
        }
    }

    /// Takes the pipeline's lease, or says who holds it.
    pub fn acquire_lease(&self, pipeline: &str) -> Result<Lease, StateError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let path = self.dir.join("lease");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| self.io(e))?;
        match file.try_lock() {
            Ok(()) => {
                let holder = serde_json::json!({
                    "host": gethostname::gethostname().to_string_lossy(),
                    "pid": std::process::id(),
                    "since": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
                file.set_len(0).map_err(|e| self.io(e))?;
                file.rewind().map_err(|e| self.io(e))?;
                writeln!(file, "{holder}").map_err(|e| self.io(e))?;
                file.flush().map_err(|e| self.io(e))?;
                Ok(Lease { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Err(StateError::LeaseHeld {
                    pipeline: pipeline.to_string(),
                    path: path.display().to_string(),
                    holder: describe_holder(&text),
                })
            }
            Err(fs::TryLockError::Error(e)) => Err(self.io(e)),
        }
    }

    /// Who holds the lease right now, if anyone (without taking it or creating anything).
    pub fn lease_holder(&self) -> Option<String> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join("lease"))
            .ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(_) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                Some(describe_holder(&text))
            }
        }
    }

    /// The stored task record, if any run wrote one.
    pub fn load(&self) -> Result<Option<TaskRecord>, StateError> {
        let path = self.dir.join("task.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| StateError::Corrupt {
                        path: path.display().to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Replaces the stored record atomically (write, fsync, rename).
    pub fn save(&self, record: &TaskRecord) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let path = self.dir.join("task.json");
        let temp = self.dir.join(format!(".task.json.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        let mut f = File::create(&temp).map_err(|e| self.io(e))?;
        f.write_all(&bytes).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        fs::rename(&temp, &path).map_err(|e| self.io(e))
    }
}

/// "pid N on HOST since TIME" from the lease file's JSON.
fn describe_holder(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text.trim())
        .map(|v| {
            format!(
                "pid {} on {} since {}",
                v["pid"],
                v["host"].as_str().unwrap_or("?"),
                v["since"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_else(|_| "another process".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let lease = store.acquire_lease("p").unwrap();
        let err = store.acquire_lease("p").err().unwrap().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(lease);
        store.acquire_lease("p").unwrap();
    }
}
