//! CDC into S3 (moto): a run that crashes right after a CDC object is complete and before its
//! checkpoint, then a resumed run — the objects, replayed over the full load, give the source's
//! table with no change twice and none missing.

mod common;

use aws_sdk_s3::Client;
use common::replay::*;
use common::s3::*;
use common::source::*;
use common::*;

/// The table's checkpointed mark (`_lsn`) in the task record stored in the bucket.
async fn checkpoint_lsn(client: &Client, bucket: &str) -> u64 {
    let body = get(client, bucket, "lake/_godwit/state/task.json").await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["tables"]["public.acct"]["mark"]["lsn"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_crash_between_a_cdc_object_and_its_checkpoint_leaves_every_change_once() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_s3").await;
    db.batch_execute(
        "CREATE TABLE acct (id bigint PRIMARY KEY, n int, note text);
         INSERT INTO acct SELECT i, i % 100, md5(i::text) FROM generate_series(1, 500) i;",
    )
    .await
    .unwrap();
    let client = s3_client().await;
    bucket(&client, "godwit-cdc-s3").await;
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        r#"name = "cdcs3"
mode = "full-load-and-cdc"
[source]
url = "{}"
[tables]
include = ["public.acct"]
[target]
url = "s3://godwit-cdc-s3/lake"
endpoint = "{}"
cdc_max_batch_interval = "1s"
"#,
        pg.url("godwit_cdc_s3"),
        endpoint()
    ));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));

    db.batch_execute(
        "INSERT INTO acct SELECT i, 1, 'new' FROM generate_series(501, 600) i;
         UPDATE acct SET n = n + 1000 WHERE id <= 50;
         DELETE FROM acct WHERE id BETWEEN 100 AND 120;",
    )
    .await
    .unwrap();
    let before = checkpoint_lsn(&client, "godwit-cdc-s3").await;
    // The first object of this run is the CDC file: the run ends right after it completes,
    // before the checkpoint records it.
    // A short lease: the crashed run cannot release it, and only its expiry frees it.
    let crashed = w.godwit(
        &[
            "run",
            p,
            "--once",
            "--crash-after-objects",
            "1",
            "--lease-ttl",
            "3s",
        ],
        &[],
    );
    assert!(
        text(&crashed).contains("crash point reached"),
        "{}",
        text(&crashed)
    );
    assert_eq!(
        checkpoint_lsn(&client, "godwit-cdc-s3").await,
        before,
        "the crash landed before the checkpoint"
    );
    let crashed_dir = Work::new();
    let keys = download(&client, "godwit-cdc-s3", "lake", crashed_dir.path()).await;
    let cdc_after_mark: Vec<_> = cdc_rows(&crashed_dir.path().join("public/acct"))
        .into_iter()
        .filter(|r| r.0 as u64 > before)
        .collect();
    assert_eq!(
        cdc_after_mark.len(),
        100 + 50 + 21,
        "the crashed run's object holds the changes past the checkpoint: {keys:?}"
    );

    db.batch_execute(
        "UPDATE acct SET note = 'after the crash' WHERE id BETWEEN 500 AND 520;
         INSERT INTO acct VALUES (1000, 7, 'last');",
    )
    .await
    .unwrap();
    // The resume waits for the crashed run's lease to expire (refused with exit 2 until then).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let resumed = w.godwit(&["run", p, "--once"], &[]);
        if resumed.status.code() == Some(0) {
            break;
        }
        let t = text(&resumed);
        assert!(
            t.contains("is already running") && std::time::Instant::now() < deadline,
            "{t}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    let out = Work::new();
    download(&client, "godwit-cdc-s3", "lake", out.path()).await;
    let dir = out.path().join("public/acct");
    let got = replay_keyed(&dir, &["id"]);
    let want = pg_keyed(&db, "acct", &["id"]).await;
    assert_eq!(got.len(), want.len(), "rows after replay");
    for (k, row) in &want {
        assert_eq!(got.get(k), Some(row), "row {k}");
    }
    // Exactly the changes made, each once (cdc_rows panics on a change seen twice).
    assert_eq!(cdc_rows(&dir).len(), 100 + 50 + 21 + 21 + 1);
    assert_ok(&w.godwit(&["drop", p, "--yes"], &[]));
}
