//! A row that cannot be converted (here a NaN in a `numeric(10,2)` array, 1-D or 2-D) is
//! skipped and counted under `[errors] data = "log-error"`, and leaves no trace: every other
//! row — before it, after it, in the same batch — is exactly what PostgreSQL returns for it,
//! in the full load and in CDC alike. Messages name the table, key and column but never the
//! bad value or a text key (only a truncated prefix, at debug level).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int32Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use common::*;
use tokio_postgres::Client;

const TABLES: &str = "
CREATE TABLE t (id int PRIMARY KEY, arr numeric(10,2)[], grid numeric(10,2)[][]);
CREATE TABLE by_email (email text PRIMARY KEY, arr numeric(10,2)[]);
";

/// Rows of `t`: bad ones first in the stream, first after a batch cut (batch_rows = 3),
/// between good ones and last; a 2-D bad row whose 1-D column is good (it must be rolled
/// back too).
const ROWS_T: &[&str] = &[
    "(1, '{1234.56,NaN}', '{{1.00}}')",
    "(2, '{1.00,2.00}', '{{1.00,2.00},{3.00,4.00}}')",
    "(3, NULL, NULL)",
    "(4, '{}', '{{5.00,NULL},{NULL,6.00}}')",
    "(5, '{5.55}', '{{7.00,8.00},{9.00,NaN}}')",
    "(6, '{NULL,6.25}', '{{6.00}}')",
    "(7, '{7.00}', '{{0.01,0.02,0.03}}')",
    "(8, '{8.00,NaN,8.50}', '{{8.00}}')",
    "(9, '{9.00,9.50}', '{{9.00,9.00},{9.00,9.00}}')",
    "(10, '{10.00}', '{{10.00},{10.50}}')",
    "(11, '{11.00,11.50,NULL}', '{}')",
    "(12, '{12.00}', '{{12.00,12.25}}')",
    "(13, '{13.00}', '{{13.00}}')",
    "(14, '{-14.00}', '{{-14.00}}')",
    "(15, '{15.00}', '{{15.00},{NaN}}')",
];
const BAD_T: &[i32] = &[1, 5, 8, 15];

/// A text key is personal data: it must not appear in messages.
const ROWS_EMAIL: &[&str] = &[
    "('bob@example.com', '{1.00}')",
    "('alice.secret@example.com', '{1234.56,NaN}')",
    "('carol@example.com', '{3.00,NULL}')",
];
const SECRET_KEY: &str = "alice.secret@example.com";

fn pipeline(name: &str, url: &str, mode: &str) -> String {
    format!(
        "name = \"{name}\"\nmode = \"{mode}\"\n[source]\nurl = \"{url}\"\n[tables]\ninclude = [\"public.*\"]\n[load]\nbatch_rows = 3\n[errors]\ndata = \"log-error\"\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n[notify]\nevents_file = \"{{out}}/events.jsonl\"\n"
    )
}

/// PostgreSQL's own text of every row it holds but `bad`, by key.
async fn source_rows(db: &Client, table: &str, bad: &[String]) -> BTreeMap<String, Vec<String>> {
    let sql = match table {
        "t" => "SELECT id::text, coalesce(arr::text, 'NULL'), coalesce(grid::text, 'NULL') FROM t",
        _ => "SELECT email, coalesce(arr::text, 'NULL') FROM by_email",
    };
    let mut out = BTreeMap::new();
    for r in db.query(sql, &[]).await.unwrap() {
        let values: Vec<String> = (0..r.len()).map(|i| r.get::<_, String>(i)).collect();
        if !bad.contains(&values[0]) {
            out.insert(values[0].clone(), values[1..].to_vec());
        }
    }
    out
}

