//! The cache when Redis fails: killed with SIGKILL during a CDC burst and back after 10 s with
//! its data (append-only file), and killed once more and restarted empty. Both times Redis
//! ends equal to the projection of the source, computed from PostgreSQL's own values.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis::{KeyValue, PrivateOpts, TestRedis, private_redis};
use common::{Killed, Work, pg};
use tokio_postgres::Client;

/// A pipeline following public.t (id, v) into Redis as hashes `k:{id}`; `target` is the body
/// of its `[target]` section.
fn pipeline(name: &str, db_url: &str, redis_url: &str, target: &str) -> String {
    format!(
        r#"name = "{name}"
mode = "full-load-and-cdc"
[source]
url = "{db_url}"
[tables]
include = ["public.t"]
[target]
{target}
[cache]
url = "{redis_url}"
[[cache.projections]]
table = "public.t"
type = "hash"
key = "k:{{id}}"
fields = ["v"]
"#
    )
}

/// What each test starts from: database `godwit_<name>` with public.t (id, v = 0) of `rows`
/// rows, a private redis-server, and pipeline `<name>` (`target` is its `[target]` body).
struct Setup {
    pg: common::Pg,
    db: Client,
    redis: common::redis::PrivateRedis,
    url: String,
    work: Work,
    path: std::path::PathBuf,
}

async fn setup(name: &str, rows: i32, appendonly: bool, target: &str) -> Setup {
    let pg = pg();
    let db_name = format!("godwit_{name}");
    let db = pg.fresh_db(&db_name).await;
    db.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, {rows}) i;"
    ))
    .await
    .unwrap();
    let redis = private_redis(PrivateOpts { appendonly }).await;
    let url = redis.url();
    let work = Work::new();
    let path = work.pipeline(&pipeline(name, &pg.url(&db_name), &url, target));
    Setup {
        pg,
        db,
        redis,
        url,
        work,
        path,
    }
}

