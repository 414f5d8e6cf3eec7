//! Logical replication: replica identity and row-filter checks, slot and publication administration, the
//! replication session (slot with snapshot, stream, feedback) and the pgoutput decoder.

pub mod identity;
pub mod pgoutput;
pub mod row_filter;
pub mod session;
pub mod slot;
