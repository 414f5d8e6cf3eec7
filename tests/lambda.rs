//! The Lambda function (`bootstrap`, cargo feature `lambda`) against a Lambda runtime API of
//! this test's own (`GET …/invocation/next` with the request id and deadline headers, `POST
//! …/response` and `…/error`): an invocation runs the pipeline once and answers the summary;
//! one with too little time left stops cleanly at its deadline with `more: true` and the next
//! goes on from there, the files replaying to exactly what PostgreSQL holds; of two
//! overlapping invocations one answers "already running" naming the holder; a table whose load
//! does not fit in one invocation is a table error (`needs the scheduled shape`), not retried
//! by every invocation. And once under cargo-lambda's own runtime emulator (`cargo lambda
//! watch --only-lambda-apis`, events sent with `cargo lambda invoke`), as a user tries it.

mod common;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::http::{free_port, wait_for};
use common::replay::*;
use common::source::pg_keyed;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// A Lambda runtime API: events queued by the test, answers kept per request id.
#[derive(Default)]
struct Stub {
    events: Mutex<VecDeque<(String, u64, String)>>,
    queued: Notify,
    answers: Mutex<HashMap<String, (String, Value)>>,
    answered: Notify,
}

const PREFIX: &str = "/2018-06-01/runtime/invocation/";

impl Stub {
    /// Serves on a free port; returns it.
    async fn start() -> (Arc<Stub>, u16) {
        let stub = Arc::new(Stub::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = stub.clone();
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.serve(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                        .await;
                });
            }
        });
        (stub, port)
    }

    async fn serve(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        if req.method() == hyper::Method::GET && path == format!("{PREFIX}next") {
            let (id, deadline, body) = loop {
                let waiting = self.queued.notified();
                if let Some(e) = self.events.lock().unwrap().pop_front() {
                    break e;
                }
                waiting.await;
            };
            return Response::builder()
                .header("Lambda-Runtime-Aws-Request-Id", id)
                .header("Lambda-Runtime-Deadline-Ms", deadline.to_string())
                .header(
                    "Lambda-Runtime-Invoked-Function-Arn",
                    "arn:aws:lambda:us-east-1:123456789012:function:godwit",
                )
                .body(Full::new(Bytes::from(body)))
                .unwrap();
        }
        let rest = path.strip_prefix(PREFIX).unwrap_or("");
        let (id, kind) = rest.split_once('/').unwrap_or(("", ""));
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if kind == "response" || kind == "error" {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            self.answers
                .lock()
                .unwrap()
                .insert(id.to_string(), (kind.to_string(), v));
            self.answered.notify_waiters();
        } else {
            eprintln!(
                "stub: unexpected {path}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Response::builder()
            .status(202)
            .body(Full::new(Bytes::from_static(b"{\"status\":\"OK\"}")))
            .unwrap()
    }

    /// Queues `event` with a deadline `seconds` from now; its request id.
    fn queue(&self, event: &Value, seconds: f64) -> String {
        let id = uuid_like();
        let deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + (seconds * 1000.0) as u64;
        self.events
            .lock()
            .unwrap()
            .push_back((id.clone(), deadline, event.to_string()));
        self.queued.notify_waiters();
        id
    }

    /// Waits for the answer to `id`: ("response" | "error", body).
    async fn answer(&self, id: &str, secs: u64) -> (String, Value) {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let waiting = self.answered.notified();
            if let Some(a) = self.answers.lock().unwrap().remove(id) {
                return a;
            }
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no answer to {id} within {secs} s");
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), waiting).await;
        }
    }

    async fn invoke(&self, event: &Value, seconds: f64) -> (String, Value) {
        let id = self.queue(event, seconds);
        self.answer(&id, seconds as u64 + 60).await
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "req-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The function's process, pointed at the stub on `port`, working in `dir`.
fn start_function(dir: &Path, port: u16, log: &Path) -> Killed {
    start_function_at(dir, &format!("127.0.0.1:{port}"), log)
}

/// The function's process with runtime API `api` (`AWS_LAMBDA_RUNTIME_API`), working in `dir`.
fn start_function_at(dir: &Path, api: &str, log: &Path) -> Killed {
    let out = std::fs::File::create(log).unwrap();
    Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_bootstrap"))
            .current_dir(dir)
            .env("AWS_LAMBDA_RUNTIME_API", api)
            .env("AWS_LAMBDA_FUNCTION_NAME", "godwit")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/godwit")
            .env("GODWIT_LOG", "info")
            .stdout(std::process::Stdio::from(out.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(out))
            .spawn()
            .expect("start bootstrap"),
    )
}

/// A fresh database `name` with table `t (id, v, n)` of `rows` rows (and the SQL `extra`), and
/// a full-load-and-cdc pipeline of it writing files (`tables` and `target` add lines to those
/// sections).
async fn table_t(
    name: &str,
    rows: u32,
    extra: &str,
    tables: &str,
    target: &str,
) -> (tokio_postgres::Client, Work, std::path::PathBuf) {
    let pg = pg();
    let db = pg.fresh_db(name).await;
    db.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(10,2));
         INSERT INTO t SELECT i, 'v' || i, i / 4.0 FROM generate_series(1, {rows}) i;
         {extra}"
    ))
    .await
    .unwrap();
    let w = Work::new();
    let p = w.pipeline(&format!(
        "name = \"{}\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n{tables}[target]\nurl = \"file://{{out}}\"\n{target}",
        name.replace('_', "-"),
        pg.url(name)
    ));
    (db, w, p)
}

