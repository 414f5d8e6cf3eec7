//! Redis operations collected for one write: guarded writes grouped into calls of the
//! `apply.lua` script (one call covers many keys of one slot on a cluster, of one lane of slots
//! on a standalone server), plain commands where the structure has its own guard (stream ids)
//! or none (publish, invalidate).
//!
//! Bulk writes (a load whose version is above its groups' high-water keys, sent as one
//! transaction that checks them: `Redis::exec_if_newer`) are plain commands that write the
//! versions too, as the script would.
//!
//! Unguarded writes (the first warm of an untouched keyspace, where no newer version can exist)
//! are plain commands. A hash gets its version with its fields (one more field in the same
//! command, so that a later guarded write over it reads the version and never the tombstone);
//! other kinds get none: a key without a version counts as older than any change, and every
//! change that can still come is newer than the warm's snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::conn::{Grouping, Routed, slot};
use super::dump::Listpack;
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
    /// `ttl_column` is NULL: no expiry (an earlier one is removed).
    Persist,
}

impl Expire {
    fn script_args(self) -> [Vec<u8>; 2] {
        match self {
            Expire::After(ms) => [b"px".to_vec(), ms.to_string().into_bytes()],
            Expire::At(ms) => [b"at".to_vec(), ms.to_string().into_bytes()],
            Expire::Persist => [b"persist".to_vec(), Vec::new()],
            Expire::Never | Expire::Past => [Vec::new(), Vec::new()],
        }
    }

    fn command(self, key: &[u8]) -> Option<redis::Cmd> {
        match self {
            Expire::After(ms) => Some(redis::cmd("PEXPIRE").arg(key).arg(ms).clone()),
            Expire::At(ms) => Some(redis::cmd("PEXPIREAT").arg(key).arg(ms).clone()),
            Expire::Persist => Some(redis::cmd("PERSIST").arg(key).clone()),
            Expire::Never | Expire::Past => None,
        }
    }
}

/// The keys a guarded `string`/`json` write names: the key, its version key, its tombstone.
fn value_keys(key: &[u8], companions: &Companions) -> [Vec<u8>; 3] {
    let mut vkey = Vec::new();
    companions.name(Companion::Version, key, None, &mut vkey);
    let mut tomb = Vec::new();
    companions.name(Companion::Tombstone, key, None, &mut tomb);
    [key.to_vec(), vkey, tomb]
}

/// Byte strings stored end to end (one allocation for many arguments).
#[derive(Default)]
struct Strings {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Strings {
    fn push(&mut self, s: impl AsRef<[u8]>) {
        self.bytes.extend_from_slice(s.as_ref());
        self.ends.push(self.bytes.len());
    }

    fn extend<S: AsRef<[u8]>>(&mut self, all: impl IntoIterator<Item = S>) {
        for s in all {
            self.push(s);
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let s = &self.bytes[start..end];
            start = end;
            s
        })
    }
}

/// Commands already in the wire format (RESP), for a connection of a load's own: no command
/// objects on the way.
#[derive(Default)]
pub struct Resp {
    pub bytes: Vec<u8>,
    /// How many commands `bytes` holds.
    pub commands: usize,
}

impl Resp {
    fn array(&mut self, n: usize) {
        self.commands += 1;
        self.bytes.push(b'*');
        self.number(n as i64);
    }

    fn bulk(&mut self, s: &[u8]) {
        self.bytes.push(b'$');
        self.number(s.len() as i64);
        self.bytes.extend_from_slice(s);
        self.bytes.extend_from_slice(b"\r\n");
    }

