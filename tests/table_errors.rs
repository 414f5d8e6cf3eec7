//! Table errors as DMS has them, in the full load, read as a role that is not a superuser
//! (REVOKE does not bind a superuser): of five tables one cannot be read (no SELECT
//! privilege) and one holds a value its column cannot be written as (NaN in numeric(10,2),
//! `[errors] data = "suspend-table"`).
//!
//! - `table = "suspend-table"`: the other three complete and match PostgreSQL value by value;
//!   the two are in `Table error` with reason and remedy (`status`, `status --json`, a
//!   `table.error` event each), the run ends with exit 3. After the fix, `godwit reload
//!   --table` for each and `godwit run` load exactly those two (the three completed ones are
//!   kept) and they match the source.
//! - `table = "stop-task"` (`load.parallel = 1`, tables in name order): the run stops at the
//!   unreadable table with exit 1; the table before it completed, none after it did.
//! - A COPY whose backend is terminated mid-stream is retried from the same snapshot: no row
//!   missing, none twice, and no row committed after the snapshot. When the snapshot itself is
//!   gone (its exporting connection killed too) the run fails (exit 1) and the next run resumes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::replay::{RowMap, render};
use common::source::pg_rows;
use common::*;
use tokio_postgres::Client;

const TABLES: &[&str] = &["a_orders", "b_secret", "c_items", "d_prices", "e_events"];

/// Five tables; `b_secret` becomes unreadable for the role, `d_prices` holds one NaN (id 50).
async fn seed(db: &Client) {
    db.batch_execute(
        "CREATE TABLE a_orders (id int PRIMARY KEY, name text, amount numeric(10,2), at timestamptz);
         INSERT INTO a_orders SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'order ' || i END,
                i * 1.25, timestamptz '2024-06-01 10:00:00+00' + i * interval '90 minutes 0.5 seconds'
           FROM generate_series(1, 300) i;
         CREATE TABLE b_secret (id int PRIMARY KEY, s text);
         INSERT INTO b_secret SELECT i, 'secret ' || i FROM generate_series(1, 10) i;
         CREATE TABLE c_items (id bigint PRIMARY KEY, tags text[], flag boolean);
         INSERT INTO c_items SELECT i, ARRAY['t' || i, 'x'], i % 2 = 0 FROM generate_series(1, 200) i;
         CREATE TABLE d_prices (id int PRIMARY KEY, price numeric(10,2));
         INSERT INTO d_prices SELECT i, CASE WHEN i = 50 THEN 'NaN'::numeric ELSE i + 0.99 END
           FROM generate_series(1, 100) i;
         CREATE TABLE e_events (id int PRIMARY KEY, d date, v double precision);
         INSERT INTO e_events SELECT i, date '2020-01-01' + i, i + 0.25 FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
}

/// A login role that may read every table but `b_secret`; returns the pipeline URL for it.
async fn reader(pg: &Pg, db: &Client, dbname: &str, role: &str) -> String {
    let admin = pg.connect("postgres").await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'te-pw-1'"
        ))
        .await
        .unwrap();
    db.batch_execute(&format!(
        "GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
         REVOKE SELECT ON b_secret FROM {role};"
    ))
    .await
    .unwrap();
    format!(
        "postgres://{role}:te-pw-1@{}:{}/{dbname}?sslmode=disable",
        pg.host, pg.port
    )
}

fn pipeline(name: &str, url: &str, table_policy: &str) -> String {
    format!(
        "name = \"{name}\"\nmode = \"full-load\"\n[source]\nurl = \"{url}\"\n[tables]\ninclude = [\"public.*\"]\n[load]\nparallel = 1\n[errors]\ntable = \"{table_policy}\"\ndata = \"suspend-table\"\n[target]\nurl = \"file://{{out}}\"\n[notify]\nevents_file = \"{{out}}/events.jsonl\"\n"
    )
}

/// The table's rows as godwit wrote them, sorted.
fn written(out: &Path, table: &str) -> Vec<RowMap> {
    let mut rows = render(&read_table(out, "public", table));
    rows.sort();
    rows
}

