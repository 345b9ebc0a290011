//! The S3-compatible backend, on `object_store`.
//!
//! Streams that yatai receives itself are written with a multipart upload
//! whose part size is chosen from the announced length, so that any object
//! up to S3's limit fits in its 10,000 parts while memory stays bounded by
//! two parts in flight. Presigned URLs (single PUT, GET and multipart parts)
//! let clients move bytes to and from the bucket directly.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::{BlobError, Meter, Reader, WriteLimits, Written};

/// Smallest part yatai writes (S3's minimum is 5 MiB).
const MIN_PART: u64 = 16 << 20;
/// S3 allows at most this many parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Parts uploaded concurrently while streaming.
const PARTS_IN_FLIGHT: usize = 2;
/// Part size when the length is unknown: allows objects up to 160 GiB.
const DEFAULT_PART: u64 = MIN_PART;

/// Where and how to reach the bucket.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket (from `s3://bucket/prefix`).
    pub prefix: String,
    /// E.g. `http://127.0.0.1:9000`; empty for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`.
    pub path_style: bool,
}

#[derive(Clone)]
pub struct S3Blobs {
    store: Arc<AmazonS3>,
    prefix: String,
    description: String,
}

/// Part size for an object of `len` bytes: at least 16 MiB, and large enough
/// that the object fits in S3's 10,000 parts (rounded up to a whole MiB).
pub fn part_size_for(len: Option<u64>) -> u64 {
    match len {
        None => DEFAULT_PART,
        Some(len) => {
            let needed = len.div_ceil(MAX_PARTS);
            let mib = 1u64 << 20;
            needed.div_ceil(mib).saturating_mul(mib).max(MIN_PART)
        }
    }
}

impl S3Blobs {
    pub fn new(c: &S3Config) -> Result<Self, BlobError> {
        // A store that stops answering fails a request within about a minute (each attempt
        // times out after 30 s; retries stop 20 s after the first), rather than object_store's
        // 3 minutes per request — which a multipart upload pays once per part.
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: std::time::Duration::from_secs(20),
            ..Default::default()
        };
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_retry(retry)
            .with_virtual_hosted_style_request(!c.path_style);
        if let Some(endpoint) = &c.endpoint {
            b = b.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(k) = &c.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &c.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let store = b.build().map_err(|e| BlobError::Storage(format!("S3 configuration: {e}")))?;
        let prefix = c.prefix.trim_matches('/').to_owned();
        let description = format!("s3://{}/{} at {}", c.bucket, prefix, c.endpoint.as_deref().unwrap_or("AWS"));
        Ok(S3Blobs { store: Arc::new(store), prefix, description })
    }

    pub fn describe(&self) -> String {
        self.description.clone()
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() { Path::from(key) } else { Path::from(format!("{}/{key}", self.prefix)) }
    }

    fn key_of(&self, path: &Path) -> String {
        let s = path.as_ref();
        match s.strip_prefix(&format!("{}/", self.prefix)) {
            Some(rest) if !self.prefix.is_empty() => rest.to_owned(),
            _ => s.to_owned(),
        }
    }

    pub async fn write<S, E>(&self, key: &str, mut body: S, limits: WriteLimits) -> Result<Written, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut meter = Meter::new(limits);
        meter.check_start()?;
        let path = self.path(key);
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size_for(limits.expected_len) as usize);
        let mut hasher = Sha256::new();
        let outcome: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| meter.interrupted(e))?;
                meter.add(chunk.len())?;
                hasher.update(&chunk);
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.put(chunk);
            }
            meter.finish()
        }
        .await;
        match outcome {
            Ok(()) => {
                writer.finish().await?;
                Ok(Written { size: meter.received, sha256: hex::encode(hasher.finalize()) })
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%key, error = %abort, "could not abort the multipart upload of a failed write");
                }
                Err(e)
            }
        }
    }

    pub async fn open(&self, key: &str) -> Result<Reader, BlobError> {
        let got = self.store.get(&self.path(key)).await?;
        let size = got.meta.size;
        let stream = got.into_stream().map_err(BlobError::from);
        Ok(Reader { size, stream: Box::pin(stream) })
    }

    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Duration)>, BlobError> {
        let now = chrono_now();
        let objects: Vec<_> = self.store.list(Some(&self.path(prefix.trim_end_matches('/')))).try_collect().await?;
        Ok(objects
            .into_iter()
            .map(|m| {
                let age = (now - m.last_modified.timestamp()).max(0) as u64;
                (self.key_of(&m.location), Duration::from_secs(age))
            })
            .collect())
    }

    pub async fn presign(
        &self,
        method: http::Method,
        key: &str,
        ttl: Duration,
        query: &[(&str, &str)],
    ) -> Result<url::Url, BlobError> {
        let options = SignedUrlOptions::default().with_query(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Ok(self.store.signed_url_opts(method, &self.path(key), ttl, &options).await?)
    }

    /// A server-side copy to a fresh key (yatai never copies onto an existing
    /// object: the destination is a new uid).
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), BlobError> {
        Ok(self.store.copy(&self.path(from), &self.path(to)).await?)
    }

    pub async fn create_multipart(&self, key: &str) -> Result<String, BlobError> {
        Ok(self.store.create_multipart(&self.path(key)).await?)
    }

    pub async fn complete_multipart(&self, key: &str, upload_id: &str, etags: Vec<String>) -> Result<(), BlobError> {
        let parts = etags.into_iter().map(|content_id| PartId { content_id }).collect();
        self.store.complete_multipart(&self.path(key), &upload_id.to_owned(), parts).await?;
        Ok(())
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), BlobError> {
        match self.store.abort_multipart(&self.path(key), &upload_id.to_owned()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_any_object_in_ten_thousand() {
        assert_eq!(part_size_for(None), 16 << 20);
        assert_eq!(part_size_for(Some(1)), 16 << 20);
        for len in [1u64 << 30, 100 << 30, 5 << 40] {
            let part = part_size_for(Some(len));
            assert!(len.div_ceil(part) <= 10_000, "{len} in parts of {part}");
            assert_eq!(part % (1 << 20), 0);
        }
    }
}
