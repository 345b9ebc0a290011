//! One image build, in-process: the bento from `spec.downloadUrl` or from yatai's API, the
//! daemonless builder, and (for a `spec.image` with its own tag) a retag by manifest copy.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use yatai_build::bento::{BentoInfo, ModelRef};
use yatai_build::registry::{Credentials, ImageRef, Registry};
use yatai_build::source::{BentoSource, BentoTag, LocalSource, YataiSource};
use yatai_build::{BuildConfig, FailureKind, failure_kind};

use super::plan::reasons;
use super::registry::{RegistryAuth, docker_config_json};
use crate::context::Settings;

/// Where the bento archive comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `spec.downloadUrl` (http or https).
    Url(String),
    /// yatai's v1 API (`--yatai-endpoint`, `YATAI_API_TOKEN`).
    Yatai { endpoint: String, token: String },
}

impl Origin {
    /// The origin of a request's bento, or what to do to give it one.
    pub fn of(download_url: &str, settings: &Settings) -> Result<Origin, String> {
        if !download_url.is_empty() {
            if download_url.starts_with("http://") || download_url.starts_with("https://") {
                return Ok(Origin::Url(download_url.to_string()));
            }
            return Err(format!(
                "spec.downloadUrl {download_url:?}: only http:// and https:// URLs are supported by this \
                 operator; serve the bento archive over HTTP, or leave downloadUrl empty to fetch it from \
                 yatai (--yatai-endpoint)"
            ));
        }
        match &settings.yatai_endpoint {
            Some(endpoint) => Ok(Origin::Yatai {
                endpoint: endpoint.clone(),
                token: settings.yatai_api_token.clone().unwrap_or_default(),
            }),
            None => Err("spec.downloadUrl is empty and the operator has no --yatai-endpoint (YATAI_ENDPOINT) \
                         to fetch the bento from: set one of them"
                .into()),
        }
    }
}

/// Everything one build needs, taken from the request when it starts.
#[derive(Debug, Clone)]
pub struct Job {
    pub tag: String,
    /// The image to produce, with its tag.
    pub image: String,
    pub plain_http: bool,
    pub origin: Origin,
    pub timeout: Option<Duration>,
    /// `spec.imageBuilderExtraContainerEnv`, resolved: the install's and the `RUN` steps'
    /// environment, masked in the build's messages (`Debug` shows the names only).
    pub secret_envs: yatai_build::SecretEnvs,
}

/// What a build learnt about the bento, for the Bento CR.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BentoFacts {
    pub bentoml_version: String,
    /// `name:version` of the models baked in.
    pub models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    pub image: String,
    pub digest: String,
    pub seconds: f64,
    pub facts: BentoFacts,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// A condition reason: `BuildFailed`, `Unbuildable` or `Timeout`.
    pub reason: &'static str,
    pub message: String,
}

/// Runs the build to the end (or the timeout).
pub async fn run(settings: &Settings, auth: Option<&RegistryAuth>, job: &Job) -> Result<Built, Failed> {
    let started = Instant::now();
    let work = async {
        match job.timeout {
            Some(t) => match tokio::time::timeout(t, build(settings, auth, job)).await {
                Ok(r) => r.map_err(|e| classify(e, job)),
                Err(_) => Err(Failed {
                    reason: reasons::TIMEOUT,
                    message: format!(
                        "the build of {} ran longer than spec.imageBuildTimeout ({}s) and was stopped",
                        job.image,
                        t.as_secs()
                    ),
                }),
            },
            None => build(settings, auth, job).await.map_err(|e| classify(e, job)),
        }
    };
    let (image, digest, facts) = work.await?;
    Ok(Built { image, digest, seconds: started.elapsed().as_secs_f64(), facts })
}

/// The failure's condition reason, and its message without a value of the build's environment.
fn classify(e: anyhow::Error, job: &Job) -> Failed {
    let reason = match failure_kind(&e) {
        FailureKind::Unbuildable => reasons::UNBUILDABLE,
        _ => reasons::BUILD_FAILED,
    };
    Failed { reason, message: job.secret_envs.redact(&format!("{e:#}")) }
}