    fn number(&mut self, n: i64) {
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// A command of the crate's.
    fn cmd(&mut self, cmd: &redis::Cmd) {
        self.commands += 1;
        cmd.write_packed_command(&mut self.bytes);
    }
}

/// One script call being built.
#[derive(Default)]
struct Call {
    /// The slot of its first key (routes the call).
    slot: u16,
    keys: Strings,
    args: Strings,
    ops: usize,
    /// The field names the last `F` declared (the `f` operations after it write those).
    fields: Vec<Vec<u8>>,
}

impl Call {
    /// Whether the `f` operations of this call write exactly `sets`' fields, in order.
    fn declares(&self, sets: &[(&[u8], &[u8])]) -> bool {
        self.fields.len() == sets.len()
            && self
                .fields
                .iter()
                .zip(sets)
                .all(|(a, (b, _))| a.as_slice() == *b)
    }
}

/// Operations of one write, ready to become commands.
pub struct Ops {
    /// Guarded writes through the script; false only for the first warm of an empty keyspace.
    guarded: bool,
    /// Guarded writes as plain commands with their versions, for a transaction that checks the
    /// high-water keys of [`Ops::groups`] first.
    bulk: bool,
    /// The groups bulk writes went to.
    touched: BTreeSet<u16>,
    /// The high-water key of each group, which script calls raise (changes only; see
    /// `apply.lua`).
    high_water: Option<Arc<[Vec<u8>]>>,
    /// Unguarded: a hash that fits the server's listpack goes whole (`RESTORE`), not by `HSET`.
    restore: Option<Listpack>,
    tombstone_ms: i64,
    grouping: Grouping,
    calls: BTreeMap<u16, Vec<Call>>,
    plain: Vec<Routed>,
    /// Plain commands go here as RESP instead of into `plain` (see [`Ops::resp`]).
    resp: Option<Resp>,
    pub operations: u64,
    /// Of `operations`, the removals (deletes, removed members, invalidations).
    pub removals: u64,
}

impl Ops {
    pub fn new(guarded: bool, tombstone_ms: i64, grouping: Grouping) -> Ops {
        Ops {
            guarded,
            bulk: false,
            touched: BTreeSet::new(),
            high_water: None,
            restore: None,
            tombstone_ms,
            grouping,
            calls: BTreeMap::new(),
            plain: Vec::new(),
            resp: None,
            operations: 0,
            removals: 0,
        }
    }

    /// Unguarded hashes that fit `limits` become `RESTORE`s of their serialized form (the server
    /// proved it reads that back; see `CacheTarget::restore_limits`).
    pub fn restoring(mut self, limits: Option<Listpack>) -> Ops {
        self.restore = limits;
        self
    }

    /// Guarded writes become plain commands with their versions (see [`Ops::groups`]).
    pub fn bulk(mut self) -> Ops {
        self.bulk = self.guarded;
        self
    }

    /// Script calls raise the high-water key of their group, `names` by group.
    pub fn high_water(mut self, names: Option<Arc<[Vec<u8>]>>) -> Ops {
        self.high_water = names;
        self
    }

    /// The groups bulk writes went to: their high-water keys must be below the writes'
    /// version.
    pub fn groups(&self) -> impl Iterator<Item = u16> + '_ {
        self.touched.iter().copied()
    }

    /// A bulk write's command.
    fn bulk_plain(&mut self, key: &[u8], cmd: redis::Cmd) {
        self.touched.insert(self.grouping.group(slot(key)));
        self.plain(key, cmd);
    }

    /// A bulk write's tombstone of `key` (and `member`) at `ver`.
    fn bulk_tombstone(
        &mut self,
        key: &[u8],
        member: Option<&[u8]>,
        ver: &[u8; 32],
        companions: &Companions,
    ) {
        let mut tomb = Vec::new();
        companions.name(Companion::Tombstone, key, member, &mut tomb);
        let set = redis::cmd("SET")
            .arg(&tomb)
            .arg(&ver[..])
            .arg("PX")
            .arg(self.tombstone_ms)
            .clone();
        self.bulk_plain(key, set);
    }

    /// Plain commands are written as RESP, for [`Ops::into_resp`].
    pub fn resp(mut self) -> Ops {
        self.resp = Some(Resp::default());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
            && self.plain.is_empty()
            && self.resp.as_ref().is_none_or(|r| r.commands == 0)
    }

