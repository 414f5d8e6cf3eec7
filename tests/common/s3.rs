//! S3 on moto (started by `scripts/services.sh`) for the tests: the endpoint, a client, empty
//! buckets, and objects read back or copied into a folder laid out like a local target.

use std::collections::HashMap;
use std::path::Path;

use aws_sdk_s3::Client;
use bytes::Bytes;

/// moto's endpoint.
pub fn endpoint() -> String {
    std::env::var("GODWIT_S3_ENDPOINT").expect("GODWIT_S3_ENDPOINT from scripts/services.sh")
}

/// A client of moto, as godwit builds it.
pub async fn s3_client() -> Client {
    godwit::sink::files::s3::client(Some(&endpoint())).await
}

/// A new, empty bucket.
pub async fn bucket(client: &Client, name: &str) -> String {
    let _ = client.create_bucket().bucket(name).send().await;
    let listed = client.list_objects_v2().bucket(name).send().await.unwrap();
    for o in listed.contents() {
        client
            .delete_object()
            .bucket(name)
            .key(o.key().unwrap())
            .send()
            .await
            .unwrap();
    }
    name.to_string()
}

/// One object's bytes.
pub async fn get(client: &Client, bucket: &str, key: &str) -> Bytes {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
}

/// Every object under `prefix`: key → bytes.
pub async fn objects(client: &Client, bucket: &str, prefix: &str) -> HashMap<String, Bytes> {
    let listed = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    assert!(!listed.is_truncated().unwrap_or(false));
    let mut out = HashMap::new();
    for o in listed.contents() {
        let key = o.key().unwrap().to_string();
        out.insert(key.clone(), get(client, bucket, &key).await);
    }
    out
}

/// Copies every object under `prefix/` into `dir`, keeping the key's path below the prefix
/// (the layout of a local target); returns the keys.
pub async fn download(client: &Client, bucket: &str, prefix: &str, dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    for (key, body) in objects(client, bucket, &format!("{prefix}/")).await {
        let path = dir.join(&key[prefix.len() + 1..]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &body).unwrap();
        keys.push(key);
    }
    keys.sort();
    keys
}
