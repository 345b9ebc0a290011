//! One build: fetch the bento and its models, assemble the layers (cached), push what the
//! target repository lacks, and commit with the manifest PUT — the only write that makes a tag
//! point anywhere, so a failure before it never leaves a tag on a half-pushed image.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;

use crate::base::{self, ResolvedBase};
use crate::bento::BentoInfo;
use crate::blob::{self, Cache, Compression};
use crate::image::{self, AddedLayer, Platform};
use crate::layers::{Built, Ctx, bento_layer, commands_layer, deps_layer, model_layer, small_layer, user_layer};
use crate::progress::{BlobAction, Event, LayerKind, Progress};
use crate::python::{self, Target, VENV};
use crate::registry::{self, ImageRef, Mount, Registry, auth};
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

/// Builds the image of `cfg.bento` from `source` and pushes it to `cfg.registry`.
pub async fn build(
    cfg: &BuildConfig,
    source: &dyn BentoSource,
    progress: &dyn Progress,
) -> anyhow::Result<BuildOutcome> {
    let started = Instant::now();
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

    // Registry first: an unreachable registry or bad credentials fail before any work.
    let creds = auth::lookup(cfg.docker_config.as_deref(), &target.registry)?;
    let treg = Registry::new(target.api_host(), cfg.plain_http, creds)?;
    treg.ping().await?;

    let work_root = cfg.work_dir.clone().unwrap_or_else(|| default_work_dir(&ctx.cache));
    let work = tempfile::Builder::new()
        .prefix("yatai-build-")
        .tempdir_in(&work_root)
        .with_context(|| format!("creating a work directory in {}", work_root.display()))?;
    ctx.step(format!("fetching bento {tag} from {}", source.describe()));
    let bento_dir = source.fetch_bento(&tag, work.path()).await?;
    let bento = BentoInfo::load(&bento_dir)?;
    let image_tag = image::yatai_tag(&bento.name, &bento.version);
    let image_ref = target.with_tag(&image_tag);

    if !cfg.force
        && let Some(d) = treg.manifest_digest(&target.repository, &image_tag).await?
    {
        let reference = image_ref.with_digest(&d).to_string();
        progress.event(&Event::Done { reference: reference.clone(), bytes_pushed: 0, already_built: true });
        return Ok(BuildOutcome {
            bento: bento.tag(),
            reference,
            image: image_ref.to_string(),
            digest: d,
            already_built: true,
            bytes_pushed: 0,
            base: String::new(),
            base_digest: String::new(),
            layers: Vec::new(),
            seconds: started.elapsed().as_secs_f64(),
        });
    }

    let post = bento.post_install_steps();
    if !post.is_empty() {
        let hint = "post_commands and setup_script run on top of the installed Python environment and \
                    are not supported: remove them, or build this bento with `bentoml containerize`";
        return Err(BuildError::RunStepsRefused { bento: bento.tag(), steps: post, hint: hint.into() }.into());
    }
    let pre = bento.pre_install_steps();
    if !pre.is_empty() && !cfg.run_commands {
        let hint = "Pass --run-commands to run them in a sandbox on this host (overlay + chroot, \
                    needs root), remove them from the bento, or build it with `bentoml containerize`";
        return Err(BuildError::RunStepsRefused { bento: bento.tag(), steps: pre, hint: hint.into() }.into());
    }
    if bento.has_default_command() {
        ctx.step(
            "not running BentoML's default `apt-get install … build-essential git` line: it installs \
             compilers for building sdists inside the image, and this builder installs wheels on the \
             build host instead",
        );
    }

    // Base image.
    let minor_wanted = bento.python_version.as_deref().and_then(python::minor);
    let base_name = cfg
        .base
        .clone()
        .or_else(|| bento.base_image.clone())
        .unwrap_or_else(|| format!("python:{}-slim", minor_wanted.as_deref().unwrap_or("3.11")));
    let base_ref = ImageRef::parse(&base_name).map_err(|e| anyhow::anyhow!("base image: {e}"))?;
    let same_registry = base_ref.api_host() == target.api_host();
    let breg_owned;
    let breg: &Registry = if same_registry {
        &treg
    } else {
        let creds = auth::lookup(cfg.docker_config.as_deref(), &base_ref.registry)?;
        breg_owned = Registry::new(base_ref.api_host(), false, creds)?;
        &breg_owned
    };
    ctx.step(format!("resolving base image {base_ref} for {platform}"));
    let base = base::resolve(breg, &base_ref, &platform).await?;

    let (python_path, minor, facts) = match &cfg.base_python {
        Some(p) => {
            let m = python::minor(p.rsplit('/').next().unwrap_or(p))
                .with_context(|| format!("--base-python {p:?} must name a python3.X executable"))?;
            (p.clone(), m, None)
        }
        None => {
            ctx.step(format!("reading the base image's files (once per base digest {})", &base.digest[..19]));
            let facts = base::scan(breg, &base, &ctx.cache).await?;
            let minor = match &minor_wanted {
                Some(m) => m.clone(),
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
                    return Err(BuildError::BasePython { base: base_ref.to_string(), want: minor, have }.into());
                }
            }
        }
    };
    if let Some(m) = &minor_wanted
        && *m != minor
    {
        return Err(BuildError::BasePython { base: base_ref.to_string(), want: m.clone(), have: python_path }.into());
    }

    // Layers, from the most to the least shared.
    let mut built: Vec<Built> = Vec::new();
    if !pre.is_empty() {
        built.push(commands_layer(&ctx, breg, &base, &bento, &pre, &platform).await?);
    }
    built.push(user_layer(&ctx, facts.as_ref())?);
    let target_py = Target { uv_platform: platform.uv_platform()?, python: minor.clone() };
    built.push(deps_layer(&ctx, &bento, &bento_dir, &target_py, work.path()).await?);
    built.push(small_layer(
        &ctx,
        LayerKind::Shim,
        VENV,
        python::shim_tree(&python_path, &minor),
        format!("yatai-rs: venv {VENV} on {python_path}"),
    )?);
    for m in bento.models.iter().filter(|m| m.registry != "huggingface") {
        // A model already turned into a layer is not downloaded again.
        let source_key = source.model_key(m).await?.map(|k| format!("model-source:{FORMAT}:{k}:{:?}", ctx.encoding));
        if let Some(blob) = source_key.as_deref().and_then(|k| ctx.cache.layer(k)) {
            ctx.step(format!("model {} unchanged on the server: layer from cache, not downloaded", m.tag()));
            let created_by = format!("yatai-rs: model {}", m.tag());
            built.push(Built { kind: LayerKind::Model, name: m.tag(), blob, cached: true, created_by });
            continue;
        }
        ctx.step(format!("fetching model {}", m.tag()));
        let dir = source.fetch_model(m, &bento_dir, work.path()).await?;
        let layer = model_layer(&ctx, &m.name, &m.version, &dir).await?;
        if let Some(k) = &source_key {
            ctx.cache.put_layer(k, &layer.blob)?;
        }
        built.push(layer);
    }
    built.push(bento_layer(&ctx, &bento, &bento_dir)?);
    for b in &built {
        progress.event(&Event::Layer {
            kind: b.kind,
            name: b.name.clone(),
            digest: b.blob.digest.clone(),
            size: b.blob.size,
            cached: b.cached,
        });
    }

    let added: Vec<AddedLayer> =
        built.iter().map(|b| AddedLayer { blob: b.blob.clone(), created_by: b.created_by.clone() }).collect();
    let config = image::config(&image::ConfigInput {
        base_config: &base.config,
        bento: &bento,
        platform: &platform,
        layers: &added,
        passwd_entry: facts.as_ref().is_some_and(|f| f.passwd.is_some()),
        image_tag: &image_tag,
    });
    let config_bytes = image::canonical(&config);
    let manifest = image::manifest(&config_bytes, &base.layers, &added, &base_ref, &base.digest);
    let manifest_bytes = image::canonical(&manifest);

    // Push: base blobs, ours, the config; then the manifest.
    let mut bytes_pushed = 0u64;
    let mut reports = Vec::new();
    let push_scopes = vec![registry::push(&target.repository)];
    for (i, l) in base.layers.iter().enumerate() {
        let digest = l.get("digest").and_then(Value::as_str).context("base layer without digest")?;
        let size = l.get("size").and_then(Value::as_u64).unwrap_or(0);
        let media = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
        let action = if media.contains("foreign") || media.contains("nondistributable") {
            BlobAction::Present
        } else {
            ensure_remote_blob(&treg, &target, breg, &base, same_registry, digest, size).await?
        };
        if action == BlobAction::Copied {
            bytes_pushed += size;
        }
        progress.event(&Event::Blob { digest: digest.into(), size, action });
        let diff_id =
            base.config.pointer(&format!("/rootfs/diff_ids/{i}")).and_then(Value::as_str).unwrap_or("").to_string();
        reports.push(LayerReport {
            kind: LayerKind::Base,
            name: base_ref.to_string(),
            diff_id,
            digest: digest.into(),
            size,
            media_type: image::oci_layer_media_type(media),
            cached: true,
            action,
        });
    }
    for b in &built {
        let path = ctx.cache.blob_path(&b.blob.digest);
        let action =
            ensure_local_blob(&treg, &target.repository, &b.blob.digest, b.blob.size, &path, &push_scopes).await?;
        if action == BlobAction::Uploaded {
            bytes_pushed += b.blob.size;
        }
        progress.event(&Event::Blob { digest: b.blob.digest.clone(), size: b.blob.size, action });
        reports.push(LayerReport {
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
    let config_digest = blob::sha256_digest(&config_bytes);
    let config_path = ctx.cache.blob_path(&config_digest);
    std::fs::write(&config_path, &config_bytes)?;
    let action = ensure_local_blob(
        &treg,
        &target.repository,
        &config_digest,
        config_bytes.len() as u64,
        &config_path,
        &push_scopes,
    )
    .await?;
    if action == BlobAction::Uploaded {
        bytes_pushed += config_bytes.len() as u64;
    }

    progress.event(&Event::PushingManifest { reference: image_ref.to_string() });
    let digest =
        treg.put_manifest(&target.repository, &image_tag, &manifest_bytes, registry::MEDIA_OCI_MANIFEST).await?;
    bytes_pushed += manifest_bytes.len() as u64;
    let reference = image_ref.with_digest(&digest).to_string();
    progress.event(&Event::Done { reference: reference.clone(), bytes_pushed, already_built: false });
    Ok(BuildOutcome {
        bento: bento.tag(),
        reference,
        image: image_ref.to_string(),
        digest,
        already_built: false,
        bytes_pushed,
        base: base_ref.to_string(),
        base_digest: base.digest.clone(),
        layers: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
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

/// A layer blob we hold on disk: HEAD, else upload it.
async fn ensure_local_blob(
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
async fn ensure_remote_blob(
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

    /// The server spawns builds on its runtime: the future must be `Send`.
    #[allow(dead_code)]
    fn build_future_is_send(cfg: &BuildConfig, source: &dyn BentoSource, progress: &dyn Progress) {
        fn is_send<T: Send>(_: T) {}
        is_send(build(cfg, source, progress));
    }
}
