//! Logical replication: the pgoutput protocol decoder (the slot, publication and stream
//! client come with CDC).

pub mod pgoutput;
