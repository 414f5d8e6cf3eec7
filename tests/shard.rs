//! A sharded full load: three processes (`run --shard 1/3`, `2/3`, `3/3`) share the units of
//! one load through the state store; shard 2 is SIGKILLed while it loads and run again. The
//! files hold exactly the source's rows — none missing, none twice — as one process would
//! write them, and every shard did part of the work. With CDC, the CDC job is shard 1: the
//! shards load from its slot's snapshot and it follows the slot after them, with no change
//! missing or twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use common::replay::*;
use common::source::pg_keyed;
use common::*;

/// `godwit run PIPELINE ARGS…`, logging to `log`.
fn start(work: &Work, pipeline: &Path, args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_godwit"))
        .current_dir(work.path())
        .args(["run", pipeline.to_str().unwrap()])
        .args(args)
        .env("GODWIT_LOG", "info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap()
}

fn wait_ok(child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{what}: {status}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `id → v` of every LOAD file of a table; panics on an id seen twice.
fn loaded(out: &Path, table: &str) -> BTreeMap<i64, String> {
    let batches: Vec<RecordBatch> = read_table(out, "public", table);
    let mut rows = BTreeMap::new();
    for b in &batches {
        let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let vs = b.column_by_name("v").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!(
                rows.insert(ids.value(i), vs.value(i).to_string()).is_none(),
                "{table}: id {} twice",
                ids.value(i)
            );
        }
    }
    rows
}

async fn source(db: &tokio_postgres::Client, table: &str) -> BTreeMap<i64, String> {
    db.query(&format!("SELECT id, v FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Completed units in shard `n`'s own record.
fn units_done(out: &Path, n: u32) -> usize {
    let path = out.join(format!("_godwit/state/shard-{n}/task.json"));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default())
            .unwrap_or_default();
    record["tables"]
        .as_object()
        .map(|tables| {
            tables
                .values()
                .map(|t| {
                    let segments = t["segments"].as_array().cloned().unwrap_or_default();
                    if segments.is_empty() {
                        usize::from(t["state"] == "Table completed")
                    } else {
                        segments
                            .iter()
                            .filter(|s| s["state"] == "Table completed")
                            .count()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Waits for shard 2 run again, shard 3 and shard 1, each to end with success.
fn wait_all(work: &Work, [two, three, one]: [&mut Killed; 3], logs: &[std::path::PathBuf]) {
    let again = work.path().join("shard2-again.log");
    wait_ok(&mut two.0, &again, "shard 2, run again");
    wait_ok(&mut three.0, &logs[2], "shard 3");
    wait_ok(&mut one.0, &logs[0], "shard 1 (the coordinator)");
}

/// Kills shard 2 (`two`) once it has started loading, before its part is done, checks that
/// the coordinator (`one`) waits for it, and starts it again (log `shard2-again.log`). Returns
/// the new process and the units shard 2 had completed at the kill.
fn kill_while_loading(
    work: &Work,
    path: &Path,
    one: &mut Killed,
    two: &mut Killed,
    log: &Path,
) -> (Killed, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_count(log, "loading this shard's part of the full load") == 0 {
        assert!(
            Instant::now() < deadline,
            "shard 2 never started loading\n{}\ncoordinator:\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            std::fs::read_to_string(work.path().join("shard1.log")).unwrap_or_default()
        );
        assert!(two.0.try_wait().unwrap().is_none(), "shard 2 ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Stopped at once, so what it completed does not change before the kill.
    unsafe { libc::kill(two.0.id() as i32, libc::SIGSTOP) };
    assert!(
        two.0.try_wait().unwrap().is_none(),
        "shard 2 ended before the kill"
    );
    let done_at_kill = units_done(&work.out(), 2);
    two.0.kill().unwrap();
    two.0.wait().unwrap();
    // The coordinator cannot finish without shard 2's units.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        one.0.try_wait().unwrap().is_none(),
        "the coordinator ended without shard 2"
    );
    let again = work.path().join("shard2-again.log");
    (
        Killed(start(work, path, &["--shard", "2/3"], &again)),
        done_at_kill,
    )
}

#[tokio::test]
async fn three_shards_one_killed_load_exactly_the_source() {
    let pg = pg();
    let db = pg.fresh_db("godwit_shard").await;
    db.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO orders SELECT i, md5(i::text) FROM generate_series(1, 200000) i;
         CREATE TABLE small (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO small SELECT i, 'small ' || i FROM generate_series(1, 500) i;
         ANALYZE;",
    )
    .await
    .unwrap();
    let work = Work::new();
    // Eight segments of orders, read slowly (the filter keeps every row but sleeps every
    // 10,000), and small as one unit: about three units for each shard.
    let path = work.pipeline(&format!(
        "name = \"sharded\"\nmode = \"full-load\"\n[source]\nurl = \"{}\"\n[tables]\n\
         include = [\"public.orders\", \"public.small\"]\n[tables.\"public.orders\"]\n\
         partitions = 8\nwhere = \"id % 10000 <> 0 OR pg_sleep(0.2) IS NOT NULL\"\n\
         [load]\nparallel = 1\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url("godwit_shard")
    ));
    let logs: Vec<_> = (1..=3)
        .map(|n| work.path().join(format!("shard{n}.log")))
        .collect();
    let mut one = Killed(start(&work, &path, &["--shard", "1/3"], &logs[0]));
    let mut two = Killed(start(&work, &path, &["--shard", "2/3"], &logs[1]));
    let mut three = Killed(start(&work, &path, &["--shard", "3/3"], &logs[2]));

    let (mut two_again, done_at_kill) =
        kill_while_loading(&work, &path, &mut one, &mut two, &logs[1]);
    wait_all(&work, [&mut two_again, &mut three, &mut one], &logs);

    // Shard 2's kill landed before its part was done; shards 2 and 3 did part of the work.
    let done = units_done(&work.out(), 2);
    assert!(
        done_at_kill < done,
        "shard 2: {done_at_kill} units at the kill, {done} at the end"
    );
    assert!(units_done(&work.out(), 3) > 0);
    assert_eq!(loaded(&work.out(), "orders"), source(&db, "orders").await);
    assert_eq!(loaded(&work.out(), "small"), source(&db, "small").await);
    let status = assert_ok(&work.godwit(&["status", path.to_str().unwrap(), "--json"], &[]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    for t in ["public.orders", "public.small"] {
        assert_eq!(status["tables"][t]["state"], "Table completed", "{status}");
    }
    // `status` merges the shards' records: every unit once, complete, with its rows.
    let shards = status["shard_status"].as_array().expect("shard_status");
    assert_eq!(shards.len(), 3, "{status}");
    let segments = status["tables"]["public.orders"]["segments"]
        .as_array()
        .unwrap()
        .len() as u64;
    let sum = |field: &str| -> u64 { shards.iter().map(|v| v[field].as_u64().unwrap()).sum() };
    assert_eq!(sum("units"), segments + 1, "{status}");
    assert_eq!(sum("completed"), segments + 1, "{status}");
    assert_eq!(sum("rows"), 200_500, "{status}");
    assert!(
        shards.iter().all(|v| v["units"].as_u64() > Some(0)),
        "{status}"
    );
    let text = assert_ok(&work.godwit(&["status", path.to_str().unwrap()], &[]));
    assert!(text.contains("shard 2/3: "), "{text}");
    // One table.loaded per table, from the coordinator.
    let events = events(&work.out().join("_godwit/state/events.jsonl"));
    let loaded_events = events
        .iter()
        .filter(|e| e["event_type"] == "table.loaded")
        .count();
    assert_eq!(loaded_events, 2, "{events:?}");
}

#[test]
fn a_shard_outside_its_count_is_exit_2() {
    let work = Work::new();
    let path = work.pipeline("name = \"s\"\n[source]\nurl = \"postgres://x@127.0.0.1:1/x\"\n[target]\nurl = \"file://{out}\"\n");
    let o = work.godwit(&["run", path.to_str().unwrap(), "--shard", "4/3"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("1 ≤ I ≤ N"), "{}", text(&o));
}

/// The CDC job coordinates a sharded initial load (`--shard 1/3` of a full-load-and-cdc
/// pipeline): the shards load from the slot's exported snapshot (shard 2 SIGKILLed and run
/// again), the coordinator then follows the slot. Changes made while the shards load are in
/// the CDC files exactly once and not in the load; the files replay to what PostgreSQL holds.
#[tokio::test]
async fn a_sharded_initial_load_then_cdc_has_no_gap_and_no_overlap() {
    let pg = pg();
    let name = "godwit_shard_cdc";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO orders SELECT i, md5(i::text) FROM generate_series(1, 300000) i;
         ANALYZE;",
    )
    .await
    .unwrap();
    let work = Work::new();
    let path = work.pipeline(&format!(
        "name = \"sharded-cdc\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n\
         [tables]\ninclude = [\"public.orders\"]\n[tables.\"public.orders\"]\npartitions = 6\n\
         [load]\nparallel = 1\n\
         [target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n",
        pg.url(name)
    ));
    let logs: Vec<_> = (1..=3)
        .map(|n| work.path().join(format!("shard{n}.log")))
        .collect();
    let mut one = Killed(start(&work, &path, &["--shard", "1/3", "--once"], &logs[0]));
    let mut two = Killed(start(&work, &path, &["--shard", "2/3"], &logs[1]));
    let mut three = Killed(start(&work, &path, &["--shard", "3/3"], &logs[2]));
    let (mut two_again, done_at_kill) =
        kill_while_loading(&work, &path, &mut one, &mut two, &logs[1]);
    // Changes while the shards load (the coordinator waits for shard 2): after the slot's
    // snapshot, so in CDC only.
    db.batch_execute(
        "INSERT INTO orders SELECT i, 'during ' || i FROM generate_series(400001, 400050) i;
         UPDATE orders SET v = 'updated during' WHERE id BETWEEN 10 AND 19;
         DELETE FROM orders WHERE id BETWEEN 30000 AND 30009;",
    )
    .await
    .unwrap();
    wait_all(&work, [&mut two_again, &mut three, &mut one], &logs);
    assert!(done_at_kill < units_done(&work.out(), 2));
    assert!(units_done(&work.out(), 3) > 0);

    // The CDC job goes on after the coordinator's --once run; a shard started now has
    // nothing left to load.
    db.batch_execute(
        "INSERT INTO orders VALUES (400100, 'after'); UPDATE orders SET v = 'later' WHERE id = 11;",
    )
    .await
    .unwrap();
    assert_ok(&work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]));
    let late = work.path().join("late-shard.log");
    let mut late_shard = Killed(start(&work, &path, &["--shard", "3/3"], &late));
    wait_ok(&mut late_shard.0, &late, "a shard started after the load");

    let dir = work.out().join("public").join("orders");
    assert_eq!(
        replay_keyed(&dir, &["id"]),
        pg_keyed(&db, "orders", &["id"]).await
    );
    // No overlap: what changed after the snapshot is not in the load, and each change is in
    // the CDC files once (cdc_rows panics on a change seen twice).
    let (load_files, _) = table_files(&dir);
    let mut loaded_ids = BTreeMap::new();
    for f in &load_files {
        for r in render(&read_parquet(f)) {
            let id: i64 = r["id"].parse().unwrap();
            assert!(
                loaded_ids.insert(id, r["v"].clone()).is_none(),
                "id {id} loaded twice"
            );
        }
    }
    assert_eq!(loaded_ids.len(), 300000);
    // The load holds the rows as they were at the snapshot.
    let md5_15: String = db.query_one("SELECT md5('15')", &[]).await.unwrap().get(0);
    assert_eq!(loaded_ids[&15], md5_15);
    assert!(loaded_ids.contains_key(&30005));
    let changes = cdc_rows(&dir);
    let inserted: Vec<i64> = changes
        .iter()
        .filter(|c| c.2 == "I")
        .map(|c| c.3["id"].parse().unwrap())
        .collect();
    let mut want: Vec<i64> = (400001..=400050).collect();
    want.push(400100);
    assert_eq!(inserted, want);
    assert_eq!(changes.iter().filter(|c| c.2 == "D").count(), 10);
    assert_eq!(changes.iter().filter(|c| c.2 == "U").count(), 11);
}

/// A shard that never comes cannot hold the load: with no sign of it (its lease free, nothing
/// completed) for `GODWIT_SHARD_PATIENCE`, the coordinator fails the tables it waits for (exit
/// 3, `Table error` with the shard named) and loads the rest.
#[tokio::test]
async fn a_shard_that_never_comes_fails_its_tables_after_the_patience() {
    let pg = pg();
    let db = pg.fresh_db("godwit_shard_absent").await;
    db.batch_execute(
        "CREATE TABLE a (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 100) i;
         CREATE TABLE b (id bigint PRIMARY KEY, v text NOT NULL);
         INSERT INTO b SELECT i, 'b' || i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    let work = Work::new();
    let path = work.pipeline(&format!(
        "name = \"absent\"\nmode = \"full-load\"\n[source]\nurl = \"{}\"\n[tables]\n\
         include = [\"public.a\", \"public.b\"]\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url("godwit_shard_absent")
    ));
    let started = Instant::now();
    let o = work.godwit(
        &["run", path.to_str().unwrap(), "--shard", "1/2"],
        &[("GODWIT_SHARD_PATIENCE", "3")],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(started.elapsed() < Duration::from_secs(60));
    let status = assert_ok(&work.godwit(&["status", path.to_str().unwrap(), "--json"], &[]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    // Unit 0 (a) is shard 1's, unit 1 (b) shard 2's.
    assert_eq!(
        status["tables"]["public.a"]["state"], "Table completed",
        "{status}"
    );
    assert_eq!(
        status["tables"]["public.b"]["state"], "Table error",
        "{status}"
    );
    let error = status["tables"]["public.b"]["last_error"].as_str().unwrap();
    assert!(error.contains("shard(s) 2 did not load"), "{error}");
    assert_eq!(loaded(&work.out(), "a"), source(&db, "a").await);
}
