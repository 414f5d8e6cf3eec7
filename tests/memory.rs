//! The memory budget: with `[limits] memory = "32MiB"`, a full load of large rows (one value
//! larger than the whole budget among them) and one CDC transaction of 1 GiB keep godwit's
//! peak RSS within the budget plus the documented fixed overhead; `memory.pressure` and
//! `memory.recovered` are emitted; spilled changes are written out in order and their files
//! removed; and a SIGKILL while changes are spilled loses and duplicates nothing.
//!
//! The tests of this file run one at a time, so that their runs do not compete for the CPU.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use common::*;
use md5::{Digest, Md5};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BUDGET: u64 = 32 << 20;
/// godwit's fixed memory beside the budget (runtime, TLS and AWS clients, the replication
/// session's read-ahead, allocator slack), as documented in the README.
const OVERHEAD: u64 = 96 << 20;

/// Runs godwit with `args` to its end; returns its exit code, its output (stdout and stderr)
/// and its peak resident set: `VmHWM` of /proc/<pid>/status, read every few milliseconds
/// until it ends. (`wait4`'s `ru_maxrss` would count the test process's own memory, which the
/// child had before `exec`.)
fn run_measured(work: &Work, args: &[&str]) -> (i32, String, u64) {
    let log = work.path().join("measured.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_godwit"))
        .current_dir(work.path())
        .args(args)
        .env("GODWIT_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb * 1024);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(3));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    (status.code().unwrap_or(-1), text, peak)
}

/// [`run_measured`], which must succeed.
fn run_ok(work: &Work, args: &[&str]) -> (String, u64) {
    let (code, text, peak) = run_measured(work, args);
    assert_eq!(code, 0, "{text}");
    (text, peak)
}

/// A pipeline of table `big` with a 32 MiB budget; CDC files of up to 256 MB, more than the
/// budget holds (what spill files are for).
fn pipeline(name: &str, db_url: &str, mode: &str, spill: &Path) -> String {
    format!(
        "name = \"{name}\"\nmode = \"{mode}\"\n[source]\nurl = \"{db_url}\"\n[tables]\n\
         include = [\"public.big\"]\n[target]\nurl = \"file://{{out}}\"\ncompression = \"snappy\"\n\
         cdc_max_batch_interval = \"60s\"\ncdc_min_file_size = \"256MB\"\n\
         [limits]\nmemory = \"32MiB\"\nspill_dir = \"{}\"\n",
        spill.display()
    )
}

/// `id → md5(v)` as PostgreSQL computes it.
async fn source_digests(db: &tokio_postgres::Client) -> BTreeMap<i32, String> {
    db.query("SELECT id, md5(v) FROM big", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// `id → md5(v)` of the Parquet files given, in their order; panics on an id seen twice, and
/// checks (`_lsn`, `_seq`) only grow along the files when they carry them.
fn file_digests(files: &[PathBuf]) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    let mut last_mark = (i64::MIN, i64::MIN);
    for f in files {
        for b in read_parquet(f) {
            let ids = b.column_by_name("id").unwrap().as_primitive::<Int32Type>();
            let values = b.column_by_name("v").unwrap().as_string::<i32>();
            let marks = b.column_by_name("_lsn").map(|l| {
                (
                    l.as_primitive::<Int64Type>().clone(),
                    b.column_by_name("_seq")
                        .unwrap()
                        .as_primitive::<Int64Type>()
                        .clone(),
                )
            });
            for i in 0..b.num_rows() {
                if let Some((lsn, seq)) = &marks {
                    let m = (lsn.value(i), seq.value(i));
                    assert!(m > last_mark, "{}: rows out of order", f.display());
                    last_mark = m;
                }
                assert!(!values.is_null(i));
                let digest: String = Md5::digest(values.value(i).as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let id = ids.value(i);
                assert!(
                    out.insert(id, digest).is_none(),
                    "id {id} twice ({})",
                    f.display()
                );
            }
        }
    }
    out
}

fn spill_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "arrows"))
                .count()
        })
        .unwrap_or(0)
}

fn of_type<'a>(events: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event_type"] == t).collect()
}

