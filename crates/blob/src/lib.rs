//! Artifact storage: where archive bytes live.
//!
//! Two backends behind one type: a directory on local disk (the embedded
//! default) and any S3-compatible object store. Writes stream from the
//! network to storage while computing the SHA-256, never holding a whole
//! archive in memory. Keys are opaque (`blobs/<uid>`); content addressing is
//! kept by the metadata store, which maps each digest to one key.
//!
//! An object is written once: [`BlobStore::write`] never replaces what is
//! already at a key, so the bytes a recorded digest was computed from can
//! never be swapped underneath it by a later or slower writer.

pub mod archive;
mod local;
mod s3;

pub use s3::S3Config;

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The incoming body failed (client went away, connection cut).
    #[error("the upload was interrupted after {received}{} bytes: {reason}", match expected { Some(e) => format!(" of the {e} announced"), None => String::new() })]
    Interrupted { received: u64, expected: Option<u64>, reason: String },
    #[error("the upload ended after {received} bytes but {expected} were announced")]
    LengthMismatch { expected: u64, received: u64 },
    #[error("the upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no object at {0}")]
    NotFound(String),
    /// A write found an object already at its key (objects are never replaced).
    #[error("an object already exists at {0}")]
    Exists(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<std::io::Error> for BlobError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            BlobError::NotFound(e.to_string())
        } else {
            BlobError::Storage(e.to_string())
        }
    }
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => BlobError::NotFound(path),
            other => BlobError::Storage(other.to_string()),
        }
    }
}

/// What a write produced: the archive's size and SHA-256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// An object opened for reading.
pub struct Reader {
    pub size: u64,
    pub stream: ByteStream,
}

/// Limits applied to a write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteLimits {
    /// The exact length announced by the client (`Content-Length`).
    pub expected_len: Option<u64>,
    /// The largest object accepted.
    pub max_len: Option<u64>,
}

#[derive(Clone)]
pub enum BlobStore {
    Local(local::LocalBlobs),
    S3(s3::S3Blobs),
}

impl BlobStore {
    /// A directory on local disk. With `fsync`, an object is synced to disk
    /// before it becomes visible (and before its upload is reported done).
    pub fn local(root: PathBuf, fsync: bool) -> Result<Self, BlobError> {
        Ok(BlobStore::Local(local::LocalBlobs::new(root, fsync)?))
    }

    pub fn s3(config: &S3Config) -> Result<Self, BlobError> {
        Ok(BlobStore::S3(s3::S3Blobs::new(config)?))
    }

