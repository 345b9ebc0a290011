//! Image builds run by the server: a bento from the registry becomes an OCI
//! image in the configured registry (yatai-build, no Docker daemon). Each
//! build is recorded with its status, reference, digest and log, and the
//! bento's `image_build_status` follows the newest build.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use yatai_build::bento::ModelRef;
use yatai_build::source::{BentoSource, BentoTag};
use yatai_build::{BuildConfig, Event, Progress};
use yatai_core::deploy::{ArtifactRef, TargetError};
use yatai_store::{ImageBuildRow, VersionRow};

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Log kept per build (the tail, when longer).
const LOG_LIMIT: usize = 256 << 10;

#[derive(Debug, Clone)]
pub struct ImageBuildSettings {
    /// `HOST[:PORT]/REPOSITORY` images are pushed to.
    pub registry: String,
    pub cache_dir: PathBuf,
    pub plain_http: bool,
    pub docker_config: Option<PathBuf>,
    pub uv: Option<PathBuf>,
    /// Base image instead of the bento's own `image.base_image`.
    pub base: Option<String>,
}

/// The extracted files of registry archives (extracted once, read-only):
/// what an image build reads. The local runtime provides them.
#[async_trait::async_trait]
pub trait ArtifactFiles: Send + Sync {
    async fn bento_files(&self, bento: &ArtifactRef) -> Result<PathBuf, TargetError>;
    async fn model_files(&self, model: &ArtifactRef) -> Result<PathBuf, TargetError>;
}

/// Builds run one at a time: each one saturates the machine's cores.
fn slots() -> &'static Semaphore {
    static S: OnceLock<Semaphore> = OnceLock::new();
    S.get_or_init(|| Semaphore::new(1))
}

/// Records a build of `bento` and starts it in the background.
pub async fn start(state: &AppState, caller: &Caller, bento: &VersionRow, force: bool) -> AppResult<ImageBuildRow> {
    let settings = state.config.image_builds.clone().ok_or_else(|| {
        AppError::invalid("this server builds no images: start it with --image-registry HOST/REPOSITORY")
    })?;
    let files =
        state.files.clone().ok_or_else(|| AppError::unavailable("this server cannot read archives for builds"))?;
    if !bento.is_uploaded() {
        return Err(AppError::invalid(format!("bento {} is not uploaded yet; push it first", bento.tag())));
    }
    crate::deployments::check_models(state, bento).await?;
    // Extract (and so check) the archive before anything is recorded.
    files.bento_files(&crate::deployments::artifact_ref(state, bento).await?).await?;
    let row = state
        .store
        .create_image_build(&caller.org.uid, &bento.uid, &settings.registry, force, &caller.user.uid)
        .await?;
    let (state2, bento2, uid) = (state.clone(), bento.clone(), row.uid.clone());
    tokio::spawn(async move { run(state2, files, settings, uid, bento2, force).await });
    Ok(row)
}

struct Log {
    text: Mutex<String>,
    /// Values no line may show (masked as `****`). Server-side builds have no secret
    /// environment today, so this is empty; a build given one masks its log here too.
    secrets: yatai_build::SecretEnvs,
}

impl Log {
    fn push(&self, line: &str) {
        let line = self.secrets.redact(line);
        let mut t = self.text.lock().expect("lock");
        t.push_str(&line);
        t.push('\n');
        if t.len() > LOG_LIMIT {
            let cut = t.len() - LOG_LIMIT / 2;
            let cut = t[cut..].find('\n').map(|i| cut + i + 1).unwrap_or(cut);
            t.replace_range(..cut, "…(earlier lines dropped)\n");
        }
    }
    fn get(&self) -> String {
        self.text.lock().expect("lock").clone()
    }
}

impl Progress for Log {
    fn event(&self, e: &Event) {
        self.push(&e.to_string());
    }
}

