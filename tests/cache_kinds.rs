//! Redis projection kinds and options end to end, against the real services: `ttl` and
//! `ttl_column` expiries (on the keys and on the version companions of `string`/`json`),
//! `invalidate`, `publish`, and a whole pipeline over TLS with the README's least-privilege ACL
//! user. Every expectation is computed from what PostgreSQL itself returns for the same rows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::{KeyValue, TestRedis};
use common::{Work, assert_ok, pg};
use futures_util::StreamExt;
use redis::Value;
use tokio_postgres::Client;

/// A `full-load-and-cdc` pipeline over `tables` of `db_url`, writing Parquet files and the cache
/// described by `cache` (the `[cache]` keys) and `projections` (`[[cache.projections]]`
/// sections).
fn pipeline(name: &str, db_url: &str, tables: &[&str], cache: &str, projections: &str) -> String {
    let include = tables
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"name = "{name}"
mode = "full-load-and-cdc"
[source]
url = "{db_url}"
[tables]
include = [{include}]
[target]
url = "file://{{out}}"
[cache]
{cache}
{projections}"#
    )
}

/// The key prefix of test database `name`, and the shared standalone Redis with none of its keys.
async fn standalone_for(name: &str) -> (String, common::redis::TestRedis) {
    let prefix = format!("{name}:");
    let mut r = common::redis::standalone().await;
    r.delete_matching(&format!("{prefix}*")).await;
    (prefix, r)
}

/// A pipeline over `tables` of test database `name` into the shared standalone Redis, its keys
/// under `<name>:`.
fn standalone_pipeline(
    work: &Work,
    db_url: &str,
    name: &str,
    tables: &[&str],
    projections: &str,
) -> std::path::PathBuf {
    work.pipeline(&pipeline(
        name.trim_start_matches("godwit_"),
        db_url,
        tables,
        &format!(
            "url = \"{}\"\nkey_prefix = \"{name}:\"",
            common::redis::standalone_url()
        ),
        projections,
    ))
}

