//! The target behind the lease's fence: a writer checks the fence right before its object
//! becomes visible, and a delete (or a clean-up of incomplete uploads) before it removes
//! anything. A run whose lease is lost aborts the object instead, so nothing it writes lands.
//! `task::start` wraps the target once; every writer of the run goes through it.

use std::io::{self, Write};
use std::sync::Arc;

use super::{ObjectInfo, ObjectStore, ObjectWriter};
use crate::state::Fence;

/// An object store whose writes and deletes hold only while the fence does.
pub struct FencedStore {
    inner: Arc<dyn ObjectStore>,
    fence: Fence,
}

impl FencedStore {
    /// `inner` behind `fence`.
    pub fn wrap(inner: Arc<dyn ObjectStore>, fence: Fence) -> Arc<dyn ObjectStore> {
        Arc::new(FencedStore { inner, fence })
    }
}

fn lost(fence: &Fence) -> io::Result<()> {
    fence.check().map_err(io::Error::other)
}

#[async_trait::async_trait]
impl ObjectStore for FencedStore {
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        lost(&self.fence)?;
        Ok(Box::new(FencedWriter {
            inner: self.inner.create(key)?,
            fence: self.fence.clone(),
        }))
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }

    async fn get(&self, key: &str) -> io::Result<bytes::Bytes> {
        self.inner.get(key).await
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        lost(&self.fence)?;
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn probe(&self) -> io::Result<String> {
        self.inner.probe().await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        lost(&self.fence)?;
        self.inner.rename(from, to).await
    }

    async fn cleanup_incomplete(&self, prefixes: &[String]) -> io::Result<usize> {
        lost(&self.fence)?;
        self.inner.cleanup_incomplete(prefixes).await
    }
}

/// A writer that completes only while the fence holds.
struct FencedWriter {
    inner: Box<dyn ObjectWriter>,
    fence: Fence,
}

impl Write for FencedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.inner.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for FencedWriter {
    fn complete(self: Box<Self>) -> io::Result<u64> {
        if let Err(e) = lost(&self.fence) {
            self.inner.abort();
            return Err(e);
        }
        self.inner.complete()
    }

    fn abort(self: Box<Self>) {
        self.inner.abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::files::local::LocalStore;

    fn held() -> Fence {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        Fence::until("s3://bucket/_godwit/state/lease".into(), deadline)
    }

    #[tokio::test]
    async fn a_lost_lease_completes_and_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        let fence = held();
        let store = FencedStore::wrap(local.clone(), fence.clone());

        // While the lease holds, writes land.
        let mut w = store.create("a/kept.bin").unwrap();
        w.write_all(b"kept").unwrap();
        w.complete().unwrap();

        // A writer started before the loss does not complete after it.
        let mut w = store.create("a/late.bin").unwrap();
        w.write_all(b"late").unwrap();
        fence.trip("another run took the lease over".into());
        let err = w.complete().unwrap_err().to_string();
        assert!(err.contains("another run took the lease over"), "{err}");
        let err = store.delete("a/kept.bin").await.unwrap_err().to_string();
        assert!(err.contains("lease"), "{err}");
        assert!(store.create("a/new.bin").is_err());

        let keys: Vec<_> = local
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["a/kept.bin".to_string()]);
        // Nothing half-written is left behind either.
        assert_eq!(local.cleanup_incomplete(&["a/".into()]).await.unwrap(), 0);
    }
}
