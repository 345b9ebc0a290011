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
        let what = format!("bento {}:{}", bento.name, bento.version);
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            let io = |e: std::io::Error| RuntimeError::Fetch(format!("laying out the bento: {e}"));
            let _ = std::fs::remove_dir_all(&target);
            link_tree(&files, &target, true).map_err(io)?;
            // The bento's own tree may hold `models/...`: what the registry's models are laid
            // out over must be real directories, and whatever sits at a model's place is replaced
            // (never written through: `latest` or a version could be a link into the shared,
            // extracted archive).
            for (name, version, digest) in entries {
                let models_dir = target.join("models");
                let name_dir = models_dir.join(&name);
                for d in [&models_dir, &name_dir] {
                    real_dir(d, &target).map_err(|e| match e {
                        Laid::NotDir(rel) => RuntimeError::BadArchive(format!(
                            "{what}: its archive holds {rel}, which is not a directory; models are laid out there"
                        )),
                        Laid::Io(e) => io(e),
                    })?;
                }
                let link = name_dir.join(&version);
                remove_any(&link).map_err(io)?;
                std::os::unix::fs::symlink(models_root.join(&digest), &link).map_err(io)?;
                write_new(&name_dir.join("latest"), version.as_bytes()).map_err(io)?;
            }
            write_new(&target.join(".ready"), b"").map_err(io)
        })
        .await
        .map_err(|e| RuntimeError::Fetch(e.to_string()))??;
        Ok(dir)
    }
}

/// Recreates the tree at `src` under `dst` with hard links to its files. A `.ready` at the top
/// is left out: only a complete layout may carry the marker.
fn link_tree(src: &Path, dst: &Path, top: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        if top && entry.file_name() == ".ready" {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            link_tree(&from, &to, false)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else {
            std::fs::hard_link(&from, &to)?;
        }
    }
    Ok(())
}

enum Laid {
    /// Holds the path relative to the layout's root.
    NotDir(String),
    Io(std::io::Error),
}

/// Makes `dir` a real directory: created when missing, refused when a link or a file.
fn real_dir(dir: &Path, root: &Path) -> Result<(), Laid> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Laid::NotDir(dir.strip_prefix(root).unwrap_or(dir).display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir).map_err(Laid::Io),
        Err(e) => Err(Laid::Io(e)),
    }
}

/// Removes whatever is at `path` without following a link.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a new file at `path`, replacing (not writing through) whatever is there: the files
/// around it are hard links into the shared extracted archive.
fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    remove_any(path)?;
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)?.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores a tar of `entries` (path, symlink target or file content) and returns its reference.
    async fn stored(blobs: &BlobStore, name: &str, entries: &[(&str, Option<&str>, &str)]) -> ArtifactRef {
        let mut b = tar::Builder::new(Vec::new());
        for (path, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match link {
                Some(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        let bytes = b.into_inner().unwrap();
        let digest = hex::encode(Sha256::digest(&bytes));
        let key = format!("blobs/{name}");
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
        blobs.write(&key, body, Default::default()).await.unwrap();
        ArtifactRef { name: name.into(), version: "v1".into(), digest, storage_key: key }
    }

    #[tokio::test]
    async fn laying_out_models_never_writes_through_the_bentos_links() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::local(dir.path().join("blobs"), false).unwrap();
        let m = Materializer::new(dir.path().join("runtime"), blobs.clone());
        let model = stored(&blobs, "m", &[("model.yaml", None, "name: m")]).await;
        // Links that stay inside, but `latest` and `.ready` would be written through them into
        // the extracted archive every deployment of this bento shares.
        let bento = stored(
            &blobs,
            "b",
            &[
                ("bento.yaml", None, "name: b"),
                ("models/m/latest", Some("../../bento.yaml"), ""),
                ("models/m/v1", Some("../../bento.yaml"), ""),
                (".ready", Some("bento.yaml"), ""),
            ],
        )
        .await;
        let laid = m.bento_dir(&bento, std::slice::from_ref(&model)).await.unwrap();
        let shared = dir.path().join("runtime/bento-archives").join(&bento.digest);
        assert_eq!(std::fs::read_to_string(shared.join("bento.yaml")).unwrap(), "name: b");
        assert_eq!(std::fs::read_to_string(laid.join("models/m/latest")).unwrap(), "v1");
        assert_eq!(std::fs::read_to_string(laid.join("models/m/v1/model.yaml")).unwrap(), "name: m");
        assert!(std::fs::symlink_metadata(laid.join(".ready")).unwrap().is_file());

        // `models` itself a link: the model links would land elsewhere in the tree.
        let bento = stored(&blobs, "c", &[("bento.yaml", None, "name: c"), ("models", Some("src"), "")]).await;
        let err = m.bento_dir(&bento, &[model]).await.unwrap_err();
        assert!(matches!(&err, RuntimeError::BadArchive(msg) if msg.contains("models")), "{err}");
    }
}
