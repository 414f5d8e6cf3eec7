//! Redis projections end to end: `godwit run --once` warms every projection from the full load
//! and keeps it exact through CDC. Redis is compared, key by key and field by field, with what
//! PostgreSQL itself returns for the same rows — on a standalone server and on a 3-node cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::redis::{KeyValue, TestRedis};
use common::{Work, assert_ok, pg};
use tokio_postgres::Client;

const SCHEMA: &str = "
CREATE TABLE users (
    id int PRIMARY KEY,
    email text NOT NULL,
    name text,
    score numeric(10,2),
    last_login timestamptz,
    tags text[],
    city text,
    lon float8,
    lat float8
);
INSERT INTO users
SELECT i, 'u' || i || '@example.com',
       CASE WHEN i % 7 = 0 THEN NULL ELSE 'User ' || i END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE (i * 1.25)::numeric(10,2) END,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 hour',
       CASE WHEN i % 3 = 0 THEN ARRAY['a', 'b c'] ELSE ARRAY[]::text[] END,
       (ARRAY['Oslo', 'Lima', 'Pune'])[1 + i % 3],
       10 + i * 0.01, 50 + i * 0.01
FROM generate_series(1, 300) i;
-- The set projection's key reads city, which is not the key: its old value on DELETE comes from
-- the whole old row.
ALTER TABLE users REPLICA IDENTITY FULL;
";

fn pipeline(db_url: &str, redis_url: &str, cluster: bool, prefix: &str) -> String {
    format!(
        r#"
name = "cache_{tag}"
mode = "full-load-and-cdc"
[source]
url = "{db_url}"
[tables]
include = ["public.users"]
[target]
url = "file://{{out}}"
[cache]
url = "{redis_url}"
cluster = {cluster}
key_prefix = "{prefix}"
[[cache.projections]]
table = "public.users"
type = "hash"
key = "user:{{id}}"
fields = ["email", "name", "score", "last_login", "tags"]
[[cache.projections]]
table = "public.users"
type = "json"
key = "doc:{{{{{{id}}}}}}"
fields = ["id", "name", "score", "last_login", "tags"]
[[cache.projections]]
table = "public.users"
type = "string"
key = "email:{{id}}"
value = "email"
[[cache.projections]]
table = "public.users"
type = "zset"
key = "board"
member = "{{id}}"
score = "score"
[[cache.projections]]
table = "public.users"
type = "set"
key = "city:{{city}}"
member = "{{id}}"
[[cache.projections]]
table = "public.users"
type = "geo"
key = "places"
member = "{{id}}"
longitude = "lon"
latitude = "lat"
[[cache.projections]]
table = "public.users"
type = "stream"
key = "changes"
maxlen = 100000
"#,
        tag = if cluster { "c" } else { "s" },
    )
}

/// What the projections must hold, computed from PostgreSQL's own values.
#[derive(Debug, PartialEq)]
struct Expected {
    hashes: BTreeMap<String, BTreeMap<String, String>>,
    docs: BTreeMap<String, serde_json::Value>,
    strings: BTreeMap<String, String>,
    board: BTreeMap<String, f64>,
    cities: BTreeMap<String, BTreeSet<String>>,
    places: BTreeMap<String, (f64, f64)>,
}

