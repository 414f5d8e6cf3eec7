//! A closed standard output (`godwit status --json | head -1`) ends a command quietly: exit 0,
//! no panic, no "Broken pipe" text. Runs the real binary on a small loaded pipeline whose
//! reports are several times a pipe's buffer, so writing after the reader left really fails.

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
