//! Metrics and health (`[metrics] listen`) through the real binary: `/metrics` scraped during a
//! full-load-and-cdc run and parsed as Prometheus text (counters compared with what PostgreSQL
//! holds and with the changes made), `/healthz` 200 while the stream is idle but alive, 503 once
//! the walsender is stopped (SIGSTOP) past the threshold, 200 again after SIGCONT; bad
//! settings are exit 2 naming file, line and key.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::http::{Stopped, free_port, get, wait_for};
use common::{Killed, Work, pg, text};

/// The samples of one scrape: (name, sorted labels without `pipeline`) → value, after
/// checking that every sample carries `pipeline`.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn scrape(port: u16, pipeline: &str) -> Samples {
    let (status, body) = get(port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let mut out = Samples::new();
    for s in parsed.samples {
        assert!(s.metric.starts_with("godwit_"), "{}", s.metric);
        assert_eq!(
            s.labels.get("pipeline"),
            Some(pipeline),
            "{} has the pipeline label",
            s.metric
        );
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "pipeline")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("{}: unexpected {other:?}", s.metric),
        };
        out.insert((s.metric, labels), v);
    }
    out
}

fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    s.get(&(name.to_string(), want)).copied()
}

async fn count(db: &tokio_postgres::Client, table: &str) -> f64 {
    let n: i64 = db
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    n as f64
}

