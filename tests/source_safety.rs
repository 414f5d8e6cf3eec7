//! Source safety against the real PostgreSQL: a `where` filter is one expression or exit 2
//! (an injection attempt leaves the source exactly as it was), a filter with OR keeps parallel
//! segments disjoint, a CDC filter that cannot be a publication row filter is refused before
//! any slot or publication exists, the replication session verifies the server's certificate
//! under verify-full, and an unverified connection to another machine is warned about.

mod common;

use std::path::Path;

use common::replay::{RowMap, render, table_files};
use common::*;
use godwit::pg::connect::Source;
use godwit::pg::replication::session::NewSlot;
use tokio_postgres::Client;

fn pipeline_text(name: &str, mode: &str, url: &str, table: &str, settings: &str) -> String {
    format!(
        "name = \"{name}\"\nmode = \"{mode}\"\n[source]\nurl = \"{url}\"\n[tables]\ninclude = [\"{table}\"]\n[tables.\"{table}\"]\n{settings}\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n"
    )
}

/// The 1-based line of `pipeline` that starts with `prefix`.
fn line_of(pipeline: &Path, prefix: &str) -> usize {
    std::fs::read_to_string(pipeline)
        .unwrap()
        .lines()
        .position(|l| l.starts_with(prefix))
        .expect("line in the pipeline")
        + 1
}

/// Everything on the source a run could have changed: tables, publications, this database's
/// slots, and the rows of `table`.
async fn source_state(db: &Client, table: &str) -> Vec<String> {
    let mut out: Vec<String> = db
        .query(
            "SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication
             UNION ALL SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows: Vec<String> = db
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    out.extend(rows);
    out
}

async fn slots_and_publications(db: &Client) -> Vec<String> {
    db.query(
        "SELECT 'publication ' || pubname FROM pg_publication
         UNION ALL SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn an_injected_filter_is_refused_and_the_source_is_untouched() {
    let pg = pg();
    let db = pg.fresh_db("godwit_ss_inject").await;
    db.batch_execute(
        "CREATE TABLE orders (id int PRIMARY KEY, v text);
         INSERT INTO orders SELECT i, 'v' || i FROM generate_series(1, 20) i;",
    )
    .await
    .unwrap();
    let before = source_state(&db, "orders").await;
    for (mode, filter) in [
        (
            "full-load",
            "true) LIMIT 0; COMMIT; CREATE TABLE pwned (x int); SELECT 1 WHERE (true",
        ),
        (
            "cdc",
            "true) LIMIT 0; COMMIT; CREATE TABLE pwned (x int); SELECT 1 WHERE (true",
        ),
        ("full-load", "id > 0 -- ) OR (true"),
        ("full-load", "id > 0) OR (true"),
    ] {
        let w = Work::new();
        let pipe = w.pipeline(&pipeline_text(
            "ss_inject",
            mode,
            &pg.url("godwit_ss_inject"),
            "public.orders",
            &format!("where = \"{filter}\""),
        ));
        let at = format!(
            "{}:{}: tables.\"public.orders\".where:",
            pipe.display(),
            line_of(&pipe, "where =")
        );
        for cmd in ["check", "run"] {
            let out = w.godwit(&[cmd, pipe.to_str().unwrap()], &[]);
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd} {mode} `{filter}`: {t}");
            assert!(t.contains(&at), "{cmd} names file:line:key `{at}`: {t}");
            assert!(t.contains("hint:"), "{cmd} says how to fix it: {t}");
        }
        assert!(!w.out().exists(), "nothing was written");
    }
    let pwned: Option<String> = db
        .query_one("SELECT to_regclass('pwned')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pwned, None, "the injected CREATE TABLE ran");
    assert_eq!(source_state(&db, "orders").await, before);
}

#[tokio::test]
async fn a_filter_with_or_keeps_parallel_segments_disjoint() {
    let pg = pg();
    let db = pg.fresh_db("godwit_ss_or").await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, repeat(chr(97 + i % 26), 100 + i % 50) FROM generate_series(1, 1000) i;",
    )
    .await
    .unwrap();
    let pages: i64 = db
        .query_one("SELECT pg_relation_size('t') / 8192", &[])
        .await
        .unwrap()
        .get(0);
    assert!(pages >= 6, "the table spans enough pages for 3 segments");

    // An escape from the parentheses is refused before anything connects.
    let w = Work::new();
    let pipe = w.pipeline(&pipeline_text(
        "ss_or",
        "full-load",
        &pg.url("godwit_ss_or"),
        "public.t",
        "where = \"1=1) OR (true\"\npartitions = 3",
    ));
    for cmd in ["check", "run"] {
        let out = w.godwit(&[cmd, pipe.to_str().unwrap()], &[]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {t}");
        assert!(
            t.contains(&format!(
                ":{}: tables.\"public.t\".where: the filter `1=1) OR (true` is more than one expression",
                line_of(&pipe, "where =")
            )),
            "{cmd}: {t}"
        );
    }
    assert!(!w.out().exists());

    // A legitimate OR: every segment reads its own blocks, filtered as a whole.
    let w = Work::new();
    let pipe = w.pipeline(&pipeline_text(
        "ss_or",
        "full-load",
        &pg.url("godwit_ss_or"),
        "public.t",
        "where = \"id < 100 OR id > 900\"\npartitions = 3",
    ));
    assert_ok(&w.godwit(&["run", pipe.to_str().unwrap()], &[]));
    let (load, _) = table_files(&w.out().join("public").join("t"));
    let segments = load
        .iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("SEGMENT")
        })
        .count();
    assert_eq!(segments, 3, "three segment files: {load:?}");
    let mut got: Vec<RowMap> = load.iter().flat_map(|f| render(&read_parquet(f))).collect();
    got.sort_by_key(|r| r["id"].parse::<i64>().unwrap());
    let want: Vec<RowMap> = db
        .query(
            "SELECT id::text, v FROM t WHERE id < 100 OR id > 900 ORDER BY t.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            [
                ("id".to_string(), r.get::<_, String>(0)),
                ("v".to_string(), r.get::<_, String>(1)),
            ]
            .into_iter()
            .collect()
        })
        .collect();
    assert_eq!(want.len(), 199);
    assert_eq!(got.len(), want.len(), "no row twice, none missing");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["id"], w["id"]);
        assert_eq!(g["v"], w["v"], "row {}", w["id"]);
    }
}

