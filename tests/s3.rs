//! The S3 target against moto: the whole type suite read back with aws-sdk-s3, multipart
//! uploads of large files with nothing left dangling, encryption headers as stored, and the
//! state and lease kept in the bucket.

mod common;

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use aws_sdk_s3::Client;
use bytes::Bytes;
use common::s3::*;
use common::type_cases;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The batches of every `LOAD*.parquet` object of a table.
fn table_batches(objects: &HashMap<String, Bytes>, prefix: &str, table: &str) -> Vec<RecordBatch> {
    let dir = format!("{prefix}/public/{table}/");
    let mut keys: Vec<_> = objects
        .keys()
        .filter(|k| k.starts_with(&dir) && k[dir.len()..].starts_with("LOAD"))
        .collect();
    keys.sort();
    assert!(!keys.is_empty(), "no objects under {dir}");
    keys.iter()
        .flat_map(|k| {
            ParquetRecordBatchReaderBuilder::try_new(objects[*k].clone())
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `blob(id bigint, body text)` with `rows` rows of 256 characters that do not compress.
async fn seed_blob(db: &tokio_postgres::Client, rows: i64) {
    db.batch_execute(&format!(
        "CREATE TABLE blob (id bigint PRIMARY KEY, body text);
         INSERT INTO blob SELECT i, md5(i::text) || md5((-i)::text) || md5((i * 7)::text) || md5((i * 13)::text)
                                 || md5((i * 17)::text) || md5((i * 19)::text) || md5((i * 23)::text) || md5((i * 29)::text)
           FROM generate_series(1, {rows}) i;"
    ))
    .await
    .unwrap();
}

fn s3_pipeline(
    db_url: &str,
    bucket: &str,
    include: &str,
    extra_target: &str,
    extra: &str,
) -> String {
    format!(
        r#"name = "s3t"
mode = "full-load"
[source]
url = "{db_url}"
[tables]
include = {include}
[target]
url = "s3://{bucket}/lake"
endpoint = "{}"
{extra_target}
{extra}"#,
        endpoint()
    )
}

#[tokio::test]
async fn the_type_suite_passes_through_s3() {
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_types").await;
    type_cases::seed(&db).await;
    let client = s3_client().await;
    let b = bucket(&client, "types-suite").await;
    let work = Work::new();
    let pipeline = work.pipeline(&s3_pipeline(
        &pg.url("godwit_s3_types"),
        &b,
        r#"["public.*"]"#,
        "",
        type_cases::PIPELINE_EXTRA,
    ));
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let all = objects(&client, &b, "lake/").await;
    let failures = type_cases::compare(&db, &|t| table_batches(&all, "lake", t)).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // State lives in the bucket; the lease was released.
    assert!(all.contains_key("lake/_godwit/state/task.json"));
    assert!(!all.contains_key("lake/_godwit/state/lease"));
    let status = work.godwit(&["status", pipeline.to_str().unwrap(), "--json"], &[]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["tables"]["public.t_int8"]["state"],
        "Table completed"
    );
    // Nothing was written locally but the events file.
    assert!(!work.out().exists());
}

#[tokio::test]
async fn large_files_go_up_in_parts_encrypted_and_complete() {
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_big").await;
    // ~25 MiB of text that does not compress.
    seed_blob(&db, 100000).await;
    let client = s3_client().await;
    let b = bucket(&client, "big-files").await;
    let work = Work::new();
    let pipeline = work.pipeline(&s3_pipeline(
        &pg.url("godwit_s3_big"),
        &b,
        r#"["public.blob"]"#,
        "compression = \"none\"\nsse = \"aes256\"",
        "",
    ));
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let key = "lake/public/blob/LOAD00000001.parquet";
    let head = client
        .head_object()
        .bucket(&b)
        .key(key)
        .send()
        .await
        .unwrap();
    assert!(head.content_length().unwrap() > 16 << 20, "{head:?}");
    // A multipart upload's ETag ends in -<parts>.
    assert!(
        head.e_tag().unwrap().contains('-'),
        "not multipart: {head:?}"
    );
    assert_eq!(
        head.server_side_encryption(),
        Some(&aws_sdk_s3::types::ServerSideEncryption::Aes256)
    );
    let uploads = client
        .list_multipart_uploads()
        .bucket(&b)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "dangling uploads: {uploads:?}"
    );
    let all = objects(&client, &b, "lake/public/").await;
    let batches = table_batches(&all, "lake", "blob");
    assert_eq!(rows(&batches), 100_000);
    let total: i64 = db
        .query_one("SELECT sum(length(body))::bigint FROM blob", &[])
        .await
        .unwrap()
        .get(0);
    let got: usize = batches
        .iter()
        .map(|b| {
            use arrow::array::AsArray;
            b.column(1)
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().len())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(got as i64, total);
}

#[tokio::test]
async fn kms_encryption_is_requested_on_every_object() {
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_kms").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
        .await
        .unwrap();
    let client = s3_client().await;
    let b = bucket(&client, "kms-files").await;
    let key_id = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555";
    let work = Work::new();
    let pipeline = work.pipeline(&s3_pipeline(
        &pg.url("godwit_s3_kms"),
        &b,
        r#"["public.t"]"#,
        &format!("sse = \"aws:kms\"\nkms_key_id = \"{key_id}\""),
        "",
    ));
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    for key in [
        "lake/public/t/LOAD00000001.parquet",
        "lake/_godwit/state/task.json",
    ] {
        let head = client
            .head_object()
            .bucket(&b)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms),
            "{key}"
        );
        assert_eq!(head.ssekms_key_id(), Some(key_id), "{key}");
    }
}

#[tokio::test]
async fn a_held_s3_lease_stops_a_second_run() {
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_lease").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    let client = s3_client().await;
    let b = bucket(&client, "lease-test").await;
    // A live holder on another host.
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    client
        .put_object()
        .bucket(&b)
        .key("lake/_godwit/state/lease")
        .body(
            format!(r#"{{"host":"other-host","pid":4242,"since":"2026-11-27T00:00:00Z","expires_at":{expires}}}"#)
                .into_bytes()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let work = Work::new();
    let pipeline = work.pipeline(&s3_pipeline(
        &pg.url("godwit_s3_lease"),
        &b,
        r#"["public.t"]"#,
        "",
        "",
    ));
    let out = work.godwit(&["run", pipeline.to_str().unwrap()], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("pid 4242 on other-host"), "{t}");
    // An expired lease is taken over.
    client
        .put_object()
        .bucket(&b)
        .key("lake/_godwit/state/lease")
        .body(
            r#"{"host":"other-host","pid":4242,"since":"2026-11-27T00:00:00Z","expires_at":1}"#
                .as_bytes()
                .to_vec()
                .into(),
        )
        .send()
        .await
        .unwrap();
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
}

#[tokio::test]
async fn killed_during_a_multipart_upload_leaves_nothing_dangling() {
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_kill").await;
    seed_blob(&db, 60000).await;
    let client = s3_client().await;
    let b = bucket(&client, "kill-upload").await;
    let work = Work::new();
    // Small row groups so the file streams into the upload while COPY is still reading.
    let pipeline = work.pipeline(&s3_pipeline(
        &pg.url("godwit_s3_kill"),
        &b,
        r#"["public.blob"]"#,
        "compression = \"none\"\nrow_group_bytes = \"2MiB\"",
        "[tables.\"public.blob\"]\nwhere = \"id % 1000 <> 0 OR pg_sleep(0.05) IS NOT NULL\"",
    ));
    // Uploads an earlier, failed run of this test left.
    let left = client
        .list_multipart_uploads()
        .bucket(&b)
        .send()
        .await
        .unwrap();
    for u in left.uploads() {
        client
            .abort_multipart_upload()
            .bucket(&b)
            .key(u.key().unwrap())
            .upload_id(u.upload_id().unwrap())
            .send()
            .await
            .unwrap();
    }
    // A short lease (hidden --lease-ttl): the killed run holds it until it expires.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_godwit"))
        .current_dir(work.path())
        .args(["run", pipeline.to_str().unwrap(), "--lease-ttl", "6s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start godwit");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let uploads = client
            .list_multipart_uploads()
            .bucket(&b)
            .send()
            .await
            .unwrap();
        if !uploads.uploads().is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("no upload was ever in progress");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let dangling = client
        .list_multipart_uploads()
        .bucket(&b)
        .send()
        .await
        .unwrap();
    assert!(
        !dangling.uploads().is_empty(),
        "the kill left an upload behind"
    );
    assert!(
        client
            .head_object()
            .bucket(&b)
            .key("lake/public/blob/LOAD00000001.parquet")
            .send()
            .await
            .is_err(),
        "a partial object became visible"
    );

    let lease = objects(&client, &b, "lake/_godwit/state/").await;
    let lease: serde_json::Value = serde_json::from_slice(
        lease
            .get("lake/_godwit/state/lease")
            .unwrap_or_else(|| panic!("no lease: {:?}", lease.keys())),
    )
    .unwrap();
    let expires = lease["expires_at"].as_i64().unwrap();
    while chrono::Utc::now().timestamp() <= expires {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let uploads = client
        .list_multipart_uploads()
        .bucket(&b)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "dangling uploads: {uploads:?}"
    );
    let all = objects(&client, &b, "lake/public/").await;
    let mut keys: Vec<_> = all.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["lake/public/blob/LOAD00000001.parquet".to_string()]
    );
    let batches = table_batches(&all, "lake", "blob");
    let mut ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            use arrow::array::AsArray;
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .map(|v| v.unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=60_000).collect::<Vec<_>>());
}

#[tokio::test]
async fn pipeline_files_can_be_read_from_s3() {
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_pipeline").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);")
        .await
        .unwrap();
    let client = s3_client().await;
    let b = bucket(&client, "pipelines").await;
    let work = Work::new();
    let text_ = s3_pipeline(&pg.url("godwit_s3_pipeline"), &b, r#"["public.t"]"#, "", "");
    client
        .put_object()
        .bucket(&b)
        .key("conf/good.toml")
        .body(text_.clone().into_bytes().into())
        .send()
        .await
        .unwrap();
    let env = [("AWS_ENDPOINT_URL", endpoint())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = format!("s3://{b}/conf/good.toml");
    assert_ok(&work.godwit(&["run", &url], &env));
    let all = objects(&client, &b, "lake/public/").await;
    assert_eq!(rows(&table_batches(&all, "lake", "t")), 3);

    // Errors name the S3 URL, line and key; a missing object is a start-up error.
    client
        .put_object()
        .bucket(&b)
        .key("conf/bad.toml")
        .body(format!("{text_}[load]\nparallel = 0\n").into_bytes().into())
        .send()
        .await
        .unwrap();
    let bad = work.godwit(&["check", &format!("s3://{b}/conf/bad.toml")], &env);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains(&format!("s3://{b}/conf/bad.toml:"))
            && text(&bad).contains("load.parallel"),
        "{}",
        text(&bad)
    );
    let missing = work.godwit(&["run", &format!("s3://{b}/conf/none.toml")], &env);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
}

/// The owner-checking proxy of `tests/fixtures/owner_proxy.py` in front of moto; killed on drop.
struct OwnerProxy {
    child: std::process::Child,
    url: String,
}

impl Drop for OwnerProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn owner_proxy(owner: &str) -> OwnerProxy {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/owner_proxy.py");
    let proxy = OwnerProxy {
        child: std::process::Command::new("python3")
            .args([script, &port.to_string(), &endpoint(), owner])
            .spawn()
            .unwrap(),
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return proxy;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the owner proxy did not start");
}

async fn proxy_stats(proxy: &OwnerProxy) -> serde_json::Value {
    let text = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import urllib.request; print(urllib.request.urlopen('{}/__proxy/stats').read().decode())",
                proxy.url
            ),
        ])
        .output()
        .unwrap();
    serde_json::from_slice(&text.stdout).unwrap()
}

