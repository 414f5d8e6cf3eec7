//! Exactly once under crashes and during the handoff: a workload writes mixed changes while
//! godwit is killed (SIGKILL) at random moments — some of them right after an object is
//! complete and before its checkpoint — and restarted; and heavy writes run during the initial
//! full load. Afterwards replaying the files over the full load gives the source's tables
//! exactly: no change missing (an update or delete of a missing row), none doubled (an insert
//! of an existing key, a (`_lsn`, `_seq`) seen twice).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::replay::*;
use common::source::*;
use common::*;

/// A small deterministic generator (no dependency needed for test randomness).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Committed changes the workload made.
#[derive(Default)]
struct Done {
    inserts: AtomicU64,
    updates: AtomicU64,
    deletes: AtomicU64,
}

/// Writes transactions of mixed inserts, updates and deletes (some rolled back) into `acct`
/// until `stop` is set.
async fn workload(db: tokio_postgres::Client, seed: u64, stop: Arc<AtomicBool>, done: Arc<Done>) {
    let mut rng = Rng(seed);
    let mut next_id: i64 = 1_000_000 + (seed as i64 % 1000) * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        let rollback = rng.below(10) == 0;
        let mut sql = String::from("BEGIN;");
        let (mut i, mut u, mut d) = (0, 0, 0);
        for _ in 0..1 + rng.below(20) {
            match rng.below(10) {
                0..=4 => {
                    next_id += 1;
                    sql.push_str(&format!(
                        "INSERT INTO acct VALUES ({next_id}, {}, md5('{next_id}'));",
                        rng.below(1000)
                    ));
                    i += 1;
                }
                5..=7 => {
                    let id = 1 + rng.below(2000);
                    sql.push_str(&format!(
                        "UPDATE acct SET n = n + 1, note = 'u{}' WHERE id = {id};",
                        rng.below(100)
                    ));
                    u += 1;
                }
                _ => {
                    let id = 1 + rng.below(2000);
                    sql.push_str(&format!("DELETE FROM acct WHERE id = {id};"));
                    d += 1;
                }
            }
        }
        sql.push_str(if rollback { "ROLLBACK;" } else { "COMMIT;" });
        if let Err(e) = db.batch_execute(&sql).await {
            // Two writers can deadlock on the same rows; PostgreSQL aborts one transaction,
            // which then committed nothing.
            assert_eq!(
                e.code(),
                Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED),
                "{e}"
            );
            db.batch_execute("ROLLBACK").await.unwrap();
            continue;
        }
        if !rollback {
            done.inserts.fetch_add(i, Ordering::Relaxed);
            done.updates.fetch_add(u, Ordering::Relaxed);
            done.deletes.fetch_add(d, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn pipeline(url: &str, name: &str) -> String {
    format!(
        "name = \"{name}\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{url}\"\n[tables]\ninclude = [\"public.acct\"]\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\ncdc_min_file_size = \"48KB\"\n"
    )
}

/// Starts a run with its output going to `log`.
fn start(w: &Work, pipe: &std::path::Path, extra: &[&str], log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_godwit"))
        .current_dir(w.path())
        .arg("run")
        .arg(pipe)
        .args(extra)
        .env("GODWIT_LOG", "info")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start godwit")
}

/// A folder for the runs' logs that outlives the test (under cargo's target dir), emptied
/// first; a failing run's logs stay there to read.
fn log_dir(test: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// True while the slot's walsender is streaming changes (not starting up, not exporting a
/// snapshot for the load).
async fn streaming(admin: &tokio_postgres::Client, slot: &str) -> bool {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_replication r
             JOIN pg_replication_slots s ON s.active_pid = r.pid
             WHERE s.slot_name = $1 AND r.state = 'streaming'",
            &[&slot],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
}

async fn seed(pg: &Pg, db: &str, rows: i64) -> tokio_postgres::Client {
    let c = pg.fresh_db(db).await;
    c.batch_execute(&format!(
        "CREATE TABLE acct (id bigint PRIMARY KEY, n int, note text);
         INSERT INTO acct SELECT i, i % 100, md5(i::text) FROM generate_series(1, {rows}) i;"
    ))
    .await
    .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_moments_every_change_lands_exactly_once() {
    let pg = pg();
    let db = seed(&pg, "godwit_cdc_crash", 2000).await;
    let w = Work::new();
    let pipe = w.pipeline(&pipeline(&pg.url("godwit_cdc_crash"), "crash"));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Done::default());
    let writer = tokio::spawn(workload(
        pg.connect("godwit_cdc_crash").await,
        0x9E37_79B9_7F4A_7C15,
        stop.clone(),
        done.clone(),
    ));
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let admin = pg.connect("postgres").await;
    let logs = log_dir("cdc_crash_killed_at_random_moments");
    let started = Instant::now();
    // Where each kill landed: while CDC streamed, or during start-up / the load.
    let mut landed = Vec::new();
    for round in 0..10 {
        // Every third run crashes itself right after an object completes, before the
        // checkpoint records it; the others are killed from outside at a random moment.
        let crash_point = round % 3 == 1;
        let extra: Vec<&str> = if crash_point {
            vec!["--crash-after-objects", "2"]
        } else {
            vec![]
        };
        let log = logs.join(format!("round-{round}.log"));
        let mut child = start(&w, &pipe, &extra, &log);
        let wait = Duration::from_millis(4000 + rng.below(4000));
        let deadline = Instant::now() + wait;
        let mut exited = false;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let was_streaming = !exited && streaming(&admin, "godwit_crash").await;
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let where_ = if crash_point {
            assert!(
                text.contains("crash point reached"),
                "round {round} was to crash after its 2nd object: {}",
                log.display()
            );
            // The crash point lands in CDC when its objects were CDC files.
            if text.contains("CDC started") {
                "streaming"
            } else {
                "load"
            }
        } else {
            assert!(!exited, "round {round} ended by itself: {}", log.display());
            if was_streaming {
                "streaming"
            } else {
                "start-up"
            }
        };
        landed.push(where_);
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let workload_secs = started.elapsed().as_secs();
    let in_cdc = landed.iter().filter(|w| **w == "streaming").count();
    assert!(
        in_cdc * 2 >= landed.len(),
        "only {in_cdc} of {} kills landed while CDC streamed: {landed:?}; logs in {}",
        landed.len(),
        logs.display()
    );
    // Catch up to the end and stop.
    let last = assert_ok(&w.godwit(&["run", pipe.to_str().unwrap(), "--once"], &[]));

    let got = replay_keyed(&w.out().join("public/acct"), &["id"]);
    let want = pg_keyed(&db, "acct", &["id"]).await;
    assert_eq!(
        got.len(),
        want.len(),
        "rows after replay\n{last}\nlogs in {}",
        logs.display()
    );
    for (k, row) in &want {
        assert_eq!(got.get(k), Some(row), "row {k}; logs in {}", logs.display());
    }
    // Every committed change once: the CDC rows after the full load are exactly the
    // workload's (the full load may have seen some of them already, so count ≤).
    let rows = cdc_rows(&w.out().join("public/acct"));
    let changes = done.inserts.load(Ordering::Relaxed)
        + done.updates.load(Ordering::Relaxed)
        + done.deletes.load(Ordering::Relaxed);
    assert!(
        rows.len() as u64 <= changes,
        "{} CDC rows for {changes} changes",
        rows.len()
    );
    assert!(
        rows.len() > 100,
        "the workload ran {workload_secs}s: {} CDC rows",
        rows.len()
    );
    assert_ok(&w.godwit(&["drop", pipe.to_str().unwrap(), "--yes"], &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_writes_during_the_initial_load_are_neither_lost_nor_doubled() {
    let pg = pg();
    let db = seed(&pg, "godwit_cdc_handoff", 300_000).await;
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "{}[load]\nparallel = 2\n[tables.\"public.acct\"]\npartitions = 2\n",
        pipeline(&pg.url("godwit_cdc_handoff"), "handoff")
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Done::default());
    let mut writers = Vec::new();
    for seed in [1u64, 2] {
        writers.push(tokio::spawn(workload(
            pg.connect("godwit_cdc_handoff").await,
            0xA076_1D64_78BD_642F ^ seed,
            stop.clone(),
            done.clone(),
        )));
    }
    // The writers are under way before the load starts.
    while done.inserts.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = assert_ok(&w.godwit(&["run", pipe.to_str().unwrap(), "--once"], &[]));
    stop.store(true, Ordering::Relaxed);
    for wr in writers {
        wr.await.unwrap();
    }
    assert_ok(&w.godwit(&["run", pipe.to_str().unwrap(), "--once"], &[]));
    let got = replay_keyed(&w.out().join("public/acct"), &["id"]);
    let want = pg_keyed(&db, "acct", &["id"]).await;
    assert_eq!(got.len(), want.len(), "rows after replay\n{first}");
    for (k, row) in &want {
        assert_eq!(got.get(k), Some(row), "row {k}");
    }
    assert!(
        !cdc_rows(&w.out().join("public/acct")).is_empty(),
        "the writes overlapped the load: {} changes\n{first}\n{:?}",
        done.inserts.load(Ordering::Relaxed),
        parquet_files(&w.out())
    );
    assert_ok(&w.godwit(&["drop", pipe.to_str().unwrap(), "--yes"], &[]));
}
