//! Local paths: schema and table names that are path syntax (`.`, `..`, a leading dot) stay
//! inside the target folder under encoded names, temporary files never follow a symlink
//! planted where a predictable name would be, and the clean-up of an interrupted run touches
//! only the folders of this pipeline's tables, not another pipeline's work in the same tree.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int32Type;
use common::*;

fn pipeline_text(name: &str, db_url: &str, include: &str, target: &Path, extra: &str) -> String {
    format!(
        r#"name = "{name}"
mode = "full-load"
[source]
url = "{db_url}"
[tables]
include = {include}
[target]
url = "file://{}"
{extra}
"#,
        target.display()
    )
}

/// Every file (not folder) under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// `(id, label)` rows of a Parquet file with columns `id int, label text`, sorted.
fn id_labels(path: &Path) -> Vec<(i32, Option<String>)> {
    let mut out = Vec::new();
    for b in read_parquet(path) {
        let ids = b.column(0).as_primitive::<Int32Type>();
        let labels = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            let label = (!labels.is_null(i)).then(|| labels.value(i).to_string());
            out.push((ids.value(i), label));
        }
    }
    out.sort();
    out
}

/// What PostgreSQL returns for `SELECT id, label FROM table`, sorted.
async fn pg_id_labels(db: &tokio_postgres::Client, quoted: &str) -> Vec<(i32, Option<String>)> {
    let rows = db
        .query(&format!("SELECT id, label FROM {quoted} ORDER BY id"), &[])
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn dot_names_stay_inside_the_target_under_encoded_names() {
    let pg = pg();
    let db = pg.fresh_db("godwit_paths_dots").await;
    // (schema, table, folder under the target): `.` and `..` and a leading dot are encoded.
    let tables = [
        ("..", "..", "%2E./%2E."),
        ("..", ".", "%2E./%2E"),
        (".", "..", "%2E/%2E."),
        (".", ".", "%2E/%2E"),
        ("public", ".x", "public/%2Ex"),
        ("public", "a.b", "public/a.b"),
        ("public", "...", "public/%2E.."),
    ];
    db.batch_execute(r#"CREATE SCHEMA ".."; CREATE SCHEMA ".";"#)
        .await
        .unwrap();
    for (i, (schema, table, _)) in tables.iter().enumerate() {
        let q = format!("\"{schema}\".\"{table}\"");
        db.batch_execute(&format!(
            "CREATE TABLE {q} (id int PRIMARY KEY, label text);
             INSERT INTO {q} SELECT n, CASE WHEN n % 5 = 0 THEN NULL ELSE '{i}:' || n END
               FROM generate_series(1, {}) n;",
            10 + i * 7
        ))
        .await
        .unwrap();
    }

    let work = Work::new();
    let out = work.path().join("deep/er/out");
    let include: Vec<String> = tables
        .iter()
        .map(|(s, t, _)| format!("'\"{s}\".\"{t}\"'"))
        .collect();
    let pipeline = work.pipeline(&pipeline_text(
        "dots",
        &pg.url("godwit_paths_dots"),
        &format!("[{}]", include.join(", ")),
        &out,
        "",
    ));
    // Twice: the second run lists and replaces the first run's files under the same names.
    for _ in 0..2 {
        assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));

        // Every data file is inside the target folder, exactly where the encoding says.
        let data: BTreeSet<PathBuf> = all_files(work.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        let expected: BTreeSet<PathBuf> = tables
            .iter()
            .map(|(_, _, dir)| out.join(dir).join("LOAD00000001.parquet"))
            .collect();
        assert_eq!(data, expected);

        for (schema, table, dir) in &tables {
            let got = id_labels(&out.join(dir).join("LOAD00000001.parquet"));
            let want = pg_id_labels(&db, &format!("\"{schema}\".\"{table}\"")).await;
            assert!(!want.is_empty());
            assert_eq!(got, want, "{schema}.{table}");
        }
    }
    // Nothing was written beside the target folder.
    let beside: Vec<_> = std::fs::read_dir(work.path().join("deep/er"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec!["out"]);
    let status = work.godwit(&["status", pipeline.to_str().unwrap(), "--json"], &[]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["tables"]["....."]["state"], "Table completed");
}

#[tokio::test]
async fn temporary_files_do_not_follow_planted_symlinks() {
    let pg = pg();
    let db = pg.fresh_db("godwit_paths_symlinks").await;
    // ~20 MiB of text that does not compress, cut into many small files, so that files
    // are still being started after the symlinks are planted.
    db.batch_execute(
        "CREATE TABLE blob (id int PRIMARY KEY, label text);
         INSERT INTO blob SELECT i, md5(i::text) || md5((-i)::text) || md5((i * 7)::text) || md5((i * 13)::text)
           FROM generate_series(1, 150000) i;",
    )
    .await
    .unwrap();
    let work = Work::new();
    let out = work.out();
    let victim = work.path().join("victim.txt");
    std::fs::write(&victim, b"untouched").unwrap();
    let pipeline = work.pipeline(&pipeline_text(
        "links",
        &pg.url("godwit_paths_symlinks"),
        r#"["public.blob"]"#,
        &out,
        "compression = \"none\"\nmax_file_size = \"256KiB\"",
    ));
    let mut child = work.spawn_run(&pipeline);
    let pid = child.id();
    let dir = out.join("public/blob");
    let first = dir.join("LOAD00000001.parquet");
    let started = Instant::now();
    while !first.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no first file after 2 minutes"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("godwit ended before its first file: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Plant a symlink to the victim under every predictable temporary name of the files
    // still to come: the run's pid, and pid 1 as in a container.
    let done = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("LOAD")
        })
        .count() as u32;
    let planted_from = done + 2;
    for n in planted_from..planted_from + 200 {
        for p in [pid, 1] {
            let name = format!("LOAD{n:08X}.parquet");
            for temp in [
                format!(".{name}.{p}.godwit-tmp"),
                format!(".{name}.{p}"),
                format!(".{name}.{p}.tmp"),
                format!("{name}.{p}"),
                format!("{name}.tmp"),
            ] {
                let _ = std::os::unix::fs::symlink(&victim, dir.join(temp));
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "godwit failed: {status}");

    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    let loads: Vec<PathBuf> = all_files(&dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("LOAD") && name.ends_with(".parquet")
        })
        .collect();
    // The symlinks were planted in time for files still to be written.
    assert!(
        dir.join(format!("LOAD{planted_from:08X}.parquet")).exists(),
        "the load ended before the symlinks were planted ({} files)",
        loads.len()
    );
    let mut got = Vec::new();
    for f in &loads {
        let meta = std::fs::symlink_metadata(f).unwrap();
        assert!(meta.file_type().is_file(), "{} is not a file", f.display());
        got.extend(id_labels(f));
    }
    got.sort();
    assert_eq!(got, pg_id_labels(&db, "blob").await);
}

#[tokio::test]
async fn clean_up_leaves_other_pipelines_work_in_the_same_tree() {
    let pg = pg();
    let db = pg.fresh_db("godwit_paths_cleanup").await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, label text);
         INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 100) i;
         CREATE TABLE old (id int PRIMARY KEY, label text);
         INSERT INTO old VALUES (1, 'x');",
    )
    .await
    .unwrap();
    let work = Work::new();
    let lake = work.path().join("lake");
    // Pipeline A writes public.a into `lake`; its first run also loaded public.old.
    let text =
        |include: &str| pipeline_text("a", &pg.url("godwit_paths_cleanup"), include, &lake, "");
    let pipeline = work.pipeline(&text(r#"["public.a", "public.old"]"#));
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let pipeline = work.pipeline(&text(r#"["public.a"]"#));
    let plant = |rel: &str| {
        let p = lake.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"half-written").unwrap();
        p
    };
    // Pipeline B's unfinished files: B targets `lake/nested`; another B targets `lake/public/a`
    // (inside A's table folder); a third shares `lake` with its own state, table public.a_archive.
    let others = [
        plant("nested/public/a/.LOAD00000001.parquet.Xy12Ab.godwit-tmp"),
        plant("public/a/public/b/.LOAD00000001.parquet.Qw34Er.godwit-tmp"),
        plant(
            "public/a/public/b/2026/01/02/.20260102-000000000-0000000000000001-0000000000000002.parquet.Zx56Cv.godwit-tmp",
        ),
        plant("public/a_archive/.LOAD00000001.parquet.Rt78Yu.godwit-tmp"),
    ];
    // A's own leftovers, in its table folder and in date folders of it, and in the folder of
    // a table its previous run loaded.
    let own = [
        plant("public/old/.LOAD00000001.parquet.Gf56Ds.godwit-tmp"),
        plant("public/a/.LOAD00000002.parquet.Mn90Kl.godwit-tmp"),
        plant(
            "public/a/2026/01/02/.20260102-000000000-0000000000000001-0000000000000002.parquet.Po12Iu.godwit-tmp",
        ),
        plant(
            "public/a/2026/01/02/03/.20260102-030000000-0000000000000001-0000000000000002.parquet.Lk34Jh.godwit-tmp",
        ),
    ];
    let run = assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    for p in &others {
        assert!(p.exists(), "another pipeline's {} was removed", p.display());
        assert_eq!(std::fs::read(p).unwrap(), b"half-written");
    }
    for p in &own {
        assert!(!p.exists(), "{} was left behind", p.display());
    }
    assert!(run.contains("removed 4 incomplete objects"), "{run}");
    assert_eq!(
        id_labels(&lake.join("public/a/LOAD00000001.parquet")),
        pg_id_labels(&db, "a").await
    );
}
