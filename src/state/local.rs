//! State in a local folder: `task.json` replaced atomically, and the lease as an advisory
//! lock (`flock`) on the `lease` file, which the OS releases if the process dies — it cannot
//! be lost while the process lives, so its fence never trips. Files are created with mode
//! 0600; temporary files get unpredictable names and are never opened through a symlink.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{StateError, TaskRecord, describe_holder, holder_json, now_text};

/// Prefix of the temporary files `task.json` is written through.
const TEMP_PREFIX: &str = ".task.json.";

/// A local state folder.
#[derive(Clone)]
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
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.io(e))?;
        match file.try_lock() {
            Ok(()) => {
                let holder = holder_json(&now_text(), None);
                file.set_permissions(fs::Permissions::from_mode(0o600))
                    .map_err(|e| self.io(e))?;
                self.sweep_temporary();
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

    /// Removes the temporary files an interrupted save left (only the lease holder saves).
    fn sweep_temporary(&self) {
        let entries = [self.dir.clone(), self.dir.join("reload")]
            .into_iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flatten();
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                match fs::remove_file(e.path()) {
                    Ok(()) => {
                        tracing::info!(file = %e.path().display(), "removed a temporary state file an interrupted run left")
                    }
                    Err(err) => {
                        tracing::warn!(file = %e.path().display(), "cannot remove a leftover temporary state file: {err}")
                    }
                }
            }
        }
    }

    /// Writes `bytes` to `path` atomically: a new temporary file (unpredictable name, mode
    /// 0600, created exclusively, so a planted symlink is never followed), fsync, rename.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), StateError> {
        let dir = path.parent().unwrap_or(&self.dir);
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)
            .map_err(|e| self.io(e))?;
        temp.write_all(bytes).map_err(|e| self.io(e))?;
        temp.as_file().sync_all().map_err(|e| self.io(e))?;
        temp.persist(path).map_err(|e| self.io(e.error))?;
        Ok(())
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
        self.write_atomically(&dir.join(super::request_name(table)), table.as_bytes())
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
            // A request is a file named after its table; anything else (a temporary file a
            // killed `godwit reload` left) is not one.
            let Ok(t) = fs::read_to_string(e.path()) else {
                continue;
            };
            if e.file_name().to_string_lossy() == super::request_name(&t) {
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

    /// Replaces the stored record atomically (write, fsync, rename). Blocking: call it off
    /// the async threads.
    pub fn save(&self, record_json: &[u8]) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        self.write_atomically(&self.dir.join("task.json"), record_json)
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

    fn record() -> TaskRecord {
        TaskRecord {
            pipeline: "p".into(),
            mode: "full-load".into(),
            state: "running".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            stopped_at: None,
            snapshot: None,
            last_error: None,
            tables: Default::default(),
            cdc: None,
            events_undelivered: None,
            shards: None,
        }
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        // The names the old code wrote through (pid-named), and some guessed ones.
        for name in [
            format!(".task.json.{}", std::process::id()),
            ".task.json.AAAAAA".into(),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let store = LocalState::new(dir.path());
        store.save(&serde_json::to_vec(&record()).unwrap()).unwrap();
        store.request_reload("public.t").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        let task = dir.path().join("task.json");
        let meta = fs::symlink_metadata(&task).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(store.load().unwrap().unwrap().pipeline, "p");
        assert_eq!(
            store.reload_requests().unwrap(),
            vec!["public.t".to_string()]
        );
        let request = dir
            .path()
            .join("reload")
            .join(crate::state::request_name("public.t"));
        assert_eq!(
            fs::metadata(request).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Taking the lease sweeps the leftovers (the links, not what they point to).
        let _lease = store.acquire_lease("p").unwrap();
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        let lease = fs::metadata(dir.path().join("lease")).unwrap();
        assert_eq!(lease.permissions().mode() & 0o777, 0o600);
    }
}
