//! Where bentos and models come from: a yatai server over the bentoml client's v1 REST API
//! ([`YataiSource`]), or local files: an exported bento, a bento directory, or a bentoml store
//! ([`LocalSource`]).

mod http;
mod local;

use std::path::{Path, PathBuf};

pub use http::YataiSource;
pub use local::LocalSource;

use crate::bento::ModelRef;

/// A bento tag as the user writes it: `name`, `name:latest` or `name:version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BentoTag {
    pub name: String,
    /// `None` means the newest version.
    pub version: Option<String>,
}

impl BentoTag {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (name, version) = match s.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 63
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
                && p.as_bytes()[0].is_ascii_alphanumeric()
                && p.as_bytes()[p.len() - 1].is_ascii_alphanumeric()
        };
        let name = name.to_ascii_lowercase();
        if !ok(&name) {
            anyhow::bail!(
                "invalid bento tag {s:?}: the name must match [a-z0-9]([-._a-z0-9]*[a-z0-9])? (≤ 63 characters)"
            );
        }
        let version = match version.map(str::to_ascii_lowercase) {
            Some(v) if v == "latest" => None,
            Some(v) if !ok(&v) => anyhow::bail!("invalid bento tag {s:?}: bad version"),
            v => v,
        };
        Ok(Self { name, version })
    }
}

impl std::fmt::Display for BentoTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.version.as_deref().unwrap_or("latest"))
    }
}

/// A source of bentos and models. Implementations materialise into `work`, a scratch directory
/// the builder owns and deletes.
#[async_trait::async_trait]
pub trait BentoSource: Send + Sync {
    /// Returns the directory of the bento (holding `bento.yaml`).
    async fn fetch_bento(&self, tag: &BentoTag, work: &Path) -> anyhow::Result<PathBuf>;

    /// Returns the directory of one model version (holding `model.yaml`). `bento_dir` is the
    /// fetched bento: exported bentos carry their models under `models/`.
    async fn fetch_model(&self, model: &ModelRef, bento_dir: &Path, work: &Path) -> anyhow::Result<PathBuf>;

    /// A key that changes whenever the model's content may have changed (e.g. the server's
    /// upload time and size), so its layer can be taken from the cache without downloading the
    /// model. `None` (the default) means "fetch it and hash it".
    async fn model_key(&self, _model: &ModelRef) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

    /// For logs: where this source reads from.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bento_tags() {
        assert_eq!(BentoTag::parse("iris:latest").unwrap(), BentoTag { name: "iris".into(), version: None });
        assert_eq!(BentoTag::parse("Iris:AbC").unwrap().version.as_deref(), Some("abc"));
        assert!(BentoTag::parse("-x:y").is_err());
        assert!(BentoTag::parse("x:").is_err());
    }
}