async fn assert_replays_to_source(db: &tokio_postgres::Client, out: &Path, table: &str) {
    let got = replay_keyed(&out.join("public").join(table), &["id"]);
    let want = pg_keyed(db, table, &["id"]).await;
    assert_eq!(got.len(), want.len(), "{table}: rows");
    for (k, row) in &want {
        assert_eq!(got.get(k), Some(row), "{table} row {k}");
    }
}

// Step 4 gives up a reload while its temporary slot is being created; that creation can still
// finish on the server after the invocation (when the blocking transaction ends), so the next
// invocation's reload must not need the same slot name (it did once: the reload failed, the
// table's changes waited for a reload that only a later invocation would do).
#[tokio::test]
async fn invocations_load_follow_stop_at_the_deadline_and_go_on() {
    let pg = pg();
    let name = "godwit_lambda_cdc";
    let (db, w, p) = table_t(
        name,
        3000,
        "CREATE TABLE unselected (id int);",
        "[tables]\ninclude = [\"public.t\"]\n",
        "cdc_max_batch_interval = \"1s\"\n",
    )
    .await;
    let ps = p.to_str().unwrap().to_string();
    let (stub, port) = Stub::start().await;
    let log = w.path().join("function.log");
    let _function = start_function(w.path(), port, &log);
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();

    // 1. The initial load and CDC up to the WAL end read at the start.
    let (kind, s) = stub.invoke(&json!({"pipeline": ps}), 120.0).await;
    assert_eq!(kind, "response", "{s}\n{}", logged());
    assert_eq!(s["status"], "done", "{s}");
    assert_eq!(s["more"], false, "{s}");
    assert_eq!(s["mode"], "full-load-and-cdc", "{s}");
    assert_eq!(s["tables"]["public.t"]["rows"], 3000, "{s}");
    assert_eq!(s["tables"]["public.t"]["state"], "CDC", "{s}");
    assert_eq!(s["errors"], json!([]), "{s}");
    assert_replays_to_source(&db, &w.out(), "t").await;

    // 2. Changes, applied by the next invocation and counted in its summary.
    db.batch_execute(
        "UPDATE t SET v = 'changed' WHERE id <= 10;
         DELETE FROM t WHERE id BETWEEN 100 AND 104;
         INSERT INTO t VALUES (5000, 'new', 1.5);",
    )
    .await
    .unwrap();
    let (kind, s) = stub.invoke(&json!({"pipeline": ps}), 120.0).await;
    assert_eq!(kind, "response", "{s}");
    assert_eq!(
        (s["status"].as_str(), s["more"].as_bool()),
        (Some("done"), Some(false)),
        "{s}"
    );
    assert_eq!(s["changes"], 16, "{s}");
    assert!(s["lag_seconds"].is_number(), "{s}");
    assert_replays_to_source(&db, &w.out(), "t").await;

    // 3. Too little time left to start: nothing runs, more work is said to remain.
    let (kind, s) = stub
        .invoke(&json!({"pipeline": ps, "safety_margin_s": 10}), 4.0)
        .await;
    assert_eq!(kind, "response", "{s}");
    assert_eq!(s["status"], "too little time", "{s}");
    assert_eq!(s["more"], true, "{s}");

    // 4. A reload of t that cannot start before the deadline (its temporary slot waits for an
    // open transaction): the invocation stops cleanly at its deadline, more work remains.
    let blocker = pg.connect(name).await;
    blocker
        .batch_execute("BEGIN; INSERT INTO unselected VALUES (1)")
        .await
        .unwrap();
    assert_ok(&w.godwit(&["reload", &ps, "--table", "public.t"], &[]));
    db.batch_execute(
        "UPDATE t SET v = 'during' WHERE id BETWEEN 20 AND 29; DELETE FROM t WHERE id = 30;",
    )
    .await
    .unwrap();
    let asked = Instant::now();
    let (kind, s) = stub
        .invoke(&json!({"pipeline": ps, "safety_margin_s": 5}), 9.0)
        .await;
    let took = asked.elapsed();
    assert_eq!(kind, "response", "{s}\n{}", logged());
    assert_eq!(s["status"], "stopped at the deadline", "{s}");
    assert_eq!(s["more"], true, "{s}");
    assert_eq!(s["task_state"], "interrupted", "{s}");
    assert!(
        took < Duration::from_secs(9),
        "answered within the invocation's time: {took:?}"
    );
    assert_ne!(s["tables"]["public.t"]["state"], "Table error", "{s}");
    assert_eq!(s["reloads_pending"], json!(["public.t"]), "{s}");
    blocker.batch_execute("COMMIT").await.unwrap();

    // 5. The next invocation goes on: the reload is done, CDC caught up; the files replay to
    // exactly what PostgreSQL holds.
    db.batch_execute("INSERT INTO t VALUES (5001, 'last', 2.5)")
        .await
        .unwrap();
    let (kind, s) = stub.invoke(&json!({"pipeline": ps}), 120.0).await;
    assert_eq!(kind, "response", "{s}\n{}", logged());
    assert_eq!(
        (s["status"].as_str(), s["more"].as_bool()),
        (Some("done"), Some(false)),
        "{s}"
    );
    assert_eq!(s["task_state"], "stopped", "{s}");
    assert_eq!(s["reloads_pending"], json!([]), "{s}");
    assert_eq!(s["errors"], json!([]), "{s}");
    assert_replays_to_source(&db, &w.out(), "t").await;

    // A bad event is an error invocation that says what an event looks like.
    let (kind, s) = stub.invoke(&json!({"pipe": ps}), 60.0).await;
    assert_eq!(kind, "error", "{s}");
    assert!(
        s["errorMessage"].as_str().unwrap().contains("\"pipeline\""),
        "{s}"
    );
    assert_ok(&w.godwit(&["drop", &ps, "--yes"], &[]));
}