    /// The script call of `key`'s group with room for one more operation.
    fn call(&mut self, key: &[u8]) -> &mut Call {
        self.call_in(slot(key))
    }

    /// [`Ops::call`] for a key of slot `s`.
    fn call_in(&mut self, s: u16) -> &mut Call {
        let calls = self.calls.entry(self.grouping.group(s)).or_default();
        if calls.last().is_none_or(|c| c.ops >= OPS_PER_CALL) {
            calls.push(Call {
                slot: s,
                ..Call::default()
            });
        }
        let c = calls.last_mut().expect("a call was just ensured");
        c.ops += 1;
        c
    }

    fn plain(&mut self, key: &[u8], cmd: redis::Cmd) {
        match &mut self.resp {
            Some(r) => r.cmd(&cmd),
            None => self.plain.push(Routed::new(key, cmd)),
        }
    }

    /// `HSET key field value … _v ver`: the most frequent plain command, written straight into
    /// the RESP when there is one.
    fn hset(&mut self, key: &[u8], sets: &[(&[u8], &[u8])], ver: &[u8; 32]) {
        if let Some(r) = &mut self.resp {
            r.array(4 + 2 * sets.len());
            r.bulk(b"HSET");
            r.bulk(key);
            for (f, v) in sets {
                r.bulk(f);
                r.bulk(v);
            }
            r.bulk(VERSION_FIELD.as_bytes());
            r.bulk(ver);
            return;
        }
        // Sized once: no reallocation while the arguments go in.
        let bytes = key.len()
            + sets.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>()
            + VERSION_FIELD.len()
            + ver.len()
            + 4;
        let mut hset = redis::Cmd::with_capacity(4 + 2 * sets.len(), bytes);
        hset.arg("HSET").arg(key);
        for (f, v) in sets {
            hset.arg(*f).arg(*v);
        }
        hset.arg(VERSION_FIELD).arg(&ver[..]);
        self.plain.push(Routed::new(key, hset));
    }

    /// A hash row: fields set, fields whose value is NULL removed, the version field set.
    #[allow(clippy::too_many_arguments)]
    pub fn hash(
        &mut self,
        key: &[u8],
        ver: &[u8; 32],
        sets: &[(&[u8], &[u8])],
        dels: &[&[u8]],
        expire: Expire,
        companions: &Companions,
        scratch: &mut Vec<u8>,
    ) {
        self.operations += 1;
        if !self.guarded
            && let Some(limits) = self.restore
            && let Some(ttl) = match expire {
                Expire::Never => Some(0),
                // (RESTORE's 0 would mean no expiry)
                Expire::After(ms) if ms > 0 => Some(ms),
                _ => None,
            }
            && self.restore_hash(key, ver, sets, ttl, limits, scratch)
        {
            return;
        }
        if !self.guarded || self.bulk {
            // The version too: a guarded write over this key (a re-warm, a change) then reads
            // it and no tombstone; with every field NULL, it alone keeps the key.
            self.hset(key, sets, ver);
            if !self.bulk {
                if let Some(c) = expire.command(key) {
                    self.plain(key, c);
                }
                return;
            }
            self.touched.insert(self.grouping.group(slot(key)));
            // Over a key that may exist: NULL fields go, as the script does.
            if !dels.is_empty() {
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(key);
                for d in dels {
                    hdel.arg(*d);
                }
                self.bulk_plain(key, hdel);
            }
            if let Some(c) = expire.command(key) {
                self.bulk_plain(key, c);
            }
            return;
        }
        let s = slot(key);
        companions.name_in(s, Companion::Tombstone, key, None, scratch);
        if dels.is_empty() && !sets.is_empty() && expire == Expire::Never {
            // The frequent case: every field has a value, no expiry. The field names go once
            // per call (`F`), each row sends its values only (`f`).
            let c = self.call_in(s);
            c.keys.push(key);
            c.keys.push(scratch);
            if !c.declares(sets) {
                c.args.push(b"F");
                c.args.push(sets.len().to_string().as_bytes());
                for (f, _) in sets {
                    c.args.push(f);
                }
                c.fields = sets.iter().map(|(f, _)| f.to_vec()).collect();
            }
            c.args.push(b"f");
            c.args.push(ver);
            for (_, v) in sets {
                c.args.push(v);
            }
            return;
        }
        let [mode, value] = expire.script_args();
        let c = self.call_in(s);
        c.keys.push(key);
        c.keys.push(scratch);
        c.args.push(b"H");
        c.args.push(ver);
        c.args.push(sets.len().to_string().as_bytes());
        for (f, v) in sets {
            c.args.push(f);
            c.args.push(v);
        }
        c.args.push(dels.len().to_string().as_bytes());
        for d in dels {
            c.args.push(d);
        }
        c.args.push(&mode);
        c.args.push(&value);
    }