fn run_once(work: &Work, path: &Path) -> String {
    assert_ok(&work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn int(r: &mut TestRedis, cmd: &redis::Cmd) -> i64 {
    match r.query(cmd).await {
        Value::Int(i) => i,
        other => panic!("{cmd:?} gave {other:?}"),
    }
}

async fn pttl(r: &mut TestRedis, key: &str) -> i64 {
    int(r, redis::cmd("PTTL").arg(key)).await
}

async fn pexpiretime(r: &mut TestRedis, key: &str) -> i64 {
    int(r, redis::cmd("PEXPIRETIME").arg(key)).await
}

/// The version companions (`<prefix>godwit:v:{tag}:<key>`) under `prefix`, by the key they
/// belong to (without the prefix). Found by SCAN, independent of how godwit names the tag.
async fn version_keys(r: &mut TestRedis, prefix: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for k in r.scan(&format!("{prefix}godwit:v:*")).await {
        let k = String::from_utf8(k).unwrap();
        let rest = k.strip_prefix(&format!("{prefix}godwit:v:")).unwrap();
        let (_, user_key) = rest.split_once("}:").expect("a {tag}: in a version key");
        out.insert(user_key.to_string(), k.clone());
    }
    out
}

/// The transaction id of the next write: rows with `xmin` at or above it were written after.
async fn xid_mark(db: &Client) -> i64 {
    db.query_one("SELECT (txid_current() % 4294967296)::int8 + 1", &[])
        .await
        .unwrap()
        .get(0)
}

/// Ids of `table`'s rows written (inserted or updated) since `mark`, as PostgreSQL says.
async fn written_since(db: &Client, table: &str, mark: i64) -> BTreeSet<i32> {
    db.query(
        &format!("SELECT id FROM {table} WHERE xmin::text::int8 >= $1"),
        &[&mark],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn ids(db: &Client, table: &str) -> BTreeSet<i32> {
    db.query(&format!("SELECT id FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

// ---------------------------------------------------------------- ttl and ttl_column

const TTL_MS: i64 = 3_600_000;
/// How long a run may take between writing a key and the test reading its PTTL.
const RUN_SLACK_MS: i64 = 120_000;

/// A row of `s` as PostgreSQL has it: value and expiry in ms since the epoch (floored, as
/// PEXPIREAT takes whole milliseconds).
struct TtlRow {
    v: String,
    exp_ms: Option<i64>,
}

async fn ttl_rows(db: &Client) -> BTreeMap<i32, TtlRow> {
    db.query(
        "SELECT id, v, floor(extract(epoch FROM exp) * 1000)::int8 FROM s",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            TtlRow {
                v: r.get(1),
                exp_ms: r.get(2),
            },
        )
    })
    .collect()
}

/// Checks every projection of `s` against PostgreSQL. `hash_fresh`: ids whose hash must have
/// been written by the last run (PTTL near the full hour); the others must still have the
/// shorter PTTL the test gave them (`Some(ms)`), or there are no others (`None`).
async fn check_ttl(
    r: &mut TestRedis,
    db: &Client,
    prefix: &str,
    when: &str,
    hash_fresh: &BTreeSet<i32>,
    others_at_most: Option<i64>,
) {
    let rows = ttl_rows(db).await;
    let versions = version_keys(r, prefix).await;
    let now = now_ms();
    let (mut live, mut past, mut never) = (0, 0, 0);
    for (id, row) in &rows {
        // hash, fixed ttl = "1h".
        let key = format!("{prefix}h:{id}");
        let KeyValue::Hash(h) = r.read_key(key.as_bytes()).await.value else {
            panic!("{when}: {key} is not a hash");
        };
        assert_eq!(h.get("v"), Some(&row.v), "{when}: {key}");
        // The first warm of an untouched keyspace writes no version; later writes do.
        if let Some(v) = h.get("_v") {
            assert_eq!(v.len(), 32, "{when}: {key} version");
        }
        let ttl = pttl(r, &key).await;
        if hash_fresh.contains(id) {
            assert!(
                (TTL_MS - RUN_SLACK_MS..=TTL_MS).contains(&ttl),
                "{when}: {key} PTTL {ttl}, want about {TTL_MS}"
            );
        } else {
            let most = others_at_most.expect("every hash is fresh");
            assert!(
                ttl > 0 && ttl <= most,
                "{when}: {key} was not written, yet its PTTL is {ttl} (the test set {most})"
            );
        }

        // string (value v) and json ({id, v}), both with ttl_column = "exp".
        for (kind, want) in [
            ("s", row.v.as_bytes().to_vec()),
            (
                "j",
                serde_json::to_vec(&serde_json::json!({"id": id, "v": row.v})).unwrap(),
            ),
        ] {
            let user_key = format!("{kind}:{id}");
            let key = format!("{prefix}{user_key}");
            let got = r.read_key(key.as_bytes()).await;
            let vkey = versions.get(&user_key);
            match row.exp_ms {
                Some(exp) if exp <= now => {
                    assert_eq!(
                        got.value,
                        KeyValue::None,
                        "{when}: {key} expires in the past ({exp}) and must not be there"
                    );
                    assert!(
                        vkey.is_none(),
                        "{when}: the version key of {key} is left: {vkey:?}"
                    );
                    past += 1;
                }
                exp => {
                    let KeyValue::String(s) = &got.value else {
                        panic!("{when}: {key} is {:?}", got.value);
                    };
                    if kind == "s" {
                        assert_eq!(s, &want, "{when}: {key}");
                    } else {
                        let doc: serde_json::Value = serde_json::from_slice(s).unwrap();
                        assert_eq!(
                            doc,
                            serde_json::from_slice::<serde_json::Value>(&want).unwrap(),
                            "{when}: {key}"
                        );
                    }
                    // A version key, where there is one (not after the first warm of an
                    // untouched keyspace), expires with its key.
                    let mut keys = vec![key.clone()];
                    keys.extend(vkey.cloned());
                    for k in &keys {
                        let at = pexpiretime(r, k).await;
                        match exp {
                            None => assert_eq!(at, -1, "{when}: {k} expires, its exp is NULL"),
                            Some(exp) => assert!(
                                (at - exp).abs() <= 1000,
                                "{when}: {k} expires at {at}, exp is {exp}"
                            ),
                        }
                    }
                    if exp.is_some() {
                        live += 1;
                    } else {
                        never += 1;
                    }
                }
            }
        }
    }
    // Nothing else under the projections' patterns.
    assert_eq!(
        r.scan(&format!("{prefix}h:*")).await.len(),
        rows.len(),
        "{when}: hash keys"
    );
    let want_values = (live + never) / 2;
    for kind in ["s", "j"] {
        assert_eq!(
            r.scan(&format!("{prefix}{kind}:*")).await.len(),
            want_values,
            "{when}: {kind}: keys"
        );
    }
    assert!(
        versions.len() <= live + never,
        "{when}: {} version keys for {} keys",
        versions.len(),
        live + never
    );
    // The test covers each case.
    assert!(
        live > 0 && past > 0 && never > 0,
        "{when}: {live} {past} {never}"
    );
}

#[tokio::test]
async fn ttl_and_ttl_column_set_the_expiry_of_keys_and_their_versions() {
    let pg = pg();
    let name = "godwit_kinds_ttl";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE s (id int PRIMARY KEY, v text NOT NULL, exp timestamptz);
         INSERT INTO s SELECT i, 'v' || i,
             CASE WHEN i % 7 = 0 THEN NULL
                  WHEN i % 5 = 0 THEN now() - interval '2 hours' - i * interval '1 second'
                  ELSE now() + interval '2 hours' + i * interval '1 minute'
                       + i * interval '123457 microseconds' END
         FROM generate_series(1, 60) i;",
    )
    .await
    .unwrap();
    let (prefix, mut r) = standalone_for(name).await;
    let work = Work::new();
    let path = standalone_pipeline(
        &work,
        &pg.url(name),
        name,
        &["public.s"],
        r#"[[cache.projections]]
table = "public.s"
type = "hash"
key = "h:{id}"
fields = ["v"]
ttl = "1h"
[[cache.projections]]
table = "public.s"
type = "string"
key = "s:{id}"
value = "v"
ttl_column = "exp"
[[cache.projections]]
table = "public.s"
type = "json"
key = "j:{id}"
fields = ["id", "v"]
ttl_column = "exp"
"#,
    );

    run_once(&work, &path);
    let all = ids(&db, "s").await;
    check_ttl(&mut r, &db, &prefix, "after the full load", &all, None).await;

    // Shorter lifetimes on every hash: after CDC only the rows written again are back at an
    // hour.
    let short = 600_000;
    for id in &all {
        r.query(
            redis::cmd("PEXPIRE")
                .arg(format!("{prefix}h:{id}"))
                .arg(short),
        )
        .await;
    }
    let mark = xid_mark(&db).await;
    db.batch_execute(
        "UPDATE s SET v = v || '-u' WHERE id % 3 = 0;
         -- into the past: the string and json keys go
         UPDATE s SET exp = now() - interval '1 minute' WHERE id % 4 = 1;
         -- out of the past (or from NULL) into the future
         UPDATE s SET exp = now() + interval '3 hours' + id * interval '1 second'
             WHERE id % 5 = 0 AND id % 4 <> 1;
         -- later
         UPDATE s SET exp = exp + interval '10 minutes' WHERE id % 6 = 2;
         -- no expiry any more
         UPDATE s SET exp = NULL WHERE id % 11 = 0;
         DELETE FROM s WHERE id % 13 = 0;
         INSERT INTO s SELECT i, 'n' || i,
             CASE WHEN i % 2 = 0 THEN now() - interval '1 hour'
                  ELSE now() + interval '90 minutes' END
         FROM generate_series(101, 110) i;",
    )
    .await
    .unwrap();
    run_once(&work, &path);
    let fresh = written_since(&db, "s", mark).await;
    assert!(
        !fresh.is_empty() && fresh.len() < ids(&db, "s").await.len(),
        "{fresh:?}"
    );
    check_ttl(&mut r, &db, &prefix, "after CDC", &fresh, Some(short)).await;
    r.delete_matching(&format!("{prefix}*")).await;
}

// ---------------------------------------------------------------- invalidate

#[tokio::test]
async fn invalidate_leaves_keys_to_the_load_and_deletes_them_on_each_change() {
    let pg = pg();
    let name = "godwit_kinds_inv";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 30) i;",
    )
    .await
    .unwrap();
    let (prefix, mut r) = standalone_for(name).await;
    // The application's own cache entries, also for rows that do not exist yet.
    let all: Vec<i32> = (1..=40).collect();
    for id in &all {
        r.query(
            redis::cmd("SET")
                .arg(format!("{prefix}inv:{id}"))
                .arg(format!("cached-{id}")),
        )
        .await;
    }
    let work = Work::new();
    let path = standalone_pipeline(
        &work,
        &pg.url(name),
        name,
        &["public.t"],
        r#"[[cache.projections]]
table = "public.t"
type = "invalidate"
key = "inv:{id}"
[[cache.projections]]
table = "public.t"
type = "hash"
key = "h:{id}"
fields = ["v"]
"#,
    );

    let inv = async |r: &mut TestRedis| -> BTreeMap<i32, String> {
        let mut out = BTreeMap::new();
        for id in 1..=40 {
            if let KeyValue::String(s) = r
                .read_key(format!("{prefix}inv:{id}").as_bytes())
                .await
                .value
            {
                out.insert(id, String::from_utf8(s).unwrap());
            }
        }
        out
    };
    let hashes = async |r: &mut TestRedis, db: &Client| {
        let want: BTreeMap<String, Option<String>> = db
            .query("SELECT id, v FROM t", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (format!("{prefix}h:{}", row.get::<_, i32>(0)), row.get(1)))
            .collect();
        let mut got = BTreeMap::new();
        for k in r.scan(&format!("{prefix}h:*")).await {
            if let KeyValue::Hash(h) = r.read_key(&k).await.value {
                got.insert(String::from_utf8(k).unwrap(), h.get("v").cloned());
            }
        }
        assert_eq!(got, want, "hashes");
    };
    let untouched: BTreeMap<i32, String> =
        all.iter().map(|id| (*id, format!("cached-{id}"))).collect();

    run_once(&work, &path);
    hashes(&mut r, &db).await;
    assert_eq!(
        inv(&mut r).await,
        untouched,
        "the full load leaves invalidated keys alone"
    );

    let before = ids(&db, "t").await;
    let mark = xid_mark(&db).await;
    db.batch_execute(
        "UPDATE t SET v = v || '!' WHERE id <= 5;
         UPDATE t SET v = v WHERE id = 6;
         DELETE FROM t WHERE id IN (7, 8);
         INSERT INTO t VALUES (31, 'new'), (32, NULL);
         UPDATE t SET id = 39 WHERE id = 9;",
    )
    .await
    .unwrap();
    run_once(&work, &path);
    hashes(&mut r, &db).await;
    // Changed, as PostgreSQL says: rows written since the mark, and rows gone.
    let after = ids(&db, "t").await;
    let mut changed = written_since(&db, "t", mark).await;
    changed.extend(before.difference(&after));
    assert_eq!(
        changed,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 31, 32, 39]
            .into_iter()
            .collect(),
        "the test's own changes"
    );
    let want: BTreeMap<i32, String> = untouched
        .into_iter()
        .filter(|(id, _)| !changed.contains(id))
        .collect();
    assert_eq!(
        inv(&mut r).await,
        want,
        "CDC deletes the key of every changed row, and only those"
    );

    // A re-warm (Redis lost its applied position): a guarded load and its sweep of older keys,
    // which leave invalidated keys alone too.
    for id in &all {
        r.query(
            redis::cmd("SET")
                .arg(format!("{prefix}inv:{id}"))
                .arg(format!("cached-{id}")),
        )
        .await;
    }
    r.delete_matching(&format!("{prefix}godwit:applied:*"))
        .await;
    run_once(&work, &path);
    hashes(&mut r, &db).await;
    assert_eq!(
        inv(&mut r).await,
        all.iter().map(|id| (*id, format!("cached-{id}"))).collect(),
        "a re-warm leaves invalidated keys alone"
    );
    let events = std::fs::read_to_string(work.out().join("_godwit/state/events.jsonl")).unwrap();
    assert!(
        events.contains("\"table.reload_requested\""),
        "the re-warm happened: {events}"
    );
    r.delete_matching(&format!("{prefix}*")).await;
}

// ---------------------------------------------------------------- publish

/// A row of `p` as the JSON godwit publishes, from PostgreSQL.
const P_JSON: &str = "(jsonb_build_object('id', id, 'name', name, 'amount', amount,
    'at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), 'tags', tags))::text";

async fn p_row(db: &Client, id: i32) -> serde_json::Value {
    let text: String = db
        .query_one(&format!("SELECT {P_JSON} FROM p WHERE id = $1"), &[&id])
        .await
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

fn parse_lsn(s: &str) -> i64 {
    let (hi, lo) = s.split_once('/').unwrap_or_else(|| panic!("lsn {s}"));
    (i64::from_str_radix(hi, 16).unwrap() << 32) + i64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sends_one_message_per_change_with_the_row() {
    let pg = pg();
    let name = "godwit_kinds_pub";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE p (id int PRIMARY KEY, name text, amount numeric(10,2), at timestamptz,
                         tags text[]);
         ALTER TABLE p REPLICA IDENTITY FULL;
         INSERT INTO p SELECT i, 'name ' || i, i * 1.1,
             timestamptz '2026-01-01 00:00:00+00' + i * interval '1 day',
             CASE WHEN i % 2 = 0 THEN ARRAY['a', 'b c'] END
         FROM generate_series(1, 20) i;",
    )
    .await
    .unwrap();
    let prefix = format!("{name}:");
    let channel = format!("{prefix}chan:p");

    // Subscribed before anything runs.
    let client = redis::Client::open(common::redis::standalone_url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(&channel).await.unwrap();
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let listener = {
        let got = got.clone();
        tokio::spawn(async move {
            let mut messages = sub.into_on_message();
            while let Some(m) = messages.next().await {
                let payload: String = m.get_payload().unwrap();
                got.lock()
                    .unwrap()
                    .push((m.get_channel_name().to_string(), payload));
            }
        })
    };

    let work = Work::new();
    let path = standalone_pipeline(
        &work,
        &pg.url(name),
        name,
        &["public.p"],
        r#"[[cache.projections]]
table = "public.p"
type = "publish"
key = "p:{id}"
channel = "chan:p"
fields = ["id", "name", "amount", "at", "tags"]
"#,
    );
    run_once(&work, &path);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        got.lock().unwrap().clone(),
        Vec::<(String, String)>::new(),
        "the full load publishes nothing"
    );

    // Each change, and the row PostgreSQL has for it (after an insert or update, before a
    // delete).
    let lsn_before = common::lsn_now(&db).await;
    let mut want: Vec<(String, i32, serde_json::Value)> = Vec::new();
    let exec = async |sql: &str| db.batch_execute(sql).await.unwrap();
    exec("INSERT INTO p VALUES (101, 'new', 12.10, '2026-02-03 04:05:06+00', '{x,y}')").await;
    want.push(("I".into(), 101, p_row(&db, 101).await));
    exec("INSERT INTO p VALUES (102, NULL, NULL, NULL, NULL)").await;
    want.push(("I".into(), 102, p_row(&db, 102).await));
    exec("UPDATE p SET name = 'renamed', amount = 2.5 WHERE id = 1").await;
    want.push(("U".into(), 1, p_row(&db, 1).await));
    exec("UPDATE p SET tags = '{}', at = NULL WHERE id = 101").await;
    want.push(("U".into(), 101, p_row(&db, 101).await));
    want.push(("D".into(), 2, p_row(&db, 2).await));
    exec("DELETE FROM p WHERE id = 2").await;
    let six = p_row(&db, 6).await;
    exec(
        "BEGIN; UPDATE p SET amount = amount + 1 WHERE id IN (3, 4, 5);
         DELETE FROM p WHERE id = 6; COMMIT;",
    )
    .await;
    for id in [3, 4, 5] {
        want.push(("U".into(), id, p_row(&db, id).await));
    }
    want.push(("D".into(), 6, six));
    // A key change: the old key goes, the new one comes.
    want.push(("D".into(), 10, p_row(&db, 10).await));
    exec("UPDATE p SET id = 1010, name = 'moved' WHERE id = 10").await;
    want.push(("I".into(), 1010, p_row(&db, 1010).await));
    let lsn_after = common::lsn_now(&db).await;

    run_once(&work, &path);
    let started = Instant::now();
    while got.lock().unwrap().len() < want.len() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A little longer: more than one message per change would show now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = got.lock().unwrap().clone();
    listener.abort();

    let mut seen: BTreeMap<(String, i32), serde_json::Value> = BTreeMap::new();
    let mut last_lsn = 0;
    for (ch, payload) in &messages {
        assert_eq!(ch, &channel);
        let m: serde_json::Value = serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("message is not JSON ({e}): {payload}"));
        let obj = m.as_object().unwrap();
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["key", "lsn", "op", "row"].into_iter().collect(),
            "{payload}"
        );
        let op = m["op"].as_str().unwrap().to_string();
        let row = m["row"].clone();
        let id = row["id"].as_i64().unwrap_or_else(|| panic!("{payload}")) as i32;
        assert_eq!(m["key"], format!("{prefix}p:{id}"), "{payload}");
        let lsn = parse_lsn(m["lsn"].as_str().unwrap());
        assert!(
            lsn > lsn_before && lsn <= lsn_after,
            "{payload}: lsn outside the changes ({lsn_before}..{lsn_after})"
        );
        assert!(lsn >= last_lsn, "{payload}: messages out of commit order");
        last_lsn = lsn;
        assert!(
            seen.insert((op.clone(), id), row).is_none(),
            "{payload}: a second message for ({op}, {id})"
        );
    }
    let want_map: BTreeMap<(String, i32), serde_json::Value> = want
        .into_iter()
        .map(|(op, id, row)| ((op, id), row))
        .collect();
    for (k, row) in &want_map {
        assert_eq!(seen.get(k), Some(row), "message for {k:?}");
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        want_map.keys().collect::<Vec<_>>(),
        "one message per change"
    );
}

