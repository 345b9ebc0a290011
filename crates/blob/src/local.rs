//! The local-directory backend.
//!
//! A write goes to `tmp/<uid>.partial` on a blocking thread fed by a bounded
//! channel, so receiving from the network, hashing and writing overlap. When
//! `fsync` is on (the default), writeback starts as data arrives
//! (`sync_file_range`) and the file is synced before it is renamed into
//! place, so an object that exists is complete on disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::{BlobError, Meter, Reader, WriteLimits, Written};

/// Start writeback of every this many bytes as they are written.
const WRITEBACK_STEP: u64 = 16 << 20;
const WRITE_BUFFER: usize = 1 << 20;
const READ_BUFFER: usize = 1 << 20;

#[derive(Clone)]
pub struct LocalBlobs {
    root: PathBuf,
    fsync: bool,
}

impl LocalBlobs {
    pub fn new(root: PathBuf, fsync: bool) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("blobs"))?;
        Ok(LocalBlobs { root, fsync })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        // Keys are made by yatai, but a key is never allowed to leave the root.
        let ok = !key.is_empty()
            && key.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            });
        if !ok {
            return Err(BlobError::Storage(format!("invalid storage key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    pub async fn write<S, E>(&self, key: &str, mut body: S, limits: WriteLimits) -> Result<Written, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let dest = self.path(key)?;
        let tmp = self.root.join("tmp").join(format!("{}.partial", uuid::Uuid::new_v4().simple()));
        let mut meter = Meter::new(limits);
        meter.check_start()?;

        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let fsync = self.fsync;
        let tmp_for_writer = tmp.clone();
        let writer = tokio::task::spawn_blocking(move || write_file(&tmp_for_writer, rx, fsync));

        let mut failure = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(meter.interrupted(e));
                    break;
                }
            };
            if let Err(e) = meter.add(chunk.len()) {
                failure = Some(e);
                break;
            }
            if tx.send(chunk).await.is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        drop(tx);
        let written = writer.await.map_err(|e| BlobError::Storage(format!("writer thread: {e}")))?;
        let result = match (failure, written) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            (None, Ok(w)) => meter.finish().map(|_| w),
        };
        match result {
            Ok(w) => {
                let dest_for_rename = dest.clone();
                let fsync = self.fsync;
                tokio::task::spawn_blocking(move || place(&tmp, &dest_for_rename, fsync))
                    .await
                    .map_err(|e| BlobError::Storage(e.to_string()))??;
                Ok(w)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    pub async fn open(&self, key: &str) -> Result<Reader, BlobError> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound { BlobError::NotFound(key.to_owned()) } else { e.into() }
        })?;
        let size = file.metadata().await?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_BUFFER).map(|r| r.map_err(BlobError::from));
        Ok(Reader { size, stream: Box::pin(stream) })
    }

    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // Remove the part directory of a finished multipart upload.
        if key.starts_with("staging/")
            && let Some(parent) = path.parent()
        {
            let _ = tokio::fs::remove_dir(parent).await;
        }
        Ok(())
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, Duration)>, BlobError> {
        let root = self.root.clone();
        let prefix = prefix.trim_end_matches('/').to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let base = root.join(&prefix);
            if !base.exists() {
                return Ok(out);
            }
            let mut stack = vec![base];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir)? {
                    let entry = entry?;
                    let meta = entry.metadata()?;
                    if meta.is_dir() {
                        stack.push(entry.path());
                    } else if let Ok(rel) = entry.path().strip_prefix(&root) {
                        let age = meta.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
                        out.push((rel.to_string_lossy().into_owned(), age));
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| BlobError::Storage(e.to_string()))?
    }
}

fn write_file(path: &Path, mut rx: tokio::sync::mpsc::Receiver<Bytes>, fsync: bool) -> Result<Written, BlobError> {
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, &file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut flushed_to = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        size += chunk.len() as u64;
        if fsync && size - flushed_to >= WRITEBACK_STEP {
            out.flush()?;
            start_writeback(&file, flushed_to, size - flushed_to);
            flushed_to = size;
        }
    }
    out.flush()?;
    drop(out);
    if fsync {
        file.sync_data()?;
    }
    Ok(Written { size, sha256: hex::encode(hasher.finalize()) })
}

/// Asks the kernel to start writing a range back now, without waiting, so
/// that the final sync has little left to do.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor we own; failure only
    // means writeback starts later.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn place(tmp: &Path, dest: &Path, fsync: bool) -> Result<(), BlobError> {
    let parent = dest.parent().expect("keys have a directory");
    std::fs::create_dir_all(parent)?;
    std::fs::rename(tmp, dest)?;
    if fsync {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send {
        futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn writes_hashes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::new(dir.path().to_owned(), true).unwrap();
        let w = store.write("blobs/a", chunks(&[b"hello ", b"world"]), WriteLimits::default()).await.unwrap();
        assert_eq!(w.size, 11);
        assert_eq!(w.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
        let r = store.open("blobs/a").await.unwrap();
        assert_eq!(r.size, 11);
        let body: Vec<u8> = r.stream.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(body, b"hello world");
    }

    #[tokio::test]
    async fn a_short_body_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::new(dir.path().to_owned(), true).unwrap();
        let limits = WriteLimits { expected_len: Some(100), max_len: None };
        let err = store.write("blobs/b", chunks(&[b"short"]), limits).await.unwrap_err();
        assert!(matches!(err, BlobError::LengthMismatch { expected: 100, received: 5 }), "{err}");
        assert!(!dir.path().join("blobs/b").exists());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_broken_body_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::new(dir.path().to_owned(), true).unwrap();
        let body = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("connection reset")),
        ]);
        let err = store.write("blobs/c", body, WriteLimits::default()).await.unwrap_err();
        assert!(matches!(err, BlobError::Interrupted { received: 3, .. }), "{err}");
        assert!(!dir.path().join("blobs/c").exists());
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::new(dir.path().to_owned(), true).unwrap();
        let limits = WriteLimits { expected_len: None, max_len: Some(4) };
        let err = store.write("blobs/d", chunks(&[b"abc", b"def"]), limits).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 4 }), "{err}");
        let limits = WriteLimits { expected_len: Some(10), max_len: Some(4) };
        let err = store.write("blobs/d", chunks(&[b"abc"]), limits).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 4 }), "{err}");
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        let store = LocalBlobs { root: PathBuf::from("/nonexistent"), fsync: false };
        for bad in ["../x", "blobs/../../etc/passwd", "/abs", "", "a//b", "a/./b"] {
            assert!(store.path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(store.path("blobs/abc-1").is_ok());
    }
}