    /// A human-readable description, for the startup log.
    pub fn describe(&self) -> String {
        match self {
            BlobStore::Local(l) => format!("directory {}", l.root().display()),
            BlobStore::S3(s) => s.describe(),
        }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, BlobStore::S3(_))
    }

    /// A fresh key for a new archive.
    pub fn new_blob_key() -> String {
        format!("blobs/{}", uuid::Uuid::new_v4().simple())
    }

    /// A key for one part of a multipart upload that yatai receives itself.
    pub fn part_key(upload_uid: &str, part: u32) -> String {
        format!("staging/{upload_uid}/{part:05}")
    }

    /// Streams `body` into a new object at `key`, hashing as it goes. On any
    /// error nothing is left at `key`. An object already at `key` is never
    /// replaced: the write fails with [`BlobError::Exists`] and the existing
    /// object stays as it was. (On S3 the keys yatai writes itself are fresh
    /// and never handed out in a presigned URL, so nobody else writes them.)
    pub async fn write<S, E>(&self, key: &str, body: S, limits: WriteLimits) -> Result<Written, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        match self {
            BlobStore::Local(l) => l.write(key, body, limits, false).await,
            BlobStore::S3(s) => s.write(key, body, limits).await,
        }
    }

    /// Like [`BlobStore::write`], but replaces an object already at `key`:
    /// only for the parts of a multipart upload yatai receives itself, which a
    /// client may send again before the upload is assembled.
    pub async fn write_part<S, E>(&self, key: &str, body: S, limits: WriteLimits) -> Result<Written, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        match self {
            BlobStore::Local(l) => l.write(key, body, limits, true).await,
            BlobStore::S3(s) => s.write(key, body, limits).await,
        }
    }

    /// Copies an object to a new key (which must not exist), e.g. to take a
    /// presigned upload out of reach of its URL before it is hashed.
    pub async fn copy(&self, from: &str, to: &str) -> Result<(), BlobError> {
        match self {
            BlobStore::Local(_) => {
                let reader = self.open(from).await?;
                self.write(to, reader.stream, WriteLimits::default()).await.map(|_| ())
            }
            BlobStore::S3(s) => s.copy(from, to).await,
        }
    }

    /// Deletes the temporary files of writes that are not running any more
    /// (left by a crash) and were last written to at least `min_idle` ago;
    /// returns how many. Nothing to do on S3, whose failed writes are aborted
    /// multipart uploads.
    pub async fn sweep_partials(&self, min_idle: Duration) -> Result<usize, BlobError> {
        match self {
            BlobStore::Local(l) => l.sweep_partials(min_idle).await,
            BlobStore::S3(_) => Ok(0),
        }
    }

    /// Checks that the object at `key` is a non-empty tar archive (plain or
    /// gzip-compressed) and reads its `manifest` member (e.g. `bento.yaml`).
    /// `Ok(Err(problem))` says why the archive is not acceptable.
    pub async fn inspect_archive(
        &self,
        key: &str,
        manifest: &str,
    ) -> Result<Result<archive::ArchiveInfo, archive::ArchiveProblem>, BlobError> {
        let reader = self.open(key).await?;
        let sync = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(futures_util::StreamExt::map(
            reader.stream,
            |r| r.map_err(std::io::Error::other),
        )));
        let manifest = manifest.to_owned();
        tokio::task::spawn_blocking(move || archive::inspect(sync, &manifest))
            .await
            .map_err(|e| BlobError::Storage(format!("archive inspection: {e}")))?
    }

    pub async fn open(&self, key: &str) -> Result<Reader, BlobError> {
        match self {
            BlobStore::Local(l) => l.open(key).await,
            BlobStore::S3(s) => s.open(key).await,
        }
    }

    /// Reads an object back and computes its size and SHA-256 (for bytes that
    /// reached storage without passing through yatai).
    pub async fn hash(&self, key: &str) -> Result<Written, BlobError> {
        let reader = self.open(key).await?;
        hash_stream(reader.stream).await
    }

    /// Concatenates objects into a new one at `dest` (multipart uploads
    /// received by yatai itself).
    pub async fn concat(&self, parts: &[String], dest: &str) -> Result<Written, BlobError> {
        let mut readers = Vec::with_capacity(parts.len());
        for p in parts {
            readers.push(self.open(p).await?.stream);
        }
        let chained = futures_util::StreamExt::flatten(futures_util::stream::iter(readers));
        self.write(dest, Box::pin(chained), WriteLimits::default()).await
    }

    /// Deletes an object; deleting what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self {
            BlobStore::Local(l) => l.delete(key).await,
            BlobStore::S3(s) => s.delete(key).await,
        }
    }

    /// Keys under a prefix with their age, for the orphan sweep.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Duration)>, BlobError> {
        match self {
            BlobStore::Local(l) => l.list(prefix).await,
            BlobStore::S3(s) => s.list(prefix).await,
        }
    }

    /// A URL that lets anyone PUT the object for `ttl` (S3 only; the local
    /// backend's URLs are signed and served by yatai itself).
    pub async fn presign_put(&self, key: &str, ttl: Duration) -> Result<Option<url::Url>, BlobError> {
        match self {
            BlobStore::Local(_) => Ok(None),
            BlobStore::S3(s) => s.presign(http::Method::PUT, key, ttl, &[]).await.map(Some),
        }
    }

    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<Option<url::Url>, BlobError> {
        match self {
            BlobStore::Local(_) => Ok(None),
            BlobStore::S3(s) => s.presign(http::Method::GET, key, ttl, &[]).await.map(Some),
        }
    }

    /// Starts a multipart upload in S3; `None` for the local backend, where
    /// yatai receives the parts itself.
    pub async fn create_multipart(&self, key: &str) -> Result<Option<String>, BlobError> {
        match self {
            BlobStore::Local(_) => Ok(None),
            BlobStore::S3(s) => s.create_multipart(key).await.map(Some),
        }
    }

    pub async fn presign_part(
        &self,
        key: &str,
        upload_id: &str,
        part: u32,
        ttl: Duration,
    ) -> Result<Option<url::Url>, BlobError> {
        match self {
            BlobStore::Local(_) => Ok(None),
            BlobStore::S3(s) => {
                let part = part.to_string();
                s.presign(http::Method::PUT, key, ttl, &[("partNumber", &part), ("uploadId", upload_id)])
                    .await
                    .map(Some)
            }
        }
    }

    pub async fn complete_multipart(&self, key: &str, upload_id: &str, etags: Vec<String>) -> Result<(), BlobError> {
        match self {
            BlobStore::Local(_) => Err(BlobError::Storage("multipart is not handled by the local store".into())),
            BlobStore::S3(s) => s.complete_multipart(key, upload_id, etags).await,
        }
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), BlobError> {
        match self {
            BlobStore::Local(_) => Ok(()),
            BlobStore::S3(s) => s.abort_multipart(key, upload_id).await,
        }
    }
}