    /// The first warm's hash row as `RESTORE key ttl payload` (its fields, then the version
    /// field, as `HSET` would write them), when it fits `limits`; false: it does not (the caller
    /// writes it with `HSET`). The field names are unique (a projection names a column once)
    /// and none is the version field. Without `REPLACE`: a key that exists already fails with
    /// BUSYKEY (see `CacheLoad`).
    fn restore_hash(
        &mut self,
        key: &[u8],
        ver: &[u8; 32],
        sets: &[(&[u8], &[u8])],
        ttl: i64,
        limits: Listpack,
        scratch: &mut Vec<u8>,
    ) -> bool {
        if !limits.fits(sets, ver.len().max(VERSION_FIELD.len()))
            || sets.iter().any(|(f, _)| *f == VERSION_FIELD.as_bytes())
        {
            return false;
        }
        super::dump::hash(sets, Some((VERSION_FIELD.as_bytes(), &ver[..])), scratch);
        if let Some(r) = &mut self.resp {
            r.array(4);
            r.bulk(b"RESTORE");
            r.bulk(key);
            r.bulk(itoa::Buffer::new().format(ttl).as_bytes());
            r.bulk(scratch);
            return true;
        }
        let mut restore = redis::Cmd::with_capacity(4, key.len() + scratch.len() + 32);
        restore.arg("RESTORE").arg(key).arg(ttl).arg(&scratch[..]);
        self.plain(key, restore);
        true
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
        if !self.guarded || self.bulk {
            let set = |k: &[u8], v: &[u8]| {
                let mut set = redis::cmd("SET");
                set.arg(k).arg(v);
                match expire {
                    Expire::After(ms) => {
                        set.arg("PX").arg(ms);
                    }
                    Expire::At(ms) => {
                        set.arg("PXAT").arg(ms);
                    }
                    // SET without an expiry removes an earlier one.
                    Expire::Never | Expire::Past | Expire::Persist => {}
                }
                set
            };
            if !self.bulk {
                self.plain(key, set(key, &value));
                return;
            }
            // The version beside the value, with the same expiry (as the script writes it).
            let mut vkey = Vec::new();
            companions.name(Companion::Version, key, None, &mut vkey);
            self.bulk_plain(key, set(key, &value));
            self.bulk_plain(key, set(&vkey, &ver[..]));
            return;
        }
        let [mode, exp] = expire.script_args();
        let keys = value_keys(key, companions);
        let c = self.call(key);
        c.keys.extend(keys);
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
        let [mode, exp] = expire.script_args();
        let keys = value_keys(key, companions);
        let c = self.call(key);
        c.keys.extend(keys);
        c.args.extend([
            b"J".to_vec(),
            ver.to_vec(),
            fields.len().to_string().into_bytes(),
        ]);
        for (name, value) in fields {
            c.args.push(name);
            match value {
                Some(v) => {
                    c.args.push(b"1");
                    c.args.push(v);
                }
                None => {
                    c.args.push(b"0");
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
        self.removals += 1;
        if self.bulk {
            self.bulk_plain(key, redis::cmd("DEL").arg(key).clone());
            if let Some(what) = version {
                let mut vkey = Vec::new();
                companions.name(what, key, None, &mut vkey);
                self.bulk_plain(key, redis::cmd("DEL").arg(&vkey).clone());
            }
            self.bulk_tombstone(key, None, ver, companions);
            return;
        }
        let s = slot(key);
        let mut tomb = Vec::new();
        companions.name_in(s, Companion::Tombstone, key, None, &mut tomb);
        let Some(what) = version else {
            // A hash holds its own version.
            let c = self.call_in(s);
            c.keys.push(key);
            c.keys.push(tomb);
            c.args.push(b"d");
            c.args.push(ver);
            return;
        };
        let mut vkey = Vec::new();
        companions.name(what, key, None, &mut vkey);
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
        if !self.guarded || self.bulk {
            let mut add = redis::cmd(command);
            add.arg(key);
            for v in &values {
                add.arg(v);
            }
            add.arg(member);
            if !self.bulk {
                self.plain(key, add);
                return;
            }
            let mut versions = Vec::new();
            companions.name(Companion::Members, key, None, &mut versions);
            self.bulk_plain(key, add);
            let hset = redis::cmd("HSET")
                .arg(&versions)
                .arg(member)
                .arg(&ver[..])
                .clone();
            self.bulk_plain(key, hset);
            return;
        }
        let mut versions = Vec::new();
        companions.name(Companion::Members, key, None, &mut versions);
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
        self.removals += 1;
        let mut versions = Vec::new();
        companions.name(Companion::Members, key, None, &mut versions);
        if self.bulk {
            self.bulk_plain(key, redis::cmd(command).arg(key).arg(member).clone());
            self.bulk_plain(key, redis::cmd("HDEL").arg(&versions).arg(member).clone());
            self.bulk_tombstone(key, Some(member), ver, companions);
            return;
        }
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

    /// Raises the high-water key of `group` to `ver`; `create`: also when it is absent (see
    /// `apply.lua`). Needs [`Ops::high_water`].
    pub fn raise_high_water(&mut self, group: u16, ver: &[u8; 32], create: bool) {
        // A group's number is one of its slots (a lane holds the slots equal to it modulo the
        // number of lanes).
        let c = self.call_in(group);
        c.args.push(b"W");
        c.args.push(ver);
        c.args.push(if create { &b"1"[..] } else { b"" });
    }

    /// `invalidate`: the key goes on any change.
    pub fn invalidate(&mut self, key: &[u8]) {
        self.operations += 1;
        self.removals += 1;
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
        c.keys.push(key);
        c.args.push(b"X");
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

    /// With [`Ops::resp`]: the plain commands as RESP, then the script calls (a load's chunk
    /// has none but what the projections write through the script always: json merges and
    /// streams, which loads do not write). `None` without.
    pub fn into_resp(mut self, sha: &str) -> Option<Resp> {
        let mut resp = self.resp.take()?;
        for c in self.commands(sha).0 {
            resp.cmd(&c.cmd);
        }
        Some(resp)
    }

    /// The commands: script calls (by slot) first, then plain commands in the order they came;
    /// and how many script calls lead (each answers how many operations it refused as older).
    pub fn commands(self, sha: &str) -> (Vec<Routed>, usize) {
        let mut out = Vec::new();
        for (group, calls) in self.calls {
            let high_water = self
                .high_water
                .as_ref()
                .and_then(|names| names.get(group as usize));
            for c in calls {
                if c.keys.len() == 0 && c.args.len() == 0 {
                    continue;
                }
                let mut cmd = redis::Cmd::with_capacity(
                    7 + c.keys.len() + c.args.len(),
                    sha.len() + c.keys.bytes.len() + c.args.bytes.len() + 80,
                );
                let keys = c.keys.len() + usize::from(high_water.is_some());
                cmd.arg("EVALSHA").arg(sha).arg(keys);
                if let Some(name) = high_water {
                    cmd.arg(&name[..]);
                }
                for k in c.keys.iter() {
                    cmd.arg(k);
                }
                cmd.arg(self.tombstone_ms)
                    .arg(VERSION_FIELD)
                    .arg(if high_water.is_some() { "1" } else { "" });
                for a in c.args.iter() {
                    cmd.arg(a);
                }
                out.push(Routed { slot: c.slot, cmd });
            }
        }
        let calls = out.len();
        out.extend(self.plain);
        (out, calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command's arguments as text.
    fn words(c: &redis::Cmd) -> Vec<String> {
        c.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[test]
    fn hash_rows_declare_their_fields_once_per_call() {
        let companions = Companions::new("");
        let ver = [b'0'; 32];
        let mut ops = Ops::new(true, 1000, Grouping::ByLane);
        let mut scratch = Vec::new();
        let full: &[(&[u8], &[u8])] = &[(b"a", b"1"), (b"b", b"2")];
        // Keys of one lane (`{x}`), so that all go into one call.
        ops.hash(
            b"{x}1",
            &ver,
            full,
            &[],
            Expire::Never,
            &companions,
            &mut scratch,
        );
        ops.hash(
            b"{x}2",
            &ver,
            full,
            &[],
            Expire::Never,
            &companions,
            &mut scratch,
        );
        // A NULL field, an expiry: the general operation.
        let part: &[(&[u8], &[u8])] = &[(b"a", b"3")];
        let null: &[&[u8]] = &[b"b"];
        ops.hash(
            b"{x}3",
            &ver,
            part,
            null,
            Expire::Never,
            &companions,
            &mut scratch,
        );
        ops.hash(
            b"{x}4",
            &ver,
            full,
            &[],
            Expire::After(5),
            &companions,
            &mut scratch,
        );
        // Other fields: declared again.
        ops.hash(
            b"{x}5",
            &ver,
            part,
            &[],
            Expire::Never,
            &companions,
            &mut scratch,
        );
        let (cmds, calls) = ops.commands("sha");
        assert_eq!((cmds.len(), calls), (1, 1));
        let w = words(&cmds[0].cmd);
        let v = "0".repeat(32);
        let mut want: Vec<String> = ["EVALSHA", "sha", "10"].map(String::from).to_vec();
        for k in 1..=5 {
            want.push(format!("{{x}}{k}"));
            let mut tomb = Vec::new();
            companions.name(
                Companion::Tombstone,
                format!("{{x}}{k}").as_bytes(),
                None,
                &mut tomb,
            );
            want.push(String::from_utf8(tomb).unwrap());
        }
        want.extend(["1000", VERSION_FIELD, ""].map(String::from));
        for a in [
            "F", "2", "a", "b", "f", &v, "1", "2", "f", &v, "1", "2", // two full rows
            "H", &v, "1", "a", "3", "1", "b", "", "", // a NULL
            "H", &v, "2", "a", "1", "b", "2", "0", "px", "5", // an expiry
            "F", "1", "a", "f", &v, "3", // other fields
        ] {
            want.push(a.to_string());
        }
        assert_eq!(w, want);
    }

    #[test]
    fn the_first_warm_writes_a_hash_with_its_version() {
        let companions = Companions::new("");
        let ver = [b'7'; 32];
        let mut ops = Ops::new(false, 1000, Grouping::ByLane);
        let mut scratch = Vec::new();
        let sets: &[(&[u8], &[u8])] = &[(b"a", b"1")];
        let (b, a): (&[&[u8]], &[&[u8]]) = (&[b"b"], &[b"a"]);
        ops.hash(
            b"k",
            &ver,
            sets,
            b,
            Expire::Never,
            &companions,
            &mut scratch,
        );
        ops.hash(b"e", &ver, &[], a, Expire::Never, &companions, &mut scratch);
        let (cmds, calls) = ops.commands("sha");
        assert_eq!(calls, 0);
        let v = "7".repeat(32);
        assert_eq!(
            words(&cmds[0].cmd),
            ["HSET", "k", "a", "1", VERSION_FIELD, &v]
        );
        assert_eq!(words(&cmds[1].cmd), ["HSET", "e", VERSION_FIELD, &v]);
    }
}