// ---------------------------------------------------------------- TLS and ACL

/// The README's least-privilege `ACL SETUSER godwit …` line, for `user` with `password`, keys
/// narrowed to `~<prefix>*` as the README allows.
fn readme_acl(user: &str, password: &str, prefix: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("ACL SETUSER godwit "))
        .expect("README has an `ACL SETUSER godwit …` line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..3], ["ACL", "SETUSER", "godwit"], "{line}");
    assert!(
        words.contains(&">CHANGE-ME") && words.contains(&"~*"),
        "{line}"
    );
    let mut out = vec![user.to_string()];
    for w in &words[3..] {
        out.push(match *w {
            ">CHANGE-ME" => format!(">{password}"),
            "~*" => format!("~{prefix}*"),
            w => w.to_string(),
        });
    }
    out
}

/// What the ACL pipeline's projections must hold, from PostgreSQL.
#[derive(Debug, PartialEq, Default)]
struct AclView {
    hashes: BTreeMap<String, BTreeMap<String, String>>,
    docs: BTreeMap<String, serde_json::Value>,
    strings: BTreeMap<String, String>,
    board: BTreeMap<String, f64>,
    cities: BTreeMap<String, BTreeSet<String>>,
    places: BTreeSet<String>,
}

async fn acl_expected(db: &Client) -> AclView {
    let mut v = AclView::default();
    for r in db
        .query(
            "SELECT id::text, name::text, score::text, score::float8, city::text,
                    jsonb_build_object('id', id, 'name', name)::text
             FROM a",
            &[],
        )
        .await
        .unwrap()
    {
        let id: String = r.get(0);
        let name: Option<String> = r.get(1);
        let mut h = BTreeMap::new();
        if let Some(n) = &name {
            h.insert("name".to_string(), n.clone());
        }
        if let Some(s) = r.get::<_, Option<String>>(2) {
            h.insert("score".to_string(), s);
        }
        v.hashes.insert(format!("h:{id}"), h);
        v.docs.insert(
            format!("j:{id}"),
            serde_json::from_str(&r.get::<_, String>(5)).unwrap(),
        );
        if let Some(n) = name {
            v.strings.insert(format!("s:{id}"), n);
        }
        if let Some(s) = r.get::<_, Option<f64>>(3) {
            v.board.insert(id.clone(), s);
        }
        if let Some(c) = r.get::<_, Option<String>>(4) {
            v.cities
                .entry(format!("city:{c}"))
                .or_default()
                .insert(id.clone());
        }
        v.places.insert(id);
    }
    v
}

