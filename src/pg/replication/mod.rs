//! Logical replication: replica identity checks and the pgoutput protocol decoder (the slot,
//! publication and stream client come with CDC).

pub mod identity;
pub mod pgoutput;
pub mod session;
