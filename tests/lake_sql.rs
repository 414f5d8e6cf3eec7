//! `godwit inspect --sql duckdb`: the printed SQL, run by DuckDB (PyPI `duckdb` in the venv
//! `scripts/services.sh` manages, `GODWIT_PYTHON`), gives each table's current state after a
//! CDC workload — compared value by value with what PostgreSQL returns — for Parquet and CSV
//! targets: inserts, updates, deletes, a key-changing update, a TRUNCATE followed by new rows,
//! an unchanged TOASTed column under the default replica identity, and names that need
//! quoting. A keyless table gets the history view only.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;

/// column → text form (`None` for NULL), by the key's text.
type Rows = BTreeMap<String, BTreeMap<String, Option<String>>>;

/// Runs `sql` in a fresh DuckDB, then `query`; its rows as JSON objects of strings.
fn duckdb(
    dir: &Path,
    sql: &str,
    query: &str,
) -> Result<Vec<BTreeMap<String, Option<String>>>, String> {
    let python = std::env::var("GODWIT_PYTHON")
        .expect("GODWIT_PYTHON is not set: run the tests through scripts/test");
    let file = dir.join("views.sql");
    std::fs::write(&file, sql).unwrap();
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(open(sys.argv[1]).read())
cur = con.execute(sys.argv[2])
names = [d[0] for d in cur.description]
for row in cur.fetchall():
    print(json.dumps({n: (None if v is None else str(v)) for n, v in zip(names, row)}))
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(&file)
        .arg(query)
        .output()
        .expect("run python");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect())
}

/// `(name, format_type)` of a table's columns, in order.
async fn pg_columns(db: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    db.query(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
         WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&table],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The rows of `table` (SQL name) as PostgreSQL returns them, in DuckDB's text forms:
/// booleans `true`/`false`, everything else PostgreSQL's own text (TimeZone UTC).
async fn pg_state(db: &tokio_postgres::Client, table: &str, key: &str) -> Rows {
    let cols = pg_columns(db, table).await;
    let select: Vec<String> = cols
        .iter()
        .map(|(n, t)| {
            let c = postgres_protocol::escape::escape_identifier(n);
            if t == "boolean" {
                format!("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END")
            } else {
                format!("{c}::text")
            }
        })
        .collect();
    db.query(&format!("SELECT {} FROM {table}", select.join(", ")), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let row: BTreeMap<String, Option<String>> = cols
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (n.clone(), r.get::<_, Option<String>>(i)))
                .collect();
            (row[key].clone().unwrap(), row)
        })
        .collect()
}

/// The same table through the current-state view `view` (DuckDB name).
fn lake_state(dir: &Path, sql: &str, view: &str, columns: &[(String, String)], key: &str) -> Rows {
    let select: Vec<String> = columns
        .iter()
        .map(|(n, _)| {
            let c = postgres_protocol::escape::escape_identifier(n);
            format!("CAST({c} AS VARCHAR) AS {c}")
        })
        .collect();
    let rows = duckdb(
        dir,
        sql,
        &format!("SELECT {} FROM {view}", select.join(", ")),
    )
    .unwrap_or_else(|e| panic!("DuckDB could not run the views:\n{e}\n{sql}"));
    rows.into_iter()
        .map(|r| (r[key].clone().unwrap(), r))
        .collect()
}

fn assert_same(got: &Rows, want: &Rows, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (k, w) in want {
        assert_eq!(&got[k], w, "{what}: row {k}");
    }
}

