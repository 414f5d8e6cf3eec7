//! A local folder as an object store: objects are written to a hidden temporary file and
//! renamed into place when complete, so a reader never sees a partial file. Temporary files
//! get unpredictable names and are created new (never through a planted symlink).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::layout;
use super::{ObjectInfo, ObjectStore, ObjectWriter};

/// Objects as files under `root`.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

/// Temporary files are `.<object name>.<random>.godwit-tmp`: hidden, and no object's name
/// (see `layout::segment`) starts with a dot.
const TEMP_MARK: &str = ".godwit-tmp";

fn is_temp(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(TEMP_MARK)
}

/// A new temporary file beside `path`, created exclusively under a random name; data files
/// get the usual permissions (0666 less the umask), as `File::create` gives.
fn temp_file(dir: &Path, path: &Path) -> io::Result<NamedTempFile> {
    let prefix = format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMP_MARK);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        let temp = temp_file(&dir, &path)?;
        Ok(Box::new(LocalWriter {
            file: BufWriter::with_capacity(1 << 20, temp),
            path,
        }))
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || {
            let mut out = Vec::new();
            // Walk from the deepest folder the prefix names, then filter by the whole prefix.
            let dir_part = prefix.rfind('/').map(|i| &prefix[..i]).unwrap_or("");
            walk(&root, &root.join(dir_part), &mut out)?;
            out.retain(|o| o.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn get(&self, key: &str) -> io::Result<bytes::Bytes> {
        let path = self.path(key);
        blocking(move || fs::read(path).map(bytes::Bytes::from)).await
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key);
        blocking(move || match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (self.path(from), self.path(to));
        blocking(move || {
            let dir = to.parent().map(Path::to_path_buf);
            if let Some(dir) = &dir {
                fs::create_dir_all(dir)?;
            }
            fs::rename(from, &to)?;
            // The new name survives a power loss only once its folder is on disk.
            if let Some(dir) = dir {
                fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn cleanup_incomplete(&self, prefixes: &[String]) -> io::Result<usize> {
        /// Removes the temporary files in `dir` and in the date folders below it.
        fn sweep(dir: &Path, level: usize) -> io::Result<usize> {
            let mut n = 0;
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type()?.is_dir() {
                    if layout::is_date_folder(level, &name) {
                        n += sweep(&entry.path(), level + 1)?;
                    }
                } else if is_temp(&name) {
                    fs::remove_file(entry.path())?;
                    n += 1;
                }
            }
            Ok(n)
        }
        let root = self.root.clone();
        let prefixes = prefixes.to_vec();
        blocking(move || {
            let mut n = 0;
            for prefix in &prefixes {
                n += sweep(&root.join(prefix), 0)?;
            }
            Ok(n)
        })
        .await
    }

    async fn probe(&self) -> io::Result<String> {
        // The folder, or its nearest existing parent, must take a file.
        let mut dir = self.root.as_path();
        while !dir.exists() {
            match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => dir = p,
                _ => {
                    dir = Path::new(".");
                    break;
                }
            }
        }
        // A new file under a random name (never through a planted symlink), removed again.
        tempfile::Builder::new()
            .prefix(".godwit-check-")
            .tempfile_in(dir)?
            .close()?;
        Ok(format!("{} is writable", self.root.display()))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if !is_temp(&name) {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectInfo {
                key,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

struct LocalWriter {
    file: BufWriter<NamedTempFile>,
    path: PathBuf,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn complete(self: Box<Self>) -> io::Result<u64> {
        let temp = self.file.into_inner().map_err(|e| e.into_error())?;
        temp.as_file().sync_all()?;
        let size = temp.as_file().metadata()?.len();
        // The rename replaces whatever is at the final name (a symlink included) itself.
        temp.persist(&self.path).map_err(|e| e.error)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(size)
    }

    /// Drops the buffer unwritten and removes the temporary file (a writer dropped without
    /// `complete` removes it too).
    fn abort(self: Box<Self>) {
        let (temp, _unwritten) = self.file.into_parts();
        let _ = temp.close();
    }
}

/// Runs file-system work on a blocking thread (it may wait on the disk).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_appear_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut w = store.create("s/t/LOAD00000001.parquet").unwrap();
        w.write_all(b"hello").unwrap();
        assert!(store.list("s/t/").await.unwrap().is_empty());
        assert_eq!(w.complete().unwrap(), 5);
        let listed = store.list("s/t/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "s/t/LOAD00000001.parquet");
        let w = store.create("s/t/LOAD00000002.parquet").unwrap();
        w.abort();
        assert_eq!(store.list("").await.unwrap().len(), 1);
        assert_eq!(
            &store.get("s/t/LOAD00000001.parquet").await.unwrap()[..],
            b"hello"
        );
    }

    /// Every file under `dir`, relative, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    walk(root, &e.path(), out);
                } else {
                    let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let store = LocalStore::new(dir.path().join("out"));
        let table = dir.path().join("out/s/t");
        fs::create_dir_all(&table).unwrap();
        let name = "LOAD00000001.parquet";
        for pid in [std::process::id(), 1] {
            for temp in [
                format!(".{name}.{pid}{TEMP_MARK}"),
                format!(".{name}.{pid}"),
            ] {
                std::os::unix::fs::symlink(&victim, table.join(temp)).unwrap();
            }
        }
        let mut w = store.create(&format!("s/t/{name}")).unwrap();
        w.write_all(b"data").unwrap();
        w.complete().unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        let meta = fs::symlink_metadata(table.join(name)).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(fs::read(table.join(name)).unwrap(), b"data");
    }

    #[tokio::test]
    async fn the_probe_leaves_nothing_and_follows_no_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        for pid in [std::process::id(), 1] {
            let link = out.join(format!(".godwit-check-{pid}"));
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
        let before = files(&out);
        LocalStore::new(&out).probe().await.unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(files(&out), before);
    }

    #[tokio::test]
    async fn data_files_keep_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let w = store.create("s/t/LOAD00000001.parquet").unwrap();
        w.complete().unwrap();
        let reference = dir.path().join("reference");
        File::create(&reference).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&dir.path().join("s/t/LOAD00000001.parquet")),
            mode(&reference)
        );
    }

    #[tokio::test]
    async fn abandoned_writers_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let mut w = store.create("s/t/LOAD00000001.parquet").unwrap();
        w.write_all(&[7; 4096]).unwrap();
        w.abort();
        let mut w = store.create("s/t/LOAD00000002.parquet").unwrap();
        w.write_all(&[7; 4096]).unwrap();
        drop(w);
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn clean_up_sweeps_only_the_given_table_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let plant = |rel: &str| {
            let p = dir.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        };
        let own = [
            "s/t/.LOAD00000001.parquet.a1.godwit-tmp",
            "s/t/2026/01/02/.x.parquet.b2.godwit-tmp",
            "s/t/2026/01/02/03/.x.parquet.c3.godwit-tmp",
        ];
        let kept = [
            "s/t/LOAD00000001.parquet",
            "s/t/.hidden",
            "s/t/nested/s/t/.LOAD00000001.parquet.d4.godwit-tmp",
            "s/t_archive/.LOAD00000001.parquet.e5.godwit-tmp",
            "other/t/.LOAD00000001.parquet.f6.godwit-tmp",
        ];
        for rel in own.iter().chain(&kept) {
            plant(rel);
        }
        let n = store
            .cleanup_incomplete(&["s/t/".to_string()])
            .await
            .unwrap();
        assert_eq!(n, own.len());
        let mut want: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(files(dir.path()), want);
        // A folder that does not exist is nothing to clean.
        assert_eq!(store.cleanup_incomplete(&["x/y/".into()]).await.unwrap(), 0);
    }
}
