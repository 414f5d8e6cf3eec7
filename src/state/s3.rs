//! State under an S3 prefix. The lease is an object written with `If-None-Match: *` (only one
//! run can create it) and renewed with `If-Match` on its ETag while the run lives; it expires
//! when a run dies without releasing it, and a holder on this host whose process is gone is
//! taken over at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::{StateError, TaskRecord, describe_holder, holder_json};
use crate::sink::files::s3::{PutError, S3Store};

/// A lease not renewed for this long is free.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a held lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(15);

/// State objects under one prefix of a bucket.
pub struct S3State {
    store: S3Store,
}

/// A held S3 lease; renewed in the background until released.
pub struct S3Lease {
    store: S3Store,
    etag: Arc<Mutex<String>>,
    renew: JoinHandle<()>,
}

fn io(store: &S3Store, e: std::io::Error) -> StateError {
    StateError::Io {
        path: store_desc(store),
        source: e,
    }
}

fn store_desc(store: &S3Store) -> String {
    let s = store.settings();
    format!("s3://{}/{}", s.bucket, s.prefix)
}

fn expires_at() -> i64 {
    chrono::Utc::now().timestamp() + LEASE_TTL.as_secs() as i64
}

impl S3State {
    pub fn new(store: S3Store) -> S3State {
        S3State { store }
    }

    pub fn describe(&self) -> String {
        store_desc(&self.store)
    }

    pub async fn acquire_lease(&self, pipeline: &str) -> Result<S3Lease, StateError> {
        let body = || holder_json(Some(expires_at())).to_string().into_bytes();
        let etag = match self.store.put("lease", body(), true, None).await {
            Ok(etag) => etag,
            Err(PutError::Other(e)) => return Err(io(&self.store, e)),
            Err(PutError::Precondition) => {
                let current = self
                    .store
                    .get_with_etag("lease")
                    .await
                    .map_err(|e| io(&self.store, e))?;
                let Some((text, old_etag)) = current else {
                    // Released in between: try once more.
                    return match self.store.put("lease", body(), true, None).await {
                        Ok(etag) => Ok(self.hold(etag)),
                        Err(_) => Err(self.held(pipeline, "another process".into())),
                    };
                };
                let text = String::from_utf8_lossy(&text).to_string();
                if !is_stale(&text) {
                    return Err(self.held(pipeline, describe_holder(&text)));
                }
                tracing::warn!(holder = %describe_holder(&text), "taking over a stale lease");
                match self
                    .store
                    .put("lease", body(), false, Some(&old_etag))
                    .await
                {
                    Ok(etag) => etag,
                    Err(_) => return Err(self.held(pipeline, describe_holder(&text))),
                }
            }
        };
        Ok(self.hold(etag))
    }

    fn held(&self, pipeline: &str, holder: String) -> StateError {
        StateError::LeaseHeld {
            pipeline: pipeline.to_string(),
            path: format!("{}/lease", self.describe()),
            holder,
        }
    }

    fn hold(&self, etag: String) -> S3Lease {
        let etag = Arc::new(Mutex::new(etag));
        let store = self.store.clone();
        let shared = etag.clone();
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let mut current = shared.lock().await;
                let body = holder_json(Some(expires_at())).to_string().into_bytes();
                match store.put("lease", body, false, Some(&current)).await {
                    Ok(new) => *current = new,
                    Err(e) => tracing::error!("renewing the lease failed: {e}"),
                }
            }
        });
        S3Lease {
            store: self.store.clone(),
            etag,
            renew,
        }
    }

    pub async fn lease_holder(&self) -> Option<String> {
        let (text, _) = self.store.get_with_etag("lease").await.ok()??;
        let text = String::from_utf8_lossy(&text).to_string();
        (!is_stale(&text)).then(|| describe_holder(&text))
    }

    pub async fn load(&self) -> Result<Option<TaskRecord>, StateError> {
        let Some((bytes, _)) = self
            .store
            .get_with_etag("task.json")
            .await
            .map_err(|e| io(&self.store, e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt {
                path: format!("{}/task.json", self.describe()),
                source,
            })
    }

    /// Records a reload request for `table` (an object of its own, so a running run's record
    /// saves cannot overwrite it).
    pub async fn request_reload(&self, table: &str) -> Result<(), StateError> {
        let key = format!("reload/{}", super::request_name(table));
        self.store
            .put(&key, table.as_bytes().to_vec(), false, None)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                PutError::Other(e) => io(&self.store, e),
                PutError::Precondition => io(&self.store, std::io::Error::other("precondition")),
            })
    }

    /// The tables with a pending reload request.
    pub async fn reload_requests(&self) -> Result<Vec<String>, StateError> {
        use crate::sink::files::ObjectStore;
        let mut out = Vec::new();
        for o in self
            .store
            .list("reload/")
            .await
            .map_err(|e| io(&self.store, e))?
        {
            let body = self
                .store
                .get(&o.key)
                .await
                .map_err(|e| io(&self.store, e))?;
            out.push(String::from_utf8_lossy(&body).into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Removes a reload request once it is done.
    pub async fn clear_reload(&self, table: &str) -> Result<(), StateError> {
        use crate::sink::files::ObjectStore;
        self.store
            .delete(&format!("reload/{}", super::request_name(table)))
            .await
            .map_err(|e| io(&self.store, e))
    }

    /// Removes the stored record and requests (`godwit drop`).
    pub async fn remove(&self) -> Result<(), StateError> {
        use crate::sink::files::ObjectStore;
        for table in self.reload_requests().await.unwrap_or_default() {
            let _ = self.clear_reload(&table).await;
        }
        self.store
            .delete("task.json")
            .await
            .map_err(|e| io(&self.store, e))
    }

    pub async fn save(&self, record: &TaskRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        self.store
            .put("task.json", bytes, false, None)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                PutError::Other(e) => io(&self.store, e),
                PutError::Precondition => io(
                    &self.store,
                    std::io::Error::other("the state object changed under this run"),
                ),
            })
    }
}

impl S3Lease {
    /// Stops renewing and removes the lease object (only if it is still ours).
    pub async fn release(self) {
        self.renew.abort();
        let etag = self.etag.lock().await.clone();
        // Overwrite with an expired holder first (conditional), then delete: a lease taken
        // over by another run in between is left alone.
        let body = serde_json::json!({"released": true, "expires_at": 0})
            .to_string()
            .into_bytes();
        if self
            .store
            .put("lease", body, false, Some(&etag))
            .await
            .is_ok()
        {
            use crate::sink::files::ObjectStore;
            let _ = self.store.delete("lease").await;
        }
    }
}

impl Drop for S3Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// A lease is stale when it expired, was released, or names a process of this host that is
/// gone.
fn is_stale(text: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
        return true;
    };
    if v["released"] == true {
        return true;
    }
    if v["expires_at"].as_i64().unwrap_or(0) < chrono::Utc::now().timestamp() {
        return true;
    }
    let this_host = gethostname::gethostname().to_string_lossy().to_string();
    if v["host"].as_str() == Some(this_host.as_str())
        && let Some(pid) = v["pid"].as_u64()
    {
        return !std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    false
}
