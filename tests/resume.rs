//! Parallel segments and crash safety: `partitions = 4` gives exactly the rows of one stream,
//! and a run killed (SIGKILL) during COPY, during a multipart upload, or between an object's
//! completion and the state write, then started again, ends with the output of a clean run —
//! no duplicate, no missing row, no leftover or partial object. Tables the killed run completed
//! are kept; a table it did not finish is loaded again whole from the new snapshot.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use common::*;

/// Every id of a table's load, in file order (duplicates kept).
fn all_ids(out: &Path, table: &str) -> Vec<i64> {
    read_table(out, "public", table)
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Ids sorted; panics on a duplicate.
fn unique_sorted(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate rows in the output");
    ids
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn pipeline(db_url: &str, table: &str, extra: &str) -> String {
    format!(
        "name = \"resume\"\n[source]\nurl = \"{db_url}\"\n[tables]\ninclude = [\"public.{table}\"]\n{extra}\n[target]\nurl = \"file://{{out}}\"\ncompression = \"snappy\"\n"
    )
}

async fn seed(db: &tokio_postgres::Client, table: &str, rows: i64) {
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, body text, n numeric(12,2));
         INSERT INTO {table} SELECT i, md5(i::text) || md5((-i)::text), i / 7.0 FROM generate_series(1, {rows}) i;"
    ))
    .await
    .unwrap();
    db.batch_execute(&format!("VACUUM ANALYZE {table}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn four_segments_give_exactly_the_rows_of_one_stream() {
    let pg = pg();
    let db = pg.fresh_db("godwit_segments").await;
    seed(&db, "big", 200_000).await;
    db.batch_execute(
        "CREATE TABLE parted (id bigint, at date NOT NULL, v text) PARTITION BY RANGE (at);
         CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO parted SELECT i, date '2024-01-01' + (i % 700), md5(i::text) FROM generate_series(1, 50000) i;",
    )
    .await
    .unwrap();
    db.batch_execute("VACUUM ANALYZE parted").await.unwrap();

    let single = Work::new();
    let p1 = single.pipeline(&pipeline(&pg.url("godwit_segments"), "*", ""));
    assert_ok(&single.godwit(&["run", p1.to_str().unwrap()], &[]));

    let split = Work::new();
    let p4 = split.pipeline(&pipeline(
        &pg.url("godwit_segments"),
        "*",
        "[tables.\"public.*\"]\npartitions = 4\n[load]\nparallel = 2",
    ));
    assert_ok(&split.godwit(&["run", p4.to_str().unwrap()], &[]));

    for table in ["big", "parted"] {
        let names = file_names(&split.out().join("public").join(table));
        for n in 1..=4 {
            assert!(
                names.contains(&format!("SEGMENT{n}_LOAD00000001.parquet")),
                "{table}: {names:?}"
            );
        }
        let one = unique_sorted(all_ids(&single.out(), table));
        let four = unique_sorted(all_ids(&split.out(), table));
        assert_eq!(one, four, "{table}: segments differ from one stream");
    }
    assert_eq!(all_ids(&split.out(), "big").len(), 200_000);
    // The rows' values too, not only their keys.
    let sum = |out: &Path| -> usize {
        read_table(out, "public", "big")
            .iter()
            .map(|b| {
                b.column(1)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().bytes().map(|x| x as usize).sum::<usize>())
                    .sum::<usize>()
            })
            .sum()
    };
    assert_eq!(sum(&single.out()), sum(&split.out()));
    let status = split.godwit(&["status", p4.to_str().unwrap()], &[]);
    let t = text(&status);
    assert!(t.contains("segment 4/4"), "status shows segments: {t}");
}

fn task_json(work: &Work) -> serde_json::Value {
    std::fs::read(work.out().join("_godwit/state/task.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn no_temp_files(dir: &Path) {
    fn walk(d: &Path) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p);
            } else {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                assert!(!name.ends_with(".godwit-tmp"), "leftover {}", p.display());
            }
        }
    }
    walk(dir);
}

