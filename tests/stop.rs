//! One way to stop: SIGTERM during a full load stops it cleanly within a few seconds (the load
//! in progress aborted, no partial or temporary file, completed tables kept, the task recorded
//! as interrupted), and the next run completes it with exactly the source's rows; SIGTERM while
//! a CDC reload is starting stops CDC cleanly too, and the next run finishes the reload.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::replay::*;
use common::source::pg_keyed;
use common::*;

fn task_json(out: &Path) -> serde_json::Value {
    std::fs::read(out.join("_godwit/state/task.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Every file under `dir` (relative names), asserting none is a temporary one.
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

fn sigterm(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits up to `secs` for the child to exit; its exit code.
fn wait_exit(child: &mut std::process::Child, secs: u64) -> Option<i32> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < until,
            "godwit did not exit within {secs} s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a COPY reads `db`.
async fn wait_for_copy(admin: &tokio_postgres::Client, db: &str) {
    let until = Instant::now() + Duration::from_secs(90);
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
        assert!(Instant::now() < until, "no COPY started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_mid_full_load_stops_cleanly_and_the_next_run_completes_it() {
    let pg = pg();
    let name = "godwit_stop_load";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE a_done (id int PRIMARY KEY, v text);
         INSERT INTO a_done SELECT i, 'd' || i FROM generate_series(1, 500) i;
         CREATE TABLE b_slow (id int PRIMARY KEY, v text, n numeric(10,2));
         INSERT INTO b_slow SELECT i, md5(i::text), i / 3.0 FROM generate_series(1, 20000) i;",
    )
    .await
    .unwrap();
    db.batch_execute("VACUUM ANALYZE").await.unwrap();
    let admin = pg.connect("postgres").await;
    let w = Work::new();
    let text = |slow: bool| {
        // The filter selects every row; with `slow` it sleeps on every 50th (about 20 s in
        // all), so SIGTERM lands inside the COPY.
        let filter = if slow {
            "[tables.\"public.b_slow\"]\nwhere = \"id % 50 <> 0 OR pg_sleep(0.05) IS NOT NULL\"\n"
        } else {
            ""
        };
        format!(
            "name = \"stop-load\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n{filter}[load]\nparallel = 1\nbatch_rows = 1000\n[target]\nurl = \"file://{{out}}\"\n",
            pg.url(name)
        )
    };
    let p = w.pipeline(&text(true));
    let log = w.path().join("run.log");
    let mut child = w.spawn_run_logged(&p, &log);
    wait_for_copy(&admin, name).await;
    // `a_done` is loaded first (name order, one at a time).
    let until = Instant::now() + Duration::from_secs(30);
    while task_json(&w.out())["tables"]["public.a_done"]["state"] != "Table completed" {
        assert!(Instant::now() < until, "a_done never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_copy(&admin, name).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done_file = w.out().join("public/a_done/LOAD00000001.parquet");
    let done_mtime = std::fs::metadata(&done_file).unwrap().modified().unwrap();
    let stopped_at = Instant::now();
    sigterm(&child);
    let code = wait_exit(&mut child, 20);
    let took = stopped_at.elapsed();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "a clean stop:\n{logged}");
    assert!(
        took < Duration::from_secs(10),
        "stopped in {took:?}:\n{logged}"
    );
    assert!(logged.contains("SIGTERM"), "{logged}");
    no_temp_files(&w.out());
    assert!(
        !w.out().join("public/b_slow").exists()
            || parquet_files(&w.out().join("public/b_slow")).is_empty(),
        "no file of the interrupted table"
    );
    let state = task_json(&w.out());
    assert_eq!(state["state"], "interrupted", "{state}");
    assert_eq!(state["tables"]["public.a_done"]["state"], "Table completed");
    assert_eq!(state["tables"]["public.b_slow"]["state"], "Before load");
    let status = w.godwit(&["status", p.to_str().unwrap()], &[]);
    assert!(
        common::text(&status).contains("interrupted"),
        "{}",
        common::text(&status)
    );

    // The next run (without the slow filter) loads the rest and keeps what was completed.
    let p = w.pipeline(&text(false));
    let next = assert_ok(&w.godwit(&["run", p.to_str().unwrap()], &[]));
    assert!(next.contains("kept"), "{next}");
    assert_eq!(
        std::fs::metadata(&done_file).unwrap().modified().unwrap(),
        done_mtime,
        "the completed table was kept"
    );
    for table in ["a_done", "b_slow"] {
        let got = replay_keyed(&w.out().join("public").join(table), &["id"]);
        let want = pg_keyed(&db, table, &["id"]).await;
        assert_eq!(got.len(), want.len(), "{table}");
        for (k, row) in &want {
            assert_eq!(got.get(k), Some(row), "{table} row {k}");
        }
        // No duplicate: as many rows in the files as in the source.
        let (load, _) = table_files(&w.out().join("public").join(table));
        let n: usize = load.iter().map(|f| rows(&read_parquet(f))).sum();
        assert_eq!(n, want.len(), "{table}");
    }
    no_temp_files(&w.out());
    assert_eq!(task_json(&w.out())["state"], "stopped");
}

#[tokio::test]
async fn sigterm_during_a_cdc_reload_stops_cleanly_and_the_next_run_finishes_it() {
    let pg = pg();
    let name = "godwit_stop_reload";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 3000) i;",
    )
    .await
    .unwrap();
    let admin = pg.connect("postgres").await;
    let w = Work::new();
    let p = w.pipeline(&format!(
        "name = \"stop-reload\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.t\"]\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n",
        pg.url(name)
    ));
    let ps = p.to_str().unwrap();
    assert_ok(&w.godwit(&["run", ps, "--once"], &[]));
    db.batch_execute("UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id = 20;")
        .await
        .unwrap();

    let log = w.path().join("run.log");
    let mut child = Killed(w.spawn_run_logged(&p, &log));
    let until = Instant::now() + Duration::from_secs(30);
    while log_count(&log, "CDC started") == 0 {
        assert!(Instant::now() < until, "CDC never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A transaction with an id is open: the reload's temporary slot waits for it to end
    // (a logical slot's snapshot does), so SIGTERM lands while the reload is starting.
    let locker = pg.connect(name).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    assert_ok(&w.godwit(&["reload", ps, "--table", "public.t"], &[]));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = $1 AND backend_type = 'walsender' AND query LIKE 'CREATE_REPLICATION_SLOT%reload%'",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < until, "the reload did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = Instant::now();
    sigterm(&child.0);
    let code = wait_exit(&mut child.0, 30);
    let took = stopped_at.elapsed();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "a clean stop:\n{logged}");
    assert!(
        took < Duration::from_secs(15),
        "stopped in {took:?}:\n{logged}"
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
    no_temp_files(&w.out());
    let state = task_json(&w.out());
    assert_eq!(state["state"], "interrupted", "{state}");
    assert_ne!(
        state["tables"]["public.t"]["state"], "Table error",
        "{state}"
    );
    assert!(
        !w.out().join("_godwit/staging/public/t").exists()
            || parquet_files(&w.out().join("_godwit/staging/public/t")).is_empty(),
        "no staged file left"
    );
    // The temporary slot goes with its session (once the server notices it is gone).
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let slots: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE temporary AND database = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if slots == 0 {
            break;
        }
        if Instant::now() >= until {
            let rows = admin
                .query(
                    "SELECT slot_name::text, active::text, coalesce(active_pid::text, '-') FROM pg_replication_slots WHERE database = $1
                     UNION ALL SELECT pid::text, backend_type, coalesce(wait_event, '-') || ' ' || state || ' ' || query FROM pg_stat_activity WHERE datname = $1",
                    &[&name],
                )
                .await
                .unwrap();
            let seen: Vec<(String, String, String)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            panic!("the temporary slot stayed: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The request stayed: the next run reloads, and the files replay to the source.
    db.batch_execute("INSERT INTO t VALUES (5000, 'after')")
        .await
        .unwrap();
    let next = assert_ok(&w.godwit(&["run", ps, "--once"], &[]));
    assert!(next.contains("reloaded"), "{next}");
    let got = replay_keyed(&w.out().join("public/t"), &["id"]);
    let want = pg_keyed(&db, "t", &["id"]).await;
    assert_eq!(got.len(), want.len());
    for (k, row) in &want {
        assert_eq!(got.get(k), Some(row), "row {k}");
    }
    assert_ok(&w.godwit(&["drop", ps, "--yes"], &[]));
}
