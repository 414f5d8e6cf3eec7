//! The Redis sink: the cache side of every run. [`CacheTarget`] is what every writer shares
//! (the connection, the loaded script, the projections per table); [`CacheChanges`] is the CDC
//! sink of the [`ChangeSink`] contract, applying each hand-off of committed changes at once
//! (write-through), and [`CacheLoad`] warms the projections of one table from the full load's
//! own Arrow batches. Every write is version-guarded (`apply.lua`), so replays and loads
//! racing newer changes are harmless; an applied-position marker in Redis lets a start see
//! that Redis lost writes it had acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::task::JoinSet;

use super::APPLY_SCRIPT;
use super::conn::{ErrorClass, Grouping, LuaScript, Redis, RedisError, Routed};
use super::dump::Listpack;
use super::keys::{Companion, Companions};
use super::ops::Ops;
use super::projection::{Origin, Projector};
use crate::config::{Cache, Pipeline, Projection, ProjectionKind};
use crate::error::Error;
use crate::pg::catalog::TableName;
use crate::pg::types::PgType;
use crate::sink::{ChangeSink, TableChanges, Written};
use crate::state::{Mark, ProjectionCounts, TableRecord};

/// How long a delete's tombstone stays: longer than any replay or re-warm is expected to take.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// A table's projections and its written columns (name, type), in order.
type Projected = (Vec<Projection>, Vec<(String, PgType)>);

/// What every writer to the cache shares.
pub struct CacheTarget {
    redis: Redis,
    script: LuaScript,
    companions: Companions,
    /// Per table key (`schema.table`): its projections and its written columns.
    tables: HashMap<String, Projected>,
    key_prefix: String,
    wait_replicas: u32,
    retries: i64,
    pipeline: String,
    /// The name of the hashes that hold, per table, the last version applied: one per primary
    /// (see [`CacheTarget::markers`]).
    marker: String,
    /// Whether the first warm may send hashes serialized (asked once, see
    /// [`CacheTarget::restore_limits`]).
    restore: tokio::sync::OnceCell<Option<Listpack>>,
    /// A standalone server: the high-water key of each lane (see `apply.lua`), which changes
    /// raise and a load's bulk writes check. `None` on a cluster.
    high_water: Option<Arc<[Vec<u8>]>>,
}

/// How the writes of a batch are guarded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writes {
    /// Plain commands (the first warm of an untouched keyspace); hashes whole by `RESTORE` when
    /// the server allows it.
    Unguarded(Option<Listpack>),
    /// Script calls, each write checked against its key's version.
    Guarded,
    /// Plain commands with their versions, for one transaction that checks the high-water keys
    /// of their lanes (a load: see [`CacheLoad`]).
    Bulk,
}

/// A Redis failure as the pipeline reports it: retryable ones are recoverable.
fn failed(doing: &str, e: RedisError) -> Error {
    use crate::error::{Failure, Kind};
    let kind = if e.retryable() {
        Kind::Recoverable
    } else {
        Kind::Fatal
    };
    Failure::because(kind, doing, e).into()
}

impl CacheTarget {
    /// Connects and loads the script; `columns` gives each projected table's written columns.
    pub async fn connect(
        p: &Pipeline,
        cache: &Cache,
        columns: &HashMap<String, Vec<(String, PgType)>>,
    ) -> Result<Arc<CacheTarget>, Error> {
        let redis = Redis::connect(cache)
            .await
            .map_err(|e| Error::Startup(e.to_string()))?;
        let script = redis
            .load_script(APPLY_SCRIPT)
            .await
            .map_err(|e| Error::Startup(e.to_string()))?;
        let mut tables: HashMap<String, Projected> = HashMap::new();
        for projection in &cache.projections {
            let Some((schema, name)) = projection.table.exact_name() else {
                continue;
            };
            let key = TableName { schema, name }.to_string();
            let cols = columns.get(&key).cloned().unwrap_or_default();
            let entry = tables.entry(key).or_insert_with(|| (Vec::new(), cols));
            entry.0.push(projection.clone());
        }
        let companions = Companions::new(&cache.key_prefix);
        let high_water = redis.direct().then(|| {
            (0..super::conn::STANDALONE_LANES)
                .map(|lane| companions.high_water(lane, &p.name))
                .collect::<Vec<_>>()
                .into()
        });
        Ok(Arc::new(CacheTarget {
            high_water,
            redis,
            script,
            companions,
            tables,
            key_prefix: cache.key_prefix.clone(),
            wait_replicas: cache.wait_replicas,
            retries: p.errors.recoverable_retries,
            pipeline: p.name.clone(),
            marker: format!("{}godwit:applied:", cache.key_prefix),
            restore: tokio::sync::OnceCell::new(),
        }))
    }

    /// Whether the first warm of an untouched keyspace may hand Redis each hash whole
    /// (`RESTORE` of its serialized form, about half the server's work of an `HSET` into a new
    /// key), and up to what size the server keeps a hash as a listpack. Asked once, of a
    /// standalone server only (a cluster's primaries could differ): the server must give its
    /// listpack sizes (Redis 7.0 or later) and read a probe hash back exactly as written (a
    /// server without listpack hashes refuses the payload; an ACL without `restore`, the
    /// command). Otherwise `None`: the warm writes with `HSET`.
    pub async fn restore_limits(&self) -> Option<Listpack> {
        *self.restore.get_or_init(|| self.probe_restore()).await
    }

