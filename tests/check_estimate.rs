//! `godwit check` shows a table's row estimate from `pg_class.reltuples`, and says the count is
//! unknown for a table never analysed (reltuples -1) instead of `~0 rows` — also when only one
//! partition of a partitioned table was never analysed. Text and `--json` alike.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn check_says_unknown_for_a_table_never_analysed() {
    let pg = pg();
    let db = pg.fresh_db("godwit_check_estimate").await;
    // Autovacuum off, so nothing analyses the tables behind the test's back.
    db.batch_execute(
        "CREATE TABLE fresh (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false);
         INSERT INTO fresh SELECT i, 'v' || i FROM generate_series(1, 5000) i;
         CREATE TABLE counted (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false);
         INSERT INTO counted SELECT i, 'v' || i FROM generate_series(1, 3000) i;
         ANALYZE counted;
         CREATE TABLE parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu') WITH (autovacuum_enabled = false);
         CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us') WITH (autovacuum_enabled = false);
         INSERT INTO parted SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END FROM generate_series(1, 2000) i;
         ANALYZE parted_eu;",
    )
    .await
    .unwrap();
    let reltuples = |table: &'static str| {
        let db = &db;
        async move {
            let n: f32 = db
                .query_one(
                    "SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass",
                    &[&table],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    // The premise: PostgreSQL itself does not know the count of `fresh` yet.
    assert_eq!(reltuples("fresh").await, -1.0);
    assert_eq!(reltuples("parted_us").await, -1.0);
    assert_eq!(reltuples("counted").await, 3000.0);

    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"estimate\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url("godwit_check_estimate")
    ));
    let p = pipe.to_str().unwrap();

    let report = |expect: [(&str, Option<u64>); 3]| {
        let out = w.godwit(&["check", p, "--json"], &[]);
        let json: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("check --json ({e}):\n{}", text(&out)));
        let text_out = w.godwit(&["check", p], &[]);
        let lines = String::from_utf8_lossy(&text_out.stdout).into_owned();
        for (table, rows) in expect {
            let t = json["tables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["table"] == table)
                .unwrap_or_else(|| panic!("{table} not in {json}"));
            assert_eq!(
                t["estimated_rows"],
                rows.map_or(Value::Null, Value::from),
                "{table}: {t}"
            );
            let line = lines
                .lines()
                .find(|l| l.starts_with(&format!("  table {table} (")))
                .unwrap_or_else(|| panic!("no line for {table}:\n{lines}"));
            let want = match rows {
                Some(n) => format!("(~{} rows", group(n)),
                None => "(rows unknown (not analysed)".to_string(),
            };
            assert!(line.contains(&want), "{table}: {line:?} lacks {want:?}");
        }
    };
    report([
        ("public.fresh", None),
        ("public.counted", Some(3000)),
        ("public.parted", None),
    ]);

    db.batch_execute("ANALYZE fresh; ANALYZE parted;")
        .await
        .unwrap();
    let fresh = reltuples("fresh").await as u64;
    let parted = reltuples("parted_eu").await as u64 + reltuples("parted_us").await as u64;
    assert_eq!((fresh, parted), (5000, 2000));
    report([
        ("public.fresh", Some(fresh)),
        ("public.counted", Some(3000)),
        ("public.parted", Some(parted)),
    ]);
}

/// 12345 → "12,345".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