async fn expected(db: &Client) -> Expected {
    let rows = db
        .query(
            "SELECT id::text, email::text, name::text, score::text, last_login::text, tags::text,
                    city::text, lon, lat, score::float8,
                    (jsonb_build_object(
                        'id', id, 'name', name, 'score', score,
                        'last_login', to_char(last_login AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        'tags', tags))::text
             FROM users",
            &[],
        )
        .await
        .unwrap();
    let mut e = Expected {
        hashes: BTreeMap::new(),
        docs: BTreeMap::new(),
        strings: BTreeMap::new(),
        board: BTreeMap::new(),
        cities: BTreeMap::new(),
        places: BTreeMap::new(),
    };
    for r in rows {
        let id: String = r.get(0);
        let mut h = BTreeMap::new();
        for (i, f) in [
            (1, "email"),
            (2, "name"),
            (3, "score"),
            (4, "last_login"),
            (5, "tags"),
        ] {
            if let Some(v) = r.get::<_, Option<String>>(i) {
                h.insert(f.to_string(), v);
            }
        }
        e.hashes.insert(format!("user:{id}"), h);
        let doc: serde_json::Value = serde_json::from_str(&r.get::<_, String>(10)).unwrap();
        e.docs.insert(format!("doc:{{{id}}}"), doc);
        e.strings.insert(format!("email:{id}"), r.get(1));
        if let Some(score) = r.get::<_, Option<f64>>(9) {
            e.board.insert(id.clone(), score);
        }
        if let Some(city) = r.get::<_, Option<String>>(6) {
            e.cities
                .entry(format!("city:{city}"))
                .or_default()
                .insert(id.clone());
        }
        e.places.insert(id, (r.get(7), r.get(8)));
    }
    e
}

async fn actual(r: &mut TestRedis, prefix: &str) -> Expected {
    let strip = |k: &[u8]| {
        String::from_utf8_lossy(k)
            .strip_prefix(prefix)
            .unwrap()
            .to_string()
    };
    let mut e = Expected {
        hashes: BTreeMap::new(),
        docs: BTreeMap::new(),
        strings: BTreeMap::new(),
        board: BTreeMap::new(),
        cities: BTreeMap::new(),
        places: BTreeMap::new(),
    };
    for k in r.scan(&format!("{prefix}user:*")).await {
        if let KeyValue::Hash(mut h) = r.read_key(&k).await.value {
            // The first warm of an untouched keyspace writes no version; later writes do.
            if let Some(v) = h.remove("_v") {
                assert_eq!(
                    v.len(),
                    32,
                    "version field of {}",
                    String::from_utf8_lossy(&k)
                );
            }
            e.hashes.insert(strip(&k), h);
        }
    }
    for k in r.scan(&format!("{prefix}doc:*")).await {
        if let KeyValue::String(s) = r.read_key(&k).await.value {
            e.docs
                .insert(strip(&k), serde_json::from_slice(&s).unwrap());
        }
    }
    for k in r.scan(&format!("{prefix}email:*")).await {
        if let KeyValue::String(s) = r.read_key(&k).await.value {
            e.strings.insert(strip(&k), String::from_utf8(s).unwrap());
        }
    }
    if let KeyValue::Zset(z) = r.read_key(format!("{prefix}board").as_bytes()).await.value {
        e.board = z.into_iter().collect();
    }
    for k in r.scan(&format!("{prefix}city:*")).await {
        if let KeyValue::Set(s) = r.read_key(&k).await.value {
            e.cities.insert(strip(&k), s);
        }
    }
    if let KeyValue::Geo(g) = r.read_geo(format!("{prefix}places").as_bytes()).await {
        e.places = g.into_iter().collect();
    }
    e
}

/// The keys where two maps differ (at most five), for a readable failure.
fn diff<V: PartialEq + std::fmt::Debug>(
    got: &BTreeMap<String, V>,
    want: &BTreeMap<String, V>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    keys.into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .take(5)
        .map(|k| format!("{k}: redis {:?}, postgres {:?}", got.get(k), want.get(k)))
        .collect()
}

fn assert_same(got: &Expected, want: &Expected, when: &str) {
    let problems = [
        ("hashes", diff(&got.hashes, &want.hashes)),
        ("json documents", diff(&got.docs, &want.docs)),
        ("strings", diff(&got.strings, &want.strings)),
        ("zset", diff(&got.board, &want.board)),
        ("sets", diff(&got.cities, &want.cities)),
    ];
    for (what, p) in &problems {
        assert!(p.is_empty(), "{when}: {what} differ: {p:#?}");
    }
    assert_eq!(
        got.places.keys().collect::<Vec<_>>(),
        want.places.keys().collect::<Vec<_>>(),
        "{when}: geo members"
    );
    for (m, (lon, lat)) in &want.places {
        let (glon, glat) = got.places[m];
        // GEOADD stores a 52-bit geohash: positions come back within a few centimetres.
        assert!(
            (glon - lon).abs() < 1e-5 && (glat - lat).abs() < 1e-5,
            "{when}: geo {m}"
        );
    }
}

async fn scenario(redis_url: &str, cluster: bool, mut r: TestRedis, db_name: &str) {
    let pg = pg();
    let db = pg.fresh_db(db_name).await;
    db.batch_execute(SCHEMA).await.unwrap();
    let prefix = format!("{db_name}:");
    r.delete_matching(&format!("{prefix}*")).await;
    let work = Work::new();
    let path = work.pipeline(&pipeline(&pg.url(db_name), redis_url, cluster, &prefix));
    let run =
        |work: &Work| assert_ok(&work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]));

    run(&work);
    assert_same(
        &actual(&mut r, &prefix).await,
        &expected(&db).await,
        "after the full load",
    );
    // inspect counts each projection's keys and shows a few.
    let shown = assert_ok(&work.godwit(&["inspect", path.to_str().unwrap(), "--rows", "2"], &[]));
    for line in [
        "hash user:{id} of public.users: 300 keys match",
        "zset board of public.users: 1 key match",
        "set city:{city} of public.users: 3 keys match",
    ] {
        assert!(shown.contains(line), "{line} not in: {shown}");
    }
    assert!(shown.contains(&format!("    {prefix}user:1")), "{shown}");

    db.batch_execute(
        "UPDATE users SET name = 'Renamed ' || id, score = score + 1 WHERE id % 4 = 0;
         UPDATE users SET tags = ARRAY['x'], last_login = NULL WHERE id % 9 = 0;
         DELETE FROM users WHERE id % 10 = 3;
         INSERT INTO users (id, email, name, score, city, lon, lat)
             SELECT i, 'new' || i || '@example.com', 'New ' || i, i, 'Oslo', 5, 6
             FROM generate_series(1001, 1040) i;
         UPDATE users SET id = id + 5000 WHERE id IN (11, 12);",
    )
    .await
    .unwrap();
    run(&work);
    assert_same(
        &actual(&mut r, &prefix).await,
        &expected(&db).await,
        "after CDC",
    );
    let status = assert_ok(&work.godwit(&["status", path.to_str().unwrap()], &[]));
    assert!(status.contains("cache: every change up to"), "{status}");
    // Per projection, what was sent: 300 rows warmed; 75 + 33 updates, 40 inserts and the I of
    // two key changes written; 30 deletes and the D of the key changes removed.
    assert!(
        status.contains("cache hash user:{id}: 450 written, 32 removed"),
        "{status}"
    );

    // One stream entry per change, in commit order, ids from (_lsn, _seq).
    let KeyValue::Stream(entries) = r
        .read_key(format!("{prefix}changes").as_bytes())
        .await
        .value
    else {
        panic!("no stream");
    };
    // 75 rows with id % 4 = 0 and 33 with id % 9 = 0 updated, 30 deleted, 40 inserted, and two
    // key changes (a D and an I each).
    let changes = 75 + 33 + 30 + 40 + 2 * 2;
    assert_eq!(entries.len() as i64, changes, "stream entries");

    // Updates that move rows to another set (city is not part of the key): the before image
    // (REPLICA IDENTITY FULL) tells which set each id leaves.
    db.batch_execute(
        "UPDATE users SET city = 'Bergen' WHERE id % 7 = 0;
         UPDATE users SET city = NULL WHERE id % 11 = 0;
         BEGIN; UPDATE users SET city = 'Lima' WHERE id = 14; UPDATE users SET city = 'Oslo' WHERE id = 14; COMMIT;",
    )
    .await
    .unwrap();
    run(&work);
    assert_same(
        &actual(&mut r, &prefix).await,
        &expected(&db).await,
        "after rows moved between sets",
    );

    // A TRUNCATE empties every projection as of its position; rows inserted after it stay.
    db.batch_execute(
        "BEGIN; TRUNCATE users;
         INSERT INTO users (id, email, name, score, city, lon, lat) VALUES
             (7001, 'a@x', 'After', 1.5, 'Lima', 1, 2), (7002, 'b@x', NULL, NULL, 'Oslo', 3, 4);
         COMMIT;
         INSERT INTO users (id, email, city, lon, lat) VALUES (7003, 'c@x', 'Pune', 5, 6);",
    )
    .await
    .unwrap();
    run(&work);
    assert_same(
        &actual(&mut r, &prefix).await,
        &expected(&db).await,
        "after a TRUNCATE",
    );

    // Redis loses its applied position (as after a restart without persistence): the next run
    // sees it behind the checkpoint and warms the table again from a snapshot of its own. It
    // also lost the delete of a row it still shows in every projection (a key or member older
    // than the re-warm, versioned or not): the re-warm's sweep must remove them.
    // One marker per primary: losing any one of them (one shard restarted empty) is enough.
    let markers = r.scan(&format!("{prefix}godwit:applied:*")).await;
    assert_eq!(markers.len(), if cluster { 3 } else { 1 }, "{markers:?}");
    r.query(redis::cmd("DEL").arg(&markers[markers.len() - 1]))
        .await;
    let old_version = "00000000000000010000000000000000";
    for c in [
        redis::cmd("HSET")
            .arg(format!("{prefix}user:999999"))
            .arg("name")
            .arg("ghost")
            .arg("_v")
            .arg(old_version)
            .clone(),
        redis::cmd("SET")
            .arg(format!("{prefix}email:999999"))
            .arg("ghost@example.com")
            .clone(),
        redis::cmd("ZADD")
            .arg(format!("{prefix}board"))
            .arg(1)
            .arg("999999")
            .clone(),
        redis::cmd("SADD")
            .arg(format!("{prefix}city:Ghosttown"))
            .arg("999999")
            .clone(),
    ] {
        r.query(&c).await;
    }
    assert_ne!(
        actual(&mut r, &prefix).await,
        expected(&db).await,
        "the planted keys show before the re-warm"
    );
    run(&work);
    assert_same(
        &actual(&mut r, &prefix).await,
        &expected(&db).await,
        "after the re-warm",
    );
    r.delete_matching(&format!("{prefix}*")).await;
}