async fn build(
    settings: &Settings,
    auth: Option<&RegistryAuth>,
    job: &Job,
) -> anyhow::Result<(String, String, BentoFacts)> {
    let target = ImageRef::parse(&job.image).map_err(|e| anyhow::anyhow!("image {:?}: {e}", job.image))?;
    let wanted_tag = target.tag.clone().unwrap_or_else(|| "latest".into());

    // Credentials reach the builder as a docker config.json of their own, never the host's.
    let docker_dir = tempfile::tempdir().context("a directory for the registry credentials")?;
    let docker_config = match auth {
        Some(a) => {
            let p = docker_dir.path().join("config.json");
            std::fs::write(&p, docker_config_json(&target.registry, a))?;
            Some(p)
        }
        None => None,
    };

    let mut cfg = BuildConfig::new(&job.tag, target.name(), &settings.build_cache_dir);
    cfg.base = settings.build_base.clone();
    cfg.plain_http = job.plain_http;
    // The registry was asked just before (or a build was forced): build, whatever a racing
    // builder did meanwhile.
    cfg.force = true;
    cfg.docker_config = docker_config;
    cfg.uv = settings.build_uv.clone();
    cfg.uv_cache = settings.build_uv_cache.clone();
    cfg.secret_envs = job.secret_envs.clone();

    let inner: Box<dyn BentoSource> = match &job.origin {
        Origin::Url(url) => Box::new(UrlSource::new(url)?),
        Origin::Yatai { endpoint, token } => Box::new(YataiSource::new(endpoint, token)?),
    };
    let source = Recording { inner, info: Mutex::new(None) };
    let progress = |e: &yatai_build::Event| tracing::debug!(image = %job.image, "build: {e}");
    let outcome = yatai_build::build(&cfg, &source, &progress).await?;

    let built_tag = outcome.image.rsplit_once(':').map(|(_, t)| t.to_string()).unwrap_or_default();
    if built_tag != wanted_tag {
        // spec.image names its own tag: point it at what was pushed under Yatai's tag.
        let creds = auth.map(|a| Credentials::Basic { username: a.username.clone(), password: a.password.clone() });
        let reg = Registry::new(target.api_host(), job.plain_http, creds)?;
        reg.ping().await?;
        let (bytes, media, _) = reg.get_manifest(&target.repository, &outcome.digest).await?;
        reg.put_manifest(&target.repository, &wanted_tag, &bytes, &media).await?;
    }

    let info = source.info.lock().unwrap().take();
    let facts = info
        .map(|i| BentoFacts {
            bentoml_version: i.bentoml_version.clone(),
            models: i.models.iter().filter(|m| m.registry != "huggingface").map(ModelRef::tag).collect(),
        })
        .unwrap_or_default();
    Ok((target.with_tag(&wanted_tag).to_string(), outcome.digest, facts))
}

/// Keeps the `bento.yaml` facts of the bento the builder fetched.
struct Recording {
    inner: Box<dyn BentoSource>,
    info: Mutex<Option<BentoInfo>>,
}

#[async_trait::async_trait]
impl BentoSource for Recording {
    async fn fetch_bento(&self, tag: &BentoTag, work: &Path) -> anyhow::Result<PathBuf> {
        let dir = self.inner.fetch_bento(tag, work).await?;
        *self.info.lock().unwrap() = Some(BentoInfo::load(&dir)?);
        Ok(dir)
    }

    async fn fetch_model(&self, model: &ModelRef, bento_dir: &Path, work: &Path) -> anyhow::Result<PathBuf> {
        self.inner.fetch_model(model, bento_dir, work).await
    }

    async fn model_key(&self, model: &ModelRef) -> anyhow::Result<Option<String>> {
        self.inner.model_key(model).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// An exported bento (`bentoml export`, carrying its models) at an HTTP(S) URL.
struct UrlSource {
    url: String,
    http: reqwest::Client,
}

impl UrlSource {
    fn new(url: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("yatai-operator/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .build()?;
        Ok(Self { url: url.to_string(), http })
    }
}

#[async_trait::async_trait]
impl BentoSource for UrlSource {
    async fn fetch_bento(&self, tag: &BentoTag, work: &Path) -> anyhow::Result<PathBuf> {
        let what = format!("downloading bento {tag} from spec.downloadUrl {}", self.url);
        let mut resp = self.http.get(&self.url).send().await.with_context(|| format!("{what}: unreachable"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!("{what}: HTTP {status}; check that the URL serves the exported bento archive");
        }
        tokio::fs::create_dir_all(work).await?;
        let archive = work.join("bento.download");
        let mut f = tokio::fs::File::create(&archive).await?;
        while let Some(chunk) = resp.chunk().await.with_context(|| what.clone())? {
            tokio::io::AsyncWriteExt::write_all(&mut f, &chunk).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut f).await?;
        drop(f);
        // LocalSource extracts safely and checks that the archive holds the bento asked for.
        let local = LocalSource { bento: Some(archive), bentoml_home: None };
        local.fetch_bento(tag, work).await.with_context(|| what.clone())
    }

    async fn fetch_model(&self, model: &ModelRef, bento_dir: &Path, work: &Path) -> anyhow::Result<PathBuf> {
        LocalSource::default().fetch_model(model, bento_dir, work).await
    }

    fn describe(&self) -> String {
        format!("spec.downloadUrl {}", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Namespaces;

    #[test]
    fn the_bento_comes_from_the_url_else_from_yatai_else_nowhere_with_a_reason() {
        let mut s = Settings::for_tests(Namespaces::All, "yatai-system");
        assert_eq!(Origin::of("http://h/b.bento", &s), Ok(Origin::Url("http://h/b.bento".into())));
        let err = Origin::of("s3://bucket/b", &s).unwrap_err();
        assert!(err.contains("http://"), "{err}");
        let err = Origin::of("", &s).unwrap_err();
        assert!(err.contains("--yatai-endpoint"), "{err}");
        s.yatai_endpoint = Some("http://yatai:3000".into());
        s.yatai_api_token = Some("t".into());
        assert_eq!(Origin::of("", &s), Ok(Origin::Yatai { endpoint: "http://yatai:3000".into(), token: "t".into() }));
    }
}
