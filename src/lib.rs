//! godwit moves PostgreSQL data out to a data lake the way AWS DMS does (full load, then
//! changes), and keeps Redis caches warm from the same stream.
//!
//! Data travels one way:
//!
//! ```text
//! pg (COPY → Arrow, snapshot-consistent) → batch → sink (Parquet files in a store) → state
//!                                                    └── notify (events file + logs)
//! ```
//!
//! Module map: [`config`] the pipeline file; [`pg`] everything PostgreSQL (connections, catalog,
//! the type mapping, COPY decoding); [`sink`] where batches go; [`state`] table states, statistics
//! and the lease; [`notify`] events; [`task`] orchestration and error policies; [`cli`] one file per
//! subcommand.

pub mod batch;
pub mod cli;
pub mod config;
pub mod error;
pub mod faults;
pub mod notify;
pub mod pg;
pub mod sink;
pub mod state;
pub mod task;

pub use error::Error;