#[tokio::test]
async fn projections_follow_the_source_standalone() {
    scenario(
        &common::redis::standalone_url(),
        false,
        common::redis::standalone().await,
        "godwit_cache_s",
    )
    .await;
}

#[tokio::test]
async fn projections_follow_the_source_cluster() {
    scenario(
        &common::redis::cluster_url(),
        true,
        common::redis::cluster().await,
        "godwit_cache_c",
    )
    .await;
}

/// Write-through: with the file sink batching for a minute, a committed change is in Redis
/// within a second or two, long before any CDC file is written.
#[tokio::test]
async fn the_cache_gets_each_commit_before_the_files_flush() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cache_wt").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await
        .unwrap();
    let prefix = "godwit_cache_wt:";
    let mut r = common::redis::standalone().await;
    r.delete_matching(&format!("{prefix}*")).await;
    let work = Work::new();
    let path = work.pipeline(&format!(
        r#"
name = "cache_wt"
mode = "full-load-and-cdc"
[source]
url = "{}"
[tables]
include = ["public.t"]
[target]
url = "file://{{out}}"
cdc_max_batch_interval = "60s"
[cache]
url = "{}"
key_prefix = "{prefix}"
[[cache.projections]]
table = "public.t"
type = "string"
key = "t:{{id}}"
value = "v"
"#,
        pg.url("godwit_cache_wt"),
        common::redis::standalone_url()
    ));
    let child = common::Killed(work.spawn_run(&path));
    let key = format!("{prefix}t:2");
    let wait_for = async |r: &mut TestRedis, key: &str, want: Option<&str>| {
        let started = std::time::Instant::now();
        loop {
            // One GET: the key may go between a TYPE and a read.
            let got = match r.query(redis::cmd("GET").arg(key)).await {
                redis::Value::BulkString(s) => Some(String::from_utf8(s).unwrap()),
                _ => None,
            };
            if got.as_deref() == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "{key} never became {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    // The full load has warmed the cache once row 1 is there.
    wait_for(&mut r, &format!("{prefix}t:1"), Some("a")).await;
    db.batch_execute("INSERT INTO t VALUES (2, 'b')")
        .await
        .unwrap();
    let inserted = wait_for(&mut r, &key, Some("b")).await;
    db.batch_execute("UPDATE t SET v = 'c' WHERE id = 2")
        .await
        .unwrap();
    let updated = wait_for(&mut r, &key, Some("c")).await;
    db.batch_execute("DELETE FROM t WHERE id = 2")
        .await
        .unwrap();
    let deleted = wait_for(&mut r, &key, None).await;
    let cdc_files = common::parquet_files(&work.out().join("public/t"))
        .into_iter()
        .filter(|f| !f.file_name().unwrap().to_string_lossy().contains("LOAD"))
        .count();
    drop(child);
    assert_eq!(cdc_files, 0, "no CDC file yet: the files flush every 60 s");
    for (what, took) in [
        ("insert", inserted),
        ("update", updated),
        ("delete", deleted),
    ] {
        assert!(
            took.as_secs_f64() < 5.0,
            "{what} reached Redis after {took:?}"
        );
    }
    r.delete_matching(&format!("{prefix}*")).await;
}

/// A key template on a non-key column cannot follow deletes under the default replica identity:
/// refused before anything is created, with the fix.
#[tokio::test]
async fn a_template_on_a_column_deletes_do_not_carry_is_refused() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cache_id").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, city text)")
        .await
        .unwrap();
    let work = Work::new();
    let path = work.pipeline(&format!(
        r#"name = "cache_id"
mode = "cdc"
[source]
url = "{}"
[tables]
include = ["public.t"]
[target]
url = "file://{{out}}"
[cache]
url = "{}"
[[cache.projections]]
table = "public.t"
type = "set"
key = "city:{{city}}"
member = "{{id}}"
"#,
        pg.url("godwit_cache_id"),
        common::redis::standalone_url()
    ));
    let out = work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("cache.projections[0].key"), "{text}");
    assert!(
        text.contains("ALTER TABLE \"public\".\"t\" REPLICA IDENTITY FULL"),
        "{text}"
    );
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'godwit_cache_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "nothing created");
}

