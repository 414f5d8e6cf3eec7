//! State under an S3 prefix, and the S3 lease as a fence.
//!
//! The lease is an object created with `If-None-Match: *` (only one run can create it) and
//! renewed with `If-Match` on its ETag every TTL/4. It is free only once it expired or was
//! released — never because its holder looks dead from here (containers reuse host names and
//! pids). The run's [`Fence`] trips at the moment the last successful renewal was sent + TTL −
//! a safety margin (on the monotonic clock, which counts on while the process is stopped), or
//! at once when a renewal finds the lease taken. `task.json` is written conditionally on the
//! version this run last wrote (first: the one it loaded), so a second writer is noticed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::{Fence, LeaseLost, StateError, TaskRecord, describe_holder, holder_json, now_text};
use crate::sink::files::s3::{PutError, S3Store};

/// The lease's time to live in ms (60 s; tests shorten it with the hidden `--lease-ttl`).
static LEASE_TTL_MS: AtomicU64 = AtomicU64::new(60_000);

/// Sets the lease's time to live for this process (renewal every TTL/4).
pub fn set_lease_ttl(ttl: Duration) {
    LEASE_TTL_MS.store((ttl.as_millis() as u64).max(1000), Ordering::SeqCst);
}

/// The lease's timing: a lease not renewed for `ttl` is free; it is renewed every `renew`;
/// the holder stops writing `margin` before another run may take it.
#[derive(Clone, Copy)]
struct Timing {
    ttl: Duration,
    renew: Duration,
    margin: Duration,
}

fn timing() -> Timing {
    let ttl = Duration::from_millis(LEASE_TTL_MS.load(Ordering::SeqCst));
    Timing {
        ttl,
        renew: ttl / 4,
        margin: ttl / 6,
    }
}

impl Timing {
    /// The fence's deadline for a lease write sent at `sent`.
    fn deadline(&self, sent: Instant) -> Instant {
        sent + self.ttl - self.margin
    }

    /// The `expires_at` (Unix seconds) a lease written now carries.
    fn expires_at(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.ttl.as_secs().max(1) as i64
    }
}

/// `task.json` as this run last saw or wrote it.
#[derive(Debug, Clone)]
enum Version {
    /// Not read yet.
    Unknown,
    /// There was none.
    Absent,
    /// This ETag.
    ETag(String),
}

/// State objects under one prefix of a bucket.
pub struct S3State {
    store: S3Store,
    /// The fence of the lease this run holds (open until it takes one).
    fence: std::sync::Mutex<Fence>,
    version: Mutex<Version>,
    /// The bytes of the last `task.json` write whose answer never came (it may have landed).
    unanswered: Mutex<Option<Vec<u8>>>,
}

/// A held S3 lease; renewed in the background until released.
pub struct S3Lease {
    store: S3Store,
    etag: Arc<Mutex<String>>,
    fence: Fence,
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

impl S3State {
    pub fn new(store: S3Store) -> S3State {
        S3State {
            store,
            fence: std::sync::Mutex::new(Fence::open()),
            version: Mutex::new(Version::Unknown),
            unanswered: Mutex::new(None),
        }
    }

    pub fn describe(&self) -> String {
        store_desc(&self.store)
    }

    fn lease_path(&self) -> String {
        format!("{}/lease", self.describe())
    }

