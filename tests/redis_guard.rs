//! The Redis sink's guarded writes against real servers (standalone and a 3-node cluster):
//! committed changes become projection writes; a replay of older changes, or a load racing
//! newer ones, never regresses a key, and a delete's tombstone stops a replay from bringing a
//! key back. Rows are built here in the CDC layout the sink receives.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use common::redis::{KeyValue, TestRedis};
use godwit::pg::types::PgType;
use godwit::sink::redis::dump::Listpack;
use godwit::sink::redis::keys::Companions;
use godwit::sink::redis::ops::Ops;
use godwit::sink::redis::projection::{Origin, Projector};
use godwit::sink::redis::{APPLY_SCRIPT, Redis};
use godwit::state::Mark;

const PIPELINE: &str = r#"
name = "guard"
mode = "cdc"
[source]
url = "postgres://u@localhost/db"
[tables]
include = ["public.users"]
[target]
url = "file:///tmp/guard-unused"
[cache]
url = "redis://127.0.0.1:1"
key_prefix = "g:"
[[cache.projections]]
table = "public.users"
type = "hash"
key = "user:{id}"
fields = ["name", "score"]
[[cache.projections]]
table = "public.users"
type = "string"
key = "name:{{{id}}}:n"
value = "name"
[[cache.projections]]
table = "public.users"
type = "zset"
key = "board"
member = "{id}"
score = "score"
[[cache.projections]]
table = "public.users"
type = "stream"
key = "changes"
maxlen = 1000
"#;

/// One change: (op, id, name, score, lsn, seq).
type Change = (
    &'static str,
    i64,
    Option<&'static str>,
    Option<f64>,
    i64,
    i64,
);

fn batch(rows: &[Change]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("Op", DataType::Utf8, false),
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("_lsn", DataType::Int64, false),
        Field::new("_seq", DataType::Int64, false),
        Field::new(
            "_unchanged",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
    ]));
    let mut unchanged = ListBuilder::new(StringBuilder::new());
    for _ in rows {
        unchanged.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| Some(r.0)).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| Some(r.1)).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.2).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| r.3).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| Some(r.4)).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| Some(r.5)).collect::<Int64Array>()),
        Arc::new(unchanged.finish()),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

struct Sink {
    redis: Redis,
    sha: String,
    projectors: Vec<Projector>,
    companions: Companions,
    /// The lanes' high-water keys (standalone only), raised by changes.
    high_water: Option<Arc<[Vec<u8>]>>,
}

impl Sink {
    async fn new(url: &str, cluster: bool) -> Sink {
        let p = godwit::config::parse(PIPELINE, "guard.toml").unwrap();
        let cache = p.cache.unwrap();
        let redis = Redis::connect(&common::redis::cache(url, cluster, None))
            .await
            .unwrap();
        let sha = redis
            .load_script(APPLY_SCRIPT)
            .await
            .unwrap()
            .sha()
            .to_string();
        let columns = vec![
            ("id".to_string(), pg_type(20)),
            ("name".to_string(), pg_type(25)),
            ("score".to_string(), pg_type(701)),
        ];
        let projectors = cache
            .projections
            .into_iter()
            .map(|c| Projector::new(c, &cache.key_prefix, columns.clone()))
            .collect();
        let companions = Companions::new(&cache.key_prefix);
        let high_water = (!cluster).then(|| {
            (0..godwit::sink::redis::conn::STANDALONE_LANES)
                .map(|lane| companions.high_water(lane, "guard"))
                .collect::<Vec<_>>()
                .into()
        });
        Sink {
            redis,
            sha,
            projectors,
            companions,
            high_water,
        }
    }

