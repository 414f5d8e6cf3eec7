//! `godwit health` against a real `godwit run` with `[metrics] listen`: exit 1 naming the
//! address while nobody listens; exit 0 with the server's own `/healthz` line while CDC runs
//! (asked through the pipeline file, whose `0.0.0.0` listen address is asked on the loopback,
//! and through `--url`); exit 1 with the reason once the walsender is stopped past the
//! threshold (503), 0 again after SIGCONT; a path the server does not serve and a pipeline
//! without `[metrics] listen` are not healthy either.

mod common;

use std::process::Output;

use common::http::{Stopped, free_port, get, wait_for};
use common::{Killed, Work, pg, text};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn health_follows_the_running_pipeline() {
    let pg = pg();
    let slot = "godwit_healthrun";
    let admin = pg.connect("postgres").await;
    admin
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}' AND NOT active"
        ))
        .await
        .unwrap();
    let db = pg.fresh_db("godwit_health").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let port = free_port();
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"healthrun\"\nmode = \"cdc\"\n[source]\nurl = \"{}\"\n\
         [target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n\
         [metrics]\nlisten = \"0.0.0.0:{port}\"\nhealth_threshold = \"3s\"\n",
        pg.url("godwit_health")
    ));
    let p = pipe.to_str().unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");

    // Nobody listens yet: exit 1, naming the address asked (the loopback for 0.0.0.0).
    let out = w.godwit(&["health", p], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).is_empty(), "{}", text(&out));
    let why = stderr(&out);
    assert!(
        why.starts_with(&format!("unhealthy: cannot ask {url}: ")) && why.contains("refused"),
        "{why}"
    );
    let out = w.godwit(&["health", "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let log = w.path().join("run.log");
    let mut child = Killed(w.spawn_run_logged(&pipe, &log));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Running and following the stream: exit 0, printing the server's own line.
    wait_for("CDC running", 60, || {
        get(port, "/healthz").is_some_and(|(c, b)| c == 200 && b.contains("CDC"))
    })
    .await;
    for args in [vec!["health", p], vec!["health", "--url", &url]] {
        let out = w.godwit(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let line = stdout(&out);
        assert!(line.starts_with("ok: CDC, last progress "), "{line}");
        let (code, body) = get(port, "/healthz").unwrap();
        assert_eq!(code, 200);
        // Same line as the server's, up to the age it reports.
        let cut = |s: &str| {
            s.split(" ago")
                .next()
                .unwrap()
                .rsplit_once(' ')
                .unwrap()
                .0
                .to_string()
        };
        assert_eq!(cut(&line), cut(&body), "{line} vs {body}");
    }

    // A path the server does not serve: 404 is not healthy.
    let out = w.godwit(
        &[
            "health",
            "--url",
            &format!("http://127.0.0.1:{port}/nothing"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("HTTP 404"), "{}", text(&out));

    // The walsender stops: once the threshold passed the server says 503, and so does health.
    let pid: i32 = db
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    let stopped = Stopped::stop(pid);
    let mut last = None;
    wait_for("godwit health exit 1", 30, || {
        let out = w.godwit(&["health", p], &[]);
        let done = out.status.code() == Some(1);
        last = Some(out);
        done
    })
    .await;
    let out = last.take().unwrap();
    let why = stderr(&out);
    assert!(
        why.starts_with(&format!(
            "unhealthy: {url} answered HTTP 503: CDC: nothing from the replication stream for "
        )) && why.contains("(threshold 3s)"),
        "{why}\n{}",
        log_text()
    );
    assert!(stdout(&out).is_empty());

    // Going again.
    drop(stopped);
    wait_for("godwit health exit 0 again", 30, || {
        w.godwit(&["health", p], &[]).status.code() == Some(0)
    })
    .await;

    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log_text());
    common::assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));

    // Stopped: nobody listens any more.
    let out = w.godwit(&["health", p], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn a_pipeline_without_metrics_or_a_bad_url_is_not_asked() {
    let w = Work::new();
    let path = w.pipeline(
        "name = \"nometrics\"\n[source]\nurl = \"postgres://u:s3cr3tpw@127.0.0.1:1/db\"\n",
    );
    let out = w.godwit(&["health", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("[metrics] listen is empty") && !t.contains("s3cr3tpw"),
        "{t}"
    );

    let out = w.godwit(&["health", "--url", "https://127.0.0.1:1/healthz"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("only http://"), "{}", text(&out));

    let out = w.godwit(&["health", "--timeout", "soon"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--timeout"), "{}", text(&out));
}