    async fn probe_restore(&self) -> Option<Listpack> {
        if self.redis.grouping() != Grouping::ByLane {
            return None;
        }
        let config =
            |name: &str| Routed::new(b"", redis::cmd("CONFIG").arg("GET").arg(name).clone());
        let sizes = self
            .redis
            .exec(vec![
                config("hash-max-listpack-entries"),
                config("hash-max-listpack-value"),
            ])
            .await;
        let number =
            |v: &redis::Value| -> Option<usize> { super::conn::config_value(v)?.parse().ok() };
        let limits = match sizes.as_deref() {
            Ok([entries, value]) => match (number(entries), number(value)) {
                (Some(entries), Some(value)) => Listpack { entries, value },
                _ => {
                    tracing::debug!(
                        "the server has no listpack hashes: the first warm writes hashes with HSET"
                    );
                    return None;
                }
            },
            Ok(_) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "the first warm writes hashes with HSET");
                return None;
            }
        };
        let key = format!("{}godwit:probe:{{{}}}", self.key_prefix, self.pipeline).into_bytes();
        let fields: [(&[u8], &[u8]); 2] = [(b"f", b"1"), (b"g", b"two")];
        let mut payload = Vec::new();
        super::dump::hash(&fields, None, &mut payload);
        let restore = redis::cmd("RESTORE")
            .arg(&key)
            .arg(60_000)
            .arg(&payload)
            .arg("REPLACE")
            .clone();
        let read = redis::cmd("HGETALL").arg(&key).clone();
        let got = self
            .redis
            .exec(vec![Routed::new(&key, restore), Routed::new(&key, read)])
            .await;
        let _ = self
            .redis
            .exec(vec![Routed::new(&key, redis::cmd("DEL").arg(&key).clone())])
            .await;
        let back: Vec<Vec<u8>> = match got.as_deref() {
            Ok([_, redis::Value::Array(items)]) => items
                .iter()
                .filter_map(|v| match v {
                    redis::Value::BulkString(b) => Some(b.clone()),
                    _ => None,
                })
                .collect(),
            Ok([_, redis::Value::Map(pairs)]) => pairs
                .iter()
                .flat_map(|(k, v)| [k, v])
                .filter_map(|v| match v {
                    redis::Value::BulkString(b) => Some(b.clone()),
                    _ => None,
                })
                .collect(),
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, "RESTORE refused: the first warm writes hashes with HSET");
                return None;
            }
        };
        let want: Vec<Vec<u8>> = fields
            .iter()
            .flat_map(|(f, v)| [f.to_vec(), v.to_vec()])
            .collect();
        if back != want {
            tracing::debug!(
                "a restored hash did not read back as written: the first warm writes hashes with HSET"
            );
            return None;
        }
        Some(limits)
    }

    /// Whether any projection reads `table`.
    pub fn projects(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }

    /// At the start of a load at `at`: raises every lane's high-water key to just below `at`,
    /// so that the load's bulk writes (at `at`) pass while no change newer than its snapshot
    /// came. `create`: also where a key is absent — right only when no change can race the load
    /// (every version written so far is older than its snapshot). Nothing on a cluster.
    pub async fn raise_high_water(&self, at: Mark, create: bool) -> Result<(), Error> {
        let Some(names) = &self.high_water else {
            return Ok(());
        };
        let below = match at {
            Mark { lsn: 0, seq: 0 } => return Ok(()),
            Mark { lsn, seq: 0 } => Mark {
                lsn: lsn - 1,
                seq: u64::MAX,
            },
            Mark { lsn, seq } => Mark { lsn, seq: seq - 1 },
        };
        let ver = super::projection::version(below);
        let mut ops = self.guarded_ops(true);
        for lane in 0..names.len() as u16 {
            ops.raise_high_water(lane, &ver, create);
        }
        let (commands, _) = ops.commands(self.script.sha());
        self.exec(commands, "setting the cache's high-water keys")
            .await
            .map(|_| ())
    }

    /// Fresh projectors of `table` (each writer binds its own).
    fn projectors(&self, table: &str) -> Vec<Projector> {
        match self.tables.get(table) {
            Some((projections, columns)) => projections
                .iter()
                .map(|c| Projector::new(c.clone(), &self.key_prefix, columns.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Applies `batch` through `projectors`; returns how many operations ran. `guarded`: through
    /// the version guard (false only for the first warm of an untouched keyspace). A TRUNCATE
    /// among CDC rows splits it: the rows before, the truncate, the rows after.
    async fn apply(
        &self,
        projectors: &mut [Projector],
        batch: &RecordBatch,
        images: Option<&RecordBatch>,
        origin: Origin,
        table: &str,
        guarded: bool,
    ) -> Result<u64, Error> {
        let mut ran = 0;
        let mut start = 0;
        // The rows up to each TRUNCATE, the TRUNCATE, and the rows after the last.
        let mut cuts: Vec<(usize, Option<Mark>)> = truncates(batch, origin)
            .into_iter()
            .map(|(row, mark)| (row, Some(mark)))
            .collect();
        cuts.push((batch.num_rows(), None));
        for (end, truncate) in cuts {
            let part = batch.slice(start, end - start);
            let part_images = images.map(|i| i.slice(start, end - start));
            ran += self
                .apply_rows(
                    projectors,
                    &part,
                    part_images.as_ref(),
                    origin,
                    table,
                    guarded,
                )
                .await?;
            if let Some(mark) = truncate {
                ran += self.truncate(projectors, mark).await?;
            }
            start = end + 1;
        }
        Ok(ran)
    }

    /// A TRUNCATE at `mark`: every key (or member) of each projection that is older goes, with a
    /// tombstone; streams and channels without placeholders get a `T` entry.
    async fn truncate(&self, projectors: &[Projector], mark: Mark) -> Result<u64, Error> {
        self.remove_older(projectors, mark, true).await
    }

    /// Whether no key of `table`'s projections exists yet, nor any tombstone: only then may the
    /// first warm of `table` skip the version guard (no newer version can exist). One SCAN per
    /// projection, stopping at the first key found.
    pub async fn untouched(&self, table: &str) -> Result<bool, Error> {
        let Some((projections, _)) = self.tables.get(table) else {
            return Ok(true);
        };
        // The projections' own patterns first: on a warm keyspace the first SCAN page says so.
        let mut patterns: Vec<Vec<u8>> = projections
            .iter()
            .filter(|c| c.kind.warmed())
            .map(|c| key_pattern(&self.key_prefix, &c.key).0)
            .collect();
        let (mut tombstones, _) = key_pattern(&self.key_prefix, "godwit:t:");
        tombstones.push(b'*');
        patterns.push(tombstones);
        for pattern in patterns {
            let found = self
                .redis
                .scan_up_to(&pattern, 1)
                .await
                .map_err(|e| failed("looking for keys the cache already holds", e))?;
            if !found.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// After a guarded warm of `table` at `at`: every key (or member) of its projections that is
    /// older than the warm goes — rows deleted while the cache was not following them. Keys the
    /// warm wrote hold its version and keys changed since hold newer ones: the guard keeps both.
    pub async fn sweep(&self, table: &str, at: Mark) -> Result<u64, Error> {
        let projectors = self.projectors(table);
        self.remove_older(&projectors, at, false).await
    }

    /// Removes every key (or member) of `projectors` older than `mark`; with `entries`, streams
    /// and channels without placeholders get a `T` entry and invalidated keys go (a TRUNCATE).
    /// Returns how many operations took effect.
    async fn remove_older(
        &self,
        projectors: &[Projector],
        mark: Mark,
        entries: bool,
    ) -> Result<u64, Error> {
        let ver = super::projection::version(mark);
        let own = format!("{}godwit:", self.key_prefix).into_bytes();
        // A TRUNCATE (`entries`) is a change; the sweep belongs to a load.
        let mut ops = self.guarded_ops(entries);
        // Full rounds of removals run while the next keys are listed.
        let mut rounds = Rounds::default();
        for p in projectors {
            let c = &p.config;
            if !entries && !c.kind.warmed() {
                continue;
            }
            let (pattern, literal) = key_pattern(&self.key_prefix, &c.key);
            match c.kind {
                ProjectionKind::Stream => {
                    if let Some(k) = &literal {
                        let lsn = crate::pg::lsn::Lsn(mark.lsn).to_string().into_bytes();
                        let entry = vec![(b"op".to_vec(), b"T".to_vec()), (b"lsn".to_vec(), lsn)];
                        ops.stream(k, mark, c.maxlen, entry);
                    }
                    continue;
                }
                ProjectionKind::Publish => {
                    let channel = c.channel.as_deref().unwrap_or_default();
                    if let (_, Some(ch)) = key_pattern(&self.key_prefix, channel) {
                        let lsn = crate::pg::lsn::Lsn(mark.lsn);
                        ops.publish(
                            &ch,
                            format!("{{\"op\":\"T\",\"lsn\":\"{lsn}\"}}").into_bytes(),
                        );
                    }
                    continue;
                }
                _ => {}
            }
            // The keys page by page, so that a large keyspace is never held at once.
            let mut scanner = match &literal {
                Some(_) => None,
                None => Some(
                    rounds
                        .beside(self.redis.scanner(&pattern))
                        .await?
                        .map_err(|e| failed("listing the keys of a table", e))?,
                ),
            };
            let mut single = literal.clone().map(|k| vec![k]);
            loop {
                let keys = match scanner.as_mut() {
                    Some(s) => match rounds
                        .beside(s.next_page())
                        .await?
                        .map_err(|e| failed("listing the keys of a table", e))?
                    {
                        Some(page) => page,
                        None => break,
                    },
                    None => match single.take() {
                        Some(k) => k,
                        None => break,
                    },
                };
                let keys: Vec<Vec<u8>> =
                    keys.into_iter().filter(|k| !k.starts_with(&own)).collect();
                if matches!(
                    c.kind,
                    ProjectionKind::Hash | ProjectionKind::String | ProjectionKind::Json
                ) {
                    // The page's versions are read, and its older keys removed, while the next
                    // pages are listed.
                    if !keys.is_empty() {
                        let page = self.remove_older_keys(c.kind, keys, ver, entries);
                        rounds.push(Box::pin(page)).await?;
                    }
                    continue;
                }
                for k in &keys {
                    if c.kind.has_members() {
                        // Reads the key's members first.
                        rounds
                            .beside(self.remove_key(c.kind, k, &ver, &mut ops))
                            .await??;
                    } else {
                        self.remove_key(c.kind, k, &ver, &mut ops).await?;
                    }
                }
                if ops.operations >= REMOVALS_PER_ROUND {
                    let full = std::mem::replace(&mut ops, self.guarded_ops(entries));
                    rounds.push(Box::pin(self.run_removals(full))).await?;
                }
            }
        }
        rounds.push(Box::pin(self.run_removals(ops))).await?;
        rounds.finish().await
    }

    /// The guarded removal of those of `keys` (of a projection of `kind`: hash, string or json)
    /// older than `ver`; how many took effect.
    async fn remove_older_keys(
        &self,
        kind: ProjectionKind,
        keys: Vec<Vec<u8>>,
        ver: [u8; 32],
        entries: bool,
    ) -> Result<u64, Error> {
        let older = self.older_than(kind, keys, &ver).await?;
        let mut ops = self.guarded_ops(entries);
        for k in &older {
            self.remove_key(kind, k, &ver, &mut ops).await?;
        }
        self.run_removals(ops).await
    }

    /// Of `keys` (of a projection of `kind`: hash, string or json), those whose version is
    /// older than `ver`, or absent, or not one of ours: the others the guarded delete would
    /// refuse anyway, and a plain read of a version costs Redis less than an operation of the
    /// script (which reads it again before it deletes anything).
    async fn older_than(
        &self,
        kind: ProjectionKind,
        keys: Vec<Vec<u8>>,
        ver: &[u8; 32],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut vkey = Vec::new();
        let reads = keys
            .iter()
            .map(|k| {
                let mut read;
                if kind == ProjectionKind::Hash {
                    read = redis::cmd("HGET");
                    read.arg(k).arg(super::ops::VERSION_FIELD);
                } else {
                    self.companions.name(Companion::Version, k, None, &mut vkey);
                    read = redis::cmd("GET");
                    read.arg(&vkey);
                }
                Routed::new(k, read)
            })
            .collect();
        let versions = self
            .exec(reads, "reading the versions of a table's keys")
            .await?;
        Ok(keys
            .into_iter()
            .zip(versions)
            .filter(|(_, v)| match v {
                redis::Value::BulkString(b) => b.len() != ver.len() || b.as_slice() < &ver[..],
                _ => true,
            })
            .map(|(k, _)| k)
            .collect())
    }

    /// Script calls; `high_water`: they raise the high-water keys (changes do, a load's
    /// sweep need not: see [`CacheTarget::encode`]).
    fn guarded_ops(&self, high_water: bool) -> Ops {
        Ops::new(
            true,
            TOMBSTONE_TTL.as_millis() as i64,
            self.redis.grouping(),
        )
        .high_water(self.high_water.clone().filter(|_| high_water))
    }

    /// The guarded removal of key `k` of a projection of `kind` at version `ver` (a collection:
    /// each of its members).
    async fn remove_key(
        &self,
        kind: ProjectionKind,
        k: &[u8],
        ver: &[u8; 32],
        ops: &mut Ops,
    ) -> Result<(), Error> {
        match kind {
            ProjectionKind::Hash => ops.delete(k, None, ver, &self.companions),
            ProjectionKind::String | ProjectionKind::Json => {
                ops.delete(k, Some(Companion::Version), ver, &self.companions)
            }
            ProjectionKind::Invalidate => ops.invalidate(k),
            ProjectionKind::Zset | ProjectionKind::Set | ProjectionKind::Geo => {
                let (read, remove) = match kind {
                    ProjectionKind::Set => ("SMEMBERS", "SREM"),
                    _ => ("ZRANGE", "ZREM"),
                };
                let mut cmd = redis::cmd(read);
                cmd.arg(k);
                if read == "ZRANGE" {
                    cmd.arg(0).arg(-1);
                }
                let members = self
                    .exec(vec![Routed::new(k, cmd)], "reading the members of a key")
                    .await?;
                if let Some(redis::Value::Array(ms)) = members.into_iter().next() {
                    for m in ms {
                        if let redis::Value::BulkString(m) = m {
                            ops.remove_member(k, &m, remove, ver, &self.companions);
                        }
                    }
                }
            }
            ProjectionKind::Stream | ProjectionKind::Publish => {}
        }
        Ok(())
    }

    /// Runs guarded removals; returns how many took effect.
    async fn run_removals(&self, ops: Ops) -> Result<u64, Error> {
        let n = ops.operations;
        if ops.is_empty() {
            return Ok(0);
        }
        let (commands, calls) = ops.commands(self.script.sha());
        let values = self
            .exec(commands, "removing older keys from the cache")
            .await?;
        // Each script call answers how many of its operations the guard refused.
        let refused: u64 = values[..calls]
            .iter()
            .map(|v| match v {
                redis::Value::Int(r) => *r as u64,
                _ => 0,
            })
            .sum();
        Ok(n.saturating_sub(refused))
    }

    /// Applies the operations of rows (no TRUNCATE among them) through `projectors`.
    async fn apply_rows(
        &self,
        projectors: &mut [Projector],
        batch: &RecordBatch,
        images: Option<&RecordBatch>,
        origin: Origin,
        table: &str,
        guarded: bool,
    ) -> Result<u64, Error> {
        let writes = if guarded {
            Writes::Guarded
        } else {
            Writes::Unguarded(None)
        };
        let (commands, count) = self.encode(projectors, (batch, images), origin, table, writes)?;
        if !commands.is_empty() {
            self.exec(commands, "writing to the cache").await?;
        }
        Ok(count)
    }

    /// The commands of rows (no TRUNCATE among them) through `projectors`, and how many
    /// operations they hold.
    fn encode(
        &self,
        projectors: &mut [Projector],
        rows: (&RecordBatch, Option<&RecordBatch>),
        origin: Origin,
        table: &str,
        writes: Writes,
    ) -> Result<(Vec<Routed>, u64), Error> {
        let (batch, images) = rows;
        let ops = self.operations(projectors, batch, images, origin, table, writes, false)?;
        let count = ops.operations;
        Ok((ops.commands(self.script.sha()).0, count))
    }

    /// A load's chunk through `projectors`: in the wire format when the server takes that
    /// ([`Redis::direct`]), otherwise as commands; `None` when it writes nothing.
    fn encode_chunk(
        &self,
        projectors: &mut [Projector],
        chunk: &RecordBatch,
        at: Mark,
        table: &str,
        writes: Writes,
    ) -> Result<Option<Chunk>, Error> {
        let direct = self.redis.direct();
        let origin = Origin::Load(at);
        let ops = self.operations(projectors, chunk, None, origin, table, writes, direct)?;
        if ops.is_empty() {
            return Ok(None);
        }
        let lanes = ops.groups().collect();
        let sha = self.script.sha();
        let commands = if direct {
            Commands::Resp(ops.into_resp(sha).unwrap_or_default())
        } else {
            Commands::Routed(ops.commands(sha).0)
        };
        Ok(Some(Chunk { commands, lanes }))
    }

    /// The operations of rows (no TRUNCATE among them) through `projectors`; `resp`: plain
    /// commands in the wire format.
    #[allow(clippy::too_many_arguments)]
    fn operations(
        &self,
        projectors: &mut [Projector],
        batch: &RecordBatch,
        images: Option<&RecordBatch>,
        origin: Origin,
        table: &str,
        writes: Writes,
        resp: bool,
    ) -> Result<Ops, Error> {
        let (guarded, restore) = match writes {
            Writes::Unguarded(restore) => (false, restore),
            Writes::Guarded | Writes::Bulk => (true, None),
        };
        // Changes raise the high-water keys; a load's writes leave them (the next load's
        // snapshot is newer than this one's anyway).
        let high_water = match origin {
            Origin::Changes => self.high_water.clone(),
            Origin::Load(_) => None,
        };
        let mut ops = Ops::new(
            guarded,
            TOMBSTONE_TTL.as_millis() as i64,
            self.redis.grouping(),
        )
        .restoring(restore)
        .high_water(high_water);
        if writes == Writes::Bulk {
            ops = ops.bulk();
        }
        if resp {
            ops = ops.resp();
        }
        for p in projectors.iter_mut() {
            let skipped = p
                .encode_with_before(batch, images, origin, &self.companions, &mut ops)
                .map_err(|e| Error::Runtime(format!("{table}: cache projection: {e}")))?;
            if skipped > 0 {
                tracing::warn!(table, skipped, key = %p.config.key, "rows without a key (a NULL in a key column) were not written to the cache");
            }
        }
        Ok(ops)
    }

    async fn exec(&self, commands: Vec<Routed>, doing: &str) -> Result<Vec<redis::Value>, Error> {
        self.redis
            .exec_retrying(commands, self.retries, || {
                // A stopping run gives up once its in-flight work must end.
                crate::task::run_context::current().is_hard_stopped()
            })
            .await
            .map_err(|e| failed(doing, e))
    }

    /// The applied-position markers, one per primary so that a shard that lost writes (a
    /// failover to a replica that lagged) shows by itself: `<prefix>godwit:applied:{<pipeline>}`
    /// on a standalone server; on a cluster `…:{<pipeline>/<n>}`, `n` chosen so that the key's
    /// slot is on that primary.
    async fn markers(&self) -> Result<Vec<Vec<u8>>, Error> {
        let pipeline = self.pipeline.as_str();
        if self.redis.grouping() == super::conn::Grouping::ByLane {
            return Ok(vec![format!("{}{{{pipeline}}}", self.marker).into_bytes()]);
        }
        let ranges = self
            .redis
            .primary_slot_ranges()
            .await
            .map_err(|e| failed("reading the cluster's slots", e))?;
        Ok(ranges
            .iter()
            .filter_map(|owned| {
                (0..100_000u32).find_map(|n| {
                    let key = format!("{}{{{pipeline}/{n}}}", self.marker).into_bytes();
                    let s = super::conn::slot(&key);
                    owned
                        .iter()
                        .any(|&(lo, hi)| lo <= s && s <= hi)
                        .then_some(key)
                })
            })
            .collect())
    }

    /// The version of each of `tables` every marker holds (the lowest; `None` when one lacks
    /// it): one `HMGET` per marker.
    async fn applied(
        &self,
        markers: &[Vec<u8>],
        tables: &[&str],
    ) -> Result<Vec<Option<Mark>>, Error> {
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let cmds = markers
            .iter()
            .map(|m| {
                let mut hmget = redis::cmd("HMGET");
                hmget.arg(m);
                for t in tables {
                    hmget.arg(*t);
                }
                Routed::new(m, hmget)
            })
            .collect();
        let values = self
            .exec(cmds, "reading the cache's applied position")
            .await?;
        let mut lowest: Vec<Option<Option<Mark>>> = vec![None; tables.len()];
        for v in &values {
            let redis::Value::Array(items) = v else {
                continue;
            };
            for (low, item) in lowest.iter_mut().zip(items) {
                let at = match item {
                    redis::Value::BulkString(b) => parse_version(b),
                    _ => None,
                };
                *low = Some(low.map_or(at, |l| l.min(at)));
            }
        }
        Ok(lowest.into_iter().map(Option::flatten).collect())
    }

    /// Records `applied` (table, version) in every marker.
    async fn mark_applied(
        &self,
        markers: &[Vec<u8>],
        applied: &HashMap<String, Mark>,
    ) -> Result<(), Error> {
        let cmds = markers
            .iter()
            .map(|m| {
                let mut hset = redis::cmd("HSET");
                hset.arg(m);
                for (table, mark) in applied {
                    hset.arg(table).arg(&super::projection::version(*mark)[..]);
                }
                Routed::new(m, hset)
            })
            .collect();
        self.exec(cmds, "recording the cache's applied position")
            .await
            .map(|_| ())
    }
}

/// The TRUNCATE rows of a CDC batch: position and version.
fn truncates(batch: &RecordBatch, origin: Origin) -> Vec<(usize, Mark)> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Int64Type};
    if matches!(origin, Origin::Load(_)) {
        return Vec::new();
    }
    let schema = batch.schema();
    let op = match schema.fields().first() {
        Some(f) if f.name() == "Op" && f.data_type() == &DataType::Utf8 => {
            batch.column(0).as_string::<i32>()
        }
        _ => return Vec::new(),
    };
    let find = |name: &str| schema.fields().iter().rposition(|f| f.name() == name);
    let (Some(l), Some(q)) = (find("_lsn"), find("_seq")) else {
        return Vec::new();
    };
    let (lsn, seq) = (
        batch.column(l).as_primitive::<Int64Type>(),
        batch.column(q).as_primitive::<Int64Type>(),
    );
    (0..batch.num_rows())
        .filter(|&i| op.value(i) == "T")
        .map(|i| {
            (
                i,
                Mark {
                    lsn: lsn.value(i) as u64,
                    seq: seq.value(i) as u64,
                },
            )
        })
        .collect()
}

/// A key template as a SCAN pattern (placeholders as `*`, glob characters escaped), and the
/// key itself when the template has no placeholder.
pub(crate) fn key_pattern(prefix: &str, template: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    use crate::config::TemplatePart;
    let escape = |s: &str, out: &mut Vec<u8>| {
        for b in s.bytes() {
            if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                out.push(b'\\');
            }
            out.push(b);
        }
    };
    let parts = crate::config::parse_template(template).unwrap_or_default();
    let mut pattern = Vec::new();
    let mut literal = prefix.as_bytes().to_vec();
    let mut has_columns = false;
    escape(prefix, &mut pattern);
    for part in &parts {
        match part {
            TemplatePart::Literal(t) => {
                escape(t, &mut pattern);
                literal.extend_from_slice(t.as_bytes());
            }
            TemplatePart::Column(_) => {
                pattern.push(b'*');
                has_columns = true;
            }
        }
    }
    (pattern, (!has_columns).then_some(literal))
}

/// Guarded removals sent to Redis at once while sweeping.
const REMOVALS_PER_ROUND: u64 = 4096;
/// Rounds of removals in flight while the sweep lists the next keys.
const REMOVAL_ROUNDS_IN_FLIGHT: usize = 4;

/// Rounds of guarded removals in flight (each answers how many took effect), so that Redis
/// removes keys while the next page of keys is listed and turned into operations.
#[derive(Default)]
struct Rounds<'a> {
    pending: FuturesUnordered<BoxFuture<'a, Result<u64, Error>>>,
    done: u64,
}

impl<'a> Rounds<'a> {
    /// Runs `work` while the rounds in flight go on (a round's failure ends it).
    async fn beside<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Error> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return Ok(out),
                Some(r) = self.pending.next(), if !self.pending.is_empty() => self.done += r?,
            }
        }
    }

    /// Starts `round`, first waiting while [`REMOVAL_ROUNDS_IN_FLIGHT`] are.
    async fn push(&mut self, round: BoxFuture<'a, Result<u64, Error>>) -> Result<(), Error> {
        while self.pending.len() >= REMOVAL_ROUNDS_IN_FLIGHT {
            if let Some(r) = self.pending.next().await {
                self.done += r?;
            }
        }
        self.pending.push(round);
        Ok(())
    }

    /// Waits for every round; how many removals took effect in all.
    async fn finish(mut self) -> Result<u64, Error> {
        while let Some(r) = self.pending.next().await {
            self.done += r?;
        }
        Ok(self.done)
    }
}

