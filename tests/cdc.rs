//! CDC against a real PostgreSQL (wal_level=logical): the files godwit writes, replayed over
//! the full load by SPEC §4's rule, reproduce every source table — compared value by value
//! with what PostgreSQL returns for it — through inserts, updates, deletes, multi-statement
//! and rolled-back transactions, a 200,000-row transaction, unchanged TOASTed values, key
//! updates, keyless tables, ADD/DROP COLUMN and TRUNCATE; and the slot's lifecycle.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::replay::*;
use common::source::*;
use common::*;

fn cdc_pipeline(name: &str, url: &str, mode: &str, include: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nmode = \"{mode}\"\n[source]\nurl = \"{url}\"\n[tables]\ninclude = [{include}]\n{extra}\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n"
    )
}

/// Asserts that replaying `out`'s files of `table` gives the rows PostgreSQL returns for it.
async fn assert_reproduces(out: &Path, db: &tokio_postgres::Client, table: &str, key: &[&str]) {
    let want = pg_keyed(db, table, key).await;
    let columns: Vec<String> = want
        .values()
        .next()
        .map(|r| r.keys().cloned().collect())
        .unwrap_or_default();
    let got: BTreeMap<String, RowMap> = replay_keyed(&out.join("public").join(table), key)
        .into_iter()
        .map(|(k, r)| (k, project(&r, &columns)))
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{table}: row count after replay; files: {:?}",
        parquet_files(&out.join("public").join(table))
    );
    for (k, w) in &want {
        assert_eq!(got.get(k), Some(w), "{table}: row {k} after replay");
    }
}

async fn assert_reproduces_keyless(out: &Path, db: &tokio_postgres::Client, table: &str) {
    assert_eq!(
        replay_keyless(&out.join("public").join(table)),
        pg_sorted(db, table).await,
        "{table} after replay"
    );
}