#[tokio::test]
async fn overlapping_invocations_and_a_table_too_big_for_one() {
    let pg = pg();
    let name = "godwit_lambda_lease";
    let db = pg.fresh_db(name).await;
    db.batch_execute(
        "CREATE TABLE a_big (id int PRIMARY KEY, v text);
         INSERT INTO a_big SELECT i, md5(i::text) FROM generate_series(1, 20000) i;
         CREATE TABLE b_small (id int PRIMARY KEY, v text);
         INSERT INTO b_small SELECT i, 's' || i FROM generate_series(1, 300) i;",
    )
    .await
    .unwrap();
    let admin = pg.connect("postgres").await;
    let w = Work::new();
    // a_big's filter selects every row but sleeps on every 50th: about 20 s, more than the
    // invocation has. One table at a time, a_big first.
    let p = w.pipeline(&format!(
        "name = \"lambda-lease\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[tables.\"public.a_big\"]\nwhere = \"id % 50 <> 0 OR pg_sleep(0.05) IS NOT NULL\"\n[load]\nparallel = 1\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url(name)
    ));
    let ps = p.to_str().unwrap().to_string();
    let (stub1, port1) = Stub::start().await;
    let (stub2, port2) = Stub::start().await;
    let f1 = start_function(w.path(), port1, &w.path().join("f1.log"));
    let _f2 = start_function(w.path(), port2, &w.path().join("f2.log"));
    let logged =
        |n: u8| std::fs::read_to_string(w.path().join(format!("f{n}.log"))).unwrap_or_default();

    let first = stub1.queue(&json!({"pipeline": ps, "safety_margin_s": 5}), 13.0);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'COPY%'",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the first invocation never loaded:\n{}",
            logged(1)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The second invocation meanwhile: no error, the holder named.
    let (kind, s) = stub2.invoke(&json!({"pipeline": ps}), 60.0).await;
    assert_eq!(kind, "response", "{s}\n{}", logged(2));
    assert_eq!(s["status"], "already running", "{s}");
    let holder = s["holder"].as_str().unwrap_or_default();
    assert!(
        holder.contains(&format!("pid {}", f1.0.id())),
        "the holder is the first function's process: {s}"
    );

    // The first stops at its deadline: a_big had the whole invocation and did not finish, so
    // it is a table error with its remedy; b_small did not get its turn: more work remains.
    let (kind, s) = stub1.answer(&first, 60).await;
    assert_eq!(kind, "response", "{s}\n{}", logged(1));
    assert_eq!(s["more"], true, "{s}");
    let errors = s["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{s}");
    assert_eq!(errors[0]["table"], "public.a_big");
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("needs the scheduled shape"),
        "{s}"
    );
    assert!(
        errors[0]["remedy"]
            .as_str()
            .unwrap()
            .contains("godwit run PIPELINE --once"),
        "{s}"
    );
    assert!(
        parquet_files(&w.out().join("public/a_big")).is_empty(),
        "no file of the stopped load"
    );

    // The next invocation loads b_small and does not start a_big again.
    let asked = Instant::now();
    let (kind, s) = stub1.invoke(&json!({"pipeline": ps}), 120.0).await;
    assert_eq!(kind, "response", "{s}\n{}", logged(1));
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "a_big was not loaded again"
    );
    assert_eq!(s["more"], false, "{s}");
    assert_eq!(
        s["tables"]["public.b_small"]["state"], "Table completed",
        "{s}"
    );
    assert_eq!(s["tables"]["public.a_big"]["state"], "Table error", "{s}");
    assert_eq!(s["errors"].as_array().unwrap().len(), 1, "{s}");
    assert_replays_to_source(&db, &w.out(), "b_small").await;
    assert!(parquet_files(&w.out().join("public/a_big")).is_empty());

    // The scheduled shape (the CLI) loads it, from the same state.
    w.pipeline(&std::fs::read_to_string(&p).unwrap().replace(
        "where = \"id % 50 <> 0 OR pg_sleep(0.05) IS NOT NULL\"\n",
        "",
    ));
    assert_ok(&w.godwit(&["run", &ps], &[]));
    assert_replays_to_source(&db, &w.out(), "a_big").await;
}