/// A version (32 hex digits) back to a mark.
fn parse_version(b: &[u8]) -> Option<Mark> {
    let s = std::str::from_utf8(b).ok()?;
    if s.len() != 32 {
        return None;
    }
    Some(Mark {
        lsn: u64::from_str_radix(&s[..16], 16).ok()?,
        seq: u64::from_str_radix(&s[16..], 16).ok()?,
    })
}

/// The CDC side of the cache: committed changes written through at once.
pub struct CacheChanges {
    target: Arc<CacheTarget>,
    projectors: HashMap<String, Vec<Projector>>,
    /// Per table, the last position applied since the last flush.
    applied: HashMap<String, Mark>,
    /// Tables whose cache lost writes it had acknowledged (found at `recover` or a flush).
    lost: Vec<String>,
    /// Per table, the position the marker was last set to by this run.
    marked: HashMap<String, Mark>,
    written: Written,
}

impl CacheChanges {
    pub fn new(target: Arc<CacheTarget>) -> CacheChanges {
        CacheChanges {
            target,
            projectors: HashMap::new(),
            applied: HashMap::new(),
            lost: Vec::new(),
            marked: HashMap::new(),
            written: Written::default(),
        }
    }
}

#[async_trait::async_trait]
impl ChangeSink for CacheChanges {
    fn name(&self) -> &'static str {
        "cache"
    }

    async fn recover(
        &mut self,
        name: &TableName,
        record: Option<&TableRecord>,
    ) -> Result<Option<Mark>, Error> {
        let table = name.to_string();
        let recorded = record.and_then(|r| self.recorded(r));
        // What was sent since the checkpoint comes again (and counts again).
        self.projectors.remove(&table);
        if !self.target.projects(&table) {
            // Nothing of it goes to the cache: it holds whatever the files hold.
            return Ok(record.and_then(|r| r.mark).max(recorded));
        }
        let markers = self.target.markers().await?;
        let applied = self
            .target
            .applied(&markers, &[&table])
            .await?
            .pop()
            .flatten();
        if recorded.is_some() && applied < recorded {
            tracing::warn!(table = %table, "the cache lost writes it had acknowledged (its applied position is behind the checkpoint): the table is warmed again");
            self.lost.push(table);
            return Ok(applied);
        }
        Ok(applied.max(recorded))
    }

    fn recorded(&self, record: &TableRecord) -> Option<Mark> {
        record.cache_mark
    }

    fn record(&mut self, table: &str, record: &mut TableRecord, mark: Option<Mark>) {
        record.cache_mark = mark;
        // What the projectors sent since the last checkpoint joins the recorded counts.
        if let Some(projectors) = self.projectors.get_mut(table) {
            let sent: Vec<ProjectionCounts> = projectors
                .iter_mut()
                .map(|p| {
                    let c = p.recorded_counts();
                    p.counts = (0, 0);
                    c
                })
                .collect();
            ProjectionCounts::add(&mut record.cache_projections, &sent);
        }
    }
    async fn write(&mut self, changes: &[Arc<TableChanges>]) -> Result<(), Error> {
        for c in changes {
            if !self.target.projects(&c.key) {
                self.applied.insert(c.key.clone(), c.changes.last);
                continue;
            }
            let projectors = self
                .projectors
                .entry(c.key.clone())
                .or_insert_with(|| self.target.projectors(&c.key));
            for (i, batch) in c.changes.batches.iter().enumerate() {
                let images = c.changes.before.get(i);
                let n = self
                    .target
                    .apply(projectors, batch, images, Origin::Changes, &c.key, true)
                    .await?;
                self.written.rows += batch.num_rows() as u64;
                self.written.objects += n;
            }
            self.applied.insert(c.key.clone(), c.changes.last);
        }
        Ok(())
    }

    fn immediate(&self) -> bool {
        true
    }

    fn intents(&mut self) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn flush(&mut self) -> Result<Vec<(String, Mark)>, Error> {
        if self.applied.is_empty() {
            return Ok(Vec::new());
        }
        if self.target.wait_replicas > 0 {
            self.target
                .redis
                .wait_replicas(self.target.wait_replicas, Duration::from_secs(5))
                .await
                .map_err(|e| failed("waiting for the cache's replicas", e))?;
        }
        // A marker behind what this run set means Redis lost acknowledged writes since the last
        // flush (a restart without persistence, a failover to a lagging replica).
        let checked: Vec<(&str, Mark)> = self
            .marked
            .iter()
            .filter(|(table, _)| self.applied.contains_key(*table))
            .map(|(table, mark)| (table.as_str(), *mark))
            .collect();
        let names: Vec<&str> = checked.iter().map(|(t, _)| *t).collect();
        // The markers' keys once per flush (on a cluster they come from its slot map).
        let markers = self.target.markers().await?;
        let now = self.target.applied(&markers, &names).await?;
        for ((table, mark), at) in checked.iter().zip(now) {
            if at < Some(*mark) {
                tracing::warn!(table = %table, "the cache lost writes it had acknowledged (its applied position went back): the table is warmed again");
                self.lost.push(table.to_string());
            }
        }
        self.target.mark_applied(&markers, &self.applied).await?;
        self.marked
            .extend(self.applied.iter().map(|(t, m)| (t.clone(), *m)));
        Ok(self.applied.drain().collect())
    }

    fn reset(&mut self) {
        self.applied.clear();
    }

    fn written(&self) -> Written {
        self.written
    }

    fn lost(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lost)
    }
}