/// `check` resolves every projection against the catalog and reaches Redis: a column that is
/// not there, a text score and an expiry column that is no time are errors (exit 2); an
/// eviction policy that could drop versions is a warning.
#[tokio::test]
async fn check_reports_projection_problems_and_eviction() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cache_ck").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text, score int, at timestamptz)")
        .await
        .unwrap();
    let redis =
        common::redis::private_redis(common::redis::PrivateOpts { appendonly: false }).await;
    let mut c = TestRedis::Single(common::redis::connect_url(&redis.url()).await);
    c.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("allkeys-lru"),
    )
    .await;
    let work = Work::new();
    let pipeline = |projections: &str| {
        format!(
            r#"name = "cache_ck"
mode = "full-load"
[source]
url = "{}"
[tables]
include = ["public.t"]
[target]
url = "file://{{out}}"
[cache]
url = "{}"
{projections}"#,
            pg.url("godwit_cache_ck"),
            redis.url()
        )
    };
    let good = work.pipeline(&pipeline(
        "[[cache.projections]]\ntable = \"public.t\"\ntype = \"zset\"\nkey = \"b\"\nmember = \"{id}\"\nscore = \"score\"\n",
    ));
    let out = work.godwit(&["check", good.to_str().unwrap()], &[]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("zset b of public.t"), "{text}");
    assert!(text.contains("maxmemory-policy allkeys-lru"), "{text}");

    let bad = work.pipeline(&pipeline(
        "[[cache.projections]]\ntable = \"public.t\"\ntype = \"hash\"\nkey = \"u:{id}\"\nfields = [\"name\", \"nope\"]\nttl_column = \"name\"\n\
         [[cache.projections]]\ntable = \"public.t\"\ntype = \"zset\"\nkey = \"b\"\nmember = \"{id}\"\nscore = \"name\"\n",
    ));
    let out = work.godwit(&["check", bad.to_str().unwrap()], &[]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("cache.projections[0].fields: column \"nope\""),
        "{text}"
    );
    assert!(
        text.contains(
            "cache.projections[0].ttl_column: column \"name\" is Utf8, not a timestamp or date"
        ),
        "{text}"
    );
    assert!(
        text.contains("cache.projections[1].score: column \"name\" is Utf8, not a number"),
        "{text}"
    );
}

