//! godwit moves PostgreSQL data out to a data lake the way AWS DMS does (full load, then
//! changes), and keeps Redis caches warm from the same stream.
//!
//! Data travels one way:
//!
//! ```text
//! pg (COPY → Arrow, snapshot-consistent;      → batch → sink (Parquet/CSV files) → state → slot
//!     pgoutput changes from the slot)              (CDC rows)                (marks)   (confirm)
//!                                                    └── notify (events file + logs)
//! ```
//!
//! Module map: [`config`] the pipeline file; [`pg`] everything PostgreSQL (connections, catalog,
//! the type mapping, COPY decoding, replication: slot, publication, stream, pgoutput); [`batch`]
//! CDC rows into per-table Arrow batches; [`sink`] where batches go; [`state`] table states,
//! statistics, CDC marks and the lease; [`notify`] events; [`task`] orchestration (full load, CDC
//! apply loop, reloads) and error policies; [`cli`] one file per subcommand.

pub mod batch;
pub mod cli;
pub mod config;
pub mod error;
pub mod faults;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod notify;
pub mod pg;
pub mod sink;
pub mod state;
pub mod task;

pub use error::Error;
