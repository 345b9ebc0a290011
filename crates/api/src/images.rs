//! Image builds run by the server: a bento from the registry becomes an OCI
//! image in the configured registry (yatai-build, no Docker daemon). Each
//! build is recorded with its status, reference, digest and log, and the
//! bento's `image_build_status` follows the newest build.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use yatai_build::bento::ModelRef;
use yatai_build::source::{BentoSource, BentoTag};
use yatai_build::{BuildConfig, Event, Progress};
use yatai_runtime::{ArtifactRef, LocalRuntime};
use yatai_store::{ImageBuildRow, VersionRow};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::schemas::{CreatorSchema, opt_ts, ts};
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageBuildSchema {
    pub uid: String,
    /// `name:version` of the bento.
    pub bento: String,
    /// `pending`, `building`, `success` or `failed`.
    pub status: String,
    pub registry: String,
    /// `HOST/REPO:yatai.<name>.<version>@sha256:…` once built.
    pub reference: String,
    pub digest: String,
    pub error: String,
    #[schema(value_type = Object)]
    pub report: Value,
    /// The build's log (only when one build is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    pub creator: Option<CreatorSchema>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

pub fn schema(row: &ImageBuildRow, bento_tag: &str, with_log: bool) -> ImageBuildSchema {
    ImageBuildSchema {
        uid: row.uid.clone(),
        bento: bento_tag.to_owned(),
        status: row.status.clone(),
        registry: row.registry.clone(),
        reference: row.reference.clone(),
        digest: row.digest.clone(),
        error: row.error.clone(),
        report: serde_json::from_str(&row.report).unwrap_or(Value::Null),
        log: with_log.then(|| row.log.clone()),
        creator: row.creator_name.clone().map(|name| CreatorSchema { name }),
        created_at: ts(row.created_at),
        started_at: opt_ts(row.started_at),
        finished_at: opt_ts(row.finished_at),
    }
}

/// Builds run one at a time: each one saturates the machine's cores.
fn slots() -> &'static Semaphore {
    static S: OnceLock<Semaphore> = OnceLock::new();
    S.get_or_init(|| Semaphore::new(1))
}

/// Records a build of `bento` and starts it in the background.
pub async fn start(state: &AppState, caller: &Caller, bento: &VersionRow, force: bool) -> ApiResult<ImageBuildRow> {
    let settings = state.config.image_builds.clone().ok_or_else(|| {
        ApiError::bad_request("this server builds no images: start it with --image-registry HOST/REPOSITORY")
    })?;
    let runtime = state.runtime.clone().ok_or_else(|| ApiError::unavailable("this server has no local runtime"))?;
    if !bento.is_uploaded() {
        return Err(ApiError::bad_request(format!("bento {} is not uploaded yet; push it first", bento.tag())));
    }
    crate::deployments::preflight(state, bento).await?;
    let row = state
        .store
        .create_image_build(&caller.org.uid, &bento.uid, &settings.registry, force, &caller.user.uid)
        .await?;
    let (state2, bento2, uid) = (state.clone(), bento.clone(), row.uid.clone());
    tokio::spawn(async move { run(state2, runtime, settings, uid, bento2, force).await });
    Ok(row)
}

struct Log {
    text: Mutex<String>,
}

impl Log {
    fn push(&self, line: &str) {
        let mut t = self.text.lock().expect("lock");
        t.push_str(line);
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
    runtime: Arc<LocalRuntime>,
    settings: ImageBuildSettings,
    uid: String,
    bento: VersionRow,
    force: bool,
) {
    let log = Arc::new(Log { text: Mutex::new(String::new()) });
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
    let result = build(&state, runtime, &settings, &bento, force, log.clone()).await;
    flusher.abort();
    let (status, reference, digest, error, report) = match result {
        Ok(outcome) => {
            log.push(&format!("done: {}", outcome.reference));
            let report = serde_json::to_string(&outcome).unwrap_or_else(|_| "{}".into());
            ("success", outcome.reference, outcome.digest, String::new(), report)
        }
        Err(e) => {
            let kind = yatai_build::failure_kind(&e);
            let msg = format!("{e:#}");
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
    runtime: Arc<LocalRuntime>,
    settings: &ImageBuildSettings,
    bento: &VersionRow,
    force: bool,
    log: Arc<Log>,
) -> anyhow::Result<yatai_build::BuildOutcome> {
    let bento_ref = crate::deployments::artifact_ref(state, bento).await.map_err(|e| anyhow::anyhow!(e.message))?;
    let mut models = Vec::new();
    for (name, version, found) in state.store.bento_models(bento).await? {
        if let Some(m) = found.filter(|m| m.is_uploaded()) {
            models.push(crate::deployments::artifact_ref(state, &m).await.map_err(|e| anyhow::anyhow!(e.message))?);
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
    let source = StoreSource { runtime, bento: bento_ref, models };
    yatai_build::build(&config, &source, log.as_ref()).await
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// Bentos and models straight from this server's stores (extracted once by
/// the runtime's materializer), with no HTTP round trip.
struct StoreSource {
    runtime: Arc<LocalRuntime>,
    bento: ArtifactRef,
    models: Vec<ArtifactRef>,
}

#[async_trait::async_trait]
impl BentoSource for StoreSource {
    async fn fetch_bento(&self, _tag: &BentoTag, _work: &Path) -> anyhow::Result<PathBuf> {
        Ok(self.runtime.bento_files(&self.bento).await?)
    }

    async fn fetch_model(&self, model: &ModelRef, _bento_dir: &Path, _work: &Path) -> anyhow::Result<PathBuf> {
        let m = self
            .models
            .iter()
            .find(|m| m.name == model.name && m.version == model.version)
            .ok_or_else(|| anyhow::anyhow!("model {} is not in the registry", model.tag()))?;
        Ok(self.runtime.model_files(m).await?)
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
