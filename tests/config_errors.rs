//! Bad configuration through the real binary: exit code 2, a message naming file, line and
//! key, nothing written, and no secret in the output. (Every key's valid and invalid values
//! are covered at parse level in `config_parse.rs`; here each section is driven end to end.)

mod common;

use common::*;

/// A pipeline whose source is fine; `{extra}` is appended.
fn base(url: &str, extra: &str) -> String {
    format!(
        "name = \"bad\"\nmode = \"full-load\"\n[source]\nurl = \"{url}\"\n[tables]\ninclude = [\"public.*\"]\n{extra}"
    )
}

fn assert_config_error(work: &Work, args: &[&str], needles: &[&str], secret: Option<&str>) {
    let out = work.godwit(args, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "expected exit 2:\n{t}");
    for n in needles {
        assert!(t.contains(n), "output lacks {n:?}:\n{t}");
    }
    if let Some(s) = secret {
        assert!(!t.contains(s), "the secret leaked:\n{t}");
    }
    assert!(!work.out().exists(), "something was written to the target");
    assert!(
        !work.path().join("godwit-out").exists(),
        "something was written to godwit-out"
    );
}

#[test]
fn each_section_refuses_a_bad_value_with_file_line_and_key() {
    let url = "postgres://u:pw@127.0.0.1:1/db";
    // (lines appended after the 6-line base, the key, a word of the message)
    let cases: &[(&str, &str, &str)] = &[
        ("mode2 = 1\n", "tables.mode2", "unknown"),
        ("[load]\nparallel = 0\n", "load.parallel", "parallel"),
        (
            "[load]\nbatch_bytes = \"lots\"\n",
            "load.batch_bytes",
            "size",
        ),
        ("[target]\nformat = \"orc\"\n", "target.format", "orc"),
        (
            "[target]\ncompression = \"lz4\"\n",
            "target.compression",
            "lz4",
        ),
        (
            "[target]\nmax_file_size = \"-1MB\"\n",
            "target.max_file_size",
            "size",
        ),
        (
            "[target]\ncdc_max_batch_interval = \"soon\"\n",
            "target.cdc_max_batch_interval",
            "duration",
        ),
        ("[target]\nsse = \"aws:kms\"\n", "target.sse", "kms_key_id"),
        (
            "[target]\ndate_partitioning = \"weekly\"\n",
            "target.date_partitioning",
            "weekly",
        ),
        (
            "[notify]\nsns_topic_arn = \"topic\"\n",
            "notify.sns_topic_arn",
            "arn",
        ),
        ("[limits]\nmemory = \"1KB\"\n", "limits.memory", "memory"),
        ("[errors]\ntable = \"explode\"\n", "errors.table", "explode"),
        (
            "[errors]\nrecoverable_retries = -5\n",
            "errors.recoverable_retries",
            "-1",
        ),
        (
            "[tables.\"public.t\"]\npartitions = 0\n",
            "tables.\"public.t\".partitions",
            "partitions",
        ),
        (
            "[tables.\"public.t\"]\nnumeric = \"float\"\n",
            "tables.\"public.t\".numeric",
            "float",
        ),
        (
            "[cache]\nurl = \"http://x\"\n[[cache.projections]]\ntable = \"public.t\"\ntype = \"hash\"\nkey = \"k:{id}\"\n",
            "cache.url",
            "redis",
        ),
    ];
    let mut failures = Vec::new();
    for (extra, key, word) in cases {
        let work = Work::new();
        let text_ = base(url, extra);
        let path = work.pipeline(&text_);
        let out = work.godwit(&["run", path.to_str().unwrap()], &[]);
        let t = text(&out);
        let file = path.display().to_string();
        if out.status.code() != Some(2) {
            failures.push(format!("{key}: exit {:?}\n{t}", out.status.code()));
        } else if !t.contains(&format!("{file}:")) || !t.contains(&format!(": {key}: ")) {
            failures.push(format!(
                "{key}: message does not name file, line and key:\n{t}"
            ));
        } else if !t.to_lowercase().contains(&word.to_lowercase()) {
            failures.push(format!("{key}: message lacks {word:?}:\n{t}"));
        } else if t.contains(":pw@") {
            failures.push(format!("{key}: password in output:\n{t}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_line_number_points_at_the_bad_key() {
    let work = Work::new();
    let path = work.pipeline(&base(
        "postgres://h/db",
        "[load]\n\nbatch_rows = \"many\"\n",
    ));
    assert_config_error(
        &work,
        &["check", path.to_str().unwrap()],
        &[&format!("{}:9: load.batch_rows", path.display())],
        None,
    );
}

#[test]
fn missing_variable_is_named_and_nothing_is_written() {
    let work = Work::new();
    let path = work.pipeline(&base("${GODWIT_TEST_UNSET_URL}", ""));
    assert_config_error(
        &work,
        &["run", path.to_str().unwrap()],
        &["GODWIT_TEST_UNSET_URL", ":4: source.url"],
        None,
    );
}

#[tokio::test]
async fn unreachable_wrong_password_and_no_match_exit_2_without_secrets() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cfgerr").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();

    // Nothing listens on port 1.
    let work = Work::new();
    let path = work.pipeline(&base(
        "postgres://u:Sup3rSecret@127.0.0.1:1/db?sslmode=disable&connect_timeout=3",
        "",
    ));
    assert_config_error(
        &work,
        &["run", path.to_str().unwrap()],
        &["127.0.0.1:1/db"],
        Some("Sup3rSecret"),
    );

    // Wrong password.
    let work = Work::new();
    let wrong = format!(
        "postgres://{}:Wr0ngPassw0rd@{}:{}/godwit_cfgerr?sslmode=disable",
        pg.user, pg.host, pg.port
    );
    let path = work.pipeline(&base(&wrong, ""));
    assert_config_error(
        &work,
        &["run", path.to_str().unwrap()],
        &[
            "password authentication failed",
            "check the user and password",
        ],
        Some("Wr0ngPassw0rd"),
    );

    // The password given through a variable is not echoed either.
    let work = Work::new();
    let path = work.pipeline(&base("${GODWIT_TEST_URL}", ""));
    let out = work.godwit(
        &["run", path.to_str().unwrap()],
        &[("GODWIT_TEST_URL", &wrong)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!text(&out).contains("Wr0ngPassw0rd"));

    // No table matched.
    let work = Work::new();
    let good = pg.url("godwit_cfgerr");
    let path = work
        .pipeline(&base(&good, "").replace("include = [\"public.*\"]", "include = [\"sales.*\"]"));
    assert_config_error(
        &work,
        &["run", path.to_str().unwrap()],
        &["no table", "tables.include", ":6:"],
        Some(&pg.password),
    );

    // An excluded column the table does not have, and a filter that does not work.
    let work = Work::new();
    let path = work.pipeline(&base(
        &good,
        "[tables.\"public.t\"]\nexclude_columns = [\"nope\"]\n",
    ));
    assert_config_error(
        &work,
        &["run", path.to_str().unwrap()],
        &["nope", "exclude_columns"],
        Some(&pg.password),
    );
    let work = Work::new();
    let path = work.pipeline(&base(&good, "[tables.\"public.t\"]\nwhere = \"idd > 1\"\n"));
    assert_config_error(
        &work,
        &["run", path.to_str().unwrap()],
        &["idd", ":8: tables.\"public.t\".where"],
        Some(&pg.password),
    );

    // `check` reports the same problem as a failed check, exit 2.
    let work = Work::new();
    let path = work.pipeline(&base(&wrong, ""));
    let out = work.godwit(&["check", path.to_str().unwrap(), "--json"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(!text(&out).contains("Wr0ngPassw0rd"));
}
