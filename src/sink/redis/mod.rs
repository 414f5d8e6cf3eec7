//! The Redis sink (cache warming), in the making:
//! - `conn`: connections to a standalone Redis or a Redis Cluster, pipelined execution grouped
//!   by hash slot, error classification, retries, Lua script loading, `WAIT` for replicas;
//! - `keys`: key/member/channel templates bound to a batch, and the keys godwit keeps beside a
//!   user's key (version, tombstone, member versions) in that key's own hash slot;
//! - `projection`: one projection's rows → operations; `ops`: operations → commands (guarded
//!   script calls grouped by slot, or plain commands); `apply.lua`: the guarded writes;
//! - `dump`: a hash serialized for `RESTORE` (the first warm of an empty keyspace).

pub mod check;
pub mod conn;
pub mod dump;
pub mod inspect;
pub mod keys;
pub mod ops;
pub mod projection;
pub mod writer;

/// The guarded writes (see the script's header).
pub const APPLY_SCRIPT: &str = include_str!("apply.lua");

pub use conn::{
    ErrorClass, LuaScript, NodeInfo, Redis, RedisError, Routed, hash_tag, retry_delay, slot,
};