#[tokio::test]
async fn cdc_filters_that_cannot_be_row_filters_are_refused_before_anything_is_created() {
    let pg = pg();
    let db = pg.fresh_db("godwit_ss_rowfilter").await;
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE FUNCTION positive(int) RETURNS bool IMMUTABLE LANGUAGE sql AS 'SELECT $1 > 0';
         CREATE TABLE t (id int PRIMARY KEY, v int, at timestamptz, m mood);
         INSERT INTO t SELECT i, i, '2026-01-01', 'happy' FROM generate_series(1, 10) i;
         CREATE TABLE a (id int PRIMARY KEY);
         CREATE TABLE b (id int PRIMARY KEY, at timestamptz);",
    )
    .await
    .unwrap();
    let nothing = slots_and_publications(&db).await;
    assert!(nothing.is_empty(), "{nothing:?}");
    for (filter, check_says) in [
        ("random() < 2", "random() is volatile"),
        ("at < now()", "now() is stable"),
        ("id IN (SELECT 1)", "subquery"),
        ("xmin IS NOT NULL", "system column xmin"),
        ("v > 0", "uses v outside its replica identity"),
        ("m = 'happy'", "the column m has the user-defined type mood"),
        ("positive(id)", "positive() is user-defined"),
        ("count(id) > 0", "aggregate functions are not allowed"),
    ] {
        for mode in ["cdc", "full-load-and-cdc"] {
            let w = Work::new();
            let pipe = w.pipeline(&pipeline_text(
                "ss_rowfilter",
                mode,
                &pg.url("godwit_ss_rowfilter"),
                "public.t",
                &format!("where = \"{filter}\""),
            ));
            let check = w.godwit(&["check", pipe.to_str().unwrap()], &[]);
            let t = text(&check);
            assert_eq!(check.status.code(), Some(2), "check `{filter}`: {t}");
            assert!(t.contains(check_says), "check `{filter}` says why: {t}");
            assert!(
                t.contains("Fix:") || t.contains("hint:"),
                "check `{filter}` says the fix: {t}"
            );
            let run = w.godwit(&["run", pipe.to_str().unwrap(), "--once"], &[]);
            let t = text(&run);
            assert_eq!(run.status.code(), Some(2), "run {mode} `{filter}`: {t}");
            assert!(t.contains("tables.\"public.t\"."), "run names the key: {t}");
            assert_eq!(
                slots_and_publications(&db).await,
                nothing,
                "run {mode} `{filter}` created something"
            );
            assert!(
                table_files(&w.out().join("public").join("t")).0.is_empty(),
                "no data was written"
            );
        }
    }
    // What only PostgreSQL can judge (date_trunc is immutable for timestamp, stable for
    // timestamptz) is refused at CREATE PUBLICATION — after the main publication, in the
    // same transaction, so neither is left behind.
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"ss_rowfilter\"\nmode = \"cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.a\", \"public.b\"]\n[tables.\"public.b\"]\ncdc = \"inserts-only\"\nwhere = \"date_trunc('year', at) = '2026-01-01'\"\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url("godwit_ss_rowfilter")
    ));
    let run = w.godwit(&["run", pipe.to_str().unwrap(), "--once"], &[]);
    let t = text(&run);
    assert_eq!(run.status.code(), Some(2), "{t}");
    assert!(
        t.contains("creating publication godwit_ss_rowfilter_inserts"),
        "{t}"
    );
    assert_eq!(slots_and_publications(&db).await, nothing);

    // The same filters are fine for a full load; an immutable filter on the key qualifies.
    let w = Work::new();
    let pipe = w.pipeline(&pipeline_text(
        "ss_rowfilter",
        "full-load",
        &pg.url("godwit_ss_rowfilter"),
        "public.t",
        "where = \"random() < 2 AND at < now() AND v > 0\"",
    ));
    assert_ok(&w.godwit(&["run", pipe.to_str().unwrap()], &[]));
    let w = Work::new();
    let pipe = w.pipeline(&pipeline_text(
        "ss_rowfilter",
        "cdc",
        &pg.url("godwit_ss_rowfilter"),
        "public.t",
        "where = \"id % 2 = 0 AND abs(id) < 1000\"",
    ));
    let t = assert_ok(&w.godwit(&["check", pipe.to_str().unwrap()], &[]));
    assert!(
        t.contains("qualifies as a publication row filter"),
        "check: {t}"
    );
    assert_eq!(slots_and_publications(&db).await, nothing);
}