async fn acl_actual(r: &mut TestRedis, prefix: &str) -> AclView {
    let strip = |k: &[u8]| {
        String::from_utf8_lossy(k)
            .strip_prefix(prefix)
            .unwrap()
            .to_string()
    };
    let mut v = AclView::default();
    for k in r.scan(&format!("{prefix}h:*")).await {
        let got = r.read_key(&k).await;
        let KeyValue::Hash(mut h) = got.value else {
            panic!("{}: {:?}", strip(&k), got.value)
        };
        h.remove("_v");
        assert!(
            (TTL_MS - RUN_SLACK_MS..=TTL_MS).contains(&got.pttl),
            "{}: PTTL {}",
            strip(&k),
            got.pttl
        );
        v.hashes.insert(strip(&k), h);
    }
    for k in r.scan(&format!("{prefix}j:*")).await {
        if let KeyValue::String(s) = r.read_key(&k).await.value {
            v.docs
                .insert(strip(&k), serde_json::from_slice(&s).unwrap());
        }
    }
    for k in r.scan(&format!("{prefix}s:*")).await {
        if let KeyValue::String(s) = r.read_key(&k).await.value {
            v.strings.insert(strip(&k), String::from_utf8(s).unwrap());
        }
    }
    if let KeyValue::Zset(z) = r.read_key(format!("{prefix}board").as_bytes()).await.value {
        v.board = z.into_iter().collect();
    }
    for k in r.scan(&format!("{prefix}city:*")).await {
        if let KeyValue::Set(s) = r.read_key(&k).await.value {
            v.cities.insert(strip(&k), s);
        }
    }
    if let KeyValue::Geo(g) = r.read_geo(format!("{prefix}places").as_bytes()).await {
        v.places = g.into_keys().collect();
    }
    v
}