/// Warms the projections of one table (or segment) from the full load's batches, at the
/// snapshot's version. Each chunk's commands are sent by a task of their own, which goes on
/// while the next chunks are encoded and while the load waits for its next batch: up to
/// [`LOAD_CHUNKS_IN_FLIGHT`] at once (a load writes each row's keys once, so their order does
/// not matter). Dropping the warm (a stopped load) stops its tasks.
///
/// A guarded warm on a standalone server first sends each chunk as bulk writes in one
/// transaction that checks its lanes' high-water keys (`Redis::exec_if_newer`): below the load's
/// version, no key can hold a newer one, and each write costs Redis what a plain command does.
/// When a check fails (a change newer than the snapshot reached the lane) the chunk, and the rest
/// of the load, go through the script, key by key.
pub struct CacheLoad {
    target: Arc<CacheTarget>,
    table: String,
    projectors: Vec<Projector>,
    at: Mark,
    guarded: bool,
    /// Unguarded: whether hashes go serialized (`None` until the first batch asks).
    restore: Option<Option<Listpack>>,
    /// A key existed already (BUSYKEY): the rest of the load writes with `HSET`.
    busy: Arc<AtomicBool>,
    /// Guarded: whether chunks still go as bulk writes (see above).
    bulk: Arc<AtomicBool>,
    in_flight: JoinSet<Result<(), Error>>,
}