    pub fn fence(&self) -> Fence {
        self.fence.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the lease: creates it, or takes over one that expired or was released.
    pub async fn acquire_lease(&self, pipeline: &str) -> Result<S3Lease, StateError> {
        let t = timing();
        let since = now_text();
        let body = || {
            holder_json(&since, Some(t.expires_at()))
                .to_string()
                .into_bytes()
        };
        let sent = Instant::now();
        let (etag, sent) = match self.store.put("lease", body(), true, None).await {
            Ok(etag) => (etag, sent),
            Err(PutError::Other(e)) => return Err(io(&self.store, e)),
            Err(PutError::Precondition) => {
                let current = self
                    .store
                    .get_with_etag("lease")
                    .await
                    .map_err(|e| io(&self.store, e))?;
                let Some((text, old_etag)) = current else {
                    // Released in between: try once more.
                    let sent = Instant::now();
                    return match self.store.put("lease", body(), true, None).await {
                        Ok(etag) => Ok(self.hold(etag, sent, t, since)),
                        Err(_) => Err(self.held(pipeline, "another process".into())),
                    };
                };
                let text = String::from_utf8_lossy(&text).to_string();
                if !is_free(&text) {
                    return Err(self.held(pipeline, describe_holder(&text)));
                }
                if !text.contains("\"released\"") {
                    tracing::warn!(holder = %describe_holder(&text), "taking over an expired lease");
                }
                let sent = Instant::now();
                match self
                    .store
                    .put("lease", body(), false, Some(&old_etag))
                    .await
                {
                    Ok(etag) => (etag, sent),
                    Err(_) => return Err(self.held(pipeline, describe_holder(&text))),
                }
            }
        };
        Ok(self.hold(etag, sent, t, since))
    }

    fn held(&self, pipeline: &str, holder: String) -> StateError {
        StateError::LeaseHeld {
            pipeline: pipeline.to_string(),
            path: self.lease_path(),
            holder,
        }
    }

    /// Holds the lease written at `sent` with `etag`: its fence, and its renewal.
    fn hold(&self, etag: String, sent: Instant, t: Timing, since: String) -> S3Lease {
        let fence = Fence::until(self.lease_path(), t.deadline(sent));
        *self.fence.lock().unwrap_or_else(|e| e.into_inner()) = fence.clone();
        let etag = Arc::new(Mutex::new(etag));
        let renew = tokio::spawn(renew(
            self.store.clone(),
            etag.clone(),
            fence.clone(),
            since,
            t,
        ));
        S3Lease {
            store: self.store.clone(),
            etag,
            fence,
            renew,
        }
    }

    /// Who holds the lease now, if anyone; an error when the lease cannot be read.
    pub async fn lease_holder(&self) -> Result<Option<String>, StateError> {
        let Some((text, _)) = self
            .store
            .get_with_etag("lease")
            .await
            .map_err(|e| io(&self.store, e))?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&text).to_string();
        Ok((!is_free(&text)).then(|| describe_holder(&text)))
    }

    /// The stored record; remembers its version, which the next save is conditional on.
    pub async fn load(&self) -> Result<Option<TaskRecord>, StateError> {
        let mut version = self.version.lock().await;
        let Some((bytes, etag)) = self
            .store
            .get_with_etag("task.json")
            .await
            .map_err(|e| io(&self.store, e))?
        else {
            *version = Version::Absent;
            return Ok(None);
        };
        *version = Version::ETag(etag);
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
        self.fence().check()?;
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
        self.fence().check()?;
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
        let mut version = self.version.lock().await;
        self.fence().check()?;
        self.store
            .delete("task.json")
            .await
            .map_err(|e| io(&self.store, e))?;
        *version = Version::Absent;
        Ok(())
    }

