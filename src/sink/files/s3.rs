//! Amazon S3 (and S3-compatible stores) as an object store, through aws-sdk-s3.
//!
//! Files are streamed as multipart uploads while they are written: parts of `PART_SIZE` go up
//! in the background (at most `MAX_IN_FLIGHT` at once), so memory stays bounded whatever the
//! file size. An object appears only when its upload completes; a failed or abandoned upload
//! is aborted. Every request carries the configured encryption and `expected_bucket_owner`.

use crate::batch::budget::{self, Reservation};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::layout;
use super::s3_error::{Call, Place, sdk_error};
use super::{ObjectInfo, ObjectStore, ObjectWriter};

/// Size of one uploaded part (S3's minimum is 5 MiB, except for the last part).
pub const PART_SIZE: usize = 8 << 20;
/// Parts uploading at once per object.
const MAX_IN_FLIGHT: usize = 2;

/// Server-side encryption requested on every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encryption {
    None,
    Aes256,
    Kms { key_id: Option<String> },
}

/// How to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// S3-compatible endpoint; path-style addressing is used with it.
    pub endpoint: Option<String>,
    pub encryption: Encryption,
    pub expected_bucket_owner: Option<String>,
    /// The pipeline setting that names the bucket (`target.url`, `state.url`), for advice.
    pub bucket_setting: String,
}

/// Builds an S3 client from the standard AWS credential chain and region settings.
pub async fn client(endpoint: Option<&str>) -> Client {
    use aws_smithy_http_client::{Builder, tls};
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    let conf = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&conf);
    if conf.region().is_none() {
        builder = builder.region(aws_sdk_s3::config::Region::new("us-east-1"));
    }
    // An explicit endpoint (or AWS_ENDPOINT_URL) means an S3-compatible store: path-style.
    if endpoint.is_some() || conf.endpoint_url().is_some() {
        builder = builder.force_path_style(true);
    }
    Client::from_conf(builder.build())
}

struct Inner {
    client: Client,
    settings: S3Settings,
    place: Place,
}

/// A bucket and prefix as an object store.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

impl S3Store {
    pub async fn new(settings: S3Settings) -> S3Store {
        let client = client(settings.endpoint.as_deref()).await;
        S3Store::with_client(client, settings)
    }

    pub fn with_client(client: Client, settings: S3Settings) -> S3Store {
        let mut place = Place::new(
            &client,
            &settings.bucket,
            &settings.bucket_setting,
            settings.endpoint.as_deref(),
            "target.endpoint",
        );
        place.owner = settings.expected_bucket_owner.clone();
        S3Store {
            inner: Arc::new(Inner {
                client,
                settings,
                place,
            }),
        }
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn settings(&self) -> &S3Settings {
        &self.inner.settings
    }

    fn full_key(&self, key: &str) -> String {
        self.inner.full_key(key)
    }

    /// Checks that the bucket answers (and belongs to the expected owner).
    pub async fn check_bucket(&self) -> io::Result<()> {
        let s = &self.inner.settings;
        self.inner
            .client
            .head_bucket()
            .bucket(&s.bucket)
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.inner.error("checking", "s3:ListBucket", "", &e))
    }

