use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{BentoSource, BentoTag};
use crate::bento::{BentoInfo, ModelRef};
use crate::tarball;

/// Bentos and models on local disk.
///
/// * `bento`: an exported bento (`bentoml export`: a `.bento`/tar/tar.gz archive that carries
///   its models) or a bento directory. When unset, the bento is looked up in the store.
/// * `bentoml_home`: a bentoml store (`$BENTOML_HOME`: `bentos/<name>/<version>`,
///   `models/<name>/<version>`), searched for models the bento does not carry.
#[derive(Debug, Clone, Default)]
pub struct LocalSource {
    pub bento: Option<PathBuf>,
    pub bentoml_home: Option<PathBuf>,
}

#[async_trait::async_trait]
impl BentoSource for LocalSource {
    async fn fetch_bento(&self, tag: &BentoTag, work: &Path) -> anyhow::Result<PathBuf> {
        let this = self.clone();
        let tag = tag.clone();
        let work = work.to_path_buf();
        tokio::task::spawn_blocking(move || this.fetch_bento_blocking(&tag, &work)).await?
    }

    async fn fetch_model(&self, model: &ModelRef, bento_dir: &Path, _work: &Path) -> anyhow::Result<PathBuf> {
        let carried = bento_dir.join("models").join(&model.name).join(&model.version);
        if carried.join("model.yaml").is_file() {
            return Ok(carried);
        }
        if let Some(home) = &self.bentoml_home {
            let stored = home.join("models").join(&model.name).join(&model.version);
            if stored.join("model.yaml").is_file() {
                return Ok(stored);
            }
        }
        bail!(
            "model {} is neither in the bento ({}) nor in the bentoml store{}",
            model.tag(),
            bento_dir.display(),
            self.bentoml_home.as_ref().map(|h| format!(" {}", h.display())).unwrap_or_default()
        )
    }

    fn describe(&self) -> String {
        match (&self.bento, &self.bentoml_home) {
            (Some(b), _) => format!("local bento {}", b.display()),
            (None, Some(h)) => format!("bentoml store {}", h.display()),
            (None, None) => "nothing (no bento path and no bentoml store)".into(),
        }
    }
}

impl LocalSource {
    fn fetch_bento_blocking(&self, tag: &BentoTag, work: &Path) -> anyhow::Result<PathBuf> {
        let dir = match (&self.bento, &self.bentoml_home) {
            (Some(p), _) if p.is_dir() => p.clone(),
            (Some(p), _) => {
                let dest = work.join("bento");
                let r = tarball::open_archive(p)?;
                tarball::extract_safe(r, &dest).with_context(|| format!("extracting {}", p.display()))?;
                dest
            }
            (None, Some(home)) => {
                let repo = home.join("bentos").join(&tag.name);
                let version = match &tag.version {
                    Some(v) => v.clone(),
                    None => std::fs::read_to_string(repo.join("latest"))
                        .with_context(|| format!("no bento {} in the bentoml store {}", tag.name, home.display()))?
                        .trim()
                        .to_string(),
                };
                let d = repo.join(version);
                if !d.join("bento.yaml").is_file() {
                    bail!("no bento {tag} in the bentoml store {}", home.display());
                }
                d
            }
            (None, None) => bail!("no bento path and no bentoml store to read {tag} from"),
        };
        let info = BentoInfo::load(&dir)?;
        if info.name != tag.name || tag.version.as_ref().is_some_and(|v| *v != info.version) {
            bail!("{} holds bento {}, not {tag}", dir.display(), info.tag());
        }
        Ok(dir)
    }
}
