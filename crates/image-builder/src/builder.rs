//! One build: fetch the bento and its models, assemble the layers (cached), push what the
//! target repository lacks, and commit with the manifest PUT — the only write that makes a tag
//! point anywhere, so a failure before it never leaves a tag on a half-pushed image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

use crate::base::{self, BaseFacts, ResolvedBase};
use crate::bento::{BentoInfo, ModelRef};
use crate::blob::{self, Cache, Compression};
use crate::image::{self, AddedLayer, Platform};
use crate::layers::{Built, Ctx, bento_layer, commands_layer, deps_layer, model_layer, small_layer, user_layer};
use crate::progress::{BlobAction, Event, LayerKind, Progress};
use crate::python::{self, Target, VENV};
use crate::registry::{self, ImageRef, Mount, Registry, auth};
use crate::secrets::{Redacted, RedactingProgress, SecretEnvs};
use crate::source::{BentoSource, BentoTag, InvalidBentoTag};

/// Bumped whenever the layout of a layer changes, so old cache entries are not reused.
pub(crate) const FORMAT: &str = "v1";

/// Everything a build needs besides the bento source. No environment is read here: the CLI
/// (or the server) fills it in.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// `name`, `name:latest` or `name:version`.
    pub bento: String,
    /// Target repository, `HOST[:PORT]/REPO` (no tag: the tag is Yatai's `yatai.<name>.<version>`).
    pub registry: String,
    /// Base image; default: the bento's `image.base_image` (`python:3.X-slim`).
    pub base: Option<String>,
    /// `linux/amd64` or `linux/arm64`; default: the build host's.
    pub platform: Option<String>,
    pub compression: Compression,
    /// Speak plain HTTP to the target registry (and to a base image on the same host).
    pub plain_http: bool,
    /// Build and push even if the tag exists.
    pub force: bool,
    /// The builder's cache (layers, base scans, uv's cache).
    pub cache_dir: PathBuf,
    /// docker `config.json` with registry credentials; default `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// The `uv` executable.
    pub uv: PathBuf,
    /// uv's download cache; default `<cache_dir>/uv`.
    pub uv_cache: Option<PathBuf>,
    /// A python of the target minor on the build host, for bytecode; default: `python3.X` on PATH.
    pub host_python: Option<PathBuf>,
    /// Scratch space for the fetched bento and the dependency install (deleted after the
    /// build). Default: `/dev/shm` when it has ≥ 8 GiB free (installing and byte-compiling
    /// thousands of files is disk-metadata bound), else `<cache_dir>/tmp`.
    pub work_dir: Option<PathBuf>,
    /// Run the bento's pre-install `RUN` steps (`image.commands`, system packages) in a
    /// sandbox (overlay + chroot on this host; needs root) instead of refusing the bento.
    pub run_commands: bool,
    /// The interpreter inside the base image (e.g. `/usr/bin/python3.11`). When set, the base
    /// layers are not scanned (useful for multi-GB bases) and no passwd entry is added.
    pub base_python: Option<String>,
    /// Secret environment of the build (a private index's credentials): given to uv and to
    /// the `RUN` steps only, never kept in the image or a cache key; masked in progress and
    /// errors. See [`crate::secrets`].
    pub secret_envs: SecretEnvs,
}

