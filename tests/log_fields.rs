//! JSON log lines carry plain values: an LSN as `0/16B3748`, a count as a number, an absent
//! value as no field — never Rust's `Some(…)`, `None`, a `Struct { … }` dump, a JSON text or a
//! quoted string inside the string; an event's `details` as a JSON object; the pipeline's name
//! on every line. Runs the real binary with `--log-format json` through a
//! full load, a CDC batch run, a crash right after a CDC file and the run that recovers from it.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use serde_json::Value;

/// `X/Y` (PostgreSQL's LSN form) as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("{text:?} is not an LSN in X/Y form"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Every stderr line of `o` as a JSON object; panics on a line that is not one.
fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        // The test crash point's own last words (not a log line).
        .filter(|l| !l.starts_with("godwit: crash point reached"))
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            assert!(v.is_object(), "not a JSON object: {l}");
            v
        })
        .collect()
}

/// Why a field value is not plain, if it is not.
fn not_plain(value: &str) -> Option<&'static str> {
    if value.contains("Some(") {
        Some("an Option's Debug form")
    } else if value == "None" || value.contains("None,") || value.contains("(None") {
        Some("None")
    } else if value.contains("{ ") || value.contains(" }") {
        Some("a struct's Debug form")
    } else if value.contains("{\"") || value.starts_with('[') {
        Some("JSON text")
    } else if value.starts_with('"') {
        Some("a quoted string inside the string")
    } else {
        None
    }
}

/// Checks every field of every line; returns the lines.
fn assert_plain(o: &Output, what: &str) -> Vec<Value> {
    let lines = json_lines(o);
    assert!(!lines.is_empty(), "{what}: no log lines");
    for line in &lines {
        let fields = line["fields"]
            .as_object()
            .unwrap_or_else(|| panic!("{what}: a line without fields: {line}"));
        assert!(fields.contains_key("message"), "{what}: no message: {line}");
        // Every line names the pipeline it is about.
        assert_eq!(fields["pipeline"], "logfields", "{what}: {line}");
        for (k, v) in fields {
            match v {
                // An event's details stay a JSON object (for metric filters on its fields).
                Value::Object(details) if k == "details" => {
                    assert!(!details.is_empty(), "{what}: empty details: {line}");
                }
                Value::String(s) => {
                    if let Some(why) = not_plain(s) {
                        panic!("{what}: field {k} holds {why}: {line}");
                    }
                }
                Value::Number(_) | Value::Bool(_) => {}
                other => panic!("{what}: field {k} is not a plain value ({other}): {line}"),
            }
        }
    }
    lines
}

/// The lines whose message is `message`.
fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