/// Every file under `dir` (state, events, logs, output), read as text.
fn all_files_text(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

#[tokio::test]
async fn tls_and_the_readme_acl_user_carry_a_whole_pipeline() {
    let pg = pg();
    let name = "godwit_kinds_acl";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, name text, score int, city text,
                         lon float8 NOT NULL, lat float8 NOT NULL, exp timestamptz);
         ALTER TABLE a REPLICA IDENTITY FULL;
         INSERT INTO a SELECT i,
             CASE WHEN i % 6 = 0 THEN NULL ELSE 'name ' || i END,
             CASE WHEN i % 4 = 0 THEN NULL ELSE i * 10 END,
             (ARRAY['Oslo', 'Lima', 'Pune'])[1 + i % 3],
             10 + i * 0.01, 50 + i * 0.01,
             now() + interval '2 hours'
         FROM generate_series(1, 80) i;",
    )
    .await
    .unwrap();
    let prefix = format!("{name}:");
    let user = "godwit_kinds_acl";
    let password = "Kinds-acl-pw-5e0b9c";
    let wrong = "Kinds-WRONG-pw-77aa1";
    let mut admin = common::redis::tls().await;
    admin.delete_matching(&format!("{prefix}*")).await;
    admin
        .query(redis::cmd("ACL").arg("DELUSER").arg(user))
        .await;
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER");
    for w in readme_acl(user, password, &prefix) {
        setuser.arg(w);
    }
    admin.query(&setuser).await;
    for id in 1..=10 {
        admin
            .query(
                redis::cmd("SET")
                    .arg(format!("{prefix}inv:{id}"))
                    .arg("cached"),
            )
            .await;
    }

    let tls_url = common::redis::tls_url();
    assert!(tls_url.starts_with("rediss://"), "{tls_url}");
    let ca = common::redis::ca_path();
    let cache = |password: &str| {
        format!(
            "url = \"{}\"\ntls_ca = \"{}\"\nkey_prefix = \"{prefix}\"",
            common::redis::with_user(&tls_url, user, password),
            ca.display()
        )
    };
    let projections = r#"[[cache.projections]]
