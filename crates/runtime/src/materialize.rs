//! Bentos and models on local disk, laid out so that `bentoml serve DIR`
//! finds the models: `DIR/models/<name>/<version>` plus `DIR/models/<name>/latest`.
//!
//! Archives are extracted once per content digest and shared: every
//! deployment of the same bento (with the same models) uses the same
//! read-only directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio_util::io::SyncIoBridge;
use yatai_blob::BlobStore;

use crate::archive::{self, ArchiveError};
use crate::{ArtifactRef, RuntimeError};

pub struct Materializer {
    root: PathBuf,
    blobs: BlobStore,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Materializer {
    pub fn new(root: PathBuf, blobs: BlobStore) -> Self {
        Materializer { root, blobs, locks: Mutex::new(HashMap::new()) }
    }

    async fn lock(&self, key: &str) -> Arc<Mutex<()>> {
        self.locks.lock().await.entry(key.to_owned()).or_default().clone()
    }

    /// Extracts the archive at `storage_key` into `dest` unless it is there.
    async fn extract_once(&self, storage_key: &str, dest: &Path, what: &str) -> Result<(), RuntimeError> {
        if dest.exists() {
            return Ok(());
        }
        let lock = self.lock(&dest.display().to_string()).await;
        let _guard = lock.lock().await;
        if dest.exists() {
            return Ok(());
        }
        let reader = self.blobs.open(storage_key).await.map_err(|e| RuntimeError::Fetch(format!("{what}: {e}")))?;
        let stream = tokio_util::io::StreamReader::new(futures_util::TryStreamExt::map_err(
            reader.stream,
            std::io::Error::other,
        ));
        let dest = dest.to_owned();
        let what = what.to_owned();
        tokio::task::spawn_blocking(move || {
            let sync = SyncIoBridge::new(stream);
            archive::extract(sync, &dest)
        })
        .await
        .map_err(|e| RuntimeError::Fetch(e.to_string()))?
        .map_err(|e| match e {
            ArchiveError::Unsafe(..) | ArchiveError::Unsupported(_) | ArchiveError::Corrupt(_) => {
                RuntimeError::BadArchive(format!("{what}: {e}"))
            }
            ArchiveError::Io(..) => RuntimeError::Fetch(format!("{what}: {e}")),
        })
    }

    /// A directory holding the bento with its models, ready for `bentoml serve`.
    pub async fn bento_dir(&self, bento: &ArtifactRef, models: &[ArtifactRef]) -> Result<PathBuf, RuntimeError> {
        let mut key = Sha256::new();
        key.update(bento.digest.as_bytes());
        let mut sorted: Vec<&ArtifactRef> = models.iter().collect();
        sorted.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        for m in &sorted {
            key.update(format!("\n{}:{}={}", m.name, m.version, m.digest).as_bytes());
        }
        let key = hex::encode(key.finalize());
        let dir = self.root.join("bentos").join(&key[..24]);
        if dir.join(".ready").exists() {
            return Ok(dir);
        }
        let lock = self.lock(&key).await;
        let _guard = lock.lock().await;
        if dir.join(".ready").exists() {
            return Ok(dir);
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        for m in &sorted {
            let mdir = self.root.join("models").join(&m.digest);
            self.extract_once(&m.storage_key, &mdir, &format!("model {}:{}", m.name, m.version)).await?;
        }
        self.extract_once(&bento.storage_key, &dir, &format!("bento {}:{}", bento.name, bento.version)).await?;
        if !dir.join("bento.yaml").exists() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(RuntimeError::BadArchive(format!(
                "bento {}:{} has no bento.yaml at the top of its archive",
                bento.name, bento.version
            )));
        }
        let io = |e: std::io::Error| RuntimeError::Fetch(format!("laying out models: {e}"));
        for m in &sorted {
            let name_dir = dir.join("models").join(&m.name);
            tokio::fs::create_dir_all(&name_dir).await.map_err(io)?;
            let link = name_dir.join(&m.version);
            let _ = tokio::fs::remove_file(&link).await;
            tokio::fs::symlink(self.root.join("models").join(&m.digest), &link).await.map_err(io)?;
            tokio::fs::write(name_dir.join("latest"), &m.version).await.map_err(io)?;
        }
        tokio::fs::write(dir.join(".ready"), b"").await.map_err(io)?;
        Ok(dir)
    }
}
