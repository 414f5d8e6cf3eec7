//! Partition changes PostgreSQL does not publish under `publish_via_partition_root`: a
//! partition's own TRUNCATE, DETACH (and ATTACH, DROP). The files must still replay to what
//! `SELECT * FROM root` returns — in a `--once` run after the changes, and in a continuous run
//! during which they happen — and a `table.truncated` event names each partition.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::replay::*;
use common::*;

const SETUP: &str = "
    CREATE TABLE pay (id int, month int, amount int, note text, PRIMARY KEY (id, month))
        PARTITION BY LIST (month);
    CREATE TABLE pay_1 PARTITION OF pay FOR VALUES IN (1);
    CREATE TABLE pay_2 PARTITION OF pay FOR VALUES IN (2);
    CREATE TABLE pay_3 PARTITION OF pay FOR VALUES IN (3);
    INSERT INTO pay SELECT i, m, i * m, 'n' || i FROM generate_series(1, 200) i, generate_series(1, 3) m;";

fn pipeline(name: &str, url: &str) -> String {
    format!(
        "name = \"{name}\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{url}\"\n[tables]\ninclude = [\"public.pay\"]\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n"
    )
}

/// `SELECT * FROM pay` as PostgreSQL returns it, keyed like the replay.
async fn source_rows(db: &tokio_postgres::Client) -> BTreeMap<String, RowMap> {
    let rows = db
        .query(
            "SELECT id::text, month::text, amount::text, note FROM pay",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let v = |i: usize| r.get::<_, Option<String>>(i).unwrap_or("NULL".into());
            let row: RowMap = [
                ("id", v(0)),
                ("month", v(1)),
                ("amount", v(2)),
                ("note", v(3)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            (format!("{}|{}", v(0), v(1)), row)
        })
        .collect()
}

/// The files replayed equal the source, value by value.
async fn assert_files_equal_source(out: &Path, db: &tokio_postgres::Client) {
    let dir = out.join("public/pay");
    let got = replay_keyed(&dir, &["id", "month"]);
    let want = source_rows(db).await;
    assert_eq!(
        got.len(),
        want.len(),
        "rows after replay; files: {:?}",
        parquet_files(&dir)
    );
    for (k, w) in &want {
        assert_eq!(got.get(k), Some(w), "row {k} after replay");
    }
    let staging = out.join("_godwit/staging");
    assert!(
        parquet_files(&staging).is_empty(),
        "nothing is left in {}",
        staging.display()
    );
}

/// The partitions `table.truncated` events named, with their change.
fn partition_events(events: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = common::events(events)
        .iter()
        .filter(|e| e["event_type"] == "table.truncated")
        .map(|e| {
            assert_eq!(e["table"], "public.pay", "{e}");
            (
                e["details"]["partition"].as_str().unwrap_or("").to_string(),
                e["details"]["change"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A background run, ended (SIGKILL) if the test fails before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHANGES: &str = "
    TRUNCATE pay_1;
    ALTER TABLE pay DETACH PARTITION pay_2;
    INSERT INTO pay SELECT i, 3, -i, 'late' FROM generate_series(201, 260) i;
    UPDATE pay SET amount = amount + 1000, note = NULL WHERE month = 3 AND id <= 20;
    DELETE FROM pay WHERE month = 3 AND id BETWEEN 30 AND 39;";

#[tokio::test]
async fn partition_truncate_and_detach_between_once_runs_are_reloaded() {
    let pg = pg();
    let db = pg.fresh_db("godwit_parts_once").await;
    db.batch_execute(SETUP).await.unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&pipeline("parts-once", &pg.url("godwit_parts_once")));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert_files_equal_source(&w.out(), &db).await;

    // None of these reach the stream but the updates in pay_3.
    db.batch_execute(CHANGES).await.unwrap();
    let second = assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert_files_equal_source(&w.out(), &db).await;
    let events = w.out().join("_godwit/state/events.jsonl");
    assert_eq!(
        partition_events(&events),
        [
            ("public.pay_1".to_string(), "truncated".to_string()),
            ("public.pay_2".to_string(), "detached".to_string()),
        ],
        "{second}"
    );

    // Attach a table with rows (not published either), drop the detached one's twin.
    db.batch_execute(
        "CREATE TABLE pay_4 (LIKE pay INCLUDING ALL);
         INSERT INTO pay_4 SELECT i, 4, i, 'attached' FROM generate_series(1, 30) i;
         ALTER TABLE pay ATTACH PARTITION pay_4 FOR VALUES IN (4);
         DROP TABLE pay_1;
         UPDATE pay SET note = 'after' WHERE month = 4 AND id = 1;",
    )
    .await
    .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert_files_equal_source(&w.out(), &db).await;
    let named = partition_events(&events);
    assert!(
        named.contains(&("public.pay_4".into(), "attached".into())),
        "{named:?}"
    );
    assert!(
        named.iter().any(|(_, c)| c == "dropped"),
        "pay_1 is reported dropped: {named:?}"
    );
    // A run with nothing changed reloads nothing.
    let before = named.len();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert_eq!(partition_events(&events).len(), before);
    assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}

#[tokio::test]
async fn a_partition_truncated_while_cdc_runs_is_reloaded() {
    let pg = pg();
    let db = pg.fresh_db("godwit_parts_live").await;
    db.batch_execute(SETUP).await.unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&pipeline("parts-live", &pg.url("godwit_parts_live")));
    let events = w.out().join("_godwit/state/events.jsonl");
    let mut run = Running(w.spawn_run(&pipe));
    let loaded = |n: usize| {
        common::events(&events)
            .iter()
            .filter(|e| e["event_type"] == "table.loaded")
            .count()
            >= n
    };
    for _ in 0..300 {
        if loaded(1) && slot_lsn(&db, "godwit_parts_live").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded(1), "the initial load finished");
    db.batch_execute(CHANGES).await.unwrap();
    // The next check (every 5 s) sees it and reloads.
    for _ in 0..300 {
        if loaded(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded(2), "the table was reloaded while running");
    // Changes after the reload still arrive.
    db.batch_execute("UPDATE pay SET note = 'post' WHERE month = 3 AND id = 1; INSERT INTO pay VALUES (999, 3, 9, 'x');")
        .await
        .unwrap();
    let target = lsn_now(&db).await;
    for _ in 0..100 {
        if slot_lsn(&db, "godwit_parts_live").await >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert_eq!(run.0.wait().unwrap().code(), Some(0), "a clean stop");
    assert_files_equal_source(&w.out(), &db).await;
    assert_eq!(
        partition_events(&events),
        [
            ("public.pay_1".to_string(), "truncated".to_string()),
            ("public.pay_2".to_string(), "detached".to_string()),
        ]
    );
    assert_ok(&w.godwit(&["drop", pipe.to_str().unwrap(), "--yes"], &[]));
}
