//! The Redis sink (cache warming). Today only its transport: connections to a standalone Redis
//! or a Redis Cluster, pipelined execution grouped by hash slot, error classification, retries,
//! Lua script loading and `WAIT` for replicas.

pub mod conn;

pub use conn::{
    ErrorClass, LuaScript, NodeInfo, Redis, RedisError, Routed, hash_tag, retry_delay, slot,
};