/// Hashes a stream to its size and SHA-256.
pub async fn hash_stream(mut stream: ByteStream) -> Result<Written, BlobError> {
    use futures_util::StreamExt;
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(Written { size, sha256: hex::encode(hasher.finalize()) })
}

/// Counts bytes against the announced length and the limit; shared by both
/// backends so they fail the same way.
pub(crate) struct Meter {
    limits: WriteLimits,
    pub received: u64,
}

impl Meter {
    pub fn new(limits: WriteLimits) -> Self {
        if let (Some(expected), Some(max)) = (limits.expected_len, limits.max_len) {
            // Fail before reading a byte when the announced length is too big.
            if expected > max {
                return Meter { limits, received: u64::MAX };
            }
        }
        Meter { limits, received: 0 }
    }

    pub fn check_start(&self) -> Result<(), BlobError> {
        if self.received == u64::MAX {
            return Err(BlobError::TooLarge { limit: self.limits.max_len.unwrap_or_default() });
        }
        Ok(())
    }

    pub fn add(&mut self, n: usize) -> Result<(), BlobError> {
        self.received += n as u64;
        if let Some(max) = self.limits.max_len
            && self.received > max
        {
            return Err(BlobError::TooLarge { limit: max });
        }
        if let Some(expected) = self.limits.expected_len
            && self.received > expected
        {
            return Err(BlobError::LengthMismatch { expected, received: self.received });
        }
        Ok(())
    }

    pub fn finish(&self) -> Result<(), BlobError> {
        match self.limits.expected_len {
            Some(expected) if expected != self.received => {
                Err(BlobError::LengthMismatch { expected, received: self.received })
            }
            _ => Ok(()),
        }
    }

    pub fn interrupted(&self, reason: impl std::fmt::Display) -> BlobError {
        BlobError::Interrupted {
            received: self.received,
            expected: self.limits.expected_len,
            reason: reason.to_string(),
        }
    }
}

/// Property test of [`Meter`], which holds every write (a proxy upload, a part, an assembled
/// archive) to the announced length and the size limit.
#[cfg(test)]
mod meter_properties {
    use proptest::prelude::*;

    use super::*;

    /// Feeds `chunks` as a write does: stops at the first error.
    fn write(limits: WriteLimits, chunks: &[usize]) -> Result<u64, BlobError> {
        let mut meter = Meter::new(limits);
        meter.check_start()?;
        for &n in chunks {
            meter.add(n)?;
        }
        meter.finish()?;
        Ok(meter.received)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_write_is_stored_only_within_its_limit_and_announced_length(
            chunks in prop::collection::vec(prop_oneof![0..70usize, Just(1 << 20)], 0..8),
            expected in prop::option::of(prop_oneof![0..300u64, Just(u64::MAX)]),
            max in prop::option::of(prop_oneof![0..300u64, Just(u64::MAX)]),
        ) {
            let total: u64 = chunks.iter().map(|&n| n as u64).sum();
            let result = write(WriteLimits { expected_len: expected, max_len: max }, &chunks);
            let within = max.is_none_or(|m| total <= m && expected.is_none_or(|e| e <= m));
            let announced = expected.is_none_or(|e| e == total);
            prop_assert_eq!(result.is_ok(), within && announced, "{:?}", result);
            match result {
                Ok(n) => prop_assert_eq!(n, total),
                Err(BlobError::TooLarge { limit }) => prop_assert_eq!(Some(limit), max),
                Err(BlobError::LengthMismatch { expected: e, received }) => {
                    prop_assert_eq!(Some(e), expected);
                    prop_assert_ne!(e, received);
                    // A body longer than announced is cut off as soon as it is.
                    prop_assert!(received <= e || received - e <= chunks.iter().copied().max().unwrap_or(0) as u64);
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }
    }
}