/// (id, body) of every row of a table's load, sorted by id.
fn id_bodies(out: &Path, table: &str) -> Vec<(i64, String)> {
    let mut rows: Vec<(i64, String)> = read_table(out, "public", table)
        .iter()
        .flat_map(|b| {
            let ids = b.column(0).as_primitive::<Int64Type>();
            let bodies = b.column(1).as_string::<i32>();
            (0..b.num_rows())
                .map(|i| (ids.value(i), bodies.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

/// The same, as PostgreSQL returns it.
async fn pg_id_bodies(db: &tokio_postgres::Client, table: &str) -> Vec<(i64, String)> {
    db.query(&format!("SELECT id, body FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Waits until some COPY reads `db` (the load is inside a table's data, not between tables).
async fn wait_for_copy(admin: &tokio_postgres::Client, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND state = 'active' AND query LIKE 'COPY%'",
                &[&db],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no COPY started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn killed_mid_table_reloads_that_table_whole_and_keeps_completed_tables() {
    let pg = pg();
    let db = pg.fresh_db("godwit_kill_copy").await;
    seed(&db, "slow", 12_000).await;
    seed(&db, "done", 500).await;
    let admin = pg.connect("postgres").await;
    let work = Work::new();
    // One unit at a time; `slow`'s segments crawl (a filter that is always true but sleeps on
    // every 100th row), so the kill lands inside one of its segments' COPY.
    let settings =
        "[tables.\"public.slow\"]\npartitions = 4\n[load]\nparallel = 1\nbatch_rows = 1000";
    let slow_path = work.pipeline(&pipeline(
        &pg.url("godwit_kill_copy"),
        "*",
        &settings.replace(
            "partitions = 4\n",
            "partitions = 4\nwhere = \"id % 100 <> 0 OR pg_sleep(CASE WHEN id > 3200 THEN 1 ELSE 0.01 END) IS NOT NULL\"\n",
        ),
    ));
    let mut child = work.spawn_run(&slow_path);
    // Wait until `done` and the first segment of `slow` are recorded complete and a later
    // segment is being read.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = task_json(&work);
        if t["tables"]["public.done"]["state"] == "Table completed"
            && t["tables"]["public.slow"]["segments"][0]["state"] == "Table completed"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first segment never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_copy(&admin, "godwit_kill_copy").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let state = task_json(&work);
    assert_eq!(state["state"], "running", "killed mid-run");
    assert_ne!(state["tables"]["public.slow"]["state"], "Table completed");
    let done_file = work.out().join("public/done/LOAD00000001.parquet");
    let done_mtime = std::fs::metadata(&done_file).unwrap().modified().unwrap();
    assert!(
        work.out()
            .join("public/slow/SEGMENT1_LOAD00000001.parquet")
            .exists(),
        "the kill landed after the first segment's file"
    );

    // Between the crash and the resume, rows move across segment boundaries: updated rows of
    // the first segment get new versions at the end of the heap (the last segment), rows go
    // and come. Keeping the first segment from the old snapshot would duplicate them. The
    // statistics counters do not see these writes (as after a server crash, which resets
    // them), so no rule based on them could notice.
    db.batch_execute(
        "SET track_counts = off;
         UPDATE slow SET body = 'moved ' || id WHERE id <= 300;
         DELETE FROM slow WHERE id BETWEEN 6000 AND 6100;
         INSERT INTO slow SELECT i, 'new ' || i, i FROM generate_series(12001, 12100) i;
         RESET track_counts;",
    )
    .await
    .unwrap();

    // The same pipeline without the slow filter (it selects every row either way).
    let path = work.pipeline(&pipeline(&pg.url("godwit_kill_copy"), "*", settings));
    assert_ok(&work.godwit(&["run", path.to_str().unwrap()], &[]));
    // The unfinished table is the source as it is now, from one snapshot, value by value.
    let got = id_bodies(&work.out(), "slow");
    let ids: Vec<i64> = got.iter().map(|(i, _)| *i).collect();
    unique_sorted(ids);
    assert_eq!(got, pg_id_bodies(&db, "slow").await);
    // The completed table was kept as it was.
    assert_eq!(
        std::fs::metadata(&done_file).unwrap().modified().unwrap(),
        done_mtime,
        "the completed table was reloaded"
    );
    assert_eq!(
        id_bodies(&work.out(), "done"),
        pg_id_bodies(&db, "done").await
    );
    no_temp_files(&work.out());
    assert_eq!(task_json(&work)["state"], "stopped");
}

#[tokio::test]
async fn crash_between_object_completion_and_state_write_leaves_no_duplicate() {
    let pg = pg();
    let db = pg.fresh_db("godwit_kill_commit").await;
    seed(&db, "t", 30_000).await;
    for (extra, crash_at) in [
        ("", "1"),
        (
            "[tables.\"public.t\"]\npartitions = 3\n[load]\nparallel = 1",
            "2",
        ),
        ("[target]\nmax_file_size = \"300KiB\"\n", "2"),
    ] {
        let work = Work::new();
        let text_ = pipeline(&pg.url("godwit_kill_commit"), "t", extra);
        // A [target] in `extra` merges with the base one.
        let text_ = if extra.starts_with("[target]") {
            text_.replace(extra, "").replace(
                "[target]\n",
                &format!("[target]\n{}", &extra["[target]\n".len()..]),
            )
        } else {
            text_
        };
        let path = work.pipeline(&text_);
        let crashed = work.godwit(
            &[
                "run",
                path.to_str().unwrap(),
                "--crash-after-objects",
                crash_at,
            ],
            &[],
        );
        assert_ne!(crashed.status.code(), Some(0), "{}", text(&crashed));
        assert!(text(&crashed).contains("crash point reached"));
        assert_ok(&work.godwit(&["run", path.to_str().unwrap()], &[]));
        let ids = unique_sorted(all_ids(&work.out(), "t"));
        assert_eq!(ids, (1..=30_000).collect::<Vec<_>>(), "case {extra:?}");
        no_temp_files(&work.out());

        // The same as a clean run, object for object.
        let clean = Work::new();
        let clean_path = clean.pipeline(&text_);
        assert_ok(&clean.godwit(&["run", clean_path.to_str().unwrap()], &[]));
        assert_eq!(
            file_names(&work.out().join("public/t")),
            file_names(&clean.out().join("public/t")),
            "case {extra:?}"
        );
    }
}