/// The table's rows as PostgreSQL returns them (rendered as Arrow shows godwit's values),
/// sorted.
async fn source(db: &Client, table: &str) -> Vec<RowMap> {
    let mut rows = pg_rows(db, table).await;
    rows.sort();
    rows
}

async fn assert_same(db: &Client, out: &Path, table: &str) {
    let want = source(db, table).await;
    assert!(!want.is_empty());
    assert_eq!(
        written(out, table),
        want,
        "{table}: the files differ from PostgreSQL"
    );
}

/// The JSON state (`status --json`).
fn status_json(w: &Work, pipe: &str) -> serde_json::Value {
    let out = assert_ok(&w.godwit(&["status", pipe, "--json"], &[]));
    serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap()
}

fn state_of<'a>(status: &'a serde_json::Value, table: &str) -> &'a str {
    status["tables"][format!("public.{table}")]["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no state for {table}: {status}"))
}

/// Events of one kind, by table.
fn events_of(events: &[serde_json::Value], kind: &str) -> BTreeMap<String, serde_json::Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == kind)
        .map(|e| {
            (
                e["table"].as_str().unwrap_or_default().to_string(),
                e.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn suspended_tables_end_in_table_error_the_others_complete_and_reload_fixes_them() {
    let pg = pg();
    let dbname = "godwit_te_suspend";
    let db = pg.fresh_db(dbname).await;
    seed(&db).await;
    let url = reader(&pg, &db, dbname, "godwit_te_suspend_reader").await;
    let w = Work::new();
    let path = w.pipeline(&pipeline("te-suspend", &url, "suspend-table"));
    let pipe = path.to_str().unwrap();

    // Start-up does not refuse the unreadable table: it is one table's error (exit 3).
    let run = w.godwit(&["run", pipe], &[]);
    let text = text(&run);
    assert_eq!(run.status.code(), Some(3), "{text}");
    assert!(
        !text.contains("te-pw-1"),
        "a password in the output:\n{text}"
    );

    for t in ["a_orders", "c_items", "e_events"] {
        assert_same(&db, &w.out(), t).await;
    }
    // Neither failed table left a file.
    for t in ["b_secret", "d_prices"] {
        assert!(
            parquet_files(&w.out().join("public").join(t)).is_empty(),
            "{t} has files"
        );
    }

    let status = status_json(&w, pipe);
    for t in ["a_orders", "c_items", "e_events"] {
        assert_eq!(state_of(&status, t), "Table completed");
    }
    let secret = &status["tables"]["public.b_secret"];
    assert_eq!(secret["state"], "Table error");
    let error = secret["last_error"].as_str().unwrap();
    assert!(error.contains("permission denied"), "{error}");
    let remedy = secret["remedy"].as_str().unwrap();
    assert!(
        remedy.contains("GRANT SELECT ON \"public\".\"b_secret\" TO \"godwit_te_suspend_reader\"")
            && remedy.contains("godwit reload PIPELINE --table public.b_secret"),
        "{remedy}"
    );
    let prices = &status["tables"]["public.d_prices"];
    assert_eq!(prices["state"], "Table error");
    let error = prices["last_error"].as_str().unwrap();
    assert!(
        error.contains("id=50") && error.contains("price") && error.contains("NaN"),
        "{error}"
    );
    assert!(
        prices["remedy"]
            .as_str()
            .unwrap()
            .contains("numeric = \"text\""),
        "{prices}"
    );

    let shown = assert_ok(&w.godwit(&["status", pipe], &[]));
    for t in ["b_secret", "d_prices"] {
        let line = shown
            .lines()
            .find(|l| l.starts_with(&format!("public.{t} ")))
            .unwrap_or_else(|| panic!("no line for {t}:\n{shown}"));
        assert!(line.contains("Table error"), "{line}");
    }
    assert!(
        shown.contains("error: reading the table: PostgreSQL at")
            && shown.contains("permission denied for table b_secret"),
        "{shown}"
    );
    assert!(shown.contains("remedy: grant the privilege"), "{shown}");

    let events = common::events(&w.out().join("events.jsonl"));
    let errors = events_of(&events, "table.error");
    assert_eq!(
        errors.keys().collect::<Vec<_>>(),
        ["public.b_secret", "public.d_prices"]
    );
    for e in errors.values() {
        assert_eq!(e["details"]["policy"], "suspend-table", "{e}");
        assert!(!e["details"]["remedy"].as_str().unwrap().is_empty(), "{e}");
        assert!(!e["details"]["error"].as_str().unwrap().is_empty(), "{e}");
    }
    let loaded = events_of(&events, "table.loaded");
    assert_eq!(
        loaded.keys().collect::<Vec<_>>(),
        ["public.a_orders", "public.c_items", "public.e_events"]
    );

    // The fix, then a reload of each and one run.
    db.batch_execute(
        "GRANT SELECT ON b_secret TO godwit_te_suspend_reader;
         UPDATE d_prices SET price = 50.50 WHERE id = 50;",
    )
    .await
    .unwrap();
    let kept_file = w.out().join("public/a_orders/LOAD00000001.parquet");
    let kept_before = std::fs::metadata(&kept_file).unwrap().modified().unwrap();
    for t in ["public.b_secret", "public.d_prices"] {
        let out = assert_ok(&w.godwit(&["reload", pipe, "--table", t], &[]));
        assert!(out.contains("reload queued"), "{out}");
    }
    let before = events.len();
    assert_ok(&w.godwit(&["run", pipe], &[]));
    for t in TABLES {
        assert_same(&db, &w.out(), t).await;
    }
    let status = status_json(&w, pipe);
    for t in TABLES {
        assert_eq!(state_of(&status, t), "Table completed");
        assert!(
            status["tables"][format!("public.{t}")]["last_error"].is_null(),
            "{status}"
        );
    }
    // Only the two were loaded again; the completed ones were kept as they were.
    let events = common::events(&w.out().join("events.jsonl"));
    let again = events_of(&events[before..], "table.loaded");
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        ["public.b_secret", "public.d_prices"]
    );
    assert_eq!(
        std::fs::metadata(&kept_file).unwrap().modified().unwrap(),
        kept_before
    );

    // After a clean end with nothing asked for, a run loads every table again.
    let before = events.len();
    assert_ok(&w.godwit(&["run", pipe], &[]));
    let events = common::events(&w.out().join("events.jsonl"));
    assert_eq!(events_of(&events[before..], "table.loaded").len(), 5);
    for t in TABLES {
        assert_same(&db, &w.out(), t).await;
    }
}

#[tokio::test]
async fn stop_task_stops_the_run_at_the_first_table_error() {
    let pg = pg();
    let dbname = "godwit_te_stop";
    let db = pg.fresh_db(dbname).await;
    seed(&db).await;
    let url = reader(&pg, &db, dbname, "godwit_te_stop_reader").await;
    let w = Work::new();
    let path = w.pipeline(&pipeline("te-stop", &url, "stop-task"));
    let pipe = path.to_str().unwrap();

    let run = w.godwit(&["run", pipe], &[]);
    let text = text(&run);
    assert_eq!(run.status.code(), Some(1), "{text}");
    assert!(
        text.contains("public.b_secret") && text.contains("permission denied"),
        "{text}"
    );

    // Tables load in name order, one at a time: a_orders completed, b_secret stopped the run,
    // nothing after it completed.
    assert_same(&db, &w.out(), "a_orders").await;
    let status = status_json(&w, pipe);
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(state_of(&status, "a_orders"), "Table completed");
    assert_eq!(state_of(&status, "b_secret"), "Table error");
    for t in ["c_items", "d_prices", "e_events"] {
        assert_ne!(state_of(&status, t), "Table completed", "{t}");
        assert_ne!(state_of(&status, t), "Table error", "{t}");
        assert!(parquet_files(&w.out().join("public").join(t)).is_empty());
    }
    let events = common::events(&w.out().join("events.jsonl"));
    let errors = events_of(&events, "table.error");
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["public.b_secret"]);
    assert_eq!(errors["public.b_secret"]["details"]["policy"], "stop-task");
    assert_eq!(
        events_of(&events, "table.loaded")
            .keys()
            .collect::<Vec<_>>(),
        ["public.a_orders"]
    );
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["event_type"] == "task.failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["details"]["error"]
            .as_str()
            .unwrap()
            .contains("public.b_secret"),
        "{}",
        failed[0]
    );

    // After the fix the next run resumes: the tables not completed load, a_orders is kept.
    db.batch_execute(
        "GRANT SELECT ON b_secret TO godwit_te_stop_reader;
         UPDATE d_prices SET price = 50.50 WHERE id = 50;",
    )
    .await
    .unwrap();
    let before = events.len();
    assert_ok(&w.godwit(&["run", pipe], &[]));
    let events = common::events(&w.out().join("events.jsonl"));
    assert_eq!(
        events_of(&events[before..], "table.loaded")
            .keys()
            .collect::<Vec<_>>(),
        [
            "public.b_secret",
            "public.c_items",
            "public.d_prices",
            "public.e_events"
        ]
    );
    for t in TABLES {
        assert_same(&db, &w.out(), t).await;
    }
}