fn cdc_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet") && !n.starts_with("LOAD") && !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn json_log_fields_are_plain_values() {
    let pg = pg();
    let db = pg.fresh_db("godwit_log_fields").await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"logfields\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.items\"]\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1h\"\n",
        pg.url("godwit_log_fields")
    ));
    let p = pipe.to_str().unwrap();
    let json = ["--log-format", "json"];
    let run = |extra: &[&str]| {
        let mut args = vec!["run", p, "--once"];
        args.extend_from_slice(&json);
        args.extend_from_slice(extra);
        w.godwit(&args, &[])
    };

    // The initial load and its events.
    let load = run(&[]);
    assert_ok(&load);
    let lines = assert_plain(&load, "the initial load");
    let loaded: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["event_type"] == "table.loaded")
        .collect();
    assert_eq!(loaded.len(), 1, "{lines:?}");
    let details = &loaded[0]["fields"]["details"];
    assert_eq!(details["rows"], 100, "{details}");
    assert_eq!(loaded[0]["fields"]["table"], "public.items");

    // A CDC batch run: the start names both LSNs plainly, each file is logged with what it holds.
    db.batch_execute(
        "INSERT INTO items SELECT i, 'new ' || i FROM generate_series(101, 130) i;
         UPDATE items SET name = 'changed' WHERE id BETWEEN 1 AND 10;
         DELETE FROM items WHERE id BETWEEN 11 AND 15;",
    )
    .await
    .unwrap();
    let changes = 30 + 10 + 5;
    let cdc = run(&[]);
    assert_ok(&cdc);
    let lines = assert_plain(&cdc, "the CDC run");
    let started = with_message(&lines, "CDC started");
    assert_eq!(started.len(), 1, "{lines:?}");
    let start = lsn(started[0]["fields"]["start"].as_str().unwrap());
    let stop_at = lsn(started[0]["fields"]["stop_at"].as_str().unwrap());
    assert!(start <= stop_at, "{}", started[0]);
    let written = with_message(&lines, "CDC file written");
    assert_eq!(written.len(), 1, "one flush at the end: {lines:?}");
    let f = &written[0]["fields"];
    assert_eq!(f["table"], "public.items");
    assert_eq!(f["rows"], changes, "{f}");
    let key = f["file"].as_str().unwrap();
    let path = w.out().join(key);
    assert!(path.exists(), "the logged file {key} is not in the target");
    assert_eq!(rows(&read_parquet(&path)), changes as usize);
    assert_eq!(f["bytes"], std::fs::metadata(&path).unwrap().len(), "{f}");
    let (first, last) = (
        lsn(f["first_lsn"].as_str().unwrap()),
        lsn(f["last_lsn"].as_str().unwrap()),
    );
    assert!(first <= last && last <= stop_at, "{f}");
    // The object name carries the same LSNs (16 hex digits each).
    assert!(
        key.ends_with(&format!("-{first:016X}-{last:016X}.parquet")),
        "{key} vs {f}"
    );
    let stopped = with_message(&lines, "CDC stopped");
    assert_eq!(stopped.len(), 1, "{lines:?}");
    assert_eq!(stopped[0]["fields"]["files"], 1);
    assert_eq!(stopped[0]["fields"]["changes"], changes);

    // A crash right after the next CDC file, before its checkpoint: the following run moves the
    // table's high-water mark past that file and logs the mark as an LSN and a number.
    db.batch_execute("INSERT INTO items SELECT i, 'late ' || i FROM generate_series(131, 140) i;")
        .await
        .unwrap();
    let crashed = run(&["--crash-after-objects", "1"]);
    assert_ne!(crashed.status.code(), Some(0), "{}", text(&crashed));
    assert_plain(&crashed, "the crashed run");
    let table_dir = w.out().join("public").join("items");
    let files = cdc_files(&table_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let unrecorded = files
        .iter()
        .find(|n| n.as_str() != key.rsplit('/').next().unwrap());
    let unrecorded = unrecorded.unwrap();
    let last_in_name = u64::from_str_radix(
        unrecorded
            .trim_end_matches(".parquet")
            .rsplit('-')
            .next()
            .unwrap(),
        16,
    )
    .unwrap();
    let recovered = run(&[]);
    assert_ok(&recovered);
    let lines = assert_plain(&recovered, "the recovering run");
    let moved = with_message(
        &lines,
        "high-water mark moved past files written after the last checkpoint",
    );
    assert_eq!(moved.len(), 1, "{lines:?}");
    let m = &moved[0]["fields"];
    assert_eq!(m["table"], "public.items");
    assert_eq!(lsn(m["mark_lsn"].as_str().unwrap()), last_in_name, "{m}");
    assert!(m["mark_seq"].is_u64(), "{m}");
    // Those changes are in the unrecorded file already: nothing is written twice.
    assert!(
        with_message(&lines, "CDC file written").is_empty(),
        "{lines:?}"
    );
    assert_eq!(cdc_files(&table_dir).len(), 2);

    // A following run that lasts a few seconds logs the progress line on its interval, with
    // the changes it took, the memory budget's counts and the resident set.
    db.batch_execute("INSERT INTO items SELECT i, 'more ' || i FROM generate_series(141, 150) i;")
        .await
        .unwrap();
    let mut args = vec!["run", p, "--max-duration", "3s", "--progress-every", "1s"];
    args.extend_from_slice(&json);
    let following = w.godwit(&args, &[]);
    assert_ok(&following);
    let lines = assert_plain(&following, "the following run");
    let progress = with_message(&lines, "progress");
    assert!(progress.len() >= 2, "{lines:?}");
    let last = &progress[progress.len() - 1]["fields"];
    assert_eq!(last["changes"], 10, "{last}");
    assert!(last["rss_bytes"].as_u64().unwrap() > 1 << 20, "{last}");
    for field in [
        "rows",
        "rows_per_s",
        "changes_per_s",
        "buffered_bytes",
        "spilled_bytes",
    ] {
        assert!(last[field].is_number(), "{field}: {last}");
    }
}