#[tokio::test]
async fn a_full_load_of_large_rows_stays_within_the_budget() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg();
    let db = pg.fresh_db("godwit_memory_load").await;
    // 16,384 rows of 32 KiB: 512 MiB through a 32 MiB budget.
    db.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO big SELECT i, repeat(md5(i::text), 1024) FROM generate_series(1, 16384) i;",
    )
    .await
    .unwrap();
    let work = Work::new();
    let spill = work.path().join("spill");
    let path = work.pipeline(&pipeline(
        "memload",
        &pg.url("godwit_memory_load"),
        "full-load",
        &spill,
    ));
    let (_, peak) = run_ok(&work, &["run", path.to_str().unwrap()]);
    eprintln!("full load of 512 MiB: peak RSS {} MiB", peak >> 20);
    assert!(
        peak <= BUDGET + OVERHEAD,
        "peak RSS {} MiB, over the budget + overhead ({} MiB)",
        peak >> 20,
        (BUDGET + OVERHEAD) >> 20
    );
    let files = parquet_files(&work.out().join("public/big"));
    assert_eq!(file_digests(&files), source_digests(&db).await);
}

#[tokio::test]
async fn a_value_larger_than_the_budget_is_processed_alone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = pg();
    let db = pg.fresh_db("godwit_memory_huge").await;
    // One value of 40 MiB, more than the whole budget, between ordinary rows.
    db.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO big SELECT i, repeat(md5(i::text), 64) FROM generate_series(1, 1000) i;
         INSERT INTO big VALUES (0, repeat(md5('huge'), 1310720));
         INSERT INTO big SELECT i, repeat(md5(i::text), 64) FROM generate_series(1001, 2000) i;",
    )
    .await
    .unwrap();
    let work = Work::new();
    let spill = work.path().join("spill");
    let path = work.pipeline(&pipeline(
        "memhuge",
        &pg.url("godwit_memory_huge"),
        "full-load",
        &spill,
    ));
    let (_, peak) = run_ok(&work, &["run", path.to_str().unwrap()]);
    // Such a value is copied a few times on its way (the COPY message, the Arrow column,
    // the Parquet page and its compressed form): the README documents up to 7 times its size.
    eprintln!("full load with a 40 MiB value: peak RSS {} MiB", peak >> 20);
    assert!(
        peak <= BUDGET + OVERHEAD + 7 * (40 << 20),
        "peak RSS {} MiB",
        peak >> 20
    );
    let files = parquet_files(&work.out().join("public/big"));
    assert_eq!(file_digests(&files), source_digests(&db).await);
    let events = events(&work.out().join("_godwit/state/events.jsonl"));
    let pressure = of_type(&events, "memory.pressure");
    assert_eq!(pressure.len(), 1, "{pressure:?}");
    assert!(
        pressure[0]["details"]["action"]
            .as_str()
            .unwrap()
            .contains("larger than the whole budget"),
        "{pressure:?}"
    );
    assert_eq!(pressure[0]["dms_event_id"], "DMS-EVENT-0091");
    assert_eq!(pressure[0]["details"]["limit_bytes"], BUDGET);
    let recovered = of_type(&events, "memory.recovered");
    assert_eq!(recovered.len(), 1, "{events:?}");
    assert_eq!(recovered[0]["dms_event_id"], "DMS-EVENT-0093");
}

/// A `cdc` pipeline `mem<name>` on a fresh database `godwit_memory_<name>` whose slot exists,
/// and then one transaction of `rows` rows of 32 KiB in table `big`. `spill` is where the
/// spill directory goes (created by godwit).
struct Cdc {
    db: tokio_postgres::Client,
    work: Work,
    path: PathBuf,
}

impl Cdc {
    async fn after_one_transaction(name: &str, rows: u32, spill: impl Fn(&Path) -> PathBuf) -> Cdc {
        let pg = pg();
        let db_name = format!("godwit_memory_{name}");
        let db = pg.fresh_db(&db_name).await;
        db.batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL)")
            .await
            .unwrap();
        let work = Work::new();
        let spill = spill(work.path());
        let path = work.pipeline(&pipeline(
            &format!("mem{name}"),
            &pg.url(&db_name),
            "cdc",
            &spill,
        ));
        // Creates the slot; nothing to load.
        assert_ok(&work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]));
        db.batch_execute(&format!(
            "INSERT INTO big SELECT i, repeat(md5(i::text), 1024) FROM generate_series(1, {rows}) i"
        ))
        .await
        .unwrap();
        wait_wal_flushed(&db).await;
        Cdc { db, work, path }
    }

    fn pipeline(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The output compared with the source, id by id and value by value.
    async fn assert_complete(&self) -> usize {
        let files = parquet_files(&self.work.out().join("public/big"));
        assert_eq!(file_digests(&files), source_digests(&self.db).await);
        files.len()
    }

    fn drop_slot(&self) {
        assert_ok(&self.work.godwit(&["drop", self.pipeline(), "--yes"], &[]));
    }
}