async fn run(
    state: AppState,
    files: Arc<dyn ArtifactFiles>,
    settings: ImageBuildSettings,
    uid: String,
    bento: VersionRow,
    force: bool,
) {
    let log = Arc::new(Log { text: Mutex::new(String::new()), secrets: yatai_build::SecretEnvs::default() });
    log.push(&format!("queued: build of bento {} into {}", bento.tag(), settings.registry));
    let _slot = slots().acquire().await;
    if let Err(e) = state.store.start_image_build(&uid, &bento.uid).await {
        tracing::warn!(error = %e, "could not mark an image build started");
    }
    // Flush the log while the build runs, so that it can be watched.
    let flusher = {
        let (state, log, uid) = (state.clone(), log.clone(), uid.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = state.store.set_image_build_log(&uid, &log.get()).await;
            }
        })
    };
    let result = build(&state, files, &settings, &bento, force, log.clone()).await;
    flusher.abort();
    let (status, reference, digest, error, report) = match result {
        Ok(outcome) => {
            log.push(&format!("done: {}", outcome.reference));
            let report = serde_json::to_string(&outcome).unwrap_or_else(|_| "{}".into());
            ("success", outcome.reference, outcome.digest, String::new(), report)
        }
        Err(e) => {
            let kind = yatai_build::failure_kind(&e);
            let msg = log.secrets.redact(&format!("{e:#}"));
            log.push(&format!("failed ({kind:?}): {msg}"));
            ("failed", String::new(), String::new(), msg, json!({"failure": format!("{kind:?}")}).to_string())
        }
    };
    if let Err(e) =
        state.store.finish_image_build(&uid, &bento.uid, status, &reference, &digest, &error, &log.get(), &report).await
    {
        tracing::warn!(error = %e, "could not record the end of an image build");
    }
    tracing::info!(bento = %bento.tag(), status, %reference, "image build finished");
}

async fn build(
    state: &AppState,
    files: Arc<dyn ArtifactFiles>,
    settings: &ImageBuildSettings,
    bento: &VersionRow,
    force: bool,
    log: Arc<Log>,
) -> anyhow::Result<yatai_build::BuildOutcome> {
    let bento_ref = crate::deployments::artifact_ref(state, bento).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let mut models = Vec::new();
    for (name, version, found) in state.store.bento_models(bento).await? {
        if let Some(m) = found.filter(|m| m.is_uploaded()) {
            models.push(crate::deployments::artifact_ref(state, &m).await.map_err(|e| anyhow::anyhow!(e.to_string()))?);
        } else {
            anyhow::bail!("model {name}:{version} of bento {} is not in the registry", bento.tag());
        }
    }
    let mut config = BuildConfig::new(bento.tag(), settings.registry.clone(), settings.cache_dir.clone());
    config.force = force;
    config.plain_http = settings.plain_http;
    config.docker_config = settings.docker_config.clone();
    config.base = settings.base.clone();
    if let Some(uv) = settings.uv.clone().or_else(|| which("uv")) {
        config.uv = uv;
    }
    let source = StoreSource { files, bento: bento_ref, models };
    yatai_build::build(&config, &source, log.as_ref()).await
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// Bentos and models straight from this server's stores (extracted once),
/// with no HTTP round trip.
struct StoreSource {
    files: Arc<dyn ArtifactFiles>,
    bento: ArtifactRef,
    models: Vec<ArtifactRef>,
}

#[async_trait::async_trait]
impl BentoSource for StoreSource {
    async fn fetch_bento(&self, _tag: &BentoTag, _work: &Path) -> anyhow::Result<PathBuf> {
        Ok(self.files.bento_files(&self.bento).await?)
    }

    async fn fetch_model(&self, model: &ModelRef, _bento_dir: &Path, _work: &Path) -> anyhow::Result<PathBuf> {
        let m = self
            .models
            .iter()
            .find(|m| m.name == model.name && m.version == model.version)
            .ok_or_else(|| anyhow::anyhow!("model {} is not in the registry", model.tag()))?;
        Ok(self.files.model_files(m).await?)
    }

    async fn model_key(&self, model: &ModelRef) -> anyhow::Result<Option<String>> {
        Ok(self
            .models
            .iter()
            .find(|m| m.name == model.name && m.version == model.version)
            .map(|m| format!("sha256:{}", m.digest)))
    }

    fn describe(&self) -> String {
        "this yatai server's registry".into()
    }
}

/// At start: builds that were running when the server stopped are marked failed.
pub async fn fail_interrupted(state: &AppState) {
    let Ok(builds) = state.store.unfinished_image_builds().await else { return };
    for b in builds {
        let log = format!("{}\ninterrupted: the server stopped during the build; start it again", b.log);
        let _ = state
            .store
            .finish_image_build(
                &b.uid,
                &b.bento_uid,
                "failed",
                "",
                "",
                "the server stopped during the build",
                &log,
                "{}",
            )
            .await;
    }
}