    /// Sets every lane's high-water key to `at` (as a load that no change races does).
    async fn set_high_water(&mut self, at: Mark) {
        let names = self.high_water.clone().expect("standalone");
        let mut ops = Ops::new(true, 60_000, self.redis.grouping()).high_water(Some(names.clone()));
        for lane in 0..names.len() as u16 {
            ops.raise_high_water(lane, &godwit::sink::redis::projection::version(at), true);
        }
        let (commands, _) = ops.commands(&self.sha);
        self.redis.exec(commands).await.unwrap();
    }

    /// A load's rows at `at` as bulk writes in one transaction that checks the high-water keys
    /// of their lanes: whether it ran.
    async fn bulk_load(&mut self, b: &RecordBatch, at: Mark) -> bool {
        let mut ops = Ops::new(true, 60_000, self.redis.grouping()).bulk().resp();
        for p in &mut self.projectors {
            p.encode(b, Origin::Load(at), &self.companions, &mut ops)
                .unwrap();
        }
        let names = self.high_water.clone().unwrap_or_else(|| Vec::new().into());
        let watch: Vec<Vec<u8>> = ops
            .groups()
            .filter_map(|g| names.get(g as usize).cloned())
            .collect();
        let resp = ops.into_resp(&self.sha).unwrap();
        if !self.redis.direct() {
            return false;
        }
        let ver = godwit::sink::redis::projection::version(at);
        self.redis
            .exec_if_newer(watch, ver, resp)
            .await
            .unwrap()
            .is_some()
    }

    /// Writes `b`; returns how many operations the guard refused.
    async fn write(&mut self, b: &RecordBatch, origin: Origin, guarded: bool) -> i64 {
        self.write_restoring(b, origin, guarded, None).await
    }

    /// [`Sink::write`], unguarded hashes that fit `restore` going whole (`RESTORE`).
    async fn write_restoring(
        &mut self,
        b: &RecordBatch,
        origin: Origin,
        guarded: bool,
        restore: Option<Listpack>,
    ) -> i64 {
        let high_water = match origin {
            Origin::Changes => self.high_water.clone(),
            Origin::Load(_) => None,
        };
        let mut ops = Ops::new(guarded, 60_000, self.redis.grouping())
            .restoring(restore)
            .high_water(high_water);
        for p in &mut self.projectors {
            p.encode(b, origin, &self.companions, &mut ops).unwrap();
        }
        let (commands, calls) = ops.commands(&self.sha);
        let values = self.redis.exec(commands).await.unwrap();
        values[..calls]
            .iter()
            .map(|v| match v {
                redis::Value::Int(n) => *n,
                _ => 0,
            })
            .sum()
    }
}

/// The type of a built-in PostgreSQL type oid (int8 20, text 25, float8 701).
fn pg_type(oid: u32) -> PgType {
    godwit::pg::types::resolve(oid, -1, 0, godwit::pg::types::NumericAs::Decimal, &|_| None)
}

async fn hash(r: &mut TestRedis, key: &str) -> BTreeMap<String, String> {
    match r.read_key(key.as_bytes()).await.value {
        KeyValue::Hash(h) => h.into_iter().filter(|(f, _)| f != "_v").collect(),
        KeyValue::None => BTreeMap::new(),
        other => panic!("{key}: {other:?}"),
    }
}

async fn string(r: &mut TestRedis, key: &str) -> Option<String> {
    match r.read_key(key.as_bytes()).await.value {
        KeyValue::String(s) => Some(String::from_utf8(s).unwrap()),
        KeyValue::None => None,
        other => panic!("{key}: {other:?}"),
    }
}

async fn board(r: &mut TestRedis) -> Vec<(String, f64)> {
    match r.read_key(b"g:board").await.value {
        KeyValue::Zset(z) => z,
        KeyValue::None => Vec::new(),
        other => panic!("board: {other:?}"),
    }
}

async fn stream_ids(r: &mut TestRedis) -> Vec<String> {
    match r.read_key(b"g:changes").await.value {
        KeyValue::Stream(s) => s.into_iter().map(|(id, _)| id).collect(),
        KeyValue::None => Vec::new(),
        other => panic!("changes: {other:?}"),
    }
}