#[tokio::test]
async fn replaying_cdc_over_the_full_load_reproduces_every_table() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_replay").await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2), big text, tags text[]);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO items SELECT i, 'item ' || i, i % 10, i * 1.25, NULL, ARRAY['a', i::text] FROM generate_series(1, 1000) i;
         UPDATE items SET big = repeat('x', 100000) || id WHERE id <= 3;
         CREATE TABLE wide_full (id int PRIMARY KEY, big text, note text);
         ALTER TABLE wide_full REPLICA IDENTITY FULL;
         ALTER TABLE wide_full ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO wide_full SELECT i, repeat('y', 50000) || i, 'n' || i FROM generate_series(1, 5) i;
         CREATE TABLE keyless (a int, b text);
         ALTER TABLE keyless REPLICA IDENTITY FULL;
         INSERT INTO keyless VALUES (1, 'one'), (2, 'two'), (2, 'two'), (3, NULL);
         CREATE TABLE logs (at timestamptz, msg text);
         INSERT INTO logs VALUES ('2026-01-01 00:00:00+00', 'first');
         CREATE TABLE gone (id int PRIMARY KEY, v text);
         INSERT INTO gone SELECT i, 'v' || i FROM generate_series(1, 50) i;
         CREATE TABLE bulk (id int PRIMARY KEY, v text);
         CREATE TABLE meas (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE meas_eu PARTITION OF meas FOR VALUES IN ('eu');
         CREATE TABLE meas_us PARTITION OF meas FOR VALUES IN ('us');
         INSERT INTO meas SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    let w = Work::new();
    let include = "\"public.*\"";
    let pipe = w.pipeline(&cdc_pipeline(
        "replay",
        &pg.url("godwit_cdc_replay"),
        "full-load-and-cdc",
        include,
        "[tables.\"public.logs\"]\ncdc = \"inserts-only\"\n[notify]\ncdc_lag_threshold = \"200ms\"\n",
    ));
    let p = pipe.to_str().unwrap();
    let first = assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert!(first.contains("full load completed"), "{first}");

    // The changes.
    db.batch_execute(
        "INSERT INTO items SELECT i, 'new ' || i, 1, 9.99, NULL, '{}' FROM generate_series(1001, 1100) i;
         UPDATE items SET qty = qty + 100 WHERE id BETWEEN 10 AND 60;
         DELETE FROM items WHERE id BETWEEN 70 AND 90;
         BEGIN;
           INSERT INTO items VALUES (5000, 'multi', 1, 1.00, NULL, ARRAY['m']);
           UPDATE items SET name = 'multi-updated' WHERE id = 5000;
           UPDATE items SET name = 'also', tags = ARRAY['x', NULL, 'z'] WHERE id = 100;
           DELETE FROM items WHERE id = 101;
         COMMIT;
         BEGIN;
           INSERT INTO items VALUES (6000, 'rolled back', 1, 1.00, NULL, NULL);
           DELETE FROM items WHERE id = 1;
         ROLLBACK;
         -- TOASTed values untouched: DEFAULT identity sends them as unchanged
         UPDATE items SET qty = -1 WHERE id IN (1, 2);
         UPDATE wide_full SET note = 'changed' WHERE id IN (1, 2);
         -- key updates
         UPDATE items SET id = 7000 WHERE id = 500;
         UPDATE wide_full SET id = 100 WHERE id = 3;
         -- keyless under FULL
         UPDATE keyless SET b = 'TWO' WHERE a = 2;
         DELETE FROM keyless WHERE a = 1;
         INSERT INTO keyless VALUES (4, 'four');
         -- inserts-only: the source's UPDATE and DELETE still work
         INSERT INTO logs VALUES ('2026-01-02 00:00:00+00', 'second');
         UPDATE logs SET msg = 'edited';
         -- TRUNCATE, then new rows
         -- a partitioned table, published under its root (also a row moving between partitions)
         UPDATE meas SET v = -v WHERE id < 20;
         DELETE FROM meas WHERE id > 90;
         INSERT INTO meas VALUES (500, 'eu', 5);
         UPDATE meas SET region = 'us' WHERE id = 2;
         TRUNCATE gone;
         INSERT INTO gone VALUES (1, 'after truncate');",
    )
    .await
    .unwrap();
    // ADD and DROP COLUMN mid-stream, with changes before and after.
    db.batch_execute(
        "ALTER TABLE items ADD COLUMN color text;
         INSERT INTO items (id, name, qty, price, color) VALUES (8000, 'colored', 1, 2.50, 'red');
         UPDATE items SET color = 'blue' WHERE id = 2;
         ALTER TABLE items DROP COLUMN tags;
         INSERT INTO items (id, name, qty, price, color) VALUES (8001, 'no tags', 1, 2.50, 'green');
         UPDATE items SET qty = 0 WHERE id = 3;",
    )
    .await
    .unwrap();
    // One 200,000-row transaction.
    db.batch_execute("INSERT INTO bulk SELECT i, md5(i::text) FROM generate_series(1, 200000) i;")
        .await
        .unwrap();

    let second = assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    let out = w.out();
    assert_reproduces(&out, &db, "items", &["id"]).await;
    assert_reproduces(&out, &db, "wide_full", &["id"]).await;
    assert_reproduces(&out, &db, "gone", &["id"]).await;
    assert_reproduces(&out, &db, "bulk", &["id"]).await;
    assert_reproduces(&out, &db, "meas", &["id", "region"]).await;
    assert!(
        !out.join("public/meas_eu").exists(),
        "partitions are not tables of their own"
    );
    assert_reproduces_keyless(&out, &db, "keyless").await;

    // Unchanged TOASTed values: named in _unchanged under DEFAULT, taken from the old row
    // under FULL; never a silent NULL.
    let items = cdc_rows(&out.join("public/items"));
    let toast: Vec<_> = items
        .iter()
        .filter(|r| {
            r.2 == "U" && (r.3["id"] == "1" || r.3["id"] == "2") && !r.3.contains_key("color")
        })
        .collect();
    assert_eq!(toast.len(), 2, "{second}");
    for r in &toast {
        assert_eq!(r.4, vec!["big".to_string()], "row {:?}", r.3["id"]);
        assert_eq!(r.3["big"], "NULL");
    }
    let wide = cdc_rows(&out.join("public/wide_full"));
    let notes: Vec<_> = wide.iter().filter(|r| r.2 == "U").collect();
    assert_eq!(notes.len(), 2);
    for r in notes {
        assert!(r.4.is_empty());
        assert!(
            r.3["big"].starts_with("yyyy"),
            "FULL identity gives the old value"
        );
    }
    // A key update is a D of the old key and an I of the new row.
    let key_moves: Vec<_> = items
        .iter()
        .filter(|r| (r.2 == "D" && r.3["id"] == "500") || (r.2 == "I" && r.3["id"] == "7000"))
        .collect();
    assert_eq!(key_moves.len(), 2);
    assert_eq!(key_moves[0].0, key_moves[1].0, "same transaction");
    // The rolled-back transaction is absent.
    assert!(!items.iter().any(|r| r.3["id"] == "6000"));
    // The 200,000-row transaction: every row once, one commit LSN.
    let bulk = cdc_rows(&out.join("public/bulk"));
    assert_eq!(bulk.len(), 200_000);
    assert!(bulk.iter().all(|r| r.0 == bulk[0].0 && r.2 == "I"));
    // TRUNCATE is a T row and an event.
    let gone = cdc_rows(&out.join("public/gone"));
    assert_eq!(gone.iter().filter(|r| r.2 == "T").count(), 1);
    let evs = events(&w.out().join("_godwit/state/events.jsonl"));
    assert!(
        evs.iter()
            .any(|e| e["event_type"] == "table.truncated" && e["table"] == "public.gone"),
        "{evs:?}"
    );
    // The changes were committed seconds before the second run read them.
    assert!(evs.iter().any(|e| e["event_type"] == "cdc.lag"), "{evs:?}");
    // Inserts-only: the inserts, no Op other than I.
    let logs = cdc_rows(&out.join("public/logs"));
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].3["msg"], "second");
    // New schema after ADD/DROP COLUMN: files with `color`, later ones without `tags`.
    let schemas: Vec<Vec<String>> = table_files(&out.join("public/items"))
        .1
        .iter()
        .map(|f| {
            parquet_schema(f)
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .collect();
    assert!(
        schemas
            .iter()
            .any(|s| s.contains(&"color".into()) && !s.contains(&"tags".into()))
    );
    assert!(
        schemas
            .iter()
            .any(|s| s.contains(&"color".into()) && s.contains(&"tags".into()))
    );
    // status shows the counters.
    let status = assert_ok(&w.godwit(&["status", p, "--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let t = v["tables"]["public.bulk"].clone();
    assert_eq!(t["inserts"], 200_000, "{status}");
    assert_eq!(t["state"], "CDC", "{status}");
}

#[tokio::test]
async fn a_keyless_table_is_refused_unless_inserts_only() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_keyless").await;
    db.batch_execute("CREATE TABLE nokey (a int, b text); INSERT INTO nokey VALUES (1, 'x');")
        .await
        .unwrap();
    let w = Work::new();
    let url = pg.url("godwit_cdc_keyless");
    let pipe = w.pipeline(&cdc_pipeline(
        "keyless",
        &url,
        "cdc",
        "\"public.nokey\"",
        "",
    ));
    let o = w.godwit(&["run", pipe.to_str().unwrap(), "--once"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL"),
        "{t}"
    );
    assert!(t.contains("inserts-only"), "{t}");
    let slots = db
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "nothing created on a refused start");
    // The source's own UPDATE still works (nothing published it).
    db.batch_execute("UPDATE nokey SET b = 'y'").await.unwrap();

    let pipe = w.pipeline(&cdc_pipeline(
        "keyless",
        &url,
        "cdc",
        "\"public.nokey\"",
        "[tables.\"public.nokey\"]\ncdc = \"inserts-only\"\n",
    ));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    db.batch_execute("INSERT INTO nokey VALUES (2, 'z'); UPDATE nokey SET b = 'w'; DELETE FROM nokey WHERE a = 1;")
        .await
        .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    let rows = cdc_rows(&w.out().join("public/nokey"));
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].2.as_str(), rows[0].3["a"].as_str()), ("I", "2"));
    assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}