/// An Arrow value in PostgreSQL's text form (`{{1.00,NULL},{2.00,3.00}}`).
fn pg_text(a: &ArrayRef, i: usize) -> String {
    if a.is_null(i) {
        return "NULL".into();
    }
    match a.data_type() {
        DataType::List(_) => {
            let items = a.as_list::<i32>().value(i);
            let parts: Vec<String> = (0..items.len()).map(|j| pg_text(&items, j)).collect();
            format!("{{{}}}", parts.join(","))
        }
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        _ => ArrayFormatter::try_new(a.as_ref(), &FormatOptions::default())
            .unwrap()
            .value(i)
            .to_string(),
    }
}

/// Every row godwit wrote for `table` (full load and CDC files), by key; a key written twice
/// is a failure.
fn written_rows(out: &Path, table: &str, columns: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    for f in parquet_files(&out.join("public").join(table)) {
        for b in read_parquet(&f) {
            let cols: Vec<&ArrayRef> = columns
                .iter()
                .map(|c| b.column_by_name(c).unwrap())
                .collect();
            for i in 0..b.num_rows() {
                let values: Vec<String> = cols.iter().map(|c| pg_text(c, i)).collect();
                let key = values[0].clone();
                assert!(
                    rows.insert(key.clone(), values[1..].to_vec()).is_none(),
                    "{table}: row {key} written twice"
                );
            }
        }
    }
    rows
}

/// Everything a user or a log collector sees: output, events, state.
fn everything_shown(w: &Work, output: &str) -> String {
    let events = std::fs::read_to_string(w.out().join("events.jsonl")).unwrap_or_default();
    let state =
        std::fs::read_to_string(w.out().join("_godwit/state/task.json")).unwrap_or_default();
    format!("{output}\n{events}\n{state}")
}

