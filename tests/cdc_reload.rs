//! A reload that fails part-way (its 2nd object fails to complete: `--fail-object`) leaves the
//! previous load's files exactly as they were and the table in `Table error` with a remedy;
//! a later reload replaces them, and the files replay to what PostgreSQL returns.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::replay::*;
use common::*;

/// The top-level load files of a table folder: name → bytes.
fn load_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let (load, _) = table_files(dir);
    load.iter()
        .map(|f| {
            (
                f.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(f).unwrap(),
            )
        })
        .collect()
}

async fn source_rows(db: &tokio_postgres::Client) -> BTreeMap<String, RowMap> {
    db.query("SELECT id::text, v FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            let v: Option<String> = r.get(1);
            let row: RowMap = [
                ("id".to_string(), id.clone()),
                ("v".to_string(), v.unwrap_or("NULL".into())),
            ]
            .into_iter()
            .collect();
            (id, row)
        })
        .collect()
}

#[tokio::test]
async fn a_failed_reload_keeps_the_previous_load_and_a_later_one_replaces_it() {
    let pg = pg();
    let db = pg.fresh_db("godwit_reload_fail").await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 2000) i;",
    )
    .await
    .unwrap();
    let w = Work::new();
    // One file per 500-row batch, so a load is several objects.
    let pipe = w.pipeline(&format!(
        "name = \"reload-fail\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.t\"]\n[load]\nbatch_rows = 500\n[target]\nurl = \"file://{{out}}\"\nmax_file_size = \"1\"\ncdc_max_batch_interval = \"1s\"\n",
        pg.url("godwit_reload_fail")
    ));
    let p = pipe.to_str().unwrap();
    let dir = w.out().join("public/t");
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    let before = load_files(&dir);
    assert!(before.len() >= 3, "several load files: {:?}", before.keys());

    db.batch_execute(
        "UPDATE t SET v = 'changed' WHERE id <= 100;
         INSERT INTO t SELECT i, 'new' FROM generate_series(2001, 2100) i;
         DELETE FROM t WHERE id BETWEEN 500 AND 599;",
    )
    .await
    .unwrap();
    assert_ok(&w.godwit(&["reload", p, "--table", "public.t"], &[]));
    let failed = w.godwit(&["run", p, "--once", "--fail-object", "2"], &[]);
    let text = text(&failed);
    assert_eq!(failed.status.code(), Some(3), "a table in error:\n{text}");
    assert_eq!(
        load_files(&dir),
        before,
        "the previous load is untouched:\n{text}"
    );
    let status = assert_ok(&w.godwit(&["status", p, "--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let t = &v["tables"]["public.t"];
    assert_eq!(t["state"], "Table error", "{status}");
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("failure injected")),
        "{status}"
    );
    assert!(
        t["remedy"].as_str().is_some_and(|r| r.contains("again")),
        "{status}"
    );
    let events = common::events(&w.out().join("_godwit/state/events.jsonl"));
    assert!(
        events
            .iter()
            .any(|e| e["event_type"] == "table.error" && e["table"] == "public.t"),
        "a table.error event"
    );

    // The next run tries again (the request stays) and succeeds.
    db.batch_execute("UPDATE t SET v = NULL WHERE id = 5; DELETE FROM t WHERE id = 6;")
        .await
        .unwrap();
    let again = assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert_ne!(
        load_files(&dir),
        before,
        "the new load is in place:\n{again}"
    );
    let got = replay_keyed(&dir, &["id"]);
    let want = source_rows(&db).await;
    assert_eq!(got.len(), want.len());
    for (k, row) in &want {
        assert_eq!(got.get(k), Some(row), "row {k}");
    }
    assert!(parquet_files(&w.out().join("_godwit/staging")).is_empty());
    let status = assert_ok(&w.godwit(&["status", p, "--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["tables"]["public.t"]["state"], "CDC", "{status}");
    assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}
