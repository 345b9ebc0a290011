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

    /// The bento's own files, extracted once per archive digest and checked:
    /// an archive with unsafe paths, or without `bento.yaml`, is refused.
    pub async fn bento_files(&self, bento: &ArtifactRef) -> Result<PathBuf, RuntimeError> {
        let dir = self.root.join("bento-archives").join(&bento.digest);
        self.extract_once(&bento.storage_key, &dir, &format!("bento {}:{}", bento.name, bento.version)).await?;
        if !dir.join("bento.yaml").exists() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(RuntimeError::BadArchive(format!(
                "bento {}:{}: the archive has no bento.yaml at its top",
                bento.name, bento.version
            )));
        }
        Ok(dir)
    }

    /// A model's files, extracted once per archive digest.
    pub async fn model_files(&self, model: &ArtifactRef) -> Result<PathBuf, RuntimeError> {
        let dir = self.root.join("models").join(&model.digest);
        self.extract_once(&model.storage_key, &dir, &format!("model {}:{}", model.name, model.version)).await?;
        Ok(dir)
    }

    /// A directory holding the bento with its models, ready for `bentoml serve`:
    /// the bento's files (hard links into the extracted archive) plus
    /// `models/<name>/<version>` links to the extracted models.
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
        let files = self.bento_files(bento).await?;
        for m in &sorted {
            self.model_files(m).await?;
        }
        let models_root = self.root.join("models");
        let entries: Vec<(String, String, String)> =
            sorted.iter().map(|m| (m.name.clone(), m.version.clone(), m.digest.clone())).collect();
        let target = dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let _ = std::fs::remove_dir_all(&target);
            link_tree(&files, &target)?;
            for (name, version, digest) in entries {
                let name_dir = target.join("models").join(&name);
                std::fs::create_dir_all(&name_dir)?;
                let link = name_dir.join(&version);
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(models_root.join(&digest), &link)?;
                std::fs::write(name_dir.join("latest"), &version)?;
            }
            std::fs::write(target.join(".ready"), b"")
        })
        .await
        .map_err(|e| RuntimeError::Fetch(e.to_string()))?
        .map_err(|e| RuntimeError::Fetch(format!("laying out the bento: {e}")))?;
        Ok(dir)
    }
}

/// Recreates the tree at `src` under `dst` with hard links to its files.
fn link_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            link_tree(&from, &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else {
            std::fs::hard_link(&from, &to)?;
        }
    }
    Ok(())
}
