//! The local-directory backend.
//!
//! A write goes to `tmp/<uid>.partial` on a blocking thread fed by a bounded
//! channel, so receiving from the network, hashing and writing overlap. When
//! `fsync` is on (the default), writeback starts as data arrives
//! (`sync_file_range`) and the file is synced before it is moved into
//! place, so an object that exists is complete on disk.
//!
//! Moving into place never replaces an existing object (`renameat2` with
//! `RENAME_NOREPLACE`, or a hard link where the filesystem lacks it): of two
//! writers racing for one key exactly one wins, and a finished object is
//! never overwritten by a slower writer. The partial files of writes running
//! in this process are known, so those a crash left behind can be swept.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// Partial files of writes running in this process.
    live: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Keeps a partial file's name in the live set while its write runs.
struct LivePartial {
    live: Arc<Mutex<HashSet<PathBuf>>>,
    path: PathBuf,
}

impl Drop for LivePartial {
    fn drop(&mut self) {
        self.live.lock().expect("lock").remove(&self.path);
    }
}

impl LocalBlobs {
    pub fn new(root: PathBuf, fsync: bool) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root.join("tmp"))?;
        std::fs::create_dir_all(root.join("blobs"))?;
        Ok(LocalBlobs { root, fsync, live: Arc::default() })
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

    /// Writes a new object; `replace` lets it take the place of an existing
    /// one (multipart parts only).
    pub async fn write<S, E>(
        &self,
        key: &str,
        mut body: S,
        limits: WriteLimits,
        replace: bool,
    ) -> Result<Written, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let dest = self.path(key)?;
        let mut meter = Meter::new(limits);
        meter.check_start()?;
        if !replace && tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            // Refuse before receiving a byte; the final move checks again.
            return Err(BlobError::Exists(key.to_owned()));
        }
        let tmp = self.root.join("tmp").join(format!("{}.partial", uuid::Uuid::new_v4().simple()));
        self.live.lock().expect("lock").insert(tmp.clone());
        let _live = LivePartial { live: self.live.clone(), path: tmp.clone() };

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
                let fsync = self.fsync;
                let key = key.to_owned();
                tokio::task::spawn_blocking(move || {
                    let placed = place(&tmp, &dest, fsync, replace);
                    if placed.is_err() {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    placed.map_err(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => BlobError::Exists(key),
                        _ => e.into(),
                    })
                })
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

    /// Deletes `tmp/*.partial` files no running write owns that were last
    /// modified at least `min_idle` ago.
    pub async fn sweep_partials(&self, min_idle: Duration) -> Result<usize, BlobError> {
        let dir = self.root.join("tmp");
        let live = self.live.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                if path.extension().is_none_or(|e| e != std::ffi::OsStr::new("partial"))
                    || live.lock().expect("lock").contains(&path)
                {
                    continue;
                }
                let idle = entry.metadata()?.modified().ok().and_then(|m| m.elapsed().ok()).unwrap_or_default();
                if idle < min_idle {
                    continue;
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| BlobError::Storage(e.to_string()))?
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

/// Moves a finished temporary file to its key. Unless `replace`, fails with
/// `AlreadyExists` if anything is there, atomically: no check-then-rename
/// window for another writer to slip through.
fn place(tmp: &Path, dest: &Path, fsync: bool, replace: bool) -> std::io::Result<()> {
    let parent = dest.parent().expect("keys have a directory");
    std::fs::create_dir_all(parent)?;
    if replace {
        std::fs::rename(tmp, dest)?;
    } else {
        rename_noreplace(tmp, dest)?;
    }
    if fsync {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (cfrom, cto) = (c(from)?, c(to)?);
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, cfrom.as_ptr(), libc::AT_FDCWD, cto.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // The filesystem cannot do it: a hard link fails the same way if
        // the name is taken.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(err),
    }
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
        let w = store.write("blobs/a", chunks(&[b"hello ", b"world"]), WriteLimits::default(), false).await.unwrap();
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
        let err = store.write("blobs/b", chunks(&[b"short"]), limits, false).await.unwrap_err();
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
        let err = store.write("blobs/c", body, WriteLimits::default(), false).await.unwrap_err();
        assert!(matches!(err, BlobError::Interrupted { received: 3, .. }), "{err}");
        assert!(!dir.path().join("blobs/c").exists());
    }

    #[tokio::test]
    async fn limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::new(dir.path().to_owned(), true).unwrap();
        let limits = WriteLimits { expected_len: None, max_len: Some(4) };
        let err = store.write("blobs/d", chunks(&[b"abc", b"def"]), limits, false).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 4 }), "{err}");
        let limits = WriteLimits { expected_len: Some(10), max_len: Some(4) };
        let err = store.write("blobs/d", chunks(&[b"abc"]), limits, false).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 4 }), "{err}");
    }

    async fn read(store: &LocalBlobs, key: &str) -> Vec<u8> {
        store.open(key).await.unwrap().stream.map(|c| c.unwrap().to_vec()).concat().await
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[tokio::test]
    async fn a_finished_object_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::new(dir.path().to_owned(), false).unwrap();
        store.write("blobs/k", chunks(&[b"first"]), WriteLimits::default(), false).await.unwrap();
        let err = store.write("blobs/k", chunks(&[b"EVIL"]), WriteLimits::default(), false).await.unwrap_err();
        assert!(matches!(err, BlobError::Exists(ref k) if k == "blobs/k"), "{err}");
        assert_eq!(read(&store, "blobs/k").await, b"first");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "the refused write left a partial");
        // Parts may be sent again until they are assembled.
        store.write("staging/u/00001", chunks(&[b"one"]), WriteLimits::default(), true).await.unwrap();
        store.write("staging/u/00001", chunks(&[b"two"]), WriteLimits::default(), true).await.unwrap();
        assert_eq!(read(&store, "staging/u/00001").await, b"two");
    }

    /// Many writers race for one key, each with its own bytes, fed in small
    /// interleaved chunks: exactly one wins, the object is exactly the
    /// winner's bytes (so its recorded digest describes it), and no later
    /// writer replaces it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_to_one_key_leave_exactly_one_whole_object() {
        for round in 0..20u64 {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalBlobs::new(dir.path().to_owned(), round % 2 == 0).unwrap();
            let writers = 8usize;
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                // Different sizes and contents; writers 0 and 1 share bytes
                // (the same digest racing for one key).
                let len = 1 + ((w as u64 * 7919 + round * 104_729) % 300_000) as usize;
                let byte = if w == 1 { 0u8 } else { w as u8 };
                let len = if w == 1 { 1 + ((round * 104_729) % 300_000) as usize } else { len };
                let body: Vec<u8> = (0..len).map(|i| byte ^ (i % 251) as u8).collect();
                tasks.push(tokio::spawn(async move {
                    let pieces: Vec<Result<Bytes, std::io::Error>> =
                        body.chunks(4096).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
                    let stream = futures_util::stream::iter(pieces).then(|c| async move {
                        tokio::task::yield_now().await;
                        c
                    });
                    let r = store.write("blobs/same", Box::pin(stream), WriteLimits::default(), false).await;
                    (body, r)
                }));
            }
            let mut winners = Vec::new();
            for t in tasks {
                let (body, r) = t.await.unwrap();
                match r {
                    Ok(w) => {
                        assert_eq!(w.sha256, sha(&body));
                        winners.push((body, w));
                    }
                    Err(BlobError::Exists(_)) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: {} writers won", winners.len());
            let (body, w) = &winners[0];
            let stored = read(&store, "blobs/same").await;
            assert_eq!(stored.len() as u64, w.size);
            assert_eq!(sha(&stored), w.sha256, "round {round}: the object is not the bytes of its digest");
            assert_eq!(&stored, body);
            // A late writer never replaces it.
            let late = store.write("blobs/same", chunks(&[b"late"]), WriteLimits::default(), false).await;
            assert!(matches!(late, Err(BlobError::Exists(_))));
            assert_eq!(sha(&read(&store, "blobs/same").await), w.sha256);
            assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        }
    }

    #[tokio::test]
    async fn partials_left_by_a_crash_are_swept_but_not_running_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobs::new(dir.path().to_owned(), false).unwrap();
        for i in 0..3 {
            std::fs::write(dir.path().join(format!("tmp/crashed{i}.partial")), b"half").unwrap();
        }
        std::fs::write(dir.path().join("tmp/keep.txt"), b"not ours").unwrap();
        // A write in progress: its partial survives the sweep.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let body = tokio_stream_from(rx);
                store.write("blobs/slow", body, WriteLimits::default(), false).await
            })
        };
        tx.send(Ok(Bytes::from_static(b"first half "))).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.live.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the write did not start");
            tokio::task::yield_now().await;
        }
        // An hour's idleness is required by default (another process may own them)...
        assert_eq!(store.sweep_partials(Duration::from_secs(3600)).await.unwrap(), 0);
        // ...but what this process does not own can go at once.
        assert_eq!(store.sweep_partials(Duration::ZERO).await.unwrap(), 3);
        tx.send(Ok(Bytes::from_static(b"second half"))).await.unwrap();
        drop(tx);
        writer.await.unwrap().unwrap();
        assert_eq!(read(&store, "blobs/slow").await, b"first half second half");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("keep.txt")]);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        let store = LocalBlobs { root: PathBuf::from("/nonexistent"), fsync: false, live: Arc::default() };
        for bad in ["../x", "blobs/../../etc/passwd", "/abs", "", "a//b", "a/./b"] {
            assert!(store.path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(store.path("blobs/abc-1").is_ok());
    }
}