impl BuildConfig {
    pub fn new(bento: impl Into<String>, registry: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            bento: bento.into(),
            registry: registry.into(),
            base: None,
            platform: None,
            compression: Compression::Zstd,
            plain_http: false,
            force: false,
            cache_dir: cache_dir.into(),
            docker_config: None,
            uv: PathBuf::from("uv"),
            uv_cache: None,
            host_python: None,
            base_python: None,
            run_commands: false,
            work_dir: None,
            secret_envs: SecretEnvs::default(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    pub kind: LayerKind,
    pub name: String,
    pub diff_id: String,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// Taken from the builder's cache instead of being assembled again.
    pub cached: bool,
    /// What the push did with it.
    pub action: BlobAction,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildOutcome {
    pub bento: String,
    /// `HOST/REPO:TAG@sha256:…`
    pub reference: String,
    /// `HOST/REPO:TAG`
    pub image: String,
    pub digest: String,
    /// The tag existed and `force` was off: nothing was built or pushed.
    pub already_built: bool,
    pub bytes_pushed: u64,
    pub base: String,
    pub base_digest: String,
    /// All layers of the image, base first (empty when `already_built`).
    pub layers: Vec<LayerReport>,
    pub seconds: f64,
}

impl BuildOutcome {
    /// Layers that did not need uploading (already in the registry, or mounted).
    pub fn reused(&self) -> impl Iterator<Item = &LayerReport> {
        self.layers.iter().filter(|l| matches!(l.action, BlobAction::Present | BlobAction::Mounted))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "base image {base} has no python{want} (it has: {have}). The bento was built for Python \
         {want}: pass --base with an image that has it (e.g. python:{want}-slim), or rebuild the \
         bento with image.python_version matching the base"
    )]
    BasePython { base: String, want: String, have: String },
    #[error(
        "bento {bento} needs steps that only a Dockerfile RUN can do, and this builder assembles \
         layers without running anything in the image: {steps:?}. {hint}"
    )]
    RunStepsRefused { bento: String, steps: Vec<String>, hint: String },
    #[error("--registry {0:?} must be HOST[:PORT]/REPOSITORY without a tag or digest")]
    RegistryWithTag(String),
    #[error("bento {bento}: {reason}")]
    Requirements { bento: String, reason: String },
}

/// A coarse class of build failure, for the server's build status and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The bento cannot be built this way (RUN steps, python mismatch, no wheel, bad flags or tag).
    Unbuildable,
    /// The registry refused the credentials.
    RegistryAuth,
    /// The registry could not be reached or failed mid-push; retrying may work.
    RegistryUnavailable,
    /// Anything else (fetching the bento, uv, the disk…).
    Other,
}

/// Classifies an error returned by [`build`].
pub fn failure_kind(err: &anyhow::Error) -> FailureKind {
    use crate::registry::RegistryError as R;
    for cause in err.chain() {
        if cause.is::<BuildError>() || cause.is::<crate::python::NoWheel>() || cause.is::<InvalidBentoTag>() {
            return FailureKind::Unbuildable;
        }
        if let Some(r) = cause.downcast_ref::<Redacted>() {
            return r.kind;
        }
        if let Some(r) = cause.downcast_ref::<R>() {
            return match r {
                R::Unauthorized { .. } => FailureKind::RegistryAuth,
                R::Unreachable { .. } | R::Status { .. } => FailureKind::RegistryUnavailable,
                R::NotFound { .. } | R::Protocol { .. } => FailureKind::Other,
            };
        }
    }
    FailureKind::Other
}

/// Builds the image of `cfg.bento` from `source` and pushes it to `cfg.registry`. Progress
/// lines and the error name no value of `cfg.secret_envs`.
pub async fn build(
    cfg: &BuildConfig,
    source: &dyn BentoSource,
    progress: &dyn Progress,
) -> anyhow::Result<BuildOutcome> {
    if cfg.secret_envs.is_empty() {
        return build_job(cfg, source, progress).await;
    }
    let redacting = RedactingProgress { inner: progress, secrets: &cfg.secret_envs };
    build_job(cfg, source, &redacting).await.map_err(|e| cfg.secret_envs.redact_error(e))
}

async fn build_job(
    cfg: &BuildConfig,
    source: &dyn BentoSource,
    progress: &dyn Progress,
) -> anyhow::Result<BuildOutcome> {
    let started = Instant::now();
    // Registry first: an unreachable registry or bad credentials fail before any work.
    let job = Job::connect(cfg, source, progress).await?;
    let work = job.work_dir()?;
    let (bento_dir, bento) = job.fetch_bento(work.path()).await?;
    let image_tag = image::yatai_tag(&bento.name, &bento.version);
    let image_ref = job.target.with_tag(&image_tag);
    if let Some(digest) = job.existing_image(&image_tag).await? {
        return Ok(job.done(&bento, &image_ref, None, digest, Pushed::default(), started));
    }
    let pre_install = job.run_steps_allowed(&bento)?;
    let base = job.resolve_base(&bento).await?;
    let built = job.assemble_layers(&base, &bento, &bento_dir, &pre_install, work.path()).await?;
    let docs = image_documents(&base, &bento, &job.platform, &built, &image_tag);

    let mut pushed = Pushed::default();
    job.push_base_layers(&base, &mut pushed).await?;
    job.push_built_layers(&built, &mut pushed).await?;
    job.push_config(&docs.config, &mut pushed).await?;
    let digest = job.push_manifest(&image_ref, &image_tag, &docs.manifest, &mut pushed).await?;

    Ok(job.done(&bento, &image_ref, Some(&base), digest, pushed, started))
}

