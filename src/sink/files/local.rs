//! A local folder as an object store: objects are written to a hidden temporary file and
//! renamed into place when complete, so a reader never sees a partial file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

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

const TEMP_MARK: &str = ".godwit-tmp";

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let temp = dir.join(format!(".{name}.{}{TEMP_MARK}", std::process::id()));
        let file = File::create(&temp)?;
        Ok(Box::new(LocalWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            temp,
            path,
        }))
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        // Walk from the deepest folder the prefix names, then filter by the whole prefix.
        let dir_part = prefix.rfind('/').map(|i| &prefix[..i]).unwrap_or("");
        walk(&self.root, &self.root.join(dir_part), &mut out)?;
        out.retain(|o| o.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str) -> io::Result<bytes::Bytes> {
        fs::read(self.path(key)).map(bytes::Bytes::from)
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let to = self.path(to);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::rename(self.path(from), to)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn cleanup_incomplete(&self) -> io::Result<usize> {
        fn sweep(dir: &Path) -> io::Result<usize> {
            let mut n = 0;
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    n += sweep(&path)?;
                } else if entry.file_name().to_string_lossy().ends_with(TEMP_MARK) {
                    fs::remove_file(&path)?;
                    n += 1;
                }
            }
            Ok(n)
        }
        sweep(&self.root)
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
        let probe = dir.join(format!(".godwit-check-{}", std::process::id()));
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)?;
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
        } else if !name.ends_with(TEMP_MARK) {
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
    file: BufWriter<File>,
    temp: PathBuf,
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
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let size = file.metadata()?.len();
        drop(file);
        fs::rename(&self.temp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(size)
    }

    fn abort(self: Box<Self>) {
        let _ = fs::remove_file(&self.temp);
    }
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
}
