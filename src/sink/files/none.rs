//! The target of a cache-only pipeline (`[target] url = "none"`): an object store that holds
//! nothing. The load and the reload paths need a store to name; with this one no file is ever
//! written (the full load does not even encode one, and CDC has no files sink).

use std::io::{self, Write};

use super::{ObjectInfo, ObjectStore, ObjectWriter};

/// Stores nothing; every listing is empty.
pub struct NoStore;

struct Discard;

impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for Discard {
    fn complete(self: Box<Self>) -> io::Result<u64> {
        Ok(0)
    }

    fn abort(self: Box<Self>) {}
}

#[async_trait::async_trait]
impl ObjectStore for NoStore {
    fn create(&self, _key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(Discard))
    }

    async fn list(&self, _prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        Ok(Vec::new())
    }

    async fn get(&self, key: &str) -> io::Result<bytes::Bytes> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{key}: a cache-only pipeline stores no files"),
        ))
    }

    async fn delete(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }

    async fn rename(&self, _from: &str, _to: &str) -> io::Result<()> {
        Ok(())
    }

    fn describe(&self) -> String {
        "none (cache only)".into()
    }

    async fn probe(&self) -> io::Result<String> {
        Ok("target none: a cache-only pipeline writes no files".into())
    }

    async fn cleanup_incomplete(&self, _prefixes: &[String]) -> io::Result<usize> {
        Ok(0)
    }
}