/// What the phases of one build share: the inputs, the layer context and the target registry.
struct Job<'a> {
    source: &'a dyn BentoSource,
    ctx: Ctx<'a>,
    tag: BentoTag,
    platform: Platform,
    /// The target repository (no tag).
    target: ImageRef,
    treg: Registry,
}

/// The base image, pinned to one platform, and the python in it the venv shim points at.
struct Base {
    reference: ImageRef,
    /// The base's own registry; `None` when it is the target registry.
    registry: Option<Registry>,
    resolved: ResolvedBase,
    python_path: String,
    /// `3.11`
    python_minor: String,
    /// What a scan of its files found; `None` with `--base-python`, which skips the scan.
    facts: Option<BaseFacts>,
}

/// The image config and manifest, as the canonical bytes that are pushed.
struct ImageDocs {
    config: Vec<u8>,
    manifest: Vec<u8>,
}

/// What the push did so far: bytes sent, and one report per layer, base first.
#[derive(Default)]
struct Pushed {
    bytes: u64,
    layers: Vec<LayerReport>,
}

impl<'a> Job<'a> {
    /// Checks the flags, then reaches the target registry with its credentials.
    async fn connect(
        cfg: &'a BuildConfig,
        source: &'a dyn BentoSource,
        progress: &'a dyn Progress,
    ) -> anyhow::Result<Self> {
        let target = ImageRef::parse(&cfg.registry).map_err(|e| anyhow::anyhow!("--registry: {e}"))?;
        if target.tag.is_some() || target.digest.is_some() {
            return Err(BuildError::RegistryWithTag(cfg.registry.clone()).into());
        }
        let tag = BentoTag::parse(&cfg.bento)?;
        let platform = match &cfg.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let cache = Cache::new(&cfg.cache_dir)?;
        let ctx = Ctx { cfg, cache, progress, encoding: cfg.compression.into() };

        let creds = auth::lookup(cfg.docker_config.as_deref(), &target.registry)?;
        let treg = Registry::new(target.api_host(), cfg.plain_http, creds)?;
        treg.ping().await?;
        Ok(Self { source, ctx, tag, platform, target, treg })
    }