#[tokio::test]
async fn metrics_follow_the_run_and_health_follows_the_stream() {
    let pg = pg();
    let slot = "godwit_metricsrun";
    let admin = pg.connect("postgres").await;
    // A slot an earlier failed run of this test left would keep the database from dropping.
    admin
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}' AND NOT active"
        ))
        .await
        .unwrap();
    let db = pg.fresh_db("godwit_metrics").await;
    db.batch_execute(
        "CREATE TABLE t1 (id int PRIMARY KEY, v text);
         INSERT INTO t1 SELECT i, md5(i::text) FROM generate_series(1, 1234) i;
         CREATE TABLE t2 (id int PRIMARY KEY);
         INSERT INTO t2 SELECT generate_series(1, 37);",
    )
    .await
    .unwrap();
    let port = free_port();
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"metricsrun\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n\
         [target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n\
         [metrics]\nlisten = \"127.0.0.1:{port}\"\nhealth_threshold = \"3s\"\n",
        pg.url("godwit_metrics")
    ));
    let log = w.path().join("run.log");
    let mut child = Killed(w.spawn_run_logged(&pipe, &log));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Full load: rows loaded per table equal PostgreSQL's counts.
    let (want1, want2) = (count(&db, "t1").await, count(&db, "t2").await);
    wait_for("both tables loaded", 60, || {
        get(port, "/metrics").is_some_and(|_| {
            let s = scrape(port, "metricsrun");
            value(&s, "godwit_rows_loaded_total", &[("table", "public.t1")]) == Some(want1)
                && value(&s, "godwit_rows_loaded_total", &[("table", "public.t2")]) == Some(want2)
        })
    })
    .await;
    let s = scrape(port, "metricsrun");
    for t in ["public.t1", "public.t2"] {
        assert_eq!(
            value(
                &s,
                "godwit_files_written_total",
                &[("table", t), ("kind", "load")]
            ),
            Some(1.0),
            "{s:?}"
        );
        let bytes = value(
            &s,
            "godwit_bytes_written_total",
            &[("table", t), ("kind", "load")],
        )
        .unwrap();
        let file = w
            .out()
            .join(t.replace('.', "/"))
            .join("LOAD00000001.parquet");
        assert_eq!(bytes, std::fs::metadata(&file).unwrap().len() as f64, "{t}");
    }
    assert_eq!(
        value(
            &s,
            "godwit_events_total",
            &[("type", "table.loaded"), ("severity", "info")]
        ),
        Some(2.0)
    );
    let rss = value(&s, "godwit_process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1e6, "resident memory {rss}");
    for g in [
        "godwit_buffered_bytes",
        "godwit_spilled_bytes",
        "godwit_sns_events_undelivered",
    ] {
        assert!(value(&s, g, &[]).is_some(), "{g} is exposed");
    }

    // CDC: the changes made are the changes counted.
    wait_for("CDC running", 60, || {
        get(port, "/healthz").is_some_and(|(c, b)| c == 200 && b.contains("CDC"))
    })
    .await;
    db.batch_execute(
        "INSERT INTO t1 SELECT i, 'new' FROM generate_series(2001, 2025) i;
         UPDATE t1 SET v = 'changed' WHERE id IN (1, 2, 3);
         DELETE FROM t1 WHERE id IN (10, 11);
         INSERT INTO t2 VALUES (100);",
    )
    .await
    .unwrap();
    let applied = |s: &Samples, t: &str, op: &str| {
        value(
            s,
            "godwit_changes_applied_total",
            &[("table", t), ("op", op)],
        )
        .unwrap_or(0.0)
    };
    wait_for("the changes applied", 30, || {
        let s = scrape(port, "metricsrun");
        applied(&s, "public.t1", "insert") == 25.0 && applied(&s, "public.t2", "insert") == 1.0
    })
    .await;
    let s = scrape(port, "metricsrun");
    assert_eq!(applied(&s, "public.t1", "update"), 3.0);
    assert_eq!(applied(&s, "public.t1", "delete"), 2.0);
    assert_eq!(applied(&s, "public.t2", "update"), 0.0);
    let cdc_files = common::replay::table_files(&w.out().join("public/t1")).1;
    assert_eq!(
        value(
            &s,
            "godwit_files_written_total",
            &[("table", "public.t1"), ("kind", "cdc")]
        ),
        Some(cdc_files.len() as f64)
    );
    let cdc_bytes: u64 = cdc_files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert_eq!(
        value(
            &s,
            "godwit_bytes_written_total",
            &[("table", "public.t1"), ("kind", "cdc")]
        ),
        Some(cdc_bytes as f64)
    );
    let lag = value(&s, "godwit_cdc_lag_seconds", &[]).unwrap();
    assert!((0.0..60.0).contains(&lag), "lag {lag}");

    // The slot's retained WAL, as PostgreSQL computes it, within what the run read a moment
    // apart (the shared server's WAL moves on).
    wait_for("the slot gauge", 20, || {
        value(
            &scrape(port, "metricsrun"),
            "godwit_slot_retained_wal_bytes",
            &[],
        )
        .is_some_and(|v| v > 0.0)
    })
    .await;

    // Idle but alive: 200 throughout more than two thresholds with no change at all.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let (code, body) = get(port, "/healthz").unwrap();
        assert_eq!(code, 200, "idle stream: {body}\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The walsender stops: 503 once the threshold has passed, with the reason.
    let pid: i32 = db
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    let backend_type: String = db
        .query_one(
            "SELECT backend_type FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(backend_type, "walsender");
    let stopped = Stopped::stop(pid);
    wait_for("/healthz 503", 20, || {
        get(port, "/healthz").is_some_and(|(c, _)| c == 503)
    })
    .await;
    let (_, why) = get(port, "/healthz").unwrap();
    assert!(why.contains("CDC") && why.contains("threshold 3s"), "{why}");
    let s = scrape(port, "metricsrun");
    assert!(value(&s, "godwit_progress_age_seconds", &[]).unwrap() > 3.0);

    // Going again: 200 once the walsender takes the session's status updates again.
    drop(stopped);
    wait_for("/healthz 200 again", 20, || {
        get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    // And the stream still works.
    db.batch_execute("INSERT INTO t2 VALUES (101)")
        .await
        .unwrap();
    wait_for("the change after SIGCONT", 30, || {
        applied(&scrape(port, "metricsrun"), "public.t2", "insert") == 2.0
    })
    .await;

    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log_text());
    let p = pipe.to_str().unwrap();
    common::assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}

#[test]
fn a_bad_listen_address_or_a_busy_port_is_exit_2_naming_the_key() {
    let base = "name = \"badmetrics\"\n[source]\nurl = \"postgres://u:pw@127.0.0.1:1/db\"\n";
    let w = Work::new();
    let path = w.pipeline(&format!("{base}[metrics]\nlisten = \"localhost\"\n"));
    let out = w.godwit(&["run", path.to_str().unwrap()], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains(&format!("{}:5: metrics.listen: ", path.display())),
        "{t}"
    );
    assert!(t.contains("127.0.0.1:9187"), "the hint shows the form: {t}");

    let path = w.pipeline(&format!("{base}[metrics]\nhealth_threshold = \"soon\"\n"));
    let out = w.godwit(&["run", path.to_str().unwrap()], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("metrics.health_threshold"), "{t}");

    // A port something else listens on: refused before anything is written.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let path = w.pipeline(&format!("{base}[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let out = w.godwit(&["run", path.to_str().unwrap()], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("metrics.listen") && t.contains(&port.to_string()),
        "{t}"
    );
    assert!(!w.out().exists() && !w.path().join("godwit-out").exists());
}
