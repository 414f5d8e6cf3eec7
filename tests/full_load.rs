//! Full-load shapes against the real PostgreSQL: empty and keyless tables, quoted names and a
//! schema with a space, a 300-column table, a partitioned table under its root, exclusions,
//! filters, file splitting, the DMS extra columns, events, the lease, and TLS modes.

mod common;

use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
use common::*;
use serde_json::Value;

fn pipeline_text(db_url: &str, include: &str, extra: &str) -> String {
    format!(
        r#"name = "fl"
mode = "full-load"
[source]
url = "{db_url}"
[tables]
include = {include}
{extra}
[target]
url = "file://{{out}}"
"#
    )
}

/// Sorted int ids of column 0 of a table's load.
fn ids(out: &Path, schema: &str, table: &str) -> Vec<i64> {
    let mut v: Vec<i64> = read_table(out, schema, table)
        .iter()
        .flat_map(|b| {
            let c = b.column(0);
            match c.data_type() {
                arrow::datatypes::DataType::Int32 => c
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|x| x.unwrap() as i64)
                    .collect::<Vec<_>>(),
                _ => c
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|x| x.unwrap())
                    .collect(),
            }
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn table_shapes_land_once_each_with_every_row() {
    let pg = pg();
    let db = pg.fresh_db("godwit_shapes").await;
    let mut wide = String::from("CREATE TABLE wide (id int PRIMARY KEY");
    for i in 1..300 {
        wide.push_str(&format!(", c{i} int DEFAULT {i}"));
    }
    wide.push_str("); INSERT INTO wide (id) SELECT generate_series(1, 50);");
    db.batch_execute(&wide).await.unwrap();
    db.batch_execute(
        r#"
        CREATE TABLE empty_table (id int PRIMARY KEY, v text);
        CREATE TABLE no_key (id int, v text);
        INSERT INTO no_key SELECT i, 'v' || i FROM generate_series(1, 1000) i;
        INSERT INTO no_key SELECT 5, 'duplicate';
        CREATE SCHEMA "My Schema";
        CREATE TABLE "My Schema"."MixedCase" ("Id" int PRIMARY KEY, "Name" text);
        INSERT INTO "My Schema"."MixedCase" VALUES (1, 'one'), (2, 'two');
        CREATE TABLE "My Schema".mixedcase ("Id" int PRIMARY KEY);
        INSERT INTO "My Schema".mixedcase VALUES (7);
        CREATE TABLE measurements (id bigint, at date NOT NULL, v int) PARTITION BY RANGE (at);
        CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        INSERT INTO measurements SELECT i, date '2024-06-01' + (i % 400), i FROM generate_series(1, 3000) i;
        CREATE TABLE audit_secret (id int);
        CREATE TABLE users (id int PRIMARY KEY, email text, internal_note text);
        INSERT INTO users VALUES (1, 'a@x', 'secret'), (2, 'b@x', 'secret');
        CREATE TABLE filtered (id int PRIMARY KEY, keep bool);
        INSERT INTO filtered SELECT i, i % 3 = 0 FROM generate_series(1, 300) i;
        "#,
    )
    .await
    .unwrap();

    let work = Work::new();
    let pipeline = work.pipeline(&pipeline_text(
        &pg.url("godwit_shapes"),
        r#"["public.*", "\"My Schema\".*"]"#,
        r#"exclude = ["public.audit_*"]
[tables."public.users"]
exclude_columns = ["internal_note"]
[tables."public.filtered"]
where = "keep""#,
    ));
    let run = work.godwit(&["run", pipeline.to_str().unwrap()], &[]);
    assert_ok(&run);
    let out = work.out();

    // Empty table: one file with the schema and no rows.
    let empty = parquet_files(&out.join("public/empty_table"));
    assert_eq!(empty.len(), 1);
    assert_eq!(rows(&read_parquet(&empty[0])), 0);
    assert_eq!(parquet_schema(&empty[0]).fields().len(), 2);

    // No primary key: every row, duplicates included.
    assert_eq!(rows(&read_table(&out, "public", "no_key")), 1001);

    // Quoted mixed-case names and a schema with a space, as they are.
    let mixed = read_table(&out, "My Schema", "MixedCase");
    assert_eq!(mixed[0].schema().field(0).name(), "Id");
    assert_eq!(ids(&out, "My Schema", "MixedCase"), vec![1, 2]);
    assert_eq!(ids(&out, "My Schema", "mixedcase"), vec![7]);

    // 300 columns, every value.
    let wide = read_table(&out, "public", "wide");
    assert_eq!(wide[0].num_columns(), 300);
    assert_eq!(rows(&wide), 50);
    for b in &wide {
        for c in 1..300 {
            let col = b.column(c).as_primitive::<Int32Type>();
            assert!(col.iter().all(|v| v == Some(c as i32)), "column c{c}");
        }
    }

    // Partitioned: once, under its root; the partitions are not loaded on their own.
    assert_eq!(
        ids(&out, "public", "measurements"),
        (1..=3000).collect::<Vec<_>>()
    );
    assert!(!out.join("public/measurements_2024").exists());
    assert!(!out.join("public/measurements_2025").exists());

    // Excluded table and column are absent.
    assert!(!out.join("public/audit_secret").exists());
    let users = read_table(&out, "public", "users");
    let names: Vec<_> = users[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, vec!["id", "email"]);

    // The filter is applied.
    assert_eq!(
        ids(&out, "public", "filtered"),
        (1..=300).filter(|i| i % 3 == 0).collect::<Vec<_>>()
    );

    // Events: started, one table.loaded per table with its rows, completed, stopped.
    let ev = events(&out.join("_godwit/state/events.jsonl"));
    let types: Vec<&str> = ev
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"task.started"));
    assert_eq!(types.get(1), Some(&"full_load.started"));
    assert_eq!(
        &types[types.len() - 2..],
        &["full_load.completed", "task.stopped"]
    );
    let loaded: Vec<&Value> = ev
        .iter()
        .filter(|e| e["event_type"] == "table.loaded")
        .collect();
    assert_eq!(loaded.len(), 8, "one per selected table");
    let no_key = loaded
        .iter()
        .find(|e| e["table"] == "public.no_key")
        .unwrap();
    assert_eq!(no_key["details"]["rows"], 1001);
    assert_eq!(no_key["pipeline"], "fl");

    // inspect reads back what landed.
    let inspect = assert_ok(&work.godwit(&["inspect", pipeline.to_str().unwrap()], &[]));
    assert!(
        inspect.contains("public.no_key: 1 full-load file (1001 rows)"),
        "{inspect}"
    );
    assert!(inspect.contains("sample:"), "{inspect}");

    // Status agrees.
    let status = work.godwit(&["status", pipeline.to_str().unwrap(), "--json"], &[]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(
        status["tables"]["public.measurements"]["full_load_rows"],
        3000
    );
    assert_eq!(
        status["tables"]["My Schema.MixedCase"]["state"],
        "Table completed"
    );
}