/// Rows of a load encoded into one set of commands.
const LOAD_CHUNK_ROWS: usize = 8192;
/// Chunks of a load being written to the cache at once.
const LOAD_CHUNKS_IN_FLIGHT: usize = 4;

impl CacheLoad {
    /// `None` when no projection reads `table`. `guarded`: false only when no newer version can
    /// exist (the first warm of an untouched keyspace, see [`CacheTarget::untouched`]).
    pub fn new(
        target: &Arc<CacheTarget>,
        table: &str,
        at: Mark,
        guarded: bool,
    ) -> Option<CacheLoad> {
        target.projects(table).then(|| CacheLoad {
            target: target.clone(),
            table: table.to_string(),
            projectors: target.projectors(table),
            at,
            guarded,
            restore: None,
            busy: Arc::default(),
            bulk: Arc::new(AtomicBool::new(guarded && target.high_water.is_some())),
            in_flight: JoinSet::new(),
        })
    }

    /// How this load's next chunk is written.
    async fn writes(&mut self) -> Writes {
        if self.guarded {
            return if self.bulk.load(Ordering::Relaxed) {
                Writes::Bulk
            } else {
                Writes::Guarded
            };
        }
        let restore = match self.restore {
            Some(r) => r,
            None => {
                let r = self.target.restore_limits().await;
                self.restore = Some(r);
                r
            }
        };
        Writes::Unguarded(restore.filter(|_| !self.busy.load(Ordering::Relaxed)))
    }

