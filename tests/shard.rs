//! A sharded full load: three processes (`run --shard 1/3`, `2/3`, `3/3`) share the units of
//! one load through the state store; shard 2 is SIGKILLed while it loads and run again. The
//! files hold exactly the source's rows — none missing, none twice — as one process would
//! write them, and every shard did part of the work.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use common::*;

fn start(work: &Work, pipeline: &Path, shard: &str, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_godwit"))
        .current_dir(work.path())
        .args(["run", pipeline.to_str().unwrap(), "--shard", shard])
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
    let mut one = Killed(start(&work, &path, "1/3", &logs[0]));
    let mut two = Killed(start(&work, &path, "2/3", &logs[1]));
    let mut three = Killed(start(&work, &path, "3/3", &logs[2]));

    // Shard 2 is killed once it has started loading, before its part is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while log_count(&logs[1], "loading this shard's part of the full load") == 0 {
        assert!(Instant::now() < deadline, "shard 2 never started loading");
        assert!(two.0.try_wait().unwrap().is_none(), "shard 2 ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        two.0.try_wait().unwrap().is_none(),
        "shard 2 ended before the kill"
    );
    two.0.kill().unwrap();
    two.0.wait().unwrap();
    let done_at_kill = units_done(&work.out(), 2);
    // The coordinator cannot finish without shard 2's units.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        one.0.try_wait().unwrap().is_none(),
        "the coordinator ended without shard 2"
    );

    let again = work.path().join("shard2-again.log");
    let mut two_again = Killed(start(&work, &path, "2/3", &again));
    wait_ok(&mut two_again.0, &again, "shard 2, run again");
    wait_ok(&mut three.0, &logs[2], "shard 3");
    wait_ok(&mut one.0, &logs[0], "shard 1 (the coordinator)");

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