#[tokio::test]
async fn a_dropped_slot_is_a_clear_failure_not_a_silent_restart() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_dropped").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a');")
        .await
        .unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&cdc_pipeline(
        "dropped",
        &pg.url("godwit_cdc_dropped"),
        "full-load-and-cdc",
        "\"public.t\"",
        "[notify]\nevents_file = \"{out}/events.jsonl\"\n",
    ));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    // The run's session may take a moment to leave the slot.
    let mut dropped = false;
    for _ in 0..50 {
        if db
            .batch_execute("SELECT pg_drop_replication_slot('godwit_dropped')")
            .await
            .is_ok()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(dropped, "the slot could be dropped");
    db.batch_execute("INSERT INTO t VALUES (2, 'lost')")
        .await
        .unwrap();
    let o = w.godwit(&["run", p, "--once"], &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("godwit_dropped") && t.contains("godwit drop"),
        "{t}"
    );
    let evs = events(&w.out().join("events.jsonl"));
    let kinds: Vec<&str> = evs
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"slot.unhealthy"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"task.failed"), "{kinds:?}");
    let slots = db
        .query(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'godwit_dropped'",
            &[],
        )
        .await
        .unwrap();
    assert!(slots.is_empty(), "no silent recreation");

    // drop removes the rest (publication, state), after which a run starts over.
    let dropped = assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
    assert!(
        dropped.contains("publication godwit_dropped: dropped"),
        "{dropped}"
    );
    let pubs = db
        .query(
            "SELECT 1 FROM pg_publication WHERE pubname = 'godwit_dropped'",
            &[],
        )
        .await
        .unwrap();
    assert!(pubs.is_empty());
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}

