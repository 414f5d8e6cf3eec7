//! A closed standard output (`godwit status --json | head -1`) ends a command quietly: exit 0,
//! no panic, no "Broken pipe" text. Runs the real binary on a small loaded pipeline whose
//! reports are several times a pipe's buffer, so writing after the reader left really fails.
//! Commands that change things (`drop`, `reload`) finish their work all the same.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// Bytes a Linux pipe holds by default; every report must be well past it.
const PIPE_BUFFER: usize = 64 * 1024;

#[tokio::test]
async fn closed_stdout_ends_status_check_and_inspect_quietly() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cli_pipe").await;
    db.batch_execute(
        r#"
        DO $$
        BEGIN
          FOR i IN 1..200 LOOP
            EXECUTE format(
              'CREATE TABLE public.wide_%s (id int PRIMARY KEY, a text, b text, c text, d text,
                 e text, f text, g text, h text, i text, j text, k text)', i);
            EXECUTE format(
              'INSERT INTO public.wide_%s SELECT n, repeat(''a'', 30), repeat(''b'', 30),
                 repeat(''c'', 30), repeat(''d'', 30), repeat(''e'', 30), repeat(''f'', 30),
                 repeat(''g'', 30), repeat(''h'', 30), repeat(''i'', 30), repeat(''j'', 30),
                 repeat(''k'', 30) FROM generate_series(1, 5) n', i);
          END LOOP;
        END $$;
        "#,
    )
    .await
    .unwrap();
    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        "name = \"pipe\"\nmode = \"full-load\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url("godwit_cli_pipe")
    ));
    let p = pipeline.to_str().unwrap();
    assert_ok(&work.godwit(&["run", p], &[]));

    for args in [
        vec!["status", p, "--json"],
        vec!["check", p, "--json"],
        vec!["inspect", p],
    ] {
        // The whole report, read to its end, so the test knows the pipe really overflows.
        let whole = work.godwit(&args, &[]);
        let whole_text = assert_ok(&whole);
        assert!(
            whole.stdout.len() > 2 * PIPE_BUFFER,
            "godwit {args:?} printed only {} bytes; the pipe would never fill:\n{whole_text}",
            whole.stdout.len()
        );
        for read_first_line in [true, false] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_godwit"))
                .current_dir(work.path())
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start godwit");
            let stdout = child.stdout.take().unwrap();
            if read_first_line {
                // `| head -1`: one line, then the reader goes away.
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert!(!line.is_empty(), "godwit {args:?} printed nothing");
            } else {
                // `| true`: the reader is gone before the first line.
                drop(stdout);
            }
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(0),
                "godwit {args:?} (first line read: {read_first_line}) with a closed stdout:\n{stderr}"
            );
            for bad in ["panicked", "Broken pipe", "RUST_BACKTRACE"] {
                assert!(
                    !stderr.contains(bad),
                    "godwit {args:?} (first line read: {read_first_line}) wrote {bad:?}:\n{stderr}"
                );
            }
        }
    }
}

/// Runs `godwit ARGS` with a stdout whose reader closed before the start (`| true` where
/// `true` is already gone): every write fails with a broken pipe. Returns exit code and stderr.
fn run_with_closed_stdout(work: &Work, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_godwit"))
        .current_dir(work.path())
        .args(args)
        .env("GODWIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run godwit");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn drop_and_reload_finish_their_work_with_a_closed_stdout() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cli_pipe_drop").await;
    db.batch_execute(
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);
         INSERT INTO public.t SELECT n, 'v' || n FROM generate_series(1, 20) n;",
    )
    .await
    .unwrap();
    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        "name = \"pipedrop\"\nmode = \"cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.t\"]\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url("godwit_cli_pipe_drop")
    ));
    let p = pipeline.to_str().unwrap();
    assert_ok(&work.godwit(&["run", p, "--once"], &[]));
    let state = work.out().join("_godwit").join("state");
    assert!(state.join("task.json").exists(), "the run left no state");
    let slot_before: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'godwit_pipedrop'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slot_before, 1, "the run created no slot");

    // `godwit reload … | true`: the request is queued all the same.
    let (code, stderr) = run_with_closed_stdout(&work, &["reload", p, "--table", "public.t"]);
    assert_eq!(code, Some(0), "reload with a closed stdout:\n{stderr}");
    let requests: Vec<String> = std::fs::read_dir(state.join("reload"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        requests,
        ["public.t"],
        "reload with a closed stdout queued nothing:\n{stderr}"
    );

    // `godwit drop … --yes | true`: the slot, the publication and the state are gone.
    let (code, stderr) = run_with_closed_stdout(&work, &["drop", p, "--yes"]);
    assert_eq!(code, Some(0), "drop with a closed stdout:\n{stderr}");
    for bad in ["panicked", "Broken pipe", "error"] {
        assert!(!stderr.contains(bad), "drop wrote {bad:?}:\n{stderr}");
    }
    let slot_left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'godwit_pipedrop'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slot_left, 0,
        "drop with a closed stdout left the slot:\n{stderr}"
    );
    let publication_left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = 'godwit_pipedrop'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        publication_left, 0,
        "drop with a closed stdout left the publication"
    );
    assert!(
        !state.join("task.json").exists(),
        "drop with a closed stdout left the state"
    );
    assert!(
        !state.join("reload").exists(),
        "drop left the reload request"
    );
}
