//! Redis operations collected for one write: guarded writes grouped into calls of the
//! `apply.lua` script (one call covers many keys of one slot on a cluster, of one lane of slots
//! on a standalone server), plain commands where no
//! newer version can exist (the first warm of an empty keyspace) or where the structure has
//! its own guard (stream ids) or none (publish, invalidate).

use std::collections::BTreeMap;

use super::conn::{Grouping, Routed};
use super::keys::{Companion, Companions};
use crate::state::Mark;

/// The field that holds a hash's version.
pub const VERSION_FIELD: &str = "_v";

/// At most this many operations go into one script call.
const OPS_PER_CALL: usize = 256;

/// When a key expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    Never,
    /// `ttl`: this many ms after the write.
    After(i64),
    /// `ttl_column`: at this Unix time in ms.
    At(i64),
    /// `ttl_column` in the past: the row is deleted.
    Past,
}

impl Expire {
    fn script_args(self) -> [Vec<u8>; 2] {
        match self {
            Expire::After(ms) => [b"px".to_vec(), ms.to_string().into_bytes()],
            Expire::At(ms) => [b"at".to_vec(), ms.to_string().into_bytes()],
            Expire::Never | Expire::Past => [Vec::new(), Vec::new()],
        }
    }

    fn command(self, key: &[u8]) -> Option<redis::Cmd> {
        match self {
            Expire::After(ms) => Some(redis::cmd("PEXPIRE").arg(key).arg(ms).clone()),
            Expire::At(ms) => Some(redis::cmd("PEXPIREAT").arg(key).arg(ms).clone()),
            Expire::Never | Expire::Past => None,
        }
    }
}

/// One script call being built.
#[derive(Default)]
struct Call {
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
    ops: usize,
}

/// Operations of one write, ready to become commands.
pub struct Ops {
    /// Guarded writes through the script; false only for the first warm of an empty keyspace.
    guarded: bool,
    tombstone_ms: i64,
    grouping: Grouping,
    calls: BTreeMap<u16, Vec<Call>>,
    plain: Vec<Routed>,
    pub operations: u64,
}