async fn seed(db: &Client) {
    for (table, rows) in [("t", ROWS_T), ("by_email", ROWS_EMAIL)] {
        // One statement per row: separate transactions, one commit each (in CDC too).
        for r in rows {
            db.batch_execute(&format!("INSERT INTO {table} VALUES {r}"))
                .await
                .unwrap();
        }
    }
    // The bad rows are bad in PostgreSQL's own eyes: they hold a NaN.
    let nan: Vec<i32> = db
        .query(
            "SELECT id FROM t WHERE 'NaN'::numeric = ANY(arr) OR 'NaN'::numeric = ANY(grid) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nan, BAD_T);
}

async fn assert_content(db: &Client, out: &Path) {
    let bad_t: Vec<String> = BAD_T.iter().map(|i| i.to_string()).collect();
    let want = source_rows(db, "t", &bad_t).await;
    assert_eq!(want.len(), ROWS_T.len() - BAD_T.len());
    assert_eq!(written_rows(out, "t", &["id", "arr", "grid"]), want);
    let want = source_rows(db, "by_email", &[SECRET_KEY.to_string()]).await;
    assert_eq!(want.len(), 2);
    assert_eq!(written_rows(out, "by_email", &["email", "arr"]), want);
}

fn assert_counted(w: &Work, pipe: &str) -> serde_json::Value {
    let status = assert_ok(&w.godwit(&["status", pipe, "--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        v["tables"]["public.t"]["data_errors"],
        BAD_T.len(),
        "{status}"
    );
    assert_eq!(v["tables"]["public.by_email"]["data_errors"], 1, "{status}");
    v
}

/// No part of a bad value or of a text key beyond what the README's "Data errors" allows.
fn assert_no_values(shown: &str) {
    for secret in ["1234.56", "alice.secret", "secret@", "9.00,NaN"] {
        assert!(!shown.contains(secret), "{secret:?} appears in:\n{shown}");
    }
}

#[tokio::test]
async fn full_load_skips_bad_rows_and_keeps_every_other_row_exact() {
    let pg = pg();
    let db = pg.fresh_db("godwit_bad_rows_load").await;
    db.batch_execute(TABLES).await.unwrap();
    seed(&db).await;
    let w = Work::new();
    let pipe = w.pipeline(&pipeline(
        "bad-rows-load",
        &pg.url("godwit_bad_rows_load"),
        "full-load",
    ));
    let p = pipe.to_str().unwrap();
    let o = w.godwit(&["run", p], &[("GODWIT_LOG", "debug")]);
    let output = assert_ok(&o);
    assert_content(&db, &w.out()).await;
    assert_counted(&w, p);
    let loaded: Vec<_> = events(&w.out().join("events.jsonl"))
        .into_iter()
        .filter(|e| e["event_type"] == "table.loaded" && e["table"] == "public.t")
        .collect();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(
        loaded[0]["details"]["data_errors"],
        BAD_T.len(),
        "{loaded:?}"
    );

    let shown = everything_shown(&w, &output);
    assert_no_values(&shown);
    // Table, key and column are named; a text key only by type and length.
    assert!(
        shown.contains("data error in public.t at id=5 (column grid)"),
        "{shown}"
    );
    assert!(
        shown.contains("data error in public.by_email at email=<text, 24 bytes> (column arr)"),
        "{shown}"
    );
    // At debug level: a truncated prefix of the text key, and of nothing else.
    assert!(shown.contains(r#"\"alice.\"… (24 bytes)"#), "{shown}");
}

#[tokio::test]
async fn cdc_skips_bad_rows_and_keeps_every_other_row_exact() {
    let pg = pg();
    let db = pg.fresh_db("godwit_bad_rows_cdc").await;
    db.batch_execute(TABLES).await.unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&pipeline(
        "bad-rows-cdc",
        &pg.url("godwit_bad_rows_cdc"),
        "cdc",
    ));
    let p = pipe.to_str().unwrap();
    // The first run creates the slot; the rows arrive after it.
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    seed(&db).await;
    // Two bad rows and good ones in one transaction, bad rows first and last.
    db.batch_execute(
        "BEGIN;
         INSERT INTO t VALUES (100, '{NaN}', NULL);
         INSERT INTO t VALUES (101, '{101.00}', '{{101.00,NULL}}');
         INSERT INTO t VALUES (102, '{102.00}', '{{102.00},{102.50}}');
         INSERT INTO t VALUES (103, NULL, '{{103.00},{NaN}}');
         COMMIT;",
    )
    .await
    .unwrap();
    let output = assert_ok(&w.godwit(&["run", p, "--once"], &[]));

    let mut bad_t: Vec<String> = BAD_T.iter().map(|i| i.to_string()).collect();
    bad_t.extend(["100".to_string(), "103".to_string()]);
    let want = source_rows(&db, "t", &bad_t).await;
    assert_eq!(want.len(), ROWS_T.len() - BAD_T.len() + 2);
    assert_eq!(written_rows(&w.out(), "t", &["id", "arr", "grid"]), want);
    let want = source_rows(&db, "by_email", &[SECRET_KEY.to_string()]).await;
    assert_eq!(written_rows(&w.out(), "by_email", &["email", "arr"]), want);

    let status = assert_ok(&w.godwit(&["status", p, "--json"], &[]));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        v["tables"]["public.t"]["data_errors"],
        BAD_T.len() + 2,
        "{status}"
    );
    // A skipped row is a data error, not an insert: the counters count what was written.
    assert_eq!(
        v["tables"]["public.t"]["inserts"],
        ROWS_T.len() + 4 - (BAD_T.len() + 2),
        "{status}"
    );
    assert_eq!(v["tables"]["public.by_email"]["data_errors"], 1, "{status}");

    let shown = everything_shown(&w, &output);
    assert_no_values(&shown);
    assert!(shown.contains(", key id=5 (column grid)"), "{shown}");
    assert!(
        shown.contains(", key email=<text, 24 bytes> (column arr)"),
        "{shown}"
    );
    // Nothing of the text key at info level, not even the debug prefix.
    assert!(!shown.contains("alice"), "{shown}");
}