async fn source(db: &Client) -> BTreeMap<String, String> {
    db.query("SELECT id::text, v::text FROM t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (format!("k:{}", r.get::<_, String>(0)), r.get(1)))
        .collect()
}

/// What Redis holds, or `None` while it does not answer.
async fn cache(url: &str) -> Option<BTreeMap<String, String>> {
    let client = redis::Client::open(url).ok()?;
    let connect = client.get_multiplexed_async_connection();
    let conn = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let mut r = TestRedis::Single(conn);
    let mut out = BTreeMap::new();
    for k in r.scan("k:*").await {
        if let KeyValue::Hash(h) = r.read_key(&k).await.value {
            out.insert(
                String::from_utf8(k).unwrap(),
                h.get("v").cloned().unwrap_or_default(),
            );
        }
    }
    Some(out)
}

/// Waits until Redis equals the source (at most 90 s); says how the last look differed.
async fn converges(db: &Client, url: &str, when: &str) {
    let started = Instant::now();
    loop {
        let want = source(db).await;
        let got = cache(url).await;
        if got.as_ref() == Some(&want) {
            return;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let got = got.unwrap_or_default();
            let differ: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(5)
                .collect();
            panic!(
                "{when}: Redis never became the source; e.g. {differ:?} ({} keys vs {})",
                got.len(),
                want.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Redis killed with SIGKILL (checked: it no longer answers) and restarted after `pause` with
/// what it had acknowledged.
async fn down_for(redis: &mut common::redis::PrivateRedis, url: &str, pause: Duration) {
    redis.kill9();
    assert!(
        cache(url).await.is_none(),
        "the kill landed: Redis does not answer"
    );
    tokio::time::sleep(pause).await;
    redis.restart().await;
}

async fn burst(db: &Client, rounds: i32) {
    for i in 0..rounds {
        db.execute("UPDATE t SET v = v + 1 WHERE id % 3 = $1", &[&(i % 3)])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_killed_and_restarted_with_or_without_its_data_ends_equal_to_the_source() {
    let Setup {
        db,
        mut redis,
        url,
        work,
        path,
        ..
    } = setup(
        "cache_fault",
        300,
        true,
        "url = \"file://{out}\"\ncdc_max_batch_interval = \"1s\"",
    )
    .await;
    let log = work.path().join("run.log");
    let _run = Killed(work.spawn_run_logged(&path, &log));
    converges(&db, &url, "after the full load").await;

    // Killed in the middle of a burst, back after 10 s with what it had acknowledged.
    let (_, _) = tokio::join!(burst(&db, 60), async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        down_for(&mut redis, &url, Duration::from_secs(10)).await;
    });
    converges(&db, &url, "after a restart with its data").await;

    // Killed again and restarted empty: godwit sees the cache lost what it had acknowledged and
    // warms it again from a snapshot.
    redis.kill9();
    for entry in std::fs::read_dir(redis.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    redis.restart().await;
    assert_eq!(
        cache(&url).await.map(|c| c.len()),
        Some(0),
        "restarted empty"
    );
    // One round touches a third of the rows: the other two thirds come back only through the
    // re-warm.
    burst(&db, 1).await;
    converges(&db, &url, "after a restart without its data").await;

    let events = std::fs::read_to_string(work.out().join("_godwit/state/events.jsonl")).unwrap();
    assert!(
        events.contains("\"table.reload_requested\""),
        "the re-warm was announced: {events}"
    );
}

/// A cache-only pipeline (`target.url = "none"`) writes no file anywhere, keeps its state in
/// the state store, and after a SIGKILL the next run brings Redis back to the source.
#[tokio::test]
async fn a_cache_only_pipeline_writes_no_files_and_resumes_after_sigkill() {
    let Setup {
        db,
        redis: _redis,
        url,
        work,
        path,
        ..
    } = setup("cache_only", 300, false, "url = \"none\"").await;
    common::assert_ok(&work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]));
    converges(&db, &url, "after the full load").await;
    // No file counts the rows: the load counts what it copied.
    let status =
        common::assert_ok(&work.godwit(&["status", path.to_str().unwrap(), "--json"], &[]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["tables"]["public.t"]["full_load_rows"], 300,
        "{status}"
    );

    // Followed continuously, killed with SIGKILL in the middle of a burst.
    let log = work.path().join("run.log");
    let mut run = Killed(work.spawn_run_logged(&path, &log));
    let (_, _) = tokio::join!(burst(&db, 40), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        run.0.kill().unwrap();
        run.0.wait().unwrap();
    });
    assert!(run.0.try_wait().unwrap().is_some(), "the kill landed");
    burst(&db, 5).await;
    common::assert_ok(&work.godwit(&["run", path.to_str().unwrap(), "--once"], &[]));
    converges(&db, &url, "after a SIGKILL and a new run").await;

    let mut files = Vec::new();
    let mut dirs = vec![work.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    let data: Vec<_> = files
        .iter()
        .filter(|f| {
            let n = f.to_string_lossy();
            n.ends_with(".parquet") || n.ends_with(".csv") || n.ends_with(".csv.gz")
        })
        .collect();
    assert!(
        data.is_empty(),
        "a cache-only pipeline wrote files: {data:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("godwit-out/cache_only/_godwit/state/task.json")),
        "its state is kept: {files:?}"
    );
}

/// `godwit reload --table` while a run follows a steady stream of updates to the same rows. The
/// reload's snapshot is newer than some changes the stream still has to apply (those are refused
/// as older) and older than the changes after it (those apply over the load): Redis ends equal to
/// the source. A reload whose rows carried a version past its snapshot would refuse those later
/// changes and keep older values: this test fails then.
#[tokio::test]
async fn a_reload_racing_updates_never_leaves_an_older_value() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Setup {
        pg,
        db,
        redis: _redis,
        url,
        work,
        path,
    } = setup(
        "cache_race",
        20000,
        false,
        "url = \"file://{out}\"\ncdc_max_batch_interval = \"1s\"",
    )
    .await;
    let log = work.path().join("run.log");
    let _run = Killed(work.spawn_run_logged(&path, &log));
    converges(&db, &url, "after the full load").await;
    let events = work.out().join("_godwit/state/events.jsonl");
    // Lines of the events file naming a finished load (a line being written may be partial).
    let loads = |events: &std::path::Path| {
        std::fs::read_to_string(events)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"table.loaded\""))
            .count()
    };
    assert_eq!(loads(&events), 1);

    // Updates every 10 ms (a tenth of the rows each) from before the reload is queued until a
    // second after its load is done.
    let stop = Arc::new(AtomicBool::new(false));
    let updater = {
        let stop = stop.clone();
        let db = pg.connect("godwit_cache_race").await;
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                db.execute(
                    "UPDATE t SET v = v + 1 WHERE id % 10 = $1",
                    &[&(rounds % 10)],
                )
                .await
                .unwrap();
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            rounds
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::assert_ok(&work.godwit(
        &["reload", path.to_str().unwrap(), "--table", "public.t"],
        &[],
    ));
    let started = Instant::now();
    while loads(&events) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the reload never loaded the table: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = updater.await.unwrap();
    // At least 1.5 s of updates; on a loaded machine a round takes 30 ms or more.
    assert!(
        rounds > 20,
        "updates went on during the reload: {rounds} rounds"
    );
    converges(&db, &url, "after a reload racing updates").await;
}

/// Redis killed with SIGKILL while the initial load warms it, and back after 3 s with what it
/// had acknowledged: the chunks in flight fail on the load's own connections, go again on the
/// shared one (which waits for Redis with back-off; a `RESTORE` that finds its key already there
/// goes on with `HSET`), and Redis ends equal to the source.
#[tokio::test]
async fn redis_killed_during_the_warm_ends_equal_to_the_source() {
    let rows = 100_000;
    let Setup {
        db,
        mut redis,
        url,
        work,
        path,
        ..
    } = setup("cache_warm_kill", rows, true, "url = \"none\"").await;
    let log = work.path().join("run.log");
    let _run = Killed(work.spawn_run_logged(&path, &log));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let started = Instant::now();
    let written = loop {
        let n: i64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        if n >= 1000 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the warm never started: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    down_for(&mut redis, &url, Duration::from_secs(3)).await;
    assert!(
        written < i64::from(rows),
        "killed during the warm: {written} keys written of {rows}"
    );
    converges(&db, &url, "after Redis was killed during the warm").await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("Redis write failed; retrying"),
        "the warm met the dead server and waited for it: {logged}"
    );
}
