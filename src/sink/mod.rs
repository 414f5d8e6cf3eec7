//! Sinks: where batches go. Each takes batches and reports back once they are durable.

pub mod files;
pub mod redis;