table = "public.a"
type = "hash"
key = "h:{id}"
fields = ["name", "score"]
ttl = "1h"
[[cache.projections]]
table = "public.a"
type = "json"
key = "j:{id}"
fields = ["id", "name"]
ttl_column = "exp"
[[cache.projections]]
table = "public.a"
type = "string"
key = "s:{id}"
value = "name"
[[cache.projections]]
table = "public.a"
type = "zset"
key = "board"
member = "{id}"
score = "score"
[[cache.projections]]
table = "public.a"
type = "set"
key = "city:{city}"
member = "{id}"
[[cache.projections]]
table = "public.a"
type = "geo"
key = "places"
member = "{id}"
longitude = "lon"
latitude = "lat"
[[cache.projections]]
table = "public.a"
type = "stream"
key = "changes"
[[cache.projections]]
table = "public.a"
type = "publish"
key = "a:{id}"
channel = "chan"
[[cache.projections]]
table = "public.a"
type = "invalidate"
key = "inv:{id}"
"#;
    let work = Work::new();
    let path = work.pipeline(&pipeline(
        "kinds_acl",
        &pg.url(name),
        &["public.a"],
        &cache(password),
        projections,
    ));
    let mut outputs = Vec::new();
    let check = work.godwit(&["check", path.to_str().unwrap()], &[]);
    assert_eq!(check.status.code(), Some(0), "{}", common::text(&check));
    outputs.push(common::text(&check));

    outputs.push(run_once(&work, &path));
    assert_eq!(
        acl_actual(&mut admin, &prefix).await,
        acl_expected(&db).await,
        "after the full load over TLS as the ACL user"
    );

    db.batch_execute(
        "UPDATE a SET name = 'renamed ' || id, score = coalesce(score, 0) + 1 WHERE id % 5 = 0;
         UPDATE a SET name = NULL, lon = lon + 1 WHERE id % 7 = 0;
         DELETE FROM a WHERE id % 9 = 0;
         INSERT INTO a SELECT i, 'new ' || i, i, 'Oslo', 1, 2, now() + interval '3 hours'
             FROM generate_series(101, 110) i;
         UPDATE a SET exp = now() - interval '1 hour' WHERE id = 1;",
    )
    .await
    .unwrap();
    outputs.push(run_once(&work, &path));
    let mut want = acl_expected(&db).await;
    // id 1's expiry is in the past: its json document is gone.
    assert!(want.docs.remove("j:1").is_some());
    assert_eq!(
        acl_actual(&mut admin, &prefix).await,
        want,
        "after CDC over TLS as the ACL user"
    );
    // 16 rows with id % 5 = 0, 11 with id % 7 = 0 (2 of them both), 8 deleted, 10 inserted, 1.
    let KeyValue::Stream(entries) = admin
        .read_key(format!("{prefix}changes").as_bytes())
        .await
        .value
    else {
        panic!("no stream");
    };
    assert_eq!(entries.len(), 16 + 11 + 8 + 10 + 1, "stream entries");
    // Invalidated: the rows 1, 5, 7, 9, 10 changed.
    let mut left = Vec::new();
    for id in 1..=10 {
        if admin
            .read_key(format!("{prefix}inv:{id}").as_bytes())
            .await
            .value
            != KeyValue::None
        {
            left.push(id);
        }
    }
    assert_eq!(left, [2, 3, 4, 6, 8], "invalidated keys left");

    // A wrong password: a clear error before anything is created, without the password.
    let bad_work = Work::new();
    let bad = bad_work.pipeline(&pipeline(
        "kinds_acl_bad",
        &pg.url(name),
        &["public.a"],
        &cache(wrong),
        projections,
    ));
    let out = bad_work.godwit(&["run", bad.to_str().unwrap(), "--once"], &[]);
    let t = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    // The redis client reports WRONGPASS as "Password authentication failed".
    assert!(
        t.contains("WRONGPASS") || t.contains("Password authentication failed"),
        "{t}"
    );
    assert!(t.contains("user:password in cache.url"), "{t}");
    assert!(t.contains(&format!("{user}:***@")), "{t}");
    outputs.push(t);
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'godwit_kinds_acl_bad'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a wrong password creates no slot");

    for secret in [password, wrong] {
        for (i, o) in outputs.iter().enumerate() {
            assert!(!o.contains(secret), "output {i} shows a password: {o}");
        }
        for dir in [work.path(), bad_work.path()] {
            for (p, text) in all_files_text(dir) {
                if p.file_name().is_some_and(|n| n == "pipeline.toml") {
                    continue;
                }
                assert!(!text.contains(secret), "{} shows a password", p.display());
            }
        }
    }
    admin.delete_matching(&format!("{prefix}*")).await;
    admin
        .query(redis::cmd("ACL").arg("DELUSER").arg(user))
        .await;
}

