//! State in a local folder: `task.json` replaced atomically, and the lease as an advisory
//! lock (`flock`) on the `lease` file, which the OS releases if the process dies.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{StateError, TaskRecord, describe_holder, holder_json};

/// A local state folder.
pub struct LocalState {
    dir: PathBuf,
}

/// The local lease: an advisory lock, released when the file is closed (or the process dies).
pub struct LocalLease {
    _file: File,
}

impl LocalState {
    pub fn new(dir: impl Into<PathBuf>) -> LocalState {
        LocalState { dir: dir.into() }
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
    pub fn acquire_lease(&self, pipeline: &str) -> Result<LocalLease, StateError> {
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
                let holder = holder_json(None);
                file.set_len(0).map_err(|e| self.io(e))?;
                file.rewind().map_err(|e| self.io(e))?;
                writeln!(file, "{holder}").map_err(|e| self.io(e))?;
                file.flush().map_err(|e| self.io(e))?;
                Ok(LocalLease { _file: file })
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

    /// Records a reload request for `table` (a file of its own, so a running run's record
    /// saves cannot overwrite it).
    pub fn request_reload(&self, table: &str) -> Result<(), StateError> {
        let dir = self.dir.join("reload");
        fs::create_dir_all(&dir).map_err(|e| self.io(e))?;
        fs::write(dir.join(super::request_name(table)), table).map_err(|e| self.io(e))
    }

    /// The tables with a pending reload request.
    pub fn reload_requests(&self) -> Result<Vec<String>, StateError> {
        let dir = self.dir.join("reload");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if let Ok(t) = fs::read_to_string(e.path()) {
                out.push(t);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes a reload request once it is done.
    pub fn clear_reload(&self, table: &str) -> Result<(), StateError> {
        match fs::remove_file(self.dir.join("reload").join(super::request_name(table))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(e)),
            _ => Ok(()),
        }
    }

    /// Removes the stored record (`godwit drop`).
    pub fn remove(&self) -> Result<(), StateError> {
        let _ = fs::remove_dir_all(self.dir.join("reload"));
        match fs::remove_file(self.dir.join("task.json")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(e)),
            _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalState::new(dir.path());
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