    /// Encodes `batch` in chunks of [`LOAD_CHUNK_ROWS`] and starts sending each; waits while
    /// too many chunks are in flight (memory stays bounded whatever the batch size).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = LOAD_CHUNK_ROWS.min(batch.num_rows() - offset);
            let chunk = batch.slice(offset, len);
            offset += len;
            let writes = self.writes().await;
            let Some(encoded) = self.target.encode_chunk(
                &mut self.projectors,
                &chunk,
                self.at,
                &self.table,
                writes,
            )?
            else {
                continue;
            };
            while self.in_flight.len() >= LOAD_CHUNKS_IN_FLIGHT {
                if let Some(r) = self.in_flight.join_next().await {
                    chunk_written(r)?;
                }
            }
            let sent = Sent {
                target: self.target.clone(),
                table: self.table.clone(),
                at: self.at,
                chunk,
                busy: self.busy.clone(),
                bulk: self.bulk.clone(),
            };
            self.in_flight
                .spawn(async move { sent.send(encoded, writes).await });
        }
        Ok(())
    }

    /// Waits for every chunk sent; returns what each projection was sent.
    pub async fn finish(&mut self) -> Result<Vec<ProjectionCounts>, Error> {
        while let Some(r) = self.in_flight.join_next().await {
            chunk_written(r)?;
        }
        Ok(self
            .projectors
            .iter()
            .map(|p| p.recorded_counts())
            .collect())
    }
}