/// A TOASTed column PostgreSQL does not send on UPDATE (default replica identity) keeps its
/// cached value: hash fields are left alone, json documents are merged.
#[tokio::test]
async fn unsent_toasted_values_keep_their_cached_value() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cache_toast").await;
    db.batch_execute(
        "CREATE TABLE d (id int PRIMARY KEY, n int, big text);
         INSERT INTO d SELECT i, i,
             (SELECT string_agg(md5(random()::text || i || g), '') FROM generate_series(1, 300) g)
         FROM generate_series(1, 20) i;",
    )
    .await
    .unwrap();
    let prefix = "godwit_cache_toast:";
    let mut r = common::redis::standalone().await;
    r.delete_matching(&format!("{prefix}*")).await;
    let work = Work::new();
    let path = work.pipeline(&format!(
        r#"name = "cache_toast"
mode = "full-load-and-cdc"
[source]
url = "{}"
[tables]
include = ["public.d"]
[target]
url = "file://{{out}}"
[cache]
url = "{}"
key_prefix = "{prefix}"
[[cache.projections]]
table = "public.d"
type = "json"
key = "j:{{id}}"
fields = ["n", "big"]
[[cache.projections]]
table = "public.d"
type = "hash"
key = "h:{{id}}"
fields = ["n", "big"]
"#,
        pg.url("godwit_cache_toast"),
        common::redis::standalone_url()
    ));
    let run = || assert_ok(&work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]));
    run();
    db.batch_execute("UPDATE d SET n = n * 10 WHERE id <= 10")
        .await
        .unwrap();
    run();
    let cdc = common::replay::cdc_rows(&work.out().join("public/d"));
    assert!(
        cdc.iter()
            .any(|(_, _, _, _, unchanged)| unchanged == &["big".to_string()]),
        "the updates did not send big (the test needs an unsent TOASTed value)"
    );
    for row in db.query("SELECT id, n, big FROM d", &[]).await.unwrap() {
        let (id, n, big): (i32, i32, String) = (row.get(0), row.get(1), row.get(2));
        let KeyValue::String(doc) = r.read_key(format!("{prefix}j:{id}").as_bytes()).await.value
        else {
            panic!("j:{id} missing");
        };
        let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(doc, serde_json::json!({"n": n, "big": big}), "j:{id}");
        let KeyValue::Hash(h) = r.read_key(format!("{prefix}h:{id}").as_bytes()).await.value else {
            panic!("h:{id} missing");
        };
        assert_eq!(h.get("n"), Some(&n.to_string()), "h:{id}");
        assert_eq!(h.get("big"), Some(&big), "h:{id}");
    }
    r.delete_matching(&format!("{prefix}*")).await;
}
