//! AWS errors a user can read: a missing bucket (target, state, pipeline file) and an
//! unreachable endpoint give one `error:` sentence naming the bucket, the service's code and
//! what to do — never the SDK's debug dump — and `check` never calls the lease free when it
//! could not read it. Against moto from scripts/services.sh.

mod common;

use std::process::Output;

use common::s3::endpoint;
use common::*;

/// A bucket no test creates.
const MISSING: &str = "t9-no-such-bucket";

fn pipeline_text(db_url: &str, bucket: &str, endpoint: &str) -> String {
    format!(
        r#"name = "s3err"
mode = "full-load"
[source]
url = "{db_url}"
[tables]
include = ["public.t"]
[target]
url = "s3://{bucket}/lake"
endpoint = "{endpoint}"
"#
    )
}

async fn source(name: &str) -> String {
    let pg = pg();
    let db = pg.fresh_db(name).await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
        .await
        .unwrap();
    pg.url(name)
}

/// No SDK debug dump anywhere in the output.
fn assert_no_dump(o: &Output) {
    let t = text(o);
    for dump in [
        "ServiceError",
        "Error {",
        "headers",
        "DispatchFailure",
        "Some(",
    ] {
        assert!(!t.contains(dump), "debug dump ({dump}) in:\n{t}");
    }
}

/// The `error:` lines on stderr; there is no `Error:` line.
fn error_lines(o: &Output) -> Vec<String> {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("Error:"), "an `Error:` line in:\n{}", text(o));
    err.lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

/// The one `error:` line of a failed command, which exited 2.
fn one_error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    assert_no_dump(o);
    let lines = error_lines(o);
    assert_eq!(lines.len(), 1, "not one error line:\n{}", text(o));
    lines[0].clone()
}

/// Says the bucket is missing, with the service's code and what to do.
fn names_missing_bucket(line: &str, bucket: &str, fix: &str) {
    assert!(line.contains(bucket), "no bucket name in: {line}");
    assert!(
        line.contains("NoSuchBucket") || line.contains("NotFound"),
        "no service code in: {line}"
    );
    assert!(line.contains("does not exist"), "no diagnosis in: {line}");
    assert!(
        line.contains(&format!("create it or fix {fix}")),
        "no advice in: {line}"
    );
}

/// The `check` report line of `name`: (status, message).
fn check_line(o: &Output, name: &str) -> Option<(String, String)> {
    String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let status = words.next()?;
        (words.next()? == name).then(|| (status.to_string(), words.collect::<Vec<_>>().join(" ")))
    })
}

#[tokio::test]
async fn a_missing_target_bucket_is_one_readable_sentence() {
    let url = source("godwit_s3err_bucket").await;
    let work = Work::new();
    let pipeline = work.pipeline(&pipeline_text(&url, MISSING, &endpoint()));
    let pipeline = pipeline.to_str().unwrap();

    let check = work.godwit(&["check", pipeline], &[]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert_no_dump(&check);
    let (status, message) = check_line(&check, "target").expect("a target line");
    assert_eq!(status, "error", "{}", text(&check));
    names_missing_bucket(&message, MISSING, "target.url");
    let (status, message) = check_line(&check, "lease").expect("a lease line");
    assert_eq!(status, "unknown", "{}", text(&check));
    names_missing_bucket(&message, MISSING, "target.url");

    let run = work.godwit(&["run", pipeline], &[]);
    names_missing_bucket(&one_error_line(&run), MISSING, "target.url");
}

#[tokio::test]
async fn a_pipeline_file_in_a_missing_bucket_is_one_readable_sentence() {
    let work = Work::new();
    let env = [("AWS_ENDPOINT_URL", endpoint())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = format!("s3://{MISSING}/p.toml");
    for command in ["check", "run"] {
        let o = work.godwit(&[command, &url], &env);
        let line = one_error_line(&o);
        assert!(line.contains(&url), "no pipeline URL in: {line}");
        names_missing_bucket(&line, MISSING, "the pipeline URL");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named() {
    let url = source("godwit_s3err_endpoint").await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let work = Work::new();
    let pipeline = work.pipeline(&pipeline_text(&url, MISSING, &dead));
    let pipeline = pipeline.to_str().unwrap();

    let check = work.godwit(&["check", pipeline], &[]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert_no_dump(&check);
    let (status, message) = check_line(&check, "target").expect("a target line");
    assert_eq!(status, "error", "{}", text(&check));
    assert!(
        message.contains(&format!("cannot reach {dead}")) && message.contains("target.endpoint"),
        "{message}"
    );
    let (status, _) = check_line(&check, "lease").expect("a lease line");
    assert_eq!(status, "unknown", "{}", text(&check));

    let run = work.godwit(&["run", pipeline], &[]);
    let line = one_error_line(&run);
    assert!(line.contains(&format!("cannot reach {dead}")), "{line}");
}
