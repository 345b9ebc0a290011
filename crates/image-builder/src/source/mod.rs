//! Where bentos and models come from: a yatai server over the bentoml client's v1 REST API
//! ([`YataiSource`]), or local files: an exported bento, a bento directory, or a bentoml store
//! ([`LocalSource`]).

mod http;
mod local;

use std::path::{Path, PathBuf};

pub use http::YataiSource;
pub use local::LocalSource;

use yatai_core::{Tag, TagError};

use crate::bento::ModelRef;

/// A bento tag as the user writes it: `name`, `name:latest` or `name:version`.
///
/// The parts follow [`yatai_core::Tag`], the rule the server applies, so the builder accepts and
/// refuses exactly the tags the server does. Upper case is refused rather than lower-cased: the
/// bentoml client lower-cases before it stores or pushes anything, so an upper-case tag names
/// no stored bento, and quietly building a different spelling would hide the typo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BentoTag {
    pub name: String,
    /// `None` means the newest version (no version given, or `latest`).
    pub version: Option<String>,
}

/// A bento tag that breaks bentoml's naming rules; says which part and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bento tag {tag:?}: {reason}")]
pub struct InvalidBentoTag {
    pub tag: String,
    pub reason: TagError,
}

impl BentoTag {
    pub fn parse(s: &str) -> Result<Self, InvalidBentoTag> {
        let Tag { name, version } =
            Tag::parse(s).map_err(|reason| InvalidBentoTag { tag: s.chars().take(80).collect(), reason })?;
        let version = version.filter(|v| v != yatai_core::tag::LATEST);
        Ok(Self { name, version })
    }
}

impl std::fmt::Display for BentoTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.version.as_deref().unwrap_or(yatai_core::tag::LATEST))
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
    fn newest_version_is_spelled_with_or_without_latest() {
        assert_eq!(BentoTag::parse("iris:latest").unwrap(), BentoTag { name: "iris".into(), version: None });
        assert_eq!(BentoTag::parse("iris").unwrap(), BentoTag { name: "iris".into(), version: None });
        assert_eq!(BentoTag::parse("iris:v1").unwrap().version.as_deref(), Some("v1"));
    }

    #[test]
    fn accepts_and_refuses_exactly_what_the_server_does() {
        let tags = [
            "iris",
            "iris:latest",
            "iris_clf:pndy6nhijceeoax4",
            "a.b-c_d:0",
            "Iris:abc",
            "iris:ABC",
            "IRIS",
            "-x:y",
            "x-:y",
            "x:",
            ":v",
            "",
            "x:y:z",
            "a/b:c",
            "../x",
            "é:v",
            "iris:LATEST",
            "x:.y",
        ];
        let long = format!("{}:v", "n".repeat(64));
        for s in tags.iter().copied().chain([long.as_str()]) {
            match (BentoTag::parse(s), Tag::parse(s)) {
                (Ok(_), Ok(_)) => {}
                (Err(ours), Err(core)) => {
                    let msg = ours.to_string();
                    assert!(msg.contains(&core.to_string()), "{s:?}: {msg} does not say what core says ({core})");
                }
                (ours, core) => panic!("{s:?}: the builder says {ours:?}, the server {core:?}"),
            }
        }
    }

    #[test]
    fn upper_case_is_refused_not_lower_cased() {
        let err = BentoTag::parse("Iris:ABC").unwrap_err();
        assert_eq!(err.reason, TagError::Invalid { what: "name", value: "Iris".into() });
        let msg = err.to_string();
        assert!(msg.starts_with("bento tag \"Iris:ABC\": name \"Iris\""), "{msg}");
        assert!(msg.contains("lowercase"), "{msg}");
        let err = BentoTag::parse("iris:ABC").unwrap_err();
        assert_eq!(err.reason, TagError::Invalid { what: "version", value: "ABC".into() });
    }

    #[test]
    fn valid_tags_round_trip() {
        for s in ["iris:v1", "iris_clf:pndy6nhijceeoax4", "a.b-c_d:0", "iris:latest"] {
            let t = BentoTag::parse(s).unwrap();
            assert_eq!(t.to_string(), s);
            assert_eq!(BentoTag::parse(&t.to_string()).unwrap(), t);
        }
        // No version shows as `latest`, which parses back to the same tag.
        let t = BentoTag::parse("iris").unwrap();
        assert_eq!(t.to_string(), "iris:latest");
        assert_eq!(BentoTag::parse(&t.to_string()).unwrap(), t);
    }
}