    /// Writes a small object in one request (conditional when `if_none_match`/`if_match`);
    /// returns its ETag.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        if_none_match: bool,
        if_match: Option<&str>,
    ) -> Result<String, PutError> {
        let s = &self.inner.settings;
        let mut req = self
            .inner
            .client
            .put_object()
            .bucket(&s.bucket)
            .key(self.full_key(key))
            .body(ByteStream::from(body))
            .set_expected_bucket_owner(s.expected_bucket_owner.clone());
        req = self.inner.encrypt_put(req);
        if if_none_match {
            req = req.if_none_match("*");
        }
        if let Some(etag) = if_match {
            req = req.if_match(etag);
        }
        match req.send().await {
            Ok(out) => Ok(out.e_tag().unwrap_or_default().to_string()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(412) | Some(409)) {
                    Err(PutError::Precondition)
                } else {
                    Err(PutError::Other(self.inner.error(
                        "writing",
                        "s3:PutObject",
                        &self.full_key(key),
                        &e,
                    )))
                }
            }
        }
    }

    /// Reads an object with its ETag; `None` when it does not exist.
    pub async fn get_with_etag(&self, key: &str) -> io::Result<Option<(Bytes, String)>> {
        let s = &self.inner.settings;
        let res = self
            .inner
            .client
            .get_object()
            .bucket(&s.bucket)
            .key(self.full_key(key))
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .send()
            .await;
        match res {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_string();
                let data = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| io::Error::other(format!("reading {key}: {e}")))?;
                Ok(Some((data.into_bytes(), etag)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self
                .inner
                .error("reading", "s3:GetObject", &self.full_key(key), &e)),
        }
    }
}

/// A key as `x-amz-copy-source` wants it: percent-encoded, `/` kept.
fn copy_source_key(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Why a conditional write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the object changed or exists (precondition failed)")]
    Precondition,
    #[error("{0}")]
    Other(io::Error),
}

impl Inner {
    /// The sentence for a failed request on the full key `key` (see `s3_error`).
    fn error<E>(
        &self,
        doing: &str,
        action: &str,
        key: &str,
        e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> io::Error
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        sdk_error(&self.place, Call { doing, action, key }, e)
    }