#[tokio::test]
async fn a_one_gib_transaction_is_spilled_and_written_out_in_order() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // One transaction of 32,768 rows of 32 KiB: 1 GiB through the replication stream.
    let cdc = Cdc::after_one_transaction("cdc", 32768, |w| w.join("spill")).await;
    let work = &cdc.work;
    let started = Instant::now();
    let (log, peak) = run_ok(work, &["run", cdc.pipeline(), "--once"]);
    eprintln!(
        "CDC: 1 GiB transaction in {:.1}s, peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        peak >> 20
    );
    assert!(cdc.assert_complete().await > 1);
    assert!(log.contains("buffered CDC changes spilled"), "{log}");
    assert_eq!(
        spill_files(&work.path().join("spill/memcdc")),
        0,
        "spill files left"
    );
    assert!(
        peak <= BUDGET + OVERHEAD,
        "peak RSS {} MiB, over the budget + overhead ({} MiB)",
        peak >> 20,
        (BUDGET + OVERHEAD) >> 20
    );
    let events = events(&work.out().join("_godwit/state/events.jsonl"));
    let pressure = of_type(&events, "memory.pressure");
    assert!(!pressure.is_empty());
    assert!(
        pressure
            .iter()
            .any(|e| e["details"]["action"].as_str().unwrap().contains("spilled")),
        "{pressure:?}"
    );
    assert_eq!(
        of_type(&events, "memory.recovered").len(),
        pressure.len(),
        "every episode ends: {events:?}"
    );
    cdc.drop_slot();
}

#[tokio::test]
async fn a_kill_while_changes_are_spilled_loses_and_doubles_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cdc = Cdc::after_one_transaction("kill", 8192, |w| w.join("spill")).await;
    let (work, path) = (&cdc.work, &cdc.path);
    let spill = work.path().join("spill");
    let log = work.path().join("run.log");
    let mut run = Killed(work.spawn_run_logged(path, &log));
    let folder = spill.join("memkill");
    let deadline = Instant::now() + Duration::from_secs(120);
    while spill_files(&folder) == 0 {
        assert!(Instant::now() < deadline, "nothing was spilled");
        assert!(run.0.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    // The kill landed while changes were spilled and not yet written out.
    assert!(spill_files(&folder) > 0);
    drop(run);

    let again = assert_ok(&work.godwit(&["run", cdc.pipeline(), "--once"], &[]));
    assert!(
        again.contains("spill files an interrupted run left"),
        "{again}"
    );
    assert_eq!(spill_files(&folder), 0);
    cdc.assert_complete().await;
    cdc.drop_slot();
}

#[tokio::test]
async fn an_unwritable_spill_dir_writes_changes_out_early_instead() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // A regular file where the spill directory should be: nothing can be created under it.
    let cdc = Cdc::after_one_transaction("nospill", 4096, |w| {
        let file = w.join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        file
    })
    .await;
    let work = &cdc.work;
    let log = assert_ok(&work.godwit(&["run", cdc.pipeline(), "--once"], &[]));
    assert!(
        log.contains("cannot spill buffered changes to")
            && log.contains("not-a-dir")
            && log.contains("writing the buffered changes out early instead"),
        "{log}"
    );
    // 128 MiB of changes under a 32 MiB budget, written early in several files.
    assert!(cdc.assert_complete().await >= 4);
    let events = events(&work.out().join("_godwit/state/events.jsonl"));
    assert!(
        of_type(&events, "memory.pressure")
            .iter()
            .any(|e| e["details"]["action"]
                .as_str()
                .unwrap()
                .contains("spilling failed")),
        "{events:?}"
    );
    cdc.drop_slot();
}