async fn current_state_matches_postgres(format: &str, db_name: &str) {
    let pg = pg();
    let db = pg.fresh_db(db_name).await;
    db.batch_execute(
        "CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(10,2),
                             big text, at timestamptz, ok boolean);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO items SELECT i, 'item ' || i, i, i * 1.25,
                CASE WHEN i <= 3 THEN repeat('x', 100000) || i END,
                '2026-01-01 00:00:00+00'::timestamptz + i * interval '90 minutes 0.25 seconds',
                i % 2 = 0
         FROM generate_series(1, 50) i;
         CREATE SCHEMA \"My Sch\";
         CREATE TABLE \"My Sch\".\"Odd \"\"name\"\".x\" (\"K ey\" int PRIMARY KEY, \"v'al\" text);
         INSERT INTO \"My Sch\".\"Odd \"\"name\"\".x\" VALUES (1, 'one'), (2, 'two');
         CREATE TABLE gone (id int PRIMARY KEY, v text);
         INSERT INTO gone SELECT i, 'v' || i FROM generate_series(1, 10) i;
         CREATE TABLE keyless (a int, b text);
         ALTER TABLE keyless REPLICA IDENTITY FULL;
         INSERT INTO keyless VALUES (1, 'one'), (2, 'two');",
    )
    .await
    .unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"{db_name}\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\", \"My Sch.*\"]\n[target]\nurl = \"file://{{out}}\"\nformat = \"{format}\"\ncdc_max_batch_interval = \"1s\"\n",
        pg.url(db_name)
    ));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    db.batch_execute(
        "INSERT INTO items SELECT i, 'new ' || i, 0, 0.5, NULL, '2026-06-01 12:00:00+00', NULL
             FROM generate_series(100, 110) i;
         UPDATE items SET qty = qty + 100, ok = NOT ok WHERE id BETWEEN 10 AND 20;
         DELETE FROM items WHERE id BETWEEN 30 AND 35;
         -- unchanged TOASTed values (default replica identity): big is not sent
         UPDATE items SET qty = -1 WHERE id IN (1, 2);
         UPDATE items SET name = 'twice' WHERE id = 2;
         -- a key-changing update (of a row without a TOASTed value)
         UPDATE items SET id = 700 WHERE id = 40;
         UPDATE \"My Sch\".\"Odd \"\"name\"\".x\" SET \"v'al\" = 'un' WHERE \"K ey\" = 1;
         INSERT INTO \"My Sch\".\"Odd \"\"name\"\".x\" VALUES (3, 'three');
         INSERT INTO keyless VALUES (3, 'three');",
    )
    .await
    .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    db.batch_execute(
        "UPDATE items SET price = 99.99 WHERE id = 1;
         UPDATE items SET big = 'short now' WHERE id = 3;
         INSERT INTO items VALUES (40, 'back again', 1, 1.00, 'b', NULL, true);
         DELETE FROM items WHERE id = 700;
         UPDATE gone SET v = 'changed' WHERE id = 1;
         TRUNCATE gone;
         INSERT INTO gone VALUES (1, 'after truncate'), (20, 'twenty');
         UPDATE gone SET v = 'after truncate, updated' WHERE id = 20;",
    )
    .await
    .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));

    let out = w.godwit(&["inspect", p, "--sql", "duckdb"], &[]);
    assert_ok(&out);
    let sql = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        sql.contains("-- no current-state view: public.keyless has no primary key"),
        "{sql}"
    );
    for (table, view, key) in [
        ("items", "\"public\".\"items\"", "id"),
        ("gone", "\"public\".\"gone\"", "id"),
        (
            "\"My Sch\".\"Odd \"\"name\"\".x\"",
            "\"My Sch\".\"Odd \"\"name\"\".x\"",
            "K ey",
        ),
    ] {
        let want = pg_state(&db, table, key).await;
        let columns = pg_columns(&db, table).await;
        let got = lake_state(w.path(), &sql, view, &columns, key);
        assert_same(&got, &want, &format!("{format} {table}"));
    }
    // The TOASTed value came from the load, through two updates that did not send it.
    let items = pg_state(&db, "items", "id").await;
    assert_eq!(items["2"]["big"].as_deref().map(str::len), Some(100_001));
    assert_eq!(items["2"]["name"].as_deref(), Some("twice"));

    // Keyless: the history only, every row of its files (2 loaded, 1 inserted).
    let history = duckdb(
        w.path(),
        &sql,
        "SELECT CAST(a AS VARCHAR) AS a, b FROM \"public\".\"keyless_history\" ORDER BY a",
    )
    .unwrap();
    let a: Vec<_> = history.iter().map(|r| r["a"].clone().unwrap()).collect();
    assert_eq!(a, ["1", "2", "3"]);
    assert!(
        duckdb(w.path(), &sql, "SELECT * FROM \"public\".\"keyless\"").is_err(),
        "a keyless table has no current-state view"
    );

    // Athena (not run here): per table its LOAD and CDC tables, the history view, and the
    // current-state view where there is a key.
    let out = w.godwit(&["inspect", p, "--sql", "athena"], &[]);
    assert_ok(&out);
    let athena = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in ["public_items", "public_gone", "my_sch_odd__name__x"] {
        for made in [
            format!("CREATE EXTERNAL TABLE IF NOT EXISTS `{name}_load`"),
            format!("CREATE EXTERNAL TABLE IF NOT EXISTS `{name}_cdc`"),
            format!("CREATE OR REPLACE VIEW {name}_history AS"),
            format!("CREATE OR REPLACE VIEW {name} AS"),
        ] {
            assert!(athena.contains(&made), "{made}:\n{athena}");
        }
    }
    assert!(
        athena.contains("CREATE OR REPLACE VIEW public_keyless_history AS"),
        "{athena}"
    );
    assert!(
        !athena.contains("CREATE OR REPLACE VIEW public_keyless AS"),
        "{athena}"
    );
}

#[tokio::test]
async fn duckdb_views_give_the_current_state_of_parquet_files() {
    current_state_matches_postgres("parquet", "godwit_lake_parquet").await;
}

#[tokio::test]
async fn duckdb_views_give_the_current_state_of_csv_files() {
    current_state_matches_postgres("csv", "godwit_lake_csv").await;
}