    fn full_key(&self, key: &str) -> String {
        if self.settings.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.settings.prefix)
        }
    }

    fn encrypt_put(
        &self,
        req: aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let (sse, key) = self.sse();
        req.set_server_side_encryption(sse).set_ssekms_key_id(key)
    }

    /// The `x-amz-server-side-encryption` value and KMS key id every object is written with.
    fn sse(&self) -> (Option<ServerSideEncryption>, Option<String>) {
        match &self.settings.encryption {
            Encryption::None => (None, None),
            Encryption::Aes256 => (Some(ServerSideEncryption::Aes256), None),
            Encryption::Kms { key_id } => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
        }
    }

    async fn start_upload(&self, key: &str) -> io::Result<String> {
        let s = &self.settings;
        let (sse, kms_key) = self.sse();
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(key)
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await
            .map_err(|e| self.error("starting the upload of", "s3:PutObject", key, &e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| io::Error::other(format!("no upload id for {key}")))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Vec<u8>,
    ) -> io::Result<CompletedPart> {
        let s = &self.settings;
        let out = self
            .client
            .upload_part()
            .bucket(&s.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .send()
            .await
            .map_err(|e| {
                let doing = format!("uploading part {number} of");
                self.error(&doing, "s3:PutObject", key, &e)
            })?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }

    /// The open multipart uploads (key, upload id) of the table folder `prefix` (ending in
    /// `/`, relative to the store's prefix) and of its date folders, every page of them.
    async fn open_uploads(&self, prefix: &str) -> io::Result<Vec<(String, String)>> {
        let s = &self.settings;
        let full = self.full_key(prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&s.bucket)
                .prefix(&full)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .set_expected_bucket_owner(s.expected_bucket_owner.clone())
                .send()
                .await
                .map_err(|e| {
                    self.error(
                        "listing the open uploads under",
                        "s3:ListBucketMultipartUploads",
                        &full,
                        &e,
                    )
                })?;
            for u in page.uploads() {
                if let (Some(key), Some(id)) = (u.key(), u.upload_id())
                    && key
                        .strip_prefix(full.as_str())
                        .is_some_and(layout::in_table_folder)
                {
                    out.push((key.to_string(), id.to_string()));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(out);
            }
        }
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        let s = &self.settings;
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&s.bucket)
            .key(key)
            .upload_id(upload_id)
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .send()
            .await;
        if let Err(e) = res {
            let e = self.error("aborting the upload of", "s3:AbortMultipartUpload", key, &e);
            tracing::warn!("{e}");
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(S3Writer {
            inner: self.inner.clone(),
            handle: Handle::try_current()
                .map_err(|e| io::Error::other(format!("no async runtime for S3: {e}")))?,
            key: self.full_key(key),
            buf: Vec::new(),
            buf_held: budget::global().take(0),
            upload_id: None,
            next_part: 1,
            parts: Vec::new(),
            in_flight: VecDeque::new(),
            written: 0,
            done: false,
        }))
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<ObjectInfo>> {
        let s = &self.inner.settings;
        let full = self.full_key(prefix);
        let strip = if s.prefix.is_empty() {
            0
        } else {
            s.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut pages = self
            .inner
            .client
            .list_objects_v2()
            .bucket(&s.bucket)
            .prefix(&full)
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.inner.error("listing", "s3:ListBucket", &full, &e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectInfo {
                        key: k[strip.min(k.len())..].to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str) -> io::Result<Bytes> {
        self.get_with_etag(key)
            .await?
            .map(|(b, _)| b)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{key}: no such object"))
            })
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let s = &self.inner.settings;
        self.inner
            .client
            .delete_object()
            .bucket(&s.bucket)
            .key(self.full_key(key))
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                self.inner
                    .error("deleting", "s3:DeleteObject", &self.full_key(key), &e)
            })
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        // A server-side copy (one request, objects up to 5 GiB), then the source goes.
        let s = &self.inner.settings;
        let (sse, kms_key) = self.inner.sse();
        let source = format!("{}/{}", s.bucket, copy_source_key(&self.full_key(from)));
        let res = self
            .inner
            .client
            .copy_object()
            .bucket(&s.bucket)
            .key(self.full_key(to))
            .copy_source(source)
            .set_expected_bucket_owner(s.expected_bucket_owner.clone())
            .set_expected_source_bucket_owner(s.expected_bucket_owner.clone())
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .send()
            .await;
        match res {
            Ok(_) => self.delete(from).await,
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Err(
                io::Error::new(io::ErrorKind::NotFound, format!("{from}: no such object")),
            ),
            Err(e) => {
                let doing = format!("copying {} to", self.full_key(from));
                let action = "s3:GetObject and s3:PutObject";
                Err(self.inner.error(&doing, action, &self.full_key(to), &e))
            }
        }
    }

    fn describe(&self) -> String {
        let s = &self.inner.settings;
        if s.prefix.is_empty() {
            format!("s3://{}", s.bucket)
        } else {
            format!("s3://{}/{}", s.bucket, s.prefix)
        }
    }

    async fn cleanup_incomplete(&self, prefixes: &[String]) -> io::Result<usize> {
        let mut n = 0;
        for prefix in prefixes {
            for (key, id) in self.inner.open_uploads(prefix).await? {
                self.inner.abort(&key, &id).await;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn probe(&self) -> io::Result<String> {
        self.check_bucket().await?;
        let key = format!("_godwit/.check-{}", std::process::id());
        self.put(&key, Vec::new(), false, None)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.delete(&key).await?;
        let s = &self.inner.settings;
        Ok(format!(
            "{} is writable with encryption {:?}{}",
            self.describe(),
            s.encryption,
            s.expected_bucket_owner
                .as_deref()
                .map(|o| format!(", owner {o} confirmed"))
                .unwrap_or_default()
        ))
    }
}

/// An object being uploaded. Used from a blocking thread: it waits on the runtime.
struct S3Writer {
    inner: Arc<Inner>,
    handle: Handle,
    key: String,
    buf: Vec<u8>,
    /// `buf`, held against the memory budget; a part's bytes go back once it is uploaded.
    buf_held: Reservation,
    upload_id: Option<String>,
    next_part: i32,
    parts: Vec<CompletedPart>,
    in_flight: VecDeque<JoinHandle<io::Result<CompletedPart>>>,
    written: u64,
    done: bool,
}

impl S3Writer {
    /// Sends the buffer as the next part, waiting while too many parts are in flight.
    fn send_part(&mut self) -> io::Result<()> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let inner = self.inner.clone();
                let key = self.key.clone();
                let id = self
                    .handle
                    .block_on(async move { inner.start_upload(&key).await })?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        let body = std::mem::take(&mut self.buf);
        let held = std::mem::replace(&mut self.buf_held, budget::global().take(0));
        let number = self.next_part;
        self.next_part += 1;
        let inner = self.inner.clone();
        let key = self.key.clone();
        self.in_flight.push_back(self.handle.spawn(async move {
            let part = inner.upload_part(&key, &upload_id, number, body).await;
            drop(held);
            part
        }));
        // Over the budget, the next part waits for the earlier ones to be uploaded.
        while self.in_flight.len() > MAX_IN_FLIGHT
            || (!self.in_flight.is_empty() && budget::global().over())
        {
            if self.in_flight.len() <= MAX_IN_FLIGHT {
                budget::global().pressed("writing waits for part uploads");
            }
            self.wait_oldest()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(h) = self.in_flight.pop_front() {
            let part = self
                .handle
                .block_on(h)
                .map_err(|e| io::Error::other(format!("upload task: {e}")))??;
            self.parts.push(part);
        }
        Ok(())
    }

    fn finish_upload(&mut self) -> io::Result<u64> {
        let Some(upload_id) = self.upload_id.clone() else {
            // Small object: one PUT, atomic by nature.
            let body = std::mem::take(&mut self.buf);
            let size = self.written;
            let inner = self.inner.clone();
            let key = self.key.clone();
            self.handle.block_on(async move {
                let s = &inner.settings;
                let req = inner
                    .client
                    .put_object()
                    .bucket(&s.bucket)
                    .key(&key)
                    .body(ByteStream::from(body))
                    .set_expected_bucket_owner(s.expected_bucket_owner.clone());
                inner
                    .encrypt_put(req)
                    .send()
                    .await
                    .map_err(|e| inner.error("writing", "s3:PutObject", &key, &e))
            })?;
            return Ok(size);
        };
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        let inner = self.inner.clone();
        let key = self.key.clone();
        self.handle.block_on(async move {
            let s = &inner.settings;
            inner
                .client
                .complete_multipart_upload()
                .bucket(&s.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .set_expected_bucket_owner(s.expected_bucket_owner.clone())
                .send()
                .await
                .map_err(|e| inner.error("completing the upload of", "s3:PutObject", &key, &e))
        })?;
        Ok(self.written)
    }

    fn abort_upload(&mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        if let Some(id) = self.upload_id.take() {
            let inner = self.inner.clone();
            let key = self.key.clone();
            self.handle
                .block_on(async move { inner.abort(&key, &id).await });
        }
    }
}

impl Write for S3Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PART_SIZE - self.buf.len();
        let n = room.min(data.len());
        if self.buf.capacity() == 0 {
            self.buf.reserve(PART_SIZE.min(data.len().max(64 << 10)));
        }
        self.buf.extend_from_slice(&data[..n]);
        self.buf_held.set(self.buf.capacity() as u64);
        self.written += n as u64;
        if self.buf.len() == PART_SIZE {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for S3Writer {
    fn complete(mut self: Box<Self>) -> io::Result<u64> {
        match self.finish_upload() {
            Ok(size) => {
                self.done = true;
                Ok(size)
            }
            Err(e) => {
                self.abort_upload();
                self.done = true;
                Err(e)
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        self.abort_upload();
        self.done = true;
    }
}

impl Drop for S3Writer {
    /// An upload neither completed nor aborted (a panic, a dropped writer) is aborted in
    /// the background, so no incomplete upload is left behind.
    fn drop(&mut self) {
        if !self.done
            && let Some(id) = self.upload_id.take()
        {
            let inner = self.inner.clone();
            let key = std::mem::take(&mut self.key);
            self.handle
                .spawn(async move { inner.abort(&key, &id).await });
        }
    }
}
