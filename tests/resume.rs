//! Parallel segments and crash safety: `partitions = 4` gives exactly the rows of one stream,
//! and a run killed (SIGKILL) during COPY, during a multipart upload, or between an object's
//! completion and the state write, then started again, ends with the output of a clean run —
//! no duplicate, no missing row, no leftover or partial object — without reloading what had
//! completed.

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
    // Make this session's write counters visible in the statistics now.
    db.batch_execute("SELECT pg_stat_force_next_flush()")
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

#[tokio::test]
async fn killed_during_copy_resumes_without_reloading_completed_segments() {
    let pg = pg();
    let db = pg.fresh_db("godwit_kill_copy").await;
    seed(&db, "slow", 12_000).await;
    // Write counters reach the statistics up to a second late; let them settle so the
    // resumed run sees the table as unchanged (which it is).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let work = Work::new();
    // One segment at a time; the first is quick, the others crawl (a filter that is always
    // true but sleeps), so the kill surely lands inside the second segment's COPY.
    let settings =
        "[tables.\"public.slow\"]\npartitions = 4\n[load]\nparallel = 1\nbatch_rows = 1000";
    let slow_path = work.pipeline(&pipeline(
        &pg.url("godwit_kill_copy"),
        "slow",
        &settings.replace(
            "partitions = 4\n",
            "partitions = 4\nwhere = \"id % 100 <> 0 OR pg_sleep(CASE WHEN id > 3200 THEN 1 ELSE 0.01 END) IS NOT NULL\"\n",
        ),
    ));
    let mut child = work.spawn_run(&slow_path);
    // Wait until the first segment is recorded complete and the second is being read.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = task_json(&work);
        let segs = &t["tables"]["public.slow"]["segments"];
        if segs[0]["state"] == "Table completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first segment never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let state = task_json(&work);
    assert_eq!(state["state"], "running", "killed mid-run");
    let first = work.out().join("public/slow/SEGMENT1_LOAD00000001.parquet");
    let first_mtime = std::fs::metadata(&first).unwrap().modified().unwrap();

    // The same pipeline without the slow filter (it selects every row either way).
    let path = work.pipeline(&pipeline(&pg.url("godwit_kill_copy"), "slow", settings));
    let before = task_json(&work)["tables"]["public.slow"]["fingerprint"].clone();
    let second = assert_ok(&work.godwit(&["run", path.to_str().unwrap()], &[]));
    let after = task_json(&work)["tables"]["public.slow"]["fingerprint"].clone();
    assert_eq!(before, after, "the table did not change: {second}");
    // Completed segment kept as it was; everything else loaded once.
    assert_eq!(
        std::fs::metadata(&first).unwrap().modified().unwrap(),
        first_mtime,
        "the completed segment was reloaded"
    );
    let ids = unique_sorted(all_ids(&work.out(), "slow"));
    assert_eq!(ids, (1..=12_000).collect::<Vec<_>>());
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