/// A CA certificate that did not sign the server's.
fn wrong_ca(w: &Work) -> std::path::PathBuf {
    let path = w.path().join("wrong-ca.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=wrong-ca",
        ])
        .args(["-days", "2", "-keyout"])
        .arg(w.path().join("wrong-ca.key"))
        .arg("-out")
        .arg(&path)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    path
}

#[tokio::test]
async fn the_replication_connection_verifies_the_server_under_verify_full() {
    let pg = pg();
    let db = pg.fresh_db("godwit_ss_tls").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text);")
        .await
        .unwrap();
    let ca = std::env::var("GODWIT_PG_CA").expect("GODWIT_PG_CA from scripts/services.sh");
    let w = Work::new();
    let bad_ca = wrong_ca(&w);
    let url = |root: &str| {
        format!(
            "postgres://{}:{}@localhost:{}/godwit_ss_tls?sslmode=verify-full&sslrootcert={root}",
            pg.user, pg.password, pg.port
        )
    };

    // The replication session itself: the right CA gives a TLS walsender, the wrong one none.
    let good = Source::from_url(&url(&ca)).unwrap().endpoint();
    let slot = NewSlot::create(&good, "godwit_ss_tls_probe", &[], true)
        .await
        .expect("replication session under verify-full");
    let ssl: Vec<bool> = db
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.backend_type = 'walsender' AND a.datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ssl, [true], "one walsender, on TLS");
    drop(slot);
    // An IP address is verified against the certificate's IP names, as libpq does.
    let by_ip = Source::from_url(&url(&ca).replace("@localhost:", "@127.0.0.1:"))
        .unwrap()
        .endpoint();
    NewSlot::create(&by_ip, "godwit_ss_tls_ip", &[], true)
        .await
        .expect("replication session to 127.0.0.1 under verify-full");
    let bad = Source::from_url(&url(bad_ca.to_str().unwrap()))
        .unwrap()
        .endpoint();
    let refused = NewSlot::create(&bad, "godwit_ss_tls_bad", &[], true).await;
    let msg = refused.err().expect("a wrong CA is refused").to_string();
    assert!(!msg.contains(&pg.password), "{msg}");

    // A CDC run under verify-full captures a change.
    let pipe = w.pipeline(&pipeline_text("ss_tls", "cdc", &url(&ca), "public.t", ""));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    db.batch_execute("INSERT INTO t VALUES (1, 'over TLS'), (2, NULL)")
        .await
        .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    let (_, cdc) = table_files(&w.out().join("public").join("t"));
    let mut got: Vec<RowMap> = cdc.iter().flat_map(|f| render(&read_parquet(f))).collect();
    got.sort_by(|a, b| a["id"].cmp(&b["id"]));
    let want: Vec<(String, String)> = db
        .query(
            "SELECT id::text, coalesce(v, 'NULL') FROM t ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, (id, v)) in got.iter().zip(&want) {
        assert_eq!(g["Op"], "I");
        assert_eq!(&g["id"], id);
        assert_eq!(&g["v"], v);
    }

    // The wrong CA: exit 2, nothing new.
    let w2 = Work::new();
    let pipe = w2.pipeline(&pipeline_text(
        "ss_tls_bad",
        "cdc",
        &url(bad_ca.to_str().unwrap()),
        "public.t",
        "",
    ));
    let out = w2.godwit(&["run", pipe.to_str().unwrap(), "--once"], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(!t.contains(&pg.password), "{t}");
    let slots: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'godwit_ss_tls_bad'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    let mut drop_it = w.godwit(&["drop", p, "--yes"], &[]);
    if !drop_it.status.success() {
        drop_it = w.godwit(&["drop", p, "--yes"], &[]);
    }
    assert_ok(&drop_it);
}