/// A load's chunk, encoded.
struct Chunk {
    commands: Commands,
    /// The lanes its bulk writes go to (bulk writes only).
    lanes: Vec<u16>,
}

enum Commands {
    Routed(Vec<Routed>),
    /// In the wire format, for a connection of its own (a standalone server).
    Resp(super::ops::Resp),
}

/// What a chunk's task needs to send it (and to encode it again another way).
struct Sent {
    target: Arc<CacheTarget>,
    table: String,
    at: Mark,
    chunk: RecordBatch,
    busy: Arc<AtomicBool>,
    bulk: Arc<AtomicBool>,
}

const WARMING: &str = "warming the cache";

impl Sent {
    /// The chunk again, written another way, as commands for the shared connection (which
    /// retries; fresh projectors: the counts are the first encoding's).
    async fn again(&self, writes: Writes) -> Result<(), Error> {
        let commands = self.commands(writes)?;
        if commands.is_empty() {
            return Ok(());
        }
        self.target.exec(commands, WARMING).await.map(|_| ())
    }

    /// The chunk encoded again as `writes` says, as commands (fresh projectors: the counts are
    /// the first encoding's).
    fn commands(&self, writes: Writes) -> Result<Vec<Routed>, Error> {
        let mut projectors = self.target.projectors(&self.table);
        let origin = Origin::Load(self.at);
        let rows = (&self.chunk, None);
        let (commands, _) =
            self.target
                .encode(&mut projectors, rows, origin, &self.table, writes)?;
        Ok(commands)
    }