/// A hash with `ttl_column`: the key follows the column's time through CDC, and a row whose
/// time becomes NULL no longer expires.
#[tokio::test]
async fn a_hash_with_ttl_column_follows_the_column_to_null() {
    let pg = pg();
    let name = "godwit_kinds_hnull";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE s (id int PRIMARY KEY, v text NOT NULL, exp timestamptz);
         INSERT INTO s SELECT i, 'v' || i, now() + interval '2 hours' + i * interval '1 minute'
         FROM generate_series(1, 10) i;",
    )
    .await
    .unwrap();
    let (prefix, mut r) = standalone_for(name).await;
    let work = Work::new();
    let path = standalone_pipeline(
        &work,
        &pg.url(name),
        name,
        &["public.s"],
        r#"[[cache.projections]]
table = "public.s"
type = "hash"
key = "h:{id}"
fields = ["v"]
ttl_column = "exp"
"#,
    );
    run_once(&work, &path);
    db.batch_execute(
        "UPDATE s SET exp = NULL WHERE id % 2 = 0;
         UPDATE s SET exp = exp + interval '1 hour' WHERE id % 3 = 0;",
    )
    .await
    .unwrap();
    run_once(&work, &path);
    for (id, v, exp) in db
        .query(
            "SELECT id, v, floor(extract(epoch FROM exp) * 1000)::int8 FROM s ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, Option<i64>>(2),
            )
        })
    {
        let key = format!("{prefix}h:{id}");
        let KeyValue::Hash(h) = r.read_key(key.as_bytes()).await.value else {
            panic!("{key} missing");
        };
        assert_eq!(h.get("v"), Some(&v), "{key}");
        let at = pexpiretime(&mut r, &key).await;
        match exp {
            None => assert_eq!(at, -1, "{key}: exp is NULL, yet the key expires at {at}"),
            Some(exp) => assert!(
                (at - exp).abs() <= 1000,
                "{key}: expires at {at}, exp {exp}"
            ),
        }
    }
    r.delete_matching(&format!("{prefix}*")).await;
}