/// godwit's COPY backend on `dbname` once it has sent `rows` rows.
async fn copy_backend(admin: &Client, dbname: &str, rows: i64) -> Option<i32> {
    admin
        .query_opt(
            "SELECT a.pid FROM pg_stat_activity a JOIN pg_stat_progress_copy p USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'godwit' AND a.query LIKE 'COPY %'
               AND p.tuples_processed >= $2
             ORDER BY a.pid LIMIT 1",
            &[&dbname, &rows],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// A fresh database `dbname` with `n` rows in `big`, and a two-segment `full-load` pipeline of
/// it whose COPYs stream slowly (the filter keeps every row but sleeps every 10,000 rows), so
/// a test can catch them mid-stream; `extra` is appended to the pipeline file.
async fn slow_load(
    pg: &Pg,
    dbname: &str,
    n: i64,
    name: &str,
    extra: &str,
) -> (Client, Work, PathBuf) {
    let db = pg.fresh_db(dbname).await;
    db.batch_execute(&format!(
        "CREATE TABLE big (id bigint PRIMARY KEY, v text);
         INSERT INTO big SELECT i, md5(i::text) FROM generate_series(1, {n}) i;
         ANALYZE big;"
    ))
    .await
    .unwrap();
    let w = Work::new();
    let path = w.pipeline(&format!(
        "name = \"{name}\"\nmode = \"full-load\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.big\"]\n[tables.\"public.big\"]\npartitions = 2\nwhere = \"id % 10000 <> 0 OR pg_sleep(0.3) IS NOT NULL\"\n[load]\nparallel = 2\nbatch_rows = 5000\n[notify]\nevents_file = \"{{out}}/events.jsonl\"\n{extra}",
        pg.url(dbname)
    ));
    (db, w, path)
}

/// Waits (up to 60 s) for a COPY backend of `dbname` that has sent `rows` rows; panics if the
/// run ends first.
async fn caught_copy(admin: &Client, dbname: &str, rows: i64, run: &mut Killed, log: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pid) = copy_backend(admin, dbname, rows).await {
            return pid;
        }
        assert!(
            run.0.try_wait().unwrap().is_none(),
            "godwit ended before its COPY could be caught:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "no COPY backend seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_copy_killed_mid_stream_is_retried_from_the_same_snapshot() {
    const N: i64 = 200_000;
    let pg = pg();
    let dbname = "godwit_te_kill";
    // A file every batch, so the killed attempt has completed files of its own.
    let (db, w, path) = slow_load(
        &pg,
        dbname,
        N,
        "te-kill",
        "[errors]\nrecoverable_retries = 3\n[target]\nurl = \"file://{out}\"\nmax_file_size = \"1\"\n",
    )
    .await;
    let log = w.path().join("run.log");
    let mut run = Killed(w.spawn_run_logged(&path, &log));
    let admin = pg.connect(dbname).await;
    let pid = caught_copy(&admin, dbname, 20_000, &mut run, &log).await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed, "pg_terminate_backend({pid}) did not land");
    // Rows committed after the snapshot: the retry must not see them.
    admin
        .batch_execute(&format!(
            "INSERT INTO big SELECT i, 'late' FROM generate_series({}, {}) i",
            N + 1,
            N + 1000
        ))
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "godwit did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{logged}");
    // The retry was for the kill: the COPY's connection closed (tokio-postgres reports the
    // terminated backend's FATAL 57P01 as a closed connection, or as the error itself).
    let retries: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("trying again from the same snapshot"))
        .collect();
    assert!(
        !retries.is_empty()
            && retries.iter().any(|l| l.contains("reading the table")
                && (l.contains("connection closed")
                    || l.contains("terminating connection due to administrator command"))),
        "no retry of the killed COPY in the log:\n{logged}"
    );

    // Every row of the snapshot once: none missing, none twice, none of the late ones.
    let mut ids = BTreeMap::new();
    for row in render(&read_table(&w.out(), "public", "big")) {
        let id: i64 = row["id"].parse().unwrap();
        assert!(ids.insert(id, row["v"].clone()).is_none(), "id {id} twice");
    }
    let want: BTreeMap<i64, String> = db
        .query(&format!("SELECT id, v FROM big WHERE id <= {N}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ids.len(), want.len());
    let (count, sum, squares): (i64, i64, i64) = {
        let r = db
            .query_one(
                &format!(
                    "SELECT count(*), sum(id)::int8, sum(id * id)::int8 FROM big WHERE id <= {N}"
                ),
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(ids.len() as i64, count);
    assert_eq!(ids.keys().sum::<i64>(), sum);
    assert_eq!(ids.keys().map(|i| i * i).sum::<i64>(), squares);
    assert!(ids == want, "the values differ from PostgreSQL");
    let status = status_json(&w, path.to_str().unwrap());
    assert_eq!(status["tables"]["public.big"]["state"], "Table completed");
    assert_eq!(status["tables"]["public.big"]["full_load_rows"], N);
}

#[tokio::test]
async fn a_load_whose_snapshot_is_gone_fails_the_run_and_the_next_run_resumes() {
    const N: i64 = 100_000;
    let pg = pg();
    let dbname = "godwit_te_snapshot";
    let (db, w, path) = slow_load(
        &pg,
        dbname,
        N,
        "te-snapshot",
        "[target]\nurl = \"file://{out}\"\n",
    )
    .await;
    let log = w.path().join("run.log");
    let mut run = Killed(w.spawn_run_logged(&path, &log));
    let admin = pg.connect(dbname).await;
    let copy = caught_copy(&admin, dbname, 10_000, &mut run, &log).await;
    // The exporting session waits, idle in its transaction, while the COPYs run.
    let exporter: i32 = admin
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'godwit'
               AND state = 'idle in transaction'",
            &[&dbname],
        )
        .await
        .unwrap()
        .get(0);
    for pid in [exporter, copy] {
        let killed: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(killed, "pg_terminate_backend({pid}) did not land");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = run.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "godwit did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{logged}");
    let state = status_json(&w, path.to_str().unwrap());
    assert_eq!(state["state"], "failed");
    let error = state["last_error"].as_str().unwrap();
    assert!(
        error.contains("invalid snapshot identifier") && error.contains("run the pipeline again"),
        "{error}"
    );
    // Not the table's fault: it is not in Table error, and no table.error was emitted.
    assert_ne!(state["tables"]["public.big"]["state"], "Table error");
    let events = common::events(&w.out().join("events.jsonl"));
    assert!(events_of(&events, "table.error").is_empty());

    // The next run resumes and loads the table from a new snapshot.
    let again = w.godwit(&["run", path.to_str().unwrap()], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let mut ids = BTreeMap::new();
    for row in render(&read_table(&w.out(), "public", "big")) {
        let id: i64 = row["id"].parse().unwrap();
        assert!(ids.insert(id, row["v"].clone()).is_none(), "id {id} twice");
    }
    let want: BTreeMap<i64, String> = db
        .query("SELECT id, v FROM big", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(ids == want, "the values differ from PostgreSQL");
}