    /// Replaces the stored record — only if it is still the version this run last loaded or
    /// wrote, and only while the lease holds. Anything else means another writer: the fence
    /// trips and the error says so.
    pub async fn save(&self, record: &TaskRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
        let mut version = self.version.lock().await;
        if matches!(*version, Version::Unknown) {
            *version = match self.store.get_with_etag("task.json").await {
                Ok(Some((_, etag))) => Version::ETag(etag),
                Ok(None) => Version::Absent,
                Err(e) => return Err(io(&self.store, e)),
            };
        }
        let fence = self.fence();
        // Once for the write, once more if the object turns out to hold a write of this run
        // whose answer was lost.
        for _ in 0..2 {
            fence.check()?;
            let (if_none_match, if_match) = match &*version {
                Version::ETag(e) => (false, Some(e.clone())),
                _ => (true, None),
            };
            let result = self
                .store
                .put(
                    "task.json",
                    bytes.clone(),
                    if_none_match,
                    if_match.as_deref(),
                )
                .await;
            match result {
                Ok(etag) => {
                    *version = Version::ETag(etag);
                    *self.unanswered.lock().await = None;
                    return Ok(());
                }
                Err(PutError::Other(e)) => {
                    // It may have landed all the same: remembered for the next save.
                    *self.unanswered.lock().await = Some(bytes);
                    return Err(io(&self.store, e));
                }
                Err(PutError::Precondition) => {
                    // A write of this run whose answer was lost (a timeout, an SDK retry that
                    // found its own first attempt applied) also changes the ETag: then the
                    // object holds exactly what this run sent.
                    let current = self.store.get_with_etag("task.json").await.ok().flatten();
                    let unanswered = self.unanswered.lock().await.take();
                    match current {
                        Some((body, etag)) if body == bytes => {
                            *version = Version::ETag(etag);
                            return Ok(());
                        }
                        Some((body, etag)) if unanswered.is_some_and(|u| u == body) => {
                            *version = Version::ETag(etag);
                            continue;
                        }
                        _ => {}
                    }
                    break;
                }
            }
        }
        let why = format!(
            "{}/task.json was changed by another writer since this run last read or wrote it",
            self.describe()
        );
        fence.trip(why.clone());
        Err(StateError::LeaseLost(LeaseLost {
            lease: self.lease_path(),
            why,
        }))
    }
}

/// Renews the lease every `t.renew` while the fence holds. A renewal that finds the lease
/// changed trips the fence at once; one that fails otherwise (S3 unreachable) is tried again
/// every second — the deadline, which only a successful renewal moves, fences the run.
async fn renew(store: S3Store, etag: Arc<Mutex<String>>, fence: Fence, since: String, t: Timing) {
    let retry = Duration::from_secs(1).min(t.renew);
    let mut wait = t.renew;
    loop {
        tokio::time::sleep(wait).await;
        if fence.check().is_err() {
            return;
        }
        let mut current = etag.lock().await;
        let body = holder_json(&since, Some(t.expires_at()))
            .to_string()
            .into_bytes();
        let sent = Instant::now();
        match store.put("lease", body, false, Some(&current)).await {
            Ok(new) => {
                *current = new;
                fence.extend(t.deadline(sent));
                wait = t.renew;
            }
            Err(PutError::Precondition) => {
                fence.trip("another run took the lease over (its renewal found it changed)".into());
                return;
            }
            Err(PutError::Other(e)) => {
                tracing::warn!("renewing the lease failed, trying again: {e}");
                wait = retry;
            }
        }
    }
}

impl S3Lease {
    /// The fence of this lease.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Stops renewing and removes the lease object (only if it is still ours).
    pub async fn release(self) {
        self.renew.abort();
        let etag = self.etag.lock().await.clone();
        // Overwrite with a released holder first (conditional), then delete: a lease taken
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

/// A lease is free once it expired or was released (or is not a lease at all). Whether its
/// holder still runs is not judged from here: only expiry or a release frees it.
fn is_free(text: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
        return true;
    };
    v["released"] == true || v["expires_at"].as_i64().unwrap_or(0) < chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_expiry_or_a_release_frees_a_lease() {
        let future = chrono::Utc::now().timestamp() + 60;
        // This host, a pid that does not exist here: still held.
        let this_host = gethostname::gethostname().to_string_lossy().to_string();
        let held = serde_json::json!({"host": this_host, "pid": u32::MAX, "run": "r", "expires_at": future});
        assert!(!is_free(&held.to_string()));
        let expired = serde_json::json!({"host": "h", "pid": 1, "expires_at": 1});
        assert!(is_free(&expired.to_string()));
        assert!(is_free(r#"{"released":true,"expires_at":0}"#));
    }

    #[test]
    fn the_deadline_comes_a_margin_before_expiry() {
        let t = Timing {
            ttl: Duration::from_secs(60),
            renew: Duration::from_secs(15),
            margin: Duration::from_secs(10),
        };
        let sent = Instant::now();
        assert_eq!(t.deadline(sent) - sent, Duration::from_secs(50));
        set_lease_ttl(Duration::from_secs(6));
        let short = timing();
        assert_eq!(short.renew, Duration::from_millis(1500));
        assert_eq!(short.margin, Duration::from_secs(1));
        set_lease_ttl(Duration::from_secs(60));
    }
}