/// `cmdstat_restore` calls of the shared standalone Redis so far.
async fn restores(r: &mut TestRedis) -> i64 {
    let Value::BulkString(info) = r.query(redis::cmd("INFO").arg("commandstats")).await else {
        panic!("INFO is text");
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_restore:calls="))
        .and_then(|l| l.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The hashes of `rows` (id, a, b, c) under `prefix`: `s:{id}`, and with `shared` `r:{id}`
/// (written by two projections), each with the warm's version.
async fn check_restored(
    r: &mut TestRedis,
    rows: &[(i32, String, Option<String>, i32)],
    prefix: &str,
    shared: bool,
) {
    for (id, a, b, c) in rows {
        let mut want: BTreeMap<String, String> = BTreeMap::new();
        want.insert("a".into(), a.clone());
        if let Some(b) = b {
            want.insert("b".into(), b.clone());
        }
        want.insert("c".into(), c.to_string());
        let keys: &[&str] = if shared { &["r", "s"] } else { &["s"] };
        for k in keys {
            let key = format!("{prefix}{k}:{id}");
            let KeyValue::Hash(mut h) = r.read_key(key.as_bytes()).await.value else {
                panic!("{key} is not a hash");
            };
            let v = h.remove("_v").unwrap_or_default();
            assert_eq!(v.len(), 32, "{key}: the warm's version");
            assert_eq!(h, want, "{key}");
        }
    }
}

#[tokio::test]
async fn the_first_warm_restores_hashes_whole_or_falls_back_to_hset() {
    let pg = pg();
    let name = "godwit_kinds_restore";
    let db = pg.fresh_db(name).await;
    // 20,000 rows: three chunks of a load. Some NULLs, and values too long for a listpack.
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text NOT NULL, b text, c int);
         INSERT INTO t SELECT i,
             CASE WHEN i % 1000 = 0 THEN repeat('long ', 20) || i ELSE 'a' || i END,
             CASE WHEN i % 3 = 0 THEN NULL ELSE 'b' || i END,
             i % 7
         FROM generate_series(1, 20000) i;",
    )
    .await
    .unwrap();
    let rows: Vec<(i32, String, Option<String>, i32)> = db
        .query("SELECT id, a, b, c FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Two projections share the keys `r:{id}` (RESTORE finds the key there: HSET adds the
    // fields), `s:{id}` is the projection's own.
    let projections = r#"[[cache.projections]]
table = "public.t"
type = "hash"
key = "r:{id}"
fields = ["a", "b"]
[[cache.projections]]
table = "public.t"
type = "hash"
key = "r:{id}"
fields = ["c"]
[[cache.projections]]
table = "public.t"
type = "hash"
key = "s:{id}"
fields = ["a", "b", "c"]
"#;
    let (prefix, mut r) = standalone_for(name).await;
    let before = restores(&mut r).await;
    let work = Work::new();
    let path = standalone_pipeline(&work, &pg.url(name), name, &["public.t"], projections);
    run_once(&work, &path);
    check_restored(&mut r, &rows, &prefix, true).await;
    assert!(
        restores(&mut r).await - before >= 19_000,
        "the hashes of s:{{id}} that fit a listpack went whole"
    );
    assert!(
        r.scan(&format!("{prefix}godwit:probe:*")).await.is_empty(),
        "the probe key is gone"
    );
    r.delete_matching(&format!("{prefix}*")).await;

    // A user whose ACL lacks `restore`: the probe is refused, the warm writes with HSET.
    let user = "godwit_kinds_norestore";
    let password = "Kinds-norestore-pw-41c2";
    r.query(redis::cmd("ACL").arg("DELUSER").arg(user)).await;
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER");
    for w in readme_acl(user, password, &prefix) {
        if w != "+restore" {
            setuser.arg(w);
        }
    }
    r.query(&setuser).await;
    let url = common::redis::with_user(&common::redis::standalone_url(), user, password);
    let work = Work::new();
    let path = work.pipeline(&pipeline(
        "kinds_norestore",
        &pg.url(name),
        &["public.t"],
        &format!("url = \"{url}\"\nkey_prefix = \"{prefix}\""),
        r#"[[cache.projections]]
table = "public.t"
type = "hash"
key = "s:{id}"
fields = ["a", "b", "c"]
"#,
    ));
    run_once(&work, &path);
    check_restored(&mut r, &rows, &prefix, false).await;
    r.query(redis::cmd("ACL").arg("DELUSER").arg(user)).await;
    r.delete_matching(&format!("{prefix}*")).await;
}