/// `cargo lambda …` through the cargo-lambda of the services' venv (`GODWIT_CARGO_LAMBDA`).
fn cargo_lambda() -> std::process::Command {
    let bin = std::env::var("GODWIT_CARGO_LAMBDA")
        .expect("GODWIT_CARGO_LAMBDA (scripts/services.sh installs cargo-lambda and sets it)");
    let mut c = std::process::Command::new(bin);
    c.arg("lambda").current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// Under cargo-lambda's runtime emulator, with the events `cargo lambda invoke` sends: the
/// first invocation loads and follows, the next applies the changes made in between; each
/// answers its summary and the files replay to what PostgreSQL holds. (The emulator's
/// deadline header is already past, so the function runs on its fallback budget; the
/// deadline logic is tested against the stub above.)
#[tokio::test]
async fn under_cargo_lambda_s_emulator() {
    let (db, w, p) = table_t("godwit_lambda_emulator", 2000, "", "", "").await;
    let port = free_port();
    let watch_log = w.path().join("watch.log");
    let _watch = Killed(
        cargo_lambda()
            .args(["watch", "--only-lambda-apis", "-P", &port.to_string()])
            .stdout(std::fs::File::create(&watch_log).unwrap())
            .stderr(std::fs::File::create(w.path().join("watch.err")).unwrap())
            .spawn()
            .expect("cargo lambda watch"),
    );
    wait_for("the emulator to listen", 60, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let log = w.path().join("function.log");
    let _function = start_function_at(w.path(), &format!("http://127.0.0.1:{port}/.rt"), &log);
    let invoke = |event: Value| {
        let out = cargo_lambda()
            .args([
                "invoke",
                "-P",
                &port.to_string(),
                "--data-ascii",
                &event.to_string(),
            ])
            .output()
            .expect("cargo lambda invoke");
        assert!(
            out.status.success(),
            "{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        serde_json::from_str::<Value>(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let event = json!({"pipeline": p.to_str().unwrap()});

    let s = invoke(event.clone());
    assert_eq!(
        (s["status"].as_str(), s["more"].as_bool()),
        (Some("done"), Some(false)),
        "{s}"
    );
    assert_eq!(s["tables"]["public.t"]["rows"], 2000, "{s}");
    assert_eq!(s["tables"]["public.t"]["state"], "CDC", "{s}");
    assert_replays_to_source(&db, &w.out(), "t").await;

    db.batch_execute(
        "UPDATE t SET v = 'changed' WHERE id <= 5; DELETE FROM t WHERE id = 7;
         INSERT INTO t VALUES (3001, 'new', 0.25);",
    )
    .await
    .unwrap();
    let s = invoke(event);
    assert_eq!(
        (s["status"].as_str(), s["more"].as_bool()),
        (Some("done"), Some(false)),
        "{s}"
    );
    assert_eq!(s["changes"], 7, "{s}");
    assert_eq!(s["errors"], json!([]), "{s}");
    assert_replays_to_source(&db, &w.out(), "t").await;
    assert!(
        log_count(&log, "already past on arrival") >= 2,
        "the emulator's deadline header: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_ok(&w.godwit(&["drop", p.to_str().unwrap(), "--yes"], &[]));
}