#[tokio::test]
async fn files_split_at_max_file_size_and_carry_dms_columns() {
    let pg = pg();
    let db = pg.fresh_db("godwit_split").await;
    db.batch_execute(
        "CREATE TABLE big (id bigint PRIMARY KEY, body text);
         INSERT INTO big SELECT i, md5(i::text) || md5((-i)::text) || md5((i * 7)::text) || md5((i * 13)::text) FROM generate_series(1, 60000) i;",
    )
    .await
    .unwrap();
    let work = Work::new();
    let pipeline = work.pipeline(&pipeline_text(
        &pg.url("godwit_split"),
        r#"["public.big"]"#,
        "",
    ));
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "[target]\n",
        "[target]\nmax_file_size = \"2MiB\"\nrow_group_bytes = \"1MiB\"\ninclude_op_for_full_load = true\ntimestamp_column = \"loaded_at\"\ncompression = \"snappy\"\n",
    );
    std::fs::write(&pipeline, text).unwrap();
    let started = now_micros();
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let ended = now_micros();
    let files = parquet_files(&work.out().join("public/big"));
    assert!(files.len() >= 3, "expected several files, got {files:?}");
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            f.file_name().unwrap().to_str().unwrap(),
            format!("LOAD{:08X}.parquet", i + 1)
        );
        assert!(std::fs::metadata(f).unwrap().len() < 4 << 20);
    }
    let batches = read_table(&work.out(), "public", "big");
    let schema = batches[0].schema();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["Op", "loaded_at", "id", "body"]);
    let mut seen: Vec<i64> = Vec::new();
    for b in &batches {
        assert!(
            b.column(0)
                .as_string::<i32>()
                .iter()
                .all(|v| v == Some("I"))
        );
        let ts = b.column(1).as_primitive::<TimestampMicrosecondType>();
        assert!(
            ts.iter()
                .all(|t| t.is_some_and(|t| t >= started && t <= ended))
        );
        seen.extend(
            b.column(2)
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap()),
        );
    }
    seen.sort();
    assert_eq!(seen, (1..=60000).collect::<Vec<_>>());

    // A reload with fewer rows replaces the old files: no stale LOAD file is left behind.
    db.batch_execute("DELETE FROM big WHERE id > 100")
        .await
        .unwrap();
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let files = parquet_files(&work.out().join("public/big"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(rows(&read_table(&work.out(), "public", "big")), 100);
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[tokio::test]
async fn a_second_run_while_one_holds_the_lease_exits_2_naming_the_holder() {
    let pg = pg();
    let db = pg.fresh_db("godwit_lease").await;
    db.batch_execute(
        "CREATE TABLE slow (id int PRIMARY KEY);
         INSERT INTO slow VALUES (1), (2);",
    )
    .await
    .unwrap();
    let work = Work::new();
    // The filter sleeps 2 s per row, so the first run holds the lease for a while.
    let pipeline = work.pipeline(&pipeline_text(
        &pg.url("godwit_lease"),
        r#"["public.slow"]"#,
        r#"[tables."public.slow"]
where = "pg_sleep(1.5) IS NOT NULL""#,
    ));
    let mut first = work.spawn_run(&pipeline);
    let lease = work.out().join("_godwit/state/lease");
    for _ in 0..100 {
        if std::fs::read_to_string(&lease).is_ok_and(|t| t.contains("pid")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = work.godwit(&["run", pipeline.to_str().unwrap()], &[]);
    let t = text(&second);
    assert_eq!(second.status.code(), Some(2), "{t}");
    assert!(
        t.contains(&format!("pid {}", first.id())),
        "names the holder: {t}"
    );
    assert!(first.wait().unwrap().success());
    // Once the first run is over, the lease is free again.
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
}

#[tokio::test]
async fn tls_modes_connect_as_libpq_would() {
    let pg = pg();
    let db = pg.fresh_db("godwit_tls").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    let ca = std::env::var("GODWIT_PG_CA").expect("GODWIT_PG_CA from scripts/services.sh");
    let base = format!(
        "postgres://{}:{}@localhost:{}/godwit_tls",
        pg.user, pg.password, pg.port
    );
    let work = Work::new();
    // A well-formed CA certificate that did not sign the server's.
    let wrong_ca = work.path().join("wrong-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-subj", "/CN=wrong-ca", "-days", "2", "-keyout"])
        .arg(work.path().join("wrong-ca.key"))
        .arg("-out")
        .arg(&wrong_ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    for (query, ok) in [
        ("sslmode=require".to_string(), true),
        (format!("sslmode=verify-full&sslrootcert={ca}"), true),
        (format!("sslmode=verify-ca&sslrootcert={ca}"), true),
        (
            format!("sslmode=verify-full&sslrootcert={}", wrong_ca.display()),
            false,
        ),
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".to_string(),
            false,
        ),
    ] {
        let pipeline = work.pipeline(&pipeline_text(
            &format!("{base}?{query}"),
            r#"["public.t"]"#,
            "",
        ));
        let out = work.godwit(&["run", pipeline.to_str().unwrap()], &[]);
        let t = text(&out);
        assert!(!t.contains(&pg.password), "the password leaked: {t}");
        if ok {
            assert_eq!(out.status.code(), Some(0), "{query}: {t}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{query}: {t}");
        }
    }
}

/// Dictionary encoding only where ANALYZE says it pays: a low-cardinality column keeps its
/// dictionary, unique keys and text are written plain, a table never analysed keeps the
/// writer's default; the values are PostgreSQL's either way.
#[tokio::test]
async fn dictionaries_only_for_columns_with_few_distinct_values() {
    let pg = pg();
    let db = pg.fresh_db("godwit_dictionary").await;
    db.batch_execute(
        "CREATE TABLE analysed (id bigint PRIMARY KEY, status text, note text);
         INSERT INTO analysed SELECT i, 'status ' || (i % 4), md5(i::text)
           FROM generate_series(1, 50000) i;
         ANALYZE analysed;
         CREATE TABLE unanalysed (id bigint PRIMARY KEY, note text);
         INSERT INTO unanalysed SELECT i, md5(i::text) FROM generate_series(1, 50000) i;",
    )
    .await
    .unwrap();
    let w = Work::new();
    let p = w.pipeline(&pipeline_text(
        &pg.url("godwit_dictionary"),
        "[\"public.analysed\", \"public.unanalysed\"]",
        "",
    ));
    assert_ok(&w.godwit(&["run", p.to_str().unwrap()], &[]));
    let dictionary = |table: &str| -> Vec<(String, bool)> {
        let file = &parquet_files(&w.out().join("public").join(table))[0];
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(file).unwrap())
                .unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        meta.row_group(0)
            .columns()
            .iter()
            .map(|c| {
                (
                    c.column_path().string(),
                    c.dictionary_page_offset().is_some(),
                )
            })
            .collect()
    };
    assert_eq!(
        dictionary("analysed"),
        [
            ("id".to_string(), false),
            ("status".to_string(), true),
            ("note".to_string(), false)
        ]
    );
    assert!(dictionary("unanalysed").iter().all(|(_, d)| *d));
    for table in ["analysed", "unanalysed"] {
        let got = common::replay::render(&read_table(&w.out(), "public", table));
        let mut want = common::source::pg_sorted(&db, table).await;
        let mut got = got;
        got.sort_by_key(|r| r["id"].parse::<i64>().unwrap());
        want.sort_by_key(|r| r["id"].parse::<i64>().unwrap());
        assert_eq!(got.len(), 50000, "{table}");
        assert_eq!(got, want, "{table}");
    }
}