    fn work_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        let work_root = self.ctx.cfg.work_dir.clone().unwrap_or_else(|| default_work_dir(&self.ctx.cache));
        tempfile::Builder::new()
            .prefix("yatai-build-")
            .tempdir_in(&work_root)
            .with_context(|| format!("creating a work directory in {}", work_root.display()))
    }

    async fn fetch_bento(&self, work: &Path) -> anyhow::Result<(PathBuf, BentoInfo)> {
        self.ctx.step(format!("fetching bento {} from {}", self.tag, self.source.describe()));
        let bento_dir = self.source.fetch_bento(&self.tag, work).await?;
        let bento = BentoInfo::load(&bento_dir)?;
        Ok((bento_dir, bento))
    }

    /// The digest the image tag already points at, unless `--force`.
    async fn existing_image(&self, image_tag: &str) -> anyhow::Result<Option<String>> {
        if self.ctx.cfg.force {
            return Ok(None);
        }
        Ok(self.treg.manifest_digest(&self.target.repository, image_tag).await?)
    }

    /// Refuses the `RUN` steps this build cannot do; returns the pre-install steps it will run
    /// in the sandbox (empty unless `--run-commands`).
    fn run_steps_allowed(&self, bento: &BentoInfo) -> anyhow::Result<Vec<String>> {
        let post = bento.post_install_steps();
        if !post.is_empty() {
            let hint = "post_commands and setup_script run on top of the installed Python environment and \
                        are not supported: remove them, or build this bento with `bentoml containerize`";
            return Err(BuildError::RunStepsRefused { bento: bento.tag(), steps: post, hint: hint.into() }.into());
        }
        let pre = bento.pre_install_steps();
        if !pre.is_empty() && !self.ctx.cfg.run_commands {
            let hint = "Pass --run-commands to run them in a sandbox on this host (overlay + chroot, \
                        needs root), remove them from the bento, or build it with `bentoml containerize`";
            return Err(BuildError::RunStepsRefused { bento: bento.tag(), steps: pre, hint: hint.into() }.into());
        }
        if bento.has_default_command() {
            self.ctx.step(
                "not running BentoML's default `apt-get install … build-essential git` line: it installs \
                 compilers for building sdists inside the image, and this builder installs wheels on the \
                 build host instead",
            );
        }
        Ok(pre)
    }

    fn base_registry<'r>(&'r self, base: &'r Base) -> &'r Registry {
        base.registry.as_ref().unwrap_or(&self.treg)
    }

    /// Pins the base image (`--base`, else the bento's, else `python:3.X-slim`) to the target
    /// platform and finds the python the bento was built for in it.
    async fn resolve_base(&self, bento: &BentoInfo) -> anyhow::Result<Base> {
        let cfg = self.ctx.cfg;
        let minor_wanted = bento.python_version.as_deref().and_then(python::minor);
        let base_name = cfg
            .base
            .clone()
            .or_else(|| bento.base_image.clone())
            .unwrap_or_else(|| format!("python:{}-slim", minor_wanted.as_deref().unwrap_or("3.11")));
        let reference = ImageRef::parse(&base_name).map_err(|e| anyhow::anyhow!("base image: {e}"))?;
        let registry = if reference.api_host() == self.target.api_host() {
            None
        } else {
            let creds = auth::lookup(cfg.docker_config.as_deref(), &reference.registry)?;
            Some(Registry::new(reference.api_host(), false, creds)?)
        };
        let breg = registry.as_ref().unwrap_or(&self.treg);
        self.ctx.step(format!("resolving base image {reference} for {}", self.platform));
        let resolved = base::resolve(breg, &reference, &self.platform).await?;
        let (python_path, python_minor, facts) =
            self.base_python(breg, &reference, &resolved, minor_wanted.as_deref()).await?;
        Ok(Base { reference, registry, resolved, python_path, python_minor, facts })
    }

    /// The interpreter in the base: `--base-python`, else the one of the bento's minor (or the
    /// newest) that a scan of the base's files finds.
    async fn base_python(
        &self,
        breg: &Registry,
        reference: &ImageRef,
        resolved: &ResolvedBase,
        minor_wanted: Option<&str>,
    ) -> anyhow::Result<(String, String, Option<BaseFacts>)> {
        let (python_path, minor, facts) = match &self.ctx.cfg.base_python {
            Some(p) => {
                let m = python::minor(p.rsplit('/').next().unwrap_or(p))
                    .with_context(|| format!("--base-python {p:?} must name a python3.X executable"))?;
                (p.clone(), m, None)
            }
            None => {
                self.ctx
                    .step(format!("reading the base image's files (once per base digest {})", &resolved.digest[..19]));
                let facts = base::scan(breg, resolved, &self.ctx.cache).await?;
                let minor = match minor_wanted {
                    Some(m) => m.to_string(),
                    None => facts.minors().pop().unwrap_or_default(),
                };
                match facts.python_for(&minor) {
                    Some(p) => (p, minor, Some(facts)),
                    None => {
                        let have = if facts.pythons.is_empty() {
                            "no python3.X at all".to_string()
                        } else {
                            facts.pythons.join(", ")
                        };
                        return Err(BuildError::BasePython { base: reference.to_string(), want: minor, have }.into());
                    }
                }
            }
        };
        if let Some(m) = minor_wanted
            && m != minor
        {
            return Err(
                BuildError::BasePython { base: reference.to_string(), want: m.into(), have: python_path }.into()
            );
        }
        Ok((python_path, minor, facts))
    }

    /// Our layers, from the most to the least shared, each built or taken from the cache.
    async fn assemble_layers(
        &self,
        base: &Base,
        bento: &BentoInfo,
        bento_dir: &Path,
        pre_install: &[String],
        work: &Path,
    ) -> anyhow::Result<Vec<Built>> {
        let ctx = &self.ctx;
        let mut built: Vec<Built> = Vec::new();
        if !pre_install.is_empty() {
            let breg = self.base_registry(base);
            built.push(commands_layer(ctx, breg, &base.resolved, bento, pre_install, &self.platform).await?);
        }
        built.push(user_layer(ctx, base.facts.as_ref())?);
        let target_py = Target { uv_platform: self.platform.uv_platform()?, python: base.python_minor.clone() };
        built.push(deps_layer(ctx, bento, bento_dir, &target_py, work).await?);
        built.push(small_layer(
            ctx,
            LayerKind::Shim,
            VENV,
            python::shim_tree(&base.python_path, &base.python_minor),
            format!("yatai-rs: venv {VENV} on {}", base.python_path),
        )?);
        for m in bento.models.iter().filter(|m| m.registry != "huggingface") {
            built.push(self.model_layer(m, bento_dir, work).await?);
        }
        built.push(bento_layer(ctx, bento, bento_dir)?);
        for b in &built {
            ctx.progress.event(&Event::Layer {
                kind: b.kind,
                name: b.name.clone(),
                digest: b.blob.digest.clone(),
                size: b.blob.size,
                cached: b.cached,
            });
        }
        Ok(built)
    }

    /// A model's layer; one already turned into a layer is not downloaded again.
    async fn model_layer(&self, m: &ModelRef, bento_dir: &Path, work: &Path) -> anyhow::Result<Built> {
        let ctx = &self.ctx;
        let source_key =
            self.source.model_key(m).await?.map(|k| format!("model-source:{FORMAT}:{k}:{:?}", ctx.encoding));
        if let Some(blob) = source_key.as_deref().and_then(|k| ctx.cache.layer(k)) {
            ctx.step(format!("model {} unchanged on the server: layer from cache, not downloaded", m.tag()));
            let created_by = format!("yatai-rs: model {}", m.tag());
            return Ok(Built { kind: LayerKind::Model, name: m.tag(), blob, cached: true, created_by });
        }
        ctx.step(format!("fetching model {}", m.tag()));
        let dir = self.source.fetch_model(m, bento_dir, work).await?;
        let layer = model_layer(ctx, &m.name, &m.version, &dir).await?;
        if let Some(k) = &source_key {
            ctx.cache.put_layer(k, &layer.blob)?;
        }
        Ok(layer)
    }

    /// The outcome, announced; `base` is `None` when the tag existed and nothing was built.
    fn done(
        &self,
        bento: &BentoInfo,
        image_ref: &ImageRef,
        base: Option<&Base>,
        digest: String,
        pushed: Pushed,
        started: Instant,
    ) -> BuildOutcome {
        let reference = image_ref.with_digest(&digest).to_string();
        let already_built = base.is_none();
        let bytes_pushed = pushed.bytes;
        self.ctx.progress.event(&Event::Done { reference: reference.clone(), bytes_pushed, already_built });
        BuildOutcome {
            bento: bento.tag(),
            reference,
            image: image_ref.to_string(),
            digest,
            already_built,
            bytes_pushed,
            base: base.map(|b| b.reference.to_string()).unwrap_or_default(),
            base_digest: base.map(|b| b.resolved.digest.clone()).unwrap_or_default(),
            layers: pushed.layers,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    fn push_scopes(&self) -> Vec<String> {
        vec![registry::push(&self.target.repository)]
    }

    /// The base's layers, by reference: present, mounted or copied, never rebuilt.
    async fn push_base_layers(&self, base: &Base, pushed: &mut Pushed) -> anyhow::Result<()> {
        let breg = self.base_registry(base);
        let same_registry = base.registry.is_none();
        let layers = push_base_blobs(
            &self.treg,
            &self.target,
            breg,
            &base.resolved,
            same_registry,
            self.ctx.progress,
            &mut pushed.bytes,
        )
        .await?;
        pushed.layers.extend(layers);
        Ok(())
    }

    /// Our layers, from the cache's blob files.
    async fn push_built_layers(&self, built: &[Built], pushed: &mut Pushed) -> anyhow::Result<()> {
        let scopes = self.push_scopes();
        for b in built {
            let path = self.ctx.cache.blob_path(&b.blob.digest);
            let action =
                ensure_local_blob(&self.treg, &self.target.repository, &b.blob.digest, b.blob.size, &path, &scopes)
                    .await?;
            if action == BlobAction::Uploaded {
                pushed.bytes += b.blob.size;
            }
            self.ctx.progress.event(&Event::Blob { digest: b.blob.digest.clone(), size: b.blob.size, action });
            pushed.layers.push(LayerReport {
                kind: b.kind,
                name: b.name.clone(),
                diff_id: b.blob.diff_id.clone(),
                digest: b.blob.digest.clone(),
                size: b.blob.size,
                media_type: b.blob.media_type.clone(),
                cached: b.cached,
                action,
            });
        }
        Ok(())
    }

    async fn push_config(&self, config: &[u8], pushed: &mut Pushed) -> anyhow::Result<()> {
        let digest = blob::sha256_digest(config);
        let path = self.ctx.cache.blob_path(&digest);
        std::fs::write(&path, config)?;
        let size = config.len() as u64;
        let scopes = self.push_scopes();
        let action = ensure_local_blob(&self.treg, &self.target.repository, &digest, size, &path, &scopes).await?;
        if action == BlobAction::Uploaded {
            pushed.bytes += size;
        }
        Ok(())
    }

    /// The commit: the manifest PUT makes the tag point at the image; returns its digest.
    async fn push_manifest(
        &self,
        image_ref: &ImageRef,
        image_tag: &str,
        manifest: &[u8],
        pushed: &mut Pushed,
    ) -> anyhow::Result<String> {
        self.ctx.progress.event(&Event::PushingManifest { reference: image_ref.to_string() });
        let digest =
            self.treg.put_manifest(&self.target.repository, image_tag, manifest, registry::MEDIA_OCI_MANIFEST).await?;
        pushed.bytes += manifest.len() as u64;
        Ok(digest)
    }
}

/// The config (the base's, with BentoML's Dockerfile applied) and the manifest (the base's
/// layers by digest, then ours). No IO: equal inputs give equal bytes.
fn image_documents(base: &Base, bento: &BentoInfo, platform: &Platform, built: &[Built], image_tag: &str) -> ImageDocs {
    let added: Vec<AddedLayer> =
        built.iter().map(|b| AddedLayer { blob: b.blob.clone(), created_by: b.created_by.clone() }).collect();
    let config = image::config(&image::ConfigInput {
        base_config: &base.resolved.config,
        bento,
        platform,
        layers: &added,
        passwd_entry: base.facts.as_ref().is_some_and(|f| f.passwd.is_some()),
        image_tag,
    });
    let config = image::canonical(&config);
    let manifest = image::manifest(&config, &base.resolved.layers, &added, &base.reference, &base.resolved.digest);
    ImageDocs { manifest: image::canonical(&manifest), config }
}

fn default_work_dir(cache: &Cache) -> PathBuf {
    const MIN_FREE: u64 = 8 << 30;
    let shm = Path::new("/dev/shm");
    let free = (|| {
        let c = std::ffi::CString::new("/dev/shm").ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid path and a zeroed out-struct.
        (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    })();
    match free {
        Some(f) if f >= MIN_FREE && tempfile::tempdir_in(shm).is_ok() => shm.to_path_buf(),
        _ => cache.tmp_dir(),
    }
}

/// The base's layers into the target repository, by reference: present, mounted or copied,
/// never rebuilt. `bytes_pushed` grows by what was copied.
pub(crate) async fn push_base_blobs(
    treg: &Registry,
    target: &ImageRef,
    breg: &Registry,
    base: &ResolvedBase,
    same_registry: bool,
    progress: &dyn Progress,
    bytes_pushed: &mut u64,
) -> anyhow::Result<Vec<LayerReport>> {
    let mut out = Vec::new();
    for (i, l) in base.layers.iter().enumerate() {
        let digest = l.get("digest").and_then(Value::as_str).context("base layer without digest")?;
        let size = l.get("size").and_then(Value::as_u64).unwrap_or(0);
        let media = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
        let action = if media.contains("foreign") || media.contains("nondistributable") {
            BlobAction::Present
        } else {
            ensure_remote_blob(treg, target, breg, base, same_registry, digest, size).await?
        };
        if action == BlobAction::Copied {
            *bytes_pushed += size;
        }
        progress.event(&Event::Blob { digest: digest.into(), size, action });
        out.push(LayerReport {
            kind: LayerKind::Base,
            name: base.reference.to_string(),
            diff_id: base.config.pointer(&format!("/rootfs/diff_ids/{i}")).and_then(Value::as_str).unwrap_or("").into(),
            digest: digest.into(),
            size,
            media_type: image::oci_layer_media_type(media),
            cached: true,
            action,
        });
    }
    Ok(out)
}

/// A layer blob we hold on disk: HEAD, else upload it.
pub(crate) async fn ensure_local_blob(
    reg: &Registry,
    repo: &str,
    digest: &str,
    size: u64,
    path: &Path,
    scopes: &[String],
) -> anyhow::Result<BlobAction> {
    if reg.blob_exists(repo, digest, scopes).await? {
        return Ok(BlobAction::Present);
    }
    let loc = reg.start_upload(repo, scopes).await?;
    reg.put_blob_file(&loc, digest, path, size, scopes).await?;
    Ok(BlobAction::Uploaded)
}

/// A base layer: HEAD in the target, else mount from the base repository (same registry), else
/// stream it from the base registry into the target, once.
pub(crate) async fn ensure_remote_blob(
    treg: &Registry,
    target: &ImageRef,
    breg: &Registry,
    base: &ResolvedBase,
    same_registry: bool,
    digest: &str,
    size: u64,
) -> anyhow::Result<BlobAction> {
    let repo = &target.repository;
    let mut scopes = vec![registry::push(repo)];
    if treg.blob_exists(repo, digest, &scopes).await? {
        return Ok(BlobAction::Present);
    }
    let location = if same_registry && base.reference.repository != *repo {
        scopes.push(registry::pull(&base.reference.repository));
        match treg.mount_blob(repo, digest, &base.reference.repository, &scopes).await {
            Ok(Mount::Mounted) => return Ok(BlobAction::Mounted),
            Ok(Mount::Upload(loc)) => loc,
            // Any mount failure (e.g. a token without pull on the source) means "upload it".
            Err(e) => {
                tracing::debug!("mount of {digest} failed, copying instead: {e}");
                treg.start_upload(repo, &scopes).await?
            }
        }
    } else {
        treg.start_upload(repo, &scopes).await?
    };
    let resp = breg.get_blob(&base.reference.repository, digest).await?;
    let body = reqwest::Body::wrap_stream(resp.bytes_stream());
    treg.put_blob_stream(&location, digest, size, body, &scopes).await?;
    Ok(BlobAction::Copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that fails the test if the build gets as far as asking it for anything.
    struct Unreached;

    #[async_trait::async_trait]
    impl BentoSource for Unreached {
        async fn fetch_bento(&self, tag: &BentoTag, _: &Path) -> anyhow::Result<PathBuf> {
            panic!("fetched {tag}")
        }
        async fn fetch_model(&self, m: &crate::bento::ModelRef, _: &Path, _: &Path) -> anyhow::Result<PathBuf> {
            panic!("fetched {}", m.tag())
        }
        fn describe(&self) -> String {
            "nothing".into()
        }
    }

    #[tokio::test]
    async fn an_upper_case_tag_is_refused_before_any_network_as_core_refuses_it() {
        let cache = tempfile::tempdir().unwrap();
        // Port 1 refuses connections: reaching the registry would fail with "unreachable".
        let cfg = BuildConfig::new("Iris:ABC", "127.0.0.1:1/bentos", cache.path());
        let err = build(&cfg, &Unreached, &|_: &Event| {}).await.unwrap_err();
        let bad = err.downcast_ref::<InvalidBentoTag>().unwrap_or_else(|| panic!("{err:#}"));
        assert_eq!(bad.reason, yatai_core::Tag::parse("Iris:ABC").unwrap_err());
        assert_eq!(failure_kind(&err), FailureKind::Unbuildable);
    }

    fn base(facts: Option<BaseFacts>) -> Base {
        let reference = ImageRef::parse("registry.example/python:3.11-slim").unwrap();
        let resolved = ResolvedBase {
            reference: reference.clone(),
            digest: format!("sha256:{}", "a".repeat(64)),
            config: serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Env": ["PATH=/usr/local/bin:/usr/bin"], "Cmd": ["python3"]},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:base-diff"]},
                "history": [{"created_by": "debootstrap"}],
            }),
            layers: vec![serde_json::json!({
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "digest": "sha256:base-blob",
                "size": 1000,
            })],
        };
        let (python_path, python_minor) = ("/usr/local/bin/python3.11".to_string(), "3.11".to_string());
        Base { reference, registry: None, resolved, python_path, python_minor, facts }
    }

    fn layer(kind: LayerKind, n: u8) -> Built {
        let blob = crate::blob::LayerBlob {
            diff_id: format!("sha256:diff{n}"),
            digest: format!("sha256:blob{n}"),
            size: 10 + n as u64,
            media_type: crate::blob::MEDIA_LAYER_ZSTD.into(),
        };
        Built { kind, name: format!("layer {n}"), blob, cached: false, created_by: format!("yatai-rs: step {n}") }
    }

    #[test]
    fn image_documents_put_the_base_first_then_our_layers_in_build_order() {
        let bento = BentoInfo::parse("name: iris\nversion: v1\ncreation_time: '2026-01-01T00:00:00+00:00'\n").unwrap();
        let platform = Platform::parse("linux/amd64").unwrap();
        let built = [layer(LayerKind::User, 1), layer(LayerKind::Deps, 2), layer(LayerKind::Bento, 3)];
        let docs = image_documents(&base(None), &bento, &platform, &built, "yatai.iris.v1");

        let manifest: Value = serde_json::from_slice(&docs.manifest).unwrap();
        let config: Value = serde_json::from_slice(&docs.config).unwrap();
        assert_eq!(image::canonical(&manifest), docs.manifest, "pushed as canonical JSON");
        assert_eq!(manifest["config"]["digest"], blob::sha256_digest(&docs.config));
        assert_eq!(manifest["config"]["size"], docs.config.len());
        let digests: Vec<&str> =
            manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
        assert_eq!(digests, ["sha256:base-blob", "sha256:blob1", "sha256:blob2", "sha256:blob3"]);
        assert_eq!(manifest["layers"][0]["mediaType"], crate::blob::MEDIA_LAYER_GZIP, "docker type made OCI");
        assert_eq!(manifest["layers"][3]["size"], 13);
        assert_eq!(
            manifest["annotations"]["org.opencontainers.image.base.digest"],
            format!("sha256:{}", "a".repeat(64))
        );
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:base-diff", "sha256:diff1", "sha256:diff2", "sha256:diff3"])
        );
        let history: Vec<&str> =
            config["history"].as_array().unwrap().iter().map(|h| h["created_by"].as_str().unwrap()).collect();
        assert_eq!(history, ["debootstrap", "yatai-rs: step 1", "yatai-rs: step 2", "yatai-rs: step 3"]);

        // Same inputs, same bytes: a rebuild pushes nothing new.
        let again = image_documents(&base(None), &bento, &platform, &built, "yatai.iris.v1");
        assert_eq!((again.config, again.manifest), (docs.config, docs.manifest));
    }

    #[test]
    fn image_documents_name_the_user_only_when_the_base_has_no_passwd_to_extend() {
        let bento = BentoInfo::parse("name: iris\nversion: v1\ncreation_time: '2026-01-01T00:00:00+00:00'\n").unwrap();
        let platform = Platform::parse("linux/amd64").unwrap();
        let env = |facts: Option<BaseFacts>| -> Vec<String> {
            let docs = image_documents(&base(facts), &bento, &platform, &[], "yatai.iris.v1");
            let config: Value = serde_json::from_slice(&docs.config).unwrap();
            config["config"]["Env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect()
        };
        assert!(env(None).contains(&"USER=bentoml".to_string()), "--base-python: no scan, no passwd entry");
        let scanned = BaseFacts { passwd: Some("root:x:0:0::/root:/bin/sh\n".into()), ..Default::default() };
        assert!(!env(Some(scanned)).iter().any(|e| e.starts_with("USER=")));
    }

    /// The server spawns builds on its runtime: the future must be `Send`.
    #[allow(dead_code)]
    fn build_future_is_send(cfg: &BuildConfig, source: &dyn BentoSource, progress: &dyn Progress) {
        fn is_send<T: Send>(_: T) {}
        is_send(build(cfg, source, progress));
    }
}
