//! File targets: Parquet encoding, the DMS object layout, and the object stores files are
//! written to (local folders now; S3 behind the same trait).

pub mod cdc;
pub mod csv;
pub mod fenced;
pub mod layout;
pub mod local;
pub mod none;
pub mod parquet;
pub mod s3;
pub mod s3_error;
pub mod writer;

use std::io::{self, Write};

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
}

/// Where objects are written. Objects appear atomically: only a completed writer is visible.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// Starts writing `key`; nothing is visible there until [`ObjectWriter::complete`]. The
    /// writer blocks while it stores data: use it from a blocking thread, inside the runtime.
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>>;
    /// Every complete object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>>;
    /// The whole object.
    async fn get(&self, key: &str) -> io::Result<bytes::Bytes>;
    /// Removes an object; a missing one is not an error.
    async fn delete(&self, key: &str) -> io::Result<()>;
    /// Moves a complete object to another key, replacing what is there (a reader sees the old
    /// object or the new one, never a part); a missing `from` is [`io::ErrorKind::NotFound`].
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Where this store points, for messages.
    fn describe(&self) -> String;
    /// Checks that objects can be written here without leaving anything behind; says what
    /// was checked.
    async fn probe(&self) -> io::Result<String>;
    /// Removes what an interrupted run may have left half-written (temporary files,
    /// incomplete multipart uploads) in the given table folders (`layout::table_prefix`, each
    /// ending in `/`) and their date folders — nothing elsewhere, so another pipeline's work in
    /// the same tree is safe; returns how many. Call only while holding the lease.
    async fn cleanup_incomplete(&self, prefixes: &[String]) -> io::Result<usize>;
}

/// An object being written.
pub trait ObjectWriter: Write + Send {
    /// Makes the object visible under its key; returns its size.
    fn complete(self: Box<Self>) -> io::Result<u64>;
    /// Drops what was written; nothing becomes visible.
    fn abort(self: Box<Self>);
}
