//! Logical replication: replica identity checks, slot and publication administration, the
//! replication session (slot with snapshot, stream, feedback) and the pgoutput decoder.

pub mod identity;
pub mod pgoutput;
pub mod session;
pub mod slot;