#[tokio::test]
async fn an_unverified_connection_to_another_machine_is_warned_about() {
    let pg = pg();
    // 192.0.2.1 (TEST-NET-1) is never this machine; the warning comes before connecting.
    let w = Work::new();
    for (query, warns) in [
        ("sslmode=require&connect_timeout=1", true),
        ("connect_timeout=1", true),
        (
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem&connect_timeout=1",
            false,
        ),
    ] {
        let pipe = w.pipeline(&pipeline_text(
            "ss_warn",
            "full-load",
            &format!("postgres://u:topsecret@192.0.2.1:5432/db?{query}"),
            "public.t",
            "",
        ));
        for cmd in ["check", "run"] {
            let out = w.godwit(&[cmd, pipe.to_str().unwrap()], &[]);
            let t = text(&out);
            assert_eq!(out.status.code(), Some(2), "unreachable: {t}");
            assert!(!t.contains("topsecret"), "{t}");
            assert_eq!(
                t.matches("sslmode=verify-full&sslrootcert=").count(),
                usize::from(warns),
                "{cmd} {query}: warned once, with the fix: {t}"
            );
        }
    }
    // The test server on loopback: no warning.
    let pipe = w.pipeline(&pipeline_text(
        "ss_warn",
        "full-load",
        &pg.url("postgres"),
        "public.nothing_here",
        "",
    ));
    let t = text(&w.godwit(&["check", pipe.to_str().unwrap()], &[]));
    assert!(!t.contains("sslmode=verify-full"), "{t}");
}