impl Ops {
    pub fn new(guarded: bool, tombstone_ms: i64, grouping: Grouping) -> Ops {
        Ops {
            guarded,
            tombstone_ms,
            grouping,
            calls: BTreeMap::new(),
            plain: Vec::new(),
            operations: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.plain.is_empty()
    }

    /// The script call of `key`'s slot with room for one more operation.
    fn call(&mut self, key: &[u8]) -> &mut Call {
        let calls = self.calls.entry(self.grouping.group(key)).or_default();
        if calls.last().is_none_or(|c| c.ops >= OPS_PER_CALL) {
            calls.push(Call::default());
        }
        let c = calls.last_mut().expect("a call was just ensured");
        c.ops += 1;
        c
    }

    fn plain(&mut self, key: &[u8], cmd: redis::Cmd) {
        self.plain.push(Routed {
            key: key.to_vec(),
            cmd,
        });
    }

    /// A hash row: fields set, fields whose value is NULL removed, the version field set.
    pub fn hash(
        &mut self,
        key: &[u8],
        ver: &[u8; 32],
        sets: Vec<(Vec<u8>, Vec<u8>)>,
        dels: Vec<Vec<u8>>,
        expire: Expire,
        companions: &Companions,
    ) {
        self.operations += 1;
        if !self.guarded {
            let mut hset = redis::cmd("HSET");
            hset.arg(key);
            for (f, v) in &sets {
                hset.arg(f).arg(v);
            }
            hset.arg(VERSION_FIELD).arg(&ver[..]);
            self.plain(key, hset);
            if let Some(c) = expire.command(key) {
                self.plain(key, c);
            }
            return;
        }
        let mut tomb = Vec::new();
        companions.name(Companion::Tombstone, key, None, &mut tomb);
        let [mode, value] = expire.script_args();
        let c = self.call(key);
        c.keys.push(key.to_vec());
        c.keys.push(tomb);
        c.args.push(b"H".to_vec());
        c.args.push(ver.to_vec());
        c.args.push(sets.len().to_string().into_bytes());
        for (f, v) in sets {
            c.args.push(f);
            c.args.push(v);
        }
        c.args.push(dels.len().to_string().into_bytes());
        c.args.extend(dels);
        c.args.push(mode);
        c.args.push(value);
    }

    /// A `string` or `json` value.
    pub fn value(
        &mut self,
        key: &[u8],
        ver: &[u8; 32],
        value: Vec<u8>,
        expire: Expire,
        companions: &Companions,
    ) {
        self.operations += 1;
        let mut vkey = Vec::new();
        companions.name(Companion::Version, key, None, &mut vkey);
        if !self.guarded {
            for (k, v) in [(key, &value[..]), (&vkey[..], &ver[..])] {
                let mut set = redis::cmd("SET");
                set.arg(k).arg(v);
                match expire {
                    Expire::After(ms) => {
                        set.arg("PX").arg(ms);
                    }
                    Expire::At(ms) => {
                        set.arg("PXAT").arg(ms);
                    }
                    Expire::Never | Expire::Past => {}
                }
                self.plain(key, set);
            }
            return;
        }
        let mut tomb = Vec::new();
        companions.name(Companion::Tombstone, key, None, &mut tomb);
        let [mode, exp] = expire.script_args();
        let c = self.call(key);
        c.keys.extend([key.to_vec(), vkey, tomb]);
        c.args
            .extend([b"S".to_vec(), ver.to_vec(), value, mode, exp]);
    }

    /// A `json` row with unchanged columns: `fields` are (name as a JSON string, value as JSON
    /// text, or `None` for a column whose cached value stays), in document order.
    pub fn json_merge(
        &mut self,
        key: &[u8],
        ver: &[u8; 32],
        fields: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        expire: Expire,
        companions: &Companions,
    ) {
        self.operations += 1;
        let mut vkey = Vec::new();
        companions.name(Companion::Version, key, None, &mut vkey);
        let mut tomb = Vec::new();
        companions.name(Companion::Tombstone, key, None, &mut tomb);
        let [mode, exp] = expire.script_args();
        let c = self.call(key);
        c.keys.extend([key.to_vec(), vkey, tomb]);
        c.args.extend([
            b"J".to_vec(),
            ver.to_vec(),
            fields.len().to_string().into_bytes(),
        ]);
        for (name, value) in fields {
            c.args.push(name);
            match value {
                Some(v) => {
                    c.args.push(b"1".to_vec());
                    c.args.push(v);
                }
                None => {
                    c.args.push(b"0".to_vec());
                    c.args.push(Vec::new());
                }
            }
        }
        c.args.extend([mode, exp]);
    }

    /// A whole key deleted; `version` names where its version lives (`None`: inside the hash).
    pub fn delete(
        &mut self,
        key: &[u8],
        version: Option<Companion>,
        ver: &[u8; 32],
        companions: &Companions,
    ) {
        self.operations += 1;
        let mut vkey = key.to_vec();
        if let Some(what) = version {
            companions.name(what, key, None, &mut vkey);
        }
        let mut tomb = Vec::new();
        companions.name(Companion::Tombstone, key, None, &mut tomb);
        let c = self.call(key);
        c.keys.extend([key.to_vec(), vkey, tomb]);
        c.args.extend([b"D".to_vec(), ver.to_vec()]);
    }

    /// A member added to a `zset` (`ZADD`, values = score), `set` (`SADD`) or `geo`
    /// (`GEOADD`, values = longitude, latitude).
    pub fn add_member(
        &mut self,
        key: &[u8],
        member: &[u8],
        command: &str,
        values: Vec<Vec<u8>>,
        ver: &[u8; 32],
        companions: &Companions,
    ) {
        self.operations += 1;
        let mut versions = Vec::new();
        companions.name(Companion::Members, key, None, &mut versions);
        if !self.guarded {
            let mut add = redis::cmd(command);
            add.arg(key);
            for v in &values {
                add.arg(v);
            }
            add.arg(member);
            self.plain(key, add);
            let mut hset = redis::cmd("HSET");
            hset.arg(&versions).arg(member).arg(&ver[..]);
            self.plain(key, hset);
            return;
        }
        let mut tomb = Vec::new();
        companions.name(Companion::Tombstone, key, Some(member), &mut tomb);
        let c = self.call(key);
        c.keys.extend([key.to_vec(), versions, tomb]);
        c.args.extend([
            b"M".to_vec(),
            ver.to_vec(),
            command.as_bytes().to_vec(),
            member.to_vec(),
        ]);
        c.args.extend(values);
    }

    /// A member removed (`ZREM` for zset and geo, `SREM` for set).
    pub fn remove_member(
        &mut self,
        key: &[u8],
        member: &[u8],
        command: &str,
        ver: &[u8; 32],
        companions: &Companions,
    ) {
        self.operations += 1;
        let mut versions = Vec::new();
        companions.name(Companion::Members, key, None, &mut versions);
        let mut tomb = Vec::new();
        companions.name(Companion::Tombstone, key, Some(member), &mut tomb);
        let c = self.call(key);
        c.keys.extend([key.to_vec(), versions, tomb]);
        c.args.extend([
            b"R".to_vec(),
            ver.to_vec(),
            command.as_bytes().to_vec(),
            member.to_vec(),
        ]);
    }

    /// `invalidate`: the key goes on any change.
    pub fn invalidate(&mut self, key: &[u8]) {
        self.operations += 1;
        self.plain(key, redis::cmd("DEL").arg(key).clone());
    }

    /// `stream`: one entry per change, its id made of (`_lsn`, `_seq`); the script skips an
    /// entry whose id is not above the stream's last (a replay); capped at `maxlen`
    /// (approximately).
    pub fn stream(
        &mut self,
        key: &[u8],
        mark: Mark,
        maxlen: Option<u64>,
        entry: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        self.operations += 1;
        let c = self.call(key);
        c.keys.push(key.to_vec());
        c.args.push(b"X".to_vec());
        c.args
            .push(format!("{}-{}", mark.lsn, mark.seq).into_bytes());
        c.args.push(
            maxlen
                .map(|n| n.to_string())
                .unwrap_or_default()
                .into_bytes(),
        );
        c.args.push(entry.len().to_string().into_bytes());
        for (f, v) in entry {
            c.args.push(f);
            c.args.push(v);
        }
    }

    /// `publish`: the change to a channel (at most once: a subscriber that is away misses it).
    pub fn publish(&mut self, channel: &[u8], message: Vec<u8>) {
        self.operations += 1;
        self.plain(
            channel,
            redis::cmd("PUBLISH").arg(channel).arg(message).clone(),
        );
    }

    /// The commands: script calls (by slot) first, then plain commands in the order they came;
    /// and how many script calls lead (each answers how many operations it refused as older).
    pub fn commands(self, sha: &str) -> (Vec<Routed>, usize) {
        let mut out = Vec::new();
        for (_, calls) in self.calls {
            for c in calls {
                let Some(first) = c.keys.first().cloned() else {
                    continue;
                };
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(sha).arg(c.keys.len());
                for k in &c.keys {
                    cmd.arg(k);
                }
                cmd.arg(self.tombstone_ms).arg(VERSION_FIELD);
                for a in &c.args {
                    cmd.arg(a);
                }
                out.push(Routed { key: first, cmd });
            }
        }
        let calls = out.len();
        out.extend(self.plain);
        (out, calls)
    }
}
