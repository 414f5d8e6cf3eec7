//! NOT NULL columns become required Parquet fields in LOAD files (read from the file's own
//! Parquet schema, not godwit's Arrow view), values equal to PostgreSQL's; CDC files of the
//! same table keep every table column optional and still replay to the source; a partitioned
//! root takes the root's constraints, not a partition's.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use parquet::basic::Repetition;
const REQUIRED: Repetition = Repetition::REQUIRED;
const OPTIONAL: Repetition = Repetition::OPTIONAL;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::Type;

use common::replay::*;
use common::source::*;
use common::*;

/// Each top-level column's repetition in a Parquet file, and the repetition of the innermost
/// leaf under it (the element of a list).
fn repetitions(path: &Path) -> BTreeMap<String, (Repetition, Repetition)> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    fn leaf(t: &Type) -> Repetition {
        match t {
            Type::PrimitiveType { basic_info, .. } => basic_info.repetition(),
            Type::GroupType { fields, .. } => leaf(&fields[0]),
        }
    }
    schema
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| {
            (
                f.name().to_string(),
                (f.get_basic_info().repetition(), leaf(f)),
            )
        })
        .collect()
}

fn assert_columns(path: &Path, want: &[(&str, Repetition)]) {
    let got = repetitions(path);
    for (name, rep) in want {
        let Some((top, _)) = got.get(*name) else {
            panic!("{}: no column {name}: {got:?}", path.display());
        };
        assert_eq!(top, rep, "{}: column {name}", path.display());
    }
}

/// The full-load files of `table`: their rows as PostgreSQL returns them.
async fn assert_load_equals_source(out: &Path, db: &tokio_postgres::Client, table: &str) {
    let dir = out.join("public").join(table);
    let (load, _) = table_files(&dir);
    let mut got: Vec<RowMap> = load.iter().flat_map(|f| render(&read_parquet(f))).collect();
    got.sort();
    assert_eq!(got, pg_sorted(db, table).await, "{table}: LOAD rows");
}

async fn assert_reproduces(out: &Path, db: &tokio_postgres::Client, table: &str, key: &[&str]) {
    let want = pg_keyed(db, table, key).await;
    let got = replay_keyed(&out.join("public").join(table), key);
    assert_eq!(got, want, "{table} after replay");
}

#[tokio::test]
async fn not_null_columns_are_required_in_load_files_and_optional_in_cdc_files() {
    let pg = pg();
    let db = pg.fresh_db("godwit_nullability").await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text NOT NULL, b text, c numeric(10,2) NOT NULL, d int[] NOT NULL);
         INSERT INTO t VALUES (1, 'one', NULL, 1.50, '{1,NULL,3}'), (2, 'two', 'b2', -2.25, '{}'),
                              (3, 'three', 'b3', 0, '{7}');
         -- numeric = \"text\": the column is Utf8 and still required
         CREATE TABLE tx (id int PRIMARY KEY, c numeric NOT NULL, e numeric);
         INSERT INTO tx VALUES (1, 'NaN', NULL), (2, 12345678901234567890.123, 1);
         -- a partitioned root: the root's NOT NULL decides, not a partition's
         CREATE TABLE p (id int, region text NOT NULL, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu');
         ALTER TABLE p_eu ALTER COLUMN v SET NOT NULL;
         CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us');
         INSERT INTO p VALUES (1, 'eu', 'x'), (2, 'us', NULL);",
    )
    .await
    .unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"nulls\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[tables.\"public.tx\"]\nnumeric = \"text\"\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n",
        pg.url("godwit_nullability")
    ));
    let p = pipe.to_str().unwrap();
    let first = assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    assert!(first.contains("full load completed"), "{first}");
    let out = w.out();

    let load_of = |table: &str| {
        let (load, cdc) = table_files(&out.join("public").join(table));
        assert!(cdc.is_empty(), "{table}: CDC files before any change");
        assert!(!load.is_empty(), "{table}: no LOAD file");
        load
    };
    for f in load_of("t") {
        assert_columns(
            &f,
            &[
                ("id", REQUIRED),
                ("a", REQUIRED),
                ("b", OPTIONAL),
                ("c", REQUIRED),
                ("d", REQUIRED),
            ],
        );
        // The array's elements stay nullable (`{1,NULL,3}`).
        assert_eq!(
            repetitions(&f)["d"].1,
            OPTIONAL,
            "{}: d's element",
            f.display()
        );
    }
    for f in load_of("tx") {
        assert_columns(&f, &[("id", REQUIRED), ("c", REQUIRED), ("e", OPTIONAL)]);
    }
    for f in load_of("p") {
        assert_columns(
            &f,
            &[("id", REQUIRED), ("region", REQUIRED), ("v", OPTIONAL)],
        );
    }
    for table in ["t", "tx", "p"] {
        assert_load_equals_source(&out, &db, table).await;
    }

    db.batch_execute(
        "UPDATE t SET b = 'changed', c = 9.99, d = '{4,NULL}' WHERE id = 1;
         DELETE FROM t WHERE id = 2;
         INSERT INTO t VALUES (4, 'four', NULL, 4.00, '{}');
         UPDATE p SET v = 'y' WHERE id = 1;
         DELETE FROM p WHERE id = 2;",
    )
    .await
    .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));

    for (table, columns) in [
        ("t", &["id", "a", "b", "c", "d"][..]),
        ("p", &["id", "region", "v"][..]),
    ] {
        let (_, cdc) = table_files(&out.join("public").join(table));
        assert!(!cdc.is_empty(), "{table}: no CDC file after the changes");
        for f in &cdc {
            let want: Vec<_> = columns.iter().map(|c| (*c, OPTIONAL)).collect();
            assert_columns(f, &want);
        }
    }
    let ops: Vec<String> = cdc_rows(&out.join("public").join("t"))
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(ops, ["U", "D", "I"], "t: CDC operations");
    // The `D` row carries only the key: the NOT NULL columns are null there.
    let delete = cdc_rows(&out.join("public").join("t"))
        .into_iter()
        .find(|r| r.2 == "D")
        .unwrap();
    assert_eq!(delete.3["a"], "NULL", "t: the D row's a");
    assert_reproduces(&out, &db, "t", &["id"]).await;
    assert_reproduces(&out, &db, "p", &["id", "region"]).await;
}
