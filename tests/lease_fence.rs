//! The S3 lease as a fence, against moto and the private PostgreSQL: a CDC run stopped
//! (SIGSTOP) past its lease and resumed after another host took the pipeline over stops
//! without writing anything while the new holder carries on, and the files still replay to
//! the source exactly; a holder whose pid is gone (same host name, PID namespace) still holds
//! the lease until it expires. The lease TTL is shortened with the hidden `--lease-ttl`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use common::replay::*;
use common::s3::*;
use common::*;

const TTL: &str = "6s";

/// Every object of the bucket but the lease: key → ETag.
async fn etags(client: &Client, bucket: &str) -> BTreeMap<String, String> {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert!(!listed.is_truncated().unwrap_or(false));
    listed
        .contents()
        .iter()
        .filter(|o| !o.key().unwrap().ends_with("_godwit/state/lease"))
        .map(|o| {
            (
                o.key().unwrap().to_string(),
                o.e_tag().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The lease object as JSON, if there is one.
async fn lease(client: &Client, bucket: &str) -> Option<serde_json::Value> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key("lake/_godwit/state/lease")
        .send()
        .await
        .ok()?;
    let body = out.body.collect().await.ok()?.into_bytes();
    serde_json::from_slice(&body).ok()
}

/// A new database `db` (a slot an earlier test run left on it dropped first).
async fn fresh(pg: &Pg, db: &str, slot: &str) -> tokio_postgres::Client {
    drop_slot(pg, slot).await;
    let client = pg.fresh_db(db).await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text, n int);")
        .await
        .unwrap();
    client
}

async fn drop_slot(pg: &Pg, slot: &str) {
    let admin = pg.connect("postgres").await;
    admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
}

/// Pipeline `name` (slot `godwit_<name>`), mode cdc, S3 target and state.
fn pipeline(name: &str, db_url: &str, bucket: &str) -> String {
    format!(
        r#"name = "{name}"
mode = "cdc"
[source]
url = "{db_url}"
[tables]
include = ["public.t"]
[target]
url = "s3://{bucket}/lake"
endpoint = "{}"
cdc_max_batch_interval = "2s"
"#,
        endpoint()
    )
}

/// A started run, killed if the test ends before it does.
struct Run(Child);

impl Drop for Run {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `godwit run PIPELINE --lease-ttl 6s [extra]` behind `prefix` (e.g. `unshare …`), in
/// `work`'s folder, its log in `work/godwit.log`.
fn spawn(work: &Work, prefix: &[&str], pipeline: &Path, extra: &[&str]) -> Run {
    let bin = env!("CARGO_BIN_EXE_godwit");
    let mut args: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    args.extend([bin, "run", pipeline.to_str().unwrap(), "--lease-ttl", TTL].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = std::fs::File::create(work.path().join("godwit.log")).unwrap();
    let child = Command::new(&args[0])
        .args(&args[1..])
        .current_dir(work.path())
        .env("GODWIT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start godwit");
    Run(child)
}

fn log_of(work: &Work) -> String {
    std::fs::read_to_string(work.path().join("godwit.log")).unwrap_or_default()
}

fn signal(run: &Run, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &run.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {}", run.0.id());
}

/// Waits for the run to exit (at most `limit`); its exit code.
fn wait_exit(run: &mut Run, limit: Duration) -> Option<i32> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(status) = run.0.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Polls `probe` every 200 ms until it is true; panics with `what` after `limit`.
async fn wait_for<F, Fut>(limit: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while !probe().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The database's slot: (active, confirmed_flush_lsn).
async fn slot(db: &tokio_postgres::Client) -> Option<(bool, i64)> {
    db.query_opt(
        "SELECT active, COALESCE((confirmed_flush_lsn - '0/0'::pg_lsn)::int8, 0)
           FROM pg_replication_slots WHERE database = current_database()",
        &[],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}

/// Waits until the slot is confirmed up to the WAL written so far: every change is in files.
async fn wait_confirmed(db: &tokio_postgres::Client, what: &str) {
    let target = lsn_now(db).await;
    wait_for(Duration::from_secs(60), what, || async {
        slot(db).await.is_some_and(|(_, c)| c >= target)
    })
    .await;
}

/// The table as PostgreSQL returns it, rendered like the replayed files.
async fn source_rows(db: &tokio_postgres::Client) -> BTreeMap<String, RowMap> {
    let rows = db
        .query("SELECT id::text, v, n::text FROM t ORDER BY id", &[])
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let cell = |i: usize| r.get::<_, Option<String>>(i).unwrap_or("NULL".into());
            let row: RowMap = [("id", cell(0)), ("v", cell(1)), ("n", cell(2))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            (cell(0), row)
        })
        .collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_run_paused_past_its_lease_stops_without_writing_and_the_new_holder_carries_on() {
    let pg = pg();
    let db = fresh(&pg, "godwit_fence_pause", "godwit_fence_pause").await;
    let client = s3_client().await;
    let b = bucket(&client, "fence-pause").await;
    let text = pipeline("fence-pause", &pg.url("godwit_fence_pause"), &b);

    // Run A follows the slot and captures a first batch of changes.
    let work_a = Work::new();
    let mut a = spawn(&work_a, &[], &work_a.pipeline(&text), &[]);
    wait_for(Duration::from_secs(60), "run A to stream", || async {
        log_of(&work_a).contains("CDC started")
    })
    .await;
    db.batch_execute(
        "INSERT INTO t SELECT i, 'v' || i, i FROM generate_series(1, 20) i;
         UPDATE t SET n = n * 10 WHERE id <= 5;
         DELETE FROM t WHERE id = 20;",
    )
    .await
    .unwrap();
    wait_confirmed(&db, "run A to write the first changes").await;
    let written_by_a = etags(&client, &b).await;
    assert!(
        written_by_a.keys().any(|k| k.starts_with("lake/public/t/")),
        "A wrote no CDC file: {written_by_a:?}\n{}",
        log_of(&work_a)
    );

    // A receives a second batch, keeps it buffered (2 s batches), and is stopped.
    db.batch_execute("INSERT INTO t SELECT i, 'late' || i, i FROM generate_series(21, 25) i;")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&a, "STOP");
    let stopped = Instant::now();

    // Past the lease (TTL 6 s, whole seconds), run B starts on "another host".
    tokio::time::sleep(Duration::from_secs(8)).await;
    let held = lease(&client, &b).await.expect("A's lease object");
    assert!(
        held["expires_at"].as_i64().unwrap() < now_secs(),
        "A's lease has not expired: {held}"
    );
    let work_b = Work::new();
    let mut b_run = spawn(
        &work_b,
        &[
            "unshare",
            "--uts",
            "sh",
            "-c",
            "hostname other-host && exec \"$0\" \"$@\"",
        ],
        &work_b.pipeline(&text),
        &[],
    );
    wait_for(
        Duration::from_secs(30),
        "run B to take the lease",
        || async {
            lease(&client, &b)
                .await
                .is_some_and(|l| l["host"] == "other-host")
        },
    )
    .await;

    // Changes while A is stopped; B waits for A's session to leave the slot, then follows.
    db.batch_execute(
        "UPDATE t SET v = 'changed' WHERE id BETWEEN 3 AND 8;
         DELETE FROM t WHERE id = 1;
         INSERT INTO t SELECT i, 'b' || i, NULL FROM generate_series(26, 30) i;",
    )
    .await
    .unwrap();
    wait_confirmed(&db, "run B to write the changes").await;
    assert!(
        b_run.0.try_wait().unwrap().is_none(),
        "B ended:\n{}",
        log_of(&work_b)
    );
    assert!(
        log_of(&work_b).contains("taking over an expired lease"),
        "{}",
        log_of(&work_b)
    );
    assert!(
        stopped.elapsed() > Duration::from_secs(10),
        "B streamed before A's session could have left the slot"
    );

    // A resumes: it stops within seconds (exit 1) and writes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = etags(&client, &b).await;
    signal(&a, "CONT");
    let code = wait_exit(&mut a, Duration::from_secs(20));
    let log_a = log_of(&work_a);
    assert_eq!(code, Some(1), "A after SIGCONT:\n{log_a}");
    let after = etags(&client, &b).await;
    assert_eq!(
        before, after,
        "objects changed while only A could have written\n{log_a}"
    );
    let failed: Vec<_> = events(&work_a.path().join("godwit-out/fence-pause/events.jsonl"))
        .into_iter()
        .filter(|e| e["event_type"] == "task.failed")
        .collect();
    assert_eq!(failed.len(), 1, "{log_a}");
    let error = failed[0]["details"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("lease") && error.contains("lost"),
        "task.failed names the lost lease: {error}"
    );

    // B carries on, and stops cleanly.
    db.batch_execute(
        "INSERT INTO t SELECT i, 'end' || i, -i FROM generate_series(31, 35) i;
         UPDATE t SET n = n + 1 WHERE id BETWEEN 21 AND 25;",
    )
    .await
    .unwrap();
    wait_confirmed(&db, "run B to write the last changes").await;
    signal(&b_run, "TERM");
    assert_eq!(
        wait_exit(&mut b_run, Duration::from_secs(30)),
        Some(0),
        "B after SIGTERM:\n{}",
        log_of(&work_b)
    );

    // The files replay to the source, with no change twice (cdc_rows checks that).
    let copy = Work::new();
    download(&client, &b, "lake", copy.path()).await;
    let dir: PathBuf = copy.path().join("public").join("t");
    let columns: Vec<String> = ["id", "v", "n"].map(String::from).to_vec();
    let got: BTreeMap<String, RowMap> = replay_keyed(&dir, &["id"])
        .into_iter()
        .map(|(k, r)| (k, project(&r, &columns)))
        .collect();
    let want = source_rows(&db).await;
    assert_eq!(want.len(), 33);
    assert_eq!(got, want);
    drop_slot(&pg, "godwit_fence_pause").await;
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_holder_whose_pid_is_gone_keeps_the_lease_until_it_expires() {
    let pg = pg();
    let _db = fresh(&pg, "godwit_fence_pid", "godwit_fence_pid").await;
    let client = s3_client().await;
    let b = bucket(&client, "fence-pid").await;
    let text = pipeline("fence-pid", &pg.url("godwit_fence_pid"), &b);
    let host = gethostname::gethostname().to_string_lossy().to_string();

    // The first holder runs in a PID namespace, under a shell that first used up some 300
    // pids: where the second run looks (a PID namespace of its own) no process or thread
    // has its pid.
    let first = Work::new();
    let mut holder = spawn(
        &first,
        &[
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do /bin/true; i=$((i + 1)); done; \"$0\" \"$@\"; true",
        ],
        &first.pipeline(&text),
        &[],
    );
    wait_for(
        Duration::from_secs(60),
        "the first holder to stream",
        || async { log_of(&first).contains("CDC started") },
    )
    .await;
    let held = lease(&client, &b).await.expect("the lease object");
    assert_eq!(held["host"], host.as_str(), "{held}");
    let run_id = held["run"].as_str().expect("a run id").to_string();
    let pid = held["pid"].as_u64().unwrap();
    assert!(pid > 300, "{held}");
    // Killing the namespace's first process ends every process in it.
    let init = children(holder.0.id());
    assert_eq!(init.len(), 1, "{init:?}");
    let kill = Command::new("kill")
        .args(["-KILL", &init[0].to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(wait_exit(&mut holder, Duration::from_secs(10)).is_some());
    let expires = lease(&client, &b).await.expect("the lease object")["expires_at"]
        .as_i64()
        .unwrap();

    // Same host name, and the holder's pid does not exist where the second run looks: refused.
    let second = Work::new();
    let pipe = second.pipeline(&text);
    let run_second = || {
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_godwit"))
            .args(["run", pipe.to_str().unwrap(), "--once", "--lease-ttl", TTL])
            .current_dir(second.path())
            .env("GODWIT_LOG", "info")
            .output()
            .unwrap()
    };
    let out = run_second();
    let refused_at = now_secs();
    let t = common::text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        refused_at <= expires,
        "the check ran after the lease expired; the machine is too slow for this test"
    );
    assert!(t.contains(&format!("pid {pid} on {host}")), "{t}");
    assert!(t.contains(&format!("run {run_id}")), "{t}");
    assert!(t.contains("since"), "{t}");

    // Once it expired, the second run takes over.
    while now_secs() <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = run_second();
    let t = assert_ok(&out);
    assert!(t.contains("taking over an expired lease"), "{t}");
    assert!(
        lease(&client, &b).await.is_none(),
        "the lease was not released"
    );
    drop_slot(&pg, "godwit_fence_pid").await;
}