/// The pid of the slot's streaming walsender (None while no session streams from the slot).
async fn walsender(db: &tokio_postgres::Client, slot: &str) -> Option<i32> {
    db.query_opt(
        "SELECT r.pid FROM pg_stat_replication r
         JOIN pg_replication_slots s ON s.active_pid = r.pid
         WHERE s.slot_name = $1 AND r.state = 'streaming'",
        &[&slot],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `secs` seconds.
async fn wait_until<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_slot_moves_while_only_unselected_tables_change() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_idle").await;
    db.batch_execute(
        "CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE noise (id int PRIMARY KEY, v text);",
    )
    .await
    .unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&cdc_pipeline(
        "idle",
        &pg.url("godwit_cdc_idle"),
        "cdc",
        "\"public.quiet\"",
        "",
    ));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    // --once: confirms the position read at its start, though nothing selected changed.
    db.batch_execute("INSERT INTO noise SELECT i, md5(i::text) FROM generate_series(1, 50000) i;")
        .await
        .unwrap();
    let target = lsn_now(&db).await;
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert!(
        slot_lsn(&db, "godwit_idle").await >= target,
        "--once confirmed the start position"
    );
    // Continuous: keeps confirming while writes go to the unselected table only.
    let log = w.path().join("run.log");
    let mut child = w.spawn_run_logged(&pipe, &log);
    let mut moved = false;
    for round in 0..30 {
        db.batch_execute(&format!(
            "UPDATE noise SET v = md5(v || '{round}') WHERE id % 10 = {}",
            round % 10
        ))
        .await
        .unwrap();
        if round < 3 {
            continue;
        }
        // Keepalives confirm the WAL end within the walsender's status interval.
        let target = lsn_now(&db).await;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < until {
            if slot_lsn(&db, "godwit_idle").await >= target {
                moved = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if moved {
            break;
        }
    }
    // The session is cut (as by a network failure): godwit reconnects and goes on.
    let old_pid = walsender(&db, "godwit_idle").await.expect("streaming");
    db.batch_execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'godwit_idle'",
    )
    .await
    .unwrap();
    wait_until("godwit reconnects", 60, || async {
        walsender(&db, "godwit_idle")
            .await
            .is_some_and(|pid| pid != old_pid)
    })
    .await;
    db.batch_execute("INSERT INTO quiet VALUES (42)")
        .await
        .unwrap();
    wait_until("the change after the reconnect lands", 20, || async {
        !cdc_rows(&w.out().join("public/quiet")).is_empty()
    })
    .await;
    // SIGTERM: flush, checkpoint, exit 0 — once the change has reached godwit's buffer,
    // before its file is due.
    let received = log_count(&log, "transaction received");
    db.batch_execute("INSERT INTO quiet VALUES (43)")
        .await
        .unwrap();
    wait_until("godwit received the change", 20, || async {
        log_count(&log, "transaction received") > received
    })
    .await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(
        moved,
        "confirmed_flush_lsn kept up with the writes to the unselected table"
    );
    assert_eq!(status.code(), Some(0), "a clean stop on SIGTERM");
    let rows = cdc_rows(&w.out().join("public/quiet"));
    let ids: Vec<&str> = rows.iter().map(|r| r.3["id"].as_str()).collect();
    assert_eq!(ids, ["42", "43"], "after a reconnect and on SIGTERM");
    assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}

#[tokio::test]
async fn a_table_selected_later_is_never_silently_unpublished() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_added").await;
    db.batch_execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);")
        .await
        .unwrap();
    let url = pg.url("godwit_cdc_added");
    let w = Work::new();
    // mode cdc: a newly selected table joins godwit's publication.
    let p = w.pipeline(&cdc_pipeline("added", &url, "cdc", "\"public.a\"", ""));
    assert_ok(&w.godwit(&["run", p.to_str().unwrap(), "--once"], &[]));
    let p = w.pipeline(&cdc_pipeline(
        "added",
        &url,
        "cdc",
        "\"public.a\", \"public.b\"",
        "",
    ));
    let ps = p.to_str().unwrap();
    assert_ok(&w.godwit(&["run", ps, "--once"], &[]));
    db.batch_execute("INSERT INTO b VALUES (7)").await.unwrap();
    assert_ok(&w.godwit(&["run", ps, "--once"], &[]));
    let rows = cdc_rows(&w.out().join("public/b"));
    assert_eq!(rows.len(), 1);
    assert_ok(&w.godwit(&["drop", ps, "--yes"], &[]));

    // full-load-and-cdc: its rows so far come from a temporary slot's snapshot, then CDC.
    let w = Work::new();
    let mode = "full-load-and-cdc";
    let p = w.pipeline(&cdc_pipeline("added2", &url, mode, "\"public.a\"", ""));
    assert_ok(&w.godwit(&["run", p.to_str().unwrap(), "--once"], &[]));
    db.batch_execute("INSERT INTO b SELECT generate_series(100, 199)")
        .await
        .unwrap();
    let p = w.pipeline(&cdc_pipeline(
        "added2",
        &url,
        mode,
        "\"public.a\", \"public.b\"",
        "",
    ));
    let ps = p.to_str().unwrap();
    assert_ok(&w.godwit(&["run", ps, "--once"], &[]));
    db.batch_execute("DELETE FROM b WHERE id < 150; INSERT INTO b VALUES (1000);")
        .await
        .unwrap();
    assert_ok(&w.godwit(&["run", ps, "--once"], &[]));
    assert_reproduces(&w.out(), &db, "b", &["id"]).await;
    assert_ok(&w.godwit(&["drop", ps, "--yes"], &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_takes_a_fresh_snapshot_through_a_temporary_slot() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_reload").await;
    db.batch_execute(
        "CREATE TABLE r (id int PRIMARY KEY, v int);
         INSERT INTO r SELECT i, 0 FROM generate_series(1, 20000) i;",
    )
    .await
    .unwrap();
    let url = pg.url("godwit_cdc_reload");
    let w = Work::new();
    let pipe = w.pipeline(&cdc_pipeline(
        "reload",
        &url,
        "full-load-and-cdc",
        "\"public.r\"",
        "[notify]\nevents_file = \"{out}/events.jsonl\"\n",
    ));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    db.batch_execute(
        "UPDATE r SET v = 1 WHERE id <= 100; DELETE FROM r WHERE id BETWEEN 101 AND 200;",
    )
    .await
    .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert!(!table_files(&w.out().join("public/r")).1.is_empty());

    let queued = assert_ok(&w.godwit(&["reload", p, "--table", "public.r"], &[]));
    assert!(queued.contains("reload queued"), "{queued}");
    // Writes keep coming while the table reloads.
    let writer = {
        let db = pg.connect("godwit_cdc_reload").await;
        tokio::spawn(async move {
            for i in 0..300 {
                db.batch_execute(&format!(
                    "UPDATE r SET v = v + 1 WHERE id = {}; INSERT INTO r VALUES ({}, 7);",
                    1 + i * 13,
                    100_000 + i
                ))
                .await
                .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let reloaded = assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    writer.await.unwrap();
    assert!(
        reloaded.contains("reloaded; CDC goes on after the new snapshot"),
        "{reloaded}"
    );
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));

    assert_reproduces(&w.out(), &db, "r", &["id"]).await;
    let kinds: Vec<String> = events(&w.out().join("events.jsonl"))
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.contains(&"table.reload_requested".to_string()),
        "{kinds:?}"
    );
    let slots = db
        .query(
            "SELECT slot_name FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(slots.len(), 1, "the temporary slot is gone");
    assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}

#[tokio::test]
async fn an_existing_publication_is_used_as_it_is() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_mine").await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);
         CREATE PUBLICATION mine FOR TABLE t;",
    )
    .await
    .unwrap();
    let url = pg.url("godwit_cdc_mine");
    let w = Work::new();
    let text = |include: &str| {
        cdc_pipeline("mine", &url, "cdc", include, "").replace(
            &format!("[source]\nurl = \"{url}\"\n"),
            &format!("[source]\nurl = \"{url}\"\npublication = \"mine\"\n"),
        )
    };
    let p = w.pipeline(&text("\"public.t\""));
    let ps = p.to_str().unwrap().to_string();
    assert_ok(&w.godwit(&["run", &ps, "--once"], &[]));
    db.batch_execute("INSERT INTO t VALUES (1)").await.unwrap();
    // --max-duration: a continuous run that stops cleanly by itself.
    let started = std::time::Instant::now();
    assert_ok(&w.godwit(&["run", &ps, "--max-duration", "3s"], &[]));
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_secs(3) && took < std::time::Duration::from_secs(20));
    assert_eq!(cdc_rows(&w.out().join("public/t")).len(), 1);
    // A selected table the user's publication lacks: refused with the statement to run.
    w.pipeline(&text("\"public.t\", \"public.u\""));
    let o = w.godwit(&["run", &ps, "--once"], &[]);
    let t = common::text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("ALTER PUBLICATION mine ADD TABLE \"public\".\"u\""),
        "{t}"
    );
    // drop removes the slot and the state, never the user's publication.
    w.pipeline(&text("\"public.t\""));
    let dropped = assert_ok(&w.godwit(&["drop", &ps, "--yes"], &[]));
    assert!(!dropped.contains("publication mine"), "{dropped}");
    let tables: Vec<String> = db
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'mine'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["t"], "the publication was not altered");
}