    async fn send(&self, encoded: Chunk, writes: Writes) -> Result<(), Error> {
        let target = &self.target;
        let table = self.table.as_str();
        match (writes, encoded.commands) {
            (Writes::Bulk, Commands::Resp(resp)) => {
                let names = target.high_water.as_deref().unwrap_or_default();
                let watch: Vec<Vec<u8>> = encoded
                    .lanes
                    .iter()
                    .filter_map(|&l| names.get(l as usize).cloned())
                    .collect();
                let ver = super::projection::version(self.at);
                match target.redis.exec_if_newer(watch, ver, resp).await {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => tracing::debug!(
                        table,
                        "a change newer than the load reached the cache: the rest of the warm \
                         goes through the version guard key by key"
                    ),
                    // An ACL without the transaction's commands is worth saying out loud.
                    Err(e) if e.class() == ErrorClass::Permission => tracing::warn!(
                        table,
                        error = %e,
                        "a bulk write was refused: the rest of the warm goes through the version \
                         guard key by key, about twice the work for Redis"
                    ),
                    Err(e) => tracing::debug!(
                        table,
                        error = %e,
                        "a bulk write failed: the rest of the warm goes through the version \
                         guard key by key"
                    ),
                }
                self.bulk.store(false, Ordering::Relaxed);
                self.again(Writes::Guarded).await
            }
            // (No bulk writes without a connection of their own: see `Writes::Bulk`.)
            (Writes::Bulk, Commands::Routed(_)) => self.again(Writes::Guarded).await,
            (_, Commands::Resp(resp)) => match target.redis.exec_resp(resp).await {
                Ok(_) => Ok(()),
                // A key exists already (another projection wrote it, or someone else since the
                // warm began): the chunk again with HSET, which adds its fields to the key (and
                // writes those it restored again, the same); so does the rest of the load.
                Err(e) if e.code() == Some("BUSYKEY") => {
                    self.busy.store(true, Ordering::Relaxed);
                    self.again(Writes::Unguarded(None)).await
                }
                // Anything else: the chunk again on the shared connection, which retries (and
                // meets BUSYKEY there when the failed attempt wrote part of it).
                Err(e) => {
                    tracing::debug!(table, error = %e, "sending a load's chunk failed; sending it again");
                    self.retry(writes).await
                }
            },
            (_, Commands::Routed(commands)) => {
                if writes == Writes::Guarded || writes == Writes::Unguarded(None) {
                    return target.exec(commands, WARMING).await.map(|_| ());
                }
                match target
                    .redis
                    .exec_retrying(commands, target.retries, || {
                        crate::task::run_context::current().is_hard_stopped()
                    })
                    .await
                {
                    Err(e) if e.code() == Some("BUSYKEY") => {
                        self.busy.store(true, Ordering::Relaxed);
                        self.again(Writes::Unguarded(None)).await
                    }
                    other => other.map(|_| ()).map_err(|e| failed(WARMING, e)),
                }
            }
        }
    }

    /// The chunk again on the shared connection, written as `writes` says (a `RESTORE` that
    /// meets an existing key goes on as `HSET`).
    async fn retry(&self, writes: Writes) -> Result<(), Error> {
        let commands = self.commands(writes)?;
        Box::pin(self.send(
            Chunk {
                commands: Commands::Routed(commands),
                lanes: Vec::new(),
            },
            writes,
        ))
        .await
    }
}

/// A chunk's task ended: its own result, or the task's panic as a failure.
fn chunk_written(r: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    r.unwrap_or_else(|e| {
        Err(crate::error::Failure::new(
            crate::error::Kind::Table,
            format!("a cache writer task crashed: {e}"),
        )
        .into())
    })
}