/// Everything the scenario's projections hold.
type State = (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    Option<String>,
    Option<String>,
    Vec<(String, f64)>,
    Vec<String>,
);

async fn state(r: &mut TestRedis) -> State {
    (
        hash(r, "g:user:1").await,
        hash(r, "g:user:2").await,
        hash(r, "g:user:3").await,
        string(r, "g:name:{1}:n").await,
        string(r, "g:name:{2}:n").await,
        board(r).await,
        stream_ids(r).await,
    )
}

/// Users 1 and 2 as a re-warm leaves them.
type Rewarmed = (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    Option<String>,
    Option<String>,
    Vec<(String, f64)>,
);

async fn rewarmed(r: &mut TestRedis) -> Rewarmed {
    (
        hash(r, "g:user:1").await,
        hash(r, "g:user:2").await,
        string(r, "g:name:{1}:n").await,
        string(r, "g:name:{2}:n").await,
        board(r).await,
    )
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn scenario(url: &str, cluster: bool, mut r: TestRedis) {
    r.delete_matching("g:*").await;
    let mut sink = Sink::new(url, cluster).await;
    // The first warm of an empty keyspace: plain writes at the snapshot's version (the hashes
    // whole, by RESTORE; one too large for the listpack sizes given here by HSET).
    let load = batch(&[
        ("I", 1, Some("ann"), Some(10.0), 0, 0),
        ("I", 2, Some("bob"), Some(20.0), 0, 0),
    ]);
    let long = Some("a name longer than the listpack's values");
    let first = batch(&[
        ("I", 1, Some("ann"), Some(10.0), 0, 0),
        ("I", 2, Some("bob"), Some(20.0), 0, 0),
        ("I", 4, long, Some(1.0), 0, 0),
    ]);
    let at = Mark { lsn: 100, seq: 0 };
    let limits = Listpack {
        entries: 128,
        value: 32,
    };
    assert_eq!(
        sink.write_restoring(&first, Origin::Load(at), false, Some(limits))
            .await,
        0
    );
    assert_eq!(
        hash(&mut r, "g:user:1").await,
        map(&[("name", "ann"), ("score", "10")])
    );
    assert_eq!(
        hash(&mut r, "g:user:4").await,
        map(&[
            ("name", "a name longer than the listpack's values"),
            ("score", "1")
        ])
    );
    for key in ["g:user:1", "g:user:2", "g:user:4"] {
        assert_eq!(
            r.query(redis::cmd("HGET").arg(key).arg("_v")).await,
            redis::Value::BulkString(b"00000000000000640000000000000000".to_vec()),
            "{key}: the warm's version"
        );
    }
    // Row 4 (only in the first warm) served its purpose: gone again (unguarded, it left no
    // companions).
    for key in ["g:user:4", "g:name:{4}:n"] {
        r.query(redis::cmd("DEL").arg(key)).await;
    }
    r.query(redis::cmd("ZREM").arg("g:board").arg("4")).await;
    assert_eq!(string(&mut r, "g:name:{2}:n").await.as_deref(), Some("bob"));
    assert_eq!(
        board(&mut r).await,
        [("1".into(), 10.0), ("2".into(), 20.0)]
    );
    assert!(
        stream_ids(&mut r).await.is_empty(),
        "a load writes no stream entries"
    );

    if !cluster {
        // The load's end leaves the high-water keys below the snapshot (as the next load's
        // start would).
        sink.set_high_water(Mark { lsn: 99, seq: 0 }).await;
    }

    // Changes after the snapshot: an update, a delete, a new row, a NULL score.
    let changes = batch(&[
        ("U", 1, Some("anne"), Some(11.5), 200, 2),
        ("D", 2, None, None, 200, 4),
        ("I", 3, Some("cy"), None, 300, 2),
    ]);
    assert_eq!(sink.write(&changes, Origin::Changes, true).await, 0);
    let after = state(&mut r).await;
    assert_eq!(after.0, map(&[("name", "anne"), ("score", "11.5")]));
    assert!(after.1.is_empty(), "deleted");
    assert_eq!(after.2, map(&[("name", "cy")]), "a NULL field is absent");
    assert_eq!(after.3.as_deref(), Some("anne"));
    assert_eq!(after.4, None);
    assert_eq!(
        after.5,
        [("1".into(), 11.5)],
        "NULL score: not on the board"
    );
    assert_eq!(after.6, ["200-2", "200-4", "300-2"]);

    if cluster {
        assert!(
            !sink.bulk_load(&load, Mark { lsn: 400, seq: 0 }).await,
            "no bulk writes on a cluster"
        );
    } else {
        // The changes raised the high-water keys of their lanes: bulk writes of an older load
        // are refused whole, nothing written; a racing load goes key by key (below).
        let hw: Vec<redis::Value> = {
            let mut got = Vec::new();
            for name in sink.high_water.clone().unwrap().iter() {
                got.push(r.query(redis::cmd("GET").arg(&name[..])).await);
            }
            got
        };
        assert!(
            hw.contains(&redis::Value::BulkString(
                b"000000000000012C0000000000000002".to_vec()
            )),
            "the newest change (300/2) raised its lane's high-water key: {hw:?}"
        );
        assert!(
            !sink.bulk_load(&load, Mark { lsn: 150, seq: 0 }).await,
            "an older load's bulk writes are refused"
        );
        let untouched = state(&mut r).await;
        assert_eq!(untouched, after, "a refused transaction writes nothing");
    }

    // A replay of the same changes and a load racing them (older version): nothing moves back,
    // the deleted row does not come back, the stream gets no second copy.
    let refused = sink.write(&changes, Origin::Changes, true).await;
    assert!(refused >= 7, "replayed writes refused: {refused}");
    let refused = sink
        .write(&load, Origin::Load(Mark { lsn: 150, seq: 0 }), true)
        .await;
    assert!(refused >= 6, "older load refused: {refused}");
    let again = state(&mut r).await;
    assert_eq!(again, after);

    // A load newer than the delete writes the row again (a re-warm after the fact): key by
    // key, and (standalone) as bulk writes once the high-water keys are below it.
    sink.write(&load, Origin::Load(Mark { lsn: 400, seq: 0 }), true)
        .await;
    let want = (
        map(&[("name", "ann"), ("score", "10")]),
        map(&[("name", "bob"), ("score", "20")]),
        Some("ann".to_string()),
        Some("bob".to_string()),
        vec![("1".to_string(), 10.0), ("2".to_string(), 20.0)],
    );
    assert_eq!(rewarmed(&mut r).await, want);
    if !cluster {
        // Changes again (user 1 renamed, user 2 deleted), then a newer load in bulk: it writes
        // every key, and its versions, as the script would have.
        let changes = batch(&[
            ("U", 1, Some("zed"), Some(1.0), 500, 1),
            ("D", 2, None, None, 500, 2),
        ]);
        sink.write(&changes, Origin::Changes, true).await;
        assert!(hash(&mut r, "g:user:2").await.is_empty());
        assert!(
            !sink.bulk_load(&load, Mark { lsn: 450, seq: 0 }).await,
            "older than the changes: refused"
        );
        sink.set_high_water(Mark { lsn: 599, seq: 0 }).await;
        assert!(sink.bulk_load(&load, Mark { lsn: 600, seq: 0 }).await);
        assert_eq!(rewarmed(&mut r).await, want);
        assert_eq!(
            r.query(redis::cmd("HGET").arg("g:user:2").arg("_v")).await,
            redis::Value::BulkString(b"00000000000002580000000000000000".to_vec()),
            "the bulk write's version"
        );
        // …so that a replay of the changes after it is refused, key by key.
        assert!(sink.write(&changes, Origin::Changes, true).await >= 2);
        assert_eq!(rewarmed(&mut r).await, want);
    }
    r.delete_matching("g:*").await;
}

#[tokio::test]
async fn replays_and_racing_loads_never_regress_standalone() {
    let url = common::redis::standalone_url();
    scenario(&url, false, common::redis::standalone().await).await;
    a_call_that_fails_half_way_still_raises_its_high_water_key().await;
}

#[tokio::test]
async fn replays_and_racing_loads_never_regress_cluster() {
    let url = common::redis::cluster_url();
    scenario(&url, true, common::redis::cluster().await).await;
}

/// A script call that fails half way (here a score Redis refuses) keeps the writes before the
/// failure, as Redis does: its lane's high-water key still covers them, so a bulk load older
/// than those writes is refused. (Standalone: after the scenario, on the same keys.)
async fn a_call_that_fails_half_way_still_raises_its_high_water_key() {
    use godwit::sink::redis::ops::Expire;
    use godwit::sink::redis::projection::version;
    let url = common::redis::standalone_url();
    let mut r = common::redis::standalone().await;
    r.delete_matching("g:*").await;
    let mut sink = Sink::new(&url, false).await;
    sink.set_high_water(Mark { lsn: 99, seq: 0 }).await;
    let names = sink.high_water.clone().unwrap();
    // Two keys of one lane (one hash tag): a hash written, then a member Redis refuses.
    let (hash_key, board) = (b"g:{x}a".as_slice(), b"g:{x}board".as_slice());
    let lane =
        godwit::sink::redis::conn::slot(hash_key) % godwit::sink::redis::conn::STANDALONE_LANES;
    let mut ops = Ops::new(true, 60_000, sink.redis.grouping()).high_water(Some(names.clone()));
    let mut scratch = Vec::new();
    let fields: &[(&[u8], &[u8])] = &[(b"name", b"ann")];
    let written = version(Mark { lsn: 700, seq: 1 });
    ops.hash(
        hash_key,
        &written,
        fields,
        &[],
        Expire::Never,
        &sink.companions,
        &mut scratch,
    );
    ops.add_member(
        board,
        b"m",
        "ZADD",
        vec![b"not a number".to_vec()],
        &version(Mark { lsn: 700, seq: 2 }),
        &sink.companions,
    );
    let (commands, calls) = ops.commands(&sink.sha);
    assert_eq!(calls, 1, "one call for the lane");
    let err = sink.redis.exec(commands).await.unwrap_err();
    assert!(err.to_string().contains("float"), "{err}");
    assert_eq!(
        hash(&mut r, "g:{x}a").await,
        map(&[("name", "ann")]),
        "the write before the failure stays"
    );
    assert_eq!(
        r.query(redis::cmd("GET").arg(&names[lane as usize][..]))
            .await,
        redis::Value::BulkString(written.to_vec()),
        "the high-water key covers it"
    );
    // A load older than that write cannot overwrite the key in bulk.
    let mut load = Ops::new(true, 60_000, sink.redis.grouping()).bulk().resp();
    let old: &[(&[u8], &[u8])] = &[(b"name", b"old")];
    load.hash(
        hash_key,
        &version(Mark { lsn: 650, seq: 0 }),
        old,
        &[],
        Expire::Never,
        &sink.companions,
        &mut scratch,
    );
    let watch = vec![names[lane as usize].clone()];
    let resp = load.into_resp(&sink.sha).unwrap();
    let ran = sink
        .redis
        .exec_if_newer(watch, version(Mark { lsn: 650, seq: 0 }), resp)
        .await
        .unwrap();
    assert_eq!(ran, None);
    assert_eq!(hash(&mut r, "g:{x}a").await, map(&[("name", "ann")]));
    r.delete_matching("g:*").await;
}