#[tokio::test]
async fn expected_bucket_owner_is_sent_on_every_request_and_a_wrong_one_is_refused() {
    // moto ignores x-amz-expected-bucket-owner; a proxy in front of it answers as S3 does.
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_owner").await;
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
        .await
        .unwrap();
    let client = s3_client().await;
    let b = bucket(&client, "owned").await;
    let proxy = owner_proxy("123456789012").await;
    let with_owner = |owner: &str| {
        s3_pipeline(
            &pg.url("godwit_s3_owner"),
            &b,
            r#"["public.t"]"#,
            &format!("expected_bucket_owner = \"{owner}\""),
            "",
        )
        .replace(
            &format!("endpoint = \"{}\"", endpoint()),
            &format!("endpoint = \"{}\"", proxy.url),
        )
    };

    let work = Work::new();
    let path = work.pipeline(&with_owner("123456789012"));
    assert_ok(&work.godwit(&["check", path.to_str().unwrap()], &[]));
    assert_ok(&work.godwit(&["run", path.to_str().unwrap()], &[]));
    let stats = proxy_stats(&proxy).await;
    assert!(stats["requests"].as_u64().unwrap() >= 4, "{stats}");
    assert_eq!(
        stats["without_owner"], 0,
        "a request went without the owner: {stats}"
    );
    let all = objects(&client, &b, "lake/public/").await;
    assert_eq!(rows(&table_batches(&all, "lake", "t")), 2);

    // Someone else's bucket: refused before anything is written.
    let b2 = bucket(&client, "not-mine").await;
    let work = Work::new();
    let path = work.pipeline(
        &with_owner("999999999999").replace(&format!("s3://{b}/"), &format!("s3://{b2}/")),
    );
    let out = work.godwit(&["run", path.to_str().unwrap()], &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("AccessDenied"), "{t}");
    // One sentence that says which permission on what, and suspects the owner.
    assert!(!t.contains("ServiceError") && !t.contains("headers"), "{t}");
    assert!(
        t.contains(&format!(
            "grant s3:PutObject on arn:aws:s3:::{b2}/lake/_godwit/state/lease"
        )) && t.contains("belongs to account 999999999999 (target.expected_bucket_owner)"),
        "{t}"
    );
    assert!(
        objects(&client, &b2, "").await.is_empty(),
        "something was written"
    );
    let check = work.godwit(&["check", path.to_str().unwrap()], &[]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
}

/// Every open multipart upload of a bucket, by key.
async fn open_uploads(client: &Client, bucket: &str) -> Vec<(String, String)> {
    let listed = client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let mut out: Vec<_> = listed
        .uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap().to_string(),
                u.upload_id().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn clean_up_aborts_only_the_uploads_of_this_pipelines_tables() {
    let pg = pg();
    let db = pg.fresh_db("godwit_s3_nested").await;
    db.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, label text);
         INSERT INTO a SELECT i, 'a' || i FROM generate_series(1, 100) i;",
    )
    .await
    .unwrap();
    let client = s3_client().await;
    let b = bucket(&client, "nested-prefixes").await;
    for (key, id) in open_uploads(&client, &b).await {
        client
            .abort_multipart_upload()
            .bucket(&b)
            .key(key)
            .upload_id(id)
            .send()
            .await
            .unwrap();
    }
    let start = |key: &'static str| {
        let client = client.clone();
        let b = b.clone();
        async move {
            client
                .create_multipart_upload()
                .bucket(&b)
                .key(key)
                .send()
                .await
                .unwrap();
            key.to_string()
        }
    };
    // Other pipelines' unfinished uploads: one whose prefix is `nested`, one whose prefix is
    // A's table folder, one sharing A's (empty) prefix with its own state, table public.a_archive.
    let mut others = vec![
        start("nested/public/a/LOAD00000001.parquet").await,
        start("public/a/public/b/LOAD00000001.parquet").await,
        start("public/a/public/b/2026/01/02/20260102-000000000-0000000000000001-0000000000000002.parquet").await,
        start("public/a_archive/LOAD00000001.parquet").await,
    ];
    // Pipeline A's own, in its table folder and in a date folder of it.
    start("public/a/LOAD00000002.parquet").await;
    start("public/a/2026/01/02/20260102-000000000-0000000000000001-0000000000000002.parquet").await;

    // Pipeline A: the whole bucket (empty prefix), table public.a.
    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        r#"name = "nested-a"
mode = "full-load"
[source]
url = "{}"
[tables]
include = ["public.a"]
[target]
url = "s3://{b}"
endpoint = "{}"
"#,
        pg.url("godwit_s3_nested"),
        endpoint()
    ));
    let run = assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    assert!(run.contains("removed 2 incomplete objects"), "{run}");
    let mut left: Vec<String> = open_uploads(&client, &b)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    left.sort();
    others.sort();
    assert_eq!(left, others);

    let all = objects(&client, &b, "public/a/").await;
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(all["public/a/LOAD00000001.parquet"].clone())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
    let mut got: Vec<(i32, String)> = Vec::new();
    for batch in &batches {
        use arrow::array::AsArray;
        let ids = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let labels = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            got.push((ids.value(i), labels.value(i).to_string()));
        }
    }
    got.sort();
    let want: Vec<(i32, String)> = db
        .query("SELECT id, label FROM a ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, want);
}
